"""ngspice as a subprocess: find the program, run a netlist, read its binary raw file.

:func:`run_ngspice` runs ``ngspice -b -r OUT.raw`` on a netlist with one ``.op`` and returns
``{node name: volts}``; a missing program, a netlist error or unreadable output is a
:class:`SpiceError` (with the install hint where it helps), an operating point ngspice did
not find is a :class:`~epsim.errors.ConvergenceError` (never read as zeros). Used by the
``spice`` backend (:mod:`epsim.solvers.spice_backend`), the in-process engine's errors
(:mod:`epsim.solvers.pyspice_engine`) and the transient netlists (:mod:`epsim.spice.transient`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..circuit.netlist import Netlist
from ..circuit.spice_writer import write_netlist
from ..errors import ConvergenceError, EpsimError

INSTALL_HINT = "install ngspice: apt-get install -y ngspice libngspice0-dev"
FAILURE_PATTERNS = ("dc solution failed", "no convergence", "iteration limit", "simulation(s) aborted",
                    "timestep too small", "gmin stepping failed", "source stepping failed")
ERROR_PATTERN = re.compile(r"^(error|.*\berror\b.*:|.*unknown|.*could not|.*not found|.*fatal)", re.I)


class SpiceError(EpsimError):
    """ngspice could not run a netlist (missing program, bad input, unreadable output)."""


PROGRAM_ENV = "EPSIM_NGSPICE"


def default_program() -> str:
    """The ngspice program to run: ``$EPSIM_NGSPICE`` when set (a name on PATH or a path,
    e.g. a newer ngspice built with KLU beside the system's), else ``ngspice``."""
    return os.environ.get(PROGRAM_ENV) or "ngspice"


def find_ngspice(executable: str | None = None) -> str:
    """Full path of the ngspice program (``executable``, default :func:`default_program`),
    or SpiceError with the install hint."""
    executable = default_program() if executable is None else executable
    path = shutil.which(executable)
    if path is None:
        hint = f" (from ${PROGRAM_ENV})" if executable == os.environ.get(PROGRAM_ENV) else ""
        raise SpiceError(f"ngspice not found: {executable!r}{hint} is not an executable on PATH; "
                         f"{INSTALL_HINT}")
    return path


def read_raw(path) -> dict:
    """Variables of the first plot of a SPICE raw file (binary or ascii, real data).

    Returns ``{"plotname": str, "variables": {name: (points,) float64 array}}``; names as
    ngspice writes them, e.g. ``v(out_0)`` and ``i(vin_c0_y0_x0)``.
    """
    data = Path(path).read_bytes()
    header = {}
    names = []
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise SpiceError(f"raw file {path} ends inside its header")
        line = data[pos:end].decode("latin-1")
        pos = end + 1
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "variables":
            n = int(header["no. variables"])
            for _ in range(n):
                end = data.find(b"\n", pos)
                parts = data[pos:end].decode("latin-1").split()
                names.append(parts[1].lower())
                pos = end + 1
            continue
        if key in ("binary", "values"):
            break
        header[key] = value.strip()
    if "complex" in header.get("flags", "").lower():
        raise SpiceError(f"raw file {path} holds complex data; expected a DC operating point")
    n_vars, n_points = int(header["no. variables"]), int(header["no. points"])
    if key == "binary":
        values = np.frombuffer(data, dtype="<f8", count=n_vars * n_points, offset=pos) \
            if len(data) - pos >= 8 * n_vars * n_points else None
        if values is None:
            raise SpiceError(f"raw file {path} is truncated ({len(data) - pos} data bytes for "
                             f"{n_vars} x {n_points} values)")
        table = values.reshape(n_points, n_vars)
    else:
        fields = data[pos:].decode("latin-1").split()
        nums = []
        for k in range(n_points):
            chunk = fields[k * (n_vars + 1):(k + 1) * (n_vars + 1)]
            nums.append([float(x.split(",")[0]) for x in chunk[1:]])
        table = np.array(nums, dtype=np.float64).reshape(n_points, n_vars)
    return {"plotname": header.get("plotname", ""),
            "variables": {name: table[:, i].copy() for i, name in enumerate(names)}}


def run_ngspice(netlist_path, *, executable: str | None = None, timeout_s: float = 600.0) -> dict:
    """Run ``ngspice -b -r`` on a netlist with one ``.op``; return ``{node name: volts}``.

    Raises:
        SpiceError: ngspice missing (with the install hint), netlist errors, no output.
        ConvergenceError: ngspice reports that the operating point was not found (its
            output is never read as zeros).
    """
    exe = find_ngspice(executable)
    netlist_path = Path(netlist_path).resolve()
    with tempfile.TemporaryDirectory(prefix="epsim-ngspice-") as tmp:
        raw_path = Path(tmp) / "out.raw"
        try:
            proc = subprocess.run([exe, "-b", "-r", str(raw_path), str(netlist_path)], cwd=tmp,
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise SpiceError(f"ngspice did not finish {netlist_path.name} within {timeout_s:.0f} s") from None
        log = (proc.stdout or "") + "\n" + (proc.stderr or "")
        lower = log.lower()
        failed = [p for p in FAILURE_PATTERNS if p in lower]
        if failed:
            raise ConvergenceError(f"ngspice did not converge on {netlist_path} ({failed[0]}): "
                                   + _excerpt(log, FAILURE_PATTERNS))
        errors = [ln.strip() for ln in log.splitlines() if ERROR_PATTERN.match(ln.strip())]
        if proc.returncode != 0 or errors:
            raise SpiceError(f"ngspice failed on {netlist_path} (exit {proc.returncode}): "
                             + ("; ".join(errors[:3]) or _tail(log)))
        if not raw_path.is_file():
            raise SpiceError(f"ngspice wrote no results for {netlist_path}: {_tail(log)}")
        raw = read_raw(raw_path)
    values = raw["variables"]
    if not values or any(v.size != 1 for v in values.values()):
        raise ConvergenceError(f"ngspice returned no operating point for {netlist_path} "
                               f"(plot {raw['plotname']!r}, {len(values)} variables)")
    out = {}
    for name, v in values.items():
        if name.startswith("v(") and name.endswith(")"):
            out[name[2:-1]] = float(v[0])
        elif not name.startswith("i(") and "#branch" not in name:
            out[name] = float(v[0])
    bad = [n for n, v in out.items() if not np.isfinite(v)]
    if bad:
        raise ConvergenceError(f"ngspice returned non-finite voltages for {len(bad)} nodes of "
                               f"{netlist_path} (e.g. {bad[0]})")
    return out


def _excerpt(log, patterns):
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    hits = [ln for ln in lines if any(p in ln.lower() for p in patterns)]
    return "; ".join(hits[:3]) or _tail(log)


def _tail(log):
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return " | ".join(lines[-3:]) if lines else "(no output)"


def ngspice_op(netlist: Netlist, *, workdir=None, executable: str = "ngspice") -> np.ndarray:
    """Node voltages ``(num_nodes,)`` (V, ground first) of an IR circuit computed by ngspice."""
    with tempfile.TemporaryDirectory(prefix="epsim-spice-", dir=workdir) as tmp:
        path = write_netlist(netlist, Path(tmp) / "circuit.cir", "ngspice")
        table = run_ngspice(path, executable=executable)
    return voltages_by_index(netlist, table)


def voltages_by_index(netlist: Netlist, table: dict) -> np.ndarray:
    """Order a ``{node name: volts}`` table like ``netlist.nodes`` (ground = 0 V)."""
    v = np.zeros(netlist.num_nodes)
    missing = []
    for k, name in enumerate(netlist.nodes[1:], start=1):
        x = table.get(name.lower())
        if x is None:
            missing.append(name)
        else:
            v[k] = x
    if missing:
        raise SpiceError(f"ngspice results lack {len(missing)} nodes (e.g. {missing[0]})")
    return v
