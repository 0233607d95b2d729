"""train.py as users run it: subprocesses, exit codes, one-line errors, run directories."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QM9_FIXTURE = ["data.source=tests/fixtures/qm9", "data.subset=null", "data.batch_size=16"]


def train(tmp_path, *overrides, timeout=300, env=None, flags=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GEOMOL_DATA": str(tmp_path / "data"), **(env or {})}
    env.pop("GEOMOL_DEBUG", None)
    cmd = [sys.executable, "train.py", *flags, f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_user_error_is_one_line(tmp_path):
    result = train(tmp_path, *QM9_FIXTURE, "data.target=homo2", "trainer.fast_dev_run=true")
    assert result.returncode == 2, result.stderr[-2000:]
    assert last_line(result.stderr).startswith("geomol: error: unknown QM9 target 'homo2'; choose from mu, alpha, homo")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "override,line",
    [
        ("model=nope", "geomol: error: unknown model config 'nope'; choose from affine_cnn, dimenet, dimenetpp, gaunt, "),
        ("trainer=fast", "geomol: error: unknown trainer config 'fast'; choose from cpu, ddp, default, gpu, quick"),
        ("data.foo=1", "geomol: error: unknown config key data.foo; data has _target_, batch_size, "),
        ("model.net.hidden=8", "geomol: error: unknown config key model.net.hidden; model.net has _target_, cutoff, hidden_channels, "),
    ],
)  # fmt: skip
def test_unknown_config_name_or_key_is_one_line(tmp_path, override, line):
    result = train(tmp_path, override)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith(line), result.stderr
    assert not (tmp_path / "run").exists()


def test_user_config_dir_and_own_network(tmp_path):
    """``--config-dir`` adds a user's config folder (Hydra's flag); ``model.net._target_=mypkg.MyNet`` works
    as written: the keys left by the default network that MyNet does not take are named and not passed."""
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import torch\nfrom torch_geometric.utils import scatter\n\n"
        "class MyNet(torch.nn.Module):\n"
        "    def __init__(self, out_channels=1, width=4):\n"
        "        super().__init__()\n"
        "        self.embed = torch.nn.Embedding(10, width)\n"
        "        self.out = torch.nn.Linear(width + 1, out_channels)\n\n"
        "    def forward(self, z, pos, batch):\n"
        "        h = torch.cat([self.embed(z), pos.norm(dim=-1, keepdim=True)], dim=-1)\n"
        "        return scatter(self.out(h), batch, dim=0, reduce='sum')\n"
    )
    conf = tmp_path / "myconf" / "model"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("defaults:\n  - schnet\n  - _self_\nnet:\n  _target_: mypkg.MyNet\n")
    env = {"PYTHONPATH": str(tmp_path)}
    args = [*QM9_FIXTURE, "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false"]
    own = train(tmp_path, *args, "model.net._target_=mypkg.MyNet", "+model.net.width=3", env=env)
    assert own.returncode == 0, own.stderr[-3000:]
    assert "model.net: mypkg.MyNet takes no hidden_channels, num_filters" in own.stdout + own.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # fast_dev_run writes no checkpoint
    listed = train(tmp_path, "model=nope", env=env, flags=["--config-dir", str(tmp_path / "myconf")])
    assert listed.returncode == 2 and "mine" in listed.stderr and "schnet" in listed.stderr, listed.stderr
    mine = train(tmp_path, "model=mine", *args, env=env, flags=["--config-dir", str(tmp_path / "myconf")])
    assert mine.returncode == 0, mine.stderr[-3000:]
    assert "model.net: mypkg.MyNet takes no" in mine.stdout + mine.stderr


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.source=/nonexistent/qm9"], "geomol: error: QM9 source folder not found: /nonexistent/qm9"),
        (["data.subset=2"], "geomol: error: data.subset must be at least 3 molecules, got 2"),
        (["ckpt_path=/nonexistent.ckpt"], "geomol: error: checkpoint not found: /nonexistent.ckpt"),
    ],
)
def test_user_errors_in_process(tmp_path, capsys, overrides, message):
    from geomol.cli.train import report_errors, run

    cfg = compose_train(tmp_path, [*QM9_FIXTURE, *overrides, "trainer.fast_dev_run=true"])
    with pytest.raises(SystemExit) as exit_info:
        report_errors(run)(cfg)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message


@pytest.mark.parametrize("override", ["foo=1", "data.foo=1", "model.net.foo=1"])
def test_unknown_config_keys(tmp_path, override):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="Could not override '.*foo'"):
        compose_train(tmp_path, [override])


def compose_train(tmp_path, overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from geomol.cli.train import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[f"paths.run_dir={tmp_path}", f"paths.data_dir={tmp_path}", *overrides])


def test_train_test_and_resume(tmp_path):
    args = [*QM9_FIXTURE, "experiment=demo", "data.subset=null", "trainer.enable_progress_bar=false"]
    first = train(tmp_path, *args, "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Test results" in first.stdout and "mae_homo" in first.stdout and "meV" in first.stdout
    run = tmp_path / "run"
    for name in ["checkpoints/last.ckpt", "checkpoints/best.ckpt", "metrics.csv", "hparams.yaml", "curves.png"]:
        assert (run / name).is_file(), name
    # Same run directory, more epochs: continues from last.ckpt instead of starting over.
    second = train(tmp_path, *args, "trainer.max_epochs=2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout + second.stderr
    assert "Restored all states from the checkpoint" in second.stdout + second.stderr


def test_ddp_on_cpu_with_two_processes(tmp_path):
    result = train(
        tmp_path, *QM9_FIXTURE, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.fast_dev_run=true", "model.net.num_interactions=1", "model.net.hidden_channels=16",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr


def test_changed_config_does_not_silently_resume(tmp_path):
    args = [*QM9_FIXTURE, "experiment=demo", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "test=false"]
    first = train(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / "run" / "geomol_config.yaml").is_file()
    changed = train(tmp_path, *args, "model.net.hidden_channels=32", "data.target=gap")
    assert changed.returncode == 2, changed.stderr[-3000:]
    line = last_line(changed.stderr)
    assert line.startswith(f"geomol: error: {tmp_path / 'run'} holds a run with another config (")
    assert "data.target: 'homo' -> 'gap'" in line and "model.net.hidden_channels" in line and "resume=force" in line
    assert "Traceback" not in changed.stderr
    # Keys that do not change what is learned may differ; more epochs resume as before.
    more = train(tmp_path, *args, "trainer.max_epochs=2", "data.num_workers=0", "data.eval_batch_size=64")
    assert more.returncode == 0 and "resuming from" in more.stdout + more.stderr, more.stderr[-3000:]
    # resume=force continues the checkpoint with the new config (here: another target, same network).
    forced = train(tmp_path, *args, "trainer.max_epochs=3", "data.target=gap", "resume=force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "target: gap" in (tmp_path / "run" / "geomol_config.yaml").read_text()


def test_ckpt_path_of_another_task_is_one_line(tmp_path, capsys):
    import torch

    from geomol.cli.train import report_errors, run

    ckpt = tmp_path / "generator.ckpt"
    torch.save(
        {"state_dict": {}, "hyper_parameters": {}, "geomol_task": "geomol.tasks.generation.GenerationTask"}, ckpt
    )
    cfg = compose_train(tmp_path, [*QM9_FIXTURE, "experiment=demo", f"ckpt_path={ckpt}"])
    with pytest.raises(SystemExit) as exit_info:
        report_errors(run)(cfg)
    assert exit_info.value.code == 2
    message = f"geomol: error: checkpoint {ckpt} holds a GenerationTask, but this run trains a PropertyTask"
    assert capsys.readouterr().err.strip().splitlines()[-1] == message


def test_default_run_directories_are_unique(tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GEOMOL_DATA": str(tmp_path / "data"),
        "GEOMOL_OUTPUTS": str(tmp_path / "out"),
    }
    cmd = [sys.executable, "train.py", *QM9_FIXTURE, "experiment=demo", "trainer.fast_dev_run=true"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    runs = list((tmp_path / "out" / "schnet_qm9").iterdir())
    assert len(runs) == 2, runs


def test_last_checkpoint_follows_every_epoch_when_the_metric_stalls(tmp_path):
    """With lr=0 the validation loss never improves: last.ckpt must still move to the last epoch."""
    import torch

    args = [*QM9_FIXTURE, "experiment=demo", "trainer.max_epochs=3", "model.optimizer.lr=0.0", "test=false",
            "trainer.enable_progress_bar=false", "~model.scheduler"]  # fmt: skip
    result = train(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] == 0


def test_last_checkpoint_holds_the_final_step_of_a_run_stopped_mid_epoch(tmp_path):
    """max_steps between two validations: the steps after the last validation are in last.ckpt too."""
    import torch

    args = [*QM9_FIXTURE, "experiment=demo", "trainer.max_epochs=5", "trainer.max_steps=20",
            "trainer.val_check_interval=8", "test=false", "trainer.enable_progress_bar=false"]  # fmt: skip
    result = train(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20


def test_several_loggers_at_once(tmp_path):
    """logger=[csv,tensorboard,wandb]: metrics.csv, TensorBoard events and an offline W&B run (no account)."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    result = train(
        tmp_path, *QM9_FIXTURE, "logger=[csv,tensorboard,wandb]", "trainer=quick", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false", "model.net.num_interactions=1", "test=false",
        env={"WANDB_SILENT": "true"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert "val/mae_homo" in (run / "metrics.csv").read_text()
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (run / "curves.png").is_file()


@pytest.mark.parametrize(
    "override,message",
    [
        ("seed=abc", "seed must be a whole number (default 42), got 'abc'"),
        ("trainer.max_epochs=abc", "trainer.max_epochs must be a whole number (default 300), got 'abc'"),
        ("trainer.max_epochs=2.5", "trainer.max_epochs must be a whole number (default 300), got 2.5"),
        ("model.optimizer.lr=abc", "model.optimizer.lr must be a finite number (default 0.0005), got 'abc'"),
        ("model.optimizer.lr=-1e-3", "model.optimizer.lr must be a number >= 0, got -0.001"),
        ("model.net.hidden_channels=0", "model.net.hidden_channels must be at least 1, got 0"),
        ("model.net.cutoff=far", "model.net.cutoff must be a finite number (default 5), got 'far'"),
        ("data.split=[10,10]", "data.split must be three numbers (train, val, test sizes or fractions), got [10, 10]"),
        ("data.batch_size=0", "data.batch_size must be at least 1, got 0"),
        (
            "trainer.devices=[a]",
            "trainer.devices must be auto, a count (-1: all), or a list of device indices, got ['a']",
        ),
        ("trainer.enable_progress_bar=3", "trainer.enable_progress_bar must be true or false, got 3"),
        ("test=maybe", "test must be true or false, got 'maybe'"),
        ("data.root={file}", "data.root {file}: {file} is a file, not a folder"),
        ("hydra.run.dir={file}/run", "hydra.run.dir {file}/run: {file} is a file, not a folder"),
    ],
)
def test_bad_train_values_are_one_line_before_any_work(tmp_path, capsys, override, message):
    from geomol.cli.train import precheck, report_errors

    afile = tmp_path / "afile"
    afile.write_text("")
    override, message = override.format(file=afile), message.format(file=afile)
    with pytest.raises(SystemExit) as exit_info:
        report_errors(precheck)(["model=schnet", "trainer=default", override])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"geomol: error: {message}"


def test_path_errors_are_one_line():
    import errno

    from geomol.cli.common import user_error

    err = user_error(RuntimeError("wrapped").with_traceback(None))
    assert err is None
    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = OSError(errno.EROFS, "Read-only file system", "/data/qm9/processed/x.pt")
    assert str(user_error(wrapped)).startswith(
        "cannot write /data/qm9/processed/x.pt: Read-only file system (set GEOMOL_DATA"
    )


def test_bad_value_in_process_stops_before_hydra_makes_a_run_dir(tmp_path):
    result = train(tmp_path, *QM9_FIXTURE, "trainer.max_epochs=abc")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "run").exists()


def test_init_from_loads_weights_with_a_fresh_optimizer(tmp_path, capsys, caplog):
    import logging

    import torch

    from geomol.cli.train import build, init_weights, report_errors, run

    args = [*QM9_FIXTURE, "experiment=demo", "model.net.hidden_channels=16", "model.net.num_interactions=1"]
    _, source, _ = build(compose_train(tmp_path / "a", args))
    for p in source.parameters():
        torch.nn.init.normal_(p)
    ckpt = tmp_path / "source.ckpt"
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": {}, "global_step": 7,
                "geomol_task": "geomol.tasks.property.PropertyTask"}, ckpt)  # fmt: skip
    _, task, _ = build(compose_train(tmp_path / "b", args))
    init_weights(task, str(ckpt))
    for key, value in source.state_dict().items():
        assert torch.equal(task.state_dict()[key], value), key
    # Another network, or another task: one line each.
    _, other, _ = build(compose_train(tmp_path / "c", [*args, "model.net.hidden_channels=32"]))
    with pytest.raises(ValueError, match=r"does not fit this model: \d+ of another shape \(net\."):
        init_weights(other, str(ckpt))
    cfg = compose_train(
        tmp_path / "d", [*QM9_FIXTURE, "model=propmolflow", "trainer.fast_dev_run=true", f"init_from={ckpt}"]
    )
    with pytest.raises(SystemExit) as exit_info:
        report_errors(run)(cfg)
    assert exit_info.value.code == 2
    assert "holds a PropertyTask, but this run trains a GenerationTask" in capsys.readouterr().err.splitlines()[-1]
    # Through train.py: the run starts from the weights (one fast_dev_run step).
    cfg = compose_train(tmp_path / "e", [*args, "trainer.fast_dev_run=true", "test=false", f"init_from={ckpt}"])
    with caplog.at_level(logging.INFO, logger="geomol"):
        run(cfg)
    assert f"weights from {ckpt} (global step 7); fresh optimizer and schedule" in caplog.text
