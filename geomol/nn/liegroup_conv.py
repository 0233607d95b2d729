r"""Affine group convolutions on R² ⋊ GL⁺(2) and R² ⋊ SL(2) (Mironenco & Forré, ICLR 2024): the lifting
and group convolutions with SIREN kernels, their norms and pooling. The groups, their chart and their
samplers are in :mod:`geomol.nn.liegroup`.

Layers act on feature maps over R² × {group samples}, ``[B, C, N, H, W]``, and approximate the group
integrals over the ``N`` samples (the authors sum the Monte Carlo terms, ``sample_reduce="sum"``;
``"mean"`` divides by ``N``), with kernels given by a SIREN of the transformed offset and the chart
coordinates:

* lifting:  ``(k ⋆ f)(x, h) = ∫ k(h⁻¹(y - x)) f(y) dy / |det h|``
* group:    ``(k ⋆ f)(x, h) = ∫∫ k(h⁻¹(y - x), ξ⁻¹(h⁻¹h')) f(y, h') dy dμ(h') / |det h|``

The ``1/|det h|`` factor is the determinant correction of the Haar measure of R² ⋊ GL⁺(2) (it is 1
on SL(2)); with it both maps commute with ``f ↦ f(A⁻¹(· - t), A⁻¹ ·)`` for any affine ``(t, A)``.
As in the authors' implementation the Monte Carlo samples are not importance-weighted. Given a sample
set ``S``, the layers satisfy ``L(f∘A⁻¹, S) = L(f, A⁻¹S)∘A⁻¹`` exactly when ``A`` maps the pixel grid
and kernel window onto themselves (quarter turns) and up to the pixel grid otherwise; pooled outputs
become invariant as far as ``A⁻¹S`` and ``S`` are alike, i.e. as the samples fill the group (the
sampler's law is rotation invariant with uniform angles, and under the grid's turns with geomol's
equidistant ones; ``linspace(-π, π, N)`` repeats the half turn and is closed under no turn but the identity).

Conventions of the layers, authors' code (github.com/mirceamironenco/rgenn) vs geomol's own, and the
switches (the sampler's are in :mod:`geomol.nn.liegroup`):

=====================  ==========================================  ==========================================
switch                 authors                                     geomol
=====================  ==========================================  ==========================================
``angle_chart``        ``"positive"``: ``[0, 2π)``                 ``"centred"``: ``(-π, π]``
``mask_type``          ``"authors"``: hard disk on the offsets     ``"smooth"``: sigmoid taper on all
                       (SL(2)), sigmoid taper on all coordinates   coordinates
                       (GL⁺(2))
``offsets``            ``"affine_grid"``: ±(k-1)/k (±0.8, k=5)     ``"unit"``: ±1
``sample_reduce``      ``"sum"``                                   ``"mean"``
``siren_bias_init``    ``"zero"``: hidden sine biases 0            ``"uniform"``: PyTorch's default
=====================  ==========================================  ==========================================

The layers' defaults are geomol's (the equivariance tests pin them); ``experiment=affine_cnn_mnist``
selects the authors'.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .liegroup import _ANGLE_CHARTS, AngleChart, LinearGroup2, get_group

__all__ = [
    "kernel_offsets",
    "warp",
    "SirenKernel",
    "LiftingConv",
    "GroupConv",
    "GroupLayerNorm",
    "GroupRMSNorm",
    "pool_group",
    "pool_spatial",
]

MaskType = Literal["smooth", "circular", "authors"]
OffsetGrid = Literal["unit", "affine_grid"]
SampleReduce = Literal["mean", "sum"]
SirenBiasInit = Literal["uniform", "zero"]

_MASK_TYPES = ("smooth", "circular", "authors")
_OFFSET_GRIDS = ("unit", "affine_grid")
_SAMPLE_REDUCES = ("mean", "sum")
_SIREN_BIAS_INITS = ("uniform", "zero")


class SirenKernel(nn.Module):
    """SIREN (Sitzmann et al. 2020): ``sin(ω₀(Wx + b))`` layers, then a linear map to the kernel values.

    Weights follow SIREN (first layer ``U(±1/in)``, hidden ``U(±√(6/in)/ω₀)``); the last layer is
    ``U(±√(6/hidden)/√fan_in)``, scaled by the fan-in of the convolution it feeds, and starts unbiased,
    as in the authors' code (rgenn ``SineLayer`` and ``INR``, ``final_gain=6``). Sine-layer biases:
    ``bias_init="zero"`` is the authors' (hidden sine layers start at 0, the first keeps PyTorch's
    ``U(±1/√in)``); ``"uniform"`` leaves PyTorch's ``U(±1/√in)`` on every sine layer (geomol's
    earlier default: random phases ``ω₀·b`` of up to ``ω₀/√hidden`` in the hidden layers).

    Args:
        in_features: coordinates per point (2 offsets + chart dimension).
        out_features: kernel entries per point (``C_out·C_in``).
        hidden_features: width of the sine layers.
        num_layers: number of sine layers (the authors' ``inr_nlayers + 1``).
        omega_0: frequency of the sine layers.
        fan_in: fan-in of the convolution (``C_in·k²``) used to scale the last layer.
        bias_init: ``"uniform"`` or ``"zero"`` (see above).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 32,
        num_layers: int = 3,
        omega_0: float = 10.0,
        fan_in: int = 1,
        bias_init: SirenBiasInit = "uniform",
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"a SIREN needs at least one sine layer, got num_layers={num_layers}")
        if omega_0 <= 0:
            raise ValueError(f"omega_0 must be positive, got {omega_0}")
        if bias_init not in _SIREN_BIAS_INITS:
            raise ValueError(f"siren bias_init must be one of {_SIREN_BIAS_INITS}, got {bias_init!r}")
        self.omega_0, self.bias_init = omega_0, bias_init
        sizes = [in_features] + [hidden_features] * num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(hidden_features, out_features)
        with torch.no_grad():
            for k, layer in enumerate(self.layers):
                bound = 1.0 / layer.in_features if k == 0 else math.sqrt(6.0 / layer.in_features) / omega_0
                layer.weight.uniform_(-bound, bound)
                if k > 0 and bias_init == "zero":
                    layer.bias.zero_()
            bound = math.sqrt(6.0 / hidden_features) / math.sqrt(fan_in)
            self.out.weight.uniform_(-bound, bound)
            self.out.bias.zero_()

    def forward(self, coords: Tensor) -> Tensor:  # [..., in_features] -> [..., out_features]
        h = coords
        for layer in self.layers:
            h = torch.sin(self.omega_0 * layer(h))
        return self.out(h)


class _SampledConv(nn.Module):
    """Shared parts of the lifting and group convolutions: offset grid, SIREN, mask, bias."""

    def __init__(
        self,
        group: str | LinearGroup2,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        padding: int,
        bias: bool,
        chart_features: int,
        hidden_features: int,
        num_layers: int,
        omega_0: float,
        mask_radius: float | None,
        mask_slope: float,
        transform: str,
        mask_type: MaskType = "smooth",
        offsets: OffsetGrid = "unit",
        siren_bias_init: SirenBiasInit = "uniform",
    ) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and at least 3, got {kernel_size}")
        if transform not in ("kernel", "signal"):
            raise ValueError(f"transform must be 'kernel' or 'signal', got {transform!r}")
        if mask_type not in _MASK_TYPES:
            raise ValueError(f"mask_type must be one of {_MASK_TYPES}, got {mask_type!r}")
        if offsets not in _OFFSET_GRIDS:
            raise ValueError(f"offsets must be one of {_OFFSET_GRIDS}, got {offsets!r}")
        self.transform, self.chart_features = transform, chart_features
        self.group = get_group(group)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding = kernel_size, padding
        self.mask_radius, self.mask_slope = mask_radius, mask_slope
        self.mask_type = mask_type
        if mask_type == "authors":  # rgenn GConv2d: circular_mask if volume preserving, else circular_mask_smooth
            mask_type = "circular" if self.group.volume_preserving else "smooth"
        self.resolved_mask_type: str = mask_type
        self.offset_grid = offsets
        self.register_buffer("offsets", kernel_offsets(kernel_size, offsets))
        self.siren = SirenKernel(
            2 + chart_features,
            out_channels * in_channels,
            hidden_features,
            num_layers,
            omega_0,
            fan_in=in_channels * kernel_size**2,
            bias_init=siren_bias_init,
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def transformed_offsets(self, samples: Tensor) -> tuple[Tensor, Tensor]:
        """``h⁻¹·u`` for every sample and window offset ``[N, k², 2]`` and the Haar determinant
        correction ``1/|det h|`` ``[N]`` (ones on SL(2)).

        With ``transform="signal"`` the kernel is not transformed: the offsets ``u`` themselves and ones
        (the substitution ``u = h·v`` cancels the determinant). Group arithmetic runs in float64 (the
        tensors are tiny); results come in the layer's dtype.
        """
        if self.transform == "signal":
            n = samples.shape[0]
            return self.offsets.expand(n, *self.offsets.shape), self.offsets.new_ones(n)
        inv = self.group.inverse(samples.double())
        u = self.group.act(inv.unsqueeze(1), self.offsets.double()).to(self.offsets.dtype)
        volume = torch.linalg.det(inv).abs().to(u.dtype)
        return u, torch.ones_like(volume) if self.group.volume_preserving else volume

    def mask(self, coords: Tensor) -> Tensor:  # [..., D] -> [..., 1]
        """The kernel's mask on its coordinates ``[offsets (2), chart (dim, group convolutions only)]``.

        ``mask_type="smooth"``: ``σ(slope·(radius - |coords|))`` over all coordinates, offsets and chart
        (the authors' ``circular_mask_smooth``, which their code uses on GL⁺(2) only; radius 1, slope 2).
        ``"circular"``: the hard disk ``|h⁻¹u| <= radius`` on the two spatial coordinates alone, the
        chart coordinates ignored (the authors' ``circular_mask``, used on SL(2) and all volume
        preserving groups). ``"authors"``: circular on SL(2), smooth on GL⁺(2). A sharper smooth mask
        (e.g. 0.75, 10) keeps the kernel off the square window's edges, whose cut breaks equivariance,
        at the price of a smaller effective kernel (slower training in our runs).
        """
        if self.mask_radius is None:
            return torch.ones_like(coords[..., :1])
        if self.resolved_mask_type == "circular":
            return (coords[..., :2].norm(dim=-1, keepdim=True) <= self.mask_radius).to(coords.dtype)
        return torch.sigmoid(self.mask_slope * (self.mask_radius - coords.norm(dim=-1, keepdim=True)))

    def _add_bias(self, y: Tensor) -> Tensor:  # [B, C_out, N, H, W]
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.group.name}, {self.in_channels} -> {self.out_channels}, kernel_size={self.kernel_size}, "
            f"padding={self.padding}, mask_type={self.mask_type!r}, mask_radius={self.mask_radius}, "
            f"mask_slope={self.mask_slope}, offsets={self.offset_grid!r}, transform={self.transform!r}"
            + (
                f", sample_reduce={self.sample_reduce!r}, angle_chart={self.angle_chart!r}"
                if self.chart_features
                else ""
            )
        )


def kernel_offsets(kernel_size: int, grid: OffsetGrid = "unit", dtype: torch.dtype | None = None) -> Tensor:
    """Offsets ``(dx, dy)`` of a ``k×k`` window, ``[k², 2]`` row-major (``dx`` along columns, ``dy`` along rows).

    ``"unit"`` (geomol): pixel centres in units of the half-width ``(k - 1)/2``, so the corners' centres
    are at ``±1`` and the unit disk touches the window's edge centres. ``"affine_grid"`` (the authors'
    ``get_grid2d``, ``F.affine_grid`` with ``align_corners=False``): units of ``k/2``, the half-width up
    to the pixels' outer edges, so the centres span ``±(k - 1)/k`` (±0.8 for k = 5) and the circular
    mask of radius 1 drops exactly the 4 corner pixels of a 5×5 window.
    """
    if grid not in _OFFSET_GRIDS:
        raise ValueError(f"offsets must be one of {_OFFSET_GRIDS}, got {grid!r}")
    r = torch.arange(kernel_size, dtype=dtype or torch.get_default_dtype()) - (kernel_size - 1) / 2
    r = r / ((kernel_size - 1) / 2 if grid == "unit" else kernel_size / 2)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack((dx, dy), -1).reshape(-1, 2)


def warp(x: Tensor, g: Tensor) -> Tensor:
    """Resample images at ``g·y``: ``[B, C, H, W]``, ``g [M, 2, 2]`` or ``[B, M, 2, 2]`` -> ``[B, C, M, H, W]``
    with ``out[b, :, m](y) = x[b](g_m·y)``, ``y`` in pixel units about the canvas centre (bilinear, zeros
    outside). ``g [M, 2, 2]`` applies the same maps to every image.

    Pixel centres map to pixel centres under quarter turns, so those warps are exact. (``affine_grid`` +
    ``grid_sample`` do the resampling; only the pixel-unit conjugation and the batching are ours.)
    """
    b, c, h, w = x.shape
    shared = g.dim() == 3
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64, device=g.device)
    # Normalized coordinates (x, y) ∈ [-1, 1]: n = S·p with S = diag(2/W, 2/H); the map is S g S⁻¹.
    theta = scale[:, None] * g.double() / scale[None, :]  # [(B,) M, 2, 2]
    theta = theta.reshape(-1, 2, 2)
    m = theta.shape[0] if shared else g.shape[1]
    theta = torch.cat((theta, theta.new_zeros(theta.shape[0], 2, 1)), dim=-1).to(x.dtype)
    grid = F.affine_grid(theta, [theta.shape[0], 1, h, w], align_corners=False)  # [(B·)M, H, W, 2]
    if shared:
        images, grid = x.reshape(1, b * c, h, w), grid.reshape(1, m * h, w, 2)
    else:
        images, grid = x, grid.reshape(b, m * h, w, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(b, c, m, h, w)


class LiftingConv(_SampledConv):
    r"""Lifting convolution from images on R² to feature maps on R² × {group samples}.

    ``(k ⋆ f)(x, h_i) = Σ_u k(h_i⁻¹u) m(|h_i⁻¹u|) f(x + u) / |det h_i|`` over the ``k×k`` window, the
    pixel-grid form of ``∫ k(h⁻¹(y - x)) f(y) dy / |det h|``.

    ``transform`` picks what the group samples act on in that discretization. ``"kernel"`` (the paper):
    the SIREN is evaluated at the transformed offsets ``h⁻¹u`` and the output is in the image's frame, as
    above. ``"signal"``: the substitution ``u = h·v`` gives ``∫ k(v) f(x + h·v) dv``, and the output is
    stored in each sample's own frame, ``G(x', h) = (k ⋆ f)(h·x', h) = Σ_v k(v) m(|v|) f(h·(x' + v))``: the
    image is resampled at ``h·y`` (bilinear, about the canvas centre) and convolved with the kernel on the
    fixed pixel grid. Both are the same operator in the continuum; on pixels, ``"signal"`` only ever
    evaluates the SIREN where it is trained (a ``k×k`` kernel sampled at a rotated or sheared grid is a
    rough copy of the rotated kernel, a resampled smooth image a close copy of the rotated image). Maxima
    over space and samples are the same in either frame.

    Args:
        group: ``"gl2"``, ``"sl2"`` or a :class:`LinearGroup2`.
        in_channels, out_channels: channels.
        kernel_size: odd window size ``k``.
        padding: zero padding in space.
        bias: learnable per-channel bias.
        hidden_features, num_layers, omega_0: the SIREN kernel network.
        mask_radius: radius of the kernel's mask; None for no mask.
        mask_slope: steepness of the smooth mask's edge.
        mask_type: ``"smooth"`` (sigmoid taper on all the kernel's coordinates), ``"circular"`` (hard disk
            on the spatial offsets) or ``"authors"`` (circular on SL(2), smooth on GL⁺(2)); see
            :meth:`mask`.
        offsets: the window's offset grid, ``"unit"`` (``±1``) or ``"affine_grid"`` (the authors',
            ``±(k - 1)/k``); see :func:`kernel_offsets`.
        siren_bias_init: ``"uniform"`` or ``"zero"`` (the authors' zero hidden sine biases); see
            :class:`SirenKernel`.
        transform: ``"kernel"`` (transformed kernels, image frame) or ``"signal"`` (resampled image,
            each sample's frame).

    Shapes:
        x ``[B, C_in, H, W]``, samples ``[N, 2, 2]`` -> ``[B, C_out, N, H', W']``
    """

    def __init__(
        self,
        group: str | LinearGroup2,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        padding: int = 0,
        bias: bool = True,
        hidden_features: int = 32,
        num_layers: int = 3,
        omega_0: float = 10.0,
        mask_radius: float | None = 1.0,
        mask_slope: float = 2.0,
        transform: str = "kernel",
        mask_type: MaskType = "smooth",
        offsets: OffsetGrid = "unit",
        siren_bias_init: SirenBiasInit = "uniform",
    ) -> None:
        super().__init__(
            group,
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            padding=padding,
            bias=bias,
            chart_features=0,
            hidden_features=hidden_features,
            num_layers=num_layers,
            omega_0=omega_0,
            mask_radius=mask_radius,
            mask_slope=mask_slope,
            transform=transform,
            mask_type=mask_type,
            offsets=offsets,
            siren_bias_init=siren_bias_init,
        )

    def kernel(self, samples: Tensor) -> Tensor:  # [N, 2, 2] -> [C_out, N, C_in, k, k]
        u, volume = self.transformed_offsets(samples)
        values = self.siren(u) * self.mask(u) * volume[:, None, None]  # [N, k², C_out·C_in]
        k = self.kernel_size
        values = values.view(-1, k, k, self.out_channels, self.in_channels)
        return values.permute(3, 0, 4, 1, 2)

    def forward(self, x: Tensor, samples: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"LiftingConv expects images [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if self.transform == "signal":
            # One kernel on the fixed grid for every sample: convolve each resampled view with it.
            num = samples.shape[0]
            views = warp(x, samples).transpose(1, 2).flatten(0, 1)  # [B·N, C_in, H, W]
            y = F.conv2d(views, self.kernel(samples[:1])[:, 0], padding=self.padding)  # [B·N, C_out, H', W']
            y = y.view(x.shape[0], num, self.out_channels, *y.shape[-2:]).transpose(1, 2)
            return self._add_bias(y)
        kernel = self.kernel(samples)
        num = kernel.shape[1]
        weight = kernel.reshape(self.out_channels * num, self.in_channels, *kernel.shape[-2:])
        y = F.conv2d(x, weight, padding=self.padding)
        return self._add_bias(y.view(x.shape[0], self.out_channels, num, *y.shape[-2:]))


class GroupConv(_SampledConv):
    r"""Group convolution between feature maps on R² × {group samples}, by Monte Carlo over the input samples.

    ``(k ⋆ f)(x, h_i) = w Σ_j Σ_u k(c) m(c) f(x + u, h_j) / |det h_i|`` with ``c = [h_i⁻¹u, ξ⁻¹(h_i⁻¹h_j)]``,
    the estimate of ``∫∫ k(h⁻¹(y - x), ξ⁻¹(h⁻¹h')) f(y, h') dy dμ(h') / |det h|`` with ``h_j`` the
    input's samples and ``h_i`` the output's (the same ones by default, as a residual connection needs).
    The Monte Carlo weight is ``w = 1/N_in`` with ``sample_reduce="mean"`` and ``w = 1`` with ``"sum"``
    (the authors' ``GConv2d``: their kernel is not divided by the number of samples, so its output is
    ``N_in`` times the mean's). ``padding=None`` keeps the spatial size.

    With ``mix_samples=False`` the kernel is supported at ``h_i⁻¹h_j = e`` only: every sample's slice gets
    its own transformed spatial convolution ``Σ_u k(h_i⁻¹u, ξ⁻¹(e)) f(x + u, h_i) / |det h_i|``. A network
    of such layers computes, on each sample ``h``, one shared CNN on the view ``h⁻¹·f`` (its slices never
    meet before the final pooling, so none can tell where in the set it lies, as boundary samples of a
    bounded set otherwise can); the global max over samples is then a max over transformed views
    (TI-pooling, Laptev et al. 2016), at a cost linear instead of quadratic in ``N``.

    ``transform="signal"`` takes and gives feature maps in each sample's own frame, ``G(x', h) = f(h·x', h)``
    (as :class:`LiftingConv` with ``transform="signal"`` makes them). With ``u = h_i·v`` the layer becomes
    ``G'(x', h_i) = w Σ_j Σ_v k(v, ξ⁻¹(h_i⁻¹h_j)) m G(h_j⁻¹h_i·(x' + v), h_j)``: every input slice is
    resampled by the relative elements ``h_j⁻¹h_i`` and convolved with kernels on the fixed pixel grid (no
    determinant factor; it cancels). Without mixing, ``h_j⁻¹h_i = e`` and the layer is one ordinary
    convolution shared by all slices.

    Args:
        group: ``"gl2"``, ``"sl2"`` or a :class:`LinearGroup2`.
        in_channels, out_channels: channels.
        kernel_size: odd window size ``k``.
        padding: zero padding in space.
        bias: learnable per-channel bias.
        hidden_features, num_layers, omega_0: the SIREN kernel network.
        mask_radius: radius of the kernel's mask; None for no mask.
        mask_slope: steepness of the smooth mask's edge.
        mask_type: ``"smooth"`` (sigmoid taper on all the kernel's coordinates), ``"circular"`` (hard disk
            on the spatial offsets) or ``"authors"`` (circular on SL(2), smooth on GL⁺(2)); see
            :meth:`mask`.
        offsets: the window's offset grid, ``"unit"`` (``±1``) or ``"affine_grid"`` (the authors',
            ``±(k - 1)/k``); see :func:`kernel_offsets`.
        siren_bias_init: ``"uniform"`` or ``"zero"`` (the authors' zero hidden sine biases); see
            :class:`SirenKernel`.
        mix_samples: integrate over the input samples (True) or keep each sample's slice apart (False;
            then ``samples_out`` must be ``samples_in``).
        transform: ``"kernel"`` (transformed kernels, image frame) or ``"signal"`` (resampled feature maps,
            each sample's frame); see :class:`LiftingConv`.
        sample_reduce: ``"mean"`` (``1/N_in`` Monte Carlo weight) or ``"sum"`` (the authors'); only the
            mixing path integrates over samples.
        angle_chart: the relative elements' angle interval in the kernel's chart input, ``"centred"``
            ``(-π, π]`` or ``"positive"`` ``[0, 2π)`` (the authors'); see :meth:`LinearGroup2.log_chart`.

    Shapes:
        x ``[B, C_in, N_in, H, W]``, samples_in ``[N_in, 2, 2]``, samples_out ``[N_out, 2, 2]``
        -> ``[B, C_out, N_out, H', W']``
    """

    def __init__(
        self,
        group: str | LinearGroup2,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        padding: int | None = None,
        bias: bool = True,
        hidden_features: int = 32,
        num_layers: int = 3,
        omega_0: float = 10.0,
        mask_radius: float | None = 1.0,
        mask_slope: float = 2.0,
        mix_samples: bool = True,
        transform: str = "kernel",
        mask_type: MaskType = "smooth",
        offsets: OffsetGrid = "unit",
        siren_bias_init: SirenBiasInit = "uniform",
        sample_reduce: SampleReduce = "mean",
        angle_chart: AngleChart = "centred",
    ) -> None:
        group = get_group(group)
        if sample_reduce not in _SAMPLE_REDUCES:
            raise ValueError(f"sample_reduce must be one of {_SAMPLE_REDUCES}, got {sample_reduce!r}")
        if angle_chart not in _ANGLE_CHARTS:
            raise ValueError(f"angle_chart must be one of {_ANGLE_CHARTS}, got {angle_chart!r}")
        self.mix_samples = mix_samples
        self.sample_reduce, self.angle_chart = sample_reduce, angle_chart
        super().__init__(
            group,
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            padding=kernel_size // 2 if padding is None else padding,
            bias=bias,
            chart_features=group.dim,
            hidden_features=hidden_features,
            num_layers=num_layers,
            omega_0=omega_0,
            mask_radius=mask_radius,
            mask_slope=mask_slope,
            transform=transform,
            mask_type=mask_type,
            offsets=offsets,
            siren_bias_init=siren_bias_init,
        )

    def kernel(self, samples_in: Tensor, samples_out: Tensor) -> Tensor:
        """Monte Carlo weights ``[C_out, N_out, C_in, N_in, k, k]`` (``w`` included: ``1/N_in`` or 1)."""
        n_out, n_in, k2 = samples_out.shape[0], samples_in.shape[0], self.offsets.shape[0]
        u, volume = self.transformed_offsets(samples_out)  # [N_out, k², 2], [N_out]
        relative = self._relative(samples_out, samples_in)  # h_i⁻¹ h_j [N_out, N_in, 2, 2]
        chart = self.group.log_chart(relative, self.angle_chart).to(u.dtype)  # ξ⁻¹(h_i⁻¹ h_j) [N_out, N_in, dim]
        coords = torch.cat(
            (u.unsqueeze(1).expand(n_out, n_in, k2, 2), chart.unsqueeze(2).expand(n_out, n_in, k2, chart.shape[-1])),
            dim=-1,
        )
        # The smooth mask (geomol's default on both groups, the authors' on GL⁺(2) only) acts on the joint
        # coordinates, so it also makes the kernel local in the group: the sampling density then varies
        # little across its support, which keeps the unweighted Monte Carlo sum close to equivariant. The
        # authors' SL(2) mask is a hard disk on the offsets alone, and leaves the kernel global in the group.
        reduce = 1.0 / n_in if self.sample_reduce == "mean" else 1.0
        weight = self.mask(coords) * (volume[:, None, None, None] * reduce)
        values = self.siren(coords) * weight  # [N_out, N_in, k², C_out·C_in]
        k = self.kernel_size
        values = values.view(n_out, n_in, k, k, self.out_channels, self.in_channels)
        return values.permute(4, 0, 5, 1, 2, 3)

    def forward(self, x: Tensor, samples_in: Tensor, samples_out: Tensor | None = None) -> Tensor:
        samples_out = samples_in if samples_out is None else samples_out
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[2] != samples_in.shape[0]:
            raise ValueError(
                f"GroupConv expects features [B, {self.in_channels}, {samples_in.shape[0]}, H, W] "
                f"(one slice per input sample), got {tuple(x.shape)}"
            )
        if not self.mix_samples:
            if samples_out is not samples_in and not torch.equal(samples_out, samples_in):
                raise ValueError(
                    "GroupConv with mix_samples=False maps each sample to itself; samples_out must be samples_in"
                )
            if self.transform == "signal":
                weight = self.diagonal_kernel(samples_in[:1])[0]  # [C_out, C_in, k, k], the same for all
                b, c_in, n = x.shape[:3]
                y = F.conv2d(x.transpose(1, 2).flatten(0, 1), weight, padding=self.padding)
                return self._add_bias(y.view(b, n, self.out_channels, *y.shape[-2:]).transpose(1, 2))
            kernel = self.diagonal_kernel(samples_in)  # [N, C_out, C_in, k, k]
            n, c_out, c_in, k, _ = kernel.shape
            y = F.conv2d(
                x.transpose(1, 2).flatten(1, 2), kernel.reshape(n * c_out, c_in, k, k), padding=self.padding, groups=n
            )
            return self._add_bias(y.view(x.shape[0], n, c_out, *y.shape[-2:]).transpose(1, 2))
        kernel = self.kernel(samples_in, samples_out)
        c_out, n_out, c_in, n_in, k, _ = kernel.shape
        if self.transform == "signal":
            # relative[j, i] = h_j⁻¹ h_i: slice j resampled into every output sample's frame.
            relative = self._relative(samples_in, samples_out)
            b, _, _, h, w = x.shape
            views = warp(x.transpose(1, 2).flatten(0, 1), relative.repeat(b, 1, 1, 1))  # [B·N_in, C_in, N_out, H, W]
            views = views.view(b, n_in, c_in, n_out, h, w).permute(0, 3, 2, 1, 4, 5).reshape(b, -1, h, w)
            weight = kernel.transpose(0, 1).reshape(n_out * c_out, c_in * n_in, k, k)
            y = F.conv2d(views, weight, padding=self.padding, groups=n_out)  # [B, N_out·C_out, H', W']
            return self._add_bias(y.view(b, n_out, c_out, *y.shape[-2:]).transpose(1, 2))
        y = F.conv2d(x.flatten(1, 2), kernel.reshape(c_out * n_out, c_in * n_in, k, k), padding=self.padding)
        return self._add_bias(y.view(x.shape[0], c_out, n_out, *y.shape[-2:]))

    def _relative(self, a: Tensor, b: Tensor) -> Tensor:  # [N_a, 2, 2], [N_b, 2, 2] -> [N_a, N_b, 2, 2]
        """Every ``a_i⁻¹ b_j`` in float64."""
        return self.group.compose(self.group.inverse(a.double()).unsqueeze(1), b.double()[None])

    def diagonal_kernel(self, samples: Tensor) -> Tensor:
        """Weights ``[N, C_out, C_in, k, k]`` of the ``h_i⁻¹h_j = e`` terms, chart coordinates ``ξ⁻¹(e) = 0``."""
        u, volume = self.transformed_offsets(samples)  # [N, k², 2], [N]
        coords = torch.cat((u, u.new_zeros(*u.shape[:2], self.group.dim)), dim=-1)
        values = self.siren(coords) * self.mask(coords) * volume[:, None, None]  # [N, k², C_out·C_in]
        k = self.kernel_size
        return values.view(-1, k, k, self.out_channels, self.in_channels).permute(0, 3, 4, 1, 2)


class GroupLayerNorm(nn.Module):
    """Layer norm over everything but the batch (channels, group samples, space), per-channel affine.

    Statistics over whole feature maps are invariant under the group action on the samples and on
    space, so the normalization keeps equivariance; works for ``[B, C, N, H, W]`` and ``[B, C, H, W]``.
    With ``affine=False`` it is the authors' ``LayerNorm3d`` (``F.layer_norm`` over ``(C, N, H, W)``, no
    parameters).

    Args:
        channels: number of channels ``C`` (dimension 1).
        eps: added to the variance.
        affine: learnable per-channel scale and shift.
    """

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: Tensor) -> Tensor:  # [B, C, ...] -> [B, C, ...]
        x = F.layer_norm(x, x.shape[1:], eps=self.eps)
        if self.weight is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class GroupRMSNorm(nn.Module):
    """RMS norm over everything but the batch (channels, group samples, space), per-channel scale, no shift.

    Unlike :class:`GroupLayerNorm` it maps zeros to zeros: in a network of bias-free convolutions,
    these norms and activations with ``f(0) = 0`` (GELU), an empty region of the canvas has exactly
    zero features, the same value as the zero padding. The feature maps then carry no canvas-edge
    artefacts, and a pattern's features do not depend on where on the canvas it sits (the statistic
    is a sum over the whole map, unchanged by moving the content as long as it stays on the canvas).

    Args:
        channels: number of channels ``C`` (dimension 1).
        eps: added to the mean square.
        affine: learnable per-channel scale.
    """

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None

    def forward(self, x: Tensor) -> Tensor:  # [B, C, ...] -> [B, C, ...]
        x = F.rms_norm(x, x.shape[1:], eps=self.eps)
        return x if self.weight is None else x * self.weight.view((1, -1) + (1,) * (x.dim() - 2))


def pool_group(x: Tensor, reduce: Literal["max", "mean"] = "max") -> Tensor:
    """Pool over the group samples: ``[B, C, N, H, W] -> [B, C, H, W]`` (invariant to relabelling them)."""
    if reduce == "max":
        return x.amax(dim=2)
    if reduce == "mean":
        return x.mean(dim=2)
    raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")


def pool_spatial(x: Tensor, kernel_size: int = 2) -> Tensor:
    """Max-pool space, each group sample on its own: ``[B, C, N, H, W] -> [B, C, N, H/k, W/k]``."""
    b, c, n = x.shape[:3]
    y = F.max_pool2d(x.flatten(1, 2), kernel_size)
    return y.view(b, c, n, *y.shape[-2:])
