"""Equivariant and invariant building blocks, usable inside any PyG model (no Lightning here)."""

from .graph import Triplets, edge_vectors, full_graph, radius_graph, triplets
from .radial import BesselBasis, CosineCutoff, GaussianBasis, PolynomialEnvelope

__all__ = [
    "radius_graph",
    "full_graph",
    "triplets",
    "Triplets",
    "edge_vectors",
    "GaussianBasis",
    "BesselBasis",
    "PolynomialEnvelope",
    "CosineCutoff",
]
