"""geomol: geometric deep learning for molecules and point clouds.

Layers live in :mod:`geomol.nn` (importable into any PyG model), full networks in
:mod:`geomol.models`, datasets in :mod:`geomol.data`, Lightning tasks in :mod:`geomol.tasks`.
"""

from . import resolvers  # noqa: F401  (the OmegaConf resolvers geomol/conf uses)

__version__ = "0.1.0"
