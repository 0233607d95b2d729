"""MNIST from its original idx files, and an affNIST-style affine test set generated from it.

Training uses centred MNIST digits padded to a 40×40 canvas (like affNIST's "just centred" set). The
test set is **affNIST-style, not the original affNIST**: every MNIST test digit gets a random affine
map drawn from affNIST's published ranges — rotation ±20°, shear ±0.2, horizontal and vertical scale
0.8–1.2 — and a random integer translation that keeps the whole digit inside the 40×40 canvas. The
maps come from a seeded generator, so the set is identical on every machine for a given seed. The
composition order (rotation · shear · scale), the bilinear resampling and the translation rule are
ours, so numbers on this set are comparable between models here but not to published affNIST tables.
"""

from __future__ import annotations

import gzip
import math
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .datamodule import EpochShuffleSampler

__all__ = [
    "MNIST_FILES",
    "read_idx",
    "write_idx",
    "load_mnist",
    "center_pad",
    "random_affine_matrices",
    "affine_digits",
    "ImageDataset",
    "MNISTAffineDataModule",
]

MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
# Mirrors of LeCun's original files (his site now refuses scripted downloads).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# idx magic numbers: unsigned bytes (0x08) with 1 or 3 dimensions.
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}


def read_idx(path: str | Path) -> Tensor:
    """Read a gzipped idx file (MNIST's format) into a uint8 tensor of its stored shape."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = data[3]
    if ndim not in _IDX_MAGIC or magic != _IDX_MAGIC[ndim]:
        raise ValueError(f"{path} is not an unsigned-byte idx file (magic number {magic:#010x})")
    shape = [int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(shape):
        raise ValueError(f"{path} holds {body.size} values but its header says {shape}")
    return torch.from_numpy(body.copy()).view(*shape)


def write_idx(path: str | Path, values: Tensor) -> None:
    """Write a uint8 tensor with 1 or 3 dimensions as a gzipped idx file (to cut fixtures from MNIST)."""
    if values.dtype != torch.uint8 or values.dim() not in _IDX_MAGIC:
        raise ValueError(
            f"idx files here hold uint8 tensors with 1 or 3 dimensions, got {values.dtype} {values.dim()}D"
        )
    header = _IDX_MAGIC[values.dim()].to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in values.shape)
    # mtime=0 keeps the bytes reproducible.
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(header + values.contiguous().numpy().tobytes())


def _fetch(root: Path, name: str) -> None:
    errors = []
    for mirror in MNIST_MIRRORS:
        try:
            with urllib.request.urlopen(mirror + name, timeout=30) as response, open(root / name, "wb") as out:
                shutil.copyfileobj(response, out)
            return
        except OSError as err:  # URLError and socket timeouts are OSErrors
            errors.append(f"{mirror}: {err}")
            (root / name).unlink(missing_ok=True)
    raise FileNotFoundError(
        f"MNIST file {root / name} is missing and could not be downloaded ({'; '.join(errors)}); put the four "
        f"original MNIST .gz files in {root} or point data.root at a folder that has them."
    )


def load_mnist(root: str | Path, split: str = "train", download: bool = True) -> tuple[Tensor, Tensor]:
    """MNIST ``split`` ("train" or "test") from ``root``: images uint8 ``[N, 28, 28]``, labels int64 ``[N]``.

    Missing files are downloaded when ``download`` is True and the network allows it.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    paths = {}
    for kind in ("images", "labels"):
        path = root / MNIST_FILES[(split, kind)]
        if not path.exists():
            if not download:
                raise FileNotFoundError(
                    f"MNIST file {path} is missing; put the four original MNIST .gz files in {root} or allow download."
                )
            root.mkdir(parents=True, exist_ok=True)
            _fetch(root, path.name)
        paths[kind] = path
    images, labels = read_idx(paths["images"]), read_idx(paths["labels"]).long()
    if images.dim() != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{paths['images']} and {paths['labels']} do not match: {tuple(images.shape)} images")
    return images, labels


def center_pad(images: Tensor, size: int = 40) -> Tensor:
    """Pad ``[N, h, w]`` images with zeros to ``[N, size, size]``, content centred."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"images of {h}×{w} do not fit a {size}×{size} canvas")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


def random_affine_matrices(
    num: int,
    generator: torch.Generator,
    max_rotation: float = 20.0,
    max_shear: float = 0.2,
    scale_range: tuple[float, float] = (0.8, 1.2),
) -> Tensor:
    """``[num, 2, 2]`` maps ``R(θ)·[[1, s], [0, 1]]·diag(sx, sy)`` acting on (x, y) = (column, row).

    ``θ ~ U(±max_rotation°)``, ``s ~ U(±max_shear)``, ``sx, sy ~ U(scale_range)``, all independent.
    """
    u = torch.rand(num, 4, generator=generator, dtype=torch.float64)
    theta = math.radians(max_rotation) * (2 * u[:, 0] - 1)
    shear = max_shear * (2 * u[:, 1] - 1)
    low, high = scale_range
    sx, sy = low + (high - low) * u[:, 2], low + (high - low) * u[:, 3]
    c, s = torch.cos(theta), torch.sin(theta)
    rotation = torch.stack((torch.stack((c, -s), -1), torch.stack((s, c), -1)), -2)
    zero, one = torch.zeros_like(shear), torch.ones_like(shear)
    shear_m = torch.stack((torch.stack((one, shear), -1), torch.stack((zero, one), -1)), -2)
    scale = torch.diag_embed(torch.stack((sx, sy), -1))
    return rotation @ shear_m @ scale


def affine_digits(images: Tensor, matrices: Tensor, generator: torch.Generator, size: int = 40) -> Tensor:
    """Warp uint8 digits ``[N, h, w]`` by ``matrices [N, 2, 2]`` about the canvas centre, then translate.

    The warped digit ``f(A⁻¹ p)`` is resampled bilinearly on a ``size×size`` canvas; an integer shift,
    uniform among those that keep every lit pixel on the canvas, places it. Returns uint8 ``[N, size, size]``.
    """
    canvas = center_pad(images, size).unsqueeze(1).double() / 255.0
    # affine_grid maps output coordinates to input ones, i.e. takes A⁻¹ (square canvas: isotropic units).
    theta = torch.cat((torch.linalg.inv(matrices), torch.zeros(len(matrices), 2, 1, dtype=matrices.dtype)), dim=2)
    grid = F.affine_grid(theta, list(canvas.shape), align_corners=False)
    warped = F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped = (warped.squeeze(1) * 255.0).round().clamp(0, 255).to(torch.uint8)
    lit_cols, lit_rows = warped.amax(dim=1) > 0, warped.amax(dim=2) > 0  # [N, size]
    index = torch.arange(size)

    def shift_range(lit: Tensor) -> tuple[Tensor, Tensor]:
        first = torch.where(lit, index, size).amin(dim=1)
        last = torch.where(lit, index, -1).amax(dim=1)
        empty = first > last
        return torch.where(empty, 0, -first), torch.where(empty, 0, size - 1 - last)

    out = torch.empty_like(warped)
    (dx_lo, dx_hi), (dy_lo, dy_hi) = shift_range(lit_cols), shift_range(lit_rows)
    u = torch.rand(len(warped), 2, generator=generator, dtype=torch.float64)
    dx = dx_lo + (u[:, 0] * (dx_hi - dx_lo + 1)).long().clamp(max=dx_hi - dx_lo)
    dy = dy_lo + (u[:, 1] * (dy_hi - dy_lo + 1)).long().clamp(max=dy_hi - dy_lo)
    for k in range(len(warped)):
        # The shift keeps the lit pixels on the canvas, so roll only wraps zeros around.
        out[k] = torch.roll(warped[k], (int(dy[k]), int(dx[k])), dims=(0, 1))
    return out


class ImageDataset(Dataset):
    """uint8 images ``[N, H, W]`` and labels, served as float ``[1, H, W]`` in [0, 1] (zero background).

    Args:
        images: uint8 images.
        labels: int64 class labels.
        size: canvas size; smaller images are centred and zero-padded on the fly.
    """

    def __init__(self, images: Tensor, labels: Tensor, size: int | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]
        if self.size is not None:
            image = center_pad(image, self.size)
        return image.unsqueeze(0).float() / 255.0, self.labels[index]


class MNISTAffineDataModule(pl.LightningDataModule):
    """Train on centred MNIST (40×40), test on the affNIST-style affine set built from MNIST test digits.

    The validation split is held out from the training digits and stays centred, so no affine
    information reaches training or model selection.

    Args:
        root: folder with the four original MNIST ``.gz`` files (downloaded there when missing).
        batch_size: batch size of every loader.
        num_workers: DataLoader workers.
        seed: seeds the train/val split, the shuffling and the affine test maps.
        canvas_size: side of the square canvas (affNIST: 40).
        val_size: training digits held out for validation; a float in (0, 1) is a fraction of them
            (the default 1/12 is 5 000 of MNIST's 60 000).
        train_size: use only this many of the remaining training digits (None: all).
        test_size: use only the first this many test digits (None: all 10 000).
        download: fetch missing files from the MNIST mirrors.
        max_rotation, max_shear, scale_range: ranges of the test-set affine maps.
    """

    def __init__(
        self,
        root: str = "data/mnist",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        canvas_size: int = 40,
        val_size: float = 1 / 12,
        train_size: int | None = None,
        test_size: int | None = None,
        download: bool = True,
        max_rotation: float = 20.0,
        max_shear: float = 0.2,
        scale_range: tuple[float, float] = (0.8, 1.2),
    ) -> None:
        super().__init__()
        if val_size <= 0 or (isinstance(val_size, float) and val_size >= 1):
            raise ValueError(f"val_size must be a count >= 1 or a fraction in (0, 1), got {val_size}")
        self.root, self.batch_size, self.num_workers, self.seed = Path(root), batch_size, num_workers, seed
        self.canvas_size, self.val_size, self.train_size, self.test_size = canvas_size, val_size, train_size, test_size
        self.download = download
        self.affine_ranges = dict(max_rotation=max_rotation, max_shear=max_shear, scale_range=tuple(scale_range))
        self.train_set = self.val_set = self.test_set = self.test_centred_set = None

    def prepare_data(self) -> None:
        for split in ("train", "test"):
            load_mnist(self.root, split, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = load_mnist(self.root, "train", self.download)
        num_val = max(1, round(self.val_size * len(labels))) if isinstance(self.val_size, float) else self.val_size
        if num_val >= len(labels):
            raise ValueError(f"val_size={self.val_size} leaves no training digits out of {len(labels)}")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = order[:num_val], order[num_val:]
        if self.train_size is not None:
            train_idx = train_idx[: self.train_size]
        size = self.canvas_size
        self.train_set = ImageDataset(images[train_idx], labels[train_idx], size)
        self.val_set = ImageDataset(images[val_idx], labels[val_idx], size)

        images, labels = load_mnist(self.root, "test", self.download)
        if self.test_size is not None:
            images, labels = images[: self.test_size], labels[: self.test_size]
        generator = torch.Generator().manual_seed(self.seed + 1)
        matrices = random_affine_matrices(len(labels), generator, **self.affine_ranges)
        self.test_set = ImageDataset(affine_digits(images, matrices, generator, size), labels)
        self.test_centred_set = ImageDataset(images, labels, size)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            # The order depends on (seed, epoch) only, so a resumed run sees the same batches.
            sampler=EpochShuffleSampler(len(dataset), self.seed) if shuffle else None,
            # A last training batch of one image would break BatchNorm (AffineCNN's default head).
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The affNIST-style affine test set (``test_centred_set`` holds the same digits centred)."""
        return self._loader(self.test_set, shuffle=False)

    def task_kwargs(self) -> dict:
        return {"num_classes": 10}
