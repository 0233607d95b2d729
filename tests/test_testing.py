import pytest
import torch
from e3nn import o3

from geomol.testing import (
    assert_equivariant,
    assert_permutation_equivariant,
    irreps_rotation,
    random_rotation,
    sh_rotation,
)


@pytest.mark.parametrize("reflection", [False, True])
def test_random_rotation(generator, reflection):
    R = random_rotation(generator=generator, reflection=reflection)
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64))
    assert torch.det(R).item() == pytest.approx(-1.0 if reflection else 1.0)


@pytest.mark.parametrize("reflection", [False, True])
def test_sh_rotation_is_exact(generator, reflection):
    R = random_rotation(generator=generator, reflection=reflection)
    x = torch.randn(20, 3, dtype=torch.float64, generator=generator)
    ls = list(range(5))
    expected = o3.spherical_harmonics(ls, x @ R.T, normalize=True, normalization="integral")
    got = o3.spherical_harmonics(ls, x, normalize=True, normalization="integral") @ sh_rotation(R, 4).T
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("reflection", [False, True])
def test_irreps_rotation_matches_e3nn(generator, reflection):
    R = random_rotation(generator=generator, reflection=reflection)
    irreps = "3x0e+0e+2x1o+1e+2e+2x2o+3o"
    torch.testing.assert_close(irreps_rotation(R, irreps), o3.Irreps(irreps).D_from_matrix(R), atol=1e-6, rtol=0)


def test_asserts_catch_broken_symmetry(generator):
    pos = torch.randn(6, 3, dtype=torch.float64, generator=generator)
    assert_equivariant(lambda p: (p - p.mean(0)).norm(dim=-1), pos, "scalar", generator=generator)
    assert_equivariant(lambda p: p.mean(0), pos, "position", generator=generator)
    with pytest.raises(AssertionError, match="not equivariant under a random rotation"):
        assert_equivariant(lambda p: p[:, 0], pos, "scalar", generator=generator)
    with pytest.raises(AssertionError, match="not equivariant under a random reflection"):
        assert_equivariant(
            lambda p: torch.linalg.cross(p[0], p[1]), pos, "vector", generator=generator, translations=False
        )
    assert_equivariant(
        lambda p: torch.linalg.cross(p[0], p[1]), pos, "pseudovector", generator=generator, translations=False
    )
    with pytest.raises(AssertionError, match="not permutation-equivariant"):
        assert_permutation_equivariant(
            lambda perm: pos[:, 0] if perm is None else pos[perm, 0] * 1.01, 6, node_outputs=True
        )
    assert_permutation_equivariant(lambda perm: pos if perm is None else pos[perm], 6, node_outputs=True)
