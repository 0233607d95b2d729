r"""PONITA building blocks: weight sharing over position–orientation space R³×S².

Bekkers, Vadgama, Hesselink, van der Linden & Romero, *Fast, Expressive SE(n) Equivariant Networks
through Weight-Sharing in Position-Orientation Space*, ICLR 2024 (arXiv:2310.02970).

A point carries a signal on a grid of orientations ``o ∈ S²``. Two position–orientations are
equivalent under E(3) exactly when a few invariants agree, so a convolution kernel that is a function
of these invariants shares its weights over every equivalent pair (the paper's weight-sharing
theorem). Kernels are MLPs of polynomial features of the invariants; no Clebsch–Gordan
products are needed, and vectors enter and leave the network through ``v·o`` and ``Σ_o f(o) o``.

Conventions: edges ``j → i`` follow :mod:`geomol.nn.graph` (``edge_index[0]`` the sender ``j``,
``edge_index[1]`` the receiver ``i``), and ``r = p_j − p_i`` points from the receiver to the sender,
as in the paper.

Pieces, in the order a forward pass uses them:

* invariants: :func:`distance_invariants` (R³), :func:`point_invariants` (pairs in R³×S², with the
  optional fourth invariant), :func:`fiber_bundle_invariants` (the separable form on a grid);
* orientation grids: :func:`repulsion_grid` (seeded), :func:`fibonacci_grid`, :func:`spherical_grid`;
* :func:`lift_to_edges` and :func:`lifted_graph`: the edge-lifted position–orientation point cloud;
* :class:`PolynomialFeatures` and :class:`KernelBasis`: invariants → basis, once per forward;
* :class:`PointConv` (R³ or lifted points), :class:`FiberBundleConv` (grid), :class:`ConvNextBlock`;
* :func:`scalar_to_sphere`, :func:`vector_to_sphere`, :func:`sphere_to_scalar`, :func:`sphere_to_vector`.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

__all__ = [
    "distance_invariants",
    "point_invariants",
    "fiber_bundle_invariants",
    "repulsion_grid",
    "fibonacci_grid",
    "spherical_grid",
    "random_rotation_matrix",
    "lift_to_edges",
    "lifted_graph",
    "PolynomialFeatures",
    "KernelBasis",
    "PointConv",
    "FiberBundleConv",
    "ConvNextBlock",
    "scalar_to_sphere",
    "vector_to_sphere",
    "sphere_to_scalar",
    "sphere_to_vector",
]

GRID_KINDS = ("repulsion", "fibonacci")


def _norm(v: Tensor) -> Tensor:
    """Euclidean norm over the last dimension whose first and second derivatives stay finite at 0.

    Self-loops (``r = 0``) give exact zeros, where a plain ``norm`` has an undefined derivative, and
    force training differentiates twice.
    """
    sq = v.pow(2).sum(-1)
    positive = sq > 0
    safe = torch.where(positive, sq, torch.ones_like(sq))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(sq))


# --------------------------------------------------------------------------------------------------
# Invariants
# --------------------------------------------------------------------------------------------------


def distance_invariants(pos: Tensor, edge_index: Tensor) -> Tensor:
    """The one invariant of a pair of points in R³: their distance ``‖p_j − p_i‖``.

    Shapes:
        pos ``[N, 3]``, edge_index ``[2, E]`` -> ``[E, 1]``
    """
    rel = pos[edge_index[0]] - pos[edge_index[1]]
    return _norm(rel).unsqueeze(-1)


def point_invariants(pos: Tensor, ori: Tensor, edge_index: Tensor, complete: bool = False) -> Tensor:
    r"""Invariants of pairs of position–orientations ``(p_j, o_j) → (p_i, o_i)`` in R³×S².

    PONITA's three (the paper's R³×S² bi-invariants), with ``r = p_j − p_i``:

    .. math::
        a_1 = r·o_i, \quad a_2 = ‖r − (r·o_i)\, o_i‖, \quad a_3 = o_i·o_j .

    They miss where ``o_j`` points around the axis ``o_i`` relative to ``r``, so distinct pairs
    can share them. ``complete=True`` appends :math:`a_4 = r·o_j`: the four then fix the Gram
    matrix of ``(r, o_i, o_j)`` (``‖r‖² = a_1² + a_2²``), which determines the pair up to E(3)
    (first fundamental theorem for O(3)); Bellaard, Smets & Duits (2025) show that four smooth
    invariants suffice and that this completeness improves PONITA.

    Args:
        pos: base position of each point.
        ori: unit orientation of each point.
        edge_index: pairs ``j → i``.
        complete: append the fourth invariant ``r·o_j``.

    Shapes:
        pos ``[M, 3]``, ori ``[M, 3]``, edge_index ``[2, E]`` -> ``[E, 3]`` (``[E, 4]`` if complete)
    """
    j, i = edge_index
    rel = pos[j] - pos[i]
    o_i, o_j = ori[i], ori[j]
    along = (rel * o_i).sum(-1, keepdim=True)  # [E, 1]
    across = _norm(rel - along * o_i).unsqueeze(-1)  # [E, 1]
    cos = (o_i * o_j).sum(-1, keepdim=True)  # [E, 1]
    parts = [along, across, cos]
    if complete:
        parts.append((rel * o_j).sum(-1, keepdim=True))
    return torch.cat(parts, dim=-1)


def fiber_bundle_invariants(pos: Tensor, grid: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
    r"""Invariants of the separable convolution on the fiber bundle R³ × grid (the paper's separable group convolution).

    The spatial step connects ``(p_j, o) → (p_i, o)`` with the *same* orientation, so it needs only
    ``[r·o, ‖r − (r·o) o‖]`` per edge and grid point; the fiber step connects ``(p_i, o') → (p_i, o)``
    within one point, which needs only ``o·o'``. Splitting the kernel this way replaces an
    ``[E, O, O]`` kernel by ``[E, O]`` and ``[O, O]`` ones.

    Shapes:
        pos ``[N, 3]``, grid ``[O, 3]``, edge_index ``[2, E]`` -> (spatial ``[E, O, 2]``,
        fiber ``[O, O, 1]``)
    """
    rel = (pos[edge_index[0]] - pos[edge_index[1]]).unsqueeze(1)  # [E, 1, 3]
    along = (rel * grid).sum(-1, keepdim=True)  # [E, O, 1]
    across = _norm(rel - along * grid).unsqueeze(-1)  # [E, O, 1]
    fiber = (grid @ grid.T).unsqueeze(-1)  # [O, O, 1]
    return torch.cat([along, across], dim=-1), fiber


# --------------------------------------------------------------------------------------------------
# Orientation grids
# --------------------------------------------------------------------------------------------------


def fibonacci_grid(num_ori: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Golden-spiral points: equal-area bands in ``z``, longitude advanced by the golden angle.

    Shapes:
        -> ``[num_ori, 3]`` unit vectors
    """
    if num_ori < 1:
        raise ValueError(f"a spherical grid needs at least one point, got num_ori={num_ori}")
    k = torch.arange(num_ori, dtype=torch.float64)
    z = 1.0 - (2.0 * k + 1.0) / num_ori
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    rho = (1.0 - z * z).clamp_min(0.0).sqrt()
    return torch.stack([rho * phi.cos(), rho * phi.sin(), z], dim=-1).to(dtype)


def repulsion_grid(
    num_ori: int, seed: int = 0, steps: int = 1000, exponent: float = 2.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    r"""Near-uniform points on S² from seeded random points that repel each other.

    Minimises the Riesz energy :math:`\sum_{i \ne j} ‖x_i − x_j‖^{-s}` (``s = exponent``) by
    projected gradient descent on the sphere, in float64 (PONITA builds its grid the same way, with
    a geodesic Coulomb energy). Each step moves a point at most a tenth of the mean spacing, so
    random starts that put two points almost on top of each other do not blow up. For 12 points it
    converges to the icosahedron; for 20 the smallest angle is about 46.4° (best known packing
    47.4°, Fibonacci grid 40.4°).

    Args:
        num_ori: number of points.
        seed: seed of the random start; the same seed gives the same grid.
        steps: gradient steps.
        exponent: Riesz exponent ``s``.

    Shapes:
        -> ``[num_ori, 3]`` unit vectors
    """
    if num_ori < 1:
        raise ValueError(f"a spherical grid needs at least one point, got num_ori={num_ori}")
    return _repulsion_grid(num_ori, seed, steps, exponent).to(dtype, copy=True)


@functools.lru_cache(maxsize=16)
def _repulsion_grid(num_ori: int, seed: int, steps: int, exponent: float) -> Tensor:
    # Cached: every model with a grid builds one, and the descent costs ~1 s for 64 points.
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_ori, 3, generator=generator, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    spacing = math.sqrt(4.0 * math.pi / num_ori)
    # The force on a point scales like spacing^-(s+1); this step size makes the update a few percent
    # of the spacing throughout, so the same schedule works for any num_ori.
    rate = 0.1 * spacing ** (exponent + 2.0)
    off_diagonal = ~torch.eye(num_ori, dtype=torch.bool)
    for _ in range(steps if num_ori > 1 else 0):
        diff = x[:, None] - x[None]  # [O, O, 3]
        sq = diff.pow(2).sum(-1).masked_fill(~off_diagonal, 1.0)
        weight = sq.pow(-(exponent + 2.0) / 2.0) * off_diagonal
        force = (weight.unsqueeze(-1) * diff).sum(1)
        force = force - (force * x).sum(-1, keepdim=True) * x  # tangent to the sphere
        step = rate * force
        length = step.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        x = x + step * (0.1 * spacing / length).clamp(max=1.0)
        x = x / x.norm(dim=-1, keepdim=True)
    return x


def spherical_grid(num_ori: int, kind: str = "repulsion", seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A grid of ``num_ori`` orientations of the given ``kind`` (``"repulsion"`` or ``"fibonacci"``).

    Shapes:
        -> ``[num_ori, 3]`` unit vectors
    """
    if kind == "repulsion":
        return repulsion_grid(num_ori, seed=seed, dtype=dtype)
    if kind == "fibonacci":
        return fibonacci_grid(num_ori, dtype=dtype)
    raise ValueError(f"unknown grid kind {kind!r}; use one of {GRID_KINDS}")


def random_rotation_matrix(
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A Haar-random rotation (det +1) from a normalised Gaussian quaternion.

    Shapes:
        -> ``[3, 3]``
    """
    q = torch.randn(4, dtype=torch.float64, generator=generator)
    w, x, y, z = (q / q.norm()).tolist()
    rot = torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )
    return rot.to(dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------
# Edge-lifted position–orientation point clouds
# --------------------------------------------------------------------------------------------------


def lift_to_edges(pos: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
    """Lift each edge ``j → i`` to the position–orientation ``(p_i, (p_j − p_i)/‖p_j − p_i‖)``.

    A molecule without a grid still has directions: its bonds (or short edges). Each becomes a
    point of R³×S² sitting on its receiver atom (the paper's position–orientation point clouds, used for QM9).

    Shapes:
        pos ``[N, 3]``, edge_index ``[2, M]`` (no self-loops) -> (base atom ``[M]``, orientation ``[M, 3]``)
    """
    j, i = edge_index
    if bool((j == i).any()):
        raise ValueError("edges lifted to orientations must not contain self-loops (their direction is undefined)")
    rel = pos[j] - pos[i]
    return i, rel / rel.norm(dim=-1, keepdim=True)


def lifted_graph(edge_index: Tensor, base: Tensor, num_nodes: int) -> Tensor:
    """Connect every lifted point on atom ``b`` to every lifted point on atom ``a`` for each edge ``b → a``.

    Args:
        edge_index: interactions between atoms (self-loops included when points on the same atom
            should talk to each other).
        base: the atom each lifted point sits on.
        num_nodes: number of atoms.

    Shapes:
        edge_index ``[2, E]``, base ``[M]`` -> lifted edge_index ``[2, Σ_(b→a) n_b n_a]``
    """
    device = base.device
    order = torch.argsort(base, stable=True)
    counts = torch.bincount(base, minlength=num_nodes)
    first = torch.cumsum(counts, 0) - counts
    src, dst = edge_index
    pairs = counts[src] * counts[dst]  # [E]
    edge = torch.repeat_interleave(torch.arange(src.numel(), device=device), pairs)
    offset = torch.arange(edge.numel(), device=device) - torch.repeat_interleave(torch.cumsum(pairs, 0) - pairs, pairs)
    per_dst = counts[dst[edge]]
    lifted_src = order[first[src[edge]] + torch.div(offset, per_dst, rounding_mode="floor")]
    lifted_dst = order[first[dst[edge]] + offset % per_dst]
    return torch.stack([lifted_src, lifted_dst])


# --------------------------------------------------------------------------------------------------
# Kernel basis
# --------------------------------------------------------------------------------------------------


class PolynomialFeatures(nn.Module):
    """All monomials of degree 1 … ``degree`` of the input features (PONITA's kernel embedding).

    PONITA forms repeated outer products, which repeat each monomial; the unique ones span the
    same space for the linear layer that follows.

    Shapes:
        ``[..., F]`` -> ``[..., num_features]`` with ``num_features = Σ_k C(F + k − 1, k)``
    """

    def __init__(self, in_features: int, degree: int = 3) -> None:
        super().__init__()
        if degree < 1:
            raise ValueError(f"polynomial degree must be at least 1, got {degree}")
        self.in_features, self.degree = in_features, degree
        for k in range(1, degree + 1):
            combos = list(itertools.combinations_with_replacement(range(in_features), k))
            self.register_buffer(f"index_{k}", torch.tensor(combos, dtype=torch.long), persistent=False)
        self.num_features = sum(math.comb(in_features + k - 1, k) for k in range(1, degree + 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.size(-1) != self.in_features:
            raise ValueError(f"expected {self.in_features} input features, got {x.size(-1)}")
        return torch.cat([x[..., getattr(self, f"index_{k}")].prod(-1) for k in range(1, self.degree + 1)], dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, degree={self.degree}, num_features={self.num_features}"


class KernelBasis(nn.Module):
    """Invariants → polynomial features → MLP (Linear, GELU, Linear, GELU): the shared kernel basis.

    Computed once per forward and shared by all layers; each layer only maps it linearly to its own
    kernel, which is what keeps PONITA cheap.

    Args:
        num_invariants: invariants per pair.
        hidden_channels: width of the MLP.
        basis_dim: number of basis functions.
        degree: degree of the polynomial features.

    Shapes:
        ``[..., num_invariants]`` -> ``[..., basis_dim]``
    """

    def __init__(self, num_invariants: int, hidden_channels: int, basis_dim: int, degree: int = 3) -> None:
        super().__init__()
        self.features = PolynomialFeatures(num_invariants, degree)
        self.mlp = nn.Sequential(
            nn.Linear(self.features.num_features, hidden_channels),
            nn.GELU(),
            nn.Linear(hidden_channels, basis_dim),
            nn.GELU(),
        )

    def forward(self, invariants: Tensor) -> Tensor:
        return self.mlp(self.features(invariants))


# --------------------------------------------------------------------------------------------------
# Convolutions and the ConvNeXt block
# --------------------------------------------------------------------------------------------------


class PointConv(nn.Module):
    r"""Depthwise convolution on a point cloud (R³, or lifted points of R³×S²).

    .. math:: x_i^{out} = \sum_{j \in N(i)} k(a_{ij}) \odot x_j + b, \quad k(a_{ij}) = W\, \mathrm{basis}(a_{ij})

    Args:
        channels: feature channels (in = out; the ConvNeXt MLP mixes channels).
        basis_dim: size of the shared kernel basis.
        calibrate: on the first forward pass in training mode, rescale the kernel by std(x)/std(output)
            so the layer starts variance-preserving (the authors' ``Conv.callibrate``; that pass's own
            output is not recomputed, as theirs).

    Shapes:
        x ``[M, C]``, edge_index ``[2, E]``, basis ``[E, basis_dim]`` -> ``[M, C]``
    """

    def __init__(self, channels: int, basis_dim: int, calibrate: bool = False) -> None:
        super().__init__()
        self.kernel = nn.Linear(basis_dim, channels, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))
        if calibrate:  # a buffer, so a resumed or loaded model is not calibrated twice
            self.register_buffer("calibrated", torch.tensor(False))

    def forward(self, x: Tensor, edge_index: Tensor, basis: Tensor) -> Tensor:
        messages = self.kernel(basis) * x[edge_index[0]]  # [E, C]
        out = scatter(messages, edge_index[1], dim=0, dim_size=x.size(0), reduce="sum")
        if self.training and hasattr(self, "calibrated") and not bool(self.calibrated):
            # .data, as the authors: the first batch's graph already holds the weight (no version bump)
            with torch.no_grad():
                self.kernel.weight.data.mul_(x.std() / out.std())
                self.calibrated.fill_(True)
        return out + self.bias


class FiberBundleConv(nn.Module):
    r"""Separable convolution on R³ × grid: a depthwise spatial step per orientation, then the fiber step.

    .. math::
        y(p_i, o) = \sum_j k_s(r_{ij}·o, ‖r_{ij}^{⊥o}‖) \odot x(p_j, o), \qquad
        x^{out}(p_i, o) = \frac{1}{O} \sum_{o'} k_f(o·o') \odot y(p_i, o') + b

    (the paper's separable group convolution). Both kernels are depthwise; the ConvNeXt MLP
    mixes channels.

    Args:
        channels: feature channels (in = out).
        basis_dim: size of the shared spatial and fiber kernel bases.
        calibrate: on the first forward pass in training mode, rescale the spatial kernel by
            std(x)/std(spatial) and the fiber kernel by std(spatial)/std(output) (the authors'
            ``FiberBundleConv.callibrate``; that pass's own output is not recomputed, as theirs).

    Shapes:
        x ``[N, O, C]``, edge_index ``[2, E]``, basis ``[E, O, basis_dim]``,
        fiber_basis ``[O, O, basis_dim]`` -> ``[N, O, C]``
    """

    def __init__(self, channels: int, basis_dim: int, calibrate: bool = False) -> None:
        super().__init__()
        self.kernel = nn.Linear(basis_dim, channels, bias=False)
        self.fiber_kernel = nn.Linear(basis_dim, channels, bias=False)
        self.bias = nn.Parameter(torch.zeros(channels))
        if calibrate:
            self.register_buffer("calibrated", torch.tensor(False))

    def forward(self, x: Tensor, edge_index: Tensor, basis: Tensor, fiber_basis: Tensor) -> Tensor:
        messages = self.kernel(basis) * x[edge_index[0]]  # [E, O, C]
        spatial = scatter(messages, edge_index[1], dim=0, dim_size=x.size(0), reduce="sum")  # [N, O, C]
        fiber_kernel = self.fiber_kernel(fiber_basis)  # [O, O, C], indexed [o', o, c]
        out = torch.einsum("npc,poc->noc", spatial, fiber_kernel) / fiber_kernel.size(0)
        if self.training and hasattr(self, "calibrated") and not bool(self.calibrated):
            with torch.no_grad():  # .data, as the authors (see PointConv)
                self.kernel.weight.data.mul_(x.std() / spatial.std())
                self.fiber_kernel.weight.data.mul_(spatial.std() / out.std())
                self.calibrated.fill_(True)
        return out + self.bias


class ConvNextBlock(nn.Module):
    """ConvNeXt block: conv → LayerNorm → Linear(C, wC) → GELU → Linear(wC, C) → layer scale → + input.

    Liu et al. 2022's block as PONITA uses it; LayerNorm and the MLP act on the channel dimension
    only, so the block works on ``[M, C]`` point features and ``[N, O, C]`` grid features alike.

    Args:
        channels: feature channels.
        conv: a :class:`PointConv` or :class:`FiberBundleConv`.
        widening_factor: hidden width of the MLP is ``widening_factor * channels``.
        layer_scale: initial value of the per-channel output scale; ``None`` for no scale.

    Shapes:
        x ``[..., C]`` plus the conv's own inputs -> ``[..., C]``
    """

    def __init__(
        self, channels: int, conv: nn.Module, widening_factor: int = 4, layer_scale: float | None = None
    ) -> None:
        super().__init__()
        self.conv = conv
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, widening_factor * channels),
            nn.GELU(),
            nn.Linear(widening_factor * channels, channels),
        )
        if layer_scale is not None and layer_scale > 0:
            self.layer_scale = nn.Parameter(torch.full((channels,), float(layer_scale)))
        else:
            self.layer_scale = None

    def forward(self, x: Tensor, edge_index: Tensor, *bases: Tensor) -> Tensor:
        out = self.mlp(self.norm(self.conv(x, edge_index, *bases)))
        if self.layer_scale is not None:
            out = self.layer_scale * out
        return x + out


# --------------------------------------------------------------------------------------------------
# Lifting to and reading out from the sphere
# --------------------------------------------------------------------------------------------------


def scalar_to_sphere(x: Tensor, num_ori: int) -> Tensor:
    """A scalar is the constant function on the sphere.

    Shapes:
        x ``[N, S]`` -> ``[N, O, S]``
    """
    return x.unsqueeze(-2).expand(-1, num_ori, -1)


def vector_to_sphere(vec: Tensor, grid: Tensor) -> Tensor:
    """A vector ``v`` is the function ``o ↦ v·o`` on the sphere.

    Shapes:
        vec ``[N, V, 3]``, grid ``[O, 3]`` -> ``[N, O, V]``
    """
    return torch.einsum("nvd,od->nov", vec, grid)


def sphere_to_scalar(f: Tensor) -> Tensor:
    """Invariant readout: the mean over the sphere.

    Shapes:
        f ``[N, O, S]`` -> ``[N, S]``
    """
    return f.mean(dim=-2)


def sphere_to_vector(f: Tensor, grid: Tensor) -> Tensor:
    """Vector readout: ``(1/O) Σ_o f(o) o``, which rotates with the grid.

    Inverse of :func:`vector_to_sphere` up to the factor ``1/3`` of a uniform grid
    (``(1/O) Σ_o o oᵀ ≈ I/3``).

    Shapes:
        f ``[N, O, V]``, grid ``[O, 3]`` -> ``[N, V, 3]``
    """
    return torch.einsum("nov,od->nvd", f, grid) / grid.size(0)
