"""ASE calculator for geomol energy models (energies and forces −∂E/∂pos)."""

from __future__ import annotations

import os

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .checkpoints import load_task
from .tasks.property import PropertyTask

__all__ = ["GeomolCalculator"]


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
        if task.hparams.units[0] != "eV":
            raise ValueError(
                f"checkpoint {checkpoint} predicts {task.hparams.targets[0]} in {task.hparams.units[0]}, not an energy in eV"
            )
        self.task = task.to(dtype)
        self.device, self.dtype = torch.device(device), dtype

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        z = torch.as_tensor(self.atoms.get_atomic_numbers(), dtype=torch.long, device=self.device)
        pos = torch.as_tensor(self.atoms.get_positions(), dtype=self.dtype, device=self.device)
        energy, forces = self.task.predict_energy_forces(z, pos)
        e = float(energy.detach()[0])
        self.results = {"energy": e, "free_energy": e, "forces": forces.detach().cpu().numpy().astype(np.float64)}
