"""The sphere grid of the Gaunt products: Gauss-Legendre × uniform nodes on S², associated Legendre
tables, and :class:`SphericalGridTransform` between spherical-harmonic coefficients ``[..., (L+1)²]``
(e3nn's real basis, integral normalization) and function values on the grid.

Shared by :mod:`geomol.nn.gaunt` (the torch path) and :mod:`geomol.nn.gaunt_kernel` (the fused CPU
kernel reads the same tables through :meth:`SphericalGridTransform.tables`, so both paths agree).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["SphericalGridTransform", "use_separable"]

# On CPUs, rows per chunk are chosen so one grid tensor takes about this many bytes: a chunk's grids then
# mostly stay in cache between the Legendre, Fourier and product steps (measured best between 1 and 2 MB
# on a 2-core AVX-512 CPU). On GPUs chunks only bound the temporary memory.
_CHUNK_BYTES = 1 << 21
# Cost of writing and reading back one float relative to one multiply-add, for choosing between the dense
# and the separable transform (measured on a 2-core AVX-512 CPU: dense wins up to L = 4 for L1 = L2 = L3).
_MEMORY_COST = 12.0


def _legendre(lmax: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """Fully normalised associated Legendre functions ``P̄_l^m(x)`` and their derivatives ``dP̄_l^m/dθ``.

    ``∫_{-1}^{1} P̄² dx = 1`` and no ``(-1)^m`` phase (e3nn's convention); stable recurrences in float64.
    The derivative uses ``(1 - x²) dP_l^m/dx = (l + m) P_{l-1}^m - l x P_l^m`` and needs ``|x| < 1``.

    Shapes:
        x ``[n]`` -> two tensors ``[lmax+1 (l), lmax+1 (m), n]``, zero for ``m > l``.
    """
    x = x.to(torch.float64)
    s = torch.sqrt((1 - x * x).clamp_min(0))
    p = torch.zeros(lmax + 1, lmax + 1, x.numel(), dtype=torch.float64)
    p[0, 0] = math.sqrt(0.5)
    for m in range(1, lmax + 1):
        p[m, m] = math.sqrt((2 * m + 1) / (2 * m)) * s * p[m - 1, m - 1]
    for m in range(lmax):
        p[m + 1, m] = math.sqrt(2 * m + 3) * x * p[m, m]
    for m in range(lmax + 1):
        for l in range(m + 2, lmax + 1):
            a = math.sqrt((4 * l * l - 1) / (l * l - m * m))
            b = math.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
            p[l, m] = a * (x * p[l - 1, m] - b * p[l - 2, m])
    dp = torch.zeros_like(p)
    for l in range(1, lmax + 1):
        for m in range(l + 1):
            ratio = math.sqrt((2 * l + 1) / (2 * l - 1) * (l + m) * (l - m))
            dp[l, m] = (l * x * p[l, m] - ratio * p[l - 1, m]) / s
    return p, dp


def _degree_index(lmax: int) -> Tensor:
    """Degree ``l`` of each coefficient ``l² + l + m``, ``[(lmax+1)²]``."""
    return torch.repeat_interleave(torch.arange(lmax + 1), 2 * torch.arange(lmax + 1) + 1)


def _grid_size(degree: int) -> tuple[int, int]:
    """Gauss–Legendre nodes in ``cos θ`` and uniform nodes in ``φ`` exact up to ``degree``."""
    return degree // 2 + 1, degree + 1


def use_separable(lmaxes: tuple[int, ...], degree: int) -> bool:
    """Whether separable transforms are cheaper than dense grid matrices for these degrees on this grid.

    Cost per row: multiply-adds plus ``_MEMORY_COST`` per float written (gathered coefficients, Legendre
    values, grid values); the product of the grid values is common to both and left out.
    """
    n_theta, n_phi = _grid_size(degree)
    grid = n_theta * n_phi
    dense = separable = 0.0
    for l in lmaxes:
        orders, k = 2 * l + 1, (l + 1) ** 2
        dense += k * grid + _MEMORY_COST * grid
        separable += orders * (l + 1) * n_theta + n_phi * orders * n_theta
        separable += _MEMORY_COST * (orders * (l + 1) + orders * n_theta + grid)
    return separable < dense


class SphericalGridTransform(nn.Module):
    r"""SH coefficients of degree ``≤ lmax`` ↔ values on a sphere grid that is exact up to ``degree``.

    The grid has ``degree // 2 + 1`` Gauss–Legendre nodes in ``cos θ`` (θ from e3nn's polar axis ``y``)
    and ``degree + 1`` uniform nodes in ``φ = atan2(x, z)``; ``Σ_grid w f g h = ∫ f g h dΩ`` whenever the
    degrees of ``f, g, h`` add up to at most ``degree``. Both directions carry the cube root of ``w``:
    ``from_grid`` is the adjoint of ``to_grid``, and three transforms make an exact product.

    ``separable=True`` stores per-order Legendre matrices and one Fourier matrix (grid layout
    ``[n_phi, n_theta, R]``); ``separable=False`` one dense matrix (grid layout ``[R, n_theta · n_phi]``).
    Grids of transforms that are multiplied together must share ``degree`` and ``separable``.
    ``kind="theta"`` / ``"phi"`` give the tangent components ``∂_θ f`` and ``∂_φ f / sin θ`` instead of
    ``f`` (dense only, used by :class:`GauntCrossProduct`).

    The tables are computed in float64 once, then stored as buffers in the module's dtype and device
    (rebuilt, not cast, when the dtype changes, so float64 modules keep float64 accuracy).

    Args:
        lmax: largest SH degree of the coefficients.
        degree: largest total degree the grid integrates exactly (``L1 + L2 + L3`` for a product).
        separable: separable (Legendre × Fourier) or dense transform.
        kind: ``"value"``, ``"theta"`` or ``"phi"``.

    Shapes:
        ``to_grid``: ``[R, (lmax+1)²]`` -> grid; ``from_grid``: grid -> ``[R, (lmax+1)²]``.
    """

    def __init__(self, lmax: int, degree: int, separable: bool = True, kind: str = "value") -> None:
        super().__init__()
        if lmax < 0 or degree < lmax:
            raise ValueError(f"need 0 <= lmax <= degree, got lmax={lmax}, degree={degree}")
        if kind not in ("value", "theta", "phi") or (separable and kind != "value"):
            raise ValueError(f"kind must be 'value', 'theta' or 'phi' (the last two dense only), got {kind!r}")
        self.lmax, self.degree, self.separable, self.kind = lmax, degree, separable, kind
        self.n_theta, self.n_phi = _grid_size(degree)
        self.dim = (lmax + 1) ** 2
        # Row-major GEMMs with a narrow output are several times slower than with 16 columns (MKL), so the
        # dense projection writes rows padded to a multiple of 16 and callers keep the first ``dim``.
        self.width = self.dim if separable else -(-self.dim // 16) * 16
        self.register_buffer("degrees", _degree_index(lmax), persistent=False)  # degree of each coefficient
        self._build(torch.get_default_dtype(), None)

    def tables(self) -> dict[str, Tensor]:
        """Legendre ``[2L+1, n_theta, L+1]`` (order slots m = -L … L, degrees |m| … L padded), Fourier
        ``[n_phi, 2L+1]``, index maps, and the quadrature weight on the grid, all with cube-root weights."""
        L, P = self.lmax, self.lmax + 1
        nodes, weights = np.polynomial.legendre.leggauss(self.n_theta)
        p, dp = _legendre(L, torch.from_numpy(nodes))
        sin_theta = torch.sqrt(1 - torch.from_numpy(nodes) ** 2)
        table = {"value": p, "theta": dp, "phi": p / sin_theta}[self.kind]
        theta_weight = torch.from_numpy(weights)
        phi_weight = torch.full((self.n_phi,), 2 * math.pi / self.n_phi, dtype=torch.float64)
        legendre = torch.zeros(2 * P - 1, self.n_theta, P, dtype=torch.float64)
        gather = torch.zeros(2 * P - 1, P, dtype=torch.long)  # padded entries read coefficient 0, weight 0
        scatter_index = torch.zeros(self.dim, dtype=torch.long)
        for m in range(-L, L + 1):
            for j, l in enumerate(range(abs(m), P)):
                legendre[m + L, :, j] = table[l, abs(m)] * theta_weight.pow(1 / 3)
                gather[m + L, j] = l * l + l + m
                scatter_index[l * l + l + m] = (m + L) * P + j
        phi = torch.arange(self.n_phi, dtype=torch.float64) * (2 * math.pi / self.n_phi)
        orders = torch.arange(-L, L + 1, dtype=torch.float64)
        cos, sin = torch.cos(phi[:, None] * orders.abs()), torch.sin(phi[:, None] * orders.abs())
        if self.kind == "phi":  # d/dφ: cos mφ -> -m sin mφ, sin mφ -> m cos mφ
            cos, sin = -orders.abs() * sin, orders.abs() * cos
        fourier = torch.where(orders > 0, cos, sin) / math.sqrt(math.pi)
        fourier[:, L] = (0.0 if self.kind == "phi" else 1.0) / math.sqrt(2 * math.pi)
        fourier = fourier * phi_weight.pow(1 / 3)[:, None]
        quadrature = theta_weight[None, :] * phi_weight[:, None]  # [n_phi, n_theta]
        return dict(
            legendre=legendre,
            fourier=fourier,
            gather=gather.reshape(-1),
            scatter=scatter_index,
            quadrature=quadrature,
        )

    def _build(self, dtype: torch.dtype, device: torch.device | None) -> None:
        t = self.tables()
        if self.separable:
            buffers = dict(
                legendre=t["legendre"],
                legendre_t=t["legendre"].transpose(1, 2),
                fourier=t["fourier"],
                fourier_t=t["fourier"].T,
                gather_index=t["gather"],
                scatter_index=t["scatter"],
                quadrature=t["quadrature"][:, :, None],  # broadcasts over [n_phi, n_theta, R]
            )
        else:
            # Y[(θ_i, φ_j), l² + l + m] = legendre_m(θ_i)_l · fourier(φ_j)_m, flattened θ-major.
            values = torch.einsum("mtp,fm->tfmp", t["legendre"], t["fourier"]).reshape(-1, t["gather"].numel())
            dense = torch.zeros(values.shape[0], self.width, dtype=torch.float64)
            dense.index_add_(1, t["gather"], values)
            buffers = dict(dense=dense, dense_t=dense[:, : self.dim].T, quadrature=t["quadrature"].T.reshape(-1))
        for name, value in buffers.items():
            value = value.to(device=device, dtype=dtype if value.is_floating_point() else None).contiguous()
            self.register_buffer(name, value, persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # Tables cast to float32 and back would keep float32 round-off: rebuild them in float64, then cast.
        self._build(self.quadrature.dtype, self.quadrature.device)
        return self

    def to_grid(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        """Grid values of ``x`` (times the cube root of the weight); no autograd.

        ``scale`` ``[C, (lmax+1)²]`` multiplies row ``r`` by ``scale[r % C]`` first (per-channel weights).

        Shapes:
            x ``[R, (lmax+1)²]`` -> ``[n_phi, n_theta, R]`` (separable) or ``[R, n_theta · n_phi]`` (dense).
        """
        if not self.separable:
            return _scale_rows(x, scale) @ self.dense_t
        rows, P = x.shape[0], self.lmax + 1
        gathered = torch.index_select(x, 1, self.gather_index)  # [R, (2L+1)(L+1)]
        if scale is not None:
            gathered.view(-1, scale.shape[0], gathered.shape[1]).mul_(scale[:, self.gather_index])
        # The gathered block is read transposed by the batched GEMM: no explicit transpose of x.
        orders = torch.bmm(self.legendre, gathered.view(rows, 2 * P - 1, P).permute(1, 2, 0))  # [2L+1, n_theta, R]
        return torch.mm(self.fourier, orders.view(2 * P - 1, -1)).view(self.n_phi, self.n_theta, rows)

    def from_grid(self, h: Tensor) -> Tensor:
        """SH coefficients of grid values ``h`` (adjoint of ``to_grid``); no autograd.

        Shapes:
            h ``[n_phi, n_theta, R]`` (separable) or ``[R, n_theta · n_phi]`` (dense) -> ``[R, (lmax+1)²]``.
        """
        if not self.separable:
            return (h @ self.dense)[:, : self.dim]
        P, rows = self.lmax + 1, h.shape[-1]
        orders = torch.mm(self.fourier_t, h.reshape(self.n_phi, -1))  # [2L+1, n_theta · R]
        coeffs = torch.bmm(self.legendre_t, orders.view(2 * P - 1, self.n_theta, rows))  # [2L+1, L+1, R]
        return torch.index_select(coeffs.view(-1, rows), 0, self.scatter_index).T.contiguous()

    def grid_weight(self, power: float) -> Tensor:
        """Quadrature weight to ``power``, shaped to broadcast against this transform's grid layout."""
        return self.quadrature.pow(power)

    def chunk_rows(self) -> int:
        """Rows per chunk such that one grid tensor takes about ``_CHUNK_BYTES`` (CPU) or 256 MB (GPU)."""
        per_row = self.n_theta * self.n_phi * self.quadrature.element_size()
        budget = _CHUNK_BYTES if self.quadrature.device.type == "cpu" else 1 << 28
        return max(64, budget // per_row)

    def extra_repr(self) -> str:
        mode = "separable" if self.separable else "dense"
        kind = "" if self.kind == "value" else f", kind={self.kind}"
        return f"lmax={self.lmax}, grid={self.n_theta}x{self.n_phi}, {mode}{kind}"


class _ToGrid(torch.autograd.Function):
    """``to_grid`` as a linear autograd function; its adjoint is ``from_grid`` (differentiable to any order)."""

    @staticmethod
    def forward(ctx, x, transform):
        ctx.transform = transform
        return transform.to_grid(x)

    @staticmethod
    def backward(ctx, grad):
        return _FromGrid.apply(grad.contiguous(), ctx.transform), None


class _FromGrid(torch.autograd.Function):
    """``from_grid`` as a linear autograd function; its adjoint is ``to_grid``."""

    @staticmethod
    def forward(ctx, h, transform):
        ctx.transform = transform
        return transform.from_grid(h)

    @staticmethod
    def backward(ctx, grad):
        return _ToGrid.apply(grad.contiguous(), ctx.transform), None


def _scale_rows(t: Tensor, scale: Tensor | None, out: Tensor | None = None) -> Tensor:
    """``t [R, K]`` times ``scale [C, K]`` on row ``r``'s channel ``r % C`` (written to ``out`` if given)."""
    if scale is None:
        return t if out is None else out.copy_(t)
    shape = (-1, *scale.shape)
    if out is None:
        return (t.view(shape) * scale).view(t.shape)
    torch.mul(t.view(shape), scale, out=out.view(shape))
    return out
