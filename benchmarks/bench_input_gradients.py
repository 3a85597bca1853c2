"""Time per image of a circuit's input gradient along each path the attacks use.

Loads a circuit checkpoint (default: the digits circuit CNN of ``python -m epsim.train``,
trained here), predicts a batch of test images with the numba solver (as an attack step
does), then times ``dL/dx`` of the cross-entropy by BPTT, by implicit differentiation (the
adjoint solve by conjugate gradients, with and without the Jacobi preconditioner) and by the
EP estimate (its free phase from 0 V, or from the predictor's equilibrium of the same images as
in an attack step), on one thread, best of ``--repeats``. Prints a Markdown table.

    python benchmarks/bench_input_gradients.py [--checkpoint CKPT --data-dir DATA] [--images 20]
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from epsim.cli import ArgumentParser, run, set_command_environment, set_threads
from epsim.data import default_data_dir, load_dataset
from epsim.robustness.adapters import load_model
from epsim.robustness.attacks import make_loss
from epsim.robustness.input_gradients import implicit_input_gradient

from _digits import digits_checkpoint

set_command_environment()


def best_of(repeats, fn):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a circuit checkpoint (default: train the digits CNN)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: $EPSIM_DATA_DIR or ./data)")
    p.add_argument("--images", type=int, default=20, help="images per gradient call (the first N test images)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per row (the best is reported)")
    args = p.parse_args(argv)
    set_threads(1)
    loaded = load_model(digits_checkpoint(args.checkpoint))
    a = loaded.adapter
    ds = load_dataset(loaded.dataset, args.data_dir or default_data_dir())
    x, y = ds.x_test[:args.images].astype(np.float64), ds.y_test[:args.images]
    n = len(y)
    a.predict(x)  # compile
    t_pred, _ = best_of(args.repeats, lambda: a.predict(x))
    eq = a._last[1]
    yt = torch.as_tensor(y)
    ce = make_loss("ce", a.logit_scale)

    def implicit(jacobi):
        return implicit_input_gradient(a.circuit, x, lambda v: ce(v, yt), tol_A=a.tol_A, max_iter=a.max_iter,
                                       strict=False, equilibrium=eq, jacobi=jacobi)

    print(f"{a.name} on {ds.name}, {n} images, one thread; KCL tolerance {a.tol_A:g} A, adjoint relative "
          f"residual 1e-10")
    print("| what | ms per image | adjoint CG iterations |")
    print("|---|---|---|")
    print(f"| predict (numba solve) | {1e3 * t_pred / n:.2f} | |")
    ref = None
    for label, jacobi in (("implicit, plain CG", False), ("implicit, Jacobi-preconditioned CG", True)):
        implicit(jacobi)
        t, r = best_of(args.repeats, lambda: implicit(jacobi))
        g = np.asarray(r.grad_x).reshape(n, -1)
        note = ""
        if ref is not None:
            rel = np.linalg.norm(g - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-300)
            note = f" (gradient within {rel.max():.1e} of the plain CG's)"
        ref = g if ref is None else ref
        print(f"| {label}{note} | {1e3 * t / n:.2f} | {r.extras['adjoint_iterations']} |")
    for label, path, warm in (("bptt", "bptt", True), ("ep, free phase from 0 V", "ep", False),
                              ("ep, free phase from the predictor's equilibrium (as under attack)", "ep", True)):
        last = a._last
        a._last = last if warm else None
        a.input_gradient(x, y, "ce", path)
        t, _ = best_of(args.repeats, lambda: a.input_gradient(x, y, "ce", path))
        a._last = last
        print(f"| {label} | {1e3 * t / n:.2f} | |")


if __name__ == "__main__":
    sys.exit(run(main))
