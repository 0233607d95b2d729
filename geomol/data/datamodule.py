"""LightningDataModules: the bridge from datasets to tasks.

Every data module exposes ``task_kwargs()``: what the task needs to know about the data (target
names and units, standardization statistics, elements, whether forces exist), as a small dataclass
(:class:`TargetStats` for property data, :class:`~geomol.data.generation.GenerationStats` for
generation data). Its fields are the task's keyword arguments: ``train.py`` passes them as
``Task(net=..., **datamodule.task_kwargs())``, and the task stores them in the checkpoint's
hyper-parameters as plain values.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import Sampler, Subset
from torch_geometric.loader import DataLoader

from .qm9 import EXTENSIVE, QM9, TARGETS, UNITS, split_indices, training_halves

__all__ = ["EpochShuffleSampler", "GraphDataModule", "QM9DataModule", "TargetStats", "TaskStats", "target_statistics"]


class TaskStats(Mapping):
    """Base of the dataclasses that data modules give their task: a read-only mapping from field name to
    value, so that they spread into the task's keyword arguments (``Task(net=..., **stats)``) and compare
    equal to the dict of their fields."""

    def __getitem__(self, key: str):
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(self))


@dataclasses.dataclass(frozen=True, eq=False)
class TargetStats(TaskStats):
    """What :class:`geomol.tasks.PropertyTask` needs to know about property data (its keyword arguments).

    Args:
        targets, units: target names and their units.
        mean, std: standardization statistics of the training split (``mean`` per atom where extensive).
        extensive: per target, whether it scales with the number of atoms.
        elements: atomic numbers of the data; a trained model refuses others.
        forces: the targets are one energy with forces (``batch.energy``, ``batch.forces``).
        target_columns: columns of ``batch.y`` holding the targets (None: all of them).
        force_rms: RMS of the training force components (eV/Å), for ``energy_scale=force_rms``.
    """

    targets: list[str]
    units: list[str]
    mean: list[float]
    std: list[float]
    extensive: list[bool]
    elements: list[int] | None = None
    forces: bool = False
    target_columns: list[int] | None = None
    force_rms: float | None = None


def target_statistics(y: Tensor, num_atoms: Tensor, extensive: Sequence[bool]) -> tuple[list[float], list[float]]:
    """Mean and std used to standardize targets: per atom for extensive targets, per molecule otherwise.

    Shapes:
        y ``[M, T]``, num_atoms ``[M]`` -> two lists of length ``T``.
    """
    y = y.double()
    n = num_atoms.double().unsqueeze(-1)
    ext = torch.tensor(list(extensive), dtype=torch.bool)
    per_atom_mean = (y / n).mean(0)
    mean = torch.where(ext, per_atom_mean, y.mean(0))
    centred = y - torch.where(ext, mean * n, mean)
    std = centred.std(0).clamp_min(1e-8) if y.size(0) > 1 else torch.ones(y.size(1), dtype=torch.float64)
    return mean.tolist(), std.tolist()


class EpochShuffleSampler(Sampler[int]):
    """A random order that depends on ``(seed, epoch)`` only.

    Lightning calls ``set_epoch`` at every epoch, so a run resumed from a checkpoint draws exactly
    the batches the uninterrupted run would have drawn (the default sampler uses the global RNG,
    whose state a checkpoint does not hold).
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


class GraphDataModule(pl.LightningDataModule):
    """Train/val/test subsets of one graph dataset, batched by PyG's loader.

    Subclasses implement ``_build()`` returning ``(dataset, train_idx, val_idx, test_idx)`` and
    ``task_kwargs()``. Training batches are shuffled by :class:`EpochShuffleSampler`.
    """

    def __init__(
        self, batch_size: int = 32, num_workers: int = 0, eval_batch_size: int | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.dataset = None
        self.splits: dict[str, Tensor] = {}

    def _build(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset, train, val, test = self._build()
            self.splits = {"train": train, "val": val, "test": test}

    def subset(self, split: str) -> Subset:
        self.setup()
        return Subset(self.dataset, self.splits[split].tolist())

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        subset = self.subset(split)
        return DataLoader(
            subset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=EpochShuffleSampler(len(subset), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class QM9DataModule(GraphDataModule):
    """QM9 property regression.

    Args:
        root: cache folder (``data.root=…``).
        source: folder of qm9pack-style CSVs (tests use ``tests/fixtures/qm9``); default qm9pack.
        target: one target name or a list (see :data:`geomol.data.qm9.TARGETS`).
        subset: use this many molecules (seeded random choice) before splitting, for quick runs.
        split: explicit (train, val, test) sizes; default the standard 100,000 / 17,748 / 13,083
            split (scaled to ``subset``).
        train_half: ``"generator"`` or ``"regressor"`` trains on that half of the training split
            (PropMolFlow's protocol); ``None`` uses all of it.
        with_bonds: add formal charges and bonds (RDKit).
        seed: seed of the subset choice and the split.
    """

    def __init__(
        self,
        root: str | os.PathLike = "data/qm9",
        source: str | os.PathLike | None = None,
        target: str | Sequence[str] = "homo",
        subset: int | None = None,
        split: Sequence[int] | None = None,
        train_half: str | None = None,
        with_bonds: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        download: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, eval_batch_size=eval_batch_size, seed=seed)
        self.targets = [target] if isinstance(target, str) else list(target)
        if not self.targets:
            raise ValueError("no QM9 target given; set data.target (e.g. data.target=homo)")
        for name in self.targets:
            QM9.target_index(name)
        if train_half not in (None, "generator", "regressor"):
            raise ValueError(f"train_half must be 'generator', 'regressor' or null, got {train_half!r}")
        if subset is not None and subset < 3:
            raise ValueError(f"data.subset must be at least 3 molecules, got {subset}")
        self.root, self.source, self.subset_size = root, source, subset
        self.split_sizes, self.train_half, self.with_bonds = split, train_half, with_bonds
        self.download = download
        self.target_columns = [TARGETS.index(t) for t in self.targets]

    def _build(self):
        dataset = QM9(self.root, source=self.source, with_bonds=self.with_bonds, download=self.download)
        pool = torch.arange(len(dataset))
        if self.subset_size is not None:
            if self.subset_size > len(dataset):
                raise ValueError(f"data.subset={self.subset_size} but QM9 here has {len(dataset)} molecules")
            pool = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed))[: self.subset_size]
            pool = pool.sort().values
        train, val, test = (pool[s] for s in split_indices(pool.numel(), self.seed, self.split_sizes))
        if self.train_half is not None:
            generator_half, regressor_half = training_halves(train)
            train = generator_half if self.train_half == "generator" else regressor_half
        if self.with_bonds:
            used = torch.cat([train, val, test])
            dataset.ensure_bonds(used)
            failed = set(dataset.bonds_failed().tolist())
            if failed:
                train, val, test = (
                    torch.tensor([k for k in s.tolist() if k not in failed], dtype=torch.long)
                    for s in (train, val, test)
                )
        return dataset, train, val, test

    def property_reference(self) -> dict:
        """Per target: test-split quantiles and per-atom-count means of the training split (see
        :func:`geomol.metrics.conditional.property_reference`), stored with a trained regressor."""
        from geomol.metrics.conditional import property_reference

        self.setup()
        train, test = self.splits["train"], self.splits["test"]
        cols = self.target_columns
        reference = property_reference(
            self.dataset.y[train][:, cols], self.dataset.num_atoms()[train], self.dataset.y[test][:, cols], self.targets
        )
        return {"targets": list(self.targets), "train_half": self.train_half, **reference}

    def task_kwargs(self) -> TargetStats:
        """Target names, units and training-split statistics for :class:`geomol.tasks.PropertyTask`."""
        self.setup()
        train = self.splits["train"]
        y = self.dataset.y[train][:, self.target_columns]
        extensive = [t in EXTENSIVE for t in self.targets]
        mean, std = target_statistics(y, self.dataset.num_atoms()[train], extensive)
        return TargetStats(
            targets=list(self.targets),
            units=[UNITS[c] for c in self.target_columns],
            mean=mean,
            std=std,
            extensive=extensive,
            elements=[1, 6, 7, 8, 9],
            forces=False,
            target_columns=list(self.target_columns),
        )
