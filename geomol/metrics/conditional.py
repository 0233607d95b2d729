"""The conditional-generation protocol of EDM / PropMolFlow: how well generated molecules hit the
property values they were asked for, measured by an independent property regressor.

For each conditioned property (Hoogeboom et al. 2022, Sec. 5.3; Zeng et al. 2025, Sec. 3.2):

* **MAE**: mean |regressor(molecule) − requested value| over the molecules the regressor can read
  (elements it was trained on, finite 3D coordinates), and over the RDKit-valid ones among them.
* **Shuffled bound** (EDM's "U-bound"): the same MAE after the requested values are permuted among
  the molecules (mean over several seeded permutations): what a generator that ignores the condition
  but draws molecules from the right distribution scores. A working conditioning is well below it.
* **#atoms baseline** (EDM's "#Atoms"): |mean property of training molecules with that many atoms −
  requested value|, i.e. the error of a judge that sees only the atom count. Sampling the atom count
  from the property-conditional histogram already buys this much; the generator should beat it.
* **Lower bound**: the regressor's own MAE on QM9's test split (stored with the regressor by
  ``train.py``); no generator can be measured more precisely than its judge.
* **Out of distribution** (requested value the same for every molecule): the fraction of molecules
  predicted beyond it, beside the fraction of real QM9 test molecules beyond it (PropMolFlow's OOD
  metric; the requested value is the 99th percentile of the generator's training half).

The reference numbers (test MAE, test-split quantiles, per-atom-count means of the regressor's
training half) are stored in the regressor checkpoint under :data:`RECORD_KEY` by
:func:`property_reference` (called by ``train.py`` after testing a property model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from rdkit import Chem
from torch import Tensor

from .properties import predict_properties

__all__ = [
    "RECORD_KEY",
    "QUANTILES",
    "distribution_quantiles",
    "property_reference",
    "readable_mask",
    "conditional_report",
    "format_report",
    "plot_conditional",
    "quantile_sample",
    "fraction_beyond",
]

# Checkpoint key of a property model's test record (plain data: floats and lists).
RECORD_KEY = "geomol_test_record"
# Quantile levels stored per property (0, 1/500, ..., 1): enough to redraw the test distribution.
QUANTILES = 501


def distribution_quantiles(values: Tensor) -> list[float]:
    """The :data:`QUANTILES` equally spaced quantiles (0 … 1) of ``values``, as plain floats."""
    levels = torch.linspace(0, 1, QUANTILES, dtype=torch.float64)
    return torch.quantile(values.double(), levels).tolist()


def property_reference(y_train: Tensor, n_atoms_train: Tensor, y_test: Tensor, names: Sequence[str]) -> dict:
    """What the protocol needs from the data, per property: test-split quantiles (true labels) and the
    mean value per atom count over the training molecules (for the #atoms baseline).

    Shapes:
        y_train ``[M, P]``, n_atoms_train ``[M]``, y_test ``[T, P]`` (raw units)
    """
    n_atoms_train = torch.as_tensor(n_atoms_train, dtype=torch.long)
    out = {"test_quantiles": {}, "atom_count_means": {}, "num_test": int(y_test.size(0))}
    counts = torch.bincount(n_atoms_train).double()
    for k, name in enumerate(names):
        out["test_quantiles"][name] = distribution_quantiles(y_test[:, k])
        sums = torch.zeros_like(counts).index_add_(0, n_atoms_train, y_train[:, k].double())
        means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)
        out["atom_count_means"][name] = [None if torch.isnan(m) else float(m) for m in means]
    return out


def quantile_sample(quantiles: Sequence[float], num: int, generator: torch.Generator | None = None) -> Tensor:
    """``num`` values drawn from the distribution whose equally spaced quantiles are given (inverse CDF,
    linear between the stored quantiles)."""
    q = torch.as_tensor(quantiles, dtype=torch.float64)
    u = torch.rand(num, generator=generator, dtype=torch.float64) * (q.numel() - 1)
    low = u.floor().long().clamp_max(q.numel() - 2)
    frac = u - low
    return q[low] * (1 - frac) + q[low + 1] * frac


def fraction_beyond(quantiles: Sequence[float], value: float, upper: bool = True) -> float:
    """Fraction of a distribution (given by equally spaced quantiles) above ``value`` (below if not ``upper``)."""
    q = np.asarray(quantiles, dtype=np.float64)
    cdf = float(np.interp(value, q, np.linspace(0.0, 1.0, q.size), left=0.0, right=1.0))
    return 1.0 - cdf if upper else cdf


def readable_mask(mols: Sequence[Chem.Mol], elements: Sequence[int] | None) -> Tensor:
    """Which molecules a regressor trained on ``elements`` can score (atoms, a conformer, finite coordinates)."""
    known = set(elements) if elements is not None else None
    keep = []
    for mol in mols:
        ok = mol.GetNumAtoms() > 0 and mol.GetNumConformers() > 0
        if ok and known is not None:
            ok = all(atom.GetAtomicNum() in known for atom in mol.GetAtoms())
        if ok:
            ok = bool(np.isfinite(mol.GetConformer().GetPositions()).all())
        keep.append(ok)
    return torch.tensor(keep, dtype=torch.bool)


def _shuffled_mae(pred: Tensor, requested: Tensor, shuffles: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    maes = [(pred - requested[torch.randperm(requested.numel(), generator=gen)]).abs().mean() for _ in range(shuffles)]
    return float(torch.stack(maes).mean())


def conditional_report(
    regressor,
    mols: Sequence[Chem.Mol],
    requested: Mapping[str, Tensor],
    valid: Tensor | None = None,
    record: Mapping | None = None,
    shuffles: int = 10,
    seed: int = 0,
    device=None,
) -> tuple[list[dict], Tensor, Tensor]:
    """The protocol's numbers for each property in ``requested`` (raw values, one per molecule).

    Returns ``(rows, predictions [M, T], readable [M])``: one dict per property (name, unit, counts,
    ``mae``, ``mae_valid``, ``shuffled``, ``atoms_baseline``, ``lower_bound``, ``ood``), and the
    regressor's predictions for every molecule (NaN where it cannot read the molecule).
    """
    names = list(regressor.hparams.targets)
    units = list(regressor.hparams.units)
    unknown = [name for name in requested if name not in names]
    if unknown:
        raise ValueError(
            f"the regressor predicts {', '.join(names)}; it cannot score {', '.join(unknown)} "
            "(train one on those properties: python train.py model=gvp_regressor data.target=[...])"
        )
    readable = readable_mask(mols, regressor.hparams.get("elements"))
    if not bool(readable.any()):
        raise ValueError(
            "the regressor cannot read any of the molecules (no atoms, no 3D conformer, or unknown elements)"
        )
    pred = torch.full((len(mols), len(names)), torch.nan, dtype=torch.float64)
    idx = readable.nonzero().flatten()
    pred[idx] = predict_properties(regressor, [mols[i] for i in idx.tolist()], device=device)
    valid = torch.ones(len(mols), dtype=torch.bool) if valid is None else torch.as_tensor(valid, dtype=torch.bool)
    n_atoms = torch.tensor([m.GetNumAtoms() for m in mols])
    record = dict(record or {})
    rows = []
    for name, values in requested.items():
        k = names.index(name)
        values = torch.as_tensor(values, dtype=torch.float64).flatten()
        if values.numel() != len(mols):
            raise ValueError(f"{values.numel()} requested {name} values for {len(mols)} molecules")
        scored = readable & torch.isfinite(values)
        p, r = pred[scored, k], values[scored]
        row = {
            "name": name,
            "unit": units[k],
            "molecules": len(mols),
            "scored": int(scored.sum()),
            "valid_scored": int((scored & valid).sum()),
            "mae": float((p - r).abs().mean()) if p.numel() else float("nan"),
            "mae_valid": float((pred[scored & valid, k] - values[scored & valid]).abs().mean())
            if bool((scored & valid).any())
            else float("nan"),
            "shuffled": _shuffled_mae(p, r, shuffles, seed) if p.numel() > 1 else float("nan"),
            "atoms_baseline": float("nan"),
            "lower_bound": float("nan"),
            "ood": None,
        }
        means = (record.get("atom_count_means") or {}).get(name)
        if means is not None:
            n = n_atoms[scored]
            table = torch.tensor([float("nan") if m is None else m for m in means], dtype=torch.float64)
            inside = n < table.numel()
            guess = torch.full_like(r, torch.nan)
            guess[inside] = table[n[inside]]
            ok = torch.isfinite(guess)
            if bool(ok.any()):
                row["atoms_baseline"] = float((guess[ok] - r[ok]).abs().mean())
        lower = (record.get("metrics") or {}).get(f"mae_{name}")
        if lower is not None:
            scale = 1000.0 if units[k] == "eV" else 1.0  # test metrics are logged in meV for eV targets
            row["lower_bound"] = float(lower) / scale
        if r.numel() and bool((r == r[0]).all()):
            target = float(r[0])
            quantiles = (record.get("test_quantiles") or {}).get(name)
            upper = True if quantiles is None else target >= float(np.median(quantiles))
            beyond = float((p > target).double().mean()) if upper else float((p < target).double().mean())
            row["ood"] = {
                "target": target,
                "side": "above" if upper else "below",
                "generated": beyond,
                "qm9_test": None if quantiles is None else fraction_beyond(quantiles, target, upper),
            }
        rows.append(row)
    return rows, pred, readable


def _display(value: float, unit: str) -> tuple[float, str]:
    return (value * 1000.0, "meV") if unit == "eV" else (value, unit)


def format_report(rows: Sequence[Mapping]) -> str:
    """The protocol table as text (errors of eV properties in meV)."""
    lines = ["Conditional generation (requested value vs the regressor's prediction):"]
    header = f"  {'property':<9s} {'scored':>11s} {'MAE':>9s} {'MAE valid':>10s} {'shuffled':>9s} {'#atoms':>9s} {'lower bd':>9s}  unit"
    lines.append(header)
    for row in rows:
        unit = _display(1.0, row["unit"])[1]
        cells = [
            _display(row[key], row["unit"])[0]
            for key in ("mae", "mae_valid", "shuffled", "atoms_baseline", "lower_bound")
        ]
        widths = (9, 10, 9, 9, 9)
        text = " ".join(f"{c:{w}.1f}" if unit == "meV" else f"{c:{w}.3f}" for c, w in zip(cells, widths))
        lines.append(f"  {row['name']:<9s} {row['scored']:>5d}/{row['molecules']:<5d} {text}  {unit}")
    for row in rows:
        if row["ood"] is not None:
            o = row["ood"]
            ref = "n/a (no test record in the regressor)" if o["qm9_test"] is None else f"{100 * o['qm9_test']:.1f} %"
            lines.append(
                f"  {row['name']} = {o['target']:.4g} {row['unit']} for every molecule: {100 * o['generated']:.1f} % of the "
                f"generated molecules are predicted {o['side']} it (real QM9 test molecules: {ref})"
            )
    return "\n".join(lines)


def plot_conditional(
    requested: Mapping[str, Tensor], pred: Tensor, names: Sequence[str], units: Sequence[str], path
) -> None:
    """Per property: histograms of requested and predicted values, and predicted against requested."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geomol.files import atomic_write

    fig, axes = plt.subplots(len(requested), 2, figsize=(9, 3.4 * len(requested)), squeeze=False)
    for (ax_hist, ax_scatter), (name, values) in zip(axes, requested.items()):
        k = list(names).index(name)
        r = torch.as_tensor(values, dtype=torch.float64)
        p = pred[:, k]
        ok = torch.isfinite(p) & torch.isfinite(r)
        r, p = r[ok].numpy(), p[ok].numpy()
        unit = units[k]
        bins = np.linspace(min(r.min(), p.min()), max(r.max(), p.max()), 40) if r.size else 10
        ax_hist.hist(r, bins=bins, alpha=0.6, label="requested")
        ax_hist.hist(p, bins=bins, alpha=0.6, label="predicted (regressor)")
        ax_hist.set(xlabel=f"{name} ({unit})", ylabel="molecules", title=f"{name}: {ok.sum()} molecules")
        ax_hist.legend(fontsize=8)
        ax_scatter.scatter(r, p, s=6, alpha=0.5)
        if r.size:
            lo, hi = float(min(r.min(), p.min())), float(max(r.max(), p.max()))
            ax_scatter.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = requested")
            ax_scatter.legend(fontsize=8)
        mae = float(np.abs(p - r).mean()) if r.size else float("nan")
        ax_scatter.set(
            xlabel=f"requested {name} ({unit})", ylabel=f"predicted {name} ({unit})", title=f"MAE {mae:.3g} {unit}"
        )
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
