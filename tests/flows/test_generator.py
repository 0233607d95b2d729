"""MoleculeGenerator: one sampler behind GenerationTask.sample, the CLI and the Python API."""

import pytest
import torch
from rdkit import Chem

from geomol.checkpoints import load_task
from geomol.cli.generate import main as generate_main
from geomol.flows import ConditionStatistics, MoleculeGenerator
from geomol.tasks.generation import GenerationTask

NAME = "propmolflow_qm9_gap_cpu"
REQUEST = dict(condition={"gap": [5.9, 6.8, 7.6]}, steps=4, batch_size=2, seed=5)


@pytest.fixture(scope="module")
def generator():
    return MoleculeGenerator.from_checkpoint(NAME)


def _same_molecules(got, want, atol=0.0):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert [x.GetAtomicNum() for x in a.GetAtoms()] == [x.GetAtomicNum() for x in b.GetAtoms()]
        assert [x.GetFormalCharge() for x in a.GetAtoms()] == [x.GetFormalCharge() for x in b.GetAtoms()]
        bonds = [
            sorted((x.GetBeginAtomIdx(), x.GetEndAtomIdx(), str(x.GetBondType())) for x in m.GetBonds()) for m in (a, b)
        ]
        assert bonds[0] == bonds[1]
        torch.testing.assert_close(
            torch.tensor(a.GetConformer().GetPositions()),
            torch.tensor(b.GetConformer().GetPositions()),
            atol=atol,
            rtol=0,
        )
        assert a.GetDoubleProp("gap") == b.GetDoubleProp("gap")


def test_pretrained_name_samples_what_the_task_and_the_cli_sample(generator, tmp_path):
    assert generator.condition == ["gap"] and not generator.net.training
    mols = generator.sample(3, **REQUEST)
    smiles = [Chem.MolToSmiles(m) for m in mols]
    # GenerationTask.sample delegates to the same generator: the same molecules, bit for bit.
    task = load_task(NAME, expected=GenerationTask)
    from_task = task.sample(3, **REQUEST)
    _same_molecules(from_task, mols)
    assert [Chem.MolToSmiles(m) for m in from_task] == smiles
    assert [Chem.MolToMolBlock(m, kekulize=False) for m in from_task] == [
        Chem.MolToMolBlock(m, kekulize=False) for m in mols
    ]
    # The CLI writes them (SDF coordinates have 4 decimals).
    out = tmp_path / "mols.sdf"
    generate_main([f"ckpt={NAME}", "num_molecules=3", f"output={out}", "condition.gap=[5.9,6.8,7.6]", "steps=4",
                   "batch_size=2", "seed=5", "progress=false"])  # fmt: skip
    _same_molecules(list(Chem.SDMolSupplier(str(out), sanitize=False, removeHs=False)), mols, atol=1e-4)
    # Same seed, same molecules; another seed, others.
    again = generator.sample(3, **REQUEST)
    assert [Chem.MolToMolBlock(m, kekulize=False) for m in again] == [
        Chem.MolToMolBlock(m, kekulize=False) for m in mols
    ]
    other = generator.sample(3, **{**REQUEST, "seed": 6})
    assert [Chem.MolToMolBlock(m, kekulize=False) for m in other] != [
        Chem.MolToMolBlock(m, kekulize=False) for m in mols
    ]


def test_generator_from_its_parts(generator):
    task = load_task(NAME, expected=GenerationTask)
    hparams = task.hparams
    statistics = ConditionStatistics(hparams.condition, hparams.units, hparams.mean, hparams.std, hparams.ood_targets)
    parts = MoleculeGenerator(task.net, task.flow, task.atom_counts, statistics, sampling=hparams.sampling)
    _same_molecules(parts.sample(2, condition={"gap": "ood"}, n_atoms=[7, 9], steps=3, seed=1),
                    generator.sample(2, condition={"gap": "ood"}, n_atoms=[7, 9], steps=3, seed=1))  # fmt: skip
    assert parts.sampling == dict(hparams.sampling) and generator.sampling["steps"] == hparams.sampling["steps"]
    assert repr(parts).startswith("MoleculeGenerator(PropMolFlow, 0.23 M parameters | gap (eV) | steps=")
    # Sampling leaves the network in the mode it found it in.
    task.net.train()
    parts.sample(1, condition={"gap": 6.8}, n_atoms=4, steps=1, seed=0)
    assert task.net.training
    with pytest.raises(
        ValueError, match=r"the field takes 1 conditioning properties but the statistics name 0 \(none\)"
    ):
        MoleculeGenerator(task.net, task.flow, task.atom_counts)
    with pytest.raises(ValueError, match="one entry per property"):
        ConditionStatistics(("gap",), ("eV",), (6.9,), ())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_molecules=0, condition={"gap": 6.8}), "num_molecules must be at least 1, got 0"),
        (dict(num_molecules=2), "this checkpoint is conditioned on gap: give condition.gap=VALUE"),
        (dict(num_molecules=2, condition={"gap": 6.8, "mu": 1.0}), "this checkpoint is trained on gap: it cannot condition on mu"),
        (dict(num_molecules=2, condition={"gap": "high"}), "condition.gap must be a number, a list of numbers, 'sample' or 'ood', got 'high'"),
        (dict(num_molecules=2, condition={"gap": [6.0, 7.0, 8.0]}), "condition.gap has 3 values for 2 molecules"),
        (dict(num_molecules=2, condition={"gap": "sample"}), "this checkpoint does not store the test split's gap distribution"),
        (dict(num_molecules=2, condition={"gap": 6.8}, n_atoms=[3, 0]), "n_atoms must be one positive number or one per molecule (2)"),
        (dict(num_molecules=2, condition={"gap": 6.8}, batch_size=0), "batch_size must be at least 1, got 0"),
        (dict(num_molecules=2, condition={"gap": 6.8}, precision="fp16"), "precision must be 32 or bf16, got 'fp16'"),
        (dict(num_molecules=2, condition={"gap": 6.8}, workers=0), "workers must be a whole number of at least 1, got 0"),
        (dict(num_molecules=2, condition={"gap": 6.8}, n_atoms=200000), "sampling batches of 2 molecules of up to 200000 atoms needs about "),
    ],
)  # fmt: skip
def test_bad_requests_are_one_line(generator, kwargs, message):
    with pytest.raises(ValueError) as info:
        generator.sample(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_workers_sample_the_same_molecules_however_many(generator):
    """``workers > 1``: batches in spawned CPU processes, each batch from its own seeded stream, so two and three
    workers give the same molecules; the requested values and atom counts are those of ``workers=1``."""
    request = dict(condition={"gap": [5.9, 6.8, 7.6, 6.1, 7.0]}, steps=3, batch_size=2, seed=5)
    two = generator.sample(5, workers=2, **request)
    three = generator.sample(5, workers=3, **request)
    one = generator.sample(5, **request)
    _same_molecules(two, three)
    assert [m.GetNumAtoms() for m in two] == [m.GetNumAtoms() for m in one]
    assert [m.GetDoubleProp("gap") for m in two] == [5.9, 6.8, 7.6, 6.1, 7.0]
    # The parent's generator is left as it was (eval mode, weights untouched).
    assert not generator.net.training


def test_bad_checkpoints_are_one_line(tmp_path):
    for path, error, message in [
        (tmp_path / "none.ckpt", FileNotFoundError, f"checkpoint not found: {tmp_path / 'none.ckpt'}"),
        ("no_such_model", ValueError, "unknown pretrained model 'no_such_model'; known: "),
        ("gvp_regressor_qm9", ValueError, "holds a PropertyTask, but a GenerationTask is needed here"),
    ]:
        with pytest.raises(error) as info:
            MoleculeGenerator.from_checkpoint(path)
        assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="precision must be 32 or bf16, got '16'"):
        MoleculeGenerator.from_checkpoint(NAME, precision="16")
