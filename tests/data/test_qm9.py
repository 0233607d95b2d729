import math
import time

import numpy as np
import pytest
import torch

from geomol.data.chem import METHOD_FAILED, METHOD_TEMPLATE
from geomol.data.datamodule import QM9DataModule, target_statistics
from geomol.data.qm9 import (
    HARTREE_TO_EV,
    NUM_CHARACTERIZED,
    QM9,
    STANDARD_SPLIT,
    TARGETS,
    parse_qm9_xyz,
    qm9pack_folder,
    split_indices,
    training_halves,
)

# Values from the QM9 data files (Ramakrishnan et al. 2014), in Hartree unless noted.
METHANE = {"mu": 0.0, "alpha": 13.21, "homo": -0.3877, "lumo": 0.1171, "gap": 0.5048, "r2": 35.3641,
           "zpve": 0.044749, "U0": -40.47893, "U": -40.476062, "H": -40.475117, "G": -40.498597, "cv": 6.469}  # fmt: skip
WATER = {"mu": 1.8511, "alpha": 6.31, "homo": -0.2928, "lumo": 0.0687, "gap": 0.3615, "r2": 19.0002,
         "zpve": 0.021375, "U0": -76.404702, "U": -76.401867, "H": -76.400922, "G": -76.422349, "cv": 6.002}  # fmt: skip
HARTREE_TARGETS = {"homo", "lumo", "gap", "zpve", "U0", "U", "H", "G"}


@pytest.fixture(scope="module")
def fixture_qm9(tmp_path_factory, request):
    from pathlib import Path

    source = Path(request.config.rootpath) / "tests" / "fixtures" / "qm9"
    dataset = QM9(tmp_path_factory.mktemp("qm9"), source=source, with_bonds=True)
    dataset.ensure_bonds()
    return dataset


def _by_index(dataset, index):
    return dataset[int(torch.nonzero(dataset.idx == index)[0, 0])]


@pytest.mark.parametrize("index,expected", [(1, METHANE), (3, WATER)])
def test_paper_values_in_pyg_units(fixture_qm9, index, expected):
    data = _by_index(fixture_qm9, index)
    for name, value in expected.items():
        factor = HARTREE_TO_EV if name in HARTREE_TARGETS else 1.0
        got = data.y[0, TARGETS.index(name)].item()
        assert math.isclose(got, value * factor, rel_tol=1e-6, abs_tol=1e-4), name


def test_methane_geometry_and_atomization(fixture_qm9):
    data = _by_index(fixture_qm9, 1)
    assert data.z.tolist() == [6, 1, 1, 1, 1]
    ch = (data.pos[1:] - data.pos[0]).norm(dim=-1)
    torch.testing.assert_close(ch, torch.full((4,), 1.0919), atol=2e-3, rtol=0)  # C–H bond length, Å
    # U0 minus the free-atom energies: -0.631066 Ha for methane.
    u0_atom = data.y[0, TARGETS.index("U0_atom")].item()
    assert math.isclose(u0_atom, (-40.47893 - (-37.846772 - 4 * 0.500273)) * HARTREE_TO_EV, rel_tol=1e-5)


def test_bonds_and_charges(fixture_qm9):
    methane = _by_index(fixture_qm9, 1)
    assert methane.edge_index.size(1) == 8 and (methane.edge_attr == 1).all()
    assert set(methane.edge_index[1, methane.edge_index[0] == 0].tolist()) == {1, 2, 3, 4}
    water = _by_index(fixture_qm9, 3)
    assert water.charge.tolist() == [0, 0, 0] and water.edge_index.size(1) == 4
    report = fixture_qm9.bond_report()
    derived = sum(report.values())
    assert derived == len(fixture_qm9)
    assert report["failed"] <= 0.005 * derived
    # Bicyclo[1.1.1]pentane (QM9 105): the bridgeheads sit within bonding distance; the SMILES fixes it.
    k = int(torch.nonzero(fixture_qm9.idx == 105)[0, 0])
    assert fixture_qm9._load_bonds()["method"][k] == METHOD_TEMPLATE
    assert _by_index(fixture_qm9, 105).edge_index.size(1) == 2 * 14  # C5H8: 6 C–C + 8 C–H
    # A zwitterion keeps its formal charges, summing to zero.
    zwitterion = _by_index(fixture_qm9, 1642)
    assert zwitterion.charge.abs().sum() == 2 and zwitterion.charge.sum() == 0


def test_bonds_are_symmetric_and_valid(fixture_qm9):
    from rdkit import Chem

    from geomol.data.chem import mol_from_graph

    for k in range(0, len(fixture_qm9), 20):
        d = fixture_qm9[k]
        pairs = set(map(tuple, d.edge_index.t().tolist()))
        assert all((b, a) in pairs for a, b in pairs)
        mol = mol_from_graph(d.z, d.pos, d.charge, d.edge_index, d.edge_attr, sanitize=False)
        Chem.SanitizeMol(mol)  # raises if valences are wrong
        assert Chem.MolFromSmiles(fixture_qm9.smiles[k]) is not None


def test_cache_reloads_fast_and_atomically(fixture_qm9):
    folder = fixture_qm9.processed_path.parent
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    start = time.perf_counter()
    again = QM9(fixture_qm9.root, source=fixture_qm9.source, with_bonds=True)
    assert time.perf_counter() - start < 5.0
    torch.testing.assert_close(again[7].pos, fixture_qm9[7].pos)
    torch.testing.assert_close(again[7].edge_attr, fixture_qm9[7].edge_attr)


def test_damaged_cache_is_rebuilt(fixture_qm9, tmp_path):
    first = QM9(tmp_path, source=fixture_qm9.source)
    first.processed_path.write_bytes(b"not a torch file")
    assert len(QM9(tmp_path, source=fixture_qm9.source)) == len(fixture_qm9)


@pytest.mark.parametrize("damage", ["missing_z", "foreign", "truncated"])
def test_loadable_but_wrong_cache_is_rebuilt(fixture_qm9, tmp_path, damage):
    first = QM9(tmp_path, source=fixture_qm9.source)
    cache = torch.load(first.processed_path, weights_only=True)
    if damage == "missing_z":
        del cache["z"]
    elif damage == "foreign":
        cache = {"version": cache["version"], "weights": torch.zeros(3)}
    else:
        cache["pos"] = cache["pos"][:-5]
    torch.save(cache, first.processed_path)
    again = QM9(tmp_path, source=fixture_qm9.source)
    assert len(again) == len(fixture_qm9)
    last = len(fixture_qm9) - 1
    torch.testing.assert_close(again[last].pos, fixture_qm9[last].pos)


def test_unwritable_cache_folder_is_one_line_before_processing(fixture_qm9, tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(
        ValueError, match=r"cannot write the QM9 cache in .*data/processed: Not a directory; set GEOMOL_DATA"
    ):
        QM9(blocker, source=fixture_qm9.source)


def test_malformed_csv_and_missing_source(tmp_path, fixtures_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (fixtures_dir / "qm9" / "qm9_fixture.csv").read_text().splitlines()
    (bad / "part.csv").write_text("\n".join(lines[:3] + [lines[3].replace("-0.", "x0.", 1)]) + "\n")
    with pytest.raises(ValueError, match="malformed QM9 CSV .* line 4"):
        QM9(tmp_path / "cache", source=bad)
    assert not (tmp_path / "cache" / "processed").exists() or not list((tmp_path / "cache" / "processed").iterdir())
    with pytest.raises(FileNotFoundError, match="QM9 source folder not found"):
        QM9(tmp_path / "cache", source=tmp_path / "nowhere")


def test_official_xyz_format():
    text = """5
gdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21\t-0.3877\t0.1171\t0.5048\t35.3641\t0.044749\t-40.47893\t-40.476062\t-40.475117\t-40.498597\t6.469\t
C\t-0.0126981359\t 1.0858041578\t 0.0080009958\t-0.535689
H\t 0.002150416\t-0.0060313176\t 0.0019761204\t 0.133921
H\t 1.0117308433\t 1.4637511618\t 0.0002765748\t 0.133922
H\t-0.540815069\t 1.4475266138\t-0.8766437152\t 0.133923
H\t-0.5238136345\t 1.4379326443\t 0.9063972942\t 0.133923
1341.307\t1341.3284\t1341.365\t1562.6731\t1562.7453\t3038.3205\t3151.6034\t3151.6788\t3151.7078
C\tC\t
InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4
"""
    index, z, pos, standard, rot, smiles = parse_qm9_xyz(text.replace("0.0019761204", "1.9761204*^-3"))
    assert index == 1 and z == [6, 1, 1, 1, 1] and smiles == "C"
    assert math.isclose(pos[2, 2], 0.0002765748) and math.isclose(pos[1, 2], 0.0019761204)
    assert math.isclose(standard[2], -0.3877 * HARTREE_TO_EV) and rot[0] == 157.7118


def test_splits():
    train, val, test = split_indices(NUM_CHARACTERIZED, seed=0)
    assert (train.numel(), val.numel(), test.numel()) == STANDARD_SPLIT
    everything = torch.cat([train, val, test])
    assert everything.unique().numel() == NUM_CHARACTERIZED
    a, b = training_halves(train)
    assert a.numel() == b.numel() == 50_000 and not set(a.tolist()) & set(b.tolist())
    small = split_indices(1000, seed=0)
    assert [s.numel() for s in small] == [764, 136, 100]
    torch.testing.assert_close(split_indices(1000, seed=0)[0], small[0])
    with pytest.raises(ValueError, match="do not fit"):
        split_indices(10, sizes=(8, 2, 1))


def test_target_statistics_per_atom():
    y = torch.tensor([[10.0, 1.0], [20.0, 3.0]])
    n = torch.tensor([5, 10])
    mean, std = target_statistics(y, n, [True, False])
    assert mean == [2.0, 2.0]
    assert std[1] == pytest.approx(math.sqrt(2.0))


def test_datamodule(fixtures_dir, tmp_path):
    dm = QM9DataModule(root=tmp_path, source=fixtures_dir / "qm9", target=["homo", "U0"], batch_size=16)
    kwargs = dm.task_kwargs()
    assert kwargs["targets"] == ["homo", "U0"] and kwargs["units"] == ["eV", "eV"]
    assert kwargs["extensive"] == [False, True]
    sizes = {k: v.numel() for k, v in dm.splits.items()}
    assert sum(sizes.values()) == 400 and sizes["train"] == 306
    batch = next(iter(dm.train_dataloader()))
    assert batch.y.shape == (16, 19) and batch.num_graphs == 16
    with pytest.raises(ValueError, match="unknown QM9 target 'homo2'"):
        QM9DataModule(root=tmp_path, target="homo2")
    half = QM9DataModule(root=tmp_path, source=fixtures_dir / "qm9", train_half="regressor", subset=100)
    half.setup()
    assert half.splits["train"].numel() == 38


@pytest.mark.skipif(qm9pack_folder() is None, reason="qm9pack not installed")
def test_full_qm9_from_qm9pack(tmp_path):
    dataset = QM9(tmp_path)
    assert len(dataset) == NUM_CHARACTERIZED
    assert dataset.idx[0] == 1 and dataset.idx[-1] == 133885
    z = dataset._z.unique().tolist()
    assert z == [1, 6, 7, 8, 9] and dataset.num_atoms().max() == 29
    assert np.isfinite(dataset.y.numpy()).all()
    # The uncharacterized molecules are absent (QM9's index list, first entries).
    assert not set(dataset.idx.tolist()) & {58, 61, 80, 185, 186}
    assert METHOD_FAILED == 3
