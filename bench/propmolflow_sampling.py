"""PropMolFlow sampling speed: molecules per second for QM9-sized molecules, before vs after, side by side.

The vector field has the paper's size by default (256 scalars, 16 vectors, 128 edge features, 8
updates); its weights are random (speed does not depend on them). ``--ckpt`` takes a trained field
instead (a path or a pretrained name) with its sampler settings: steps, η, temperature, batch size.
Atom counts are drawn from the QM9 fixture's molecules (mean about 18 atoms, complete graphs). Each
row runs the full sampler (`geomol.flows.sampler.euler_sample`: field, position step, CTMC steps) on
one batch and reports: molecules/s at ``--scale-steps`` steps (100, or the checkpoint's), the ratio
to the first row, matrix FLOPs per molecule (torch's FlopCounterMode on one field evaluation), the
achieved matrix TFLOP/s, and that rate as a fraction of the device's matrix peak (the spec sheet for
known GPUs, else a measured large GEMM).

Versions: ``before`` is geomol's field, GVP layers and sampler as of commit ``BEFORE`` (read with
``git show``, bench/before.py; skipped outside a git checkout), ``after`` today's, with the same
weights. Both first run with glibc's default malloc settings, then (rows ``+malloc``) after
:func:`geomol.devices.reuse_freed_memory`, which today's sampler applies by itself on the CPU: the
``after +malloc`` row is what users get, ``before`` what they got. ``--check N`` then samples N
molecules with each version from the same seed and compares them (tokens exactly, positions as the
largest difference in Å).

    python bench/propmolflow_sampling.py                      # CPU, 1 thread, paper size
    python bench/propmolflow_sampling.py --ckpt propmolflow_qm9_gap_mid_cpu --threads 2 --steps 5
    python bench/propmolflow_sampling.py --device cuda --batch-size 512 --precisions fp32 tf32 bf16 --versions after
    python bench/propmolflow_sampling.py --precisions fp32 bf16 --threads 2 --scalars 128 --edge-features 64 --updates 5

The authors' implementation (DGL) is not installable here, so there is no side-by-side row for it;
on CUDA the table compares precisions against fp32 and against the 300 molecules/s target (H100).
"""

from __future__ import annotations

import argparse
import copy
import csv
import time
from contextlib import nullcontext
from pathlib import Path

import before  # bench/before.py
import torch
from machine import cpu_description  # bench/machine.py
from torch.utils.flop_counter import FlopCounterMode

from geomol.checkpoints import load_task
from geomol.flows.bonds import upper_pairs
from geomol.flows.generator import GENERATION_TASK, MoleculeGenerator
from geomol.flows.molecule import MolecularFlow, MoleculeState
from geomol.flows.sampler import euler_sample
from geomol.models.propmolflow import PropMolFlow
from geomol.nn.gvp import compile_edge_blocks
from geomol.tasks.base import plain_config

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "qm9" / "qm9_fixture.csv"
TARGET_MOLS_PER_S = 300.0  # issue #7, one H100
# geomol before issue #15's CPU work on the field and GVP layers (the "before" rows).
BEFORE = "3a2d3f47ea02652a959b889c4dc93f9b03bb05f8"
BEFORE_MODULES = ("geomol.nn.gvp", "geomol.models.propmolflow", "geomol.flows.sampler")
# Dense matrix peaks (TFLOP/s) from the vendors' spec sheets (SXM parts): fp32 CUDA cores, TF32 and
# BF16 tensor cores without sparsity.
GPU_PEAKS = {
    "H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--ckpt", default=None, help="a trained field and its sampler settings (path or pretrained name)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="molecules sampled together (16, or the ckpt's)")
    parser.add_argument("--steps", type=int, default=100, help="Euler steps timed per row")
    parser.add_argument(
        "--scale-steps", type=int, default=None, help="molecules/s at this many steps (100, or the ckpt's)"
    )
    parser.add_argument("--versions", nargs="+", default=["before", "after"], choices=["before", "after"])
    parser.add_argument(
        "--check", type=int, default=8, help="molecules sampled by both versions and compared (0: none)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row (the best is kept)")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--scalars", type=int, default=256)
    parser.add_argument("--vectors", type=int, default=16)
    parser.add_argument("--edge-features", type=int, default=128)
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="add a row with the GVP layers' per-edge work compiled (generate compile=true)",
    )
    return parser.parse_args()


def qm9_atom_counts() -> torch.Tensor:
    with open(FIXTURE, newline="") as handle:
        return torch.tensor([int(row["N_atoms"]) for row in csv.DictReader(handle)])


def precision_context(precision: str, device: torch.device):
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matrix_flops_per_step(field: PropMolFlow, n_atoms: torch.Tensor, device: torch.device, condition=None) -> float:
    """Matrix FLOPs of one field evaluation on the batch (mm, addmm, bmm, ...)."""
    batch = torch.repeat_interleave(torch.arange(n_atoms.numel(), device=device), n_atoms.to(device))
    pairs = upper_pairs(batch)
    n = batch.numel()
    state = MoleculeState(
        torch.randn(n, 3, device=device),
        torch.zeros(n, dtype=torch.long, device=device),
        torch.zeros(n, dtype=torch.long, device=device),
        torch.zeros(pairs.size(1), dtype=torch.long, device=device),
        pairs,
        batch,
        torch.zeros(n_atoms.numel(), device=device),
    )
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        field(state, condition)
    return float(counter.get_total_flops())


def measured_gemm_tflops(device: torch.device, precision: str) -> float:
    size = 4096 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    with precision_context(precision, device):
        for _ in range(2):
            a @ b
        synchronize(device)
        runs = 10 if device.type == "cuda" else 3
        start = time.perf_counter()
        for _ in range(runs):
            a @ b
        synchronize(device)
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e12


def device_peak(device: torch.device, precision: str) -> tuple[float, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS.items():
            if key in name:
                return peaks[precision], f"{name} spec {precision}"
    return measured_gemm_tflops(device, precision), f"measured {precision} GEMM"


def build_fields(args, device: torch.device):
    """Today's field (random weights, or the checkpoint's) with its sampler settings and number of conditioning
    properties, and the same weights in the field of commit BEFORE with that commit's sampler (None, None when
    unavailable)."""
    sampling = {"steps": 100, "eta": 10.0, "temperature": 0.05, "batch_size": 16}
    if args.ckpt:
        task = load_task(args.ckpt, expected=GENERATION_TASK, map_location=device)
        generator = MoleculeGenerator.from_task(task)
        field, sampling, num_properties = generator.net, {**sampling, **generator.sampling}, len(generator.condition)
        kwargs = {k: v for k, v in plain_config(task.hparams.net).items() if k != "_target_"}
    else:
        kwargs = dict(
            scalars=args.scalars, vectors=args.vectors, edge_features=args.edge_features, n_updates=args.updates
        )
        field, num_properties = PropMolFlow(**kwargs).to(device), 0
    field.eval()
    old = before.load(BEFORE, *BEFORE_MODULES) if "before" in args.versions else None
    if old is None:
        return field, None, None, sampling, num_properties
    old_field = old["geomol.models.propmolflow"].PropMolFlow(**kwargs, num_properties=num_properties)
    old_field.load_state_dict(field.state_dict())
    return field, old_field.to(device).eval(), old["geomol.flows.sampler"].euler_sample, sampling, num_properties


def compare(field, old_field, old_sample, flow, n_atoms, condition, sampling, seed: int) -> str:
    """Sample the same molecules with both versions from one seed; tokens must match exactly."""
    runs = []
    for sample, net in ((old_sample, old_field), (euler_sample, field)):
        generator = torch.Generator(device=n_atoms.device).manual_seed(seed)
        with torch.no_grad():
            state, _, _ = sample(net, flow, n_atoms, condition, steps=sampling["steps"], eta=sampling["eta"],
                                 temperature=sampling["temperature"], generator=generator)  # fmt: skip
        runs.append(state)
    (a, b) = runs
    same = all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("atom_type", "charge", "bond_type"))
    return (
        f"{n_atoms.numel()} molecules from seed {seed}, {sampling['steps']} steps: atom types, charges and bonds "
        f"{'identical' if same else 'DIFFERENT'}; largest position difference {float((a.pos - b.pos).abs().max()):.2e} Å"
    )


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    before.default_malloc()  # the first rows run with glibc's default malloc settings
    field, old_field, old_sample, sampling, num_properties = build_fields(args, device)
    batch_size = args.batch_size or sampling["batch_size"]
    scale = args.scale_steps or (sampling["steps"] if args.ckpt else 100)
    flow = MolecularFlow()
    pool = qm9_atom_counts()
    n_atoms = pool[torch.randint(0, pool.numel(), (batch_size,), generator=torch.Generator().manual_seed(0))]
    condition = torch.zeros(batch_size, num_properties, device=device) if num_properties else None
    flops_step = matrix_flops_per_step(field, n_atoms, device, condition)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_description()}; {args.threads} thread(s)"
    )
    print(f"device {device} ({where})")
    print(
        f"field {args.ckpt or 'random weights'}: {sum(p.numel() for p in field.parameters()) / 1e6:.2f} M parameters; "
        f"batch {batch_size} molecules, {n_atoms.float().mean():.1f} atoms on average, "
        f"{int((n_atoms * (n_atoms - 1)).sum())} directed edges; eta {sampling['eta']}, temperature {sampling['temperature']}"
    )
    print(
        f"matrix FLOPs per field evaluation: {flops_step / 1e9:.2f} G ({flops_step / batch_size / 1e9:.3f} G per molecule)"
    )
    if "before" in args.versions and old_field is None:
        print(f"no 'before' rows: commit {BEFORE[:10]} is not readable here (git checkout needed)")
    versions = {"before": (old_field, old_sample), "after": (field, euler_sample)}
    versions = {k: v for k, v in versions.items() if k in args.versions and v[0] is not None}
    plan = [(v, "") for v in versions]
    if device.type == "cpu":
        plan += [(v, " +malloc") for v in versions]
    if args.compile and "after" in versions:
        plan.append(("after", " +malloc +compile" if device.type == "cpu" else " +compile"))
    rows = []
    for precision in args.precisions:
        if precision == "tf32" and device.type != "cuda":
            print("skipping tf32: only meaningful on CUDA")
            continue
        peak, peak_source = device_peak(device, precision)
        for version, malloc in plan:
            if malloc:
                before.tuned_malloc()
            net, sample = versions[version]
            compile_edge_blocks(net, "compile" in malloc)  # the first (warm-up) run compiles
            best = float("inf")
            for repeat in range(args.repeats + 1):  # the first run warms up (allocator, kernels)
                steps = 2 if repeat == 0 else args.steps
                synchronize(device)
                start = time.perf_counter()
                # bf16: geomol's own option (the field under autocast, its outputs back to float32), as users run it
                with precision_context("fp32" if precision == "bf16" else precision, device):
                    sample(net, flow, n_atoms, condition, steps=steps, eta=sampling["eta"],
                           temperature=sampling["temperature"], generator=None,
                           precision="bf16" if precision == "bf16" else "32")  # fmt: skip
                synchronize(device)
                if repeat > 0:
                    best = min(best, (time.perf_counter() - start) / steps)
            mols_per_s = batch_size / (best * scale)
            achieved = flops_step / best / 1e12
            rows.append((precision, version + malloc, best * 1e3, mols_per_s, flops_step * scale / batch_size / 1e9,
                         achieved, achieved / peak, peak_source))  # fmt: skip
    compile_edge_blocks(field, False)
    base = rows[0][3] if rows else 1.0
    print(f"{'precision':<10s} {'version':<22s} {'ms/step':>9s} {f'mol/s@{scale}':>10s} {'vs first':>9s} "
          f"{'vs 300/s':>9s} {'GFLOP/mol':>10s} {'TFLOP/s':>8s} {'of peak':>8s}  peak")  # fmt: skip
    for precision, version, ms, mps, gflop_mol, achieved, frac, source in rows:
        print(
            f"{precision:<10s} {version:<22s} {ms:9.1f} {mps:10.2f} {mps / base:9.2f} {mps / TARGET_MOLS_PER_S:9.3f} "
            f"{gflop_mol:10.1f} {achieved:8.3f} {frac:8.2%}  {source}"
        )
    if args.check > 0 and old_field is not None:
        counts = n_atoms[: args.check]
        print(compare(field, old_field, old_sample, flow, counts, None if condition is None else condition[: args.check],
                      sampling, args.seed))  # fmt: skip
    if args.check > 0 and args.compile:
        counts = n_atoms[: args.check]
        twin = copy.deepcopy(field)
        compile_edge_blocks(twin)
        print("eager vs compiled blocks: " + compare(
            twin, field, euler_sample, flow, counts, None if condition is None else condition[: args.check],
            sampling, args.seed))  # fmt: skip


if __name__ == "__main__":
    main()
