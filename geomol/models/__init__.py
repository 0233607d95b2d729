"""Complete networks, built only from :mod:`geomol.nn` pieces."""

from .affine_cnn import AffineCNN, PlainCNN
from .dimenet import DimeNet, DimeNetPlusPlus
from .gaunt_net import GauntNet
from .ponita import Ponita, PonitaDynamics, PonitaNet
from .propmolflow import PropMolFlow
from .regressor import GVPRegressor
from .schnet import SchNet

__all__ = [
    "SchNet",
    "DimeNet",
    "DimeNetPlusPlus",
    "GauntNet",
    "Ponita",
    "PonitaNet",
    "PonitaDynamics",
    "PropMolFlow",
    "GVPRegressor",
    "AffineCNN",
    "PlainCNN",
]
