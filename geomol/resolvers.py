"""OmegaConf resolvers that geomol's configs (``geomol/conf``) use; registered when geomol is imported.

``${geomol.if_data:NAME,THEN,OTHERWISE}`` is THEN when the data module of the composed config
(``data._target_``) is the class NAME or derives from it, else OTHERWISE. A model config uses it where
one kind of data needs another task or network (``model/ponita.yaml``: on N-body data PONITA predicts
positions), so that ``model=ponita data=nbody`` needs no config of the pair. It reads the data's
``_target_`` only: data configs never interpolate the model, so the two cannot depend on each other.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["data_module_names"]


def data_module_names(root: DictConfig) -> set[str]:
    """Names of the composed config's data module class and its bases (just the last part of
    ``data._target_`` where the class cannot be imported; empty without a data config)."""
    target = OmegaConf.select(root, "data._target_", default=None)
    if not isinstance(target, str):
        return set()
    from hydra.utils import get_class

    try:
        return {cls.__name__ for cls in get_class(target).__mro__}
    except Exception:  # an unknown target fails with its own one-line error when the data module is built
        return {target.rsplit(".", 1)[-1]}


def _if_data(name: str, then: Any, otherwise: Any, *, _root_: DictConfig) -> Any:
    return then if name in data_module_names(_root_) else otherwise


if not OmegaConf.has_resolver("geomol.if_data"):
    OmegaConf.register_new_resolver("geomol.if_data", _if_data)
