"""PropMolFlow's vector field: a geometry-complete GVP network on the complete molecular graph.

Given a noisy molecule at time ``t`` (positions ``x_t``, atom types, formal charges and bond orders,
each categorical possibly in its mask state) the network predicts the clean molecule: positions
``x̂_1`` and logits of ``p(a_1 | x_t)``, ``p(c_1 | x_t)``, ``p(e_1 | x_t)`` (FlowMol, Dunn & Koes 2024,
Sec. 3.3; PropMolFlow, Zeng et al. 2025). Each of ``n_updates`` molecule updates runs one
:class:`~geomol.nn.gvp.GVPConv`, moves the atoms (:class:`~geomol.nn.gvp.GVPPositionUpdate`) and
refreshes the pair features (:class:`~geomol.nn.gvp.GVPEdgeUpdate`). Properties enter after the input
embedding (:class:`~geomol.flows.conditioning.PropertyConditioning`).

The cross products in the GVPs make the field SE(3)- but not E(3)-equivariant: positions rotate with
the input, categorical logits are invariant, mirror images are not treated alike.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.utils import scatter

from geomol.flows.bonds import pair_edge_index
from geomol.flows.conditioning import PropertyConditioning
from geomol.flows.molecule import MoleculeState
from geomol.nn.graph import edge_vectors
from geomol.nn.gvp import GVPConv, GVPEdgeUpdate, GVPPositionUpdate
from geomol.nn.radial import GaussianBasis

__all__ = ["PropMolFlow", "FieldOutput"]


class FieldOutput(NamedTuple):
    """Predicted clean molecule: centred positions and logits of the three categorical variables."""

    pos: Tensor  # [N, 3]
    atom_logits: Tensor  # [N, num_atom_types]
    charge_logits: Tensor  # [N, num_charges]
    bond_logits: Tensor  # [P, num_bond_types]


def _embedding_mlp(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        nn.SiLU(),
        nn.Linear(out_features, out_features),
        nn.SiLU(),
        nn.LayerNorm(out_features),
    )


def _head(features: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, features), nn.SiLU(), nn.Linear(features, out))


class PropMolFlow(nn.Module):
    """Endpoint-predicting vector field for atoms, charges, bonds and positions.

    Args:
        num_atom_types: element classes (H, C, N, O, F for QM9).
        num_charges: formal-charge classes (-2…+3 for QM9).
        num_bond_types: bond classes including "none" (none, single, double, triple, aromatic).
        scalars: node scalar channels.
        vectors: node vector channels.
        edge_features: pair feature channels.
        n_updates: molecule updates (convolution + position update + pair update).
        n_message_gvps: depth of each convolution's message function.
        n_update_gvps: depth of each convolution's node update.
        n_position_gvps: depth of each position update.
        n_cp_feats: cross-product features per GVP.
        rbf_dim: Gaussians of the distance expansion.
        rbf_dmax: centre of the last Gaussian (Å); the width is ``rbf_dmax / rbf_dim`` as in FlowMol.
        message_norm: aggregated messages are divided by this constant.
        num_properties: conditioning properties (0: unconditional).
        conditioning: keyword arguments of :class:`~geomol.flows.conditioning.PropertyConditioning`
            (``method``, ``gaussian_expansion``, ``n_gaussians``, ...); ignored when unconditional.

    Shapes:
        state: a :class:`~geomol.flows.molecule.MoleculeState` with atom_type ``[N]``, charge ``[N]``
        (class indices, ``num_*`` is the mask), pos ``[N, 3]``, bond_type ``[P]``, pairs ``[2, P]``
        (``i < j``), batch ``[N]``, t ``[B]``; condition ``[B, num_properties]``; unconditional ``[B]``
        (bool, optional) -> :class:`FieldOutput`
    """

    def __init__(
        self,
        num_atom_types: int = 5,
        num_charges: int = 6,
        num_bond_types: int = 5,
        scalars: int = 256,
        vectors: int = 16,
        edge_features: int = 128,
        n_updates: int = 8,
        n_message_gvps: int = 3,
        n_update_gvps: int = 3,
        n_position_gvps: int = 3,
        n_cp_feats: int = 4,
        rbf_dim: int = 32,
        rbf_dmax: float = 14.0,
        message_norm: float = 100.0,
        num_properties: int = 0,
        conditioning: dict | None = None,
    ) -> None:
        super().__init__()
        if n_updates < 1:
            raise ValueError(f"n_updates must be at least 1, got {n_updates}")
        self.num_atom_types, self.num_charges, self.num_bond_types = num_atom_types, num_charges, num_bond_types
        self.vectors, self.edge_features = vectors, edge_features
        self.num_properties = num_properties
        # One extra input class per variable for its mask state, plus the time.
        self.node_embedding = _embedding_mlp(num_atom_types + num_charges + 3, scalars)
        self.edge_embedding = _embedding_mlp(num_bond_types + 1, edge_features)
        self.condition = (
            PropertyConditioning(num_properties, scalars, **(conditioning or {})) if num_properties > 0 else None
        )
        self.rbf = GaussianBasis(0.0, rbf_dmax, rbf_dim, gamma=(rbf_dim / rbf_dmax) ** 2)
        self.convs = nn.ModuleList(
            GVPConv(scalars, vectors, edge_features, rbf_dim, n_message_gvps, n_update_gvps, n_cp_feats, message_norm)
            for _ in range(n_updates)
        )
        self.position_updates = nn.ModuleList(
            GVPPositionUpdate(scalars, vectors, n_position_gvps, n_cp_feats) for _ in range(n_updates)
        )
        self.edge_updates = nn.ModuleList(GVPEdgeUpdate(scalars, edge_features, rbf_dim) for _ in range(n_updates))
        self.node_head = _head(scalars, num_atom_types + num_charges)
        self.bond_head = _head(edge_features, num_bond_types)

    def _geometry(self, pos: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
        """Unit vectors ``[2P, 3]`` and distance expansions ``[2P, rbf_dim]`` of the edges of
        :func:`~geomol.flows.bonds.pair_edge_index`, computed once per pair: edge ``k + P`` is edge ``k``
        reversed, its unit vector exactly the negated one, its distance the same."""
        vec, dist = edge_vectors(pos, pairs)
        unit, rbf = vec / (dist.unsqueeze(-1) + 1e-8), self.rbf(dist)
        return torch.cat([unit, -unit]), torch.cat([rbf, rbf])

    def forward(
        self, state: MoleculeState, condition: Tensor | None = None, unconditional: Tensor | None = None
    ) -> FieldOutput:
        """Predict the clean molecule from the noisy ``state`` (which must carry pairs, batch and t),
        given standardised properties ``condition`` ``[B, num_properties]`` for a conditional field.
        Molecules flagged in ``unconditional`` ``[B]`` ignore their condition (the null condition of
        classifier-free guidance)."""
        missing = [name for name in ("pairs", "batch", "t") if getattr(state, name) is None]
        if missing:
            raise ValueError(f"the field needs the state's pairs, batch and t; {', '.join(missing)} missing")
        pos, atom_type, charge, bond_type, pairs, batch, t = state
        if (condition is None) != (self.condition is None):
            raise ValueError(
                f"this field was built for {self.num_properties} conditioning properties but got "
                f"{'none' if condition is None else tuple(condition.shape)}"
            )
        num_graphs = t.numel()
        h = self.node_embedding(
            torch.cat(
                [
                    F.one_hot(atom_type, self.num_atom_types + 1).to(pos.dtype),
                    F.one_hot(charge, self.num_charges + 1).to(pos.dtype),
                    t.to(pos.dtype)[batch].unsqueeze(-1),
                ],
                dim=-1,
            )
        )
        if self.condition is not None:
            h = self.condition(h, condition.to(pos.dtype), batch, unconditional)
        edge_index = pair_edge_index(pairs)
        e = self.edge_embedding(F.one_hot(bond_type, self.num_bond_types + 1).to(pos.dtype)).repeat(2, 1)  # [2P, F]
        v = pos.new_zeros(pos.size(0), 3, self.vectors)
        unit, rbf = self._geometry(pos, pairs)
        for conv, move, refresh in zip(self.convs, self.position_updates, self.edge_updates):
            h, v = conv(h, v, edge_index, unit, rbf, e)
            pos = move(h, pos, v)
            unit, rbf = self._geometry(pos, pairs)
            e = refresh(h, edge_index, e, rbf)
        # The flow lives in the zero-centroid subspace: remove the drift of the position updates.
        pos = pos - scatter(pos, batch, 0, dim_size=num_graphs, reduce="mean")[batch]
        nodes = self.node_head(h)
        num_pairs = pairs.size(1)
        bonds = self.bond_head(e[:num_pairs] + e[num_pairs:])  # symmetric in i <-> j
        return FieldOutput(pos, nodes[:, : self.num_atom_types], nodes[:, self.num_atom_types :], bonds)
