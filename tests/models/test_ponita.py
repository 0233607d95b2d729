import math

import pytest
import pytorch_lightning as pl
import torch

from geomol.data.rmd17 import RMD17DataModule
from geomol.models.ponita import Ponita, PonitaDynamics
from geomol.tasks.property import PropertyTask
from geomol.testing import assert_equivariant, random_rotation

SMALL = dict(hidden_channels=8, num_layers=2, basis_dim=8, degree=2)


def two_molecules(generator):
    pos = torch.randn(9, 3, dtype=torch.float64, generator=generator) * 1.3
    z = torch.tensor([6, 1, 1, 8, 6, 7, 1, 1, 1])
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    return z, pos, batch


def energy_and_forces(model, z, batch):
    def fn(pos):
        pos = pos.detach().requires_grad_(True)
        energy = model(z, pos, batch)
        (grad,) = torch.autograd.grad(energy.sum(), pos)
        return energy, -grad

    return fn


def icosahedron() -> torch.Tensor:
    phi = (1 + math.sqrt(5)) / 2
    pts = []
    for a in (-1.0, 1.0):
        for b in (-phi, phi):
            pts += [(0.0, a, b), (a, b, 0.0), (b, 0.0, a)]
    grid = torch.tensor(pts, dtype=torch.float64)
    return grid / grid.norm(dim=-1, keepdim=True)


def icosahedral_symmetries(grid: torch.Tensor, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Random elements of the grid's symmetry group I_h (rotations and reflections)."""
    cos = grid @ grid.T
    adjacent = (cos - 1 / math.sqrt(5)).abs() < 1e-9
    faces = [
        (a, b, c)
        for a in range(12)
        for b in range(12)
        for c in range(12)
        if adjacent[a, b] and adjacent[b, c] and adjacent[a, c]
    ]  # all 120 ordered faces: one per group element
    ref = grid[list(faces[0])].T
    out = []
    for k in torch.randperm(len(faces), generator=generator)[:count].tolist():
        R = grid[list(faces[k])].T @ torch.linalg.inv(ref)
        # R maps the grid onto itself.
        assert ((grid @ R.T) @ grid.T - 1).abs().min(dim=1).values.max() < 1e-9
        out.append(R)
    return out


@pytest.mark.parametrize(
    "num_ori, extra",
    [(0, {}), (-1, {}), (-1, {"complete_invariants": True}), (-1, {"radius": 2.5, "lift_radius": 1.8})],
    ids=["R3", "edge-lifted", "edge-lifted-complete", "edge-lifted-cutoff"],
)
def test_energy_invariant_and_forces_equivariant(num_ori, extra, generator):
    torch.manual_seed(0)
    z, pos, batch = two_molecules(generator)
    model = Ponita(1, num_ori=num_ori, **SMALL, **extra).double().eval()
    assert_equivariant(energy_and_forces(model, z, batch), pos, ("scalar", "vector"), generator=generator)


def test_grid_model_is_exactly_equivariant_under_the_grid_symmetries(generator):
    torch.manual_seed(0)
    z, pos, batch = two_molecules(generator)
    model = Ponita(1, num_ori=12, **SMALL).double().eval()
    model.net.grid = icosahedron()
    dynamics = PonitaDynamics(num_ori=12, **SMALL).double().eval()
    dynamics.net.grid = icosahedron()
    vel = torch.randn(9, 3, dtype=torch.float64, generator=generator)
    charge = torch.tensor([1.0, -1.0] * 4 + [1.0], dtype=torch.float64)
    fn = energy_and_forces(model, z, batch)
    energy, forces = fn(pos)
    future = dynamics(pos, vel, charge, batch)
    for R in icosahedral_symmetries(icosahedron(), 4, generator):
        t = torch.randn(3, dtype=torch.float64, generator=generator)
        moved_energy, moved_forces = fn(pos @ R.T + t)
        torch.testing.assert_close(moved_energy, energy, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(moved_forces, forces @ R.T, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(dynamics(pos @ R.T + t, vel @ R.T, charge, batch), future @ R.T + t)


def test_grid_model_equivariance_error_shrinks_with_the_grid(generator):
    z, pos, batch = two_molecules(generator)
    rotations = [random_rotation(generator=generator) for _ in range(4)]
    errors = {}
    for num_ori in (8, 64):
        rel = []
        for seed in range(2):
            torch.manual_seed(seed)
            model = Ponita(1, num_ori=num_ori, **SMALL).double().eval()
            energy = model(z, pos, batch)
            moved = torch.stack([model(z, pos @ R.T, batch) for R in rotations])
            rel.append(float((moved - energy).abs().max() / energy.abs().max()))
        errors[num_ori] = sum(rel) / len(rel)
    print(f"relative energy change under random rotations: 8 orientations {errors[8]:.2e}, 64 {errors[64]:.2e}")
    assert errors[64] < errors[8] / 3


@pytest.mark.parametrize("num_ori", [-1, 0, 16])
def test_batching_and_training_mode(num_ori, generator):
    torch.manual_seed(0)
    z, pos, batch = two_molecules(generator)
    model = Ponita(2, num_ori=num_ori, **SMALL).double().eval()
    together = model(z, pos, batch)
    first = model(z[:4], pos[:4], torch.zeros(4, dtype=torch.long))
    second = model(z[4:], pos[4:], torch.zeros(5, dtype=torch.long))
    assert together.shape == (2, 2)
    torch.testing.assert_close(together, torch.cat([first, second]))
    # Training mode rotates the grid at random (augmentation); modes without a grid are unaffected.
    model.train()
    changed = not torch.allclose(model(z, pos, batch), together)
    assert changed == (num_ori > 0)


@pytest.mark.parametrize("num_ori", [-1, 16])
def test_dynamics_outputs_are_equivariant_positions(num_ori, generator):
    torch.manual_seed(0)
    pos = torch.randn(10, 3, dtype=torch.float64, generator=generator)
    vel = torch.randn(10, 3, dtype=torch.float64, generator=generator)
    charge = torch.randint(0, 2, (10, 1), generator=generator).double() * 2 - 1
    batch = torch.tensor([0] * 5 + [1] * 5)
    model = PonitaDynamics(num_ori=num_ori, **SMALL).double().eval()
    out = model(pos, vel, charge, batch)
    assert out.shape == (10, 3) and not torch.allclose(out, pos)
    if num_ori == -1:
        # Velocities rotate with positions: pass them through the rotation alongside.
        for reflect in (False, True):
            R = random_rotation(generator=generator, reflection=reflect)
            t = torch.randn(3, dtype=torch.float64, generator=generator)
            torch.testing.assert_close(model(pos @ R.T + t, vel @ R.T, charge, batch), out @ R.T + t)


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="num_ori"):
        Ponita(1, num_ori=-2)
    with pytest.raises(ValueError, match="vector inputs or outputs need orientations"):
        PonitaDynamics(num_ori=0)
    with pytest.raises(ValueError, match="complete_invariants"):
        Ponita(1, num_ori=8, complete_invariants=True)
    with pytest.raises(ValueError, match="readout"):
        Ponita(1, readout="max")
    model = Ponita(1, num_ori=0, num_elements=10, **SMALL)
    with pytest.raises(ValueError, match="atomic numbers"):
        model(torch.tensor([6, 12]), torch.randn(2, 3), torch.zeros(2, dtype=torch.long))


def test_force_training_on_rmd17_frames_reduces_the_force_error(fixtures_dir):
    pl.seed_everything(0)
    dm = RMD17DataModule(fixtures_dir / "rmd17", num_train=40, num_val=10, batch_size=5, download=False)
    net = {"_target_": "geomol.models.ponita.Ponita", "num_ori": 0, **SMALL, "hidden_channels": 16}
    optimizer = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 5e-3}
    task = PropertyTask(net=net, optimizer=optimizer, force_weight=500.0, **dm.task_kwargs())
    dm.setup()
    batch = next(iter(dm.val_dataloader()))

    def force_mae() -> float:
        task.eval()
        _, forces = task.predict_energy_forces(batch.z, batch.pos, batch.batch)
        task.train()
        return float((forces - batch.forces).abs().mean())

    before = force_mae()
    trainer = pl.Trainer(
        max_epochs=20,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        inference_mode=False,
        limit_val_batches=0,
    )
    trainer.fit(task, datamodule=dm)
    after = force_mae()
    print(f"aspirin validation force MAE: {before * 1000:.0f} -> {after * 1000:.0f} meV/Å")
    assert after < 0.75 * before
