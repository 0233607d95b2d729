import pytorch_lightning as pl
import torch

from geomol.data.nbody import NBodyDataModule
from geomol.tasks.nbody import NBodyTask

NET = {
    "_target_": "geomol.models.ponita.PonitaDynamics",
    "hidden_channels": 16,
    "num_layers": 2,
    "num_ori": 8,
    "basis_dim": 16,
    "degree": 2,
}


def test_training_reduces_the_position_error_and_checkpoints_reload(tmp_path):
    pl.seed_everything(0)
    dm = NBodyDataModule(
        tmp_path / "data", num_train=32, num_val=8, num_test=8, batch_size=8, start_step=50, horizon=200
    )
    task = NBodyTask(
        net=NET, optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3}, **dm.task_kwargs()
    )
    dm.setup()
    batch = next(iter(dm.val_dataloader()))

    def mse() -> float:
        task.eval()
        with torch.no_grad():
            out = float((task(batch.pos, batch.vel, batch.charge, batch.batch) - batch.y).pow(2).mean())
        task.train()
        return out

    before = mse()
    trainer = pl.Trainer(
        max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    trainer.fit(task, datamodule=dm)
    after = mse()
    print(f"N-body validation MSE: {before:.4f} -> {after:.4f}")
    assert after < 0.5 * before
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)
    loaded = NBodyTask.load_from_checkpoint(path).eval()
    task.eval()  # training mode rotates the grid at random
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(batch.pos, batch.vel, batch.charge, batch.batch),
            task(batch.pos, batch.vel, batch.charge, batch.batch),
        )
