"""Position prior of the flow: a centred Gaussian, aligned to each data molecule before interpolation.

Equivariant OT flow matching (Klein et al. 2023, "Equivariant flow matching", Sec. 4; Song et al.
2023, "Equivariant flow matching with hybrid probability transport") pairs each prior sample with its
data molecule along the cheapest path: the atoms of the noise are permuted onto the atoms of the
molecule by a minimum-cost assignment (Hungarian algorithm on squared distances) and the noise is
then rotated onto the molecule by the Kabsch algorithm. Straighter conditional paths make the
marginal vector field easier to learn and to integrate.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch_geometric.utils import scatter

__all__ = ["center", "centered_gaussian", "kabsch_rotation", "optimal_permutation", "align_prior"]


def _num_graphs(batch: Tensor) -> int:
    return int(batch.max()) + 1 if batch.numel() else 0


def center(pos: Tensor, batch: Tensor) -> Tensor:
    """Positions with each graph's centroid removed.

    Shapes:
        pos ``[N, 3]``, batch ``[N]`` -> ``[N, 3]``
    """
    mean = scatter(pos, batch, 0, dim_size=_num_graphs(batch), reduce="mean")
    return pos - mean[batch]


def centered_gaussian(
    batch: Tensor,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Isotropic Gaussian positions projected onto the zero-centroid subspace of each graph.

    Shapes:
        batch ``[N]`` -> ``[N, 3]``
    """
    noise = torch.randn(batch.numel(), 3, generator=generator, dtype=dtype, device=batch.device)
    return center(noise * std, batch)


def kabsch_rotation(x: Tensor, y: Tensor, batch: Tensor) -> Tensor:
    r"""Proper rotation ``R_g`` minimising ``Σ_i |R_g x_i - y_i|²`` over each graph (Kabsch 1976).

    With ``H = Σ_i x_i y_iᵀ = U S Vᵀ``, ``R = V diag(1, 1, d) Uᵀ`` and ``d = sign det(V Uᵀ)``: the
    sign flip keeps ``det R = +1`` (without it the "rotation" can be a reflection). Inputs should
    be centred; the result is applied as ``x @ R[batch].transpose(-1, -2)``.

    Shapes:
        x ``[N, 3]``, y ``[N, 3]``, batch ``[N]`` -> ``[B, 3, 3]``
    """
    if x.shape != y.shape or x.dim() != 2 or x.size(1) != 3:
        raise ValueError(f"x and y must both have shape [N, 3], got {tuple(x.shape)} and {tuple(y.shape)}")
    cov = scatter(x.unsqueeze(-1) * y.unsqueeze(-2), batch, 0, dim_size=_num_graphs(batch), reduce="sum")
    u, _, vh = torch.linalg.svd(cov.double())
    d = torch.sign(torch.linalg.det(vh.transpose(-1, -2) @ u.transpose(-1, -2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    flip = torch.ones(cov.size(0), 3, dtype=torch.float64, device=cov.device)
    flip[:, 2] = d
    rot = vh.transpose(-1, -2) @ (flip.unsqueeze(-1) * u.transpose(-1, -2))
    return rot.to(x.dtype)


def optimal_permutation(x: Tensor, y: Tensor, batch: Tensor, types: Tensor | None = None) -> Tensor:
    """Index ``perm`` such that ``x[perm]`` is matched atom by atom to ``y`` at minimum squared distance.

    The assignment never crosses graphs, nor element types when ``types`` is given (for priors whose
    atoms already carry a type). Solved per group with :func:`scipy.optimize.linear_sum_assignment`.

    Shapes:
        x ``[N, 3]``, y ``[N, 3]``, batch ``[N]``, types ``[N]`` -> perm ``[N]`` long
    """
    groups = batch if types is None else batch * (int(types.max()) + 1) + types
    groups = groups.cpu().numpy()
    xs, ys = x.detach().cpu().double().numpy(), y.detach().cpu().double().numpy()
    perm = np.arange(len(groups))
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    for members in np.split(order, bounds):
        if members.size < 2:
            continue
        cost = ((ys[members, None, :] - xs[None, members, :]) ** 2).sum(-1)  # [target, source]
        rows, cols = linear_sum_assignment(cost)
        perm[members[rows]] = members[cols]
    return torch.as_tensor(perm, dtype=torch.long, device=x.device)


def align_prior(
    prior: Tensor,
    target: Tensor,
    batch: Tensor,
    types: Tensor | None = None,
    permute: bool = True,
    rotate: bool = True,
) -> Tensor:
    """Prior positions permuted (Hungarian) and then rotated (Kabsch) onto centred target positions.

    Args:
        prior: prior sample, centred per graph.
        target: data positions, centred per graph.
        batch: graph index of each atom.
        types: element of each atom; the permutation then only swaps atoms of the same element.
        permute: solve the assignment.
        rotate: apply the Kabsch rotation after the permutation.

    Shapes:
        prior ``[N, 3]``, target ``[N, 3]``, batch ``[N]`` -> ``[N, 3]``
    """
    if prior.shape != target.shape:
        raise ValueError(
            f"prior and target must have the same shape, got {tuple(prior.shape)} and {tuple(target.shape)}"
        )
    if permute:
        prior = prior[optimal_permutation(prior, target, batch, types)]
    if rotate:
        rot = kabsch_rotation(prior, target, batch)
        prior = (prior.unsqueeze(-2) @ rot[batch].transpose(-1, -2)).squeeze(-2)
    return prior
