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
from .ngspice import SpiceError, find_ngspice, run_ngspice
from .numba_solver import LayeredProblem


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
        executable: the ngspice program (default: ``$EPSIM_NGSPICE``, else ``ngspice``).
        engine: ``subprocess`` (``ngspice -b`` per netlist, the default) or ``pyspice``
            (the shared ngspice library in this process, :mod:`epsim.solvers.pyspice_engine`).
        max_elements_per_run: samples are packed into one netlist up to about this many
            elements; larger batches take several ngspice runs.
        timeout_s: wall-clock limit of one ngspice run (subprocess engine), in seconds.
    """

    name = "spice"

    def __init__(self, tol_A=1e-9, max_iter=1000, compare_numba=True, executable=None,
                 max_elements_per_run=300_000, engine="subprocess", timeout_s=600.0):
        self.tol_A = float(tol_A)
        self.timeout_s = float(timeout_s)
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
                table = run_ngspice(path, executable=self.executable, timeout_s=self.timeout_s)
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
