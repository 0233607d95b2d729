"""``python -m geomol.generate ckpt=PATH num_molecules=N output=mols.sdf [condition.gap=7.0 ...]``.

Samples molecules with :class:`~geomol.flows.generator.MoleculeGenerator` from a
:class:`~geomol.tasks.generation.GenerationTask` checkpoint (which holds the conditioning properties,
their statistics and the sampler settings), writes them to an SDF file
(atomically; SD tags hold the conditioning values) and a PNG grid of 2D depictions, and prints their
metrics. Other keys of ``geomol/conf/generate.yaml`` (``steps``, ``batch_size``, ``seed``, ``n_atoms``,
``eta``, ``temperature``, ``guidance``, ``device``, ``regressor``) override as ``key=value``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rdkit import Chem
from rdkit.Chem import Draw

from geomol.cli.common import (
    bool_option,
    check_output,
    compose_config,
    float_option,
    int_option,
    print_metrics,
    report_errors,
    resolve_device,
)
from geomol.data.chem import atomic_write, write_sdf
from geomol.flows.generator import MoleculeGenerator
from geomol.flows.sampler import check_guidance, check_guidance_interval
from geomol.metrics.regressor import load_regressor, property_errors, regressor_record
from geomol.metrics.summary import molecule_metrics

__all__ = ["main", "run", "load_generator", "draw_grid"]


def load_generator(path: str | Path, device, trust_checkpoint: bool = False) -> MoleculeGenerator:
    """The :class:`~geomol.flows.generator.MoleculeGenerator` of a ``GenerationTask`` checkpoint, loaded safely."""
    return MoleculeGenerator.from_checkpoint(path, device=device, trust_checkpoint=trust_checkpoint)


def _depiction(mol: Chem.Mol) -> Chem.Mol:
    """A 2D copy without hydrogens (sanitized when RDKit accepts it)."""
    copy = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(copy)
        copy = Chem.RemoveHs(copy)
    except (ValueError, RuntimeError):
        copy = Chem.RemoveHs(copy, sanitize=False)
        copy.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(copy)
    copy.RemoveAllConformers()
    Chem.rdDepictor.Compute2DCoords(copy)
    return copy


def draw_grid(mols: Sequence[Chem.Mol], path: str | Path, legends: Sequence[str], per_row: int = 6) -> None:
    """PNG grid of 2D depictions, written atomically."""
    image = Draw.MolsToGridImage(
        [_depiction(m) for m in mols],
        molsPerRow=per_row,
        subImgSize=(250, 250),
        legends=list(legends),
        drawOptions=_draw_options(),
        returnPNG=False,  # inside Jupyter RDKit swaps in a renderer that would return an IPython image
    )
    with atomic_write(path, "wb") as handle:
        image.save(handle, format="PNG")


def _draw_options():
    options = Draw.MolDrawOptions()
    options.prepareMolsBeforeDrawing = False  # invalid molecules cannot be kekulized for drawing
    return options


def _legend(k: int, mol: Chem.Mol, names: Sequence[str]) -> str:
    tags = ", ".join(
        f"{name}={mol.GetDoubleProp(name):.3g}"
        + (f" pred {mol.GetDoubleProp('predicted_' + name):.3g}" if mol.HasProp(f"predicted_{name}") else "")
        for name in names
        if mol.HasProp(name)
    )
    return f"#{k}" + (f" ({tags})" if tags else "")


def _variables(value) -> list[str] | None:
    """``guidance_on=[x,a]`` (or one name, ``guidance_on=a``) as a list of names (checked by the sampler), or None."""
    if value is None:
        return None
    items = OmegaConf.to_container(value) if OmegaConf.is_list(value) else [value]
    return [str(v) for v in items]


def _guidance(cfg: DictConfig) -> float | dict[str, float] | None:
    """``guidance=2`` as a number, ``guidance={x:2,e:1.5}`` as one weight per variable (names and values are
    checked by the sampler), or None."""
    if OmegaConf.is_dict(cfg.guidance):
        return {str(k): v for k, v in OmegaConf.to_container(cfg.guidance).items()}
    return float_option(cfg, "guidance", minimum=0.0, optional=True)


def _interval(value) -> list[float] | dict[str, list[float]] | None:
    """``guidance_interval=[t_lo,t_hi]`` as two numbers, or ``guidance_interval={e:[0,0.5]}`` as one pair per
    variable (names and ranges are checked by the sampler), or None."""
    if value is None:
        return None
    items = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    if isinstance(items, dict):
        return {str(k): _pair(v, f"guidance_interval.{k}") for k, v in items.items()}
    return _pair(items, "guidance_interval")


def _pair(items, name: str) -> list[float]:
    if (
        not isinstance(items, list)
        or len(items) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items)
    ):
        raise ValueError(f"{name} must be two numbers [t_lo,t_hi], got {items!r}")
    return [float(v) for v in items]


def run(cfg: DictConfig) -> dict[str, float]:
    if not cfg.ckpt:
        raise ValueError("give a checkpoint: ckpt=PATH (trained with train.py model=propmolflow)")
    if not cfg.output:
        raise ValueError("give the output file: output=mols.sdf")
    num = int_option(cfg, "num_molecules", minimum=1)
    opts = {
        "steps": int_option(cfg, "steps", minimum=1, optional=True),
        "batch_size": int_option(cfg, "batch_size", minimum=1, optional=True),
        "eta": float_option(cfg, "eta", minimum=0.0, optional=True),
        "temperature": float_option(cfg, "temperature", positive=True, optional=True),
        "guidance": _guidance(cfg),
        "guidance_interval": _interval(cfg.guidance_interval),
        "guidance_on": _variables(cfg.guidance_on),
        "guidance_plausibility": float_option(cfg, "guidance_plausibility", minimum=0.0, optional=True),
        "seed": int_option(cfg, "seed"),
        "workers": int_option(cfg, "workers", minimum=1),
    }
    precision = str(cfg.precision)
    if precision not in ("32", "bf16"):
        raise ValueError(f"precision must be 32 or bf16, got {cfg.precision!r}")
    grid = int_option(cfg, "grid", minimum=1)
    progress, trust = bool_option(cfg, "progress"), bool_option(cfg, "trust_checkpoint")
    compiled = bool_option(cfg, "compile")
    n_atoms = OmegaConf.to_container(cfg.n_atoms) if OmegaConf.is_list(cfg.n_atoms) else cfg.n_atoms
    items = n_atoms if isinstance(n_atoms, list) else [n_atoms]
    if n_atoms is not None and (
        not items or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in items)
    ):
        raise ValueError(f"n_atoms must be a whole number of atoms (at least 1) or one per molecule, got {n_atoms!r}")
    if not OmegaConf.is_dict(cfg.condition):
        raise ValueError(f"condition must be given per property, e.g. condition.gap=6.8, got {cfg.condition!r}")
    # Every output is checked before anything is sampled: nothing is half written.
    inputs = [cfg.ckpt, cfg.regressor]
    output = check_output(cfg.output, ".sdf", "output", protect=inputs)
    png = check_output(cfg.png or output.with_suffix(".png"), ".png", "png", protect=[*inputs, output])
    histogram = None
    if cfg.regressor:
        histogram = check_output(output.with_name(output.stem + "_property.png"), ".png", "histogram", inputs)
    device = resolve_device(cfg.device)
    generator = load_generator(cfg.ckpt, device, trust)
    regressor = load_regressor(cfg.regressor, device, trust) if cfg.regressor else None
    condition = OmegaConf.to_container(cfg.condition)
    start = time.perf_counter()
    mols = generator.sample(
        num, condition=condition, n_atoms=n_atoms, progress=progress, precision=precision, compile=compiled, **opts
    )
    seconds = time.perf_counter() - start
    metrics = molecule_metrics(mols)
    metrics["molecules_per_second"] = len(mols) / seconds
    what = ", ".join(f"{k}={_short(v)}" for k, v in condition.items()) or "unconditional"
    guidance = generator.sampling["guidance"] if opts["guidance"] is None else opts["guidance"]
    interval = (
        generator.sampling["guidance_interval"] if opts["guidance_interval"] is None else opts["guidance_interval"]
    )
    guided = generator.sampling["guidance_on"] if opts["guidance_on"] is None else opts["guidance_on"]
    weights = check_guidance(guidance)
    guided = [m for m in guided if weights[m] != 1.0]
    if guided:
        what += f", guidance {_describe_weights(weights, guided)}" + _describe_interval(interval, guided)
        what += f" on {','.join(guided)}" if sorted(guided) != sorted("xace") else ""
        plausibility = opts["guidance_plausibility"]
        if plausibility is None:
            plausibility = generator.sampling["guidance_plausibility"]
        what += f", plausibility {plausibility:g}" if plausibility else ""
    print_metrics(metrics, f"Generated {len(mols)} molecules ({what}) -> {output}, {png}:")
    if regressor is not None:
        record = regressor_record(cfg.regressor)
        metrics.update(
            property_errors(regressor, mols, device=device, plot=histogram, record=record, seed=opts["seed"])
        )
    write_sdf(mols, output)  # after the regressor: its predictions are SD tags (predicted_<name>)
    shown = mols[:grid]
    draw_grid(shown, png, [_legend(k, m, generator.condition) for k, m in enumerate(shown)])
    return metrics


def _groups(values: dict, guided) -> dict:
    """The guided variables grouped by their value, ``{value: [variables]}``, in x, a, c, e order."""
    groups: dict = {}
    for m, value in values.items():
        if m in guided:
            groups.setdefault(value, []).append(m)
    return groups


def _describe_weights(weights: dict[str, float], guided) -> str:
    """``2`` or ``x,a,c 2, e 1.5`` (the guided variables)."""
    groups = _groups(weights, guided)
    if len(groups) == 1:
        return f"{next(iter(groups)):g}"
    return ", ".join(f"{','.join(ms)} {w:g}" for w, ms in groups.items())


def _describe_interval(interval, guided) -> str:
    """`` for t in [0, 0.8)`` or `` for t in x,a,c [0, 0.8), e [0, 0.5)`` (the guided variables); empty for
    every step."""
    groups = _groups(check_guidance_interval(interval), guided)
    if list(groups) == [(0.0, 1.0)]:
        return ""
    if len(groups) == 1:
        ((lo, hi),) = groups
        return f" for t in [{lo:g}, {hi:g})"
    return " for t in " + ", ".join(f"{','.join(ms)} [{lo:g}, {hi:g})" for (lo, hi), ms in groups.items())


def _short(value) -> str:
    return f"[{len(value)} values]" if isinstance(value, list) and len(value) > 3 else str(value)


@report_errors
def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Entry point; user errors print one line and exit with code 2."""
    return run(compose_config("generate", sys.argv[1:] if argv is None else argv, open_dicts=("condition",)))


def cli() -> None:
    """The ``geomol-generate`` console script: like ``main`` but returns nothing (a returned dict would be
    printed and turned into exit code 1 by the script wrapper)."""
    main()


if __name__ == "__main__":
    cli()
