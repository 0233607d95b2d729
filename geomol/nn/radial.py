"""Radial bases and smooth cutoffs for interatomic distances."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GaussianBasis", "BesselBasis", "PolynomialEnvelope", "CosineCutoff"]


class PolynomialEnvelope(nn.Module):
    r"""Smooth cutoff of DimeNet (Gasteiger et al. 2020, Eq. 8), as a function of ``x = d / c``.

    .. math::
        u(x) = 1 - \frac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \frac{p(p+1)}{2} x^{p+2}

    ``exponent`` is DimeNet's ``envelope_exponent``; the polynomial degree is ``p = exponent + 1``
    (the paper's default 5 gives p = 6), so u, u' and u'' vanish at ``x = 1``. Zero beyond the cutoff.
    """

    def __init__(self, exponent: int = 5) -> None:
        super().__init__()
        p = exponent + 1
        self.p = p
        self.a = -(p + 1) * (p + 2) / 2
        self.b = p * (p + 2)
        self.c = -p * (p + 1) / 2

    def forward(self, x: Tensor) -> Tensor:  # [E] -> [E]
        p = self.p
        xp = x.pow(p)
        env = 1.0 + self.a * xp + self.b * xp * x + self.c * xp * x * x
        return torch.where(x < 1.0, env, torch.zeros_like(x))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class CosineCutoff(nn.Module):
    r"""``½ (cos(π d / c) + 1)`` inside the cutoff, 0 outside (Behler 2011)."""

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = cutoff

    def forward(self, dist: Tensor) -> Tensor:  # [E] -> [E]
        out = 0.5 * (torch.cos(dist * math.pi / self.cutoff) + 1.0)
        return torch.where(dist < self.cutoff, out, torch.zeros_like(dist))

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}"


class GaussianBasis(nn.Module):
    r"""Gaussians ``exp(-γ (d - μ_k)²)`` on an even grid of centres (SchNet, Schütt et al. 2017, Eq. 10).

    ``γ = 1 / (2 Δ²)`` with ``Δ`` the grid spacing, unless ``gamma`` is given.

    Shapes:
        dist ``[E]`` -> ``[E, num_basis]``
    """

    def __init__(self, start: float = 0.0, stop: float = 5.0, num_basis: int = 50, gamma: float | None = None) -> None:
        super().__init__()
        centers = torch.linspace(start, stop, num_basis)
        spacing = (stop - start) / max(num_basis - 1, 1)
        self.register_buffer("centers", centers)
        self.gamma = gamma if gamma is not None else 0.5 / spacing**2
        self.num_basis = num_basis

    def forward(self, dist: Tensor) -> Tensor:
        return torch.exp(-self.gamma * (dist.unsqueeze(-1) - self.centers).pow(2))

    def extra_repr(self) -> str:
        return f"num_basis={self.num_basis}, gamma={self.gamma:.3g}"


class BesselBasis(nn.Module):
    r"""DimeNet's radial basis (Gasteiger et al. 2020, Eq. 7) times the polynomial envelope.

    .. math::
        e_n(d) = \frac{\sin(n \pi d / c)}{d / c}\, u(d / c), \quad n = 1 … N

    As in the authors' implementation the constant ``√(2/c)`` of Eq. 7 is left out (the next linear
    layer absorbs it), so weights carry over from DimeNet/PyG unchanged. The frequencies ``nπ`` are
    trainable when ``trainable=True``.

    Shapes:
        dist ``[E]`` -> ``[E, num_radial]``
    """

    def __init__(
        self, num_radial: int = 6, cutoff: float = 5.0, envelope_exponent: int = 5, trainable: bool = True
    ) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.num_radial = num_radial
        self.envelope = PolynomialEnvelope(envelope_exponent)
        freq = torch.arange(1, num_radial + 1, dtype=torch.get_default_dtype()) * math.pi
        if trainable:
            self.freq = nn.Parameter(freq)
        else:
            self.register_buffer("freq", freq)

    def forward(self, dist: Tensor) -> Tensor:
        x = (dist / self.cutoff).unsqueeze(-1)
        return self.envelope(x) * torch.sin(self.freq * x) / x

    def extra_repr(self) -> str:
        return f"num_radial={self.num_radial}, cutoff={self.cutoff}"
