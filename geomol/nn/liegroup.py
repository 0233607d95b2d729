r"""Affine group convolutions on R² ⋊ GL⁺(2) and R² ⋊ SL(2) (Mironenco & Forré, ICLR 2024).

Group elements are 2×2 matrices ``[..., 2, 2]`` acting on image coordinates ``(x, y)`` = (column, row).
Both groups factor by the polar decomposition ``g = P·R`` with ``P`` symmetric positive definite and
``R ∈ SO(2)`` (``det P = 1`` for SL(2)); the paper builds its global chart and its sampling scheme on it:

* chart ``ξ⁻¹(g) = (log P, angle of R)``, a diffeomorphism onto ``Sym(2) × (angle interval)`` (traceless
  ``Sym`` for SL(2)), used as kernel input instead of the group logarithm, which is not surjective on these
  non-compact groups. The angle lies in ``[0, 2π)`` in the authors' code (``SO2.normalize``,
  ``angle_chart="positive"``) or in ``(-π, π]`` (geomol's ``angle_chart="centred"``, continuous at the
  identity);
* samples ``g = P(X)·R(θ)`` with ``X`` Gaussian in ``Sym(2)`` and ``θ`` on an angle grid or uniform, each
  factor drawn on its own. The authors' law (``spd_law="authors"``, rgenn ``LogNormalSPD2`` and
  ``GLn.sample_pair``) is ``S = exp(X)``, ``g = S^½·R``, i.e. ``log P = X/2``; geomol's (``spd_law="geomol"``)
  is ``P = exp(X)``. With the paper's variance 0.1 of ``X`` the chart coordinates of ``log P`` have
  variance 0.025 (authors) or 0.1 (geomol). The authors' equidistant angles are ``linspace(-π, π, N)``
  (``angles="linspace"``: both ends are the half turn); geomol's ``angles="equidistant"`` is the
  centred regular N-gon ``π(2k + 1 - N)/N``.

Layers act on feature maps over R² × {group samples}, ``[B, C, N, H, W]``, and approximate the group
integrals over the ``N`` samples (the authors sum the Monte Carlo terms, ``sample_reduce="sum"``;
``"mean"`` divides by ``N``), with kernels given by a SIREN of the transformed offset and the chart
coordinates:

* lifting:  ``(k ⋆ f)(x, h) = ∫ k(h⁻¹(y - x)) f(y) dy / |det h|``
* group:    ``(k ⋆ f)(x, h) = ∫∫ k(h⁻¹(y - x), ξ⁻¹(h⁻¹h')) f(y, h') dy dμ(h') / |det h|``

The ``1/|det h|`` factor is the determinant correction of the Haar measure of R² ⋊ GL⁺(2) (it is 1
on SL(2)); with it both maps commute with ``f ↦ f(A⁻¹(· - t), A⁻¹ ·)`` for any affine ``(t, A)``.
As in the authors' implementation the Monte Carlo samples are not importance-weighted. Given a sample
set ``S``, the layers satisfy ``L(f∘A⁻¹, S) = L(f, A⁻¹S)∘A⁻¹`` exactly when ``A`` maps the pixel grid
and kernel window onto themselves (quarter turns) and up to the pixel grid otherwise; pooled outputs
become invariant as far as ``A⁻¹S`` and ``S`` are alike, i.e. as the samples fill the group (the
sampler's law is rotation invariant with uniform angles, and under the grid's turns with geomol's
equidistant ones; ``linspace(-π, π, N)`` repeats the half turn and is closed under no turn but the identity).

Conventions, authors' code (github.com/mirceamironenco/rgenn) vs geomol's own, and the switches:

=====================  ==========================================  ==========================================
switch                 authors                                     geomol
=====================  ==========================================  ==========================================
``spd_law``            ``"authors"``: ``g = exp(X)^½·R``           ``"geomol"``: ``g = exp(X)·R``
``angles``             ``"linspace"``: ``linspace(-π, π, N)``      ``"equidistant"``: centred N-gon
``angle_chart``        ``"positive"``: ``[0, 2π)``                 ``"centred"``: ``(-π, π]``
``mask_type``          ``"authors"``: hard disk on the offsets     ``"smooth"``: sigmoid taper on all
                       (SL(2)), sigmoid taper on all coordinates   coordinates
                       (GL⁺(2))
``offsets``            ``"affine_grid"``: ±(k-1)/k (±0.8, k=5)     ``"unit"``: ±1
``sample_reduce``      ``"sum"``                                   ``"mean"``
``siren_bias_init``    ``"zero"``: hidden sine biases 0            ``"uniform"``: PyTorch's default
=====================  ==========================================  ==========================================

The layers' defaults are geomol's (the equivariance tests pin them); ``experiment=affine_cnn_mnist``
selects the authors'.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "sym_exp",
    "spd_log",
    "LinearGroup2",
    "GL2",
    "SL2",
    "get_group",
    "kernel_offsets",
    "SirenKernel",
    "LiftingConv",
    "GroupConv",
    "GroupLayerNorm",
    "GroupRMSNorm",
    "pool_group",
    "pool_spatial",
]

AngleSampling = Literal["equidistant", "linspace", "uniform"]
AngleChart = Literal["centred", "positive"]
SPDSampling = Literal["random", "quasi"]
SPDLaw = Literal["geomol", "authors"]
MaskType = Literal["smooth", "circular", "authors"]
OffsetGrid = Literal["unit", "affine_grid"]
SampleReduce = Literal["mean", "sum"]
SirenBiasInit = Literal["uniform", "zero"]

_ANGLE_CHARTS = ("centred", "positive")
_MASK_TYPES = ("smooth", "circular", "authors")
_OFFSET_GRIDS = ("unit", "affine_grid")
_SAMPLE_REDUCES = ("mean", "sum")
_SIREN_BIAS_INITS = ("uniform", "zero")

# Below this, ratios like atanh(s)/s and sinh(r)/r switch to their Taylor series (error < 1e-16).
_SMALL = 1e-4


def _halton(num: int, dim: int) -> Tensor:  # -> [num, dim] in (0, 1), float64
    """The first ``num`` points (from index 1, so none is 0) of the Halton sequence in bases 2, 3, 5, ...

    A low-discrepancy set: its empirical law is close to uniform already for a few points, unlike i.i.d. draws.
    """
    primes = (2, 3, 5, 7, 11, 13)[:dim]
    points = torch.zeros(num, dim, dtype=torch.float64)
    for d, base in enumerate(primes):
        for i in range(num):
            k, f, value = i + 1, 1.0, 0.0
            while k > 0:  # radical inverse: the base-`base` digits of k mirrored behind the point
                f /= base
                value += f * (k % base)
                k //= base
            points[i, d] = value
    return points


def _rotation(theta: Tensor) -> Tensor:  # [...] -> [..., 2, 2]
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack((torch.stack((c, -s), -1), torch.stack((s, c), -1)), -2)


def _split_symmetric(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``S = m·I + D`` with ``D`` traceless: returns ``m``, ``D`` and ``ρ = ‖D‖_F / √2`` (D's eigenvalues ±ρ)."""
    m = 0.5 * (s[..., 0, 0] + s[..., 1, 1])
    d = s - m[..., None, None] * torch.eye(2, dtype=s.dtype, device=s.device)
    rho = torch.sqrt(d[..., 0, 0] ** 2 + d[..., 0, 1] ** 2)
    return m, d, rho


def sym_exp(x: Tensor) -> Tensor:
    """Matrix exponential of symmetric 2×2 matrices, in closed form: ``e^m (cosh ρ·I + sinh ρ/ρ·D)``."""
    m, d, rho = _split_symmetric(x)
    safe = torch.where(rho > _SMALL, rho, torch.ones_like(rho))
    sinhc = torch.where(rho > _SMALL, torch.sinh(safe) / safe, 1.0 + rho**2 / 6.0)
    eye = torch.eye(2, dtype=x.dtype, device=x.device)
    return torch.exp(m)[..., None, None] * (torch.cosh(rho)[..., None, None] * eye + sinhc[..., None, None] * d)


def spd_log(p: Tensor) -> Tensor:
    """Matrix logarithm of SPD 2×2 matrices: eigenvalues ``m ± ρ`` give ``½ log det P·I + atanh(ρ/m)/ρ·D``."""
    m, d, rho = _split_symmetric(p)
    s = rho / m
    safe = torch.where(s > _SMALL, s, torch.ones_like(s))
    atanhc = torch.where(s > _SMALL, torch.atanh(safe) / safe, 1.0 + s**2 / 3.0)
    eye = torch.eye(2, dtype=p.dtype, device=p.device)
    log_det = torch.log(m**2 - rho**2)
    return 0.5 * log_det[..., None, None] * eye + (atanhc / m)[..., None, None] * d


class LinearGroup2:
    """A connected matrix group ``H ⊂ GL⁺(2)`` handled through its polar decomposition ``g = P·R``.

    Chart coordinates of ``log P = [[a, b], [b, c]]`` are orthonormal for the Frobenius inner product
    (so an isotropic Gaussian in them is rotation invariant), followed by the angle of ``R``.
    Subclasses fix the SPD part: all of ``Sym(2)`` for GL⁺(2), its traceless part for SL(2).
    """

    name: str = ""
    #: number of chart coordinates (the group's dimension)
    dim: int = 0
    #: ``det g = 1`` on the whole group, so the Haar determinant correction is 1
    volume_preserving: bool = False

    def spd_coordinates(self, log_p: Tensor) -> Tensor:  # [..., 2, 2] -> [..., dim - 1]
        raise NotImplementedError

    def spd_from_coordinates(self, v: Tensor) -> Tensor:  # [..., dim - 1] -> [..., 2, 2]
        raise NotImplementedError

    def contains(self, g: Tensor, atol: float = 1e-6) -> bool:
        """Whether every matrix in ``g [..., 2, 2]`` lies in the group (``det > 0``, or ``det = 1``)."""
        return g.shape[-2:] == (2, 2) and bool((torch.linalg.det(g) > 0).all())

    # -- group structure ---------------------------------------------------------------------------
    @staticmethod
    def identity(n: int = 1, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
        return torch.eye(2, dtype=dtype, device=device).expand(n, 2, 2).clone()

    @staticmethod
    def compose(g: Tensor, h: Tensor) -> Tensor:  # [..., 2, 2] x [..., 2, 2] -> [..., 2, 2]
        return g @ h

    @staticmethod
    def inverse(g: Tensor) -> Tensor:  # [..., 2, 2] -> [..., 2, 2]
        """Closed-form 2×2 inverse ``adj(g) / det g`` (batched, exact up to round-off)."""
        a, b, c, d = g[..., 0, 0], g[..., 0, 1], g[..., 1, 0], g[..., 1, 1]
        det = a * d - b * c
        adj = torch.stack((torch.stack((d, -b), -1), torch.stack((-c, a), -1)), -2)
        return adj / det[..., None, None]

    @staticmethod
    def act(g: Tensor, x: Tensor) -> Tensor:
        """``g · x`` on coordinates: ``g [..., 2, 2]`` broadcast against points ``x [..., 2]``."""
        return (g @ x.unsqueeze(-1)).squeeze(-1)

    # -- polar decomposition and chart -------------------------------------------------------------
    @staticmethod
    def polar(g: Tensor) -> tuple[Tensor, Tensor]:
        """``g = P·R`` for ``g [..., 2, 2]`` with ``det g > 0``; returns ``(P, R)``.

        In 2D the rotation factor is the normalized ``g + cof(g)``, so its angle is
        ``atan2(g₂₁ - g₁₂, g₁₁ + g₂₂)``; then ``P = g Rᵀ`` (symmetrized against round-off).
        """
        if g.shape[-2:] != (2, 2):
            raise ValueError(f"group elements must be 2×2 matrices, got shape {tuple(g.shape)}")
        if not bool((torch.linalg.det(g) > 0).all()):
            raise ValueError("the polar decomposition needs det(g) > 0 (GL⁺(2)); got a matrix with det(g) <= 0")
        theta = torch.atan2(g[..., 1, 0] - g[..., 0, 1], g[..., 0, 0] + g[..., 1, 1])
        r = _rotation(theta)
        p = g @ r.transpose(-1, -2)
        return 0.5 * (p + p.transpose(-1, -2)), r

    def log_chart(self, g: Tensor, angle_chart: AngleChart = "centred") -> Tensor:
        """The global chart ``ξ⁻¹(g) = (log P, angle of R) [..., dim]``.

        Args:
            g: group elements ``[..., 2, 2]``.
            angle_chart: the angle's interval. ``"centred"``: ``(-π, π]``, continuous at the identity
                (jumps at the half turn). ``"positive"``: ``[0, 2π)``, the authors' ``SO2.matrix_to_radians``
                (``atan2`` taken modulo 2π), which jumps at the identity: turns just below 0 get angles
                near 2π.
        """
        if angle_chart not in _ANGLE_CHARTS:
            raise ValueError(f"angle_chart must be one of {_ANGLE_CHARTS}, got {angle_chart!r}")
        p, r = self.polar(g)
        theta = torch.atan2(r[..., 1, 0], r[..., 0, 0])
        # Each chart jumps somewhere; round-off must not put an element on the far side of the jump, or
        # two equal group elements (e.g. relative angles of an equidistant grid) get different kernels.
        tol = 64 * torch.finfo(theta.dtype).eps * math.pi
        if angle_chart == "centred":  # jump at θ = ±π: a half turn is +π
            theta = torch.where(theta <= -math.pi + tol, theta + 2 * math.pi, theta)
        else:  # jump at θ = 0: the identity is 0 (the authors zero |sin θ| < 1e-6 for the same reason)
            theta = torch.where(theta < -tol, theta + 2 * math.pi, theta.clamp(min=0.0))
        return torch.cat((self.spd_coordinates(spd_log(p)), theta.unsqueeze(-1)), dim=-1)

    def exp_chart(self, v: Tensor) -> Tensor:
        """Inverse chart ``ξ(v) = exp(X(v[:-1]))·R(v[-1])`` for ``v [..., dim]``."""
        if v.shape[-1] != self.dim:
            raise ValueError(f"{self.name} chart coordinates have {self.dim} entries, got {v.shape[-1]}")
        return sym_exp(self.spd_from_coordinates(v[..., :-1])) @ _rotation(v[..., -1])

    # -- sampling ----------------------------------------------------------------------------------
    def sample(
        self,
        num_samples: int,
        *,
        spd_std: float = math.sqrt(0.1),
        angles: AngleSampling = "equidistant",
        angle_range: float = 1.0,
        spd_sampling: SPDSampling = "random",
        spd_cycle: int = 0,
        spd_law: SPDLaw = "geomol",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw ``[num_samples, 2, 2]`` elements ``P(X)·R(θ)`` (CPU generator, float64, then cast).

        Args:
            num_samples: number of group elements.
            spd_std: standard deviation of each coordinate of the Gaussian ``X ∈ Sym(2)`` (traceless for
                SL(2)) in the orthonormal chart basis; the paper's variance 0.1 (the authors'
                ``spd_bounds``) gives ``√0.1``.
            angles: ``"equidistant"``: the centred grid ``θ_k = r·π·(2k + 1 - N)/N`` (deterministic;
                for ``r = 1`` a regular N-gon, closed under turns by ``2π/N``);
                ``"linspace"``: the authors' ``EquiDistantSO2``, ``θ = linspace(-rπ, rπ, N)`` (for ``r = 1``
                the first and last sample are the same half turn, and the spacing is ``2π/(N - 1)``);
                ``"uniform"``: i.i.d. uniform on ``[-rπ, rπ]``.
            angle_range: ``r`` in ``(0, 1]``, the fraction of the circle the angles cover (the authors'
                ``ortho_bounds``); below 1 the layers see only rotations up to ``±rπ``.
            spd_law: how ``X`` makes the SPD factor. ``"geomol"``: ``P = exp(X)``, so ``log P`` has
                variance ``spd_std²`` per coordinate. ``"authors"``: rgenn's ``S = exp(X)`` and
                ``g = S^½·R`` (``GLn.sample_pair``), i.e. ``P = exp(X/2)`` and ``log P`` has variance
                ``spd_std²/4`` (0.025 for the paper's 0.1).
            spd_sampling: ``"random"``: i.i.d. Gaussian chart coordinates of ``X`` (the paper's sampler);
                ``"quasi"``: Gaussian quantiles ``spd_std·Φ⁻¹(u_k)`` of the Halton points ``u_k``
                (deterministic and evenly spread, so a few samples already cover the log-normal law's
                bulk; with equidistant angles the whole set is deterministic).
            spd_cycle: 0: ``g_k = exp(X_k)·R(θ_k)``, every sample with its own SPD factor. ``c > 0``: only
                ``c`` SPD factors, repeated cyclically and put right of the rotation, ``g_k = R(θ_k)·exp(X_{k mod c})``
                (the same law, since an isotropic ``X`` and ``R X Rᵀ`` are alike). Then a left turn by ``c``
                steps of a full equidistant grid (``N`` divisible by ``c``) maps the set onto itself, so the
                layers are exactly equivariant to those turns; with ``spd_cycle=0`` the set is closed only
                when ``spd_std = 0``, and a network trained on one fixed set can learn to tell its
                orientations apart by their different SPD factors.
            generator: CPU ``torch.Generator`` for reproducible draws.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        if spd_std < 0:
            raise ValueError(f"spd_std must be non-negative, got {spd_std}")
        if not 0 < angle_range <= 1:
            raise ValueError(f"angle_range must be in (0, 1], got {angle_range}")
        if spd_cycle < 0:
            raise ValueError(f"spd_cycle must be non-negative, got {spd_cycle}")
        if spd_law not in ("geomol", "authors"):
            raise ValueError(f"spd_law must be 'geomol' or 'authors', got {spd_law!r}")
        num_spd = min(spd_cycle, num_samples) or num_samples
        if spd_sampling == "random":
            v = spd_std * torch.randn(num_spd, self.dim - 1, generator=generator, dtype=torch.float64)
        elif spd_sampling == "quasi":
            v = spd_std * torch.special.ndtri(_halton(num_spd, self.dim - 1))
        else:
            raise ValueError(f"spd_sampling must be 'random' or 'quasi', got {spd_sampling!r}")
        if spd_law == "authors":
            v = 0.5 * v  # S = exp(X), P = S^½ = exp(X / 2) (X and S commute)
        half_width = angle_range * math.pi
        if angles == "equidistant":
            k = torch.arange(num_samples, dtype=torch.float64)
            theta = half_width * (2.0 * k + 1.0 - num_samples) / num_samples
        elif angles == "linspace":
            theta = torch.linspace(-half_width, half_width, num_samples, dtype=torch.float64)
        elif angles == "uniform":
            theta = half_width * (2.0 * torch.rand(num_samples, generator=generator, dtype=torch.float64) - 1.0)
        else:
            raise ValueError(f"angles must be 'equidistant', 'linspace' or 'uniform', got {angles!r}")
        if spd_cycle == 0:
            g = self.exp_chart(torch.cat((v, theta.unsqueeze(-1)), dim=-1))
        else:
            spd = sym_exp(self.spd_from_coordinates(v))  # [c, 2, 2]
            g = _rotation(theta) @ spd[torch.arange(num_samples) % num_spd]
        return g.to(dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class GL2(LinearGroup2):
    """GL⁺(2): chart ``(a, √2·b, c, θ)`` for ``log P = [[a, b], [b, c]]``."""

    name = "GL⁺(2)"
    dim = 4
    volume_preserving = False

    def spd_coordinates(self, log_p: Tensor) -> Tensor:
        return torch.stack((log_p[..., 0, 0], math.sqrt(2.0) * log_p[..., 0, 1], log_p[..., 1, 1]), dim=-1)

    def spd_from_coordinates(self, v: Tensor) -> Tensor:
        off = v[..., 1] / math.sqrt(2.0)
        return torch.stack((torch.stack((v[..., 0], off), -1), torch.stack((off, v[..., 2]), -1)), -2)


class SL2(LinearGroup2):
    """SL(2): chart ``(√2·a, √2·b, θ)`` for the traceless ``log P = [[a, b], [b, -a]]``."""

    name = "SL(2)"
    dim = 3
    volume_preserving = True

    def contains(self, g: Tensor, atol: float = 1e-6) -> bool:
        return g.shape[-2:] == (2, 2) and bool(((torch.linalg.det(g) - 1.0).abs() <= atol).all())

    def spd_coordinates(self, log_p: Tensor) -> Tensor:
        return math.sqrt(2.0) * torch.stack((log_p[..., 0, 0], log_p[..., 0, 1]), dim=-1)

    def spd_from_coordinates(self, v: Tensor) -> Tensor:
        a, b = v[..., 0] / math.sqrt(2.0), v[..., 1] / math.sqrt(2.0)
        return torch.stack((torch.stack((a, b), -1), torch.stack((b, -a), -1)), -2)


_GROUPS: dict[str, type[LinearGroup2]] = {"gl2": GL2, "sl2": SL2}


def get_group(group: str | LinearGroup2) -> LinearGroup2:
    """``"gl2"`` → :class:`GL2`, ``"sl2"`` → :class:`SL2`; group objects pass through."""
    if isinstance(group, LinearGroup2):
        return group
    if group not in _GROUPS:
        raise ValueError(f"unknown group {group!r}; use one of {sorted(_GROUPS)}")
    return _GROUPS[group]()


class SirenKernel(nn.Module):
    """SIREN (Sitzmann et al. 2020): ``sin(ω₀(Wx + b))`` layers, then a linear map to the kernel values.

    Weights follow SIREN (first layer ``U(±1/in)``, hidden ``U(±√(6/in)/ω₀)``); the last layer is
    ``U(±√(6/hidden)/√fan_in)``, scaled by the fan-in of the convolution it feeds, and starts unbiased,
    as in the authors' code (rgenn ``SineLayer`` and ``INR``, ``final_gain=6``). Sine-layer biases:
    ``bias_init="zero"`` is the authors' (hidden sine layers start at 0, the first keeps PyTorch's
    ``U(±1/√in)``); ``"uniform"`` leaves PyTorch's ``U(±1/√in)`` on every sine layer (geomol's
    earlier default: random phases ``ω₀·b`` of up to ``ω₀/√hidden`` in the hidden layers).

    Args:
        in_features: coordinates per point (2 offsets + chart dimension).
        out_features: kernel entries per point (``C_out·C_in``).
        hidden_features: width of the sine layers.
        num_layers: number of sine layers (the authors' ``inr_nlayers + 1``).
        omega_0: frequency of the sine layers.
        fan_in: fan-in of the convolution (``C_in·k²``) used to scale the last layer.
        bias_init: ``"uniform"`` or ``"zero"`` (see above).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 32,
        num_layers: int = 3,
        omega_0: float = 10.0,
        fan_in: int = 1,
        bias_init: SirenBiasInit = "uniform",
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"a SIREN needs at least one sine layer, got num_layers={num_layers}")
        if omega_0 <= 0:
            raise ValueError(f"omega_0 must be positive, got {omega_0}")
        if bias_init not in _SIREN_BIAS_INITS:
            raise ValueError(f"siren bias_init must be one of {_SIREN_BIAS_INITS}, got {bias_init!r}")
        self.omega_0, self.bias_init = omega_0, bias_init
        sizes = [in_features] + [hidden_features] * num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(hidden_features, out_features)
        with torch.no_grad():
            for k, layer in enumerate(self.layers):
                bound = 1.0 / layer.in_features if k == 0 else math.sqrt(6.0 / layer.in_features) / omega_0
                layer.weight.uniform_(-bound, bound)
                if k > 0 and bias_init == "zero":
                    layer.bias.zero_()
            bound = math.sqrt(6.0 / hidden_features) / math.sqrt(fan_in)
            self.out.weight.uniform_(-bound, bound)
            self.out.bias.zero_()

    def forward(self, coords: Tensor) -> Tensor:  # [..., in_features] -> [..., out_features]
        h = coords
        for layer in self.layers:
            h = torch.sin(self.omega_0 * layer(h))
        return self.out(h)


class _SampledConv(nn.Module):
    """Shared parts of the lifting and group convolutions: offset grid, SIREN, mask, bias."""

    def __init__(
        self,
        group: str | LinearGroup2,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        padding: int,
        bias: bool,
        chart_features: int,
        hidden_features: int,
        num_layers: int,
        omega_0: float,
        mask_radius: float | None,
        mask_slope: float,
        transform: str,
        mask_type: MaskType = "smooth",
        offsets: OffsetGrid = "unit",
        siren_bias_init: SirenBiasInit = "uniform",
    ) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and at least 3, got {kernel_size}")
        if transform not in ("kernel", "signal"):
            raise ValueError(f"transform must be 'kernel' or 'signal', got {transform!r}")
        if mask_type not in _MASK_TYPES:
            raise ValueError(f"mask_type must be one of {_MASK_TYPES}, got {mask_type!r}")
        if offsets not in _OFFSET_GRIDS:
            raise ValueError(f"offsets must be one of {_OFFSET_GRIDS}, got {offsets!r}")
        self.transform, self.chart_features = transform, chart_features
        self.group = get_group(group)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding = kernel_size, padding
        self.mask_radius, self.mask_slope = mask_radius, mask_slope
        self.mask_type = mask_type
        if mask_type == "authors":  # rgenn GConv2d: circular_mask if volume preserving, else circular_mask_smooth
            mask_type = "circular" if self.group.volume_preserving else "smooth"
        self.resolved_mask_type: str = mask_type
        self.offset_grid = offsets
        self.register_buffer("offsets", kernel_offsets(kernel_size, offsets))
        self.siren = SirenKernel(
            2 + chart_features,
            out_channels * in_channels,
            hidden_features,
            num_layers,
            omega_0,
            fan_in=in_channels * kernel_size**2,
            bias_init=siren_bias_init,
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def transformed_offsets(self, samples: Tensor) -> tuple[Tensor, Tensor]:
        """``h⁻¹·u`` for every sample and window offset ``[N, k², 2]`` and the Haar determinant
        correction ``1/|det h|`` ``[N]`` (ones on SL(2)).

        With ``transform="signal"`` the kernel is not transformed: the offsets ``u`` themselves and ones
        (the substitution ``u = h·v`` cancels the determinant). Group arithmetic runs in float64 (the
        tensors are tiny); results come in the layer's dtype.
        """
        if self.transform == "signal":
            n = samples.shape[0]
            return self.offsets.expand(n, *self.offsets.shape), self.offsets.new_ones(n)
        inv = self.group.inverse(samples.double())
        u = self.group.act(inv.unsqueeze(1), self.offsets.double()).to(self.offsets.dtype)
        volume = torch.linalg.det(inv).abs().to(u.dtype)
        return u, torch.ones_like(volume) if self.group.volume_preserving else volume

    def mask(self, coords: Tensor) -> Tensor:  # [..., D] -> [..., 1]
        """The kernel's mask on its coordinates ``[offsets (2), chart (dim, group convolutions only)]``.

        ``mask_type="smooth"``: ``σ(slope·(radius - |coords|))`` over all coordinates, offsets and chart
        (the authors' ``circular_mask_smooth``, which their code uses on GL⁺(2) only; radius 1, slope 2).
        ``"circular"``: the hard disk ``|h⁻¹u| <= radius`` on the two spatial coordinates alone, the
        chart coordinates ignored (the authors' ``circular_mask``, used on SL(2) and all volume
        preserving groups). ``"authors"``: circular on SL(2), smooth on GL⁺(2). A sharper smooth mask
        (e.g. 0.75, 10) keeps the kernel off the square window's edges, whose cut breaks equivariance,
        at the price of a smaller effective kernel (slower training in our runs).
        """
        if self.mask_radius is None:
            return torch.ones_like(coords[..., :1])
        if self.resolved_mask_type == "circular":
            return (coords[..., :2].norm(dim=-1, keepdim=True) <= self.mask_radius).to(coords.dtype)
        return torch.sigmoid(self.mask_slope * (self.mask_radius - coords.norm(dim=-1, keepdim=True)))

    def _add_bias(self, y: Tensor) -> Tensor:  # [B, C_out, N, H, W]
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.group.name}, {self.in_channels} -> {self.out_channels}, kernel_size={self.kernel_size}, "
            f"padding={self.padding}, mask_type={self.mask_type!r}, mask_radius={self.mask_radius}, "
            f"mask_slope={self.mask_slope}, offsets={self.offset_grid!r}, transform={self.transform!r}"
            + (
                f", sample_reduce={self.sample_reduce!r}, angle_chart={self.angle_chart!r}"
                if self.chart_features
                else ""
            )
        )


def kernel_offsets(kernel_size: int, grid: OffsetGrid = "unit", dtype: torch.dtype | None = None) -> Tensor:
    """Offsets ``(dx, dy)`` of a ``k×k`` window, ``[k², 2]`` row-major (``dx`` along columns, ``dy`` along rows).

    ``"unit"`` (geomol): pixel centres in units of the half-width ``(k - 1)/2``, so the corners' centres
    are at ``±1`` and the unit disk touches the window's edge centres. ``"affine_grid"`` (the authors'
    ``get_grid2d``, ``F.affine_grid`` with ``align_corners=False``): units of ``k/2``, the half-width up
    to the pixels' outer edges, so the centres span ``±(k - 1)/k`` (±0.8 for k = 5) and the circular
    mask of radius 1 drops exactly the 4 corner pixels of a 5×5 window.
    """
    if grid not in _OFFSET_GRIDS:
        raise ValueError(f"offsets must be one of {_OFFSET_GRIDS}, got {grid!r}")
    r = torch.arange(kernel_size, dtype=dtype or torch.get_default_dtype()) - (kernel_size - 1) / 2
    r = r / ((kernel_size - 1) / 2 if grid == "unit" else kernel_size / 2)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack((dx, dy), -1).reshape(-1, 2)


def warp(x: Tensor, g: Tensor) -> Tensor:
    """Resample images at ``g·y``: ``[B, C, H, W]``, ``g [M, 2, 2]`` or ``[B, M, 2, 2]`` -> ``[B, C, M, H, W]``
    with ``out[b, :, m](y) = x[b](g_m·y)``, ``y`` in pixel units about the canvas centre (bilinear, zeros
    outside). ``g [M, 2, 2]`` applies the same maps to every image.

    Pixel centres map to pixel centres under quarter turns, so those warps are exact. (``affine_grid`` +
    ``grid_sample`` do the resampling; only the pixel-unit conjugation and the batching are ours.)
    """
    b, c, h, w = x.shape
    shared = g.dim() == 3
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64, device=g.device)
    # Normalized coordinates (x, y) ∈ [-1, 1]: n = S·p with S = diag(2/W, 2/H); the map is S g S⁻¹.
    theta = scale[:, None] * g.double() / scale[None, :]  # [(B,) M, 2, 2]
    theta = theta.reshape(-1, 2, 2)
    m = theta.shape[0] if shared else g.shape[1]
    theta = torch.cat((theta, theta.new_zeros(theta.shape[0], 2, 1)), dim=-1).to(x.dtype)
    grid = F.affine_grid(theta, [theta.shape[0], 1, h, w], align_corners=False)  # [(B·)M, H, W, 2]
    if shared:
        images, grid = x.reshape(1, b * c, h, w), grid.reshape(1, m * h, w, 2)
    else:
        images, grid = x, grid.reshape(b, m * h, w, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(b, c, m, h, w)


class LiftingConv(_SampledConv):
    r"""Lifting convolution from images on R² to feature maps on R² × {group samples}.

    ``(k ⋆ f)(x, h_i) = Σ_u k(h_i⁻¹u) m(|h_i⁻¹u|) f(x + u) / |det h_i|`` over the ``k×k`` window, the
    pixel-grid form of ``∫ k(h⁻¹(y - x)) f(y) dy / |det h|``.

    ``transform`` picks what the group samples act on in that discretization. ``"kernel"`` (the paper):
    the SIREN is evaluated at the transformed offsets ``h⁻¹u`` and the output is in the image's frame, as
    above. ``"signal"``: the substitution ``u = h·v`` gives ``∫ k(v) f(x + h·v) dv``, and the output is
    stored in each sample's own frame, ``G(x', h) = (k ⋆ f)(h·x', h) = Σ_v k(v) m(|v|) f(h·(x' + v))``: the
    image is resampled at ``h·y`` (bilinear, about the canvas centre) and convolved with the kernel on the
    fixed pixel grid. Both are the same operator in the continuum; on pixels, ``"signal"`` only ever
    evaluates the SIREN where it is trained (a ``k×k`` kernel sampled at a rotated or sheared grid is a
    rough copy of the rotated kernel, a resampled smooth image a close copy of the rotated image). Maxima
    over space and samples are the same in either frame.

    Args:
        group: ``"gl2"``, ``"sl2"`` or a :class:`LinearGroup2`.
        in_channels, out_channels: channels.
        kernel_size: odd window size ``k``.
        padding: zero padding in space.
        bias: learnable per-channel bias.
        hidden_features, num_layers, omega_0: the SIREN kernel network.
        mask_radius: radius of the kernel's mask; None for no mask.
        mask_slope: steepness of the smooth mask's edge.
        mask_type: ``"smooth"`` (sigmoid taper on all the kernel's coordinates), ``"circular"`` (hard disk
            on the spatial offsets) or ``"authors"`` (circular on SL(2), smooth on GL⁺(2)); see
            :meth:`mask`.
        offsets: the window's offset grid, ``"unit"`` (``±1``) or ``"affine_grid"`` (the authors',
            ``±(k - 1)/k``); see :func:`kernel_offsets`.
        siren_bias_init: ``"uniform"`` or ``"zero"`` (the authors' zero hidden sine biases); see
            :class:`SirenKernel`.
        transform: ``"kernel"`` (transformed kernels, image frame) or ``"signal"`` (resampled image,
            each sample's frame).

    Shapes:
        x ``[B, C_in, H, W]``, samples ``[N, 2, 2]`` -> ``[B, C_out, N, H', W']``
    """

    def __init__(
        self,
        group: str | LinearGroup2,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        padding: int = 0,
        bias: bool = True,
        hidden_features: int = 32,
        num_layers: int = 3,
        omega_0: float = 10.0,
        mask_radius: float | None = 1.0,
        mask_slope: float = 2.0,
        transform: str = "kernel",
        mask_type: MaskType = "smooth",
        offsets: OffsetGrid = "unit",
        siren_bias_init: SirenBiasInit = "uniform",
    ) -> None:
        super().__init__(
            group,
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            padding=padding,
            bias=bias,
            chart_features=0,
            hidden_features=hidden_features,
            num_layers=num_layers,
            omega_0=omega_0,
            mask_radius=mask_radius,
            mask_slope=mask_slope,
            transform=transform,
            mask_type=mask_type,
            offsets=offsets,
            siren_bias_init=siren_bias_init,
        )

    def kernel(self, samples: Tensor) -> Tensor:  # [N, 2, 2] -> [C_out, N, C_in, k, k]
        u, volume = self.transformed_offsets(samples)
        values = self.siren(u) * self.mask(u) * volume[:, None, None]  # [N, k², C_out·C_in]
        k = self.kernel_size
        values = values.view(-1, k, k, self.out_channels, self.in_channels)
        return values.permute(3, 0, 4, 1, 2)

    def forward(self, x: Tensor, samples: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"LiftingConv expects images [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if self.transform == "signal":
            # One kernel on the fixed grid for every sample: convolve each resampled view with it.
            num = samples.shape[0]
            views = warp(x, samples).transpose(1, 2).flatten(0, 1)  # [B·N, C_in, H, W]
            y = F.conv2d(views, self.kernel(samples[:1])[:, 0], padding=self.padding)  # [B·N, C_out, H', W']
            y = y.view(x.shape[0], num, self.out_channels, *y.shape[-2:]).transpose(1, 2)
            return self._add_bias(y)
        kernel = self.kernel(samples)
        num = kernel.shape[1]
        weight = kernel.reshape(self.out_channels * num, self.in_channels, *kernel.shape[-2:])
        y = F.conv2d(x, weight, padding=self.padding)
        return self._add_bias(y.view(x.shape[0], self.out_channels, num, *y.shape[-2:]))


class GroupConv(_SampledConv):
    r"""Group convolution between feature maps on R² × {group samples}, by Monte Carlo over the input samples.

    ``(k ⋆ f)(x, h_i) = w Σ_j Σ_u k(c) m(c) f(x + u, h_j) / |det h_i|`` with ``c = [h_i⁻¹u, ξ⁻¹(h_i⁻¹h_j)]``,
    the estimate of ``∫∫ k(h⁻¹(y - x), ξ⁻¹(h⁻¹h')) f(y, h') dy dμ(h') / |det h|`` with ``h_j`` the
    input's samples and ``h_i`` the output's (the same ones by default, as a residual connection needs).
    The Monte Carlo weight is ``w = 1/N_in`` with ``sample_reduce="mean"`` and ``w = 1`` with ``"sum"``
    (the authors' ``GConv2d``: their kernel is not divided by the number of samples, so its output is
    ``N_in`` times the mean's). ``padding=None`` keeps the spatial size.

    With ``mix_samples=False`` the kernel is supported at ``h_i⁻¹h_j = e`` only: every sample's slice gets
    its own transformed spatial convolution ``Σ_u k(h_i⁻¹u, ξ⁻¹(e)) f(x + u, h_i) / |det h_i|``. A network
    of such layers computes, on each sample ``h``, one shared CNN on the view ``h⁻¹·f`` (its slices never
    meet before the final pooling, so none can tell where in the set it lies, as boundary samples of a
    bounded set otherwise can); the global max over samples is then a max over transformed views
    (TI-pooling, Laptev et al. 2016), at a cost linear instead of quadratic in ``N``.

    ``transform="signal"`` takes and gives feature maps in each sample's own frame, ``G(x', h) = f(h·x', h)``
    (as :class:`LiftingConv` with ``transform="signal"`` makes them). With ``u = h_i·v`` the layer becomes
    ``G'(x', h_i) = w Σ_j Σ_v k(v, ξ⁻¹(h_i⁻¹h_j)) m G(h_j⁻¹h_i·(x' + v), h_j)``: every input slice is
    resampled by the relative elements ``h_j⁻¹h_i`` and convolved with kernels on the fixed pixel grid (no
    determinant factor; it cancels). Without mixing, ``h_j⁻¹h_i = e`` and the layer is one ordinary
    convolution shared by all slices.

    Args:
        group: ``"gl2"``, ``"sl2"`` or a :class:`LinearGroup2`.
        in_channels, out_channels: channels.
        kernel_size: odd window size ``k``.
        padding: zero padding in space.
        bias: learnable per-channel bias.
        hidden_features, num_layers, omega_0: the SIREN kernel network.
        mask_radius: radius of the kernel's mask; None for no mask.
        mask_slope: steepness of the smooth mask's edge.
        mask_type: ``"smooth"`` (sigmoid taper on all the kernel's coordinates), ``"circular"`` (hard disk
            on the spatial offsets) or ``"authors"`` (circular on SL(2), smooth on GL⁺(2)); see
            :meth:`mask`.
        offsets: the window's offset grid, ``"unit"`` (``±1``) or ``"affine_grid"`` (the authors',
            ``±(k - 1)/k``); see :func:`kernel_offsets`.
        siren_bias_init: ``"uniform"`` or ``"zero"`` (the authors' zero hidden sine biases); see
            :class:`SirenKernel`.
        mix_samples: integrate over the input samples (True) or keep each sample's slice apart (False;
            then ``samples_out`` must be ``samples_in``).
        transform: ``"kernel"`` (transformed kernels, image frame) or ``"signal"`` (resampled feature maps,
            each sample's frame); see :class:`LiftingConv`.
        sample_reduce: ``"mean"`` (``1/N_in`` Monte Carlo weight) or ``"sum"`` (the authors'); only the
            mixing path integrates over samples.
        angle_chart: the relative elements' angle interval in the kernel's chart input, ``"centred"``
            ``(-π, π]`` or ``"positive"`` ``[0, 2π)`` (the authors'); see :meth:`LinearGroup2.log_chart`.

    Shapes:
        x ``[B, C_in, N_in, H, W]``, samples_in ``[N_in, 2, 2]``, samples_out ``[N_out, 2, 2]``
        -> ``[B, C_out, N_out, H', W']``
    """

    def __init__(
        self,
        group: str | LinearGroup2,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        padding: int | None = None,
        bias: bool = True,
        hidden_features: int = 32,
        num_layers: int = 3,
        omega_0: float = 10.0,
        mask_radius: float | None = 1.0,
        mask_slope: float = 2.0,
        mix_samples: bool = True,
        transform: str = "kernel",
        mask_type: MaskType = "smooth",
        offsets: OffsetGrid = "unit",
        siren_bias_init: SirenBiasInit = "uniform",
        sample_reduce: SampleReduce = "mean",
        angle_chart: AngleChart = "centred",
    ) -> None:
        group = get_group(group)
        if sample_reduce not in _SAMPLE_REDUCES:
            raise ValueError(f"sample_reduce must be one of {_SAMPLE_REDUCES}, got {sample_reduce!r}")
        if angle_chart not in _ANGLE_CHARTS:
            raise ValueError(f"angle_chart must be one of {_ANGLE_CHARTS}, got {angle_chart!r}")
        self.mix_samples = mix_samples
        self.sample_reduce, self.angle_chart = sample_reduce, angle_chart
        super().__init__(
            group,
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            padding=kernel_size // 2 if padding is None else padding,
            bias=bias,
            chart_features=group.dim,
            hidden_features=hidden_features,
            num_layers=num_layers,
            omega_0=omega_0,
            mask_radius=mask_radius,
            mask_slope=mask_slope,
            transform=transform,
            mask_type=mask_type,
            offsets=offsets,
            siren_bias_init=siren_bias_init,
        )

    def kernel(self, samples_in: Tensor, samples_out: Tensor) -> Tensor:
        """Monte Carlo weights ``[C_out, N_out, C_in, N_in, k, k]`` (``w`` included: ``1/N_in`` or 1)."""
        n_out, n_in, k2 = samples_out.shape[0], samples_in.shape[0], self.offsets.shape[0]
        u, volume = self.transformed_offsets(samples_out)  # [N_out, k², 2], [N_out]
        relative = self._relative(samples_out, samples_in)  # h_i⁻¹ h_j [N_out, N_in, 2, 2]
        chart = self.group.log_chart(relative, self.angle_chart).to(u.dtype)  # ξ⁻¹(h_i⁻¹ h_j) [N_out, N_in, dim]
        coords = torch.cat(
            (u.unsqueeze(1).expand(n_out, n_in, k2, 2), chart.unsqueeze(2).expand(n_out, n_in, k2, chart.shape[-1])),
            dim=-1,
        )
        # The smooth mask (geomol's default on both groups, the authors' on GL⁺(2) only) acts on the joint
        # coordinates, so it also makes the kernel local in the group: the sampling density then varies
        # little across its support, which keeps the unweighted Monte Carlo sum close to equivariant. The
        # authors' SL(2) mask is a hard disk on the offsets alone, and leaves the kernel global in the group.
        reduce = 1.0 / n_in if self.sample_reduce == "mean" else 1.0
        weight = self.mask(coords) * (volume[:, None, None, None] * reduce)
        values = self.siren(coords) * weight  # [N_out, N_in, k², C_out·C_in]
        k = self.kernel_size
        values = values.view(n_out, n_in, k, k, self.out_channels, self.in_channels)
        return values.permute(4, 0, 5, 1, 2, 3)

    def forward(self, x: Tensor, samples_in: Tensor, samples_out: Tensor | None = None) -> Tensor:
        samples_out = samples_in if samples_out is None else samples_out
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[2] != samples_in.shape[0]:
            raise ValueError(
                f"GroupConv expects features [B, {self.in_channels}, {samples_in.shape[0]}, H, W] "
                f"(one slice per input sample), got {tuple(x.shape)}"
            )
        if not self.mix_samples:
            if samples_out is not samples_in and not torch.equal(samples_out, samples_in):
                raise ValueError(
                    "GroupConv with mix_samples=False maps each sample to itself; samples_out must be samples_in"
                )
            if self.transform == "signal":
                weight = self.diagonal_kernel(samples_in[:1])[0]  # [C_out, C_in, k, k], the same for all
                b, c_in, n = x.shape[:3]
                y = F.conv2d(x.transpose(1, 2).flatten(0, 1), weight, padding=self.padding)
                return self._add_bias(y.view(b, n, self.out_channels, *y.shape[-2:]).transpose(1, 2))
            kernel = self.diagonal_kernel(samples_in)  # [N, C_out, C_in, k, k]
            n, c_out, c_in, k, _ = kernel.shape
            y = F.conv2d(
                x.transpose(1, 2).flatten(1, 2), kernel.reshape(n * c_out, c_in, k, k), padding=self.padding, groups=n
            )
            return self._add_bias(y.view(x.shape[0], n, c_out, *y.shape[-2:]).transpose(1, 2))
        kernel = self.kernel(samples_in, samples_out)
        c_out, n_out, c_in, n_in, k, _ = kernel.shape
        if self.transform == "signal":
            # relative[j, i] = h_j⁻¹ h_i: slice j resampled into every output sample's frame.
            relative = self._relative(samples_in, samples_out)
            b, _, _, h, w = x.shape
            views = warp(x.transpose(1, 2).flatten(0, 1), relative.repeat(b, 1, 1, 1))  # [B·N_in, C_in, N_out, H, W]
            views = views.view(b, n_in, c_in, n_out, h, w).permute(0, 3, 2, 1, 4, 5).reshape(b, -1, h, w)
            weight = kernel.transpose(0, 1).reshape(n_out * c_out, c_in * n_in, k, k)
            y = F.conv2d(views, weight, padding=self.padding, groups=n_out)  # [B, N_out·C_out, H', W']
            return self._add_bias(y.view(b, n_out, c_out, *y.shape[-2:]).transpose(1, 2))
        y = F.conv2d(x.flatten(1, 2), kernel.reshape(c_out * n_out, c_in * n_in, k, k), padding=self.padding)
        return self._add_bias(y.view(x.shape[0], c_out, n_out, *y.shape[-2:]))

    def _relative(self, a: Tensor, b: Tensor) -> Tensor:  # [N_a, 2, 2], [N_b, 2, 2] -> [N_a, N_b, 2, 2]
        """Every ``a_i⁻¹ b_j`` in float64."""
        return self.group.compose(self.group.inverse(a.double()).unsqueeze(1), b.double()[None])

    def diagonal_kernel(self, samples: Tensor) -> Tensor:
        """Weights ``[N, C_out, C_in, k, k]`` of the ``h_i⁻¹h_j = e`` terms, chart coordinates ``ξ⁻¹(e) = 0``."""
        u, volume = self.transformed_offsets(samples)  # [N, k², 2], [N]
        coords = torch.cat((u, u.new_zeros(*u.shape[:2], self.group.dim)), dim=-1)
        values = self.siren(coords) * self.mask(coords) * volume[:, None, None]  # [N, k², C_out·C_in]
        k = self.kernel_size
        return values.view(-1, k, k, self.out_channels, self.in_channels).permute(0, 3, 4, 1, 2)


class GroupLayerNorm(nn.Module):
    """Layer norm over everything but the batch (channels, group samples, space), per-channel affine.

    Statistics over whole feature maps are invariant under the group action on the samples and on
    space, so the normalization keeps equivariance; works for ``[B, C, N, H, W]`` and ``[B, C, H, W]``.
    With ``affine=False`` it is the authors' ``LayerNorm3d`` (``F.layer_norm`` over ``(C, N, H, W)``, no
    parameters).

    Args:
        channels: number of channels ``C`` (dimension 1).
        eps: added to the variance.
        affine: learnable per-channel scale and shift.
    """

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: Tensor) -> Tensor:  # [B, C, ...] -> [B, C, ...]
        x = F.layer_norm(x, x.shape[1:], eps=self.eps)
        if self.weight is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class GroupRMSNorm(nn.Module):
    """RMS norm over everything but the batch (channels, group samples, space), per-channel scale, no shift.

    Unlike :class:`GroupLayerNorm` it maps zeros to zeros: in a network of bias-free convolutions,
    these norms and activations with ``f(0) = 0`` (GELU), an empty region of the canvas has exactly
    zero features, the same value as the zero padding. The feature maps then carry no canvas-edge
    artefacts, and a pattern's features do not depend on where on the canvas it sits (the statistic
    is a sum over the whole map, unchanged by moving the content as long as it stays on the canvas).

    Args:
        channels: number of channels ``C`` (dimension 1).
        eps: added to the mean square.
        affine: learnable per-channel scale.
    """

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None

    def forward(self, x: Tensor) -> Tensor:  # [B, C, ...] -> [B, C, ...]
        x = F.rms_norm(x, x.shape[1:], eps=self.eps)
        return x if self.weight is None else x * self.weight.view((1, -1) + (1,) * (x.dim() - 2))


def pool_group(x: Tensor, reduce: Literal["max", "mean"] = "max") -> Tensor:
    """Pool over the group samples: ``[B, C, N, H, W] -> [B, C, H, W]`` (invariant to relabelling them)."""
    if reduce == "max":
        return x.amax(dim=2)
    if reduce == "mean":
        return x.mean(dim=2)
    raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")


def pool_spatial(x: Tensor, kernel_size: int = 2) -> Tensor:
    """Max-pool space, each group sample on its own: ``[B, C, N, H, W] -> [B, C, N, H/k, W/k]``."""
    b, c, n = x.shape[:3]
    y = F.max_pool2d(x.flatten(1, 2), kernel_size)
    return y.view(b, c, n, *y.shape[-2:])
