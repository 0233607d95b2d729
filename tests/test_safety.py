"""A checkpoint may make geomol build only what geomol registers: disguised payloads never run.

Every payload below would create a marker file if it were executed; each test asserts that loading is
refused with the one-line ``unsafe checkpoint: …`` message and that the marker never appears.
"""

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from geomol.calculators import GeomolCalculator
from geomol.checkpoints import TASK_KEY, load_task
from geomol.data.datamodule import QM9DataModule
from geomol.safety import UnsafeCheckpointError, buildable_names, check_checkpoint_config, register_buildable
from geomol.tasks import PropertyTask

REPO = Path(__file__).parents[1]
NET = {
    "_target_": "geomol.models.SchNet",
    "hidden_channels": 8,
    "num_filters": 8,
    "num_interactions": 1,
    "num_basis": 4,
}


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    folder = tmp_path_factory.mktemp("safety")
    return QM9DataModule(root=folder, source=REPO / "tests" / "fixtures" / "qm9", target="U0", batch_size=16, subset=48)


@pytest.fixture(scope="module")
def clean_checkpoint(datamodule, tmp_path_factory):
    task = PropertyTask(net=NET, **datamodule.task_kwargs())
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu")  # fmt: skip
    trainer.fit(task, datamodule=datamodule)
    path = tmp_path_factory.mktemp("clean") / "clean.ckpt"
    trainer.save_checkpoint(path)
    return path


def _eval_payload(marker: Path) -> dict:
    # sympy.sympify evaluates its string; Hydra's own blocklist (os.system, builtins.exec, ...) misses it.
    return {"_target_": "sympy.sympify", "a": f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"}


def _sympify_payload(marker: Path) -> dict:
    # Issue #14's disguise: an innocent outer target with the code one level down in _args_.
    return {"_target_": "builtins.float", "_args_": [_eval_payload(marker)]}


def _payloads(marker: Path) -> dict:
    """name -> function editing the hyper-parameters of a clean checkpoint into a hostile one."""

    def net_target(hp):
        # Hydra builds _args_ before the outer target, so the code runs even though print() then fails.
        hp["net"] = {"_target_": "builtins.print", "_args_": [_eval_payload(marker)]}

    def nested_in_args(hp):
        hp["net"]["num_basis"] = _sympify_payload(marker)

    def nested_in_list(hp):
        hp["net"]["extra"] = [1, {"deeper": [_eval_payload(marker)]}]

    def in_optimizer(hp):
        hp["optimizer"] = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": _sympify_payload(marker)}

    def in_scheduler(hp):
        hp["scheduler"] = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True,
                           "step_size": _sympify_payload(marker)}  # fmt: skip

    def interpolation(hp):
        hp["net"]["num_basis"] = "${oc.decode:'{_target_: builtins.exec, _args_: [1]}'}"

    def non_bool_partial(hp):
        hp["optimizer"] = {"_target_": "torch.optim.Adam", "_partial_": _eval_payload(marker)}

    def lookalike(hp):
        hp["net"]["_target_"] = "geomol.models.SchNet.__init__.__globals__"

    return {f.__name__: f for f in (net_target, nested_in_args, nested_in_list, in_optimizer, in_scheduler,
                                    interpolation, non_bool_partial, lookalike)}  # fmt: skip


def _hostile(clean: Path, edit, folder: Path) -> Path:
    ckpt = torch.load(clean, weights_only=True)
    edit(ckpt["hyper_parameters"])
    path = folder / "hostile.ckpt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("payload", list(_payloads(Path("m"))))
def test_hostile_configs_never_run(clean_checkpoint, tmp_path, payload):
    marker = tmp_path / "pwned"
    path = _hostile(clean_checkpoint, _payloads(marker)[payload], tmp_path)
    loaders = {
        "load_task": lambda: load_task(path),
        "load_task(expected)": lambda: load_task(path, expected=PropertyTask),
        "load_from_checkpoint": lambda: PropertyTask.load_from_checkpoint(path, weights_only=True),
        "calculator": lambda: GeomolCalculator(path),
    }
    for name, load in loaders.items():
        with pytest.raises(UnsafeCheckpointError, match=r"^unsafe checkpoint: ") as info:
            load()
        assert "\n" not in str(info.value), name
        assert not marker.exists(), f"{payload} ran through {name}"


def test_message_names_the_target(clean_checkpoint, tmp_path):
    path = _hostile(clean_checkpoint, _payloads(tmp_path / "m")["nested_in_args"], tmp_path)
    with pytest.raises(
        UnsafeCheckpointError,
        match=r"names builtins\.float \(at net\.num_basis\._target_\), which geomol does not build",
    ):
        load_task(path)


def test_task_name_cannot_import_a_module(clean_checkpoint, tmp_path, monkeypatch):
    """A checkpoint naming a module as its task class must not import it (importing runs its code)."""
    marker = tmp_path / "pwned"
    (tmp_path / "payloadmod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("payloadmod.Evil", "os.system", "geomol.tasks.property.PropertyTask.__init__"):
        ckpt = torch.load(clean_checkpoint, weights_only=True)
        ckpt[TASK_KEY] = name
        path = tmp_path / "task.ckpt"
        torch.save(ckpt, path)
        with pytest.raises(UnsafeCheckpointError, match=f"names {name} as its task, which geomol does not build"):
            load_task(path)
        with pytest.raises(UnsafeCheckpointError):
            PropertyTask.load_from_checkpoint(path)
    assert not marker.exists() and "payloadmod" not in sys.modules


def test_generate_and_evaluate_cli_refuse_with_one_line(clean_checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    path = _hostile(clean_checkpoint, _payloads(marker)["nested_in_args"], tmp_path)
    sdf = tmp_path / "one.sdf"
    sdf.write_text(_water_sdf())
    commands = {
        "generate": [
            sys.executable,
            "-m",
            "geomol.generate",
            f"ckpt={path}",
            "num_molecules=2",
            f"output={tmp_path / 'o.sdf'}",
        ],
        "evaluate": [sys.executable, "-m", "geomol.evaluate", f"sdf={sdf}", f"regressor={path}"],
    }
    for name, cmd in commands.items():
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("geomol: error: unsafe checkpoint: "), (name, result.stderr)
        assert not marker.exists() and not (tmp_path / "o.sdf").exists()


def _water_sdf() -> str:
    return textwrap.dedent("""\
        water
             RDKit          3D

          3  2  0  0  0  0  0  0  0  0999 V2000
            0.0000    0.0000    0.1173 O   0  0  0  0  0  0  0  0  0  0  0  0
            0.0000    0.7572   -0.4692 H   0  0  0  0  0  0  0  0  0  0  0  0
            0.0000   -0.7572   -0.4692 H   0  0  0  0  0  0  0  0  0  0  0  0
          1  2  1  0
          1  3  1  0
        M  END
        $$$$
        """)


def test_clean_checkpoints_still_load_everywhere(clean_checkpoint):
    assert isinstance(load_task(clean_checkpoint), PropertyTask)
    loaded = PropertyTask.load_from_checkpoint(clean_checkpoint, weights_only=True)
    assert not loaded.training
    GeomolCalculator(clean_checkpoint)


def test_every_shipped_config_target_is_buildable_or_built_by_the_user():
    """The networks, optimizers and schedulers geomol's own configs name are all on the allow-list."""
    import yaml

    allowed = buildable_names()
    for path in (REPO / "geomol" / "conf").rglob("*.yaml"):
        text = yaml.safe_load(path.read_text()) or {}
        for target in _targets(text):
            if target.startswith(("geomol.models", "torch.optim", "geomol.tasks.schedules")):
                assert target in allowed, f"{path.name}: {target}"


def _targets(node):
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"]
        for v in node.values():
            yield from _targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _targets(v)


class TinyNet(torch.nn.Module):
    """A user's own network (not geomol's): loads from a checkpoint only when trusted or registered."""

    def __init__(self, out_channels: int, width: int = 4):
        super().__init__()
        self.embed = torch.nn.Embedding(10, width)
        self.head = torch.nn.Linear(width, out_channels)

    def forward(self, z, pos, batch):
        h = self.head(self.embed(z) + 0 * pos.sum(-1, keepdim=True))
        return torch.zeros(int(batch.max()) + 1, h.size(1), dtype=h.dtype).index_add_(0, batch, h)


def test_user_networks_need_trust_or_registration(datamodule, tmp_path):
    net = {"_target_": f"{__name__}.TinyNet", "width": 4}
    task = PropertyTask(net=net, **datamodule.task_kwargs())
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu")  # fmt: skip
    trainer.fit(task, datamodule=datamodule)
    path = tmp_path / "mine.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match="TinyNet"):
        load_task(path)
    assert isinstance(load_task(path, trust_checkpoint=True).net, TinyNet)
    assert isinstance(PropertyTask.load_from_checkpoint(path, trust_checkpoint=True).net, TinyNet)
    register_buildable(TinyNet)
    assert isinstance(load_task(path).net, TinyNet)


@pytest.mark.parametrize(
    "hp",
    [
        {"net": {"_target_": 3}},
        {"net": {"_target_": "geomol.models.SchNet", 1: "x"}},
        {"net": {"_target_": "geomol.models.SchNet", "f": torch.zeros(1)}},
        {"net": {"_target_": "geomol.models.SchNet", "_convert_": {"_target_": "os.system"}}},
        [1, 2],
    ],
)
def test_non_plain_data_is_refused(hp):
    with pytest.raises(UnsafeCheckpointError):
        check_checkpoint_config(copy.deepcopy(hp))
