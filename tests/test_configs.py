"""Every config in geomol/conf/ composes and runs one fast_dev_run step on committed fixtures."""

from pathlib import Path

import pytest
import yaml
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
# Which data sets each kind of task trains on (pairs needing a specialization are in geomol/conf/model_data).
TASK_DATA = {
    "geomol.tasks.PropertyTask": ["qm9", "rmd17"],
    "geomol.tasks.property.PropertyTask": ["qm9", "rmd17"],
    "geomol.tasks.image.ImageTask": ["mnist_affine"],
}


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _pairs() -> list[tuple[str, str]]:
    data = set(_names("data"))
    pairs = set()
    for model in _names("model"):
        target = yaml.safe_load((CONF / "model" / f"{model}.yaml").read_text()).get("_target_", "")
        for name in TASK_DATA.get(target, []):
            if name in data:
                pairs.add((model, name))
    for special in _names("model_data"):
        model, _, name = special.partition("_")
        for m in _names("model"):  # model names may contain underscores
            if special.startswith(m + "_") and special[len(m) + 1 :] in data:
                model, name = m, special[len(m) + 1 :]
        pairs.add((model, name))
    return sorted(pairs)


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


@pytest.mark.parametrize("experiment", _names("experiment"))
def test_experiment(experiment, tmp_path):
    data = _experiment_data(experiment)
    cfg = _compose([f"experiment={experiment}", *DATA_FIXTURES.get(data, [])], tmp_path)
    _fast_dev_run(cfg)


@pytest.mark.parametrize("trainer", _names("trainer"))
def test_trainer_configs_compose(trainer, tmp_path):
    cfg = _compose([f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
