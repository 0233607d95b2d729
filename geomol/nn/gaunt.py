"""Gaunt tensor products (Luo, Chen & Krishnapriyan, ICLR 2024): exact, fast products of SH features.

A feature ``x[n, c]`` holding coefficients on the real spherical harmonics of degree ``l ≤ L`` is a
function on the sphere, ``f(r̂) = Σ_lm x_lm Y_lm(r̂)``. The Gaunt tensor product of two features is the
SH expansion of the pointwise product ``f·g`` truncated at ``lmax_out`` (paper, Eq. 4):

    (x ⊗_G y)_{l3 m3} = Σ x_{l1 m1} y_{l2 m2} ∫ Y_{l1 m1} Y_{l2 m2} Y_{l3 m3} dΩ,

which is the Clebsch–Gordan product restricted to the paths with ``l1 + l2 + l3`` even, each weighted by
its Gaunt coefficient. The paper evaluates it in a 2D Fourier basis; geomol evaluates the same numbers
exactly on a sphere grid, with batched matrix products only:

1. ``degree // 2 + 1`` Gauss–Legendre nodes in ``cos θ`` and ``degree + 1`` uniform nodes in ``φ``
   integrate every ``Y_{l1} Y_{l2} Y_{l3}`` exactly when ``l1 + l2 + l3 ≤ degree``.
2. ``Y_lm(θ, φ) = P̄_l^|m|(cos θ) T_m(φ)`` separates: going to the grid is one small Legendre matrix per
   order ``m`` followed by one Fourier matrix, ``O(L³)`` work per feature instead of ``O(L⁴)`` for a dense
   grid matrix. For small degrees the dense matrix moves less memory and wins; a cost model picks.
3. The quadrature weight enters each of the three transforms of a product as a cube root, so the
   trilinear form is symmetric: the adjoint of ``to_grid`` is ``from_grid``, and the gradient of a Gaunt
   product is again a Gaunt product with the degrees permuted (any order of derivatives stays exact).

Features use e3nn's real spherical harmonics (``y`` is the polar axis, no Condon–Shortley phase,
``normalization="integral"``) in the layout ``[N, C, (L+1)²]``, coefficient ``l² + l + m`` for
``m = -l … l``: ``sh_to_irreps`` / ``irreps_to_sh`` convert to and from e3nn's ``"Cx0e+Cx1o+…"``.

Products of functions are symmetric in ``f`` and ``g``, so they cannot produce the antisymmetric paths
(``l1 + l2 + l3`` odd, e.g. the cross product ``1o × 1o → 1e``). :class:`GauntCrossProduct` adds them with
the spherical Poisson bracket ``{f, g} = r̂ · (∇f × ∇g)``, which maps two vectors to their cross product.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import Tensor, nn
from torch_geometric.utils import scatter

from . import gaunt_kernel
from .graph import edge_vectors
from .radial import BesselBasis
from .sphere_grid import (  # noqa: F401 (re-exported: geomol.nn.gaunt.SphericalGridTransform)
    _CHUNK_BYTES,
    _MEMORY_COST,
    SphericalGridTransform,
    _degree_index,
    _FromGrid,
    _grid_size,
    _legendre,
    _scale_rows,
    _ToGrid,
    use_separable,
)

__all__ = [
    "SphericalGridTransform",
    "GauntTensorProduct",
    "GauntCrossProduct",
    "GauntManyBody",
    "GauntConv",
    "SHLinear",
    "sh_irreps",
    "sh_to_irreps",
    "irreps_to_sh",
]


def _degree_expand(w: Tensor | None, transform: SphericalGridTransform) -> Tensor | None:
    """Per-degree weights ``[C, L+1]`` -> per-coefficient ``[C, (L+1)²]`` (None stays None)."""
    return None if w is None else w.index_select(1, transform.degrees)


def _degree_sum(g: Tensor, transform: SphericalGridTransform) -> Tensor:
    """Per-coefficient weight gradient ``[C, (L+1)²]`` -> per-degree ``[C, L+1]`` (sum over orders ``m``)."""
    return g.new_zeros(g.shape[0], transform.lmax + 1).index_add(1, transform.degrees, g)


def _channel_sum(a: Tensor, b: Tensor, channels: int) -> Tensor:
    """``Σ_n a ⊙ b`` over the rows of each channel: ``[R, K]`` x2 -> ``[C, K]``."""
    return (a * b).view(-1, channels, a.shape[-1]).sum(0)


class _GauntProduct(torch.autograd.Function):
    """``w3 ⊙ Γ(w1 ⊙ x, w2 ⊙ y)`` for ``x [..., K1]``, ``y [..., K2]`` -> ``[..., K3]`` (rows chunked on the torch path).

    Weights ``[C, L+1]`` (per channel and degree, or None) act on row ``r``'s channel ``r % C``; they are
    expanded to coefficients here, outside autograd, and their gradients summed back over orders ``m``, so a
    weighted product adds no indexing nodes to the graph. On CPUs the fused kernel
    (:mod:`geomol.nn.gaunt_kernel`) computes the product with the weights folded in, and the backward is two
    more Gaunt products (Γ is symmetric in its three indices, so ``∂/∂x`` is the product of the output gradient
    with ``y`` projected on ``x``'s degrees), which also keeps every order of derivative exact.
    The torch path (GPUs, no C compiler) folds the weights into the gathers and copies of the transforms and
    keeps the grids of both inputs for a first-order backward, which then costs one transform to and two from
    the grid; under ``create_graph`` it computes the gradients as Gaunt products too.
    """

    @staticmethod
    def forward(ctx, x, y, w1, w2, w3, t1, t2, t3):
        # Any leading shape: rows are flattened here rather than by views around the call, which would add
        # three view nodes to the graph (their backward costs about as much as a small product's kernel).
        inputs, lead = (x, y), x.shape[:-1]
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        channels = next((w.shape[0] for w in (w1, w2, w3) if w is not None), 1)
        ctx.transforms, ctx.channels = (t1, t2, t3), channels
        ctx.fused = gaunt_kernel.available(x, y)
        per_degree = (w1, w2, w3)
        w1, w2, w3 = _degree_expand(w1, t1), _degree_expand(w2, t2), _degree_expand(w3, t3)
        if ctx.fused:
            out = gaunt_kernel.forward(x, y, (t1.lmax, t2.lmax, t3.lmax), t1.degree, w1, w2, w3).view(*lead, -1)
            # The output is kept for ∂L/∂w3 = Σ_rows grad ⊙ out / w3 (no second [rows, K] buffer).
            ctx.save_for_backward(*inputs, *per_degree, out if ctx.needs_input_grad[4] else None)
            ctx.expanded = w1, w2, w3  # plain tensors (computed without autograd) for a first-order backward
            return out
        chunk = max(1, t1.chunk_rows() // channels) * channels
        keep = any(ctx.needs_input_grad[:5])
        out = x.new_empty(x.shape[0], t3.dim)
        grids, projections = [], []
        for start in range(0, x.shape[0], chunk):
            rows = slice(start, start + chunk)
            f, g = t1.to_grid(x[rows], w1), t2.to_grid(y[rows], w2)
            u = t3.from_grid(f * g if keep else f.mul_(g))
            _scale_rows(u, w3, out=out[rows])
            if keep:
                grids.append((f, g))
                projections.append(u if ctx.needs_input_grad[4] else None)
        ctx.save_for_backward(*inputs, *per_degree, None)
        ctx.grids, ctx.projections = grids, projections
        ctx.chunk, ctx.grids_used = chunk, False
        return out.view(*lead, -1)

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors  # unpacked once: each access checks every saved tensor again
        gx, gy, *gw = _GauntProduct._backward(ctx, grad, *saved)
        x_shape, y_shape = saved[0].shape, saved[1].shape
        return gx if gx is None else gx.reshape(x_shape), gy if gy is None else gy.reshape(y_shape), *gw

    @staticmethod
    def _backward(ctx, grad, x, y, wd1, wd2, wd3, out):
        """The gradients on rows ``[R, K]`` (``backward`` gives them the inputs' shapes)."""
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        out = None if out is None else out.reshape(-1, out.shape[-1])
        t1, t2, t3 = ctx.transforms
        need_x, need_y, need_w1, need_w2, need_w3 = ctx.needs_input_grad[:5]
        channels, grad = ctx.channels, grad.reshape(-1, grad.shape[-1]).contiguous()
        if torch.is_grad_enabled():
            # Differentiable: Gaunt products again (per-degree weights, roles permuted) and autograd-tracked
            # expansion and reduction of the weights.
            apply = _GauntProduct.apply
            gxu = apply(grad, y, wd3, wd2, None, t3, t2, t1) if need_x or need_w1 else None  # ∂/∂(w1 ⊙ x)
            gyu = apply(grad, x, wd3, wd1, None, t3, t1, t2) if need_y or need_w2 else None
            u = apply(x, y, wd1, wd2, None, t1, t2, t3) if need_w3 else None
            return (
                _scale_rows(gxu, _degree_expand(wd1, t1)) if need_x else None,
                _scale_rows(gyu, _degree_expand(wd2, t2)) if need_y else None,
                _degree_sum(_channel_sum(gxu, x, channels), t1) if need_w1 else None,
                _degree_sum(_channel_sum(gyu, y, channels), t2) if need_w2 else None,
                _degree_sum(_channel_sum(grad, u, channels), t3) if need_w3 else None,
                None,
                None,
                None,
            )
        if ctx.fused:
            w1, w2, w3 = ctx.expanded
            # ∂L/∂x = w1 ⊙ Γ(w3 ⊙ grad, w2 ⊙ y) projected on x's degrees, ∂L/∂w1 = Σ_rows Γ(…) ⊙ x, and the same
            # for y, in one pass of the kernel that shares the Legendre step of grad.
            lmaxes = (t1.lmax, t2.lmax, t3.lmax)
            needs = (need_x, need_y, need_w1, need_w2, need_w3)
            gx, gy, *gw = gaunt_kernel.backward(grad, x, y, out, lmaxes, t1.degree, (w1, w2, w3), needs, channels)
            gw = [None if g is None else _degree_sum(g, t) for g, t in zip(gw, (t1, t2, t3))]
            return gx, gy, *gw, None, None, None
        w1, w2, w3 = _degree_expand(wd1, t1), _degree_expand(wd2, t2), _degree_expand(wd3, t3)
        gx = torch.empty_like(x) if need_x else None
        gy = torch.empty_like(y) if need_y else None
        gw = [torch.zeros_like(w) if need else None for w, need in ((w1, need_w1), (w2, need_w2), (w3, need_w3))]
        # The kept grids are overwritten below; a second backward through a retained graph recomputes them.
        recompute = ctx.grids_used
        ctx.grids_used = True
        for (f, g), u, start in zip(ctx.grids, ctx.projections, range(0, x.shape[0], ctx.chunk)):
            rows = slice(start, start + ctx.chunk)
            if recompute:
                f, g = t1.to_grid(x[rows], w1), t2.to_grid(y[rows], w2)
            gh = t3.to_grid(grad[rows], w3)
            if need_w3:
                gw[2] += _channel_sum(grad[rows], u, channels)
            if need_x or need_w1:
                gxu = t1.from_grid(g.mul_(gh))
                if need_x:
                    _scale_rows(gxu, w1, out=gx[rows])
                if need_w1:
                    gw[0] += _channel_sum(gxu, x[rows], channels)
            if need_y or need_w2:
                gyu = t2.from_grid(f.mul_(gh))
                if need_y:
                    _scale_rows(gyu, w2, out=gy[rows])
                if need_w2:
                    gw[1] += _channel_sum(gyu, y[rows], channels)
        gw = [None if g is None else _degree_sum(g, t) for g, t in zip(gw, (t1, t2, t3))]
        return gx, gy, *gw, None, None, None


def _lmax_of(dim: int, name: str) -> int:
    lmax = math.isqrt(dim) - 1
    if (lmax + 1) ** 2 != dim:
        raise ValueError(f"{name} must have (L+1)² coefficients in its last dimension, got {dim}")
    return lmax


def _check_feature(name: str, t: Tensor, channels: int, lmax: int) -> None:
    expected = (channels, (lmax + 1) ** 2)
    if t.dim() < 2 or tuple(t.shape[-2:]) != expected:
        raise ValueError(f"{name} must have shape [N, {expected[0]}, {expected[1]}], got {tuple(t.shape)}")


def _check_pair(x: Tensor, y: Tensor, channels: int, lmax_in1: int, lmax_in2: int) -> None:
    """Shapes of the two inputs of a binary product: each a feature field, same leading shape."""
    _check_feature("x", x, channels, lmax_in1)
    _check_feature("y", y, channels, lmax_in2)
    if x.shape[:-2] != y.shape[:-2]:
        raise ValueError(f"x and y must have the same leading shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def sh_irreps(channels: int, lmax: int, pseudo: bool = False):
    """e3nn irreps of a ``[N, channels, (lmax+1)²]`` feature: ``"Cx0e+Cx1o+…"`` (``"Cx0o+Cx1e+…"`` if pseudo)."""

    sign = -1 if pseudo else 1
    return o3.Irreps([(channels, (l, sign * (-1) ** l)) for l in range(lmax + 1)])


def sh_to_irreps(x: Tensor) -> Tensor:
    """geomol layout ``[N, C, (L+1)²]`` -> e3nn layout ``[N, Σ_l C(2l+1)]`` (irreps ``sh_irreps(C, L)``)."""
    if x.dim() < 2:
        raise ValueError(f"x must have shape [N, C, (L+1)²], got {tuple(x.shape)}")
    lmax = _lmax_of(x.shape[-1], "x")
    return torch.cat([x[..., l * l : (l + 1) ** 2].flatten(-2) for l in range(lmax + 1)], dim=-1)


def irreps_to_sh(x: Tensor, channels: int, lmax: int) -> Tensor:
    """e3nn layout ``[N, Σ_l C(2l+1)]`` (irreps ``sh_irreps(C, L)``) -> geomol layout ``[N, C, (L+1)²]``."""
    dim = channels * (lmax + 1) ** 2
    if x.dim() < 1 or x.shape[-1] != dim:
        raise ValueError(f"x must have shape [N, {dim}] for irreps {sh_irreps(channels, lmax)}, got {tuple(x.shape)}")
    blocks = torch.split(x, [channels * (2 * l + 1) for l in range(lmax + 1)], dim=-1)
    return torch.cat([b.unflatten(-1, (channels, 2 * l + 1)) for l, b in enumerate(blocks)], dim=-1)


class _DegreeWeights(nn.Module):
    """Learnable per-channel, per-degree scales ``[C, L+1]``, applied to ``[..., C, (L+1)²]``."""

    def __init__(self, channels: int, lmax: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, lmax + 1))
        self.register_buffer("degree", _degree_index(lmax), persistent=False)

    def expanded(self) -> Tensor:
        """The weight of each coefficient, ``[C, (L+1)²]``."""
        return self.weight[:, self.degree]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.expanded()


class GauntTensorProduct(nn.Module):
    r"""Channelwise Gaunt tensor product of two SH features (Luo et al. 2024, Eq. 4 and Sec. 3.2).

    With ``weighted=False`` the output is exactly the SH expansion of ``f·g`` truncated at ``lmax_out``.
    With ``weighted=True`` both inputs and the output are scaled per channel and degree, the paper's
    reparameterisation ``w_{l1 l2 l3} = w^{(1)}_{l1} w^{(2)}_{l2} w^{(3)}_{l3}`` of the path weights,
    initialised to 1 so that the layer starts as the unweighted product.

    Example::

        >>> GauntTensorProduct(1, 1, 2, channels=4)
        GauntTensorProduct(4x0e+4x1o x 4x0e+4x1o -> 4x0e+4x1o+4x2e | grid 3x5 dense | 28 weights)

    Args:
        lmax_in1: largest degree of ``x``.
        lmax_in2: largest degree of ``y``.
        lmax_out: largest degree kept in the output.
        channels: number of channels ``C`` (the product is taken channel by channel).
        weighted: learn per-channel, per-degree weights on both inputs and the output.

    Shapes:
        x ``[N, C, (lmax_in1+1)²]``, y ``[N, C, (lmax_in2+1)²]`` -> ``[N, C, (lmax_out+1)²]``.
    """

    def __init__(self, lmax_in1: int, lmax_in2: int, lmax_out: int, channels: int, weighted: bool = True) -> None:
        super().__init__()
        for name, value in (("lmax_in1", lmax_in1), ("lmax_in2", lmax_in2), ("lmax_out", lmax_out)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.lmax_in1, self.lmax_in2, self.lmax_out = lmax_in1, lmax_in2, lmax_out
        self.channels, self.weighted = channels, weighted
        degree = lmax_in1 + lmax_in2 + lmax_out
        separable = use_separable((lmax_in1, lmax_in2, lmax_out), degree)
        # One transform per distinct degree: with equal degrees the three roles share their tables.
        self.transforms = nn.ModuleDict(
            {str(l): SphericalGridTransform(l, degree, separable) for l in sorted({lmax_in1, lmax_in2, lmax_out})}
        )
        if weighted:
            self.weight_in1 = _DegreeWeights(channels, lmax_in1)
            self.weight_in2 = _DegreeWeights(channels, lmax_in2)
            self.weight_out = _DegreeWeights(channels, lmax_out)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Gaunt product of ``x`` and ``y``.

        Shapes:
            x ``[N, C, (lmax_in1+1)²]``, y ``[N, C, (lmax_in2+1)²]`` -> ``[N, C, (lmax_out+1)²]``.
        """
        _check_pair(x, y, self.channels, self.lmax_in1, self.lmax_in2)
        weights = (self.weight_in1, self.weight_in2, self.weight_out) if self.weighted else (None,) * 3
        t = self.transforms
        return _GauntProduct.apply(
            x,
            y,
            *(None if w is None else w.weight for w in weights),
            t[str(self.lmax_in1)],
            t[str(self.lmax_in2)],
            t[str(self.lmax_out)],
        )

    def convolve(self, x: Tensor, y: Tensor, sender: Tensor, receiver: Tensor) -> Tensor:
        """``out_i = Σ_{e: receiver_e = i} product(x[sender_e], y_e)``: a convolution's messages, summed.

        On CPUs the fused kernel gathers ``x``, takes the products and scatter-adds them in one pass
        (:func:`geomol.nn.gaunt_kernel.conv`), so the ``[E, C, K]`` gathered inputs and messages never exist;
        elsewhere (GPUs, no C compiler) it is ``forward(x[sender], y)`` scatter-summed, the same numbers.

        Shapes:
            x ``[N, C, (lmax_in1+1)²]``, y ``[E, C, (lmax_in2+1)²]``, sender, receiver ``[E]``
            -> ``[N, C, (lmax_out+1)²]``.
        """
        _check_feature("x", x, self.channels, self.lmax_in1)
        _check_feature("y", y, self.channels, self.lmax_in2)
        if not (sender.shape == receiver.shape == y.shape[:1]):
            raise ValueError(f"sender and receiver must have shape [{y.shape[0]}], got {tuple(sender.shape)}, "
                             f"{tuple(receiver.shape)}")  # fmt: skip
        if not gaunt_kernel.available(x, y):
            messages = self(x[sender], y)
            return scatter(messages, receiver, dim=0, dim_size=x.shape[0], reduce="sum")
        lmaxes = (self.lmax_in1, self.lmax_in2, self.lmax_out)
        out = gaunt_kernel.conv(
            x.reshape(-1, x.shape[-1]),
            y.reshape(-1, y.shape[-1]),
            lmaxes,
            sum(lmaxes),
            *((self.weight_in1.expanded(), self.weight_in2.expanded()) if self.weighted else ()),
            channels=self.channels,
            a_index=sender,
            out_index=receiver,
            out_rows=x.shape[0] * self.channels,
        ).view(x.shape[0], self.channels, -1)
        # The output weights are the same on every edge: applied to the summed messages, at node level.
        return self.weight_out(out) if self.weighted else out

    def __repr__(self) -> str:
        t = self.transforms[str(self.lmax_out)]
        irreps = [sh_irreps(self.channels, l) for l in (self.lmax_in1, self.lmax_in2, self.lmax_out)]
        mode = "separable" if t.separable else "dense"
        n_weights = sum(p.numel() for p in self.parameters())
        return (
            f"{type(self).__name__}({irreps[0]} x {irreps[1]} -> {irreps[2]} | grid {t.n_theta}x{t.n_phi} {mode} "
            f"| {n_weights} weights)"
        )


class GauntCrossProduct(nn.Module):
    r"""The antisymmetric partner of :class:`GauntTensorProduct`: the spherical Poisson bracket.

    ``{f, g} = r̂ · (∇f × ∇g) = (∂_θ f ∂_φ g - ∂_φ f ∂_θ g) / sin θ`` couples exactly the paths with
    ``l1 + l2 + l3`` odd, which a product of functions cannot reach (for two vectors ``f = a·r̂``,
    ``g = b·r̂`` it is ``(a × b)·r̂``). The bracket has degree ``≤ l1 + l2 - 1`` and flips sign under
    reflections, so the output is a pseudo-feature: degree ``l`` has parity ``(-1)^{l+1}`` (irreps
    ``sh_irreps(C, L, pseudo=True)``: ``Cx0o+Cx1e+Cx2o…``). Computed exactly on the same grid as the Gaunt
    product from the tangent components of ``∇f`` and ``∇g`` (dense transforms, autograd throughout).

    Args:
        lmax_in1, lmax_in2, lmax_out: degrees of ``x``, ``y`` and the output.
        channels: number of channels (channelwise, as the Gaunt product).
        weighted: per-channel, per-degree weights on both inputs and the output, initialised to 1.

    Shapes:
        x ``[N, C, (lmax_in1+1)²]``, y ``[N, C, (lmax_in2+1)²]`` -> ``[N, C, (lmax_out+1)²]`` (pseudo).
    """

    def __init__(self, lmax_in1: int, lmax_in2: int, lmax_out: int, channels: int, weighted: bool = True) -> None:
        super().__init__()
        self.lmax_in1, self.lmax_in2, self.lmax_out = lmax_in1, lmax_in2, lmax_out
        self.channels, self.weighted = channels, weighted
        degree = lmax_in1 + lmax_in2 + lmax_out
        self.theta1 = SphericalGridTransform(lmax_in1, degree, separable=False, kind="theta")
        self.phi1 = SphericalGridTransform(lmax_in1, degree, separable=False, kind="phi")
        self.theta2 = SphericalGridTransform(lmax_in2, degree, separable=False, kind="theta")
        self.phi2 = SphericalGridTransform(lmax_in2, degree, separable=False, kind="phi")
        self.out = SphericalGridTransform(lmax_out, degree, separable=False)
        if weighted:
            self.weight_in1 = _DegreeWeights(channels, lmax_in1)
            self.weight_in2 = _DegreeWeights(channels, lmax_in2)
            self.weight_out = _DegreeWeights(channels, lmax_out)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Poisson bracket of ``x`` and ``y``.

        Shapes:
            x ``[N, C, (lmax_in1+1)²]``, y ``[N, C, (lmax_in2+1)²]`` -> ``[N, C, (lmax_out+1)²]``.
        """
        _check_pair(x, y, self.channels, self.lmax_in1, self.lmax_in2)
        if self.weighted:
            x, y = self.weight_in1(x), self.weight_in2(y)
        x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        bracket = _ToGrid.apply(x2, self.theta1) * _ToGrid.apply(y2, self.phi2)
        bracket = bracket - _ToGrid.apply(x2, self.phi1) * _ToGrid.apply(y2, self.theta2)
        out = _FromGrid.apply(bracket, self.out).view(*x.shape[:-1], -1)
        return self.weight_out(out) if self.weighted else out

    def __repr__(self) -> str:
        irreps_in = [sh_irreps(self.channels, l) for l in (self.lmax_in1, self.lmax_in2)]
        irreps_out = sh_irreps(self.channels, self.lmax_out, pseudo=True)
        n_weights = sum(p.numel() for p in self.parameters())
        return (
            f"{type(self).__name__}({irreps_in[0]} x {irreps_in[1]} -> {irreps_out} | grid "
            f"{self.out.n_theta}x{self.out.n_phi} dense | {n_weights} weights)"
        )


class GauntManyBody(nn.Module):
    r"""Many-body features ``Σ_ν w_ν ⊙ P_L[f^ν]``, ``ν = 1 … correlation`` (Luo et al. 2024, Sec. 3.3).

    The paper's replacement of MACE's symmetric contraction: the ν-fold product of the feature with itself,
    exact (no truncation in between, the grid resolves degree ``(correlation + 1) L``), built divide and
    conquer as ``f^ν = f^{⌊ν/2⌋} · f^{⌈ν/2⌉}`` on the grid, projected on degrees ``≤ L`` and scaled per
    (ν, channel, degree), optionally per chemical element. On CPUs with the fused kernel the powers are a chain
    of fused Gaunt products instead (the same numbers, no grid tensors). ``w_1`` starts at 1 and the higher orders at 0,
    so the layer starts as the identity.

    Args:
        lmax: largest degree of input and output.
        channels: number of channels.
        correlation: largest body order ``ν``.
        num_elements: if given, separate weights per element index ``0 … num_elements - 1``.

    Shapes:
        x ``[N, C, (lmax+1)²]``, species ``[N]`` (long, only with ``num_elements``) -> ``[N, C, (lmax+1)²]``.
    """

    def __init__(self, lmax: int, channels: int, correlation: int, num_elements: int | None = None) -> None:
        super().__init__()
        if correlation < 1:
            raise ValueError(f"correlation must be >= 1, got {correlation}")
        self.lmax, self.channels, self.correlation, self.num_elements = lmax, channels, correlation, num_elements
        weight = torch.zeros(num_elements or 1, correlation, channels, lmax + 1)
        weight[:, 0] = 1.0
        self.weight = nn.Parameter(weight)
        self.register_buffer("degree", _degree_index(lmax), persistent=False)
        degree = (correlation + 1) * lmax
        self.transform = SphericalGridTransform(lmax, degree, use_separable((lmax,) * (correlation + 1), degree))

    def forward(self, x: Tensor, species: Tensor | None = None) -> Tensor:
        """Many-body features of ``x``.

        Shapes:
            x ``[N, C, (lmax+1)²]``, species ``[N]`` -> ``[N, C, (lmax+1)²]``.
        """
        _check_feature("x", x, self.channels, self.lmax)
        if (species is None) != (self.num_elements is None):
            raise ValueError("pass species [N] exactly when the layer was built with num_elements")
        if species is None:
            weight = self.weight[0, :, :, self.degree]  # [ν, C, K]
        else:
            if species.shape != x.shape[:1]:
                raise ValueError(f"species must have shape [{x.shape[0]}], got {tuple(species.shape)}")
            weight = self.weight[species][..., self.degree].transpose(0, 1)  # [ν, N, C, K]
        out = weight[0] * x
        if self.correlation == 1:
            return out
        if gaunt_kernel.available(x):
            return out + self._fused_powers(x, weight)
        t = self.transform
        powers = {1: _ToGrid.apply(x.reshape(-1, x.shape[-1]), t)}
        for nu in range(2, self.correlation + 1):
            powers[nu] = powers[nu // 2] * powers[nu - nu // 2]
            # Each grid factor carries w^{1/3}: ν factors and the projection give w^{(ν+1)/3}, want w.
            h = powers[nu] if nu == 2 else powers[nu] * t.grid_weight((2 - nu) / 3)
            out = out + weight[nu - 1] * _FromGrid.apply(h, t).view_as(x)
        return out

    def _fused_powers(self, x: Tensor, weight: Tensor) -> Tensor:
        """``Σ_{ν ≥ 2} w_ν ⊙ P_L[f^ν]`` as a chain of fused Gaunt products ``f^ν = Γ(f^{ν-1}, f)``.

        ``f^ν`` is kept to degree ``min(νL, (correlation - ν + 1) L)``: exact where it is complete, and enough for
        the rest of the chain, since the products after it reach degree ``L`` only; ``P_L[f^ν]`` is its first
        ``(L+1)²`` coefficients. No ``[N, C, grid]`` tensor is formed.

        Shapes:
            x ``[N, C, (L+1)²]``, weight ``[ν, (N,) C, (L+1)²]`` -> ``[N, C, (L+1)²]``.
        """
        lmax, k = self.lmax, x.shape[-1]
        rows = x.reshape(-1, k)
        power, power_lmax, out = rows, lmax, 0
        for nu in range(2, self.correlation + 1):
            keep = min(nu, self.correlation - nu + 1) * lmax
            power = gaunt_kernel.forward(power, rows, (power_lmax, lmax, keep), power_lmax + lmax + keep)
            power_lmax = keep
            out = out + weight[nu - 1] * power[:, :k].view_as(x)
        return out

    def extra_repr(self) -> str:
        elements = f", num_elements={self.num_elements}" if self.num_elements else ""
        return f"lmax={self.lmax}, channels={self.channels}, correlation={self.correlation}{elements}"


class SHLinear(nn.Module):
    r"""Channel mixing within each degree, ``y_{d,lm} = Σ_c W^{(l)}_{dc} x_{c,lm}`` (+ bias on ``l = 0``).

    Equivariant because the same matrix acts on all ``m`` of a degree (e3nn's ``o3.Linear`` for this layout).

    Args:
        in_channels, out_channels: channels before and after.
        lmax: largest degree.
        bias: learnable bias on the invariant (``l = 0``) part.

    Shapes:
        x ``[N, in_channels, (lmax+1)²]`` -> ``[N, out_channels, (lmax+1)²]``.
    """

    def __init__(self, in_channels: int, out_channels: int, lmax: int, bias: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.lmax = in_channels, out_channels, lmax
        self.weight = nn.Parameter(torch.randn(lmax + 1, out_channels, in_channels) / math.sqrt(in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("degree", _degree_index(lmax), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        _check_feature("x", x, self.in_channels, self.lmax)
        out = torch.einsum("kdc,nck->ndk", self.weight[self.degree], x)
        if self.bias is not None:
            out = torch.cat([out[..., :1] + self.bias[:, None], out[..., 1:]], dim=-1)
        return out

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, lmax={self.lmax}, bias={self.bias is not None}"


class GauntConv(nn.Module):
    r"""Equivariant convolution with Gaunt products (Luo et al. 2024, Sec. 3.3, "equivariant convolutions").

    The message from ``j`` to ``i`` is the Gaunt product of ``x_j`` with the filter
    ``φ_{c,l}(|r_ij|) Y_lm(r̂_ij)``, where the per-channel, per-degree radial weights come from an MLP of a
    Bessel basis with smooth cutoff (DimeNet, Eq. 7-8), ``r_ij = pos_i - pos_j``; messages are summed at
    ``i`` and divided by ``avg_num_neighbors``. On CPUs the gather of ``x_j``, the products and the sum run in
    one fused pass (:meth:`GauntTensorProduct.convolve`).

    Args:
        lmax_in: largest degree of the node features.
        lmax_filter: largest degree of the filter's spherical harmonics.
        lmax_out: largest degree of the output.
        channels: number of channels.
        num_radial: Bessel functions in the radial basis.
        cutoff: radial cutoff (Å); edges beyond it get zero filters.
        radial_hidden: width of the radial MLP.
        envelope_exponent: exponent of the polynomial envelope.
        avg_num_neighbors: normalisation of the summed messages.

    Shapes:
        x ``[N, C, (lmax_in+1)²]``, pos ``[N, 3]``, edge_index ``[2, E]`` (row 0 sender ``j``, row 1
        receiver ``i``) -> ``[N, C, (lmax_out+1)²]``.
    """

    def __init__(
        self,
        lmax_in: int,
        lmax_filter: int,
        lmax_out: int,
        channels: int,
        num_radial: int = 8,
        cutoff: float = 5.0,
        radial_hidden: int = 64,
        envelope_exponent: int = 5,
        avg_num_neighbors: float = 1.0,
    ) -> None:
        super().__init__()
        self.lmax_in, self.lmax_filter, self.lmax_out, self.channels = lmax_in, lmax_filter, lmax_out, channels
        self.avg_num_neighbors = avg_num_neighbors
        self.basis = BesselBasis(num_radial, cutoff, envelope_exponent)
        self.radial = nn.Sequential(
            nn.Linear(num_radial, radial_hidden),
            nn.SiLU(),
            nn.Linear(radial_hidden, channels * (lmax_filter + 1)),
        )
        self.product = GauntTensorProduct(lmax_in, lmax_filter, lmax_out, channels)
        # Per-degree radial weights to per-coefficient ones as a matrix product with a 0/1 matrix: the same numbers
        # as indexing by degree, several times faster forward and backward at [E, C, Lf+1] (a GEMM, no index_put).
        expand = torch.nn.functional.one_hot(_degree_index(lmax_filter)).T.to(torch.get_default_dtype())
        self.register_buffer("expand", expand, persistent=False)  # [Lf+1, (Lf+1)²]

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor) -> Tensor:
        """Aggregated Gaunt messages.

        Shapes:
            x ``[N, C, (lmax_in+1)²]``, pos ``[N, 3]``, edge_index ``[2, E]`` -> ``[N, C, (lmax_out+1)²]``.
        """

        _check_feature("x", x, self.channels, self.lmax_in)
        if pos.shape != (x.shape[0], 3):
            raise ValueError(f"pos must have shape [{x.shape[0]}, 3], got {tuple(pos.shape)}")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
        vec, dist = edge_vectors(pos, edge_index)
        sh = o3.spherical_harmonics(list(range(self.lmax_filter + 1)), vec, True, normalization="integral")
        radial = self.radial(self.basis(dist)).view(-1, self.channels, self.lmax_filter + 1)  # [E, C, Lf+1]
        filters = (radial @ self.expand) * sh[:, None, :]  # [E, C, (Lf+1)²]
        out = self.product.convolve(x, filters, edge_index[0], edge_index[1])
        return out / self.avg_num_neighbors

    def extra_repr(self) -> str:
        return (
            f"lmax_in={self.lmax_in}, lmax_filter={self.lmax_filter}, lmax_out={self.lmax_out}, "
            f"channels={self.channels}, avg_num_neighbors={self.avg_num_neighbors}"
        )
