"""Learning-rate schedules used by the papers' settings, as ``LambdaLR`` factories for Hydra.

Configs reference them with ``_partial_: true``; the task passes ``optimizer``.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_exponential_decay", "cosine_with_warmup", "cosine_times_warmup"]


def warmup_exponential_decay(
    optimizer: Optimizer, warmup_steps: int = 3000, decay_rate: float = 0.01, decay_steps: int = 4_000_000
) -> LambdaLR:
    """DimeNet's schedule: linear warm-up, then ``lr · decay_rate^(step / decay_steps)`` (per step)."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        return warm * decay_rate ** (step / decay_steps)

    return LambdaLR(optimizer, factor)


def cosine_with_warmup(
    optimizer: Optimizer, warmup_steps: int = 0, total_steps: int = 100_000, min_factor: float = 0.0
) -> LambdaLR:
    """Linear warm-up, then cosine decay to ``min_factor · lr`` at ``total_steps`` (per step)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def cosine_times_warmup(optimizer: Optimizer, warmup_steps: int = 0, total_steps: int = 100_000) -> LambdaLR:
    """PONITA's ``CosineWarmupScheduler``: ``0.5 (1 + cos(π t / T))``, times ``(t + ε) / (W + ε)`` while
    ``t ≤ W`` (ε = 1e-6), so the first step (t = 0) has a learning rate of ~0, as in the authors' code."""

    def factor(step: int) -> float:
        value = 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
        if step <= warmup_steps:
            value *= (step + 1e-6) / (warmup_steps + 1e-6)
        return value

    return LambdaLR(optimizer, factor)
