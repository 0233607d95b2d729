"""RDKit validity, uniqueness and closed-shell ratio of generated molecules."""

from __future__ import annotations

from collections.abc import Sequence

from rdkit import Chem

__all__ = [
    "sanitized",
    "canonical_smiles",
    "canonical_reference",
    "validity",
    "uniqueness",
    "novelty",
    "closed_shell",
    "VALENCE_ELECTRONS",
]

# Valence electrons of the neutral atoms of the elements geomol generates (and a few common others).
VALENCE_ELECTRONS = {1: 1, 5: 3, 6: 4, 7: 5, 8: 6, 9: 7, 14: 4, 15: 5, 16: 6, 17: 7, 35: 7, 53: 7}


def sanitized(mol: Chem.Mol) -> Chem.Mol | None:
    """A sanitized copy of ``mol``, or None when RDKit rejects it (valence, kekulization, ...)."""
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    copy = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(copy)
    except (ValueError, RuntimeError, Chem.KekulizeException, Chem.AtomValenceException):
        return None
    return copy


def canonical_smiles(mol: Chem.Mol) -> str | None:
    """Canonical SMILES (hydrogens implicit, no stereo) of a valid molecule, None if invalid."""
    clean = sanitized(mol)
    if clean is None:
        return None
    clean = Chem.RemoveHs(clean)
    Chem.RemoveStereochemistry(clean)
    return Chem.MolToSmiles(clean, isomericSmiles=False)


def validity(mols: Sequence[Chem.Mol], connected: bool = False) -> float:
    """Fraction of molecules that RDKit sanitizes (and, with ``connected``, made of one fragment)."""
    ok = 0
    for mol in mols:
        clean = sanitized(mol)
        ok += clean is not None and (not connected or len(Chem.GetMolFrags(clean)) == 1)
    return ok / max(len(mols), 1)


def uniqueness(mols: Sequence[Chem.Mol]) -> tuple[float, float]:
    """(distinct canonical SMILES / valid molecules, distinct valid SMILES / all molecules)."""
    smiles = [s for s in (canonical_smiles(m) for m in mols) if s is not None]
    distinct = len(set(smiles))
    return distinct / max(len(smiles), 1), distinct / max(len(mols), 1)


def canonical_reference(smiles: Sequence[str]) -> set[str]:
    """Reference SMILES (e.g. a training set's) in :func:`canonical_smiles`' form; unparsable entries are skipped."""
    out = set()
    for text in smiles:
        mol = Chem.MolFromSmiles(text)
        if mol is not None:
            Chem.RemoveStereochemistry(mol)
            out.add(Chem.MolToSmiles(mol, isomericSmiles=False))
    return out


def novelty(mols: Sequence[Chem.Mol], reference: set[str]) -> float:
    """Fraction of the distinct valid molecules whose canonical SMILES is not in ``reference`` (EDM's and
    GeoLDM's definition: novel among valid and unique); ``reference`` from :func:`canonical_reference`."""
    distinct = {s for s in (canonical_smiles(m) for m in mols) if s is not None}
    return len(distinct - reference) / max(len(distinct), 1)


def closed_shell(mols: Sequence[Chem.Mol]) -> float:
    """Fraction of molecules with an even number of valence electrons, net formal charge included.

    An odd count forces an unpaired electron (a radical) whatever the bonds; PropMolFlow reports this
    ratio (its code ignores the net charge, which is zero for neutral molecules).
    """
    even = 0
    for mol in mols:
        electrons = -sum(a.GetFormalCharge() for a in mol.GetAtoms())
        for atom in mol.GetAtoms():
            z = atom.GetAtomicNum()
            if z not in VALENCE_ELECTRONS:
                raise ValueError(f"no valence-electron count for element Z={z}")
            electrons += VALENCE_ELECTRONS[z] + atom.GetNumExplicitHs()
        even += electrons % 2 == 0
    return even / max(len(mols), 1)
