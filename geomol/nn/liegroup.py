r"""The matrix groups GL⁺(2) and SL(2) of the affine group convolutions (Mironenco & Forré, ICLR 2024):
group maths, the global chart and the samplers. The convolutions, norms and pooling built on them are in
:mod:`geomol.nn.liegroup_conv`.

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
  centred regular N-gon ``π(2k + 1 - N)/N``. :class:`GroupSampler` holds one such law (and whether a
  network redraws it at every forward pass): the ``sampler`` and ``eval_sampler`` of
  :class:`~geomol.models.affine_cnn.AffineCNN`.

Conventions of the groups and samplers, authors' code (github.com/mirceamironenco/rgenn) vs geomol's own,
and the switches (the layers' are in :mod:`geomol.nn.liegroup_conv`):

=====================  ==========================================  ==========================================
switch                 authors                                     geomol
=====================  ==========================================  ==========================================
``spd_law``            ``"authors"``: ``g = exp(X)^½·R``           ``"geomol"``: ``g = exp(X)·R``
``angles``             ``"linspace"``: ``linspace(-π, π, N)``      ``"equidistant"``: centred N-gon
``angle_chart``        ``"positive"``: ``[0, 2π)``                 ``"centred"``: ``(-π, π]``
=====================  ==========================================  ==========================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["sym_exp", "spd_log", "LinearGroup2", "GL2", "SL2", "get_group", "GroupSampler"]

AngleSampling = Literal["equidistant", "linspace", "uniform"]
AngleChart = Literal["centred", "positive"]
SPDSampling = Literal["random", "quasi"]
SPDLaw = Literal["geomol", "authors"]

_ANGLE_CHARTS = ("centred", "positive")

# Below this, ratios like atanh(s)/s and sinh(r)/r switch to their Taylor series (error < 1e-16).
_SMALL = 1e-4


def _check_law(
    num_samples: int, spd_std: float, angles: str, angle_range: float, spd_sampling: str, spd_cycle: int, spd_law: str
) -> None:
    """Raise ``ValueError`` on a sampling law :meth:`LinearGroup2.sample` cannot draw."""
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
    if spd_sampling not in ("random", "quasi"):
        raise ValueError(f"spd_sampling must be 'random' or 'quasi', got {spd_sampling!r}")
    if angles not in ("equidistant", "linspace", "uniform"):
        raise ValueError(f"angles must be 'equidistant', 'linspace' or 'uniform', got {angles!r}")


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
        _check_law(num_samples, spd_std, angles, angle_range, spd_sampling, spd_cycle, spd_law)
        num_spd = min(spd_cycle, num_samples) or num_samples
        if spd_sampling == "random":
            v = spd_std * torch.randn(num_spd, self.dim - 1, generator=generator, dtype=torch.float64)
        else:  # "quasi"
            v = spd_std * torch.special.ndtri(_halton(num_spd, self.dim - 1))
        if spd_law == "authors":
            v = 0.5 * v  # S = exp(X), P = S^½ = exp(X / 2) (X and S commute)
        half_width = angle_range * math.pi
        if angles == "equidistant":
            k = torch.arange(num_samples, dtype=torch.float64)
            theta = half_width * (2.0 * k + 1.0 - num_samples) / num_samples
        elif angles == "linspace":
            theta = torch.linspace(-half_width, half_width, num_samples, dtype=torch.float64)
        else:  # "uniform"
            theta = half_width * (2.0 * torch.rand(num_samples, generator=generator, dtype=torch.float64) - 1.0)
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


@dataclasses.dataclass(frozen=True)
class GroupSampler:
    """How a network draws its group samples in one mode (training or eval): a law of
    :meth:`LinearGroup2.sample` and whether every forward pass redraws it.

    Args:
        num_samples: group elements per set.
        spd_std, spd_law, spd_sampling, spd_cycle, angles, angle_range: the law; see
            :meth:`LinearGroup2.sample`.
        resample: draw a new set at every forward pass (from a seeded stream) instead of one fixed set.
    """

    num_samples: int = 10
    spd_std: float = math.sqrt(0.1)
    spd_law: SPDLaw = "geomol"
    spd_sampling: SPDSampling = "random"
    spd_cycle: int = 0
    angles: AngleSampling = "equidistant"
    angle_range: float = 1.0
    resample: bool = True

    def __post_init__(self) -> None:
        # Fail where the config is read, not at the first training step.
        _check_law(
            self.num_samples,
            self.spd_std,
            self.angles,
            self.angle_range,
            self.spd_sampling,
            self.spd_cycle,
            self.spd_law,
        )

    @classmethod
    def build(
        cls, config: GroupSampler | Mapping[str, Any] | None = None, base: GroupSampler | None = None
    ) -> GroupSampler:
        """A sampler from a config node: a :class:`GroupSampler` as it is; a mapping as ``base`` (default:
        the defaults above) with the mapping's non-null entries, so ``null`` means "as in ``base``"."""
        if isinstance(config, GroupSampler):
            return config
        changes = {key: value for key, value in dict(config or {}).items() if value is not None}
        unknown = sorted(set(changes) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            known = ", ".join(field.name for field in dataclasses.fields(cls))
            raise ValueError(f"unknown sampler setting(s) {', '.join(unknown)}; a sampler has {known}")
        return dataclasses.replace(base or cls(), **changes)

    def sample(self, group: str | LinearGroup2, generator: torch.Generator | None = None) -> Tensor:
        """One set ``[num_samples, 2, 2]`` (float64) of ``group`` drawn by this law."""
        return get_group(group).sample(
            self.num_samples,
            spd_std=self.spd_std,
            angles=self.angles,
            angle_range=self.angle_range,
            spd_sampling=self.spd_sampling,
            spd_cycle=self.spd_cycle,
            spd_law=self.spd_law,
            generator=generator,
        )
