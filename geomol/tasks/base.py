"""Pieces shared by every geomol task (property, generation, images, N-body)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from ..checkpoints import GeomolTaskMixin

__all__ = ["plain_config", "build_optimizers", "GeomolTask"]


def plain_config(cfg: Any) -> Any:
    """Plain dicts/lists from OmegaConf nodes, so hyper-parameters pickle-free into checkpoints."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def build_optimizers(
    module: pl.LightningModule, optimizer: Mapping | None, scheduler: Mapping | None, interval: str, monitor: str
):
    """Optimizer and optional LR scheduler from partial configs (``_partial_: true``)."""
    optimizer = optimizer or {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
    opt = instantiate(optimizer)(params=module.parameters())
    if not scheduler:
        return opt
    sched = instantiate(scheduler)(optimizer=opt)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval, "monitor": monitor}}


class GeomolTask(GeomolTaskMixin, pl.LightningModule):
    """Base of geomol's tasks: one ``_step(batch, stage)`` serves training, validation and test, and the
    optimizer comes from the ``optimizer``/``scheduler`` hyper-parameters. Checkpoints name the class."""

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
