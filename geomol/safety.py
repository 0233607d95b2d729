"""What a checkpoint may make geomol build: an allow-list of classes and plain-data arguments.

``torch.load(weights_only=True)`` keeps pickled code out of a checkpoint, but a geomol checkpoint
also stores *configs* (the network, optimizer and scheduler as ``_target_`` plus arguments) that the
task hands to Hydra's ``instantiate`` when it is rebuilt. Hydra follows any ``_target_``, nested at
any depth (``_args_``, lists, dict values), so without a check a checkpoint could name
``sympy.sympify`` or ``builtins.eval`` with a string argument and run code.

:func:`check_checkpoint_config` walks every hyper-parameter of a checkpoint before anything is
constructed. It accepts only

* ``_target_`` strings naming a class or function geomol registers as buildable (its networks, the
  torch optimizers and LR schedulers, geomol's schedules; :func:`register_buildable` adds more), and
* plain data everywhere else: ``None``, bools, numbers, strings (without OmegaConf ``${…}``
  interpolations, which could decode into new targets), and lists/tuples/dicts of those with string
  keys.

Anything else raises :class:`UnsafeCheckpointError` (a ``ValueError``: the CLIs print it as one line
and exit with code 2) naming the offending target and where it sits. Configs the *user* writes on the
command line are not checked here: naming one's own ``nn.Module`` in ``model.net._target_`` is a
feature; ``trust_checkpoint=True`` extends that trust to a checkpoint, and is dangerous for files
from anyone else.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "UnsafeCheckpointError",
    "register_buildable",
    "buildable_names",
    "check_checkpoint_config",
    "task_class",
    "TASK_CLASSES",
]


class UnsafeCheckpointError(ValueError):
    """A checkpoint names something geomol does not build, or holds non-plain data in a config."""


# Dotted names of what geomol builds from a checkpoint's configs. Each entry is imported from
# geomol or torch itself (never from the checkpoint), and both the public path and the defining
# module's path of a class are accepted, since Hydra configs use either.
_BUILDABLE_SOURCES: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("geomol.models", None),  # every network geomol.models exports (its __all__)
    ("geomol.tasks.schedules", ("warmup_exponential_decay", "cosine_with_warmup", "cosine_times_warmup")),
    ("torch.optim", ("Adam", "AdamW", "SGD", "RAdam", "NAdam", "Adamax", "Adagrad", "Adadelta", "RMSprop")),
    (
        "torch.optim.lr_scheduler",
        (
            "ReduceLROnPlateau",
            "CosineAnnealingLR",
            "CosineAnnealingWarmRestarts",
            "StepLR",
            "MultiStepLR",
            "ExponentialLR",
            "LinearLR",
            "ConstantLR",
            "OneCycleLR",
            "PolynomialLR",
            "LambdaLR",
        ),
    ),  # fmt: skip
)
_EXTRA: set[str] = set()
_NAMES: frozenset[str] | None = None

# The task classes a checkpoint may name (``TASK_KEY``), by the name geomol writes.
TASK_CLASSES = (
    "geomol.tasks.property.PropertyTask",
    "geomol.tasks.generation.GenerationTask",
    "geomol.tasks.nbody.NBodyTask",
    "geomol.tasks.image.ImageTask",
)

# Keys Hydra reads in a config node, with the type each must have.
_HYDRA_KEYS = {"_partial_": bool, "_recursive_": bool, "_convert_": str}


def _names_of(obj: Any) -> set[str]:
    return {f"{obj.__module__}.{obj.__qualname__}"}


def register_buildable(*objects: Any) -> None:
    """Allow checkpoints to name these classes or functions (e.g. your own network) in ``_target_``.

    Call it in your own code before loading; a checkpoint can never extend the list itself.
    """
    global _NAMES
    for obj in objects:
        if not callable(obj) or not hasattr(obj, "__qualname__"):
            raise TypeError(f"register_buildable takes classes or functions, got {obj!r}")
        _EXTRA.update(_names_of(obj))
    _NAMES = None


def buildable_names() -> frozenset[str]:
    """Every dotted ``_target_`` name a checkpoint may use."""
    global _NAMES
    if _NAMES is None:
        names = set(_EXTRA)
        for module_name, attrs in _BUILDABLE_SOURCES:
            module = importlib.import_module(module_name)
            for attr in module.__all__ if attrs is None else attrs:
                obj = getattr(module, attr)
                names.add(f"{module_name}.{attr}")
                names.update(_names_of(obj))
        _NAMES = frozenset(names)
    return _NAMES


def _refuse(source: str, target: Any, where: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"unsafe checkpoint: {source} names {target!s} (at {where}), which geomol does not build "
        "(load it with trust_checkpoint=true only if you trust whoever wrote it)"
    )


def _walk(value: Any, where: str, source: str, allowed: frozenset[str]) -> None:
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        return
    if isinstance(value, str):
        if "${" in value:
            raise UnsafeCheckpointError(
                f"unsafe checkpoint: {source} holds an interpolation {value!r} (at {where}); "
                "geomol stores only resolved values"
            )
        return
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise UnsafeCheckpointError(f"unsafe checkpoint: {source} has a non-string key {key!r} at {where}")
        if "_target_" in value:
            target = value["_target_"]
            if not isinstance(target, str) or target not in allowed:
                raise _refuse(source, target if isinstance(target, str) else repr(target), f"{where}._target_")
        for key, item in value.items():
            if key in _HYDRA_KEYS:
                if not isinstance(item, _HYDRA_KEYS[key]):
                    raise UnsafeCheckpointError(
                        f"unsafe checkpoint: {source} sets {where}.{key} to {item!r}, not a {_HYDRA_KEYS[key].__name__}"
                    )
                continue
            _walk(item, f"{where}.{key}" if where else key, source, allowed)
        return
    if isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            _walk(item, f"{where}[{k}]", source, allowed)
        return
    raise UnsafeCheckpointError(
        f"unsafe checkpoint: {source} holds a {type(value).__name__} at {where}, where only plain data "
        "(numbers, strings, bools, lists, dicts) may be"
    )


def check_checkpoint_config(hyper_parameters: Mapping, source: str = "checkpoint") -> None:
    """Raise :class:`UnsafeCheckpointError` unless every config in ``hyper_parameters`` is safe to build.

    Checked recursively: every ``_target_`` (in the network, optimizer and scheduler configs, in
    ``_args_`` and in lists, at any depth) must be in :func:`buildable_names`, and every other value
    must be plain data.
    """
    if not isinstance(hyper_parameters, Mapping):
        raise UnsafeCheckpointError(f"unsafe checkpoint: {source} stores its hyper-parameters as a "
                                    f"{type(hyper_parameters).__name__}, not a dict")  # fmt: skip
    _walk(hyper_parameters, "", source, buildable_names())


def task_class(name: Any, source: str = "checkpoint", trust: bool = False) -> type:
    """The task class a checkpoint names: one of :data:`TASK_CLASSES`, or anything with ``trust``."""
    if not isinstance(name, str) or not name:
        raise UnsafeCheckpointError(f"unsafe checkpoint: {source} names the task {name!r}, which geomol does not build")
    if name not in TASK_CLASSES and not trust:
        raise UnsafeCheckpointError(
            f"unsafe checkpoint: {source} names {name} as its task, which geomol does not build "
            "(load it with trust_checkpoint=true only if you trust whoever wrote it)"
        )
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"checkpoint {source} was written by {name}, which this geomol does not have") from None


def iter_targets(config: Any) -> Iterable[str]:
    """Every ``_target_`` string in a nested config (for messages and tests)."""
    if isinstance(config, Mapping):
        if isinstance(config.get("_target_"), str):
            yield config["_target_"]
        for item in config.values():
            yield from iter_targets(item)
    elif isinstance(config, (list, tuple)):
        for item in config:
            yield from iter_targets(item)
