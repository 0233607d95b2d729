"""MoleculeGenerator: the one object that samples molecules from a trained molecular flow.

The command line (``python -m geomol.generate``), the notebooks, :meth:`GenerationTask.sample
<geomol.tasks.generation.GenerationTask.sample>` and the Python API all sample through it::

    from geomol.flows import MoleculeGenerator

    generator = MoleculeGenerator.from_checkpoint("propmolflow_qm9_gap_cpu")  # a path or a pretrained name
    mols = generator.sample(64, condition={"gap": 6.8}, seed=0)  # RDKit molecules with 3D conformers

It resolves the request (conditioning values, atom counts, memory), integrates the flow in batches
(:func:`~geomol.flows.sampler.euler_sample`) and turns each molecule into an RDKit molecule.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import torch
from rdkit import Chem
from torch import Tensor, nn
from tqdm import tqdm

from geomol.checkpoints import load_task
from geomol.data.chem import ATOMIC_NUMBERS, ELEMENTS, mol_from_graph
from geomol.devices import is_out_of_memory
from geomol.flows.bonds import bonds_from_pairs
from geomol.flows.molecule import CHARGES, MolecularFlow, MoleculeState
from geomol.flows.sampler import (
    AtomCounts,
    check_guidance,
    check_guidance_interval,
    check_guidance_on,
    check_guidance_plausibility,
    euler_sample,
    split_molecules,
)
from geomol.metrics.conditional import quantile_sample
from geomol.metrics.validity import sanitized
from geomol.nn.gvp import compile_edge_blocks

# The task whose checkpoints hold a generator, by name: tasks build on flows, so flows never import them.
GENERATION_TASK = "geomol.tasks.generation.GenerationTask"

__all__ = ["MoleculeGenerator", "ConditionStatistics", "DEFAULT_SAMPLING", "available_memory", "pair_bytes"]

log = logging.getLogger("geomol")

DEFAULT_SAMPLING = {
    "steps": 100, "eta": 10.0, "temperature": 0.05, "batch_size": 128, "guidance": 1.0, "guidance_interval": [0.0, 1.0],
    "guidance_on": ["x", "a", "c", "e"], "guidance_plausibility": 0.0,
}  # fmt: skip
# Atomic number of each element class of the flow.
TYPE_TO_Z = torch.tensor([ATOMIC_NUMBERS[s] for s in ELEMENTS])


def _weights(guidance) -> str:
    """``2`` or ``{x:2,e:1.5}``: a guidance weight as the command line writes it."""
    if isinstance(guidance, Mapping):
        return "{" + ",".join(f"{m}:{float(w):g}" for m, w in guidance.items()) + "}"
    return f"{float(guidance):g}"


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


def batch_seed(seed: int, index: int) -> int:
    """Seed of batch ``index``'s own random stream when :meth:`MoleculeGenerator.sample` runs ``workers > 1``: a
    function of the call's seed and the batch's place only, so the molecules do not depend on which worker samples
    which batch, nor on how many workers there are."""
    digest = hashlib.blake2b(f"geomol-batch:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# The generator a sampling worker process holds (see MoleculeGenerator.sample's workers): set once per process.
_WORKER: dict = {}


def _worker_init(path: str, threads: int, compile: bool | None) -> None:
    torch.set_num_threads(threads)
    # The file the parent process wrote a moment ago in its own private temporary folder (not a user's file).
    generator = torch.load(path, map_location="cpu", weights_only=False)
    generator.net.eval()
    if compile is not None:
        compile_edge_blocks(generator.net, compile)
    _WORKER["generator"] = generator


def _worker_batch(index: int, counts: Tensor, standard: Tensor | None, seed: int, options: dict):
    generator = _WORKER["generator"]
    stream = torch.Generator(device=generator.device).manual_seed(seed)
    with torch.no_grad():
        return index, euler_sample(generator.net, generator.flow, counts, standard, generator=stream, **options)


@dataclass(frozen=True)
class ConditionStatistics:
    """The properties a generator is conditioned on and what it knows of them, in raw units.

    Args:
        names: the properties, in the order of the field's condition columns (empty: unconditional).
        units: unit of each property.
        mean, std: per-molecule statistics of the training molecules; the field sees
            ``(value - mean) / std``.
        ood_targets: out-of-distribution value of each property (99th percentile of the training
            molecules), for ``condition={name: "ood"}``; None if unknown.
        test_quantiles: per property, equally spaced quantiles of its test-split distribution, for
            ``condition={name: "sample"}``; None if unknown.
    """

    names: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    ood_targets: tuple[float, ...] | None = None
    test_quantiles: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        plain = {
            "names": tuple(str(n) for n in self.names),
            "units": tuple(str(u) for u in self.units),
            "mean": tuple(float(v) for v in self.mean),
            "std": tuple(float(v) for v in self.std),
            "ood_targets": None if self.ood_targets is None else tuple(float(v) for v in self.ood_targets),
            "test_quantiles": None
            if self.test_quantiles is None
            else tuple(tuple(float(v) for v in row) for row in self.test_quantiles),
        }
        for key, value in plain.items():
            object.__setattr__(self, key, value)
        sizes = {key: len(value) for key, value in plain.items() if value is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"condition statistics need one entry per property; got {sizes}")


class MoleculeGenerator:
    """Samples molecules (RDKit, with 3D conformers) from a trained vector field and its flow.

    Args:
        net: the vector field (:class:`~geomol.models.propmolflow.PropMolFlow` or one with its call
            signature, ``net(state, condition)``); sampled in eval mode, its weights are shared, not copied.
        flow: the :class:`~geomol.flows.molecule.MolecularFlow` it was trained with.
        atom_counts: distribution of molecule sizes (:class:`~geomol.flows.sampler.AtomCounts`).
        statistics: the conditioning properties and their statistics (default: unconditional).
        sampling: default ``steps``, ``eta``, ``temperature``, ``batch_size``, ``guidance``, ``guidance_interval``
            of :meth:`sample`
            (missing keys: :data:`DEFAULT_SAMPLING`).
        device: move ``net`` there (default: where it is).
        precision: default precision of :meth:`sample`, ``"32"`` or ``"bf16"``.
        pair_memory: bytes one atom pair holds at the peak of a sampling step, for refusing hopeless
            batches up front (default: :func:`pair_bytes` of the field's ``edge_features`` and ``vectors``).
        condition_dropout: fraction of training molecules whose condition was dropped (the field learned
            the null condition); classifier-free ``guidance ≠ 1`` is refused when it is 0.

    Usually built by :meth:`from_checkpoint` or :meth:`from_task`.
    """

    def __init__(
        self,
        net: nn.Module,
        flow: MolecularFlow,
        atom_counts: AtomCounts,
        statistics: ConditionStatistics | None = None,
        sampling: Mapping | None = None,
        device: str | torch.device | None = None,
        precision: str = "32",
        pair_memory: int | None = None,
        condition_dropout: float = 0.0,
    ) -> None:
        statistics = ConditionStatistics() if statistics is None else statistics
        expected = getattr(net, "num_properties", len(statistics.names))
        if expected != len(statistics.names):
            raise ValueError(
                f"the field takes {expected} conditioning properties but the statistics name "
                f"{len(statistics.names)} ({', '.join(statistics.names) or 'none'})"
            )
        self._check_precision(precision)
        self.net = net if device is None else net.to(device)
        self.flow = flow
        self.atom_counts = atom_counts
        self.statistics = statistics
        self.sampling = {**DEFAULT_SAMPLING, **dict(sampling or {})}
        self.precision = precision
        if pair_memory is None:
            pair_memory = pair_bytes(int(getattr(net, "edge_features", 64)), int(getattr(net, "vectors", 16)))
        self.pair_memory = int(pair_memory)
        self.condition_dropout = float(condition_dropout)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_task(cls, task, precision: str = "32") -> MoleculeGenerator:
        """The generator of a :class:`~geomol.tasks.generation.GenerationTask` (trained or loaded): its
        network (shared), flow, atom-count table, condition statistics and sampler settings."""
        hparams = task.hparams
        statistics = ConditionStatistics(
            hparams.condition, hparams.units, hparams.mean, hparams.std, hparams.ood_targets,
            hparams.get("test_quantiles"),
        )  # fmt: skip
        net = hparams.net
        memory = pair_bytes(int(net.get("edge_features", 64)), int(net.get("vectors", 16)))
        return cls(
            task.net, task.flow, task.atom_counts, statistics, hparams.sampling, precision=precision, pair_memory=memory,
            condition_dropout=float(hparams.get("condition_dropout", 0.0)),
        )  # fmt: skip

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        trust_checkpoint: bool = False,
        precision: str = "32",
    ) -> MoleculeGenerator:
        """The generator of a ``GenerationTask`` checkpoint (a ``.ckpt`` path or a pretrained model's name,
        see :mod:`geomol.pretrained`), loaded safely by :func:`geomol.checkpoints.load_task`.

        Raises:
            FileNotFoundError: no such checkpoint.
            ValueError: not a geomol checkpoint, another task's, or unsafe (one line each).
        """
        task = load_task(path, expected=GENERATION_TASK, map_location=device, trust_checkpoint=trust_checkpoint)
        return cls.from_task(task, precision=precision)

    # ------------------------------------------------------------------ what it is
    @property
    def condition(self) -> list[str]:
        """Names of the conditioning properties (empty: unconditional)."""
        return list(self.statistics.names)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.net.parameters())
        units = dict(zip(self.statistics.names, self.statistics.units))
        condition = ", ".join(f"{n} ({u})" if u else n for n, u in units.items()) or "unconditional"
        sampling = ", ".join(f"{k}={v}" for k, v in self.sampling.items())
        return (
            f"MoleculeGenerator({type(self.net).__name__}, {params / 1e6:.2f} M parameters | {condition} | "
            f"{sampling} | {self.device}, precision {self.precision})"
        )

    # ------------------------------------------------------------------ the request
    def _condition_values(
        self, condition: Mapping[str, float | Sequence[float]] | None, num: int, generator=None
    ) -> Tensor | None:
        """Raw conditioning values ``[num, P]`` in the order of :attr:`condition`.

        Each value is a number, one number per molecule, ``"ood"`` (the 99th percentile of the training
        molecules) or ``"sample"`` (one value per molecule drawn from the test split's distribution,
        with ``generator``). Anything else raises a one-line ValueError.
        """
        condition = dict(condition or {})
        trained = self.condition
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
                if self.statistics.ood_targets is None:
                    raise ValueError("this checkpoint has no out-of-distribution targets; give a number")
                value = torch.full((num,), float(self.statistics.ood_targets[k]), dtype=torch.float64)
            elif isinstance(value, str) and value == "sample":
                quantiles = self.statistics.test_quantiles
                if quantiles is None:
                    raise ValueError(
                        f"this checkpoint does not store the test split's {name} distribution (trained before "
                        f"condition.{name}=sample existed): give a number or a list of values"
                    )
                value = quantile_sample(list(quantiles[k]), num, generator)
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
        mean, std = self.statistics.mean[k], self.statistics.std[k]
        z = ((value - mean) / std).abs().max()
        if float(z) > 4.0:
            unit = self.statistics.units[k]
            log.warning(
                "condition.%s up to %.4g %s lies %.1f std from the training molecules' mean (%.4g ± %.4g %s): "
                "the model was not trained there",
                name, float(value[((value - mean) / std).abs().argmax()]), unit, float(z), mean, std, unit,
            )  # fmt: skip

    def _atom_counts(self, num: int, n_atoms, values: Tensor | None, generator) -> Tensor:
        """Atoms of each molecule ``[num]``: given, or drawn at the percentile of its requested values."""
        if n_atoms is not None:
            counts = torch.as_tensor(n_atoms, dtype=torch.long).flatten()
            counts = counts.expand(num) if counts.numel() == 1 else counts
            if counts.numel() != num or bool((counts < 1).any()):
                raise ValueError(f"n_atoms must be one positive number or one per molecule ({num})")
            return counts.clone()
        if values is None:
            return self.atom_counts.sample(num, generator=generator)
        distinct, inverse = torch.unique(values, dim=0, return_inverse=True)
        counts = torch.empty(num, dtype=torch.long)
        for k, row in enumerate(distinct):
            where = inverse == k
            condition = dict(zip(self.condition, row.tolist()))
            counts[where] = self.atom_counts.sample(int(where.sum()), condition, generator)
        return counts

    def _check_memory(self, counts: Tensor, batch_size: int) -> None:
        """Refuse up front (one line) a batch whose atom pairs cannot fit in memory: every molecule is a
        complete graph, so memory grows with batch_size × atoms²."""
        pairs = counts.long() * (counts.long() - 1)
        worst = max(int(pairs[i : i + batch_size].sum()) for i in range(0, len(pairs), batch_size))
        need = worst * self.pair_memory
        have = available_memory(self.device)
        if have is not None and need > have:
            raise ValueError(
                f"sampling batches of {min(batch_size, len(counts))} molecules of up to {int(counts.max())} atoms needs about "
                f"{need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB available: lower batch_size or n_atoms"
            )

    def _check_guidance(self, guidance: float | Mapping[str, float]) -> dict[str, float]:
        """Each variable's guidance weight (:func:`~geomol.flows.sampler.check_guidance`); refused with one line
        unless this generator can be guided."""
        weights = check_guidance(guidance)
        if all(w == 1.0 for w in weights.values()):
            return weights
        if not self.condition:
            raise ValueError("guidance needs a conditional generator; this checkpoint is unconditional")
        if self.condition_dropout <= 0:
            raise ValueError(
                f"guidance={_weights(guidance)} needs a generator trained with model.condition_dropout > 0 (this one "
                "never learned the unconditional field); use guidance=1"
            )
        return weights

    @staticmethod
    def _check_precision(precision: str) -> None:
        if precision not in ("32", "bf16"):
            raise ValueError(f"precision must be 32 or bf16, got {precision!r}")

    # ------------------------------------------------------------------ sampling
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
        precision: str | None = None,
        guidance: float | Mapping[str, float] | None = None,
        guidance_interval: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
        guidance_on: Sequence[str] | None = None,
        guidance_plausibility: float | None = None,
        compile: bool | None = None,
        workers: int = 1,
    ) -> list[Chem.Mol]:
        """Generate molecules as RDKit molecules with 3D conformers (sanitized where RDKit accepts them).

        Args:
            num_molecules: how many molecules.
            condition: raw property values ``{name: value or one value per molecule}``, ``"ood"``
                for the out-of-distribution target, or ``"sample"`` for values drawn from the test
                split (seeded by ``seed``); required for every property the generator is conditioned
                on, refused for any other.
            n_atoms: atoms per molecule (one number or one per molecule); default: drawn from the
                training molecules, at the percentile of the requested property values.
            steps, eta, temperature, batch_size: override :attr:`sampling`.
            seed: seed of the prior, atom counts and token draws (default: torch's global generator).
            progress: show a progress bar over steps × batches (stderr).
            precision: ``"32"`` or ``"bf16"`` (the vector field under bfloat16 autocast; see
                :func:`~geomol.flows.sampler.euler_sample`); default :attr:`precision`.
            guidance: classifier-free guidance weight (1: none; > 1: stronger conditioning, two field
                evaluations per step); only for generators trained with ``condition_dropout > 0``; or a mapping
                from variables to their own weights, e.g. ``{"x": 2, "a": 2, "c": 2, "e": 1.5}`` (the others: 1).
            guidance_interval: ``(t_lo, t_hi)``: guide only the steps starting in that time interval, or a
                mapping from variables to their own intervals, e.g. ``{"e": (0, 0.5)}`` (see
                :func:`~geomol.flows.sampler.euler_sample`).
            guidance_on: the variables guidance mixes, some of ``x``, ``a``, ``c``, ``e`` (positions, atom types,
                charges, bonds); the others follow the conditional field.
            guidance_plausibility: ``ρ`` in ``[0, 1)``: guided token draws keep only the classes at least ``ρ``
                times as likely, for the conditional field, as its favourite (0: all; see
                :func:`~geomol.flows.sampler.euler_sample`).
            compile: run the field's per-edge work through ``torch.compile`` for this call
                (:func:`~geomol.nn.gvp.compile_edge_blocks`: the same molecules up to float rounding, faster
                once compiled; the first batch pays the compilation); ``None`` leaves the field as it is.
            workers: sample the batches in this many CPU processes at once, each with an equal share of torch's
                threads (on a 2-core machine 2 workers of 1 thread sampled 1.36x the molecules per second of one
                process of 2 threads, ``bench/sampling_workers.py``: much of a field evaluation is too small to split
                across threads; each worker pays its start and compilation). Each
                batch then draws from its own stream, seeded by ``seed`` and the batch's place
                (:func:`batch_seed`), so the molecules are the same for any number of workers above 1, but not
                those of ``workers=1`` (whose batches share one stream); requested values and atom counts are
                the same in both. CPU only.

        Shapes:
            n_atoms ``[num_molecules]`` or one number -> ``num_molecules`` molecules, in order.

        Each molecule carries its conditioning values as RDKit properties (written as SD tags).
        Bad requests raise a one-line ValueError before anything is sampled.
        """
        if num_molecules < 1:
            raise ValueError(f"num_molecules must be at least 1, got {num_molecules}")
        opts = {**self.sampling}
        chosen = dict(
            steps=steps, eta=eta, temperature=temperature, batch_size=batch_size, guidance=guidance,
            guidance_interval=guidance_interval, guidance_on=guidance_on, guidance_plausibility=guidance_plausibility,
        )  # fmt: skip
        for key, value in chosen.items():
            if value is not None:
                opts[key] = value
        if opts["batch_size"] < 1:
            raise ValueError(f"batch_size must be at least 1, got {opts['batch_size']}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a whole number of at least 1, got {workers!r}")
        if workers > 1 and self.device.type != "cpu":
            raise ValueError(f"workers > 1 samples in CPU processes; this generator is on {self.device}")
        if workers > 1 and getattr(multiprocessing.current_process(), "_inheriting", False):
            # e.g. a script without a main guard, which each spawned worker runs again from the top
            raise ValueError(
                "workers > 1 cannot start from a child process (a script's sampling belongs under "
                '`if __name__ == "__main__":`, which spawned workers skip); use workers=1 there'
            )
        weights = self._check_guidance(opts["guidance"])
        interval = check_guidance_interval(opts["guidance_interval"])
        guided_variables = check_guidance_on(opts["guidance_on"])
        plausibility = check_guidance_plausibility(opts["guidance_plausibility"])
        precision = self.precision if precision is None else precision
        self._check_precision(precision)
        device = self.device
        # Two streams from one seed: the request's draws on the CPU, the flow's on the field's device.
        cpu_gen = torch.Generator().manual_seed(seed) if seed is not None else None
        dev_gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        values = self._condition_values(condition, num_molecules, cpu_gen)
        counts = self._atom_counts(num_molecules, n_atoms, values, cpu_gen)
        self._check_memory(counts, int(opts["batch_size"]))
        dtype = next(self.net.parameters()).dtype
        mean = torch.tensor(self.statistics.mean, dtype=dtype, device=device)
        std = torch.tensor(self.statistics.std, dtype=dtype, device=device)
        was_training = self.net.training
        self.net.eval()
        was_compiled = [getattr(m, "compiled", False) for m in self.net.modules()]
        if compile is not None:
            compile_edge_blocks(self.net, compile)
        size = int(opts["batch_size"])
        starts = list(range(0, num_molecules, size))
        chunks = [slice(start, min(start + size, num_molecules)) for start in starts]
        standard = None if values is None else (values.to(mean) - mean) / std
        options = dict(
            steps=int(opts["steps"]), eta=float(opts["eta"]), temperature=float(opts["temperature"]),
            precision=precision, guidance=weights, guidance_interval=interval, guidance_on=guided_variables,
            guidance_plausibility=plausibility,
        )  # fmt: skip
        bar = tqdm(total=len(chunks) * options["steps"], desc=f"sampling {num_molecules} molecules", unit="step",
                   disable=not progress, dynamic_ncols=True)  # fmt: skip
        results: list = [None] * len(chunks)
        try:
            base = seed if seed is not None or workers == 1 else int(torch.randint(2**62, ()))
            processes = min(workers, len(chunks))
            if processes > 1:
                self._sample_in_workers(chunks, counts, standard, base, options, processes, compile, bar, results)
            else:  # in this process; with workers > 1 (one batch) from the stream a worker would draw from
                for k, chunk in enumerate(chunks):
                    stream = (
                        dev_gen if workers == 1 else torch.Generator(device=device).manual_seed(batch_seed(base, k))
                    )
                    with self._out_of_memory_as_value_error(chunk, counts, size):
                        results[k] = euler_sample(
                            self.net, self.flow, counts[chunk], None if standard is None else standard[chunk],
                            generator=stream, on_step=bar.update, **options,
                        )  # fmt: skip
        finally:
            bar.close()
            self.net.train(was_training)
            for module, flag in zip(self.net.modules(), was_compiled):
                if hasattr(module, "compiled"):
                    module.compiled = flag
        mols: list[Chem.Mol] = []
        for chunk, (state, batch_vec, pairs) in zip(chunks, results):
            for k, (mol_state, mol_pairs) in enumerate(split_molecules(state, batch_vec, pairs)):
                mol = self._to_rdkit(mol_state, mol_pairs)
                if values is not None:
                    for name, value in zip(self.condition, values[chunk.start + k].tolist()):
                        mol.SetDoubleProp(name, value)
                mols.append(mol)
        return mols

    @staticmethod
    @contextlib.contextmanager
    def _out_of_memory_as_value_error(chunk: slice, counts: Tensor, batch_size: int):
        try:
            yield
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            raise ValueError(
                f"out of memory sampling a batch of {chunk.stop - chunk.start} molecules of up to "
                f"{int(counts[chunk].max())} atoms: lower batch_size (now {batch_size})"
            ) from None

    def _sample_in_workers(
        self, chunks: list[slice], counts: Tensor, standard: Tensor | None, seed: int, options: dict, workers: int,
        compile: bool | None, bar, results: list,
    ) -> None:  # fmt: skip
        """Every batch in a pool of ``workers`` fresh ("spawn") processes, each loading a copy of this generator and
        running ``threads // workers`` threads; batch ``k`` draws from its own stream seeded by :func:`batch_seed`
        (``seed``, ``k``). Results land in ``results`` in order."""
        threads = max(1, torch.get_num_threads() // workers)
        context = multiprocessing.get_context("spawn")
        size = max(c.stop - c.start for c in chunks)
        # The generator goes to the workers as a file, not as an argument: a spawned process reads its arguments
        # only after importing the parent's main module, and Python's spawn blocks on arguments larger than a pipe
        # buffer until then, forever if that import fails (a script without a main guard).
        folder = tempfile.TemporaryDirectory(prefix="geomol-workers-")
        path = os.path.join(folder.name, "generator.pt")
        torch.save(self, path)
        with folder, ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                         initargs=(path, threads, compile)) as pool:  # fmt: skip
            futures = {
                pool.submit(
                    _worker_batch, k, counts[chunk], None if standard is None else standard[chunk],
                    batch_seed(seed, k), options,
                ): chunk
                for k, chunk in enumerate(chunks)
            }  # fmt: skip
            for future in as_completed(futures):
                with self._out_of_memory_as_value_error(futures[future], counts, size):
                    try:
                        k, result = future.result()
                    except BrokenProcessPool:
                        raise ValueError(
                            "a sampling worker process died (out of memory, or a script whose sampling is not "
                            'under `if __name__ == "__main__":`, which each spawned worker runs again)'
                        ) from None
                results[k] = result
                bar.update(options["steps"])

    @staticmethod
    def _to_rdkit(state: MoleculeState, pairs: Tensor) -> Chem.Mol:
        """One sampled molecule (its state and local pairs ``[2, P]``) as an RDKit molecule."""
        edge_index, bond_type = bonds_from_pairs(pairs, state.bond_type)
        atom_type = state.atom_type.cpu()
        z = TYPE_TO_Z[atom_type]
        # RDKit aborts on atoms with more positive charge than electrons (H2+, H3+ from an untrained
        # model); they are written as H+, which is unstable and invalid all the same.
        charge = torch.minimum(state.charge.cpu() + CHARGES[0], z)
        mol = mol_from_graph(z, state.pos.float().cpu(), charge, edge_index.cpu(), bond_type.cpu(), sanitize=False)
        # Sanitize a copy: a failed SanitizeMol leaves half-kekulized bonds behind (single bonds flagged
        # aromatic, written as aromatic to SDF), so invalid molecules are kept exactly as generated.
        clean = sanitized(mol)
        return mol if clean is None else clean
