"""Do 30-step runs learn visibly? Every property model, ``trainer=quick``, 30 optimizer steps of 16 QM9
molecules (the committed 400-molecule fixture, HOMO), each model's own config as a user gets it.

Prints the validation MAE of the untrained model, then after 30 steps that of the EMA weights (what
validation, checkpoints and the final model use) and of the raw weights, with geomol's EMA warm-up and
with Lightning's constant decay (``callbacks.ema.warmup=false``, the behaviour before the warm-up).
Learning-rate warm-ups longer than 10 % of the run are capped in both (one warning line each).

    python bench/short_runs.py                        # all property models, seed 0, 1 thread
    python bench/short_runs.py --models schnet dimenetpp --steps 60
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from machine import cpu_description  # bench/machine.py (bench/ is on sys.path when a script runs)

from geomol.cli.train import CONFIG_DIR, build

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "qm9"
MODELS = ["schnet", "dimenet", "dimenetpp", "gaunt", "ponita", "gvp_regressor"]


def short_run(model: str, warmup: bool, steps: int, seed: int, run_dir: Path) -> dict[str, float]:
    batches = 10
    GlobalHydra.instance().clear()
    overrides = [
        f"model={model}", "data=qm9", "trainer=quick", f"data.source={FIXTURE}", "data.subset=null",
        "data.batch_size=16", "data.num_workers=0", f"trainer.limit_train_batches={batches}",
        f"trainer.max_epochs={steps // batches}", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", f"callbacks.ema.warmup={str(warmup).lower()}", f"seed={seed}",
        f"paths.run_dir={run_dir}", f"paths.data_dir={run_dir / 'data'}", "~logger", "~callbacks.lr_monitor",
        "~callbacks.curves", "~callbacks.checkpoint",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(seed)
    datamodule, task, trainer = build(cfg)
    (before,) = trainer.validate(task, datamodule=datamodule, verbose=False)
    start = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    after = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {
        "untrained": before["val/mae_homo"],
        "ema": after["val/mae_homo"],
        "raw": after["val_raw/mae_homo"],
        "seconds": time.perf_counter() - start,
        "steps": trainer.global_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    print(f"{cpu_description()}, {args.threads} thread(s), seed {args.seed}, {args.steps} steps of 16")
    print("val MAE of HOMO (meV) on the fixture's 40 validation molecules")
    print(
        f"{'model':<14s} {'untrained':>9s} | {'EMA':>7s} {'raw':>7s}  with warm-up | {'EMA':>7s} {'raw':>7s}  without | s/run"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            warm = short_run(model, True, args.steps, args.seed, Path(tmp) / f"{model}_warm")
            cold = short_run(model, False, args.steps, args.seed, Path(tmp) / f"{model}_cold")
            print(
                f"{model:<14s} {warm['untrained']:9.1f} | {warm['ema']:7.1f} {warm['raw']:7.1f}{'':14s}| "
                f"{cold['ema']:7.1f} {cold['raw']:7.1f}{'':9s}| {warm['seconds']:5.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
