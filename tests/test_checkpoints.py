import os

import pytest
import pytorch_lightning as pl
import torch

from geomol.checkpoints import TASK_KEY, load_task, read_checkpoint
from geomol.data.datamodule import QM9DataModule
from geomol.tasks import PropertyTask

NET = {
    "_target_": "geomol.models.SchNet",
    "hidden_channels": 16,
    "num_filters": 16,
    "num_interactions": 1,
    "num_basis": 8,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, request):
    from pathlib import Path

    folder = tmp_path_factory.mktemp("ckpt")
    source = Path(request.config.rootpath) / "tests" / "fixtures" / "qm9"
    dm = QM9DataModule(root=folder, source=source, target="gap", batch_size=16, subset=64)
    task = PropertyTask(net=NET, **dm.task_kwargs())
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1)  # fmt: skip
    trainer.fit(task, datamodule=dm)
    path = folder / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_round_trip(checkpoint):
    task = load_task(checkpoint, expected=PropertyTask)
    assert isinstance(task, PropertyTask) and not task.training
    assert read_checkpoint(checkpoint)[TASK_KEY] == "geomol.tasks.property.PropertyTask"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_task(tmp_path / "nope.ckpt")


def test_pickled_code_is_refused(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["payload"] = os.system  # would run on load with weights_only=False
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    with pytest.raises(ValueError, match="unsafe checkpoint refused: .* holds pickled objects"):
        load_task(evil, expected=PropertyTask)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint", None])
def test_corrupt_or_truncated(checkpoint, tmp_path, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(checkpoint.read_bytes()[:2000] if content is None else content)
    with pytest.raises(ValueError, match="not a valid checkpoint \\(corrupt or truncated\\)"):
        load_task(bad, expected=PropertyTask)


def test_not_a_geomol_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a geomol checkpoint"):
        load_task(path, expected=PropertyTask)


def test_other_model_type(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt[TASK_KEY] = "geomol.tasks.image.ImageTask"
    other = tmp_path / "image.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(ValueError, match="holds a ImageTask, but a PropertyTask is needed"):
        load_task(other, expected=PropertyTask)


def test_non_finite_weights_are_refused(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][key] = ckpt["state_dict"][key].clone().fill_(float("nan"))
    bad = tmp_path / "diverged.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(
        ValueError, match=rf"checkpoint {bad} holds non-finite weights \(NaN or inf\) in {key}: the run diverged"
    ):
        load_task(bad)


def test_slim_checkpoint_loads_the_same_weights(checkpoint, tmp_path):
    from geomol.checkpoints import slim_checkpoint

    slim = slim_checkpoint(checkpoint, tmp_path / "slim.ckpt")
    full, small = read_checkpoint(checkpoint), read_checkpoint(slim)
    assert "optimizer_states" in full and "optimizer_states" not in small and small[TASK_KEY] == full[TASK_KEY]
    assert slim.stat().st_size < checkpoint.stat().st_size
    a, b = load_task(checkpoint), load_task(slim)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
