"""Equivariant and invariant building blocks, usable inside any PyG model (no Lightning here)."""

from .cfconv import CFConv, SchNetInteraction, ShiftedSoftplus
from .dimenet import (
    EmbeddingBlock,
    InteractionBlock,
    InteractionPPBlock,
    OutputBlock,
    OutputPPBlock,
    SphericalBasis,
)
from .gaunt import (
    GauntConv,
    GauntCrossProduct,
    GauntManyBody,
    GauntTensorProduct,
    SHLinear,
    SphericalGridTransform,
    irreps_to_sh,
    sh_irreps,
    sh_to_irreps,
)
from .graph import Triplets, edge_vectors, full_graph, radius_graph, triplets
from .gvp import GVP, GVPConv, GVPEdgeUpdate, GVPLayerNorm, GVPPositionUpdate
from .liegroup import GL2, SL2, GroupSampler, LinearGroup2, get_group
from .liegroup_conv import (
    GroupConv,
    GroupLayerNorm,
    GroupRMSNorm,
    LiftingConv,
    SirenKernel,
    pool_group,
    pool_spatial,
)
from .ponita import (
    ConvNextBlock,
    EdgeLiftedSpace,
    FiberBundleConv,
    FiberBundleSpace,
    KernelBasis,
    PointConv,
    PolynomialFeatures,
    PositionSpace,
    distance_invariants,
    fiber_bundle_invariants,
    fibonacci_grid,
    point_invariants,
    ponita_space,
    repulsion_grid,
    spherical_grid,
)
from .radial import BesselBasis, CosineCutoff, GaussianBasis, PolynomialEnvelope
from .triplet_sum import TripletSum

__all__ = [
    # graphs (pure torch)
    "radius_graph",
    "full_graph",
    "triplets",
    "Triplets",
    "edge_vectors",
    # radial bases
    "GaussianBasis",
    "BesselBasis",
    "PolynomialEnvelope",
    "CosineCutoff",
    # SchNet
    "CFConv",
    "SchNetInteraction",
    "ShiftedSoftplus",
    # Gaunt tensor products
    "GauntTensorProduct",
    "GauntCrossProduct",
    "GauntManyBody",
    "GauntConv",
    "SHLinear",
    "SphericalGridTransform",
    "sh_irreps",
    "sh_to_irreps",
    "irreps_to_sh",
    # DimeNet / DimeNet++
    "SphericalBasis",
    "EmbeddingBlock",
    "InteractionBlock",
    "InteractionPPBlock",
    "OutputBlock",
    "OutputPPBlock",
    "TripletSum",
    # PONITA
    "distance_invariants",
    "point_invariants",
    "fiber_bundle_invariants",
    "fibonacci_grid",
    "repulsion_grid",
    "spherical_grid",
    "PolynomialFeatures",
    "KernelBasis",
    "PointConv",
    "FiberBundleConv",
    "ConvNextBlock",
    "PositionSpace",
    "EdgeLiftedSpace",
    "FiberBundleSpace",
    "ponita_space",
    # Lie-group affine convolutions
    "GL2",
    "SL2",
    "LinearGroup2",
    "get_group",
    "GroupSampler",
    "LiftingConv",
    "GroupConv",
    "GroupLayerNorm",
    "GroupRMSNorm",
    "SirenKernel",
    "pool_group",
    "pool_spatial",
    # GVP
    "GVP",
    "GVPConv",
    "GVPLayerNorm",
    "GVPPositionUpdate",
    "GVPEdgeUpdate",
]
