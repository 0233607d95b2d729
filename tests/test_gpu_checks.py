"""bench/gpu_checks.sh, the prepared run for a lent GPU machine, works: its CPU dry run passes every step."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_checks_dry_run_on_cpu(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "bench/gpu_checks.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    summary = (tmp_path / "summary.txt").read_text()
    assert result.returncode == 0, summary + result.stdout[-2000:] + result.stderr[-2000:]
    steps = [line.split()[0] for line in summary.splitlines()]
    assert steps == ["train_schnet", "train_dimenetpp", "train_gaunt", "train_ponita", "train_affine_cnn",
                     "train_regressor", "train_propmolflow", "generate", "gaunt_vs_e3nn", "propmolflow_sampling"]  # fmt: skip
    assert all(line.rstrip().endswith("ok") for line in summary.splitlines()), summary
    assert "Conditional generation" in (tmp_path / "generate.log").read_text()
