import copy

import pytest
import torch
import torch_geometric.nn.models.dimenet as pyg_dimenet

from geomol.models.dimenet import DimeNet, DimeNetPlusPlus
from geomol.nn.graph import radius_graph, triplets
from geomol.testing import assert_equivariant, assert_permutation_equivariant

SMALL = dict(hidden_channels=16, out_channels=2, num_blocks=2, num_spherical=3, num_radial=3, cutoff=4.0)
EXTRA = {DimeNet: dict(num_bilinear=4), DimeNetPlusPlus: dict(int_emb_size=8, basis_emb_size=4, out_emb_channels=24)}


def pyg_triplets(edge_index, num_nodes):
    """PyG's ``triplets`` (torch-sparse) replaced by geomol's, in PyG's return order."""
    t = triplets(edge_index, num_nodes)
    return edge_index[1], edge_index[0], t.idx_i, t.idx_j, t.idx_k, t.idx_kj, t.idx_ji


@pytest.fixture(scope="module")
def pyg_models():
    """PyG's DimeNet and DimeNet++ (float64), runnable with geomol's pure-torch graph ops patched in."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pyg_dimenet, "radius_graph", radius_graph)
        patch.setattr(pyg_dimenet, "triplets", pyg_triplets)
        torch.manual_seed(0)
        yield {
            cls: pyg_cls(**SMALL, **EXTRA[cls], output_initializer="glorot_orthogonal").double()
            for cls, pyg_cls in [(DimeNet, pyg_dimenet.DimeNet), (DimeNetPlusPlus, pyg_dimenet.DimeNetPlusPlus)]
        }


def molecules(generator, dtype=torch.float64):
    """Three molecule-sized clusters (5, 9 and 7 atoms) with atoms at least 0.9 Å apart."""
    sizes = [5, 9, 7]
    clusters = []
    for n in sizes:
        while True:
            pos = 1.3 * torch.randn(n, 3, generator=generator, dtype=dtype)
            if torch.pdist(pos).min() > 0.9:
                break
        clusters.append(pos)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    z = torch.randint(1, 10, (batch.numel(),), generator=generator)
    return z, torch.cat(clusters), batch


def small_model(cls, dtype=torch.float64):
    torch.manual_seed(1)
    return cls(**SMALL, **EXTRA[cls], output_initializer="glorot_orthogonal").to(dtype)


@pytest.mark.parametrize("cls", [DimeNet, DimeNetPlusPlus], ids=["dimenet", "dimenet++"])
def test_from_pyg_agrees(pyg_models, generator, cls):
    theirs = pyg_models[cls]
    ours = cls.from_pyg(theirs)
    z, pos, batch = molecules(generator)
    pos.requires_grad_()
    expected, got = theirs(z, pos, batch), ours(z, pos, batch)
    assert got.shape == (3, 2) and expected.abs().min() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Forces agree too.
    (f_expected,) = torch.autograd.grad(expected.sum(), pos, create_graph=True)
    (f_got,) = torch.autograd.grad(got.sum(), pos, create_graph=True)
    torch.testing.assert_close(f_got, f_expected, rtol=1e-5, atol=1e-5)
    # So do the parameter gradients of a force loss: second derivatives, through TripletSum's own
    # backward. PyG's Bessel roots and normalisers are float32-accurate (≈1e-7), which second
    # derivatives amplify: compare each gradient to 1e-5 of its own scale.
    names, params = zip(*theirs.named_parameters())
    g_expected = torch.autograd.grad(f_expected.pow(2).sum(), params)
    g_got = torch.autograd.grad(f_got.pow(2).sum(), [ours.get_parameter(name) for name in names])
    for name, a, b in zip(names, g_got, g_expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item(), msg=name)
    # A float32 PyG model gives a float32 geomol model.
    ours32 = cls.from_pyg(copy.deepcopy(theirs).float())
    assert ours32.rbf.freq.dtype == torch.float32
    torch.testing.assert_close(ours32(z, pos.detach().float(), batch).double(), expected, rtol=1e-4, atol=1e-4)


def test_from_pyg_rejects_other_models(pyg_models):
    with pytest.raises(ValueError, match="DimeNetPlusPlus"):
        DimeNetPlusPlus.from_pyg(pyg_models[DimeNet])
    with pytest.raises(ValueError, match="DimeNet"):
        DimeNet.from_pyg(pyg_models[DimeNetPlusPlus])


@pytest.mark.parametrize("cls", [DimeNet, DimeNetPlusPlus], ids=["dimenet", "dimenet++"])
def test_invariance_and_equivariant_forces(generator, cls):
    model = small_model(cls)
    z, pos, batch = molecules(generator)

    def energy_and_forces(pos):
        pos = pos.detach().requires_grad_()
        energy = model(z, pos, batch)
        (grad,) = torch.autograd.grad(energy.sum(), pos)
        return energy, -grad

    assert_equivariant(energy_and_forces, pos, ("scalar", "vector"), generator=generator, trials=2)

    def permuted(perm):
        if perm is None:
            return model(z, pos, batch)
        return model(z[perm], pos[perm], batch[perm])

    assert_permutation_equivariant(permuted, z.numel(), generator=generator)


def test_collinear_triplets_have_finite_second_derivatives():
    # H-C≡N is linear: |a × b| = 0 at the angle π, where atan2's gradient must stay finite.
    model = small_model(DimeNetPlusPlus)
    z = torch.tensor([1, 6, 7])
    pos = torch.tensor([[0.0, 0.0, -1.06], [0.0, 0.0, 0.0], [0.0, 0.0, 1.16]], dtype=torch.float64, requires_grad=True)
    energy = model(z, pos, None)
    (forces,) = torch.autograd.grad(energy.sum(), pos, create_graph=True)
    grads = torch.autograd.grad(forces.pow(2).sum(), list(model.parameters()))
    assert torch.isfinite(forces).all() and all(torch.isfinite(g).all() for g in grads)


def test_loss_decreases_on_qm9(tmp_path, fixtures_dir):
    from torch_geometric.loader import DataLoader

    from geomol.data.qm9 import QM9

    dataset = QM9(root=tmp_path, source=fixtures_dir / "qm9")
    column = QM9.target_index("U0_atom")  # atomization energy (eV), extensive: a sum over atoms
    per_atom = torch.stack([dataset[i].y[0, column] / dataset[i].z.numel() for i in range(len(dataset))])
    loader = DataLoader([dataset[i] for i in range(64)], batch_size=16, shuffle=True)
    torch.manual_seed(0)
    model = DimeNetPlusPlus(
        hidden_channels=32, out_channels=1, num_blocks=2, int_emb_size=16, basis_emb_size=4,
        out_emb_channels=32, num_spherical=4, num_radial=4,
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(8):  # 32 steps
        for batch in loader:
            atoms = torch.bincount(batch.batch)
            # L1 per atom, in units of the per-atom spread of the target.
            error = model(batch.z, batch.pos, batch.batch).squeeze(1) - batch.y[:, column] / per_atom.std()
            loss = (error / atoms).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.4 * first, f"L1 loss went from {first:.3f} to {last:.3f}"


@pytest.mark.slow
def test_torch_compile_matches_eager(generator):
    # Graph construction and the sparse triplet sums run eagerly; the dense blocks are compiled.
    model = small_model(DimeNetPlusPlus)
    z, pos, batch = molecules(generator)
    compiled = torch.compile(model)
    energy = compiled(z, pos.requires_grad_(), batch)
    (forces,) = torch.autograd.grad(energy.sum(), pos)
    expected = model(z, pos, batch)
    (expected_forces,) = torch.autograd.grad(expected.sum(), pos)
    torch.testing.assert_close(energy, expected)
    torch.testing.assert_close(forces, expected_forces)


def test_bad_input():
    model = small_model(DimeNetPlusPlus)
    z = torch.tensor([1, 6])
    with pytest.raises(ValueError, match="pos"):
        model(z, torch.zeros(3, 3, dtype=torch.float64), None)
    with pytest.raises(ValueError, match="atomic numbers"):
        model(torch.tensor([1, 120]), torch.zeros(2, 3, dtype=torch.float64), None)
    with pytest.raises(ValueError, match="num_spherical"):
        DimeNet(16, 1, 1, 2, num_spherical=1, num_radial=3)
