"""QM9 for molecule generation: bonds and charges, the generator half, and sampling statistics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from geomol.metrics.conditional import distribution_quantiles
from geomol.metrics.properties import ood_target

from .datamodule import QM9DataModule
from .qm9 import TARGETS, UNITS

__all__ = ["QM9GenerationDataModule", "atom_count_statistics"]


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
        (others): see :class:`geomol.data.datamodule.QM9DataModule`; ``target`` is not used.
    """

    def __init__(self, *args, with_bonds: bool = True, train_half: str | None = "generator", atom_count_bins: int = 20,
                 **kwargs) -> None:  # fmt: skip
        if not with_bonds:
            raise ValueError("molecule generation needs bonds and formal charges: set data.with_bonds=true")
        if atom_count_bins < 1:
            raise ValueError(f"atom_count_bins must be at least 1, got {atom_count_bins}")
        super().__init__(*args, with_bonds=with_bonds, train_half=train_half, **kwargs)
        self.atom_count_bins = atom_count_bins

    def task_kwargs(self) -> dict:
        """Property names, units, statistics and atom-count histograms of the training molecules."""
        self.setup()
        train = self.splits["train"]
        y = self.dataset.y[train].double()  # [M, 19]
        test_y = self.dataset.y[self.splits["test"]].double()
        std = y.std(0) if y.size(0) > 1 else y.new_ones(y.size(1))
        counts = atom_count_statistics(self.dataset.num_atoms()[train], y, TARGETS, self.atom_count_bins)
        return {
            "targets": list(TARGETS),
            "units": list(UNITS),
            "mean": y.mean(0).tolist(),
            "std": std.clamp_min(1e-8).tolist(),
            "atom_counts": counts,
            "ood_targets": [ood_target(y[:, k]) for k in range(y.size(1))],
            # The test split's distribution of each property, for condition.<name>=sample (the protocol
            # draws the requested values from it).
            "test_quantiles": [distribution_quantiles(test_y[:, k]) for k in range(y.size(1))],
        }
