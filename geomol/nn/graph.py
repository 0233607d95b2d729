"""Graph construction in pure torch: radius graphs, full graphs and triplets.

PyG's ``radius_graph`` and its DimeNet ``triplets`` need torch-cluster / torch-sparse, which have no
wheels on PyPI; these versions need nothing but torch and are tested against brute force.

Edges follow PyG's ``source_to_target`` convention: ``edge_index[0]`` is the sender ``j``,
``edge_index[1]`` the receiver ``i``. The edge vector of message ``j → i`` is ``r_ij = pos[i] - pos[j]``
(:func:`edge_vectors`), in every geomol layer; a paper written with ``pos[j] - pos[i]`` (PONITA) is
implemented with ``-r_ij``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["radius_graph", "full_graph", "triplets", "Triplets", "edge_vectors"]

# Upper bound on the number of candidate pairs held in memory at once (int64 indices + distances).
_PAIR_CHUNK = 1 << 22


def _sorted_batch(batch: Tensor | None, num_nodes: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Return a sorted batch vector and the permutation that sorted it (None if already sorted)."""
    if batch is None:
        return torch.zeros(num_nodes, dtype=torch.long, device=device), None
    if batch.numel() != num_nodes:
        raise ValueError(f"batch has {batch.numel()} entries but there are {num_nodes} nodes")
    if num_nodes > 1 and bool((batch[1:] < batch[:-1]).any()):
        perm = torch.argsort(batch, stable=True)
        return batch[perm], perm
    return batch, None


def _intra_graph_pairs(batch: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """All (j, i) with i in [start, stop) and j in the same graph as i (batch sorted)."""
    device = batch.device
    counts = torch.bincount(batch)
    ptr = torch.zeros(counts.numel() + 1, dtype=torch.long, device=device)
    ptr[1:] = torch.cumsum(counts, 0)
    i_nodes = torch.arange(start, stop, device=device)
    per_node = counts[batch[i_nodes]]
    i = torch.repeat_interleave(i_nodes, per_node)
    first = torch.cumsum(per_node, 0) - per_node
    offset = torch.arange(i.numel(), device=device) - torch.repeat_interleave(first, per_node)
    j = ptr[batch[i]] + offset
    return j, i


def _node_chunks(batch: Tensor) -> list[tuple[int, int]]:
    """Split target nodes into contiguous chunks whose candidate pairs fit in ``_PAIR_CHUNK``."""
    counts = torch.bincount(batch)
    per_node = counts[batch]
    cum = torch.cumsum(per_node, 0).tolist()
    chunks, start, base = [], 0, 0
    for node, total in enumerate(cum):
        if total - base > _PAIR_CHUNK and node > start:
            chunks.append((start, node))
            start, base = node, cum[node - 1]
    chunks.append((start, len(cum)))
    return chunks


def radius_graph(
    pos: Tensor,
    r: float,
    batch: Tensor | None = None,
    loop: bool = False,
    max_num_neighbors: int | None = 32,
) -> Tensor:
    """Edges between nodes of the same graph closer than ``r``.

    Unlike torch-cluster (which keeps an arbitrary subset), when a node has more than
    ``max_num_neighbors`` neighbours the nearest ones are kept, so the result does not depend on
    the order of the nodes.

    Args:
        pos: node positions.
        r: cutoff radius (inclusive).
        batch: graph index of each node (need not be sorted); ``None`` means one graph.
        loop: keep self-loops.
        max_num_neighbors: at most this many incoming edges per node; ``None`` for no limit.

    Shapes:
        pos ``[N, D]``, batch ``[N]`` -> edge_index ``[2, E]`` (row 0 source ``j``, row 1 target
        ``i``), sorted by target, then by distance.
    """
    if pos.dim() != 2:
        raise ValueError(f"pos must have shape [N, D], got {tuple(pos.shape)}")
    num_nodes = pos.size(0)
    if num_nodes == 0:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    batch_sorted, perm = _sorted_batch(batch, num_nodes, pos.device)
    pos_sorted = pos if perm is None else pos[perm]

    sources, targets, dists = [], [], []
    for start, stop in _node_chunks(batch_sorted):
        j, i = _intra_graph_pairs(batch_sorted, start, stop)
        d = (pos_sorted[i] - pos_sorted[j]).detach().norm(dim=-1)
        keep = d <= r
        if not loop:
            keep &= i != j
        sources.append(j[keep])
        targets.append(i[keep])
        dists.append(d[keep])
    j, i, d = torch.cat(sources), torch.cat(targets), torch.cat(dists)

    if max_num_neighbors is not None:
        # Sort by (target, distance): stable sort on distance, then on target.
        order = torch.argsort(d, stable=True)
        order = order[torch.argsort(i[order], stable=True)]
        j, i = j[order], i[order]
        counts = torch.bincount(i, minlength=num_nodes)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(i.numel(), device=pos.device) - first[i]
        keep = rank < max_num_neighbors
        j, i = j[keep], i[keep]

    edge_index = torch.stack([j, i])
    if perm is not None:
        edge_index = perm[edge_index]
    return edge_index


def full_graph(batch: Tensor, loop: bool = False) -> Tensor:
    """All ordered pairs of nodes within each graph.

    Shapes:
        batch ``[N]`` -> edge_index ``[2, E]`` with ``E = Σ_g n_g (n_g - 1)`` (``n_g²`` with loops).
    """
    num_nodes = batch.numel()
    if num_nodes == 0:
        return torch.empty(2, 0, dtype=torch.long, device=batch.device)
    batch_sorted, perm = _sorted_batch(batch, num_nodes, batch.device)
    j, i = _intra_graph_pairs(batch_sorted, 0, num_nodes)
    if not loop:
        keep = i != j
        j, i = j[keep], i[keep]
    edge_index = torch.stack([j, i])
    if perm is not None:
        edge_index = perm[edge_index]
    return edge_index


class Triplets(NamedTuple):
    """Two-hop paths ``k → j → i`` with ``k ≠ i``.

    ``idx_kj`` and ``idx_ji`` index the edges ``k → j`` and ``j → i`` in ``edge_index``.
    """

    idx_i: Tensor
    idx_j: Tensor
    idx_k: Tensor
    idx_kj: Tensor
    idx_ji: Tensor


def triplets(edge_index: Tensor, num_nodes: int) -> Triplets:
    """Every pair of edges ``(k → j, j → i)`` sharing node ``j``, with ``k ≠ i`` (DimeNet, Eq. 4).

    Shapes:
        edge_index ``[2, E]`` -> five index tensors ``[T]``, grouped by the edge ``j → i``.
    """
    source, target = edge_index
    device = edge_index.device
    # Incoming edges of every node, contiguous after sorting by target.
    by_target = torch.argsort(target, stable=True)
    in_degree = torch.bincount(target, minlength=num_nodes)
    in_ptr = torch.cumsum(in_degree, 0) - in_degree

    # For edge j → i, its candidates are the incoming edges of j.
    per_edge = in_degree[source]
    idx_ji = torch.repeat_interleave(torch.arange(source.numel(), device=device), per_edge)
    first = torch.cumsum(per_edge, 0) - per_edge
    offset = torch.arange(idx_ji.numel(), device=device) - torch.repeat_interleave(first, per_edge)
    idx_kj = by_target[in_ptr[source[idx_ji]] + offset]

    idx_i = target[idx_ji]
    idx_j = source[idx_ji]
    idx_k = source[idx_kj]
    keep = idx_k != idx_i
    return Triplets(idx_i[keep], idx_j[keep], idx_k[keep], idx_kj[keep], idx_ji[keep])


def edge_vectors(pos: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
    """Vectors ``pos[i] - pos[j]`` along each edge ``j → i`` and their lengths.

    Shapes:
        pos ``[N, 3]``, edge_index ``[2, E]`` -> (vec ``[E, 3]``, dist ``[E]``).
    """
    vec = pos[edge_index[1]] - pos[edge_index[0]]
    return vec, vec.norm(dim=-1)
