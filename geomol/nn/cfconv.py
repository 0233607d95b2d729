"""Continuous-filter convolution (SchNet, Schütt et al., NeurIPS 2017)."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch_geometric.utils import scatter

from .radial import CosineCutoff

__all__ = ["ShiftedSoftplus", "CFConv", "SchNetInteraction"]


class ShiftedSoftplus(nn.Module):
    """``softplus(x) - log 2``: smooth, zero at the origin (SchNet's activation)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.softplus(x) - math.log(2.0)


class CFConv(nn.Module):
    r"""Continuous-filter convolution, Eq. (5) of SchNet: ``x_i' = Σ_j x_j ∘ W(‖r_ij‖)``.

    The filter ``W`` is an MLP of the radial basis, multiplied by a cosine cutoff so that messages
    vanish smoothly at the cutoff (energies stay continuous as atoms leave the neighbourhood).

    Args:
        in_channels, out_channels: feature sizes.
        num_filters: width of the filter-generating network.
        num_basis: size of the radial basis.
        cutoff: interaction cutoff (Å).

    Shapes:
        x ``[N, in_channels]``, edge_index ``[2, E]``, dist ``[E]``, basis ``[E, num_basis]`` ->
        ``[N, out_channels]``
    """

    def __init__(self, in_channels: int, out_channels: int, num_filters: int, num_basis: int, cutoff: float) -> None:
        super().__init__()
        self.filter = nn.Sequential(
            nn.Linear(num_basis, num_filters), ShiftedSoftplus(), nn.Linear(num_filters, num_filters)
        )
        self.lin_in = nn.Linear(in_channels, num_filters, bias=False)
        self.lin_out = nn.Linear(num_filters, out_channels)
        self.cutoff = CosineCutoff(cutoff)

    def forward(self, x: Tensor, edge_index: Tensor, dist: Tensor, basis: Tensor) -> Tensor:
        src, dst = edge_index
        weight = self.filter(basis) * self.cutoff(dist).unsqueeze(-1)  # [E, F]
        messages = self.lin_in(x)[src] * weight  # [E, F]
        return self.lin_out(scatter(messages, dst, 0, dim_size=x.size(0), reduce="sum"))


class SchNetInteraction(nn.Module):
    """Interaction block (SchNet Fig. 2): CFConv → shifted softplus → dense, added to the input."""

    def __init__(self, hidden_channels: int, num_filters: int, num_basis: int, cutoff: float) -> None:
        super().__init__()
        self.conv = CFConv(hidden_channels, hidden_channels, num_filters, num_basis, cutoff)
        self.act = ShiftedSoftplus()
        self.lin = nn.Linear(hidden_channels, hidden_channels)

    def forward(self, x: Tensor, edge_index: Tensor, dist: Tensor, basis: Tensor) -> Tensor:  # [N, C]
        return x + self.lin(self.act(self.conv(x, edge_index, dist, basis)))
