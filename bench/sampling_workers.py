"""Sampling throughput of ``python -m geomol.generate``: one process of T threads against ``workers=W`` processes
of T/W threads each, end to end and side by side.

Each round runs both commands on the same request (checkpoint, molecules, steps, precision, ``compile``), one after
the other, and reads the ``molecules_per_second`` that ``generate`` prints (sampling only: from the first batch,
compilation and, with workers, the processes' start included; loading the checkpoint and writing the SDF not);
the wall time of each whole command is printed too. Rounds alternate the order. The molecules differ between the
two settings (workers draw each batch from its own stream), so the row also prints each run's molecule stability
and validity: a speed-up that changed what is sampled would show there.

    python bench/sampling_workers.py                               # shipped cfg model, 512 molecules, 2 threads
    python bench/sampling_workers.py --num 256 --steps 100 --precision 32 --no-compile

Run it on a quiet machine (pause training jobs); it prints the CPU model and ISA it ran on.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_description  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace, workers: int, folder: str) -> dict[str, float]:
    threads = str(args.threads)
    command = [
        sys.executable, "-m", "geomol.generate", f"ckpt={args.ckpt}", f"num_molecules={args.num}",
        f"output={folder}/w{workers}.sdf", f"steps={args.steps}", f"precision={args.precision}",
        f"compile={str(args.compile).lower()}", f"workers={workers}", f"batch_size={args.batch_size}",
        "condition.gap=sample", "seed=0", "progress=false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"generate failed ({' '.join(command)}):\n{done.stderr[-2000:]}")
    found = {}
    for key in ("molecules_per_second", "molecule_stability", "validity"):
        match = re.search(rf"^\s*{key}\s+([0-9.]+)", done.stdout, re.M)
        found[key] = float(match.group(1)) if match else float("nan")
    found["wall"] = wall
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="propmolflow_qm9_gap_cfg_cpu")
    parser.add_argument("--num", type=int, default=512, help="molecules per run")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="threads in all (each worker gets threads/workers)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["32", "bf16"])
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{cpu_description()}; {args.threads} threads in all; {args.ckpt}, {args.num} molecules, {args.steps} steps, "
          f"batch {args.batch_size}, precision {args.precision}, compile {args.compile}; load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'round':>5} {'setting':>22} {'mol/s':>7} {'wall s':>7} {'stable':>7} {'valid':>7}")
    best: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            order = (1, args.workers) if r % 2 == 0 else (args.workers, 1)
            for workers in order:
                got = run(args, workers, folder)
                label = (
                    f"1 x {args.threads} threads"
                    if workers == 1
                    else f"{workers} x {args.threads // workers} thread(s)"
                )
                print(f"{r:>5} {label:>22} {got['molecules_per_second']:>7.2f} {got['wall']:>7.1f} "
                      f"{got['molecule_stability']:>7.3f} {got['validity']:>7.3f}", flush=True)  # fmt: skip
                best[workers] = max(best.get(workers, 0.0), got["molecules_per_second"])
    print(
        f"best of {args.rounds}: workers={args.workers} / one process = {best[args.workers] / best[1]:.2f}x "
        f"({best[args.workers]:.2f} vs {best[1]:.2f} molecules/s)"
    )


if __name__ == "__main__":
    main()
