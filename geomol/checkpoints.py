"""Safe checkpoint loading: tensors and plain containers only, one-sentence errors for bad files.

Every geomol entry point loads checkpoints through :func:`load_task`. It uses
``torch.load(weights_only=True)``, so a checkpoint that smuggles in pickled code is refused
instead of executed, and before the task is rebuilt it checks the stored configs with
:func:`geomol.safety.check_checkpoint_config`: the task class and every ``_target_`` must be
something geomol builds, every argument plain data. ``trust_checkpoint=True`` skips that check
(dangerous: only for checkpoints whose author you trust, e.g. your own with a custom network).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch

from .safety import check_checkpoint_config, task_class

__all__ = [
    "read_checkpoint", "load_task", "add_record", "slim_checkpoint", "TASK_KEY",
    "checkpoint_path", "pretrained_entries", "pretrained_path", "pretrained_search_path",
]  # fmt: skip

# Checkpoints written by geomol tasks name their class here (see ``GeomolTaskMixin``).
TASK_KEY = "geomol_task"

# ---------------------------------------------------------------- trained models by name
# The catalogue of geomol.pretrained lives here, below the loader, so that every checkpoint path accepts a
# model's name without this module importing geomol.pretrained (which imports this one).
PRETRAINED_CHECKPOINT = "model.ckpt"


def pretrained_search_path() -> list[Path]:
    """The folders searched for models, first match wins: ``$GEOMOL_PRETRAINED``, then a clone's ``pretrained/``."""
    folders = [Path(p) for p in os.environ.get("GEOMOL_PRETRAINED", "").split(os.pathsep) if p]
    clone = Path(__file__).resolve().parents[1] / "pretrained"
    if clone.is_dir():
        folders.append(clone)
    return folders


def pretrained_entries() -> dict[str, Path]:
    """Model name -> its folder (a folder with a ``README.md``), over :func:`pretrained_search_path`."""
    found: dict[str, Path] = {}
    for folder in pretrained_search_path():
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and (entry / "README.md").is_file() and entry.name not in found:
                found[entry.name] = entry
    return found


def pretrained_path(name: str) -> Path:
    """The checkpoint of pretrained model ``name``; one-line errors for an unknown name or a missing file."""
    entries = pretrained_entries()
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none (set GEOMOL_PRETRAINED to a folder of models)"
        raise ValueError(f"unknown pretrained model {name!r}; known: {known}")
    ckpt = entries[name] / PRETRAINED_CHECKPOINT
    if not ckpt.is_file():
        raise FileNotFoundError(f"pretrained model {name}: {ckpt} is missing")
    return ckpt


def checkpoint_path(value: str | os.PathLike) -> Path:
    """``value`` as a checkpoint file: an existing path as is, a bare name (no folder, no suffix) of a
    pretrained model as its ``model.ckpt``; anything else unchanged (so a missing path is reported as one)."""
    candidate = Path(value)
    if candidate.exists() or candidate.suffix or len(candidate.parts) != 1:
        return candidate
    return pretrained_path(str(value))


# ---------------------------------------------------------------- reading and loading


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dictionary, loaded with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a checkpoint, is truncated, or holds pickled objects.
    """
    path = checkpoint_path(path)  # a pretrained model's name works too
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


def add_record(path: str | os.PathLike, key: str, record: Mapping) -> None:
    """Store plain data (e.g. test metrics) in a checkpoint under ``key``; the file is replaced atomically."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    ckpt[key] = dict(record)
    _save_atomic(ckpt, path)


def _save_atomic(obj: Mapping, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written checkpoint."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# What a checkpoint needs to be loaded and used (not resumed): the weights (the EMA average when training
# averaged), the hyper-parameters that rebuild the task, its class, and what was recorded about it.
INFERENCE_KEYS = ("state_dict", "hyper_parameters", "hparams_name", "epoch", "global_step", "pytorch-lightning_version")


def slim_checkpoint(path: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Copy of a checkpoint without what only resuming needs (optimizer and scheduler states, the raw
    weights beside the EMA average, loop and callback states): about a quarter of the size for Adam with
    EMA. It loads with :func:`load_task` like the original (the same weights); it cannot resume training."""
    ckpt = read_checkpoint(path)
    keep = {k: v for k, v in ckpt.items() if k in INFERENCE_KEYS or k == TASK_KEY or k.startswith("geomol_")}
    output = Path(output)
    _save_atomic(keep, output)
    return output


def load_task(
    path: str | os.PathLike,
    expected: type[pl.LightningModule] | str | Sequence[type[pl.LightningModule] | str] | None = None,
    map_location: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
    overrides: Mapping | None = None,
    strict: bool | None = None,
) -> pl.LightningModule:
    """Rebuild a trained task (network, statistics, hyper-parameters) from a checkpoint, in eval mode.

    Args:
        path: ``.ckpt`` file written by ``train.py``.
        expected: the task class(es) the caller can use, as classes or dotted names of geomol's tasks
            (``"geomol.tasks.generation.GenerationTask"``: a lower layer names the task it needs without
            importing it); another kind of checkpoint is refused with a ValueError naming both.
        trust_checkpoint: build whatever the checkpoint's configs name (**dangerous**: a checkpoint
            from someone else can then run code). By default only what geomol registers is built
            (:mod:`geomol.safety`), and a checkpoint naming anything else raises
            :class:`~geomol.safety.UnsafeCheckpointError` before anything is constructed.
        overrides: hyper-parameters replacing the stored ones (the caller's own values, not checked).
        strict: strict state-dict loading (default True).

    Raises:
        geomol.safety.UnsafeCheckpointError: the checkpoint names something geomol does not build.
        ValueError: the file is no geomol checkpoint, another task, or does not fit its task.
    """
    ckpt = read_checkpoint(path)
    name = ckpt.get(TASK_KEY)
    if expected is None:
        expected = ()
    elif isinstance(expected, (str, type)):
        expected = (expected,)
    expected_tuple = tuple(
        task_class(e, source="load_task(expected=...)") if isinstance(e, str) else e for e in expected
    )
    hyper_parameters = ckpt["hyper_parameters"]
    if not trust_checkpoint:
        check_checkpoint_config(hyper_parameters, source=str(path))
    if name is not None:
        cls = task_class(name, source=str(path), trust=trust_checkpoint)
    elif len(expected_tuple) == 1:
        cls = expected_tuple[0]
    else:
        raise ValueError(f"checkpoint {path} does not say which geomol task wrote it")
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise ValueError(f"checkpoint {path} names {name}, which is not a geomol task")
    if expected_tuple and not issubclass(cls, expected_tuple):
        wanted = " or ".join(c.__name__ for c in expected_tuple)
        raise ValueError(f"checkpoint {path} holds a {cls.__name__}, but a {wanted} is needed here")
    for key, value in ckpt["state_dict"].items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"checkpoint {path} holds non-finite weights (NaN or inf) in {key}: the run diverged; "
                "use an earlier checkpoint"
            )
    try:
        task = cls(**{**hyper_parameters, **dict(overrides or {})})
        task.on_load_checkpoint(ckpt)
        task.load_state_dict(ckpt["state_dict"], strict=True if strict is None else strict)
    except (TypeError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path} does not fit {cls.__name__}: {first}") from None
    return task.to(map_location).eval()


class GeomolTaskMixin:
    """Records the task's class in every checkpoint, so :func:`load_task` knows what to rebuild, and
    routes ``Task.load_from_checkpoint`` through :func:`load_task` (the same safety checks)."""

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: str | torch.device | None = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        trust_checkpoint: bool = False,
        **kwargs,
    ):
        """Lightning's ``load_from_checkpoint``, loaded safely: ``weights_only`` is always on and the
        stored configs may only name what geomol builds (``trust_checkpoint=True`` lifts that; dangerous).
        Keyword arguments replace stored hyper-parameters, as in Lightning. Returns the task in eval mode."""
        if hparams_file is not None:
            raise ValueError(
                "geomol tasks keep their hyper-parameters in the checkpoint; hparams_file is not supported"
            )
        if weights_only is False:
            raise ValueError("geomol loads checkpoints with weights_only=True only (pickled code is never run)")
        if not isinstance(map_location, (str, torch.device, type(None))):
            raise ValueError("map_location must be a device or its name for geomol checkpoints")
        return load_task(
            checkpoint_path, expected=cls, map_location=map_location or "cpu", trust_checkpoint=trust_checkpoint,
            overrides=kwargs, strict=strict,
        )  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TASK_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
