"""PropMolFlow training speed on the CPU: molecules per second of a full training step (flow corruption,
vector field, four losses, backward, Adam), fp32 against bf16 autocast, side by side in one run.

Batches are real QM9 molecules with bonds (the 400-molecule fixture, batch 64 by default, about 18 atoms
and 300 directed edges per molecule). Sizes: the shipped CPU checkpoint's (64 scalars, 8 vectors, 32 edge
features, 4 updates), the mid size (128/16/64, 5 updates) and the paper's (256/16/128, 8 updates).
Modes: ``fp32`` (geomol's default, "before"), ``bf16`` (``trainer.precision=bf16-mixed``: matrix
products in bfloat16, weights, losses and optimizer in float32), ``compile`` (``torch.compile`` of
the vector field, compile time reported separately) and ``compile-bf16`` (both).

    python bench/propmolflow_train_step.py                       # 1 thread, fp32 and bf16, three sizes
    python bench/propmolflow_train_step.py --threads 2 --modes fp32 bf16 compile --sizes shipped

Run it on a quiet machine (pause training jobs); it prints the CPU model and ISA it ran on.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from machine import cpu_description  # bench/machine.py (bench/ is on sys.path when a script runs)

from geomol.data.generation import QM9GenerationDataModule
from geomol.tasks.generation import GenerationTask

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "qm9"
SIZES = {
    "shipped": dict(
        scalars=64, vectors=8, edge_features=32, n_updates=4, n_message_gvps=2, n_update_gvps=2, rbf_dim=16
    ),
    "mid": dict(scalars=128, vectors=16, edge_features=64, n_updates=5, n_message_gvps=2, n_update_gvps=2, rbf_dim=16),
    "paper": dict(scalars=256, vectors=16, edge_features=128, n_updates=8),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["shipped", "mid", "paper"], choices=list(SIZES))
    parser.add_argument(
        "--modes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "compile", "compile-bf16"]
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per row (median reported)")
    parser.add_argument("--data-root", default="outputs/bench_data", help="cache folder for the fixture's bonds")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    dm = QM9GenerationDataModule(root=args.data_root, source=FIXTURE, batch_size=args.batch_size, train_half=None)
    kwargs = dm.task_kwargs()
    loader = dm.train_dataloader()
    batches = [b for _, b in zip(range(args.steps + 2), loader)]
    while len(batches) < args.steps + 2:
        batches += batches[: args.steps + 2 - len(batches)]
    mols = sum(b.num_graphs for b in batches[2:]) / args.steps
    print(f"{cpu_description()}; {args.threads} thread(s); batch {args.batch_size} QM9 molecules "
          f"({sum(b.num_nodes for b in batches) / sum(b.num_graphs for b in batches):.1f} atoms on average)")  # fmt: skip
    print(f"{'size':<8s} {'params':>8s} {'mode':<8s} {'ms/step':>8s} {'mol/s':>8s} {'vs fp32':>8s}  note")
    for size in args.sizes:
        base = None
        for mode in args.modes:
            torch.manual_seed(0)
            net = {"_target_": "geomol.models.propmolflow.PropMolFlow", **SIZES[size]}
            task = GenerationTask(net=net, condition=["gap"], val_molecules=0, **kwargs)
            task.train()
            opt = torch.optim.Adam(task.parameters(), lr=1e-4)
            note = ""
            if mode.startswith("compile"):
                start = time.perf_counter()
                task.net = torch.compile(task.net, dynamic=True)
            bf16 = mode.endswith("bf16")
            context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

            def step(batch, task=task, opt=opt, context=context):
                with context:
                    loss = task._losses(batch)["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()

            for batch in batches[:2]:  # warm-up (and compilation)
                step(batch)
            if mode.startswith("compile"):
                note = f"compile + 2 warm-up steps {time.perf_counter() - start:.0f} s"
            times = []
            for batch in batches[2:]:
                start = time.perf_counter()
                step(batch)
                times.append(time.perf_counter() - start)
            median = sorted(times)[len(times) // 2]
            rate = mols / median
            base = rate if mode == "fp32" or base is None else base
            params = sum(p.numel() for p in task.parameters()) / 1e6
            print(
                f"{size:<8s} {params:7.2f}M {mode:<8s} {median * 1e3:8.0f} {rate:8.1f} {rate / base:8.2f}  {note}",
                flush=True,
            )


if __name__ == "__main__":
    main()
