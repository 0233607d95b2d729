import io
import tarfile

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from geomol.data.rmd17 import KCAL_MOL_TO_EV, RMD17, RMD17DataModule, split_file


@pytest.fixture
def rmd17_dir(fixtures_dir):
    return fixtures_dir / "rmd17"


def test_frames_in_ev(rmd17_dir):
    ds = RMD17(rmd17_dir, "aspirin", download=False)
    assert len(ds) == 80 and ds.num_train_frames == 60
    raw_train = np.load(split_file(rmd17_dir, "aspirin", "train"))
    raw_test = np.load(split_file(rmd17_dir, "aspirin", "test"))
    first, last = ds[0], ds[79]
    assert first.z.tolist() == raw_train["nuclear_charges"].tolist() and first.z.dtype == torch.long
    assert sorted(set(first.z.tolist())) == [1, 6, 8] and first.pos.shape == (21, 3)
    np.testing.assert_allclose(first.pos.numpy(), raw_train["coords"][0], rtol=1e-6)
    # Energies stay float64: −17,617 eV would lose 2 meV in float32.
    assert first.energy.dtype == torch.float64 and first.y.shape == (1, 1)
    assert first.energy.item() == raw_train["energies"][0] * KCAL_MOL_TO_EV
    assert abs(last.energy.item() - raw_test["energies"][19] * 0.0433641153) < 1e-9
    np.testing.assert_allclose(last.forces.numpy(), raw_test["forces"][19] * KCAL_MOL_TO_EV, rtol=1e-6)


def test_datamodule_splits_and_task_kwargs(rmd17_dir):
    dm = RMD17DataModule(rmd17_dir, num_train=50, num_val=10, batch_size=4, seed=1, download=False)
    dm.setup()
    train, val, test = (dm.splits[s] for s in ("train", "val", "test"))
    assert len(train) == 50 and len(val) == 10 and test.tolist() == list(range(60, 80))
    assert not set(train.tolist()) & set(val.tolist()) and max(train.max(), val.max()) < 60
    kwargs = dm.task_kwargs()
    energies = dm.dataset.energy[train]
    assert kwargs["targets"] == ["energy"] and kwargs["units"] == ["eV"] and kwargs["forces"] is True
    assert kwargs["elements"] == [1, 6, 8] and kwargs["extensive"] == [True]
    assert abs(kwargs["mean"][0] * 21 - energies.mean().item()) < 1e-9
    assert abs(kwargs["std"][0] - energies.std().item()) < 1e-9
    batch = next(iter(DataLoader([dm.dataset[k] for k in range(3)], batch_size=3)))
    assert batch.energy.shape == (3,) and batch.forces.shape == (63, 3) and batch.y.shape == (3, 1)
    # Same seed, same split; too many frames asked for is a clear error.
    again = RMD17DataModule(rmd17_dir, num_train=50, num_val=10, seed=1, download=False)
    again.setup()
    assert again.splits["train"].tolist() == train.tolist()
    with pytest.raises(ValueError, match="training frames"):
        RMD17DataModule(rmd17_dir, download=False).setup()


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="rmd17_ethanol_train_01.npz"):
        RMD17(tmp_path, "ethanol", download=False)
    with pytest.raises(FileNotFoundError, match="download from .* failed"):
        RMD17(tmp_path, "ethanol", download=True, url=(tmp_path / "nowhere.tar.bz2").as_uri())
    with pytest.raises(ValueError, match="unknown rMD17 molecule"):
        RMD17DataModule(tmp_path, molecule="caffeine")


def test_download_cuts_split_01_from_the_official_tarball_layout(rmd17_dir, tmp_path):
    # A tarball laid out like figshare's rmd17.tar.bz2: full trajectories plus split index files.
    train = dict(np.load(split_file(rmd17_dir, "aspirin", "train")))
    test = dict(np.load(split_file(rmd17_dir, "aspirin", "test")))
    order = np.random.RandomState(0).permutation(80)  # frame k of the full file is order[k]
    full = {
        k: train[k] if k == "nuclear_charges" else np.concatenate([train[k], test[k]])[np.argsort(order)] for k in train
    }
    buffer = io.BytesIO()
    np.savez(buffer, **full)
    files = {
        "rmd17/npz_data/rmd17_aspirin.npz": buffer.getvalue(),
        "rmd17/splits/index_train_01.csv": ("index\n" + "".join(f"{i}\n" for i in order[:60])).encode(),
        "rmd17/splits/index_test_01.csv": "".join(f"{i}\n" for i in order[60:]).encode(),
    }
    tarball = tmp_path / "source" / "rmd17.tar.bz2"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:bz2") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    ds = RMD17(tmp_path / "root", "aspirin", download=True, url=tarball.as_uri())
    reference = RMD17(rmd17_dir, "aspirin", download=False)
    assert (tmp_path / "root" / "raw" / "rmd17.tar.bz2").exists()
    torch.testing.assert_close(ds.pos, reference.pos)
    torch.testing.assert_close(ds.energy, reference.energy)
    torch.testing.assert_close(ds.forces, reference.forces)
