"""Centered Equilibrium Propagation for the layered resistive network.

Three phases per batch share one prepared problem (``solver.prepare``): free (beta = 0),
nudged +beta and nudged -beta (both warm-started from the free state).
The gradient of the loss ``L = 1/2 sum_o (v_o - y_o)^2`` (V^2, mean over the batch), or with
the cross-entropy nudge (``net.cost``) ``L = CE(softmax(v_out / 1 V), y)``, with
respect to each parameter is estimated from local quantities only::

    dL/dw_t = [ 1/2 sum_(i,j in t) (dv_ij^+)^2 - 1/2 sum_(i,j in t) (dv_ij^-)^2 ] / (2 beta)
    dL/db_k = -(v_k^+ - v_k^-) / (2 beta)

(``w = G / g_unit``, ``b = I_bias / g_unit``), i.e. voltage drops across each conductance
and node voltages at each bias source: what a crossbar can measure in place.

With amplifiers (gains ``A_l``, ``P_l = A_1 ... A_{l-1}``) the drop across a conductance of
the crossbar into layer l is ``A_{l-1} v_i - v_j`` (the amplifier output against the node),
and both terms of layer l are multiplied by the known constant ``(P_L / P_l)^2``: the
equilibrium minimises the layer-weighted co-content in which layer l's terms carry
``1 / P_l^2``, and the output cost carries ``1 / P_L^2``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from ..models.resistive import nudge_targets
from ..solvers.threads import threads_for
from .low_rank import dense_drop_diff


@dataclass
class PhaseResult:
    """Outcome of the three EP phases on one batch.

    grad_w / grad_b: gradient estimates (normalised units), same shapes as ``net.w`` / ``net.b``,
                     averaged over the samples that converged in all three phases.
    loss: ``(B,)`` free-phase cost (:func:`output_cost`); predictions: ``(B,)`` argmax of v_out.
    converged: ``(B,)`` all three phases met the tolerance; residual_A: worst residual.
    free_converged: ``(B,)`` the free phase (behind ``predictions`` and ``loss``) met it.
    nudge_response_V: per free layer, the RMS over nodes of ``(v^+ - v^-) / 2`` (V), averaged
                      over the converged samples: how far the nudge reached into each layer.
    max_node_V: per free layer, the largest |node voltage| (V) in any of the three phases.
    response_kept: the nudged phases carried their responses to the nudge
                   (:func:`phase_differences`), so the gradient keeps their precision however
                   far below the voltages they are; False: taken from the voltages.
    """

    grad_w: list
    grad_b: list
    loss: np.ndarray
    predictions: np.ndarray
    converged: np.ndarray
    residual_A: float
    iterations: int
    nudge_response_V: list
    max_node_V: list
    free_converged: np.ndarray
    response_kept: bool = False


def squared_error(v_out, target_V):
    return 0.5 * np.sum((v_out - target_V) ** 2, axis=1)


def cross_entropy(v_out, target):
    """``(B,)`` cross-entropy of ``softmax(v_out / 1 V)`` against target probabilities (B, K)."""
    m = v_out.max(axis=1, keepdims=True)
    log_p = v_out - m - np.log(np.exp(v_out - m).sum(axis=1, keepdims=True))
    return -np.sum(target * log_p, axis=1)


def output_cost(net, v_out, target):
    """``(B,)`` the cost ``net`` is nudged with (``net.cost``) of outputs ``v_out`` (B, K, V):
    the squared error to target voltages (V^2) or the cross-entropy against target
    probabilities."""
    if net.cost == "cross-entropy":
        return cross_entropy(v_out, target)
    return squared_error(v_out, target)


def free_phase(net, solver, x):
    """Free equilibrium of images ``x`` (B, C, H, W): returns the :class:`Equilibrium`."""
    return solver.solve(solver.prepare(net, net.input_voltages(x)), 0.0)


def free_phase_counts(net, solver, x, y, batch_size=500, ever_active=None) -> tuple:
    """Free-phase predictions of images ``x`` (N, C, H, W) against labels ``y`` (N,), in
    batches: ``(correct, unconverged, worst residual in A)``. A sample whose equilibrium
    misses the solver's tolerance is counted as unconverged and never as correct.

    ever_active: optional list of ``L - 1`` boolean arrays ``(n_l,)``, one per hidden layer:
    nodes off their clamp (:func:`active_nodes`) for any of these images are set True.
    """
    correct, unconverged, worst = 0, 0, 0.0
    for i in range(0, len(y), batch_size):
        eq = free_phase(net, solver, x[i:i + batch_size])
        pred = np.argmax(eq.v_output, axis=1)
        correct += int(np.sum((pred == y[i:i + batch_size]) & eq.certificate.converged))
        unconverged += int(np.sum(~eq.certificate.converged))
        worst = max(worst, float(eq.certificate.max_residual_A))
        if ever_active is not None:
            for seen, active in zip(ever_active, active_nodes(net, eq.v_free[:-1])):
                seen |= active.any(axis=0)
    return correct, unconverged, worst


def active_nodes(net, v_hidden) -> list:
    """Per hidden layer, ``(B, n_l)`` True where a node is off its clamp: strictly inside its
    diode's allowed side (``v > 0`` for an excitatory unit, ``v < 0`` for an inhibitory one).
    An ideal diode holds a clamped node at exactly 0 V, a Shockley diode just past it."""
    return [(v > lo) & (v < hi) for v, lo, hi in zip(v_hidden, net.rail_lo_V, net.rail_hi_V)]


def phase_differences(eq_plus, eq_minus) -> list:
    """Per free layer, ``(B, n_l)`` voltages of the +beta phase minus the -beta phase (V):
    from the phases' own responses to the nudge when the solver kept them
    (:attr:`~epsim.solvers.base.Equilibrium.response_V`), which holds their precision where
    the response is far below the voltages, else from the voltages."""
    if eq_plus.response_V is not None and eq_minus.response_V is not None:
        return [p - m for p, m in zip(eq_plus.response_V, eq_minus.response_V)]
    return [p - m for p, m in zip(eq_plus.v_free, eq_minus.v_free)]


def param_grads(net, eq_plus, eq_minus, beta, weights, factored=False):
    """Centered-EP parameter gradients from two nudged states (per-sample ``weights`` (B,)).

    factored: return each dense crossbar's gradient as a
    :class:`~epsim.learning.low_rank.LowRankGrad` (applied by the optimiser without forming it).
    """
    if "device_drop_V" in eq_plus.extras:  # wire resistance: drops across the devices themselves
        from .wire_gradients import device_param_grads

        return device_param_grads(net, eq_plus, eq_minus, beta, weights)
    deltas = phase_differences(eq_plus, eq_minus)
    if np.all(weights == weights[0]):
        # equal weights (every sample converged) factor out of the sums
        scale = 0.5 * weights[0] / (2.0 * beta)
        sums = [2.0 * eq_plus.v_input] + [p + m for p, m in zip(eq_plus.v_free, eq_minus.v_free)]
        diffs = [None] + deltas
    else:
        # weighting both factors of every drop product by sqrt(weight) weights it by weight
        scale = 0.5 / (2.0 * beta)
        sw = np.sqrt(weights)[:, None]
        sums = [2.0 * eq_plus.v_input * sw] + [(p + m) * sw for p, m in zip(eq_plus.v_free, eq_minus.v_free)]
        diffs = [None] + [d * sw for d in deltas]
    layer_p = net.layer_scale
    grad_w, grad_b = [], []
    for l, conn in enumerate(net.connections):
        gain = net.crossbar_input_gain(l)
        weight = (layer_p[-1] / layer_p[l]) ** 2  # layer l + 1's weight in the co-content
        # the crossbar's input terminals: the layer's nodes, its amplifier outputs, or
        # both polarities of them (a differentially presented layer); the input sources
        # (l = 0) are the same in both phases
        d_in = None if diffs[l] is None else gain * net.presented(l, diffs[l])
        args = (d_in, diffs[l + 1], gain * net.presented(l, sums[l]), sums[l + 1])
        if factored and conn.kind == "dense":
            grad_w.append(dense_drop_diff(*args).scaled(scale * weight))
        else:
            grad_w.append((scale * weight) * conn.drop_product_sum(*args))
        dv = deltas[l] * weights[:, None]
        shape = net.layer_shapes[l + 1]
        if len(shape) == 3:
            dv = dv.reshape(dv.shape[0], shape[0], -1).sum(axis=2)
        grad_b.append(-weight * dv.sum(axis=0) / (2.0 * beta))
    return grad_w, grad_b


def centered_ep(net, solver, x, labels, beta, *, target_high_V=1.0, factored=False,
                keep_responses=True) -> PhaseResult:
    """Run free, +beta and -beta phases on a batch and return the EP gradient estimate.

    factored: dense crossbars' gradients as low-rank factors (see :func:`param_grads`).
    keep_responses: use the nudge responses the solver carried (:func:`phase_differences`);
    False takes them from the voltages, ``v+ - v-``, as a solver that does not carry them would.

    Samples whose any phase missed the tolerance are excluded from the gradient (and
    reported through ``converged``), so an unconverged state is never learned from.
    """
    with threads_for(len(labels) * sum(net.layer_sizes[1:])):
        prepared = solver.prepare(net, net.input_voltages(x))
        target = nudge_targets(net, labels, target_high_V)
        if hasattr(solver, "solve_centered"):
            free, plus, minus = solver.solve_centered(prepared, beta, target)
        else:
            free = solver.solve(prepared, 0.0)
            plus = solver.solve(prepared, beta, target, init=free.v_free)
            minus = solver.solve(prepared, -beta, target, init=free.v_free)
        if not keep_responses:
            plus.response_V = minus.response_V = None
        converged = free.certificate.converged & plus.certificate.converged & minus.certificate.converged
        n_ok = int(converged.sum())
        weights = converged / max(n_ok, 1)
        grad_w, grad_b = param_grads(net, plus, minus, beta, weights, factored)
    signal = [_layer_signal(f, p, m, d, weights)
              for f, p, m, d in zip(free.v_free, plus.v_free, minus.v_free, phase_differences(plus, minus))]
    return PhaseResult(
        grad_w=grad_w, grad_b=grad_b,
        loss=output_cost(net, free.v_output, target),
        predictions=np.argmax(free.v_output, axis=1),
        converged=converged,
        residual_A=max(free.certificate.max_residual_A, plus.certificate.max_residual_A,
                       minus.certificate.max_residual_A),
        iterations=free.certificate.iterations + plus.certificate.iterations + minus.certificate.iterations,
        nudge_response_V=[response for response, _ in signal],
        max_node_V=[peak for _, peak in signal],
        free_converged=free.certificate.converged,
        response_kept=plus.response_V is not None and minus.response_V is not None,
    )


@nb.njit(cache=True)
def _layer_signal(v_free, v_plus, v_minus, delta, weights):
    """One layer's ``(nudge response, peak)`` in V from its ``(B, n)`` free, +beta and -beta
    voltages and ``delta = v^+ - v^-`` (:func:`phase_differences`): the per-sample RMS over
    nodes of ``delta / 2`` weighted by ``weights`` (B,), and the largest |voltage| of the
    three phases."""
    batch, n = v_plus.shape
    response = 0.0
    peak = 0.0
    for b in range(batch):
        sq = 0.0
        for j in range(n):
            d = 0.5 * delta[b, j]
            sq += d * d
            peak = max(peak, abs(v_free[b, j]), abs(v_plus[b, j]), abs(v_minus[b, j]))
        if n:
            response += weights[b] * np.sqrt(sq / n)
    return response, peak
