"""Exact block coordinate descent for layered resistive networks, jitted with numba.

Nodes of one layer only touch the two neighbouring layers, so given those, every node's
KCL is a 1-D equation ``a*v - c + i_diode(v) = 0`` with ``a`` its total conductance and
``c`` the current its neighbours and sources drive into it (normalised units, see
:mod:`epsim.models.resistive`). Ideal diodes: ``v = clip(c/a, lo, hi)`` (closed form).
Shockley diodes: a bracketed (safeguarded) Newton iteration to machine precision.
Odd layers are solved together, then even layers: each such sweep decreases the energy
and the iteration stops per sample once the KCL residual is below ``tol_A``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from ..errors import ConvergenceError
from .base import Certificate, Equilibrium
from .stop_rule import NudgeStopRule
from .threads import threads_for

EXP_ARG_MAX = 300.0  # exp() argument cap: far beyond any physical diode current


@nb.njit(cache=True, inline="always")
def _diode_current(v, lo, hi, is_n, nvt):
    """Current (normalised) leaving a node at ``v`` through its clamp diodes, and d/dv."""
    i = 0.0
    di = 0.0
    if hi < np.inf:
        e = np.exp(min((v - hi) / nvt, EXP_ARG_MAX))
        i += is_n * (e - 1.0)
        di += is_n * e / nvt
    if lo > -np.inf:
        e = np.exp(min((lo - v) / nvt, EXP_ARG_MAX))
        i -= is_n * (e - 1.0)
        di += is_n * e / nvt
    return i, di


@nb.njit(cache=True)
def _shockley_node(a, c, lo, hi, is_n, nvt):
    """Root of the strictly increasing ``f(v) = a v - c + i_diode(v)``, bracketed Newton."""
    v = c / a
    if v < lo:
        v = lo
    if v > hi:
        v = hi
    i, di = _diode_current(v, lo, hi, is_n, nvt)
    f = a * v - c + i
    if f == 0.0:
        return v
    step = nvt
    if f > 0.0:
        right = v
        left = v - step
        while True:
            il, _ = _diode_current(left, lo, hi, is_n, nvt)
            if a * left - c + il <= 0.0:
                break
            step *= 2.0
            left = v - step
    else:
        left = v
        right = v + step
        while True:
            ir, _ = _diode_current(right, lo, hi, is_n, nvt)
            if a * right - c + ir >= 0.0:
                break
            step *= 2.0
            right = v + step
    for _ in range(200):
        i, di = _diode_current(v, lo, hi, is_n, nvt)
        f = a * v - c + i
        if f > 0.0:
            right = v
        elif f < 0.0:
            left = v
        else:
            return v
        v_new = v - f / (a + di)
        if not (left < v_new < right):
            v_new = 0.5 * (left + right)
        if abs(v_new - v) <= 1e-15 * (1.0 + abs(v)) or right - left <= 1e-15 * (1.0 + abs(v)):
            return v_new
        v = v_new
    return v


@nb.njit(cache=True, inline="always")
def _node_residual(a, c, v, lo, hi, shockley, is_n, nvt):
    """KCL violation (normalised current) at one node."""
    r = a * v - c
    if shockley:
        i, _ = _diode_current(v, lo, hi, is_n, nvt)
        return abs(r + i)
    if v <= lo:
        return max(0.0, -r) + (lo - v) * a  # a node below its rail is infeasible
    if v >= hi:
        return max(0.0, r) + (v - hi) * a
    return abs(r)


@nb.njit(cache=True, inline="always")
def _relax_node(a, c, lo, hi, shockley, is_n, nvt):
    """Voltage (V) that satisfies one node's KCL given its neighbours."""
    if shockley:
        return _shockley_node(a, c, lo, hi, is_n, nvt)
    x = c / a
    if x < lo:
        x = lo
    elif x > hi:
        x = hi
    return x


@nb.njit(parallel=True, cache=True)
def relax_layer(a, c, lo, hi, shockley, is_n, nvt, active, v):
    """Solve the nodes of one layer given its neighbours, in place, for ``active`` samples.

    a: (n,) self-conductance; c: (B, n) driving current; lo/hi: (n,) rails (V);
    active: (B,) bool, samples to update; v: (B, n) voltages, updated in place.
    """
    batch, n = c.shape
    for b in nb.prange(batch):
        if not active[b]:
            continue
        for k in range(n):
            v[b, k] = _relax_node(a[k], c[b, k], lo[k], hi[k], shockley, is_n, nvt)


@nb.njit(parallel=True, cache=True)
def relax_layer_tracked(a, c, lo, hi, shockley, is_n, nvt, active, v, v_ref, change, response,
                        scale):
    """:func:`relax_layer`, also writing per sample (``(B,)`` arrays, V) the largest change
    of a node (``change``), its largest distance from ``v_ref`` (B, n) after the update
    (``response``) and the largest |voltage| of the layer (``scale``)."""
    batch, n = c.shape
    for b in nb.prange(batch):
        if not active[b]:
            continue
        dmax = 0.0
        rmax = 0.0
        smax = 0.0
        for k in range(n):
            x = _relax_node(a[k], c[b, k], lo[k], hi[k], shockley, is_n, nvt)
            d = abs(x - v[b, k])
            r = abs(x - v_ref[b, k])
            if d > dmax:
                dmax = d
            if r > rmax:
                rmax = r
            if abs(x) > smax:
                smax = abs(x)
            v[b, k] = x
        change[b] = dmax
        response[b] = rmax
        scale[b] = smax


@nb.njit(parallel=True, cache=True)
def layer_residual(a, c, lo, hi, shockley, is_n, nvt, v, residual):
    """Fold each sample's max KCL residual of one layer into ``residual`` (B,), in place.

    Shapes as :func:`relax_layer`; residuals are normalised currents (A / g_unit).
    """
    batch, n = c.shape
    for b in nb.prange(batch):
        worst = 0.0
        for k in range(n):
            r = _node_residual(a[k], c[b, k], v[b, k], lo[k], hi[k], shockley, is_n, nvt)
            if r > worst:
                worst = r
        residual[b] = max(residual[b], worst)


class LayeredProblem:
    """Precomputed, phase-independent quantities of one network and one input batch.

    Built once per batch and shared by the free and nudged phases: the self-conductances
    and the input layer's drive (constant across iterations and phases).
    """

    def __init__(self, net, v_input):
        self.net = net
        self.v_input = np.ascontiguousarray(v_input, dtype=np.float64)
        L = net.num_layers
        self.node_updates = self.v_input.shape[0] * sum(net.layer_sizes[1:])
        self.degree = []
        for l in range(1, L + 1):
            d = net.connections[l - 1].degree_out(net.w[l - 1])
            if l < L:
                d = d + net.connections[l].degree_in(net.w[l])
            self.degree.append(np.ascontiguousarray(d))
        with threads_for(self.node_updates):
            self.input_drive = net.connections[0].drive_out(net.w[0], self.v_input)
        self.bias = [net.bias_per_node(l) for l in range(1, L + 1)]
        d = net.diode
        self.shockley = d.kind == "shockley"
        self.is_n = d.is_A / net.ranges.g_unit_S
        self.nvt = d.n_vt_V

    def self_conductance(self, l, beta):
        """(n_l,) total normalised conductance of layer l's nodes, nudging included."""
        a = self.degree[l - 1]
        if l == self.net.num_layers and beta != 0.0:
            a = a + beta
            if np.any(a <= 0):
                raise ConvergenceError(
                    f"nudging beta={beta} makes an output node's conductance non-positive "
                    f"(min output self-conductance {self.degree[-1].min():.3g} g_unit): lower --beta")
        return np.ascontiguousarray(a)

    def drive(self, l, v_free, beta, target_V):
        """(B, n_l) normalised current driven into layer l by neighbours and sources."""
        net = self.net
        L = net.num_layers
        c = (self.input_drive if l == 1 else net.connections[l - 1].drive_out(net.w[l - 1], v_free[l - 2]))
        c = c + self.bias[l - 1]
        if l < L:
            c = c + net.connections[l].drive_in(net.w[l], v_free[l])
        if l == L and beta != 0.0:
            c = c + beta * target_V
        return np.ascontiguousarray(c)

    def initial_state(self):
        """All free nodes at 0 V (inside every clamp)."""
        batch = self.v_input.shape[0]
        return [np.zeros((batch, n)) for n in self.net.layer_sizes[1:]]

    def residual_A(self, v_free, beta=0.0, target_V=None):
        """(B,) exact max KCL residual in amperes of a state (all layers)."""
        net = self.net
        res = np.zeros(self.v_input.shape[0])
        for l in range(1, net.num_layers + 1):
            layer_residual(self.self_conductance(l, beta), self.drive(l, v_free, beta, target_V),
                           net.rail_lo_V[l - 1], net.rail_hi_V[l - 1], self.shockley, self.is_n,
                           self.nvt, v_free[l - 1], res)
        return res * net.ranges.g_unit_S


def solve(problem: LayeredProblem, beta=0.0, target_V=None, init=None, tol_A=1e-9,
          max_iter=1000, nudge_rtol=None) -> Equilibrium:
    """Equilibrium of the circuit for one phase.

    Args:
        problem: :class:`LayeredProblem` (network + input batch).
        beta: nudging (0: free phase, +beta / -beta: nudged phases).
        target_V: ``(B, K)`` target output voltages (V), needed when ``beta != 0``.
        init: list of ``(B, n_l)`` voltages to start from (e.g. the free state); copied.
        tol_A: KCL residual tolerance in amperes.
        max_iter: maximum number of odd/even sweeps.
        nudge_rtol: for a nudged phase started from the free state (``init``): stop on
            :class:`~epsim.solvers.stop_rule.NudgeStopRule` (every layer's error within
            ``nudge_rtol`` of its response to the nudge) instead of ``tol_A``.

    Returns:
        :class:`Equilibrium` whose certificate holds the exact final residual per sample.
    """
    net = problem.net
    L = net.num_layers
    batch = problem.v_input.shape[0]
    v = [x.copy() for x in init] if init is not None else problem.initial_state()
    if beta != 0.0 and target_V is None:
        raise ValueError("a nudged phase needs target voltages")
    relative = nudge_rtol is not None and beta != 0.0 and init is not None
    if relative:
        return _solve_relative(problem, beta, target_V, v, tol_A, max_iter, nudge_rtol)
    tol_n = tol_A / net.ranges.g_unit_S
    a = [problem.self_conductance(l, beta) for l in range(1, L + 1)]
    odd = list(range(1, L + 1, 2))
    even = list(range(2, L + 1, 2))
    active = np.ones(batch, dtype=np.bool_)
    res = np.zeros(batch)
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        # Odd layers only touch even layers, so all their drives come from the current state.
        drives = {l: problem.drive(l, v, beta, target_V) for l in odd}
        if sweeps > 1:
            # Even layers were solved against the current odd layers in the last sweep, so the
            # odd layers' residual is the residual of the whole state: stop converged samples.
            res[:] = 0.0
            for l in odd:
                layer_residual(a[l - 1], drives[l], net.rail_lo_V[l - 1], net.rail_hi_V[l - 1],
                               problem.shockley, problem.is_n, problem.nvt, v[l - 1], res)
            active &= res > tol_n
            if not active.any():
                break
        for l in odd:
            relax_layer(a[l - 1], drives[l], net.rail_lo_V[l - 1], net.rail_hi_V[l - 1],
                        problem.shockley, problem.is_n, problem.nvt, active, v[l - 1])
        for l in even:
            relax_layer(a[l - 1], problem.drive(l, v, beta, target_V), net.rail_lo_V[l - 1],
                        net.rail_hi_V[l - 1], problem.shockley, problem.is_n, problem.nvt,
                        active, v[l - 1])
    cert = Certificate(problem.residual_A(v, beta, target_V), sweeps, tol_A, backend="numba")
    return Equilibrium(problem.v_input, v, beta, cert)


def _solve_relative(problem, beta, target_V, v, tol_A, max_iter, nudge_rtol) -> Equilibrium:
    """Odd/even sweeps of a nudged phase from the free state ``v`` (list, modified in place),
    stopping each sample on the relative nudge rule."""
    net = problem.net
    L = net.num_layers
    batch = problem.v_input.shape[0]
    v_ref = [x.copy() for x in v]
    rule = NudgeStopRule(nudge_rtol, L, batch)
    a = [problem.self_conductance(l, beta) for l in range(1, L + 1)]
    order = list(range(1, L + 1, 2)) + list(range(2, L + 1, 2))
    active = np.ones(batch, dtype=np.bool_)
    met = np.zeros(batch, dtype=np.bool_)
    change, response, scale = (np.zeros((L, batch)) for _ in range(3))
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        # odd layers see only even layers, so relaxing them in turn is the odd/even sweep
        for l in order:
            relax_layer_tracked(a[l - 1], problem.drive(l, v, beta, target_V),
                                net.rail_lo_V[l - 1], net.rail_hi_V[l - 1], problem.shockley,
                                problem.is_n, problem.nvt, active, v[l - 1], v_ref[l - 1],
                                change[l - 1], response[l - 1], scale[l - 1])
        met |= rule.update(change, response, scale, active)
        active &= ~met
        if not active.any():
            break
    cert = Certificate(problem.residual_A(v, beta, target_V), sweeps, tol_A, backend="numba",
                       stop_met=met)
    eq = Equilibrium(problem.v_input, v, beta, cert)
    eq.extras["nudge_relative_error"] = rule.relative_error()
    return eq


class NumbaSolver:
    """The ``numba`` backend: :class:`LayeredProblem` + :func:`solve` with fixed options."""

    name = "numba"

    def __init__(self, tol_A=1e-9, max_iter=1000, nudge_rtol=None):
        self.tol_A = float(tol_A)
        self.max_iter = int(max_iter)
        self.nudge_rtol = None if nudge_rtol is None else float(nudge_rtol)

    def prepare(self, net, v_input) -> LayeredProblem:
        return LayeredProblem(net, v_input)

    def solve(self, prepared, beta=0.0, target_V=None, init=None) -> Equilibrium:
        with threads_for(prepared.node_updates):
            return solve(prepared, beta, target_V, init, tol_A=self.tol_A, max_iter=self.max_iter,
                         nudge_rtol=self.nudge_rtol)
