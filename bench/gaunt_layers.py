"""Whole Gaunt layers, forward+backward: geomol's fused kernel vs its torch path vs e3nn / MACE equivalents.

Issue #19 §2. Inputs are 32 real QM9 molecules (``tests/fixtures/qm9``, drawn with ``random.Random(0)``; about 18
atoms each) with a 5 Å radius graph of at most 32 neighbours, as GauntNet builds it.

* **Convolution.** ``GauntConv(L, L, L, C)`` (radial MLP of a Bessel basis, filter ``φ_cl(r) Y_lm(r̂)``, Gaunt
  product with the sender's features, sum at the receiver), timed as ``fused`` (the op ``geomol::gaunt_conv``:
  gather, product and scatter-add in one pass, no ``[E, C, K]`` messages) and ``torch path``
  (``gaunt_kernel.disabled()``: gather, product, scatter as torch ops, the path of GPUs and machines without a
  compiler). The e3nn equivalent is MACE's convolution: ``o3.TensorProduct`` of the sender's features
  ``Cx0e+Cx1o+…`` with the edge's spherical harmonics, mode ``"uvu"``, every path whose output is in the same
  irreps (the ``l1 + l2 + l3`` even paths, the ones a Gaunt product couples), per-edge weights ``[E, C·paths]``
  from the same radial MLP, gathered with ``x[sender]`` and summed with ``index_add``; also under
  ``torch.compile`` (``--compile``; compile time printed apart). Backward to the features, the positions and
  every parameter.
* **Many-body product.** ``GauntManyBody(L, C, correlation=3, num_elements=5)`` fused (a chain of fused Gaunt
  products) and torch path, against MACE's ``SymmetricContraction`` (correlation 3, 5 elements, same irreps in and
  out). ``pip install mace-torch`` into geomol's venv would downgrade e3nn to 0.4.4 (mace-torch 0.3.16 pins it),
  so the bench imports MACE from a separate folder made with
  ``pip install --no-deps --target /tmp/mace_pkgs mace-torch opt_einsum_fx torch-ema`` (``--mace-path``); MACE's
  contraction runs on e3nn 0.6 unchanged. Without it the row is left out.
* **GauntNet training step** (``--net``): energy and forces (``-dE/dpos``, ``create_graph``) and the backward of an
  energy + force loss, GauntNet at the config's size (64 channels, L = 2, 2 layers, correlation 3), fused vs the
  torch path.

Every method is warmed up, then the timed rounds interleave the methods; medians (and minima) in ms, float32,
``--threads`` torch threads (default 1).

Usage::

    python bench/gaunt_layers.py                      # L = 2, C = 64
    python bench/gaunt_layers.py --lmax 2 3 --compile --net
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import machine
import torch
from e3nn import o3
from torch import nn

from geomol.models.gaunt_net import GauntNet
from geomol.nn import gaunt_kernel
from geomol.nn.gaunt import GauntConv, GauntManyBody, sh_irreps, sh_to_irreps
from geomol.nn.graph import edge_vectors, radius_graph
from geomol.nn.radial import BesselBasis

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "qm9" / "qm9_fixture.csv"
ELEMENTS = {"H": 0, "C": 1, "N": 2, "O": 3, "F": 4}


def qm9_batch(n_molecules: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions ``[N, 3]``, element index ``[N]`` (H C N O F -> 0…4) and graph index ``[N]`` of QM9 molecules."""
    rows = random.Random(seed).sample(list(csv.DictReader(FIXTURE.open())), n_molecules)
    pos = torch.cat([torch.tensor(json.loads(r["XYZ_Ang"])) for r in rows])
    species = torch.tensor([ELEMENTS[e] for r in rows for e in json.loads(r["Elements"].replace("'", '"'))])
    batch = torch.cat([torch.full((int(r["N_atoms"]),), i) for i, r in enumerate(rows)])
    return pos.to(torch.get_default_dtype()), species, batch


class E3nnConv(nn.Module):
    """MACE's convolution from e3nn: ``Σ_j TP_uvu(x_j, Y(r̂_ij); w(r_ij))`` with per-edge weights from a radial MLP."""

    def __init__(self, lmax: int, channels: int, avg_num_neighbors: float, cutoff: float = 5.0) -> None:
        super().__init__()
        irreps_x, irreps_sh = sh_irreps(channels, lmax), o3.Irreps.spherical_harmonics(lmax)
        instructions = [
            (i1, i2, i3, "uvu", True)
            for i1, (_, ir1) in enumerate(irreps_x)
            for i2, (_, ir2) in enumerate(irreps_sh)
            for i3, (_, ir3) in enumerate(irreps_x)
            if ir3 in ir1 * ir2
        ]
        self.tp = o3.TensorProduct(
            irreps_x, irreps_sh, irreps_x, instructions, shared_weights=False, internal_weights=False
        )
        self.lmax, self.avg_num_neighbors = lmax, avg_num_neighbors
        self.basis = BesselBasis(8, cutoff, 5)
        self.radial = nn.Sequential(nn.Linear(8, 64), nn.SiLU(), nn.Linear(64, self.tp.weight_numel))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        vec, dist = edge_vectors(pos, edge_index)
        sh = o3.spherical_harmonics(list(range(self.lmax + 1)), vec, True, normalization="integral")
        messages = self.tp(x[edge_index[0]], sh, self.radial(self.basis(dist)))
        out = torch.zeros_like(x).index_add(0, edge_index[1], messages)
        return out / self.avg_num_neighbors


class TorchPath(nn.Module):
    """A geomol layer with the fused kernel switched off (its backward follows the forward's path)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args):
        with gaunt_kernel.disabled():
            return self.module(*args)


def grid_plans(step):
    """``step`` with the kernel's grid plans at every degree (forward and backward; see ``gaunt_kernel.method``)."""

    def run():
        with gaunt_kernel.method("grid"):
            step()

    return run


def import_mace(path: str | None):
    if path:
        sys.path.insert(0, path)
    try:
        from mace.modules.symmetric_contraction import SymmetricContraction
    except ImportError as error:
        print(f"MACE: not importable ({error}); its row is left out")
        return None
    import mace

    print(f"MACE: mace-torch {getattr(mace, '__version__', '?')} from {Path(mace.__file__).parent}")
    return SymmetricContraction


def time_methods(methods: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Interleaved timed rounds of ``step()`` closures, seconds."""
    for step in methods.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, step in methods.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def report(title: str, times: dict[str, list[float]], reference: str, extra: dict[str, str] | None = None) -> None:
    median = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    print(f"\n{title}")
    print(f"  {'method':<26} {'median ms':>10} {'min ms':>9} {'÷ ' + reference:>12}")
    for name, t in times.items():
        note = f"  {extra[name]}" if extra and name in extra else ""
        print(
            f"  {name:<26} {median[name]:>10.2f} {1e3 * min(t):>9.2f} {median[name] / median[reference]:>11.2f}x{note}"
        )


def backward_step(module: nn.Module, inputs: tuple, grad: torch.Tensor):
    def step():
        module.zero_grad(set_to_none=True)
        for t in inputs:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.grad = None
        module(*inputs).backward(grad)

    return step


def bench_conv(lmax: int, channels: int, data, args) -> None:
    pos, species, batch = data
    edge_index = radius_graph(pos, 5.0, batch, max_num_neighbors=32)
    n, k = pos.shape[0], (lmax + 1) ** 2
    g = torch.Generator().manual_seed(lmax)
    x = torch.randn(n, channels, k, generator=g)
    grad = torch.randn(n, channels, k, generator=g)
    conv = GauntConv(lmax, lmax, lmax, channels, avg_num_neighbors=14.0)
    e3nn_conv = E3nnConv(lmax, channels, avg_num_neighbors=14.0)
    inputs = (x.clone().requires_grad_(), pos.clone().requires_grad_(), edge_index)
    e3nn_inputs = (sh_to_irreps(x).requires_grad_(), pos.clone().requires_grad_(), edge_index)
    methods = {
        "geomol fused": backward_step(conv, inputs, grad),
        "geomol fused, grid plans": grid_plans(backward_step(conv, inputs, grad)),
        "geomol torch path": backward_step(TorchPath(conv), inputs, grad),
        "e3nn TensorProduct": backward_step(e3nn_conv, e3nn_inputs, sh_to_irreps(grad)),
    }
    extra = {"e3nn TensorProduct": f"{len(e3nn_conv.tp.instructions)} paths, {e3nn_conv.tp.weight_numel} weights/edge"}
    if args.compile and lmax in args.compile:
        compiled = torch.compile(e3nn_conv, fullgraph=True)
        start = time.perf_counter()
        backward_step(compiled, e3nn_inputs, sh_to_irreps(grad))()
        extra["e3nn compiled"] = f"compiled in {time.perf_counter() - start:.0f} s"
        methods["e3nn compiled"] = backward_step(compiled, e3nn_inputs, sh_to_irreps(grad))
    times = time_methods(methods, args.warmup, args.repeats)
    report(
        f"GauntConv L={lmax} C={channels}: {n} atoms, {edge_index.shape[1]} edges, forward+backward (x, pos, params)",
        times,
        "geomol fused",
        extra,
    )


def bench_many_body(lmax: int, channels: int, data, args, symmetric_contraction) -> None:
    pos, species, _ = data
    n, k = pos.shape[0], (lmax + 1) ** 2
    g = torch.Generator().manual_seed(10 + lmax)
    x = torch.randn(n, channels, k, generator=g)
    grad = torch.randn(n, channels, k, generator=g)
    mb = GauntManyBody(lmax, channels, correlation=3, num_elements=5)
    with torch.no_grad():
        mb.weight.normal_(generator=g)
    inputs = (x.clone().requires_grad_(), species)
    methods = {
        "geomol fused": backward_step(mb, inputs, grad),
        "geomol fused, grid plans": grid_plans(backward_step(mb, inputs, grad)),
        "geomol torch path": backward_step(TorchPath(mb), inputs, grad),
    }
    if symmetric_contraction is not None:
        irreps = sh_irreps(channels, lmax)
        sc = symmetric_contraction(irreps, irreps, correlation=3, num_elements=5)
        one_hot = torch.nn.functional.one_hot(species, 5).to(x.dtype)
        methods["MACE SymmetricContraction"] = backward_step(
            sc, (x.clone().requires_grad_(), one_hot), sh_to_irreps(grad)
        )
    times = time_methods(methods, args.warmup, args.repeats)
    report(
        f"GauntManyBody L={lmax} C={channels} correlation 3, 5 elements: {n} atoms, forward+backward",
        times,
        "geomol fused",
    )


def bench_net(data, args) -> None:
    pos, species, batch = data
    net = GauntNet(
        channels=64, lmax=2, num_layers=2, correlation=3, cutoff=5.0, avg_num_neighbors=14.0, num_elements=11
    )
    z = species + 1
    n_graphs = int(batch.max()) + 1
    g = torch.Generator().manual_seed(0)
    energy_target, force_target = torch.randn(n_graphs, 1, generator=g), torch.randn(pos.shape[0], 3, generator=g)

    def step(fused: bool):
        def run():
            net.zero_grad(set_to_none=True)
            p = pos.clone().requires_grad_()
            with torch.enable_grad() if fused else gaunt_kernel.disabled():
                energy = net(z, p, batch)
                forces = -torch.autograd.grad(energy.sum(), p, create_graph=True)[0]
                loss = (energy - energy_target).abs().mean() + (forces - force_target).square().mean()
                loss.backward()

        return run

    methods = {
        "geomol fused": step(True),
        "geomol fused, grid plans": grid_plans(step(True)),
        "geomol torch path": step(False),
    }
    times = time_methods(methods, args.warmup, args.repeats)
    report(
        f"GauntNet training step (energy + forces, create_graph), 64 ch, L=2, 2 layers, correlation 3: "
        f"{pos.shape[0]} atoms",
        times,
        "geomol fused",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lmax", type=int, nargs="+", default=[2])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--molecules", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", type=int, nargs="*", default=None, help="also torch.compile'd e3nn, these lmax")
    parser.add_argument("--net", action="store_true", help="also a GauntNet energy + force training step")
    parser.add_argument("--mace-path", default=os.environ.get("MACE_PATH", "/tmp/mace_pkgs"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"machine: {machine.cpu_description()}")
    print(
        f"threads={torch.get_num_threads()} float32, {args.molecules} QM9 molecules (fixture), warm-up {args.warmup}, "
        f"{args.repeats} interleaved rounds; load average {os.getloadavg()[0]:.1f}; fused kernel "
        f"{'built' if gaunt_kernel.available(torch.zeros(1)) else 'NOT available'}"
    )
    symmetric_contraction = import_mace(args.mace_path)
    data = qm9_batch(args.molecules)
    for lmax in args.lmax:
        bench_conv(lmax, args.channels, data, args)
        bench_many_body(lmax, args.channels, data, args, symmetric_contraction)
    if args.net:
        bench_net(data, args)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
