"""Cost of differential layers: one centered EP step of a circuit with and without them.

Both circuits are built from the same ``--model``/``--arch`` and seed; the differential one
presents every hidden layer as ``+A v`` and ``-A v`` (twice the crossbar inputs above the
first layer, ``--differential`` of ``epsim.train``). Its ``-v`` halves are given random
conductances too (default) so that the drive kernels do the same work as in a trained
circuit; with ``--start-from-zero`` they start at 0, as training does. The two alternate in the
same process, ``--rounds`` rounds of ``--steps`` EP steps (free, +beta and -beta phases and
the learning rule) on MNIST training batches; the median seconds per step and the sweeps
per step are printed, and the ratio is the figure to read on a shared machine.

    python benchmarks/bench_differential.py --data-dir ../shared/data
    python benchmarks/bench_differential.py --data-dir ../shared/data --model cnn-deep --rounds 5 --steps 5
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's epsim

from epsim.cli import ArgumentParser, run, set_command_environment

set_command_environment()

import numpy as np  # noqa: E402

from epsim.data import load_dataset  # noqa: E402
from epsim.learning.ep import centered_ep  # noqa: E402
from epsim.models.presentation import halves  # noqa: E402
from epsim.solvers import make_solver  # noqa: E402
from epsim.training import build_network, preset_config  # noqa: E402


def build(model, arch, differential, dataset, seed, trained_like):
    cfg = preset_config(model, arch=arch, differential=differential)
    net = build_network(cfg, dataset)
    rng = np.random.default_rng(seed)
    net.init_params(rng, cfg.weight_gain, cfg.init)
    if differential and trained_like:
        for l in range(1, net.num_layers):
            pos, neg = halves(net.connections[l], net.w[l], net.layer_shapes[l])
            neg[...] = rng.permutation(pos.reshape(-1)).reshape(pos.shape)  # same distribution as +v's
    return cfg, net


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder with MNIST (mnist.npz)")
    p.add_argument("--model", default="cnn-deep", help="circuit model (default: cnn-deep)")
    p.add_argument("--arch", default=None, help="architecture spec instead of the model's (default: none)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default: 5)")
    p.add_argument("--steps", type=int, default=5, help="EP steps per round and circuit (default: 5)")
    p.add_argument("--start-from-zero", action="store_true",
                   help="leave the -v halves at 0, as training starts (default: random, as trained)")
    p.add_argument("--seed", type=int, default=0, help="seed of the conductances and batches (default: 0)")
    args = p.parse_args(argv)
    dataset = load_dataset("mnist", args.data_dir, train_subset=2000, test_subset=10)
    variants = {}
    for differential in (False, True):
        cfg, net = build(args.model, args.arch, differential, dataset, args.seed, not args.start_from_zero)
        variants["differential" if differential else "plain"] = (cfg, net, make_solver(cfg))
    rng = np.random.default_rng(args.seed + 1)
    times = {k: [] for k in variants}
    sweeps = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (cfg, net, solver) in variants.items():
            idx = rng.integers(0, len(dataset.y_train), (args.steps, cfg.batch_size))
            centered_ep(net, solver, dataset.x_train[idx[0]], dataset.y_train[idx[0]], cfg.beta)  # warm
            t0 = time.perf_counter()
            for k in range(args.steps):
                r = centered_ep(net, solver, dataset.x_train[idx[k]], dataset.y_train[idx[k]], cfg.beta)
                sweeps[name].append(int(r.iterations))
            times[name].append((time.perf_counter() - t0) / args.steps)
    out = {name: {"s_per_step": float(np.median(times[name])), "sweeps_per_step": float(np.median(sweeps[name])),
                  "num_params": int(variants[name][1].num_params())} for name in variants}
    out["ratio"] = out["differential"]["s_per_step"] / out["plain"]["s_per_step"]
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(run(main))
