from pathlib import Path

import torch

from geomol.data.datamodule import QM9DataModule
from geomol.models.regressor import GVPRegressor
from geomol.tasks.property import PropertyTask
from geomol.testing import assert_equivariant, assert_permutation_equivariant

FIXTURE = Path(__file__).parents[1] / "fixtures" / "qm9"


def _model():
    torch.manual_seed(0)
    return GVPRegressor(2, scalars=16, vectors=4, num_layers=2, rbf_dim=8).double()


def test_regressor_is_e3_and_permutation_invariant(generator):
    model = _model()
    z = torch.tensor([6, 1, 1, 8, 7, 1, 9])
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    pos = torch.randn(7, 3, dtype=torch.float64, generator=generator)
    assert model(z, pos, batch).shape == (2, 2)
    assert_equivariant(lambda x: model(z, x, batch), pos, output="scalar", generator=generator)
    # Permute within molecules only; the per-molecule output is unchanged.
    inner = torch.cat([torch.randperm(4, generator=generator), 4 + torch.randperm(3, generator=generator)])
    assert_permutation_equivariant(
        lambda p: model(z, pos, batch) if p is None else model(z[inner], pos[inner], batch[inner]), 7
    )


def test_regressor_trains_with_property_task(tmp_path):
    dm = QM9DataModule(root=tmp_path, source=FIXTURE, target="gap", train_half="regressor", batch_size=32)
    net = {
        "_target_": "geomol.models.regressor.GVPRegressor",
        "scalars": 32,
        "vectors": 4,
        "num_layers": 2,
        "rbf_dim": 16,
    }
    torch.manual_seed(0)
    task = PropertyTask(
        net=net, optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3}, **dm.task_kwargs()
    )
    optimizer = task.configure_optimizers()
    batches = list(dm.train_dataloader())
    target = torch.cat([b.y[:, task.hparams.target_columns] for b in batches])

    def mae():
        with torch.no_grad():
            return (torch.cat([task(b.z, b.pos, b.batch) for b in batches]) - target).abs().mean().item()

    before = mae()
    for _ in range(8):
        for batch in batches:
            loss = task.training_step(batch, 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert mae() < 0.8 * before
