"""Geometric vector perceptrons: layers on scalar + vector channels, and their graph convolution.

A GVP (Jing et al. 2021, "Learning from protein structure with geometric vector perceptrons",
Algorithm 1) maps scalar features ``s [N, S]`` and vector features ``V [N, 3, C]`` to new ones while
rotating ``V`` with the input. Here with the *vector gate* of Jing et al. (2021b, "Equivariant graph
neural networks for 3D macromolecular structure", Eq. 3), where each output vector channel is scaled
by a function of the output scalars, and with the *cross-product features* of FlowMol (Dunn & Koes
2024, "Mixed continuous and categorical flow matching for 3D de novo molecule generation", Sec. 3.3):
pairs of linear combinations of the input vectors are multiplied with ``×``. The cross product is a
pseudovector, so with ``n_cp_feats > 0`` the layers are SE(3)- but not E(3)-equivariant: a
reflection of the input does not reflect the output.

Vector features are stored ``[N, 3, C]`` (Cartesian component, then channel): a channel mix is then
one matrix product ``V @ W.T`` over all nodes, several times faster than with channels first.

On complete molecular graphs the edges outnumber the nodes about twentyfold, so the convolution does
per node whatever is linear in a node's features and gathers the result to the edges
(``index_select``, several times faster than ``x[index]`` on the CPU, forward and backward); the
outputs are those of the per-edge equations up to float rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "GVP",
    "GVPLayerNorm",
    "GVPConv",
    "GVPPositionUpdate",
    "GVPEdgeUpdate",
    "vector_norm",
    "compile_edge_blocks",
    "EDGE_BLOCK",
]

# Edges per block of the per-edge work of GVPConv and GVPEdgeUpdate: a block's intermediates stay in the
# CPU's caches (on the complete graphs of 64 QM9 molecules one [E, 128] tensor is 10 MB). A speed setting
# only: every block size gives the same outputs.
EDGE_BLOCK = 4096


def compile_edge_blocks(module: nn.Module, enabled: bool = True) -> int:
    """Run the per-edge work of every :class:`GVPConv` and :class:`GVPEdgeUpdate` in ``module`` (one block of
    :data:`EDGE_BLOCK` edges at a time) through ``torch.compile``; returns how many layers it switched.

    The per-edge work is a chain of small matrix products and many elementwise operations (gates, norms,
    cross products, SiLUs) on ``[E, *]`` tensors; compiled, the elementwise ones and the gathers fuse into
    loops over each block. Compiling the blocks rather than the whole network shares a few compiled graphs
    (with and without gradients, full and ragged last blocks) among every layer, batch and molecule size
    (compiling a whole field instead recompiles for every number of blocks). The first calls compile
    (seconds to a minute on a CPU, with a C++ compiler); the outputs are those of the eager layers up to
    float rounding. A flag on the layers, not a weight: checkpoints and copies (EMA) are unchanged, and
    ``enabled=False`` switches back.
    """
    layers = [m for m in module.modules() if isinstance(m, (GVPConv, GVPEdgeUpdate))]
    for layer in layers:
        layer.compiled = bool(enabled)
    return len(layers)


_COMPILED: dict = {}


def _maybe_compiled(fn, compiled: bool):
    """``fn``, or its ``torch.compile``d version (one per function, shared by every layer)."""
    if not compiled or torch.compiler.is_compiling():
        return fn
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]


def vector_norm(v: Tensor, eps: float = 1e-8) -> Tensor:
    """Length of each vector channel, ``sqrt(max(|v|², eps))`` so that the gradient stays finite at 0.

    Shapes:
        v ``[N, 3, C]`` -> ``[N, C]``
    """
    x, y, z = v.square().unbind(-2)
    return (x + y + z).clamp_min(eps).sqrt()  # 3x faster than .sum(-2) over the strided axis, same sums


def _channel_mix(in_channels: int, out_channels: int) -> nn.Parameter:
    """Weight ``[out, in]`` of a bias-free linear map of vector channels, U(±1/√in) like ``nn.Linear``."""
    bound = 1.0 / math.sqrt(in_channels)
    return nn.Parameter(torch.empty(out_channels, in_channels).uniform_(-bound, bound))


class GVP(nn.Module):
    r"""Geometric vector perceptron with vector gating and optional cross-product features.

    .. math::
        V_h = W_h V \,\|\, (W_a V) \times (W_b V), \qquad
        s' = \sigma(W_m [s \,\|\, \lVert V_h \rVert] + b_m), \qquad
        V' = \sigma_g(W_g s' + b_g) \odot W_u V_h

    (GVP Algorithm 1 with the gate of Jing et al. 2021b, Eq. 3; the cross-product block of FlowMol.)

    Args:
        in_scalars: input scalar channels ``S``.
        in_vectors: input vector channels ``C``.
        out_scalars: output scalar channels.
        out_vectors: output vector channels.
        hidden_vectors: channels of ``W_h V``; default ``max(in_vectors, out_vectors)``.
        n_cp_feats: number of cross products appended to ``V_h`` (0: none, E(3)-equivariant layer).
        scalar_activation: activation ``σ`` of the scalar output (``None``: identity).
        vector_activation: gate nonlinearity ``σ_g`` (``None``: identity, a plain linear gate).

    Shapes:
        s ``[N, S]``, v ``[N, 3, C]`` -> (``[N, out_scalars]``, ``[N, 3, out_vectors]``)
    """

    def __init__(
        self,
        in_scalars: int,
        in_vectors: int,
        out_scalars: int,
        out_vectors: int,
        hidden_vectors: int | None = None,
        n_cp_feats: int = 0,
        scalar_activation: type[nn.Module] | None = nn.SiLU,
        vector_activation: type[nn.Module] | None = nn.Sigmoid,
    ) -> None:
        super().__init__()
        if in_vectors < 1 or out_vectors < 1:
            raise ValueError(f"a GVP needs at least one vector channel in and out, got {in_vectors} and {out_vectors}")
        hidden = max(in_vectors, out_vectors) if hidden_vectors is None else hidden_vectors
        self.in_scalars, self.in_vectors = in_scalars, in_vectors
        self.out_scalars, self.out_vectors = out_scalars, out_vectors
        self.n_cp_feats = n_cp_feats
        self.w_h = _channel_mix(in_vectors, hidden)
        self.w_cp = _channel_mix(in_vectors, 2 * n_cp_feats) if n_cp_feats > 0 else None
        self.w_u = _channel_mix(hidden + n_cp_feats, out_vectors)
        self.scalar_out = nn.Linear(in_scalars + hidden + n_cp_feats, out_scalars)
        self.scalar_activation = scalar_activation() if scalar_activation is not None else nn.Identity()
        self.gate = nn.Linear(out_scalars, out_vectors)
        self.vector_activation = vector_activation() if vector_activation is not None else nn.Identity()

    def forward(self, s: Tensor, v: Tensor, pre_activation: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``pre_activation [N, out_scalars]``, when given, is added to ``W_m [s ‖ |V_h|] + b_m`` before ``σ``:
        the part of a linear map of further scalar inputs computed elsewhere (see :class:`GVPConv`)."""
        if s.size(-1) != self.in_scalars or v.shape[-2:] != (3, self.in_vectors):
            raise ValueError(
                f"GVP expects scalars [N, {self.in_scalars}] and vectors [N, 3, {self.in_vectors}], "
                f"got {tuple(s.shape)} and {tuple(v.shape)}"
            )
        if pre_activation is not None:
            pre_activation = pre_activation + self.scalar_out.bias
        return self.from_mixed((s,), F.linear(v, self.vector_weight), pre_activation)

    @property
    def vector_weight(self) -> Tensor:
        """``[W_h; W_a; W_b]`` ``[hidden + 2 n_cp_feats, C]``: every linear map of the input vectors, one product."""
        return self.w_h if self.w_cp is None else torch.cat([self.w_h, self.w_cp])

    def from_mixed(
        self, scalars: tuple[Tensor, ...], mixed: Tensor, pre_activation: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The GVP from its input vectors already mixed, ``mixed = V @ vector_weight.T`` ``[N, 3, hidden + 2 n_cp]``,
        and its input scalars in pieces ``scalars`` (concatenated along the channels, ``S`` in all).

        ``pre_activation [N, out_scalars]``, when given, *replaces* the bias ``b_m``: the bias plus the part of
        ``W_m`` applied to further scalar inputs elsewhere (see :class:`GVPConv`); it is accumulated into the
        matrix product (``addmm``) rather than added after it.
        """
        hidden = self.w_h.size(0)
        v_h = mixed
        if self.w_cp is not None:
            left, right = mixed[..., hidden:].split(self.n_cp_feats, dim=-1)  # [N, 3, n_cp] each
            v_h = torch.cat([mixed[..., :hidden], torch.linalg.cross(left, right, dim=-2)], dim=-1)
        features = torch.cat([*scalars, vector_norm(v_h)], dim=-1)
        if pre_activation is None:
            s_out = self.scalar_out(features)
        else:
            s_out = torch.addmm(pre_activation, features, self.scalar_out.weight.t())
        s_out = self.scalar_activation(s_out)
        v_out = self.vector_activation(self.gate(s_out)).unsqueeze(-2) * F.linear(v_h, self.w_u)  # [N, 3, out]
        return s_out, v_out

    def extra_repr(self) -> str:
        return (
            f"({self.in_scalars}, {self.in_vectors}v) -> ({self.out_scalars}, {self.out_vectors}v), "
            f"n_cp_feats={self.n_cp_feats}"
        )


class GVPLayerNorm(nn.Module):
    r"""LayerNorm on scalars; vectors divided by their root-mean-square channel length (GVP, Sec. 3.2).

    .. math:: V \leftarrow V / \sqrt{\tfrac{1}{C}\textstyle\sum_c \lVert V_c \rVert^2 + \epsilon}

    The vector part has no parameters, so it commutes with rotations.

    Shapes:
        s ``[N, S]``, v ``[N, 3, C]`` -> same
    """

    def __init__(self, scalars: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.scalar_norm = nn.LayerNorm(scalars)
        self.eps = eps

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        rms = (vector_norm(v).pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt()  # [N, 1]
        return self.scalar_norm(s), v / rms.unsqueeze(-1)


def _gvp_stack(
    in_scalars: int, in_vectors: int, scalars: int, vectors: int, depth: int, n_cp_feats: int
) -> nn.ModuleList:
    """``depth`` GVPs, the first mapping the input sizes to ``(scalars, vectors)``."""
    return nn.ModuleList(
        GVP(
            in_scalars if k == 0 else scalars,
            in_vectors if k == 0 else vectors,
            scalars,
            vectors,
            n_cp_feats=n_cp_feats,
        )
        for k in range(depth)
    )


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` along the first axis via ``index_select`` (its backward is ``index_add_``, while
    ``x[index]``'s is an accumulating ``index_put_``; both directions are several times faster).

    Shapes:
        x ``[N, *]``, index ``[E]`` -> ``[E, *]``
    """
    return x.flatten(1).index_select(0, index).view(index.numel(), *x.shape[1:])


def _run(stack: nn.ModuleList, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    for gvp in stack:
        s, v = gvp(s, v)
    return s, v


class GVPConv(nn.Module):
    r"""GVP message passing with residual updates and layer norms (FlowMol, Sec. 3.3, Eqs. 11-13).

    For each edge ``j → i`` the message GVPs read the sender's features, the radial basis of the
    distance and the edge features as scalars, and the unit vector ``(x_i - x_j) / d_ij`` next to
    the sender's vectors as vectors:

    .. math::
        (m_{ij}, \vec m_{ij}) = \mathrm{GVP}_m\big([s_j \| \mathrm{rbf}(d_ij) \| e_{ij}],
                                                   [\hat x_{ij} \| V_j]\big)

    Messages are summed at the receiver and divided by ``message_norm`` (a fixed constant rather
    than a degree, as in FlowMol, so that the scale does not depend on the graph), then
    ``h ← LN(h + m)`` and ``h ← LN(h + GVP_u(h))``.

    The sender's shares of the first message GVP's linear maps, ``W_s s_j`` of its scalar map and
    ``W_h V_j``, ``W_a V_j``, ``W_b V_j`` of its vector maps, are computed once per node and gathered to
    the edges, where only the unit vector's column is added (the same function as the linear maps
    of the concatenations, with about a third fewer FLOPs and no per-edge copies of ``V_j``).

    Messages are computed in blocks of :data:`EDGE_BLOCK` edges, whose intermediates stay in the CPU's
    caches; the sums are the same, the edges being added in order.

    Args:
        scalars: node scalar channels.
        vectors: node vector channels.
        edge_features: edge feature channels (0: none).
        rbf_dim: size of the radial basis of the edge length.
        n_message_gvps: depth of the message function.
        n_update_gvps: depth of the node update.
        n_cp_feats: cross products in each GVP.
        message_norm: aggregated messages are divided by this number.

    Shapes:
        s ``[N, S]``, v ``[N, 3, C]``, edge_index ``[2, E]``, unit ``[E, 3]``, rbf ``[E, rbf_dim]``,
        edge_attr ``[E, edge_features]`` -> (``[N, S]``, ``[N, 3, C]``)
    """

    def __init__(
        self,
        scalars: int = 128,
        vectors: int = 16,
        edge_features: int = 0,
        rbf_dim: int = 16,
        n_message_gvps: int = 3,
        n_update_gvps: int = 3,
        n_cp_feats: int = 0,
        message_norm: float = 100.0,
    ) -> None:
        super().__init__()
        if message_norm <= 0:
            raise ValueError(f"message_norm must be positive, got {message_norm}")
        self.edge_features = edge_features
        self.message_norm = float(message_norm)
        self.sender = nn.Linear(scalars, scalars, bias=False)
        self.message = _gvp_stack(rbf_dim + edge_features, vectors + 1, scalars, vectors, n_message_gvps, n_cp_feats)
        self.update = _gvp_stack(scalars, vectors, scalars, vectors, n_update_gvps, n_cp_feats)
        self.message_norm_layer = GVPLayerNorm(scalars)
        self.update_norm_layer = GVPLayerNorm(scalars)
        self.compiled = False  # see compile_edge_blocks

    def forward(
        self,
        s: Tensor,
        v: Tensor,
        edge_index: Tensor,
        unit: Tensor,
        rbf: Tensor,
        edge_attr: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        src, dst = edge_index
        if self.edge_features > 0 and edge_attr is None:
            raise ValueError(f"GVPConv was built with {self.edge_features} edge features but got edge_attr=None")
        first = self.message[0]
        # Vector input [unit ‖ V_j]: the V_j columns of every vector map per node, the unit column per edge.
        weight = first.vector_weight  # [hidden + 2 n_cp, 1 + C]
        sender_mixed = F.linear(v, weight[:, 1:])  # [N, 3, hidden + 2 n_cp]
        sender_pre = F.linear(s, self.sender.weight, first.scalar_out.bias)  # [N, S], W_s s_j + b_m
        sum_s, sum_v = torch.zeros_like(s), torch.zeros_like(v)
        # split, not slices: under autograd a slice's backward writes into a zero tensor of the whole input
        scalar_in = (rbf,) if self.edge_features == 0 else (rbf, edge_attr)
        messages = _maybe_compiled(GVPConv.messages, self.compiled)
        blocks = zip(*(x.split(EDGE_BLOCK) for x in (src, dst, unit, *scalar_in)))
        for sources, targets, unit_block, *scalar_block in blocks:
            m_s, m_v = messages(self, sender_mixed, sender_pre, sources, unit_block, *scalar_block)
            # edge by edge in order, as one scatter over all edges; in s's dtype under bf16 autocast
            sum_s.index_add_(0, targets, m_s.to(s.dtype))
            sum_v.index_add_(0, targets, m_v.to(v.dtype))
        s, v = self.message_norm_layer(s + sum_s / self.message_norm, v + sum_v / self.message_norm)
        u_s, u_v = _run(self.update, s, v)
        return self.update_norm_layer(s + u_s, v + u_v)

    def messages(
        self, sender_mixed: Tensor, sender_pre: Tensor, sources: Tensor, unit: Tensor, rbf: Tensor, *edge_attr: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The messages of one block of edges: the per-edge work of :meth:`forward`, which
        :func:`compile_edge_blocks` hands to ``torch.compile``.

        Shapes:
            sender_mixed ``[N, 3, hidden + 2 n_cp]``, sender_pre ``[N, S]``, sources ``[E]``, unit ``[E, 3]``,
            rbf ``[E, rbf_dim]``, edge_attr ``[E, edge_features]`` (when built with edge features)
            -> (``[E, S]``, ``[E, 3, C]``)
        """
        first, *rest = self.message
        mixed = torch.addcmul(_gather(sender_mixed, sources), unit.unsqueeze(-1), first.vector_weight[:, 0])
        m_s, m_v = first.from_mixed((rbf, *edge_attr), mixed, _gather(sender_pre, sources))
        return _run(rest, m_s, m_v)


class GVPPositionUpdate(nn.Module):
    """Moves each node by one vector read out of its features by GVPs (FlowMol, Eq. 14).

    The last GVP has one output vector and a linear gate, so the displacement can have any length.

    Shapes:
        s ``[N, S]``, pos ``[N, 3]``, v ``[N, 3, C]`` -> pos ``[N, 3]``
    """

    def __init__(self, scalars: int, vectors: int, n_gvps: int = 3, n_cp_feats: int = 0) -> None:
        super().__init__()
        if n_gvps < 1:
            raise ValueError(f"n_gvps must be at least 1, got {n_gvps}")
        layers = [GVP(scalars, vectors, scalars, vectors, n_cp_feats=n_cp_feats) for _ in range(n_gvps - 1)]
        layers.append(GVP(scalars, vectors, scalars, 1, n_cp_feats=n_cp_feats, vector_activation=None))
        self.gvps = nn.ModuleList(layers)

    def forward(self, s: Tensor, pos: Tensor, v: Tensor) -> Tensor:
        _, shift = _run(self.gvps, s, v)  # [N, 3, 1]
        return pos + shift.squeeze(-1)


class GVPEdgeUpdate(nn.Module):
    """Edge features refreshed from both end nodes and the distance (FlowMol, Eq. 15).

    ``e_ij ← LN(e_ij + MLP([s_j ‖ s_i ‖ e_ij ‖ rbf(d_ij)]))``; the node parts of the MLP's first
    linear map (and its bias) are computed per node, gathered to the edges and accumulated into the
    product of the edge part (``addmm``), in blocks of :data:`EDGE_BLOCK` edges.

    Shapes:
        s ``[N, S]``, edge_index ``[2, E]``, edge_attr ``[E, F]``, rbf ``[E, R]`` -> ``[E, F]``
    """

    def __init__(self, scalars: int, edge_features: int, rbf_dim: int) -> None:
        super().__init__()
        self.source = nn.Linear(scalars, edge_features, bias=False)
        self.target = nn.Linear(scalars, edge_features, bias=False)
        self.edge = nn.Linear(edge_features + rbf_dim, edge_features)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(edge_features, edge_features), nn.SiLU())
        self.norm = nn.LayerNorm(edge_features)
        self.compiled = False  # see compile_edge_blocks

    def forward(self, s: Tensor, edge_index: Tensor, edge_attr: Tensor, rbf: Tensor) -> Tensor:
        src, dst = edge_index
        source, target = F.linear(s, self.source.weight, self.edge.bias), self.target(s)  # [N, F] each
        refresh = _maybe_compiled(GVPEdgeUpdate.refresh, self.compiled)
        blocks = [
            refresh(self, source, target, *block)
            for block in zip(*(x.split(EDGE_BLOCK) for x in (src, dst, edge_attr, rbf)))  # see EDGE_BLOCK
        ]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def refresh(
        self, source: Tensor, target: Tensor, sources: Tensor, targets: Tensor, edge_attr: Tensor, rbf: Tensor
    ) -> Tensor:
        """New features of one block of edges from the per-node parts ``source``, ``target`` ``[N, F]`` of the
        first linear map (see :meth:`forward`; :func:`compile_edge_blocks` compiles this).

        Shapes:
            sources, targets ``[E]``, edge_attr ``[E, F]``, rbf ``[E, R]`` -> ``[E, F]``
        """
        nodes = _gather(source, sources) + _gather(target, targets)
        hidden = torch.addmm(nodes, torch.cat([edge_attr, rbf], dim=-1), self.edge.weight.t())
        return self.norm(edge_attr + self.out(hidden))
