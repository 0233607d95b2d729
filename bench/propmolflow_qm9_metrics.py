"""Metrics of real QM9 molecules: the data itself should be (almost) 100% stable and valid.

Runs geomol.metrics on QM9 molecules with RDKit-derived bonds and formal charges, and, side by side,
two valence tables other generators report with (re-implemented here as references, with aromatic
bonds counted 1.5 as those codes do):

- "EDM": one neutral valence per element (H 1, C 4, N 3, O 2, F 1), charges ignored.
- "MiDi/FlowMol": charge-keyed table with C {0: [3, 4]}, N {0: [2, 3], +1: [2, 3, 4], -1: 2}, O {0: 2,
  +1: 3, -1: 1}, missing charges falling back to the neutral entry.

    python bench/propmolflow_qm9_metrics.py --molecules 20000
"""

from __future__ import annotations

import argparse
import time

import torch
from rdkit import Chem

from geomol.data.chem import mol_from_graph
from geomol.data.qm9 import QM9
from geomol.metrics.summary import molecule_metrics

EDM = {1: 1, 6: 4, 7: 3, 8: 2, 9: 1}
MIDI = {
    1: {0: [1]},
    6: {0: [3, 4], 1: [3], -1: [3]},
    7: {0: [2, 3], 1: [2, 3, 4], -1: [2]},
    8: {0: [2], 1: [3], -1: [1]},
    9: {0: [1]},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/qm9")
    parser.add_argument("--molecules", type=int, default=20000, help="random QM9 molecules (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def aromatic_valences(mol: Chem.Mol) -> list[float]:
    sums = [0.0] * mol.GetNumAtoms()
    for bond in mol.GetBonds():
        order = bond.GetBondTypeAsDouble()
        sums[bond.GetBeginAtomIdx()] += order
        sums[bond.GetEndAtomIdx()] += order
    return sums


def reference_stability(mols: list[Chem.Mol], table: str) -> tuple[float, float]:
    stable_atoms = atoms = stable_mols = 0
    for mol in mols:
        ok_all = True
        for atom, valence in zip(mol.GetAtoms(), aromatic_valences(mol)):
            z, charge = atom.GetAtomicNum(), atom.GetFormalCharge()
            if table == "EDM":
                ok = valence == EDM[z]
            else:
                allowed = MIDI[z].get(charge, MIDI[z][0])
                ok = valence in allowed
            stable_atoms += ok
            ok_all &= ok
        atoms += mol.GetNumAtoms()
        stable_mols += ok_all
    return stable_atoms / atoms, stable_mols / len(mols)


def main() -> None:
    args = parse_args()
    dataset = QM9(args.root, with_bonds=True)
    n = len(dataset) if args.molecules <= 0 else min(args.molecules, len(dataset))
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))[:n].sort().values
    dataset.ensure_bonds(chosen)
    failed = set(dataset.bonds_failed().tolist())
    start = time.perf_counter()
    mols = []
    for k in chosen.tolist():
        if k in failed:
            continue
        d = dataset[k]
        mols.append(mol_from_graph(d.z, d.pos, d.charge, d.edge_index, d.edge_attr))
    ours = molecule_metrics(mols)
    seconds = time.perf_counter() - start
    charged = sum(any(a.GetFormalCharge() for a in m.GetAtoms()) for m in mols)
    print(
        f"{len(mols)} QM9 molecules ({len([k for k in chosen.tolist() if k in failed])} without bonds skipped), "
        f"{charged} with charged atoms; metrics in {seconds:.1f} s"
    )
    rows = [("geomol (charge-aware, kekulized)", ours["atom_stability"], ours["molecule_stability"])]
    for table in ("EDM", "MiDi/FlowMol"):
        rows.append((f"{table} table (aromatic 1.5)", *reference_stability(mols, table)))
    print(f"{'valence table':<34s} {'atom stab.':>10s} {'mol stab.':>10s} {'mol vs geomol':>14s}")
    for name, atom, mol in rows:
        print(f"{name:<34s} {atom:10.4%} {mol:10.4%} {mol / rows[0][2]:14.3f}")
    for key in ("validity", "connected_validity", "uniqueness", "closed_shell"):
        print(f"{key:<34s} {ours[key]:10.4%}")


if __name__ == "__main__":
    main()
