import itertools
import math

import numpy as np
import pytest
import torch

from geomol.nn.graph import full_graph
from geomol.nn.ponita import (
    ConvNextBlock,
    EdgeLiftedSpace,
    FiberBundleConv,
    FiberBundleSpace,
    PointConv,
    PolynomialFeatures,
    PositionSpace,
    distance_invariants,
    fiber_bundle_invariants,
    fibonacci_grid,
    lift_to_edges,
    lifted_graph,
    point_invariants,
    ponita_space,
    random_rotation_matrix,
    repulsion_grid,
    sphere_to_scalar,
    sphere_to_vector,
    spherical_grid,
    vector_to_sphere,
)
from geomol.testing import random_rotation

ICOSAHEDRON_ANGLE = math.degrees(math.atan(2.0))  # 63.43°, nearest-neighbour angle of the icosahedron


def min_angle_deg(grid: torch.Tensor) -> float:
    cos = (grid @ grid.T).fill_diagonal_(-1.0)
    return math.degrees(math.acos(float(cos.max().clamp(-1.0, 1.0))))


def fejes_toth_bound_deg(n: int) -> float:
    """Upper bound on the smallest angle between n points on S² (Fejes Tóth 1943)."""
    omega = n / (n - 2) * math.pi / 6
    return math.degrees(math.acos((1 / math.tan(omega) ** 2 - 1) / 2))


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_point_invariants_equal_their_formulas(generator):
    pos = torch.randn(6, 3, dtype=torch.float64, generator=generator)
    ori = unit(torch.randn(6, 3, dtype=torch.float64, generator=generator))
    edge_index = full_graph(torch.zeros(6, dtype=torch.long), loop=True)
    got = point_invariants(pos, ori, edge_index, complete=True)
    for e, (j, i) in enumerate(edge_index.T.tolist()):
        r, o_i, o_j = (pos[j] - pos[i]).numpy(), ori[i].numpy(), ori[j].numpy()
        expected = [r @ o_i, np.linalg.norm(r - (r @ o_i) * o_i), o_i @ o_j, r @ o_j]
        np.testing.assert_allclose(got[e].numpy(), expected, atol=1e-12)
    # Three PONITA invariants are the first three columns of the complete set.
    torch.testing.assert_close(point_invariants(pos, ori, edge_index), got[:, :3])
    # ‖r‖² = a₁² + a₂²: the first two carry the distance.
    torch.testing.assert_close(got[:, 0] ** 2 + got[:, 1] ** 2, distance_invariants(pos, edge_index)[:, 0] ** 2)


def test_fiber_bundle_invariants_are_point_invariants_on_the_grid(generator):
    pos = torch.randn(5, 3, dtype=torch.float64, generator=generator)
    grid = fibonacci_grid(7)
    edge_index = full_graph(torch.zeros(5, dtype=torch.long), loop=True)
    spatial, fiber = fiber_bundle_invariants(pos, grid, edge_index)
    assert spatial.shape == (edge_index.size(1), 7, 2) and fiber.shape == (7, 7, 1)
    for o in range(7):
        ori = grid[o].expand(5, 3)
        torch.testing.assert_close(spatial[:, o], point_invariants(pos, ori, edge_index)[:, :2])
    torch.testing.assert_close(fiber[..., 0], grid @ grid.T)


def test_invariants_do_not_change_under_rotations_and_reflections(generator):
    pos = torch.randn(5, 3, dtype=torch.float64, generator=generator)
    ori = unit(torch.randn(5, 3, dtype=torch.float64, generator=generator))
    edge_index = full_graph(torch.zeros(5, dtype=torch.long))
    base = point_invariants(pos, ori, edge_index, complete=True)
    for reflect in (False, True):
        R = random_rotation(generator=generator, reflection=reflect)
        t = torch.randn(3, dtype=torch.float64, generator=generator)
        moved = point_invariants(pos @ R.T + t, ori @ R.T, edge_index, complete=True)
        torch.testing.assert_close(moved, base, atol=1e-12, rtol=1e-12)


def test_fourth_invariant_separates_pairs_the_three_cannot():
    # Receiver at the origin pointing along z, sender at r = (1, 0, 1); the sender's orientation is
    # turned about the receiver's axis: the three PONITA invariants stay, the pairs are not congruent.
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]], dtype=torch.float64)
    edge = torch.tensor([[1], [0]])
    angle = 0.7
    inv = []
    for phi in (0.3, 0.3 + angle):
        o_j = torch.tensor([math.sin(angle) * math.cos(phi), math.sin(angle) * math.sin(phi), math.cos(angle)])
        ori = torch.stack([torch.tensor([0.0, 0.0, 1.0]), o_j]).double()
        inv.append(point_invariants(pos, ori, edge, complete=True)[0])
    torch.testing.assert_close(inv[0][:3], inv[1][:3])
    assert abs(float(inv[0][3] - inv[1][3])) > 0.1


def test_repulsion_grid_is_near_uniform_and_seeded():
    grid = repulsion_grid(20, seed=0)
    angle, bound, fib = min_angle_deg(grid), fejes_toth_bound_deg(20), min_angle_deg(fibonacci_grid(20))
    print(f"min pairwise angle, 20 points: repulsion {angle:.2f}°, fibonacci {fib:.2f}°, bound {bound:.2f}°")
    torch.testing.assert_close(grid.norm(dim=-1), torch.ones(20, dtype=torch.float64))
    assert angle > 0.94 * bound and angle > fib + 4.0
    # Uniform to second order: centred, and (1/O) Σ o oᵀ ≈ I/3 (the vector readout relies on it).
    assert grid.mean(0).norm() < 1e-6
    assert (grid.T @ grid / 20 - torch.eye(3, dtype=torch.float64) / 3).abs().max() < 2e-3
    torch.testing.assert_close(repulsion_grid(20, seed=0), grid, atol=0, rtol=0)
    assert not torch.allclose(repulsion_grid(20, seed=1), grid)


def test_repulsion_finds_the_icosahedron():
    grid = repulsion_grid(12, seed=3)
    assert abs(min_angle_deg(grid) - ICOSAHEDRON_ANGLE) < 1e-6
    # Every point has exactly five nearest neighbours at that angle.
    cos = grid @ grid.T
    assert ((cos - 1 / math.sqrt(5)).abs() < 1e-8).sum(1).tolist() == [5] * 12


def test_fibonacci_grid_and_kind_errors():
    grid = spherical_grid(50, "fibonacci")
    torch.testing.assert_close(grid.norm(dim=-1), torch.ones(50, dtype=torch.float64))
    assert grid.mean(0).norm() < 0.02 and min_angle_deg(grid) > 0.7 * fejes_toth_bound_deg(50)
    with pytest.raises(ValueError, match="unknown grid kind"):
        spherical_grid(10, "healpix")
    with pytest.raises(ValueError, match="at least one point"):
        repulsion_grid(0)


def test_random_rotation_matrix_is_a_rotation(generator):
    R = random_rotation_matrix(torch.float64, generator=generator)
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64))
    assert abs(float(torch.det(R)) - 1.0) < 1e-12


def test_polynomial_features_are_the_monomials():
    x = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    feats = PolynomialFeatures(2, degree=3)
    a, b = 2.0, 3.0
    expected = [a, b, a * a, a * b, b * b, a**3, a * a * b, a * b * b, b**3]
    assert feats.num_features == 9
    torch.testing.assert_close(feats(x)[0], torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected 2 input features"):
        feats(torch.zeros(1, 3))


def test_convolutions_match_brute_force(generator):
    n, o, c, b = 4, 5, 3, 6
    torch.manual_seed(0)
    edge_index = full_graph(torch.zeros(n, dtype=torch.long), loop=True)
    x = torch.randn(n, o, c, dtype=torch.float64, generator=generator)
    basis = torch.randn(edge_index.size(1), o, b, dtype=torch.float64, generator=generator)
    fiber_basis = torch.randn(o, o, b, dtype=torch.float64, generator=generator)
    conv = FiberBundleConv(c, b).double()
    with torch.no_grad():
        conv.bias.normal_()
    got = conv(x, edge_index, basis, fiber_basis)
    W, Wf = conv.kernel.weight, conv.fiber_kernel.weight  # [C, B]
    expected = torch.zeros(n, o, c, dtype=torch.float64)
    for i in range(n):
        for p in range(o):
            for q in range(o):
                spatial = sum(
                    (W @ basis[e, q]) * x[j, q] for e, (j, target) in enumerate(edge_index.T.tolist()) if target == i
                )
                expected[i, p] += (Wf @ fiber_basis[q, p]) * spatial / o
            expected[i, p] += conv.bias
    torch.testing.assert_close(got, expected)

    point = PointConv(c, b).double()
    xs = x[:, 0]
    flat_basis = basis[:, 0]
    got = point(xs, edge_index, flat_basis)
    expected = torch.stack(
        [
            sum(
                (point.kernel.weight @ flat_basis[e]) * xs[j]
                for e, (j, t) in enumerate(edge_index.T.tolist())
                if t == i
            )
            + point.bias
            for i in range(n)
        ]
    )
    torch.testing.assert_close(got, expected)


def test_convnext_block_is_residual_with_small_layer_scale(generator):
    block = ConvNextBlock(4, PointConv(4, 3), widening_factor=2, layer_scale=1e-6).double()
    x = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    edge_index = full_graph(torch.zeros(3, dtype=torch.long), loop=True)
    basis = torch.randn(edge_index.size(1), 3, dtype=torch.float64, generator=generator)
    out = block(x, edge_index, basis)
    assert (out - x).abs().max() < 1e-4 and (out - x).abs().max() > 0


def test_lifted_graph_matches_brute_force():
    # Three atoms; atom 2 has no lifted points.
    base = torch.tensor([0, 1, 0, 1, 1])
    edge_index = torch.tensor([[0, 1, 0, 2, 1], [0, 0, 1, 1, 2]])
    got = set(map(tuple, lifted_graph(edge_index, base, num_nodes=3).T.tolist()))
    expected = {
        (s, t)
        for (b, a) in edge_index.T.tolist()
        for s, t in itertools.product(range(5), range(5))
        if base[s] == b and base[t] == a
    }
    assert got == expected and len(got) == lifted_graph(edge_index, base, 3).size(1)


def test_lift_to_edges(generator):
    pos = torch.randn(4, 3, dtype=torch.float64, generator=generator)
    edge_index = full_graph(torch.zeros(4, dtype=torch.long))
    base, ori = lift_to_edges(pos, edge_index)
    torch.testing.assert_close(base, edge_index[1])
    torch.testing.assert_close(ori, unit(pos[edge_index[0]] - pos[edge_index[1]]))
    with pytest.raises(ValueError, match="self-loops"):
        lift_to_edges(pos, torch.tensor([[1], [1]]))


def test_sphere_lifting_and_readouts(generator):
    vec = torch.randn(2, 3, 3, dtype=torch.float64, generator=generator)
    # The icosahedron is a spherical 5-design: (1/O) Σ o oᵀ = I/3 exactly.
    grid = repulsion_grid(12, seed=3)
    torch.testing.assert_close(sphere_to_vector(vector_to_sphere(vec, grid), grid), vec / 3)
    grid = repulsion_grid(20)
    torch.testing.assert_close(sphere_to_vector(vector_to_sphere(vec, grid), grid), vec / 3, atol=5e-3, rtol=0)
    f = torch.randn(2, 20, 4, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(sphere_to_scalar(f), f.mean(1))
    # Rotating the grid rotates the vector readout of the same spherical signal.
    R = random_rotation(generator=generator)
    torch.testing.assert_close(sphere_to_vector(f, grid @ R.T), sphere_to_vector(f, grid) @ R.T)


def test_self_loops_have_finite_second_derivatives(generator):
    pos = torch.randn(4, 3, dtype=torch.float64, generator=generator).requires_grad_(True)
    edge_index = full_graph(torch.zeros(4, dtype=torch.long), loop=True)
    spatial, _ = fiber_bundle_invariants(pos, fibonacci_grid(6), edge_index)
    energy = (spatial.pow(2).sum(-1) + spatial[..., 1]).sin().sum() + distance_invariants(pos, edge_index).sum()
    (grad,) = torch.autograd.grad(energy, pos, create_graph=True)
    (second,) = torch.autograd.grad(grad.pow(2).sum(), pos)
    assert torch.isfinite(grad).all() and torch.isfinite(second).all()


def test_spaces_lift_and_read_out(generator):
    """num_ori picks the space; a space holds no state, and reading out a lifted constant gives it back."""
    assert type(ponita_space(0)) is PositionSpace and type(ponita_space(-1)) is EdgeLiftedSpace
    grid_space = ponita_space(12, grid_seed=3)
    assert type(grid_space) is FiberBundleSpace and not ponita_space(-1).state_dict() and not grid_space.state_dict()
    pos = torch.randn(5, 3, dtype=torch.float64, generator=generator)
    batch = torch.zeros(5, dtype=torch.long)
    edge_index = full_graph(batch, loop=True)
    scalars = torch.randn(5, 2, dtype=torch.float64, generator=generator)
    vectors = torch.randn(5, 1, 3, dtype=torch.float64, generator=generator)
    no_vector = scalars[:, :0]
    r3 = PositionSpace().lift(pos, batch, edge_index, scalars)
    torch.testing.assert_close(r3.invariants[0], distance_invariants(pos, edge_index))
    assert PositionSpace().readout(scalars, no_vector, r3) == (scalars, None)
    lifted = EdgeLiftedSpace().lift(pos, batch, edge_index, scalars, vectors)
    assert lifted.features.shape == (20, 3) and lifted.invariants[0].shape == (lifted.edge_index.size(1), 3)
    torch.testing.assert_close(EdgeLiftedSpace().readout(lifted.features[:, :2], no_vector, lifted)[0], scalars)
    grid = repulsion_grid(12, seed=3)  # a spherical 5-design: the readout inverts the lift up to 1/3
    on_grid = grid_space.eval().lift(pos, batch, edge_index, scalars, vectors, grid)
    scalar, vector = grid_space.readout(on_grid.features[..., :2], on_grid.features[..., 2:], on_grid)
    torch.testing.assert_close(scalar, scalars)
    torch.testing.assert_close(vector, vectors / 3)
    with pytest.raises(ValueError, match="complete_invariants"):
        ponita_space(8, complete_invariants=True)
