"""Forward+backward time and peak memory: geomol's GauntTensorProduct vs e3nn vs a dense sphere grid.

Three exact ways to take a channelwise product of two SH features ``[N, C, (L+1)²]`` (degrees 0…L each):

* ``e3nn``: ``o3.TensorProduct`` with every path ``(l1, l2, l3)`` allowed by parity, mode ``"uuu"`` (one
  weight per path and channel). With SH parities in and out these are the paths with ``l1 + l2 + l3`` even,
  the same paths the Gaunt product couples (its path weights are a product of per-degree weights).
* ``e3nn compiled``: the same module under ``torch.compile(tp, fullgraph=True)`` (e3nn 0.6 runs eager on
  torch >= 2.10 and recommends compiling); the compile time is outside the timed region and printed apart.
* ``e3nn v2``: e3nn's experimental ``FullTensorProductv2`` (meant to be compiled) under ``torch.compile``, per channel,
  with the "uuu" product's per-path weights and sum over paths (``E3nnV2Product``); timed with the compiled e3nn.
* ``cueq``: NVIDIA cuEquivariance's ``SegmentedPolynomial`` (pure-torch ``naive`` method, the one that runs on
  CPUs) for the same "uuu" product over all path triples, built from cuEquivariance's own Clebsch–Gordan
  coefficients, without weights; only if ``cuequivariance-torch`` is installed.
* ``dense``: the plain exact grid method. Dense matrices from a Gauss–Legendre × uniform grid (e3nn's SH on
  the grid points): project both inputs to the grid, multiply, project back. Same per-degree weights.
* ``gaunt``: ``geomol.nn.gaunt.GauntTensorProduct``. On CPUs its fused kernel (``geomol.nn.gaunt_kernel``:
  per tile of 32 rows, Legendre steps, the φ-Fourier convolution of orders and the adjoint Legendre step,
  all in cache, or up to degree 4 the direct sum over the nonzero Gaunt coefficients; one fused pass for
  the backward).
* ``torch path``: the same module with the kernel switched off (``gaunt_kernel.disabled()``), the path GPUs
  and machines without a C++ compiler take: dense or separable transforms as its cost model picks, chunked
  over rows, weights folded into the fused forward and backward.

Every method is warmed up first (e3nn's code generation happens at construction and in the warm-up, outside
the timed region); timed rounds interleave the methods and report the minimum and the median (on
shared cores the minimum is the least disturbed measurement, so ratios use it). A round runs each method
``--inner`` steps back to back (default: as many as last about 20 ms, at least one) and reports the time per
step: a single millisecond step right after another method's would also time the wake-up of the threads and
caches holding the other method's data (``--inner 1``: one step per round, this script's timing before
2026-12-07). Peak memory is the
largest amount of memory allocated during one forward+backward beyond what existed before it (profiler
allocation events on CPU, ``max_memory_allocated`` on CUDA).

Usage::

    python bench/gaunt_vs_e3nn.py                       # N=1000, C=16, lmax 1..8, 2 threads, float32
    python bench/gaunt_vs_e3nn.py --device cuda --n 20000 --channels 32

On cores shared with other jobs, OpenMP threads that spin while their partner is descheduled can stretch a
millisecond operation to a scheduler time slice, for every method; ``OMP_WAIT_POLICY=PASSIVE`` avoids that.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import machine
import numpy as np
import torch
from e3nn import o3
from torch import nn
from torch.profiler import ProfilerActivity, profile

from geomol.nn import gaunt_kernel
from geomol.nn.gaunt import GauntTensorProduct, sh_irreps, sh_to_irreps


class DenseGridProduct(nn.Module):
    """The plain exact method: ``out = ((x A1) ⊙ (y A2)) B`` with dense grid matrices, per-degree weights."""

    def __init__(self, lmax: int, channels: int) -> None:
        super().__init__()
        degree = 3 * lmax
        n_theta, n_phi = degree // 2 + 1, degree + 1
        nodes, weights = np.polynomial.legendre.leggauss(n_theta)
        cos_t = torch.from_numpy(nodes)[:, None].expand(n_theta, n_phi)
        sin_t = (1 - cos_t**2).sqrt()
        phi = (torch.arange(n_phi, dtype=torch.float64) * 2 * math.pi / n_phi)[None, :].expand(n_theta, n_phi)
        points = torch.stack([sin_t * torch.sin(phi), cos_t, sin_t * torch.cos(phi)], dim=-1).reshape(-1, 3)
        sh = o3.spherical_harmonics(list(range(lmax + 1)), points, True, normalization="integral")  # [G, K]
        quad = (torch.from_numpy(weights)[:, None] * (2 * math.pi / n_phi)).expand(n_theta, n_phi).reshape(-1, 1)
        dtype = torch.get_default_dtype()
        self.register_buffer("to_grid", sh.T.contiguous().to(dtype))
        self.register_buffer("from_grid", (sh * quad).contiguous().to(dtype))
        degrees = torch.repeat_interleave(torch.arange(lmax + 1), 2 * torch.arange(lmax + 1) + 1)
        self.register_buffer("degree", degrees)
        self.weight_in1 = nn.Parameter(torch.ones(channels, lmax + 1))
        self.weight_in2 = nn.Parameter(torch.ones(channels, lmax + 1))
        self.weight_out = nn.Parameter(torch.ones(channels, lmax + 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # [N, C, K] x2 -> [N, C, K]
        f = (x * self.weight_in1[:, self.degree]) @ self.to_grid
        g = (y * self.weight_in2[:, self.degree]) @ self.to_grid
        return ((f * g) @ self.from_grid) * self.weight_out[:, self.degree]


class TorchPath(nn.Module):
    """``GauntTensorProduct`` with the fused CPU kernel switched off (its backward follows the forward's path)."""

    def __init__(self, module: GauntTensorProduct) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with gaunt_kernel.disabled():
            return self.module(x, y)


def e3nn_uuu(lmax: int, channels: int) -> o3.TensorProduct:
    irreps = sh_irreps(channels, lmax)
    paths = [
        (i1, i2, i3, "uuu", True)
        for i1, (_, ir1) in enumerate(irreps)
        for i2, (_, ir2) in enumerate(irreps)
        for i3, (_, ir3) in enumerate(irreps)
        if ir3 in ir1 * ir2
    ]
    return o3.TensorProduct(irreps, irreps, irreps, paths)


class E3nnV2Product(nn.Module):
    """e3nn's experimental ``FullTensorProductv2`` (made to be ``torch.compile``d) as a channelwise product: channels
    as a leading axis, one ``1x0e+1x1o+…`` feature per channel, every path whose output is an SH degree ≤ L (the
    Gaunt paths); each path's output scaled by a weight per channel and summed into its degree (the "uuu" product's
    sum over paths, one matrix product with a 0/1 matrix)."""

    def __init__(self, lmax: int, channels: int) -> None:
        super().__init__()
        from e3nn.o3.experimental import FullTensorProductv2

        irreps = o3.Irreps([(1, (l, (-1) ** l)) for l in range(lmax + 1)])
        self.tp = FullTensorProductv2(irreps, irreps, filter_ir_out=irreps)
        out = self.tp.irreps_out
        rows = torch.cat([torch.arange(l * l, (l + 1) ** 2) for _, (l, _) in out])  # each output dim's SH slot
        self.register_buffer(
            "to_sh", torch.zeros(out.dim, (lmax + 1) ** 2).index_put_((torch.arange(out.dim), rows), torch.tensor(1.0))
        )
        self.weight = nn.Parameter(torch.ones(channels, out.dim))  # per path (repeated over its 2l+1 dims) and channel
        self.n_paths = len(out)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # [N, C, K] x2 -> [N, C, K]
        return (self.tp(x, y) * self.weight) @ self.to_sh


class CuEquivarianceProduct(nn.Module):
    """cuEquivariance's segmented polynomial for the channelwise product of all degree triples (no weights)."""

    def __init__(self, lmax: int, channels: int, device: torch.device) -> None:
        super().__init__()
        import cuequivariance as cue
        import cuequivariance_torch as cuet

        irreps = [cue.O3(l, (-1) ** l) for l in range(lmax + 1)]
        d = cue.SegmentedTensorProduct.from_subscripts("iu,ju,ku+ijk")
        for operand in range(3):
            for ir in irreps:
                d.add_segment(operand, (ir.dim, channels))
        for i1, ir1 in enumerate(irreps):
            for i2, ir2 in enumerate(irreps):
                for i3, ir3 in enumerate(irreps):
                    for cg in cue.O3.clebsch_gordan(ir1, ir2, ir3):
                        d.add_path(i1, i2, i3, c=cg)
        poly = cue.SegmentedPolynomial.eval_last_operand(d)
        self.n_paths = d.num_paths
        self.tp = cuet.SegmentedPolynomial(poly, method="naive").to(device)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.tp([x, y])[0]


def cueq_available() -> bool:
    try:
        import cuequivariance_torch  # noqa: F401
    except ImportError:
        return False
    return True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(module: nn.Module, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor) -> None:
    out = module(*inputs)
    out.backward(grad)


def peak_mb(module: nn.Module, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor, device: torch.device) -> float:
    """Largest extra memory allocated during one forward+backward, in MB."""
    for t in inputs:
        t.grad = None
    module.zero_grad(set_to_none=True)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(module, inputs, grad)
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(module, inputs, grad)
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of rows N")
    parser.add_argument("--channels", type=int, default=16, help="channels C")
    parser.add_argument("--lmax", type=int, nargs="+", default=list(range(1, 9)), help="degrees L (in = out)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds per method")
    parser.add_argument("--inner", type=int, default=0, help="steps per timed round (0: about 20 ms worth)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--skip-e3nn-above", type=int, default=99, help="leave e3nn out for lmax above this")
    parser.add_argument(
        "--compile-e3nn-up-to", type=int, default=4, help="time torch.compile'd e3nn up to this lmax (compiling "
        "takes about a minute at lmax 2 on 2 CPU threads and grows with the number of paths)",
    )  # fmt: skip
    parser.add_argument("--no-cueq", action="store_true", help="leave cuEquivariance out even if installed")
    parser.add_argument("--png", default=None, help="log-log plot of time against lmax with fitted exponents")
    parser.add_argument(
        "--march", default=None, help="build the Gaunt kernel for this -march (e.g. x86-64-v2, x86-64-v3: the portable "
        "SSE / AVX2 builds) instead of -march=native",
    )  # fmt: skip
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(getattr(torch, args.dtype))
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"machine: {machine.cpu_description()}")
    if args.march:
        flags = tuple(f for f in gaunt_kernel._FLAGS if not f.startswith("-march")) + (f"-march={args.march}",)
        library = gaunt_kernel.build(flags)
        gaunt_kernel._library = lambda: library  # every product below uses this build
        print(f"Gaunt kernel built with -march={args.march}")
    use_cueq = cueq_available() and not args.no_cueq
    print(
        f"cuEquivariance: {'naive (pure torch) method' if use_cueq else 'not installed (pip install cuequivariance-torch)'}"
    )
    print(
        f"N={args.n} C={args.channels} {args.dtype} device={device} threads={torch.get_num_threads()} "
        f"repeats={args.repeats} inner={args.inner or 'about 20 ms'}, forward+backward; load average {os.getloadavg()[0]:.1f}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}"
    )
    header = (
        f"{'L':>2} {'paths':>5} | {'e3nn ms':>17} {'e3nn compiled':>17} {'e3nn v2 compiled':>17} {'cueq ms':>17} {'dense ms':>17} "
        f"{'torch path ms':>17} {'gaunt ms':>17} | {'e3nn/gaunt':>10} {'best/gaunt':>10} {'dense/gaunt':>11} "
        f"{'e3nn/torch':>10} | {'peak MB e3nn':>12} {'dense':>7} {'torch':>7} {'gaunt':>7} | compile s"
    )
    print(
        "times: min / median over the timed rounds; ratios of the minima (the least disturbed rounds); "
        "best/gaunt: the fastest of e3nn, compiled e3nn, compiled e3nn v2 and cuEquivariance against geomol; "
        "compile s: e3nn / e3nn v2"
    )
    print(header)
    print("-" * len(header))
    table: dict[int, dict[str, float]] = {}
    for lmax in args.lmax:
        k = (lmax + 1) ** 2
        x = torch.randn(args.n, args.channels, k, device=device, requires_grad=True)
        y = torch.randn(args.n, args.channels, k, device=device, requires_grad=True)
        grad = torch.randn(args.n, args.channels, k, device=device)
        methods: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], torch.Tensor]] = {}
        n_paths = 0
        if lmax <= args.skip_e3nn_above:
            tp = e3nn_uuu(lmax, args.channels).to(device)
            n_paths = len(tp.instructions)
            xe = sh_to_irreps(x.detach()).requires_grad_()
            ye = sh_to_irreps(y.detach()).requires_grad_()
            methods["e3nn"] = (tp, (xe, ye), sh_to_irreps(grad))
        compile_s = compile_v2 = float("nan")
        if lmax <= min(args.skip_e3nn_above, args.compile_e3nn_up_to):
            compiled = torch.compile(tp, fullgraph=True)
            start = time.perf_counter()
            step(compiled, (xe, ye), sh_to_irreps(grad))  # compiles forward and backward
            compile_s = time.perf_counter() - start
            methods["e3nn compiled"] = (compiled, (xe, ye), sh_to_irreps(grad))
            v2 = torch.compile(E3nnV2Product(lmax, args.channels).to(device), fullgraph=True)
            start = time.perf_counter()
            step(v2, (x, y), grad)
            compile_v2 = time.perf_counter() - start
            methods["e3nn v2"] = (v2, (x, y), grad)
        if use_cueq:
            cueq = CuEquivarianceProduct(lmax, args.channels, device)
            # cuEquivariance's ir_mul layout: degree blocks of [2l+1, C]
            xc, yc, gc = (
                torch.cat([t.detach()[:, :, l * l : (l + 1) ** 2].transpose(1, 2).reshape(args.n, -1) for l in range(lmax + 1)], 1)
                for t in (x, y, grad)
            )  # fmt: skip
            methods["cueq"] = (cueq, (xc.requires_grad_(), yc.requires_grad_()), gc)
        methods["dense"] = (DenseGridProduct(lmax, args.channels).to(device), (x, y), grad)
        methods["torch"] = (TorchPath(GauntTensorProduct(lmax, lmax, lmax, args.channels)).to(device), (x, y), grad)
        methods["gaunt"] = (GauntTensorProduct(lmax, lmax, lmax, args.channels).to(device), (x, y), grad)

        inner = {}
        for name, (module, inputs, g) in methods.items():
            for _ in range(args.warmup):
                sync(device)
                start = time.perf_counter()
                step(module, inputs, g)
                sync(device)
            inner[name] = args.inner or max(1, min(200, round(0.02 / (time.perf_counter() - start))))
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, (module, inputs, g) in methods.items():
                sync(device)
                start = time.perf_counter()
                for _ in range(inner[name]):
                    step(module, inputs, g)
                sync(device)
                times[name].append((time.perf_counter() - start) / inner[name])
        best = {name: 1e3 * min(t) for name, t in times.items()}
        table[lmax] = best
        median = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        peak = {name: peak_mb(*m, device) for name, m in methods.items()}
        nan = float("nan")
        names = ("e3nn", "e3nn compiled", "e3nn v2", "cueq", "dense", "torch", "gaunt")
        cells = {name: f"{best.get(name, nan):.2f} / {median.get(name, nan):.2f}" for name in names}
        e3 = best.get("e3nn", nan)
        peers = [best[name] for name in ("e3nn", "e3nn compiled", "e3nn v2", "cueq") if name in best]
        fastest = min(peers) if peers else nan
        print(
            f"{lmax:>2} {n_paths:>5} | {cells['e3nn']:>17} {cells['e3nn compiled']:>17} {cells['e3nn v2']:>17} {cells['cueq']:>17} "
            f"{cells['dense']:>17} {cells['torch']:>17} {cells['gaunt']:>17} | {e3 / best['gaunt']:>9.1f}x "
            f"{fastest / best['gaunt']:>9.1f}x {best['dense'] / best['gaunt']:>10.2f}x {e3 / best['torch']:>9.1f}x | "
            f"{peak.get('e3nn', nan):>12.1f} {peak['dense']:>7.1f} {peak['torch']:>7.1f} {peak['gaunt']:>7.1f} | "
            f"{compile_s:.0f} / {compile_v2:.0f}",
            flush=True,
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other processes share the cores)")
    if args.png:
        scaling_plot(table, args.png, f"N={args.n}, C={args.channels}, {args.dtype}, {args.threads} threads")


def fitted_exponent(lmaxes: list[int], times: list[float]) -> float:
    """Slope of log(time) against log(L) over L >= 2 (below that fixed costs dominate)."""
    points = [(math.log(l), math.log(t)) for l, t in zip(lmaxes, times) if l >= 2]
    if len(points) < 2:
        return float("nan")
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])


def scaling_plot(table: dict[int, dict[str, float]], path: str, subtitle: str) -> None:
    """Time against lmax on log-log axes, one line per method, the fitted exponent in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name in ("e3nn", "e3nn compiled", "e3nn v2", "cueq", "dense", "torch", "gaunt"):
        lmaxes = [l for l in sorted(table) if name in table[l]]
        if len(lmaxes) < 2:
            continue
        times = [table[l][name] for l in lmaxes]
        exponent = fitted_exponent(lmaxes, times)
        label = {"torch": "gaunt (torch path)", "gaunt": "gaunt (fused kernel)"}.get(name, name)
        ax.loglog(lmaxes, times, "o-", label=f"{label}: ~L^{exponent:.1f}")
        print(f"fitted exponent (L >= 2) {name}: {exponent:.2f}")
    ax.set_xticks(sorted(table), [str(l) for l in sorted(table)])
    ax.minorticks_off()
    ax.set_xlabel("lmax (inputs and output)")
    ax.set_ylabel("forward+backward time (ms)")
    ax.set_title(
        f"Channelwise product of SH features\n{subtitle}; {machine.cpu_description().split(',')[0]}", fontsize=9
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
