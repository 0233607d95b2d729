"""The model zoo: shipped checkpoints by name, in the Python API and wherever a checkpoint path is taken."""

from pathlib import Path

import pytest
import torch

import geomol.pretrained as zoo
from geomol.cli.generate import main as generate_main
from geomol.data.datamodule import QM9DataModule
from geomol.tasks import GenerationTask, PropertyTask

FIXTURE = Path(__file__).parent / "fixtures" / "qm9"

SHIPPED = {
    "gvp_regressor_qm9", "propmolflow_qm9_gap_cpu", "propmolflow_qm9_gap_mid_cpu", "propmolflow_qm9_gap_mu_cpu",
    "propmolflow_qm9_gap_kek_cpu",
}  # fmt: skip


def test_list_names_the_shipped_models():
    assert SHIPPED <= set(zoo.list())
    assert zoo.info("gvp_regressor_qm9")["title"].startswith("GVP")


def test_load_by_name():
    regressor = zoo.load("gvp_regressor_qm9")
    assert isinstance(regressor, PropertyTask) and not regressor.training
    assert isinstance(zoo.load("propmolflow_qm9_gap_cpu", expected=GenerationTask), GenerationTask)


def test_unknown_name_and_missing_files_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown pretrained model 'nope'; known: ") as info:
        zoo.load("nope")
    assert all(name in str(info.value) for name in SHIPPED) and "\n" not in str(info.value)
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "README.md").write_text("# a zoo entry without its checkpoint\n")
    monkeypatch.setenv("GEOMOL_PRETRAINED", str(tmp_path))
    assert "broken_model" in zoo.list()
    with pytest.raises(FileNotFoundError, match=f"pretrained model broken_model: {broken / 'model.ckpt'} is missing"):
        zoo.load("broken_model")


def test_names_work_where_paths_do(tmp_path, capsys):
    metrics = generate_main(["ckpt=propmolflow_qm9_gap_cpu", "num_molecules=2", f"output={tmp_path / 'm.sdf'}",
                             "condition.gap=6.8", "steps=5", "progress=false"])  # fmt: skip
    assert metrics["molecules"] == 2 and (tmp_path / "m.sdf").is_file()
    from geomol.calculators import GeomolCalculator

    with pytest.raises(ValueError, match="energy"):  # found by name, then refused: a gap regressor
        GeomolCalculator("gvp_regressor_qm9")
    assert zoo.checkpoint_path("outputs/run/last.ckpt").as_posix() == "outputs/run/last.ckpt"  # paths stay paths


def test_the_dimenetpp_gap_model_predicts_qm9_gaps(tmp_path):
    """The shipped QM9 property model against the labels of the fixture's 400 QM9 molecules (most of them in its
    training split): far closer than the best constant guess."""
    task = zoo.load("dimenetpp_qm9_gap_cpu", expected=PropertyTask)
    dm = QM9DataModule(root=tmp_path, source=FIXTURE, target="gap", batch_size=100)
    batches = [b for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()) for b in loader]
    target = torch.cat([b.y[:, task.hparams.target_columns] for b in batches]).double()  # eV
    with torch.no_grad():
        pred = torch.cat([task(b.z, b.pos, b.batch) for b in batches])
    assert pred.shape == target.shape == (400, 1)
    mae, constant = (pred - target).abs().mean(), (target - target.median()).abs().mean()
    assert mae < 0.15 * constant, (mae, constant)
