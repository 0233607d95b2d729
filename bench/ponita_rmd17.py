"""PONITA on rMD17 aspirin: epoch time and force error after a fixed training budget.

Trains the paper's network (hidden 128, basis 256, 5 layers, polynomial degree 3, fully connected
graph, batch 5, Adam 5e-4, loss E/500 + F on standardized units) in each orientation mode side by side:
the 20-orientation grid (PONITA), edge-lifted R³×S² (``num_ori=-1``) and R³ (PNITA, ``num_ori=0``).
Prints a table with the epoch time relative to the paper's 6.5 s/epoch (PONITA on a GPU) and the
test-set MAE after ``--budget-s`` seconds of training per mode. The paper's 5.8 meV/Å needs 5,000
epochs; a short budget only ranks the modes.

    python bench/ponita_rmd17.py                       # CPU, quick
    python bench/ponita_rmd17.py --device cuda --budget-s 600 --full-epoch
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from geomol.data.rmd17 import RMD17DataModule
from geomol.tasks.property import PropertyTask

PAPER_EPOCH_S = 6.5  # PONITA, rMD17, one GPU (Bekkers et al. 2024)
PAPER_FORCE_MAE = 5.8  # meV/Å, aspirin, after 5,000 epochs
MODES = {"grid": 20, "lifted": -1, "r3": 0}


def default_root() -> str:
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "data" / "rmd17", here.parent / "shared" / "data" / "rmd17"):
        if (candidate / "rmd17_aspirin_train_01.npz").exists():
            return str(candidate)
    return str(here / "data" / "rmd17")  # downloaded on first use


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_task(num_ori: int, args, task_kwargs: dict, device: torch.device) -> PropertyTask:
    net = {
        "_target_": "geomol.models.ponita.Ponita",
        "num_ori": num_ori,
        "hidden_channels": args.hidden,
        "num_layers": args.layers,
        "basis_dim": args.basis_dim,
        "degree": 3,
        "widening_factor": 4,
        "radius": None,
        "lift_radius": args.lift_radius,
    }
    optimizer = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": args.lr}
    return PropertyTask(net=net, optimizer=optimizer, force_weight=args.force_weight, **task_kwargs).to(device)


def train_step(task: PropertyTask, optimizer: torch.optim.Optimizer, batch, std: float) -> float:
    energy, forces = task.predict_energy_forces(batch.z, batch.pos, batch.batch)
    e_err = (energy.double() - batch.energy) / std
    f_err = (forces - batch.forces) / std
    loss = e_err.pow(2).mean() + task.hparams.force_weight * f_err.pow(2).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def evaluate(task: PropertyTask, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    task.eval()
    e_abs, f_abs, frames, atoms = 0.0, 0.0, 0, 0
    for batch in loader:
        batch = batch.to(device)
        energy, forces = task.predict_energy_forces(batch.z, batch.pos, batch.batch)
        e_abs += float((energy.detach().double() - batch.energy).abs().sum())
        f_abs += float((forces.detach() - batch.forces).abs().sum())
        frames += batch.num_graphs
        atoms += batch.num_nodes
    task.train()
    return 1000 * e_abs / frames, 1000 * f_abs / (3 * atoms)


def run_mode(name: str, num_ori: int, dm: RMD17DataModule, args, device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    kwargs = dm.task_kwargs()
    task = build_task(num_ori, args, kwargs, device)
    task.train()
    optimizer = torch.optim.Adam(task.parameters(), lr=args.lr)
    std = kwargs["std"][0]
    train = dm.train_dataloader()
    steps_per_epoch = len(train)

    def batches():
        while True:
            for batch in train:
                yield batch.to(device)

    stream = batches()
    for _ in range(args.warmup_steps):
        train_step(task, optimizer, next(stream), std)
    sync(device)
    start = time.perf_counter()
    timed = steps_per_epoch if args.full_epoch else args.timing_steps
    for _ in range(timed):
        train_step(task, optimizer, next(stream), std)
    sync(device)
    step_s = (time.perf_counter() - start) / timed

    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.budget_s:
        train_step(task, optimizer, next(stream), std)
        steps += 1
    sync(device)
    total_steps = args.warmup_steps + timed + steps
    test = DataLoader(
        [dm.dataset[k] for k in dm.splits["test"][: args.eval_frames].tolist()], batch_size=args.eval_batch_size
    )
    e_mae, f_mae = evaluate(task, test, device)
    return {
        "mode": name,
        "num_ori": num_ori,
        "params": sum(p.numel() for p in task.parameters()),
        "step_s": step_s,
        "epoch_s": step_s * steps_per_epoch,
        "timed": "epoch" if args.full_epoch else f"{timed} steps",
        "epochs": total_steps / steps_per_epoch,
        "e_mae": e_mae,
        "f_mae": f_mae,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=default_root(), help="folder with rmd17_<mol>_{train,test}_01.npz")
    parser.add_argument("--molecule", default="aspirin")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--basis-dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--lift-radius", type=float, default=1.6, help="bond cutoff of the edge-lifted mode (Å)")
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--force-weight", type=float, default=500.0)
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first")
    parser.add_argument("--timing-steps", type=int, default=5, help="timed steps; epoch time is extrapolated")
    parser.add_argument("--full-epoch", action="store_true", help="time a whole epoch instead")
    parser.add_argument("--budget-s", type=float, default=30.0, help="training seconds per mode after timing")
    parser.add_argument("--eval-frames", type=int, default=100, help="test frames used for the MAE")
    parser.add_argument("--eval-batch-size", type=int, default=20)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dm = RMD17DataModule(args.root, args.molecule, batch_size=args.batch_size, seed=42)
    dm.setup()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(
        f"rMD17 {args.molecule}: {len(dm.splits['train'])} train frames, batch {args.batch_size}; {where}; "
        f"load average {load:.1f}; budget {args.budget_s:.0f} s per mode; MAE on {args.eval_frames} test frames"
    )
    rows = []
    for name in args.modes:
        rows.append(run_mode(name, MODES[name], dm, args, device))
        r = rows[-1]
        print(f"  {name}: {r['step_s']:.3f} s/step, {r['f_mae']:.1f} meV/Å after {r['epochs']:.2f} epochs", flush=True)

    header = (
        f"{'mode':<8}{'num_ori':>8}{'params':>10}{'s/step':>9}{'s/epoch':>10}{'× paper':>9}"
        f"{'timed on':>12}{'epochs':>8}{'E MAE meV':>11}{'F MAE meV/Å':>13}{'F × paper':>11}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    print(
        f"{'paper':<8}{20:>8}{'':>10}{'':>9}{PAPER_EPOCH_S:>10.1f}{1.0:>9.2f}{'GPU':>12}{5000:>8}{1.7:>11.1f}"
        f"{PAPER_FORCE_MAE:>13.1f}{1.0:>11.2f}"
    )
    for r in rows:
        print(
            f"{r['mode']:<8}{r['num_ori']:>8}{r['params']:>10}{r['step_s']:>9.3f}{r['epoch_s']:>10.1f}"
            f"{r['epoch_s'] / PAPER_EPOCH_S:>9.2f}{r['timed']:>12}{r['epochs']:>8.2f}{r['e_mae']:>11.1f}"
            f"{r['f_mae']:>13.1f}{r['f_mae'] / PAPER_FORCE_MAE:>11.2f}"
        )
    if any(not math.isfinite(r["f_mae"]) for r in rows):
        raise SystemExit("non-finite force error")


if __name__ == "__main__":
    main()
