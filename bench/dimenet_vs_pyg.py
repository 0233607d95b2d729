"""geomol's DimeNet++ (and DimeNet) against PyG's, side by side on the same QM9 molecules.

PyG's models need torch-cluster (``radius_graph``) and torch-sparse (``triplets``); both are patched
here with geomol's pure-torch versions, so the two models see identical graphs. geomol's model is
built with ``from_pyg`` from the PyG model, so both start from the same weights and compute the
same function (outputs are checked to agree before timing).

Throughput: training steps (forward, backward, Adam step) on pre-collated batches, the two models
alternating step by step on the same batches; wall-clock and process CPU time are both reported
(on a shared CPU the latter discounts the time other jobs took)::

    python bench/dimenet_vs_pyg.py                         # DimeNet++ (paper size), CPU, 1 thread
    python bench/dimenet_vs_pyg.py --model dimenet --steps 3
    python bench/dimenet_vs_pyg.py --forces                # loss on -dE/dpos too (second derivatives)
    python bench/dimenet_vs_pyg.py --device cuda
    python bench/dimenet_vs_pyg.py --forces --malloc       # both with glibc's malloc keeping freed memory

``--malloc`` applies :func:`geomol.devices.reuse_freed_memory` to the process (so to both models) before timing.
With glibc's defaults every large tensor is a fresh ``mmap`` whose pages fault on first touch; on some virtual
machines a fault costs microseconds, and a model that allocates more pays more (PyG's DimeNet++ materialises
``[triplets, channels]`` tensors, geomol's does not).

Accuracy: both models trained with the same budget (same molecules, batch order, epochs, optimizer)
on QM9 HOMO, test MAE in meV; then geomol trains on until it has used PyG's CPU time (equal CPU budget);
one row per seed and the mean::

    python bench/dimenet_vs_pyg.py --accuracy --train 10000 --test 2000 --epochs 3
    python bench/dimenet_vs_pyg.py --accuracy --train 3000 --test 1000 --epochs 4 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch_geometric.nn.models.dimenet as pyg_dimenet
from torch import nn
from torch_geometric.data import Batch

from geomol.data.qm9 import QM9
from geomol.models.dimenet import DimeNet, DimeNetPlusPlus
from geomol.nn.graph import radius_graph, triplets
from geomol.tasks.schedules import warmup_exponential_decay


def pyg_triplets(edge_index, num_nodes):
    """PyG's ``triplets`` (torch-sparse) replaced by geomol's, in PyG's return order."""
    t = triplets(edge_index, num_nodes)
    return edge_index[1], edge_index[0], t.idx_i, t.idx_j, t.idx_k, t.idx_kj, t.idx_ji


pyg_dimenet.radius_graph = radius_graph
pyg_dimenet.triplets = pyg_triplets


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["dimenet++", "dimenet"], default="dimenet++")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data-root", default="data/qm9", help="QM9 cache folder (geomol.data.qm9.QM9)")
    parser.add_argument("--qm9-source", default=None, help="folder of qm9pack CSVs (default: the qm9pack package)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=None, help="default: 4 (DimeNet++), 6 (DimeNet)")
    parser.add_argument("--num-spherical", type=int, default=7)
    parser.add_argument("--num-radial", type=int, default=6)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument(
        "--output-init",
        choices=["zeros", "glorot_orthogonal"],
        default=None,
        help="default: glorot_orthogonal when timing (non-zero outputs to compare), zeros (authors' HOMO choice) "
        "for --accuracy",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="--accuracy: one run per seed")
    # Throughput
    parser.add_argument("--molecules", type=int, default=320, help="molecules cycled through when timing")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per model (alternating)")
    parser.add_argument("--forces", action="store_true", help="time steps whose loss includes forces -dE/dpos")
    parser.add_argument("--malloc", action="store_true", help="keep freed memory in malloc (both models; see above)")
    # Accuracy
    parser.add_argument("--accuracy", action="store_true", help="equal-budget training on QM9 HOMO")
    parser.add_argument("--target", default="homo")
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--val", type=int, default=0, help="unused molecules between train and test")
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=300)
    return parser.parse_args()


def build_models(args: argparse.Namespace, out_channels: int = 1) -> tuple[nn.Module, nn.Module]:
    """PyG's model (default init, as PyG builds it) and geomol's copy of it."""
    torch.manual_seed(args.seed)
    common = dict(
        hidden_channels=args.hidden,
        out_channels=out_channels,
        num_spherical=args.num_spherical,
        num_radial=args.num_radial,
        cutoff=args.cutoff,
        output_initializer=args.output_init or ("zeros" if args.accuracy else "glorot_orthogonal"),
    )
    if args.model == "dimenet++":
        pyg = pyg_dimenet.DimeNetPlusPlus(
            num_blocks=args.blocks or 4, int_emb_size=64, basis_emb_size=8, out_emb_channels=256, **common
        )
        ours = DimeNetPlusPlus.from_pyg(pyg)
    else:
        pyg = pyg_dimenet.DimeNet(num_blocks=args.blocks or 6, num_bilinear=8, **common)
        ours = DimeNet.from_pyg(pyg)
    return pyg.to(args.device), ours.to(args.device)


def load_qm9(args: argparse.Namespace) -> tuple[QM9, torch.Tensor]:
    dataset = QM9(root=args.data_root, source=args.qm9_source)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    return dataset, order


def collate(dataset: QM9, indices: torch.Tensor, batch_size: int, device: str) -> list[Batch]:
    chunks = indices.split(batch_size)
    return [Batch.from_data_list([dataset[int(i)] for i in chunk]).to(device) for chunk in chunks]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, forces: bool) -> float:
    pos = batch.pos.requires_grad_(forces)
    energy = model(batch.z, pos, batch.batch).squeeze(-1)
    loss = energy.abs().mean()  # the value is irrelevant for timing; same graph as a real L1 loss
    if forces:
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=True)
        loss = loss + 100.0 * grad.pow(2).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def throughput(args: argparse.Namespace) -> None:
    dataset, order = load_qm9(args)
    batches = collate(dataset, order[: args.molecules], args.batch_size, args.device)
    pyg, ours = build_models(args)
    with torch.no_grad():
        b = batches[0]
        diff = (pyg(b.z, b.pos, b.batch) - ours(b.z, b.pos, b.batch)).abs().max().item()
    atoms = sum(b.num_nodes for b in batches) / sum(b.num_graphs for b in batches)
    edges = [radius_graph(b.pos, args.cutoff, b.batch).size(1) for b in batches]
    trips = [triplets(radius_graph(b.pos, args.cutoff, b.batch), b.num_nodes).idx_kj.numel() for b in batches]
    print(
        f"{args.model}, {args.device}, {torch.get_num_threads()} thread(s), batch {args.batch_size}, "
        f"{len(batches)} batches of QM9 ({atoms:.1f} atoms/molecule, {statistics.mean(edges):.0f} edges and "
        f"{statistics.mean(trips):.0f} triplets per batch), {'energy + forces' if args.forces else 'energy'} loss"
    )
    print(f"max |PyG - geomol| on the first batch before training: {diff:.2e}")

    models = {"PyG (pure-torch graph ops)": pyg, "geomol": ours}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in models.items()}
    for name, model in models.items():  # warm-up: allocator, lazy init
        training_step(model, optimizers[name], batches[0], args.forces)
    # Alternate the two models step by step on the same batch, so that the load of a shared machine
    # hits both alike; on CPU, the process's CPU time also discounts time spent descheduled.
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for step in range(args.steps):
        batch = batches[step % len(batches)]
        for name, model in models.items():
            synchronize(args.device)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            training_step(model, optimizers[name], batch, args.forces)
            synchronize(args.device)
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)

    def paired_ratio(times: dict[str, list[float]], name: str) -> float:
        return statistics.median(a / b for a, b in zip(times["PyG (pure-torch graph ops)"], times[name]))

    per_step = args.batch_size
    print(
        f"\n{args.steps} alternating training steps per model; medians over steps; ratio = median over steps of "
        "PyG time / geomol time on the same batch"
    )
    print(f"| {'implementation':<28} | wall ms/step | CPU ms/step | molecules/s (CPU) | ratio (CPU) | ratio (wall) |")
    print(f"|{'-' * 30}|{'-' * 14}|{'-' * 13}|{'-' * 19}|{'-' * 13}|{'-' * 14}|")
    for name in models:
        cpu_ms = 1000 * statistics.median(cpu[name])
        print(
            f"| {name:<28} | {1000 * statistics.median(wall[name]):>12.0f} | {cpu_ms:>11.0f} "
            f"| {1000 * per_step / cpu_ms:>17.1f} | {paired_ratio(cpu, name):>11.2f} | {paired_ratio(wall, name):>12.2f} |"
        )


def evaluate(model: nn.Module, batches: list[Batch], column: int, mean: float, std: float) -> float:
    model.eval()
    errors = []
    with torch.no_grad():
        for batch in batches:
            pred = model(batch.z, batch.pos, batch.batch).squeeze(-1) * std + mean
            errors.append((pred - batch.y[:, column]).abs())
    model.train()
    return 1000.0 * torch.cat(errors).mean().item()  # eV -> meV


def shuffled_batches(data: list, batch_size: int, seed: int, device: str):
    """Endless collated batches, a new seeded permutation of ``data`` each epoch."""
    shuffle = torch.Generator().manual_seed(seed)
    while True:
        for chunk in torch.randperm(len(data), generator=shuffle).split(batch_size):
            yield Batch.from_data_list([data[int(i)] for i in chunk]).to(device)


def train_steps(
    model, optimizer, schedule, batches, column, mean, std, until_cpu: float | None = None
) -> tuple[float, int]:
    """Training steps over ``batches`` (an iterator of collated batches): all of them, or while the process's CPU
    time spent here stays below ``until_cpu`` seconds. Returns (CPU seconds spent, steps taken)."""
    spent, steps = 0.0, 0
    for batch in batches:
        if until_cpu is not None and spent >= until_cpu:
            break
        start = time.process_time()
        target = (batch.y[:, column] - mean) / std
        loss = (model(batch.z, batch.pos, batch.batch).squeeze(-1) - target).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        schedule.step()
        spent += time.process_time() - start
        steps += 1
    return spent, steps


def accuracy(args: argparse.Namespace) -> None:
    """Both models from the same initial weights on the same batches in the same order, for the same number of
    steps; then geomol trains on (same schedule, next batches) until its CPU time equals what PyG's steps took:
    the equal-CPU-budget column. One row per seed (the seed picks the split, the initial weights and the order)."""
    steps_per_epoch = math.ceil(args.train / args.batch_size)
    print(
        f"{args.model} on QM9 {args.target}: {args.train} training / {args.test} test molecules, "
        f"{args.epochs} epochs x {steps_per_epoch} steps, batch {args.batch_size}, Adam (AMSGrad) {args.lr} with "
        f"{args.warmup_steps} warm-up steps, L1 on the standardized target, clip 10; same init and batch order; "
        f"{torch.get_num_threads()} thread(s); CPU time of this process (one model at a time)"
    )
    rows = []
    for seed in args.seeds:
        args.seed = seed
        dataset, order = load_qm9(args)
        column = QM9.target_index(args.target)
        train_idx = order[: args.train]
        test_idx = order[args.train + args.val : args.train + args.val + args.test]
        y = torch.stack([dataset[int(i)].y[0, column] for i in train_idx])
        mean, std = y.mean().item(), y.std().item()
        test_batches = collate(dataset, test_idx, 128, args.device)
        train_data = [dataset[int(i)] for i in train_idx]

        pyg, ours = build_models(args)
        for model in (pyg, ours):  # warm-up (allocator, first calls), no optimizer step: the weights stay
            b = test_batches[0]
            model(b.z, b.pos, b.batch).sum().backward()
            model.zero_grad(set_to_none=True)
        result = {}
        for name, model in (("pyg", pyg), ("geomol", ours)):
            optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, amsgrad=True)
            schedule = warmup_exponential_decay(optimizer, warmup_steps=args.warmup_steps)
            stream = shuffled_batches(train_data, args.batch_size, seed + 1, args.device)
            cpu, steps = train_steps(model, optimizer, schedule, (next(stream) for _ in range(args.epochs * steps_per_epoch)),
                                     column, mean, std)  # fmt: skip
            result[name] = (evaluate(model, test_batches, column, mean, std), cpu, steps)
            print(
                f"  seed {seed}, {name}: {steps} steps, {cpu:.0f} CPU s, test MAE {result[name][0]:.1f} meV", flush=True
            )
            if name == "geomol":  # on to PyG's CPU time
                extra, more = train_steps(model, optimizer, schedule, stream, column, mean, std,
                                          until_cpu=result["pyg"][1] - cpu)  # fmt: skip
                result["geomol_budget"] = (evaluate(model, test_batches, column, mean, std), cpu + extra, steps + more)
                print(f"  seed {seed}, geomol at PyG's CPU time: {steps + more} steps, test MAE "
                      f"{result['geomol_budget'][0]:.1f} meV", flush=True)  # fmt: skip
        rows.append((seed, result))

    print(
        "\n| seed | PyG MAE (meV) | geomol MAE, same steps | geomol MAE, PyG's CPU time (steps) | CPU s PyG / geomol (same steps) |"
    )
    print("|---|---|---|---|---|")
    for seed, r in rows:
        print(f"| {seed} | {r['pyg'][0]:.1f} | {r['geomol'][0]:.1f} | {r['geomol_budget'][0]:.1f} ({r['geomol_budget'][2]}) "
              f"| {r['pyg'][1]:.0f} / {r['geomol'][1]:.0f} = {r['pyg'][1] / r['geomol'][1]:.2f}x |")  # fmt: skip
    if len(rows) > 1:

        def stat(key):
            values = [r[key][0] for _, r in rows]
            return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"

        print(f"| mean ± std | {stat('pyg')} | {stat('geomol')} | {stat('geomol_budget')} | |")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.malloc:
        from geomol.devices import reuse_freed_memory

        print(f"malloc keeps freed memory: {reuse_freed_memory()}")
    if args.accuracy:
        accuracy(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
