"""Exact block coordinate descent for layered resistive networks, jitted with numba.

Nodes of one layer only touch the two neighbouring layers, so given those, every node's
KCL is a 1-D equation ``a*v - c + i_diode(v) = 0`` with ``a`` its total conductance and
``c`` the current its neighbours and sources drive into it (normalised units, see
:mod:`epsim.models.resistive`; the diode law is :mod:`epsim.circuit.diodes`). Ideal diodes: ``v = clip(c/a, lo, hi)`` (closed form).
Shockley diodes: a bracketed (safeguarded) Newton iteration to machine precision.
Odd layers are solved together, then even layers: each such sweep decreases the energy
and the iteration stops per sample once the KCL residual is below ``tol_A``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from ..circuit.diodes import clamp_current, clamp_current_delta, ideal_violation
from ..models.connections import (SMALL_BATCH, _conv_forward, _conv_forward_padded, _conv_transpose,
                                  _conv_transpose_padded, _dense_drive_in, _dense_drive_out)
from .base import Certificate, Equilibrium, check_no_floating_nodes, check_nudge
from .stop_rule import rule_step
from .threads import PARALLEL_MIN_NODE_UPDATES, numba_threads, threads_for


@nb.njit(cache=True, inline="always")
def _diode_current(v0, x, lo, hi, is_n, nvt, delta):
    """The clamp diodes' current at ``x`` and d/dx (``delta``: their change from ``v0`` to
    ``v0 + x``, :func:`~epsim.circuit.diodes.clamp_current_delta`)."""
    if delta:
        return clamp_current_delta(v0, x, lo, hi, is_n, nvt)
    return clamp_current(x, lo, hi, is_n, nvt)


@nb.njit(cache=True)
def _shockley_node(a, c, lo, hi, is_n, nvt, v_warm, v0=0.0, delta=False):
    """Root of the strictly increasing ``f(v) = a v - c + i_diode(v)``, bracketed Newton,
    started from ``clip(c/a, lo, hi)`` or from ``v_warm`` (the node's present voltage),
    whichever has the smaller ``|f|``.

    ``delta``: solve instead for the change ``x`` from ``v0`` of a node whose equation at
    ``v0`` balances: ``a x - c + [i_diode(v0 + x) - i_diode(v0)] = 0`` (``c``: the change of
    its driving current), to the precision of ``x`` itself."""
    g0 = 0.0
    if delta:
        _, g0 = clamp_current(v0, lo, hi, is_n, nvt)
    unit = 0.0 if delta else 1.0  # steps are judged against |v| + unit: relative for a change
    v = c / (a + g0)
    if v < lo - v0:
        v = lo - v0
    if v > hi - v0:
        v = hi - v0
    i, di = _diode_current(v0, v, lo, hi, is_n, nvt, delta)
    iw, _ = _diode_current(v0, v_warm, lo, hi, is_n, nvt, delta)
    if abs(a * v_warm - c + iw) < abs(a * v - c + i):
        v = v_warm
        i = iw
    f = a * v - c + i
    if f == 0.0:
        return v
    step = nvt
    if f > 0.0:
        right = v
        left = v - step
        while True:
            il, _ = _diode_current(v0, left, lo, hi, is_n, nvt, delta)
            if a * left - c + il <= 0.0:
                break
            step *= 2.0
            left = v - step
    else:
        left = v
        right = v + step
        while True:
            ir, _ = _diode_current(v0, right, lo, hi, is_n, nvt, delta)
            if a * right - c + ir >= 0.0:
                break
            step *= 2.0
            right = v + step
    for _ in range(200):
        i, di = _diode_current(v0, v, lo, hi, is_n, nvt, delta)
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
        if abs(v_new - v) <= 1e-15 * (unit + abs(v)) or right - left <= 1e-15 * (unit + abs(v)):
            return v_new
        v = v_new
    return v


@nb.njit(cache=True, inline="always")
def _node_residual(a, c, v, lo, hi, shockley, is_n, nvt):
    """KCL violation (normalised current) at one node."""
    r = a * v - c
    if shockley:
        i, _ = clamp_current(v, lo, hi, is_n, nvt)
        return abs(r + i)
    return ideal_violation(r, v, lo, hi, a)


@nb.njit(cache=True, inline="always")
def _relax_node(a, c, lo, hi, shockley, is_n, nvt, v_warm, delta, v0, s):
    """Voltage (V) that satisfies one node's KCL given its neighbours (``v_warm``: its
    present voltage, a start for the Shockley root).

    ``delta``: the node's change from its balanced voltage ``v0`` instead, ``c`` being the
    change of its driving current and ``s`` the current its clamp diode carried at ``v0``
    (ideal diodes; 0 off the rails): ``x = clip((s + c) / a, lo - v0, hi - v0)``."""
    if delta:
        if shockley:
            return _shockley_node(a, c, lo, hi, is_n, nvt, v_warm, v0, True)
        x = (s + c) / a
        if x < lo - v0:
            x = lo - v0
        elif x > hi - v0:
            x = hi - v0
        return x
    if shockley:
        return _shockley_node(a, c, lo, hi, is_n, nvt, v_warm)
    x = c / a
    if x < lo:
        x = lo
    elif x > hi:
        x = hi
    return x


@nb.njit(cache=True, inline="always")
def _relax_sample(b, a, c, lo, hi, shockley, is_n, nvt, v, v_ref, track, change, response, scale,
                  delta, v0, s):
    """Relax sample ``b`` of one layer in place; with ``track``, record its largest change,
    its largest distance from ``v_ref`` and its largest |voltage| (V) at index ``b``.
    ``delta``: ``v`` holds changes from the balanced state ``v0`` (B, n), ``s`` (B, n) its
    clamp currents (see :func:`_relax_node`; both unused otherwise)."""
    dmax = 0.0
    rmax = 0.0
    smax = 0.0
    for k in range(c.shape[1]):
        if delta:
            x = _relax_node(a[k], c[b, k], lo[k], hi[k], shockley, is_n, nvt, v[b, k], True, v0[b, k], s[b, k])
        else:
            x = _relax_node(a[k], c[b, k], lo[k], hi[k], shockley, is_n, nvt, v[b, k], False, 0.0, 0.0)
        if track:
            dmax = max(dmax, abs(x - v[b, k]))
            rmax = max(rmax, abs(x - v_ref[b, k]))
            smax = max(smax, abs(x))
        v[b, k] = x
    if track:
        change[b] = dmax
        response[b] = rmax
        scale[b] = smax


@nb.njit(parallel=True, cache=True)
def _relax_parallel(a, c, lo, hi, shockley, is_n, nvt, active, v, v_ref, track, change, response, scale,
                    delta, v0, s):
    for b in nb.prange(c.shape[0]):
        if active[b]:
            _relax_sample(b, a, c, lo, hi, shockley, is_n, nvt, v, v_ref, track, change, response, scale,
                          delta, v0, s)


@nb.njit(cache=True)
def _relax_serial(a, c, lo, hi, shockley, is_n, nvt, active, v, v_ref, track, change, response, scale,
                  delta, v0, s):
    for b in range(c.shape[0]):
        if active[b]:
            _relax_sample(b, a, c, lo, hi, shockley, is_n, nvt, v, v_ref, track, change, response, scale,
                          delta, v0, s)


@nb.njit(cache=True)
def relax_layer(a, c, lo, hi, shockley, is_n, nvt, active, v, parallel):
    """Solve the nodes of one layer given its neighbours, in place, for ``active`` samples.

    a: (n,) self-conductance; c: (B, n) driving current; lo/hi: (n,) rails (V);
    active: (B,) bool, samples to update; v: (B, n) voltages, updated in place;
    parallel: samples on numba's threads (worth it for large batches only: every parallel
    region costs a thread-pool launch).
    """
    unused = np.empty(0)
    if parallel:
        _relax_parallel(a, c, lo, hi, shockley, is_n, nvt, active, v, v, False, unused, unused, unused,
                        False, v, v)
    else:
        _relax_serial(a, c, lo, hi, shockley, is_n, nvt, active, v, v, False, unused, unused, unused,
                      False, v, v)


@nb.njit(cache=True)
def relax_layer_tracked(a, c, lo, hi, shockley, is_n, nvt, active, v, v_ref, change, response,
                        scale, parallel, delta, v0, s):
    """:func:`relax_layer`, also writing per sample (``(B,)`` arrays, V) the largest change
    of a node (``change``), its largest distance from ``v_ref`` (B, n) after the update
    (``response``) and the largest |voltage| of the layer (``scale``); ``delta``, ``v0``,
    ``s``: :func:`_relax_sample`'s change form."""
    if parallel:
        _relax_parallel(a, c, lo, hi, shockley, is_n, nvt, active, v, v_ref, True, change, response, scale,
                        delta, v0, s)
    else:
        _relax_serial(a, c, lo, hi, shockley, is_n, nvt, active, v, v_ref, True, change, response, scale,
                      delta, v0, s)


@nb.njit(cache=True, inline="always")
def _residual_sample(b, a, c, lo, hi, shockley, is_n, nvt, v, res_scale, residual):
    worst = 0.0
    for k in range(c.shape[1]):
        worst = max(worst, _node_residual(a[k], c[b, k], v[b, k], lo[k], hi[k], shockley, is_n, nvt))
    residual[b] = max(residual[b], worst * res_scale)


@nb.njit(parallel=True, cache=True)
def _residual_parallel(a, c, lo, hi, shockley, is_n, nvt, v, res_scale, residual):
    for b in nb.prange(c.shape[0]):
        _residual_sample(b, a, c, lo, hi, shockley, is_n, nvt, v, res_scale, residual)


@nb.njit(cache=True)
def _residual_serial(a, c, lo, hi, shockley, is_n, nvt, v, res_scale, residual):
    for b in range(c.shape[0]):
        _residual_sample(b, a, c, lo, hi, shockley, is_n, nvt, v, res_scale, residual)


@nb.njit(cache=True)
def layer_residual(a, c, lo, hi, shockley, is_n, nvt, v, res_scale, residual, parallel):
    """Fold each sample's max KCL residual of one layer, times ``res_scale``, into
    ``residual`` (B,), in place.

    Shapes as :func:`relax_layer`; residuals are normalised currents (A / g_unit);
    ``res_scale`` is the layer's ``P_l`` (its normalised KCL is the physical one / ``P_l``).
    """
    if parallel:
        _residual_parallel(a, c, lo, hi, shockley, is_n, nvt, v, res_scale, residual)
    else:
        _residual_serial(a, c, lo, hi, shockley, is_n, nvt, v, res_scale, residual)


KIND_DENSE, KIND_CONV = 0, 1


@nb.njit(cache=True)
def _residual(kinds, shapes, weights, a, bias, lo, hi, input_drive, v, beta, target, ce_p, shockley,
              is_n, nvt, layer_p, res, parallel):
    """Fold each sample's max KCL residual (normalised, in physical units: each layer's
    times its ``layer_p``) over all layers into ``res`` (B,). ``ce_p``: 0 for the
    squared-error nudge, else the output layer's ``P_L`` for the cross-entropy nudge."""
    for l in range(len(v)):
        c = np.empty_like(v[l])
        _layer_drive(l, kinds, shapes, weights, bias, input_drive, v, beta, target, ce_p, c)
        c = _nudged_drive(l, len(v), c, v[l], beta, target, ce_p)
        layer_residual(a[l], c, lo[l], hi[l], shockley, is_n[l], nvt[l], v[l], layer_p[l], res, parallel)


def connection_layout(net, views=None):
    """``(kinds, shapes, weights)`` describing ``net``'s connections to the jitted sweeps,
    over the layers' own nodes (:meth:`~epsim.models.resistive.ResistiveNetwork.crossbar_views`;
    ``views``: those views, when already built).

    kinds: (L,) int64, :data:`KIND_DENSE` or :data:`KIND_CONV`; shapes: (L, 9) int64, a
    dense ``(n_in, n_out)`` or a conv ``(c_out, c_in, k, stride, h, w, h_out, w_out, padding)``;
    weights: tuple of flat float64 drive weights (views of ``net.w``, no copies, unless a
    layer is presented differentially).
    """
    views = views if views is not None else net.crossbar_views()
    L = net.num_layers
    kinds = np.zeros(L, dtype=np.int64)
    shapes = np.zeros((L, 9), dtype=np.int64)
    for l, conn in enumerate(view.conn for view in views):
        if conn.kind == "dense":
            kinds[l] = KIND_DENSE
            shapes[l, :2] = conn.param_shape
        else:
            kinds[l] = KIND_CONV
            co, ci, k, _ = conn.param_shape
            _, h, w = conn.in_shape
            _, h_out, w_out = conn.out_shape
            shapes[l] = (co, ci, k, conn.stride, h, w, h_out, w_out, conn.padding)
    weights = tuple(np.ascontiguousarray(view.w_drive, dtype=np.float64).reshape(-1) for view in views)
    return kinds, shapes, weights


@nb.njit(cache=True)
def _add_drive(kind, shape, w_flat, v, out, into_inputs):
    """``out += `` the current that connection ``w_flat`` drives from the voltages ``v`` into
    its output nodes (``v``: its inputs, (B, n_in)) or, with ``into_inputs``, into its input
    nodes (``v``: its outputs, (B, n_out))."""
    batch = v.shape[0]
    tmp = np.empty_like(out)
    if kind == KIND_DENSE:
        w = w_flat.reshape((shape[0], shape[1]))
        if batch > SMALL_BATCH:
            tmp[:, :] = np.dot(v, w.T) if into_inputs else np.dot(v, w)
        elif into_inputs:
            _dense_drive_in(v, w, tmp)
        else:
            _dense_drive_out(v, w, tmp)
    else:
        co, ci, k, stride, h, wd, h_out, w_out, pad = shape
        w = w_flat.reshape((co, ci, k, k))
        if into_inputs:
            tmp[:, :] = 0.0
            if pad:
                _conv_transpose_padded(w, v.reshape((batch, co, h_out, w_out)), stride, pad,
                                       tmp.reshape((batch, ci, h, wd)))
            else:
                _conv_transpose(w, v.reshape((batch, co, h_out, w_out)), stride, tmp.reshape((batch, ci, h, wd)))
        elif pad:
            _conv_forward_padded(w, v.reshape((batch, ci, h, wd)), stride, pad, tmp.reshape((batch, co, h_out, w_out)))
        else:
            _conv_forward(w, v.reshape((batch, ci, h, wd)), stride, tmp.reshape((batch, co, h_out, w_out)))
    out += tmp


@nb.njit(cache=True)
def _layer_drive(l, kinds, shapes, weights, bias, input_drive, v, beta, target, ce_p, out):
    """Normalised current (B, n) driven into free layer ``l`` (0-based) by its neighbours,
    bias sources and, on the output layer, the squared-error nudge's source ``beta * target``
    (its conductance ``beta`` is in the self-conductance); written to ``out``. With the
    cross-entropy nudge (``ce_p > 0``) the nudge depends on the outputs themselves and is
    left to :func:`_relax_output_ce` / :func:`_add_ce_nudge`."""
    n_layers = len(v)
    if l == 0:
        out[:, :] = input_drive
    else:
        out[:, :] = 0.0
        _add_drive(kinds[l], shapes[l], weights[l], v[l - 1], out, False)
    out += bias[l]
    if l < n_layers - 1:
        _add_drive(kinds[l + 1], shapes[l + 1], weights[l + 1], v[l + 1], out, True)
    elif beta != 0.0 and ce_p == 0.0:
        out += beta * target


@nb.njit(cache=True)
def _add_ce_nudge(c, u, beta, y, ce_p):
    """``c += (beta / P) (y - softmax(P u))``, in place: the cross-entropy nudge current of
    the normalised output nodes ``u`` (B, K), ``P = ce_p`` the output layer's ``P_L``, ``y``
    (B, K) the target probabilities (one-hot)."""
    batch, k_out = u.shape
    p = np.empty(k_out)
    for b in range(batch):
        _softmax(u[b], ce_p, p)
        for k in range(k_out):
            c[b, k] += beta / ce_p * (y[b, k] - p[k])


@nb.njit(cache=True)
def _nudged_drive(l, n_layers, c, u, beta, y, ce_p):
    """The whole current into free layer ``l``'s nodes for a residual: ``c`` itself, or on the
    output layer of a cross-entropy-nudged phase a copy with the nudge current at ``u`` added."""
    if l != n_layers - 1 or ce_p == 0.0 or beta == 0.0:
        return c
    out = c.copy()
    _add_ce_nudge(out, u, beta, y, ce_p)
    return out


@nb.njit(cache=True, inline="always")
def _softmax(u, scale, p):
    """``p = softmax(scale * u)`` of one sample (K,), in place; returns log-sum-exp."""
    m = -np.inf
    for k in range(u.shape[0]):
        m = max(m, scale * u[k])
    total = 0.0
    for k in range(u.shape[0]):
        p[k] = np.exp(scale * u[k] - m)
        total += p[k]
    for k in range(u.shape[0]):
        p[k] /= total
    return m + np.log(total)


@nb.njit(cache=True)
def _ce_potential(a, c, beta, y, ce_p, u, p, u0, w):
    """The output block's potential ``1/2 sum a u^2 - c.u + beta/P^2 (lse(P (u0 + u)) - y.(P u))``
    whose gradient is the output nodes' KCL residual (``u0`` (K,) the outputs' balanced
    state when ``u`` is a change from it, else zeros; ``p``, ``w``: scratch (K,); ``p``
    receives ``softmax(P (u0 + u))``)."""
    for k in range(u.shape[0]):
        w[k] = u0[k] + u[k]
    lse = _softmax(w, ce_p, p)
    f = 0.0
    for k in range(u.shape[0]):
        f += 0.5 * a[k] * u[k] * u[k] - c[k] * u[k] - beta / ce_p * y[k] * u[k]
    return f + beta / (ce_p * ce_p) * lse


@nb.njit(cache=True)
def _relax_output_ce(a, c, beta, y, ce_p, active, v, v_ref, track, change, response, scale, delta, u0):
    """Solve the output nodes' KCL ``a u - c - (beta/P)(y - softmax(P u)) = 0`` per active
    sample, in place (``v`` (B, K) normalised, warm start): Newton's method on the strictly
    convex output potential (:func:`_ce_potential`; convex for ``-beta`` too while
    ``a > |beta|``), Sherman-Morrison for the Jacobian ``diag(a + beta p) - beta p p^T``.
    A step is taken when it lowers the potential or the largest KCL residual (near the root
    the potential's decrease is below its rounding), else halved. Tracking as
    :func:`_relax_sample`. ``delta``: ``v`` holds the outputs' changes from the balanced free
    state ``u0`` (B, K), ``c`` the change of their drive, and the softmax is taken at
    ``u0 + v``."""
    batch, k_out = v.shape
    unit = 0.0 if delta else 1.0  # steps are judged against |u| + unit: relative for a change
    base = np.zeros(k_out)
    w = np.empty(k_out)
    p = np.empty(k_out)
    u = np.empty(k_out)
    trial = np.empty(k_out)
    step = np.empty(k_out)
    g = np.empty(k_out)
    for b in range(batch):
        if not active[b]:
            continue
        for k in range(k_out):
            u[k] = v[b, k]
            base[k] = u0[b, k] if delta else 0.0
        f = _ce_potential(a, c[b], beta, y[b], ce_p, u, p, base, w)
        for _ in range(100):
            # residual and Newton step at u (p = softmax(P u) from its potential evaluation)
            dg = 0.0
            dp = 0.0
            g_max = 0.0
            for k in range(k_out):
                g[k] = a[k] * u[k] - c[b, k] - beta / ce_p * (y[b, k] - p[k])
                g_max = max(g_max, abs(g[k]))
                d = a[k] + beta * p[k]
                dg += p[k] * g[k] / d
                dp += p[k] * p[k] / d
            if g_max == 0.0:
                break
            coef = beta * dg / (1.0 - beta * dp)
            step_max = 0.0
            u_max = 0.0
            for k in range(k_out):
                step[k] = (g[k] + coef * p[k]) / (a[k] + beta * p[k])
                step_max = max(step_max, abs(step[k]))
                u_max = max(u_max, abs(u[k]))
            if step_max <= 1e-16 * (unit + u_max):
                break
            t = 1.0
            accepted = False
            for _ls in range(60):
                for k in range(k_out):
                    trial[k] = u[k] - t * step[k]
                f_new = _ce_potential(a, c[b], beta, y[b], ce_p, trial, p, base, w)
                if f_new < f:
                    accepted = True
                else:
                    g_new = 0.0
                    for k in range(k_out):
                        g_new = max(g_new, abs(a[k] * trial[k] - c[b, k] - beta / ce_p * (y[b, k] - p[k])))
                    accepted = g_new < g_max
                if accepted:
                    break
                t *= 0.5
            if not accepted:
                for k in range(k_out):
                    w[k] = base[k] + u[k]
                _softmax(w, ce_p, p)
                break
            f = f_new
            for k in range(k_out):
                u[k] = trial[k]
        dmax = 0.0
        rmax = 0.0
        smax = 0.0
        for k in range(k_out):
            if track:
                dmax = max(dmax, abs(u[k] - v[b, k]))
                rmax = max(rmax, abs(u[k] - v_ref[b, k]))
                smax = max(smax, abs(u[k]))
            v[b, k] = u[k]
        if track:
            change[b] = dmax
            response[b] = rmax
            scale[b] = smax


@nb.njit(cache=True)
def _relax_any(l, n_layers, a, c, lo, hi, shockley, is_n, nvt, active, v, v_ref, beta, target, ce_p,
               relative, change, response, scale, parallel, delta, v0, s):
    """Solve free layer ``l`` (0-based) given its drive ``c``, in place; the output layer of a
    cross-entropy-nudged phase by :func:`_relax_output_ce`, every other by :func:`relax_layer`
    (tracked for the relative rule when ``relative``; ``delta``, ``v0``, ``s``: the change
    form, :func:`_relax_sample`)."""
    if l == n_layers - 1 and ce_p > 0.0 and beta != 0.0:
        _relax_output_ce(a, c, beta, target, ce_p, active, v, v_ref, relative, change, response, scale,
                         delta, v0)
    elif relative:
        relax_layer_tracked(a, c, lo, hi, shockley, is_n, nvt, active, v, v_ref, change, response, scale,
                            parallel, delta, v0, s)
    else:
        relax_layer(a, c, lo, hi, shockley, is_n, nvt, active, v, parallel)


@nb.njit(cache=True)
def _delta_drive(l, kinds, shapes, weights, d, beta, target, ce_p, u_free, out):
    """Change (B, n) of the normalised current driven into free layer ``l`` (0-based) when
    the free layers move by ``d`` from the free state ``u_free`` (tuples of (B, n_l)),
    written to ``out``: the crossbars carry the neighbours' changes (the input sources and
    biases do not move); on the output layer of a squared-error-nudged phase the nudge's
    source adds ``beta (target - u_free)`` (its conductance ``beta`` is in the
    self-conductance). Cross-entropy nudge: :func:`_relax_output_ce`."""
    n_layers = len(d)
    out[:, :] = 0.0
    if l > 0:
        _add_drive(kinds[l], shapes[l], weights[l], d[l - 1], out, False)
    if l < n_layers - 1:
        _add_drive(kinds[l + 1], shapes[l + 1], weights[l + 1], d[l + 1], out, True)
    elif beta != 0.0 and ce_p == 0.0:
        out += beta * (target - u_free[l])


@nb.njit(cache=True)
def _clamp_currents(kinds, shapes, weights, a, bias, lo, hi, input_drive, u, ce_p, shockley, out):
    """Per free layer, the current ``c - a u`` (B, n_l) each ideal clamp diode carries in the
    free state ``u`` (a tuple of (B, n_l)), written to ``out``: kept with the sign a diode
    can carry (into a node held at its lower rail, out of one at its upper rail) and 0 off
    the rails. All zeros for Shockley diodes, whose current is a function of the voltage."""
    no_target = np.zeros((u[0].shape[0], u[-1].shape[1]))
    for l in range(len(u)):
        out[l][:, :] = 0.0
        if shockley:
            continue
        c = np.empty_like(u[l])
        _layer_drive(l, kinds, shapes, weights, bias, input_drive, u, 0.0, no_target, ce_p, c)
        for b in range(c.shape[0]):
            for k in range(c.shape[1]):
                x = u[l][b, k]
                if x <= lo[l][k]:
                    out[l][b, k] = min(c[b, k] - a[l][k] * x, 0.0)
                elif x >= hi[l][k]:
                    out[l][b, k] = max(c[b, k] - a[l][k] * x, 0.0)


@nb.njit(cache=True)
def _run_phase(kinds, shapes, weights, a, bias, lo, hi, input_drive, v, v_ref, beta, target, ce_p,
               tol_n, rtol, max_iter, shockley, is_n, nvt, layer_p, met, parallel, delta, u_free, clamp):
    """Odd/even block coordinate descent of one phase on the state ``v`` (tuple of (B, n_l),
    updated in place). ``rtol > 0``: stop each sample on the relative nudge rule against
    ``v_ref`` (:func:`~epsim.solvers.stop_rule.rule_step`), writing ``met``; otherwise on the
    KCL residual ``tol_n`` (normalised, physical: each layer's times its ``layer_p``).
    ``is_n``, ``nvt``, ``layer_p``: (L,) per-layer diode constants and ``P_l`` (see
    :class:`LayeredProblem`); ``ce_p``: 0 for the squared-error nudge, else the output
    layer's ``P_L`` for the cross-entropy nudge. Returns the number of sweeps.

    ``delta`` (a nudged phase, with ``rtol > 0`` and ``v_ref`` zeros; else pass ``v`` for
    ``u_free`` and ``clamp``): ``v`` holds the
    change of every node from the free state ``u_free`` and is solved as such
    (:func:`_delta_drive`, :func:`_relax_node`; ``clamp``: :func:`_clamp_currents` of the
    free state), so that a response many orders below the nodes' voltages keeps its own
    precision instead of the rounding of ``u_free + v``."""
    n_layers = len(v)
    batch = v[0].shape[0]
    active = np.ones(batch, dtype=np.bool_)
    odd = np.arange(0, n_layers, 2)  # 0-based: layers 1, 3, ... of the docs
    even = np.arange(1, n_layers, 2)
    drives = [np.empty_like(x) for x in v]
    relative = rtol > 0.0
    change = np.zeros((n_layers, batch))
    response = np.zeros((n_layers, batch))
    scale = np.zeros((n_layers, batch))
    change_prev = np.full((n_layers, batch), np.inf)
    error = np.zeros((n_layers, batch))
    res = np.zeros(batch)
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        # odd layers only touch even layers: all their drives come from the current state
        for l in odd:
            if delta:
                _delta_drive(l, kinds, shapes, weights, v, beta, target, ce_p, u_free, drives[l])
            else:
                _layer_drive(l, kinds, shapes, weights, bias, input_drive, v, beta, target, ce_p, drives[l])
        if not relative and sweeps > 1:
            # the even layers were solved against the current odd layers in the last sweep,
            # so the odd layers' residual is the whole state's: stop the converged samples
            res[:] = 0.0
            for l in odd:
                layer_residual(a[l], _nudged_drive(l, n_layers, drives[l], v[l], beta, target, ce_p), lo[l], hi[l], shockley, is_n[l], nvt[l], v[l], layer_p[l],
                               res, parallel)
            n_active = 0
            for b in range(batch):
                active[b] = active[b] and res[b] > tol_n
                n_active += active[b]
            if n_active == 0:
                break
        for l in odd:
            _relax_any(l, n_layers, a[l], drives[l], lo[l], hi[l], shockley, is_n[l], nvt[l], active, v[l],
                       v_ref[l], beta, target, ce_p, relative, change[l], response[l], scale[l], parallel,
                       delta, u_free[l] if delta else v[l], clamp[l] if delta else v[l])
        for l in even:
            if delta:
                _delta_drive(l, kinds, shapes, weights, v, beta, target, ce_p, u_free, drives[l])
            else:
                _layer_drive(l, kinds, shapes, weights, bias, input_drive, v, beta, target, ce_p, drives[l])
            _relax_any(l, n_layers, a[l], drives[l], lo[l], hi[l], shockley, is_n[l], nvt[l], active, v[l],
                       v_ref[l], beta, target, ce_p, relative, change[l], response[l], scale[l], parallel,
                       delta, u_free[l] if delta else v[l], clamp[l] if delta else v[l])
        if relative:
            rule_step(change, response, scale, change_prev, error, rtol, active, met)
            n_active = 0
            for b in range(batch):
                active[b] = active[b] and not met[b]
                n_active += active[b]
            if n_active == 0:
                break
    return sweeps


@nb.njit(cache=True)
def _centered_phases(kinds, shapes, weights, a_free, a_plus, a_minus, bias, lo, hi, input_drive,
                     v_free, v_plus, v_minus, d_plus, d_minus, clamp, zero, beta, target, ce_p, tol_n, rtol,
                     max_iter, shockley, is_n, nvt, layer_p, met_plus, met_minus, residuals, parallel):
    """Free, +beta and -beta phases of one batch in a single call (see :func:`_run_phase`):
    ``v_free`` is solved from its given state, then the nudged phases from it. With
    ``rtol > 0`` they are solved for their changes from it, written to ``d_plus``/``d_minus``,
    and ``v_plus``/``v_minus`` receive ``v_free`` plus those changes; otherwise ``v_free`` is
    copied into ``v_plus``/``v_minus`` and the phases solved on the voltages themselves.
    ``clamp``: scratch for the free state's clamp currents; ``zero``: zeros; all tuples of
    (B, n_l). ``residuals`` (3, B) receives each phase's max KCL residual (normalised).
    Returns the three sweep counts."""
    no_target = np.zeros_like(target)
    unused = np.zeros(v_free[0].shape[0], dtype=np.bool_)
    s_free = _run_phase(kinds, shapes, weights, a_free, bias, lo, hi, input_drive, v_free, v_free,
                        0.0, no_target, ce_p, tol_n, 0.0, max_iter, shockley, is_n, nvt, layer_p, unused, parallel,
                        False, v_free, v_free)
    delta = rtol > 0.0
    if delta:
        _clamp_currents(kinds, shapes, weights, a_free, bias, lo, hi, input_drive, v_free, ce_p, shockley, clamp)
    else:
        for l in range(len(v_free)):
            v_plus[l][:, :] = v_free[l]
            v_minus[l][:, :] = v_free[l]
    ref = zero if delta else v_free
    s_plus = _run_phase(kinds, shapes, weights, a_plus, bias, lo, hi, input_drive, d_plus if delta else v_plus,
                        ref, beta, target, ce_p, tol_n, rtol, max_iter, shockley, is_n, nvt, layer_p, met_plus,
                        parallel, delta, v_free, clamp)
    s_minus = _run_phase(kinds, shapes, weights, a_minus, bias, lo, hi, input_drive, d_minus if delta else v_minus,
                         ref, -beta, target, ce_p, tol_n, rtol, max_iter, shockley, is_n, nvt, layer_p, met_minus,
                         parallel, delta, v_free, clamp)
    if delta:
        for l in range(len(v_free)):
            v_plus[l][:, :] = v_free[l] + d_plus[l]
            v_minus[l][:, :] = v_free[l] + d_minus[l]
    residuals[:, :] = 0.0
    _residual(kinds, shapes, weights, a_free, bias, lo, hi, input_drive, v_free, 0.0, no_target, ce_p,
              shockley, is_n, nvt, layer_p, residuals[0], parallel)
    _residual(kinds, shapes, weights, a_plus, bias, lo, hi, input_drive, v_plus, beta, target, ce_p,
              shockley, is_n, nvt, layer_p, residuals[1], parallel)
    _residual(kinds, shapes, weights, a_minus, bias, lo, hi, input_drive, v_minus, -beta, target, ce_p,
              shockley, is_n, nvt, layer_p, residuals[2], parallel)
    return s_free, s_plus, s_minus


class LayeredProblem:
    """Precomputed, phase-independent quantities of one network and one input batch.

    Built once per batch and shared by the free and nudged phases: the self-conductances
    and the input layer's drive (constant across iterations and phases).

    The sweeps work in normalised voltages ``u_l = v_l / P_l`` (``P_l``: ``layer_p``, the
    product of the amplifier gains below layer l; all 1 without amplifiers), in which an
    amplified circuit is a passive one: biases ``b_l / P_l``, rails ``/ P_l``, Shockley
    diodes with ``Is / P_l`` and ``n Vt / P_l`` (``I(P u) / P`` is again a Shockley law),
    targets ``/ P_L`` (the cross-entropy nudge: :attr:`ce_p`). States go in and out in volts (:meth:`to_normalised` /
    :meth:`to_physical`); residuals are reported in physical amperes.
    """

    def __init__(self, net, v_input):
        self.net = net
        self.v_input = np.ascontiguousarray(v_input, dtype=np.float64)
        L = net.num_layers
        self.node_updates = self.v_input.shape[0] * sum(net.layer_sizes[1:])
        views = net.crossbar_views()
        self.degree = [np.ascontiguousarray(d) for d in net.self_conductances(views)]
        check_no_floating_nodes(self.degree)
        with threads_for(self.node_updates):
            self.input_drive = net.connections[0].drive_out(net.w[0], self.v_input)
        self.layer_p = net.layer_scale.copy()  # writable: numba compiles read-only arrays separately
        self.unit_scale = not net.has_amplifiers  # normalised = physical
        self.bias = [net.bias_per_node(l) for l in range(1, L + 1)]
        self.bias_tuple = tuple(np.ascontiguousarray(b / p, dtype=np.float64)
                                for b, p in zip(self.bias, self.layer_p))
        self.rails_lo = tuple(lo / p for lo, p in zip(net.rail_lo_V, self.layer_p))
        self.rails_hi = tuple(hi / p for hi, p in zip(net.rail_hi_V, self.layer_p))
        self.layout = connection_layout(net, views)
        d = net.diode
        self.shockley = d.kind == "shockley"
        self.is_n = d.is_A / net.ranges.g_unit_S / self.layer_p
        self.nvt = d.n_vt_V / self.layer_p
        # the cross-entropy nudge's current is a function of the physical outputs P_L u
        self.ce_p = float(self.layer_p[-1]) if net.cost == "cross-entropy" else 0.0

    def self_conductance(self, l, beta):
        """(n_l,) total normalised conductance of layer l's nodes, the squared-error nudge's
        conductance included (the cross-entropy nudge is a current source)."""
        if l < self.net.num_layers or beta == 0.0:
            return self.degree[l - 1]
        check_nudge(self.degree[-1], beta)
        return self.degree[l - 1] if self.ce_p else self.degree[l - 1] + beta

    def conductances(self, beta) -> tuple:
        """The L self-conductances of one phase (:meth:`self_conductance` of layers 1..L)."""
        return (*self.degree[:-1], self.self_conductance(self.net.num_layers, beta))

    def drive(self, l, v_free, beta, target_V):
        """(B, n_l) normalised current driven into layer l by neighbours and sources, for
        node voltages ``v_free`` (V), in the normalised circuit (physical current / ``P_l``)."""
        out = np.empty((self.v_input.shape[0], self.net.layer_sizes[l]))
        kinds, shapes, weights = self.layout
        u = self.to_normalised(v_free)
        target = self._target(beta, target_V)
        _layer_drive(l - 1, kinds, shapes, weights, self.bias_tuple, self.input_drive,
                     u, float(beta), target, self.ce_p, out)
        return _nudged_drive(l - 1, len(u), out, u[l - 1], float(beta), target, self.ce_p)

    def to_normalised(self, v_free) -> tuple:
        """Node voltages (list of (B, n_l), V) -> the sweeps' state ``v_l / P_l`` (fresh arrays)."""
        return tuple(np.ascontiguousarray(x, dtype=np.float64) / p for x, p in zip(v_free, self.layer_p))

    def to_physical(self, u_free) -> list:
        """The sweeps' state -> node voltages (V), list of (B, n_l)."""
        if self.unit_scale:
            return list(u_free)
        return [u * p for u, p in zip(u_free, self.layer_p)]

    def _target(self, beta, target_V):
        """Targets of the normalised circuit, ``target_V / P_L`` (zeros in the free phase);
        with the cross-entropy nudge the target probabilities as given."""
        if beta != 0.0:
            target = np.ascontiguousarray(target_V, dtype=np.float64)
            return target if self.ce_p else target / self.layer_p[-1]
        return np.zeros((self.v_input.shape[0], self.net.num_outputs))

    def initial_state(self):
        """All free nodes at 0 V (inside every clamp)."""
        batch = self.v_input.shape[0]
        return [np.zeros((batch, n)) for n in self.net.layer_sizes[1:]]

    def residual_A(self, v_free, beta=0.0, target_V=None):
        """(B,) exact max KCL residual in amperes of node voltages ``v_free`` (V, all layers)."""
        net = self.net
        res = np.zeros(self.v_input.shape[0])
        kinds, shapes, weights = self.layout
        a = self.conductances(beta)
        _residual(kinds, shapes, weights, a, self.bias_tuple, self.rails_lo, self.rails_hi,
                  self.input_drive, self.to_normalised(v_free), float(beta),
                  self._target(beta, target_V), self.ce_p, self.shockley, self.is_n, self.nvt, self.layer_p, res,
                  self.parallel)
        return res * net.ranges.g_unit_S

    @property
    def parallel(self) -> bool:
        """Whether the node kernels should spread the samples over numba's threads."""
        return self.node_updates >= PARALLEL_MIN_NODE_UPDATES and numba_threads() > 1


def solve(problem: LayeredProblem, beta=0.0, target_V=None, init=None, tol_A=1e-9,
          max_iter=1000, nudge_rtol=None) -> Equilibrium:
    """Equilibrium of the circuit for one phase.

    Args:
        problem: :class:`LayeredProblem` (network + input batch).
        beta: nudging (0: free phase, +beta / -beta: nudged phases).
        target_V: ``(B, K)`` target output voltages (V), needed when ``beta != 0`` (with the
            cross-entropy nudge, ``net.cost``, the target probabilities: one-hot labels).
        init: list of ``(B, n_l)`` voltages to start from (e.g. the free state); copied.
        tol_A: KCL residual tolerance in amperes.
        max_iter: maximum number of odd/even sweeps.
        nudge_rtol: for a nudged phase started from the free state (``init``): stop on
            the relative nudge rule (:mod:`epsim.solvers.stop_rule`: every layer's error
            within ``nudge_rtol`` of its response to the nudge) instead of ``tol_A``.

    Returns:
        :class:`Equilibrium` whose certificate holds the exact final residual per sample.
    """
    net = problem.net
    batch = problem.v_input.shape[0]
    v = init if init is not None else problem.initial_state()
    if beta != 0.0 and target_V is None:
        raise ValueError("a nudged phase needs target voltages")
    relative = nudge_rtol is not None and beta != 0.0 and init is not None
    target = problem._target(beta, target_V)
    a = problem.conductances(beta)
    v = problem.to_normalised(v)
    met = np.zeros(batch, dtype=np.bool_)
    kinds, shapes, weights = problem.layout
    if relative:  # solved for the change from the free state, to its own precision
        u_free = v
        v = tuple(np.zeros_like(x) for x in u_free)
        zero = tuple(np.zeros_like(x) for x in u_free)
        clamp = tuple(np.zeros_like(x) for x in u_free)
        _clamp_currents(kinds, shapes, weights, problem.conductances(0.0), problem.bias_tuple, problem.rails_lo,
                        problem.rails_hi, problem.input_drive, u_free, problem.ce_p, problem.shockley, clamp)
        v_ref = zero
    else:
        u_free, clamp, v_ref = v, v, v
    sweeps = _run_phase(kinds, shapes, weights, a, problem.bias_tuple, problem.rails_lo, problem.rails_hi,
                        problem.input_drive, v, v_ref, float(beta), target, problem.ce_p,
                        tol_A / net.ranges.g_unit_S, float(nudge_rtol) if relative else 0.0,
                        int(max_iter), problem.shockley, problem.is_n, problem.nvt, problem.layer_p, met,
                        problem.parallel, relative, u_free, clamp)
    response = None
    if relative:
        response = problem.to_physical(v)
        v = tuple(f + d for f, d in zip(u_free, v))
    v = problem.to_physical(v)
    cert = Certificate(problem.residual_A(v, beta, target_V), sweeps, tol_A, backend="numba",
                       stop_met=met if relative else None)
    return Equilibrium(problem.v_input, v, beta, cert, response_V=response)


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

    def solve_centered(self, prepared, beta, target_V) -> tuple:
        """``(free, plus, minus)`` equilibria of centered EP in one jitted call: the same
        states as :meth:`solve` at 0, then +beta and -beta from the free state (with the
        relative rule, each with its ``response_V``)."""
        net = prepared.net
        batch = prepared.v_input.shape[0]
        target = prepared._target(beta, target_V)
        a = [prepared.conductances(b) for b in (0.0, beta, -beta)]
        states = [tuple(np.zeros((batch, n)) for n in net.layer_sizes[1:]) for _ in range(6)]
        zero = tuple(np.zeros((batch, n)) for n in net.layer_sizes[1:])
        met = [np.zeros(batch, dtype=np.bool_) for _ in range(2)]
        residuals = np.zeros((3, batch))
        relative = self.nudge_rtol is not None
        kinds, shapes, weights = prepared.layout
        with threads_for(prepared.node_updates):
            sweeps = _centered_phases(
                kinds, shapes, weights, *a, prepared.bias_tuple, prepared.rails_lo, prepared.rails_hi,
                prepared.input_drive, *states, zero, float(beta), target, prepared.ce_p,
                self.tol_A / net.ranges.g_unit_S, self.nudge_rtol if relative else 0.0, self.max_iter,
                prepared.shockley, prepared.is_n, prepared.nvt, prepared.layer_p, *met, residuals, prepared.parallel)
        out = []
        for k, (b, state) in enumerate(zip((0.0, beta, -beta), states)):
            stop_met = met[k - 1] if (relative and k > 0) else None
            response = prepared.to_physical(states[2 + k]) if (relative and k > 0) else None
            cert = Certificate(residuals[k] * net.ranges.g_unit_S, sweeps[k], self.tol_A, backend="numba",
                               stop_met=stop_met)
            out.append(Equilibrium(prepared.v_input, prepared.to_physical(state), b, cert, response_V=response))
        return tuple(out)
