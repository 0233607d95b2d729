"""Flow matching for molecules: priors with OT alignment, interpolation schedules, CTMC mask flows,
property conditioning, the Euler sampler (PropMolFlow, Zeng et al. 2025; FlowMol, Dunn & Koes 2024) and
:class:`MoleculeGenerator`, which samples RDKit molecules from a trained checkpoint."""

from .bonds import bonds_from_pairs, pair_bond_types, pair_edge_index, upper_pairs
from .conditioning import METHODS, PropertyConditioning, PropertyEmbedding
from .ctmc import MaskedFlow
from .generator import ConditionStatistics, MoleculeGenerator
from .interpolants import CosineSchedule, LinearSchedule, make_schedule
from .molecule import MolecularFlow, MoleculeState
from .priors import align_prior, center, centered_gaussian, kabsch_rotation, optimal_permutation
from .sampler import AtomCounts, euler_sample, split_molecules

__all__ = [
    "upper_pairs",
    "pair_edge_index",
    "pair_bond_types",
    "bonds_from_pairs",
    "METHODS",
    "PropertyConditioning",
    "PropertyEmbedding",
    "MaskedFlow",
    "LinearSchedule",
    "CosineSchedule",
    "make_schedule",
    "MolecularFlow",
    "MoleculeState",
    "center",
    "centered_gaussian",
    "kabsch_rotation",
    "optimal_permutation",
    "align_prior",
    "AtomCounts",
    "euler_sample",
    "split_molecules",
    "MoleculeGenerator",
    "ConditionStatistics",
]
