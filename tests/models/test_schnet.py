import torch

from geomol.models import SchNet
from geomol.testing import assert_equivariant, assert_permutation_equivariant


def molecule(generator, n=9):
    z = torch.randint(1, 10, (n,), generator=generator)
    pos = 1.5 * torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return z, pos


def test_invariance(generator):
    model = SchNet(out_channels=2, hidden_channels=16, num_filters=16, num_interactions=2, num_basis=8).double()
    z, pos = molecule(generator)
    batch = torch.zeros_like(z)
    assert_equivariant(lambda p: model(z, p, batch), pos, "scalar", generator=generator)

    def forces(p):
        p = p.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(z, p, batch).sum(), p)
        return -g

    assert_equivariant(forces, pos, "vector", generator=generator)
    assert_permutation_equivariant(
        lambda perm: model(z if perm is None else z[perm], pos if perm is None else pos[perm], batch), z.numel()
    )


def test_batching_matches_single_molecules(generator):
    model = SchNet(out_channels=1, hidden_channels=16, num_filters=16, num_interactions=2, num_basis=8).double()
    (z1, p1), (z2, p2) = molecule(generator, 5), molecule(generator, 7)
    batch = torch.cat([torch.zeros(5, dtype=torch.long), torch.ones(7, dtype=torch.long)])
    out = model(torch.cat([z1, z2]), torch.cat([p1, p2]), batch)
    torch.testing.assert_close(out[0], model(z1, p1, torch.zeros(5, dtype=torch.long))[0])
    torch.testing.assert_close(out[1], model(z2, p2, torch.zeros(7, dtype=torch.long))[0])
