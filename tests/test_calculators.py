from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from ase import Atoms, units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from geomol.calculators import GeomolCalculator
from geomol.data.rmd17 import RMD17DataModule
from geomol.tasks import PropertyTask

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"
NET = {
    "_target_": "geomol.models.SchNet",
    "hidden_channels": 32,
    "num_filters": 32,
    "num_interactions": 2,
    "num_basis": 16,
}


@pytest.fixture(scope="module")
def energy_model(tmp_path_factory):
    pl.seed_everything(0)
    dm = RMD17DataModule(root=FIXTURE, molecule="aspirin", num_train=50, num_val=10, batch_size=5)
    task = PropertyTask(net=NET, optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
                        **dm.task_kwargs())  # fmt: skip
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False, limit_val_batches=1)  # fmt: skip
    trainer.fit(task, datamodule=dm)
    path = tmp_path_factory.mktemp("calc") / "aspirin.ckpt"
    trainer.save_checkpoint(path)
    return path, dm


def test_energy_and_forces_match_the_task(energy_model):
    path, dm = energy_model
    frame = dm.subset("test")[0]
    atoms = Atoms(numbers=frame.z.numpy(), positions=frame.pos.double().numpy())
    atoms.calc = GeomolCalculator(path)
    energy, forces = atoms.calc.task.predict_energy_forces(frame.z, frame.pos.double())
    assert atoms.get_potential_energy() == pytest.approx(float(energy.detach()[0]), rel=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), forces.detach().numpy(), rtol=1e-9, atol=1e-10)
    # A trained energy is in the right range: aspirin's rMD17 energies are about -17,600 eV.
    assert abs(atoms.get_potential_energy() - float(frame.energy)) < 50.0


def test_nve_conserves_energy(energy_model):
    path, dm = energy_model
    frame = dm.subset("test")[0]
    atoms = Atoms(numbers=frame.z.numpy(), positions=frame.pos.double().numpy())
    atoms.calc = GeomolCalculator(path)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    total = []
    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    dyn.attach(lambda: total.append(atoms.get_total_energy()), interval=5)
    dyn.run(120)
    drift = max(total) - min(total)
    kinetic = 1.5 * len(atoms) * units.kB * 300
    # Stated tolerance: total energy stays within 1% of the kinetic energy over 30 fs.
    assert drift < 0.01 * kinetic, (drift, kinetic)


def test_rejects_non_energy_models(tmp_path, fixtures_dir):
    from geomol.data.datamodule import QM9DataModule

    dm = QM9DataModule(root=tmp_path, source=fixtures_dir / "qm9", target="alpha", subset=32, batch_size=8)
    task = PropertyTask(net=NET, **dm.task_kwargs())
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1)  # fmt: skip
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "alpha.ckpt")
    with pytest.raises(ValueError, match="predicts alpha \\(a0\\^3\\), not a potential energy"):
        GeomolCalculator(tmp_path / "alpha.ckpt")


def test_periodic_cells_and_non_energy_models_are_refused(energy_model, tmp_path):
    import torch

    path, dm = energy_model
    frame = dm.subset("test")[0]
    atoms = Atoms(numbers=frame.z.numpy(), positions=frame.pos.double().numpy(), cell=[20, 20, 20], pbc=True)
    atoms.calc = GeomolCalculator(path)
    with pytest.raises(
        ValueError, match=r"isolated molecules only: this Atoms object is periodic \(pbc=\[True, True, True\]\)"
    ):
        atoms.get_potential_energy()
    # The same network relabelled as a HOMO model (eV, no forces): its gradient is not a force.
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"].update(targets=["homo"], forces=False)
    homo = tmp_path / "homo.ckpt"
    torch.save(ckpt, homo)
    with pytest.raises(ValueError, match="predicts homo \\(eV\\), not a potential energy"):
        GeomolCalculator(homo)


def test_unseen_element_is_one_line(energy_model):
    """A force field trained on aspirin (H, C, O) refuses sulfur instead of extrapolating silently."""
    atoms = Atoms("CSH2", positions=[[0, 0, 0], [1.6, 0, 0], [-0.6, 0.9, 0], [-0.6, -0.9, 0]])
    atoms.calc = GeomolCalculator(energy_model[0])
    with pytest.raises(ValueError, match=r"unknown element Z=16: this model was trained on Z in \[1, 6, 8\]"):
        atoms.get_potential_energy()
