"""Callbacks shared by all tasks."""

from __future__ import annotations

import csv
import os
import time
from collections import defaultdict
from pathlib import Path

import pytorch_lightning as pl

__all__ = ["TrainingCurves", "TrainingClock", "ModelCheckpoint"]


class ModelCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` follows every validation (and is not written by
    ``fast_dev_run``).

    Since Lightning 2.6 ``save_last`` writes ``last.ckpt`` only when a top-k checkpoint was saved at
    the same step, so once the monitored metric stops improving a run's ``last.ckpt`` stops moving
    and a resumed run loses everything trained since. Here ``last.ckpt`` is written at every
    checkpoint opportunity (``best.ckpt`` still only when the metric improves).
    """

    def _save_last_if_missed(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning 2.6 writes last.ckpt here even under fast_dev_run (which "disables checkpointing"):
        # a later real run in that directory would then resume from a one-step smoke test.
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)


class TrainingClock(pl.Callback):
    """Logs ``time/train_minutes``, the wall time the run has trained so far (validation included), at
    every validation; the total is kept in checkpoints, so it continues across resumes. With it,
    ``metrics.csv`` gives learning curves against compute (time-to-quality), not only against steps.

    Args:
        initial_minutes: training time spent before the clock existed, for a run resumed from a
            checkpoint without clock state (ignored when the checkpoint has one).
    """

    def __init__(self, initial_minutes: float = 0.0) -> None:
        self.elapsed = 60.0 * float(initial_minutes)
        self._start: float | None = None

    def _seconds(self) -> float:
        return self.elapsed + (time.monotonic() - self._start if self._start is not None else 0.0)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._start is not None:
            pl_module.log("time/train_minutes", self._seconds() / 60.0, rank_zero_only=True)

    def state_dict(self) -> dict:
        return {"elapsed": self._seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.elapsed = float(state_dict.get("elapsed", 0.0))


class TrainingCurves(pl.Callback):
    """Write ``curves.png`` (losses and validation metrics per epoch) into the run directory.

    Reads the CSV logger's ``metrics.csv`` after every validation epoch, so the picture is there
    even if the run is killed.
    """

    def __init__(self, filename: str = "curves.png") -> None:
        self.filename = filename

    def _metrics_file(self, trainer: pl.Trainer) -> Path | None:
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.CSVLogger):
                path = Path(logger.log_dir) / "metrics.csv"
                return path if path.exists() else None
        return None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        # The CSV logger writes at its own pace; flush so this epoch is included.
        for logger in trainer.loggers:
            logger.save()
        path = self._metrics_file(trainer)
        if path is not None:
            plot_metrics(path, Path(trainer.default_root_dir) / self.filename)


def plot_metrics(metrics_csv: str | os.PathLike, output: str | os.PathLike) -> None:
    """Plot every ``*/loss`` and ``val/*`` column of a Lightning CSV log against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = defaultdict(dict)
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = row.get("epoch")
            if not epoch:
                continue
            for key, value in row.items():
                if (
                    value
                    and key not in ("epoch", "step")
                    and (key.endswith("loss") or key.endswith("_epoch") or key.startswith("val/"))
                ):
                    series[key.removesuffix("_epoch")][int(float(epoch))] = float(value)
    losses = sorted(k for k in series if k.endswith("loss"))
    metrics = sorted(k for k in series if k.startswith("val/") and not k.endswith("loss"))
    if not losses and not metrics:
        return
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(11 if metrics else 5.5, 4), squeeze=False)
    for key in losses:
        xs = sorted(series[key])
        axes[0, 0].plot(xs, [series[key][x] for x in xs], marker="o", ms=3, label=key)
    axes[0, 0].set(xlabel="epoch", ylabel="loss", yscale="log", title="losses")
    axes[0, 0].legend()
    if metrics:
        for key in metrics:
            xs = sorted(series[key])
            axes[0, 1].plot(xs, [series[key][x] for x in xs], marker="o", ms=3, label=key)
        axes[0, 1].set(xlabel="epoch", title="validation metrics", yscale="log")
        axes[0, 1].legend()
    fig.tight_layout()
    tmp = Path(output).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, output)
