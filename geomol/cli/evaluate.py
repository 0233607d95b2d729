"""``python -m geomol.evaluate sdf=mols.sdf [regressor=PATH] [target.gap=VALUE]``: metrics of any SDF.

Prints atom and molecule stability, RDKit validity, uniqueness and the closed-shell ratio; with a
property regressor checkpoint, also the MAE of each property it predicts against the molecules' SD
tags of the same name (written by ``geomol.generate``) or against ``target.<name>=VALUE``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from rdkit import Chem

from geomol.checkpoints import load_task
from geomol.cli.train import CONFIG_DIR, report_errors
from geomol.data.chem import atomic_write, graph_from_mol, mol_from_graph, read_sdf
from geomol.metrics.properties import predict_properties, property_mae
from geomol.metrics.summary import molecule_metrics

__all__ = ["main", "run", "compose_config", "read_molecules", "property_errors", "resolve_device", "print_metrics"]


def compose_config(name: str, argv: Sequence[str], open_dicts: Sequence[str]) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with ``key=value`` overrides.

    Keys under the mappings ``open_dicts`` (e.g. ``condition.gap=0.3``) may be new: they are added
    as Hydra's ``+key=value`` would, so users need not type the ``+``.
    """
    overrides = []
    for arg in argv:
        if "=" not in arg:
            raise ValueError(f"arguments are key=value pairs, got {arg!r}")
        if any(arg.startswith(f"{group}.") for group in open_dicts):
            arg = "+" + arg
        overrides.append(arg)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        try:
            return compose(config_name=name, overrides=overrides)
        except Exception as err:  # Hydra's override errors: one line for the user
            raise ValueError(str(err).splitlines()[0]) from None


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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device} was asked for but CUDA is not available")
    return torch.device(device)


def load_regressor(path: str | Path, device: torch.device, trust_checkpoint: bool = False):
    """A trained :class:`geomol.tasks.PropertyTask` (the evaluator), in eval mode, loaded safely."""
    from geomol.tasks.property import PropertyTask

    return load_task(path, expected=PropertyTask, map_location=device, trust_checkpoint=trust_checkpoint)


def property_errors(
    regressor, mols: Sequence[Chem.Mol], targets: Mapping[str, float] | None = None, device=None, plot=None
) -> dict[str, float]:
    """``mae_<name>`` of every property the regressor predicts and a target is known for.

    The target of each molecule is ``targets[name]`` when given, else its SD tag ``name``. With
    ``plot`` (a PNG path), also draws the histogram of the predicted property against its target.
    """
    targets = dict(targets or {})
    names = list(regressor.hparams.targets)
    unknown = [name for name in targets if name not in names]
    if unknown:
        raise ValueError(f"the regressor predicts {', '.join(names)}; it cannot score {', '.join(unknown)}")
    pred = predict_properties(regressor, mols, device=device)
    out, scored = {}, {}
    for k, name in enumerate(names):
        if name in targets:
            target = torch.full_like(pred[:, k], float(targets[name]))
        elif all(mol.HasProp(name) for mol in mols):
            target = torch.tensor([float(mol.GetProp(name)) for mol in mols], dtype=pred.dtype)
        else:
            continue
        out[f"mae_{name}"] = property_mae(pred[:, k], target)
        scored[name] = (pred[:, k], target, regressor.hparams.units[k])
    if plot is not None and scored:
        plot_property_histograms(scored, plot)
    return out


def plot_property_histograms(scored: Mapping[str, tuple], path) -> None:
    """Histogram of each predicted property, with the conditioning target(s) marked, into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scored), figsize=(4.5 * len(scored), 3.2), squeeze=False)
    for ax, (name, (pred, target, unit)) in zip(axes[0], scored.items()):
        ax.hist(pred.numpy(), bins=30, alpha=0.7, label="predicted (regressor)")
        for value in sorted(set(target.tolist()))[:5]:
            ax.axvline(value, color="k", ls="--", lw=1)
        ax.set(xlabel=f"{name} ({unit})", ylabel="molecules", title=f"{name}: target dashed")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def print_metrics(metrics: Mapping[str, float], title: str) -> None:
    print(title)
    for key, value in metrics.items():
        print(f"  {key:<22s} {value:10.4f}")


def run(cfg: DictConfig) -> dict[str, float]:
    if not cfg.sdf:
        raise ValueError("give the molecules to score: sdf=PATH")
    mols = read_molecules(cfg.sdf)
    metrics = molecule_metrics(mols)
    if cfg.regressor:
        device = resolve_device(cfg.device)
        regressor = load_regressor(cfg.regressor, device, bool(cfg.trust_checkpoint))
        metrics.update(property_errors(regressor, mols, OmegaConf.to_container(cfg.target), device))
    print_metrics(metrics, f"Metrics of {len(mols)} molecules in {cfg.sdf}:")
    return metrics


@report_errors
def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Entry point; user errors print one line and exit with code 2."""
    return run(compose_config("evaluate", sys.argv[1:] if argv is None else argv, open_dicts=("target",)))


if __name__ == "__main__":
    main()
