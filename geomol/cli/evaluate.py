"""``python -m geomol.evaluate sdf=mols.sdf [regressor=PATH] [target.gap=VALUE]``: metrics of any SDF.

Prints atom and molecule stability, RDKit validity, uniqueness and the closed-shell ratio; with a
property regressor checkpoint, also the MAE of each property it predicts against the molecules' SD
tags of the same name (written by ``geomol.generate``) or against ``target.<name>=VALUE``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rdkit import Chem

from geomol.checkpoints import load_task, read_checkpoint
from geomol.cli.common import (
    bool_option,
    check_output,
    compose_config,
    int_option,
    print_metrics,
    report_errors,
    resolve_device,
)
from geomol.data.chem import graph_from_mol, mol_from_graph, read_sdf, write_sdf
from geomol.metrics.conditional import RECORD_KEY, conditional_report, format_report, plot_conditional
from geomol.metrics.summary import molecule_metrics
from geomol.metrics.validity import sanitized

__all__ = ["main", "run", "compose_config", "read_molecules", "property_errors", "resolve_device", "print_metrics"]


def read_molecules(path: str | Path) -> list[Chem.Mol]:
    """Molecules of an SDF, rebuilt from their atoms, charges and bonds as geomol builds generated ones.

    Hydrogens must be explicit atoms (as in QM9 and generated SDFs): no implicit hydrogen is added,
    and both atoms of an aromatic bond are aromatic, so an aromatic bond outside a ring stays invalid
    (RDKit's SDF reader would otherwise accept it). SD tags are kept.
    """
    mols = []
    for k, mol in enumerate(read_sdf(path, sanitize=False, remove_hs=False)):
        try:
            graph = graph_from_mol(mol)
        except ValueError as err:
            raise ValueError(f"molecule {k + 1} of {path}: {err}") from None
        rebuilt = mol_from_graph(
            graph["z"], graph["pos"], graph["charge"], graph["edge_index"], graph["edge_attr"], sanitize=False
        )
        for key in mol.GetPropNames():
            rebuilt.SetProp(key, mol.GetProp(key))
        mols.append(rebuilt)
    return mols


def load_regressor(path: str | Path, device: torch.device, trust_checkpoint: bool = False):
    """A trained :class:`geomol.tasks.PropertyTask` (the evaluator), in eval mode, loaded safely."""
    from geomol.tasks.property import PropertyTask

    task = load_task(path, expected=PropertyTask, map_location=device, trust_checkpoint=trust_checkpoint)
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


def run(cfg: DictConfig) -> dict[str, float]:
    if not cfg.sdf:
        raise ValueError("give the molecules to score: sdf=PATH")
    sdf = Path(cfg.sdf)
    output = check_output(cfg.output, ".sdf", "output", protect=[sdf, cfg.regressor])
    png = None
    if cfg.regressor:
        default_png = sdf.with_name(sdf.stem + "_property.png")
        png = check_output(cfg.png or default_png, ".png", "png", protect=[sdf, cfg.regressor, output])
        device = resolve_device(cfg.device)
        regressor = load_regressor(cfg.regressor, device, bool_option(cfg, "trust_checkpoint"))
    elif output is not None:
        raise ValueError("output= writes the predicted properties into a copy of the SDF: give regressor=PATH too")
    mols = read_molecules(sdf)
    metrics = molecule_metrics(mols)
    print_metrics(metrics, f"Metrics of {len(mols)} molecules in {cfg.sdf}:")
    if cfg.regressor:
        record = regressor_record(cfg.regressor)
        targets = OmegaConf.to_container(cfg.target)
        metrics.update(property_errors(regressor, mols, targets, device, png, record, int_option(cfg, "seed")))
        if output is not None:
            write_sdf(mols, output)
        print(f"  histogram of requested vs predicted values: {png}" + (f"; annotated SDF: {output}" if output else ""))
    return metrics


@report_errors
def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Entry point; user errors print one line and exit with code 2."""
    return run(compose_config("evaluate", sys.argv[1:] if argv is None else argv, open_dicts=("target",)))


def cli() -> None:
    """The ``geomol-evaluate`` console script: like ``main`` but returns nothing (a returned dict would be
    printed and turned into exit code 1 by the script wrapper)."""
    main()


if __name__ == "__main__":
    cli()
