"""SPICE transient netlists of a layered circuit: the DC netlist plus node capacitors and a
``.tran`` analysis, and a runner that reads ngspice's waveforms back.

The capacitors are those of :func:`epsim.solvers.transient.node_capacitance_F`, one per
free node to ground (``c_{node}``); the analysis starts from all free nodes at 0 V with the
sources at their values (``uic``), as :func:`epsim.solvers.transient.simulate` does, and
integrates with ngspice's Gear method (order 2: the numba transient's BDF2).
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..circuit.compile import compile_network, layer_node_names
from ..circuit.spice_writer import format_netlist
from ..errors import EpsimError
from ..solvers.ngspice import SpiceError, find_ngspice, read_raw
from ..solvers.transient import node_capacitance_F


def tran_netlist_text(net, v_input, caps, *, t_stop_s: float, dt_s: float, max_step_s: float | None = None,
                      netlist_dir=None) -> str:
    """ngspice netlist text of ``net`` for one input (``(n_0,)`` source voltages, V): the free
    phase with node capacitors and ``.tran dt_s t_stop_s 0 max_step_s uic``."""
    if not (dt_s > 0 and t_stop_s >= dt_s):
        raise EpsimError("need dt > 0 and t_stop >= dt (seconds)")
    nl = compile_network(net, v_input)
    text = format_netlist(nl, "ngspice", netlist_dir=netlist_dir)
    names = layer_node_names(net)[1:]
    caps_F = node_capacitance_F(net, caps)
    lines = ["* node capacitors (epsim.solvers.transient.node_capacitance_F)"]
    for layer, c in zip(names, caps_F):
        lines += [f"c_{n} {n} 0 {float(v)!r}" for n, v in zip(layer, c)]
    step = dt_s if max_step_s is None else max_step_s
    analysis = [".options method=gear maxord=2", f".tran {dt_s!r} {t_stop_s!r} 0 {step!r} uic"]
    if "\n.op\n" not in text:
        raise EpsimError("unexpected netlist layout: no .op analysis to replace")
    return text.replace("\n.op\n", "\n" + "\n".join(lines + analysis) + "\n")


def run_ngspice_tran(path, *, timeout_s: float = 600.0) -> tuple:
    """Run ngspice on a transient netlist; returns ``(t_s (P,), {node: (P,) volts})``."""
    exe = find_ngspice()
    path = Path(path).resolve()
    with tempfile.TemporaryDirectory(prefix="epsim-tran-") as tmp:
        raw = Path(tmp) / "out.raw"
        proc = subprocess.run([exe, "-b", "-r", str(raw), str(path)], cwd=tmp, capture_output=True,
                              text=True, timeout=timeout_s)
        if proc.returncode != 0 or not raw.is_file():
            raise SpiceError(f"ngspice failed on {path} (exit {proc.returncode}): "
                             + (proc.stdout + proc.stderr)[-400:])
        values = read_raw(raw)["variables"]
    t = values.pop("time")
    out = {name[2:-1]: v for name, v in values.items() if name.startswith("v(") and name.endswith(")")}
    out.update({name: v for name, v in values.items() if not name.startswith(("v(", "i(")) and "#branch" not in name})
    return np.asarray(t), out
