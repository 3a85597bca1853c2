"""Transient simulation of a layered resistive circuit with node capacitances (numba).

Dynamics. Every free node carries a capacitance ``C`` to ground, so KCL becomes
``C dv/dt = i(v)``, where ``i(v) = c(v) - a v - i_d(v)`` is the net current the node's
conductances, sources and clamp diodes drive into it (:mod:`epsim.solvers.numba_solver`
notation; normalised by ``g_unit``, so ``C / g_unit`` is in seconds). With amplifiers the
same equation holds in the normalised voltages ``u_l = v_l / P_l`` (both sides of layer
l's physical equation carry the factor ``P_l``).

Integration. Implicit and L-stable, for the stiff RC network with clamp diodes: the first
step is backward Euler, the others variable-step BDF2 (second order; with
``w = h_n / h_{n-1}``, ``C [(1+2w)/(1+w) v_{n+1} - (1+w) v_n + w^2/(1+w) v_{n-1}] / h_n =
i(v_{n+1})``; ``w = 1``: ``C (3 v_{n+1} - 4 v_n + v_{n-1}) / (2h)``). The steps start at
``dt_min`` and double up to ``dt`` (the inputs switch on at t = 0 and the first
nanoseconds are the fastest part of the waveform), then stay at ``dt``. Each step is the
DC problem of the same circuit with every capacitor replaced by its companion model, a
conductance ``k C / h`` (``k`` = 1 for Euler, ``(1+2w)/(1+w)`` for BDF2) to a source
holding the history: a passive convex problem, solved exactly like
the equilibrium (odd/even block coordinate descent, exact per-node relaxation with
ideal-diode clamps or Shockley roots) to the KCL tolerance ``tol_A``. Ideal diodes make
the dynamics a projected ODE, which this step handles as it stands.

Energy. Per step the powers (W) at ``v_{n+1}``: delivered by the input sources, the bias
current sources and the amplifiers (a VCVS of gain ``A`` delivering ``A v I`` and its CCCS
absorbing ``v I / A``), dissipated in the conductances and the diodes, and flowing into
the capacitors ``sum v i_C`` with ``i_C`` the companion current. Tellegen's theorem makes
``P_sources = P_resistors + P_diodes + P_capacitors`` at every step (to the KCL
tolerance); integrated with the same (right-endpoint) rule the energies balance alike.
The energy that flowed into the capacitors differs from the change of ``1/2 C v^2`` by the
integrator's numerical dissipation, ``O(h^2)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..circuit.diodes import clamp_power_array
from ..errors import EpsimError
from .numba_solver import LayeredProblem, _residual, _run_phase
from .threads import threads_for


@dataclass(frozen=True)
class Capacitances:
    """Node capacitance model (farads).

    cell_F: line (wire) and device capacitance each crossbar cell adds to the row or
            column line of the node it connects (a node on a line of n cells gets n cells);
    node_F: fixed capacitance of every free node (clamp-diode junction, amplifier or readout
            input, neuron wiring).
    Defaults are order-of-magnitude assumptions for a sub-micron crossbar (0.1 fF per cell:
    ~0.2 fF/µm of interconnect over a ~0.5 µm cell pitch; 10 fF per node), to override
    with a process's figures.
    """

    cell_F: float = 1e-16
    node_F: float = 1e-14

    def __post_init__(self):
        if not (np.isfinite(self.cell_F) and np.isfinite(self.node_F) and self.cell_F >= 0
                and self.node_F >= 0 and self.cell_F + self.node_F > 0):
            raise EpsimError("capacitances must be finite, >= 0, and not both 0 (farads)")


def node_capacitance_F(net, caps: Capacitances) -> list:
    """(n_l,) capacitance (F) of every node of free layers 1..L: ``node_F`` plus ``cell_F``
    times the number of crossbar cells on the node's lines (both adjacent crossbars)."""
    out = []
    for l in range(1, net.num_layers + 1):
        conn_in = net.connections[l - 1]
        cells = conn_in.degree_out(np.ones(conn_in.param_shape))
        if l < net.num_layers:
            conn_out = net.connections[l]
            cells = cells + net.per_node(l, conn_out.degree_in(np.ones(conn_out.param_shape)))
        out.append(caps.node_F + caps.cell_F * cells)
    return out


@dataclass
class Transient:
    """A simulated waveform of a batch.

    t_s: (T+1,) time points (s), t_s[0] = 0 (the initial state).
    v_out: (T+1, B, K) output node voltages (V) at the time points.
    probes: {layer: (T+1, B, m) voltages (V) of the probed nodes of that free layer}.
    v_final: list of (B, n_l) node voltages (V) at the last time point.
    energy_J: {"sources", "resistors", "diodes", "capacitors"} (B,) energies over the window
              (right-endpoint rule); ``stored_J`` (B,) the change of 1/2 C v^2.
    power_W: {"sources", ...} (T, B) powers at t_s[1:] (these three None for a transient
              simulated with ``powers=False``).
    sweeps: (T,) block sweeps per step; max_residual_A: KCL residual of the last step (every
             step stops once each sample's residual is within the tolerance).
    """

    t_s: np.ndarray
    v_out: np.ndarray
    probes: dict
    v_final: list
    energy_J: dict | None
    stored_J: np.ndarray | None
    power_W: dict | None
    sweeps: np.ndarray
    max_residual_A: float
    extras: dict = field(default_factory=dict)


def _step_sources(problem, hist) -> tuple:
    """Per-sample sources (B, n_l) of one implicit step: each node's bias plus its capacitor's
    companion current (the numba sweeps add ``bias[l]`` to the drive, per node or per sample)."""
    return tuple(np.ascontiguousarray(b + h) for b, h in zip(problem.bias_tuple, hist))


def crossbar_degrees(net) -> list:
    """Per crossbar ``k``: ``(degree_in, degree_out)``, the total normalised conductance on each
    of its input terminals and on each node of layer ``k+1`` (fixed while the conductances are)."""
    return [(conn.degree_in(w), conn.degree_out(w)) for conn, w in zip(net.connections, net.w)]


def circuit_powers_W(net, v_input, v_free, beta=0.0, target_V=None, degrees=None) -> dict:
    """Instantaneous powers (W), each (B,), of the circuit at node voltages ``v_free`` (V):
    delivered by ``sources`` (inputs, bias currents, amplifiers, nudging targets) and
    dissipated in the ``resistors`` (crossbar conductances, leaks to 0 V, the nudging conductance
    ``beta g_unit``: negative for ``-beta``) and ``diodes`` (clamps). ``degrees``: the
    network's :func:`crossbar_degrees` when the caller has them (a transient's steps)."""
    g = net.ranges.g_unit_S
    degrees = crossbar_degrees(net) if degrees is None else degrees
    layers = [np.asarray(v_input, np.float64)] + [np.asarray(v, np.float64) for v in v_free]
    p_res = np.zeros(layers[0].shape[0])
    p_src = np.zeros_like(p_res)
    for k, conn in enumerate(net.connections):
        w = net.w[k]
        gain = net.crossbar_input_gain(k)
        vi, vo = gain * net.presented(k, layers[k]), layers[k + 1]  # the crossbar's terminals
        deg_in, deg_out = degrees[k]
        drive_in = conn.drive_in(w, np.ascontiguousarray(vo))  # (B, n_k): sum_j w_ij v_j
        # current each input-side terminal supplies into the crossbar: deg_in v_i - sum_j w_ij v_j
        supplied = vi * deg_in[None, :] - drive_in
        p_res += np.einsum("bi,i->b", vi * vi, deg_in) + np.einsum("bj,j->b", vo * vo, deg_out) \
            - 2.0 * np.einsum("bi,bi->b", drive_in, vi)
        if k == 0:
            p_src += np.einsum("bi,bi->b", vi, supplied)  # the input voltage sources
        elif gain != 1.0:
            # a VCVS delivers (s A v) I, its CCCS absorbs v s I / A (s = -1 on the inverting
            # copy of a differential layer)
            p_src += np.einsum("bi,bi->b", net.presented(k, layers[k]), supplied) * (gain - 1.0 / gain)
        p_src += vo @ net.bias_per_node(k + 1)
        if net.has_leak:
            p_res += np.einsum("bj,j->b", vo * vo, net.leak_per_node(k + 1))
    if beta != 0.0:
        y, v_out = np.asarray(target_V, np.float64), layers[-1]
        p_src += beta * np.einsum("bk,bk->b", y, y - v_out)
        p_res += beta * ((y - v_out) ** 2).sum(axis=1)
    p_diode = np.zeros_like(p_res)
    d = net.diode
    for l, v in enumerate(layers[1:]):
        lo, hi = net.rail_lo_V[l], net.rail_hi_V[l]
        if d.kind == "shockley":
            p_diode += clamp_power_array(v, lo, hi, d.is_A / g, d.n_vt_V)
        # ideal diodes carry current only at zero voltage across them: no power
    return {"sources": p_src * g, "resistors": p_res * g, "diodes": p_diode * g}


def simulate(net, v_input, *, caps: Capacitances = Capacitances(), t_stop_s: float,
             dt_max_s: float | None = None, dt_first_s: float | None = None, lte_tol_V: float = 1e-5,
             tol_A: float = 1e-12, max_iter: int = 10000, probe_nodes: int = 3, init=None,
             beta: float = 0.0, target_V=None, max_steps: int = 200000, powers: bool = True) -> Transient:
    """Transient of ``net`` with inputs stepped at t = 0 to ``v_input`` (B, n_0) (V).

    Args:
        caps: node capacitance model; t_stop_s: end of the window (s).
        dt_max_s: largest step (s; default ``t_stop_s / 200``); dt_first_s: first step (s;
            default ``dt_max_s / 1e4``).
        lte_tol_V: local truncation error allowed per step, every node of every sample (V),
            estimated by the distance between the BDF2 solution and the linear predictor
            ``v_n + w (v_n - v_{n-1})``, times ``w / (1 + 2w)`` (BDF2's error constant against
            the linear predictor's; 1/2 for the Euler start); steps above it are retried at
            half length, steps below it grow (at most 2x per step).
        tol_A: KCL tolerance of every implicit step (A); max_iter: sweeps per step.
        probe_nodes: the first ``probe_nodes`` nodes of every free layer are recorded.
        init: list of (B, n_l) initial node voltages (V); default all 0 V.
        beta, target_V: a nudged phase (``target_V`` (B, K) in V), e.g. from the free state.
        max_steps: accepted steps at most (an error beyond it).
        powers: record the powers and energies (False: only the waveforms, for a readout;
            ``power_W``, ``energy_J`` and ``stored_J`` are then None). The waveforms do not
            depend on it.
    """
    dt_max = t_stop_s / 200.0 if dt_max_s is None else float(dt_max_s)
    h = dt_max * 1e-4 if dt_first_s is None else float(dt_first_s)
    if not (np.isfinite(t_stop_s) and t_stop_s > 0 and np.isfinite(dt_max) and 0 < h <= dt_max <= t_stop_s):
        raise EpsimError("need a window t_stop > 0 and steps 0 < dt_first <= dt_max <= t_stop (seconds)")
    if not (np.isfinite(lte_tol_V) and lte_tol_V > 0):
        raise EpsimError("the truncation-error tolerance must be a positive voltage")
    problem = LayeredProblem(net, v_input)
    g = net.ranges.g_unit_S
    c_phys = node_capacitance_F(net, caps)
    cap_n = [c / g for c in c_phys]  # seconds
    batch = problem.v_input.shape[0]
    u = problem.to_normalised(init) if init is not None else tuple(problem.initial_state())
    u_prev = tuple(x.copy() for x in u)
    kinds, shapes, weights = problem.layout
    tol_n = tol_A / g
    if beta != 0.0 and target_V is None:
        raise EpsimError("a nudged phase needs target voltages")
    if beta != 0.0 and problem.ce_p:
        raise EpsimError("the transient of a cross-entropy-nudged phase is not supported: "
                         "simulate the free phase, or a circuit nudged with the squared error")
    target = problem._target(beta, target_V)
    degree = [problem.self_conductance(l, beta) for l in range(1, net.num_layers + 1)]
    unused = np.zeros(batch, dtype=np.bool_)
    t = [0.0]
    phys = problem.to_physical(u)
    n_probe = {l: min(probe_nodes, n) for l, n in enumerate(net.layer_sizes[1:], start=1)}
    probes = {l: [phys[l - 1][:, :m].copy()] for l, m in n_probe.items()}
    v_out = [phys[-1].copy()]
    record = {k: [] for k in ("sources", "resistors", "diodes", "capacitors")} if powers else None
    degrees = crossbar_degrees(net) if powers else None
    sweeps, rejected = [], 0
    h_prev = None
    with threads_for(problem.node_updates):
        while t[-1] < t_stop_s * (1 - 1e-12):
            if len(t) > max_steps:
                raise EpsimError(f"transient needs more than {max_steps} steps: loosen lte_tol_V or raise max_steps")
            h = min(h, t_stop_s - t[-1])
            if h_prev is None:  # backward Euler start
                k_new, k_old, k_prev, w = 1.0, 1.0, 0.0, 0.0
            else:
                w = h / h_prev
                k_new, k_old, k_prev = (1 + 2 * w) / (1 + w), 1 + w, w * w / (1 + w)
            a = tuple(np.ascontiguousarray(d + k_new * c / h) for d, c in zip(degree, cap_n))
            hist = tuple((c / h) * (k_old * x - k_prev * y) for c, x, y in zip(cap_n, u, u_prev))
            pred = tuple(x + w * (x - y) for x, y in zip(u, u_prev)) if h_prev is not None else u
            new = tuple(x.copy() for x in pred)
            sources = _step_sources(problem, hist)
            # one implicit step is the DC problem of the companion circuit: the equilibrium sweeps
            n_sweeps = _run_phase(kinds, shapes, weights, a, sources, problem.rails_lo, problem.rails_hi,
                                  problem.input_drive, new, new, float(beta), target, 0.0, tol_n, 0.0, int(max_iter),
                                  problem.shockley, problem.is_n, problem.nvt, problem.layer_p, unused,
                                  problem.parallel, False, new, new)
            # local truncation error of BDF2 from the predictor-corrector distance (physical V);
            # the Euler start is judged by its first-order estimate against the state it left
            diff = max(float(np.abs((x - y) * p).max(initial=0.0))
                       for x, y, p in zip(new, pred, problem.layer_p))
            lte = diff * (w / (1 + 2 * w) if h_prev is not None else 0.5)
            if lte > lte_tol_V and h > 1e-6 * dt_max:
                h *= 0.5
                rejected += 1
                continue
            last_step = (a, sources, new)
            phys_new = problem.to_physical(new)
            if record is not None:
                phys_old, phys_prev = problem.to_physical(u), problem.to_physical(u_prev)
                p = circuit_powers_W(net, problem.v_input, phys_new, beta, target_V, degrees)
                for k in ("sources", "resistors", "diodes"):
                    record[k].append(p[k])
                i_c = [c * (k_new * x1 - k_old * x0 + k_prev * xp) / h
                       for c, x1, x0, xp in zip(c_phys, phys_new, phys_old, phys_prev)]
                record["capacitors"].append(sum((x * i).sum(axis=1) for x, i in zip(phys_new, i_c)))
            sweeps.append(n_sweeps)
            t.append(t[-1] + h)
            u_prev, u, h_prev = u, new, h
            for l, m in n_probe.items():
                probes[l].append(phys_new[l - 1][:, :m].copy())
            v_out.append(phys_new[-1].copy())
            grow = 2.0 if lte < 1e-3 * lte_tol_V else float(np.clip(0.9 * np.sqrt(lte_tol_V / max(lte, 1e-300)), 0.5, 2.0))
            h = min(h * grow, dt_max)
    # the kernel stops a sample once its KCL residual is within tol_A; certify the last step
    a, sources, new = last_step
    res = np.zeros(batch)
    _residual(kinds, shapes, weights, a, sources, problem.rails_lo, problem.rails_hi, problem.input_drive, new,
              float(beta), target, 0.0, problem.shockley, problem.is_n, problem.nvt, problem.layer_p, res,
              problem.parallel)
    worst = float(res.max()) * g
    t = np.array(t)
    v_final = problem.to_physical(u)
    power_W = energy = stored = None
    if record is not None:
        power_W = {k: np.array(v) for k, v in record.items()}
        energy = {k: np.diff(t) @ p for k, p in power_W.items()}
        v0 = [np.zeros_like(x) for x in v_final] if init is None else [np.asarray(x) for x in init]
        stored = sum((0.5 * c * (x * x - y * y)).sum(axis=1) for c, x, y in zip(c_phys, v_final, v0))
    if worst > tol_A:
        raise EpsimError(f"a transient step missed its KCL tolerance ({worst:.3g} A > {tol_A:.3g} A "
                         f"after {max_iter} sweeps): raise max_iter")
    return Transient(t, np.array(v_out), {l: np.array(v) for l, v in probes.items()}, v_final, energy,
                     stored, power_W, np.array(sweeps), worst, {"rejected_steps": rejected})


def settling_times_s(tr: Transient, v_eq_out, tol_V: float) -> tuple:
    """Per sample (B,): the time after which every output stays within ``tol_V`` of the DC
    outputs ``v_eq_out`` (B, K), and the time after which the predicted class no longer
    changes (``inf`` when the window ends first)."""
    err = np.abs(tr.v_out - np.asarray(v_eq_out)[None]).max(axis=2)  # (T+1, B)
    pred = np.argmax(tr.v_out, axis=2)
    final_pred = np.argmax(np.asarray(v_eq_out), axis=1)

    def last_violation(bad):  # (T+1, B) -> time after the last True (inf if at the end)
        t = np.full(bad.shape[1], 0.0)
        for b in range(bad.shape[1]):
            idx = np.flatnonzero(bad[:, b])
            if idx.size == 0:
                continue
            t[b] = np.inf if idx[-1] == len(tr.t_s) - 1 else tr.t_s[idx[-1] + 1]
        return t

    return last_violation(err > tol_V), last_violation(pred != final_pred[None])
