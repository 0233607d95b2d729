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
