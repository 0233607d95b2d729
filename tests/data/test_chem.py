import numpy as np
import pytest
import torch
from rdkit import Chem

from geomol.data.chem import (
    atomic_write,
    bonds_from_xyz,
    graph_from_mol,
    mol_from_graph,
    read_sdf,
    read_xyz,
    write_sdf,
)

ETHANOL = """9
ethanol
C -0.0017 1.5247 0.0000
C 0.0021 -0.0011 0.0000
O 1.3506 -0.4597 0.0000
H -1.0266 1.8983 0.0000
H 0.5092 1.9009 0.8876
H 0.5092 1.9009 -0.8876
H -0.5156 -0.3842 0.8845
H -0.5156 -0.3842 -0.8845
H 1.3641 -1.4209 0.0000
"""


def test_xyz_to_bonds_to_sdf_round_trip(tmp_path):
    path = tmp_path / "ethanol.xyz"
    path.write_text(ETHANOL + ETHANOL)
    frames = read_xyz(path)
    assert len(frames) == 2 and frames[0][0] == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    z, pos = frames[0]
    res = bonds_from_xyz(z, pos, smiles="CCO")
    assert res.method == 0 and res.edge_index.size(1) == 16 and (res.edge_attr == 1).all()
    mol = mol_from_graph(z, pos, res.charges, res.edge_index, res.edge_attr)
    assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == "CCO"
    write_sdf([mol, mol], tmp_path / "out.sdf", props=[{"gap": 1.5}, {"gap": 2.5}])
    back = read_sdf(tmp_path / "out.sdf")
    assert [m.GetProp("gap") for m in back] == ["1.5", "2.5"]
    graph = graph_from_mol(back[0])
    torch.testing.assert_close(graph["pos"], torch.tensor(pos, dtype=torch.float32), atol=1e-4, rtol=0)
    assert graph["edge_index"].size(1) == 16


@pytest.mark.parametrize(
    "text,message",
    [
        ("three\n\nC 0 0 0\n", "line 1 of .* should hold the atom count"),
        ("0\n\n", "empty molecule"),
        ("2\n\nC 0 0 0\n", "ends before the 2 atoms"),
        ("1\n\nC 0 0\n", "line 3 of .* should be 'element x y z'"),
        ("1\n\nC 0 zero 0\n", "non-numeric coordinate at line 3"),
        ("1\n\nXx 0 0 0\n", "unknown element symbol 'Xx'"),
        ("1\n\nC nan 0 0\n", "NaN or infinite coordinates"),
        ("\n\n", "no molecules"),
    ],
)
def test_malformed_xyz(tmp_path, text, message):
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_xyz(path)


def test_graph_from_bad_molecules():
    with pytest.raises(ValueError, match="empty molecule"):
        graph_from_mol(Chem.Mol())
    with pytest.raises(ValueError, match="no 3D conformer"):
        graph_from_mol(Chem.MolFromSmiles("CCO"))


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        with atomic_write(tmp_path / "nope" / "x.txt"):
            pass
    with atomic_write(target) as handle:
        handle.write("new")
    assert target.read_text() == "new"
    assert np.isclose((target.stat().st_mode & 0o777) & 0o644, 0o644)


def test_kekulize_bonds_refuses_an_aromatic_ring_without_a_kekule_structure():
    from geomol.data.chem import kekulize_bonds

    # five aromatic CH in a ring: five π electrons, no alternating single/double assignment
    z = torch.tensor([6] * 5 + [1] * 5)
    ring = [(k, (k + 1) % 5) for k in range(5)]
    hydrogens = [(k, k + 5) for k in range(5)]
    edge_index = torch.tensor(ring + hydrogens).t()
    edge_attr = torch.tensor([4] * 5 + [1] * 5)
    with pytest.raises(ValueError, match="aromatic bonds without a Kekulé structure"):
        kekulize_bonds(z, torch.zeros(10, dtype=torch.long), edge_index, edge_attr)
    # six of them (benzene) alternate
    z6 = torch.tensor([6] * 6 + [1] * 6)
    edge_index6 = torch.tensor([(k, (k + 1) % 6) for k in range(6)] + [(k, k + 6) for k in range(6)]).t()
    codes = kekulize_bonds(z6, torch.zeros(12, dtype=torch.long), edge_index6, torch.tensor([4] * 6 + [1] * 6))
    assert sorted(codes[:6].tolist()) == [1, 1, 1, 2, 2, 2] and codes[6:].tolist() == [1] * 6
    assert all(codes[k] != codes[(k + 1) % 6] for k in range(6))
