"""Crossbars with wire resistance: the wire solver vs the sparse MNA solver vs ngspice.

Circuit for size N (N a multiple of 16): N input sources (+x, -x of an image of N/2 pixels)
-> an N x N crossbar -> N hidden nodes with Shockley clamp diodes -> an N x 2 crossbar -> 2
linear outputs; every crossbar row and column wire has ``--wire-resistance`` ohms per
segment, so the N x N crossbar alone adds 2 N^2 internal nodes. One free-phase DC solve.

Timed, for each size: the ``wires`` solver (``WireSolver.prepare`` + ``solve``: exact
elimination of the wire nodes, Newton on the neuron nodes, full-circuit certificate), the
general sparse Newton solver ``solve_mna`` on the compiled IR, and ``ngspice -b -r`` on the
written netlist (``.op``; its time includes parsing). Wall-clock and CPU seconds are both
reported (the machine may be shared: CPU time is the steadier figure; ngspice's CPU time is
the child-process rusage). Every solution is compared node by node (internal wire nodes
included) with the wire solver's.

    python benchmarks/bench_wires.py                       # 64 and 256, ngspice included
    python benchmarks/bench_wires.py --sizes 64 128 --json out.json
    python benchmarks/bench_wires.py --sizes 256 --no-ngspice
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from epsim.cli import ArgumentParser, run, set_command_environment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)


def build(n, seed=0):
    from epsim.circuit.diodes import DiodeModel
    from epsim.models.resistive import build_mlp

    rng = np.random.default_rng(seed)
    net = build_mlp((1, n // 16, 8), (n,), 2, input_gain_V=4.0, diode=DiodeModel("shockley"))
    net.init_params(rng)
    net.b = [rng.normal(0, 0.05, b.shape) for b in net.b]
    return net, net.input_voltages(rng.uniform(0, 1, (1, 1, n // 16, 8)))


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_size(n, r_ohm, ngspice=True, mna=True):
    from epsim.circuit.compile import compile_network
    from epsim.circuit.spice_writer import write_netlist
    from epsim.solvers.mna import solve_mna
    from epsim.solvers.ngspice import run_ngspice
    from epsim.solvers.wire_solver import WireSolver
    from test_wires import all_voltages

    net, v_in = build(n)
    out = {"size": n, "wire_resistance_ohm": r_ohm}
    solver = WireSolver(tol_A=1e-15, max_iter=200, wire_resistance_ohm=r_ohm)
    solver.solve(solver.prepare(*build(16)), 0.0)  # jit warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    prepared = solver.prepare(net, v_in)
    t1, c1 = time.perf_counter(), time.process_time()
    eq = solver.solve(prepared, 0.0)
    t2, c2 = time.perf_counter(), time.process_time()
    out.update(wires_prepare_wall_s=t1 - t0, wires_solve_wall_s=t2 - t1, wires_wall_s=t2 - t0,
               wires_cpu_s=c2 - c0, wires_residual_A=eq.certificate.max_residual_A,
               wires_converged=bool(eq.certificate.all_converged))
    ours = all_voltages(solver, prepared, eq, net, 0)
    t0 = time.perf_counter()
    nl = compile_network(net, v_in[0], wire_resistance_ohm=r_ohm)
    out.update(nodes=nl.num_nodes - 1, resistors=len(nl.resistors), compile_wall_s=time.perf_counter() - t0)
    if mna:
        t0, c0 = time.perf_counter(), time.process_time()
        sol = solve_mna(nl, tol_A=1e-13, strict=False)
        out.update(mna_wall_s=time.perf_counter() - t0, mna_cpu_s=time.process_time() - c0,
                   mna_converged=bool(sol.converged), mna_newton_steps=int(sol.iterations))
        table = sol.table(nl)
        out["max_abs_diff_mna_V"] = max(abs(ours[k] - table[k]) for k in ours)
    if ngspice:
        with tempfile.TemporaryDirectory(prefix="epsim-bench-wires-") as tmp:
            path = write_netlist(nl, Path(tmp) / f"crossbar{n}.cir")
            t0, c0 = time.perf_counter(), child_cpu()
            table = run_ngspice(path, timeout_s=6 * 3600)
            out.update(ngspice_wall_s=time.perf_counter() - t0, ngspice_cpu_s=child_cpu() - c0)
        out["max_abs_diff_ngspice_V"] = max(abs(ours[k] - table[k.lower()]) for k in ours)
        out["ngspice_over_wires_wall"] = out["ngspice_wall_s"] / out["wires_wall_s"]
        out["ngspice_over_wires_cpu"] = out["ngspice_cpu_s"] / out["wires_cpu_s"]
    return out


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--wire-resistance", type=float, default=100.0, metavar="OHMS")
    p.add_argument("--no-ngspice", action="store_true")
    p.add_argument("--no-mna", action="store_true")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    rows = []
    for n in args.sizes:
        if n % 16:
            p.error("sizes must be multiples of 16")
        row = run_size(n, args.wire_resistance, ngspice=not args.no_ngspice, mna=not args.no_mna)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'N':>5} {'nodes':>8} {'wires s (cpu)':>15} {'MNA s (cpu)':>15} {'ngspice s (cpu)':>17} "
          f"{'ngspice/wires':>14} {'max|dV| ngspice':>16}")
    for r in rows:
        def cell(k, c):
            return f"{r[k]:.3g} ({r[c]:.3g})" if k in r else "-"
        ratio = f"{r['ngspice_over_wires_cpu']:.0f}x cpu" if "ngspice_over_wires_cpu" in r else "-"
        diff = f"{r['max_abs_diff_ngspice_V']:.1e} V" if "max_abs_diff_ngspice_V" in r else "-"
        print(f"{r['size']:>5} {r['nodes']:>8} {cell('wires_wall_s', 'wires_cpu_s'):>15} "
              f"{cell('mna_wall_s', 'mna_cpu_s'):>15} {cell('ngspice_wall_s', 'ngspice_cpu_s'):>17} "
              f"{ratio:>14} {diff:>16}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2))


if __name__ == "__main__":
    sys.exit(run(main))
