"""The conditional-generation protocol with a trained property regressor (the evaluator): load it safely,
read each molecule's requested values (SD tags or given targets), and score them
(:mod:`geomol.metrics.conditional`), as ``geomol.generate regressor=…`` and ``geomol.evaluate`` do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from rdkit import Chem

from geomol.checkpoints import load_task, read_checkpoint

from .conditional import RECORD_KEY, conditional_report, format_report, plot_conditional
from .validity import sanitized

__all__ = ["load_regressor", "regressor_record", "requested_values", "property_errors"]

# Named, not imported: metrics sit below tasks (checkpoints resolve the name among geomol's tasks).
PROPERTY_TASK = "geomol.tasks.property.PropertyTask"


def load_regressor(path: str | Path, device: torch.device, trust_checkpoint: bool = False):
    """A trained :class:`geomol.tasks.PropertyTask` (the evaluator), in eval mode, loaded safely."""
    task = load_task(path, expected=PROPERTY_TASK, map_location=device, trust_checkpoint=trust_checkpoint)
    if task.hparams.get("forces"):
        raise ValueError(f"{path} is a force field (energy and forces), not a property regressor")
    return task


def requested_values(regressor, mols: Sequence[Chem.Mol], targets: Mapping[str, float] | None = None) -> dict:
    """Per property the regressor predicts: the value each molecule was asked for (``targets[name]``
    when given, else its SD tag ``name``; NaN where a molecule has no tag). Properties without any
    requested value are left out; none at all is a one-line error."""
    targets = dict(targets or {})
    names = list(regressor.hparams.targets)
    unknown = [name for name in targets if name not in names]
    if unknown:
        raise ValueError(f"the regressor predicts {', '.join(names)}; it cannot score {', '.join(unknown)}")
    out = {}
    for name in names:
        if name in targets:
            value = targets[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"target.{name} must be a finite number, got {value!r}")
            out[name] = torch.full((len(mols),), float(value), dtype=torch.float64)
        elif any(mol.HasProp(name) for mol in mols):
            out[name] = torch.tensor([_tag(mol, name) for mol in mols], dtype=torch.float64)
    if not out:
        raise ValueError(
            f"no molecule has an SD tag for {', '.join(names)} (the properties the regressor predicts): "
            "give target.<name>=VALUE, or generate the molecules with condition.<name>=..."
        )
    return out


def _tag(mol: Chem.Mol, name: str) -> float:
    if not mol.HasProp(name):
        return float("nan")
    text = mol.GetProp(name)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"SD tag {name}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"SD tag {name}={text!r} is not a finite number")
    return value


def property_errors(
    regressor,
    mols: Sequence[Chem.Mol],
    targets: Mapping[str, float] | None = None,
    device=None,
    plot=None,
    record: Mapping | None = None,
    seed: int = 0,
    annotate: bool = True,
) -> dict[str, float]:
    """The conditional-generation protocol (:mod:`geomol.metrics.conditional`) for every property the
    regressor predicts and a requested value is known for; prints its table.

    Returns ``mae_<name>``, ``mae_valid_<name>``, ``shuffled_<name>``, ``atoms_baseline_<name>``,
    ``lower_bound_<name>``, ``scored_<name>`` (and ``ood_generated_<name>``, ``ood_qm9_test_<name>``
    for a single requested value). With ``annotate``, each molecule gets the SD tag
    ``predicted_<name>`` (the property's unit); with ``plot`` (a PNG path), requested vs predicted.
    """
    requested = requested_values(regressor, mols, targets)
    valid = torch.tensor([sanitized(m) is not None for m in mols], dtype=torch.bool)
    rows, pred, readable = conditional_report(regressor, mols, requested, valid, record, seed=seed, device=device)
    names = list(regressor.hparams.targets)
    if annotate:
        for mol, values, ok in zip(mols, pred.tolist(), readable.tolist()):
            if ok:
                for name in requested:
                    mol.SetDoubleProp(f"predicted_{name}", values[names.index(name)])
    print(format_report(rows))
    out = {}
    for row in rows:
        name = row["name"]
        for key in ("mae", "mae_valid", "shuffled", "atoms_baseline", "lower_bound"):
            out[f"{key}_{name}"] = row[key]
        out[f"scored_{name}"] = float(row["scored"])
        if row["ood"] is not None:
            out[f"ood_generated_{name}"] = row["ood"]["generated"]
            if row["ood"]["qm9_test"] is not None:
                out[f"ood_qm9_test_{name}"] = row["ood"]["qm9_test"]
    if plot is not None:
        plot_conditional(requested, pred, names, list(regressor.hparams.units), plot)
    return out


def regressor_record(path: str | Path) -> dict | None:
    """The test record stored with a regressor by ``train.py`` (lower bound, test quantiles), if any."""
    record = read_checkpoint(path).get(RECORD_KEY)
    return record if isinstance(record, dict) else None
