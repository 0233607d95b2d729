"""A CSV logger whose ``metrics.csv`` survives resuming (Lightning's deletes it when a run restarts).

Lightning's ``CSVLogger`` removes an existing ``metrics.csv`` when it opens its log folder, so a run
resumed from ``last.ckpt`` in the same run directory kept only the rows logged after the resume.
:class:`CSVLogger` keeps the file and appends to it; ``train.py`` first drops the rows logged after
the checkpoint it resumes from (:func:`trim_metrics`), so the file reads as one unbroken run.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

__all__ = ["CSVLogger", "trim_metrics"]


class _KeepingWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv``, taking over its header."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                header = next(csv.reader(handle), [])
            self.metrics_keys = sorted(set(header))


class CSVLogger(_LightningCSVLogger):
    """``pytorch_lightning.loggers.CSVLogger`` that appends to an existing ``metrics.csv`` instead of deleting it."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


def trim_metrics(path: str | os.PathLike, last_step: int) -> int:
    """Drop the rows of a ``metrics.csv`` logged after ``last_step`` (the step of the checkpoint a run
    resumes from: those steps are trained again). Rewritten atomically; returns the rows dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames or [], list(reader)
    keep = [row for row in rows if not row.get("step") or int(float(row["step"])) <= last_step]
    if len(keep) == len(rows):
        return 0
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(keep)
    os.replace(tmp, path)
    return len(rows) - len(keep)
