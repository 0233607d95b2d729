import pytest
import pytorch_lightning as pl
import torch
from torch_geometric.data import Batch, Data

from geomol.data.datamodule import QM9DataModule
from geomol.tasks import PropertyTask

NET = {
    "_target_": "geomol.models.SchNet",
    "hidden_channels": 32,
    "num_filters": 32,
    "num_interactions": 2,
    "num_basis": 16,
}


@pytest.fixture(scope="module")
def qm9_module(tmp_path_factory, request):
    from pathlib import Path

    source = Path(request.config.rootpath) / "tests" / "fixtures" / "qm9"
    dm = QM9DataModule(root=tmp_path_factory.mktemp("qm9"), source=source, target=["homo", "U0"], batch_size=32)
    dm.setup()
    return dm


def make_task(dm, **kwargs):
    opt = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3}
    return PropertyTask(net=NET, optimizer=opt, **dm.task_kwargs(), **kwargs)


def test_loss_drops_on_real_qm9(qm9_module):
    torch.manual_seed(0)
    task = make_task(qm9_module)
    batches = list(qm9_module.train_dataloader())[:4]
    opt = task.configure_optimizers()

    def loss():
        with torch.no_grad():
            return sum(task._step(b, "train").item() for b in batches) / len(batches)

    before = loss()
    for _ in range(10):
        for b in batches:
            opt.zero_grad()
            task._step(b, "train").backward()
            opt.step()
    assert loss() < 0.7 * before


def test_predictions_in_physical_units(qm9_module):
    task = make_task(qm9_module)
    with torch.no_grad():  # a network that outputs 0 predicts the training mean
        task.net.head[-1].weight.zero_()
        task.net.head[-1].bias.zero_()
    batch = next(iter(qm9_module.val_dataloader()))
    with torch.no_grad():
        pred = task(batch.z, batch.pos, batch.batch).double()
    mean = qm9_module.task_kwargs()["mean"]
    n_atoms = torch.bincount(batch.batch).double()
    torch.testing.assert_close(pred[:, 0], torch.full_like(pred[:, 0], mean[0]))  # HOMO: intensive
    torch.testing.assert_close(pred[:, 1], mean[1] * n_atoms)  # U0: per-atom mean times atom count
    # The per-atom mean of U0 is that of QM9's molecules: between H (-13.6 eV) and C (-1030 eV) per atom.
    assert -1000 < mean[1] < -100


def test_checkpoint_round_trip(qm9_module, tmp_path):
    task = make_task(qm9_module)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=1, enable_model_summary=False)  # fmt: skip
    trainer.fit(task, datamodule=qm9_module)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = PropertyTask.load_from_checkpoint(path, weights_only=True)
    batch = next(iter(qm9_module.test_dataloader()))
    task.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch.z, batch.pos, batch.batch), task(batch.z, batch.pos, batch.batch))
    assert loaded.hparams.targets == ["homo", "U0"] and loaded.hparams.units == ["eV", "eV"]


def test_forces_are_negative_energy_gradient(generator):
    task = PropertyTask(
        net=NET, targets=["energy"], units=["eV"], mean=[-1.0], std=[2.0], extensive=[True], forces=True
    )
    task = task.double()
    z = torch.tensor([6, 1, 1, 1, 8])
    pos = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    energy, forces = task.predict_energy_forces(z, pos)
    eps = 1e-6
    for atom, axis in [(0, 0), (3, 2)]:
        shifted = pos.clone()
        shifted[atom, axis] += eps
        e_plus = task(z, shifted)[0, 0]
        shifted[atom, axis] -= 2 * eps
        e_minus = task(z, shifted)[0, 0]
        assert forces[atom, axis].item() == pytest.approx(-(e_plus - e_minus).item() / (2 * eps), rel=1e-5, abs=1e-8)
    # The force loss trains: one step on a fake frame reduces it.
    data = Batch.from_data_list([Data(z=z, pos=pos, energy=torch.tensor([0.5], dtype=torch.float64),
                                      forces=torch.zeros(5, 3, dtype=torch.float64), y=torch.zeros(1, 1))])  # fmt: skip
    opt = torch.optim.Adam(task.parameters(), lr=1e-2)
    task.train()
    first = task._step(data, "train")
    for _ in range(5):
        opt.zero_grad()
        task._step(data, "train").backward()
        opt.step()
    assert task._step(data, "train") < first


def test_bad_input_errors(qm9_module):
    task = make_task(qm9_module)
    z = torch.tensor([6, 1, 1, 1, 1])
    pos = torch.randn(5, 3)
    with pytest.raises(ValueError, match="unknown element Z=16"):
        task(torch.tensor([6, 16, 1, 1, 1]), pos)
    bad = pos.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite coordinates"):
        task(z, bad)
    with pytest.raises(ValueError, match="empty molecule"):
        task(torch.zeros(0, dtype=torch.long), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="pos must have shape \\[5, 3\\]"):
        task(z, pos[:4])
