"""Short runs learn visibly: EMA warm-up, LR warm-up capped to the run, raw and EMA validation metrics."""

import logging

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from geomol.cli.train import CONFIG_DIR, build
from geomol.tasks.base import cap_warmup
from geomol.tasks.callbacks import EMA, ema_decay

from ..test_configs import FIXTURES


def test_ema_decay_warms_up_to_its_value():
    assert ema_decay(0.999, 0, True) == pytest.approx(0.1)
    assert ema_decay(0.999, 20, True) == pytest.approx(21 / 30)
    assert ema_decay(0.999, 100_000, True) == 0.999
    assert ema_decay(0.999, 0, False) == 0.999


def test_ema_average_follows_the_warmup():
    """The averaged weights after n updates equal the recursion with the warmed-up decays."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ema = EMA(decay=0.99)
    averaged = torch.optim.swa_utils.AveragedModel(net, **ema._kwargs)
    averaged.update_parameters(net)  # the first update copies the weights
    expected = net.weight.detach().clone()
    for n in range(1, 6):  # n: updates averaged so far
        with torch.no_grad():
            net.weight.add_(torch.randn_like(net.weight))
        averaged.update_parameters(net)
        d = ema_decay(0.99, n, True)
        expected = d * expected + (1 - d) * net.weight.detach()
    torch.testing.assert_close(averaged.module.weight, expected)


def test_ema_keeps_integer_buffers():
    """SH-degree tables are int64 buffers: a float average cast back truncates (0.9·3 + 0.1·3 -> 2)."""
    net = torch.nn.Linear(2, 2)
    net.register_buffer("degree", torch.arange(10))
    averaged = torch.optim.swa_utils.AveragedModel(net, use_buffers=True, **EMA(decay=0.9, warmup=False)._kwargs)
    for _ in range(5):
        averaged.update_parameters(net)
    assert torch.equal(averaged.module.degree, torch.arange(10))


def test_warmup_is_capped_to_the_run(caplog):
    scheduler = {"_target_": "geomol.tasks.schedules.warmup_exponential_decay", "warmup_steps": 3000}
    with caplog.at_level(logging.WARNING, logger="geomol"):
        capped = cap_warmup(scheduler, 30.0, "step")
    assert capped["warmup_steps"] == 3 and scheduler["warmup_steps"] == 3000
    assert "model.scheduler.warmup_steps=3000 is longer than 10 % of this run's 30 steps" in caplog.text
    assert cap_warmup(scheduler, 3_000_000.0, "step") is scheduler
    assert cap_warmup({"warmup_steps": 10}, 3.0, "epoch")["warmup_steps"] == 1


@pytest.mark.parametrize("model", ["schnet", "dimenetpp"])
def test_thirty_step_quick_run_lowers_validation_mae(model, tmp_path):
    """trainer=quick, 30 optimizer steps on the QM9 fixture: the validation MAE of the raw weights falls,
    and that of the EMA weights (what validation and checkpoints use) falls with it."""
    GlobalHydra.instance().clear()
    overrides = [
        f"model={model}", "trainer=quick", f"data.source={FIXTURES / 'qm9'}", "data.subset=null", "data.batch_size=16",
        "data.num_workers=0", "trainer.limit_train_batches=10", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
        f"paths.run_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}", "~logger", "~callbacks.lr_monitor", "~callbacks.curves",
    ]  # fmt: skip
    if model == "dimenetpp":
        overrides += ["model.net.hidden_channels=32", "model.net.num_blocks=2", "model.net.out_emb_channels=64"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(0)
    datamodule, task, trainer = build(cfg)
    (before,) = trainer.validate(task, datamodule=datamodule, verbose=False)
    trainer.fit(task, datamodule=datamodule)
    after = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert trainer.global_step == 30
    start, raw, ema = before["val/mae_homo"], after["val_raw/mae_homo"], after["val/mae_homo"]
    assert raw < 0.95 * start, (before, after)  # the trained weights learned
    # ...and the EMA weights show it (with decay 0.999 and no warm-up they would still be ~97 % the initial ones)
    assert start - ema > 0.5 * (start - raw), (before, after)


def test_curves_one_panel_per_unit(tmp_path):
    from geomol.tasks.callbacks import plot_metrics

    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,step,train/loss,val/loss,val/mae_energy,val/mae_forces,val_raw/mae_energy,val/molecule_stability\n"
        "0,9,0.9,,,,,\n0,9,,0.8,12.0,40.0,11.0,0.5\n1,19,0.5,,,,,\n1,19,,0.4,6.0,20.0,5.0,0.7\n"
    )
    panels = dict(plot_metrics(csv, tmp_path / "curves.png", {"mae_energy": "meV", "mae_forces": "meV/Å"}))
    assert panels == {
        "loss": ["train/loss", "val/loss"],
        "meV": ["val/mae_energy", "val_raw/mae_energy"],
        "meV/Å": ["val/mae_forces"],
        "fraction": ["val/molecule_stability"],
    }
    assert (tmp_path / "curves.png").is_file() and not list(tmp_path.glob("*.tmp.png"))


def test_curves_are_drawn_after_each_validation_reaches_the_log(tmp_path, monkeypatch):
    import csv as csv_module

    import geomol.tasks.callbacks as callbacks

    seen = []

    def record(path, output, units=None):
        with open(path, newline="") as handle:
            seen.append(sum(1 for row in csv_module.DictReader(handle) if row.get("val/mae_homo")))
        return []

    monkeypatch.setattr(callbacks, "plot_metrics", record)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "trainer=quick", f"data.source={FIXTURES / 'qm9'}", "data.subset=null", "data.batch_size=32",
            "data.num_workers=0", "trainer.limit_train_batches=2", "trainer.max_epochs=3",
            "trainer.enable_progress_bar=false", "model.net.num_interactions=1", f"paths.run_dir={tmp_path}",
        ])  # fmt: skip
    datamodule, task, trainer = build(cfg)
    trainer.fit(task, datamodule=datamodule)
    assert seen[:3] == [1, 2, 3] and seen[-1] == 3  # each drawing holds the validation that triggered it
