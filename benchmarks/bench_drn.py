"""Deep resistive networks on MNIST: epsim's epoch against the published code, same machine.

Times one training epoch slice (``--train-images`` images, batch 4, the preset's settings)
and a test slice (``--test-images``) with epsim's numba solver and, when
``--published-repo`` points at a checkout of rain-neuromorphics/energy-based-learning,
with that code's own DRN classes (``DeepResistiveEnergy``, ``QuadraticMinimizer``,
centered ``EquilibriumProp``, its ``Trainer``/``Evaluator`` loops and per-parameter SGD,
as its ``papers/fast-drn/drn.py`` sets them up) on ``--threads`` CPU threads. Both
are extrapolated to the full epoch (60,000 training + 10,000 test images) and the ratio is
printed. epsim's arithmetic rate is counted from its sweeps (a model of the work: the
dense products and the conductance update) and set against the machine's DGEMM rate.

    python benchmarks/bench_drn.py --data-dir DATA --models drn-xs drn-1h \\
        --published-repo PATH/energy-based-learning
"""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np

from epsim.cli import ArgumentParser, add_deprecated_alias, run, set_command_environment
from epsim.data import load_dataset
from epsim.solvers import make_solver
from epsim.training import build_network, layer_learning_rates, preset_config
from epsim.learning.ep import centered_ep, free_phase
from epsim.learning.optim import ProjectedSGD

set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)

TRAIN_FULL, TEST_FULL = 60_000, 10_000


def epsim_epoch(model, ds, n_train, n_test):
    """(train seconds, test seconds, model FLOPs of the train slice) for epsim."""
    cfg = preset_config(model, dataset="mnist")
    net = build_network(cfg, ds)
    net.init_params(np.random.default_rng(0), cfg.weight_gain, cfg.init)
    solver = make_solver(cfg)
    opt = ProjectedSGD(net, *layer_learning_rates(cfg, net), cfg.momentum)
    x, y, b = ds.x_train, ds.y_train, cfg.batch_size
    centered_ep(net, solver, x[:b], y[:b], cfg.beta, factored=True)  # compile
    free_phase(net, solver, ds.x_test[:500])
    sizes = net.layer_sizes
    flops = 0.0
    t = time.perf_counter()
    for k in range(0, n_train, b):
        r = centered_ep(net, solver, x[k:k + b], y[k:k + b], cfg.beta, factored=True)
        opt.step(r.grad_w, r.grad_b)
        flops += _ep_flops(sizes, len(y[k:k + b]), r.iterations)
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    for k in range(0, n_test, 500):
        free_phase(net, solver, ds.x_test[k:k + 500])
    return t_train, time.perf_counter() - t, flops


def _ep_flops(sizes, batch, sweeps):
    """Model count of one batch's floating-point work: the input drive once, every other
    dense product in each sweep of the three phases, and the rank-B update of each layer."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    first = 2.0 * batch * pairs[0][0] * pairs[0][1]
    per_sweep = sum(2 * 2.0 * batch * a * c for a, c in pairs[1:])
    update = 2.0 * batch * pairs[0][0] * pairs[0][1] + sum(2 * 2.0 * batch * a * c for a, c in pairs[1:])
    return first + sweeps * per_sweep + update


def published_epoch(model, ds, n_train, n_test, repo, threads):
    """(train seconds, test seconds) of the published code on the same images."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, repo)
    from model.function.cost import SquaredError
    from model.function.network import Network
    from model.resistive.minimizer import QuadraticMinimizer
    from model.resistive.network import DeepResistiveEnergy
    from training.epoch import Evaluator, Trainer
    from training.sgd import AugmentedFunction, EquilibriumProp

    cfg = preset_config(model, dataset="mnist")
    widths = [int(s.split(":")[1]) for s in cfg_arch(model)]
    shapes = [(2, 28, 28)] + [(w,) for w in widths]
    lrs_w = np.asarray(layer_learning_rates(cfg, build_network(cfg, ds))[0], dtype=float)
    lrs_w = np.broadcast_to(lrs_w, (len(widths),))
    lrs_b = np.broadcast_to(np.asarray(layer_learning_rates(cfg, build_network(cfg, ds))[1]), (len(widths),))
    iters = {"drn-xs": 4, "drn-1h": 4, "drn-xl": 4, "drn-2h": 5, "drn-3h": 6}[model]
    energy = DeepResistiveEnergy(shapes, [1.0] * len(widths), cfg.input_gain_V)
    energy.set_device("cpu")
    cost = SquaredError(energy.layers()[-1])
    network = Network(energy)
    augmented = AugmentedFunction(energy, cost)
    train_min = QuadraticMinimizer(augmented, network.free_layers())
    train_min.num_iterations, train_min.mode = iters, "asynchronous"
    estimator = EquilibriumProp(energy.params(), energy.layers(), augmented, cost, train_min)
    estimator.nudging, estimator.variant = cfg.beta, "centered"
    params = energy.params() + cost.params()
    rates = list(lrs_b) + list(lrs_w)
    optimizer = torch.optim.SGD([{"params": p.state, "lr": float(lr)} for p, lr in zip(params, rates)],
                                lr=0.1, momentum=0.0)
    infer_min = QuadraticMinimizer(energy, network.free_layers())
    infer_min.num_iterations, infer_min.mode = iters, "asynchronous"

    def loader(x, y, shuffle):
        data = torch.utils.data.TensorDataset(torch.tensor(x, dtype=torch.float32),
                                              torch.tensor(y, dtype=torch.int64))
        return torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=shuffle)

    class Indexed(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], self.y[i], i

    train_loader = loader(ds.x_train[:n_train], ds.y_train[:n_train], True)
    test_loader = torch.utils.data.DataLoader(Indexed(ds.x_test[:n_test], ds.y_test[:n_test]), batch_size=cfg.batch_size)
    trainer = Trainer(network, cost, params, train_loader, estimator, optimizer, infer_min)
    evaluator = Evaluator(network, cost, test_loader, infer_min)
    t = time.perf_counter()
    trainer.run()
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    evaluator.run()
    return t_train, time.perf_counter() - t


def cfg_arch(model):
    from epsim.models.registry import PRESETS

    return PRESETS[model]["arch"].format(K=10).split(",")


def dgemm_rate():
    """GFLOP/s of a 2048^3 float64 matrix product with the BLAS numpy uses."""
    a = np.random.default_rng(0).random((2048, 2048))
    a @ a
    t = time.perf_counter()
    a @ a
    return 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with the MNIST files")
    p.add_argument("--models", nargs="+", default=["drn-xs", "drn-1h"])
    p.add_argument("--train-images", type=int, default=6000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--published-repo", default=None, help="checkout of rain-neuromorphics/energy-based-learning")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of the published code")
    add_deprecated_alias(p, "--torch-threads", "--threads")
    args = p.parse_args(argv)
    ds = load_dataset("mnist", args.data_dir)
    rate = dgemm_rate()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"numpy DGEMM {rate:.1f} GFLOP/s; slices {args.train_images} train / {args.test_images} test images")
    print("\n| model | epsim epoch s | published epoch s | ratio | epsim GFLOP/s (model count) | of DGEMM |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        tr, te, flops = epsim_epoch(model, ds, args.train_images, args.test_images)
        ep = tr * TRAIN_FULL / args.train_images + te * TEST_FULL / args.test_images
        gflops = flops / tr / 1e9
        pub, ratio = "-", "-"
        if args.published_repo:
            ptr, pte = published_epoch(model, ds, args.train_images, args.test_images, args.published_repo,
                                       args.threads)
            pep = ptr * TRAIN_FULL / args.train_images + pte * TEST_FULL / args.test_images
            pub, ratio = f"{pep:.0f}", f"{pep / ep:.1f}x"
        print(f"| {model} | {ep:.1f} | {pub} | {ratio} | {gflops:.2f} | {gflops / rate:.0%} |", flush=True)


if __name__ == "__main__":
    sys.exit(run(main))
