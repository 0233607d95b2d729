"""Atom and molecule stability with a charge-aware valence table.

An atom is stable when the sum of its bond orders equals the valence its element has at its formal
charge; a molecule is stable when all its atoms are and its net charge is zero (EDM, Hoogeboom et al.
2022, Sec. 5.1, with charges as in MiDi and PropMolFlow). Aromatic bonds are first kekulized, so a
pyrrole N-H counts 3 bonds (1 + 2 in a Kekulé structure) instead of 1.5 + 1.5 + 1 = 4.

The table allows exactly one valence per (element, charge), the closed-shell one:

======= ============== ============== ==============
element charge -1      charge 0       charge +1
======= ============== ============== ==============
H                      1
C       3              4              3
N       2              3              4
O       1              2              3
F                      1
======= ============== ============== ==============

It avoids the mistakes of the table that MiDi, FlowMol and PropMolFlow's first metric copied:
neutral C with 3 bonds (a radical) and N⁺ with 2 or 3 bonds counted stable, and charges missing from
the table silently falling back to the neutral valence (so O²⁺ with 2 bonds passed). It also avoids
the "valence - charge" shortcut, which wrongly rejects carbocations (3 - 1 ≠ 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rdkit import Chem

__all__ = ["VALENCES", "StabilityResult", "bond_order_sums", "molecule_stability", "stability"]

# (atomic number, formal charge) -> the one allowed sum of bond orders.
VALENCES: dict[tuple[int, int], int] = {
    (1, 0): 1,
    (6, -1): 3,
    (6, 0): 4,
    (6, 1): 3,
    (7, -1): 2,
    (7, 0): 3,
    (7, 1): 4,
    (8, -1): 1,
    (8, 0): 2,
    (8, 1): 3,
    (9, 0): 1,
}


def bond_order_sums(mol: Chem.Mol) -> list[float]:
    """Sum of bond orders of each atom, explicit hydrogens included as atoms, aromatic rings kekulized.

    When kekulization fails (an aromatic system with no Kekulé structure) aromatic bonds count 1.5.
    """
    kekule = Chem.RWMol(mol)
    try:
        kekule.UpdatePropertyCache(strict=False)
        Chem.Kekulize(kekule, clearAromaticFlags=True)
    except (Chem.KekulizeException, Chem.AtomKekulizeException, ValueError, RuntimeError):
        kekule = mol
    sums = [0.0] * mol.GetNumAtoms()
    for bond in kekule.GetBonds():
        order = bond.GetBondTypeAsDouble()
        sums[bond.GetBeginAtomIdx()] += order
        sums[bond.GetEndAtomIdx()] += order
    return sums


def _atom_stable(atomic_number: int, charge: int, order_sum: float, implicit_hs: int) -> bool:
    allowed = VALENCES.get((atomic_number, charge))
    return allowed is not None and order_sum + implicit_hs == allowed


@dataclass
class StabilityResult:
    """Stable atoms and stable molecules over a set of molecules."""

    stable_atoms: int
    atoms: int
    stable_molecules: int
    molecules: int

    @property
    def atom_stability(self) -> float:
        return self.stable_atoms / max(self.atoms, 1)

    @property
    def molecule_stability(self) -> float:
        return self.stable_molecules / max(self.molecules, 1)


def molecule_stability(mol: Chem.Mol) -> tuple[int, bool]:
    """(number of stable atoms, whether the molecule is stable) of one molecule.

    Hydrogens must be explicit atoms (as in generated molecules and QM9 SDFs read with
    ``removeHs=False``); hydrogens an SDF stores as atom properties are counted too.
    """
    sums = bond_order_sums(mol)
    stable = 0
    net_charge = 0
    for atom, order_sum in zip(mol.GetAtoms(), sums):
        charge = atom.GetFormalCharge()
        net_charge += charge
        stable += _atom_stable(atom.GetAtomicNum(), charge, order_sum, atom.GetNumExplicitHs())
    n = mol.GetNumAtoms()
    return stable, n > 0 and stable == n and net_charge == 0


def stability(mols: Sequence[Chem.Mol]) -> StabilityResult:
    """Atom and molecule stability of a list of molecules."""
    stable_atoms = atoms = stable_mols = 0
    for mol in mols:
        n_stable, ok = molecule_stability(mol)
        stable_atoms += n_stable
        atoms += mol.GetNumAtoms()
        stable_mols += ok
    return StabilityResult(stable_atoms, atoms, stable_mols, len(mols))
