"""GenerationTask: trains PropMolFlow-style flow matching and samples molecules from a checkpoint.

Everything sampling needs is stored in the checkpoint's hyper-parameters: the network config, the
conditioning property names and their standardisation statistics (from the generator's training
half), the flow settings and the atom-count statistics. ``geomol.checkpoints.load_task(path)`` (or
``GenerationTask.load_from_checkpoint(path)``) followed by :meth:`GenerationTask.sample` needs no
other input.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from rdkit import Chem
from torch import Tensor
from tqdm import tqdm

from geomol.data.chem import ATOMIC_NUMBERS, ELEMENTS, mol_from_graph
from geomol.flows.bonds import bonds_from_pairs, pair_bond_types, upper_pairs
from geomol.flows.molecule import MODALITIES, MolecularFlow, MoleculeState
from geomol.flows.sampler import AtomCounts, euler_sample, split_molecules
from geomol.metrics.conditional import quantile_sample
from geomol.metrics.summary import molecule_metrics
from geomol.metrics.validity import sanitized
from geomol.tasks.base import GeomolTask, build_network, is_out_of_memory, plain_config

__all__ = ["GenerationTask", "CHARGES", "available_memory"]


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, or the host's MemAvailable; None if unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError):
        return None
    return None


def pair_bytes(edge_features: int, vectors: int) -> int:
    """Bytes one atom pair holds at the peak of a sampling step: the pair features and their messages
    through one update (float32, ~8 live copies of the edge features plus geometry). A rough upper
    bound for refusing hopeless batches up front, not a measurement."""
    return 4 * (8 * edge_features + 6 * vectors + 32)


log = logging.getLogger("geomol")


def _numbers(name: str, value) -> Tensor:
    """A condition value as a 1-D float64 tensor of finite numbers, or a one-line ValueError."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, Tensor):
        items = value.flatten().tolist()
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad or not items:
        shown = bad[0] if bad else value
        raise ValueError(f"condition.{name} must be a number, a list of numbers, 'sample' or 'ood', got {shown!r}")
    out = torch.tensor(items, dtype=torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"condition.{name} must be finite numbers, got {value!r}")
    return out


# Formal charges the flow can produce (class k is charge CHARGES[k]); QM9 has only -1, 0, +1.
CHARGES = (-2, -1, 0, 1, 2, 3)
DEFAULT_LOSS_WEIGHTS = {"x": 3.0, "a": 0.4, "c": 1.0, "e": 2.0}
DEFAULT_SAMPLING = {"steps": 100, "eta": 10.0, "temperature": 0.05, "batch_size": 128}


class GenerationTask(GeomolTask):
    """Flow matching over positions, atom types, formal charges and bond orders, optionally conditioned.

    Args:
        net: config of the vector field (``_target_`` plus arguments), built with
            ``num_properties=len(condition)``.
        targets, units, mean, std: property names, units and their per-molecule statistics on the
            training molecules (from the data module); only the conditioned ones are stored.
        atom_counts: atom-count histograms (``geomol.data.generation.atom_count_statistics``).
        target_columns: column of ``batch.y`` holding each target (default: ``y`` has exactly
            ``targets``, in order).
        ood_targets: out-of-distribution value of each target (99th percentile of the training
            molecules); ``condition={"gap": "ood"}`` samples at it.
        test_quantiles: per target, equally spaced quantiles of its test-split distribution;
            ``condition={"gap": "sample"}`` draws one value per molecule from it (the protocol).
        condition: property names to condition on; empty: unconditional generation.
        flow: keyword arguments of :class:`~geomol.flows.molecule.MolecularFlow` (schedules, prior
            std, alignment).
        loss_weights: weights of the ``x``, ``a``, ``c``, ``e`` losses (default 3, 0.4, 1, 2).
        sampling: default ``steps``, ``eta``, ``temperature``, ``batch_size`` of :meth:`sample`.
        val_molecules: molecules sampled for the validation metrics (0: never sample).
        sample_every_n_epochs: sample and score molecules every this many validation epochs.
        optimizer, scheduler, scheduler_interval, monitor: as in :class:`geomol.tasks.PropertyTask`.
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
        val_molecules: int = 32,
        sample_every_n_epochs: int = 10,
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        scheduler_interval: str = "epoch",
        monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        condition = list(plain_config(condition) or [])
        if not (len(targets) == len(units) == len(mean) == len(std)):
            raise ValueError("targets, units, mean and std must have the same length")
        unknown = [name for name in condition if name not in targets]
        if unknown:
            raise ValueError(f"cannot condition on {unknown}: the data provides {', '.join(targets)}")
        if len(set(condition)) != len(condition):
            raise ValueError(f"a property is listed twice in condition={condition}")
        weights = {**DEFAULT_LOSS_WEIGHTS, **(plain_config(loss_weights) or {})}
        if set(weights) != set(MODALITIES):
            raise ValueError(f"loss_weights takes the keys x, a, c, e; got {sorted(weights)}")
        sampling = {**DEFAULT_SAMPLING, **(plain_config(sampling) or {})}
        atom_counts = plain_config(atom_counts)
        keep = [list(targets).index(name) for name in condition]
        columns = list(range(len(targets))) if target_columns is None else list(target_columns)
        if len(columns) != len(targets):
            raise ValueError(f"target_columns has {len(columns)} entries for {len(targets)} targets")
        given = atom_counts.get("given_property") or {}
        # Only the conditioned properties go into the checkpoint.
        self.save_hyperparameters(
            {
                "net": plain_config(net),
                "targets": [targets[k] for k in keep],
                "units": [units[k] for k in keep],
                "mean": [float(mean[k]) for k in keep],
                "std": [float(std[k]) for k in keep],
                "target_columns": [int(columns[k]) for k in keep],
                "ood_targets": None if ood_targets is None else [float(ood_targets[k]) for k in keep],
                "test_quantiles": None
                if test_quantiles is None
                else [[float(v) for v in test_quantiles[k]] for k in keep],
                "atom_counts": {
                    "counts": list(atom_counts["counts"]),
                    "given_property": {name: given[name] for name in condition if name in given},
                },
                "condition": condition,
                "flow": plain_config(flow) or {},
                "loss_weights": weights,
                "sampling": sampling,
                "val_molecules": val_molecules,
                "sample_every_n_epochs": sample_every_n_epochs,
                "optimizer": plain_config(optimizer),
                "scheduler": plain_config(scheduler),
                "scheduler_interval": scheduler_interval,
                "monitor": monitor,
            }
        )
        self.net = build_network(self.hparams.net, num_properties=len(condition))
        for attr in ("num_atom_types", "num_charges", "num_bond_types"):
            if not hasattr(self.net, attr):
                raise ValueError(f"the generation network must expose {attr} (see geomol.models.propmolflow)")
        if self.net.num_atom_types != len(ELEMENTS) or self.net.num_charges != len(CHARGES):
            raise ValueError(
                f"the network must predict {len(ELEMENTS)} elements ({', '.join(ELEMENTS)}) and {len(CHARGES)} "
                f"charges ({CHARGES[0]}..+{CHARGES[-1]}), got {self.net.num_atom_types} and {self.net.num_charges}"
            )
        self.flow = MolecularFlow(
            self.net.num_atom_types, self.net.num_charges, self.net.num_bond_types, **self.hparams.flow
        )
        self.atom_counts = AtomCounts(self.hparams.atom_counts["counts"], self.hparams.atom_counts["given_property"])
        z_to_type = torch.full((max(ATOMIC_NUMBERS.values()) + 1,), -1, dtype=torch.long)
        for k, symbol in enumerate(ELEMENTS):
            z_to_type[ATOMIC_NUMBERS[symbol]] = k
        self.register_buffer("z_to_type", z_to_type, persistent=False)
        self.register_buffer("type_to_z", torch.tensor([ATOMIC_NUMBERS[s] for s in ELEMENTS]), persistent=False)
        self.register_buffer("prop_mean", torch.tensor(self.hparams.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("prop_std", torch.tensor(self.hparams.std, dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------ data -> flow state
    def _clean_state(self, batch) -> tuple[MoleculeState, Tensor, Tensor]:
        """The batch on the complete graph: (state, batch vector, pairs)."""
        z = batch.z
        known = (z < self.z_to_type.numel()) & (self.z_to_type[z.clamp_max(self.z_to_type.numel() - 1)] >= 0)
        if not bool(known.all()):
            raise ValueError(f"the generation model handles only the elements {', '.join(ELEMENTS)}")
        charge = batch.charge - CHARGES[0]
        if bool((charge < 0).any()) or bool((charge >= len(CHARGES)).any()):
            raise ValueError(f"formal charges must lie in {CHARGES[0]}..+{CHARGES[-1]}")
        pairs = upper_pairs(batch.batch)
        bonds = pair_bond_types(pairs, batch.edge_index, batch.edge_attr, z.numel())
        return MoleculeState(batch.pos, self.z_to_type[z], charge, bonds), batch.batch, pairs

    def _standardized_condition(self, batch) -> Tensor | None:
        """Conditioning properties of the batch ``[B, P]`` in standard units (the training statistics)."""
        if not self.hparams.condition:
            return None
        return (batch.y[:, self.hparams.target_columns] - self.prop_mean) / self.prop_std

    def _losses(self, batch) -> dict[str, Tensor]:
        clean, batch_vec, pairs = self._clean_state(batch)
        num_graphs = batch.num_graphs
        t = torch.rand(num_graphs, device=batch.pos.device, dtype=batch.pos.dtype)
        target, noisy = self.flow.corrupt(clean, batch_vec, batch_vec[pairs[0]], t)
        out = self.net(
            noisy.atom_type,
            noisy.charge,
            noisy.pos,
            noisy.bond_type,
            pairs,
            t,
            batch_vec,
            self._standardized_condition(batch),
        )
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
    def _condition_values(
        self, condition: Mapping[str, float | Sequence[float]] | None, num: int, generator=None
    ) -> Tensor | None:
        """Raw conditioning values ``[num, P]`` in the order of ``hparams.condition``.

        Each value is a number, one number per molecule, ``"ood"`` (the 99th percentile of the training
        molecules) or ``"sample"`` (one value per molecule drawn from the test split's distribution,
        with ``generator``). Anything else raises a one-line ValueError.
        """
        condition = dict(condition or {})
        trained = self.hparams.condition
        unknown = [name for name in condition if name not in trained]
        if unknown:
            have = f"trained on {', '.join(trained)}" if trained else "unconditional"
            raise ValueError(f"this checkpoint is {have}: it cannot condition on {', '.join(unknown)}")
        missing = [name for name in trained if name not in condition]
        if missing:
            raise ValueError(
                f"this checkpoint is conditioned on {', '.join(trained)}: give condition.{missing[0]}=VALUE"
            )
        if not trained:
            return None
        columns = []
        for k, name in enumerate(trained):
            value = condition[name]
            if isinstance(value, str) and value == "ood":
                if self.hparams.ood_targets is None:
                    raise ValueError("this checkpoint has no out-of-distribution targets; give a number")
                value = torch.full((num,), float(self.hparams.ood_targets[k]), dtype=torch.float64)
            elif isinstance(value, str) and value == "sample":
                quantiles = self.hparams.get("test_quantiles")
                if quantiles is None:
                    raise ValueError(
                        f"this checkpoint does not store the test split's {name} distribution (trained before "
                        f"condition.{name}=sample existed): give a number or a list of values"
                    )
                value = quantile_sample(quantiles[k], num, generator)
            else:
                value = _numbers(name, value)
            if value.numel() == 1:
                value = value.expand(num)
            if value.numel() != num:
                raise ValueError(f"condition.{name} has {value.numel()} values for {num} molecules")
            self._warn_far(name, k, value)
            columns.append(value)
        return torch.stack(columns, dim=1)

    def _warn_far(self, name: str, k: int, value: Tensor) -> None:
        """One warning line when requested values lie far outside what the model was trained on."""
        mean, std = self.hparams.mean[k], self.hparams.std[k]
        z = ((value - mean) / std).abs().max()
        if float(z) > 4.0:
            unit = self.hparams.units[k]
            log.warning(
                "condition.%s up to %.4g %s lies %.1f std from the training molecules' mean (%.4g ± %.4g %s): "
                "the model was not trained there",
                name, float(value[((value - mean) / std).abs().argmax()]), unit, float(z), mean, std, unit,
            )  # fmt: skip

    def _atom_counts(self, num: int, n_atoms, values: Tensor | None, generator) -> Tensor:
        if n_atoms is not None:
            counts = torch.as_tensor(n_atoms, dtype=torch.long).flatten()
            counts = counts.expand(num) if counts.numel() == 1 else counts
            if counts.numel() != num or bool((counts < 1).any()):
                raise ValueError(f"n_atoms must be one positive number or one per molecule ({num})")
            return counts.clone()
        if values is None:
            return self.atom_counts.sample(num, generator=generator)
        names = self.hparams.condition
        distinct, inverse = torch.unique(values, dim=0, return_inverse=True)
        counts = torch.empty(num, dtype=torch.long)
        for k, row in enumerate(distinct):
            where = inverse == k
            condition = dict(zip(names, row.tolist()))
            counts[where] = self.atom_counts.sample(int(where.sum()), condition, generator)
        return counts

    @torch.no_grad()
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
    ) -> list[Chem.Mol]:
        """Generate molecules as RDKit molecules with 3D conformers (sanitized where RDKit accepts them).

        Args:
            num_molecules: how many molecules.
            condition: raw property values ``{name: value or one value per molecule}``, ``"ood"``
                for the out-of-distribution target, or ``"sample"`` for values drawn from the test
                split (seeded by ``seed``); required for every property the checkpoint was trained
                on, refused for any other.
            n_atoms: atoms per molecule (one number or one per molecule); default: drawn from the
                training molecules, at the percentile of the requested property values.
            steps, eta, temperature, batch_size: override ``hparams.sampling``.
            precision: ``"32"`` or ``"bf16"`` (the vector field under bfloat16 autocast; see
                :func:`~geomol.flows.sampler.euler_sample`).
            seed: seed of the prior, atom counts and token draws.
            progress: show a progress bar over steps × batches (stderr).

        Each molecule carries its conditioning values as RDKit properties (written as SD tags).
        """
        if num_molecules < 1:
            raise ValueError(f"num_molecules must be at least 1, got {num_molecules}")
        opts = {**self.hparams.sampling}
        for key, value in dict(steps=steps, eta=eta, temperature=temperature, batch_size=batch_size).items():
            if value is not None:
                opts[key] = value
        if opts["batch_size"] < 1:
            raise ValueError(f"batch_size must be at least 1, got {opts['batch_size']}")
        if precision not in ("32", "bf16"):
            raise ValueError(f"precision must be 32 or bf16, got {precision!r}")
        cpu_gen = torch.Generator().manual_seed(seed) if seed is not None else None
        dev_gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        values = self._condition_values(condition, num_molecules, cpu_gen)
        counts = self._atom_counts(num_molecules, n_atoms, values, cpu_gen)
        self._check_memory(counts, int(opts["batch_size"]))
        was_training = self.training
        self.eval()
        mols: list[Chem.Mol] = []
        batches = -(-num_molecules // int(opts["batch_size"]))
        bar = tqdm(total=batches * int(opts["steps"]), desc=f"sampling {num_molecules} molecules", unit="step",
                   disable=not progress, dynamic_ncols=True)  # fmt: skip
        for start in range(0, num_molecules, opts["batch_size"]):
            chunk = slice(start, min(start + opts["batch_size"], num_molecules))
            standard = None
            if values is not None:
                standard = (values[chunk].to(self.prop_mean) - self.prop_mean) / self.prop_std
            try:
                state, batch_vec, pairs = euler_sample(
                    self.net,
                    self.flow,
                    counts[chunk],
                    standard,
                    steps=int(opts["steps"]),
                    eta=float(opts["eta"]),
                    temperature=float(opts["temperature"]),
                    generator=dev_gen,
                    on_step=bar.update,
                    precision=precision,
                )
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not is_out_of_memory(err):
                    raise
                bar.close()
                raise ValueError(
                    f"out of memory sampling a batch of {chunk.stop - chunk.start} molecules of up to "
                    f"{int(counts[chunk].max())} atoms: lower batch_size (now {opts['batch_size']})"
                ) from None
            for k, (mol_state, mol_pairs) in enumerate(split_molecules(state, batch_vec, pairs)):
                mol = self._to_rdkit(mol_state, mol_pairs)
                if values is not None:
                    for name, value in zip(self.hparams.condition, values[start + k].tolist()):
                        mol.SetDoubleProp(name, value)
                mols.append(mol)
        bar.close()
        self.train(was_training)
        return mols

    def _check_memory(self, counts: Tensor, batch_size: int) -> None:
        """Refuse up front (one line) a batch whose atom pairs cannot fit in memory: every molecule is a
        complete graph, so memory grows with batch_size × atoms²."""
        pairs = counts.long() * (counts.long() - 1)
        worst = max(int(pairs[i : i + batch_size].sum()) for i in range(0, len(pairs), batch_size))
        net = self.hparams.net
        need = worst * pair_bytes(int(net.get("edge_features", 64)), int(net.get("vectors", 16)))
        have = available_memory(self.device)
        if have is not None and need > have:
            raise ValueError(
                f"sampling batches of {min(batch_size, len(counts))} molecules of up to {int(counts.max())} atoms needs about "
                f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB available: lower batch_size or n_atoms"
            )

    def _to_rdkit(self, state: MoleculeState, pairs: Tensor) -> Chem.Mol:
        edge_index, bond_type = bonds_from_pairs(pairs, state.bond_type)
        z = self.type_to_z[state.atom_type]
        # RDKit aborts on atoms with more positive charge than electrons (H2+, H3+ from an untrained
        # model); they are written as H+, which is unstable and invalid all the same.
        charge = torch.minimum(state.charge + CHARGES[0], z)
        mol = mol_from_graph(
            z.cpu(), state.pos.float().cpu(), charge.cpu(), edge_index.cpu(), bond_type.cpu(), sanitize=False
        )
        # Sanitize a copy: a failed SanitizeMol leaves half-kekulized bonds behind (single bonds flagged
        # aromatic, written as aromatic to SDF), so invalid molecules are kept exactly as generated.
        clean = sanitized(mol)
        return mol if clean is None else clean
