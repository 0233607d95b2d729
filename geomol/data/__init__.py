"""Datasets and data modules producing ``torch_geometric.data.Data``."""

from .datamodule import GraphDataModule, QM9DataModule
from .qm9 import QM9, TARGETS, UNITS

__all__ = ["QM9", "TARGETS", "UNITS", "GraphDataModule", "QM9DataModule"]
