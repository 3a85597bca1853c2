"""Transient simulation of the digits circuit CNN over the whole digits test set (360 images).

Trains the default digits circuit CNN (``python -m epsim.train``, seed 0) unless
``--checkpoint`` is given, then simulates the free phase of all 360 test images in one batch
from 0 V (the inputs switched on at t = 0), with ideal and with Shockley diodes, and prints
per diode model: wall time (JIT warmed up on 2 images first) with the powers recorded (what
``epsim.energy`` simulates) and without them (what an early readout simulates), accepted/rejected
steps, mean block sweeps per step, and the median settling time (outputs within 1 mV of DC).

    python benchmarks/bench_transient.py [--t-stop 6e-8] [--dt-max 1e-9] [--lte-tol 1e-4]
"""
from __future__ import annotations

import sys
import time

import numpy as np

from epsim.circuit.compile import with_diode
from epsim.cli import ArgumentParser, run, set_command_environment
from epsim.data import load_dataset
from epsim.models.loading import load_network
from epsim.solvers.numba_solver import NumbaSolver
from epsim.solvers.transient import settling_times_s, simulate

from _digits import digits_checkpoint

set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a digits circuit checkpoint (default: train one)")
    p.add_argument("--t-stop", type=float, default=6e-8, help="window (s)")
    p.add_argument("--dt-max", type=float, default=1e-9, help="largest step (s)")
    p.add_argument("--lte-tol", type=float, default=1e-4, help="truncation error per step (V)")
    p.add_argument("--tol", type=float, default=1e-9, help="KCL tolerance per step (A)")
    args = p.parse_args(argv)
    ckpt = digits_checkpoint(args.checkpoint)
    net0, _ = load_network(ckpt)
    ds = load_dataset("digits")
    print("| diodes | images | wall (s) | wall without powers (s) | steps (rejected) | sweeps/step | "
          "median settling (ns) |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("ideal", "shockley"):
        net = with_diode(net0, kind)
        v_in = net.input_voltages(ds.x_test)
        simulate(net, v_in[:2], t_stop_s=args.t_stop, dt_max_s=args.dt_max, lte_tol_V=args.lte_tol, tol_A=args.tol)
        kw = dict(t_stop_s=args.t_stop, dt_max_s=args.dt_max, lte_tol_V=args.lte_tol, tol_A=args.tol, probe_nodes=0)
        t0 = time.perf_counter()
        tr = simulate(net, v_in, **kw)
        wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        simulate(net, v_in, powers=False, **kw)
        wall_bare = time.perf_counter() - t0
        dc = NumbaSolver(tol_A=args.tol, max_iter=100000)
        eq = dc.solve(dc.prepare(net, v_in), 0.0)
        settle, _ = settling_times_s(tr, eq.v_output, 1e-3)
        print(f"| {kind} | {len(v_in)} | {wall:.1f} | {wall_bare:.1f} | {len(tr.t_s) - 1} ({tr.extras['rejected_steps']}) | "
              f"{tr.sweeps.mean():.2f} | {np.median(settle) * 1e9:.1f} |")


if __name__ == "__main__":
    sys.exit(run(main))
