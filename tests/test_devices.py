"""bf16 on CPUs without native support is emulated and far slower: training and sampling say so."""

import pytest
import torch
from omegaconf import OmegaConf

from geomol import devices
from geomol.cli.train import check_train_config
from geomol.flows.sampler import _precision


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(devices, "_cpu_bf16", lambda: False)
    monkeypatch.setattr(devices, "_warned", set())


def test_accelerators_count_as_fast(no_native_bf16):
    assert devices.fast_bf16("cuda") and not devices.fast_bf16("cpu")


def test_sampling_in_bf16_warns_on_such_a_cpu(no_native_bf16):
    with pytest.warns(RuntimeWarning, match="sampling in bf16 on a CPU without native bf16"):
        with _precision("bf16", torch.device("cpu")):
            pass


def test_training_in_bf16_warns_on_such_a_cpu(no_native_bf16, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = OmegaConf.create({"seed": 0, "trainer": {"precision": "bf16-mixed", "accelerator": "auto"}})
    with pytest.warns(RuntimeWarning, match=r"training \(trainer.precision=bf16-mixed\)"):
        check_train_config(cfg)


def test_no_warning_where_bf16_is_native(monkeypatch, recwarn):
    monkeypatch.setattr(devices, "_cpu_bf16", lambda: True)
    with _precision("bf16", torch.device("cpu")):
        pass
    check_train_config(OmegaConf.create({"seed": 0, "trainer": {"precision": "bf16-mixed"}}))
    assert not [w for w in recwarn if "bf16" in str(w.message)]


def test_reuse_freed_memory_applies_once_and_can_be_turned_off(monkeypatch):
    from geomol.devices import reuse_freed_memory

    monkeypatch.setenv("GEOMOL_MALLOC_TUNING", "0")
    reuse_freed_memory.cache_clear()
    assert reuse_freed_memory() is False
    monkeypatch.delenv("GEOMOL_MALLOC_TUNING")
    reuse_freed_memory.cache_clear()
    applied = reuse_freed_memory()
    assert isinstance(applied, bool) and reuse_freed_memory() is applied  # cached: one call per process
