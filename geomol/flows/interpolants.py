"""Interpolation schedules ``α(t)`` between prior (``t = 0``) and data (``t = 1``), one per modality.

Positions follow ``x_t = (1 - α) x_0 + α x_1``; categorical tokens are unmasked with probability ``α``
(FlowMol, Dunn & Koes 2024, Sec. 3.1-3.2). The cosine schedule ``α = 1 - cos²(π/2 · t^ν)`` (FlowMol,
Eq. 6) moves slowly near both ends.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Schedule", "LinearSchedule", "CosineSchedule", "make_schedule", "interpolate", "position_step"]


class Schedule:
    """``α(t)``, increasing from ``α(0) = 0`` to ``α(1) = 1``."""

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError


class LinearSchedule(Schedule):
    """``α(t) = t``."""

    def alpha(self, t: Tensor) -> Tensor:
        return t

    def __repr__(self) -> str:
        return "LinearSchedule()"


class CosineSchedule(Schedule):
    """``α(t) = 1 - cos²(π/2 · t^ν) = sin²(π/2 · t^ν)`` (FlowMol, Eq. 6)."""

    def __init__(self, nu: float = 1.0) -> None:
        if nu <= 0:
            raise ValueError(f"the cosine schedule needs nu > 0, got {nu}")
        self.nu = float(nu)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t.clamp(0, 1).pow(self.nu)).pow(2)

    def __repr__(self) -> str:
        return f"CosineSchedule(nu={self.nu})"


def make_schedule(kind: str, nu: float = 1.0) -> Schedule:
    """``"linear"`` or ``"cosine"`` (with exponent ``nu``)."""
    if kind == "linear":
        return LinearSchedule()
    if kind == "cosine":
        return CosineSchedule(nu)
    raise ValueError(f"unknown schedule {kind!r}; use 'linear' or 'cosine'")


def interpolate(x0: Tensor, x1: Tensor, alpha: Tensor) -> Tensor:
    """``(1 - α) x_0 + α x_1`` with ``α`` broadcast over trailing dimensions.

    Shapes:
        x0, x1 ``[N, D]``, alpha ``[N]`` -> ``[N, D]``
    """
    alpha = alpha.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - alpha) * x0 + alpha * x1


def position_step(x_t: Tensor, x1_hat: Tensor, alpha_t: float, alpha_s: float) -> Tensor:
    r"""One Euler step of the endpoint-parameterised field from ``t`` to ``s``.

    .. math:: x_s = x_t + \frac{α_s - α_t}{1 - α_t} (\hat x_1 - x_t)

    The step in ``α`` is the Euler step ``dt · α'(t) / (1 - α_t) · (x̂_1 - x_t)`` of FlowMol (Eq. 9)
    with ``dt · α'`` replaced by ``α_s - α_t`` (equal for the linear schedule); it lands on ``x̂_1``
    at ``α_s = 1`` for every schedule instead of overshooting with the cosine one.
    """
    return x_t + (alpha_s - alpha_t) / max(1.0 - alpha_t, 1e-6) * (x1_hat - x_t)
