"""QM9 for molecule generation: bonds and charges, the generator half, and sampling statistics."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .datamodule import QM9DataModule, TaskStats
from .qm9 import TARGETS, UNITS

__all__ = ["GenerationStats", "QM9GenerationDataModule", "atom_count_statistics", "ood_target"]


def ood_target(values: Sequence[float] | Tensor | np.ndarray, percentile: float = 99.0) -> float:
    """The out-of-distribution target: the ``percentile``-th percentile of the training-half values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("ood_target needs a non-empty list of finite property values")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    return float(np.percentile(values, percentile))


def atom_count_statistics(n_atoms: Tensor, properties: Tensor | None = None, names: Sequence[str] = (),
                          bins: int = 20) -> dict:  # fmt: skip
    """Histogram of molecule sizes, overall and within percentile bins of each property.

    Returns ``{"counts": [...], "given_property": {name: {"edges": [...], "counts": [[...], ...]}}}``
    (plain lists, stored in checkpoints): ``counts[n]`` molecules have ``n`` atoms; ``edges`` are the
    ``bins - 1`` inner quantiles of the property and ``counts[b][n]`` the histogram of bin ``b``.

    Shapes:
        n_atoms ``[M]``, properties ``[M, len(names)]`` (raw units)
    """
    n_atoms = torch.as_tensor(n_atoms, dtype=torch.long)
    if n_atoms.numel() == 0:
        raise ValueError("no molecules to count atoms of")
    size = int(n_atoms.max()) + 1
    given = {}
    for k, name in enumerate(names):
        values = properties[:, k].double().contiguous()
        edges = torch.quantile(values, torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
        table = torch.zeros(bins, size, dtype=torch.long)
        table.index_put_((torch.bucketize(values, edges), n_atoms), torch.ones_like(n_atoms), accumulate=True)
        given[name] = {"edges": edges.tolist(), "counts": table.tolist()}
    return {"counts": torch.bincount(n_atoms, minlength=size).tolist(), "given_property": given}


@dataclasses.dataclass(frozen=True, eq=False)
class GenerationStats(TaskStats):
    """What :class:`geomol.tasks.generation.GenerationTask` needs to know about generation data (its
    keyword arguments), per property of the data; the task keeps those it is conditioned on.

    Args:
        targets, units: property names and units.
        mean, std: per-molecule statistics of each property on the training molecules.
        atom_counts: atom-count histograms (:func:`atom_count_statistics`).
        ood_targets: out-of-distribution value of each property (:func:`ood_target` of the training molecules).
        test_quantiles: equally spaced quantiles of each property on the test split.
    """

    targets: list[str]
    units: list[str]
    mean: list[float]
    std: list[float]
    atom_counts: dict
    ood_targets: list[float] | None = None
    test_quantiles: list[list[float]] | None = None


class QM9GenerationDataModule(QM9DataModule):
    """QM9 with bonds for :class:`geomol.tasks.generation.GenerationTask` (PropMolFlow's protocol).

    Trains on the generator half of the training split by default, so that the property regressor
    used as the evaluator can train on the other half. ``task_kwargs()`` gives the task what it
    stores in the checkpoint for sampling: per-molecule mean and std of every QM9 property on the
    training molecules (to standardise conditioning values), the atom-count histograms, overall
    and per percentile bin of each property, and the out-of-distribution targets (the 99th
    percentile of each property on the training molecules, PropMolFlow's protocol).

    Args:
        atom_count_bins: percentile bins of each property for the conditional atom counts.
        kekulize: serve aromatic bonds as single and double bonds of a Kekulé structure (FlowMol's default since
            its ``explicit_aromaticity=False``; PropMolFlow, and geomol by default, keep the aromatic bond type), so a
            generator never has to close an aromatic ring consistently, a common cause of invalid molecules.
        (others): see :class:`geomol.data.datamodule.QM9DataModule`; ``target`` is not used.
    """

    def __init__(self, *args, with_bonds: bool = True, train_half: str | None = "generator", atom_count_bins: int = 20,
                 kekulize: bool = False, **kwargs) -> None:  # fmt: skip
        if not with_bonds:
            raise ValueError("molecule generation needs bonds and formal charges: set data.with_bonds=true")
        if atom_count_bins < 1:
            raise ValueError(f"atom_count_bins must be at least 1, got {atom_count_bins}")
        if not isinstance(kekulize, bool):
            raise ValueError(f"data.kekulize must be true or false, got {kekulize!r}")
        super().__init__(*args, with_bonds=with_bonds, train_half=train_half, **kwargs)
        self.atom_count_bins = atom_count_bins
        self.kekulize = kekulize

    def _build(self):
        dataset, *splits = super()._build()
        dataset.kekulize = self.kekulize
        return (dataset, *splits)

    def task_kwargs(self) -> GenerationStats:
        """Property names, units, statistics and atom-count histograms of the training molecules."""
        from geomol.metrics.conditional import distribution_quantiles  # metrics imports this module

        self.setup()
        train = self.splits["train"]
        y = self.dataset.y[train].double()  # [M, 19]
        test_y = self.dataset.y[self.splits["test"]].double()
        std = y.std(0) if y.size(0) > 1 else y.new_ones(y.size(1))
        counts = atom_count_statistics(self.dataset.num_atoms()[train], y, TARGETS, self.atom_count_bins)
        return GenerationStats(
            targets=list(TARGETS),
            units=list(UNITS),
            mean=y.mean(0).tolist(),
            std=std.clamp_min(1e-8).tolist(),
            atom_counts=counts,
            ood_targets=[ood_target(y[:, k]) for k in range(y.size(1))],
            # The test split's distribution of each property, for condition.<name>=sample (the protocol
            # draws the requested values from it).
            test_quantiles=[distribution_quantiles(test_y[:, k]) for k in range(y.size(1))],
        )
