"""GVP property regressor: the evaluator of PropMolFlow's generated molecules (Zeng et al. 2025, Sec. 3.2).

A geomol property model (``forward(z, pos, batch) -> [num_graphs, out_channels]``, trained by
:class:`geomol.tasks.PropertyTask`): atoms embedded by element, ``num_layers`` GVP convolutions on the
complete graph of each molecule with a Gaussian expansion of the distances, an MLP per atom and a
mean (or sum) over atoms. It reads only elements and coordinates, so it scores any generated
molecule, whatever bonds the generator drew. Without cross products it is E(3)-invariant, as
scalar properties of mirror images are equal.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.utils import scatter

from geomol.nn.graph import edge_vectors, full_graph
from geomol.nn.gvp import GVPConv
from geomol.nn.radial import GaussianBasis

__all__ = ["GVPRegressor"]


class GVPRegressor(nn.Module):
    """Invariant GVP network predicting molecular properties.

    Args:
        out_channels: number of predicted properties (set by the task).
        scalars: node scalar channels.
        vectors: node vector channels.
        num_layers: GVP convolutions.
        n_message_gvps, n_update_gvps: depth of each convolution's message and update functions.
        n_cp_feats: cross products per GVP (0 keeps the model E(3)-invariant).
        rbf_dim: Gaussians of the distance expansion.
        rbf_dmax: centre of the last Gaussian (Å).
        message_norm: aggregated messages are divided by this constant.
        num_elements: atomic numbers ``z = 0 … num_elements - 1`` are embedded.
        readout: ``"mean"`` or ``"sum"`` over the atoms of a molecule.

    Shapes:
        z ``[N]``, pos ``[N, 3]``, batch ``[N]`` -> ``[num_graphs, out_channels]``
    """

    def __init__(
        self,
        out_channels: int,
        scalars: int = 256,
        vectors: int = 16,
        num_layers: int = 3,
        n_message_gvps: int = 1,
        n_update_gvps: int = 1,
        n_cp_feats: int = 0,
        rbf_dim: int = 16,
        rbf_dmax: float = 20.0,
        message_norm: float = 100.0,
        num_elements: int = 10,
        readout: str = "mean",
    ) -> None:
        super().__init__()
        if readout not in ("mean", "sum"):
            raise ValueError(f"readout must be 'mean' or 'sum', got {readout!r}")
        self.readout = readout
        self.vectors = vectors
        self.num_elements = num_elements
        self.embedding = nn.Embedding(num_elements, scalars)
        self.rbf = GaussianBasis(0.0, rbf_dmax, rbf_dim, gamma=(rbf_dim / rbf_dmax) ** 2)
        self.convs = nn.ModuleList(
            GVPConv(scalars, vectors, 0, rbf_dim, n_message_gvps, n_update_gvps, n_cp_feats, message_norm)
            for _ in range(num_layers)
        )
        self.head = nn.Sequential(nn.Linear(scalars, scalars), nn.SiLU(), nn.Linear(scalars, out_channels))

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        if bool((z >= self.num_elements).any()) or bool((z < 0).any()):
            raise ValueError(f"atomic numbers must lie in 0..{self.num_elements - 1} for this regressor")
        edge_index = full_graph(batch)
        vec, dist = edge_vectors(pos, edge_index)
        unit, rbf = vec / (dist.unsqueeze(-1) + 1e-8), self.rbf(dist)
        h = self.embedding(z)
        v = pos.new_zeros(pos.size(0), 3, self.vectors)
        for conv in self.convs:
            h, v = conv(h, v, edge_index, unit, rbf)
        num_graphs = int(batch.max()) + 1
        return scatter(self.head(h), batch, 0, dim_size=num_graphs, reduce=self.readout)
