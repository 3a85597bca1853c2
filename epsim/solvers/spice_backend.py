"""The ``spice`` backend: DC operating points computed by ngspice.

Each solve writes one netlist holding the samples of the batch as separate circuits
(node and element names prefixed ``s{b}_``; the circuits share only ground; large batches
are split into netlists of at most ~3e5 elements), runs
``ngspice -b -r OUT.raw`` on it, reads the binary raw file, and certifies the voltages with
the layered model's exact KCL residual (:meth:`LayeredProblem.residual_A`), so a wrong
or approximate SPICE answer can never pass as converged. If ngspice fails on a batch,
each sample is rerun alone and the ones that still fail get an infinite residual.

ngspice knows only Shockley diodes: a network with ideal clamp diodes is refused (train
with ``--diode shockley``). Conductance updates between solves need no ``alter``: every
solve writes the circuit afresh from the current parameters.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..circuit.compile import compile_network, layer_node_names
from ..circuit.netlist import Netlist
from ..circuit.spice_writer import format_netlist, write_netlist
from ..errors import ConvergenceError, EpsimError
from .base import Certificate, Equilibrium
from .numba_solver import LayeredProblem

INSTALL_HINT = "install ngspice: apt-get install -y ngspice libngspice0-dev"
FAILURE_PATTERNS = ("dc solution failed", "no convergence", "iteration limit", "simulation(s) aborted",
                    "timestep too small", "gmin stepping failed", "source stepping failed")
ERROR_PATTERN = re.compile(r"^(error|.*\berror\b.*:|.*unknown|.*could not|.*not found|.*fatal)", re.I)


class SpiceError(EpsimError):
    """ngspice could not run a netlist (missing program, bad input, unreadable output)."""


def find_ngspice(executable: str = "ngspice") -> str:
    """Full path of the ngspice program, or SpiceError with the install hint."""
    path = shutil.which(executable)
    if path is None:
        raise SpiceError(f"ngspice not found on PATH ({executable!r}); {INSTALL_HINT}")
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


def run_ngspice(netlist_path, *, executable: str = "ngspice", timeout_s: float = 600.0) -> dict:
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


@dataclass
class SpicePrepared:
    """A network and an input batch, ready for ngspice solves (see :class:`SpiceSolver`)."""

    problem: LayeredProblem

    @property
    def net(self):
        return self.problem.net

    @property
    def v_input(self):
        return self.problem.v_input


@dataclass
class SpiceStats:
    """Running totals of a :class:`SpiceSolver`: equilibria solved and wall time (s)."""

    equilibria: int = 0
    spice_s: float = 0.0
    numba_s: float = 0.0
    numba_equilibria: int = 0
    max_abs_diff_V: float = 0.0
    failures: int = 0
    notes: list = field(default_factory=list)

    def summary(self) -> str:
        line = (f"spice backend: {self.equilibria} equilibria in {self.spice_s:.2f} s "
                f"({self.equilibria / max(self.spice_s, 1e-12):.1f}/s)")
        if self.numba_equilibria:
            numba_rate = self.numba_equilibria / max(self.numba_s, 1e-12)
            ratio = (self.spice_s / max(self.equilibria, 1)) / (self.numba_s / self.numba_equilibria)
            line += (f"; numba on the same circuits: {numba_rate:.1f}/s -> ngspice is {ratio:.0f}x "
                     f"slower; max |V_spice - V_numba| = {self.max_abs_diff_V:.2e} V "
                     "(numba stops at the --tol KCL residual)")
        if self.failures:
            line += f"; {self.failures} ngspice failures"
        return line


class SpiceSolver:
    """The ``spice`` backend (solver interface of :class:`~epsim.solvers.numba_solver.NumbaSolver`).

    Args:
        tol_A: KCL tolerance (A) the certificate checks the ngspice voltages against.
        max_iter: unused by ngspice (kept for the common interface).
        compare_numba: also time the numba solver on every circuit (same tolerance) and
            track the largest voltage difference, for :attr:`stats`.
        executable: the ngspice program.
        engine: ``subprocess`` (``ngspice -b`` per netlist, the default) or ``pyspice``
            (the shared ngspice library in this process, :mod:`epsim.solvers.pyspice_engine`).
        max_elements_per_run: samples are packed into one netlist up to about this many
            elements; larger batches take several ngspice runs.
    """

    name = "spice"

    def __init__(self, tol_A=1e-9, max_iter=1000, compare_numba=True, executable="ngspice",
                 max_elements_per_run=300_000, engine="subprocess"):
        self.tol_A = float(tol_A)
        self.max_elements_per_run = int(max_elements_per_run)
        self.max_iter = int(max_iter)
        self.compare_numba = bool(compare_numba)
        self.executable = executable
        self.stats = SpiceStats()
        if engine not in ("subprocess", "pyspice"):
            raise EpsimError(f"unknown spice engine {engine!r}; choose subprocess or pyspice")
        self.engine = engine
        if engine == "pyspice":
            from .pyspice_engine import PySpiceEngine

            self._shared = PySpiceEngine()
        else:
            find_ngspice(executable)

    def summary(self) -> str:
        """One line: equilibria solved, ngspice time, and the numba comparison."""
        return self.stats.summary()

    def prepare(self, net, v_input) -> SpicePrepared:
        if net.diode.kind != "shockley":
            raise EpsimError("the spice backend needs Shockley clamp diodes (SPICE has no ideal "
                             "diode): pass --diode shockley")
        return SpicePrepared(LayeredProblem(net, v_input))

    def solve(self, prepared: SpicePrepared, beta=0.0, target_V=None, init=None) -> Equilibrium:
        """Equilibrium of every sample by ngspice ``.op`` (``init`` is not used: ngspice
        starts from its own initial guess)."""
        problem = prepared.problem
        net = problem.net
        if beta != 0.0 and target_V is None:
            raise ValueError("a nudged phase needs target voltages")
        batch = problem.v_input.shape[0]
        t0 = time.perf_counter()
        per_sample = sum(c.fan_in * c.n_out for c in net.connections) + sum(net.layer_sizes)
        chunk = max(1, int(self.max_elements_per_run // per_sample))
        v_free = [np.full((batch, n), np.nan) for n in net.layer_sizes[1:]]
        for start in range(0, batch, chunk):
            samples = list(range(start, min(start + chunk, batch)))
            try:
                groups = [(samples, self._run(net, problem.v_input, beta, target_V, samples))]
            except ConvergenceError:
                groups = []
                for b in samples:  # isolate the samples ngspice cannot solve
                    try:
                        groups.append(([b], self._run(net, problem.v_input, beta, target_V, [b])))
                    except ConvergenceError:
                        self.stats.failures += 1
            for idx, solved in groups:
                for layer, v in zip(v_free, solved):
                    layer[idx] = v
        self.stats.spice_s += time.perf_counter() - t0
        self.stats.equilibria += batch
        failed = np.any(np.stack([~np.isfinite(v).all(axis=1) for v in v_free]), axis=0)
        safe = [np.where(np.isfinite(v), v, 0.0) for v in v_free]
        residual = problem.residual_A(safe, beta, target_V)
        residual[failed] = np.inf
        cert = Certificate(residual, 1, self.tol_A, backend="spice")
        if self.compare_numba:
            self._compare(problem, beta, target_V, v_free, failed)
        return Equilibrium(problem.v_input, v_free, beta, cert)

    def _run(self, net, v_input, beta, target_V, samples):
        samples = list(samples)
        nl = Netlist(title=f"epsim {net.name} batch of {len(samples)}", temp_K=net.diode.temp_K)
        names = []
        for k, b in enumerate(samples):
            prefix = f"s{b}_"
            compile_network(net, v_input[b], beta=beta,
                            target_V=None if target_V is None else target_V[b],
                            netlist=nl, prefix=prefix, notes=(k == 0))
            names.append(layer_node_names(net, prefix))
        if self.engine == "pyspice":
            table = self._shared.op(format_netlist(nl, "ngspice"))
        else:
            with tempfile.TemporaryDirectory(prefix="epsim-spice-") as tmp:
                path = write_netlist(nl, Path(tmp) / "batch.cir", "ngspice")
                table = run_ngspice(path, executable=self.executable)
        out = []
        for l in range(1, net.num_layers + 1):
            try:
                out.append(np.array([[table[n] for n in names[k][l]] for k in range(len(samples))]))
            except KeyError as exc:
                raise SpiceError(f"ngspice results lack node {exc.args[0]}") from None
        return out

    def _compare(self, problem, beta, target_V, v_free, failed):
        from .numba_solver import solve as numba_solve

        t0 = time.perf_counter()
        eq = numba_solve(problem, beta, target_V, tol_A=self.tol_A, max_iter=self.max_iter)
        self.stats.numba_s += time.perf_counter() - t0
        self.stats.numba_equilibria += problem.v_input.shape[0]
        ok = ~failed & eq.certificate.converged
        if ok.any():
            diff = max(float(np.max(np.abs(a[ok] - b[ok]))) for a, b in zip(v_free, eq.v_free))
            self.stats.max_abs_diff_V = max(self.stats.max_abs_diff_V, diff)
