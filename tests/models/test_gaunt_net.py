from pathlib import Path

import numpy as np
import pytest
import torch

from geomol.models.gaunt_net import GauntNet
from geomol.testing import assert_equivariant, assert_permutation_equivariant

F64 = torch.float64
RMD17 = Path(__file__).parents[1] / "fixtures" / "rmd17" / "rmd17_aspirin_train_01.npz"


def small_model(generator, **kwargs) -> GauntNet:
    model = GauntNet(channels=8, lmax=2, num_layers=2, correlation=3, radial_hidden=16, **kwargs).double()
    with torch.no_grad():  # many-body weights away from their identity initialisation
        for layer in model.layers:
            layer.many_body.weight.normal_(std=0.5, generator=generator)
    return model


def molecule(generator, n=9):
    z = torch.randint(1, 10, (n,), generator=generator)
    pos = 1.5 * torch.randn(n, 3, generator=generator, dtype=F64)
    return z, pos


def forces(model, z, pos, batch):
    pos = pos.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(z, pos, batch).sum(), pos, create_graph=True)
    return -grad


def test_energy_invariant_forces_equivariant(generator):
    model = small_model(generator)
    z, pos = molecule(generator)
    batch = torch.zeros_like(z)
    assert_equivariant(lambda p: model(z, p, batch), pos, "scalar", generator=generator, trials=2)
    assert_equivariant(lambda p: forces(model, z, p, batch), pos, "vector", generator=generator, trials=2)
    assert_permutation_equivariant(
        lambda perm: model(z if perm is None else z[perm], pos if perm is None else pos[perm], batch), z.numel()
    )


def test_batching_matches_single_molecules(generator):
    model = small_model(generator)
    (z1, p1), (z2, p2) = molecule(generator, 5), molecule(generator, 7)
    batch = torch.cat([torch.zeros(5, dtype=torch.long), torch.ones(7, dtype=torch.long)])
    out = model(torch.cat([z1, z2]), torch.cat([p1, p2]), batch)
    assert out.shape == (2, 1)
    torch.testing.assert_close(out[0], model(z1, p1, torch.zeros(5, dtype=torch.long))[0])
    torch.testing.assert_close(out[1], model(z2, p2, torch.zeros(7, dtype=torch.long))[0])


def test_energy_and_force_loss_drops_on_rmd17_aspirin():
    data = np.load(RMD17)
    z = torch.from_numpy(data["nuclear_charges"]).long()
    pos = torch.from_numpy(data["coords"][:4]).float()
    energy = torch.from_numpy(data["energies"][:4]).float()
    force = torch.from_numpy(data["forces"][:4]).float()
    scale = energy.std()
    target_e, target_f = (energy - energy.mean()) / scale, force / scale
    n = z.numel()
    zs, batch = z.repeat(4), torch.arange(4).repeat_interleave(n)
    torch.manual_seed(0)
    model = GauntNet(channels=8, lmax=2, num_layers=1, correlation=2, radial_hidden=16, avg_num_neighbors=20.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)

    def loss_fn() -> torch.Tensor:
        p = pos.reshape(-1, 3).clone().requires_grad_(True)
        e = model(zs, p, batch)[:, 0]
        (grad,) = torch.autograd.grad(e.sum(), p, create_graph=True)
        return (e - target_e).pow(2).mean() + (grad.view(4, n, 3) + target_f).pow(2).mean()

    first = loss_fn().item()
    for _ in range(30):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
    assert loss_fn().item() < 0.5 * first


def test_bad_input():
    model = GauntNet(channels=4, lmax=1, num_layers=1, num_elements=10)
    with pytest.raises(ValueError, match="num_elements"):
        model(torch.tensor([1, 10]), torch.randn(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="readout"):
        GauntNet(readout="max")


def test_max_z_is_the_deprecated_num_elements():
    """Configs stored before ``num_elements`` name ``max_z`` (pretrained/gaunt_rmd17_ethanol_cpu): same network."""
    with pytest.warns(DeprecationWarning, match="num_elements"):
        old = GauntNet(channels=4, lmax=1, num_layers=1, max_z=9)
    new = GauntNet(channels=4, lmax=1, num_layers=1, num_elements=10)
    assert old.num_elements == 10 and old.embedding.num_embeddings == 10
    assert [p.shape for p in old.parameters()] == [p.shape for p in new.parameters()]


def test_compiled_model_equals_eager(generator):
    """``torch.compile`` of a GauntNet (energy and parameter gradients) gives the eager numbers: the fused Gaunt
    kernel is a registered op, so only the data-dependent graph construction breaks the graph."""
    model = small_model(generator)
    z, pos = molecule(generator)
    batch = torch.zeros_like(z)
    compiled = torch.compile(model, backend="aot_eager")
    results = []
    for m in (compiled, model):
        energy = m(z, pos, batch)
        results.append((energy, torch.autograd.grad(energy.sum(), list(model.parameters()))))
    (energy, grads), (ref_energy, ref_grads) = results
    torch.testing.assert_close(energy, ref_energy, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
