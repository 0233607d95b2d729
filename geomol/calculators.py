"""ASE calculator for geomol energy models (energies and forces −∂E/∂pos)."""

from __future__ import annotations

import os

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .checkpoints import load_task
from .tasks.property import PropertyTask

__all__ = ["GeomolCalculator", "ENERGY_TARGETS"]

# Targets whose negative gradient is a force: total energies (rMD17's, QM9's U0/U/H/G and atomization forms).
ENERGY_TARGETS = frozenset({"energy", "U0", "U", "H", "G", "U0_atom", "U_atom", "H_atom", "G_atom"})


class GeomolCalculator(Calculator):
    """Energy (eV) and forces (eV/Å) of an ``ase.Atoms`` from a trained geomol energy model.

    Any ``PropertyTask`` checkpoint whose first target is an energy in eV works; models trained with
    forces (rMD17) give the most accurate forces.

    Example::

        from ase.io import read
        atoms = read("aspirin.xyz")
        atoms.calc = GeomolCalculator("outputs/ponita_rmd17/.../checkpoints/best.ckpt")
        atoms.get_potential_energy(), atoms.get_forces()

    Args:
        checkpoint: path of the ``.ckpt`` file (loaded safely, ``weights_only=True``).
        device: torch device.
        dtype: compute dtype; float64 gives the smoothest dynamics.
        trust_checkpoint: build whatever the checkpoint names (dangerous; see ``geomol.checkpoints.load_task``).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        device: str = "cpu",
        dtype: torch.dtype = torch.float64,
        trust_checkpoint: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        task = load_task(checkpoint, expected=PropertyTask, map_location=device, trust_checkpoint=trust_checkpoint)
        target, unit = task.hparams.targets[0], task.hparams.units[0]
        if unit != "eV" or not (task.hparams.get("forces") or target in ENERGY_TARGETS):
            raise ValueError(
                f"checkpoint {checkpoint} predicts {target} ({unit}), not a potential energy: GeomolCalculator needs "
                "a model of the energy (trained with forces, or on one of " + ", ".join(sorted(ENERGY_TARGETS)) + ")"
            )
        self.task = task.to(dtype)
        self.device, self.dtype = torch.device(device), dtype

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise ValueError(
                "GeomolCalculator computes isolated molecules only: this Atoms object is periodic "
                f"(pbc={self.atoms.pbc.tolist()}); set atoms.pbc = False for a molecule in vacuum"
            )
        z = torch.as_tensor(self.atoms.get_atomic_numbers(), dtype=torch.long, device=self.device)
        pos = torch.as_tensor(self.atoms.get_positions(), dtype=self.dtype, device=self.device)
        energy, forces = self.task.predict_energy_forces(z, pos)
        e = float(energy.detach()[0])
        self.results = {"energy": e, "free_energy": e, "forces": forces.detach().cpu().numpy().astype(np.float64)}
