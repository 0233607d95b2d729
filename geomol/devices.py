"""What the machine can do: whether an error was the allocator running out of memory
(:func:`is_out_of_memory`), and what its processors do well: bfloat16 is fast on GPUs and on CPUs with native
bf16 (AVX512-BF16, AMX), and emulated, tens of times slower than float32, elsewhere (e.g. AVX2 CPUs).
:func:`reuse_freed_memory` keeps glibc's malloc from handing the big tensors of each step back to the kernel."""

from __future__ import annotations

import ctypes
import functools
import os
import warnings

import torch

__all__ = ["fast_bf16", "warn_slow_bf16", "is_out_of_memory", "reuse_freed_memory"]

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA or CPU allocator failure (``torch.OutOfMemoryError`` or the CPU allocator's RuntimeError)."""
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


@functools.cache
def _cpu_bf16() -> bool:
    try:  # oneDNN's own test: the instructions its bf16 kernels need (avx512_core and up)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fast_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bfloat16 matrix products run natively on ``device`` (always assumed on accelerators)."""
    return torch.device(device).type != "cpu" or _cpu_bf16()


_warned: set[str] = set()


def warn_slow_bf16(what: str, device: torch.device | str = "cpu") -> bool:
    """Warn (once per process and ``what``) that bf16 on this CPU is emulated; returns whether it warned."""
    if fast_bf16(device) or what in _warned:
        return False
    _warned.add(what)
    warnings.warn(
        f"geomol: {what} in bf16 on a CPU without native bf16 ({torch.backends.cpu.get_cpu_capability()}): "
        "emulated, about 50x slower than float32 here (a 8192x128 linear layer, measured on AMD Zen 3); "
        "use 32 instead",
        RuntimeWarning,
        stacklevel=3,
    )
    return True


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next allocation instead of returning it to the kernel.

    By default glibc serves large blocks with fresh ``mmap`` pages and trims the heap when they are freed,
    so a CPU step that allocates and frees the same 1-10 MB tensors every time pays a page fault per 4 kB
    on first touch: with PropMolFlow's sampler at the shipped size, ~70,000 faults and about 30 % of the
    CPU time per step (AMD EPYC, 2 threads). This sets ``M_MMAP_THRESHOLD`` to its maximum (32 MiB) and
    ``M_TRIM_THRESHOLD`` to 2 GiB: blocks up to 32 MiB come from the heap, which is not trimmed, so the
    process keeps its peak memory until it exits. Results are unchanged.

    Called by the flow sampler and the generation task's training step on the CPU; it acts once per
    process, on the whole process. ``GEOMOL_MALLOC_TUNING=0`` in the environment turns it off. Returns
    whether the settings were applied (False without glibc, e.g. on macOS).
    """
    if os.environ.get("GEOMOL_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        )
    except (OSError, AttributeError):
        return False
