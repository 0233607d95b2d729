"""Callbacks shared by all tasks."""

from __future__ import annotations

import csv
import os
import time
from collections import defaultdict
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging

__all__ = ["TrainingCurves", "TrainingClock", "ModelCheckpoint", "EMA", "ema_decay"]


def ema_decay(decay: float, num_averaged: int, warmup: bool) -> float:
    """The decay of the ``num_averaged``-th EMA update: ``min(decay, (1 + n) / (10 + n))`` with ``warmup``
    (the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=…)``: a 20-step run averages over
    its last few steps instead of keeping 98 % of its random initialisation), else ``decay``."""
    return min(decay, (1.0 + num_averaged) / (10.0 + num_averaged)) if warmup else decay


class EMA(EMAWeightAveraging):
    """Lightning's EMA weight averaging (validation, checkpoints and the final weights use the average),
    with a warm-up and a validation of the raw weights beside it.

    Args:
        decay: the EMA decay once warmed up.
        warmup: ramp the decay as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (``ema_decay``),
            so short runs show what they learned; ``false`` is Lightning's constant decay (what runs
            before geomol 0.1's warm-up trained with).
        validate_raw: also evaluate the raw (not averaged) weights on the validation set each
            validation and log their metrics as ``val_raw/*`` (one more pass over the validation
            batches; the task's epoch-end extras, e.g. sampling molecules, run only for the EMA).
        **kwargs: Lightning's ``EMAWeightAveraging`` arguments (``update_starting_at_step`` …).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, validate_raw: bool = True, **kwargs) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"callbacks.ema.decay must be in [0, 1], got {decay}")
        super().__init__(decay=decay, **kwargs)
        self.decay, self.warmup, self.validate_raw = float(decay), bool(warmup), bool(validate_raw)

        @torch.no_grad()
        def average(ema_param, param, num_averaged):
            if not ema_param.is_floating_point():
                # Integer buffers (SH degrees, index tables) are constants, not weights: averaging them in
                # float32 and casting back truncates (0.9·3 + 0.1·3 -> 2; Lightning's EMA does this).
                return param
            d = ema_decay(self.decay, int(num_averaged), self.warmup)
            return d * ema_param + (1.0 - d) * param

        self._kwargs["avg_fn"] = average

    @property
    def state_key(self) -> str:
        return "EMAWeightAveraging"  # Lightning's name: checkpoints of either class resume with the other

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)  # the raw weights are back in pl_module
        if not self.validate_raw or self._average_model is None or trainer.sanity_checking:
            return
        if not hasattr(pl_module, "_step"):
            return
        loaders = trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        limit = trainer.num_val_batches
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            for k, loader in enumerate(loaders):
                if loader is None:
                    continue
                for i, batch in enumerate(loader):
                    if i >= limit[k]:
                        break
                    batch = pl_module.transfer_batch_to_device(batch, pl_module.device, k)
                    pl_module._step(batch, "val_raw")


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
        # a later real run in that directory would then resume from a one-step smoke test. And it writes it
        # only if no last.ckpt was written during the run, so the steps after the last validation of a run
        # stopped by max_steps or max_time mid-epoch were lost: here the final step always lands in last.ckpt.
        if not trainer.fast_dev_run:
            self._save_last_if_missed(trainer)


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
    """Write ``curves.png`` into the run directory: losses, and the validation metrics one panel per unit
    (MAE in meV apart from meV/Å, fractions apart from both), against the optimizer step.

    Drawn at the end of every validation, after that validation's metrics reached the CSV logger and were
    flushed (so the picture is never a validation behind ``metrics.csv``), and once more when training ends.
    """

    def __init__(self, filename: str = "curves.png") -> None:
        self.filename = filename

    def _metrics_file(self, trainer: pl.Trainer) -> Path | None:
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.CSVLogger):
                path = Path(logger.log_dir) / "metrics.csv"
                return path if path.exists() else None
        return None

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.fast_dev_run:
            return
        for logger in trainer.loggers:
            logger.save()
        path = self._metrics_file(trainer)
        if path is not None:
            units = pl_module.metric_units() if hasattr(pl_module, "metric_units") else {}
            plot_metrics(path, Path(trainer.default_root_dir) / self.filename, units)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning hands the epoch's validation metrics to the loggers after on_validation_epoch_end.
        self._draw(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer, pl_module)


FRACTIONS = ("stability", "validity", "uniqueness", "unique", "closed_shell", "acc")


def _unit(name: str, units: dict[str, str]) -> str:
    """The unit of a logged metric (``val/mae_homo`` -> ``meV``); ``fraction`` for rates, ``""`` if unknown."""
    short = name.split("/", 1)[-1]
    if short in units:
        return units[short]
    return "fraction" if any(key in short for key in FRACTIONS) else ""


def plot_metrics(
    metrics_csv: str | os.PathLike, output: str | os.PathLike, units: dict[str, str] | None = None
) -> None:
    """Plot a Lightning CSV log: every ``*/loss`` in one panel, the other validation metrics (``val/*``,
    ``val_raw/*``) one panel per unit (``units``: metric name -> unit, e.g. ``{"mae_homo": "meV"}``),
    against the optimizer step. Written atomically (temp file + rename); returns the panels drawn as
    ``(unit, [columns])``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = units or {}
    series: dict[str, dict[int, float]] = defaultdict(dict)
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if not value or key in ("epoch", "step"):
                    continue
                if key.endswith("loss") or key.endswith("loss_epoch") or key.startswith(("val/", "val_raw/")):
                    series[key.removesuffix("_epoch")][int(float(step))] = float(value)
    losses = sorted(k for k in series if k.endswith("loss"))
    groups: dict[str, list[str]] = defaultdict(list)
    for key in sorted(k for k in series if k.startswith(("val/", "val_raw/")) and "loss" not in k):
        groups[_unit(key, units)].append(key)
    panels = ([("loss", losses)] if losses else []) + sorted(groups.items())
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (unit, keys) in zip(axes[0], panels):
        for key in keys:
            xs = sorted(series[key])
            style = "--" if key.startswith("val_raw/") else "-"
            ax.plot(xs, [series[key][x] for x in xs], style, marker="o", ms=3, label=key)
        positive = all(v > 0 for key in keys for v in series[key].values())
        title = "losses" if unit == "loss" else f"validation ({unit})" if unit else "validation"
        ylabel = "loss (standardized)" if unit == "loss" else unit or "value"
        ax.set(
            xlabel="optimizer step",
            ylabel=ylabel,
            title=title,
            yscale="log" if positive and unit != "fraction" else "linear",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = Path(output).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, output)
    return panels
