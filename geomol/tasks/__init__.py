"""LightningModules: property regression, generation, N-body dynamics (and images)."""

from .callbacks import EMA, ModelCheckpoint, TrainingClock, TrainingCurves
from .generation import GenerationTask
from .image import ImageTask
from .nbody import NBodyTask
from .property import PropertyTask

__all__ = [
    "PropertyTask",
    "GenerationTask",
    "NBodyTask",
    "ImageTask",
    "TrainingCurves",
    "TrainingClock",
    "ModelCheckpoint",
    "EMA",
]
