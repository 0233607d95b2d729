"""PONITA's training recipe as its authors' code has it (ebekkers/ponita, main_md17.py and
lightning_wrappers/{md17,scheduler}.py, ponita/nn/conv.py): each convention pinned with numbers."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geomol.data.rmd17 import RMD17DataModule
from geomol.nn.ponita import FiberBundleConv, PointConv
from geomol.tasks import PropertyTask
from geomol.tasks.schedules import cosine_times_warmup

FIXTURES = Path(__file__).parents[1] / "fixtures" / "rmd17"


def _authors_lr_factor(epoch: int, warmup: int, max_iters: int) -> float:
    # CosineWarmupScheduler.get_lr_factor, transcribed
    lr_factor = 0.5 * (1 + np.cos(np.pi * epoch / max_iters))
    if epoch <= warmup:
        lr_factor *= (epoch + 1e-6) * 1.0 / (warmup + 1e-6)
    return float(lr_factor)


def test_schedule_is_the_authors_cosine_times_warmup():
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = cosine_times_warmup(opt, warmup_steps=100, total_steps=5000)
    factors = []
    for _ in range(300):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for epoch in (0, 1, 50, 100, 101, 299):
        assert factors[epoch] == pytest.approx(_authors_lr_factor(epoch, 100, 5000), rel=1e-12, abs=1e-15)
    assert factors[0] < 1e-7  # the first epoch trains at ~0 learning rate, as theirs


def test_point_conv_calibrates_like_the_authors_conv():
    torch.manual_seed(0)
    conv = PointConv(8, 16, calibrate=True)
    x, basis = torch.randn(30, 8) * 3.0, torch.randn(120, 16)
    edge_index = torch.randint(0, 30, (2, 120))
    w0 = conv.kernel.weight.detach().clone()
    conv.eval()
    conv(x, edge_index, basis)  # eval mode: no calibration
    assert torch.equal(conv.kernel.weight, w0) and not bool(conv.calibrated)
    conv.train()
    with torch.no_grad():
        out = torch.zeros(30, 8).index_add_(0, edge_index[1], (basis @ w0.T) * x[edge_index[0]])
    conv(x, edge_index, basis)
    torch.testing.assert_close(conv.kernel.weight, w0 * x.std() / out.std())
    assert bool(conv.calibrated)
    w1 = conv.kernel.weight.detach().clone()
    conv(x, edge_index, basis)  # once only
    assert torch.equal(conv.kernel.weight, w1)
    with torch.no_grad():
        again = conv(x, edge_index, basis) - conv.bias
    assert again.std() == pytest.approx(float(x.std()), rel=1e-5)  # variance-preserving after calibration
    assert "calibrated" in conv.state_dict() and "calibrated" not in PointConv(8, 16).state_dict()


def test_fiber_bundle_conv_calibrates_both_kernels():
    torch.manual_seed(1)
    conv = FiberBundleConv(6, 10, calibrate=True).train()
    x, basis, fiber = torch.randn(12, 4, 6), torch.randn(40, 4, 10), torch.randn(4, 4, 10)
    edge_index = torch.randint(0, 12, (2, 40))
    k0, f0 = conv.kernel.weight.detach().clone(), conv.fiber_kernel.weight.detach().clone()
    with torch.no_grad():
        spatial = torch.zeros(12, 4, 6).index_add_(0, edge_index[1], (basis @ k0.T) * x[edge_index[0]])
        out = torch.einsum("npc,poc->noc", spatial, fiber @ f0.T) / 4
    conv(x, edge_index, basis, fiber)
    torch.testing.assert_close(conv.kernel.weight, k0 * x.std() / spatial.std())
    torch.testing.assert_close(conv.fiber_kernel.weight, f0 * spatial.std() / out.std())


@pytest.fixture(scope="module")
def aspirin():
    dm = RMD17DataModule(root=FIXTURES, molecule="aspirin", num_train=40, num_val=8, num_test=8, batch_size=4,
                         download=False)  # fmt: skip
    dm.setup()
    return dm


def _task(dm, **kwargs):
    net = {"_target_": "geomol.models.ponita.Ponita", "hidden_channels": 8, "num_layers": 1, "num_ori": 4,
           "basis_dim": 8, "num_elements": 9, "calibrate": True}  # fmt: skip
    return PropertyTask(net=net, **{**dm.task_kwargs(), **kwargs})


def test_force_rms_loss_is_the_authors(aspirin):
    """energy_scale=force_rms, energy_weight=1/500, force_weight=1 is main_md17's E/500 + F."""
    kwargs = aspirin.task_kwargs()
    forces = torch.cat([aspirin.dataset.forces[k] for k in aspirin.splits["train"].tolist()])
    assert kwargs["force_rms"] == pytest.approx(float(forces.double().pow(2).mean().sqrt()), rel=1e-6)
    task = _task(aspirin, energy_scale="force_rms", energy_weight=0.002, force_weight=1.0).double()
    batch = next(iter(aspirin.train_dataloader()))
    batch.pos = batch.pos.double()
    task.eval()
    energy, pred_forces = task.predict_energy_forces(batch.z, batch.pos, batch.batch)
    scale, shift = kwargs["force_rms"], kwargs["mean"][0] * 21  # one molecule: per-atom mean × atoms
    # lightning_wrappers/md17.py training_step, in geomol's eV units (the ratio is unit-free)
    pred_std = (energy - shift) / scale
    energy_loss = torch.mean((pred_std - (batch.energy.double() - shift) / scale) ** 2)
    force_loss = torch.mean(torch.sum((pred_forces / scale - batch.forces.double() / scale) ** 2, -1)) / 3.0
    expected = energy_loss / 500.0 + force_loss
    torch.testing.assert_close(task._step(batch, "val").double(), expected.detach(), rtol=1e-6, atol=0)
    assert task.hparams.std == [kwargs["force_rms"]]


def test_test_time_rotation_average(aspirin):
    """For an exactly invariant model the average over rotations equals one prediction (forces rotated
    back correctly); PONITA's grid makes single predictions rotation-dependent, which averaging smooths."""
    batch = next(iter(aspirin.test_dataloader()))
    net = {"_target_": "geomol.models.schnet.SchNet", "hidden_channels": 16, "num_filters": 16, "num_interactions": 1}
    task = PropertyTask(net=net, **aspirin.task_kwargs(), test_rotations=5).double().eval()
    batch.pos = batch.pos.double()
    single = task._rotation_average(batch, 1)
    averaged = task._rotation_average(batch, 5)
    torch.testing.assert_close(averaged[0], single[0].detach())
    torch.testing.assert_close(averaged[1], single[1].detach())
    with pytest.raises(ValueError, match="test_rotations must be a whole number >= 1"):
        PropertyTask(net=net, **aspirin.task_kwargs(), test_rotations=0)
    with pytest.raises(ValueError, match="energy_scale=force_rms needs a force field"):
        PropertyTask(net=net, targets=["homo"], units=["eV"], mean=[0.0], std=[1.0], energy_scale="force_rms")
    fresh = next(iter(aspirin.test_dataloader()))
    assert math.isfinite(float(_task(aspirin, test_rotations=3).eval()._rotation_average(fresh, 3)[0].sum()))
