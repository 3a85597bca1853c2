"""Equilibria per second: numba vs torch (CPU, and CUDA when present) on the circuit model.

Models (freshly initialised conductances, zero biases, input gain 16 V as in training):
- ``digits-cnn``: the registry's ``cnn`` on 8x8 digits (2x8x8 inputs -> 16x6x6 conv -> 10);
- ``mnist-mlp``: DRN-XS size, 784*2 -> 100 -> 10, on MNIST test images when
  ``--data-dir`` holds them (else uniform random images).

For each backend it times the free phase from 0 V and a full centered-EP step (free, +beta
and -beta phases, the nudged ones warm-started from the free state) on one batch, best of
``--repeats`` after a warm-up, and reports the agreement with numba's free state.

    python benchmarks/bench_torch_solver.py [--batch 1000] [--threads N] [--data-dir ../shared/data]
"""
from __future__ import annotations

import sys
import time

import numba
import numpy as np
import torch

from epsim.circuit.diodes import DiodeModel
from epsim.cli import ArgumentParser, run, set_command_environment
from epsim.data import load_dataset
from epsim.errors import EpsimError
from epsim.models.registry import build_circuit_model
from epsim.models.resistive import build_mlp, one_hot_targets
from epsim.solvers.numba_solver import NumbaSolver
from epsim.solvers.torch_solver import TorchCircuitSolver

set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)


def models(batch, data_dir, diode, seed=0):
    rng = np.random.default_rng(seed)
    d = DiodeModel(kind=diode)
    digits = load_dataset("digits")
    net = build_circuit_model("cnn", digits.image_shape, 10, input_gain_V=16.0, diode=d)
    net.init_params(rng)
    idx = rng.choice(len(digits.y_train), size=batch, replace=batch > len(digits.y_train))
    yield "digits-cnn", net, digits.x_train[idx], digits.y_train[idx]
    net = build_mlp((1, 28, 28), (100,), 10, input_gain_V=16.0, diode=d)
    net.init_params(rng)
    try:
        mnist = load_dataset("mnist", data_dir, test_subset=batch, seed=seed)
        x, y, src = mnist.x_test[:batch], mnist.y_test[:batch], "MNIST"
    except EpsimError:
        x, y, src = rng.uniform(0, 1, (batch, 1, 28, 28)), rng.integers(0, 10, batch), "random"
    yield f"mnist-mlp ({src})", net, x, y


def time_solver(solver, net, x, labels, beta, repeats):
    """(free seconds, EP-step seconds, free equilibrium, total sweeps of the EP step)."""
    v_in = net.input_voltages(x)
    target = one_hot_targets(labels, net.num_outputs)
    best_free, best_ep, free, sweeps = np.inf, np.inf, None, 0
    for _ in range(repeats + 1):  # first run: warm-up (JIT, allocator)
        t0 = time.perf_counter()
        p = solver.prepare(net, v_in)
        free = solver.solve(p, 0.0)
        t1 = time.perf_counter()
        plus = solver.solve(p, beta, target, init=free.v_free)
        minus = solver.solve(p, -beta, target, init=free.v_free)
        t2 = time.perf_counter()
        best_free, best_ep = min(best_free, t1 - t0), min(best_ep, t2 - t0)
        sweeps = sum(e.certificate.iterations for e in (free, plus, minus))
        for e in (free, plus, minus):
            e.certificate.require("benchmark solve")
    return best_free, best_ep, free, sweeps


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: theirs)")
    p.add_argument("--diode", default="ideal", choices=("ideal", "shockley"))
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--tol", type=float, default=1e-9, help="KCL tolerance (A)")
    p.add_argument("--data-dir", default="../shared/data")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    backends = [("numba", "cpu", "float64", lambda: NumbaSolver(tol_A=args.tol))]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for dt in ("float64", "float32"):
            backends.append(("torch", dev, dt, lambda dev=dev, dt=dt: TorchCircuitSolver(
                tol_A=args.tol, device=dev, dtype=dt)))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"batch {args.batch}, diode {args.diode}, tol {args.tol:g} A, torch threads "
          f"{torch.get_num_threads()}, numba threads {numba.get_num_threads()}, GPU: {gpu}")
    header = (f"{'model':<22} {'backend':<7} {'device':<6} {'dtype':<8} {'free s':>8} {'free eq/s':>10} "
              f"{'EP-step s':>10} {'EP eq/s':>9} {'sweeps':>7} {'max|dV| vs numba':>17}")
    print(header)
    print("-" * len(header))
    for name, net, x, labels in models(args.batch, args.data_dir, args.diode):
        ref = None
        for backend, dev, dt, make in backends:
            t_free, t_ep, free, sweeps = time_solver(make(), net, x, labels, args.beta, args.repeats)
            if ref is None:
                ref = free.v_free
            dv = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, free.v_free))
            n = len(labels)
            print(f"{name:<22} {backend:<7} {dev:<6} {dt:<8} {t_free:8.3f} {n / t_free:10.0f} "
                  f"{t_ep:10.3f} {3 * n / t_ep:9.0f} {sweeps:7d} {dv:17.2e}")


if __name__ == "__main__":
    sys.exit(run(main))
