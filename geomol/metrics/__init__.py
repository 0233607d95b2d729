"""Chemistry metrics of generated molecules: stability, validity, uniqueness, closed shells, property errors."""

from .properties import predict_properties, property_mae
from .stability import VALENCES, StabilityResult, molecule_stability, stability
from .summary import molecule_metrics
from .validity import canonical_reference, canonical_smiles, closed_shell, novelty, sanitized, uniqueness, validity

__all__ = [
    "VALENCES",
    "StabilityResult",
    "stability",
    "molecule_stability",
    "validity",
    "uniqueness",
    "novelty",
    "canonical_reference",
    "closed_shell",
    "sanitized",
    "canonical_smiles",
    "molecule_metrics",
    "predict_properties",
    "property_mae",
]
