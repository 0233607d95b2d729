"""Datasets and data modules producing ``torch_geometric.data.Data``."""

from .datamodule import GraphDataModule, QM9DataModule, TargetStats
from .generation import GenerationStats, QM9GenerationDataModule, ood_target
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
    "TargetStats",
    "GenerationStats",
    "ood_target",
    "load_mnist",
    "affine_digits",
]
