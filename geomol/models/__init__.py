"""Complete networks, built only from :mod:`geomol.nn` pieces."""

from .ponita import Ponita, PonitaDynamics, PonitaNet
from .propmolflow import PropMolFlow
from .regressor import GVPRegressor
from .schnet import SchNet

__all__ = ["SchNet", "Ponita", "PonitaNet", "PonitaDynamics", "PropMolFlow", "GVPRegressor"]
