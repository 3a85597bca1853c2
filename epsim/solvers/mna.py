"""General DC solver for any circuit of the IR: Newton on modified nodal analysis (MNA).

Supported elements: resistors (any sign), Shockley diodes, independent DC voltage and
current sources, voltage-controlled voltage sources (E), current-controlled current
sources (F, controlled by the branch current of a V source) and softmax current sources (B,
the cross-entropy nudge); conventions in :mod:`epsim.circuit.netlist`.

Unknowns: the voltages of all nodes but ground, then one branch current per voltage
source, then one per E source. Equations: KCL at every node (sum of currents leaving = 0),
``v_p - v_m = volts`` for every voltage source and ``v_p - v_m = gain (v_cp - v_cm)`` for
every E source; an F source adds ``+gain * I(vctl)`` to the KCL row of its ``p`` node and
``-gain * I(vctl)`` to its ``m`` node, ``I(vctl)`` being the controlling source's
branch-current unknown. Everything but the diodes and the softmax sources is linear; diodes
follow Shockley's law ``I = Is (exp(V / nVt) - 1)``, a softmax group drives
``A_k (y_k - softmax_k(v / 1 V))`` into its nodes. Each Newton step linearises the diodes
SPICE-style (companion model at the junction voltage) with ``pnjlim`` junction limiting and
each softmax group at the present voltages (its dense Jacobian ``A_k (s_k d_kj - s_k s_j)``),
and solves the sparse system with SuperLU (``scipy.sparse.linalg.splu``); the sparsity
pattern and the map from element stamps to matrix entries are built once.

If plain Newton does not converge, gmin stepping shunts every node to ground with a
conductance swept from ``1e-3`` S down by decades, each stage warm-starting the next, and
ends with the true circuit (gmin = 0). A solve is converged when the exact KCL residual
(diodes evaluated without linearisation) is at most ``tol_A`` at every node and the last
Newton step moved no node by more than ``vtol_V`` (plus ``1e-12`` relative).

Ideal diodes are a layered-model concept (a box constraint, not a device law): circuits
holding them are refused.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import MatrixRankWarning, splu

from ..circuit.diodes import shockley_array
from ..circuit.netlist import Netlist
from ..errors import ConvergenceError, EpsimError

GMIN_STEPS_S = tuple(10.0 ** -k for k in range(3, 16))


@dataclass
class MnaSolution:
    """DC operating point of a circuit.

    voltages_V: ``(num_nodes,)`` node voltages, ground (0 V) first, in ``netlist.nodes`` order.
    source_currents_A: ``(num V sources,)`` branch currents (from ``+`` through the source to ``-``).
    vcvs_currents_A: ``(num E sources,)`` branch currents, same convention.
    residual_A: max |KCL| over the non-ground nodes (A), diodes evaluated exactly.
    iterations: Newton steps in all; gmin_steps: gmin-stepping stages used (0 if none).
    """

    voltages_V: np.ndarray
    source_currents_A: np.ndarray
    residual_A: float
    iterations: int
    gmin_steps: int
    converged: bool
    tol_A: float
    vcvs_currents_A: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def table(self, netlist: Netlist) -> dict:
        """``{node name: volts}`` without ground."""
        return {n: float(v) for n, v in zip(netlist.nodes[1:], self.voltages_V[1:])}


class _System:
    """Stamps of one circuit mapped onto a fixed CSC sparsity pattern."""

    def __init__(self, nl: Netlist):
        n_nodes = nl.num_nodes - 1
        r, d, v, i = nl.resistors, nl.diodes, nl.vsources, nl.isources
        e = nl.vcvs
        self.n_nodes, self.n_src, self.n_vcvs = n_nodes, len(v), len(e)
        n = n_nodes + len(v) + len(e)
        self.n = n
        src_rows = n_nodes + 1 + np.arange(len(v))  # 1-based like the node indices
        lin_rows, lin_cols, lin_vals = (np.concatenate(x) for x in zip(
            _resistor_stamps(r), _vsource_stamps(v, src_rows),
            _vcvs_stamps(e, n_nodes + 1 + len(v) + np.arange(len(e))),
            _cccs_stamps(nl.cccs, src_rows[nl.control_indices()])))
        d_rows = np.concatenate([d.a, d.b, d.a, d.b])
        d_cols = np.concatenate([d.a, d.b, d.b, d.a])
        diag = np.arange(1, n_nodes + 1)
        sm = nl.softmax_sources
        self.sm_groups = [np.flatnonzero(sm.group == g) for g in np.unique(sm.group)]
        self.sm_node, self.sm_amps, self.sm_target = sm.b, sm.value, sm.target
        sm_rows = np.concatenate([np.repeat(sm.b[k], k.size) for k in self.sm_groups] or [np.zeros(0, np.int64)])
        sm_cols = np.concatenate([np.tile(sm.b[k], k.size) for k in self.sm_groups] or [np.zeros(0, np.int64)])
        all_rows = np.concatenate([lin_rows, d_rows, diag, sm_rows]) - 1
        all_cols = np.concatenate([lin_cols, d_cols, diag, sm_cols]) - 1
        keep = (all_rows >= 0) & (all_cols >= 0)  # ground rows/columns drop out
        key = all_cols.astype(np.int64) * n + all_rows
        uniq, pos = np.unique(key[keep], return_inverse=True)
        self.nnz = uniq.size
        self.indices = (uniq % n).astype(np.int32)
        self.indptr = np.searchsorted(uniq // n, np.arange(n + 1)).astype(np.int32)
        full_pos = np.full(key.size, -1, dtype=np.int64)
        full_pos[keep] = pos
        n_lin, n_d = lin_rows.size, d_rows.size
        lin_keep = full_pos[:n_lin] >= 0
        self.lin_data = np.bincount(full_pos[:n_lin][lin_keep], weights=lin_vals[lin_keep],
                                    minlength=self.nnz).astype(np.float64)
        self.diode_pos = full_pos[n_lin:n_lin + n_d]
        self.diag_pos = full_pos[n_lin + n_d:n_lin + n_d + n_nodes]
        self.sm_pos = full_pos[n_lin + n_d + n_nodes:]
        self.lin_matrix = sp.csc_matrix((self.lin_data, self.indices, self.indptr), shape=(n, n))
        # constant right-hand side: current sources and source voltages
        rhs = np.zeros(n + 1)
        np.add.at(rhs, i.a, -i.value)
        np.add.at(rhs, i.b, i.value)
        rhs[src_rows] = v.value
        self.rhs = rhs[1:]
        self.d_a, self.d_c = d.a, d.b
        cards = nl.models
        if any(c.ideal for c in cards):
            raise EpsimError("ideal diodes are a layered-model concept: the MNA solver needs "
                             "Shockley diodes (compile the network with kind='shockley')")
        self.d_is = np.array([cards[m].is_A for m in d.model], dtype=np.float64)
        self.d_nvt = np.array([cards[m].n for m in d.model], dtype=np.float64) * nl.vt_V
        self.d_vcrit = self.d_nvt * np.log(self.d_nvt / (np.sqrt(2.0) * self.d_is))

    def node_v(self, x):
        """``(num_nodes,)`` voltages with ground prepended."""
        return np.concatenate([[0.0], x[:self.n_nodes]])

    def diode(self, vd):
        """Shockley current (A) and conductance (S) at junction voltages ``vd``."""
        return shockley_array(vd, self.d_is, self.d_nvt)

    def softmax_sources(self, v):
        """At node voltages ``v`` (ground first): the current each softmax source's node loses
        to it (A, ``-A_k (y_k - s_k)``) and the Jacobian entries ``A_k (s_k d_kj - s_k s_j)``
        (S), group by group in the order of :attr:`sm_pos`."""
        leaving = np.zeros(self.sm_node.size)
        jac = []
        for k in self.sm_groups:
            z = v[self.sm_node[k]]
            s = np.exp(z - z.max())
            s /= s.sum()
            a = self.sm_amps[k]
            leaving[k] = -a * (self.sm_target[k] - s)
            jac.append((a * s)[:, None] * (np.eye(k.size) - s[None, :]))
        return leaving, (np.concatenate([j.reshape(-1) for j in jac]) if jac else np.zeros(0))

    def stamp_softmax(self, vector, leaving):
        """Add each softmax source's ``leaving`` current at its node's row of a length-n vector."""
        full = np.zeros(self.n + 1)
        np.add.at(full, self.sm_node, leaving)
        vector += full[1:]

    def stamp_diodes(self, vector, value):
        """Add ``+value`` at anode rows and ``-value`` at cathode rows of a length-n vector."""
        full = np.zeros(self.n + 1)
        np.add.at(full, self.d_a, value)
        np.add.at(full, self.d_c, -value)
        vector += full[1:]

    def residual(self, x, gmin=0.0):
        """``F(x)`` (A for node rows, V for source rows) with exact diode currents."""
        f = self.lin_matrix @ x - self.rhs
        v = self.node_v(x)
        i_d, _ = self.diode(v[self.d_a] - v[self.d_c])
        self.stamp_diodes(f, i_d)
        if self.sm_node.size:
            self.stamp_softmax(f, self.softmax_sources(v)[0])
        if gmin:
            f[:self.n_nodes] += gmin * x[:self.n_nodes]
        return f

    def check_structure(self):
        """EpsimError if the circuit is singular with every diode conducting (1 S): a node
        with no DC path to ground or a loop of voltage sources."""
        with warnings.catch_warnings():
            warnings.simplefilter("error", MatrixRankWarning)
            try:
                splu(self.matrix(np.ones(self.d_a.size), 0.0, np.zeros(self.sm_pos.size)))
            except (RuntimeError, MatrixRankWarning):
                raise EpsimError("singular circuit matrix: a node has no DC path to ground "
                                 "(floating), or voltage sources (V, E) form a loop") from None

    def matrix(self, gd, gmin, sm_jac):
        """The Jacobian: linear stamps, diode conductances ``gd``, ``gmin`` at every node, the
        softmax groups' entries ``sm_jac`` (:meth:`softmax_sources`)."""
        data = self.lin_data.copy()
        g4 = np.concatenate([gd, gd, -gd, -gd])
        ok = self.diode_pos >= 0
        data += np.bincount(self.diode_pos[ok], weights=g4[ok], minlength=self.nnz).astype(np.float64)
        ok = self.sm_pos >= 0
        data += np.bincount(self.sm_pos[ok], weights=sm_jac[ok], minlength=self.nnz).astype(np.float64)
        if gmin:
            data[self.diag_pos] += gmin
        return sp.csc_matrix((data, self.indices, self.indptr), shape=(self.n, self.n))


def _resistor_stamps(r):
    """(rows, cols, values) of the conductances ``1/R`` (1-based indices, ground = 0)."""
    g = 1.0 / r.value
    return (np.concatenate([r.a, r.b, r.a, r.b]), np.concatenate([r.a, r.b, r.b, r.a]),
            np.concatenate([g, g, -g, -g]))


def _vsource_stamps(v, rows):
    """V sources: branch current leaves ``p`` and enters ``m``; row ``v_p - v_m``."""
    one = np.ones(len(v))
    return (np.concatenate([v.a, v.b, rows, rows]), np.concatenate([rows, rows, v.a, v.b]),
            np.concatenate([one, -one, one, -one]))


def _vcvs_stamps(e, rows):
    """E sources: branch current like a V source; row ``v_p - v_m - gain (v_cp - v_cm) = 0``."""
    one, gain = np.ones(len(e)), e.value
    return (np.concatenate([e.a, e.b, rows, rows, rows, rows]),
            np.concatenate([rows, rows, e.a, e.b, e.c, e.d]),
            np.concatenate([one, -one, one, -one, -gain, gain]))


def _cccs_stamps(f, ctl_cols):
    """F sources: ``gain * I(vctl)`` leaves ``p`` and enters ``m`` (``ctl_cols``: the
    controlling sources' branch-current columns)."""
    return (np.concatenate([f.a, f.b]), np.concatenate([ctl_cols, ctl_cols]),
            np.concatenate([f.value, -f.value]))


def _pnjlim(vnew, vold, nvt, vcrit):
    """SPICE junction limiting (ngspice's ``DEVpnjlim``), vectorised; returns (v, limited)."""
    v = vnew.copy()
    fwd = (vnew > vcrit) & (np.abs(vnew - vold) > 2.0 * nvt)
    up = fwd & (vold > 0)
    arg = 1.0 + (vnew - vold) / nvt
    v[up & (arg > 0)] = (vold + nvt * np.log(np.where(arg > 0, arg, 1.0)))[up & (arg > 0)]
    v[up & (arg <= 0)] = vcrit[up & (arg <= 0)]
    cold = fwd & (vold <= 0)
    v[cold] = (nvt * np.log(np.maximum(vnew, 1e-300) / nvt))[cold]
    neg = ~fwd & (vnew < 0)
    floor = np.where(vold > 0, -vold - 1.0, 2.0 * vold - 1.0)
    low = neg & (vnew < floor)
    v[low] = floor[low]
    return v, fwd | low


def _newton(sysm: _System, x, gmin, tol_A, vtol_V, max_iter):
    """Newton iterations at one gmin; returns (x, converged, iterations, residual_A)."""
    v = sysm.node_v(x)
    vd = v[sysm.d_a] - v[sysm.d_c]
    res = np.inf
    for it in range(1, max_iter + 1):
        i_d, g_d = sysm.diode(vd)
        # companion model: i = i_d + g_d (v - vd) -> conductance g_d, source i_d - g_d vd
        rhs = sysm.rhs.copy()
        sysm.stamp_diodes(rhs, -(i_d - g_d * vd))
        leaving, sm_jac = sysm.softmax_sources(v)
        if leaving.size:
            # the same for each softmax group: i = i0 + J (v - v0) -> matrix J, source i0 - J v0
            companion = leaving.copy()
            start = 0
            for k in sysm.sm_groups:
                jac = sm_jac[start:start + k.size ** 2].reshape(k.size, k.size)
                companion[k] -= jac @ v[sysm.sm_node[k]]
                start += k.size ** 2
            sysm.stamp_softmax(rhs, -companion)
        with warnings.catch_warnings():
            warnings.simplefilter("error", MatrixRankWarning)
            try:
                lu = splu(sysm.matrix(g_d, gmin, sm_jac))
            except (RuntimeError, MatrixRankWarning):
                return x, False, it, np.inf  # e.g. every diode at a node cut off to 0 S
        x_new = lu.solve(rhs)
        if not np.all(np.isfinite(x_new)):
            return x, False, it, np.inf
        step = np.max(np.abs(x_new[:sysm.n_nodes] - x[:sysm.n_nodes]), initial=0.0)
        scale = np.max(np.abs(x_new[:sysm.n_nodes]), initial=0.0)
        x = x_new
        v = sysm.node_v(x)
        vd_new, limited = _pnjlim(v[sysm.d_a] - v[sysm.d_c], vd, sysm.d_nvt, sysm.d_vcrit)
        vd = vd_new
        if limited.any():
            continue
        res = np.max(np.abs(sysm.residual(x, gmin)[:sysm.n_nodes]), initial=0.0)
        if res <= tol_A and step <= vtol_V + 1e-12 * scale:
            return x, True, it, res
    return x, False, max_iter, res


def solve_mna(netlist: Netlist, *, tol_A: float = 1e-12, vtol_V: float = 1e-12, max_iter: int = 200,
              init_V=None, strict: bool = True) -> MnaSolution:
    """DC operating point of any circuit of the IR (R of any sign, Shockley D, V, I, E, F).

    Args:
        netlist: the circuit.
        tol_A: KCL residual every node must meet (A).
        vtol_V: largest last Newton step (V) accepted as converged (plus 1e-12 relative).
        max_iter: Newton steps per stage (plain Newton, then each gmin stage).
        init_V: ``(num_nodes,)`` starting voltages (ground first); default all 0 V.
        strict: raise :class:`ConvergenceError` when not converged (else return the flag).
    """
    sysm = _System(netlist)
    x0 = np.zeros(sysm.n)
    if init_V is not None:
        x0[:sysm.n_nodes] = np.asarray(init_V, dtype=np.float64)[1:]
    x, ok, iters, res = _newton(sysm, x0, 0.0, tol_A, vtol_V, max_iter)
    total, stages = iters, 0
    if not ok:
        x = x0
        for gmin in GMIN_STEPS_S + (0.0,):
            stages += 1
            x, ok, iters, res = _newton(sysm, x, gmin, tol_A if gmin == 0.0 else np.inf,
                                        vtol_V if gmin == 0.0 else 1e-6, max_iter)
            total += iters
            if not ok and gmin != 0.0 and not np.all(np.isfinite(x)):
                break
    if not ok:
        sysm.check_structure()
    res = float(np.max(np.abs(sysm.residual(x)[:sysm.n_nodes]), initial=0.0)) if np.all(np.isfinite(x)) else np.inf
    ok = ok and res <= tol_A
    n_v = sysm.n_nodes + sysm.n_src
    sol = MnaSolution(sysm.node_v(x), x[sysm.n_nodes:n_v], res, total, stages, bool(ok), tol_A,
                      x[n_v:])
    if strict and not ok:
        raise ConvergenceError(f"MNA Newton did not converge on {netlist.title!r}: KCL residual "
                               f"{res:.3g} A > tol {tol_A:.3g} A after {total} iterations "
                               f"({stages} gmin stages)")
    return sol
