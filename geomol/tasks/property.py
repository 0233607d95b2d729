"""PropertyTask: regression of molecular properties, optionally energies with forces (−∂E/∂pos)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from ..nn.ponita import random_rotation_matrix
from .base import GeomolTask, build_network, plain_config

__all__ = ["PropertyTask", "report_scale"]

# MAE is reported in these units (PyG / literature convention): meV for energies, meV/Å for forces.
_REPORT = {"eV": (1000.0, "meV"), "eV/Å": (1000.0, "meV/Å")}


def report_scale(unit: str) -> tuple[float, str]:
    """Factor and unit in which errors of a target with ``unit`` are reported."""
    return _REPORT.get(unit, (1.0, unit))


def check_molecule_input(z: Tensor, pos: Tensor, elements: Sequence[int] | None) -> None:
    """One-sentence errors for inputs a trained model cannot handle."""
    if z.numel() == 0:
        raise ValueError("empty molecule: no atoms")
    if pos.shape != (z.numel(), 3):
        raise ValueError(f"pos must have shape [{z.numel()}, 3] for {z.numel()} atoms, got {tuple(pos.shape)}")
    if not torch.isfinite(pos).all():
        raise ValueError("NaN or infinite coordinates in the input positions")
    if elements is not None:
        known = torch.tensor(list(elements), device=z.device)
        unknown = z[~torch.isin(z, known)]
        if unknown.numel():
            raise ValueError(
                f"unknown element Z={int(unknown[0])}: this model was trained on Z in {sorted(set(elements))}"
            )


class PropertyTask(GeomolTask):
    """Regress graph-level targets, or an energy and its forces ``F = −∂E/∂pos``.

    The network predicts standardized targets; the task maps them back to physical units with the
    training-split statistics (per atom for extensive targets). Losses are computed in standardized
    units; validation/test log MAE per target in the report unit (meV for eV targets).

    Args:
        net: config of the network (``_target_`` plus arguments); built with
            ``out_channels=len(targets)``.
        targets, units, mean, std, extensive, target_columns, elements, forces, force_rms: what the data
            module's ``task_kwargs()`` gives (:class:`geomol.data.TargetStats`, passed as ``**stats``):
            target names and units, the training split's standardization statistics (``mean`` per atom
            for ``extensive`` targets), the columns of ``batch.y`` holding the targets (default: all),
            the atomic numbers the model may see (others raise a ValueError), whether to train on
            energies and forces (batch has ``energy`` and ``forces``), and the RMS of the training
            force components.
        energy_weight, force_weight: loss weights when ``forces``.
        energy_scale: with ``forces``, the unit energies and forces are standardized by: ``"std"`` (the
            training energies' standard deviation, geomol's default) or ``"force_rms"`` (the RMS of the
            training force components, PONITA's ``main_md17.py``).
            The loss is ``energy_weight·mean(ΔE²) + force_weight·mean(ΔF²)`` in that unit, so PONITA's
            ``E/500 + F`` is ``energy_weight=0.002, force_weight=1`` with ``"force_rms"``.
        test_rotations: average each test prediction (energy, forces rotated back) over this many random
            rotations of the molecule (PONITA's ``--repeats 5``; 1: a single prediction).
        loss: ``"l1"`` or ``"mse"`` for targets without forces (forces use MSE on both terms).
        **optimization: ``optimizer``, ``scheduler``, ``scheduler_interval``, ``monitor``
            (:class:`~geomol.tasks.base.GeomolTask`).
    """

    def __init__(
        self,
        net: Mapping,
        targets: Sequence[str],
        units: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        extensive: Sequence[bool] | None = None,
        target_columns: Sequence[int] | None = None,
        elements: Sequence[int] | None = None,
        forces: bool = False,
        energy_weight: float = 1.0,
        force_weight: float = 100.0,
        loss: str = "l1",
        energy_scale: str = "std",
        force_rms: float | None = None,
        test_rotations: int = 1,
        **optimization,
    ) -> None:
        super().__init__(**optimization)
        if energy_scale not in ("std", "force_rms"):
            raise ValueError(f"energy_scale must be 'std' or 'force_rms', got {energy_scale!r}")
        if energy_scale == "force_rms":
            if not forces or force_rms is None or not force_rms > 0:
                raise ValueError("energy_scale=force_rms needs a force field (forces=true) and the data's force_rms")
            std = [float(force_rms)]
        if isinstance(test_rotations, bool) or not isinstance(test_rotations, int) or test_rotations < 1:
            raise ValueError(f"test_rotations must be a whole number >= 1, got {test_rotations!r}")
        # The stored forms of the arguments (plain lists and dicts).
        net = plain_config(net)
        targets, units, mean, std = list(targets), list(units), list(mean), list(std)
        extensive = list(extensive) if extensive is not None else [False] * len(targets)
        target_columns = list(target_columns) if target_columns is not None else None
        elements = list(elements) if elements is not None else None
        force_rms = None if force_rms is None else float(force_rms)
        self.save_hyperparameters()
        if not (len(targets) == len(units) == len(mean) == len(std)):
            raise ValueError("targets, units, mean and std must have the same length")
        if loss not in ("l1", "mse"):
            raise ValueError(f"loss must be 'l1' or 'mse', got {loss!r}")
        if forces and len(targets) != 1:
            raise ValueError("force training needs exactly one (energy) target")
        self.net = build_network(net, out_channels=len(targets))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float64), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float64), persistent=False)
        self.register_buffer("extensive", torch.tensor(extensive, dtype=torch.bool), persistent=False)

    # ------------------------------------------------------------------ prediction
    def _offset(self, batch_vec: Tensor, num_graphs: int, dtype: torch.dtype) -> Tensor:
        n_atoms = scatter(torch.ones_like(batch_vec, dtype=dtype), batch_vec, 0, dim_size=num_graphs, reduce="sum")
        mean = self.mean.double().to(dtype)
        return torch.where(self.extensive, mean * n_atoms.unsqueeze(-1), mean)  # [G, T]

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor | None = None) -> Tensor:
        """Targets in physical units (float64).

        Shapes:
            z ``[N]``, pos ``[N, 3]``, batch ``[N]`` -> ``[num_graphs, T]``
        """
        check_molecule_input(z, pos, self.hparams.elements)
        if batch is None:
            batch = torch.zeros_like(z)
        num_graphs = int(batch.max()) + 1
        # The offset is added in float64: a float32 total energy of -17,600 eV (aspirin) is only
        # resolved to 2 meV, the size of the errors being measured.
        out = self.net(z, pos, batch).to(torch.float64)
        return out * self.std.double() + self._offset(batch, num_graphs, torch.float64)

    def predict_energy_forces(self, z: Tensor, pos: Tensor, batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Energy ``[num_graphs]`` and forces ``[N, 3]`` (−∂E/∂pos), differentiable for training."""
        with torch.enable_grad():
            if not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
            energy = self(z, pos, batch)[:, 0]
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training)
        return energy, -grad

    def _rotation_average(self, batch, rotations: int):
        """Predictions (energy and forces, or targets) averaged over ``rotations`` random rotations of each
        batch (forces rotated back); one plain prediction for ``rotations == 1``."""
        z, pos, vec = batch.z, batch.pos, batch.batch
        if rotations == 1:
            return self.predict_energy_forces(z, pos, vec) if self.hparams.forces else self(z, pos, vec)
        outs = []
        for _ in range(rotations):
            rot = random_rotation_matrix(torch.float64, pos.device).to(pos.dtype)  # [3, 3]
            if self.hparams.forces:
                energy, forces = self.predict_energy_forces(z, pos @ rot.T, vec)
                outs.append((energy.detach(), (forces @ rot).detach()))  # F' = F Rᵀ  ->  F = F' R
            else:
                outs.append((self(z, pos @ rot.T, vec),))
        means = [torch.stack(parts).mean(0) for parts in zip(*outs)]
        return tuple(means) if self.hparams.forces else means[0]

    def _target(self, batch) -> Tensor:
        if self.hparams.forces and hasattr(batch, "energy"):
            return batch.energy.view(-1, 1)
        y = batch.y
        cols = self.hparams.target_columns
        return y if cols is None else y[:, cols]

    # ------------------------------------------------------------------ steps
    def _step(self, batch, stage: str) -> Tensor:
        target = self._target(batch).to(self.std.dtype)
        num_graphs = target.size(0)
        std = self.std.to(target.dtype)
        rotations = self.hparams.get("test_rotations", 1) if stage == "test" else 1
        if self.hparams.forces:
            energy, forces = self._rotation_average(batch, rotations)
            e_err = (energy.to(target.dtype) - target[:, 0]) / std[0]
            f_err = (forces.to(target.dtype) - batch.forces.to(target.dtype)) / std[0]
            loss = self.hparams.energy_weight * e_err.pow(2).mean() + self.hparams.force_weight * f_err.pow(2).mean()
            errors = {self.hparams.targets[0]: (energy.detach().to(target.dtype) - target[:, 0]).abs()}
            force_mae = (forces.detach() - batch.forces).abs().mean()
            if stage != "train":
                scale, unit = report_scale(f"{self.hparams.units[0]}/Å")
                self.log(f"{stage}/mae_forces", force_mae * scale, batch_size=forces.size(0))
        else:
            pred = self._rotation_average(batch, rotations).to(target.dtype)
            err = (pred - target) / std
            loss = err.abs().mean() if self.hparams.loss == "l1" else err.pow(2).mean()
            errors = {name: (pred[:, k] - target[:, k]).detach().abs() for k, name in enumerate(self.hparams.targets)}
        self.log(f"{stage}/loss", loss.detach(), batch_size=num_graphs, prog_bar=stage != "test")
        if stage != "train":
            for name, unit in zip(self.hparams.targets, self.hparams.units):
                scale, _ = report_scale(unit)
                self.log(f"{stage}/mae_{name}", errors[name].mean() * scale, batch_size=num_graphs, prog_bar=True)
        return loss.float()

    def metric_units(self) -> dict[str, str]:
        """Units of the logged MAE metrics, for printing results."""
        out = {f"mae_{t}": report_scale(u)[1] for t, u in zip(self.hparams.targets, self.hparams.units)}
        if self.hparams.forces:
            out["mae_forces"] = report_scale(f"{self.hparams.units[0]}/Å")[1]
        return out

    # ------------------------------------------------------------------ optimisation
