"""PropMolFlow training speed on the CPU: molecules per second of a full training step (flow corruption,
vector field, four losses, backward, Adam), before vs after and fp32 against bf16 autocast, side by side.

Batches are real QM9 molecules with bonds (the 400-molecule fixture, batch 64 by default, about 18 atoms
and 300 directed edges per molecule). Sizes: ``small``, the 0.23 M checkpoint ``propmolflow_qm9_gap_cpu``
(64 scalars, 8 vectors, 32 edge features, 4 updates), ``shipped``, the 1.05 M ``propmolflow_qm9_gap_mid_cpu``
(128/16/64, 5 updates), and ``paper`` (256/16/128, 8 updates).
Versions: ``before`` is geomol's field and GVP layers as of commit ``BEFORE`` (``git show``, bench/before.py;
skipped outside a git checkout), ``after`` today's, from the same initial weights. Both first run with
glibc's default malloc settings, then (``+malloc``) after :func:`geomol.devices.reuse_freed_memory`, which
today's training step applies by itself on the CPU: ``after +malloc`` is what ``train.py`` runs now.
Before the timings, one batch's loss and gradients are compared between the versions (same weights, same
noise).
Modes: ``fp32`` (geomol's default), ``bf16`` (``trainer.precision=bf16-mixed``: matrix products in bfloat16,
weights, losses and optimizer in float32; emulated, very slow, on CPUs without AVX512-BF16), ``compile``
(``torch.compile`` of the vector field, compile time reported separately), ``compile-bf16`` (both), ``blocks``
and ``blocks-bf16`` (``model.compile=true``: only the GVP layers' per-edge work compiled,
:func:`geomol.nn.gvp.compile_edge_blocks`; ``after`` rows only).

``--processes N`` adds, per size and mode, ``after +malloc`` rows of data-parallel training as ``train.py
trainer=ddp trainer.accelerator=cpu trainer.devices=N`` runs it: N spawned processes with ``--threads / N``
threads each, every one a batch of ``--batch-size / N`` molecules, the field wrapped in torch's
``DistributedDataParallel`` (gloo backend: the gradient all-reduce is in the times). Their molecules/s is the
machine's, N batches per step, so they compare with the one-process rows at the same total batch.

    python bench/propmolflow_train_step.py                       # 1 thread, fp32, three sizes
    python bench/propmolflow_train_step.py --threads 2 --modes fp32 bf16 compile --sizes shipped
    python bench/propmolflow_train_step.py --versions after --modes fp32 blocks bf16 blocks-bf16 --sizes shipped paper
    python bench/propmolflow_train_step.py --threads 2 --modes fp32 blocks-bf16 --sizes shipped paper --processes 2

Run it on a quiet machine (pause training jobs); it prints the CPU model and ISA it ran on.
"""

from __future__ import annotations

import argparse
import copy
import socket
import time
from contextlib import nullcontext
from pathlib import Path

import before  # bench/before.py
import torch
from machine import cpu_description  # bench/machine.py (bench/ is on sys.path when a script runs)

from geomol.data.generation import QM9GenerationDataModule
from geomol.nn.gvp import compile_edge_blocks
from geomol.tasks.generation import GenerationTask

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "qm9"
# geomol before issue #15's CPU work on the field and GVP layers (the "before" rows).
BEFORE = "3a2d3f47ea02652a959b889c4dc93f9b03bb05f8"
BEFORE_MODULES = ("geomol.nn.gvp", "geomol.models.propmolflow")
SIZES = {
    "small": dict(scalars=64, vectors=8, edge_features=32, n_updates=4, n_message_gvps=2, n_update_gvps=2, rbf_dim=16),
    "shipped": dict(
        scalars=128, vectors=16, edge_features=64, n_updates=5, n_message_gvps=2, n_update_gvps=2, rbf_dim=16
    ),
    "paper": dict(scalars=256, vectors=16, edge_features=128, n_updates=8),
}


MODES = ["fp32", "bf16", "compile", "compile-bf16", "blocks", "blocks-bf16"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["small", "shipped", "paper"], choices=list(SIZES))
    parser.add_argument("--modes", nargs="+", default=["fp32"], choices=MODES)
    parser.add_argument("--versions", nargs="+", default=["before", "after"], choices=["before", "after"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per row (median reported)")
    parser.add_argument("--data-root", default="outputs/bench_data", help="cache folder for the fixture's bonds")
    parser.add_argument("--processes", type=int, default=1, help="also time N-process DDP training (see above)")
    args = parser.parse_args()
    if args.processes < 1 or args.threads % args.processes or args.batch_size % args.processes:
        parser.error("--processes must divide --threads and --batch-size")
    return args


def cycled_batches(loader, count: int) -> list:
    """The loader's first ``count`` batches, its first epoch repeated if it has fewer."""
    batches = [b for _, b in zip(range(count), loader)]
    while len(batches) < count:
        batches += batches[: count - len(batches)]
    return batches


def _ddp_worker(rank: int, args: argparse.Namespace, size: str, mode: str, port: int, results) -> None:
    """One of ``--processes`` DDP ranks: times ``--steps`` training steps on its own batches; rank 0 reports."""
    import torch.distributed as dist

    from geomol.devices import reuse_freed_memory

    n = args.processes
    torch.set_num_threads(args.threads // n)
    reuse_freed_memory()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=n)
    try:
        dm = QM9GenerationDataModule(
            root=args.data_root, source=FIXTURE, batch_size=args.batch_size // n, train_half=None
        )
        # each rank its own molecules, as a distributed sampler
        batches = cycled_batches(dm.train_dataloader(), n * (args.steps + 2))[rank::n]
        task = build_task(size, dm.task_kwargs(), "after", None)
        start = time.perf_counter()
        if mode.startswith("compile"):
            task.net = torch.compile(task.net, dynamic=True)
        elif mode.startswith("blocks"):
            compile_edge_blocks(task.net)

        class Loss(torch.nn.Module):  # what Lightning's DDP wrapper does: forward runs the training loss
            def __init__(self, task):
                super().__init__()
                self.task = task

            def forward(self, batch):
                return self.task._losses(batch)["loss"]

        model = torch.nn.parallel.DistributedDataParallel(Loss(task))
        opt = torch.optim.Adam(task.parameters(), lr=1e-4)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if mode.endswith("bf16") else nullcontext()

        def step(batch):
            with context:
                loss = model(batch)
            opt.zero_grad()
            loss.backward()  # DDP all-reduces the gradients here
            opt.step()

        for batch in batches[:2]:
            step(batch)
        warm = time.perf_counter() - start
        times = []
        for batch in batches[2:]:
            dist.barrier()
            begin = time.perf_counter()
            step(batch)
            times.append(time.perf_counter() - begin)
        mols = sum(b.num_graphs for b in batches[2:]) / args.steps
        gathered = [None] * n
        dist.all_gather_object(gathered, (sorted(times)[len(times) // 2], mols, warm))
        if rank == 0:
            results.put(gathered)
    finally:
        dist.destroy_process_group()


def ddp_row(args: argparse.Namespace, size: str, mode: str) -> tuple:
    """``--processes`` spawned DDP ranks (see the module docstring); the row's step time is the slowest rank's."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_ddp_worker, args=(r, args, size, mode, port, results)) for r in range(args.processes)]
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):  # a rank that dies leaves the others waiting in a collective: stop them
        procs[0].join(timeout=1)
        if any(p.exitcode not in (None, 0) for p in procs):
            for q in procs:
                q.terminate()
            break
    if any(p.exitcode != 0 for p in procs) or results.empty():
        raise RuntimeError(f"a DDP rank failed (exit codes {[p.exitcode for p in procs]})")
    ranks = results.get()
    median = max(t for t, _, _ in ranks)
    mols = sum(m for _, m, _ in ranks)
    note = f"{args.processes} DDP processes x {args.threads // args.processes} thread(s), batch {args.batch_size // args.processes} each"
    if mode.startswith(("compile", "blocks")):
        note += f"; compile + 2 warm-up steps {max(w for _, _, w in ranks):.0f} s"
    return median, mols, note


def build_task(size: str, kwargs: dict, version: str, old) -> GenerationTask:
    """A fresh task with seed-0 initial weights; for ``before`` its field is commit BEFORE's with those weights."""
    torch.manual_seed(0)
    task = GenerationTask(net={"_target_": "geomol.models.propmolflow.PropMolFlow", **SIZES[size]}, condition=["gap"],
                          val_molecules=0, **kwargs)  # fmt: skip
    if version == "before":
        field = old["geomol.models.propmolflow"].PropMolFlow(**SIZES[size], num_properties=1)
        field.load_state_dict(task.net.state_dict())
        task.net = field
    return task.train()


def gradient_check(size: str, kwargs: dict, old, batch) -> str:
    """Loss and gradients of both versions on one batch, same weights and same noise."""
    results = []
    for version in ("before", "after"):
        task = build_task(size, kwargs, version, old)
        torch.manual_seed(1)
        loss = task._losses(batch)["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in task.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    worst = max(float((grads_a[n] - grads_b[n]).abs().max()) for n in grads_a)
    largest = max(float(g.abs().max()) for g in grads_a.values())
    return (f"loss before {float(loss_a):.6f}, after {float(loss_b):.6f}; largest gradient difference {worst:.1e} "
            f"(largest gradient entry {largest:.1e})")  # fmt: skip


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    before.default_malloc()  # the first rows run with glibc's default malloc settings
    dm = QM9GenerationDataModule(root=args.data_root, source=FIXTURE, batch_size=args.batch_size, train_half=None)
    kwargs = dm.task_kwargs()
    loader = dm.train_dataloader()
    batches = cycled_batches(loader, args.steps + 2)
    mols = sum(b.num_graphs for b in batches[2:]) / args.steps
    old = before.load(BEFORE, *BEFORE_MODULES) if "before" in args.versions else None
    versions = [v for v in args.versions if v == "after" or old is not None]
    print(f"{cpu_description()}; {args.threads} thread(s); batch {args.batch_size} QM9 molecules "
          f"({sum(b.num_nodes for b in batches) / sum(b.num_graphs for b in batches):.1f} atoms on average)")  # fmt: skip
    if "before" in args.versions and old is None:
        print(f"no 'before' rows: commit {BEFORE[:10]} is not readable here (git checkout needed)")
    plan = [(v, "") for v in versions] + [(v, " +malloc") for v in versions]
    rows = []
    for size in args.sizes:
        if old is not None and "after" in versions:
            print(f"{size}: {gradient_check(size, kwargs, old, batches[0])}", flush=True)
        for mode in args.modes:
            for version, malloc in plan:
                if mode.startswith("blocks") and version == "before":
                    continue  # the layers of commit BEFORE have no compiled blocks
                if malloc:
                    before.tuned_malloc()
                task = build_task(size, kwargs, version, old)
                opt = torch.optim.Adam(task.parameters(), lr=1e-4)
                note = ""
                start = time.perf_counter()
                if mode.startswith("compile"):
                    task.net = torch.compile(task.net, dynamic=True)
                elif mode.startswith("blocks"):
                    compile_edge_blocks(task.net)
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
                if mode.startswith(("compile", "blocks")):
                    note = f"compile + 2 warm-up steps {time.perf_counter() - start:.0f} s"
                times = []
                for batch in copy.copy(batches[2:]):
                    start = time.perf_counter()
                    step(batch)
                    times.append(time.perf_counter() - start)
                median = sorted(times)[len(times) // 2]
                params = sum(p.numel() for p in task.parameters()) / 1e6
                rows.append((size, params, mode, version + malloc, median, mols / median, note))
            if args.processes > 1:
                median, ddp_mols, note = ddp_row(args, size, mode)
                rows.append(
                    (size, params, mode, f"after +malloc DDPx{args.processes}", median, ddp_mols / median, note)
                )
    print(
        f"{'size':<8s} {'params':>8s} {'mode':<11s} {'version':<20s} {'ms/step':>8s} {'mol/s':>8s} {'vs first':>8s}  note"
    )
    first = {}
    for size, params, mode, version, median, rate, note in rows:
        base = first.setdefault(size, rate)
        print(
            f"{size:<8s} {params:7.2f}M {mode:<11s} {version:<20s} {median * 1e3:8.0f} {rate:8.1f} {rate / base:8.2f}  {note}"
        )


if __name__ == "__main__":
    main()
