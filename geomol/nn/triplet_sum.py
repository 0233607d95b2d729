"""Weighted sums over triplets ``k → j → i`` as one sparse matrix product (pure torch).

Directional message passing (DimeNet, DimeNet++) sends, for every triplet ``t = (k → j, j → i)``,
a message from edge ``kj`` to edge ``ji`` that is modulated by a basis of the triplet's angle. When
the modulation factorises as ``Σ_l w[t, l] · z[kj, l]`` (angular weights per triplet times features
per edge, which is exactly the structure of DimeNet's spherical basis), the whole gather–multiply–
scatter over triplets is the product of a sparse ``[E, E·L]`` matrix with the dense ``[E·L, C]``
features, and no ``[T, C]`` tensor is ever materialised.

The three kernels involved (the product, its transpose and the sampled product giving the gradient
of the weights) are each other's derivatives, so every order of derivative stays sparse: forces
(``-dE/dpos``) and training on forces (a second derivative) cost the same kind of kernel as the
forward pass.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["TripletSum"]

# torch warns once per process that CSR support is "beta"; the kernels used here are stable on CPU and CUDA.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def _compressed_rows(rows: Tensor, num_rows: int, repeat: int = 1) -> Tensor:
    """CSR row pointers for sorted row indices, each entry repeated ``repeat`` times."""
    counts = torch.bincount(rows, minlength=num_rows) * repeat
    crow = counts.new_zeros(num_rows + 1)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    # The structure is built by construction here; torch's invariant checks would cost a pass over it.
    return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


class TripletSum:
    r"""The linear map ``z ↦ out`` with ``out[ji] = Σ_{t: idx_ji[t] = ji} Σ_l weight[t, l] · z[idx_kj[t], l]``.

    Build it once per forward pass (the sparse structure depends only on the triplets) and apply it
    in every interaction block. Gradients flow to both ``weight`` and ``z``, to any order.

    Args:
        weight: per-triplet weights, e.g. DimeNet's angular basis ``Y_l^0(α_kji)``.
        idx_kj: edge ``k → j`` of each triplet (index into the edge list).
        idx_ji: edge ``j → i`` of each triplet; need not be sorted.
        num_edges: number of edges ``E``.

    Shapes:
        weight ``[T, L]``, idx_kj ``[T]``, idx_ji ``[T]``; ``__call__``: z ``[E, L, C]`` -> ``[E, C]``.
    """

    # Sparse CSR kernels are opaque to torch.compile: both entry points run eagerly under it.
    @torch.compiler.disable
    def __init__(self, weight: Tensor, idx_kj: Tensor, idx_ji: Tensor, num_edges: int) -> None:
        if weight.dim() != 2:
            raise ValueError(f"weight must have shape [T, L], got {tuple(weight.shape)}")
        if idx_kj.shape != (weight.size(0),) or idx_ji.shape != (weight.size(0),):
            raise ValueError(
                f"idx_kj {tuple(idx_kj.shape)} and idx_ji {tuple(idx_ji.shape)} must both have shape "
                f"[{weight.size(0)}], one entry per row of weight"
            )
        self.num_edges = num_edges
        self.num_weights = weight.size(1)
        L = self.num_weights
        # Rows of S are the edges ji, columns (kj, l): sort the triplets by (ji, kj) once, here, so
        # that both S and Sᵀ have sorted column indices within each row (as cuSPARSE expects).
        order = torch.argsort(idx_ji * num_edges + idx_kj)
        self.idx_kj, self.idx_ji = idx_kj[order], idx_ji[order]
        self.weight = weight[order]  # [T, L], differentiable gather
        self.crow = _compressed_rows(self.idx_ji, num_edges, L)
        self.col = (self.idx_kj.unsqueeze(1) * L + torch.arange(L, device=idx_kj.device)).reshape(-1)
        # Sᵀ is used one l at a time, as L copies of an [E, E] pattern with rows kj.
        self.transposed_order = torch.argsort(self.idx_kj, stable=True)
        self.transposed_crow = _compressed_rows(self.idx_kj[self.transposed_order], num_edges)
        self.transposed_col = self.idx_ji[self.transposed_order]
        self._transposed_weight: Tensor | None = None

    @torch.compiler.disable
    def __call__(self, z: Tensor) -> Tensor:
        if z.dim() != 3 or z.size(0) != self.num_edges or z.size(1) != self.num_weights:
            raise ValueError(
                f"z must have shape [num_edges={self.num_edges}, L={self.num_weights}, C], got {tuple(z.shape)}"
            )
        return _Sum.apply(self, self.weight, z)

    # Kernels on the triplet order sorted by ji; none of them records autograd history.

    def _sum(self, weight: Tensor, z: Tensor) -> Tensor:
        """``out[ji] = Σ_t Σ_l weight[t, l] z[kj, l]``: ``[T, L], [E, L, C] -> [E, C]``."""
        E, L, C = z.shape
        matrix = _csr(self.crow, self.col, weight.reshape(-1), (E, E * L))
        return torch.sparse.mm(matrix, z.reshape(E * L, C))

    def _transposed_sum(self, weight: Tensor, g: Tensor) -> Tensor:
        """``out[kj, l] = Σ_t weight[t, l] g[ji]``: ``[T, L], [E, C] -> [E, L, C]``."""
        E = self.num_edges
        if weight is self.weight:  # every block's backward needs the same permuted copy
            if self._transposed_weight is None:
                self._transposed_weight = weight[self.transposed_order].t().contiguous()
            weight = self._transposed_weight
        else:
            weight = weight[self.transposed_order].t().contiguous()  # [L, T]
        g = g.contiguous()
        columns = [torch.sparse.mm(_csr(self.transposed_crow, self.transposed_col, w, (E, E)), g) for w in weight]
        return torch.stack(columns, dim=1)

    def _sampled(self, g: Tensor, z: Tensor) -> Tensor:
        """``out[t, l] = g[ji] · z[kj, l]``: ``[E, C], [E, L, C] -> [T, L]``."""
        E, L, C = z.shape
        pattern = _csr(self.crow, self.col, z.new_zeros(self.col.numel()), (E, E * L))
        product = torch.sparse.sampled_addmm(pattern, g.contiguous(), z.reshape(E * L, C).t(), beta=0.0)
        return product.values().view(-1, L)


class _Sum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op: TripletSum, weight: Tensor, z: Tensor) -> Tensor:
        ctx.op = op
        ctx.save_for_backward(weight, z)
        return op._sum(weight, z)

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, z = ctx.saved_tensors
        grad_weight = _Sampled.apply(ctx.op, grad, z) if ctx.needs_input_grad[1] else None
        grad_z = _TransposedSum.apply(ctx.op, weight, grad) if ctx.needs_input_grad[2] else None
        return None, grad_weight, grad_z


class _TransposedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op: TripletSum, weight: Tensor, g: Tensor) -> Tensor:
        ctx.op = op
        ctx.save_for_backward(weight, g)
        return op._transposed_sum(weight, g)

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, g = ctx.saved_tensors
        grad_weight = _Sampled.apply(ctx.op, g, grad) if ctx.needs_input_grad[1] else None
        grad_g = _Sum.apply(ctx.op, weight, grad) if ctx.needs_input_grad[2] else None
        return None, grad_weight, grad_g


class _Sampled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op: TripletSum, g: Tensor, z: Tensor) -> Tensor:
        ctx.op = op
        ctx.save_for_backward(g, z)
        return op._sampled(g, z)

    @staticmethod
    def backward(ctx, grad: Tensor):
        g, z = ctx.saved_tensors
        grad_g = _Sum.apply(ctx.op, grad, z) if ctx.needs_input_grad[1] else None
        grad_z = _TransposedSum.apply(ctx.op, grad, g) if ctx.needs_input_grad[2] else None
        return None, grad_g, grad_z
