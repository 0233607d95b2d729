from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from rdkit import Chem

from geomol.data.generation import QM9GenerationDataModule
from geomol.data.qm9 import TARGETS
from geomol.tasks.generation import GenerationTask

FIXTURE = Path(__file__).parents[1] / "fixtures" / "qm9"
TINY_NET = {
    "_target_": "geomol.models.propmolflow.PropMolFlow",
    "scalars": 32,
    "vectors": 4,
    "edge_features": 16,
    "n_updates": 2,
    "n_message_gvps": 1,
    "n_update_gvps": 1,
    "rbf_dim": 8,
    "conditioning": {"method": "concatenate_multiply", "gaussian_expansion": True},
}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3}


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    dm = QM9GenerationDataModule(root=tmp_path_factory.mktemp("qm9"), source=FIXTURE, batch_size=32, seed=0)
    dm.setup()
    return dm


def _task(datamodule, **kw):
    torch.manual_seed(0)
    return GenerationTask(net=TINY_NET, **datamodule.task_kwargs(), optimizer=ADAM, **kw)


def test_task_kwargs_use_the_generator_half(datamodule):
    kwargs = datamodule.task_kwargs()
    train = datamodule.splits["train"]
    gap = datamodule.dataset.y[train, TARGETS.index("gap")]
    assert kwargs["mean"][TARGETS.index("gap")] == pytest.approx(gap.mean().item())
    assert sum(kwargs["atom_counts"]["counts"]) == train.numel()
    # 400 fixture molecules -> 306 training molecules -> 153 in the generator half.
    assert train.numel() == 153
    with pytest.raises(ValueError, match="with_bonds"):
        QM9GenerationDataModule(source=FIXTURE, with_bonds=False)


def test_kekulize_serves_each_aromatic_molecule_as_a_kekule_structure_of_itself(tmp_path):
    from geomol.data.chem import mol_from_graph

    plain = QM9GenerationDataModule(root=tmp_path, source=FIXTURE, batch_size=32, seed=0)
    kekule = QM9GenerationDataModule(root=tmp_path, source=FIXTURE, batch_size=32, seed=0, kekulize=True)
    plain.setup(), kekule.setup()
    aromatic = 0
    for k in plain.splits["train"].tolist():
        a, b = plain.dataset[k], kekule.dataset[k]
        assert torch.equal(a.edge_index, b.edge_index) and not bool((b.edge_attr == 4).any())
        if bool((a.edge_attr == 4).any()):
            aromatic += 1
            assert bool((b.edge_attr == 2).any())  # each ring gets its double bonds
        else:
            assert torch.equal(a.edge_attr, b.edge_attr)
        # The same molecule: RDKit perceives the Kekulé form as the aromatic one.
        smiles = [Chem.MolToSmiles(mol_from_graph(d.z, d.pos, d.charge, d.edge_index, d.edge_attr)) for d in (a, b)]
        assert smiles[0] == smiles[1]
    assert aromatic >= 3, aromatic  # the fixture holds aromatic molecules
    with pytest.raises(ValueError, match="data.kekulize must be true or false"):
        QM9GenerationDataModule(source=FIXTURE, kekulize="yes")


def test_training_loss_drops_on_qm9_molecules(datamodule):
    task = _task(datamodule, condition=["gap"])
    optimizer = task.configure_optimizers()
    batches = list(datamodule.train_dataloader())

    def evaluate():
        torch.manual_seed(1234)  # same times, priors and masks before and after training
        with torch.no_grad():
            losses = [task._losses(b) for b in batches]
        return {k: sum(float(x[k]) for x in losses) / len(losses) for k in losses[0]}

    before = evaluate()
    for _ in range(6):
        for batch in batches:
            loss = task._losses(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after = evaluate()
    assert after["loss"] < 0.6 * before["loss"]
    for key in ("x", "a", "e"):
        assert after[key] < before[key], key


def test_checkpoint_holds_everything_sampling_needs(datamodule, tmp_path):
    task = _task(
        datamodule,
        condition=["gap", "mu"],
        val_molecules=3,
        sample_every_n_epochs=1,
        sampling={"steps": 4, "batch_size": 2},
    )
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(task, datamodule=datamodule)
    assert "val/atom_stability" in trainer.callback_metrics and "val/validity" in trainer.callback_metrics
    path = tmp_path / "gen.ckpt"
    trainer.save_checkpoint(path)

    loaded = GenerationTask.load_from_checkpoint(path)
    kwargs = datamodule.task_kwargs()
    assert loaded.hparams.condition == ["gap", "mu"]
    assert loaded.hparams.mean == pytest.approx([kwargs["mean"][TARGETS.index(n)] for n in ("gap", "mu")])
    assert sorted(loaded.hparams.atom_counts["given_property"]) == ["gap", "mu"]
    for a, b in zip(loaded.state_dict().values(), task.state_dict().values()):
        torch.testing.assert_close(a, b)

    mols = loaded.sample(5, condition={"gap": 6.5, "mu": [0.0, 1.0, 2.0, 3.0, 4.0]}, n_atoms=[3, 4, 5, 6, 7], seed=0)
    assert [m.GetNumAtoms() for m in mols] == [3, 4, 5, 6, 7]
    assert [m.GetDoubleProp("mu") for m in mols] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(m.GetDoubleProp("gap") == 6.5 for m in mols)
    again = loaded.sample(5, condition={"gap": 6.5, "mu": [0.0, 1.0, 2.0, 3.0, 4.0]}, n_atoms=[3, 4, 5, 6, 7], seed=0)
    assert [Chem.MolToMolBlock(m) for m in mols] == [Chem.MolToMolBlock(m) for m in again]
    # Atom counts drawn from the training molecules stay in their range.
    drawn = loaded.sample(4, condition={"gap": 6.5, "mu": 2.0}, seed=1)
    assert all(3 <= m.GetNumAtoms() <= 29 for m in drawn)

    # Out of distribution: the 99th percentile of the gap over the generator half.
    gap = datamodule.dataset.y[datamodule.splits["train"], TARGETS.index("gap")].double()
    ood = loaded.sample(2, condition={"gap": "ood", "mu": 1.0}, n_atoms=5, seed=2)
    assert ood[0].GetDoubleProp("gap") == pytest.approx(torch.quantile(gap, 0.99).item())
    with pytest.raises(ValueError, match="'ood'"):
        loaded.sample(2, condition={"gap": "high", "mu": 1.0})
    with pytest.raises(ValueError, match="cannot condition on alpha"):
        loaded.sample(2, condition={"gap": 6.5, "mu": 1.0, "alpha": 70.0})
    with pytest.raises(ValueError, match="give condition.mu"):
        loaded.sample(2, condition={"gap": 6.5})


def test_condition_dropout_trains_the_null_condition_and_enables_guidance(datamodule, tmp_path):
    task = _task(datamodule, condition=["gap"], condition_dropout=0.5)
    batch = next(iter(datamodule.train_dataloader()))
    calls = []
    original = task.net.forward

    def spy(state, condition=None, unconditional=None):
        calls.append(unconditional)
        return original(state, condition, unconditional)

    task.net.forward = spy
    task.train()
    torch.manual_seed(0)
    task._losses(batch)
    task.eval()
    task._losses(batch)  # validation is conditional
    assert calls[0] is not None and 0 < int(calls[0].sum()) < batch.num_graphs
    assert calls[1] is None
    del task.net.forward
    mols = task.sample(3, condition={"gap": 6.5}, n_atoms=5, steps=3, seed=0, guidance=2.0)
    assert len(mols) == 3
    plain = _task(datamodule, condition=["gap"])
    with pytest.raises(ValueError, match="model.condition_dropout > 0"):
        plain.sample(2, condition={"gap": 6.5}, n_atoms=5, steps=2, guidance=2.0)
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        task.sample(2, condition={"gap": 6.5}, n_atoms=5, steps=2, guidance=float("nan"))
    with pytest.raises(ValueError, match=r"condition_dropout must lie in \[0, 1\)"):
        _task(datamodule, condition=["gap"], condition_dropout=1.0)
    with pytest.raises(ValueError, match="condition_dropout needs conditioning properties"):
        _task(datamodule, condition_dropout=0.1)


def test_unconditional_task(datamodule):
    task = _task(datamodule)
    assert task.hparams.condition == [] and task.hparams.targets == []
    mols = task.sample(2, n_atoms=4, steps=2, seed=0)
    assert [m.GetNumAtoms() for m in mols] == [4, 4]
    with pytest.raises(ValueError, match="unconditional"):
        task.sample(1, condition={"gap": 7.0})
    with pytest.raises(ValueError, match="cannot condition on"):
        _task(datamodule, condition=["bandgap"])
