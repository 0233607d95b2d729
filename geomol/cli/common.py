"""What geomol's command-line tools share: config composition, option checks, devices, outputs, metrics.

Every check raises a one-line ``ValueError``/``FileNotFoundError`` that the entry points print as
``geomol: error: …`` with exit code 2, before any expensive work starts.
"""

from __future__ import annotations

import errno
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from geomol.tasks.base import is_out_of_memory

__all__ = [
    "CONFIG_DIR",
    "report_errors",
    "check_overrides",
    "compose_config",
    "resolve_device",
    "check_output",
    "int_option",
    "float_option",
    "bool_option",
    "print_metrics",
]


# The configs ship inside the package (geomol/conf), so installed and editable copies read the same files.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# Errors a user can cause with their input or setup: printed as one line, exit code 2. OSErrors of the
# user's paths (read-only or full disk, a file where a folder should be) count too, with their file name.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)
PATH_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EISDIR, errno.EDQUOT}
)


def user_error(err: BaseException) -> BaseException | None:
    """The user-caused error behind ``err`` (Hydra wraps errors raised while instantiating)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        if is_out_of_memory(err):
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return ValueError(
                f"out of memory ({first[:160]}): lower the batch size (data.batch_size= for training, "
                "batch_size= for generate) or the model size"
            )
        if isinstance(err, OSError) and err.errno in PATH_ERRNOS and err.filename:
            hint = " (set GEOMOL_DATA / data.root or hydra.run.dir to a writable folder)"
            return ValueError(f"cannot write {err.filename}: {err.strerror}{hint if err.errno != errno.EISDIR else ''}")
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def report_errors(func):
    """Turn user errors into one line on stderr and exit code 2 (tracebacks with GEOMOL_DEBUG=1)."""

    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as err:
            cause = user_error(err)
            if cause is None or os.environ.get("GEOMOL_DEBUG"):
                raise
            message = cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause)
            print(f"geomol: error: {message}", file=sys.stderr)
            sys.exit(2)

    wrapper.__name__, wrapper.__doc__ = func.__name__, func.__doc__
    return wrapper


def _compose(name: str, overrides: Sequence[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def _keys_at(name: str, overrides: Sequence[str], dotted: str) -> list[str] | None:
    """The keys of node ``dotted`` in the config composed without the failing override, or None."""
    try:
        cfg = _compose(name, overrides)
        node = OmegaConf.select(cfg, dotted) if dotted else cfg
    except Exception:
        return None
    return sorted(str(k) for k in node.keys()) if OmegaConf.is_dict(node) else None


def config_error(err: Exception, name: str, overrides: Sequence[str], new_keys: bool = True) -> str:
    """Hydra's composition error as one line: the unknown option or key and what exists instead
    (``new_keys``: say how to add a key, for configs that take new ones)."""
    text = str(err)
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if missing:
        group, option = missing.groups()
        listed = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)*)", text)
        options = [o.strip() for o in listed.group(1).splitlines() if o.strip()] if listed else []
        choices = f"; choose from {', '.join(options)}" if options else ""
        return f"unknown {group} config {option!r}{choices}"
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        parent = key.rpartition(".")[0]
        rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
        keys = _keys_at(name, rest, parent)
        where = parent or "the top level"
        listed = f"; {where} has {', '.join(keys)}" if keys else ""
        hint = f" (add a new key with +{key}=...)" if new_keys else ""
        return f"unknown config key {key}{listed}{hint}"
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _search_path_overrides(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` with ``--config-dir D``/``-cd D`` turned into a search-path override (as Hydra adds it);
    False as second value when other Hydra flags (--multirun, --cfg, --help …) make a check pointless."""
    out, dirs, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config-dir", "-cd") and args:
            dirs.append(args.pop(0))
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        elif arg.startswith("-"):
            return [], False
        else:
            out.append(arg)
    if dirs:
        out.append("hydra.searchpath=[" + ",".join(f"file://{Path(d).resolve()}" for d in dirs) + "]")
    return out, True


def check_overrides(name: str, argv: Sequence[str]) -> tuple[DictConfig, DictConfig, list[str]] | None:
    """Compose ``geomol/conf/<name>.yaml`` with the command line once, before Hydra runs: an unknown config
    name or key is one ``ValueError`` line naming it and the valid ones (Hydra prints several lines).

    Returns the composed config, the config composed from the same config choices without the value
    overrides (the defaults they replace), and the dotted keys given values; None for sweeps and
    Hydra's own flags (``--multirun``, ``--cfg`` …), which Hydra handles itself.
    """
    overrides, check = _search_path_overrides(argv)
    if not check or any("," in o.split("=", 1)[-1] and "[" not in o for o in overrides):
        return None
    key = lambda o: o.lstrip("+~").split("=", 1)[0]  # noqa: E731
    folders = [Path(CONFIG_DIR), *(Path(o.split("file://", 1)[1].rstrip("]")) for o in overrides if "file://" in o)]
    groups = {p.name for folder in folders if folder.is_dir() for p in folder.iterdir() if p.is_dir()}
    choices = [o for o in overrides if key(o) in groups or key(o).startswith("hydra.")]
    try:
        cfg = _compose(name, overrides)
        base = _compose(name, choices)
    except Exception as err:
        raise ValueError(config_error(err, name, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    values = [key(o) for o in overrides if o not in choices and not o.startswith("~")]
    return cfg, base, values


# Keys whose default is a positive whole number and that count or size something: at least 1.
SIZE_KEY = re.compile(
    r"(channels|hidden|layers|heads|features|scalars|vectors|blocks|updates|interactions|filters|batch_size|"
    r"^num_(basis|radial|spherical|rbf|sbf))"
)  # not num_ori (-1 is PONITA's edge-lifted mode), lmax (0 is valid), max_epochs (-1: no limit)


# Trainer keys that take several types (devices=auto or 2 or [0,1]; val_check_interval=250 or 0.5 …).
MIXED_TYPE_KEY = re.compile(
    r"^trainer\.(devices|precision|val_check_interval|limit_\w+_batches|overfit_batches|max_time|strategy|accelerator)$"
)


def check_types(cfg: DictConfig, base: DictConfig, keys: Sequence[str]) -> None:
    """Each overridden value has its default's type: a whole number where the default is one (and at least
    1 for sizes and counts), a finite number where it is a float, true/false where it is a bool."""
    missing = object()
    for key in keys:
        if MIXED_TYPE_KEY.match(key):
            continue
        old = OmegaConf.select(base, key, default=missing, throw_on_resolution_failure=False)
        new = OmegaConf.select(cfg, key, default=missing, throw_on_resolution_failure=False)
        if old is missing or new is missing or new is None or old is None:
            continue
        if isinstance(old, bool):
            if not isinstance(new, bool):
                raise ValueError(f"{key} must be true or false, got {new!r}")
        elif isinstance(old, int):
            if isinstance(new, bool) or not isinstance(new, int):
                raise ValueError(f"{key} must be a whole number (default {old}), got {new!r}")
            if old >= 1 and SIZE_KEY.search(key.rsplit(".", 1)[-1]) and new < 1:
                raise ValueError(f"{key} must be at least 1, got {new}")
        elif isinstance(old, float):
            if isinstance(new, bool) or not isinstance(new, (int, float)) or not math.isfinite(new):
                raise ValueError(f"{key} must be a finite number (default {old:g}), got {new!r}")


def check_folder(path: str | Path, what: str) -> None:
    """``path`` is, or can become, a folder: no part of it is a file."""
    path = Path(path)
    for part in [path, *path.parents]:
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"{what} {path}: {part} is a file, not a folder")
            return


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
    try:
        return _compose(name, overrides)
    except Exception as err:  # Hydra's override errors: one line for the user
        raise ValueError(config_error(err, name, overrides, new_keys=False)) from None
    finally:
        GlobalHydra.instance().clear()


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


def print_metrics(metrics: Mapping[str, float], title: str, units: Mapping[str, str] | None = None) -> None:
    """``title``, then one ``name value [unit]`` line per metric (``stage/`` prefixes dropped)."""
    print(title)
    for key, value in metrics.items():
        name = key.split("/", 1)[-1]
        unit = (units or {}).get(name, "")
        print(f"  {name:<22s} {value:10.4f} {unit}".rstrip())
