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
from pathlib import Path

from geomol.checkpoints import PRETRAINED_CHECKPOINT as CHECKPOINT
from geomol.checkpoints import checkpoint_path, load_task, pretrained_entries
from geomol.checkpoints import pretrained_path as path
from geomol.checkpoints import pretrained_search_path as search_path

__all__ = ["list", "load", "path", "info", "search_path", "checkpoint_path", "CHECKPOINT"]


def list() -> builtins.list[str]:  # noqa: A001 - the zoo's public name (``geomol.pretrained.list()``)
    """Names of the models geomol can load, sorted."""
    return sorted(pretrained_entries())


def info(name: str) -> dict[str, str]:
    """Name, folder, checkpoint and the title line of the model's README."""
    ckpt: Path = path(name)
    title = ""
    for line in (ckpt.parent / "README.md").read_text().splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
            break
    return {"name": name, "folder": str(ckpt.parent), "checkpoint": str(ckpt), "title": title}


def load(name: str, **kwargs):
    """The trained task of model ``name`` (``geomol.checkpoints.load_task`` arguments pass through:
    ``expected=``, ``map_location=``, ``trust_checkpoint=`` …), in eval mode."""
    return load_task(path(name), **kwargs)
