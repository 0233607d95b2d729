"""Novelty of generated molecules against the QM9 training molecules a generator saw (the generator half).

Novel = distinct valid molecules whose canonical SMILES (RDKit, no stereo, hydrogens implicit) is not among the
training molecules' (QM9's relaxed-geometry SMILES, canonicalised the same way) — EDM's and GeoLDM's definition.
The split is geomol's (seeded 100,000 / 17,748 / 13,083, the generator half of the training split), as
``data=qm9 model=propmolflow`` trains::

    python bench/propmolflow_novelty.py outputs/eval_mid/mols.sdf            # data.root data/qm9, seed 42
    python bench/propmolflow_novelty.py mols.sdf --data-root data/qm9 --seed 42 --half generator
"""

from __future__ import annotations

import argparse

from rdkit import Chem

from geomol.data.qm9 import QM9, split_indices, training_halves
from geomol.metrics import canonical_reference, canonical_smiles, novelty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sdf", help="generated molecules (python -m geomol.generate ... output=mols.sdf)")
    parser.add_argument("--data-root", default="data/qm9", help="geomol's QM9 cache folder")
    parser.add_argument("--seed", type=int, default=42, help="the training run's seed (the split's)")
    parser.add_argument("--half", choices=["generator", "regressor", "all"], default="generator")
    args = parser.parse_args()

    mols = [m for m in Chem.SDMolSupplier(args.sdf, removeHs=False, sanitize=False)]
    dataset = QM9(args.data_root)
    train, _, test = split_indices(len(dataset), args.seed)
    if args.half != "all":
        train = training_halves(train)[0 if args.half == "generator" else 1]
    reference = canonical_reference([dataset.smiles[k] for k in train.tolist()])
    test_reference = canonical_reference([dataset.smiles[k] for k in test.tolist()])
    distinct = {s for s in (canonical_smiles(m) for m in mols if m is not None) if s is not None}
    print(f"{args.sdf}: {len(mols)} molecules, {len(distinct)} distinct valid")
    print(f"training molecules ({args.half} half, seed {args.seed}): {train.numel()}, {len(reference)} distinct SMILES")
    print(f"novelty (distinct valid not in training): {novelty(mols, reference):.4f}")
    print(f"of the distinct valid, in the test split: {len(distinct & test_reference) / max(len(distinct), 1):.4f}")


if __name__ == "__main__":
    main()
