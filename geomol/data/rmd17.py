"""Revised MD17 (rMD17): energies and forces of ten small molecules, recomputed at PBE/def2-SVP.

Christensen & von Lilienfeld, *On the role of gradients for machine learning of molecular energies
and forces*, Mach. Learn.: Sci. Technol. 1, 045018 (2020); figshare article 12672038 (CC0).

Files read: ``<root>/rmd17_<molecule>_{train,test}_01.npz``, the official split 01 (1,000 training
and 1,000 test frames) in the layout of ``andersx/rmd17-npz``: keys ``nuclear_charges``, ``coords``
(Å), ``energies`` (kcal/mol), ``forces`` (kcal/mol/Å). When they are missing and ``download`` is
on, the official tarball is fetched into ``<root>/raw`` and the two files are cut from
``npz_data/rmd17_<molecule>.npz`` with ``splits/index_{train,test}_01.csv``.

Units are converted to eV and eV/Å. Frames are ``Data(z, pos, energy, forces, y)`` with ``energy``
and ``y`` in float64: a total energy of −17,617 eV (aspirin) has a float32 resolution of 2 meV,
the size of the errors being measured.
"""

from __future__ import annotations

import io
import os
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from .datamodule import GraphDataModule, TargetStats, target_statistics

__all__ = ["RMD17", "RMD17DataModule", "MOLECULES", "KCAL_MOL_TO_EV", "TARBALL_URL", "split_file"]

KCAL_MOL_TO_EV = 0.0433641153
MOLECULES = (
    "aspirin",
    "azobenzene",
    "benzene",
    "ethanol",
    "malonaldehyde",
    "naphthalene",
    "paracetamol",
    "salicylic",
    "toluene",
    "uracil",
)
# figshare article 12672038 (v3), file rmd17.tar.bz2.
TARBALL_URL = "https://figshare.com/ndownloader/files/23950376"
TARBALL_NAME = "rmd17.tar.bz2"
_KEYS = ("nuclear_charges", "coords", "energies", "forces")


def split_file(root: str | os.PathLike, molecule: str, part: str) -> Path:
    """Path of ``rmd17_<molecule>_<part>_01.npz`` (``part`` is ``"train"`` or ``"test"``)."""
    return Path(root) / f"rmd17_{molecule}_{part}_01.npz"


def _download(url: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as handle:
        while chunk := response.read(1 << 20):
            handle.write(chunk)
    os.replace(tmp, path)


def _read_indices(text: str, name: str) -> np.ndarray:
    """Frame indices from a split file: the first number of each line (headers and blank lines skipped)."""
    out = []
    for line in text.splitlines():
        field = line.replace(",", " ").split()[:1]
        try:
            out.append(int(float(field[0])))
        except (IndexError, ValueError):
            continue
    if not out:
        raise ValueError(f"no frame indices found in {name}")
    return np.array(out)


def _cut_splits(tarball: Path, root: Path, molecule: str) -> None:
    """Write the split-01 train/test npz files of ``molecule`` from the official tarball."""
    with tarfile.open(tarball, "r:bz2") as tar:
        members = {Path(m.name).as_posix().split("rmd17/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}

        def read(name: str) -> bytes:
            if name not in members:
                raise FileNotFoundError(f"{tarball} has no member rmd17/{name}; is it the official rMD17 tarball?")
            return tar.extractfile(members[name]).read()

        full = np.load(io.BytesIO(read(f"npz_data/rmd17_{molecule}.npz")))
        arrays = {key: full[key] for key in full.files}
        for part in ("train", "test"):
            name = f"splits/index_{part}_01.csv"
            index = _read_indices(read(name).decode(), name)
            frames = {k: (v if k == "nuclear_charges" else v[index]) for k, v in arrays.items()}
            target = split_file(root, molecule, part)
            tmp = target.with_name(target.stem + ".part.npz")
            np.savez(tmp, **frames)
            os.replace(tmp, target)


class RMD17(torch.utils.data.Dataset):
    """The split-01 frames of one rMD17 molecule: the 1,000 training frames, then the 1,000 test frames.

    Args:
        root: folder holding ``rmd17_<molecule>_{train,test}_01.npz`` (or receiving them).
        molecule: one of :data:`MOLECULES`.
        download: fetch the official tarball when the files are missing.
        url: where the tarball comes from (the figshare file by default).

    Items: ``Data(z [N], pos [N, 3] Å, energy [1] eV, forces [N, 3] eV/Å, y [1, 1] eV)``.
    """

    def __init__(
        self, root: str | os.PathLike, molecule: str = "aspirin", download: bool = True, url: str = TARBALL_URL
    ) -> None:
        if molecule not in MOLECULES:
            raise ValueError(f"unknown rMD17 molecule {molecule!r}; choose from {', '.join(MOLECULES)}")
        self.root, self.molecule = Path(root), molecule
        paths = [split_file(root, molecule, part) for part in ("train", "test")]
        if not all(p.exists() for p in paths):
            self._fetch(download, url)
        train, test = (self._load(p) for p in paths)
        if not np.array_equal(train["nuclear_charges"], test["nuclear_charges"]):
            raise ValueError(f"{paths[0].name} and {paths[1].name} hold different molecules")
        self.num_train_frames = len(train["energies"])
        self.z = torch.from_numpy(train["nuclear_charges"].astype(np.int64))
        self.pos = torch.from_numpy(np.concatenate([train["coords"], test["coords"]])).float()
        energy = np.concatenate([train["energies"], test["energies"]]) * KCAL_MOL_TO_EV
        self.energy = torch.from_numpy(energy).double()
        forces = np.concatenate([train["forces"], test["forces"]]) * KCAL_MOL_TO_EV
        self.forces = torch.from_numpy(forces).float()

    def _fetch(self, download: bool, url: str) -> None:
        tarball = self.root / "raw" / TARBALL_NAME
        hint = (
            f"rMD17 {self.molecule} not found: {split_file(self.root, self.molecule, 'train')} (and _test_01) are missing; "
            f"put the split-01 npz files (or {TARBALL_NAME} from figshare article 12672038 in {tarball.parent}) "
            "there, or point data.root at a folder that has them"
        )
        if not tarball.exists():
            if not download:
                raise FileNotFoundError(hint)
            try:
                _download(url, tarball)
            except OSError as err:
                raise FileNotFoundError(f"{hint} (the download from {url} failed: {err})") from None
        _cut_splits(tarball, self.root, self.molecule)

    @staticmethod
    def _load(path: Path) -> dict[str, np.ndarray]:
        with np.load(path) as data:
            missing = [k for k in _KEYS if k not in data.files]
            if missing:
                raise ValueError(f"{path} lacks the keys {missing}; expected rMD17 npz keys {list(_KEYS)}")
            out = {k: data[k] for k in _KEYS}
        n_frames, n_atoms = len(out["energies"]), len(out["nuclear_charges"])
        for key in ("coords", "forces"):
            if out[key].shape != (n_frames, n_atoms, 3):
                raise ValueError(f"{path}: {key} has shape {out[key].shape}, expected ({n_frames}, {n_atoms}, 3)")
        return out

    def __len__(self) -> int:
        return self.energy.numel()

    @property
    def train_frames(self) -> Tensor:
        """Dataset positions of the frames from the training file."""
        return torch.arange(self.num_train_frames)

    @property
    def test_frames(self) -> Tensor:
        """Dataset positions of the frames from the test file."""
        return torch.arange(self.num_train_frames, len(self))

    def __getitem__(self, k: int) -> Data:
        energy = self.energy[k : k + 1]
        return Data(z=self.z, pos=self.pos[k], energy=energy, forces=self.forces[k], y=energy.view(1, 1))

    def __repr__(self) -> str:
        return (
            f"RMD17({self.molecule}, {self.num_train_frames} train + {len(self) - self.num_train_frames} test frames)"
        )


class RMD17DataModule(GraphDataModule):
    """rMD17 energies and forces: ``num_train``/``num_val`` frames from split 01's training file, test on its test file.

    The usual protocol (NequIP, MACE, PONITA) trains on 950 and validates on 50 of the 1,000
    training frames (a seeded random choice) and tests on the 1,000 test frames.

    Args:
        root: folder of the npz files (``data.root=…``); see :class:`RMD17`.
        molecule: one of :data:`MOLECULES`.
        num_train, num_val: frames drawn from the training file.
        num_test: use only the first this many test frames (``None``: all).
        batch_size, eval_batch_size, num_workers: loader settings.
        seed: seed of the train/val choice.
        download: fetch the official tarball when the files are missing.
    """

    def __init__(
        self,
        root: str | os.PathLike = "data/rmd17",
        molecule: str = "aspirin",
        num_train: int = 950,
        num_val: int = 50,
        num_test: int | None = None,
        batch_size: int = 5,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        download: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, eval_batch_size=eval_batch_size, seed=seed)
        if molecule not in MOLECULES:
            raise ValueError(f"unknown rMD17 molecule {molecule!r}; choose from {', '.join(MOLECULES)}")
        if num_train < 1 or num_val < 1:
            raise ValueError(f"num_train and num_val must be positive, got {num_train} and {num_val}")
        self.root, self.molecule = root, molecule
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.seed, self.download = seed, download

    def _build(self):
        dataset = RMD17(self.root, self.molecule, download=self.download)
        pool = dataset.train_frames
        if self.num_train + self.num_val > pool.numel():
            raise ValueError(
                f"num_train + num_val = {self.num_train + self.num_val} but {dataset.molecule} has "
                f"{pool.numel()} training frames in {self.root}"
            )
        perm = pool[torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(self.seed))]
        train, val = perm[: self.num_train], perm[self.num_train : self.num_train + self.num_val]
        test = dataset.test_frames[: self.num_test]
        return dataset, train, val, test

    def task_kwargs(self) -> TargetStats:
        """Energy target for :class:`geomol.tasks.property.PropertyTask`, trained with forces.

        ``mean`` is the per-atom mean energy of the training frames (one molecule per data set, so
        this is the per-frame mean divided by the atom count) and ``std`` the standard deviation of
        the per-frame energy, both in eV; ``force_rms`` the RMS of the training force components
        (eV/Å), PONITA's unit (``energy_scale=force_rms``).
        """
        self.setup()
        train = self.splits["train"]
        energy = self.dataset.energy[train].unsqueeze(-1)
        num_atoms = torch.full((train.numel(),), self.dataset.z.numel())
        mean, std = target_statistics(energy, num_atoms, [True])
        force_rms = float(self.dataset.forces[train].double().pow(2).mean().sqrt())
        return TargetStats(
            targets=["energy"],
            units=["eV"],
            mean=mean,
            std=std,
            extensive=[True],
            elements=sorted(set(self.dataset.z.tolist())),
            forces=True,
            force_rms=force_rms,
        )
