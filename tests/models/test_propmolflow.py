import json
from pathlib import Path

import pytest
import torch

from geomol.checkpoints import load_task
from geomol.flows.bonds import pair_edge_index, upper_pairs
from geomol.flows.generator import GENERATION_TASK
from geomol.flows.molecule import MoleculeState
from geomol.flows.sampler import euler_sample
from geomol.models.propmolflow import PropMolFlow
from geomol.nn.graph import edge_vectors
from geomol.testing import assert_equivariant, assert_permutation_equivariant


def _inputs(generator, num_properties=0):
    """A noisy two-molecule state and its condition (None when unconditional)."""
    batch = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    pairs = upper_pairs(batch)
    state = MoleculeState(
        atom_type=torch.randint(0, 6, (8,), generator=generator),
        charge=torch.randint(0, 7, (8,), generator=generator),
        pos=torch.randn(8, 3, dtype=torch.float64, generator=generator),
        bond_type=torch.randint(0, 6, (pairs.size(1),), generator=generator),
        pairs=pairs,
        t=torch.rand(2, dtype=torch.float64, generator=generator),
        batch=batch,
    )
    condition = torch.randn(2, num_properties, dtype=torch.float64, generator=generator) if num_properties else None
    return state, condition


def _field(**kw):
    torch.manual_seed(0)
    return PropMolFlow(scalars=16, vectors=4, edge_features=8, n_updates=2, rbf_dim=8, **kw).double()


@pytest.mark.parametrize("num_properties", [0, 2])
def test_field_is_se3_equivariant(num_properties, generator):
    field = _field(
        num_properties=num_properties, conditioning={"method": "concatenate_sum", "gaussian_expansion": True}
    )
    state, condition = _inputs(generator, num_properties)
    # Predicted positions are centred: they rotate and ignore shifts. Logits are invariant.
    assert_equivariant(
        lambda x: tuple(field(state._replace(pos=x), condition)),
        state.pos,
        output=("vector", "scalar", "scalar", "scalar"),
        reflections=False,
        generator=generator,
    )


def test_field_is_not_reflection_equivariant(generator):
    field = _field()
    state, _ = _inputs(generator)
    with pytest.raises(AssertionError, match="reflection"):
        assert_equivariant(
            lambda x: tuple(field(state._replace(pos=x))), state.pos, output=("vector", "scalar", "scalar", "scalar")
        )


def test_field_is_permutation_equivariant(generator):
    field = _field()
    state, _ = _inputs(generator)

    def run(p):
        if p is None:
            res = field(state)
            return res.pos, res.atom_logits, res.charge_logits
        batch = state.batch[p]
        pairs = upper_pairs(batch)
        # The token of new pair (x, y) is that of the old pair of atoms (p[x], p[y]).
        old = {(int(a), int(b)): k for k, (a, b) in enumerate(state.pairs.t())}
        lo, hi = torch.minimum(p[pairs[0]], p[pairs[1]]), torch.maximum(p[pairs[0]], p[pairs[1]])
        order = torch.tensor([old[(int(a), int(b))] for a, b in zip(lo, hi)])
        res = field(
            MoleculeState(
                atom_type=state.atom_type[p],
                charge=state.charge[p],
                pos=state.pos[p],
                bond_type=state.bond_type[order],
                pairs=pairs,
                t=state.t,
                batch=batch,
            )
        )
        return res.pos, res.atom_logits, res.charge_logits

    assert_permutation_equivariant(run, 8, node_outputs=True, generator=generator)


def test_field_checks_its_conditioning(generator):
    state, condition = _inputs(generator, 1)
    with pytest.raises(ValueError, match="0 conditioning properties"):
        _field()(state, condition)
    with pytest.raises(ValueError, match="1 conditioning properties"):
        _field(num_properties=1)(state, None)


def test_field_needs_the_graph_and_time_of_the_state(generator):
    state, _ = _inputs(generator)
    with pytest.raises(ValueError, match="the field needs the state's pairs, batch and t; t missing"):
        _field()(state._replace(t=None))
    with pytest.raises(ValueError, match="pairs, batch missing"):
        _field()(MoleculeState(state.pos, state.atom_type, state.charge, state.bond_type, t=state.t))


def test_geometry_once_per_pair_equals_every_edge():
    field = PropMolFlow(scalars=8, vectors=2, edge_features=4, n_updates=1, rbf_dim=6).double()
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    pairs = upper_pairs(batch)
    pos = torch.randn(7, 3, dtype=torch.float64)
    unit, rbf = field._geometry(pos, pairs)
    vec, dist = edge_vectors(pos, pair_edge_index(pairs))
    assert torch.equal(unit, vec / (dist.unsqueeze(-1) + 1e-8))  # bit for bit: negation and lengths are exact
    assert torch.equal(rbf, field.rbf(dist))


def test_shipped_checkpoint_samples_the_molecules_it_sampled_before():
    # Molecules of propmolflow_qm9_gap_cpu (the demo's checkpoint, which is not retrained) sampled by geomol
    # before issue #15's CPU work (the fixture's "about"; bench/before.py ran the old field and sampler): the
    # faster field and GVP layers draw the same tokens and positions up to float rounding.
    reference = json.loads((Path(__file__).parents[1] / "fixtures" / "propmolflow_small_before.json").read_text())
    task = load_task("propmolflow_qm9_gap_cpu", expected=GENERATION_TASK)
    with torch.no_grad():
        state, _, _ = euler_sample(task.net, task.flow, torch.tensor(reference["n_atoms"]),
                                   torch.tensor(reference["condition"]), steps=reference["steps"], eta=10.0,
                                   temperature=0.05, generator=torch.Generator().manual_seed(reference["seed"]))  # fmt: skip
    for key in ("atom_type", "charge", "bond_type"):
        assert getattr(state, key).tolist() == reference[key], key
    torch.testing.assert_close(state.pos, torch.tensor(reference["pos"]), atol=1e-5, rtol=0)
