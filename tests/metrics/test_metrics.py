import pytest
import torch

from geomol.data.chem import mol_from_graph
from geomol.data.generation import ood_target
from geomol.metrics.properties import predict_properties, property_mae
from geomol.metrics.stability import molecule_stability, stability
from geomol.metrics.summary import molecule_metrics
from geomol.metrics.validity import canonical_smiles, closed_shell, uniqueness, validity


def _mol(z, bonds, charges=None):
    """A molecule as the generator builds it: explicit atoms, bonds (a, b, code), no implicit H."""
    edge_index = torch.tensor([[a for a, _, _ in bonds], [b for _, b, _ in bonds]]).reshape(2, -1)
    codes = torch.tensor([c for _, _, c in bonds], dtype=torch.long)
    charges = torch.zeros(len(z), dtype=torch.long) if charges is None else torch.tensor(charges)
    pos = torch.randn(len(z), 3)
    return mol_from_graph(torch.tensor(z), pos, charges, edge_index, codes)


def _with_h(heavy, heavy_bonds, hydrogens, charges=None):
    """Heavy atoms, their bonds, and how many hydrogens each carries."""
    z, bonds = list(heavy), list(heavy_bonds)
    for atom, count in enumerate(hydrogens):
        for _ in range(count):
            z.append(1)
            bonds.append((atom, len(z) - 1, 1))
    charges = None if charges is None else list(charges) + [0] * (len(z) - len(heavy))
    return _mol(z, bonds, charges)


METHANE = ([6], [], [4])
GLYCINE = ([7, 6, 6, 8, 8], [(0, 1, 1), (1, 2, 1), (2, 3, 2), (2, 4, 1)], [3, 2, 0, 0, 0], [1, 0, 0, 0, -1])
PYRROLE = ([7, 6, 6, 6, 6], [(0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 4, 4), (4, 0, 4)], [1, 1, 1, 1, 1])
# Hand-checked set: (molecule, stable atoms, molecule stable, RDKit-valid, closed shell).
CASES = {
    "methane": (METHANE, 5, True, True, True),
    # Neutral carbon with 3 bonds is a radical: unstable (other tables accept C with [3, 4]).
    "methyl radical": (([6], [], [3]), 3, False, True, False),
    # Zwitterion: N+ with 4 bonds and O- with 1 bond are stable; net charge 0.
    "glycine zwitterion": (GLYCINE, 10, True, True, True),
    # Aromatic bonds: the N-H of pyrrole has 1.5 + 1.5 + 1 = 4 before and 3 after kekulization.
    "pyrrole": (PYRROLE, 10, True, True, True),
    # Pentavalent carbon: unstable and rejected by RDKit; 9 electrons.
    "CH5": (([6], [], [5]), 5, False, False, False),
    # N+ with 3 bonds (other tables accept [2, 3, 4]); odd electron count.
    "NH3+": (([7], [], [3], [1]), 3, False, True, False),
    # Carbocation: C+ with 3 bonds is stable, but the molecule is charged.
    "CH3+": (([6], [], [3], [1]), 4, False, True, True),
    "methane again": (METHANE, 5, True, True, True),
}


@pytest.fixture(scope="module")
def hand_checked():
    return {name: (_with_h(*spec), *rest) for name, (spec, *rest) in CASES.items()}


def test_stability_validity_closed_shell_by_hand(hand_checked):
    for name, (mol, stable_atoms, mol_stable, valid, closed) in hand_checked.items():
        assert molecule_stability(mol) == (stable_atoms, mol_stable), name
        assert validity([mol]) == float(valid), name
        assert closed_shell([mol]) == float(closed), name
    mols = [case[0] for case in hand_checked.values()]
    result = stability(mols)
    assert (result.stable_atoms, result.atoms) == (45, 48)
    assert (result.stable_molecules, result.molecules) == (4, 8)
    assert validity(mols) == 7 / 8
    assert closed_shell(mols) == 5 / 8
    # Valid SMILES: C, [CH3], glycine, pyrrole, [NH3+], [CH3+], C -> 6 distinct of 7 valid.
    assert uniqueness(mols) == (6 / 7, 6 / 8)
    assert canonical_smiles(hand_checked["pyrrole"][0]) == "c1cc[nH]c1"
    assert canonical_smiles(hand_checked["CH5"][0]) is None
    summary = molecule_metrics(mols)
    assert summary["atom_stability"] == 45 / 48 and summary["molecule_stability"] == 0.5
    assert summary["connected_validity"] == 7 / 8


def test_disconnected_molecules_are_valid_but_not_connected():
    two_methanes = _mol([6, 6] + [1] * 8, [(0, 2 + k, 1) for k in range(4)] + [(1, 6 + k, 1) for k in range(4)])
    assert validity([two_methanes]) == 1.0 and validity([two_methanes], connected=True) == 0.0


def test_qm9_molecules_are_stable_and_valid(qm9_fixture):
    mols = [mol_from_graph(d.z, d.pos, d.charge, d.edge_index, d.edge_attr) for d in qm9_fixture]
    summary = molecule_metrics(mols)
    # The data itself must pass: the charge-aware table with kekulized aromatic bonds accepts all 400
    # fixture molecules, zwitterions included.
    assert summary["atom_stability"] == 1.0 and summary["molecule_stability"] == 1.0
    assert summary["validity"] == 1.0 and summary["closed_shell"] == 1.0
    assert summary["uniqueness"] == 1.0


def test_property_metrics(qm9_fixture):
    mols = [mol_from_graph(d.z, d.pos, d.charge, d.edge_index, d.edge_attr) for d in list(qm9_fixture)[:10]]

    def heavy_atoms(z, pos, batch):  # a stand-in regressor with a known answer
        return torch.zeros(int(batch.max()) + 1, 1).index_add_(0, batch, (z > 1).float().unsqueeze(-1))

    pred = predict_properties(heavy_atoms, mols, batch_size=3)
    expected = torch.tensor([[float(sum(a.GetAtomicNum() > 1 for a in m.GetAtoms()))] for m in mols])
    torch.testing.assert_close(pred, expected.double())
    assert property_mae(torch.tensor([1.0, 2.0, 4.0]), 2.0) == pytest.approx(1.0)
    assert property_mae(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])) == pytest.approx(1.5)
    assert ood_target(list(range(101))) == pytest.approx(99.0)
    with pytest.raises(ValueError, match="percentile"):
        ood_target([1.0], 120)


def test_novelty_counts_distinct_valid_molecules_outside_the_reference():
    from rdkit import Chem

    from geomol.metrics import canonical_reference, novelty

    reference = canonical_reference(["CCO", "C[C@H](N)O", "not a smiles"])  # stereo dropped, junk skipped
    assert reference == {"CCO", "CC(N)O"}
    mols = [Chem.AddHs(Chem.MolFromSmiles(s)) for s in ("OCC", "CC(O)N", "CCN", "CCN")]
    assert novelty(mols, reference) == 1 / 3  # distinct valid: CCO, CC(N)O (known), CCN (new)
    assert novelty(mols[:2], reference) == 0.0
    assert novelty([], reference) == 0.0
