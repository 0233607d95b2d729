"""The conditional-generation protocol on real QM9 molecules: an oracle judge scores 0, shuffling the
requested values costs what the property's spread says, and an overfit regressor sits between."""

import numpy as np
import pytest
import torch
from pytorch_lightning.utilities.parsing import AttributeDict
from rdkit import Chem

from geomol.data.chem import mol_from_graph
from geomol.data.qm9 import TARGETS
from geomol.metrics.conditional import (
    conditional_report,
    format_report,
    fraction_beyond,
    property_reference,
    quantile_sample,
    readable_mask,
)
from geomol.models.regressor import GVPRegressor

GAP, MU = TARGETS.index("gap"), TARGETS.index("mu")


def _mols(data):
    return [mol_from_graph(d.z, d.pos, d.charge, d.edge_index, d.edge_attr, sanitize=False) for d in data]


class Oracle(torch.nn.Module):
    """A "regressor" that looks each molecule up and returns its true labels."""

    def __init__(self, data, columns, names):
        super().__init__()
        self.data, self.columns = data, columns
        self.hparams = AttributeDict(targets=names, units=["eV", "D"][: len(names)], elements=[1, 6, 7, 8, 9])

    def forward(self, z, pos, batch):
        out = []
        for g in range(int(batch.max()) + 1):
            p = pos[batch == g].double()
            match = [d for d in self.data if d.pos.shape == p.shape and torch.allclose(d.pos.double(), p, atol=1e-4)]
            assert len(match) == 1
            out.append(match[0].y[0, self.columns].double() if match[0].y.dim() == 2 else match[0].y[self.columns])
        return torch.stack(out)


def _labels(data, column):
    return torch.tensor([float(d.y.flatten()[column]) for d in data], dtype=torch.float64)


def test_oracle_scores_zero_and_shuffling_costs_the_spread(qm9_fixture):
    data = qm9_fixture[:60]
    mols = _mols(data)
    gap, mu = _labels(data, GAP), _labels(data, MU)
    train = qm9_fixture[100:]
    record = property_reference(
        torch.stack([_labels(train, GAP), _labels(train, MU)], 1),
        torch.tensor([d.z.numel() for d in train]),
        torch.stack([gap, mu], 1),
        ["gap", "mu"],
    )
    record["metrics"] = {"mae_gap": 123.0, "mae_mu": 0.25}
    rows, pred, readable = conditional_report(Oracle(data, [GAP, MU], ["gap", "mu"]), mols, {"gap": gap, "mu": mu},
                                              record=record)  # fmt: skip
    assert bool(readable.all()) and pred.shape == (60, 2)
    by_name = {row["name"]: row for row in rows}
    for name, values in (("gap", gap), ("mu", mu)):
        row = by_name[name]
        assert row["mae"] == 0.0 and row["mae_valid"] == 0.0 and row["scored"] == 60
        # Shuffling: the mean absolute difference of two independent draws, E|X - X'|, by hand.
        pairwise = (values[:, None] - values[None, :]).abs().sum() / (60 * 59)
        assert row["shuffled"] == pytest.approx(float(pairwise), rel=0.15)
        assert row["atoms_baseline"] > 0
    assert by_name["gap"]["lower_bound"] == pytest.approx(0.123)  # stored in meV, reported in eV
    assert by_name["mu"]["lower_bound"] == pytest.approx(0.25)
    text = format_report(rows)
    assert "gap" in text and "meV" in text and "60/60" in text


def test_overfit_regressor_beats_the_shuffled_bound(qm9_fixture):
    data = qm9_fixture[:16]
    mols = _mols(data)
    gap = _labels(data, GAP)
    mean, std = gap.mean(), gap.std()
    torch.manual_seed(0)
    net = GVPRegressor(out_channels=1, scalars=32, vectors=4, num_layers=2).double()
    z = torch.cat([d.z for d in data])
    pos = torch.cat([d.pos for d in data]).double()
    batch = torch.cat([torch.full((d.z.numel(),), k) for k, d in enumerate(data)])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = (net(z, pos, batch)[:, 0] - (gap - mean) / std).abs().mean()
        loss.backward()
        opt.step()

    class Regressor(torch.nn.Module):
        hparams = AttributeDict(targets=["gap"], units=["eV"], elements=[1, 6, 7, 8, 9])

        def forward(self, z, pos, batch):
            return net(z, pos.double(), batch) * std + mean

    rows, _, _ = conditional_report(Regressor(), mols, {"gap": gap})
    assert rows[0]["mae"] < 0.5 * rows[0]["shuffled"], rows[0]


def test_constant_request_reports_the_ood_fraction(qm9_fixture):
    data = qm9_fixture[:40]
    gap = _labels(data, GAP)
    quantiles = torch.quantile(gap, torch.linspace(0, 1, 501, dtype=torch.float64)).tolist()
    target = float(torch.quantile(gap, 0.9))
    rows, _, _ = conditional_report(Oracle(data, [GAP], ["gap"]), _mols(data), {"gap": torch.full((40,), target)},
                                    record={"test_quantiles": {"gap": quantiles}})  # fmt: skip
    ood = rows[0]["ood"]
    assert ood["side"] == "above"
    assert ood["generated"] == pytest.approx(float((gap > target).double().mean()))
    assert ood["qm9_test"] == pytest.approx(0.1, abs=0.01)
    assert "predicted above it" in format_report(rows)


def test_quantile_sample_redraws_the_distribution():
    values = torch.randn(20000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 + 5
    quantiles = torch.quantile(values, torch.linspace(0, 1, 501, dtype=torch.float64)).tolist()
    draws = quantile_sample(quantiles, 50000, torch.Generator().manual_seed(0))
    assert float(draws.mean()) == pytest.approx(5.0, abs=0.05) and float(draws.std()) == pytest.approx(2.0, abs=0.05)
    assert draws.min() >= quantiles[0] and draws.max() <= quantiles[-1]
    again = quantile_sample(quantiles, 50000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    assert fraction_beyond(quantiles, float(np.percentile(values.numpy(), 99))) == pytest.approx(0.01, abs=0.002)


def test_unreadable_molecules_are_not_scored(qm9_fixture):
    mols = _mols(qm9_fixture[:3])
    sulfur = Chem.RWMol(mols[1])
    sulfur.GetAtomWithIdx(0).SetAtomicNum(16)
    empty = Chem.Mol()
    mask = readable_mask([mols[0], sulfur.GetMol(), empty, mols[2]], [1, 6, 7, 8, 9])
    assert mask.tolist() == [True, False, False, True]
