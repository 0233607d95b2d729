r"""PONITA building blocks: weight sharing over position–orientation space R³×S².

Bekkers, Vadgama, Hesselink, van der Linden & Romero, *Fast, Expressive SE(n) Equivariant Networks
through Weight-Sharing in Position-Orientation Space*, ICLR 2024 (arXiv:2310.02970).

A point carries a signal on a grid of orientations ``o ∈ S²``. Two position–orientations are
equivalent under E(3) exactly when a few invariants agree, so a convolution kernel that is a function
of these invariants shares its weights over every equivalent pair (the paper's weight-sharing
theorem). Kernels are MLPs of polynomial features of the invariants; no Clebsch–Gordan
products are needed, and vectors enter and leave the network through ``v·o`` and ``Σ_o f(o) o``.

Conventions: edges ``j → i`` follow :mod:`geomol.nn.graph` (``edge_index[0]`` the sender ``j``,
``edge_index[1]`` the receiver ``i``), and the edge vector is geomol's ``r_ij = p_i − p_j``
(:func:`~geomol.nn.graph.edge_vectors`). The paper's relative position ``p_j − p_i`` is ``−r_ij``, so
its invariants appear here with that sign (``a_1 = −r_ij·o_i``): the same numbers as the paper's.

Pieces, in the order a forward pass uses them:

* invariants: :func:`distance_invariants` (R³), :func:`point_invariants` (pairs in R³×S², with the
  optional fourth invariant), :func:`fiber_bundle_invariants` (the separable form on a grid);
* orientation grids: :func:`repulsion_grid` (seeded), :func:`fibonacci_grid`, :func:`spherical_grid`;
* :func:`lift_to_edges` and :func:`lifted_graph`: the edge-lifted position–orientation point cloud;
* :class:`PolynomialFeatures` and :class:`KernelBasis`: invariants → basis, once per forward;
* :class:`PointConv` (R³ or lifted points), :class:`FiberBundleConv` (grid), :class:`ConvNextBlock`;
* :func:`scalar_to_sphere`, :func:`vector_to_sphere`, :func:`sphere_to_scalar`, :func:`sphere_to_vector`;
* the three spaces a network's features live on, each with ``lift()`` (node inputs onto the space) and
  ``readout()`` (back to nodes): :class:`PositionSpace` (R³), :class:`EdgeLiftedSpace` (points of R³×S²
  lifted from edges) and :class:`FiberBundleSpace` (R³ × a grid of orientations); :func:`ponita_space`
  picks one from PONITA's ``num_ori``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from .graph import edge_vectors, full_graph, radius_graph

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
    "interaction_graph",
    "Lifted",
    "PonitaSpace",
    "PositionSpace",
    "EdgeLiftedSpace",
    "FiberBundleSpace",
    "ponita_space",
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
    """The one invariant of a pair of points in R³: their distance ``‖r_ij‖``.

    Shapes:
        pos ``[N, 3]``, edge_index ``[2, E]`` -> ``[E, 1]``
    """
    r_ij, _ = edge_vectors(pos, edge_index)
    return _norm(r_ij).unsqueeze(-1)


def point_invariants(pos: Tensor, ori: Tensor, edge_index: Tensor, complete: bool = False) -> Tensor:
    r"""Invariants of pairs of position–orientations ``(p_j, o_j) → (p_i, o_i)`` in R³×S².

    PONITA's three (the paper's R³×S² bi-invariants), with the paper's ``r = p_j − p_i = −r_ij``:

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
    r_ij, _ = edge_vectors(pos, edge_index)  # [E, 3]; the paper's r is -r_ij
    o_i, o_j = ori[i], ori[j]
    along = -(r_ij * o_i).sum(-1, keepdim=True)  # [E, 1]  a_1 = r·o_i
    across = _norm(r_ij + along * o_i).unsqueeze(-1)  # [E, 1]  a_2 = ‖-(r - a_1 o_i)‖
    cos = (o_i * o_j).sum(-1, keepdim=True)  # [E, 1]
    parts = [along, across, cos]
    if complete:
        parts.append(-(r_ij * o_j).sum(-1, keepdim=True))  # a_4 = r·o_j
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
    r_ij = edge_vectors(pos, edge_index)[0].unsqueeze(1)  # [E, 1, 3]; the paper's r is -r_ij
    along = -(r_ij * grid).sum(-1, keepdim=True)  # [E, O, 1]  r·o
    across = _norm(r_ij + along * grid).unsqueeze(-1)  # [E, O, 1]  ‖-(r - (r·o) o)‖
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
    """Lift each edge ``j → i`` to the position–orientation ``(p_i, −r_ij/‖r_ij‖)``, ``−r_ij = p_j − p_i``.

    A molecule without a grid still has directions: its bonds (or short edges). Each becomes a
    point of R³×S² sitting on its receiver atom (the paper's position–orientation point clouds, used for QM9).

    Shapes:
        pos ``[N, 3]``, edge_index ``[2, M]`` (no self-loops) -> (base atom ``[M]``, orientation ``[M, 3]``)
    """
    j, i = edge_index
    if bool((j == i).any()):
        raise ValueError("edges lifted to orientations must not contain self-loops (their direction is undefined)")
    r_ij, dist = edge_vectors(pos, edge_index)
    return i, -r_ij / dist.unsqueeze(-1)  # towards the sender, as in the paper


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


# --------------------------------------------------------------------------------------------------
# Spaces: where the features live, how node inputs get there and how outputs come back
# --------------------------------------------------------------------------------------------------


def interaction_graph(
    pos: Tensor, batch: Tensor, radius: float | None, loop: bool, max_num_neighbors: int | None = None
) -> Tensor:
    """The pairs ``j → i`` within ``radius`` (``None``: every pair of a graph), self-loops if ``loop``.

    Shapes:
        pos ``[N, 3]``, batch ``[N]`` -> edge_index ``[2, E]``
    """
    if radius is None:
        return full_graph(batch, loop=loop)
    return radius_graph(pos, radius, batch, loop=loop, max_num_neighbors=max_num_neighbors)


@dataclass
class Lifted:
    """A point cloud's input signal lifted onto a space, with what the convolutions and the readout need.

    Attributes:
        features: the lifted input channels, ``[N, C_in]`` (R³), ``[M, C_in]`` (edge-lifted points) or
            ``[N, O, C_in]`` (grid).
        edge_index: the pairs the convolutions sum over, ``[2, E]`` (between atoms, or between lifted points).
        invariants: the input of each kernel basis: ``([E, I],)`` on point clouds; on the grid the spatial
            ``[E, O, 2]`` and fiber ``[O, O, 1]`` invariants.
        positions: the position of every point the edges connect, ``[N, 3]`` or ``[M, 3]`` (for the cutoff
            window, which acts on their distances).
        num_nodes: number of atoms ``N``.
        grid: the orientations of this forward pass ``[O, 3]`` (grid only; rotated in training mode).
        base: the atom each lifted point sits on ``[M]`` (edge-lifted only).
        orientation: each lifted point's orientation ``[M, 3]`` (edge-lifted only).
    """

    features: Tensor
    edge_index: Tensor
    invariants: tuple[Tensor, ...]
    positions: Tensor
    num_nodes: int
    grid: Tensor | None = None
    base: Tensor | None = None
    orientation: Tensor | None = None


class PonitaSpace(nn.Module):
    """The space a PONITA network's features live on: :meth:`lift` puts node scalars and vectors onto it,
    :meth:`readout` brings per-point outputs back to the nodes.

    A space holds no parameters or buffers (the network owns the kernel bases and the grid, whose
    state-dict keys stay ``basis.*``, ``fiber_basis.*`` and ``grid``); it is a module so that it follows
    the network's train/eval mode and shows in its ``repr``.
    """

    #: invariants per pair of each kernel basis, in the order of :attr:`Lifted.invariants`
    basis_invariants: tuple[int, ...] = ()
    #: the convolution of the ConvNeXt blocks on this space
    conv: type[nn.Module] = PointConv
    #: points have orientations, so vectors can enter (``v·o``) and leave (``Σ f(o) o``)
    has_orientations: bool = True

    def make_grid(self, dtype: torch.dtype) -> Tensor | None:
        """The network's initial grid of orientations ``[O, 3]``, or None on spaces without one."""
        return None

    def lift(
        self,
        pos: Tensor,
        batch: Tensor,
        edge_index: Tensor,
        scalars: Tensor,
        vectors: Tensor | None = None,
        grid: Tensor | None = None,
    ) -> Lifted:
        """Shapes: pos ``[N, 3]``, batch ``[N]``, edge_index ``[2, E]`` (the atoms' interactions, self-loops
        included), scalars ``[N, S]``, vectors ``[N, V, 3]`` or None, grid ``[O, 3]`` or None -> :class:`Lifted`."""
        raise NotImplementedError

    def readout(self, scalar: Tensor, vector: Tensor, lifted: Lifted) -> tuple[Tensor, Tensor | None]:
        """Shapes: per-point scalar ``[..., S]`` and vector ``[..., V]`` channels (``V = 0``: no vector
        output) -> node scalars ``[N, S]``, node vectors ``[N, V, 3]`` or None."""
        raise NotImplementedError


class PositionSpace(PonitaSpace):
    """R³ (the paper's PNITA): points carry plain features, pairs are described by their distance alone."""

    basis_invariants = (1,)
    conv = PointConv
    has_orientations = False

    def lift(
        self,
        pos: Tensor,
        batch: Tensor,
        edge_index: Tensor,
        scalars: Tensor,
        vectors: Tensor | None = None,
        grid: Tensor | None = None,
    ) -> Lifted:
        if vectors is not None:
            raise ValueError("vectors need orientations; R³ (num_ori=0) has none")
        invariants = distance_invariants(pos, edge_index)  # [E, 1]
        return Lifted(scalars, edge_index, (invariants,), pos, pos.size(0))

    def readout(self, scalar: Tensor, vector: Tensor, lifted: Lifted) -> tuple[Tensor, Tensor | None]:
        return scalar, None


class EdgeLiftedSpace(PonitaSpace):
    """R³×S² point clouds lifted from edges (the paper's QM9 model, which lifts covalent bonds).

    Every edge ``j → i`` of the graph within ``lift_radius`` becomes a point on atom ``i`` oriented towards
    ``j`` (:func:`lift_to_edges`); two points interact when their atoms do (:func:`lifted_graph`), through
    :func:`point_invariants`. Scalars are constant on an atom's points, a vector ``v`` is ``v·o``; the
    readout averages an atom's points as the grid readout averages its orientations. An atom with no
    neighbour within ``lift_radius`` has no point and reads out zeros.

    Args:
        lift_radius: cutoff of the lifted graph (``None``: every pair of a graph).
        max_num_neighbors: neighbours kept per atom by the lifted radius graph (``None``: all).
        complete: add the fourth invariant ``r·o_j`` (see :func:`point_invariants`).
    """

    conv = PointConv

    def __init__(
        self, lift_radius: float | None = None, max_num_neighbors: int | None = None, complete: bool = False
    ) -> None:
        super().__init__()
        self.lift_radius, self.max_num_neighbors, self.complete = lift_radius, max_num_neighbors, complete
        self.basis_invariants = (4 if complete else 3,)

    def lift(
        self,
        pos: Tensor,
        batch: Tensor,
        edge_index: Tensor,
        scalars: Tensor,
        vectors: Tensor | None = None,
        grid: Tensor | None = None,
    ) -> Lifted:
        lift_edges = interaction_graph(
            pos, batch, self.lift_radius, loop=False, max_num_neighbors=self.max_num_neighbors
        )
        base, ori = lift_to_edges(pos, lift_edges)  # [M], [M, 3]
        points = pos[base]  # [M, 3]
        edges = lifted_graph(edge_index, base, pos.size(0))  # [2, E']
        invariants = point_invariants(points, ori, edges, complete=self.complete)  # [E', 3 or 4]
        inputs = [scalars[base]]
        if vectors is not None:
            inputs.append((vectors[base] * ori.unsqueeze(1)).sum(-1))  # v·o [M, V]
        features = torch.cat(inputs, dim=-1)
        return Lifted(features, edges, (invariants,), points, pos.size(0), base=base, orientation=ori)

    def readout(self, scalar: Tensor, vector: Tensor, lifted: Lifted) -> tuple[Tensor, Tensor | None]:
        base, num_nodes = lifted.base, lifted.num_nodes
        # Points on one atom are samples of its spherical signal: average them like the grid readout.
        node_scalar = scatter(scalar, base, dim=0, dim_size=num_nodes, reduce="mean")
        if not vector.size(-1):
            return node_scalar, None
        node_vector = scatter(
            vector.unsqueeze(-1) * lifted.orientation.unsqueeze(1), base, 0, dim_size=num_nodes, reduce="mean"
        )  # [N, V, 3]
        return node_scalar, node_vector

    def extra_repr(self) -> str:
        return f"lift_radius={self.lift_radius}, max_num_neighbors={self.max_num_neighbors}, complete={self.complete}"


class FiberBundleSpace(PonitaSpace):
    """The fiber bundle R³ × grid: every atom carries a signal on the same ``num_ori`` orientations,
    convolved by the separable :class:`FiberBundleConv` (spatial invariants per orientation, fiber
    invariants ``o·o'``).

    Scalars lift to constants on the sphere, a vector ``v`` to ``o ↦ v·o``; the readout is the mean over
    the sphere (scalars) and ``(1/O) Σ_o f(o) o`` (vectors). The grid is the network's ``grid`` buffer,
    passed to :meth:`lift` (a user may swap it, e.g. for a grid with known symmetries).

    Args:
        num_ori: orientations of the grid.
        kind: ``"repulsion"`` or ``"fibonacci"`` (see :func:`spherical_grid`).
        seed: seed of the repulsion grid.
        rotate: in training mode, rotate the grid at random in every forward (the same as rotating the
            input, since everything else is invariant: the paper's random-rotation augmentation).
    """

    basis_invariants = (2, 1)
    conv = FiberBundleConv

    def __init__(self, num_ori: int, kind: str = "repulsion", seed: int = 0, rotate: bool = True) -> None:
        super().__init__()
        self.num_ori, self.kind, self.seed, self.rotate = num_ori, kind, seed, rotate

    def make_grid(self, dtype: torch.dtype) -> Tensor:
        return spherical_grid(self.num_ori, self.kind, self.seed, dtype=dtype)

    def lift(
        self,
        pos: Tensor,
        batch: Tensor,
        edge_index: Tensor,
        scalars: Tensor,
        vectors: Tensor | None = None,
        grid: Tensor | None = None,
    ) -> Lifted:
        if grid is None:
            raise ValueError("the fiber bundle needs the network's grid of orientations")
        grid = grid.to(pos.dtype)
        if self.training and self.rotate:
            grid = grid @ random_rotation_matrix(pos.dtype, pos.device).T
        spatial, fiber = fiber_bundle_invariants(pos, grid, edge_index)  # [E, O, 2], [O, O, 1]
        inputs = [scalar_to_sphere(scalars, grid.size(0))]
        if vectors is not None:
            inputs.append(vector_to_sphere(vectors, grid))
        features = torch.cat(inputs, dim=-1)  # [N, O, C_in]
        return Lifted(features, edge_index, (spatial, fiber), pos, pos.size(0), grid=grid)

    def readout(self, scalar: Tensor, vector: Tensor, lifted: Lifted) -> tuple[Tensor, Tensor | None]:
        return sphere_to_scalar(scalar), (sphere_to_vector(vector, lifted.grid) if vector.size(-1) else None)

    def extra_repr(self) -> str:
        return f"num_ori={self.num_ori}, kind={self.kind!r}, seed={self.seed}, rotate={self.rotate}"


def ponita_space(
    num_ori: int,
    *,
    lift_radius: float | None = None,
    max_num_neighbors: int | None = None,
    complete_invariants: bool = False,
    grid: str = "repulsion",
    grid_seed: int = 0,
    rotate_grid: bool = True,
) -> PonitaSpace:
    """The space of PONITA's ``num_ori``: ``0`` R³, ``-1`` edge-lifted R³×S², ``> 0`` a grid of that many
    orientations (the other arguments as in :class:`~geomol.models.ponita.PonitaNet`)."""
    if num_ori < -1:
        raise ValueError(f"num_ori must be 0 (R³), -1 (edge-lifted) or a positive grid size, got {num_ori}")
    if complete_invariants and num_ori != -1:
        raise ValueError(
            "complete_invariants needs pairs with two orientations, which only num_ori=-1 has "
            "(the separable grid convolution pairs each orientation with itself)"
        )
    if num_ori == 0:
        return PositionSpace()
    if num_ori == -1:
        return EdgeLiftedSpace(lift_radius, max_num_neighbors, complete_invariants)
    return FiberBundleSpace(num_ori, grid, grid_seed, rotate_grid)
