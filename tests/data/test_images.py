import gzip

import pytest
import torch

from geomol.data.images import (
    ImageDataset,
    MNISTAffineDataModule,
    affine_digits,
    center_pad,
    load_mnist,
    random_affine_matrices,
    read_idx,
    write_idx,
)


@pytest.fixture
def mnist_root(fixtures_dir):
    return fixtures_dir / "mnist"


def test_fixture_reads_as_mnist(mnist_root):
    images, labels = load_mnist(mnist_root, "train", download=False)
    assert images.shape == (200, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (200,) and labels.dtype == torch.long
    assert set(labels.tolist()) == set(range(10))
    # MNIST's mean intensity is 0.1307 of full scale.
    assert 0.11 < images.double().mean() / 255 < 0.15
    test_images, test_labels = load_mnist(mnist_root, "test", download=False)
    assert test_images.shape == (100, 28, 28) and test_labels.shape == (100,)


def test_idx_round_trip_and_bad_files(tmp_path):
    values = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    write_idx(tmp_path / "x.gz", values)
    assert torch.equal(read_idx(tmp_path / "x.gz"), values)
    with gzip.open(tmp_path / "bad.gz", "wb") as handle:
        handle.write((0x0D03).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\0")
    with pytest.raises(ValueError, match="idx"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_mnist(tmp_path / "nowhere", "train", download=False)
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "validation")


def test_random_affine_matrices_cover_the_affnist_ranges():
    a = random_affine_matrices(2000, torch.Generator().manual_seed(0))
    # A = R(θ)·[[1, s], [0, 1]]·diag(sx, sy) is A's QR decomposition (upper factor with positive diagonal).
    q, r = torch.linalg.qr(a)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    q, r = q * signs[:, None, :], r * signs[:, :, None]
    theta = torch.rad2deg(torch.atan2(q[:, 1, 0], q[:, 0, 0]))
    sx, sy, shear = r[:, 0, 0], r[:, 1, 1], r[:, 0, 1] / r[:, 1, 1]
    for values, low, high in [(theta, -20, 20), (shear, -0.2, 0.2), (sx, 0.8, 1.2), (sy, 0.8, 1.2)]:
        assert low - 1e-9 <= values.min() < low + 0.02 * (high - low)
        assert high - 0.02 * (high - low) < values.max() <= high + 1e-9
    assert torch.equal(a, random_affine_matrices(2000, torch.Generator().manual_seed(0)))


def _moments(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity-weighted centroid [N, 2] and covariance [N, 2, 2] in (x, y) = (column, row)."""
    w = images.double()
    r = torch.arange(images.shape[-1], dtype=torch.float64)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    p = torch.stack((xx, yy), -1)  # [H, W, 2]
    mass = w.sum(dim=(1, 2))
    mean = torch.einsum("nhw,hwi->ni", w, p) / mass[:, None]
    d = p[None] - mean[:, None, None]
    cov = torch.einsum("nhw,nhwi,nhwj->nij", w, d, d) / mass[:, None, None]
    return mean, cov


def test_affine_digits_apply_the_map_and_stay_on_the_canvas(mnist_root):
    images, _ = load_mnist(mnist_root, "test", download=False)
    gen = torch.Generator().manual_seed(3)
    a = random_affine_matrices(len(images), gen)
    out = affine_digits(images, a, gen)
    assert out.shape == (100, 40, 40) and out.dtype == torch.uint8
    # Area scales with det A, so ink does too (bilinear resampling conserves it up to a few %).
    ink_ratio = out.double().sum(dim=(1, 2)) / images.double().sum(dim=(1, 2))
    torch.testing.assert_close(ink_ratio, torch.linalg.det(a), rtol=0.05, atol=0)
    # Second moments transform as A Σ Aᵀ: checks that A (not A⁻¹ or Aᵀ) acts on (column, row).
    _, cov = _moments(center_pad(images))
    _, cov_out = _moments(out)

    def mismatch(m: torch.Tensor) -> torch.Tensor:
        expected = m @ cov @ m.mT
        return torch.linalg.matrix_norm(cov_out - expected) / torch.linalg.matrix_norm(expected)

    assert mismatch(a).max() < 0.06
    assert mismatch(a.mT).mean() > 0.15 and mismatch(torch.linalg.inv(a)).mean() > 0.15
    # Translations spread the digits over the canvas, not only around its centre.
    mean, _ = _moments(out)
    assert mean.std(dim=0).min() > 2.0
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(affine_digits(images, random_affine_matrices(len(images), gen), gen), out)


def test_datamodule_on_fixture(mnist_root):
    dm = MNISTAffineDataModule(root=str(mnist_root), batch_size=16, val_size=50, seed=1, download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (150, 50, 100)
    assert dm.task_kwargs() == {"num_classes": 10}
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 1, 40, 40) and images.dtype == torch.float32 and labels.dtype == torch.long
    assert 0.0 <= images.min() and images.max() <= 1.0
    # Training digits are centred: nothing in the 6-pixel padding band.
    assert images[..., :6, :].max() == 0 and images[..., -6:].max() == 0
    test_images, _ = next(iter(dm.test_dataloader()))
    assert test_images.shape == (16, 1, 40, 40)
    # The affine set is a deterministic function of the seed.
    same = MNISTAffineDataModule(root=str(mnist_root), val_size=50, seed=1, download=False)
    other = MNISTAffineDataModule(root=str(mnist_root), val_size=50, seed=2, download=False)
    same.setup(), other.setup()
    assert torch.equal(same.test_set.images, dm.test_set.images)
    assert not torch.equal(other.test_set.images, dm.test_set.images)
    assert torch.equal(dm.test_centred_set.labels, dm.test_set.labels)
    with pytest.raises(ValueError, match="val_size"):
        MNISTAffineDataModule(root=str(mnist_root), val_size=200, download=False).setup()
    with pytest.raises(ValueError, match="fraction"):
        MNISTAffineDataModule(root=str(mnist_root), val_size=1.5)
    fraction = MNISTAffineDataModule(root=str(mnist_root), val_size=0.1, download=False)
    fraction.setup()
    assert (len(fraction.train_set), len(fraction.val_set)) == (180, 20)


def test_missing_data_without_download(tmp_path):
    dm = MNISTAffineDataModule(root=str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        dm.prepare_data()
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
