import math

import numpy as np
import pytest
import torch
import torch_geometric.nn.models.dimenet as pyg_dimenet
from scipy.special import sph_harm_y, spherical_jn
from torch_geometric.nn.resolver import swish

from geomol.nn.dimenet import (
    EmbeddingBlock,
    InteractionBlock,
    InteractionPPBlock,
    OutputBlock,
    OutputPPBlock,
    SphericalBasis,
    resolve_activation,
    spherical_bessel_zeros,
)
from geomol.nn.graph import edge_vectors, radius_graph, triplets
from geomol.nn.radial import BesselBasis, PolynomialEnvelope
from geomol.nn.triplet_sum import TripletSum
from geomol.testing import assert_equivariant

L, N, H = 4, 3, 16


def test_spherical_bessel_zeros():
    zeros = spherical_bessel_zeros(5, 4)
    for l in range(5):
        assert np.abs(spherical_jn(l, zeros[l])).max() < 1e-12
    # Known first zeros: π, tan x = x, and j_2.
    np.testing.assert_allclose(zeros[:3, 0], [math.pi, 4.493409457909064, 5.763459196894550], rtol=1e-12)
    # Interlacing: z_{l,n} < z_{l+1,n} < z_{l,n+1}, so no zero is skipped or repeated.
    assert (zeros[1:, :] > zeros[:-1, :]).all() and (zeros[1:, :-1] < zeros[:-1, 1:]).all()


def test_bessel_part_is_orthonormal():
    # ∫_0^1 b_ln(x) b_lm(x) x² dx = δ_nm for the normalised spherical Bessel functions (Gauss–Legendre).
    nodes, weights = np.polynomial.legendre.leggauss(200)
    x, w = torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    values = SphericalBasis(L, N).bessel(x)  # [Q, L, N]
    gram = torch.einsum("q,qln,qlm->lnm", w * x**2, values, values)
    torch.testing.assert_close(gram, torch.eye(N, dtype=torch.float64).expand(L, N, N), atol=1e-10, rtol=0)


def test_spherical_basis_matches_scipy(generator):
    cutoff = 5.0
    basis = SphericalBasis(L, N, cutoff=cutoff, envelope_exponent=5)
    dist = 0.7 + 4.2 * torch.rand(6, generator=generator, dtype=torch.float64)
    angle = math.pi * torch.rand(9, generator=generator, dtype=torch.float64)
    idx_kj = torch.randint(0, 6, (9,), generator=generator)

    x = (dist / cutoff).numpy()
    zeros = spherical_bessel_zeros(L, N)
    envelope = PolynomialEnvelope(5)(dist / cutoff).numpy() / x
    radial = np.stack(
        [
            [
                envelope * math.sqrt(2) / abs(spherical_jn(l + 1, zeros[l, n])) * spherical_jn(l, zeros[l, n] * x)
                for n in range(N)
            ]
            for l in range(L)
        ]
    ).transpose(2, 0, 1)  # [E, L, N]
    angular = np.stack([sph_harm_y(l, 0, angle.numpy(), 0.0).real for l in range(L)], axis=1)  # [T, L]

    torch.testing.assert_close(basis.radial(dist), torch.from_numpy(radial))
    torch.testing.assert_close(basis.angular(angle), torch.from_numpy(angular))
    expected = radial[idx_kj.numpy()] * angular[:, :, None]
    torch.testing.assert_close(basis(dist, angle, idx_kj), torch.from_numpy(expected).flatten(1))


def test_float32_radial_keeps_precision():
    # At bonded distances j_6(z x) is a cancellation of terms ~10⁵ times larger than the result,
    # which float32 arithmetic cannot resolve: the basis is evaluated in float64 whatever the input.
    basis = SphericalBasis(7, 6)
    dist = torch.linspace(0.9, 1.6, 8)
    torch.testing.assert_close(basis.radial(dist).double(), basis.radial(dist.double()), rtol=1e-6, atol=1e-7)


def molecule_geometry(generator, dtype=torch.float64):
    pos = 1.4 * torch.randn(13, 3, generator=generator, dtype=dtype)
    batch = torch.tensor([0] * 6 + [1] * 7)
    z = torch.randint(1, 10, (13,), generator=generator)
    return z, pos, batch


def geometry(pos, batch, cutoff=4.0):
    edge_index = radius_graph(pos, cutoff, batch)
    trip = triplets(edge_index, pos.size(0))
    vec, dist = edge_vectors(pos, edge_index)
    a, b = vec[trip.idx_ji], vec[trip.idx_kj]
    angle = torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1))
    return edge_index, trip, dist, angle


def pyg_pair(ours, theirs):
    """PyG's block with our block's weights (same names and shapes)."""
    theirs.load_state_dict(ours.state_dict())
    return theirs.double(), ours.double()


BLOCKS = {
    "dimenet": (
        lambda: InteractionBlock(H, 3, L, N, 1, 2),
        lambda: pyg_dimenet.InteractionBlock(H, 3, L, N, 1, 2, swish),
    ),
    "dimenet++": (
        lambda: InteractionPPBlock(H, 8, 4, L, N, 1, 2),
        lambda: pyg_dimenet.InteractionPPBlock(H, 8, 4, L, N, 1, 2, swish),
    ),
}


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_interaction_blocks_match_pyg(generator, kind):
    """The factorised triplet step equals PyG's dense one, fed the dense basis [T, L·N]."""
    torch.manual_seed(0)
    theirs, ours = pyg_pair(BLOCKS[kind][0](), BLOCKS[kind][1]())
    _, pos, batch = molecule_geometry(generator)
    edge_index, trip, dist, angle = geometry(pos, batch)
    sbf = SphericalBasis(L, N, cutoff=4.0)
    rbf = BesselBasis(N, cutoff=4.0).double()(dist)
    x = torch.randn(dist.numel(), H, generator=generator, dtype=torch.float64)

    expected = theirs(x, rbf, sbf(dist, angle, trip.idx_kj), trip.idx_kj, trip.idx_ji)
    triplet_sum = TripletSum(sbf.angular(angle), trip.idx_kj, trip.idx_ji, dist.numel())
    torch.testing.assert_close(ours(x, rbf, sbf.radial(dist), triplet_sum), expected)


def test_embedding_and_output_blocks_match_pyg(generator):
    torch.manual_seed(0)
    z, pos, batch = molecule_geometry(generator)
    edge_index, _, dist, _ = geometry(pos, batch)
    j, i = edge_index
    rbf = BesselBasis(N, cutoff=4.0).double()(dist)
    theirs, ours = pyg_pair(EmbeddingBlock(N, H), pyg_dimenet.EmbeddingBlock(N, H, swish))
    x = ours(z, rbf, i, j)
    torch.testing.assert_close(x, theirs(z, rbf, i, j))
    for ours, theirs in [
        (OutputBlock(N, H, 2, 2, output_initializer="glorot_orthogonal"),
         pyg_dimenet.OutputBlock(N, H, 2, 2, swish, "glorot_orthogonal")),
        (OutputPPBlock(N, H, 24, 2, 2, output_initializer="glorot_orthogonal"),
         pyg_dimenet.OutputPPBlock(N, H, 24, 2, 2, swish, "glorot_orthogonal")),
    ]:  # fmt: skip
        theirs, ours = pyg_pair(ours, theirs)
        torch.testing.assert_close(ours(x, rbf, i, z.numel()), theirs(x, rbf, i, z.numel()))


def test_interaction_pipeline_is_invariant(generator):
    """Edge messages after an interaction block are invariant under O(3) and translations."""
    z, pos, batch = molecule_geometry(generator)
    block = InteractionPPBlock(H, 8, 4, L, N, 1, 2).double()
    embed = EmbeddingBlock(N, H).double()
    sbf, rbf_basis = SphericalBasis(L, N, cutoff=4.0), BesselBasis(N, cutoff=4.0).double()

    def messages(pos):
        edge_index, trip, dist, angle = geometry(pos, batch)
        rbf = rbf_basis(dist)
        x = embed(z, rbf, edge_index[1], edge_index[0])
        triplet_sum = TripletSum(sbf.angular(angle), trip.idx_kj, trip.idx_ji, dist.numel())
        return block(x, rbf, sbf.radial(dist), triplet_sum)

    assert_equivariant(messages, pos, "scalar", generator=generator)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown activation"):
        resolve_activation("no_such_activation")
    with pytest.raises(ValueError, match="must be positive"):
        SphericalBasis(0, 3)
    with pytest.raises(ValueError, match="output_initializer"):
        OutputBlock(N, H, 1, 2, output_initializer="ones")
    assert resolve_activation("swish") is torch.nn.functional.silu
