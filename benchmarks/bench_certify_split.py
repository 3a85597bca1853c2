"""How much splitting the box tightens the circuit certificate, and what it costs.

Trains the default digits circuit CNN (``python -m epsim.train``, seed 0) unless
``--checkpoint`` is given, then certifies all 360 digits test images at each ε with the
basic certificate (two solves per image) and with :func:`epsim.robustness.certify.certify_split`
at ``--splits`` pixels (2 + 2·2^k solves per image the basic box leaves uncertified).

    python benchmarks/bench_certify_split.py [--eps 0.0313725 0.05] [--splits 2 4 6]
"""
from __future__ import annotations

import sys
import time

from epsim.cli import ArgumentParser, run, set_command_environment
from epsim.data import load_dataset
from epsim.models.loading import load_network
from epsim.robustness.certify import certify_box, certify_split
from epsim.solvers.numba_solver import NumbaSolver

from _digits import digits_checkpoint

set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a digits circuit checkpoint (default: train one)")
    p.add_argument("--eps", type=float, nargs="+", default=[0.0313725, 0.05], help="L-inf radii")
    p.add_argument("--splits", type=int, nargs="+", default=[2, 4, 6], help="pixels split per image")
    args = p.parse_args(argv)
    ckpt = digits_checkpoint(args.checkpoint)
    net, _ = load_network(ckpt)
    ds = load_dataset("digits")
    solver = NumbaSolver(tol_A=1e-9, max_iter=100000)
    print("| ε | basic certified | split pixels | certified | mean solves per image | wall (s) |")
    print("|---|---|---|---|---|---|")
    for eps in args.eps:
        basic = certify_box(net, solver, ds.x_test, ds.y_test, eps).certified.mean()
        for k in args.splits:
            t0 = time.perf_counter()
            cert, solves = certify_split(net, solver, ds.x_test, ds.y_test, eps, split_pixels=k)
            print(f"| {eps:.4g} | {basic:.4f} | {k} | {cert.mean():.4f} | {solves.mean():.1f} | "
                  f"{time.perf_counter() - t0:.1f} |")


if __name__ == "__main__":
    sys.exit(run(main))
