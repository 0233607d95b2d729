"""``python train.py model=… data=…``: build data, task, trainer from the Hydra config, fit, test."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..checkpoints import add_record, read_checkpoint
from ..devices import warn_slow_bf16
from ..tasks.loggers import trim_metrics
from .common import (  # noqa: F401 (CONFIG_DIR, report_errors, user_error re-exported)
    CONFIG_DIR,
    check_folder,
    check_overrides,
    check_types,
    print_metrics,
    report_errors,
    user_error,
)

log = logging.getLogger("geomol")

# Default run directories end in the process id, so two runs started in the same second never share one.
if not OmegaConf.has_resolver("geomol_pid"):
    OmegaConf.register_new_resolver("geomol_pid", lambda: str(os.getpid()))


def _run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.run_dir)


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """``ckpt_path`` if given, else ``<run_dir>/checkpoints/last.ckpt`` when it exists."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return str(path)
    last = run_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


# Keys that may change when a run resumes: they do not change what is learned (cache folders, loader
# workers, evaluation batch size). Everything else under model/data (and the seed) must match.
RESUMABLE_CHANGES = ("data.root", "data.num_workers", "data.eval_batch_size")
STORED_CONFIG = "geomol_config.yaml"


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _learning_config(cfg: DictConfig) -> dict:
    """The part of the config that decides what a run learns (model, data, seed), as plain nested data."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in ("model", "data", "seed") if key in cfg}  # fmt: skip


def _compared(config: dict) -> dict:
    """Dotted key -> value, without the keys that may change on resume."""
    return {k: v for k, v in _flatten(config).items() if k not in RESUMABLE_CHANGES}


def check_resume(cfg: DictConfig, run_dir: Path, resuming: bool) -> None:
    """Refuse to resume a run directory with another model/data config (one line naming the keys); store
    the config at a run's first start. ``resume=force`` continues anyway and stores the new config."""
    path = run_dir / STORED_CONFIG
    config = _learning_config(cfg)
    force = str(cfg.get("resume", "auto")) == "force"
    if resuming and path.is_file() and not force:
        stored = _compared(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
        current = _compared(config)
        changed = sorted(k for k in set(stored) | set(current) if stored.get(k, "<unset>") != current.get(k, "<unset>"))
        if changed:
            shown = ", ".join(
                f"{k}: {stored.get(k, '<unset>')!r} -> {current.get(k, '<unset>')!r}" for k in changed[:4]
            )
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise ValueError(
                f"{run_dir} holds a run with another config ({shown}{more}): choose a new hydra.run.dir, "
                "or resume=force to continue its checkpoint with the new config"
            )
    if not resuming or not path.is_file() or force:  # a fresh start records its own config
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        OmegaConf.save(OmegaConf.create(config), tmp)
        os.replace(tmp, path)


def check_checkpoint_task(cfg: DictConfig, ckpt: str, checkpoint: dict) -> None:
    """``ckpt_path`` (loaded as ``checkpoint``) must hold the task this config trains (one line otherwise)."""
    from hydra.utils import get_class

    try:
        wanted = get_class(cfg.model._target_)
    except Exception:  # an unknown target fails with its own one-line error when the task is built
        return
    _same_task(checkpoint, wanted, f"checkpoint {ckpt}")


def _same_task(checkpoint: dict, wanted: type, source: str) -> None:
    """The task class stored in ``checkpoint`` (if any) must be ``wanted``; one line naming both otherwise."""
    from ..checkpoints import TASK_KEY

    stored = checkpoint.get(TASK_KEY)
    if stored is not None and stored != f"{wanted.__module__}.{wanted.__qualname__}":
        raise ValueError(f"{source} holds a {stored.rsplit('.', 1)[-1]}, but this run trains a {wanted.__name__}")


def build_loggers(config: DictConfig | None) -> list | bool:
    """The loggers of ``logger=csv`` / ``logger=[csv,tensorboard]`` (one key each), or of a single logger
    config with its own ``_target_``; False for none."""
    if not config:
        return False
    if "_target_" in config:
        return [instantiate(config)]
    loggers = []
    for name, node in config.items():
        if node is None:
            continue
        try:
            loggers.append(instantiate(node))
        except Exception as err:
            cause = err
            while cause is not None and not isinstance(cause, ImportError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise ValueError(f"logger={name} needs its package: pip install 'geomol[loggers]'") from None
    return loggers or False


def build(cfg: DictConfig) -> tuple[pl.LightningDataModule, pl.LightningModule, pl.Trainer]:
    """Data module, task and trainer from a composed config (used by ``run`` and the tests)."""
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    task = instantiate(cfg.model, **datamodule.task_kwargs(), _recursive_=False)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = build_loggers(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    return datamodule, task, trainer


def run(cfg: DictConfig) -> dict[str, float]:
    """Train (resuming if a checkpoint exists), then test; returns the test metrics."""
    check_train_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = _run_dir(cfg)
    ckpt = resume_checkpoint(cfg, run_dir)
    checkpoint = read_checkpoint(ckpt) if ckpt else None  # refuse unsafe or damaged files with one line
    if cfg.get("ckpt_path"):
        check_checkpoint_task(cfg, ckpt, checkpoint)
    else:
        check_resume(cfg, run_dir, resuming=ckpt is not None)
    datamodule, task, trainer = build(cfg)
    if cfg.get("init_from") and ckpt:
        log.info("resuming from %s: init_from=%s is not used again", ckpt, cfg.init_from)
    elif cfg.get("init_from"):
        init_weights(task, cfg.init_from)
    if ckpt:
        step = checkpoint.get("global_step")
        log.info("resuming from %s", ckpt)
        if isinstance(step, int):
            # Rows logged after that checkpoint are trained again: drop them so the log reads as one run.
            trim_metrics(run_dir / "metrics.csv", step)
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    metrics: dict[str, float] = {}
    if cfg.get("test", True) and not trainer.fast_dev_run:
        results = trainer.test(task, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        if trainer.is_global_zero:
            units = task.metric_units() if hasattr(task, "metric_units") else {}
            print_metrics(dict(sorted(metrics.items())), f"\nTest results ({run_dir}):", units)
            record_test(task, datamodule, metrics, run_dir)
    return metrics


def init_weights(task: pl.LightningModule, path: str) -> None:
    """Load the weights of checkpoint ``path`` (a path or a pretrained name, read safely) into ``task``:
    the same task class and parameter shapes, or one line naming what differs."""
    checkpoint = read_checkpoint(path)
    _same_task(checkpoint, type(task), f"init_from={path}")
    own = task.state_dict()
    weights = checkpoint["state_dict"]
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or shapes:
        what = (
            (f"{len(missing)} missing ({missing[0]})" if missing else "")
            or (f"{len(unexpected)} unexpected ({unexpected[0]})" if unexpected else "")
            or f"{len(shapes)} of another shape ({shapes[0]}: {tuple(weights[shapes[0]].shape)} vs {tuple(own[shapes[0]].shape)})"
        )
        raise ValueError(f"init_from={path} does not fit this model: {what} weights; is model.net the same?")
    task.load_state_dict(weights)
    log.info("weights from %s (global step %s); fresh optimizer and schedule", path, checkpoint.get("global_step"))


def record_test(task: pl.LightningModule, datamodule: pl.LightningDataModule, metrics: dict, run_dir: Path) -> None:
    """Store a property model's test metrics and reference statistics in its ``last.ckpt`` (the weights
    that were tested): the lower bound and baselines of the conditional-generation protocol."""
    from geomol.metrics.conditional import RECORD_KEY

    last = run_dir / "checkpoints" / "last.ckpt"
    if not hasattr(datamodule, "property_reference") or not last.is_file() or not hasattr(task, "metric_units"):
        return
    if getattr(task.hparams, "forces", False):
        return
    record = {"metrics": {k.split("/", 1)[-1]: v for k, v in metrics.items()}, **datamodule.property_reference()}
    add_record(last, RECORD_KEY, record)
    log.info("test metrics and reference statistics stored in %s", last)


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    # Not decorated with report_errors: Hydra names the job (train.log) after this function's file.
    log.debug(OmegaConf.to_yaml(cfg))
    report_errors(run)(cfg)


def _devices_ok(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1 or value == -1
    if isinstance(value, str):
        return value == "auto" or bool(re.fullmatch(r"-1|\d+|(\d+,)*\d+,?", value))
    return OmegaConf.is_list(value) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def check_train_config(cfg: DictConfig, base: DictConfig | None = None, keys=()) -> None:
    """Values a run would fail on minutes later, or with a traceback: one line each, before any work.
    ``base``/``keys``: the defaults the command line replaced (their types are checked too)."""
    if base is not None:
        check_types(cfg, base, keys)
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be a whole number, got {seed!r}")
    lr = OmegaConf.select(cfg, "model.optimizer.lr", default=None)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 <= lr < float("inf")):
        raise ValueError(f"model.optimizer.lr must be a number >= 0, got {lr!r}")
    devices = OmegaConf.select(cfg, "trainer.devices", default="auto")
    if not _devices_ok(devices):
        raise ValueError(
            f"trainer.devices must be auto, a count (-1: all), or a list of device indices, got {devices!r}"
        )
    precision = str(OmegaConf.select(cfg, "trainer.precision", default="32"))
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if precision.startswith("bf16") and on_cpu:
        warn_slow_bf16(f"training (trainer.precision={precision})")
    split = OmegaConf.select(cfg, "data.split", default=None)
    if split is not None:
        if (
            not OmegaConf.is_list(split)
            or len(split) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in split)
        ):
            raise ValueError(f"data.split must be three numbers (train, val, test sizes or fractions), got {split}")
    for key in ("data.root", "paths.data_dir", "paths.output_dir"):
        try:
            path = OmegaConf.select(cfg, key, default=None)
        except Exception:  # interpolations of Hydra's runtime (resolved once Hydra runs)
            continue
        if isinstance(path, str) and path:
            check_folder(path, key)


def precheck(argv) -> None:
    """Unknown config names/keys and bad values of ``train.py``'s command line: one line, exit 2, before
    Hydra creates a run directory."""
    checked = check_overrides("train", argv)
    if checked is None:
        return
    cfg, base, keys = checked
    check_train_config(cfg, base, keys)
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            check_folder(arg.split("=", 1)[1], "hydra.run.dir")


def main() -> None:
    """``train.py`` / ``geomol-train``: unknown config names or keys and bad values stop with one line
    (exit 2) before Hydra starts; then Hydra composes, makes the run directory and calls ``run``."""
    report_errors(precheck)(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
