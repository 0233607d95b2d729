"""QM9: 130,831 small organic molecules (C, H, N, O, F; ≤ 9 heavy atoms) with DFT properties.

Ramakrishnan, Dral, Rupp & von Lilienfeld, Sci. Data 1, 140022 (2014).

Sources, in order: ``source=`` (a folder of qm9pack-style CSV files), the PyPI package
``qm9pack==1.0.3`` (offline; by QM9's first author), or the official XYZ archive on figshare
(online). Targets follow PyG's ``QM9`` order and units (energies in eV).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import logging
import multiprocessing
import os
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from tqdm.auto import tqdm

from .chem import METHOD_FAILED, METHOD_NAMES, atomic_numbers, bonds_from_xyz, kekulize_bonds

log = logging.getLogger("geomol")

__all__ = ["QM9", "TARGETS", "UNITS", "HARTREE_TO_EV", "ATOMREF_HARTREE", "split_indices", "qm9pack_folder"]

HARTREE_TO_EV = 27.211386246
TARGETS = [
    "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "cv",
    "U0_atom", "U_atom", "H_atom", "G_atom", "A", "B", "C",
]  # fmt: skip
UNITS = [
    "D", "a0^3", "eV", "eV", "eV", "a0^2", "eV", "eV", "eV", "eV", "eV", "cal/mol/K",
    "eV", "eV", "eV", "eV", "GHz", "GHz", "GHz",
]  # fmt: skip
# Energies that grow with the number of atoms (standardized per atom).
EXTENSIVE = {"zpve", "U0", "U", "H", "G", "U0_atom", "U_atom", "H_atom", "G_atom"}

# QM9's atomref table (B3LYP/6-31G(2df,p), Hartree): U(0 K), U, H, G at 298.15 K of the free atoms.
ATOMREF_HARTREE = {
    1: (-0.500273, -0.498857, -0.497912, -0.510927),
    6: (-37.846772, -37.845355, -37.844411, -37.861317),
    7: (-54.583861, -54.582445, -54.581501, -54.598897),
    8: (-75.064579, -75.063163, -75.062219, -75.079532),
    9: (-99.718730, -99.717314, -99.716370, -99.733544),
}

# CSV columns (qm9pack) of the 12 standard targets and the rotational constants, with unit factors.
_CSV_COLUMNS = [
    ("Dipole_debye", 1.0),
    ("Polarizability_bohr3", 1.0),
    ("HOMO_au", HARTREE_TO_EV),
    ("LUMO_au", HARTREE_TO_EV),
    ("HOMO_LUMO_gap_au", HARTREE_TO_EV),
    ("R2_bohr2", 1.0),
    ("ZPVE_au", HARTREE_TO_EV),
    ("InternalEnergy_0K_au", HARTREE_TO_EV),
    ("InternalEnergy_298K_au", HARTREE_TO_EV),
    ("Enthalphy_298K_au", HARTREE_TO_EV),
    ("GibbsFreeEnergy_298K_au", HARTREE_TO_EV),
    ("Heatcapacity_Cv_cal_mol_K", 1.0),
]
_ROTATIONAL = ["RotA_GHz", "RotB_GHz", "RotC_GHz"]
NUM_CHARACTERIZED = 130_831
STANDARD_SPLIT = (100_000, 17_748, 13_083)
XYZ_URL = "https://ndownloader.figshare.com/files/3195389"
UNCHARACTERIZED_URL = "https://ndownloader.figshare.com/files/3195404"
_CACHE_VERSION = 1


def qm9pack_folder() -> Path | None:
    """The CSV folder of the installed ``qm9pack`` package (found without importing it)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "data"
    return folder if folder.is_dir() else None


def _parse_list(text: str) -> list[str]:
    return [t for t in text.replace("[", " ").replace("]", " ").replace("'", " ").replace(",", " ").split() if t]


def _atomref_energy(z: Sequence[int]) -> np.ndarray:
    """Sum of free-atom energies (eV) for U0, U, H, G."""
    try:
        return HARTREE_TO_EV * np.sum([ATOMREF_HARTREE[int(n)] for n in z], axis=0)
    except KeyError as err:
        raise ValueError(f"unknown element Z={err.args[0]} in QM9 data (expected H, C, N, O, F)") from None


class _Records:
    """Growing lists of per-molecule fields, turned into the flat cache layout at the end."""

    def __init__(self) -> None:
        self.z, self.pos, self.y, self.idx, self.smiles = [], [], [], [], []

    def add(self, index: int, z: list[int], pos: np.ndarray, standard: list[float], rot: list[float], smiles: str):
        if pos.shape != (len(z), 3):
            raise ValueError(f"QM9 molecule {index}: {len(z)} atoms but coordinates of shape {pos.shape}")
        energies = np.asarray(standard[7:11])
        atomization = energies - _atomref_energy(z)
        self.z.append(np.asarray(z, dtype=np.int64))
        self.pos.append(pos.astype(np.float32))
        self.y.append(np.concatenate([standard, atomization, rot]))
        self.idx.append(index)
        self.smiles.append(smiles)

    def to_cache(self) -> dict:
        order = np.argsort(self.idx, kind="stable")
        natoms = np.array([len(self.z[k]) for k in order])
        ptr = np.zeros(len(order) + 1, dtype=np.int64)
        ptr[1:] = np.cumsum(natoms)
        return {
            "version": _CACHE_VERSION,
            "z": torch.from_numpy(np.concatenate([self.z[k] for k in order])),
            "pos": torch.from_numpy(np.concatenate([self.pos[k] for k in order])),
            "ptr": torch.from_numpy(ptr),
            "y": torch.tensor(np.stack([self.y[k] for k in order]), dtype=torch.float64),
            "idx": torch.tensor([self.idx[k] for k in order], dtype=torch.long),
            "smiles": [self.smiles[k] for k in order],
        }


def _read_csv_folder(folder: Path) -> dict:
    files = sorted(p for p in folder.glob("*.csv") if "polarizability" not in p.name)
    if not files:
        raise FileNotFoundError(f"no QM9 CSV files in {folder}")
    records = _Records()
    for path in files:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            for row in tqdm(reader, desc=f"QM9 {path.name}", unit=" mol", leave=False):
                try:
                    z = atomic_numbers(_parse_list(row["Elements"]))
                    pos = np.array([float(v) for v in _parse_list(row["XYZ_Ang"])]).reshape(-1, 3)
                    standard = [float(row[c]) * f for c, f in _CSV_COLUMNS]
                    rot = [float(row[c]) for c in _ROTATIONAL]
                except (KeyError, ValueError) as err:
                    raise ValueError(f"malformed QM9 CSV {path}, line {reader.line_num}: {err}") from None
                records.add(int(row["Index"]), z, pos, standard, rot, row["SMILES"])
    return records.to_cache()


def _mathematica_float(text: str) -> float:
    # The QM9 XYZ files write exponents as ``1.2*^-6``.
    return float(text.replace("*^", "e"))


def parse_qm9_xyz(text: str) -> tuple[int, list[int], np.ndarray, list[float], list[float], str]:
    """One file of the official QM9 archive -> (index, z, pos, 12 standard targets, A/B/C, SMILES)."""
    lines = text.splitlines()
    n = int(lines[0])
    props = lines[1].split()
    index = int(props[1])
    rot = [_mathematica_float(v) for v in props[2:5]]
    values = [_mathematica_float(v) for v in props[5:17]]
    standard = [v * f for v, (_, f) in zip(values, _CSV_COLUMNS)]
    symbols, pos = [], []
    for line in lines[2 : 2 + n]:
        parts = line.split()
        symbols.append(parts[0])
        pos.append([_mathematica_float(v) for v in parts[1:4]])
    smiles = lines[3 + n].split()[-1]  # the B3LYP-relaxed SMILES (second column)
    return index, atomic_numbers(symbols), np.asarray(pos), standard, rot, smiles


def _read_official_archive(archive: Path, excluded: set[int]) -> dict:
    records = _Records()
    with tarfile.open(archive) as tar:
        for member in tqdm(tar, desc="QM9 xyz", unit=" mol", leave=False):
            if not member.isfile() or not member.name.endswith(".xyz"):
                continue
            text = tar.extractfile(member).read().decode()
            index, z, pos, standard, rot, smiles = parse_qm9_xyz(text)
            if index not in excluded:
                records.add(index, z, pos, standard, rot, smiles)
    return records.to_cache()


def _download(url: str, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as handle:
        total = int(response.headers.get("Content-Length", 0)) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {path.name}") as bar:
            while chunk := response.read(1 << 20):
                handle.write(chunk)
                bar.update(len(chunk))
    os.replace(tmp, path)


CACHE_FIELDS = ("z", "pos", "ptr", "y", "idx")


def _valid_cache(cache) -> bool:
    """A cache of this version with every field, consistent shapes (a loadable but foreign or truncated
    file is rebuilt instead of failing later with ``KeyError: 'z'``)."""
    if not isinstance(cache, dict) or cache.get("version") != _CACHE_VERSION:
        return False
    if any(not isinstance(cache.get(k), torch.Tensor) for k in CACHE_FIELDS) or "smiles" not in cache:
        return False
    z, pos, ptr, y = cache["z"], cache["pos"], cache["ptr"], cache["y"]
    n = ptr.numel() - 1
    return (
        ptr.dim() == 1 and n >= 0 and int(ptr[-1]) == z.numel() and pos.shape == (z.numel(), 3)
        and y.size(0) == n and cache["idx"].numel() == n and len(cache["smiles"]) == n
    )  # fmt: skip


def _check_writable(folder: Path) -> None:
    """One line if the cache folder cannot be written (read-only GEOMOL_DATA, a file in the way)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"cannot write the QM9 cache in {folder}: {err.strerror}; set GEOMOL_DATA or data.root to a writable folder"
        ) from None


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _bond_worker(args):
    z, pos, smiles = args
    res = bonds_from_xyz(z, pos, smiles)
    # numpy, not tensors: torch shares tensors between processes through file descriptors,
    # which runs out on 100k results.
    return res.charges.numpy(), res.edge_index.numpy(), res.edge_attr.numpy(), res.method


class QM9(torch.utils.data.Dataset):
    """QM9 as PyG ``Data`` objects.

    Each item has ``z`` [N], ``pos`` [N, 3] (Å), ``y`` [1, 19] (columns :data:`TARGETS` in
    :data:`UNITS`), ``idx`` (QM9's 1-based index) and, with ``with_bonds=True``, ``charge`` [N]
    (formal charges), ``edge_index`` [2, 2B] and ``edge_attr`` [2B] (bond codes, see
    :mod:`geomol.data.chem`).

    Args:
        root: cache folder (``processed/`` is written atomically here).
        source: folder of qm9pack-style CSV files; default: the installed ``qm9pack`` package,
            else the official archive (downloaded into ``root/raw`` when online).
        with_bonds: derive bonds and formal charges with RDKit (cached; computed on first use for
            the molecules asked for).
        download: allow downloading when no local source exists.
    """

    def __init__(
        self,
        root: str | os.PathLike = "data/qm9",
        source: str | os.PathLike | None = None,
        with_bonds: bool = False,
        download: bool = True,
    ) -> None:
        self.root = Path(root)
        self.source = Path(source) if source is not None else None
        self.with_bonds = with_bonds
        self.download = download
        cache = self._load_or_process()
        self._z, self._pos, self._ptr = cache["z"], cache["pos"], cache["ptr"]
        self.y, self.idx, self.smiles = cache["y"], cache["idx"], cache["smiles"]
        self._bonds: dict | None = None
        # Aromatic bonds as a Kekulé structure (single/double) in every molecule served; the cache keeps them aromatic.
        self.kekulize = False

    # ----------------------------------------------------------------- raw data and its cache
    @property
    def processed_path(self) -> Path:
        tag = "default"
        if self.source is not None:
            tag = "src-" + hashlib.sha1(str(self.source.resolve()).encode()).hexdigest()[:10]
        return self.root / "processed" / f"qm9_{tag}_v{_CACHE_VERSION}.pt"

    def _load_or_process(self) -> dict:
        path = self.processed_path
        if path.exists():
            try:
                cache = torch.load(path, weights_only=True)
                if _valid_cache(cache):
                    return cache
                log.warning("QM9 cache %s is not a geomol v%d cache: rebuilding it", path, _CACHE_VERSION)
            except Exception:  # a cache from another version or a damaged file: rebuild it
                log.warning("QM9 cache %s cannot be read: rebuilding it", path)
        _check_writable(path.parent)  # before minutes of processing, not after
        cache = self._process()
        _save_atomic(cache, path)
        return cache

    def _process(self) -> dict:
        if self.source is not None:
            if not self.source.is_dir():
                raise FileNotFoundError(f"QM9 source folder not found: {self.source}")
            return _read_csv_folder(self.source)
        folder = qm9pack_folder()
        if folder is not None:
            return _read_csv_folder(folder)
        archive = self.root / "raw" / "dsgdb9nsd.xyz.tar.bz2"
        excluded_path = self.root / "raw" / "uncharacterized.txt"
        if not archive.exists():
            if not self.download:
                raise FileNotFoundError(
                    f"QM9 not found: install qm9pack (pip install qm9pack==1.0.3) "
                    f"or put {archive.name} in {archive.parent}"
                )
            archive.parent.mkdir(parents=True, exist_ok=True)
            try:
                _download(XYZ_URL, archive)
                _download(UNCHARACTERIZED_URL, excluded_path)
            except OSError as err:
                raise FileNotFoundError(
                    f"QM9 not found offline and the download failed ({err}); install qm9pack==1.0.3 "
                    f"or put {archive.name} in {archive.parent}"
                ) from None
        excluded = _read_uncharacterized(excluded_path) if excluded_path.exists() else set()
        return _read_official_archive(archive, excluded)

    # ----------------------------------------------------------------- bonds (lazy, cached)
    @property
    def bonds_path(self) -> Path:
        return self.processed_path.with_name(self.processed_path.stem + "_bonds.pt")

    def _load_bonds(self) -> dict:
        if self._bonds is None:
            n = len(self)
            fresh = {
                "method": torch.full((n,), -1, dtype=torch.long),
                "charge": torch.zeros(self._z.numel(), dtype=torch.long),
                "edges": [None] * n,
            }
            path = self.bonds_path
            if path.exists():
                try:
                    stored = torch.load(path, weights_only=True)
                    if stored["method"].numel() == n:
                        edges = torch.split(stored["edges"], stored["num_edges"].tolist(), dim=1)
                        done = stored["method"] >= 0
                        fresh = {
                            "method": stored["method"],
                            "charge": stored["charge"],
                            "edges": [e if d else None for e, d in zip(edges, done.tolist())],
                        }
                except Exception:  # damaged or from another version: derive again
                    pass
            self._bonds = fresh
        return self._bonds

    def ensure_bonds(
        self, indices: Sequence[int] | Tensor | None = None, processes: int | None = None, save: bool = True
    ) -> None:
        """Derive bonds and charges for these molecules (default: all) if not cached yet, and cache them."""
        bonds = self._load_bonds()
        wanted = torch.arange(len(self)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        todo = wanted[bonds["method"][wanted] < 0].tolist()
        if not todo:
            return
        jobs = (
            (
                self._z[self._ptr[k] : self._ptr[k + 1]].tolist(),
                self._pos[self._ptr[k] : self._ptr[k + 1]].numpy(),
                self.smiles[k],
            )
            for k in todo
        )
        processes = processes or min(os.cpu_count() or 1, 8)
        bar = dict(total=len(todo), desc="QM9 bonds (RDKit)", unit=" mol")
        if processes > 1 and len(todo) > 2000:
            with multiprocessing.get_context("spawn").Pool(processes) as pool:
                results = list(tqdm(pool.imap(_bond_worker, jobs, chunksize=256), **bar))
        else:
            results = [_bond_worker(job) for job in tqdm(jobs, **bar)]
        for k, (charges, edge_index, edge_attr, method) in zip(todo, results):
            bonds["method"][k] = method
            bonds["charge"][self._ptr[k] : self._ptr[k + 1]] = torch.from_numpy(charges)
            bonds["edges"][k] = torch.from_numpy(np.concatenate([edge_index, edge_attr[None]])).to(torch.int16)
        if save:
            # One flat tensor, not 130k small ones: loading stays fast.
            empty = torch.empty(3, 0, dtype=torch.int16)
            edges = [e if e is not None else empty for e in bonds["edges"]]
            flat = {
                "method": bonds["method"],
                "charge": bonds["charge"],
                "edges": torch.cat(edges, dim=1),
                "num_edges": torch.tensor([e.size(1) for e in edges]),
            }
            _save_atomic(flat, self.bonds_path)

    def bond_report(self) -> dict[str, int]:
        """How many molecules got their bonds by each method (of those derived so far)."""
        method = self._load_bonds()["method"]
        return {name: int((method == k).sum()) for k, name in enumerate(METHOD_NAMES)}

    def bonds_failed(self) -> Tensor:
        """Dataset positions whose bond derivation failed (excluded from generation)."""
        return torch.nonzero(self._load_bonds()["method"] == METHOD_FAILED).flatten()

    # ----------------------------------------------------------------- dataset protocol
    def __len__(self) -> int:
        return self.y.size(0)

    def num_atoms(self) -> Tensor:
        return self._ptr[1:] - self._ptr[:-1]

    def __getitem__(self, k: int) -> Data:
        start, stop = int(self._ptr[k]), int(self._ptr[k + 1])
        data = Data(
            z=self._z[start:stop],
            pos=self._pos[start:stop],
            y=self.y[k : k + 1].float(),
            idx=self.idx[k : k + 1],
        )
        if self.with_bonds:
            bonds = self._load_bonds()
            if bonds["method"][k] < 0:  # not derived yet: compute now, cache on the next ensure_bonds()
                self.ensure_bonds([k], save=False)
            edges = bonds["edges"][k].long()
            data.charge = bonds["charge"][start:stop]
            data.edge_index, data.edge_attr = edges[:2], edges[2]
            if self.kekulize:
                data.edge_attr = kekulize_bonds(data.z, data.charge, data.edge_index, data.edge_attr)
        return data

    @staticmethod
    def target_index(name: str) -> int:
        if name not in TARGETS:
            raise ValueError(f"unknown QM9 target {name!r}; choose from {', '.join(TARGETS)}")
        return TARGETS.index(name)

    def __repr__(self) -> str:
        return f"QM9({len(self)} molecules, root={str(self.root)!r})"


def _read_uncharacterized(path: Path) -> set[int]:
    out = set()
    for line in io.StringIO(path.read_text()):
        parts = line.split()
        if parts and parts[0].isdigit():
            out.add(int(parts[0]))
    return out


def split_indices(n: int, seed: int = 42, sizes: Sequence[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded random train/val/test split of ``n`` molecules.

    The full set uses the common 100,000 / 17,748 / 13,083 split; other sizes keep its proportions
    unless ``sizes`` is given.
    """
    if sizes is None:
        if n == NUM_CHARACTERIZED:
            sizes = STANDARD_SPLIT
        else:
            n_train = round(n * STANDARD_SPLIT[0] / NUM_CHARACTERIZED)
            n_val = round(n * STANDARD_SPLIT[1] / NUM_CHARACTERIZED)
            sizes = (n_train, n_val, n - n_train - n_val)
    if sum(sizes) > n or min(sizes) < 0:
        raise ValueError(f"split sizes {tuple(sizes)} do not fit {n} molecules")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a, b, c = sizes
    return perm[:a], perm[a : a + b], perm[a + b : a + b + c]


def training_halves(train: Tensor) -> tuple[Tensor, Tensor]:
    """The generator half and the property-regressor half of a training split (PropMolFlow)."""
    half = train.numel() // 2
    return train[:half], train[half:]
