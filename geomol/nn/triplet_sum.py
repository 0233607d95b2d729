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
    r"""The linear map ``z ↦ out`` with ``out[ji] = Σ_{t: idx_ji[t] = ji} Σ_l weight[t, l] · z[l, idx_kj[t]]``.

    ``z`` holds one edge feature map per weight column ``l`` (e.g. per degree of DimeNet's basis).
    Build the operator once per forward pass (the sparse structure depends only on the triplets) and
    apply it in every interaction block. Gradients flow to both ``weight`` and ``z``, to any order.

    Args:
        weight: per-triplet weights, e.g. DimeNet's angular basis ``Y_l^0(α_kji)``.
        idx_kj: edge ``k → j`` of each triplet (index into the edge list).
        idx_ji: edge ``j → i`` of each triplet; need not be sorted.
        num_edges: number of edges ``E``.

    Shapes:
        weight ``[T, L]``, idx_kj ``[T]``, idx_ji ``[T]``; ``__call__``: z ``[L, E, C]`` -> ``[E, C]``.
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
        E, (T, L) = num_edges, weight.shape
        self.num_edges, self.num_weights = E, L
        device = idx_kj.device
        # S is [E, L·E]: row ji, column l·E + kj. Sorting the triplets by (ji, kj) and laying out each
        # row degree by degree keeps the column indices of S and Sᵀ sorted within rows (cuSPARSE's rule).
        order = torch.argsort(idx_ji * E + idx_kj)
        kj, ji = idx_kj[order], idx_ji[order]
        self.weight = weight[order]  # [T, L], differentiable gather
        counts = torch.bincount(ji, minlength=E)
        self.crow = _compressed_rows(ji, E, L)
        first = (torch.cumsum(counts, 0) - counts)[ji]  # first triplet of each triplet's row
        degrees = torch.arange(L, device=device)
        # Slot in S's values of (triplet t, degree l); slot_source is its inverse.
        self.slot = ((L - 1) * first + torch.arange(T, device=device)).unsqueeze(1) + degrees * counts[ji].unsqueeze(1)
        self.slot = self.slot.reshape(-1)
        self.slot_source = torch.empty_like(self.slot)
        self.slot_source[self.slot] = torch.arange(T * L, device=device)
        self.col = (degrees * E + kj.unsqueeze(1)).reshape(-1)[self.slot_source]
        # Sᵀ is applied one degree at a time, as an [E, E] pattern with rows kj and columns ji.
        self.transposed_order = torch.argsort(kj, stable=True)
        self.transposed_crow = _compressed_rows(kj[self.transposed_order], E)
        self.transposed_col = ji[self.transposed_order]
        self.transposed_source = (self.transposed_order.unsqueeze(0) * L + degrees.unsqueeze(1)).reshape(-1)
        self._cache: dict[str, Tensor] = {}

    @torch.compiler.disable
    def __call__(self, z: Tensor) -> Tensor:
        if z.dim() != 3 or z.size(0) != self.num_weights or z.size(1) != self.num_edges:
            raise ValueError(
                f"z must have shape [L={self.num_weights}, num_edges={self.num_edges}, C], got {tuple(z.shape)}"
            )
        return _Sum.apply(self, self.weight, z)

    # Kernels on the triplet order sorted by (ji, kj); none of them records autograd history.

    def _layout(self, name: str, weight: Tensor, index: Tensor) -> Tensor:
        """``weight`` rearranged for one of the CSR patterns, cached for the operator's own weights,
        which every interaction block (and its backward) uses."""
        if weight is not self.weight:
            return weight.reshape(-1)[index]
        if name not in self._cache:
            self._cache[name] = weight.reshape(-1)[index]
        return self._cache[name]

    def _sum(self, weight: Tensor, z: Tensor) -> Tensor:
        """``out[ji] = Σ_t Σ_l weight[t, l] z[l, kj]``: ``[T, L], [L, E, C] -> [E, C]``."""
        L, E, C = z.shape
        matrix = _csr(self.crow, self.col, self._layout("sum", weight, self.slot_source), (E, L * E))
        return torch.sparse.mm(matrix, z.reshape(L * E, C))

    def _transposed_sum(self, weight: Tensor, g: Tensor) -> Tensor:
        """``out[l, kj] = Σ_t weight[t, l] g[ji]``: ``[T, L], [E, C] -> [L, E, C]``."""
        E, L = self.num_edges, self.num_weights
        values = self._layout("transposed", weight, self.transposed_source).view(L, -1)
        g = g.contiguous()
        out = g.new_empty(L, E, g.size(1))
        for l in range(L):
            torch.mm(_csr(self.transposed_crow, self.transposed_col, values[l], (E, E)), g, out=out[l])
        return out

    def _sampled(self, g: Tensor, z: Tensor) -> Tensor:
        """``out[t, l] = g[ji] · z[l, kj]``: ``[E, C], [L, E, C] -> [T, L]``."""
        L, E, C = z.shape
        pattern = _csr(self.crow, self.col, z.new_zeros(self.col.numel()), (E, L * E))
        product = torch.sparse.sampled_addmm(pattern, g.contiguous(), z.reshape(L * E, C).t(), beta=0.0)
        return product.values()[self.slot].view(-1, L)


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
