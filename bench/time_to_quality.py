"""Time-to-quality curves of generator runs: validation loss and molecule stability against training minutes.

Reads the ``metrics.csv`` of one or more run directories (several CSVs may make up one run). The x axis is
``time/train_minutes`` (logged by ``geomol.tasks.TrainingClock``); rows of sittings trained before the clock
existed get their minutes by linear interpolation in the step between anchors ``STEP:MINUTES`` (e.g. the
wall time at which a sitting ended), said in the legend.

    python bench/time_to_quality.py --run "mid 1.05M:outputs/gen_mid/metrics.csv" \\
        --anchor "mid 1.05M:823:30.0" --out pretrained/propmolflow_qm9_gap_cpu/time_to_quality.png

The validation molecule stability comes from the few molecules each validation samples (32 here), so it is
noisy (±9 points at 50 %); the validation loss is the smoother guide.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="LABEL:CSV (repeat LABEL for more CSVs of a run)")
    parser.add_argument("--anchor", action="append", default=[], help="LABEL:STEP:MINUTES known training time")
    parser.add_argument("--point", action="append", default=[], help="LABEL:MINUTES:STABILITY a separate measurement")
    parser.add_argument("--out", required=True, help="PNG to write")
    return parser.parse_args()


def read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="") as handle:
            rows += [row for row in csv.DictReader(line for line in handle if not line.startswith("#"))]
    return rows


def minutes_of(rows: list[dict], anchors: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(steps, minutes) of the validation rows; minutes interpolated where the clock is missing."""
    known = dict(anchors)
    known.setdefault(0, 0.0)
    for row in rows:
        if row.get("time/train_minutes"):
            known[int(float(row["step"]))] = float(row["time/train_minutes"])
    xs = np.array(sorted(known))
    ys = np.array([known[x] for x in xs])
    val = sorted({int(float(r["step"])) for r in rows if r.get("val/loss")})
    steps = np.array(val)
    interpolated = any(s not in known for s in val)
    return steps, np.interp(steps, xs, ys), interpolated


def main() -> None:
    args = parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[Path]] = defaultdict(list)
    for spec in args.run:
        label, _, path = spec.rpartition(":")
        runs[label].append(Path(path))
    anchors: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for spec in args.anchor:
        label, step, minutes = spec.rsplit(":", 2)
        anchors[label].append((int(step), float(minutes)))
    fig, (ax_loss, ax_stab) = plt.subplots(1, 2, figsize=(11, 4))
    for label, paths in runs.items():
        rows = read_rows(paths)
        steps, minutes, interpolated = minutes_of(rows, anchors[label])
        by_step = {}
        for row in rows:
            if row.get("val/loss"):
                by_step[int(float(row["step"]))] = row
        loss = [float(by_step[s]["val/loss"]) for s in steps]
        stab = [
            float(by_step[s]["val/molecule_stability"]) if by_step[s].get("val/molecule_stability") else np.nan
            for s in steps
        ]
        name = label + (" (minutes partly interpolated)" if interpolated else "")
        ax_loss.plot(minutes, loss, marker="o", ms=3, label=name)
        ax_stab.plot(minutes, 100 * np.array(stab), marker="o", ms=3, label=name)
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)  # one legend entry per label
    for spec in args.point:
        label, minutes, value = spec.rsplit(":", 2)
        points[label].append((float(minutes), 100 * float(value)))
    for label, xy in points.items():
        ax_stab.scatter(*zip(*xy), marker="*", s=160, zorder=5, label=label)
    ax_loss.set(xlabel="training wall minutes", ylabel="validation loss", yscale="log", title="validation loss")
    ax_stab.set(xlabel="training wall minutes", ylabel="molecule stability (%)", ylim=(0, 100),
                title="molecule stability (32 molecules per validation)")  # fmt: skip
    ax_loss.legend(fontsize=8)
    ax_stab.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
