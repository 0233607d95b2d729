"""The fused CPU kernel of the Gaunt product (``csrc/gaunt_product.cpp``): build, load, plan and call.

Torch has no operation that keeps a row's spherical-grid values in cache between the transforms and the
product, and no library offers a fused Gaunt product, so geomol compiles a small C++ kernel with the system C++
compiler on first use (under a second) and calls it through ``ctypes``; it runs on torch's own OpenMP
threads (``libgomp`` is already loaded by torch). The compiled library is cached under
``$GEOMOL_CACHE`` (default ``~/.cache/geomol``), keyed by the source, the compiler flags and the CPU.
Without a C compiler, on GPUs, or with ``GEOMOL_GAUNT_KERNEL=0``, :mod:`geomol.nn.gaunt` uses its
torch-only path, which computes the same numbers.

A plan holds, for one triple of degrees ``(La, Lb, Lc)`` on one grid, the Legendre tables of the three
roles and the exact φ-integrals ``K[m1, m2, m3] = ∫ T_m1 T_m2 T_m3 dφ`` of three real Fourier modes (with
the quadrature weights split as cube roots, as the torch path does), grouped by output order and value, so the kernel never forms a φ grid.
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

__all__ = ["available", "backward", "disabled", "forward", "plan"]

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
    pointer, integer, long = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    product = [pointer] * 8  # Legendre tables of the three roles, K values, group starts, order pairs
    for suffix in _SUFFIX.values():
        forward, backward = getattr(library, f"gaunt_forward_{suffix}"), getattr(library, f"gaunt_backward_{suffix}")
        forward.restype = backward.restype = None
        forward.argtypes = [*[integer] * 4, *product, *[pointer] * 3, long, *[pointer] * 3, integer, integer]
        backward.argtypes = [*[integer] * 4, *product, *product, *[pointer] * 6, long, *[pointer] * 6, integer, integer]
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
    return _enabled and all(t.device.type == "cpu" and t.dtype in _SUFFIX for t in tensors) and _library() is not None


_ROWS_PER_THREAD = 1024
_TABLES = ("leg_a", "leg_b", "leg_c", "coef", "start", "gstart", "m1", "m2")  # the kernel's argument order


@functools.cache
def plan(la: int, lb: int, lc: int, degree: int, dtype: torch.dtype) -> dict[str, Tensor | int]:
    """Tables for ``Γ: (degree ≤ la) × (degree ≤ lb) -> (degree ≤ lc)`` on the grid exact up to ``degree``."""
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
    plan["pointers"] = [plan[name].data_ptr() for name in _TABLES]
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


def forward(
    a: Tensor,
    b: Tensor,
    lmaxes: tuple[int, int, int],
    degree: int,
    sa: Tensor | None = None,
    sb: Tensor | None = None,
    sc: Tensor | None = None,
) -> Tensor:
    """``sc ⊙ Γ(sa ⊙ a, sb ⊙ b)``; no autograd (see ``geomol.nn.gaunt._GauntProduct``).

    Scales ``[C, K]`` act on row ``r``'s channel ``r % C``.

    Shapes:
        a ``[R, (la+1)²]``, b ``[R, (lb+1)²]`` -> ``[R, (lc+1)²]``.
    """
    la, lb, lc = lmaxes
    dtype = a.dtype
    p = plan(la, lb, lc, degree, dtype)
    scales = [_prepare(s, dtype) for s in (sa, sb, sc)]
    channels = next((s.shape[0] for s in scales if s is not None), 1)
    a, b = _prepare(a, dtype), _prepare(b, dtype)
    out = a.new_empty(a.shape[0], (lc + 1) ** 2)
    getattr(_library(), f"gaunt_forward_{_SUFFIX[dtype]}")(
        la, lb, lc, p["n_theta"], *p["pointers"], a.data_ptr(), b.data_ptr(), out.data_ptr(), a.shape[0],
        *(_pointer(s) for s in scales), channels, _threads(a.shape[0]),
    )  # fmt: skip
    return out


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
    """Gradients of ``out = w3 ⊙ Γ(w1 ⊙ x, w2 ⊙ y)`` for the output gradient ``grad``; no autograd.

    ``needs`` says which of ``x, y, w1, w2, w3`` need a gradient; ``out`` is the forward's output (needed for
    ``w3``). Returns ``gx, gy, gw1, gw2, gw3`` (None where not needed); weight gradients are ``[C, K]``.
    """
    l1, l2, l3 = lmaxes
    dtype = x.dtype
    px, py = plan(l3, l2, l1, degree, dtype), plan(l3, l1, l2, degree, dtype)
    need_x, need_y, need_w1, need_w2, need_w3 = needs
    grad, x, y, out = (_prepare(t, dtype) for t in (grad, x, y, out))
    w1, w2, w3 = (_prepare(w, dtype) for w in weights)
    gx = torch.empty_like(x) if need_x or need_w1 else None
    gy = torch.empty_like(y) if need_y or need_w2 else None
    sums = [x.new_zeros(channels, (l + 1) ** 2) if need else None for l, need in zip(lmaxes, needs[2:])]
    getattr(_library(), f"gaunt_backward_{_SUFFIX[dtype]}")(
        l1, l2, l3, px["n_theta"], *px["pointers"], *py["pointers"],
        *(_pointer(t) for t in (grad, x, y, out, gx, gy)), x.shape[0],
        *(_pointer(t) for t in (w1, w2, w3, *sums)), channels, _threads(x.shape[0]),
    )  # fmt: skip
    if need_w3 and w3 is not None:
        # The kernel summed grad ⊙ out = w3 ⊙ (grad ⊙ u) per channel; where w3 is exactly zero, recompute u.
        if bool((w3 == 0).any()):
            u = forward(x, y, lmaxes, degree, w1, w2)
            sums[2] = (grad * u).view(-1, channels, u.shape[-1]).sum(0)
        else:
            sums[2] = sums[2] / w3
    return gx if need_x else None, gy if need_y else None, *sums
