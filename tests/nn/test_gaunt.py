import math
import os
import shutil

import numpy as np
import pytest
import torch
from e3nn import o3

from geomol.nn import gaunt
from geomol.nn.gaunt import (
    GauntConv,
    GauntCrossProduct,
    GauntManyBody,
    GauntTensorProduct,
    SHLinear,
    SphericalGridTransform,
    irreps_to_sh,
    sh_irreps,
    sh_to_irreps,
)
from geomol.nn.graph import radius_graph
from geomol.testing import assert_equivariant, irreps_rotation, random_rotation, sh_rotation

F64 = torch.float64


@pytest.fixture(params=["kernel", "torch"])
def path(request, monkeypatch) -> str:
    """Run a test through the fused CPU kernel and through the torch-only path (GPUs, no compiler)."""
    if request.param == "torch":
        monkeypatch.setattr(gaunt.gaunt_kernel, "available", lambda *tensors: False)
    elif shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler here: only the torch path runs")
    else:
        assert gaunt.gaunt_kernel.available(torch.zeros(1)), "the fused Gaunt kernel did not build"
    return request.param


def sphere_quadrature(n_theta: int = 24, n_phi: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Legendre × uniform grid with polar axis z (not e3nn's y), exact to degree 47."""
    nodes, weights = np.polynomial.legendre.leggauss(n_theta)
    cos_t = torch.from_numpy(nodes)[:, None].expand(n_theta, n_phi)
    sin_t = (1 - cos_t**2).sqrt()
    phi = torch.arange(n_phi, dtype=F64)[None, :].expand(n_theta, n_phi) * (2 * math.pi / n_phi)
    points = torch.stack([sin_t * torch.cos(phi), sin_t * torch.sin(phi), cos_t], -1).reshape(-1, 3)
    w = (torch.from_numpy(weights)[:, None] * (2 * math.pi / n_phi)).expand(n_theta, n_phi).reshape(-1)
    return points, w


def reference_product(x, y, lmax_out, bracket: bool = False):
    """SH coefficients of f·g (or of r̂·(∇f × ∇g)) by quadrature with e3nn's spherical harmonics."""
    points, w = sphere_quadrature()
    l1, l2 = math.isqrt(x.shape[-1]) - 1, math.isqrt(y.shape[-1]) - 1

    def sh(lmax, p):
        return o3.spherical_harmonics(list(range(lmax + 1)), p, True, normalization="integral")

    if bracket:
        # Tangent gradients by autograd of the 0-homogeneous extension Y(r / |r|) at |r| = 1.
        p = points.clone().requires_grad_(True)

        def gradients(lmax):  # [P, K, 3]
            basis = sh(lmax, p)
            rows = [torch.autograd.grad(basis[:, k].sum(), p, retain_graph=True)[0] for k in range(basis.shape[1])]
            return torch.stack(rows, 1)

        grad_f = torch.einsum("...k,pkd->...pd", x, gradients(l1))
        grad_g = torch.einsum("...k,pkd->...pd", y, gradients(l2))
        values = (torch.linalg.cross(grad_f, grad_g) * points).sum(-1)  # [..., P]
    else:
        values = (x @ sh(l1, points).T) * (y @ sh(l2, points).T)
    return (values * w) @ sh(lmax_out, points)


DEGREES = [(l, l, l) for l in range(7)] + [(0, 3, 3), (2, 1, 3), (4, 2, 5), (6, 6, 2), (1, 5, 6), (3, 3, 6)]


@pytest.mark.parametrize("l1,l2,l3", DEGREES)
def test_unweighted_product_is_exact_projection_of_f_times_g(l1, l2, l3, generator, path):
    tp = GauntTensorProduct(l1, l2, l3, channels=3, weighted=False).double()
    x = torch.randn(5, 3, (l1 + 1) ** 2, generator=generator, dtype=F64)
    y = torch.randn(5, 3, (l2 + 1) ** 2, generator=generator, dtype=F64)
    expected = reference_product(x, y, l3)
    err = (tp(x, y) - expected).norm() / expected.norm()
    assert err < 1e-10, f"relative error {err:.2e} for ({l1}, {l2}, {l3})"


@pytest.mark.parametrize("lmax", [2, 5])
def test_dense_and_separable_transforms_agree_and_chunks_do_not_matter(lmax, generator, monkeypatch, path):
    x = torch.randn(300, (lmax + 1) ** 2, generator=generator, dtype=F64)
    y = torch.randn(300, (lmax + 1) ** 2, generator=generator, dtype=F64)
    outs = []
    for separable in (False, True):
        t = SphericalGridTransform(lmax, 3 * lmax, separable).double()
        outs.append(t.from_grid(t.to_grid(x) * t.to_grid(y)))
        monkeypatch.setattr(gaunt, "_CHUNK_BYTES", 4096)  # 64 rows per chunk from here on
        outs.append(gaunt._GauntProduct.apply(x, y, None, None, None, t, t, t))
        monkeypatch.undo()
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-12, rtol=1e-10)


def wigner_000(l1: int, l2: int, l3: int) -> float:
    """(l1 l2 l3; 0 0 0) by Racah's closed form (even l1 + l2 + l3)."""
    J = l1 + l2 + l3
    g = J // 2
    f = math.factorial
    root = math.sqrt(f(J - 2 * l1) * f(J - 2 * l2) * f(J - 2 * l3) / f(J + 1))
    return (-1) ** g * root * f(g) / (f(g - l1) * f(g - l2) * f(g - l3))


def coupling_tensor(module, l1, l2):
    """T[a, b, c] = module(e_a, e_b)_c for one channel."""
    k1, k2 = (l1 + 1) ** 2, (l2 + 1) ** 2
    x = torch.eye(k1, dtype=F64).repeat_interleave(k2, 0)[:, None, :]
    y = torch.eye(k2, dtype=F64).repeat(k1, 1)[:, None, :]
    return module(x, y)[:, 0, :].reshape(k1, k2, -1)


def test_gaunt_coefficients_are_scaled_wigner_3j():
    """Each (l1, l2, l3) block is e3nn's real Wigner 3j times ±√((2l1+1)(2l2+1)(2l3+1)/4π) (l1 l2 l3; 0 0 0)."""
    L = 3
    gaunt_tensor = coupling_tensor(GauntTensorProduct(L, L, L, channels=1, weighted=False).double(), L, L)
    for l1 in range(L + 1):
        for l2 in range(L + 1):
            for l3 in range(L + 1):
                block = gaunt_tensor[l1**2 : (l1 + 1) ** 2, l2**2 : (l2 + 1) ** 2, l3**2 : (l3 + 1) ** 2]
                if (l1 + l2 + l3) % 2 or not abs(l1 - l2) <= l3 <= l1 + l2:
                    assert block.abs().max() < 1e-12
                    continue
                w3j = o3.wigner_3j(l1, l2, l3, dtype=F64)
                scale = (block * w3j).sum() / (w3j * w3j).sum()
                torch.testing.assert_close(block, scale * w3j, atol=1e-12, rtol=0)
                expected = math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1) / (4 * math.pi)) * wigner_000(
                    l1, l2, l3
                )
                assert math.isclose(abs(scale.item()), abs(expected), rel_tol=1e-10)


def test_plain_gaunt_product_has_no_antisymmetric_paths_and_cross_product_adds_them(generator):
    """The documented limit: f·g is symmetric, so 1o × 1o -> 1e (the cross product) is zero; the bracket has it."""
    a = torch.randn(4, 2, 4, generator=generator, dtype=F64)
    b = torch.randn(4, 2, 4, generator=generator, dtype=F64)
    a[..., 0] = b[..., 0] = 0.0  # two pure vectors (l = 1)
    sym = GauntTensorProduct(1, 1, 1, channels=2, weighted=False).double()(a, b)
    assert sym[..., 1:4].abs().max() < 1e-14
    cross = GauntCrossProduct(1, 1, 1, channels=2, weighted=False).double()(a, b)
    # f = a·Y_1 = √(3/4π) a·r̂, so {f, g} = (3/4π) (a × b)·r̂ = √(3/4π) (a × b)·Y_1 (e3nn order x, y, z).
    expected = torch.linalg.cross(a[..., 1:], b[..., 1:]) * math.sqrt(3 / (4 * math.pi))
    torch.testing.assert_close(cross[..., 1:], expected, atol=1e-13, rtol=1e-12)
    assert cross[..., 0].abs().max() < 1e-14


def test_cross_product_matches_quadrature_and_covers_every_odd_path(generator):
    x = torch.randn(3, 2, 9, generator=generator, dtype=F64)
    y = torch.randn(3, 2, 16, generator=generator, dtype=F64)
    out = GauntCrossProduct(2, 3, 4, channels=2, weighted=False).double()(x, y)
    expected = reference_product(x, y, 4, bracket=True)
    assert (out - expected).norm() / expected.norm() < 1e-10
    L = 2
    tensor = coupling_tensor(GauntCrossProduct(L, L, L, channels=1, weighted=False).double(), L, L)
    for l1 in range(1, L + 1):
        for l2 in range(1, L + 1):
            for l3 in range(L + 1):
                block = tensor[l1**2 : (l1 + 1) ** 2, l2**2 : (l2 + 1) ** 2, l3**2 : (l3 + 1) ** 2]
                if (l1 + l2 + l3) % 2 == 0 or not abs(l1 - l2) <= l3 <= l1 + l2:
                    assert block.abs().max() < 1e-12
                    continue
                w3j = o3.wigner_3j(l1, l2, l3, dtype=F64)
                scale = (block * w3j).sum() / (w3j * w3j).sum()
                assert scale.abs() > 1e-3
                torch.testing.assert_close(block, scale * w3j, atol=1e-12, rtol=0)


def _rotate(x, R, lmax, pseudo=False):
    D = sh_rotation(R, lmax)
    return x @ (D.T * torch.det(R) if pseudo else D.T)


@pytest.mark.parametrize("l1,l2,l3", [(1, 2, 3), (5, 5, 5)])  # dense and separable
def test_products_are_o3_equivariant(l1, l2, l3, generator, path):
    modules = [GauntTensorProduct(l1, l2, l3, channels=2), GauntCrossProduct(l1, l2, l3, channels=2)]
    x = torch.randn(6, 2, (l1 + 1) ** 2, generator=generator, dtype=F64)
    y = torch.randn(6, 2, (l2 + 1) ** 2, generator=generator, dtype=F64)
    for pseudo, module in zip((False, True), modules):
        module = module.double()
        for p in module.parameters():  # weights away from their identity initialisation
            p.data.uniform_(0.5, 1.5, generator=generator)
        for reflect in (False, True):
            R = random_rotation(F64, generator, reflection=reflect)
            out = module(_rotate(x, R, l1), _rotate(y, R, l2))
            torch.testing.assert_close(out, _rotate(module(x, y), R, l3, pseudo), atol=1e-10, rtol=1e-9)


def test_weights_start_at_the_unweighted_product_and_act_per_degree(generator):
    x = torch.randn(4, 3, 9, generator=generator, dtype=F64)
    y = torch.randn(4, 3, 4, generator=generator, dtype=F64)
    plain = GauntTensorProduct(2, 1, 2, channels=3, weighted=False).double()
    weighted = GauntTensorProduct(2, 1, 2, channels=3).double()
    torch.testing.assert_close(weighted(x, y), plain(x, y))
    w1, w2, w3 = (torch.rand(3, n, generator=generator, dtype=F64) for n in (3, 2, 3))
    weighted.weight_in1.weight.data, weighted.weight_in2.weight.data = w1.clone(), w2.clone()
    weighted.weight_out.weight.data = w3.clone()
    deg = gaunt._degree_index
    expected = plain(x * w1[:, deg(2)], y * w2[:, deg(1)]) * w3[:, deg(2)]
    torch.testing.assert_close(weighted(x, y), expected)


@pytest.mark.parametrize("l1,l2,l3", [(2, 1, 2), (5, 3, 5)])  # dense and separable
def test_gradients_first_and_second_order(l1, l2, l3, generator, monkeypatch, path):
    """Inputs and the three weights, with rows split over several chunks of whole channel groups."""
    monkeypatch.setattr(gaunt, "_CHUNK_BYTES", 64)  # chunk_rows() = 64 -> 64 rows = 32 nodes x 2 channels
    tp = GauntTensorProduct(l1, l2, l3, channels=2).double()
    t = [tp.transforms[str(l)] for l in (l1, l2, l3)]
    x = torch.randn(70, 2, (l1 + 1) ** 2, generator=generator, dtype=F64)
    y = torch.randn(70, 2, (l2 + 1) ** 2, generator=generator, dtype=F64)
    w = [torch.rand(2, l + 1, generator=generator, dtype=F64) + 0.5 for l in (l1, l2, l3)]  # per degree

    def product(x, y, w1, w2, w3):
        return gaunt._GauntProduct.apply(x.flatten(0, 1), y.flatten(0, 1), w1, w2, w3, *t)

    inputs = tuple(v.requires_grad_(True) for v in (x, y, *w))
    # Gradients of a sum check every chunk: the fast path (twice through a retained graph, as it reuses its
    # buffers) against the differentiable one; gradcheck on a few rows keeps the rest fast.
    loss = product(*inputs).sum()
    first = torch.autograd.grad(loss, inputs, retain_graph=True)
    torch.testing.assert_close(torch.autograd.grad(loss, inputs), first, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(product(*inputs).sum(), inputs, create_graph=True), first)
    small = (inputs[0][:2].detach().requires_grad_(True), inputs[1][:2].detach().requires_grad_(True), *inputs[2:])
    assert torch.autograd.gradcheck(product, small)
    assert torch.autograd.gradgradcheck(product, small)


def test_many_body_is_the_exact_nu_fold_product(generator, path):
    x = torch.randn(5, 3, 9, generator=generator, dtype=F64)
    mb = GauntManyBody(2, channels=3, correlation=3).double()
    torch.testing.assert_close(mb(x), x)  # identity at initialisation
    square = GauntTensorProduct(2, 2, 4, channels=3, weighted=False).double()
    project = GauntTensorProduct(4, 2, 2, channels=3, weighted=False).double()
    pair = GauntTensorProduct(2, 2, 2, channels=3, weighted=False).double()
    # f, P(f²), and P(f³) = P((f²)·f) with f² kept exactly up to degree 4.
    reference = [x, pair(x, x), project(square(x, x), x)]
    w = torch.rand(3, 3, 3, generator=generator, dtype=F64)
    mb.weight.data = w[None].clone()
    deg = gaunt._degree_index(2)
    expected = sum(w[nu][:, deg] * reference[nu] for nu in range(3))
    torch.testing.assert_close(mb(x), expected, atol=1e-12, rtol=1e-10)


def test_many_body_per_element_weights_and_equivariance(generator, path):
    mb = GauntManyBody(3, channels=2, correlation=3, num_elements=4).double()
    mb.weight.data.normal_(generator=generator)
    x = torch.randn(6, 2, 16, generator=generator, dtype=F64)
    species = torch.tensor([0, 1, 2, 3, 1, 0])
    out = mb(x, species)
    for i in range(6):  # each node uses its own element's weights
        alone = GauntManyBody(3, channels=2, correlation=3).double()
        alone.weight.data = mb.weight.data[species[i] : species[i] + 1].clone()
        torch.testing.assert_close(out[i], alone(x[i : i + 1])[0])
    for reflect in (False, True):
        R = random_rotation(F64, generator, reflection=reflect)
        torch.testing.assert_close(mb(_rotate(x, R, 3), species), _rotate(out, R, 3), atol=1e-10, rtol=1e-9)
    with pytest.raises(ValueError, match="species"):
        mb(x)


def test_conv_is_equivariant_and_sums_messages(generator, path):
    pos = 1.2 * torch.randn(7, 3, generator=generator, dtype=F64)
    edge_index = radius_graph(pos, 3.0)
    conv = GauntConv(2, 2, 3, channels=3, cutoff=3.0, avg_num_neighbors=2.0).double()
    scales = torch.randn(3, 1, generator=generator, dtype=F64)

    def features(p):  # equivariant node features built from the positions
        sh = o3.spherical_harmonics([0, 1, 2], p - p.mean(0), False, normalization="integral")
        return sh[:, None, :] * scales

    assert_equivariant(lambda p: conv(features(p), p, edge_index), pos, "sh:3", generator=generator)
    # One edge at a time: the output at i is the sum of its incoming messages.
    x = features(pos)
    total = sum(conv(x, pos, edge_index[:, e : e + 1]) for e in range(edge_index.shape[1]))
    torch.testing.assert_close(conv(x, pos, edge_index), total)


def test_sh_linear_is_equivariant(generator):
    lin = SHLinear(3, 5, lmax=2, bias=True).double()
    lin.bias.data.normal_(generator=generator)
    x = torch.randn(4, 3, 9, generator=generator, dtype=F64)
    R = random_rotation(F64, generator, reflection=True)
    torch.testing.assert_close(lin(_rotate(x, R, 2)), _rotate(lin(x), R, 2))


def test_irreps_adapters_round_trip_and_follow_e3nn(generator):
    x = torch.randn(4, 3, 16, generator=generator, dtype=F64)
    e = sh_to_irreps(x)
    irreps = sh_irreps(3, 3)
    assert str(irreps) == "3x0e+3x1o+3x2e+3x3o" and e.shape == (4, irreps.dim)
    torch.testing.assert_close(irreps_to_sh(e, 3, 3), x)
    R = random_rotation(F64, generator, reflection=True)
    torch.testing.assert_close(sh_to_irreps(_rotate(x, R, 3)), e @ irreps_rotation(R, str(irreps)).T)
    # e3nn's own layout: the second channel's l = 1 block sits at 3 + 3·1 … 3 + 3·2.
    torch.testing.assert_close(e[:, 6:9], x[:, 1, 1:4])
    assert str(sh_irreps(2, 2, pseudo=True)) == "2x0o+2x1e+2x2o"
    with pytest.raises(ValueError, match=r"\[N, 48\]"):
        irreps_to_sh(e[:, :-1], 3, 3)


def test_shape_errors_name_the_expected_shape():
    tp = GauntTensorProduct(2, 1, 2, channels=4)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4, 9\]"):
        tp(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"y must have shape \[N, 4, 4\]"):
        tp(torch.zeros(3, 4, 9), torch.zeros(3, 2, 4))
    with pytest.raises(ValueError, match="same leading shape"):
        tp(torch.zeros(3, 4, 9), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="lmax_out must be >= 0"):
        GauntTensorProduct(1, 1, -1, channels=2)
    with pytest.raises(ValueError, match=r"pos must have shape \[5, 3\]"):
        GauntConv(1, 1, 1, channels=2)(torch.zeros(5, 2, 4), torch.zeros(4, 3), torch.zeros(2, 0, dtype=torch.long))


def test_repr_and_tables_follow_dtype():
    tp = GauntTensorProduct(1, 1, 2, channels=4)
    assert repr(tp) == "GauntTensorProduct(4x0e+4x1o x 4x0e+4x1o -> 4x0e+4x1o+4x2e | grid 3x5 dense | 28 weights)"
    assert "grid 10x19 separable" in repr(GauntTensorProduct(6, 6, 6, channels=2))
    assert repr(GauntCrossProduct(1, 1, 1, channels=2)).startswith(
        "GauntCrossProduct(2x0e+2x1o x 2x0e+2x1o -> 2x0o+2x1e"
    )
    t = SphericalGridTransform(4, 12)
    assert t.legendre.dtype == torch.float32
    # Built in float32, then moved to float64: the tables are rebuilt, not up-cast.
    torch.testing.assert_close(t.double().legendre, SphericalGridTransform(4, 12).double().legendre, rtol=0, atol=0)
    assert t.legendre.dtype == F64
