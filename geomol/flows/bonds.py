"""Complete molecular graphs: every atom pair once (``i < j``) carries a bond-order token.

The flows model bonds as a categorical variable on *all* atom pairs of a molecule (code 0 "none",
see :data:`geomol.data.chem.BOND_TYPES`), while data graphs list only bonds, in both directions.
These helpers convert between the two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geomol.nn.graph import full_graph

__all__ = ["upper_pairs", "pair_edge_index", "pair_bond_types", "bonds_from_pairs"]


def upper_pairs(batch: Tensor) -> Tensor:
    """All pairs ``(a, b)`` with ``a < b`` inside each graph, sorted by ``a * N + b``.

    Shapes:
        batch ``[N]`` -> pairs ``[2, P]`` with ``P = Σ_g n_g (n_g - 1) / 2``
    """
    src, dst = full_graph(batch)
    keep = src < dst
    pairs = torch.stack([src[keep], dst[keep]])
    order = torch.argsort(pairs[0] * batch.numel() + pairs[1])
    return pairs[:, order]


def pair_edge_index(pairs: Tensor) -> Tensor:
    """Both directions of every pair: edge ``k`` is ``pairs[:, k]`` and edge ``k + P`` its reverse.

    Shapes:
        pairs ``[2, P]`` -> edge_index ``[2, 2P]``
    """
    return torch.cat([pairs, pairs.flip(0)], dim=1)


def pair_bond_types(pairs: Tensor, edge_index: Tensor, edge_attr: Tensor, num_nodes: int) -> Tensor:
    """Bond code of each pair (0 where the graph has no bond).

    Args:
        pairs: output of :func:`upper_pairs`.
        edge_index: bonds of the data graph, each in one or both directions.
        edge_attr: bond codes of ``edge_index``.
        num_nodes: number of atoms in the batch.

    Shapes:
        pairs ``[2, P]``, edge_index ``[2, E]``, edge_attr ``[E]`` -> ``[P]`` long
    """
    labels = torch.zeros(pairs.size(1), dtype=torch.long, device=pairs.device)
    if edge_index.numel() == 0:
        return labels
    a = torch.minimum(edge_index[0], edge_index[1])
    b = torch.maximum(edge_index[0], edge_index[1])
    if bool((a == b).any()):
        raise ValueError("the bond list holds a self-loop (an atom bonded to itself)")
    keys = pairs[0] * num_nodes + pairs[1]  # sorted by construction
    bond_keys = a * num_nodes + b
    slot = torch.searchsorted(keys, bond_keys).clamp_max(keys.numel() - 1)
    if bool((keys[slot] != bond_keys).any()):
        raise ValueError("a bond joins atoms of two different molecules")
    labels[slot] = edge_attr.long()
    return labels


def bonds_from_pairs(pairs: Tensor, bond_type: Tensor) -> tuple[Tensor, Tensor]:
    """Data-graph bonds (both directions) from pair tokens, dropping code 0.

    Shapes:
        pairs ``[2, P]``, bond_type ``[P]`` -> (edge_index ``[2, 2B]``, edge_attr ``[2B]``)
    """
    keep = bond_type > 0
    bonded = pairs[:, keep]
    return pair_edge_index(bonded), bond_type[keep].repeat(2)
