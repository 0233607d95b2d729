"""geomol's own modules as of an earlier commit, for the "before" rows of a benchmark (bench scripts import
it as ``before``): the code is read with ``git show`` and run next to today's, in the same process.

    old = load("3a2d3f4…", "geomol.nn.gvp", "geomol.models.propmolflow")
    field = old["geomol.models.propmolflow"].PropMolFlow(**kwargs)  # today's weights load into it

Modules are loaded in the order given; while one runs its imports, the earlier ones stand in for today's
(``sys.modules``), so ``from geomol.nn.gvp import GVPConv`` inside the old PropMolFlow gets the old GVP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

from geomol.devices import reuse_freed_memory

ROOT = Path(__file__).resolve().parents[1]


def load(commit: str, *names: str) -> dict[str, types.ModuleType] | None:
    """The modules ``names`` (dotted, under the repository root) at ``commit``; None when git or the commit
    is not available (a tarball, a shallow clone)."""
    modules: dict[str, types.ModuleType] = {}
    saved = {name: sys.modules.get(name) for name in names}
    try:
        for name in names:
            path = name.replace(".", "/") + ".py"
            try:
                source = subprocess.run(
                    ["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
                ).stdout
            except (OSError, subprocess.CalledProcessError):
                return None
            module = types.ModuleType(name)
            module.__file__ = f"{commit[:7]}:{path}"
            sys.modules[name] = module
            exec(compile(source, module.__file__, "exec"), module.__dict__)
            modules[name] = module
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return modules


def default_malloc() -> None:
    """Keep glibc's default malloc settings in this process (the first, "plain" rows of a before/after table)."""
    os.environ["GEOMOL_MALLOC_TUNING"] = "0"


def tuned_malloc() -> None:
    """From now on, the malloc setting geomol's sampler and training step apply (rows ``+malloc``); once per process."""
    if os.environ.get("GEOMOL_MALLOC_TUNING") == "0":
        del os.environ["GEOMOL_MALLOC_TUNING"]
        reuse_freed_memory.cache_clear()
        reuse_freed_memory()
