"""RDKit bridges: bonds and formal charges from 3D coordinates, graphs <-> RDKit molecules, SDF/XYZ I/O.

Bond orders use one integer code everywhere in geomol: 0 none, 1 single, 2 double, 3 triple,
4 aromatic. Molecule graphs store each bond in both directions (``edge_index`` ``[2, 2B]``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds
from torch import Tensor

from geomol.files import atomic_write

__all__ = [
    "ELEMENTS",
    "ATOMIC_NUMBERS",
    "BOND_TYPES",
    "BondResult",
    "bonds_from_xyz",
    "mol_from_graph",
    "graph_from_mol",
    "kekulize_bonds",
    "write_sdf",
    "read_sdf",
    "read_xyz",
    "atomic_numbers",
    "atomic_write",
]

RDLogger.DisableLog("rdApp.*")

ELEMENTS = ["H", "C", "N", "O", "F"]
_PT = Chem.GetPeriodicTable()
ATOMIC_NUMBERS = {symbol: _PT.GetAtomicNumber(symbol) for symbol in ELEMENTS}
BOND_TYPES = ["none", "single", "double", "triple", "aromatic"]
_RDKIT_BOND = {
    1: Chem.BondType.SINGLE,
    2: Chem.BondType.DOUBLE,
    3: Chem.BondType.TRIPLE,
    4: Chem.BondType.AROMATIC,
}
_BOND_CODE = {v: k for k, v in _RDKIT_BOND.items()}

# How the bonds of a molecule were found (``BondResult.method``).
METHOD_XYZ = 0  # rdDetermineBonds from coordinates, agrees with the SMILES
METHOD_XYZ_DIFFERS = 1  # rdDetermineBonds succeeded but gives another graph than the SMILES
METHOD_TEMPLATE = 2  # SMILES used as a template on the 3D connectivity
METHOD_FAILED = 3  # no chemically valid assignment found
METHOD_NAMES = ["xyz", "xyz (differs from SMILES)", "SMILES template", "failed"]


@contextlib.contextmanager
def _quiet_stderr():
    """Silence RDKit's C++ warnings written straight to fd 2 (e.g. 'distance is suspicious')."""
    try:
        fd = os.dup(2)
    except OSError:  # no real stderr (some notebook kernels)
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def atomic_numbers(symbols: Iterable[str]) -> list[int]:
    """Atomic numbers of element symbols; ValueError naming the first unknown symbol."""
    out = []
    for s in symbols:
        try:
            out.append(_PT.GetAtomicNumber(s.strip().capitalize()))
        except RuntimeError:
            raise ValueError(f"unknown element symbol {s!r}") from None
    return out


def _xyz_mol(z: Sequence[int], pos: np.ndarray) -> Chem.Mol:
    mol = Chem.RWMol()
    conf = Chem.Conformer(len(z))
    for k, (number, xyz) in enumerate(zip(z, pos)):
        mol.AddAtom(Chem.Atom(int(number)))
        conf.SetAtomPosition(k, [float(c) for c in xyz])
    mol.AddConformer(conf, assignId=True)
    return mol.GetMol()


@dataclass
class BondResult:
    """Bonds and formal charges of one molecule, in the order of its atoms."""

    charges: Tensor  # [N] long
    edge_index: Tensor  # [2, 2B] long, both directions
    edge_attr: Tensor  # [2B] long bond codes
    method: int


def _result_from_mol(mol: Chem.Mol, order: Sequence[int] | None, method: int) -> BondResult:
    """Read charges and bonds of ``mol``; ``order[k]`` is the xyz index of ``mol`` atom ``k``."""
    n = mol.GetNumAtoms()
    order = list(range(n)) if order is None else list(order)
    charges = torch.zeros(n, dtype=torch.long)
    for atom in mol.GetAtoms():
        charges[order[atom.GetIdx()]] = atom.GetFormalCharge()
    src, dst, codes = [], [], []
    for bond in mol.GetBonds():
        a, b = order[bond.GetBeginAtomIdx()], order[bond.GetEndAtomIdx()]
        code = _BOND_CODE.get(bond.GetBondType())
        if code is None:
            raise ValueError(f"unsupported bond type {bond.GetBondType()}")
        src += [a, b]
        dst += [b, a]
        codes += [code, code]
    return BondResult(
        charges,
        torch.tensor([src, dst], dtype=torch.long).reshape(2, -1),
        torch.tensor(codes, dtype=torch.long),
        method,
    )


def _canonical(mol: Chem.Mol) -> str:
    mol = Chem.Mol(mol)
    # Stereo perceived from 3D keeps some hydrogens explicit (``[H]/N=C``): drop it before comparing.
    Chem.RemoveStereochemistry(mol)
    return Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)


def _from_template(z: Sequence[int], pos: np.ndarray, smiles: str) -> Chem.Mol | None:
    """Put the SMILES molecule on the 3D atoms: match its graph inside the distance-based connectivity.

    The connectivity from distances can hold extra bonds (the bridgeheads of strained bicycles sit
    within covalent range), so the template is matched as a subgraph with generic bonds; among the
    matches, the one with the shortest total bond length wins.
    """
    template = Chem.MolFromSmiles(smiles)
    if template is None:
        return None
    template = Chem.AddHs(template)
    if template.GetNumAtoms() != len(z):
        return None
    mol = _xyz_mol(z, pos)
    with _quiet_stderr():
        rdDetermineBonds.DetermineConnectivity(mol)
    params = Chem.AdjustQueryParameters.NoAdjustments()
    params.makeBondsGeneric = True
    query = Chem.AdjustQueryProperties(template, params)
    matches = mol.GetSubstructMatches(query, uniquify=False, useChirality=False, maxMatches=2000)
    if not matches:
        return None
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in template.GetBonds()]

    def length(match):
        return sum(np.linalg.norm(pos[match[a]] - pos[match[b]]) for a, b in bonds)

    best = min(matches, key=length)
    placed = Chem.RWMol(template)
    conf = Chem.Conformer(len(z))
    for k, idx in enumerate(best):
        conf.SetAtomPosition(k, [float(c) for c in pos[idx]])
    placed.AddConformer(conf, assignId=True)
    placed = placed.GetMol()
    placed.SetProp("_order", ",".join(map(str, best)))
    return placed


def bonds_from_xyz(
    z: Sequence[int], pos: np.ndarray | Tensor, smiles: str | None = None, charge: int = 0
) -> BondResult:
    """Bond orders and formal charges of a molecule from its 3D structure.

    First RDKit's ``rdDetermineBonds.DetermineBonds`` (Kim & Kim's xyz2mol) on the coordinates;
    when that fails (or gives no sanitizable molecule) and a SMILES is known, the SMILES is used
    as a template on the 3D connectivity. ``method`` records which path gave the answer; a
    molecule where both fail gets no bonds and ``METHOD_FAILED``.
    """
    pos = np.asarray(pos.detach().cpu() if isinstance(pos, Tensor) else pos, dtype=np.float64)
    z = [int(v) for v in z]
    mol = _xyz_mol(z, pos)
    try:
        with _quiet_stderr():
            rdDetermineBonds.DetermineBonds(mol, charge=charge)
        Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError):
        mol = None
    if mol is not None:
        method = METHOD_XYZ
        if smiles is not None:
            reference = Chem.MolFromSmiles(smiles)
            if reference is not None and _canonical(mol) != Chem.MolToSmiles(reference, isomericSmiles=False):
                method = METHOD_XYZ_DIFFERS
        return _result_from_mol(mol, None, method)
    if smiles is not None:
        placed = _from_template(z, pos, smiles)
        if placed is not None:
            order = [int(i) for i in placed.GetProp("_order").split(",")]
            return _result_from_mol(placed, order, METHOD_TEMPLATE)
    empty = torch.empty(2, 0, dtype=torch.long)
    return BondResult(torch.zeros(len(z), dtype=torch.long), empty, torch.empty(0, dtype=torch.long), METHOD_FAILED)


def mol_from_graph(
    z: Tensor | Sequence[int],
    pos: Tensor | np.ndarray,
    charges: Tensor | Sequence[int] | None = None,
    edge_index: Tensor | None = None,
    bond_type: Tensor | None = None,
    sanitize: bool = True,
) -> Chem.Mol:
    """An RDKit molecule with a 3D conformer from a geomol molecule graph.

    Each bond may appear once or in both directions; code 0 ("none") is skipped. Sanitization is
    attempted when ``sanitize`` and its failure is not raised (generated molecules may be invalid:
    the metrics decide); check with :func:`rdkit.Chem.SanitizeMol` when it matters.
    """
    z = [int(v) for v in (z.tolist() if isinstance(z, Tensor) else z)]
    pos = np.asarray(pos.detach().cpu() if isinstance(pos, Tensor) else pos, dtype=np.float64)
    mol = Chem.RWMol()
    for k, number in enumerate(z):
        atom = Chem.Atom(number)
        if charges is not None:
            atom.SetFormalCharge(int(charges[k]))
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    if edge_index is not None and bond_type is not None:
        for (a, b), code in zip(edge_index.t().tolist(), bond_type.tolist()):
            if code == 0 or a == b or mol.GetBondBetweenAtoms(a, b) is not None:
                continue
            if code not in _RDKIT_BOND:
                raise ValueError(f"unknown bond code {code}; expected 0..4 ({', '.join(BOND_TYPES)})")
            mol.AddBond(a, b, _RDKIT_BOND[code])
            if code == 4:
                mol.GetAtomWithIdx(a).SetIsAromatic(True)
                mol.GetAtomWithIdx(b).SetIsAromatic(True)
    conf = Chem.Conformer(len(z))
    for k, xyz in enumerate(pos):
        conf.SetAtomPosition(k, [float(c) for c in xyz])
    mol.AddConformer(conf, assignId=True)
    mol = mol.GetMol()
    if sanitize:
        with contextlib.suppress(Exception):
            Chem.SanitizeMol(mol)
    return mol


def kekulize_bonds(z: Tensor, charges: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
    """The bond codes with every aromatic bond (code 4) replaced by single or double bonds of a Kekulé structure
    (RDKit's ``Kekulize``, deterministic), as FlowMol trains by default (its ``explicit_aromaticity=False``).

    A molecule without aromatic bonds is returned as it is. Raises ValueError when the aromatic system has no
    Kekulé structure (not the case for sanitizable molecules such as QM9's).

    Shapes:
        z ``[N]``, charges ``[N]``, edge_index ``[2, E]`` (each bond once or in both directions), edge_attr ``[E]``
        -> ``[E]``
    """
    aromatic = edge_attr == 4
    if not bool(aromatic.any()):
        return edge_attr
    mol = mol_from_graph(z, torch.zeros(len(z), 3), charges, edge_index, edge_attr, sanitize=False)
    try:
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except (Chem.KekulizeException, ValueError, RuntimeError) as err:
        raise ValueError(f"aromatic bonds without a Kekulé structure: {err}") from None
    codes = edge_attr.clone()
    for k in aromatic.nonzero().flatten().tolist():
        a, b = (int(v) for v in edge_index[:, k])
        codes[k] = _BOND_CODE[mol.GetBondBetweenAtoms(a, b).GetBondType()]
    return codes


def graph_from_mol(mol: Chem.Mol) -> dict[str, Tensor]:
    """``z``, ``pos``, ``charge``, ``edge_index`` (both directions) and ``edge_attr`` of a 3D molecule."""
    if mol is None or mol.GetNumAtoms() == 0:
        raise ValueError("empty molecule: no atoms")
    if mol.GetNumConformers() == 0:
        raise ValueError("molecule has no 3D conformer")
    z = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=torch.long)
    pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32)
    if not torch.isfinite(pos).all():
        raise ValueError("molecule has NaN or infinite coordinates")
    result = _result_from_mol(mol, None, METHOD_XYZ)
    return {
        "z": z,
        "pos": pos,
        "charge": result.charges,
        "edge_index": result.edge_index,
        "edge_attr": result.edge_attr,
    }


def write_sdf(
    mols: Sequence[Chem.Mol], path: str | os.PathLike, props: Sequence[Mapping[str, object]] | None = None
) -> None:
    """Write molecules (with 3D conformers) to an SDF file atomically; ``props[i]`` become SD tags."""
    if props is not None and len(props) != len(mols):
        raise ValueError(f"got {len(props)} property dicts for {len(mols)} molecules")
    with atomic_write(path) as handle:
        writer = Chem.SDWriter(handle)
        writer.SetKekulize(False)
        for k, mol in enumerate(mols):
            mol = Chem.Mol(mol)
            for key, value in (props[k] if props is not None else {}).items():
                mol.SetProp(str(key), str(value))
            writer.write(mol)
        writer.close()


def read_sdf(path: str | os.PathLike, sanitize: bool = False, remove_hs: bool = False) -> list[Chem.Mol]:
    """Read every molecule of an SDF file; ValueError naming the first record RDKit cannot parse."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SDF file not found: {path}")
    supplier = Chem.SDMolSupplier(str(path), sanitize=sanitize, removeHs=remove_hs)
    mols = []
    for k, mol in enumerate(supplier):
        if mol is None:
            raise ValueError(f"malformed SDF: record {k + 1} of {path} could not be parsed")
        mols.append(mol)
    if not mols:
        raise ValueError(f"malformed SDF: no molecules in {path}")
    return mols


def read_xyz(path: str | os.PathLike) -> list[tuple[list[int], np.ndarray]]:
    """Read a (multi-frame) XYZ file into ``(atomic numbers, positions [N, 3])`` per frame.

    Raises ValueError with the line number for a malformed file, an unknown element, or NaN/inf
    coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"XYZ file not found: {path}")
    lines = path.read_text().splitlines()
    frames, k = [], 0
    while k < len(lines):
        if not lines[k].strip():
            k += 1
            continue
        try:
            n = int(lines[k].split()[0])
        except ValueError:
            raise ValueError(f"malformed XYZ: line {k + 1} of {path} should hold the atom count") from None
        if n <= 0:
            raise ValueError(f"malformed XYZ: empty molecule (atom count {n}) at line {k + 1} of {path}")
        if k + 2 + n > len(lines):
            raise ValueError(f"malformed XYZ: {path} ends before the {n} atoms announced at line {k + 1}")
        symbols, pos = [], []
        for row in range(k + 2, k + 2 + n):
            parts = lines[row].split()
            if len(parts) < 4:
                raise ValueError(f"malformed XYZ: line {row + 1} of {path} should be 'element x y z'")
            symbols.append(parts[0])
            try:
                pos.append([float(v) for v in parts[1:4]])
            except ValueError:
                raise ValueError(f"malformed XYZ: non-numeric coordinate at line {row + 1} of {path}") from None
        pos = np.asarray(pos)
        if not np.isfinite(pos).all():
            raise ValueError(f"NaN or infinite coordinates in the frame starting at line {k + 1} of {path}")
        frames.append((atomic_numbers(symbols), pos))
        k += 2 + n
    if not frames:
        raise ValueError(f"malformed XYZ: no molecules in {path}")
    return frames
