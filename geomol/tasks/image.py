"""Image classification as a LightningModule built from plain config dicts."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from .base import OPTIMIZATION_ARGS, GeomolTask, build_network, plain_config

__all__ = ["ImageTask"]


def _entries(config: dict, key: str, prefix: str = "") -> dict[str, Any]:
    """Every entry named ``key`` in ``config`` and its nested nodes, by dotted path."""
    found = {}
    for name, value in config.items():
        if name == key:
            found[prefix + name] = value
        if isinstance(value, dict):
            found |= _entries(value, key, f"{prefix}{name}.")
    return found


class ImageTask(GeomolTask):
    """Cross-entropy classification of images ``[B, C, H, W]`` by any network ``net(images) -> logits``.

    The network is built here from its config, ``hydra.utils.instantiate(net, num_classes=...)``, and
    every argument is saved with ``save_hyperparameters()``, so ``ImageTask.load_from_checkpoint(path)``
    needs nothing else. Logs ``{train,val,test}/loss`` and ``{train,val,test}/acc``.

    Args:
        net: config of the network (``_target_`` plus arguments), e.g. ``geomol.models.affine_cnn.AffineCNN``.
        num_classes: number of classes (the data module's ``task_kwargs()`` gives it).
        label_smoothing: cross-entropy label smoothing.
        **settings: ``optimizer``, ``scheduler``, ``scheduler_interval``, ``monitor``
            (:class:`~geomol.tasks.base.GeomolTask`), and short top-level handles of the model config
            (AffineCNN's ``group`` and ``num_samples``, so that ``model.group=gl2`` works) that the config
            interpolates into ``net``; each handle must equal an entry of the same name in ``net`` or one of
            its nodes (``num_samples`` is ``net.sampler.num_samples``), which catches a handle that is not
            wired into the network.
    """

    def __init__(self, net: dict, num_classes: int, label_smoothing: float = 0.0, **settings: Any) -> None:
        super().__init__(**{key: settings.pop(key) for key in OPTIMIZATION_ARGS if key in settings})
        net = plain_config(net)
        for key, value in settings.items():
            found = _entries(net, key)
            if value not in found.values():
                listed = (
                    ", ".join(f"net.{path} is {entry!r}" for path, entry in found.items()) or f"net.{key} is missing"
                )
                raise ValueError(
                    f"model setting {key}={value!r} is not passed on to the network ({listed}); "
                    f"interpolate it, e.g. net.{key}: ${{model.{key}}}"
                )
        if num_classes < 2:
            raise ValueError(f"classification needs at least 2 classes, got num_classes={num_classes}")
        self.save_hyperparameters()
        self.net = build_network(net, num_classes=num_classes)
        # Keys must not shadow nn.Module attributes such as ``train``.
        self.accuracy = torch.nn.ModuleDict(
            {
                f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro")
                for stage in ("train", "val", "val_raw", "test")
            }
        )

    def forward(self, images: Tensor) -> Tensor:  # [B, C, H, W] -> [B, num_classes]
        return self.net(images)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        accuracy = self.accuracy[f"{stage}_acc"]
        accuracy(logits, labels)
        # Training loss per step, evaluation loss as the epoch mean: one name each (no _step/_epoch suffixes).
        train = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=not train, prog_bar=True, batch_size=len(labels))
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss
