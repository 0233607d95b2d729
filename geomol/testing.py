"""Symmetry checks for geomol layers and for users' own models.

Each helper applies random group elements to the input, runs the function again and compares with
the transformed output of the untouched input. Run them in float64: float32 round-off hides real
symmetry breaking at the 1e-6 level.

Example::

    from geomol.testing import assert_equivariant
    assert_equivariant(lambda pos: model(z, pos, batch), pos, output="scalar")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "random_rotation",
    "sh_rotation",
    "irreps_rotation",
    "assert_equivariant",
    "assert_permutation_equivariant",
]

# How an output transforms under x -> x @ R.T + t: given (output, R, t) return the expected output.
OutputRule = Callable[[Tensor, Tensor, Tensor], Tensor]


def random_rotation(
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
    reflection: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """A uniformly random orthogonal 3×3 matrix (det +1, or -1 with ``reflection=True``).

    QR of a Gaussian matrix with the signs of R's diagonal fixed gives the Haar measure on O(3).
    """
    a = torch.randn(3, 3, dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if reflection:
        q = -q
    return q.to(dtype=dtype, device=device)


def sh_rotation(rotation: Tensor, lmax: int) -> Tensor:
    """Block-diagonal matrix ``D`` with ``Y(R x) = D Y(x)`` for e3nn's real SH up to ``lmax``.

    Parity is included: degree ``l`` picks up ``det(R)^l`` as the spherical harmonics do. Computed
    by least squares from the harmonics themselves, which is exact to ~1e-13 in float64 (e3nn's
    ``D_from_matrix`` goes through Euler angles and is only good to ~1e-7).
    """
    from e3nn import o3

    R = rotation.detach().to(torch.float64).cpu()
    ls = list(range(lmax + 1))
    points = torch.randn(4 * (lmax + 1) ** 2 + 16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    before = o3.spherical_harmonics(ls, points, normalize=True)
    after = o3.spherical_harmonics(ls, points @ R.T, normalize=True)
    D = torch.linalg.lstsq(before, after).solution.T
    mask = torch.block_diag(*(torch.ones(2 * l + 1, 2 * l + 1, dtype=torch.float64) for l in ls))
    return (D * mask).to(dtype=rotation.dtype, device=rotation.device)


def irreps_rotation(rotation: Tensor, irreps: str) -> Tensor:
    """Representation matrix of e3nn ``irreps`` (e.g. ``"8x0e+4x1o"``) for an O(3) matrix, float64-exact."""
    from e3nn import o3

    irreps = o3.Irreps(irreps)
    lmax = max((ir.l for _, ir in irreps), default=0)
    D_sh = sh_rotation(rotation.to(torch.float64), lmax)
    improper = bool(torch.det(rotation.to(torch.float64)) < 0)
    blocks = []
    for mul, ir in irreps:
        start = ir.l**2
        block = D_sh[start : start + 2 * ir.l + 1, start : start + 2 * ir.l + 1]
        if improper:  # the SH block carries (-1)^l; an irrep of parity p needs p instead
            block = block * ((-1) ** ir.l) * ir.p
        blocks += [block] * mul
    return torch.block_diag(*blocks).to(dtype=rotation.dtype, device=rotation.device)


def _rule(output: str | OutputRule) -> OutputRule:
    if callable(output):
        return output
    if output == "scalar":
        return lambda y, R, t: y
    if output == "vector":
        return lambda y, R, t: y @ R.T
    if output == "position":
        return lambda y, R, t: y @ R.T + t
    if output == "pseudovector":
        return lambda y, R, t: torch.det(R) * (y @ R.T)
    if output.startswith("sh:"):
        lmax = int(output[3:])
        # Features [..., (lmax+1)^2] in the last dimension.
        return lambda y, R, t: y @ sh_rotation(R, lmax).T
    if output.startswith("irreps:"):
        irreps = output[len("irreps:") :]
        return lambda y, R, t: y @ irreps_rotation(R, irreps).T
    raise ValueError(
        f"unknown output kind {output!r}; use 'scalar', 'vector', 'position', 'pseudovector', "
        "'sh:<lmax>', 'irreps:<irreps>' or a callable (y, R, t) -> y'"
    )


def _as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def assert_equivariant(
    fn: Callable[[Tensor], Tensor | Sequence[Tensor]],
    pos: Tensor,
    output: str | OutputRule | Sequence[str | OutputRule] = "scalar",
    *,
    reflections: bool = True,
    translations: bool = True,
    trials: int = 3,
    atol: float | None = None,
    rtol: float | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Assert ``fn(pos @ R.T + t) == rule(fn(pos), R, t)`` for random rotations ``R`` and shifts ``t``.

    Args:
        fn: function of the positions ``[N, 3]``; may return one tensor or a tuple.
        pos: positions ``[N, 3]``.
        output: how each output transforms: ``"scalar"`` (invariant), ``"vector"`` (rotates,
            ignores shifts), ``"position"`` (rotates and shifts), ``"pseudovector"`` (axial),
            ``"sh:<lmax>"`` (real SH coefficients in the last dim), ``"irreps:<irreps>"`` (e3nn layout
            in the last dim), or a callable ``(y, R, t) -> y'``. One entry per output for tuples.
        reflections: also test improper rotations (``det R = -1``). Pass False for SE(3)-only
            models (e.g. ones built on cross products).
        translations: also shift the input.
        trials: random group elements tried.
        atol, rtol: tolerances; defaults depend on dtype (1e-9 for float64, 1e-4 for float32).
    """
    base = _as_tuple(fn(pos))
    rules = [_rule(o) for o in (_as_tuple(output) if not isinstance(output, str) else (output,) * len(base))]
    if len(rules) != len(base):
        raise ValueError(f"fn returned {len(base)} outputs but {len(rules)} output kinds were given")
    tol = dict(atol=atol, rtol=rtol)
    if atol is None or rtol is None:
        small = pos.dtype == torch.float64
        tol = dict(atol=1e-9 if small else 1e-4, rtol=1e-7 if small else 1e-4)
    cases = [False, True] if reflections else [False]
    for trial in range(trials):
        for reflect in cases:
            R = random_rotation(pos.dtype, generator, reflection=reflect, device=pos.device)
            t = (
                torch.randn(3, dtype=pos.dtype, generator=generator).to(pos.device)
                if translations
                else torch.zeros(3, dtype=pos.dtype, device=pos.device)
            )
            moved = _as_tuple(fn(pos @ R.T + t))
            for k, (y, y_moved, rule) in enumerate(zip(base, moved, rules)):
                expected = rule(y, R, t)
                try:
                    torch.testing.assert_close(y_moved, expected, **tol)
                except AssertionError as err:
                    kind = "reflection" if reflect else "rotation"
                    raise AssertionError(
                        f"output {k} is not equivariant under a random {kind} (trial {trial}):\n{err}"
                    ) from None


def assert_permutation_equivariant(
    fn: Callable[[Tensor], Tensor | Sequence[Tensor]],
    num_nodes: int,
    node_outputs: Sequence[bool] | bool = False,
    *,
    generator: torch.Generator | None = None,
    atol: float = 1e-9,
    rtol: float = 1e-7,
) -> None:
    """Assert that relabelling the nodes permutes node outputs and leaves graph outputs unchanged.

    Args:
        fn: ``fn(perm)`` must run the model on inputs whose nodes are reordered by ``perm``
            (``x[perm]``, with ``edge_index`` remapped if the caller builds one); ``perm=None`` is
            the identity.
        num_nodes: number of nodes.
        node_outputs: for each output, whether it is per node (``[N, …]``, gets permuted) or per graph.
    """
    perm = torch.randperm(num_nodes, generator=generator)
    base = _as_tuple(fn(None))
    moved = _as_tuple(fn(perm))
    flags = (node_outputs,) * len(base) if isinstance(node_outputs, bool) else tuple(node_outputs)
    for k, (y, y_moved, is_node) in enumerate(zip(base, moved, flags)):
        expected = y[perm.to(y.device)] if is_node else y
        try:
            torch.testing.assert_close(y_moved, expected, atol=atol, rtol=rtol)
        except AssertionError as err:
            raise AssertionError(f"output {k} is not permutation-equivariant:\n{err}") from None
