"""What the machine can do: whether an error was the allocator running out of memory
(:func:`is_out_of_memory`), and what its processors do well: bfloat16 is fast on GPUs and on CPUs with native
bf16 (AVX512-BF16, AMX), and emulated, tens of times slower than float32, elsewhere (e.g. AVX2 CPUs)."""

from __future__ import annotations

import functools
import warnings

import torch

__all__ = ["fast_bf16", "warn_slow_bf16", "is_out_of_memory"]


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
