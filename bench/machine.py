"""What every benchmark prints about the machine it ran on (bench scripts import it as ``machine``)."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch


def cpu_description() -> str:
    """CPU model and the widest vector ISA torch's kernels can use."""
    model = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
        flags = set(re.search(r"flags\s*:\s*(.+)", text).group(1).split())
    except (OSError, AttributeError):
        flags = set()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/other"
    if "avx512_bf16" in flags:
        isa += " + AVX512-BF16"
    if "amx_bf16" in flags:
        isa += " + AMX"
    return f"{model}, {isa}, torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()})"
