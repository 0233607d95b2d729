"""PropMolFlow sampling speed: molecules per second at 100 Euler steps for QM9-sized molecules.

The vector field has the paper's size by default (256 scalars, 16 vectors, 128 edge features, 8
updates); its weights are random (speed does not depend on them). Atom counts are drawn from the
QM9 fixture's molecules (mean about 18 atoms, complete graphs). Each row runs the full sampler
(`geomol.flows.sampler.euler_sample`: field, position step, CTMC steps) on one batch and reports:
molecules/s scaled to 100 steps, matrix FLOPs per molecule (counted by torch's FlopCounterMode on one
field evaluation), the achieved matrix TFLOP/s, and that rate as a fraction of the device's matrix
peak (the spec sheet for known GPUs, else a measured large GEMM).

    python bench/propmolflow_sampling.py                      # CPU, 1 thread
    python bench/propmolflow_sampling.py --device cuda --batch-size 512 --precisions fp32 tf32 bf16
    python bench/propmolflow_sampling.py --precisions fp32 bf16 --threads 2 --scalars 128 --edge-features 64 --updates 5

The authors' implementation (DGL) is not installable here, so there is no side-by-side row for it;
on CUDA the table compares precisions against fp32 and against the 300 molecules/s target (H100).
"""

from __future__ import annotations

import argparse
import csv
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from geomol.flows.bonds import upper_pairs
from geomol.flows.molecule import MolecularFlow, MoleculeState
from geomol.flows.sampler import euler_sample
from geomol.models.propmolflow import PropMolFlow

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "qm9" / "qm9_fixture.csv"
TARGET_MOLS_PER_S = 300.0  # issue #7, one H100
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
    parser.add_argument("--batch-size", type=int, default=16, help="molecules sampled together")
    parser.add_argument("--steps", type=int, default=100, help="Euler steps timed (molecules/s is scaled to 100)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row (the best is kept)")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--scalars", type=int, default=256)
    parser.add_argument("--vectors", type=int, default=16)
    parser.add_argument("--edge-features", type=int, default=128)
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
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


def matrix_flops_per_step(field: PropMolFlow, n_atoms: torch.Tensor, device: torch.device) -> float:
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
        field(state)
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


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    field = PropMolFlow(
        scalars=args.scalars, vectors=args.vectors, edge_features=args.edge_features, n_updates=args.updates
    ).to(device)
    field.eval()
    flow = MolecularFlow()
    pool = qm9_atom_counts()
    n_atoms = pool[torch.randint(0, pool.numel(), (args.batch_size,), generator=torch.Generator().manual_seed(0))]
    flops_step = matrix_flops_per_step(field, n_atoms, device)
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{args.threads} CPU thread(s)'}), "
        f"batch {args.batch_size} molecules, {n_atoms.float().mean():.1f} atoms on average, "
        f"{int((n_atoms * (n_atoms - 1)).sum())} directed edges, {sum(p.numel() for p in field.parameters()) / 1e6:.2f} M parameters"
    )
    print(
        f"matrix FLOPs per field evaluation: {flops_step / 1e9:.2f} G ({flops_step / args.batch_size / 1e9:.3f} G per molecule)"
    )
    rows = []
    for precision in args.precisions:
        if precision == "tf32" and device.type != "cuda":
            print("skipping tf32: only meaningful on CUDA")
            continue
        best = float("inf")
        for repeat in range(args.repeats + 1):  # the first run warms up (allocator, kernels)
            steps = 2 if repeat == 0 else args.steps
            synchronize(device)
            start = time.perf_counter()
            # bf16: geomol's own option (the field under autocast, its outputs back to float32), as users run it
            with precision_context("fp32" if precision == "bf16" else precision, device):
                euler_sample(field, flow, n_atoms, steps=steps, generator=None,
                             precision="bf16" if precision == "bf16" else "32")  # fmt: skip
            synchronize(device)
            if repeat > 0:
                best = min(best, (time.perf_counter() - start) / steps)
        peak, peak_source = device_peak(device, precision)
        mols_per_s = args.batch_size / (best * 100)
        achieved = flops_step / best / 1e12
        rows.append(
            (
                precision,
                best * 1e3,
                mols_per_s,
                flops_step * 100 / args.batch_size / 1e9,
                achieved,
                achieved / peak,
                peak_source,
            )
        )
    base = rows[0][2] if rows else 1.0
    header = f"{'precision':<10s} {'ms/step':>9s} {'mol/s@100':>10s} {'vs first':>9s} {'vs 300/s':>9s} {'GFLOP/mol':>10s} {'TFLOP/s':>8s} {'of peak':>8s}  peak"
    print(header)
    for precision, ms, mps, gflop_mol, achieved, frac, source in rows:
        print(
            f"{precision:<10s} {ms:9.1f} {mps:10.2f} {mps / base:9.2f} {mps / TARGET_MOLS_PER_S:9.3f} "
            f"{gflop_mol:10.1f} {achieved:8.3f} {frac:8.2%}  {source}"
        )


if __name__ == "__main__":
    main()
