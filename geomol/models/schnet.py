"""SchNet (Schütt et al., NeurIPS 2017): the invariant baseline of geomol's property models."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.utils import scatter

from ..nn.cfconv import SchNetInteraction, ShiftedSoftplus
from ..nn.graph import edge_vectors, radius_graph
from ..nn.radial import GaussianBasis

__all__ = ["SchNet"]


class SchNet(nn.Module):
    """Atom embeddings refined by continuous-filter interactions, summed (or averaged) over atoms.

    Args:
        out_channels: number of predicted targets.
        hidden_channels: atom feature size.
        num_filters: filter network width.
        num_interactions: interaction blocks.
        num_basis: Gaussians in the radial basis.
        cutoff: radius graph cutoff (Å).
        max_num_neighbors: neighbours kept per atom (nearest first).
        readout: ``"sum"`` (extensive targets) or ``"mean"``.
        num_elements: atomic numbers ``z = 0 … num_elements - 1`` are embedded.

    Shapes:
        z ``[N]``, pos ``[N, 3]``, batch ``[N]`` -> ``[num_graphs, out_channels]``
    """

    def __init__(
        self,
        out_channels: int = 1,
        hidden_channels: int = 128,
        num_filters: int = 128,
        num_interactions: int = 6,
        num_basis: int = 50,
        cutoff: float = 5.0,
        max_num_neighbors: int = 32,
        readout: str = "sum",
        num_elements: int = 101,
    ) -> None:
        super().__init__()
        if readout not in ("sum", "mean"):
            raise ValueError(f"readout must be 'sum' or 'mean', got {readout!r}")
        self.cutoff, self.max_num_neighbors, self.readout = cutoff, max_num_neighbors, readout
        self.embedding = nn.Embedding(num_elements, hidden_channels)
        self.basis = GaussianBasis(0.0, cutoff, num_basis)
        self.interactions = nn.ModuleList(
            SchNetInteraction(hidden_channels, num_filters, num_basis, cutoff) for _ in range(num_interactions)
        )
        self.head = nn.Sequential(
            nn.Linear(hidden_channels, hidden_channels // 2),
            ShiftedSoftplus(),
            nn.Linear(hidden_channels // 2, out_channels),
        )

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        edge_index = radius_graph(pos, self.cutoff, batch, max_num_neighbors=self.max_num_neighbors)
        _, dist = edge_vectors(pos, edge_index)
        basis = self.basis(dist)  # [E, num_basis]
        x = self.embedding(z)  # [N, C]
        for interaction in self.interactions:
            x = interaction(x, edge_index, dist, basis)
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        return scatter(self.head(x), batch, 0, dim_size=num_graphs, reduce=self.readout)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, readout={self.readout!r}"
