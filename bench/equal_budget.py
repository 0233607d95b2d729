"""Equal-budget learning curves of force fields: validation force and energy MAE against training minutes
(``time/train_minutes``, logged by every geomol run), one PNG, and each run's numbers at the budget
they all reached.

The runs are ordinary ``train.py`` runs, started side by side under the same load, e.g. on rMD17 ethanol:

    python train.py experiment=gaunt_rmd17 data.molecule=ethanol trainer.max_time=00:00:30:00 \\
        trainer.max_epochs=216 test=false hydra.run.dir=outputs/ff_gaunt_ethanol
    python train.py experiment=ponita_rmd17 data.molecule=ethanol trainer.max_time=00:00:30:00 \\
        trainer.max_epochs=120 test=false hydra.run.dir=outputs/ff_ponita_ethanol
    python bench/equal_budget.py outputs/ff_gaunt_ethanol outputs/ff_ponita_ethanol --png equal_budget.png

(``max_epochs`` sets each schedule's horizon to what fits a common wall budget at each model's epoch
time.) Wall minutes are only comparable between runs that shared the machine the same way: say how.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

KEYS = ("val/mae_forces", "val/mae_energy")


def read_curve(run_dir: Path) -> list[dict[str, float]]:
    """Validation rows with training minutes, in order."""
    rows = []
    with open(run_dir / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("time/train_minutes") and row.get(KEYS[0]):
                rows.append({"minutes": float(row["time/train_minutes"]), "epoch": int(float(row["epoch"])),
                             **{k: float(row[k]) for k in KEYS if row.get(k)}})  # fmt: skip
    return rows


def at_budget(rows: list[dict[str, float]], minutes: float) -> dict[str, float] | None:
    """The last validation at or before ``minutes``."""
    before = [r for r in rows if r["minutes"] <= minutes + 1e-9]
    return before[-1] if before else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--png", type=Path, default=Path("equal_budget.png"))
    args = parser.parse_args()
    curves = {run.name: read_curve(run) for run in args.runs}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        raise SystemExit("geomol: error: no validation rows with time/train_minutes in these runs")
    budget = min(rows[-1]["minutes"] for rows in curves.values())
    print(f"common budget: {budget:.1f} training minutes")
    print(f"{'run':<32s} {'epoch':>5s} {'F MAE (meV/Å)':>14s} {'E MAE (meV)':>12s}   best F so far")
    for name, rows in curves.items():
        row = at_budget(rows, budget)
        best = min(r[KEYS[0]] for r in rows if r["minutes"] <= budget + 1e-9)
        print(f"{name:<32s} {row['epoch']:5d} {row[KEYS[0]]:14.1f} {row.get(KEYS[1], float('nan')):12.1f}   {best:.1f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in curves.items():
        for ax, key, unit in zip(axes, KEYS, ("meV/Å", "meV")):
            pts = [(r["minutes"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
            ax.set(
                xlabel="training minutes (wall)", ylabel=f"validation {key.split('_', 1)[1]} MAE ({unit})", yscale="log"
            )
    for ax in axes:
        ax.axvline(budget, color="grey", lw=0.8, ls=":")
        ax.legend(fontsize=8)
    fig.suptitle("equal budget: validation MAE against training time")
    fig.tight_layout()
    tmp = args.png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
