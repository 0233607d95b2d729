import itertools

import pytest
import torch

from geomol.nn.graph import edge_vectors, full_graph, radius_graph, triplets


def random_batch(generator, num_graphs=4, max_nodes=12, shuffle=False):
    sizes = torch.randint(1, max_nodes + 1, (num_graphs,), generator=generator)
    batch = torch.repeat_interleave(torch.arange(num_graphs), sizes)
    if shuffle:
        batch = batch[torch.randperm(batch.numel(), generator=generator)]
    pos = 2.0 * torch.randn(batch.numel(), 3, generator=generator, dtype=torch.float64)
    return pos, batch


def brute_force_radius(pos, batch, r, loop):
    edges = set()
    for i, j in itertools.product(range(pos.size(0)), repeat=2):
        if batch[i] != batch[j] or (i == j and not loop):
            continue
        if (pos[i] - pos[j]).norm() <= r:
            edges.add((j, i))
    return edges


def as_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("loop", [False, True])
def test_radius_graph_matches_brute_force(generator, shuffle, loop):
    pos, batch = random_batch(generator, shuffle=shuffle)
    edge_index = radius_graph(pos, 2.5, batch, loop=loop, max_num_neighbors=None)
    assert as_set(edge_index) == brute_force_radius(pos, batch, 2.5, loop)
    assert edge_index.size(1) == len(as_set(edge_index))  # no duplicates


def test_radius_graph_keeps_nearest_neighbors(generator):
    pos, batch = random_batch(generator, num_graphs=3, max_nodes=15)
    k = 3
    edge_index = radius_graph(pos, 4.0, batch, max_num_neighbors=k)
    full = brute_force_radius(pos, batch, 4.0, loop=False)
    for i in range(pos.size(0)):
        candidates = sorted(((pos[i] - pos[j]).norm().item(), j) for (j, t) in full if t == i)
        expected = {j for _, j in candidates[:k]}
        got = set(edge_index[0, edge_index[1] == i].tolist())
        assert got == expected


def test_radius_graph_chunked(generator, monkeypatch):
    import geomol.nn.graph as graph

    monkeypatch.setattr(graph, "_PAIR_CHUNK", 17)
    pos, batch = random_batch(generator, num_graphs=3, max_nodes=10)
    edge_index = radius_graph(pos, 2.0, batch, max_num_neighbors=None)
    assert as_set(edge_index) == brute_force_radius(pos, batch, 2.0, loop=False)


def test_radius_graph_errors():
    with pytest.raises(ValueError, match="pos must have shape"):
        radius_graph(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="batch has 2 entries but there are 3 nodes"):
        radius_graph(torch.zeros(3, 3), 1.0, torch.zeros(2, dtype=torch.long))
    assert radius_graph(torch.zeros(0, 3), 1.0).shape == (2, 0)


@pytest.mark.parametrize("shuffle", [False, True])
def test_full_graph_matches_brute_force(generator, shuffle):
    _, batch = random_batch(generator, shuffle=shuffle)
    expected = {(j, i) for i, j in itertools.product(range(batch.numel()), repeat=2) if i != j and batch[i] == batch[j]}
    assert as_set(full_graph(batch)) == expected
    assert full_graph(batch).size(1) == len(expected)
    with_loops = as_set(full_graph(batch, loop=True))
    assert with_loops == expected | {(i, i) for i in range(batch.numel())}


def test_triplets_match_brute_force(generator):
    pos, batch = random_batch(generator, num_graphs=3, max_nodes=9, shuffle=True)
    edge_index = radius_graph(pos, 3.0, batch, max_num_neighbors=None)
    t = triplets(edge_index, pos.size(0))
    edges = edge_index.t().tolist()
    expected = set()
    for ji, (j, i) in enumerate(edges):
        for kj, (k, j2) in enumerate(edges):
            if j2 == j and k != i:
                expected.add((i, j, k, kj, ji))
    got = list(zip(*(x.tolist() for x in t)))
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected


def test_edge_vectors(generator):
    pos, batch = random_batch(generator)
    edge_index = full_graph(batch)
    vec, dist = edge_vectors(pos, edge_index)
    torch.testing.assert_close(vec, pos[edge_index[1]] - pos[edge_index[0]])
    torch.testing.assert_close(dist, vec.norm(dim=-1))
