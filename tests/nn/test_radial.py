import math

import torch

from geomol.nn.radial import BesselBasis, CosineCutoff, GaussianBasis, PolynomialEnvelope


def test_envelope_is_smooth_at_cutoff():
    env = PolynomialEnvelope(exponent=5)
    x = torch.tensor([1.0 - 1e-4, 1.0, 1.3], dtype=torch.float64, requires_grad=True)
    u = env(x)
    # u, u' and u'' vanish at x = 1, so near it u = O(ε³) and u' = O(ε²).
    assert u[0].abs() < 1e-9 and u[1] == 0 and u[2] == 0
    (grad,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    assert grad[0].abs() < 1e-5
    # u(0) = 1: the envelope leaves short distances untouched.
    assert env(torch.zeros(1, dtype=torch.float64)).item() == 1.0


def test_bessel_basis_matches_formula():
    basis = BesselBasis(num_radial=4, cutoff=5.0, envelope_exponent=5, trainable=False).double()
    d = torch.linspace(0.3, 4.9, 7, dtype=torch.float64)
    env = PolynomialEnvelope(5)(d / 5.0)
    n = torch.arange(1, 5, dtype=torch.float64)
    expected = env[:, None] * torch.sin(n * math.pi * d[:, None] / 5.0) / (d[:, None] / 5.0)
    # The frequencies were built in float32 (the default dtype) before .double().
    torch.testing.assert_close(basis(d), expected, rtol=1e-6, atol=1e-6)


def test_gaussian_and_cosine():
    g = GaussianBasis(0.0, 5.0, 11)
    out = g(torch.tensor([2.5]))
    assert out.shape == (1, 11) and out.argmax().item() == 5 and math.isclose(out.max().item(), 1.0)
    cut = CosineCutoff(5.0)
    torch.testing.assert_close(cut(torch.tensor([0.0, 2.5, 5.0, 6.0])), torch.tensor([1.0, 0.5, 0.0, 0.0]))
