import pytest
import torch

from geomol.data.generation import atom_count_statistics
from geomol.flows.bonds import bonds_from_pairs, pair_bond_types, pair_edge_index, upper_pairs
from geomol.flows.molecule import MolecularFlow
from geomol.flows.sampler import AtomCounts, euler_sample, split_molecules
from geomol.models.propmolflow import PropMolFlow


def _tiny_field(num_properties=0):
    torch.manual_seed(0)
    return PropMolFlow(
        scalars=16, vectors=4, edge_features=8, n_updates=2, n_message_gvps=1, n_update_gvps=1, rbf_dim=8,
        num_properties=num_properties, conditioning={"method": "concatenate_multiply"},
    )  # fmt: skip


def test_pairs_and_bond_labels_round_trip():
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    pairs = upper_pairs(batch)
    assert pairs.size(1) == 3 + 6 and bool((pairs[0] < pairs[1]).all())
    assert torch.equal(batch[pairs[0]], batch[pairs[1]])
    edge_index = torch.tensor([[0, 1, 3, 4, 5, 6], [1, 0, 4, 3, 6, 5]])
    edge_attr = torch.tensor([2, 2, 1, 1, 4, 4])
    labels = pair_bond_types(pairs, edge_index, edge_attr, 7)
    assert labels.sum() == 2 + 1 + 4 and int((labels > 0).sum()) == 3
    back_index, back_attr = bonds_from_pairs(pairs, labels)
    got = {(a, b, c) for (a, b), c in zip(back_index.t().tolist(), back_attr.tolist())}
    assert got == {(a, b, c) for (a, b), c in zip(edge_index.t().tolist(), edge_attr.tolist())}
    assert pair_edge_index(pairs).size(1) == 2 * pairs.size(1)
    with pytest.raises(ValueError, match="two different molecules"):
        pair_bond_types(pairs, torch.tensor([[2], [3]]), torch.tensor([1]), 7)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_sampler_respects_atom_counts_and_unmasks_everything(schedule):
    field = _tiny_field()
    flow = MolecularFlow(schedule=schedule, cosine_nu=2.0)
    n_atoms = torch.tensor([3, 1, 6, 2])
    gen = torch.Generator().manual_seed(1)
    state, batch, pairs = euler_sample(field, flow, n_atoms, steps=6, eta=50.0, temperature=1.0, generator=gen)
    assert torch.equal(torch.bincount(batch), n_atoms)
    assert pairs.size(1) == 3 + 0 + 15 + 1
    assert bool((state.atom_type < 5).all()) and bool((state.charge < 6).all()) and bool((state.bond_type < 5).all())
    assert torch.isfinite(state.pos).all()
    parts = split_molecules(state, batch, pairs)
    assert [p[0].pos.size(0) for p in parts] == n_atoms.tolist()
    assert [p[1].size(1) for p in parts] == [3, 0, 15, 1]
    assert all(bool((p[1] < n).all()) for p, n in zip(parts, n_atoms.tolist()))
    with pytest.raises(ValueError, match="positive atom counts"):
        euler_sample(field, flow, torch.tensor([3, 0]))


def test_conditional_sampler_is_reproducible():
    field = _tiny_field(num_properties=2)
    flow = MolecularFlow()
    cond = torch.tensor([[0.5, -1.0], [2.0, 0.0]])

    def run(seed):
        return euler_sample(
            field, flow, torch.tensor([4, 5]), cond, steps=4, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = run(3)[0], run(3)[0], run(4)[0]
    assert torch.equal(a.pos, b.pos) and torch.equal(a.bond_type, b.bond_type)
    assert not torch.equal(a.pos, c.pos)


def test_atom_counts_follow_the_property_percentile(generator):
    # Synthetic training set: bigger molecules have larger property values.
    n_atoms = torch.randint(3, 20, (4000,), generator=generator)
    prop = n_atoms.double() + 0.5 * torch.randn(4000, dtype=torch.float64, generator=generator)
    other = torch.randn(4000, dtype=torch.float64, generator=generator)
    stats = atom_count_statistics(n_atoms, torch.stack([prop, other], 1), ["size_like", "noise"], bins=10)
    counts = AtomCounts(stats["counts"], stats["given_property"])
    torch.testing.assert_close(counts.probabilities().sum(), torch.tensor(1.0, dtype=torch.float64))
    high = counts.sample(500, {"size_like": 19.0}, generator)
    low = counts.sample(500, {"size_like": 3.0}, generator)
    assert high.float().mean() > 16 and low.float().mean() < 6
    # An uninformative second property leaves the conditional about unchanged.
    both = counts.sample(500, {"size_like": 19.0, "noise": 0.0}, generator)
    assert both.float().mean() > 15
    assert counts.probabilities()[:3].sum() == 0
    with pytest.raises(ValueError, match="no atom-count statistics"):
        counts.probabilities({"gap": 1.0})


class _Combined(torch.nn.Module):
    """The guided step computed independently: the field's conditional and unconditional endpoint
    predictions mixed as ``u + w (c - u)`` outside the sampler, which then samples with guidance 1."""

    def __init__(self, field, weight, variables=(0, 1, 2, 3)):
        super().__init__()
        self.field, self.weight, self.variables = field, weight, variables  # indices into (pos, atom, charge, bond)

    def forward(self, state, condition):
        c = self.field(state, condition)
        u = self.field(state, condition, unconditional=torch.ones(state.t.numel(), dtype=torch.bool))
        return type(c)(*(b + self.weight * (a - b) if k in self.variables else a for k, (a, b) in enumerate(zip(c, u))))


@pytest.mark.parametrize("weight", [0.0, 2.5])
def test_classifier_free_guidance_mixes_conditional_and_null_predictions(weight):
    field = _tiny_field(num_properties=1).double()
    flow = MolecularFlow()
    cond = torch.tensor([[1.5], [-0.5]], dtype=torch.float64)

    def run(net, guidance):
        gen = torch.Generator().manual_seed(5)
        return euler_sample(net, flow, torch.tensor([4, 6]), cond, steps=5, generator=gen, guidance=guidance)[0]

    guided, reference = run(field, weight), run(_Combined(field, weight), 1.0)
    torch.testing.assert_close(guided.pos, reference.pos)
    assert torch.equal(guided.atom_type, reference.atom_type) and torch.equal(guided.bond_type, reference.bond_type)
    plain = run(field, 1.0)
    assert not torch.allclose(guided.pos, plain.pos)
    with pytest.raises(ValueError, match="needs a conditional field"):
        euler_sample(_tiny_field(), flow, torch.tensor([3]), steps=2, guidance=2.0)


def test_guidance_interval_guides_only_its_steps():
    field = _tiny_field(num_properties=1).double()
    flow = MolecularFlow()
    cond = torch.tensor([[1.5], [-0.5]], dtype=torch.float64)

    def run(**kw):
        gen = torch.Generator().manual_seed(5)
        return euler_sample(field, flow, torch.tensor([4, 6]), cond, steps=5, generator=gen, **kw)[0]

    plain, full = run(), run(guidance=3.0)
    assert torch.equal(run(guidance=3.0, guidance_interval=(0.0, 1.0)).pos, full.pos)
    assert torch.equal(run(guidance=3.0, guidance_interval=(0.85, 1.0)).pos, plain.pos)  # steps start at 0 … 0.8
    # Guiding the first steps only moves the molecules less than guiding them all.
    early = run(guidance=3.0, guidance_interval=(0.0, 0.5))
    assert 0 < float((early.pos - plain.pos).abs().max()) < float((full.pos - plain.pos).abs().max())
    with pytest.raises(ValueError, match="guidance_interval must be"):
        run(guidance=2.0, guidance_interval=(0.5, 0.5))


def _guided_setup():
    """A conditional double-precision field and ``run(net, **kw)``: the same two molecules, seed and 5 steps."""
    field = _tiny_field(num_properties=1).double()
    flow = MolecularFlow()
    cond = torch.tensor([[1.5], [-0.5]], dtype=torch.float64)

    def run(net, **kw):
        gen = torch.Generator().manual_seed(5)
        return euler_sample(net, flow, torch.tensor([4, 6]), cond, steps=5, generator=gen, **kw)[0]

    return field, run


def _assert_same_molecules(a, b):
    torch.testing.assert_close(a.pos, b.pos)
    for name in ("atom_type", "charge", "bond_type"):
        assert torch.equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("guidance_on,variables", [(["a"], (1,)), (["x", "e"], (0, 3)), ("c", (2,))])
def test_guidance_on_mixes_only_the_chosen_variables(guidance_on, variables):
    field, run = _guided_setup()
    guided = run(field, guidance=2.5, guidance_on=guidance_on)
    reference = run(_Combined(field, 2.5, variables))
    _assert_same_molecules(guided, reference)
    for bad in ([], ["x", "q"]):
        with pytest.raises(ValueError, match="guidance_on must list some of x, a, c, e"):
            run(field, guidance=2.0, guidance_on=bad)


class _CombinedInTime(_Combined):
    """``_Combined`` whose variables are each mixed only while the step's start time lies in their interval."""

    def __init__(self, field, weight, intervals):
        super().__init__(field, weight)
        self.intervals = intervals  # index into (pos, atom, charge, bond) -> (t_lo, t_hi)

    def forward(self, state, condition):
        now = float(state.t[0])
        self.variables = [k for k, (lo, hi) in self.intervals.items() if lo <= now < hi]
        return super().forward(state, condition)


def test_guidance_interval_per_variable_mixes_each_variable_in_its_own_steps():
    field, run = _guided_setup()
    # Steps start at 0, 0.2, ..., 0.8: bonds guided in the first three, positions in the last two, the rest always.
    guided = run(field, guidance=2.5, guidance_interval={"e": (0.0, 0.5), "x": [0.6, 1]})
    reference = run(_CombinedInTime(field, 2.5, {0: (0.6, 1.0), 1: (0.0, 1.0), 2: (0.0, 1.0), 3: (0.0, 0.5)}))
    _assert_same_molecules(guided, reference)
    # The same for every variable is the plain interval; guidance_on still picks the variables.
    same = {m: (0.0, 0.5) for m in "xace"}
    assert torch.equal(run(field, guidance=2.5, guidance_interval=same).pos,
                       run(field, guidance=2.5, guidance_interval=(0.0, 0.5)).pos)  # fmt: skip
    only = run(field, guidance=2.5, guidance_interval={"e": (0.0, 0.5)}, guidance_on=["e"])
    reference = run(_CombinedInTime(field, 2.5, {3: (0.0, 0.5)}))
    _assert_same_molecules(only, reference)
    for bad, message in (({"q": (0, 1)}, "guidance_interval must map some of x, a, c, e"), ({}, "must map"),
                         ({"e": (0.5, 0.2)}, r"guidance_interval.e must be \[t_lo, t_hi\]"),
                         ({"e": 0.5}, "guidance_interval.e must be")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            run(field, guidance=2.0, guidance_interval=bad)


class _CombinedWeights(torch.nn.Module):
    """The guided step with one weight per variable, mixed outside the sampler."""

    def __init__(self, field, weights):
        super().__init__()
        self.field, self.weights = field, weights  # per (pos, atom, charge, bond)

    def forward(self, state, condition):
        c = self.field(state, condition)
        u = self.field(state, condition, unconditional=torch.ones(state.t.numel(), dtype=torch.bool))
        return type(c)(*(b + w * (a - b) for w, a, b in zip(self.weights, c, u)))


def test_guidance_per_variable_mixes_each_variable_with_its_own_weight():
    field, run = _guided_setup()
    guided = run(field, guidance={"x": 2.5, "a": 0.5, "e": 1.5})  # charges unnamed: weight 1
    reference = run(_CombinedWeights(field, (2.5, 0.5, 1.0, 1.5)))
    _assert_same_molecules(guided, reference)
    # One weight for all is the scalar guidance; weight 1 everywhere is no guidance.
    assert torch.equal(run(field, guidance=dict.fromkeys("xace", 2.5)).pos, run(field, guidance=2.5).pos)
    assert torch.equal(run(field, guidance={"e": 1.0}).pos, run(field).pos)
    for bad, message in (({"q": 2.0}, "guidance must map some of x, a, c, e to weights"), ({}, "must map"),
                         ({"e": -1.0}, "guidance.e must be a finite number >= 0, got -1"),
                         ({"a": float("nan")}, "guidance.a must be a finite number >= 0, got nan"),
                         ({"a": "2"}, "guidance.a must be a finite number")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            run(field, guidance=bad)


class _CombinedPlausible(torch.nn.Module):
    """The guided step with the plausibility constraint computed independently: classes whose conditional
    probability is below ``rho`` times the conditional's largest get a logit of −∞ after mixing."""

    def __init__(self, field, weight, rho):
        super().__init__()
        self.field, self.weight, self.rho = field, weight, rho

    def forward(self, state, condition):
        c = self.field(state, condition)
        u = self.field(state, condition, unconditional=torch.ones(state.t.numel(), dtype=torch.bool))
        out = [u.pos + self.weight * (c.pos - u.pos)]
        for a, b in zip(c[1:], u[1:]):
            p = torch.softmax(a, dim=-1)
            keep = p >= self.rho * p.max(dim=-1, keepdim=True).values
            out.append(torch.where(keep, b + self.weight * (a - b), torch.full_like(a, float("-inf"))))
        return type(c)(*out)


def test_guidance_plausibility_keeps_only_classes_the_conditional_field_finds_plausible():
    field, run = _guided_setup()
    # temperature 1: the draws reach the unlikely classes the constraint removes
    guided = run(field, guidance=3.0, guidance_plausibility=0.5, temperature=1.0)
    _assert_same_molecules(guided, run(_CombinedPlausible(field, 3.0, 0.5), temperature=1.0))
    plain = run(field, guidance=3.0, temperature=1.0)
    assert not torch.equal(guided.bond_type, plain.bond_type)
    # ρ = 0 is plain guidance; without guidance the constraint does nothing (the conditional field's own draws).
    assert torch.equal(run(field, guidance=3.0, guidance_plausibility=0.0, temperature=1.0).bond_type, plain.bond_type)
    assert torch.equal(run(field, guidance_plausibility=0.5).bond_type, run(field).bond_type)
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(ValueError, match="guidance_plausibility must be a number in \\[0, 1\\)"):
            run(field, guidance=2.0, guidance_plausibility=bad)
