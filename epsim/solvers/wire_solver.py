"""Exact DC solver for circuits with wire (line) resistance: the ``wires`` solver.

With wire resistance the neuron nodes of one layer are coupled through the row and column
wires, so the layered block coordinate descent of :mod:`.numba_solver` does not apply. This
solver does nodal analysis on the whole circuit instead:

1. ``prepare``: every crossbar tile's internal wire nodes are eliminated exactly
   (:class:`epsim.solvers.wire_network.WiredNetwork`, numba kernels), leaving a dense symmetric
   system on the free neuron nodes, ``K v + M v_in - b + beta (v_out - y) + i_diode(v) = 0``.
   Built once per batch (the conductances do not change within it).
2. ``solve``, per sample: ideal diodes are box constraints, solved by a primal-dual active
   set method (Hintermueller, Ito & Kunisch 2002; finite and exact: it stops when the
   active set repeats, then the state satisfies KCL and every diode's sign condition);
   Shockley diodes by Newton's method with a backtracking line search on the circuit's
   co-content (convex, so it converges from any start). Both start from the layered
   solver's solution of the same circuit without wires (or from ``init``).
3. Certificate: the internal wire voltages are recovered by back substitution and the KCL
   residual is evaluated element by element on the *full* circuit (every internal node,
   every neuron node with its diode rule), independently of the elimination.

For the nudged phases the :class:`Equilibrium` carries ``extras["device_drop_V"]``: the
voltage across every device (between its row-wire and column-wire nodes), the local
quantity of the EP learning rule (:func:`epsim.learning.wire_gradients.device_param_grads`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from ..circuit.diodes import clamp_cocontent_array, clamp_current_array, ideal_violation_array
from ..errors import EpsimError
from .base import Certificate, Equilibrium
from .numba_solver import LayeredProblem
from .numba_solver import solve as layered_solve
from .wire_network import WiredNetwork


@dataclass
class WirePrepared:
    """A network with wire resistance and one input batch, reduced for repeated solves.

    wired: the reduced system; v_input: ``(B, n_0)`` input voltages (V);
    q_in: ``(B, n_free)`` source-driven currents ``b - M v_in`` (normalised);
    layered: the same network without wires (warm starts).
    """

    wired: WiredNetwork
    v_input: np.ndarray
    q_in: np.ndarray
    layered: LayeredProblem

    @property
    def net(self):
        return self.wired.net


class WireSolver:
    """The ``wires`` solver: exact nodal analysis with crossbar wire resistance.

    Args:
        tol_A: KCL residual tolerance (A) every node of the full circuit must meet.
        max_iter: active-set / Newton iterations per sample and phase.
        wire_resistance_ohm: resistance of one wire segment (ohms, > 0).
    """

    name = "wires"

    def __init__(self, tol_A=1e-9, max_iter=1000, wire_resistance_ohm=1.0):
        self.tol_A = float(tol_A)
        self.max_iter = int(max_iter)
        self.wire_resistance_ohm = float(wire_resistance_ohm)

    def prepare(self, net, v_input) -> WirePrepared:
        wired = WiredNetwork(net, self.wire_resistance_ohm)
        v_input = np.ascontiguousarray(v_input, dtype=np.float64)
        q_in = wired.bias[None, :] - v_input @ wired.M.T
        return WirePrepared(wired, v_input, q_in, LayeredProblem(net, v_input))

    def solve(self, prepared: WirePrepared, beta=0.0, target_V=None, init=None) -> Equilibrium:
        wired, net = prepared.wired, prepared.net
        beta = float(beta)
        if beta != 0.0 and target_V is None:
            raise ValueError("a nudged phase needs target voltages")
        if beta != 0.0 and net.cost != "squared-error":
            raise EpsimError("the wire-aware solver nudges with the squared error only, "
                             f"this circuit with the {net.cost}")
        B = prepared.v_input.shape[0]
        K = wired.K.copy()
        q = prepared.q_in.copy()
        out = wired.out_slice
        if beta != 0.0:
            idx = np.arange(out.start, out.stop)
            K[idx, idx] += beta
            q[:, out] += beta * np.asarray(target_V, dtype=np.float64)
        if init is None:
            start = layered_solve(prepared.layered, beta, target_V, tol_A=self.tol_A,
                                  max_iter=self.max_iter).v_free
        else:
            start = init
        v0 = np.concatenate([np.asarray(v, dtype=np.float64) for v in start], axis=1)
        lo, hi = wired.rail_lo, wired.rail_hi
        shockley = net.diode.kind == "shockley"
        tol_n = self.tol_A / net.ranges.g_unit_S
        v = np.empty_like(v0)
        iters = 0
        for b in range(B):
            if shockley:
                v[b], it = _newton(K, q[b], lo, hi, net.diode.is_A / net.ranges.g_unit_S,
                                   net.diode.n_vt_V, v0[b], tol_n, self.max_iter)
            else:
                v[b], it = _active_set(K, q[b], lo, hi, v0[b], self.max_iter)
            iters = max(iters, it)
        v_free = wired.split(v)
        internal = wired.internal(prepared.v_input, v_free)
        residual = self._residual(prepared, K, v, q, internal)
        cert = Certificate(residual * net.ranges.g_unit_S, iters, self.tol_A, backend=self.name)
        extras = {"wire_resistance_ohm": self.wire_resistance_ohm}
        if beta != 0.0:
            extras["device_drop_V"] = wired.device_drops(internal)
            extras["layouts"] = [tc.layout for tc in wired.tiled]
        return Equilibrium(prepared.v_input, [np.ascontiguousarray(x) for x in v_free], beta, cert, extras)

    def _residual(self, prepared, K, v, q, internal):
        """``(B,)`` normalised max KCL violation of the full circuit."""
        wired, net = prepared.wired, prepared.net
        leave, worst_internal = wired.full_kcl(prepared.v_input, wired.split(v), internal)
        # current leaving through the wires and the nudge conductance, minus the bias sources
        r = leave + (np.diag(K) - np.diag(wired.K))[None, :] * v - (q - prepared.q_in) - wired.bias[None, :]
        lo, hi = wired.rail_lo, wired.rail_hi
        if net.diode.kind == "shockley":
            i_d, _ = clamp_current_array(v, lo, hi, net.diode.is_A / net.ranges.g_unit_S, net.diode.n_vt_V)
            res = np.abs(r + i_d)
        else:
            res = ideal_violation_array(r, v, lo, hi, np.diag(K)[None, :])
        return np.maximum(res.max(axis=1, initial=0.0), worst_internal)


def _solve_sym(A, b):
    """Solve a symmetric system: Cholesky when positive definite, else LDL^T (LAPACK sysv)."""
    try:
        return sla.solve(A, b, assume_a="pos", check_finite=False)
    except np.linalg.LinAlgError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sla.LinAlgWarning)
            return sla.solve(A, b, assume_a="sym", check_finite=False)


def _active_set(K, q, lo, hi, v0, max_iter):
    """Primal-dual active set for ``min 1/2 v'Kv - q'v`` s.t. ``lo <= v <= hi``.

    Ideal clamp diodes: at a node held at its low rail the diode can only inject current
    (``K v - q >= 0``), at its high rail only draw it (``K v - q <= 0``). Returns ``(v, its)``.
    """
    has_lo, has_hi = np.isfinite(lo), np.isfinite(hi)
    at_lo = has_lo & (v0 <= lo)
    at_hi = has_hi & (v0 >= hi)
    v = v0.copy()
    for it in range(1, max_iter + 1):
        act = at_lo | at_hi
        v = np.where(at_lo, lo, np.where(at_hi, hi, 0.0))
        free = ~act
        if free.any():
            rhs = q[free] - K[np.ix_(free, act)] @ v[act]
            v[free] = _solve_sym(K[np.ix_(free, free)], rhs)
        mu = K @ v - q
        new_lo = has_lo & np.where(at_lo, mu > 0, v < lo)
        new_hi = has_hi & np.where(at_hi, mu < 0, v > hi)
        if np.array_equal(new_lo, at_lo) and np.array_equal(new_hi, at_hi):
            return v, it
        at_lo, at_hi = new_lo, new_hi
    return v, max_iter


def _newton(K, q, lo, hi, is_n, nvt, v0, tol_n, max_iter):
    """Newton with backtracking on the co-content ``1/2 v'Kv - q'v + diodes``; ``(v, its)``."""
    v = v0.copy()

    def energy(x):
        return 0.5 * x @ (K @ x) - q @ x + clamp_cocontent_array(x, lo, hi, is_n, nvt)

    e_v = energy(v)
    for it in range(1, max_iter + 1):
        i_d, g_d = clamp_current_array(v, lo, hi, is_n, nvt)
        r = K @ v - q + i_d
        if np.max(np.abs(r), initial=0.0) <= tol_n:
            return v, it - 1
        J = K + np.diag(g_d)
        dv = -_solve_sym(J, r)
        slope = float(r @ dv)
        t = 1.0
        while True:
            v_new = v + t * dv
            e_new = energy(v_new)
            if e_new <= e_v + 1e-4 * t * slope + 1e-13 * (1.0 + abs(e_v)) or t < 1e-12:
                break
            t *= 0.5
        v, e_v = v_new, e_new
    return v, max_iter

