"""Datasets and data modules producing ``torch_geometric.data.Data``."""

from .datamodule import GraphDataModule, QM9DataModule
from .generation import QM9GenerationDataModule
from .images import MNISTAffineDataModule, affine_digits, load_mnist
from .nbody import NBody, NBodyDataModule
from .qm9 import QM9, TARGETS, UNITS
from .rmd17 import RMD17, RMD17DataModule

__all__ = [
    "QM9",
    "TARGETS",
    "UNITS",
    "RMD17",
    "NBody",
    "GraphDataModule",
    "QM9DataModule",
    "QM9GenerationDataModule",
    "RMD17DataModule",
    "NBodyDataModule",
    "MNISTAffineDataModule",
    "load_mnist",
    "affine_digits",
]
