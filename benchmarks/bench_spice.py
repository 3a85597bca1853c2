"""ngspice ``.op`` versus the numba solver (and the general MNA solver) on the same netlists.

Resistive MLPs with Shockley clamp diodes of about 1e3, 1e4 and 1e5 elements, one random
input each (``--sizes``; ``1e6`` is a 28x28 -> 640 MLP). Per size: the netlist is written
once; ngspice runs it (``ngspice -b -r``, process start and parsing included: what a SPICE-
in-the-loop simulation pays per equilibrium); numba solves the same circuit from the network
(``LayeredProblem`` + ``solve``, JIT warmed up); MNA reads nothing and solves the compiled
IR. Times are the median of ``--repeat`` runs, in seconds; ``agree`` is max |V_ngspice -
V_numba| over all nodes.

    python benchmarks/bench_spice.py [--repeat 3] [--tol 1e-15] [--threads 1] [--sizes 1e3 1e4 1e5]

The ngspice program is ``$EPSIM_NGSPICE`` when set, else ``ngspice`` on PATH; the first line
of the output names it and its version. The netlists ask for KLU (``.options klu``), which
ngspice builds without it ignore.
"""
from __future__ import annotations

import subprocess
import sys
import statistics
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from epsim.circuit.compile import compile_network, layer_node_names
from epsim.circuit.diodes import DiodeModel
from epsim.circuit.spice_writer import write_netlist
from epsim.cli import ArgumentParser, run, set_command_environment
from epsim.models.resistive import build_mlp
from epsim.solvers.mna import solve_mna
from epsim.solvers.ngspice import find_ngspice, run_ngspice
from epsim.solvers.numba_solver import LayeredProblem, solve

set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)

SIZES = {"1e3": ((1, 8, 8), 7), "1e4": ((1, 8, 8), 75), "1e5": ((1, 28, 28), 64),
         "1e6": ((1, 28, 28), 640)}
DEFAULT_SIZES = ("1e3", "1e4", "1e5")


def ngspice_version(exe: str) -> str:
    """The version line ngspice prints (``** ngspice-44.2 : ...``), or '?'."""
    out = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=60).stdout
    lines = [ln.strip("* ").strip() for ln in out.splitlines() if "ngspice-" in ln]
    return lines[0] if lines else "?"


def median_time(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench(label, image_shape, hidden, repeat, tol_A, tmp):
    net = build_mlp(image_shape, hidden=(hidden,), num_classes=10, input_gain_V=4.0,
                    diode=DiodeModel("shockley"))
    rng = np.random.default_rng(0)
    net.init_params(rng)
    net.b = [rng.uniform(-0.3, 0.3, size=b.shape) for b in net.b]
    x = rng.uniform(size=(1,) + tuple(image_shape))
    v_in = net.input_voltages(x)
    nl = compile_network(net, v_in[0])
    path = write_netlist(nl, Path(tmp) / f"mlp_{label}.cir")
    t_spice, table = median_time(lambda: run_ngspice(path), repeat)
    solve(LayeredProblem(net, v_in), tol_A=tol_A, max_iter=100000)  # JIT warm-up
    t_numba, eq = median_time(lambda: solve(LayeredProblem(net, v_in), tol_A=tol_A, max_iter=100000),
                              repeat)
    t_mna, _ = median_time(lambda: solve_mna(nl), repeat)
    names = layer_node_names(net)
    agree = max(float(np.max(np.abs(np.array([table[n] for n in names[l]]) - eq.v_free[l - 1][0])))
                for l in range(1, net.num_layers + 1))
    return {"label": label, "elements": nl.num_elements(), "nodes": nl.num_nodes - 1,
            "ngspice_s": t_spice, "numba_s": t_numba, "mna_s": t_mna,
            "ratio": t_spice / t_numba, "agree_V": agree,
            "numba_residual_A": eq.certificate.max_residual_A}


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tol", type=float, default=1e-15, help="numba KCL tolerance (A)")
    p.add_argument("--threads", type=int, default=1,
                   help="numba threads (one circuit per solve: its prange over samples has one "
                        "item, and idle OpenMP workers spinning on a busy machine cost ~10 ms per "
                        "parallel region)")
    p.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=list(DEFAULT_SIZES),
                   help="circuit sizes in elements (default: %(default)s)")
    args = p.parse_args(argv)
    exe = find_ngspice()
    numba.set_num_threads(args.threads)
    print(f"ngspice program: {exe} ({ngspice_version(exe)})")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.sizes:
            shape, hidden = SIZES[label]
            rows.append(bench(label, shape, hidden, args.repeat, args.tol, tmp))
    print(f"{'size':>5} {'elements':>9} {'nodes':>6} {'ngspice s':>10} {'numba s':>10} "
          f"{'MNA s':>8} {'ngspice/numba':>14} {'agree V':>9}")
    for r in rows:
        print(f"{r['label']:>5} {r['elements']:>9} {r['nodes']:>6} {r['ngspice_s']:>10.4f} "
              f"{r['numba_s']:>10.5f} {r['mna_s']:>8.4f} {r['ratio']:>13.0f}x {r['agree_V']:>9.1e}")


if __name__ == "__main__":
    sys.exit(run(main))
