import pytest
import torch

from geomol.nn.graph import radius_graph, triplets
from geomol.nn.triplet_sum import TripletSum


def shuffled_triplets(generator, num_weights=3, sizes=(6, 8), scale=1.5):
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    pos = scale * torch.randn(batch.numel(), 3, generator=generator, dtype=torch.float64)
    edge_index = radius_graph(pos, 3.0, batch)
    trip = triplets(edge_index, pos.size(0))
    # Any order of the triplets must do, not only the one triplets() returns.
    perm = torch.randperm(trip.idx_kj.numel(), generator=generator)
    weight = torch.randn(perm.numel(), num_weights, generator=generator, dtype=torch.float64)
    return weight, trip.idx_kj[perm], trip.idx_ji[perm], edge_index.size(1)


def brute_force(weight, idx_kj, idx_ji, z):
    out = torch.zeros(z.size(1), z.size(2), dtype=z.dtype)
    for t in range(weight.size(0)):
        out[idx_ji[t]] += (weight[t, :, None] * z[:, idx_kj[t]]).sum(0)
    return out


def test_matches_brute_force(generator):
    weight, idx_kj, idx_ji, num_edges = shuffled_triplets(generator)
    assert weight.size(0) > 50
    z = torch.randn(3, num_edges, 5, generator=generator, dtype=torch.float64)
    out = TripletSum(weight, idx_kj, idx_ji, num_edges)(z)
    torch.testing.assert_close(out, brute_force(weight, idx_kj, idx_ji, z))


def test_first_and_second_derivatives(generator):
    weight, idx_kj, idx_ji, num_edges = shuffled_triplets(generator, num_weights=2, sizes=(3, 4), scale=0.8)
    assert weight.size(0) > 10
    weight.requires_grad_()
    z = torch.randn(2, num_edges, 3, generator=generator, dtype=torch.float64, requires_grad=True)

    def fn(weight, z):
        return TripletSum(weight, idx_kj, idx_ji, num_edges)(z)

    # Second derivatives are what training on forces needs (-dE/dpos inside the loss).
    assert torch.autograd.gradcheck(fn, (weight, z), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (weight, z), fast_mode=True)


def test_no_triplets():
    z = torch.randn(2, 4, 3, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    out = TripletSum(torch.zeros(0, 2), empty, empty, 4)(z)
    assert out.shape == (4, 3) and out.abs().max() == 0
    out.sum().backward()
    assert z.grad.abs().max() == 0


def test_bad_shapes():
    idx = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="weight must have shape"):
        TripletSum(torch.zeros(2), idx, idx, 2)
    with pytest.raises(ValueError, match="one entry per row"):
        TripletSum(torch.zeros(3, 2), idx, idx, 2)
    op = TripletSum(torch.zeros(2, 2), idx, idx, 2)
    with pytest.raises(ValueError, match="z must have shape"):
        op(torch.zeros(3, 2, 4))
