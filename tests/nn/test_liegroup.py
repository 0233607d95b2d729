import math

import pytest
import torch
import torch.nn.functional as F

from geomol.nn.liegroup import GL2, SL2, GroupSampler, get_group, spd_log, sym_exp
from geomol.nn.liegroup_conv import (
    GroupConv,
    GroupLayerNorm,
    GroupRMSNorm,
    LiftingConv,
    SirenKernel,
    kernel_offsets,
    pool_group,
    pool_spatial,
    warp,
)

GROUPS = [GL2(), SL2()]
IDS = ["gl2", "sl2"]


def _samples(group, n=64, seed=0, spd_std=0.8):
    gen = torch.Generator().manual_seed(seed)
    return group.sample(n, spd_std=spd_std, angles="uniform", generator=gen)


def test_sym_exp_and_spd_log_match_torch():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(50, 2, 2, dtype=torch.float64, generator=gen)
    x = a + a.mT
    x[:5] = 0.3 * torch.eye(2, dtype=torch.float64)  # ρ = 0: the Taylor branches
    x[5:10] += 1e-7 * torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(sym_exp(x), torch.linalg.matrix_exp(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(spd_log(torch.linalg.matrix_exp(x)), x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("group", GROUPS, ids=IDS)
def test_polar_decomposition_and_chart_round_trips(group):
    g = _samples(group)
    p, r = group.polar(g)
    eye = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(p @ r, g, rtol=0, atol=1e-12)
    torch.testing.assert_close(p, p.mT, rtol=0, atol=0)
    assert bool((torch.linalg.eigvalsh(p) > 0).all())
    torch.testing.assert_close(r @ r.mT, eye.expand_as(r), rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(len(r), dtype=torch.float64))
    # ξ(ξ⁻¹(g)) = g, and ξ⁻¹(ξ(v)) = v on the chart's domain (angle in (-π, π)).
    v = group.log_chart(g)
    assert v.shape == (len(g), group.dim)
    torch.testing.assert_close(group.exp_chart(v), g, rtol=0, atol=1e-12)
    v = torch.randn(64, group.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v[:, -1] = math.pi * (2 * torch.rand(64, dtype=torch.float64) - 1) * 0.999
    torch.testing.assert_close(group.log_chart(group.exp_chart(v)), v, rtol=0, atol=1e-11)
    # The chart is centred: ξ⁻¹(identity) = 0.
    torch.testing.assert_close(group.log_chart(group.identity(1)), torch.zeros(1, group.dim, dtype=torch.float64))


@pytest.mark.parametrize("group", GROUPS, ids=IDS)
def test_group_axioms_on_samples(group):
    a, b, c = (_samples(group, 32, seed) for seed in range(3))
    e = group.identity(32)
    torch.testing.assert_close(group.compose(group.compose(a, b), c), group.compose(a, group.compose(b, c)))
    torch.testing.assert_close(group.compose(a, group.inverse(a)), e, rtol=0, atol=1e-12)
    torch.testing.assert_close(group.compose(group.inverse(a), a), e, rtol=0, atol=1e-12)
    torch.testing.assert_close(group.compose(a, e), a, rtol=0, atol=0)
    torch.testing.assert_close(group.inverse(a), torch.linalg.inv(a))
    assert group.contains(group.compose(a, b)) and group.contains(group.inverse(c))
    det = torch.linalg.det(group.compose(a, b))
    if isinstance(group, SL2):
        torch.testing.assert_close(det, torch.ones_like(det), rtol=0, atol=1e-12)
        assert not group.contains(1.1 * a)
    else:
        assert bool((det > 0).all()) and det.std() > 0.1  # the SPD factor really scales area
    # act is a left action on R² coordinates.
    x = torch.randn(32, 2, dtype=torch.float64)
    torch.testing.assert_close(group.act(a, group.act(b, x)), group.act(group.compose(a, b), x))


@pytest.mark.parametrize("group", GROUPS, ids=IDS)
def test_sampler_is_seeded_and_log_normal(group):
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = group.sample(5000, spd_std=0.3, angles="uniform", generator=gen())
    b = group.sample(5000, spd_std=0.3, angles="uniform", generator=gen())
    assert torch.equal(a, b)
    v = group.log_chart(a)
    # log P is an isotropic Gaussian with the requested std in the chart's coordinates.
    std = v[:, :-1].std(dim=0)
    torch.testing.assert_close(std, torch.full_like(std, 0.3), rtol=0.05, atol=0)
    assert v[:, -1].min() < -3.0 and v[:, -1].max() > 3.0
    grid = group.log_chart(group.sample(8, spd_std=0.0, angles="equidistant"))
    expected = torch.arange(-7, 8, 2, dtype=torch.float64) * math.pi / 8  # a regular octagon of turns
    torch.testing.assert_close(grid[:, -1], expected)
    torch.testing.assert_close(grid[:, :-1], torch.zeros(8, group.dim - 1, dtype=torch.float64))
    narrow = group.log_chart(group.sample(3, spd_std=0.0, angle_range=0.25))[:, -1]
    torch.testing.assert_close(narrow, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) * math.pi / 6)
    uniform = group.log_chart(group.sample(500, angles="uniform", angle_range=0.1, generator=gen()))[:, -1]
    assert uniform.abs().max() <= 0.1 * math.pi and uniform.abs().max() > 0.09 * math.pi


@pytest.mark.parametrize("group", GROUPS, ids=IDS)
def test_quasi_spd_sampler_is_deterministic_and_matches_the_log_normal_law(group):
    """The Halton-quantile SPD factor ignores the generator, stays in the group, and its chart
    coordinates match the Gaussian law's mean and std better than the same number of i.i.d. draws do on average."""
    draw = lambda n, gen=None: group.sample(n, spd_std=0.3, spd_sampling="quasi", generator=gen)  # noqa: E731
    a = draw(256)
    assert torch.equal(a, draw(256, torch.Generator().manual_seed(5))) and group.contains(a)
    v = group.log_chart(a)[:, :-1]
    # The SPD factors are a prefix of one sequence: more samples refine the set.
    torch.testing.assert_close(group.log_chart(draw(16))[:, :-1], v[:16])
    quasi_error = (v.mean(0).abs().max() + (v.std(0) - 0.3).abs().max()).item()
    random_errors = []
    for seed in range(8):
        w = group.log_chart(group.sample(256, spd_std=0.3, generator=torch.Generator().manual_seed(seed)))[:, :-1]
        random_errors.append((w.mean(0).abs().max() + (w.std(0) - 0.3).abs().max()).item())
    random_error = sum(random_errors) / len(random_errors)
    assert quasi_error < 0.02 and quasi_error < 0.5 * random_error, (quasi_error, random_errors)
    # Each coordinate's values are distinct Gaussian quantiles (no repeated SPD factor).
    assert len(torch.unique(v[:, 0])) == 256
    with pytest.raises(ValueError, match="spd_sampling"):
        group.sample(4, spd_sampling="sobol")


@pytest.mark.parametrize("group", GROUPS, ids=IDS)
def test_spd_cycle_closes_the_set_under_turns_and_keeps_the_law(group):
    """With c SPD factors repeated right of N equidistant turns, a left turn by c grid steps permutes the
    samples; the SPD factor of the polar form P·R is then R exp(X) Rᵀ, which has the law of exp(X)."""
    num, cycle = 12, 3
    g = group.sample(num, spd_std=0.4, spd_sampling="quasi", spd_cycle=cycle)
    assert group.contains(g)
    turn = group.exp_chart(torch.tensor([0.0] * (group.dim - 1) + [2 * math.pi * cycle / num], dtype=torch.float64))
    torch.testing.assert_close(group.compose(turn, g), torch.roll(g, -cycle, dims=0))
    # The same law as the independent sampler: isotropic Gaussian chart coordinates of log P.
    gen = torch.Generator().manual_seed(3)
    v = group.log_chart(group.sample(4000, spd_std=0.3, angles="uniform", spd_cycle=4000, generator=gen))[:, :-1]
    torch.testing.assert_close(v.std(dim=0), torch.full_like(v[0], 0.3), rtol=0.05, atol=0)
    with pytest.raises(ValueError, match="spd_cycle"):
        group.sample(4, spd_cycle=-1)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="det"):
        GL2().polar(torch.diag(torch.tensor([1.0, -1.0])))
    with pytest.raises(ValueError, match="unknown group"):
        get_group("so3")
    with pytest.raises(ValueError, match="angles"):
        SL2().sample(3, angles="random")
    with pytest.raises(ValueError, match="angle_range"):
        SL2().sample(3, angle_range=1.5)
    with pytest.raises(ValueError, match="kernel_size"):
        LiftingConv("sl2", 1, 2, kernel_size=4)
    with pytest.raises(ValueError, match="one slice per input sample"):
        GroupConv("sl2", 2, 2)(torch.zeros(1, 2, 3, 8, 8), SL2().identity(4))


@pytest.mark.parametrize("name", IDS)
def test_layers_are_exactly_equivariant_to_quarter_turns(name):
    """A quarter turn maps the pixel grid and the kernel window onto themselves, so on any sample set
    ``S``: lift(f∘A⁻¹, S)(x) = lift(f, A⁻¹S)(A⁻¹x), and likewise for the group convolution."""
    torch.manual_seed(0)
    group = get_group(name)
    lift = LiftingConv(name, 2, 3, kernel_size=5, padding=2).double()
    conv = GroupConv(name, 3, 4, kernel_size=5).double()
    samples = _samples(group, 5, spd_std=0.3)
    # rot90 on (row, col) is f'(p) = f(A⁻¹p) with A⁻¹ = [[0, -1], [1, 0]] on (x, y) = (col, row).
    a_inv = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    moved = group.compose(a_inv, samples)
    f = torch.randn(2, 2, 13, 13, dtype=torch.float64)
    out, out_moved = lift(torch.rot90(f, 1, (2, 3)), samples), lift(f, moved)
    torch.testing.assert_close(out, torch.rot90(out_moved, 1, (3, 4)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        conv(out, samples), torch.rot90(conv(out_moved, moved), 1, (3, 4)), rtol=1e-10, atol=1e-12
    )
    # A relabelling of the samples only permutes the group axis.
    perm = torch.randperm(5)
    torch.testing.assert_close(conv(out[:, :, perm], samples[perm]), conv(out, samples)[:, :, perm])
    # The same holds when each sample's slice is convolved on its own.
    apart = GroupConv(name, 3, 4, kernel_size=5, mix_samples=False).double()
    torch.testing.assert_close(
        apart(out, samples), torch.rot90(apart(out_moved, moved), 1, (3, 4)), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("name", IDS)
def test_unmixed_group_conv_is_the_diagonal_of_the_integral(name):
    """mix_samples=False keeps exactly the h_i⁻¹h_j = e terms of the Monte Carlo sum (undone average),
    i.e. one ordinary convolution per slice with that slice's transformed kernel."""
    torch.manual_seed(0)
    samples = _samples(get_group(name), 4, spd_std=0.3)
    apart = GroupConv(name, 3, 2, kernel_size=5, mix_samples=False).double()
    mixed = GroupConv(name, 3, 2, kernel_size=5).double()
    mixed.load_state_dict(apart.state_dict())
    with torch.no_grad():
        apart.bias.normal_()
        mixed.bias.copy_(apart.bias)
        x = torch.randn(2, 3, 4, 9, 9, dtype=torch.float64)
        full = mixed.kernel(samples, samples) * len(samples)  # [C_out, N, C_in, N, k, k]
        slices = [F.conv2d(x[:, :, i], full[:, i, :, i], padding=2) for i in range(len(samples))]
        expected = torch.stack(slices, dim=2) + apart.bias.view(1, -1, 1, 1, 1)
        torch.testing.assert_close(apart(x, samples), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="samples_out"):
        apart(x, samples, samples.flip(0))


@pytest.mark.parametrize("name", IDS)
def test_determinant_correction_makes_lifting_scale_consistent(name):
    """On a constant image the lifting output is the Riemann sum Σ_u k(h⁻¹u) m(h⁻¹u) / |det h|
    ≈ (grid density) · ∫ k m: the same for every h whose kernel fits the window, because of 1/|det h|."""
    torch.manual_seed(0)
    lift = LiftingConv(name, 1, 4, kernel_size=41, omega_0=3.0, mask_radius=0.5, mask_slope=10.0).double()
    if name == "gl2":
        h = torch.stack([s * torch.eye(2, dtype=torch.float64) for s in [0.6, 0.8, 1.0]])
    else:
        h = torch.stack([torch.diag(torch.tensor([s, 1 / s], dtype=torch.float64)) for s in [0.8, 1.25, 1.0]])
    out = lift(torch.ones(1, 1, 41, 41, dtype=torch.float64), h)[0, :, :, 0, 0]  # [C, 3]
    scale = out.abs().max().item()
    # Riemann-sum error of the 41×41 grid: well below 1.5 %.
    torch.testing.assert_close(out[:, :2], out[:, 2:].expand(-1, 2), rtol=0, atol=1.5e-2 * scale)
    if name == "gl2":
        # Without the correction the sums would scale with det h = s², i.e. by 0.36 and 0.64 here.
        uncorrected = out * torch.tensor([0.36, 0.64, 1.0], dtype=torch.float64)
        assert (uncorrected[:, :2] - uncorrected[:, 2:]).abs().max() > 0.3 * scale


def _strokes(size: int, a_inv: torch.Tensor | None = None) -> torch.Tensor:
    """A digit-like image of three Gaussian strokes, evaluated exactly at f(A⁻¹p) (no resampling)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    p = torch.stack((xx, yy), -1)
    if a_inv is not None:
        p = p @ a_inv.T
    image = torch.zeros(size, size, dtype=torch.float64)
    for start, end in [((-4.0, -3.0), (3.0, -2.0)), ((3.0, -2.0), (-1.0, 4.0)), ((-3.0, 1.0), (2.0, 1.5))]:
        a, b = torch.tensor(start, dtype=torch.float64), torch.tensor(end, dtype=torch.float64)
        t = ((p - a) @ (b - a) / (b - a).dot(b - a)).clamp(0, 1)
        image = image + torch.exp(-((p - a - t[..., None] * (b - a)) ** 2).sum(-1) / 2)
    return image[None, None]


@pytest.mark.parametrize("name", IDS)
def test_lifting_group_pooled_output_converges_to_invariance(name):
    """Under an affine map A of the input, lift(f∘A⁻¹, S) = lift(f, A⁻¹S) at the fixed point of A, so
    the group-mean of the lifting output changes only by the Monte Carlo error of the sample set,
    which must shrink as the number of samples grows."""
    torch.manual_seed(0)
    group = get_group(name)
    # A mask that keeps the kernel inside the window, so the pixel grid adds little error of its own.
    lift = LiftingConv(name, 1, 16, kernel_size=9, padding=4, mask_radius=0.75, mask_slope=10.0).double()
    theta = math.radians(30)
    rotation = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    stretch = [[1.1, 0.2], [0.0, 0.95]] if name == "gl2" else [[1.1, 0.2], [0.0, 1 / 1.1]]
    a = (rotation @ torch.tensor(stretch)).double()
    image, moved = _strokes(21), _strokes(21, torch.linalg.inv(a))
    centre = 10
    errors = []
    with torch.no_grad():
        for num in [1, 4, 16, 64]:
            trials = []
            for seed in range(4):
                samples = group.sample(num, generator=torch.Generator().manual_seed(seed))
                y = pool_group(lift(image, samples), "mean")[0, :, centre, centre]
                y_moved = pool_group(lift(moved, samples), "mean")[0, :, centre, centre]
                trials.append(((y_moved - y).norm() / y.norm()).item())
            errors.append(sum(trials) / len(trials))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.3 * errors[0], errors


def _quarter_turns() -> torch.Tensor:
    c = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)]
    return torch.tensor([[[a, -b], [b, a]] for a, b in c], dtype=torch.float64)


def test_warp_resamples_at_the_mapped_pixel():
    """warp(x, g)(y) = x(g·y) about the canvas centre: quarter turns are torch.rot90, the identity is exact,
    and a half-pixel-free integer stretch hits pixel centres on an odd canvas."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    out = warp(x, _quarter_turns())  # [2, 3, 4, 8, 8]
    torch.testing.assert_close(out[:, :, 0], x)
    # g = [[0, -1], [1, 0]] on (x, y) = (col, row): out[r, c] = x[c, -r] (centred), torch.rot90 by +1.
    torch.testing.assert_close(out[:, :, 1], torch.rot90(x, 1, (2, 3)))
    torch.testing.assert_close(out[:, :, 2], torch.rot90(x, 2, (2, 3)))
    odd = torch.randn(1, 1, 9, 9, dtype=torch.float64)
    stretched = warp(odd, torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))[None])[0, 0, 0]
    torch.testing.assert_close(stretched[:, 2:7], odd[0, 0, :, 0:9:2])  # column c reads column 2c - 4
    assert stretched[:, :2].abs().max() == 0  # outside the canvas: zeros
    # One set of maps per image.
    per_image = warp(x, _quarter_turns().view(2, 2, 2, 2))
    torch.testing.assert_close(per_image[1, :, 1], torch.rot90(x[1], -1, (1, 2)))  # turn 3: -90°


@pytest.mark.parametrize("mix", [True, False], ids=["mixed", "apart"])
@pytest.mark.parametrize("name", IDS)
def test_signal_transform_is_the_kernel_transform_in_each_samples_frame(name, mix):
    """transform="signal" computes G(x', h) = F(h·x', h) with F the transform="kernel" output (same
    weights). On quarter turns (in both groups), where resampling is exact, the two agree to rounding,
    for the lifting and for the group convolution, mixed or apart."""
    torch.manual_seed(0)
    samples = _quarter_turns()
    x = torch.randn(2, 2, 12, 12, dtype=torch.float64)
    lift_k = LiftingConv(name, 2, 3, kernel_size=5, padding=2).double()
    lift_s = LiftingConv(name, 2, 3, kernel_size=5, padding=2, transform="signal").double()
    lift_s.load_state_dict(lift_k.state_dict())
    conv_k = GroupConv(name, 3, 4, kernel_size=5, mix_samples=mix).double()
    conv_s = GroupConv(name, 3, 4, kernel_size=5, mix_samples=mix, transform="signal").double()
    conv_s.load_state_dict(conv_k.state_dict())

    def to_frames(f):  # [B, C, N, H, W] image frame -> each sample's frame
        return torch.stack([warp(f[:, :, n], samples[n : n + 1])[:, :, 0] for n in range(len(samples))], 2)

    with torch.no_grad():
        f_k, f_s = lift_k(x, samples), lift_s(x, samples)
        torch.testing.assert_close(f_s, to_frames(f_k), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(conv_s(f_s, samples), to_frames(conv_k(f_k, samples)), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="transform"):
        LiftingConv(name, 1, 1, transform="image")


def test_pooling_and_norm_shapes():
    x = torch.randn(2, 3, 5, 8, 8)
    assert pool_group(x).shape == (2, 3, 8, 8)
    torch.testing.assert_close(pool_group(x, "mean"), x.mean(2))
    assert pool_spatial(x).shape == (2, 3, 5, 4, 4)
    torch.testing.assert_close(pool_spatial(x)[:, :, 2], torch.nn.functional.max_pool2d(x[:, :, 2], 2))
    y = GroupLayerNorm(3)(x)
    torch.testing.assert_close(y.mean(dim=(1, 2, 3, 4)), torch.zeros(2), atol=1e-6, rtol=0)
    z = GroupRMSNorm(3)(x)
    torch.testing.assert_close(z.pow(2).mean(dim=(1, 2, 3, 4)), torch.ones(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(z, x / x.pow(2).mean(dim=(1, 2, 3, 4), keepdim=True).sqrt(), atol=1e-5, rtol=1e-5)
    assert GroupRMSNorm(3)(torch.zeros_like(x)).abs().max() == 0  # zeros stay zeros (GroupLayerNorm's bias would not)
    with pytest.raises(ValueError, match="reduce"):
        pool_group(x, "sum")


# -- the authors' conventions (github.com/mirceamironenco/rgenn) next to geomol's ------------------------

# rgenn's orthonormal bases of the SPD factor's tangent space (SSPD2Basis, SPD2Basis with metric_alpha=1).
_R = 1 / math.sqrt(2.0)
AUTHORS_SPD_BASIS = {
    "sl2": torch.tensor([[[_R, 0.0], [0.0, -_R]], [[0.0, _R], [_R, 0.0]]], dtype=torch.float64),
    "gl2": torch.tensor(
        [[[1.0, 0.0], [0.0, 0.0]], [[0.0, _R], [_R, 0.0]], [[0.0, 0.0], [0.0, 1.0]]], dtype=torch.float64
    ),
}


def _turn(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack((torch.stack((c, -s), -1), torch.stack((s, c), -1)), -2)


@pytest.mark.parametrize("name", IDS)
def test_authors_spd_law_has_a_quarter_of_the_log_variance(name):
    """rgenn: S = exp(X), X ~ N(0, 0.1·I) in an orthonormal basis, g = S^½·R. Then log P = X/2, whose chart
    coordinates have variance 0.1/4 = 0.025; geomol's P = exp(X) keeps 0.1. 10⁵ float64 draws."""
    group = get_group(name)
    std = math.sqrt(0.1)
    draw = lambda law: group.sample(  # noqa: E731
        100_000, spd_std=std, spd_law=law, angles="uniform", generator=torch.Generator().manual_seed(0)
    )
    authors, geomol = draw("authors"), draw("geomol")
    var_authors = group.log_chart(authors)[:, :-1].var(dim=0)
    var_geomol = group.log_chart(geomol)[:, :-1].var(dim=0)
    torch.testing.assert_close(var_authors, torch.full_like(var_authors, 0.025), rtol=0, atol=0.002)
    torch.testing.assert_close(var_geomol, torch.full_like(var_geomol, 0.1), rtol=0, atol=0.008)
    assert group.contains(authors)
    # The same draws: the authors' SPD factor is the square root of geomol's, the rotations are equal.
    (p_a, r_a), (p_g, r_g) = group.polar(authors[:1000]), group.polar(geomol[:1000])
    torch.testing.assert_close(p_a @ p_a, p_g, rtol=0, atol=1e-12)
    torch.testing.assert_close(r_a, r_g, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", IDS)
def test_authors_sampler_matches_a_transcription_of_their_code(name):
    """LogNormalSPD2.sample_pair + EquiDistantSO2 + GLn.sample_pair, transcribed: hat(v) in their basis,
    S = expm, S^½ by eigh, R(linspace(-π, π, N)), g = S^½·R; same Gaussian draws as geomol's sampler."""
    group, num = get_group(name), 12
    std = math.sqrt(0.1)
    v = std * torch.randn(num, group.dim - 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s = torch.linalg.matrix_exp(torch.tensordot(v, AUTHORS_SPD_BASIS[name], ([-1], [0])))
    e, q = torch.linalg.eigh(s)
    s_half = (q * e.sqrt().unsqueeze(-2)) @ q.mT
    expected = s_half @ _turn(torch.linspace(-math.pi, math.pi, num, dtype=torch.float64))
    g = group.sample(num, spd_std=std, spd_law="authors", angles="linspace", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="spd_law"):
        group.sample(2, spd_law="sqrt")


@pytest.mark.parametrize("name", IDS)
def test_linspace_angles_are_the_authors_equidistant_grid(name):
    """angles="linspace" is rgenn's EquiDistantSO2: linspace(-rπ, rπ, N), both ends included (for r = 1 the
    first and last samples are the same half turn); "equidistant" stays geomol's centred N-gon."""
    group = get_group(name)
    for num, r in [(10, 1.0), (7, 0.5), (1, 1.0)]:
        g = group.sample(num, spd_std=0.0, angles="linspace", angle_range=r)
        expected = _turn(torch.linspace(-r * math.pi, r * math.pi, num, dtype=torch.float64))
        torch.testing.assert_close(g, expected, rtol=0, atol=1e-15)
    g = group.sample(10, spd_std=0.0, angles="linspace")
    torch.testing.assert_close(g[0], g[-1], rtol=0, atol=1e-15)  # -π and π: the same rotation
    theta = torch.atan2(g[:, 1, 0], g[:, 0, 0])
    torch.testing.assert_close(torch.diff(theta[1:-1]), torch.full((7,), 2 * math.pi / 9, dtype=torch.float64))
    centred = group.log_chart(group.sample(10, spd_std=0.0))[:, -1]
    torch.testing.assert_close(centred, torch.arange(-9, 10, 2, dtype=torch.float64) * math.pi / 10)


@pytest.mark.parametrize("name", IDS)
def test_positive_angle_chart_is_the_authors_zero_to_two_pi(name):
    """angle_chart="positive" is rgenn's SO2.matrix_to_radians (atan2 mod 2π): the centred angle plus 2π where
    it is negative, the identity (and round-off around it) at 0, the half turn at π, the SPD part unchanged."""
    group = get_group(name)
    g = _samples(group, 256, spd_std=0.5)
    centred, positive = group.log_chart(g), group.log_chart(g, "positive")
    torch.testing.assert_close(positive[:, :-1], centred[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(positive[:, -1], torch.remainder(centred[:, -1], 2 * math.pi), rtol=0, atol=1e-14)
    assert positive[:, -1].min() >= 0 and positive[:, -1].max() < 2 * math.pi and positive[:, -1].max() > 6.0
    torch.testing.assert_close(group.exp_chart(positive), g, rtol=0, atol=1e-12)
    angles = torch.tensor([-1e-15, 0.0, -0.5, math.pi, -math.pi], dtype=torch.float64)
    chart = group.log_chart(_turn(angles), "positive")[:, -1]
    expected = torch.tensor([0.0, 0.0, 2 * math.pi - 0.5, math.pi, math.pi], dtype=torch.float64)
    torch.testing.assert_close(chart, expected, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="angle_chart"):
        group.log_chart(g, "degrees")


def test_kernel_offset_grids():
    """offsets="affine_grid" is rgenn's get_grid2d (F.affine_grid of the identity, align_corners=False): the 5×5
    window's centres span ±0.8 in steps of 0.4; geomol's "unit" grid spans ±1. Both row-major, x along columns."""
    grid = kernel_offsets(5, "affine_grid", dtype=torch.float64)
    torch.testing.assert_close(grid.unique(), torch.tensor([-0.8, -0.4, 0.0, 0.4, 0.8], dtype=torch.float64))
    assert grid.abs().max().item() == pytest.approx(0.8, abs=1e-15)
    theirs = F.affine_grid(torch.eye(2, 3, dtype=torch.float64)[None], [1, 1, 5, 5], align_corners=False)
    torch.testing.assert_close(grid, theirs.reshape(-1, 2), rtol=0, atol=1e-15)
    assert kernel_offsets(3, "affine_grid").abs().max().item() == pytest.approx(2 / 3)
    unit = kernel_offsets(5, "unit", dtype=torch.float64)
    torch.testing.assert_close(unit.unique(), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(unit * 0.8, grid, rtol=0, atol=1e-15)  # the same shape, scaled by (k - 1)/k
    assert torch.equal(LiftingConv("sl2", 1, 1, offsets="affine_grid").offsets, kernel_offsets(5, "affine_grid"))
    assert torch.equal(LiftingConv("sl2", 1, 1).offsets, kernel_offsets(5))  # geomol's default
    with pytest.raises(ValueError, match="offsets"):
        LiftingConv("sl2", 1, 1, offsets="pixels")


def test_authors_mask_is_a_hard_disk_on_sl2_and_smooth_on_gl2():
    """mask_type="authors": rgenn's circular_mask (zero where |h⁻¹u| > 1, chart ignored) on SL(2), and
    circular_mask_smooth (σ(2(1 - |coords|)) over offsets and chart) on GL⁺(2)."""
    eye = SL2().identity(1)
    sl2 = LiftingConv("sl2", 1, 1, mask_type="authors", offsets="affine_grid").double()
    u, _ = sl2.transformed_offsets(eye)
    mask = sl2.mask(u)[0, :, 0].view(5, 5)
    assert sl2.resolved_mask_type == "circular" and int(mask.sum()) == 21  # the 4 corners (|u| = 1.13) dropped
    assert mask[0, 0] == mask[0, 4] == mask[4, 0] == mask[4, 4] == 0 and set(mask.unique().tolist()) == {0.0, 1.0}
    # A stretch h = diag(2, 1/2): h⁻¹u = (u_x/2, 2u_y) leaves the disk at |u_y| > 0.4 only.
    stretched = sl2.mask(sl2.transformed_offsets(torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64))[None])[0])
    assert stretched[0, :, 0].view(5, 5).sum(dim=1).tolist() == [0.0, 5.0, 5.0, 5.0, 0.0]
    gl2 = LiftingConv("gl2", 1, 1, mask_type="authors", offsets="affine_grid").double()
    u, _ = gl2.transformed_offsets(eye)
    assert gl2.resolved_mask_type == "smooth"
    torch.testing.assert_close(gl2.mask(u), torch.sigmoid(2 * (1 - u.norm(dim=-1, keepdim=True))))
    # In a group conv the hard disk ignores the chart coordinates; the smooth mask does not.
    coords = torch.tensor([[0.4, 0.8, 0.0, 0.0, 0.0], [0.4, 0.8, 0.0, 0.0, 3.0]], dtype=torch.float64)
    hard = GroupConv("sl2", 1, 1, mask_type="authors").double()
    assert hard.mask(coords).flatten().tolist() == [1.0, 1.0]
    smooth = GroupConv("sl2", 1, 1).double()
    expected = torch.sigmoid(2 * (1 - torch.tensor([0.8, 9.8], dtype=torch.float64).sqrt()))
    torch.testing.assert_close(smooth.mask(coords).flatten(), expected)  # 0.552 and 0.014
    with pytest.raises(ValueError, match="mask_type"):
        GroupConv("sl2", 1, 1, mask_type="hard")


@pytest.mark.parametrize("name", IDS)
def test_sum_over_samples_is_the_mean_times_the_sample_count(name):
    """sample_reduce="sum" (rgenn's GConv2d) drops geomol's 1/N_in: with the same weights and no bias the
    output is exactly N_in times the mean's, for any number of output samples."""
    torch.manual_seed(0)
    samples_in, samples_out = _samples(get_group(name), 5, spd_std=0.3), _samples(get_group(name), 3, seed=1)
    mean = GroupConv(name, 3, 2, bias=False).double()
    total = GroupConv(name, 3, 2, bias=False, sample_reduce="sum").double()
    total.load_state_dict(mean.state_dict())
    x = torch.randn(2, 3, 5, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(total(x, samples_in, samples_out), 5 * mean(x, samples_in, samples_out))
        torch.testing.assert_close(total.kernel(samples_in, samples_out), 5 * mean.kernel(samples_in, samples_out))
        # Keeping the slices apart has no average to undo: both give the same layer.
        apart = [GroupConv(name, 3, 2, mix_samples=False, sample_reduce=r).double() for r in ("mean", "sum")]
        apart[1].load_state_dict(apart[0].state_dict())
        torch.testing.assert_close(apart[1](x, samples_in), apart[0](x, samples_in), rtol=0, atol=0)
    with pytest.raises(ValueError, match="sample_reduce"):
        GroupConv(name, 1, 1, sample_reduce="max")


def test_siren_bias_init():
    """bias_init="zero" is rgenn's SineLayer: hidden sine layers start with zero biases, the first keeps
    PyTorch's U(±1/√in); "uniform" (geomol's default) leaves U(±1/√in) on every layer. Weights are SIREN's
    either way, and the last layer starts unbiased."""
    torch.manual_seed(0)
    zero = SirenKernel(5, 40, hidden_features=60, num_layers=3, omega_0=10.0, fan_in=40 * 25, bias_init="zero")
    uniform = SirenKernel(5, 40, hidden_features=60, num_layers=3, omega_0=10.0, fan_in=40 * 25)
    for net in (zero, uniform):
        assert net.layers[0].bias.abs().max() <= 1 / math.sqrt(5) and net.layers[0].bias.abs().max() > 0.2
        assert net.layers[0].weight.abs().max() <= 1 / 5
        assert all(layer.weight.abs().max() <= math.sqrt(6 / 60) / 10 for layer in net.layers[1:])
        assert net.out.weight.abs().max() <= math.sqrt(6 / 60) / math.sqrt(1000) and not net.out.bias.any()
    assert all(not layer.bias.any() for layer in zero.layers[1:])
    assert all(0.05 < layer.bias.abs().max() <= 1 / math.sqrt(60) for layer in uniform.layers[1:])
    conv = GroupConv("sl2", 2, 2, siren_bias_init="zero")
    assert not conv.siren.layers[1].bias.any() and not conv.siren.layers[2].bias.any()
    with pytest.raises(ValueError, match="bias_init"):
        SirenKernel(2, 2, bias_init="normal")


def test_norms_without_affine_parameters():
    """affine=False: the authors' LayerNorm3d (F.layer_norm over C, N, H, W, no parameters)."""
    x = torch.randn(2, 3, 5, 8, 8, dtype=torch.float64)
    norm = GroupLayerNorm(3, affine=False)
    assert not list(norm.parameters())
    torch.testing.assert_close(norm(x), F.layer_norm(x, x.shape[-4:]), rtol=0, atol=0)
    rms = GroupRMSNorm(3, affine=False)
    assert not list(rms.parameters())
    torch.testing.assert_close(rms(x), GroupRMSNorm(3).double()(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", IDS)
def test_layers_with_the_authors_conventions_are_exactly_equivariant_to_quarter_turns(name):
    """The affine_grid window, the hard circular mask, the sum over samples and the [0, 2π) chart keep the
    exact quarter-turn equivariance of the lifting and the group convolution."""
    torch.manual_seed(0)
    group = get_group(name)
    options = dict(mask_type="authors", offsets="affine_grid", siren_bias_init="zero")
    lift = LiftingConv(name, 2, 3, kernel_size=5, padding=2, **options).double()
    conv = GroupConv(name, 3, 4, kernel_size=5, sample_reduce="sum", angle_chart="positive", **options).double()
    samples = group.sample(6, spd_law="authors", angles="uniform", generator=torch.Generator().manual_seed(4))
    a_inv = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    moved = group.compose(a_inv, samples)
    f = torch.randn(2, 2, 13, 13, dtype=torch.float64)
    out, out_moved = lift(torch.rot90(f, 1, (2, 3)), samples), lift(f, moved)
    torch.testing.assert_close(out, torch.rot90(out_moved, 1, (3, 4)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        conv(out, samples), torch.rot90(conv(out_moved, moved), 1, (3, 4)), rtol=1e-10, atol=1e-12
    )


def test_group_sampler_draws_the_sample_law_and_builds_from_config_nodes():
    """GroupSampler is LinearGroup2.sample's law; a config node's null entries keep the base's values."""
    law = GroupSampler(num_samples=5, spd_std=0.2, spd_law="authors", angles="uniform", angle_range=0.5)
    expected = SL2().sample(
        5, spd_std=0.2, spd_law="authors", angles="uniform", angle_range=0.5, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(law.sample("sl2", torch.Generator().manual_seed(1)), expected)
    eval_law = GroupSampler.build({"num_samples": 8, "angles": None, "resample": False}, base=law)
    assert (eval_law.num_samples, eval_law.angles, eval_law.spd_law, eval_law.resample) == (
        8,
        "uniform",
        "authors",
        False,
    )
    assert GroupSampler.build(None) == GroupSampler() and GroupSampler.build(law) is law
    with pytest.raises(ValueError, match="unknown sampler setting"):
        GroupSampler.build({"eval_angles": "linspace"})
    with pytest.raises(ValueError, match="angles"):
        GroupSampler(angles="random")
    # The layers live in liegroup_conv, which builds on the groups; the group module never imports them (no circle).
    import ast

    import geomol.nn.liegroup as groups
    import geomol.nn.liegroup_conv as layers

    tree = ast.parse(open(groups.__file__).read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not any("liegroup_conv" in name for name in imported)
    assert layers.get_group is groups.get_group  # the layers build on the group module
