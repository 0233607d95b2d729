"""Pieces shared by every geomol task (property, generation, images, N-body)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from ..checkpoints import GeomolTaskMixin
from ..devices import is_out_of_memory

__all__ = ["plain_config", "build_network", "is_out_of_memory", "build_optimizers", "GeomolTask", "OPTIMIZATION_ARGS"]

log = logging.getLogger("geomol")


def plain_config(cfg: Any) -> Any:
    """Plain dicts/lists from OmegaConf nodes, so hyper-parameters pickle-free into checkpoints."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def build_network(config: Mapping, **task_args: Any):
    """The task's network: ``instantiate(config, **task_args)`` (``task_args`` such as ``out_channels``).

    A network that is not geomol's own (``model.net._target_=mypkg.MyNet`` on the command line) gets only
    the arguments its signature takes: the others were left by the model config's default network when
    its ``_target_`` was swapped, and one warning line names them. geomol's networks get every key, so a
    misspelt key stays an error. (Checkpoints reach this only after ``geomol.safety`` allowed their targets.)
    """
    target = config.get("_target_")
    if isinstance(target, str) and not target.startswith("geomol."):
        params = inspect.signature(get_object(target)).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            left = [k for k in [*config, *task_args] if not k.startswith("_") and k not in params]
            if left:
                log.warning("model.net: %s takes no %s; not passed", target, ", ".join(left))
            config = {k: v for k, v in config.items() if k.startswith("_") or k in params}
            task_args = {k: v for k, v in task_args.items() if k in params}
    return instantiate(config, **task_args)


# The arguments GeomolTask.__init__ takes for every task.
OPTIMIZATION_ARGS = ("optimizer", "scheduler", "scheduler_interval", "monitor")

# A learning-rate warm-up may take at most this fraction of a run (papers' warm-ups are ~0.1-1 % of theirs).
MAX_WARMUP_FRACTION = 0.1


def planned_steps(module: pl.LightningModule, interval: str) -> float | None:
    """How many scheduler steps the attached trainer plans: optimizer steps (``interval="step"``) or
    epochs; None without a trainer or with an open-ended run."""
    try:
        trainer = module.trainer
    except RuntimeError:
        return None
    if trainer is None:
        return None
    if interval == "step":
        total = trainer.estimated_stepping_batches
    else:
        total = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
    return float(total) if total is not None and total != float("inf") and total > 0 else None


def cap_warmup(scheduler: Mapping, planned: float | None, interval: str) -> Mapping:
    """A scheduler config whose ``warmup_steps`` is at most ``MAX_WARMUP_FRACTION`` of the planned run,
    with one warning line when it was longer (e.g. DimeNet++'s 3,000 steps in a 30-step test run, which
    would end it at 1 % of its learning rate)."""
    warmup = scheduler.get("warmup_steps")
    if planned is None or not isinstance(warmup, int) or isinstance(warmup, bool):
        return scheduler
    cap = max(1, int(MAX_WARMUP_FRACTION * planned))
    if warmup <= cap:
        return scheduler
    unit = "steps" if interval == "step" else "epochs"
    log.warning(
        "model.scheduler.warmup_steps=%d is longer than %d %% of this run's %d %s: warming up over %d %s",
        warmup, round(100 * MAX_WARMUP_FRACTION), planned, unit, cap, unit,
    )  # fmt: skip
    return {**scheduler, "warmup_steps": cap}


def build_optimizers(
    module: pl.LightningModule, optimizer: Mapping | None, scheduler: Mapping | None, interval: str, monitor: str
):
    """Optimizer and optional LR scheduler from partial configs (``_partial_: true``)."""
    optimizer = optimizer or {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
    opt = instantiate(optimizer)(params=module.parameters())
    if not scheduler:
        return opt
    scheduler = cap_warmup(scheduler, planned_steps(module, interval), interval)
    sched = instantiate(scheduler)(optimizer=opt)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval, "monitor": monitor}}


class GeomolTask(GeomolTaskMixin, pl.LightningModule):
    """Base of geomol's tasks: one ``_step(batch, stage)`` serves training, validation and test, and the
    optimizer comes from the arguments below. Checkpoints name the class.

    A task takes these as keyword arguments (``**optimization``), passes them here, and calls
    :meth:`save_hyperparameters` once its own arguments hold what the checkpoint should store.

    Args:
        optimizer: partial optimizer config (``_partial_: true``), called with the parameters; default
            Adam, lr 1e-3.
        scheduler: partial LR-scheduler config called with the optimizer, or None.
        scheduler_interval: ``"epoch"`` or ``"step"``: when the scheduler steps.
        monitor: metric a plateau scheduler watches (and checkpointing).
    """

    def __init__(
        self,
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        scheduler_interval: str = "epoch",
        monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        # Plain containers in the hyper-parameters: torch.load(weights_only=True) refuses DictConfig.
        self._optimization = {
            "optimizer": plain_config(optimizer),
            "scheduler": plain_config(scheduler),
            "scheduler_interval": scheduler_interval,
            "monitor": monitor,
        }

    def save_hyperparameters(self, *args, ignore=None, frame=None, logger: bool = True) -> None:
        """Lightning's ``save_hyperparameters()``: the calling ``__init__``'s arguments as its local variables
        hold them now, followed by the optimization arguments as :class:`GeomolTask` holds them (plain
        dicts, defaults filled in), so ``Task.load_from_checkpoint(path)`` needs nothing else."""
        frame = frame or inspect.currentframe().f_back
        ignore = [ignore] if isinstance(ignore, str) else list(ignore or ())
        super().save_hyperparameters(*args, ignore=[*ignore, *OPTIMIZATION_ARGS], frame=frame, logger=logger)
        super().save_hyperparameters(self._optimization, frame=frame, logger=logger)

    def _step(self, batch, stage: str) -> Tensor:  # pragma: no cover - implemented by each task
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        return build_optimizers(self, hp.optimizer, hp.scheduler, hp.scheduler_interval, hp.monitor)
