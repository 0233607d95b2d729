"""Safe checkpoint loading: tensors and plain containers only, one-sentence errors for bad files.

Every geomol entry point loads checkpoints through :func:`load_task`. It uses
``torch.load(weights_only=True)``, so a checkpoint that smuggles in pickled code is refused
instead of executed.
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from pathlib import Path

import pytorch_lightning as pl
import torch

__all__ = ["read_checkpoint", "load_task", "TASK_KEY"]

# Checkpoints written by geomol tasks name their class here (see ``GeomolTaskMixin``).
TASK_KEY = "geomol_task"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dictionary, loaded with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a checkpoint, is truncated, or holds pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "disallowed object"
        if "Weights only load failed" in detail or "Unsupported global" in str(err):
            raise ValueError(f"unsafe checkpoint refused: {path} holds pickled objects, not only tensors") from None
        raise ValueError(f"not a valid checkpoint (corrupt or truncated): {path}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, AttributeError, KeyError, IndexError) as err:
        raise ValueError(f"not a valid checkpoint (corrupt or truncated): {path} ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"not a geomol checkpoint: {path} has no model weights and hyper-parameters")
    return ckpt


def _task_class(name: str) -> type[pl.LightningModule]:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def load_task(
    path: str | os.PathLike,
    expected: type[pl.LightningModule] | tuple[type[pl.LightningModule], ...] | None = None,
    map_location: str | torch.device = "cpu",
) -> pl.LightningModule:
    """Rebuild a trained task (network, statistics, hyper-parameters) from a checkpoint, in eval mode.

    Args:
        path: ``.ckpt`` file written by ``train.py``.
        expected: the task class(es) the caller can use; another kind of checkpoint is refused with
            a ValueError naming both.
    """
    ckpt = read_checkpoint(path)
    name = ckpt.get(TASK_KEY)
    expected_tuple = expected if isinstance(expected, tuple) else ((expected,) if expected else ())
    if name is not None:
        try:
            cls = _task_class(name)
        except (ImportError, AttributeError):
            raise ValueError(f"checkpoint {path} was written by {name}, which this geomol does not have") from None
    elif len(expected_tuple) == 1:
        cls = expected_tuple[0]
    else:
        raise ValueError(f"checkpoint {path} does not say which geomol task wrote it")
    if expected_tuple and not issubclass(cls, expected_tuple):
        wanted = " or ".join(c.__name__ for c in expected_tuple)
        raise ValueError(f"checkpoint {path} holds a {cls.__name__}, but a {wanted} is needed here")
    try:
        task = cls(**ckpt["hyper_parameters"])
        task.on_load_checkpoint(ckpt)
        task.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path} does not fit {cls.__name__}: {first}") from None
    return task.to(map_location).eval()


class GeomolTaskMixin:
    """Records the task's class in every checkpoint, so :func:`load_task` knows what to rebuild."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TASK_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
