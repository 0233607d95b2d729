"""``python -m geomol.evaluate sdf=mols.sdf [regressor=PATH] [target.gap=VALUE]``: metrics of any SDF.

Prints atom and molecule stability, RDKit validity, uniqueness and the closed-shell ratio; with a
property regressor checkpoint, also the MAE of each property it predicts against the molecules' SD
tags of the same name (written by ``geomol.generate``) or against ``target.<name>=VALUE``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rdkit import Chem

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
from geomol.metrics.regressor import load_regressor, property_errors, regressor_record, requested_values
from geomol.metrics.summary import molecule_metrics

# load_regressor, property_errors, regressor_record and requested_values live in geomol.metrics.regressor
# and stay importable from here.
__all__ = [
    "main",
    "run",
    "compose_config",
    "read_molecules",
    "property_errors",
    "load_regressor",
    "regressor_record",
    "requested_values",
    "resolve_device",
    "print_metrics",
]


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
