"""Tied-conv drive kernels: plain reference loops vs epsim's kernels, same process, interleaved.

Kernel level: ``_conv_forward`` (drive into a conv's output nodes) and ``_conv_transpose``
(drive back into its input nodes) on the layer shapes of ``cnn-deep`` on MNIST
(2x28x28 -> 16 s1 -> 32 s2 -> 64 s2 -> 64 s2, 3x3 kernels, no padding), at ``--batch``,
against the reference loops (innermost over the 3x3 kernel, no use of zeros) with the same
inputs: voltages ~ N(0, 0.2 V) with ``--zero-fraction`` of them at exactly 0 V (clamped units,
black pixels). Prints the median time per call of each and the largest relative difference.

EP step (with ``--data-dir``): one centered EP step (free, +beta and -beta phases and the
learning rule) of a freshly initialised ``cnn-deep`` on MNIST training batches, in worker
processes that alternate between the reference kernels and epsim's (the reference workers
compile the solver against the reference loops into a temporary numba cache).

Timings on a shared machine are noisy: the variants alternate, ``--repeats`` rounds, and the
medians are reported.

    python benchmarks/bench_conv_kernels.py
    python benchmarks/bench_conv_kernels.py --data-dir ../shared/data --ep-steps 5 --ep-rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's epsim

from epsim.cli import ArgumentParser, run, set_command_environment

set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

# (c_in, h, w, c_out, stride) of cnn-deep's conv crossbars on MNIST (3x3 kernels)
CNN_DEEP_LAYERS = [(2, 28, 28, 16, 1), (16, 26, 26, 32, 2), (32, 12, 12, 64, 2), (64, 5, 5, 64, 2)]
KERNEL = 3


@nb.njit(parallel=True, cache=True)
def reference_forward(w, v_in, stride, out):
    """``out`` (B, C_out, H_out, W_out) = drive of ``v_in`` (B, C_in, H, W) through ``w`` (C_out, C_in, k, k)."""
    co_n, ci_n, k, _ = w.shape
    h_out, w_out = out.shape[2], out.shape[3]
    for b in nb.prange(v_in.shape[0]):
        for co in range(co_n):
            for y in range(h_out):
                for x in range(w_out):
                    acc = 0.0
                    for ci in range(ci_n):
                        for dy in range(k):
                            for dx in range(k):
                                acc += w[co, ci, dy, dx] * v_in[b, ci, y * stride + dy, x * stride + dx]
                    out[b, co, y, x] = acc


@nb.njit(parallel=True, cache=True)
def reference_transpose(w, v_out, stride, out):
    """``out`` (B, C_in, H, W) += transpose drive of ``v_out`` (B, C_out, H_out, W_out) through ``w``."""
    co_n, ci_n, k, _ = w.shape
    h_out, w_out = v_out.shape[2], v_out.shape[3]
    for b in nb.prange(v_out.shape[0]):
        for co in range(co_n):
            for y in range(h_out):
                for x in range(w_out):
                    v = v_out[b, co, y, x]
                    for ci in range(ci_n):
                        for dy in range(k):
                            for dx in range(k):
                                out[b, ci, y * stride + dy, x * stride + dx] += w[co, ci, dy, dx] * v


@nb.njit(cache=True)
def _reference_pad(v, pad):
    b, c, h, w = v.shape
    out = np.zeros((b, c, h + 2 * pad, w + 2 * pad))
    out[:, :, pad:pad + h, pad:pad + w] = v
    return out


@nb.njit(cache=True)
def reference_forward_padded(w, v_in, stride, pad, out):
    reference_forward(w, _reference_pad(v_in, pad), stride, out)


@nb.njit(cache=True)
def reference_transpose_padded(w, v_out, stride, pad, out):
    b, c, h, wd = out.shape
    full = np.zeros((b, c, h + 2 * pad, wd + 2 * pad))
    reference_transpose(w, v_out, stride, full)
    out += full[:, :, pad:pad + h, pad:pad + wd]


def _time_calls(fn, args, reset, calls):
    """Seconds per call of ``fn(*args)`` over ``calls`` calls (``reset()`` before each, untimed)."""
    total = 0.0
    for _ in range(calls):
        reset()
        t = time.perf_counter()
        fn(*args)
        total += time.perf_counter() - t
    return total / calls


def kernel_table(args):
    from epsim.models.connections import _conv_forward, _conv_transpose
    rng = np.random.default_rng(0)
    rows = []
    for ci, h, wd, co, s in CNN_DEEP_LAYERS:
        h_out, w_out = (h - KERNEL) // s + 1, (wd - KERNEL) // s + 1
        w = rng.uniform(0.0, 1.0, (co, ci, KERNEL, KERNEL))
        v_in = rng.normal(0.0, 0.2, (args.batch, ci, h, wd))
        v_in[rng.random(v_in.shape) < args.zero_fraction] = 0.0
        v_out = rng.normal(0.0, 0.2, (args.batch, co, h_out, w_out))
        v_out[rng.random(v_out.shape) < args.zero_fraction] = 0.0
        fwd = {k: np.zeros((args.batch, co, h_out, w_out)) for k in ("ref", "new")}
        back = {k: np.zeros((args.batch, ci, h, wd)) for k in ("ref", "new")}
        kernels = {"fwd": {"ref": reference_forward, "new": _conv_forward},
                   "back": {"ref": reference_transpose, "new": _conv_transpose}}
        for k in ("ref", "new"):  # compile
            kernels["fwd"][k](w, v_in, s, fwd[k])
            back[k][...] = 0.0
            kernels["back"][k](w, v_out, s, back[k])
        diff_f = np.max(np.abs(fwd["new"] - fwd["ref"])) / np.max(np.abs(fwd["ref"]))
        diff_b = np.max(np.abs(back["new"] - back["ref"])) / np.max(np.abs(back["ref"]))
        times = {(d, k): [] for d in ("fwd", "back") for k in ("ref", "new")}
        for _ in range(args.repeats):
            for k in ("ref", "new"):
                times["fwd", k].append(_time_calls(kernels["fwd"][k], (w, v_in, s, fwd[k]), lambda: None,
                                                   args.calls))
                times["back", k].append(_time_calls(kernels["back"][k], (w, v_out, s, back[k]),
                                                    lambda b=back[k]: b.fill(0.0), args.calls))
        med = {key: float(np.median(v)) for key, v in times.items()}
        rows.append((f"{ci}x{h}x{wd} -> {co} s{s}", med, max(diff_f, diff_b)))
    print(f"\nKernel time per call, batch {args.batch}, {nb.get_num_threads()} numba thread(s), "
          f"{args.zero_fraction:.0%} of the voltages at 0 V, median of {args.repeats} rounds x {args.calls} calls")
    print("| layer (in -> out, stride) | forward ref ms | forward new ms | speed-up "
          "| transpose ref ms | transpose new ms | speed-up | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    tot = {key: 0.0 for key in rows[0][1]}
    for name, med, diff in rows:
        for key in med:
            tot[key] += med[key]
        print(f"| {name} | {med['fwd', 'ref'] * 1e3:.3f} | {med['fwd', 'new'] * 1e3:.3f} | "
              f"{med['fwd', 'ref'] / med['fwd', 'new']:.1f}x | {med['back', 'ref'] * 1e3:.3f} | "
              f"{med['back', 'new'] * 1e3:.3f} | {med['back', 'ref'] / med['back', 'new']:.1f}x | {diff:.1e} |")
    print(f"| all four | {tot['fwd', 'ref'] * 1e3:.3f} | {tot['fwd', 'new'] * 1e3:.3f} | "
          f"{tot['fwd', 'ref'] / tot['fwd', 'new']:.1f}x | {tot['back', 'ref'] * 1e3:.3f} | "
          f"{tot['back', 'new'] * 1e3:.3f} | {tot['back', 'ref'] / tot['back', 'new']:.1f}x | |")


def ep_worker(args):
    """Times ``--ep-steps`` centered EP steps of cnn-deep; prints one JSON line."""
    import epsim.models.connections as conn_mod
    import epsim.solvers.numba_solver as solver_mod
    if args.ep_worker == "ref":
        for mod in (conn_mod, solver_mod):
            mod._conv_forward, mod._conv_transpose = reference_forward, reference_transpose
            mod._conv_forward_padded, mod._conv_transpose_padded = (reference_forward_padded,
                                                                    reference_transpose_padded)
    from epsim.data import load_dataset
    from epsim.learning.ep import centered_ep
    from epsim.solvers import make_solver
    from epsim.training import build_network, preset_config
    ds = load_dataset("mnist", args.data_dir)
    cfg = preset_config("cnn-deep", dataset="mnist")
    net = build_network(cfg, ds)
    net.init_params(np.random.default_rng(0), cfg.weight_gain, cfg.init)
    solver = make_solver(cfg)
    x, y, b = ds.x_train, ds.y_train, cfg.batch_size
    centered_ep(net, solver, x[:b], y[:b], cfg.beta, target_high_V=cfg.target_high_V, factored=True)  # compile
    seconds, sweeps, sums = [], [], []
    for k in range(1, args.ep_steps + 1):
        xb, yb = x[k * b:(k + 1) * b], y[k * b:(k + 1) * b]
        t = time.perf_counter()
        r = centered_ep(net, solver, xb, yb, cfg.beta, target_high_V=cfg.target_high_V, factored=True)
        seconds.append(time.perf_counter() - t)
        sweeps.append(int(r.iterations))
        sums.append([float(np.sum(np.abs(g.dense() if hasattr(g, "dense") else g))) for g in r.grad_w])
    print(json.dumps({"seconds": seconds, "sweeps": sweeps, "grad_abs_sums": sums}))


def _ep_runs(args, cache):
    """Worker outputs of ``--ep-rounds`` alternating rounds: {"ref": [...], "new": [...]};
    the reference workers compile into the numba cache directory ``cache``."""
    runs = {"ref": [], "new": []}
    for _ in range(args.ep_rounds):
        for kind in ("ref", "new"):
            env = dict(os.environ)
            if kind == "ref":
                env["NUMBA_CACHE_DIR"] = cache  # keep the reference build out of the package's cache
            cmd = [sys.executable, os.path.abspath(__file__), "--ep-worker", kind, "--data-dir", args.data_dir,
                   "--ep-steps", str(args.ep_steps), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            runs[kind].append(json.loads(out.strip().splitlines()[-1]))
    return runs


def ep_table(args):
    with tempfile.TemporaryDirectory(prefix="bench_conv_ref_cache_") as cache:
        runs = _ep_runs(args, cache)
    med = {k: float(np.median([s for r in v for s in r["seconds"]])) for k, v in runs.items()}
    sweeps = {k: v[0]["sweeps"] for k, v in runs.items()}
    rel = max(abs(a - c) / max(abs(c), 1e-300)
              for sr, sn in zip(runs["ref"][0]["grad_abs_sums"], runs["new"][0]["grad_abs_sums"])
              for a, c in zip(sn, sr))
    print(f"\nOne centered EP step of cnn-deep on MNIST (batch 4, fresh init, seed 0), median over "
          f"{args.ep_rounds} rounds x {args.ep_steps} steps")
    print("| kernels | s per EP step | sweeps per step (3 phases) |")
    print("|---|---|---|")
    for k, name in (("ref", "reference loops"), ("new", "epsim")):
        print(f"| {name} | {med[k]:.3f} | {', '.join(map(str, sweeps[k]))} |")
    print(f"speed-up per EP step: {med['ref'] / med['new']:.2f}x; "
          f"max relative difference of the gradients' |.| sums: {rel:.1e}")


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=4, help="samples per kernel call")
    p.add_argument("--zero-fraction", type=float, default=0.5, help="share of the voltages at exactly 0 V")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds of the kernel timings")
    p.add_argument("--calls", type=int, default=50, help="kernel calls per round")
    p.add_argument("--threads", type=int, default=1, help="numba threads (the solver uses 1 at batch 4)")
    p.add_argument("--data-dir", default=None, help="MNIST directory: also time EP steps of cnn-deep")
    p.add_argument("--ep-steps", type=int, default=5, help="timed EP steps per worker process")
    p.add_argument("--ep-rounds", type=int, default=3, help="alternating reference/epsim worker pairs")
    p.add_argument("--ep-worker", choices=("ref", "new"), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    nb.set_num_threads(args.threads)
    if args.ep_worker:
        ep_worker(args)
        return
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}, "
          f"{os.cpu_count()} cores")
    kernel_table(args)
    if args.data_dir:
        ep_table(args)


if __name__ == "__main__":
    sys.exit(run(main))
