"""geomol's trained models, by name: ``geomol.pretrained.list()``, ``geomol.pretrained.load(name)``.

Each model is a folder ``<name>/`` with ``model.ckpt`` and a ``README.md`` of its command, data and measured
numbers (plus its config, metrics log and curves). Folders are looked up in ``$GEOMOL_PRETRAINED`` (one or
more folders, separated by ``os.pathsep``) and then in a clone's ``pretrained/`` folder; the wheel does not
carry the checkpoints (tens of MB), so an installed geomol finds them through ``GEOMOL_PRETRAINED`` pointing
at a clone's ``pretrained/`` (or a copy of it). There is no download: geomol's models are not hosted.

Wherever geomol takes a checkpoint path (``generate ckpt=``, ``evaluate regressor=``, ``GeomolCalculator``,
``load_task``), a model's name works too: ``python -m geomol.generate ckpt=propmolflow_qm9_gap_mid_cpu …``.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path

__all__ = ["list", "load", "path", "info", "search_path", "checkpoint_path"]

CHECKPOINT = "model.ckpt"


def search_path() -> builtins.list[Path]:
    """The folders searched for models, first match wins: ``$GEOMOL_PRETRAINED``, then a clone's ``pretrained/``."""
    folders = [Path(p) for p in os.environ.get("GEOMOL_PRETRAINED", "").split(os.pathsep) if p]
    clone = Path(__file__).resolve().parents[1] / "pretrained"
    if clone.is_dir():
        folders.append(clone)
    return folders


def _entries() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in search_path():
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and (entry / "README.md").is_file() and entry.name not in found:
                found[entry.name] = entry
    return found


def list() -> builtins.list[str]:  # noqa: A001 - the zoo's public name (``geomol.pretrained.list()``)
    """Names of the models geomol can load, sorted."""
    return sorted(_entries())


def path(name: str) -> Path:
    """The checkpoint of model ``name``; one-line errors for an unknown name or a missing file."""
    entries = _entries()
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none (set GEOMOL_PRETRAINED to a folder of models)"
        raise ValueError(f"unknown pretrained model {name!r}; known: {known}")
    ckpt = entries[name] / CHECKPOINT
    if not ckpt.is_file():
        raise FileNotFoundError(f"pretrained model {name}: {ckpt} is missing")
    return ckpt


def info(name: str) -> dict[str, str]:
    """Name, folder, checkpoint and the title line of the model's README."""
    ckpt = path(name)
    title = ""
    for line in (ckpt.parent / "README.md").read_text().splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
            break
    return {"name": name, "folder": str(ckpt.parent), "checkpoint": str(ckpt), "title": title}


def checkpoint_path(value: str | os.PathLike) -> Path:
    """``value`` as a checkpoint file: an existing path as is, a bare name (no folder, no suffix) of a
    pretrained model as its ``model.ckpt``; anything else unchanged (so a missing path is reported as one)."""
    candidate = Path(value)
    if candidate.exists() or candidate.suffix or len(candidate.parts) != 1:
        return candidate
    return path(str(value))


def load(name: str, **kwargs):
    """The trained task of model ``name`` (``geomol.checkpoints.load_task`` arguments pass through:
    ``expected=``, ``map_location=``, ``trust_checkpoint=`` …), in eval mode."""
    from geomol.checkpoints import load_task

    return load_task(path(name), **kwargs)
