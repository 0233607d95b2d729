"""What geomol's command-line tools share: config composition, option checks, devices, outputs, metrics.

Every check raises a one-line ``ValueError``/``FileNotFoundError`` that the entry points print as
``geomol: error: …`` with exit code 2, before any expensive work starts.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from geomol.cli.train import CONFIG_DIR

__all__ = [
    "compose_config",
    "resolve_device",
    "check_output",
    "int_option",
    "float_option",
    "bool_option",
    "print_metrics",
]


def compose_config(name: str, argv: Sequence[str], open_dicts: Sequence[str]) -> DictConfig:
    """Compose ``geomol/conf/<name>.yaml`` with ``key=value`` overrides.

    Keys under the mappings ``open_dicts`` (e.g. ``condition.gap=0.3``) may be new: they are added
    as Hydra's ``+key=value`` would, so users need not type the ``+``.
    """
    overrides = []
    for arg in argv:
        if "=" not in arg:
            raise ValueError(f"arguments are key=value pairs, got {arg!r}")
        if any(arg.startswith(f"{group}.") for group in open_dicts):
            arg = "+" + arg
        overrides.append(arg)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        try:
            return compose(config_name=name, overrides=overrides)
        except Exception as err:  # Hydra's override errors: one line for the user
            raise ValueError(str(err).splitlines()[0]) from None


def int_option(cfg: DictConfig, key: str, minimum: int | None = None, optional: bool = False) -> int | None:
    """``cfg[key]`` as an int (not a bool, not 2.7), at least ``minimum``; ``None`` allowed if ``optional``."""
    value = cfg.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be at least {minimum}, got {value}")
    return value


def float_option(
    cfg: DictConfig, key: str, minimum: float | None = None, positive: bool = False, optional: bool = False
) -> float | None:
    """``cfg[key]`` as a finite float, at least ``minimum`` (or strictly positive)."""
    value = cfg.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be at least {minimum}, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{key} must be positive, got {value}")
    return float(value)


def bool_option(cfg: DictConfig, key: str) -> bool:
    """``cfg[key]`` as a bool: ``true``/``false`` only."""
    value = cfg.get(key)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; anything else is one line."""
    if not isinstance(device, str):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device} was asked for but CUDA is not available")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ValueError(f"device={device} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device(device)


def check_output(path: str | Path | None, suffix: str, what: str, protect: Sequence[str | Path] = ()) -> Path | None:
    """An output path that can be written: right suffix, existing folder, not a folder itself, not one of
    ``protect`` (the inputs). Checked before any work, so nothing is half done."""
    if path is None or path == "":
        return None
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise ValueError(f"{what} must be an {suffix} file, got {path}")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not a file")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    if any(path.resolve() == Path(p).resolve() for p in protect if p):
        raise ValueError(f"{what} {path} would overwrite an input file")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{what} {path} cannot be written (permission denied)")
    return path


def print_metrics(metrics: Mapping[str, float], title: str) -> None:
    print(title)
    for key, value in metrics.items():
        print(f"  {key:<22s} {value:10.4f}")
