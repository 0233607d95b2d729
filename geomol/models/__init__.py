"""Complete networks, built only from :mod:`geomol.nn` pieces."""

from .schnet import SchNet

__all__ = ["SchNet"]
