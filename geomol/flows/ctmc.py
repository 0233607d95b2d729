"""Discrete flow matching with an absorbing mask state (Campbell et al. 2024, "Generative flows on
discrete state-spaces", Sec. 3-4), as used by FlowMol for atom types, charges and bond orders.

Each token is either its data value or the extra state ``mask = num_classes``. The conditional path
unmasks a token with probability ``α(t)``: ``p_t(x | x_1) = α δ(x_1) + (1 - α) δ(mask)``. The model
predicts ``p(x_1 | x_t)``; it is trained with cross-entropy on the masked tokens only (unmasked ones
already equal their data value). Sampling runs the CTMC whose rates unmask a masked token towards a
draw from ``p(x_1 | x_t)`` and, with stochasticity ``η``, re-mask unmasked tokens at rate ``η``
(detailed balance keeps the marginals; Campbell et al. Prop. 3.3).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["MaskedFlow"]


class MaskedFlow:
    """Mask-state CTMC over ``num_classes`` categories; the mask token is ``num_classes``.

    Args:
        num_classes: categories of the data (without the mask).
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"a categorical flow needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.mask_index = num_classes

    def __repr__(self) -> str:
        return f"MaskedFlow(num_classes={self.num_classes})"

    def corrupt(self, x1: Tensor, alpha: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample ``x_t``: each token kept with probability ``α`` (per token), masked otherwise.

        Shapes:
            x1 ``[n]`` long, alpha ``[n]`` -> ``[n]`` long
        """
        self._check(x1)
        masked = torch.rand(x1.shape, generator=generator, device=x1.device, dtype=alpha.dtype) >= alpha
        return torch.where(masked, torch.full_like(x1, self.mask_index), x1)

    def loss(self, logits: Tensor, x1: Tensor, x_t: Tensor) -> Tensor:
        """Mean cross-entropy of ``p(x_1 | x_t)`` over the masked tokens (0 when none is masked).

        Shapes:
            logits ``[n, num_classes]``, x1 ``[n]``, x_t ``[n]`` -> scalar
        """
        masked = x_t == self.mask_index
        if not bool(masked.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[masked], x1[masked])

    def step(
        self,
        x_t: Tensor,
        logits: Tensor,
        alpha_t: float,
        alpha_s: float,
        dt: float,
        eta: float = 0.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""One Euler step of the CTMC from ``t`` to ``s = t + dt``.

        A masked token unmasks with probability ``(α_s - α_t + η dt α_t) / (1 - α_t)`` (the rate
        ``(α' + η α) / (1 - α)`` of FlowMol's sampler, with ``α' dt`` taken as ``α_s - α_t``) to a value
        drawn from ``softmax(logits / temperature)``; an unmasked token re-masks with probability
        ``η dt``, except on the last step. At ``α_s = 1`` every masked token unmasks, so no mask
        survives to ``t = 1``.

        Shapes:
            x_t ``[n]`` long, logits ``[n, num_classes]`` -> ``[n]`` long
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        masked = x_t == self.mask_index
        final = alpha_s >= 1.0
        if final:
            unmask_prob = 1.0
        else:
            unmask_prob = min(max((alpha_s - alpha_t + eta * dt * alpha_t) / max(1.0 - alpha_t, 1e-9), 0.0), 1.0)
        remask_prob = 0.0 if final else min(eta * dt, 1.0)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        draw = torch.multinomial(probs, 1, generator=generator).squeeze(-1) if probs.numel() else x_t
        u = torch.rand(x_t.shape, generator=generator, device=x_t.device)
        unmask = masked & (u < unmask_prob)
        remask = ~masked & (u < remask_prob)
        x_s = torch.where(unmask, draw, x_t)
        return torch.where(remask, torch.full_like(x_t, self.mask_index), x_s)

    def _check(self, x: Tensor) -> None:
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
            raise ValueError(
                f"category out of range: values must lie in 0..{self.num_classes - 1}, "
                f"got {int(x.min())}..{int(x.max())}"
            )
