"""One table of the numbers that matter for speed (issue: scale and speed).

Rows:
- numba vs ngspice ``.op`` on the same netlist (~1e5 elements: the MNIST MLP's 1568x64
  input crossbar with Shockley diodes): seconds per sample, ngspice for one sample per
  run, numba for a batch of ``--batch`` samples; throughput ratio and max |dV|.
- equilibria per second of the free phase, numba vs torch-CPU (float64), digits CNN and
  the DRN-XS-size MLP (1568-100-10), batch ``--batch``.
- one MNIST epoch of the DRN-XS-size circuit MLP (centered EP, batch ``--epoch-batch``),
  wall seconds and test accuracy after it; peak resident memory of this process.

    python benchmarks/suite.py [--data-dir ../shared/data] [--batch 1000] [--skip-epoch]
"""
from __future__ import annotations

import sys
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from epsim.circuit.compile import compile_network, layer_node_names
from epsim.circuit.diodes import DiodeModel
from epsim.circuit.spice_writer import write_netlist
from epsim.cli import ArgumentParser, run, set_command_environment
from epsim.data import load_dataset
from epsim.learning.ep import free_phase
from epsim.models.registry import build_circuit_model
from epsim.models.resistive import build_mlp
from epsim.solvers.ngspice import default_program, run_ngspice
from epsim.solvers.numba_solver import NumbaSolver
from epsim.training import TrainConfig, train

set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)


def best_time(fn, repeats=3):
    fn()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def spice_row(batch, tmp):
    rng = np.random.default_rng(0)
    net = build_mlp((1, 28, 28), (64,), 10, input_gain_V=4.0, diode=DiodeModel("shockley"))
    net.init_params(rng)
    net.b = [rng.uniform(-0.3, 0.3, size=b.shape) for b in net.b]
    x = rng.uniform(size=(batch, 1, 28, 28))
    solver = NumbaSolver(tol_A=1e-15, max_iter=100000)
    t_numba = best_time(lambda: free_phase(net, solver, x)) / batch
    eq = free_phase(net, solver, x[:1])
    nl = compile_network(net, net.input_voltages(x[:1])[0])
    path = write_netlist(nl, Path(tmp) / "mnist_mlp.cir")
    t0 = time.perf_counter()
    table = run_ngspice(path)
    t_spice = time.perf_counter() - t0
    names = layer_node_names(net)
    dv = max(float(np.max(np.abs(np.array([table[n] for n in names[l]]) - eq.v_free[l - 1][0])))
             for l in range(1, net.num_layers + 1))
    return (f"numba vs ngspice .op, {nl.num_elements():,} elements", f"{t_spice:.3f} s/sample",
            f"{t_numba * 1e3:.3f} ms/sample (batch {batch})", f"{t_spice / t_numba:,.0f}x, max |dV| {dv:.1e} V")


def torch_rows(batch):
    from epsim.solvers.torch_solver import TorchCircuitSolver

    rows = []
    digits = load_dataset("digits")
    rng = np.random.default_rng(0)
    cnn = build_circuit_model("cnn", digits.image_shape, 10)
    cnn.init_params(rng)
    mlp = build_circuit_model("mlp", (1, 28, 28), 10)
    mlp.init_params(rng)
    for name, net, x in (("digits CNN", cnn, digits.x_train[rng.integers(0, 1437, batch)]),
                         ("MLP 1568-100-10", mlp, rng.uniform(size=(batch, 1, 28, 28)))):
        t_n = best_time(lambda: free_phase(net, NumbaSolver(), x))
        t_t = best_time(lambda: free_phase(net, TorchCircuitSolver(device="cpu"), x))
        rows.append((f"free-phase equilibria/s, {name}", f"numba {batch / t_n:,.0f}/s",
                     f"torch-CPU {batch / t_t:,.0f}/s", f"numba/torch {t_t / t_n:.1f}x"))
    return rows


def epoch_row(data_dir, batch):
    ds = load_dataset("mnist", data_dir)
    cfg = TrainConfig(dataset="mnist", model="mlp", epochs=1, batch_size=batch, lr=0.05,
                      lr_schedule="constant")
    m = train(cfg, ds, progress=False, log=lambda *_: None)
    return (f"MNIST epoch, DRN-XS-size circuit MLP, batch {batch}", f"{m['wall_seconds']:.1f} s",
            f"test accuracy {m['test_accuracy']:.4f} after 1 epoch",
            "incl. test-set evaluation")


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("EPSIM_DATA_DIR", "../shared/data"))
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--epoch-batch", type=int, default=8)
    p.add_argument("--skip-epoch", action="store_true")
    args = p.parse_args(argv)
    rows = []
    if shutil.which(default_program()):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(spice_row(min(args.batch, 200), tmp))
    rows += torch_rows(args.batch)
    if not args.skip_epoch:
        rows.append(epoch_row(args.data_dir, args.epoch_batch))
    peak_MB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(("peak resident memory of this benchmark", f"{peak_MB:,.0f} MB", "", ""))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    print("| measurement | a | b | ratio / note |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    sys.exit(run(main))
