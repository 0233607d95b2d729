"""Affine-invariant image classifiers: :class:`AffineCNN` (Mironenco & Forré, ICLR 2024) and its plain twin.

Both share one layout, so a benchmark between them isolates the group structure:

    stem conv → norm → GELU → [2×2 max-pool → residual block] × num_blocks → global max → MLP

:class:`AffineCNN` lifts the image to R² × {samples of GL⁺(2) or SL(2)} and uses group convolutions
(:mod:`geomol.nn.liegroup`); its global max runs over (group, H, W), so the logits are invariant to the
affine group in the Monte Carlo limit. :class:`PlainCNN` uses ordinary convolutions (translations only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomol.nn.liegroup import GroupConv, GroupLayerNorm, GroupRMSNorm, LiftingConv, get_group, pool_spatial

__all__ = ["AffineCNN", "PlainCNN"]


class _ResidualBlock(nn.Module):
    """``GELU(x + norm(conv(GELU(norm(conv(x))))))``; extra forward arguments go to both convolutions.

    When the convolutions grow the maps ("full" padding), ``x`` is zero-padded to their size.
    """

    def __init__(self, conv1: nn.Module, conv2: nn.Module, channels: int, zero_background: bool) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2
        self.norm1, self.norm2 = _norm(channels, zero_background), _norm(channels, zero_background)

    def forward(self, x: Tensor, *conv_args: Tensor) -> Tensor:  # [B, C, (N,) H, W] -> [B, C, (N,) H', W']
        h = self.norm2(self.conv2(F.gelu(self.norm1(self.conv1(x, *conv_args))), *conv_args))
        grow = (h.shape[-1] - x.shape[-1]) // 2  # "full" convolutions grow the maps; zeros extend the background
        return F.gelu(F.pad(x, (grow,) * 4) + h)


def _pool(x: Tensor, zero_background: bool) -> Tensor:
    """2×2 max-pool of space, each group sample on its own (``[B, C, (N,) H, W]``).

    With ``zero_background`` odd sizes are first padded with zeros (the background's value), so no
    row or column of a grown map is dropped.
    """
    if zero_background:
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    return pool_spatial(x, 2) if x.dim() == 5 else F.max_pool2d(x, 2)


def _paddings(stem_kernel_size: int, kernel_size: int, zero_background: bool) -> tuple[int, int]:
    """Stem and block paddings: "full" (``k - 1``, maps grow) with ``zero_background``, else unpadded stem
    and "same" blocks."""
    if zero_background:
        return stem_kernel_size - 1, kernel_size - 1
    return 0, kernel_size // 2


def _norm(channels: int, zero_background: bool) -> nn.Module:
    """The feature norm: :class:`GroupRMSNorm` (zeros stay zeros) with ``zero_background``, else layer norm."""
    return GroupRMSNorm(channels) if zero_background else GroupLayerNorm(channels)


_HEAD_NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


def _head(channels: int, hidden: int, num_classes: int, dropout: float, norm: str) -> nn.Sequential:
    """The paper's classifier on pooled features: Linear → norm → GELU → Dropout → Linear.

    Pooled maxima of different images are nearly parallel vectors at initialization (cosine ≈ 0.998
    for AffineCNN), so a LayerNorm there sees almost the same input for every image and training sits
    on a plateau for hundreds of steps; BatchNorm standardizes each feature across the batch and
    starts learning at once. The authors' code offers both ("layernorm" is their default).
    """
    if norm not in _HEAD_NORMS:
        raise ValueError(f"head_norm must be one of {sorted(_HEAD_NORMS)}, got {norm!r}")
    return nn.Sequential(
        nn.Linear(channels, hidden, bias=False),
        _HEAD_NORMS[norm](hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class AffineCNN(nn.Module):
    """Lie-group CNN on R² ⋊ GL⁺(2) or R² ⋊ SL(2) (Mironenco & Forré 2024, affNIST model).

    Every forward pass uses one set of group samples shared by all layers (residual connections need
    input and output on the same samples). With ``resample=True`` (the paper's scheme) training draws
    a new set at every step, from a stream seeded by ``seed`` (the step count is a buffer, so a resumed
    run continues the stream); with ``resample=False`` training uses the same fixed set as eval mode,
    whose set is always the same, so evaluation is deterministic. ``eval_num_samples`` may differ
    from ``num_samples`` (kernels are continuous in the group), but with equidistant angles the kernels
    were only trained on the training grid's relative turns: keep the two equal there (in our short
    CPU runs a denser eval grid lost accuracy).

    Args:
        num_classes: number of classes (given by the task).
        in_channels: image channels.
        group: ``"gl2"`` (full affine) or ``"sl2"`` (area preserving).
        num_samples: group samples per forward pass in training.
        eval_num_samples: samples in eval mode (default ``num_samples``).
        channels: feature channels of every layer.
        num_blocks: residual group-conv blocks, each after a 2×2 spatial max-pool.
        stem_kernel_size: lifting window (unpadded, as in the paper).
        kernel_size: group-conv window.
        hidden_features, siren_layers, omega_0: SIREN kernel networks.
        mask_radius, mask_slope: smooth kernel mask (see :class:`~geomol.nn.liegroup.LiftingConv`).
        spd_std: std of the log-normal SPD factor's chart coordinates (paper: variance 0.1).
        angles: rotation sampling, ``"equidistant"`` or ``"uniform"``.
        angle_range: fraction of the circle the rotation samples cover (1: all of it).
        eval_angles, eval_angle_range, eval_spd_std: the eval-mode set's angle sampling, angle range
            and SPD spread (default: as in training). A fixed eval set narrower than the training draws
            keeps every view of a test image turned by up to the difference inside the range of views
            seen in training, which a max over a bounded (not closed) set of views needs to stay in
            distribution.
        spd_sampling: SPD factor sampling, ``"random"`` (i.i.d. log-normal) or ``"quasi"`` (deterministic
            Gaussian quantiles of a Halton set; see :meth:`~geomol.nn.liegroup.LinearGroup2.sample`).
        spd_cycle: number of distinct SPD factors, repeated over the angles (0: one per sample); see
            :meth:`~geomol.nn.liegroup.LinearGroup2.sample`. With a fixed set (``resample=False``) and a
            full grid of angles, 1 keeps the logits exactly invariant to the grid's turns.
        mix_samples: group convolutions integrate over the samples (True, the paper) or act on each
            sample's slice alone (False: a max over transformed views of one CNN; see
            :class:`~geomol.nn.liegroup.GroupConv`).
        resample: draw new samples at every training step; False trains on the fixed eval-mode set
            (of ``num_samples`` elements), which removes the sampling noise from the gradients.
        transform: what the group samples act on in every layer: ``"kernel"`` (the paper: SIRENs
            evaluated at transformed offsets) or ``"signal"`` (images and feature maps resampled by the
            samples, kernels on the fixed pixel grid); the same network in the continuum, see
            :class:`~geomol.nn.liegroup.LiftingConv`.
        zero_background: bias-free convolutions, RMS norms (:class:`~geomol.nn.liegroup.GroupRMSNorm`)
            and "full" convolutions (padding ``k - 1``: each map grows to hold a pattern's whole
            response), so an empty canvas region has exactly zero features, the zero padding continues
            it, and nothing is cut at the canvas edge: the logits do not depend on where on the canvas
            the digit sits (exactly, for shifts by multiples of the pooling stride, 2 per block). With the default
            layer norms and "same" padding the background has non-zero features and the padding
            makes an edge; in our runs 15 % of AffineCNN's pooled maxima sat on that edge, and digits
            moved near it lost 4-5 points of accuracy. Larger maps: about 2-2.5× the training time in our runs.
        head_hidden, head_norm, dropout: classifier MLP (``head_norm``: ``"batch"`` or ``"layer"``).
        seed: seed of the group-sample stream.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        group: str = "sl2",
        num_samples: int = 10,
        eval_num_samples: int | None = None,
        channels: int = 40,
        num_blocks: int = 2,
        stem_kernel_size: int = 5,
        kernel_size: int = 5,
        hidden_features: int = 60,
        siren_layers: int = 3,
        omega_0: float = 10.0,
        mask_radius: float | None = 1.0,
        mask_slope: float = 2.0,
        spd_std: float = math.sqrt(0.1),
        angles: str = "equidistant",
        angle_range: float = 1.0,
        eval_angles: str | None = None,
        eval_angle_range: float | None = None,
        eval_spd_std: float | None = None,
        spd_sampling: str = "random",
        spd_cycle: int = 0,
        mix_samples: bool = True,
        resample: bool = True,
        transform: str = "kernel",
        zero_background: bool = False,
        head_hidden: int = 256,
        head_norm: str = "batch",
        dropout: float = 0.3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_samples < 1 or (eval_num_samples is not None and eval_num_samples < 1):
            raise ValueError(
                f"num_samples and eval_num_samples must be positive, got {num_samples}, {eval_num_samples}"
            )
        self.group = get_group(group)
        self.num_samples, self.eval_num_samples = num_samples, eval_num_samples or num_samples
        self.sampler = dict(
            spd_std=spd_std, angles=angles, angle_range=angle_range, spd_sampling=spd_sampling, spd_cycle=spd_cycle
        )
        overrides = dict(angles=eval_angles, angle_range=eval_angle_range, spd_std=eval_spd_std)
        self.eval_sampler = self.sampler | {key: value for key, value in overrides.items() if value is not None}
        self.seed, self.resample, self.zero_background = seed, resample, zero_background
        kernel_args = dict(
            hidden_features=hidden_features,
            num_layers=siren_layers,
            omega_0=omega_0,
            mask_radius=mask_radius,
            mask_slope=mask_slope,
            transform=transform,
            bias=not zero_background,
        )
        stem_padding, padding = _paddings(stem_kernel_size, kernel_size, zero_background)
        self.lift = LiftingConv(
            self.group, in_channels, channels, stem_kernel_size, padding=stem_padding, **kernel_args
        )
        self.lift_norm = _norm(channels, zero_background)
        self.blocks = nn.ModuleList(
            _ResidualBlock(
                *(
                    GroupConv(
                        self.group,
                        channels,
                        channels,
                        kernel_size,
                        mix_samples=mix_samples,
                        padding=padding,
                        **kernel_args,
                    )
                    for _ in range(2)
                ),
                channels,
                zero_background,
            )
            for _ in range(num_blocks)
        )
        self.head = _head(channels, head_hidden, num_classes, dropout, head_norm)
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.long))
        # Fail at construction, not at the first step, on a bad sampler setting.
        self.group.sample(1, **self.sampler)
        self.group.sample(1, **self.eval_sampler)

    def group_samples(self) -> Tensor:
        """This forward pass's samples ``[N, 2, 2]`` (float64; each layer casts what it derives)."""
        if self.training and self.resample:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.sample_step) + 1)
            self.sample_step += 1
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003)
        if self.training:
            samples = self.group.sample(self.num_samples, generator=generator, **self.sampler)
        else:
            samples = self.group.sample(self.eval_num_samples, generator=generator, **self.eval_sampler)
        return samples.to(self.sample_step.device)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: images ``[B, C_in, H, W]`` -> logits ``[B, num_classes]``."""
        samples = self.group_samples()
        h = F.gelu(self.lift_norm(self.lift(x, samples)))  # [B, C, N, H', W']
        for block in self.blocks:
            h = block(_pool(h, self.zero_background), samples)
        return self.head(h.amax(dim=(2, 3, 4)))


class PlainCNN(nn.Module):
    """:class:`AffineCNN`'s layout with ordinary convolutions: the translation-only baseline.

    Args:
        num_classes: number of classes (given by the task).
        in_channels: image channels.
        channels: feature channels of every layer.
        num_blocks: residual blocks, each after a 2×2 spatial max-pool.
        stem_kernel_size: first convolution's window (unpadded).
        kernel_size: block convolutions' window.
        zero_background: bias-free "full" convolutions and RMS norms (see :class:`AffineCNN`).
        head_hidden, head_norm, dropout: classifier MLP (``head_norm``: ``"batch"`` or ``"layer"``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        channels: int = 32,
        num_blocks: int = 2,
        stem_kernel_size: int = 5,
        kernel_size: int = 5,
        zero_background: bool = False,
        head_hidden: int = 256,
        head_norm: str = "batch",
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.zero_background = zero_background
        bias = not zero_background
        stem_padding, padding = _paddings(stem_kernel_size, kernel_size, zero_background)
        self.stem = nn.Conv2d(in_channels, channels, stem_kernel_size, padding=stem_padding, bias=bias)
        self.stem_norm = _norm(channels, zero_background)
        self.blocks = nn.ModuleList(
            _ResidualBlock(
                nn.Conv2d(channels, channels, kernel_size, padding=padding, bias=bias),
                nn.Conv2d(channels, channels, kernel_size, padding=padding, bias=bias),
                channels,
                zero_background,
            )
            for _ in range(num_blocks)
        )
        self.head = _head(channels, head_hidden, num_classes, dropout, head_norm)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: images ``[B, C_in, H, W]`` -> logits ``[B, num_classes]``."""
        h = F.gelu(self.stem_norm(self.stem(x)))
        for block in self.blocks:
            h = block(_pool(h, self.zero_background))
        return self.head(h.amax(dim=(2, 3)))
