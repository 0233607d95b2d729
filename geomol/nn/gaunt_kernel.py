"""The fused CPU kernel of the Gaunt product (``csrc/gaunt_product.cpp``): build, load, plan and call.

Torch has no operation that keeps a row's spherical-grid values in cache between the transforms and the
product, and no library offers a fused Gaunt product, so geomol compiles a small C++ kernel with the system C++
compiler on first use (under a second) and calls it through ``ctypes``, one struct of arguments per call (the
struct layouts are checked against the library's own ``sizeof`` at load); it runs on torch's own OpenMP
threads (``libgomp`` is already loaded by torch). The compiled library is cached under
``$GEOMOL_CACHE`` (default ``~/.cache/geomol``), keyed by the source, the compiler flags and the CPU.
Without a C compiler, on GPUs, or with ``GEOMOL_GAUNT_KERNEL=0``, :mod:`geomol.nn.gaunt` uses its
torch-only path, which computes the same numbers.

The kernel is registered as three ``torch.library`` custom ops, ``geomol::gaunt_product``,
``geomol::gaunt_product_backward`` and ``geomol::gaunt_conv`` (the product of rows gathered through edge indices,
scatter-added to the output's rows: a convolution's messages without the ``[E, C, K]`` tensors), each with a fake
(shape-only) implementation, and the first and the last with an autograd formula that is differentiable to any
order; so ``torch.compile`` traces through a Gaunt product (and a GauntNet)
without breaking its graph, and ``torch.library.opcheck`` checks the registration. (A ``torch.utils.cpp_extension``
build would bind the ops in C++ instead, but it compiles torch's headers: about a minute on first use, against
under a second for this kernel.)

A plan holds, for one triple of degrees ``(La, Lb, Lc)`` on one grid, the Legendre tables of the three
roles and the exact φ-integrals ``K[m1, m2, m3] = ∫ T_m1 T_m2 T_m3 dφ`` of three real Fourier modes (with
the quadrature weights split as cube roots, as the torch path does), grouped by output order and value, so the kernel never forms a φ grid.
For small degrees a *direct* plan holds instead the nonzero coefficients ``c_ijk`` of the same bilinear map
(computed from those tables, so both plans give the same numbers up to rounding) and the kernel sums
``c_ijk a_i b_j`` without any grid: faster up to degree 4 (see :func:`uses_direct`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .sphere_grid import SphericalGridTransform  # the torch path's tables, so both paths agree

__all__ = ["available", "backward", "conv", "disabled", "forward", "method", "plan"]


class _Tables(ctypes.Structure):
    """``GauntTables`` of ``csrc/gaunt_product.cpp``: one product's plan."""

    _fields_ = [(name, ctypes.c_int) for name in ("La", "Lb", "Lc", "n_theta")] + [
        (name, ctypes.c_void_p) for name in ("leg_a", "leg_b", "leg_c", "coef", "start", "gstart", "m1", "m2")
    ]


_P, _INT, _LONG = ctypes.c_void_p, ctypes.c_int, ctypes.c_long


class _ForwardCall(ctypes.Structure):
    """``GauntForwardCall``: ``out = sc ⊙ Γ(sa ⊙ a, sb ⊙ b)``."""

    _fields_ = [("p", _Tables), ("a", _P), ("b", _P), ("out", _P), ("rows", _LONG)]
    _fields_ += [("sa", _P), ("sb", _P), ("sc", _P), ("channels", _INT), ("n_threads", _INT)]


class _ConvCall(ctypes.Structure):
    """``GauntConvCall``: ``out[io] += sc ⊙ Γ(sa ⊙ a[ia], sb ⊙ b[ib])`` per edge and channel."""

    _fields_ = [("f", _ForwardCall), ("ia", _P), ("ib", _P), ("io", _P), ("out_rows", _LONG)]


class _BackwardCall(ctypes.Structure):
    """``GauntBackwardCall``: the gradients of ``out = w3 ⊙ Γ(w1 ⊙ x, w2 ⊙ y)``."""

    _fields_ = [("px", _Tables), ("py", _Tables), *((name, _P) for name in ("g", "x", "y", "u", "gx", "gy"))]
    _fields_ += [("rows", _LONG), *((name, _P) for name in ("w1", "w2", "w3", "gw1", "gw2", "gw3"))]
    _fields_ += [("channels", _INT), ("n_threads", _INT)]


_SOURCE = Path(__file__).with_name("csrc") / "gaunt_product.cpp"
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _cpu_name() -> str:
    """The CPU model and its instruction-set flags (``-march=native`` code is only valid on the same kind)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    model = next((line for line in lines if line.startswith("model name")), "")
    flags = next((line for line in lines if line.startswith("flags")), "")
    return model + flags


def build(flags: tuple[str, ...] = _FLAGS, compiler: str | None = None) -> ctypes.CDLL:
    """Compile the kernel with ``flags`` (once per source, compiler, flags and CPU; cached) and load it.

    Raises:
        OSError, subprocess.SubprocessError: no compiler, or the compilation failed.
    """
    compiler = compiler or os.environ.get("CXX", "c++")
    cache = Path(os.environ.get("GEOMOL_CACHE", Path.home() / ".cache" / "geomol")) / "kernels"
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *flags, _cpu_name()]).encode()).hexdigest()[:16]
    path = cache / f"gaunt_product_{key}.so"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # Compile to a temporary name, then rename: concurrent first uses never load a half-written file.
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            built = Path(tmp) / path.name
            subprocess.run(
                [compiler, *flags, "-o", str(built), str(_SOURCE)], check=True, capture_output=True, timeout=120
            )
            os.replace(built, path)
    library = ctypes.CDLL(str(path))
    sizes = (ctypes.c_long * 4)()
    library.gaunt_struct_sizes(sizes)
    expected = [ctypes.sizeof(s) for s in (_Tables, _ForwardCall, _BackwardCall, _ConvCall)]
    if list(sizes) != expected:  # a stale or foreign library: refuse it rather than pass it garbage
        raise OSError(f"{path}: argument structs of {list(sizes)} bytes, this geomol expects {expected}")
    for suffix in _SUFFIX.values():
        forward, backward = getattr(library, f"gaunt_forward_{suffix}"), getattr(library, f"gaunt_backward_{suffix}")
        forward.restype = backward.restype = ctypes.c_int
        forward.argtypes = [ctypes.POINTER(_ForwardCall)]
        backward.argtypes = [ctypes.POINTER(_BackwardCall)]
        conv = getattr(library, f"gaunt_conv_{suffix}")
        conv.restype, conv.argtypes = ctypes.c_int, [ctypes.POINTER(_ConvCall)]
    return library


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The kernel for this CPU (``-march=native``), or None (with a warning) if it cannot be built here."""
    if os.environ.get("GEOMOL_GAUNT_KERNEL", "1") == "0":
        return None
    try:
        return build()
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        warnings.warn(
            f"geomol: the fused Gaunt kernel could not be built ({error} {detail.decode(errors='replace')[:200]}); "
            "using the torch-only path (same results, slower on CPUs)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


_enabled = True


@contextlib.contextmanager
def disabled():
    """Products started inside this block use the torch-only path (to compare, or to rule the kernel out)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def available(*tensors: Tensor) -> bool:
    """Whether the kernel can compute a product of these tensors (CPU, float32/float64, kernel built)."""
    return _enabled and all(t.device.type == "cpu" and t.dtype in _SUFFIX for t in tensors) and _built()


@torch.compiler.assume_constant_result
def _built() -> bool:
    """Whether the kernel is built here (a constant to ``torch.compile``, which cannot trace the build)."""
    return _library() is not None


_ROWS_PER_THREAD = 1024
_TABLES = ("leg_a", "leg_b", "leg_c", "coef", "start", "gstart", "m1", "m2")  # the kernel's argument order
_method = "auto"
_DIRECT_UP_TO = 4  # see uses_direct


@contextlib.contextmanager
def method(name: str):
    """Products started inside this block use ``"grid"`` or ``"direct"`` plans (``"auto"``: the faster for the
    degrees, see :func:`uses_direct`); the numbers agree up to rounding. For tests and benchmarks."""
    global _method
    if name not in ("auto", "grid", "direct"):
        raise ValueError(f"method must be 'auto', 'grid' or 'direct', got {name!r}")
    previous, _method = _method, name
    try:
        yield
    finally:
        _method = previous


def uses_direct(la: int, lb: int, lc: int) -> bool:
    """Whether products of these degrees take a direct plan: under ``method("auto")`` when the largest degree is
    at most 4. Measured with ``GauntTensorProduct(L, L, L, 16)`` on 16,000 rows, fwd+bwd, float32, AMD EPYC Zen 4
    (AVX-512), 1-2 threads: direct / grid time 0.85 (L = 1), 0.62 (2), 0.66-0.79 (3), 0.91 (4), 1.11-1.18 (5); the
    number of terms grows about as L⁵, the grid steps as L³. The choice depends only on the largest degree, so a
    product and the products of its backward choose alike."""
    if _method != "auto":
        return _method == "direct"
    return max(la, lb, lc) <= _DIRECT_UP_TO


@functools.cache
def _coefficients(la: int, lb: int, lc: int, degree: int) -> Tensor:
    """``c[i, j, k]`` ``[(la+1)², (lb+1)², (lc+1)²]``, float64: the grid plan's bilinear map on basis vectors,
    ``Σ_{θ,φ} Y_i Y_j Y_k`` over the grid (the quadrature weight split as cube roots), exact Gaunt coefficients."""
    values = []
    for lmax in (la, lb, lc):
        t = SphericalGridTransform(lmax, degree).tables()
        legendre, fourier = t["legendre"], t["fourier"]  # [2L+1, n_theta, L+1], [n_phi, 2L+1]
        y = legendre.new_zeros((lmax + 1) ** 2, legendre.shape[1], fourier.shape[0])
        for l in range(lmax + 1):
            for m in range(-l, l + 1):
                y[l * l + l + m] = legendre[m + lmax, :, l - abs(m), None] * fourier[None, :, m + lmax]
        values.append(y)
    c = torch.einsum("itp,jtp,ktp->ijk", *values)
    c[c.abs() < 1e-12 * c.abs().max()] = 0
    return c


@functools.cache
def plan(la: int, lb: int, lc: int, degree: int, dtype: torch.dtype, direct: bool = False) -> dict[str, Tensor | int]:
    """Tables for ``Γ: (degree ≤ la) × (degree ≤ lb) -> (degree ≤ lc)`` on the grid exact up to ``degree``, or with
    ``direct`` its nonzero coefficients grouped by output and by ``a``'s coefficient (see csrc/gaunt_product.cpp)."""
    if direct:
        c = _coefficients(la, lb, lc, degree)
        k, i, j = c.permute(2, 0, 1).nonzero(as_tuple=True)  # sorted by output, then a's, then b's coefficient
        new_group = torch.ones(len(k), dtype=torch.bool)
        new_group[1:] = (k[1:] != k[:-1]) | (i[1:] != i[:-1])
        first = new_group.nonzero().squeeze(1)
        start = torch.zeros((lc + 1) ** 2 + 1, dtype=torch.int32)
        start[1:] = torch.bincount(k[first], minlength=(lc + 1) ** 2).cumsum(0)
        empty = torch.zeros(1, dtype=dtype)  # the unused Legendre tables: any valid pointer
        plan = dict(
            leg_a=empty, leg_b=empty, leg_c=empty, start=start,
            gstart=torch.cat([first, torch.tensor([len(k)])]).to(torch.int32),
            m1=i[first].to(torch.int32).contiguous(), m2=j.to(torch.int32).contiguous(),
            coef=c[i, j, k].to(dtype).contiguous(), n_theta=0,
        )  # fmt: skip
        plan["tables"] = _Tables(la, lb, lc, 0, *(plan[name].data_ptr() for name in _TABLES))
        return plan
    tables = {}
    for role, lmax in (("a", la), ("b", lb), ("c", lc)):
        t = SphericalGridTransform(lmax, degree).tables()
        tables[role] = t["legendre"], t["fourier"]  # [2L+1, n_theta, L+1], [n_phi, 2L+1], float64
    fa, fb, fc = (tables[r][1] for r in "abc")
    k = torch.einsum("ja,jb,jc->cab", fa, fb, fc)  # [2Lc+1, 2La+1, 2Lb+1], exact: φ grid has degree + 1 nodes
    # K takes three values (±1/(2√π), 1/√(2π)); grouping its terms by output order and value lets the kernel
    # sum plain products A·B and scale once per group.
    value = (k / k.abs().max()).round(decimals=9)
    keep = value != 0
    m3, m1, m2 = keep.nonzero(as_tuple=True)
    order = torch.argsort(m3 * 16 + torch.unique(value[keep], return_inverse=True)[1], stable=True)
    m3, m1, m2 = m3[order], m1[order], m2[order]
    v = value[m3, m1, m2]
    new_group = torch.ones(len(m3), dtype=torch.bool)
    new_group[1:] = (m3[1:] != m3[:-1]) | (v[1:] != v[:-1])
    first = new_group.nonzero().squeeze(1)  # first pair of each group
    group_slot = m3[first]
    start = torch.zeros(2 * lc + 2, dtype=torch.int32)
    start[1:] = torch.bincount(group_slot, minlength=2 * lc + 1).cumsum(0)
    gstart = torch.cat([first, torch.tensor([len(m3)])]).to(torch.int32)
    plan = dict(
        leg_a=tables["a"][0].to(dtype).contiguous(),
        leg_b=tables["b"][0].to(dtype).contiguous(),
        leg_c=tables["c"][0].to(dtype).contiguous(),
        start=start,
        gstart=gstart,
        m1=m1.to(torch.int32).contiguous(),
        m2=m2.to(torch.int32).contiguous(),
        coef=k[m3[first], m1[first], m2[first]].to(dtype).contiguous(),
        n_theta=tables["a"][0].shape[1],
    )
    plan["tables"] = _Tables(la, lb, lc, plan["n_theta"], *(plan[name].data_ptr() for name in _TABLES))
    return plan


def _threads(rows: int) -> int:
    """Torch's thread count, but one thread for small inputs: waking a second thread costs more than it saves
    there, and on a busy machine a parallel region waits for its slowest thread (as torch's own grain size)."""
    return max(1, min(torch.get_num_threads(), rows // _ROWS_PER_THREAD))


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _prepare(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t  # the kernel reads raw memory: no autograd involved
    return t.detach().to(dtype).contiguous()


def _call(function: str, arguments: ctypes.Structure) -> None:
    status = getattr(_library(), function)(ctypes.byref(arguments))
    if status != 0:
        raise MemoryError(f"geomol: the fused Gaunt kernel could not allocate its scratch memory ({function})")


def _forward(a, b, lmaxes, degree, sa=None, sb=None, sc=None):
    la, lb, lc = lmaxes
    dtype = a.dtype
    p = plan(la, lb, lc, degree, dtype, uses_direct(la, lb, lc))
    scales = [_prepare(s, dtype) for s in (sa, sb, sc)]
    channels = next((s.shape[0] for s in scales if s is not None), 1)
    a, b = _prepare(a, dtype), _prepare(b, dtype)
    out = a.new_empty(a.shape[0], (lc + 1) ** 2)
    call = _ForwardCall(p["tables"], a.data_ptr(), b.data_ptr(), out.data_ptr(), a.shape[0])
    call.sa, call.sb, call.sc = (_pointer(s) for s in scales)
    call.channels, call.n_threads = channels, _threads(a.shape[0])
    _call(f"gaunt_forward_{_SUFFIX[dtype]}", call)
    return out


def _edge_rows(index: Tensor, target_rows: int, channels: int, name: str) -> Tensor:
    """An edge index as the kernel reads it (int64, contiguous), checked against the rows it addresses."""
    index = index.to(torch.long).contiguous()
    if index.numel() and (int(index.min()) < 0 or (int(index.max()) + 1) * channels > target_rows):
        raise IndexError(f"{name} has entries outside [0, {target_rows // channels})")
    return index


def _conv(a, b, lmaxes, degree, sa, sb, sc, channels, a_index, b_index, out_index, out_rows):
    la, lb, lc = lmaxes
    dtype = a.dtype
    p = plan(la, lb, lc, degree, dtype, uses_direct(la, lb, lc))
    scales = [_prepare(s, dtype) for s in (sa, sb, sc)]
    a, b = _prepare(a, dtype), _prepare(b, dtype)
    indices = (a_index, b_index, out_index)
    edges = next((i.numel() for i in indices if i is not None), a.shape[0] // channels)
    rows = edges * channels
    targets, names = (a.shape[0], b.shape[0], out_rows), ("a_index", "b_index", "out_index")
    for t, index, name in zip(targets, indices, names):
        if index is None and t != rows:
            raise ValueError(f"without {name} its tensor needs {rows} rows (edges × channels), got {t}")
        if index is not None and index.numel() != edges:
            raise ValueError(f"every index needs {edges} entries (one per edge), {name} has {index.numel()}")
    a_index, b_index, out_index = (
        None if i is None else _edge_rows(i, t, channels, name) for i, t, name in zip(indices, targets, names)
    )
    out = (a.new_zeros if out_index is not None else a.new_empty)(out_rows, (lc + 1) ** 2)
    forward = _ForwardCall(p["tables"], a.data_ptr(), b.data_ptr(), out.data_ptr(), rows)
    forward.sa, forward.sb, forward.sc = (_pointer(s) for s in scales)
    forward.channels, forward.n_threads = channels, _threads(rows)
    call = _ConvCall(forward, *(_pointer(i) for i in (a_index, b_index, out_index)), out_rows)
    _call(f"gaunt_conv_{_SUFFIX[dtype]}", call)
    return out


def _backward(grad, x, y, out, lmaxes, degree, weights, needs, channels):
    l1, l2, l3 = lmaxes
    dtype = x.dtype
    direct = uses_direct(l1, l2, l3)  # both plans alike: the kernel reads the method from px
    px, py = plan(l3, l2, l1, degree, dtype, direct), plan(l3, l1, l2, degree, dtype, direct)
    need_x, need_y, need_w1, need_w2, need_w3 = needs
    grad, x, y, out = (_prepare(t, dtype) for t in (grad, x, y, out))
    w1, w2, w3 = (_prepare(w, dtype) for w in weights)
    gx = torch.empty_like(x) if need_x or need_w1 else None
    gy = torch.empty_like(y) if need_y or need_w2 else None
    sums = [x.new_zeros(channels, (l + 1) ** 2) if need else None for l, need in zip(lmaxes, needs[2:])]
    call = _BackwardCall(px["tables"], py["tables"], *(_pointer(t) for t in (grad, x, y, out, gx, gy)), x.shape[0])
    call.w1, call.w2, call.w3, call.gw1, call.gw2, call.gw3 = (_pointer(t) for t in (w1, w2, w3, *sums))
    call.channels, call.n_threads = channels, _threads(x.shape[0])
    _call(f"gaunt_backward_{_SUFFIX[dtype]}", call)
    if need_w3 and w3 is not None:
        # The kernel summed grad ⊙ out = w3 ⊙ (grad ⊙ u) per channel; where w3 is exactly zero, recompute u.
        if not bool(w3.all()):
            u = _forward(x, y, lmaxes, degree, w1, w2)
            sums[2] = (grad * u).view(-1, channels, u.shape[-1]).sum(0)
        else:
            sums[2] = sums[2] / w3
    return gx if need_x else None, gy if need_y else None, *sums


# ---- the custom ops -------------------------------------------------------------------------------------------------

_NONE = 0  # custom ops return no None: a gradient that was not asked for comes back as an empty tensor


@torch.library.custom_op("geomol::gaunt_product", mutates_args=(), device_types="cpu")
def _product_op(
    a: Tensor, b: Tensor, lmaxes: list[int], degree: int, sa: Tensor | None, sb: Tensor | None, sc: Tensor | None
) -> Tensor:
    return _forward(a, b, tuple(lmaxes), degree, sa, sb, sc)


@_product_op.register_fake
def _(a, b, lmaxes, degree, sa, sb, sc):
    return a.new_empty(a.shape[0], (lmaxes[2] + 1) ** 2)


@torch.library.custom_op("geomol::gaunt_product_backward", mutates_args=(), device_types="cpu")
def _backward_op(
    grad: Tensor,
    x: Tensor,
    y: Tensor,
    out: Tensor | None,
    lmaxes: list[int],
    degree: int,
    w1: Tensor | None,
    w2: Tensor | None,
    w3: Tensor | None,
    needs: list[bool],
    channels: int,
) -> list[Tensor]:
    grads = _backward(grad, x, y, out, tuple(lmaxes), degree, (w1, w2, w3), tuple(needs), channels)
    return [x.new_empty(_NONE) if g is None else g for g in grads]


@_backward_op.register_fake
def _(grad, x, y, out, lmaxes, degree, w1, w2, w3, needs, channels):
    shapes = (x.shape, y.shape, *((channels, (l + 1) ** 2) for l in lmaxes))
    return [x.new_empty(shape if need else (_NONE,)) for shape, need in zip(shapes, needs)]


def _per_row(scale: Tensor, rows: Tensor) -> Tensor:
    """``rows ⊙ scale`` with row ``r`` taking ``scale``'s row ``r % C``: ``[R, K] x [C, K] -> [R, K]``."""
    return (rows.view(-1, *scale.shape) * scale).view(rows.shape)


def _channel_sum(rows: Tensor, channels: int) -> Tensor:
    return rows.view(-1, channels, rows.shape[-1]).sum(0)


def _setup_context(ctx, inputs, output) -> None:
    a, b, lmaxes, degree, sa, sb, sc = inputs
    ctx.lmaxes, ctx.degree = tuple(lmaxes), degree
    ctx.save_for_backward(a, b, sa, sb, sc, output)


def _product_backward(ctx, grad):
    """Γ is symmetric in its three indices: ∂/∂a is the product of ``sc ⊙ grad`` with ``sb ⊙ b`` on a's degrees.
    First-order backwards run the fused backward op; under ``create_graph`` the gradients are products again."""
    a, b, sa, sb, sc, out = ctx.saved_tensors
    la, lb, lc = ctx.lmaxes
    need_a, need_b, _, _, need_sa, need_sb, need_sc = ctx.needs_input_grad
    channels = next((s.shape[0] for s in (sa, sb, sc) if s is not None), 1)
    if not torch.is_grad_enabled():
        needs = [need_a, need_b, need_sa, need_sb, need_sc]
        grads = _backward_op(
            grad, a, b, out if need_sc else None, [la, lb, lc], ctx.degree, sa, sb, sc, needs, channels
        )
        ga, gb, gsa, gsb, gsc = (g if need else None for g, need in zip(grads, needs))
        return ga, gb, None, None, gsa, gsb, gsc
    ga = gb = gsa = gsb = gsc = None
    if need_a or need_sa:
        u = _product_op(grad, b, [lc, lb, la], ctx.degree, sc, sb, None)
        ga = u if sa is None else _per_row(sa, u)
        gsa = _channel_sum(u * a, channels) if need_sa else None
    if need_b or need_sb:
        u = _product_op(grad, a, [lc, la, lb], ctx.degree, sc, sa, None)
        gb = u if sb is None else _per_row(sb, u)
        gsb = _channel_sum(u * b, channels) if need_sb else None
    if need_sc:
        gsc = _channel_sum(grad * _product_op(a, b, [la, lb, lc], ctx.degree, sa, sb, None), channels)
    return ga if need_a else None, gb if need_b else None, None, None, gsa, gsb, gsc


_product_op.register_autograd(_product_backward, setup_context=_setup_context)


@torch.library.custom_op("geomol::gaunt_conv", mutates_args=(), device_types="cpu")
def _conv_op(
    a: Tensor,
    b: Tensor,
    lmaxes: list[int],
    degree: int,
    sa: Tensor | None,
    sb: Tensor | None,
    sc: Tensor | None,
    channels: int,
    a_index: Tensor | None,
    b_index: Tensor | None,
    out_index: Tensor | None,
    out_rows: int,
) -> Tensor:
    return _conv(a, b, tuple(lmaxes), degree, sa, sb, sc, channels, a_index, b_index, out_index, out_rows)


@_conv_op.register_fake
def _(a, b, lmaxes, degree, sa, sb, sc, channels, a_index, b_index, out_index, out_rows):
    return a.new_empty(out_rows, (lmaxes[2] + 1) ** 2)


def _conv_setup_context(ctx, inputs, output) -> None:
    a, b, lmaxes, degree, sa, sb, sc, channels, a_index, b_index, out_index, out_rows = inputs
    ctx.lmaxes, ctx.degree, ctx.channels, ctx.out_rows = tuple(lmaxes), degree, channels, out_rows
    ctx.save_for_backward(a, b, sa, sb, sc, a_index, b_index, out_index)


def _conv_backward(ctx, grad):
    """The adjoint of a gather-product-scatter is one again, with the roles of the indices permuted: ∂L/∂a gathers
    ``grad`` at the output's rows, multiplies by ``b`` and scatters to ``a``'s rows (Γ is symmetric in its three
    indices). Under ``create_graph`` these calls are recorded, so every order of derivative is exact."""
    a, b, sa, sb, sc, a_index, b_index, out_index = ctx.saved_tensors
    la, lb, lc = ctx.lmaxes
    channels, degree, grad = ctx.channels, ctx.degree, grad.contiguous()
    need_a, need_b, _, _, need_sa, need_sb, need_sc = ctx.needs_input_grad[:7]
    ga = gb = gsa = gsb = gsc = None
    if need_a or need_sa:
        u = _conv_op(grad, b, [lc, lb, la], degree, sc, sb, None, channels, out_index, b_index, a_index, a.shape[0])
        ga = u if sa is None else _per_row(sa, u)
        gsa = _channel_sum(u * a, channels) if need_sa else None
    if need_b or need_sb:
        u = _conv_op(grad, a, [lc, la, lb], degree, sc, sa, None, channels, out_index, a_index, b_index, b.shape[0])
        gb = u if sb is None else _per_row(sb, u)
        gsb = _channel_sum(u * b, channels) if need_sb else None
    if need_sc:  # a third pass: callers that learn the output scale apply it outside the op (a node-level product)
        indices = (a_index, b_index, out_index)
        gsc = _channel_sum(
            grad * _conv_op(a, b, [la, lb, lc], degree, sa, sb, None, channels, *indices, ctx.out_rows), channels
        )
    return ga if need_a else None, gb if need_b else None, None, None, gsa, gsb, gsc, *(None,) * 5


_conv_op.register_autograd(_conv_backward, setup_context=_conv_setup_context)


def _skip_op(*tensors: Tensor | None) -> bool:
    """Whether a call may skip the custom op and run the kernel directly: not traced by ``torch.compile`` and with
    nothing for autograd to record. The op's Python dispatch cost about 70 µs a call (AMD EPYC Zen 4, measured beside
    a training run), half the kernel's time on 16,000 rows of degree 2; the numbers are the same either way."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def conv(
    a: Tensor,
    b: Tensor,
    lmaxes: tuple[int, int, int],
    degree: int,
    sa: Tensor | None = None,
    sb: Tensor | None = None,
    sc: Tensor | None = None,
    *,
    channels: int,
    a_index: Tensor | None = None,
    b_index: Tensor | None = None,
    out_index: Tensor | None = None,
    out_rows: int | None = None,
) -> Tensor:
    """``out[io_e] += sc ⊙ Γ(sa ⊙ a[ia_e], sb ⊙ b[ib_e])`` for every edge ``e`` and channel, in one fused pass (op
    ``geomol::gaunt_conv``, differentiable in ``a``, ``b`` and the scales to any order).

    Rows come in groups of ``channels`` (``[N, C, K]`` flattened to ``[N·C, K]``): an index entry ``i`` of edge
    ``e`` names rows ``i·C … i·C + C-1``. A missing index means edge ``e`` itself (then the tensor has one group
    per edge); without ``out_index`` the output has a row per edge and channel. Scales ``[C, K]`` as in
    :func:`forward`. With ``a_index = sender`` and ``out_index = receiver`` this is a convolution's gather,
    product and scatter-sum without the ``[E, C, K]`` messages.

    Shapes:
        a ``[Na·C, (la+1)²]``, b ``[Nb·C, (lb+1)²]``, indices ``[E]`` -> ``[out_rows, (lc+1)²]``.
    """
    if out_rows is None:
        if out_index is not None:
            raise ValueError("out_rows is needed with out_index (the number of output rows: nodes × channels)")
        out_rows = next((i.numel() for i in (a_index, b_index) if i is not None), a.shape[0] // channels) * channels
    if _skip_op(a, b, sa, sb, sc):
        return _conv(a, b, tuple(lmaxes), degree, sa, sb, sc, channels, a_index, b_index, out_index, out_rows)
    return _conv_op(a, b, list(lmaxes), degree, sa, sb, sc, channels, a_index, b_index, out_index, out_rows)


def forward(
    a: Tensor,
    b: Tensor,
    lmaxes: tuple[int, int, int],
    degree: int,
    sa: Tensor | None = None,
    sb: Tensor | None = None,
    sc: Tensor | None = None,
) -> Tensor:
    """``sc ⊙ Γ(sa ⊙ a, sb ⊙ b)`` through the op ``geomol::gaunt_product`` (differentiable in every input; a call
    with nothing for autograd to record runs the kernel without the op's dispatch, the same numbers).

    Scales ``[C, K]`` act on row ``r``'s channel ``r % C``.

    Shapes:
        a ``[R, (la+1)²]``, b ``[R, (lb+1)²]`` -> ``[R, (lc+1)²]``.
    """
    if _skip_op(a, b, sa, sb, sc):
        return _forward(a, b, tuple(lmaxes), degree, sa, sb, sc)
    return _product_op(a, b, list(lmaxes), degree, sa, sb, sc)


def backward(
    grad: Tensor,
    x: Tensor,
    y: Tensor,
    out: Tensor | None,
    lmaxes: tuple[int, int, int],
    degree: int,
    weights: tuple[Tensor | None, Tensor | None, Tensor | None],
    needs: tuple[bool, bool, bool, bool, bool],
    channels: int,
) -> tuple[Tensor | None, ...]:
    """Gradients of ``out = w3 ⊙ Γ(w1 ⊙ x, w2 ⊙ y)`` for the output gradient ``grad`` (op
    ``geomol::gaunt_product_backward``, one fused pass; not differentiable itself).

    ``needs`` says which of ``x, y, w1, w2, w3`` need a gradient; ``out`` is the forward's output (needed for
    ``w3``). Returns ``gx, gy, gw1, gw2, gw3`` (None where not needed); weight gradients are ``[C, K]``.
    """
    if not torch.compiler.is_compiling():  # the op is not differentiable: only the dispatch to skip (see _skip_op)
        return _backward(grad, x, y, out, tuple(lmaxes), degree, weights, tuple(needs), channels)
    grads = _backward_op(grad, x, y, out, list(lmaxes), degree, *weights, list(needs), channels)
    return tuple(g if need else None for g, need in zip(grads, needs))
