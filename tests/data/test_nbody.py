import numpy as np
import pytest
import torch

from geomol.data.nbody import NBody, NBodyDataModule, charged_initial_conditions, simulate_charged


def random_systems(count: int, seed: int = 0):
    rng = np.random.RandomState(seed)
    loc = rng.randn(count, 5, 3)
    vel = rng.randn(count, 5, 3) * 0.5
    charge = rng.choice([-1.0, 1.0], size=(count, 5))
    return loc, vel, charge


def test_momentum_is_conserved():
    loc, vel, charge = random_systems(32)
    steps = tuple(range(50, 501, 50))
    _, vels, clipped = simulate_charged(loc, vel, charge, 500, save_steps=steps, max_force=None)
    p0 = torch.from_numpy(vel).sum(1)
    drift = max(float((v.sum(1) - p0).abs().max()) for v in vels)
    assert drift < 1e-11 and not clipped.any()
    # Nothing else conserves it for free: velocities themselves did change.
    assert float((vels[-1] - torch.from_numpy(vel)).abs().max()) > 1e-2


def test_force_clip_breaks_momentum_only_where_it_acts():
    loc, vel, charge = random_systems(8, seed=1)
    # System 0: two opposite charges 0.05 apart attract with force 400 > 100.
    loc[0, 1] = loc[0, 0] + np.array([0.05, 0.0, 0.0])
    charge[0, :2] = [1.0, -1.0]
    _, (v,), clipped = simulate_charged(loc, vel, charge, 200, save_steps=(200,))
    drift = (v.sum(1) - torch.from_numpy(vel).sum(1)).abs().amax(1)
    assert clipped[0] and drift[0] > 1e-3
    assert float(drift[~clipped].max()) < 1e-12


def test_simulation_matches_a_particle_by_particle_loop():
    loc, vel, charge = random_systems(1, seed=2)
    (x_fast,), (v_fast,), _ = simulate_charged(loc, vel, charge, 30, save_steps=(30,))
    x, v, q, dt = loc[0].copy(), vel[0].copy(), charge[0], 1e-3

    def force(x):
        f = np.zeros((5, 3))
        for i in range(5):
            for j in range(5):
                if i != j:
                    r = x[i] - x[j]
                    f[i] += q[i] * q[j] * r / np.linalg.norm(r) ** 3
        return np.clip(f, -100.0, 100.0)

    v += dt * force(x)
    for _ in range(30):
        x += dt * v
        v_saved = v.copy()
        v += dt * force(x)
    np.testing.assert_allclose(x_fast[0].numpy(), x, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(v_fast[0].numpy(), v_saved, rtol=1e-12, atol=1e-13)


def test_initial_conditions_follow_egnn_generator():
    (train_loc, train_vel, train_q), (val_loc, _, _), (test_loc, _, _) = charged_initial_conditions(43, (4, 2, 3))
    assert train_loc.shape == (4, 5, 3) and val_loc.shape == (2, 5, 3) and test_loc.shape == (3, 5, 3)
    np.testing.assert_allclose(np.linalg.norm(train_vel, axis=-1), 0.5)
    assert set(np.unique(train_q)) <= {-1.0, 1.0}
    # EGNN's call sequence per system (synthetic_sim.py): charges, positions, velocities, two noise blocks.
    rng = np.random.RandomState(43)
    for k in range(2):
        charge = rng.choice([-1.0, 0.0, 1.0], size=(5, 1), p=[0.5, 0.0, 0.5])
        loc, vel = rng.randn(3, 5), rng.randn(3, 5)
        rng.randn(49, 3, 5), rng.randn(49, 3, 5)
        np.testing.assert_array_equal(train_q[k], charge[:, 0])
        np.testing.assert_array_equal(train_loc[k], loc.T)
        np.testing.assert_allclose(train_vel[k], (vel * 0.5 / np.linalg.norm(vel, axis=0)).T, rtol=1e-15)
    again = charged_initial_conditions(43, (4, 2, 3))
    np.testing.assert_array_equal(again[2][0], test_loc)
    with pytest.raises(ValueError, match="asked for"):
        charged_initial_conditions(43, (3000, 2001, 2000))


def test_datamodule_generates_and_caches(tmp_path):
    kwargs = dict(num_train=6, num_val=3, num_test=2, start_step=50, horizon=40)
    dm = NBodyDataModule(tmp_path, batch_size=4, **kwargs)
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [6, 3, 2]
    item = dm.dataset[0]
    assert item.pos.shape == item.vel.shape == item.y.shape == (5, 3) and item.charge.shape == (5, 1)
    batch = next(iter(dm.train_dataloader()))
    assert batch.pos.shape == (20, 3) and batch.num_graphs == 4
    assert dm.task_kwargs() == {}
    # Cached file is reused; the same seed regenerates the same data.
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    again = NBody(tmp_path, **kwargs)
    torch.testing.assert_close(again.target, dm.dataset.target)
    fresh = NBody(tmp_path / "other", **kwargs)
    torch.testing.assert_close(fresh.target, dm.dataset.target)
    # Velocities drive the motion: 40 steps move particles by about 0.04 · |v|.
    moved = (dm.dataset.target - dm.dataset.pos).norm(dim=-1)
    expected = 40e-3 * dm.dataset.vel.norm(dim=-1)
    assert torch.allclose(moved, expected, rtol=0.3, atol=5e-3)
