"""Affine-invariant image classifiers: :class:`AffineCNN` (Mironenco & Forré, ICLR 2024) and its plain twin.

Two layouts (``layout``):

* ``"geomol"`` (shared with :class:`PlainCNN`, so a benchmark between them isolates the group structure)::

    stem conv → norm → GELU → [2×2 max-pool → residual block] × num_blocks → global max → MLP

* ``"authors"`` (rgenn ``GResNet`` as their ``train.py`` builds it; ``num_blocks=1`` is their
  ``--nlayers 2``)::

    lifting conv → LN → GELU → [residual block → LN → 2×2 max-pool → GELU] × num_blocks
    → unpadded group conv → LN → GELU → global max → MLP

  with blocks ``GELU(x + GELU(LN(conv(GELU(LN(conv(x)))))))`` (activation before the add).

:class:`AffineCNN` lifts the image to R² × {samples of GL⁺(2) or SL(2)} and uses group convolutions
(:mod:`geomol.nn.liegroup_conv`; groups and samplers in :mod:`geomol.nn.liegroup`); its global max runs
over (group, H, W), so the logits are invariant to the affine group in the Monte Carlo limit. :class:`PlainCNN` uses ordinary convolutions (translations only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomol.nn.liegroup import GroupSampler, get_group
from geomol.nn.liegroup_conv import GroupConv, GroupLayerNorm, GroupRMSNorm, LiftingConv, pool_spatial

__all__ = ["AffineCNN", "PlainCNN", "AUTHORS_CONVENTIONS"]

_LAYOUTS = ("geomol", "authors")
_SAMPLE_SETS = ("shared", "per_layer")

#: The authors' conventions (github.com/mirceamironenco/rgenn) as :class:`AffineCNN` arguments, the way
#: ``experiment=affine_cnn_mnist`` sets them (the experiment adds their sizes, SPD spread and
#: ``head_norm="layer"``; their per-layer sample sets are the option ``sample_sets="per_layer"``). The
#: ``sampler`` and ``eval_sampler`` entries are partial nodes: merge them into a config's (OmegaConf.merge).
#: bench/affine_mnist.py --conventions starts every variant from these.
AUTHORS_CONVENTIONS: dict[str, Any] = {
    "layout": "authors",
    "num_blocks": 1,
    "norm_affine": False,
    "conv_bias": False,
    "mask_type": "authors",
    "offsets": "affine_grid",
    "sample_reduce": "sum",
    "angle_chart": "positive",
    "siren_bias_init": "zero",
    "sample_sets": "shared",
    "zero_background": False,
    "sampler": {"spd_law": "authors", "angles": "linspace"},
    "eval_sampler": {"angles": None, "resample": True},
}


class _ResidualBlock(nn.Module):
    """``GELU(x + norm(conv(GELU(norm(conv(x))))))``; extra forward arguments go to both convolutions.

    With ``act_before_add`` (the authors' ``GSimpleBlock``) the second branch is activated before the add:
    ``GELU(x + GELU(norm(conv(GELU(norm(conv(x)))))))``. When the convolutions grow the maps ("full"
    padding), ``x`` is zero-padded to their size.
    """

    def __init__(
        self,
        conv1: nn.Module,
        conv2: nn.Module,
        channels: int,
        zero_background: bool,
        norm_affine: bool = True,
        act_before_add: bool = False,
    ) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2
        self.norm1 = _norm(channels, zero_background, norm_affine)
        self.norm2 = _norm(channels, zero_background, norm_affine)
        self.act_before_add = act_before_add

    def forward(self, x: Tensor, *conv_args: Tensor) -> Tensor:  # [B, C, (N,) H, W] -> [B, C, (N,) H', W']
        h = self.norm2(self.conv2(F.gelu(self.norm1(self.conv1(x, *conv_args))), *conv_args))
        if self.act_before_add:
            h = F.gelu(h)
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


def _norm(channels: int, zero_background: bool, affine: bool = True) -> nn.Module:
    """The feature norm: :class:`GroupRMSNorm` (zeros stay zeros) with ``zero_background``, else layer norm;
    ``affine=False`` drops their per-channel parameters (the authors' ``LayerNorm3d``)."""
    return GroupRMSNorm(channels, affine=affine) if zero_background else GroupLayerNorm(channels, affine=affine)


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
    input and output on the same samples), drawn by ``sampler`` in training and by ``eval_sampler`` in
    eval mode (:class:`~geomol.nn.liegroup.GroupSampler`: the law, the number of samples and whether each
    pass redraws them). With ``sampler.resample`` (the paper's scheme) training draws a new set at every
    step, from a stream seeded by ``seed`` (the step count is a buffer, so a resumed run continues the
    stream); without it training draws its one fixed set from the same seed as eval mode, whose set is
    always the same unless ``eval_sampler.resample``, so evaluation is deterministic.
    ``eval_sampler.num_samples`` may differ from the training count (kernels are continuous in the group),
    but with equidistant angles the kernels were only trained on the training grid's relative turns: keep
    the two equal there (in our short CPU runs a denser eval grid lost accuracy).

    The defaults are geomol's conventions (the layers' defaults, which the equivariance tests pin);
    ``experiment=affine_cnn_mnist`` switches to the authors' (github.com/mirceamironenco/rgenn),
    :data:`AUTHORS_CONVENTIONS` with ``head_norm="layer"``: 339,102 parameters for SL(2) at 40 channels and
    SIRENs 60 wide (339,282 for GL⁺(2)), as their ``train.py`` counts.

    Args:
        num_classes: number of classes (given by the task).
        in_channels: image channels.
        group: ``"gl2"`` (full affine) or ``"sl2"`` (area preserving).
        sampler: the training draws, a :class:`~geomol.nn.liegroup.GroupSampler` or its config node
            (``num_samples``, ``spd_std``, ``spd_law``, ``spd_sampling``, ``spd_cycle``, ``angles``,
            ``angle_range``, ``resample``; missing or null entries take GroupSampler's defaults: 10
            samples, ``spd_std`` √0.1, ``spd_law="geomol"`` (``P = exp(X)``; ``"authors"``: ``S = exp(X)``,
            ``g = S^½·R``, a quarter of the log-variance), ``spd_sampling="random"`` (i.i.d. log-normal;
            ``"quasi"``: deterministic Gaussian quantiles of a Halton set), ``spd_cycle=0`` (distinct SPD
            factors repeated over the angles; with a fixed set and a full grid of angles 1 keeps the
            logits exactly invariant to the grid's turns), ``angles="equidistant"`` (centred N-gon;
            ``"linspace"``: the authors' ``linspace(-π, π, N)``; ``"uniform"``), ``angle_range=1`` (fraction
            of the circle the turns cover), ``resample=True`` (False: train on one fixed set, which removes
            the sampling noise from the gradients); see :meth:`~geomol.nn.liegroup.LinearGroup2.sample`.
        eval_sampler: the eval-mode draws: a GroupSampler, or a config node whose null or missing entries are
            the training sampler's, except ``resample``, False unless given (True: the authors'
            ``sample_inference=True``, a new set at every eval pass from a stream of its own). A fixed
            eval set narrower than the training draws (``angle_range``) keeps every view of a test image
            turned by up to the difference inside the range of views seen in training, which a max over
            a bounded (not closed) set of views needs to stay in distribution.
        sample_sets: ``"shared"``: one set for all layers. ``"per_layer"``: the authors' ``SamplingWrapper``,
            where every sampled layer (lifting, each block, the final conv) draws its own set and reads its
            input as lying on the previous layer's draw: the lifting outputs on draw 0, block ``b`` (from 1)
            maps draw ``b - 1`` to itself, the final conv maps draw ``B`` to draw ``B + 1``. But block ``b``'s
            input lies on draw ``b - 2`` (``b >= 2``) and the final conv's on draw ``B - 1``: their kernels'
            relative elements are not those of the features' samples, so the network is no longer the
            Monte Carlo estimate of an equivariant one (with equidistant angles only the SPD factors
            differ between draws). Kept as an option to reproduce their code.
        seed: seed of the group-sample streams.
        channels: feature channels of every layer.
        num_blocks: residual group-conv blocks (``"geomol"``: each after a 2×2 spatial max-pool;
            ``"authors"``: each followed by LN, pool, GELU; their ``--nlayers`` is ``num_blocks + 1``).
        stem_kernel_size: lifting window (unpadded, as in the paper).
        kernel_size: group-conv window.
        hidden_features, siren_layers, omega_0: SIREN kernel networks (``siren_layers`` sine layers; the
            authors' ``--inr_nlayers 2`` is 3 of them).
        mask_radius, mask_slope, mask_type: kernel mask (``"smooth"``, ``"circular"`` or ``"authors"``; see
            :meth:`~geomol.nn.liegroup_conv.LiftingConv.mask`).
        offsets: kernel offset grid, ``"unit"`` (``±1``) or ``"affine_grid"`` (the authors' ``±(k-1)/k``).
        siren_bias_init: ``"uniform"`` or ``"zero"`` (the authors' zero hidden sine biases).
        sample_reduce: group convolutions ``"mean"`` or ``"sum"`` (the authors') over the input samples.
        angle_chart: the kernel's relative angle in ``"centred"`` ``(-π, π]`` or ``"positive"`` ``[0, 2π)``
            (the authors').
        mix_samples: group convolutions integrate over the samples (True, the paper) or act on each
            sample's slice alone (False: a max over transformed views of one CNN; see
            :class:`~geomol.nn.liegroup_conv.GroupConv`).
        transform: what the group samples act on in every layer: ``"kernel"`` (the paper: SIRENs
            evaluated at transformed offsets) or ``"signal"`` (images and feature maps resampled by the
            samples, kernels on the fixed pixel grid); the same network in the continuum, see
            :class:`~geomol.nn.liegroup_conv.LiftingConv`.
        layout: ``"geomol"`` or ``"authors"`` (see the module docstring).
        norm_affine: per-channel parameters in the feature norms (the authors' ``LayerNorm3d`` has none).
        conv_bias: per-channel biases in the lifting and group convolutions (None: unless
            ``zero_background``; the authors' have none).
        zero_background: bias-free convolutions, RMS norms (:class:`~geomol.nn.liegroup_conv.GroupRMSNorm`)
            and "full" convolutions (padding ``k - 1``: each map grows to hold a pattern's whole
            response), so an empty canvas region has exactly zero features, the zero padding continues
            it, and nothing is cut at the canvas edge: the logits do not depend on where on the canvas
            the digit sits (exactly, for shifts by multiples of the pooling stride, 2 per block). With the default
            layer norms and "same" padding the background has non-zero features and the padding
            makes an edge; in our runs 15 % of AffineCNN's pooled maxima sat on that edge, and digits
            moved near it lost 4-5 points of accuracy. Larger maps: about 2-2.5× the training time in our runs.
        head_hidden, head_norm, dropout: classifier MLP (``head_norm``: ``"batch"`` or ``"layer"``).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        group: str = "sl2",
        sampler: GroupSampler | Mapping[str, Any] | None = None,
        eval_sampler: GroupSampler | Mapping[str, Any] | None = None,
        sample_sets: str = "shared",
        seed: int = 0,
        channels: int = 40,
        num_blocks: int = 2,
        stem_kernel_size: int = 5,
        kernel_size: int = 5,
        hidden_features: int = 60,
        siren_layers: int = 3,
        omega_0: float = 10.0,
        mask_radius: float | None = 1.0,
        mask_slope: float = 2.0,
        mask_type: str = "smooth",
        offsets: str = "unit",
        siren_bias_init: str = "uniform",
        sample_reduce: str = "mean",
        angle_chart: str = "centred",
        mix_samples: bool = True,
        transform: str = "kernel",
        layout: str = "geomol",
        norm_affine: bool = True,
        conv_bias: bool | None = None,
        zero_background: bool = False,
        head_hidden: int = 256,
        head_norm: str = "batch",
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        # A bad sampler setting fails here, not at the first step.
        self.sampler = GroupSampler.build(sampler)
        self.eval_sampler = GroupSampler.build(eval_sampler, base=dataclasses.replace(self.sampler, resample=False))
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        if sample_sets not in _SAMPLE_SETS:
            raise ValueError(f"sample_sets must be one of {_SAMPLE_SETS}, got {sample_sets!r}")
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be non-negative, got {num_blocks}")
        if zero_background and conv_bias:
            raise ValueError("zero_background needs bias-free convolutions; conv_bias=True contradicts it")
        if sample_sets == "per_layer" and layout == "authors" and not mix_samples:
            raise ValueError(
                "sample_sets='per_layer' gives the final group conv different input and output sets, "
                "which needs mix_samples=True"
            )
        self.group = get_group(group)
        self.seed, self.zero_background = seed, zero_background
        self.sample_sets, self.layout = sample_sets, layout
        self._eval_draws = 0  # eval-mode draws so far (eval_sampler.resample); not saved, a fresh module starts over
        kernel_args = dict(
            hidden_features=hidden_features,
            num_layers=siren_layers,
            omega_0=omega_0,
            mask_radius=mask_radius,
            mask_slope=mask_slope,
            mask_type=mask_type,
            offsets=offsets,
            siren_bias_init=siren_bias_init,
            transform=transform,
            bias=(not zero_background) if conv_bias is None else conv_bias,
        )
        group_args = dict(kernel_args, mix_samples=mix_samples, sample_reduce=sample_reduce, angle_chart=angle_chart)
        stem_padding, padding = _paddings(stem_kernel_size, kernel_size, zero_background)
        self.lift = LiftingConv(
            self.group, in_channels, channels, stem_kernel_size, padding=stem_padding, **kernel_args
        )
        self.lift_norm = _norm(channels, zero_background, norm_affine)
        self.blocks = nn.ModuleList(
            _ResidualBlock(
                *(
                    GroupConv(self.group, channels, channels, kernel_size, padding=padding, **group_args)
                    for _ in range(2)
                ),
                channels,
                zero_background,
                norm_affine=norm_affine,
                act_before_add=layout == "authors",
            )
            for _ in range(num_blocks)
        )
        if layout == "authors":
            # GResNet: LN → pool → GELU after each block, then one more (unpadded) group conv → LN → GELU.
            self.block_norms = nn.ModuleList(_norm(channels, zero_background, norm_affine) for _ in range(num_blocks))
            final_padding = kernel_size - 1 if zero_background else 0
            self.final = GroupConv(self.group, channels, channels, kernel_size, padding=final_padding, **group_args)
            self.final_norm = _norm(channels, zero_background, norm_affine)
        self.head = _head(channels, head_hidden, num_classes, dropout, head_norm)
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.long))
        # One throwaway element of each law from the global random stream, as the settings check made before
        # GroupSampler checked them itself: seeded runs keep their random state (dropout masks, batch order).
        for law in (self.sampler, self.eval_sampler):
            dataclasses.replace(law, num_samples=1).sample(self.group)

    @property
    def num_sample_sets(self) -> int:
        """Sets one forward pass uses: 1 (``"shared"``), else one per sampled layer (lifting, blocks, final)."""
        if self.sample_sets == "shared":
            return 1
        return len(self.blocks) + 2 if self.layout == "authors" else max(len(self.blocks), 1)

    def _generator(self) -> torch.Generator:
        if self.training and self.sampler.resample:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.sample_step) + 1)
            self.sample_step += 1
        elif not self.training and self.eval_sampler.resample:
            # Offset by 2³¹ from the training stream (the CPU generator keeps only a seed's low 32 bits).
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + (1 << 31) + self._eval_draws)
            self._eval_draws += 1
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003)
        return generator

    def group_sample_sets(self) -> list[Tensor]:
        """This forward pass's sample sets ``[N, 2, 2]`` (float64), one per sampled layer with
        ``sample_sets="per_layer"``, else one; the first is :meth:`group_samples`'s."""
        generator = self._generator()
        sampler = self.sampler if self.training else self.eval_sampler
        sets = [sampler.sample(self.group, generator) for _ in range(self.num_sample_sets)]
        return [samples.to(self.sample_step.device) for samples in sets]

    def group_samples(self) -> Tensor:
        """This forward pass's samples ``[N, 2, 2]`` (float64; each layer casts what it derives)."""
        return self.group_sample_sets()[0]

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: images ``[B, C_in, H, W]`` -> logits ``[B, num_classes]``."""
        sets = self.group_sample_sets()
        if len(sets) == 1:  # "shared": every layer on the one set
            sets = sets * (len(self.blocks) + 2)
        h = F.gelu(self.lift_norm(self.lift(x, sets[0])))  # [B, C, N, H', W']
        if self.layout == "geomol":
            for b, block in enumerate(self.blocks):
                h = block(_pool(h, self.zero_background), sets[b])
        else:
            for b, (block, norm) in enumerate(zip(self.blocks, self.block_norms)):
                h = F.gelu(_pool(norm(block(h, sets[b])), self.zero_background))
            last = len(self.blocks)
            h = F.gelu(self.final_norm(self.final(h, sets[last], sets[last + 1])))
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
