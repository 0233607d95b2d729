"""GenerationTask: trains PropMolFlow-style flow matching; sampling is :class:`~geomol.flows.generator.MoleculeGenerator`.

Everything sampling needs is stored in the checkpoint's hyper-parameters: the network config, the
conditioning property names and their standardisation statistics (from the generator's training
half), the flow settings and the atom-count statistics. ``MoleculeGenerator.from_checkpoint(path)``
(or ``geomol.checkpoints.load_task(path)`` followed by :meth:`GenerationTask.sample`) needs no other input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from rdkit import Chem
from torch import Tensor

from geomol.data.chem import ATOMIC_NUMBERS, ELEMENTS
from geomol.devices import reuse_freed_memory
from geomol.flows.bonds import pair_bond_types, upper_pairs
from geomol.flows.generator import DEFAULT_SAMPLING, MoleculeGenerator, available_memory
from geomol.flows.molecule import CHARGES, MODALITIES, MolecularFlow, MoleculeState
from geomol.flows.sampler import AtomCounts
from geomol.metrics.summary import molecule_metrics
from geomol.nn.gvp import compile_edge_blocks
from geomol.tasks.base import GeomolTask, build_network, plain_config

__all__ = ["GenerationTask", "CHARGES", "available_memory"]

DEFAULT_LOSS_WEIGHTS = {"x": 3.0, "a": 0.4, "c": 1.0, "e": 2.0}


class GenerationTask(GeomolTask):
    """Flow matching over positions, atom types, formal charges and bond orders, optionally conditioned.

    Args:
        net: config of the vector field (``_target_`` plus arguments), built with
            ``num_properties=len(condition)``.
        targets, units, mean, std, atom_counts, ood_targets, test_quantiles: what the data module's
            ``task_kwargs()`` gives (:class:`geomol.data.generation.GenerationStats`, passed as
            ``**stats``): property names, units and their per-molecule statistics on the training
            molecules, the atom-count histograms (``geomol.data.generation.atom_count_statistics``), the
            out-of-distribution value of each property (``condition={"gap": "ood"}`` samples at it) and
            equally spaced quantiles of its test-split distribution (``condition={"gap": "sample"}``
            draws one value per molecule from it, the protocol). Only the conditioned properties are stored.
        target_columns: column of ``batch.y`` holding each target (default: ``y`` has exactly
            ``targets``, in order).
        condition: property names to condition on; empty: unconditional generation.
        flow: keyword arguments of :class:`~geomol.flows.molecule.MolecularFlow` (schedules, prior
            std, alignment).
        loss_weights: weights of the ``x``, ``a``, ``c``, ``e`` losses (default 3, 0.4, 1, 2).
        sampling: default ``steps``, ``eta``, ``temperature``, ``batch_size``, ``guidance`` of :meth:`sample`.
        condition_dropout: fraction of training molecules whose condition is dropped (the field then also
            learns the unconditional flow, which classifier-free ``guidance`` at sampling needs); 0: never.
        val_molecules: molecules sampled for the validation metrics (0: never sample).
        sample_every_n_epochs: sample and score molecules every this many validation epochs.
        compile: run the GVP layers' per-edge work through ``torch.compile``
            (:func:`~geomol.nn.gvp.compile_edge_blocks`); a speed switch, the same results up to rounding.
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
        atom_counts: Mapping,
        target_columns: Sequence[int] | None = None,
        ood_targets: Sequence[float] | None = None,
        test_quantiles: Sequence[Sequence[float]] | None = None,
        condition: Sequence[str] = (),
        flow: Mapping | None = None,
        loss_weights: Mapping[str, float] | None = None,
        sampling: Mapping | None = None,
        condition_dropout: float = 0.0,
        val_molecules: int = 32,
        sample_every_n_epochs: int = 10,
        compile: bool = False,
        **optimization,
    ) -> None:
        super().__init__(**optimization)
        condition = list(plain_config(condition) or [])
        if not (len(targets) == len(units) == len(mean) == len(std)):
            raise ValueError("targets, units, mean and std must have the same length")
        unknown = [name for name in condition if name not in targets]
        if unknown:
            raise ValueError(f"cannot condition on {unknown}: the data provides {', '.join(targets)}")
        if len(set(condition)) != len(condition):
            raise ValueError(f"a property is listed twice in condition={condition}")
        if not 0.0 <= float(condition_dropout) < 1.0:
            raise ValueError(f"condition_dropout must lie in [0, 1), got {condition_dropout}")
        if condition_dropout and not condition:
            raise ValueError("condition_dropout needs conditioning properties (model.condition=[...])")
        loss_weights = {**DEFAULT_LOSS_WEIGHTS, **(plain_config(loss_weights) or {})}
        if set(loss_weights) != set(MODALITIES):
            raise ValueError(f"loss_weights takes the keys x, a, c, e; got {sorted(loss_weights)}")
        sampling = {**DEFAULT_SAMPLING, **(plain_config(sampling) or {})}
        atom_counts = plain_config(atom_counts)
        keep = [list(targets).index(name) for name in condition]
        columns = list(range(len(targets))) if target_columns is None else list(target_columns)
        if len(columns) != len(targets):
            raise ValueError(f"target_columns has {len(columns)} entries for {len(targets)} targets")
        given = atom_counts.get("given_property") or {}
        # Only the conditioned properties go into the checkpoint.
        net, flow = plain_config(net), plain_config(flow) or {}
        targets, units = [targets[k] for k in keep], [units[k] for k in keep]
        mean, std = [float(mean[k]) for k in keep], [float(std[k]) for k in keep]
        target_columns = [int(columns[k]) for k in keep]
        ood_targets = None if ood_targets is None else [float(ood_targets[k]) for k in keep]
        test_quantiles = None if test_quantiles is None else [[float(v) for v in test_quantiles[k]] for k in keep]
        atom_counts = {
            "counts": list(atom_counts["counts"]),
            "given_property": {name: given[name] for name in condition if name in given},
        }
        self.save_hyperparameters()
        self.net = build_network(self.hparams.net, num_properties=len(condition))
        for attr in ("num_atom_types", "num_charges", "num_bond_types"):
            if not hasattr(self.net, attr):
                raise ValueError(f"the generation network must expose {attr} (see geomol.models.propmolflow)")
        if self.net.num_atom_types != len(ELEMENTS) or self.net.num_charges != len(CHARGES):
            raise ValueError(
                f"the network must predict {len(ELEMENTS)} elements ({', '.join(ELEMENTS)}) and {len(CHARGES)} "
                f"charges ({CHARGES[0]}..+{CHARGES[-1]}), got {self.net.num_atom_types} and {self.net.num_charges}"
            )
        # A speed switch, not a weight (see geomol.nn.gvp.compile_edge_blocks); nets without GVP layers ignore it.
        compile_edge_blocks(self.net, bool(compile))
        self.flow = MolecularFlow(
            self.net.num_atom_types, self.net.num_charges, self.net.num_bond_types, **self.hparams.flow
        )
        self.atom_counts = AtomCounts(self.hparams.atom_counts["counts"], self.hparams.atom_counts["given_property"])
        z_to_type = torch.full((max(ATOMIC_NUMBERS.values()) + 1,), -1, dtype=torch.long)
        for k, symbol in enumerate(ELEMENTS):
            z_to_type[ATOMIC_NUMBERS[symbol]] = k
        self.register_buffer("z_to_type", z_to_type, persistent=False)
        self.register_buffer("prop_mean", torch.tensor(self.hparams.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("prop_std", torch.tensor(self.hparams.std, dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------ data -> flow state
    def _clean_state(self, batch) -> MoleculeState:
        """The batch on the complete graph, with its pairs and batch vector (no time: it is clean)."""
        z = batch.z
        known = (z < self.z_to_type.numel()) & (self.z_to_type[z.clamp_max(self.z_to_type.numel() - 1)] >= 0)
        if not bool(known.all()):
            raise ValueError(f"the generation model handles only the elements {', '.join(ELEMENTS)}")
        charge = batch.charge - CHARGES[0]
        if bool((charge < 0).any()) or bool((charge >= len(CHARGES)).any()):
            raise ValueError(f"formal charges must lie in {CHARGES[0]}..+{CHARGES[-1]}")
        pairs = upper_pairs(batch.batch)
        bonds = pair_bond_types(pairs, batch.edge_index, batch.edge_attr, z.numel())
        return MoleculeState(batch.pos, self.z_to_type[z], charge, bonds, pairs, batch.batch)

    def _standardized_condition(self, batch) -> Tensor | None:
        """Conditioning properties of the batch ``[B, P]`` in standard units (the training statistics)."""
        if not self.hparams.condition:
            return None
        return (batch.y[:, self.hparams.target_columns] - self.prop_mean) / self.prop_std

    def _losses(self, batch) -> dict[str, Tensor]:
        if batch.pos.device.type == "cpu":
            reuse_freed_memory()  # the same big tensors every step: no page faults on fresh memory
        clean = self._clean_state(batch)
        t = torch.rand(batch.num_graphs, device=batch.pos.device, dtype=batch.pos.dtype)
        target, noisy = self.flow.corrupt(clean, clean.batch, clean.batch[clean.pairs[0]], t)
        condition = self._standardized_condition(batch)
        if self.training and self.hparams.condition_dropout > 0:
            drop = torch.rand(batch.num_graphs, device=t.device) < self.hparams.condition_dropout
            out = self.net(noisy, condition, unconditional=drop)
        else:
            out = self.net(noisy, condition)
        losses = self.flow.losses(out, target, noisy)
        losses["loss"] = sum(self.hparams.loss_weights[m] * losses[m] for m in MODALITIES)
        return losses

    def _step(self, batch, stage: str) -> Tensor:
        losses = self._losses(batch)
        for key, value in losses.items():
            name = f"{stage}/loss" if key == "loss" else f"{stage}/loss_{key}"
            self.log(
                name, value.detach(), batch_size=batch.num_graphs, prog_bar=key == "loss", sync_dist=stage != "train"
            )
        return losses["loss"]

    def on_validation_epoch_end(self) -> None:
        every = self.hparams.sample_every_n_epochs
        if self.hparams.val_molecules <= 0 or self.trainer.sanity_checking or (self.current_epoch + 1) % every:
            return
        at_mean = dict(zip(self.hparams.condition, self.hparams.mean))
        mols = self.sample(self.hparams.val_molecules, condition=at_mean)
        metrics = molecule_metrics(mols)
        del metrics["molecules"]
        self.log_dict({f"val/{key}": value for key, value in metrics.items()}, sync_dist=True)

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        num_molecules: int,
        condition: Mapping[str, float | Sequence[float]] | None = None,
        n_atoms: int | Sequence[int] | Tensor | None = None,
        steps: int | None = None,
        eta: float | None = None,
        temperature: float | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        progress: bool = False,
        precision: str = "32",
        guidance: float | None = None,
        guidance_interval: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    ) -> list[Chem.Mol]:
        """Generate molecules as RDKit molecules with 3D conformers: :meth:`MoleculeGenerator.sample
        <geomol.flows.generator.MoleculeGenerator.sample>` of this task's network, flow and statistics
        (``MoleculeGenerator.from_task(task)``), with the same arguments.

        Shapes:
            n_atoms ``[num_molecules]`` or one number -> ``num_molecules`` molecules, in order.
        """
        return MoleculeGenerator.from_task(self).sample(
            num_molecules, condition=condition, n_atoms=n_atoms, steps=steps, eta=eta, temperature=temperature,
            batch_size=batch_size, seed=seed, progress=progress, precision=precision, guidance=guidance,
            guidance_interval=guidance_interval,
        )  # fmt: skip
