import pytest
import torch

from geomol.nn.graph import edge_vectors, full_graph
from geomol.nn.gvp import GVP, GVPConv, GVPEdgeUpdate, GVPLayerNorm, GVPPositionUpdate, vector_norm
from geomol.testing import assert_equivariant


def _rotate_channels(y, R, t):
    # Vector features [N, 3, C]: the Cartesian axis is dim 1.
    return torch.einsum("ij,njc->nic", R, y)


def _as_vectors(points, channels):
    # [N * C, 3] points -> [N, 3, C] vector features, so assert_equivariant can rotate them.
    return points.view(-1, channels, 3).transpose(1, 2)


def test_gvp_matches_the_equations(generator):
    gvp = GVP(3, 2, 4, 3, n_cp_feats=1).double()
    s = torch.randn(5, 3, dtype=torch.float64, generator=generator)
    v = torch.randn(5, 3, 2, dtype=torch.float64, generator=generator)
    s_out, v_out = gvp(s, v)
    # Node by node, with the vectors as rows (channels first) as in the GVP paper.
    for n in range(5):
        V = v[n].T  # [C, 3]
        vh = gvp.w_h @ V
        a, b = gvp.w_cp @ V
        vh = torch.cat([vh, torch.cross(a, b, dim=0).unsqueeze(0)])
        sh = vh.norm(dim=-1)
        expected_s = torch.nn.functional.silu(gvp.scalar_out.weight @ torch.cat([s[n], sh]) + gvp.scalar_out.bias)
        gate = torch.sigmoid(gvp.gate.weight @ expected_s + gvp.gate.bias)
        expected_v = gate[:, None] * (gvp.w_u @ vh)
        torch.testing.assert_close(s_out[n], expected_s)
        torch.testing.assert_close(v_out[n].T, expected_v)


@pytest.mark.parametrize("n_cp_feats", [0, 2])
def test_gvp_rotation_equivariance(n_cp_feats, generator):
    gvp = GVP(6, 4, 5, 3, n_cp_feats=n_cp_feats).double()
    s = torch.randn(7, 6, dtype=torch.float64, generator=generator)
    points = torch.randn(7 * 4, 3, dtype=torch.float64, generator=generator)
    assert_equivariant(
        lambda p: gvp(s, _as_vectors(p, 4)),
        points,
        output=("scalar", _rotate_channels),
        reflections=n_cp_feats == 0,
        translations=False,
        generator=generator,
    )


def test_cross_products_break_reflection_symmetry(generator):
    # SE(3) only: the cross product of two vectors is a pseudovector.
    gvp = GVP(2, 4, 2, 3, n_cp_feats=2).double()
    s = torch.randn(3, 2, dtype=torch.float64, generator=generator)
    points = torch.randn(3 * 4, 3, dtype=torch.float64, generator=generator)
    with pytest.raises(AssertionError, match="reflection"):
        assert_equivariant(
            lambda p: gvp(s, _as_vectors(p, 4)),
            points,
            output=("scalar", _rotate_channels),
            translations=False,
            generator=generator,
        )


def test_layer_norm_rms_and_gradient_at_zero():
    norm = GVPLayerNorm(4).double()
    v = torch.randn(6, 3, 5, dtype=torch.float64)
    _, v_out = norm(torch.randn(6, 4, dtype=torch.float64), v)
    rms = vector_norm(v_out).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(6, dtype=torch.float64), atol=1e-4, rtol=0)
    # Zero vectors (the initial state of every node) must not give NaN gradients.
    zero = torch.zeros(2, 3, 4, dtype=torch.float64, requires_grad=True)
    gvp = GVP(3, 4, 3, 4, n_cp_feats=1).double()
    s_out, v_out = gvp(torch.randn(2, 3, dtype=torch.float64), zero)
    (s_out.sum() + GVPLayerNorm(3).double()(s_out, v_out)[1].sum()).backward()
    assert torch.isfinite(zero.grad).all()


def test_conv_and_updates_are_equivariant(generator):
    scalars, vectors, edge_features, rbf_dim = 8, 3, 4, 5
    conv = GVPConv(scalars, vectors, edge_features, rbf_dim, n_cp_feats=2, message_norm=3.0).double()
    move = GVPPositionUpdate(scalars, vectors, n_gvps=2, n_cp_feats=1).double()
    refresh = GVPEdgeUpdate(scalars, edge_features, rbf_dim).double()
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    edge_index = full_graph(batch)
    s = torch.randn(7, scalars, dtype=torch.float64, generator=generator)
    e = torch.randn(edge_index.size(1), edge_features, dtype=torch.float64, generator=generator)
    centers = torch.linspace(0, 4, rbf_dim, dtype=torch.float64)

    def run(pos):
        vec, dist = edge_vectors(pos, edge_index)
        rbf = torch.exp(-((dist[:, None] - centers) ** 2))
        v0 = torch.stack([vec.new_zeros(7, 3)] * (vectors - 1) + [pos - pos.mean(0)], dim=-1)
        h, v = conv(s, v0, edge_index, vec / dist[:, None], rbf, e)
        return h, v, move(h, pos, v), refresh(h, edge_index, e, rbf)

    pos = torch.randn(7, 3, dtype=torch.float64, generator=generator)
    assert_equivariant(
        run, pos, output=("scalar", _rotate_channels, "position", "scalar"), reflections=False, generator=generator
    )


def test_bad_shapes_raise():
    gvp = GVP(3, 2, 3, 2)
    with pytest.raises(ValueError, match="vectors"):
        gvp(torch.randn(4, 3), torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match="edge_attr"):
        GVPConv(4, 2, edge_features=3, rbf_dim=2)(
            torch.randn(2, 4), torch.randn(2, 3, 2), torch.tensor([[0], [1]]), torch.randn(1, 3), torch.randn(1, 2)
        )


def _reference_conv(conv, s, v, edge_index, unit, rbf, e):
    """GVPConv as its equations read, edge by edge: every linear map on the per-edge concatenation."""
    src, dst = edge_index
    first, *rest = conv.message
    sv = torch.cat([unit.unsqueeze(-1), v[src]], dim=-1)
    v_h = torch.nn.functional.linear(sv, first.w_h)
    left, right = torch.nn.functional.linear(sv, first.w_cp).split(first.n_cp_feats, dim=-1)
    v_h = torch.cat([v_h, torch.linalg.cross(left, right, dim=-2)], dim=-1)
    m_s = torch.nn.functional.silu(
        first.scalar_out(torch.cat([rbf, e, v_h.norm(dim=-2)], dim=-1)) + conv.sender(s)[src]
    )
    m_v = torch.sigmoid(first.gate(m_s)).unsqueeze(-2) * torch.nn.functional.linear(v_h, first.w_u)
    for gvp in rest:
        m_s, m_v = gvp(m_s, m_v)
    zeros = s.new_zeros
    sum_s = zeros(s.shape).index_put_((dst,), m_s, accumulate=True)
    sum_v = zeros(v.shape).index_put_((dst,), m_v, accumulate=True)
    s, v = conv.message_norm_layer(s + sum_s / conv.message_norm, v + sum_v / conv.message_norm)
    u_s, u_v = s, v
    for gvp in conv.update:
        u_s, u_v = gvp(u_s, u_v)
    return conv.update_norm_layer(s + u_s, v + u_v)


@pytest.mark.parametrize("block", [5, 1 << 20])
def test_conv_and_edge_update_match_the_per_edge_equations(block, generator, monkeypatch):
    # The per-node gathers, the addmm accumulation and the edge blocks (5: several blocks and a ragged
    # last one) give the per-edge equations' outputs and gradients.
    monkeypatch.setattr("geomol.nn.gvp.EDGE_BLOCK", block)
    scalars, vectors, edge_features, rbf_dim = 6, 3, 4, 5
    conv = GVPConv(scalars, vectors, edge_features, rbf_dim, n_cp_feats=2, message_norm=3.0).double()
    refresh = GVPEdgeUpdate(scalars, edge_features, rbf_dim).double()
    edge_index = full_graph(torch.tensor([0, 0, 0, 0, 1, 1, 1]))
    num_edges = edge_index.size(1)

    def inputs():
        torch.manual_seed(0)
        tensors = (torch.randn(7, scalars), torch.randn(7, 3, vectors), torch.randn(num_edges, 3),
                   torch.randn(num_edges, rbf_dim), torch.randn(num_edges, edge_features))  # fmt: skip
        return [x.double().requires_grad_() for x in tensors]

    results = []
    for fast in (True, False):
        s, v, unit, rbf, e = inputs()
        conv.zero_grad(), refresh.zero_grad()
        if fast:
            h, w = conv(s, v, edge_index, unit, rbf, e)
            e_new = refresh(h, edge_index, e, rbf)
        else:
            h, w = _reference_conv(conv, s, v, edge_index, unit, rbf, e)
            src, dst = edge_index
            hidden = refresh.source(h)[src] + refresh.target(h)[dst] + refresh.edge(torch.cat([e, rbf], dim=-1))
            e_new = refresh.norm(e + refresh.out(hidden))
        (h.pow(2).sum() + w.sin().sum() + e_new.cos().sum()).backward()
        grads = [x.grad for x in (s, v, unit, rbf, e)] + [p.grad for p in [*conv.parameters(), *refresh.parameters()]]
        results.append(([h, w, e_new], grads))
    (out_fast, grad_fast), (out_ref, grad_ref) = results
    for a, b in zip(out_fast + grad_fast, out_ref + grad_ref):
        torch.testing.assert_close(a, b)


def test_vector_norm_is_the_clamped_length():
    v = torch.randn(9, 3, 4, dtype=torch.float64)
    v[0] = 0.0
    torch.testing.assert_close(vector_norm(v), v.pow(2).sum(-2).clamp_min(1e-8).sqrt(), rtol=0, atol=0)


@pytest.mark.skipif(
    __import__("shutil").which(__import__("os").environ.get("CXX", "c++")) is None,
    reason="torch.compile needs a C++ compiler on the CPU",
)
def test_compiled_edge_blocks_equal_eager_and_follow_each_layers_weights(monkeypatch):
    # compile_edge_blocks: the same outputs and gradients as the eager blocks (several blocks, a ragged last
    # one), and a copy of a switched layer (as EMA makes) computes with its own weights, not the original's.
    import copy

    from geomol.nn.gvp import compile_edge_blocks

    monkeypatch.setattr("geomol.nn.gvp.EDGE_BLOCK", 8)
    torch.manual_seed(0)
    conv, refresh = GVPConv(6, 3, 4, 5, n_cp_feats=2, message_norm=3.0), GVPEdgeUpdate(6, 4, 5)
    layers = torch.nn.ModuleList([conv, refresh])
    edge_index = full_graph(torch.tensor([0, 0, 0, 0, 1, 1, 1]))  # 18 edges: blocks of 8, 8, 2
    num_edges = edge_index.size(1)
    tensors = (torch.randn(7, 6), torch.randn(7, 3, 3), torch.randn(num_edges, 3), torch.randn(num_edges, 5),
               torch.randn(num_edges, 4))  # fmt: skip

    def run(layers):
        inputs = [x.clone().requires_grad_() for x in tensors]
        s, v, unit, rbf, e = inputs
        layers.zero_grad()
        h, w = layers[0](s, v, edge_index, unit, rbf, e)
        e_new = layers[1](h, edge_index, e, rbf)
        (h.pow(2).sum() + w.sin().sum() + e_new.cos().sum()).backward()
        return [h, w, e_new, *(x.grad for x in inputs), *(p.grad for p in layers.parameters())]

    eager = run(layers)
    assert compile_edge_blocks(layers) == 2 and conv.compiled and refresh.compiled
    for a, b in zip(run(layers), eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    twin = copy.deepcopy(layers)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
    compiled_twin = run(twin)
    compile_edge_blocks(twin, enabled=False)
    assert not twin[0].compiled
    for a, b in zip(compiled_twin, run(twin)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(compiled_twin[0], eager[0])
