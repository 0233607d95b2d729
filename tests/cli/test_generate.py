import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from rdkit import Chem

from geomol.cli.evaluate import main as evaluate_main
from geomol.cli.evaluate import read_molecules
from geomol.cli.generate import draw_grid
from geomol.cli.generate import main as generate_main
from geomol.data.datamodule import QM9DataModule
from geomol.data.generation import QM9GenerationDataModule
from geomol.tasks.generation import GenerationTask
from geomol.tasks.property import PropertyTask

REPO = Path(__file__).parents[2]
TINY_NET = {
    "_target_": "geomol.models.propmolflow.PropMolFlow",
    "scalars": 16,
    "vectors": 4,
    "edge_features": 8,
    "n_updates": 1,
    "n_message_gvps": 1,
    "n_update_gvps": 1,
    "rbf_dim": 8,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A GenerationTask conditioned on the gap, trained for two steps on the QM9 fixture."""
    folder = tmp_path_factory.mktemp("generate")
    dm = QM9GenerationDataModule(root=folder / "qm9", source=REPO / "tests" / "fixtures" / "qm9", batch_size=16)
    torch.manual_seed(0)
    task = GenerationTask(net=TINY_NET, condition=["gap"], **dm.task_kwargs(), val_molecules=0)
    return _fit_and_save(task, dm, folder / "gen.ckpt")


def _fit_and_save(task, datamodule, path):
    trainer = pl.Trainer(
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(task, datamodule=datamodule)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    """A GVP regressor of the gap and mu (PropertyTask), two steps on the fixture's regressor half."""
    folder = tmp_path_factory.mktemp("regressor")
    dm = QM9DataModule(
        root=folder / "qm9", source=REPO / "tests" / "fixtures" / "qm9", target=["gap", "mu"], train_half="regressor"
    )
    net = {"_target_": "geomol.models.regressor.GVPRegressor", "scalars": 16, "vectors": 4, "num_layers": 1}
    torch.manual_seed(0)
    return _fit_and_save(PropertyTask(net=net, **dm.task_kwargs()), dm, folder / "reg.ckpt")


def _bonds(mol):
    return sorted(
        (min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), str(b.GetBondType()))
        for b in mol.GetBonds()
    )


def test_generate_writes_sdf_png_and_metrics(checkpoint, tmp_path, capsys):
    out = tmp_path / "mols.sdf"
    args = [f"ckpt={checkpoint}", "num_molecules=5", f"output={out}", "condition.gap=6.8", "steps=3", "seed=7"]
    metrics = generate_main(args + ["batch_size=2", "n_atoms=6", "device=cpu"])
    printed = capsys.readouterr().out
    assert "atom_stability" in printed and "validity" in printed
    assert metrics["molecules"] == 5.0 and 0.0 <= metrics["validity"] <= 1.0
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # RDKit reads back what the task generates with the same seed: atoms, charges, bonds, coordinates, tags.
    task = GenerationTask.load_from_checkpoint(checkpoint)
    expected = task.sample(5, condition={"gap": 6.8}, steps=3, seed=7, batch_size=2, n_atoms=6)
    written = list(Chem.SDMolSupplier(str(out), sanitize=False, removeHs=False))
    assert len(written) == 5
    for got, want in zip(written, expected):
        assert [a.GetAtomicNum() for a in got.GetAtoms()] == [a.GetAtomicNum() for a in want.GetAtoms()]
        assert [a.GetFormalCharge() for a in got.GetAtoms()] == [a.GetFormalCharge() for a in want.GetAtoms()]
        assert _bonds(got) == _bonds(want)
        torch.testing.assert_close(
            torch.tensor(got.GetConformer().GetPositions()),
            torch.tensor(want.GetConformer().GetPositions()),
            atol=1e-4,
            rtol=0,
        )
        assert float(got.GetProp("gap")) == 6.8
    # The evaluator reads any SDF and recomputes the same metrics.
    again = evaluate_main([f"sdf={out}"])
    for key in ("atom_stability", "molecule_stability", "validity", "uniqueness", "closed_shell"):
        assert again[key] == pytest.approx(metrics[key]), key


def test_property_mae_through_the_regressor(checkpoint, regressor, tmp_path):
    out = tmp_path / "mols.sdf"
    args = [f"ckpt={checkpoint}", "num_molecules=4", f"output={out}", "condition.gap=6.8", "steps=2"]
    generated = generate_main(args + [f"regressor={regressor}"])
    evaluated = evaluate_main([f"sdf={out}", f"regressor={regressor}", "target.mu=1.5"])
    # By hand: the regressor's predictions on the molecules read back from the SDF.
    reg = PropertyTask.load_from_checkpoint(regressor).eval()
    mols = read_molecules(out)
    with torch.no_grad():
        pred = torch.cat([reg(*_graph(m)) for m in mols])
    gap_mae = (pred[:, 0] - 6.8).abs().mean().item()
    assert generated["mae_gap"] == pytest.approx(gap_mae, rel=1e-4) and "mae_mu" not in generated
    assert (tmp_path / "mols_property.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert evaluated["mae_gap"] == pytest.approx(gap_mae, rel=1e-4)
    assert evaluated["mae_mu"] == pytest.approx((pred[:, 1] - 1.5).abs().mean().item(), rel=1e-4)


def _graph(mol):
    z = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()])
    pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32)
    return z, pos, torch.zeros_like(z)


def test_conditioning_on_an_unknown_property_is_a_one_line_error(checkpoint, tmp_path, capsys):
    args = [f"ckpt={checkpoint}", "num_molecules=2", f"output={tmp_path / 'x.sdf'}", "condition.mu=2.0", "steps=2"]
    with pytest.raises(SystemExit) as exit_info:
        generate_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "geomol: error: this checkpoint is trained on gap: it cannot condition on mu"
    assert not (tmp_path / "x.sdf").exists()


def test_python_m_geomol_generate(checkpoint, tmp_path):
    out = tmp_path / "cli.sdf"
    cmd = [sys.executable, "-m", "geomol.generate", f"ckpt={checkpoint}", "num_molecules=3", f"output={out}"]
    cmd += ["condition.gap=7.1", "steps=2", "seed=1", "batch_size=2"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(Chem.SDMolSupplier(str(out), sanitize=False, removeHs=False)) == 3
    assert "atom_stability" in result.stdout and out.with_suffix(".png").is_file()


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_main([f"ckpt={tmp_path / 'none.ckpt'}", f"output={tmp_path / 'x.sdf'}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"geomol: error: checkpoint not found: {tmp_path / 'none.ckpt'}"


def test_a_regressor_checkpoint_is_refused_as_generator(regressor, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_main([f"ckpt={regressor}", f"output={tmp_path / 'x.sdf'}"])
    assert exit_info.value.code == 2
    assert "holds a PropertyTask, but a GenerationTask is needed here" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written
@pytest.mark.parametrize(
    "args,message",
    [
        (["num_molecules=0"], "geomol: error: num_molecules must be at least 1, got 0"),
        (["num_molecules=-3"], "geomol: error: num_molecules must be at least 1, got -3"),
        (["output={tmp}/missing/mols.sdf"], "geomol: error: output folder does not exist: {tmp}/missing"),
        (["output={tmp}/mols.xyz"], "geomol: error: output must be an .sdf file, got {tmp}/mols.xyz"),
        (["precision=fp16"], "geomol: error: precision must be 32 or bf16, got 'fp16'"),
        (
            ["guidance_on=[x,q]"],
            "geomol: error: guidance_on must list some of x, a, c, e (positions, atom types, "
            "charges, bonds), got ['x', 'q']",
        ),
        (["guidance_plausibility=1"], "geomol: error: guidance_plausibility must be a number in [0, 1), got 1.0"),
        (["guidance_plausibility=nan"], "geomol: error: guidance_plausibility must be a finite number, got nan"),
    ],
)
def test_generate_bad_arguments(checkpoint, tmp_path, capsys, args, message):
    base = [f"ckpt={checkpoint}", f"output={tmp_path}/mols.sdf", "condition.gap=6.8", "steps=2", "num_molecules=2"]
    args = [a.format(tmp=tmp_path) for a in args]
    keys = {a.split("=")[0] for a in args}
    with pytest.raises(SystemExit) as exit_info:
        generate_main([a for a in base if a.split("=")[0] not in keys] + args)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message.format(tmp=tmp_path)
    assert not list(tmp_path.glob("*.sdf")) and not list(tmp_path.glob("*.png"))


def test_unknown_keys_are_one_line(tmp_path, capsys):
    for main, args, message in [
        (generate_main, ["ckpt=x.ckpt", "num_molecule=3"], "geomol: error: unknown config key num_molecule; the top level has batch_size, ckpt, compile, condition, "),
        (evaluate_main, ["sdf=x.sdf", "regresor=r.ckpt"], "geomol: error: unknown config key regresor; the top level has device, output, png, regressor, "),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err and "+" not in err, err


def test_evaluate_malformed_and_missing_sdf(tmp_path, capsys):
    bad = tmp_path / "bad.sdf"
    bad.write_text("not a molecule\n  at all\n$$$$\n")
    for path, message in [
        (bad, f"geomol: error: malformed SDF: record 1 of {bad} could not be parsed"),
        (tmp_path / "none.sdf", f"geomol: error: SDF file not found: {tmp_path / 'none.sdf'}"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            evaluate_main([f"sdf={path}"])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == message


def test_draw_grid_inside_jupyter(tmp_path):
    # In a Jupyter kernel RDKit replaces Draw.MolsToGridImage with a renderer returning IPython images.
    console = pytest.importorskip("rdkit.Chem.Draw.IPythonConsole")
    console.InstallIPythonRenderer()
    try:
        draw_grid([Chem.MolFromSmiles("CCO"), Chem.MolFromSmiles("C=O")], tmp_path / "grid.png", ["#0", "#1"])
    finally:
        console.UninstallIPythonRenderer()
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the conditional-generation protocol
@pytest.fixture(scope="module")
def recorded_regressor(tmp_path_factory):
    """A GVP regressor of gap and mu trained by train.py on the fixture's regressor half: its last.ckpt
    carries the test record (test MAE, test-split quantiles, per-atom-count means)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from geomol.cli.train import CONFIG_DIR, run

    folder = tmp_path_factory.mktemp("recorded")
    overrides = [
        f"paths.run_dir={folder}", f"paths.data_dir={folder}", "model=gvp_regressor", "data=qm9",
        "data.source=tests/fixtures/qm9", "data.train_half=regressor", "data.target=[gap,mu]", "data.batch_size=16",
        "model.net.scalars=16", "model.net.vectors=4", "model.net.num_layers=1", "trainer=quick",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "callbacks.curves=null",
    ]  # fmt: skip
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    metrics = run(cfg)
    return folder / "checkpoints" / "last.ckpt", metrics


def test_train_py_stores_the_regressor_test_record(recorded_regressor):
    from geomol.checkpoints import read_checkpoint
    from geomol.metrics.conditional import QUANTILES, RECORD_KEY

    path, metrics = recorded_regressor
    record = read_checkpoint(path)[RECORD_KEY]
    assert record["metrics"]["mae_gap"] == pytest.approx(metrics["test/mae_gap"])
    assert record["targets"] == ["gap", "mu"] and record["train_half"] == "regressor"
    assert len(record["test_quantiles"]["gap"]) == QUANTILES
    assert record["test_quantiles"]["gap"] == sorted(record["test_quantiles"]["gap"])
    assert any(m is not None for m in record["atom_count_means"]["mu"])


def test_protocol_with_sampled_requests(checkpoint, recorded_regressor, tmp_path, capsys):
    """condition.gap=sample draws requests from the test split; the table, tags and histogram follow."""
    regressor, _ = recorded_regressor
    out = tmp_path / "mols.sdf"
    args = [f"ckpt={checkpoint}", "num_molecules=6", f"output={out}", "condition.gap=sample", "steps=2", "seed=3"]
    metrics = generate_main(args + [f"regressor={regressor}", "batch_size=3"])
    printed = capsys.readouterr().out
    assert "Conditional generation" in printed and "shuffled" in printed and "lower bd" in printed
    written = list(Chem.SDMolSupplier(str(out), sanitize=False, removeHs=False))
    requested = [float(m.GetProp("gap")) for m in written]
    assert len(set(requested)) == 6  # one draw per molecule
    task = GenerationTask.load_from_checkpoint(checkpoint)
    lo, hi = task.hparams.test_quantiles[0][0], task.hparams.test_quantiles[0][-1]
    assert all(lo <= v <= hi for v in requested)
    predicted = torch.tensor([float(m.GetProp("predicted_gap")) for m in written], dtype=torch.float64)
    assert metrics["mae_gap"] == pytest.approx(float((predicted - torch.tensor(requested)).abs().mean()), rel=1e-5)
    assert metrics["lower_bound_gap"] == pytest.approx(read_record(regressor)["metrics"]["mae_gap"] / 1000)
    assert metrics["scored_gap"] == 6.0 and metrics["shuffled_gap"] > 0
    assert (tmp_path / "mols_property.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Same seed, same requests; the evaluator recomputes the table from the SDF's tags alone.
    again = evaluate_main([f"sdf={out}", f"regressor={regressor}", f"output={tmp_path / 'annotated.sdf'}", "seed=3"])
    assert again["mae_gap"] == pytest.approx(metrics["mae_gap"], rel=1e-4)
    assert again["shuffled_gap"] == pytest.approx(metrics["shuffled_gap"], rel=1e-4)
    assert (
        "predicted_gap"
        in next(iter(Chem.SDMolSupplier(str(tmp_path / "annotated.sdf"), sanitize=False))).GetPropNames()
    )


def test_ood_request_reports_fractions(checkpoint, recorded_regressor, tmp_path, capsys):
    regressor, _ = recorded_regressor
    out = tmp_path / "ood.sdf"
    metrics = generate_main([f"ckpt={checkpoint}", "num_molecules=4", f"output={out}", "condition.gap=ood",
                             "steps=2", f"regressor={regressor}"])  # fmt: skip
    assert 0.0 <= metrics["ood_generated_gap"] <= 1.0 and 0.0 <= metrics["ood_qm9_test_gap"] <= 0.2
    assert "real QM9 test molecules" in capsys.readouterr().out


def read_record(path):
    from geomol.checkpoints import read_checkpoint
    from geomol.metrics.conditional import RECORD_KEY

    return read_checkpoint(path)[RECORD_KEY]


@pytest.mark.parametrize(
    "args,message",
    [
        (["condition.gap=abc"], "condition.gap must be a number, a list of numbers, 'sample' or 'ood', got 'abc'"),
        (["condition.gap=null"], "condition.gap must be a number, a list of numbers, 'sample' or 'ood', got None"),
        (["condition.gap=true"], "condition.gap must be a number, a list of numbers, 'sample' or 'ood', got True"),
        (
            ["condition.gap={{a:1}}"],
            "condition.gap must be a number, a list of numbers, 'sample' or 'ood', got {{'a': 1}}",
        ),
        (["condition.gap=[1,abc]"], "condition.gap must be a number, a list of numbers, 'sample' or 'ood', got 'abc'"),
        (["condition.gap=nan"], "condition.gap must be finite numbers, got nan"),
        (["condition.gap=inf"], "condition.gap must be finite numbers, got inf"),
        (["png={tmp}/grid.jpg"], "png must be an .png file, got {tmp}/grid.jpg"),
        (["png={ckpt}"], "png must be an .png file, got {ckpt}"),
        (["png={tmp}/mols.png", "output={tmp}/mols.png"], "output must be an .sdf file, got {tmp}/mols.png"),
        (["output={tmp}"], "output must be an .sdf file, got {tmp}"),
        (["regressor={tmp}/none.ckpt"], "checkpoint not found: {tmp}/none.ckpt"),
        (["regressor={ckpt}"], "holds a GenerationTask, but a PropertyTask is needed here"),
        (["seed=abc"], "seed must be a whole number, got 'abc'"),
        (["batch_size=abc"], "batch_size must be a whole number, got 'abc'"),
        (["batch_size=1.5"], "batch_size must be a whole number, got 1.5"),
        (["n_atoms=abc"], "n_atoms must be a whole number of atoms (at least 1) or one per molecule, got 'abc'"),
        (["n_atoms=5.5"], "n_atoms must be a whole number of atoms (at least 1) or one per molecule, got 5.5"),
        (["num_molecules=2.7"], "num_molecules must be a whole number, got 2.7"),
        (["num_molecules=true"], "num_molecules must be a whole number, got True"),
        (["grid=0"], "grid must be at least 1, got 0"),
        (["steps=0"], "steps must be at least 1, got 0"),
        (["workers=0"], "workers must be at least 1, got 0"),
        (["workers=1.5"], "workers must be a whole number, got 1.5"),
        (["eta=-5"], "eta must be at least 0.0, got -5"),
        (["temperature=0"], "temperature must be positive, got 0"),
        (["guidance=-1"], "guidance must be at least 0.0, got -1"),
        (["guidance=2"], "guidance=2 needs a generator trained with model.condition_dropout > 0"),
        (["guidance={{e:1.5}}"], "guidance={{e:1.5}} needs a generator trained with model.condition_dropout > 0"),
        (["guidance={{e:-1}}"], "guidance.e must be a finite number >= 0, got -1"),
        (["guidance={{q:2}}"], "guidance must map some of x, a, c, e to weights"),
        (["guidance_interval=[0.5]"], "guidance_interval must be two numbers [t_lo,t_hi], got [0.5]"),
        (["guidance_interval=[0.8,0.2]"], "guidance_interval must be [t_lo, t_hi] with 0 <= t_lo < t_hi <= 1"),
        (["guidance_interval={{e:[0.5,0.2]}}"], "guidance_interval.e must be [t_lo, t_hi] with 0 <= t_lo < t_hi <= 1"),
        (["guidance_interval={{e:0.5}}"], "guidance_interval.e must be two numbers [t_lo,t_hi], got 0.5"),
        (["guidance_interval={{q:[0,1]}}"], "guidance_interval must map some of x, a, c, e to [t_lo, t_hi]"),
        (["device=tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["device=meta"], "device must be auto, cpu, cuda or cuda:N, got 'meta'"),
        (["progress=maybe"], "progress must be true or false, got 'maybe'"),
        (["trust_checkpoint=1"], "trust_checkpoint must be true or false, got 1"),
    ],
)
def test_protocol_bad_input(checkpoint, tmp_path, capsys, args, message):
    fill = {"tmp": tmp_path, "ckpt": checkpoint}
    base = [f"ckpt={checkpoint}", f"output={tmp_path}/mols.sdf", "condition.gap=6.8", "steps=2", "num_molecules=2"]
    args = [a.format(**fill) for a in args]
    keys = {a.split("=")[0] for a in args}
    with pytest.raises(SystemExit) as exit_info:
        generate_main([a for a in base if a.split("=")[0] not in keys] + args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(**fill) in err[0]
    assert not list(tmp_path.glob("*.sdf")) and not list(tmp_path.glob("*.png"))


def test_sample_needs_the_stored_test_distribution(checkpoint, tmp_path, capsys):
    old = torch.load(checkpoint, weights_only=True)
    old["hyper_parameters"]["test_quantiles"] = None  # as written before condition=sample existed
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    with pytest.raises(SystemExit):
        generate_main([f"ckpt={path}", f"output={tmp_path}/m.sdf", "condition.gap=sample", "num_molecules=2"])
    assert "does not store the test split's gap distribution" in capsys.readouterr().err


def test_evaluate_protocol_bad_input(checkpoint, recorded_regressor, tmp_path, capsys):
    regressor, _ = recorded_regressor
    plain = tmp_path / "plain.sdf"
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    from rdkit.Chem import AllChem

    AllChem.EmbedMolecule(mol, randomSeed=0)
    Chem.MolToMolFile(mol, str(plain))
    tagged = tmp_path / "tagged.sdf"
    mol.SetProp("alpha", "40.0")
    writer = Chem.SDWriter(str(tagged))
    writer.write(mol)
    writer.close()
    cases = [
        ([f"sdf={plain}", f"regressor={regressor}"], "no molecule has an SD tag for gap, mu"),
        ([f"sdf={tagged}", f"regressor={regressor}"], "no molecule has an SD tag for gap, mu"),
        ([f"sdf={plain}", f"regressor={regressor}", "target.alpha=3"], "the regressor predicts gap, mu; it cannot score alpha"),
        ([f"sdf={plain}", f"regressor={regressor}", "target.gap=abc"], "target.gap must be a finite number, got 'abc'"),
        ([f"sdf={plain}", f"regressor={checkpoint}"], "holds a GenerationTask, but a PropertyTask is needed here"),
        ([f"sdf={plain}", f"regressor={regressor}", f"png={plain.with_suffix('.png')}", f"output={plain}"],
         "output " + str(plain) + " would overwrite an input file"),
    ]  # fmt: skip
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            evaluate_main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("progress", [True, False])
def test_generate_progress_bar(checkpoint, tmp_path, capsys, progress):
    args = [f"ckpt={checkpoint}", "num_molecules=3", f"output={tmp_path / 'p.sdf'}", "condition.gap=6.8", "steps=4"]
    generate_main(args + ["batch_size=2", f"progress={str(progress).lower()}"])
    err = capsys.readouterr().err
    assert ("sampling 3 molecules" in err and "8/8" in err) == progress, err


def test_hopeless_batch_is_refused_before_sampling(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_main([f"ckpt={checkpoint}", "num_molecules=2", f"output={tmp_path}/m.sdf", "n_atoms=200000",
                       "condition.gap=6.8", "progress=false"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geomol: error: sampling batches of 2 molecules of up to 200000 atoms needs about ")
    assert err.endswith("GiB available: lower batch_size or n_atoms") and not list(tmp_path.iterdir())


def test_allocator_error_is_one_line_with_the_batch(checkpoint, tmp_path, capsys, monkeypatch):
    import geomol.flows.generator as generator

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(generator, "euler_sample", fail)
    with pytest.raises(SystemExit) as exit_info:
        generate_main([f"ckpt={checkpoint}", "num_molecules=3", "batch_size=3", f"output={tmp_path}/m.sdf",
                       "n_atoms=9", "condition.gap=6.8", "progress=false"])  # fmt: skip
    assert exit_info.value.code == 2
    message = "geomol: error: out of memory sampling a batch of 3 molecules of up to 9 atoms: lower batch_size (now 3)"
    assert capsys.readouterr().err.strip() == message and not list(tmp_path.iterdir())


def test_training_out_of_memory_is_one_line():
    from geomol.cli.common import user_error

    err = user_error(RuntimeError("wrapped")) or user_error(
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    )
    assert str(err).startswith("out of memory (CUDA out of memory. Tried to allocate 2.00 GiB): lower the batch size")


def test_bf16_sampling_gives_molecules(checkpoint, tmp_path):
    """precision=bf16: the field under bfloat16 autocast, the integration in float32; same SDF contract."""
    metrics = generate_main([f"ckpt={checkpoint}", "num_molecules=3", f"output={tmp_path / 'b.sdf'}", "steps=3",
                             "condition.gap=6.8", "precision=bf16", "progress=false"])  # fmt: skip
    mols = Chem.SDMolSupplier(str(tmp_path / "b.sdf"), sanitize=False, removeHs=False)
    assert metrics["molecules"] == 3 and len(mols) == 3
    assert all(m.GetConformer().GetPositions().dtype.name == "float64" for m in mols)


@pytest.mark.skipif(
    __import__("shutil").which(__import__("os").environ.get("CXX", "c++")) is None,
    reason="torch.compile needs a C++ compiler on the CPU",
)
def test_compiled_sampling_gives_the_eager_molecules(checkpoint, tmp_path):
    """compile=true: the GVP blocks through torch.compile, the same molecules from the same seed (float rounding
    aside: the tiny field's tokens come out identical), and the field is left uncompiled afterwards."""
    from geomol.flows.generator import MoleculeGenerator

    args = ["num_molecules=4", "steps=4", "condition.gap=6.8", "progress=false", "seed=3"]
    generate_main([f"ckpt={checkpoint}", f"output={tmp_path / 'e.sdf'}", *args])
    generate_main([f"ckpt={checkpoint}", f"output={tmp_path / 'c.sdf'}", "compile=true", *args])
    eager, compiled = (
        list(Chem.SDMolSupplier(str(tmp_path / f"{n}.sdf"), sanitize=False, removeHs=False)) for n in "ec"
    )

    def tokens(mol):
        atoms = [(a.GetAtomicNum(), a.GetFormalCharge()) for a in mol.GetAtoms()]
        return atoms, sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx(), str(b.GetBondType())) for b in mol.GetBonds())

    assert len(eager) == len(compiled) == 4
    assert [tokens(m) for m in eager] == [tokens(m) for m in compiled]
    for a, b in zip(eager, compiled):
        assert abs(a.GetConformer().GetPositions() - b.GetConformer().GetPositions()).max() < 1e-3
    generator = MoleculeGenerator.from_checkpoint(checkpoint)
    generator.sample(2, condition={"gap": 6.8}, steps=2, compile=True)
    assert not any(getattr(m, "compiled", False) for m in generator.net.modules())
