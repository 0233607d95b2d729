"""All metrics of a set of generated molecules in one call (used by ``geomol.generate`` and ``geomol.evaluate``)."""

from __future__ import annotations

from collections.abc import Sequence

from rdkit import Chem

from .stability import stability
from .validity import closed_shell, uniqueness, validity

__all__ = ["molecule_metrics"]


def molecule_metrics(mols: Sequence[Chem.Mol]) -> dict[str, float]:
    """Atom/molecule stability, validity (and single-fragment validity), uniqueness, closed-shell ratio."""
    if not mols:
        raise ValueError("no molecules to evaluate")
    stable = stability(mols)
    unique, valid_unique = uniqueness(mols)
    return {
        "molecules": float(len(mols)),
        "atom_stability": stable.atom_stability,
        "molecule_stability": stable.molecule_stability,
        "validity": validity(mols),
        "connected_validity": validity(mols, connected=True),
        "uniqueness": unique,
        "valid_and_unique": valid_unique,
        "closed_shell": closed_shell(mols),
    }
