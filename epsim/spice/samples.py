"""Export a network as per-sample SPICE netlists, each with epsim's solution beside it.

For every sample ``k`` and phase ``P`` (``free``, ``plus``, ``minus``) the exporter writes
``sample{k}_{P}.cir`` (ngspice dialect) and/or ``sample{k}_{P}.xyce.cir`` (Xyce dialect) and
``sample{k}_{P}.op.json``: the layered numba solver's node voltages for the same circuit (the
exact wire solver's, internal wire nodes included, with wire resistance; the choice is
:func:`epsim.solvers.factory.make_solver`'s) as ``{node name: volts}``, every node but
ground, its convergence certificate, and what the circuit is (model, sample, label, phase,
beta). The numba solve uses a tight KCL tolerance
(default 1e-15 A) so the JSON voltages are exact to ~1e-12 V; an unconverged solve is an
error, never written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoint import write_json
from ..circuit.compile import PHASES, compile_network, layer_node_names, phase_beta
from ..circuit.crossbar import named_internal_voltages
from ..circuit.spice_dialects import DIALECTS
from ..circuit.spice_writer import write_netlist
from ..errors import ConvergenceError
from ..models.resistive import nudge_targets
from ..solvers.factory import SolverConfig, make_solver

DIALECT_SUFFIX = {"ngspice": ".cir", "xyce": ".xyce.cir"}


def export_samples(net, x, labels, out_dir, *, beta: float, target_high_V: float = 1.0,
                   phases=PHASES, dialects=("ngspice",), tol_A: float = 1e-15,
                   max_iter: int = 100000, sample_ids=None, header=(),
                   wire_resistance_ohm: float = 0.0) -> list:
    """Write netlists and ``.op.json`` files for images ``x`` (N, C, H, W); return the paths.

    Args:
        net: the network (its diode model decides the netlists' diodes).
        labels: ``(N,)`` class labels (targets of the nudged phases).
        beta: nudging strength of the ``plus``/``minus`` phases.
        phases / dialects: which phases and SPICE dialects to write.
        tol_A / max_iter: numba solver settings for the reference voltages.
        sample_ids: ``(N,)`` dataset indices to record (default 0..N-1).
        header: extra comment lines for every netlist.
        wire_resistance_ohm: > 0 exports crossbars with resistive wires (internal nodes,
            :mod:`epsim.circuit.crossbar`) and solves them with the exact wire solver, whose
            voltages of every node (internal ones included) go to ``.op.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)
    ids = list(range(len(labels))) if sample_ids is None else [int(i) for i in sample_ids]
    for d in dialects:
        if d not in DIALECTS:
            raise ValueError(f"unknown dialect {d}")
    v_input = net.input_voltages(x)
    target = nudge_targets(net, labels, target_high_V)
    # the wire solver counts active-set / Newton iterations, not sweeps
    iterations = max(200, min(max_iter, 10000)) if wire_resistance_ohm else max_iter
    solver = make_solver(SolverConfig("numba", tol_A, iterations, wire_resistance_ohm))
    prepared = solver.prepare(net, v_input)
    names = layer_node_names(net)
    written = []
    for phase in phases:
        b_signed = phase_beta(phase, beta)
        eq = solver.solve(prepared, b_signed, target if b_signed else None)
        if wire_resistance_ohm:
            internal = prepared.wired.internal(v_input, eq.v_free)
        if not eq.certificate.all_converged:
            raise ConvergenceError(
                f"numba reference solve of phase {phase} missed {tol_A:.1e} A (max KCL residual "
                f"{eq.certificate.max_residual_A:.2e} A after {eq.certificate.iterations} sweeps): "
                "raise --max-iter or loosen --tol")
        for k in range(len(labels)):
            stem = f"sample{k}_{phase}"
            nl = compile_network(net, v_input[k], beta=b_signed, target_V=target[k],
                                 wire_resistance_ohm=wire_resistance_ohm)
            lines = [f"sample {k}: dataset test index {ids[k]}, label {int(labels[k])}"] + list(header)
            for d in dialects:
                written.append(write_netlist(nl, out_dir / (stem + DIALECT_SUFFIX[d]), d, header=lines))
            volts = {}
            for l, layer in enumerate(names):
                values = v_input[k] if l == 0 else eq.v_free[l - 1][k]
                volts.update(zip(layer, (float(v) for v in values)))
            if b_signed != 0.0:
                volts.update({f"tgt_{j}": float(t) for j, t in enumerate(target[k])})
            if wire_resistance_ohm:
                volts.update(named_internal_voltages(internal, k))
            op = {
                "netlists": [stem + DIALECT_SUFFIX[d] for d in dialects],
                "model": net.name, "sample": k, "dataset_index": ids[k], "label": int(labels[k]),
                "phase": phase, "beta": b_signed, "diode": net.diode.to_dict(),
                "solver": "wires" if wire_resistance_ohm else "numba",
                "certificate": {"residual_A": float(eq.certificate.residual_A[k]),
                                "iterations": int(eq.certificate.iterations),
                                "tol_A": tol_A, "converged": bool(eq.certificate.converged[k])},
                "node_voltages_V": volts,
            }
            if wire_resistance_ohm:
                op["wire_resistance_ohm"] = float(wire_resistance_ohm)
            path = out_dir / f"{stem}.op.json"
            write_json(path, op)
            written.append(path)
    return written
