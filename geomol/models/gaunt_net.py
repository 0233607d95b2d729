"""GauntNet: a MACE-like interatomic potential built from Gaunt tensor products (Luo et al., ICLR 2024).

MACE (Batatia et al., NeurIPS 2022) with its two Clebsch–Gordan steps replaced as in the Gaunt paper's
MACE variant (Sec. 3.3 and 5.2): the convolution of neighbour features with ``R(r) Y(r̂)`` is a
:class:`~geomol.nn.gaunt.GauntConv`, the symmetric contraction to body order ``correlation + 1`` is a
:class:`~geomol.nn.gaunt.GauntManyBody` with per-element weights. Each interaction layer reads out an
atomic energy from its invariant channels; the sum over layers and atoms is the prediction.

A property model for :class:`geomol.tasks.property.PropertyTask`: ``forward(z, pos, batch)`` returns
``[num_graphs, out_channels]`` and is differentiable in ``pos`` (forces ``-∂E/∂pos``).
"""

from __future__ import annotations

import warnings

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter

from geomol.nn.gaunt import GauntConv, GauntManyBody, SHLinear
from geomol.nn.graph import radius_graph

__all__ = ["GauntNet"]


class GauntInteraction(nn.Module):
    """One MACE interaction and product block (MACE Eq. 8-13, with Gaunt products).

    ``h ← linear(many_body(conv(linear_up(h)))) + skip(h)``, then an atomic readout of ``h``'s ``l = 0`` part.

    Shapes:
        h ``[N, C, (lmax+1)²]``, z ``[N]``, pos ``[N, 3]``, edge_index ``[2, E]`` ->
        (h ``[N, C, (lmax+1)²]``, atomic outputs ``[N, out_channels]``).
    """

    def __init__(
        self,
        channels: int,
        lmax: int,
        lmax_filter: int,
        correlation: int,
        num_elements: int,
        out_channels: int,
        readout_hidden: int | None,
        conv_kwargs: dict,
    ) -> None:
        super().__init__()
        self.linear_up = SHLinear(channels, channels, lmax)
        self.conv = GauntConv(lmax, lmax_filter, lmax, channels, **conv_kwargs)
        self.many_body = GauntManyBody(lmax, channels, correlation, num_elements=num_elements)
        self.linear = SHLinear(channels, channels, lmax)
        self.skip = SHLinear(channels, channels, lmax)
        if readout_hidden is None:
            self.readout = nn.Linear(channels, out_channels)
        else:
            self.readout = nn.Sequential(
                nn.Linear(channels, readout_hidden), nn.SiLU(), nn.Linear(readout_hidden, out_channels)
            )

    def forward(self, h: Tensor, z: Tensor, pos: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        messages = self.conv(self.linear_up(h), pos, edge_index)  # [N, C, K]
        h = self.linear(self.many_body(messages, z)) + self.skip(h)  # [N, C, K]
        return h, self.readout(h[..., 0])


class GauntNet(nn.Module):
    """MACE-like network of Gaunt convolutions and Gaunt many-body products with invariant readouts.

    Args:
        out_channels: number of predicted targets (energy: 1).
        channels: feature channels per degree.
        lmax: largest degree of the node features.
        lmax_filter: largest degree of the edge spherical harmonics (default ``lmax``).
        num_layers: interaction layers.
        correlation: body order minus one of the many-body product (MACE uses 3).
        cutoff: radius graph and radial cutoff (Å).
        num_radial: Bessel functions of the radial basis.
        radial_hidden: width of the radial MLPs.
        avg_num_neighbors: normalisation of summed messages (typical neighbour count).
        max_num_neighbors: neighbours kept per atom (nearest first).
        num_elements: atomic numbers ``z = 0 … num_elements - 1`` get element-dependent weights.
        readout_hidden: width of the last layer's readout MLP (earlier layers read out linearly).
        readout: ``"sum"`` (extensive targets such as energies) or ``"mean"`` over atoms.
        max_z: deprecated, ``num_elements - 1`` (the name older checkpoints store, e.g.
            ``pretrained/gaunt_rmd17_ethanol_cpu``); when given it sets ``num_elements``.

    Shapes:
        z ``[N]``, pos ``[N, 3]``, batch ``[N]`` -> ``[num_graphs, out_channels]``.
    """

    def __init__(
        self,
        out_channels: int = 1,
        channels: int = 64,
        lmax: int = 2,
        lmax_filter: int | None = None,
        num_layers: int = 2,
        correlation: int = 3,
        cutoff: float = 5.0,
        num_radial: int = 8,
        radial_hidden: int = 64,
        avg_num_neighbors: float = 10.0,
        max_num_neighbors: int = 32,
        num_elements: int = 11,
        readout_hidden: int = 16,
        readout: str = "sum",
        max_z: int | None = None,
    ) -> None:
        super().__init__()
        if max_z is not None:
            warnings.warn("GauntNet(max_z=m) is deprecated; use num_elements=m + 1", DeprecationWarning, stacklevel=2)
            num_elements = max_z + 1
        if readout not in ("sum", "mean"):
            raise ValueError(f"readout must be 'sum' or 'mean', got {readout!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.channels, self.lmax, self.num_elements = channels, lmax, num_elements
        self.cutoff, self.max_num_neighbors, self.readout = cutoff, max_num_neighbors, readout
        self.embedding = nn.Embedding(num_elements, channels)
        conv_kwargs = dict(
            num_radial=num_radial, cutoff=cutoff, radial_hidden=radial_hidden, avg_num_neighbors=avg_num_neighbors
        )
        self.layers = nn.ModuleList(
            GauntInteraction(
                channels,
                lmax,
                lmax if lmax_filter is None else lmax_filter,
                correlation,
                num_elements,
                out_channels,
                readout_hidden if t == num_layers - 1 else None,
                conv_kwargs,
            )
            for t in range(num_layers)
        )

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        """Graph-level predictions.

        Shapes:
            z ``[N]``, pos ``[N, 3]``, batch ``[N]`` -> ``[num_graphs, out_channels]``.
        """
        if z.numel() and (int(z.min()) < 0 or int(z.max()) >= self.num_elements):
            raise ValueError(
                f"atomic numbers must lie in 0 … {self.num_elements - 1} (num_elements={self.num_elements}), "
                f"got {int(z.max())}"
            )
        edge_index = radius_graph(pos, self.cutoff, batch, max_num_neighbors=self.max_num_neighbors)
        # Invariant embedding in the l = 0 slot, zeros for l > 0: [N, C, (lmax+1)²].
        h = F.pad(self.embedding(z).unsqueeze(-1), (0, (self.lmax + 1) ** 2 - 1))
        atomic = 0
        for layer in self.layers:
            h, out = layer(h, z, pos, edge_index)
            atomic = atomic + out
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        return scatter(atomic, batch, dim=0, dim_size=num_graphs, reduce=self.readout)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, num_elements={self.num_elements}, readout={self.readout!r}"
