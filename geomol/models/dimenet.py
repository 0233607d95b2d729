"""DimeNet (Gasteiger et al., ICLR 2020) and DimeNet++ (Gasteiger et al., 2020) on a plain pip install.

Same constructor arguments, defaults and parameter names as ``torch_geometric.nn.models.DimeNet`` /
``DimeNetPlusPlus``, so ``from_pyg`` copies a PyG model (trained or pretrained) as it is. The radius
graph and the triplets come from :mod:`geomol.nn.graph` (pure torch), and the triplet step runs as a
sparse product (:mod:`geomol.nn.triplet_sum`), so neither torch-cluster nor torch-sparse is needed.

Example::

    model = DimeNetPlusPlus(hidden_channels=128, out_channels=1, num_blocks=4, int_emb_size=64,
                            basis_emb_size=8, out_emb_channels=256, num_spherical=7, num_radial=6)
    energy = model(z, pos, batch)                                  # [num_graphs, 1]
    forces = -torch.autograd.grad(energy.sum(), pos, create_graph=True)[0]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from geomol.nn.dimenet import (
    NUM_ELEMENTS,
    Activation,
    EmbeddingBlock,
    InteractionBlock,
    InteractionPPBlock,
    OutputBlock,
    OutputPPBlock,
    SphericalBasis,
)
from geomol.nn.graph import Triplets, edge_vectors, radius_graph, triplets
from geomol.nn.radial import BesselBasis
from geomol.nn.triplet_sum import TripletSum

__all__ = ["DimeNet", "DimeNetPlusPlus"]


class _DirectionalMessagePassing(nn.Module):
    """Bases, embedding, ``num_blocks`` interaction blocks and ``num_blocks + 1`` output blocks."""

    #: Where the triplet angle is measured. The authors' DimeNet code (and PyG, whose weights this
    #: class loads) uses the angle at ``i`` between ``i → j`` and ``i → k``; DimeNet++ uses the
    #: paper's angle between the messages ``j → i`` and ``k → j``.
    angle_at_i: bool

    def __init__(
        self,
        hidden_channels: int,
        num_spherical: int,
        num_radial: int,
        cutoff: float,
        max_num_neighbors: int,
        envelope_exponent: int,
        act: str | Activation,
        interaction_blocks: list[nn.Module],
        output_blocks: list[nn.Module],
    ) -> None:
        super().__init__()
        if num_spherical < 2:
            raise ValueError(f"num_spherical must be at least 2, got {num_spherical}")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.cutoff = cutoff
        self.max_num_neighbors = max_num_neighbors
        self.num_blocks = len(interaction_blocks)
        self.rbf = BesselBasis(num_radial, cutoff, envelope_exponent)
        self.sbf = SphericalBasis(num_spherical, num_radial, cutoff, envelope_exponent)
        self.emb = EmbeddingBlock(num_radial, hidden_channels, act)
        self.output_blocks = nn.ModuleList(output_blocks)
        self.interaction_blocks = nn.ModuleList(interaction_blocks)

    def reset_parameters(self) -> None:
        with torch.no_grad():  # the Bessel frequencies start at nπ
            self.rbf.freq.copy_(torch.arange(1, self.rbf.num_radial + 1) * math.pi)
        for module in (self.emb, *self.output_blocks, *self.interaction_blocks):
            module.reset_parameters()

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor | None = None) -> Tensor:
        """Predict one value per graph and output channel.

        Args:
            z: atomic numbers (< 95).
            pos: positions in Å.
            batch: graph index of each atom; ``None`` for a single graph.

        Shapes:
            z ``[N]``, pos ``[N, 3]``, batch ``[N]`` -> ``[num_graphs, out_channels]``
        """
        edge_index, trip, batch, num_graphs = self._connectivity(z, pos, batch)
        num_nodes = z.numel()
        j, i = edge_index
        vec, dist = edge_vectors(pos, edge_index)  # vec = pos[i] - pos[j]
        v_ji, v_kj = vec[trip.idx_ji], vec[trip.idx_kj]
        other = v_ji + v_kj if self.angle_at_i else v_kj  # pos[i] - pos[k], or pos[j] - pos[k]
        # atan2 keeps full precision near 0 and π, where acos of a normalised dot product does not.
        angle = (v_ji.cross(other, dim=-1).norm(dim=-1)).atan2((v_ji * other).sum(dim=-1))  # [T]

        rbf = self.rbf(dist)  # [E, N]
        sbf_radial = self.sbf.radial(dist)  # [E, L, N]
        triplet_sum = TripletSum(self.sbf.angular(angle), trip.idx_kj, trip.idx_ji, dist.numel())

        x = self.emb(z, rbf, i, j)  # [E, H]
        out = self.output_blocks[0](x, rbf, i, num_nodes)  # [N, out_channels]
        for interaction, output in zip(self.interaction_blocks, self.output_blocks[1:]):
            x = interaction(x, rbf, sbf_radial, triplet_sum)
            out = out + output(x, rbf, i, num_nodes)

        return out.new_zeros(num_graphs, out.size(1)).index_add(0, batch, out)

    @torch.compiler.disable
    def _connectivity(self, z: Tensor, pos: Tensor, batch: Tensor | None) -> tuple[Tensor, Triplets, Tensor, int]:
        """Input checks, radius graph and triplets. Their shapes depend on the data, so under
        ``torch.compile`` they run eagerly and the dense computation around them is compiled."""
        if z.dim() != 1 or pos.shape != (z.numel(), 3):
            raise ValueError(f"expected z [N] and pos [N, 3], got z {tuple(z.shape)} and pos {tuple(pos.shape)}")
        if z.numel() and (int(z.min()) < 0 or int(z.max()) >= NUM_ELEMENTS):
            raise ValueError(f"atomic numbers must lie in [0, {NUM_ELEMENTS - 1}], got {int(z.min())}..{int(z.max())}")
        if batch is None:
            batch = torch.zeros_like(z)
        edge_index = radius_graph(pos, self.cutoff, batch, max_num_neighbors=self.max_num_neighbors)
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        return edge_index, triplets(edge_index, z.numel()), batch, num_graphs

    @staticmethod
    def _pyg_settings(model: nn.Module) -> dict:
        """Constructor arguments shared by PyG's DimeNet and DimeNet++, read off a PyG model."""
        from torch_geometric.nn.resolver import swish

        out = model.output_blocks[0]
        interaction = model.interaction_blocks[0]
        act = model.emb.act
        return dict(
            hidden_channels=model.emb.emb.weight.size(1),
            out_channels=out.lin.out_features,
            num_blocks=model.num_blocks,
            num_spherical=model.sbf.num_spherical,
            num_radial=model.sbf.num_radial,
            cutoff=model.cutoff,
            max_num_neighbors=model.max_num_neighbors,
            envelope_exponent=model.rbf.envelope.p - 1,
            num_before_skip=len(interaction.layers_before_skip),
            num_after_skip=len(interaction.layers_after_skip),
            num_output_layers=len(out.lins),
            act="swish" if act is swish else act,
            output_initializer=out.output_initializer,
        )

    def _load_pyg(self, model: nn.Module) -> _DirectionalMessagePassing:
        parameter = next(model.parameters())
        self.to(device=parameter.device, dtype=parameter.dtype)
        # Same parameter names and shapes as PyG; strict loading catches any mismatch.
        self.load_state_dict(model.state_dict())
        return self.train(model.training)


class DimeNet(_DirectionalMessagePassing):
    r"""Directional message passing network (Gasteiger, Groß & Günnemann, ICLR 2020).

    Args:
        hidden_channels: message size.
        out_channels: number of targets.
        num_blocks: interaction blocks.
        num_bilinear: size of the bilinear layer.
        num_spherical: degrees of the spherical basis.
        num_radial: radial basis functions.
        cutoff: radius graph cutoff (Å).
        max_num_neighbors: neighbours kept per atom (nearest first).
        envelope_exponent: shape of the smooth cutoff.
        num_before_skip, num_after_skip: residual layers around each block's skip connection.
        num_output_layers: dense layers in each output block.
        act: activation (``"swish"``, a ``torch.nn.functional`` name, or a callable).
        output_initializer: ``"zeros"`` or ``"glorot_orthogonal"`` for the output layers.

    Shapes:
        z ``[N]``, pos ``[N, 3]``, batch ``[N]`` -> ``[num_graphs, out_channels]``
    """

    angle_at_i = True

    def __init__(
        self,
        hidden_channels: int,
        out_channels: int,
        num_blocks: int,
        num_bilinear: int,
        num_spherical: int,
        num_radial: int,
        cutoff: float = 5.0,
        max_num_neighbors: int = 32,
        envelope_exponent: int = 5,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_output_layers: int = 3,
        act: str | Activation = "swish",
        output_initializer: str = "zeros",
    ) -> None:
        super().__init__(
            hidden_channels,
            num_spherical,
            num_radial,
            cutoff,
            max_num_neighbors,
            envelope_exponent,
            act,
            interaction_blocks=[
                InteractionBlock(
                    hidden_channels,
                    num_bilinear,
                    num_spherical,
                    num_radial,
                    num_before_skip,
                    num_after_skip,
                    act,
                )
                for _ in range(num_blocks)
            ],
            output_blocks=[
                OutputBlock(num_radial, hidden_channels, out_channels, num_output_layers, act, output_initializer)
                for _ in range(num_blocks + 1)
            ],
        )

    @classmethod
    def from_pyg(cls, model: nn.Module) -> DimeNet:
        """A geomol DimeNet with the architecture and weights of a ``torch_geometric.nn.models.DimeNet``."""
        from torch_geometric.nn.models import DimeNet as PyGDimeNet
        from torch_geometric.nn.models import DimeNetPlusPlus as PyGDimeNetPlusPlus

        if not isinstance(model, PyGDimeNet) or isinstance(model, PyGDimeNetPlusPlus):
            raise ValueError(f"expected a torch_geometric.nn.models.DimeNet, got {type(model).__name__}")
        settings = cls._pyg_settings(model)
        return cls(num_bilinear=model.interaction_blocks[0].W.size(1), **settings)._load_pyg(model)


class DimeNetPlusPlus(_DirectionalMessagePassing):
    r"""DimeNet++ (Gasteiger, Giri, Margraf & Günnemann, 2020): DimeNet with down-projected triplet
    interactions, basis embeddings and wider output blocks.

    Args:
        hidden_channels: message size.
        out_channels: number of targets.
        num_blocks: interaction blocks.
        int_emb_size: size of the triplet interaction.
        basis_emb_size: size of the basis embeddings in the interaction blocks.
        out_emb_channels: width of the output blocks.
        num_spherical: degrees of the spherical basis.
        num_radial: radial basis functions.
        cutoff: radius graph cutoff (Å).
        max_num_neighbors: neighbours kept per atom (nearest first).
        envelope_exponent: shape of the smooth cutoff.
        num_before_skip, num_after_skip: residual layers around each block's skip connection.
        num_output_layers: dense layers in each output block.
        act: activation (``"swish"``, a ``torch.nn.functional`` name, or a callable).
        output_initializer: ``"zeros"`` or ``"glorot_orthogonal"`` for the output layers.

    Shapes:
        z ``[N]``, pos ``[N, 3]``, batch ``[N]`` -> ``[num_graphs, out_channels]``
    """

    angle_at_i = False

    def __init__(
        self,
        hidden_channels: int,
        out_channels: int,
        num_blocks: int,
        int_emb_size: int,
        basis_emb_size: int,
        out_emb_channels: int,
        num_spherical: int,
        num_radial: int,
        cutoff: float = 5.0,
        max_num_neighbors: int = 32,
        envelope_exponent: int = 5,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_output_layers: int = 3,
        act: str | Activation = "swish",
        output_initializer: str = "zeros",
    ) -> None:
        super().__init__(
            hidden_channels,
            num_spherical,
            num_radial,
            cutoff,
            max_num_neighbors,
            envelope_exponent,
            act,
            interaction_blocks=[
                InteractionPPBlock(
                    hidden_channels,
                    int_emb_size,
                    basis_emb_size,
                    num_spherical,
                    num_radial,
                    num_before_skip,
                    num_after_skip,
                    act,
                )
                for _ in range(num_blocks)
            ],
            output_blocks=[
                OutputPPBlock(
                    num_radial,
                    hidden_channels,
                    out_emb_channels,
                    out_channels,
                    num_output_layers,
                    act,
                    output_initializer,
                )
                for _ in range(num_blocks + 1)
            ],
        )

    @classmethod
    def from_pyg(cls, model: nn.Module) -> DimeNetPlusPlus:
        """A geomol DimeNet++ with the architecture and weights of a ``torch_geometric.nn.models.DimeNetPlusPlus``."""
        from torch_geometric.nn.models import DimeNetPlusPlus as PyGDimeNetPlusPlus

        if not isinstance(model, PyGDimeNetPlusPlus):
            raise ValueError(f"expected a torch_geometric.nn.models.DimeNetPlusPlus, got {type(model).__name__}")
        interaction = model.interaction_blocks[0]
        return cls(
            int_emb_size=interaction.lin_down.out_features,
            basis_emb_size=interaction.lin_rbf1.out_features,
            out_emb_channels=model.output_blocks[0].lin_up.out_features,
            **cls._pyg_settings(model),
        )._load_pyg(model)
