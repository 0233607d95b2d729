"""geomol: geometric deep learning for molecules and point clouds.

Layers live in :mod:`geomol.nn` (importable into any PyG model), full networks in
:mod:`geomol.models`, datasets in :mod:`geomol.data`, Lightning tasks in :mod:`geomol.tasks`.
"""

__version__ = "0.1.0"
