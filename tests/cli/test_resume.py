"""A run killed with SIGKILL mid-epoch continues from last.ckpt and ends with the same weights."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ARGS = [
    "data.source=tests/fixtures/qm9", "data.batch_size=8", "data.subset=null",
    "model.net.hidden_channels=16", "model.net.num_filters=16", "model.net.num_interactions=2",
    "trainer.max_epochs=3", "trainer.enable_progress_bar=false", "test=false", "callbacks.ema.decay=0.9",
]  # fmt: skip


def start(run_dir: Path, data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GEOMOL_DATA": str(data_dir)}
    cmd = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *ARGS]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def weights(run_dir: Path) -> dict:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["epoch"] == 2
    # state_dict holds the EMA weights, current_model_state the raw ones: compare both.
    return {**ckpt["state_dict"], **{f"raw.{k}": v for k, v in ckpt["current_model_state"].items()}}


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    data = tmp_path / "data"
    reference = start(tmp_path / "reference", data)
    assert reference.wait(timeout=600) == 0, reference.stdout.read()[-3000:]

    killed_dir = tmp_path / "killed"
    last = killed_dir / "checkpoints" / "last.ckpt"
    # Kill after the first checkpoint, inside a later epoch; on a fast machine a fixed delay can overshoot
    # the whole run, so shorter delays are tried until the kill lands before the last epoch's checkpoint.
    for delay in (1.0, 0.3, 0.1, 0.02):
        shutil.rmtree(killed_dir, ignore_errors=True)
        victim = start(killed_dir, data)
        deadline = time.time() + 600
        while not last.exists() and victim.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(delay)  # into the next epoch
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        first_epoch = torch.load(last, weights_only=True, map_location="cpu")["epoch"]
        if first_epoch < 2:
            break
    assert first_epoch < 2, "killed too late to test a resume"

    resumed = start(killed_dir, data)
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert "resuming from" in out

    expected, got = weights(tmp_path / "reference"), weights(killed_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    # The log survives the kill: metrics.csv holds the validation rows of every epoch, before and after
    # the resume, once each, and they equal the uninterrupted run's.
    assert val_rows(killed_dir).keys() == val_rows(tmp_path / "reference").keys() == {0, 1, 2}
    for epoch, loss in val_rows(tmp_path / "reference").items():
        assert val_rows(killed_dir)[epoch] == pytest.approx(loss, rel=1e-4), epoch
    # The training clock continues across the resume instead of restarting at zero.
    with open(killed_dir / "metrics.csv", newline="") as handle:
        minutes = [float(row["time/train_minutes"]) for row in csv.DictReader(handle) if row.get("time/train_minutes")]
    assert len(minutes) == 3 and minutes == sorted(minutes) and minutes[0] > 0


def val_rows(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/loss")]
    epochs = [int(row["epoch"]) for row in rows]
    assert len(epochs) == len(set(epochs)), f"duplicated validation rows: {epochs}"
    return {int(row["epoch"]): float(row["val/loss"]) for row in rows}


def test_training_clock_restores_its_elapsed_time():
    from geomol.tasks import TrainingClock

    clock = TrainingClock()
    clock.load_state_dict({"elapsed": 600.0})  # what a resumed run reads from last.ckpt
    clock.on_train_start(None, None)
    assert 600.0 <= clock.state_dict()["elapsed"] < 601.0
