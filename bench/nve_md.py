"""NVE molecular dynamics through ``GeomolCalculator``: does a trained force field conserve energy and keep
the molecule bonded? ASE's VelocityVerlet from an rMD17 test frame with Maxwell-Boltzmann velocities.

Prints the total-energy drift (slope of a linear fit, meV per atom per ps), its RMS fluctuation, the
largest bond stretch relative to the start (bonds: pairs closer than 1.2 × the sum of covalent radii in
the first frame), whether any bond broke (> 1.5 ×) or a new close contact formed, and ms per MD step.

    python bench/nve_md.py --model gaunt_rmd17_ethanol_cpu --molecule ethanol --ps 10
    python bench/nve_md.py --model outputs/ff/checkpoints/last.ckpt --data ../shared/data/rmd17 --ps 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase import Atoms, units
from ase.data import covalent_radii
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from machine import cpu_description  # bench/machine.py
from tqdm import tqdm

from geomol.calculators import GeomolCalculator
from geomol.data.rmd17 import split_file


def bonds(atoms: Atoms, factor: float = 1.2) -> list[tuple[int, int, float]]:
    pos, z = atoms.get_positions(), atoms.get_atomic_numbers()
    out = []
    for i in range(len(atoms)):
        for j in range(i + 1, len(atoms)):
            d = float(np.linalg.norm(pos[i] - pos[j]))
            if d < factor * (covalent_radii[z[i]] + covalent_radii[z[j]]):
                out.append((i, j, d))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="pretrained name or checkpoint path")
    parser.add_argument("--molecule", default="ethanol")
    parser.add_argument("--data", default="../shared/data/rmd17", help="folder of rmd17_<molecule>_test_01.npz")
    parser.add_argument("--frame", type=int, default=0, help="test frame to start from")
    parser.add_argument("--ps", type=float, default=10.0, help="simulated time")
    parser.add_argument("--dt", type=float, default=0.5, help="time step (fs)")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (stderr)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = np.load(split_file(args.data, args.molecule, "test"))
    atoms = Atoms(numbers=data["nuclear_charges"], positions=data["coords"][args.frame])
    atoms.calc = GeomolCalculator(args.model)
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=np.random.default_rng(args.seed))
    Stationary(atoms)
    ZeroRotation(atoms)
    start_bonds = bonds(atoms)
    steps = int(round(args.ps * 1000 / args.dt))
    md = VelocityVerlet(atoms, timestep=args.dt * units.fs)
    times, totals, stretch, broken = [], [], 0.0, False
    tic = time.perf_counter()
    for k in tqdm(range(steps + 1), desc="MD steps", unit="step", mininterval=10, disable=args.no_progress):
        if k:
            md.run(1)
        if k % 10 == 0:
            times.append(k * args.dt / 1000.0)  # ps
            totals.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
            pos = atoms.get_positions()
            for i, j, d0 in start_bonds:
                ratio = float(np.linalg.norm(pos[i] - pos[j])) / d0
                stretch = max(stretch, ratio)
                broken |= ratio > 1.5
    seconds = time.perf_counter() - tic
    e = np.array(totals) * 1000.0 / len(atoms)  # meV per atom
    slope = np.polyfit(np.array(times), e, 1)[0]
    new_contacts = len(bonds(atoms)) - len(start_bonds)
    print(f"{cpu_description()}, {args.threads} thread(s); model {args.model}")
    print(f"{args.molecule} ({len(atoms)} atoms), frame {args.frame}, {args.temperature:.0f} K start, dt {args.dt} fs, "
          f"{steps} steps = {args.ps:g} ps, seed {args.seed}")  # fmt: skip
    print(f"total-energy drift: {slope:+.3f} meV/atom/ps; fluctuation (RMS about the fit): "
          f"{np.std(e - np.polyval(np.polyfit(times, e, 1), times)):.3f} meV/atom")  # fmt: skip
    print(f"bonds: {len(start_bonds)}, largest stretch {stretch:.3f}x, broken (>1.5x): {broken}, "
          f"bonded pairs at the end minus at the start: {new_contacts:+d}")  # fmt: skip
    print(f"final temperature {atoms.get_temperature():.0f} K; {1000 * seconds / max(steps, 1):.1f} ms per MD step")


if __name__ == "__main__":
    main()
