"""Every config in geomol/conf/ composes and runs one fast_dev_run step on committed fixtures."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from geomol.cli.train import CONFIG_DIR, build

CONF = Path(CONFIG_DIR)
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

# Overrides that point each data config at its committed fixture and keep it tiny.
# One step on a batch of two: composition and the full forward/backward path are what is tested.
DATA_FIXTURES = {
    "qm9": [f"data.source={FIXTURES / 'qm9'}", "data.subset=null", "data.split=null", "data.batch_size=2",
            "data.eval_batch_size=2"],
    "rmd17": [f"data.root={FIXTURES / 'rmd17'}", "data.num_train=50", "data.num_val=10", "data.num_test=10",
              "data.batch_size=2", "data.eval_batch_size=2"],
    "mnist_affine": [f"data.root={FIXTURES / 'mnist'}", "data.batch_size=2"],
    "nbody": ["data.num_train=16", "data.num_val=8", "data.num_test=8", "data.batch_size=2", "data.eval_batch_size=2"],
}  # fmt: skip
# Which data sets each kind of task trains on. A model's task is read from its config composed with the
# data: model/ponita.yaml is a PropertyTask on molecules and an NBodyTask on N-body data.
TASK_DATA = {
    "geomol.tasks.PropertyTask": ["qm9", "rmd17"],
    "geomol.tasks.property.PropertyTask": ["qm9", "rmd17"],
    "geomol.tasks.image.ImageTask": ["mnist_affine"],
    "geomol.tasks.generation.GenerationTask": ["qm9"],
    "geomol.tasks.nbody.NBodyTask": ["nbody"],
}


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _pairs() -> list[tuple[str, str]]:
    pairs = []
    for model in _names("model"):
        for name in _names("data"):
            task = _compose([f"model={model}", f"data={name}"], Path("/nonexistent")).model._target_
            if name in TASK_DATA.get(task, []):
                pairs.append((model, name))
    return pairs


def _experiment_data(name: str) -> str:
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    for line in text.splitlines():
        if "override /data:" in line:
            return line.split(":", 1)[1].strip()
    return "qm9"


def _compose(overrides: list[str], tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.run_dir={tmp_path}",
                f"paths.data_dir={tmp_path / 'data'}",
                "trainer.fast_dev_run=true",
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
                *overrides,
                "data.num_workers=0",
            ],
        )


def _fast_dev_run(cfg) -> None:
    datamodule, task, trainer = build(cfg)
    trainer.fit(task, datamodule=datamodule)
    assert trainer.state.finished, trainer.state


@pytest.mark.parametrize("model,data", _pairs(), ids=lambda x: x)
def test_model_data_pair(model, data, tmp_path):
    cfg = _compose([f"model={model}", f"data={data}", *DATA_FIXTURES.get(data, [])], tmp_path)
    _fast_dev_run(cfg)


# Pairings whose task, network or data differ from the model's and the data's plain configs: the model config
# selects them (task/ declared by propmolflow and gvp_regressor, ${geomol.if_data:...} in ponita), no pair configs.
PAIRINGS = [
    ("propmolflow", "qm9", "geomol.tasks.generation.GenerationTask", "geomol.models.propmolflow.PropMolFlow",
     "geomol.data.generation.QM9GenerationDataModule", {"with_bonds": True, "train_half": "generator"}),
    ("gvp_regressor", "qm9", "geomol.tasks.PropertyTask", "geomol.models.regressor.GVPRegressor",
     "geomol.data.QM9DataModule", {"with_bonds": False, "train_half": "regressor"}),
    ("gvp_regressor", "rmd17", "geomol.tasks.PropertyTask", "geomol.models.regressor.GVPRegressor",
     "geomol.data.rmd17.RMD17DataModule", {}),
    ("ponita", "nbody", "geomol.tasks.nbody.NBodyTask", "geomol.models.ponita.PonitaDynamics",
     "geomol.data.nbody.NBodyDataModule", {}),
    ("ponita", "qm9", "geomol.tasks.property.PropertyTask", "geomol.models.ponita.Ponita",
     "geomol.data.QM9DataModule", {"train_half": None}),
]  # fmt: skip


@pytest.mark.parametrize(
    "model,data,task,net,datamodule,data_keys", PAIRINGS, ids=[f"{m}-{d}" for m, d, *_ in PAIRINGS]
)
def test_pairing_picks_task_network_and_data(model, data, task, net, datamodule, data_keys, tmp_path):
    cfg = _compose([f"model={model}", f"data={data}"], tmp_path)
    assert (cfg.model._target_, cfg.model.net._target_, cfg.data._target_) == (task, net, datamodule)
    assert {key: cfg.data[key] for key in data_keys} == data_keys
    if model == "ponita":  # the paper's N-body settings on N-body data only
        on_nbody = data == "nbody"
        assert (cfg.model.net.num_ori, cfg.model.net.layer_scale, cfg.model.optimizer.lr) == (
            (16, 1e-6, 1e-3) if on_nbody else (20, None, 5e-4)
        )


@pytest.mark.parametrize("experiment", _names("experiment"))
def test_experiment(experiment, tmp_path):
    data = _experiment_data(experiment)
    cfg = _compose([f"experiment={experiment}", *DATA_FIXTURES.get(data, [])], tmp_path)
    _fast_dev_run(cfg)


@pytest.mark.parametrize("trainer", _names("trainer"))
def test_trainer_configs_compose(trainer, tmp_path):
    cfg = _compose([f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
