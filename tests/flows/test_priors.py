import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from geomol.flows.priors import align_prior, center, centered_gaussian, kabsch_rotation, optimal_permutation
from geomol.testing import random_rotation


def test_centered_gaussian_is_centred_per_graph(generator):
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    x = centered_gaussian(batch, std=2.0, generator=generator, dtype=torch.float64)
    means = torch.stack([x[batch == g].mean(0) for g in range(3)])
    torch.testing.assert_close(means, torch.zeros(3, 3, dtype=torch.float64))
    torch.testing.assert_close(center(x + 5.0, batch), x)


def test_kabsch_matches_scipy(generator):
    sizes = [4, 7, 3, 9]
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = center(torch.randn(batch.numel(), 3, dtype=torch.float64, generator=generator), batch)
    # Targets: rotated copies plus noise, and one mirror image (the best orthogonal map is a
    # reflection there; Kabsch must still return a proper rotation, as scipy does).
    y = torch.empty_like(x)
    for g in range(len(sizes)):
        R = random_rotation(generator=generator, reflection=g == 3)
        y[batch == g] = x[batch == g] @ R.T + 0.1 * torch.randn(sizes[g], 3, dtype=torch.float64, generator=generator)
    y = center(y, batch)
    rot = kabsch_rotation(x, y, batch)
    for g in range(len(sizes)):
        ref, _ = Rotation.align_vectors(y[batch == g].numpy(), x[batch == g].numpy())
        np.testing.assert_allclose(rot[g].numpy(), ref.as_matrix(), atol=1e-8)
        assert torch.det(rot[g]).item() == pytest.approx(1.0)


def test_permutation_matches_brute_force(generator):
    sizes = [5, 6, 1, 4]
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.randn(batch.numel(), 3, dtype=torch.float64, generator=generator)
    y = torch.randn(batch.numel(), 3, dtype=torch.float64, generator=generator)
    perm = optimal_permutation(x, y, batch)
    assert torch.equal(batch[perm], batch)  # never crosses molecules
    for g in range(len(sizes)):
        idx = torch.nonzero(batch == g).flatten()
        best = min(((x[idx[list(p)]] - y[idx]) ** 2).sum().item() for p in itertools.permutations(range(len(idx))))
        assert ((x[perm[idx]] - y[idx]) ** 2).sum().item() == pytest.approx(best)


def test_permutation_respects_element_types(generator):
    batch = torch.zeros(8, dtype=torch.long)
    types = torch.tensor([0, 1, 0, 2, 1, 0, 2, 1])
    x = torch.randn(8, 3, dtype=torch.float64, generator=generator)
    y = torch.randn(8, 3, dtype=torch.float64, generator=generator)
    perm = optimal_permutation(x, y, batch, types)
    assert torch.equal(types[perm], types)
    assert sorted(perm.tolist()) == list(range(8))
    free = optimal_permutation(x, y, batch)
    assert ((x[free] - y) ** 2).sum() <= ((x[perm] - y) ** 2).sum() + 1e-12


def test_align_prior_shortens_paths_and_keeps_the_prior(generator):
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([9, 12, 6]))
    target = center(torch.randn(batch.numel(), 3, dtype=torch.float64, generator=generator) * 1.5, batch)
    prior = centered_gaussian(batch, generator=generator, dtype=torch.float64)
    aligned = align_prior(prior, target, batch)
    assert ((aligned - target) ** 2).sum() < ((prior - target) ** 2).sum()
    # Aligning moves the noise rigidly and permutes it: each molecule's distance matrix is kept
    # up to the permutation, so the sorted pairwise distances agree.
    for g in range(3):
        d0 = torch.cdist(prior[batch == g], prior[batch == g]).flatten().sort().values
        d1 = torch.cdist(aligned[batch == g], aligned[batch == g]).flatten().sort().values
        torch.testing.assert_close(d0, d1)


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        align_prior(torch.zeros(3, 3), torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        kabsch_rotation(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
