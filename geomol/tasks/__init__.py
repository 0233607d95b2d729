"""LightningModules: property regression, generation, image classification."""

from .callbacks import TrainingCurves
from .property import PropertyTask

__all__ = ["PropertyTask", "TrainingCurves"]
