"""Wall time and accuracy of the main job, and numba equilibrium throughput.

Runs the training library exactly as ``python -m epsim.train`` does (defaults: digits,
20 epochs, batch 8, centered EP, numba backend) for the circuit CNN and MLP, then times
the free phase of the default CNN at several batch sizes with ideal and Shockley diodes.
Prints markdown tables (paste them into BENCHMARKS.md with the machine they ran on).

    python benchmarks/bench_train.py [--models cnn mlp] [--epochs 20] [--repeats 3]
"""
from __future__ import annotations

import sys
import os
import platform
import time

import numpy as np

from epsim.circuit.diodes import DiodeModel
from epsim.cli import ArgumentParser, run, set_command_environment
from epsim.data import load_dataset
from epsim.learning.ep import free_phase
from epsim.models.registry import build_circuit_model
from epsim.solvers.numba_solver import NumbaSolver
from epsim.training import TrainConfig, train

set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)


def bench_training(models, epochs):
    ds = load_dataset("digits")
    print("| model | epochs | test accuracy | train accuracy | wall s | max KCL residual A |")
    print("|---|---|---|---|---|---|")
    for name in models:
        m = train(TrainConfig(model=name, epochs=epochs), ds, progress=False, log=lambda *_: None)
        print(f"| {name} | {epochs} | {m['test_accuracy']:.4f} | {m['train_accuracy']:.4f} | "
              f"{m['wall_seconds']:.1f} | {m['max_residual_A']:.1e} |")


def bench_solver(repeats):
    ds = load_dataset("digits")
    print("\n| diode | batch | equilibria/s | sweeps | max KCL residual A |")
    print("|---|---|---|---|---|")
    for diode in ("ideal", "shockley"):
        net = build_circuit_model("cnn", ds.image_shape, 10, diode=DiodeModel(kind=diode))
        net.init_params(np.random.default_rng(0))
        solver = NumbaSolver()
        for batch in (1, 32, 360):
            x = ds.x_test[:batch]
            eq = free_phase(net, solver, x)  # warm-up (JIT) and certificate
            best = np.inf
            for _ in range(repeats):
                t = time.perf_counter()
                n = 0
                while time.perf_counter() - t < 0.5:
                    free_phase(net, solver, x)
                    n += 1
                best = min(best, (time.perf_counter() - t) / n)
            print(f"| {diode} | {batch} | {batch / best:,.0f} | {eq.certificate.iterations} | "
                  f"{eq.certificate.max_residual_A:.1e} |")


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cnn", "mlp"])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    bench_training(args.models, args.epochs)
    bench_solver(args.repeats)


if __name__ == "__main__":
    sys.exit(run(main))
