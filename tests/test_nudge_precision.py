"""A nudge response far below float64 rounding of the voltages keeps its precision.

In a deep circuit the nudge fades layer by layer: the lowest layers can move by less than
one rounding unit of their own voltages, where ``v^+ - v^-`` is rounding noise. The numba
solver carries each nudged phase as its change from the free state and the learning rule
uses the factored drop difference, so the EP gradient of those layers stays exact. The
reference here is exact rational arithmetic: the ideal-diode circuit is linear once its
clamped nodes are known, so each phase is a linear system solved with fractions.
"""
from fractions import Fraction

import numpy as np
import pytest

from epsim.learning.ep import centered_ep, param_grads
from epsim.models.resistive import build_mlp, one_hot_targets
from epsim.solvers.numba_solver import NumbaSolver

ATTENUATION = 1e-6  # each crossbar's conductances against the one below it


def fading_net(seed=0):
    """Three hidden layers, each crossbar 1e-6 of the one below: the nudge reaching layer 1
    is about 1e-18 of the output's response, below one rounding unit of its voltages."""
    rng = np.random.default_rng(seed)
    net = build_mlp((1, 2, 2), hidden=(5, 5, 5), num_classes=3, input_gain_V=2.0)
    net.init_params(rng, 1.0)
    net.w = [w * ATTENUATION ** l for l, w in enumerate(net.w)]
    net.b = [rng.normal(0.0, 0.2, b.shape) * ATTENUATION ** l for l, b in enumerate(net.b)]
    return net


def fading_case():
    """The fading circuit, two images, their labels and a nudge 1e-2 of the outputs' conductance."""
    net = fading_net()
    x = np.random.default_rng(1).uniform(0, 1, (2,) + net.image_shape)
    return net, x, np.array([0, 2]), 1e-2 * float(net.self_conductances()[-1].min())


def exact_state(net, v_in, u_float, beta, target):
    """One sample's equilibrium in fractions, with the clamped nodes of the float state
    ``u_float`` (list of (n_l,)) held at their rails; checks that the clamps are consistent."""
    sizes = net.layer_sizes[1:]
    a = [[Fraction(x) for x in d] for d in net.self_conductances()]
    bias = [[Fraction(x) for x in net.bias_per_node(l)] for l in range(1, net.num_layers + 1)]
    w = [[[Fraction(x) for x in row] for row in m] for m in net.w]
    lo, hi = net.rail_lo_V, net.rail_hi_V
    fixed = {}
    for l, u in enumerate(u_float):
        for j, x in enumerate(u):
            if x <= lo[l][j] or x >= hi[l][j]:
                fixed[(l, j)] = Fraction(lo[l][j] if x <= lo[l][j] else hi[l][j])
    free = [(l, j) for l, n in enumerate(sizes) for j in range(n) if (l, j) not in fixed]
    index = {node: k for k, node in enumerate(free)}
    n = len(free)
    m = [[Fraction(0)] * (n + 1) for _ in range(n)]
    b_beta, top = Fraction(beta), len(sizes) - 1

    def couple(row, node, g):  # current g * v(node) into the row's node
        if node in index:
            m[row][index[node]] -= g
        else:
            m[row][n] += g * fixed[node]

    for (l, j), row in index.items():
        m[row][row] += a[l][j] + (b_beta if l == top else 0)
        m[row][n] += bias[l][j] + (b_beta * Fraction(target[j]) if l == top else 0)
        if l == 0:
            m[row][n] += sum(w[0][i][j] * Fraction(v) for i, v in enumerate(v_in))
        else:
            for i in range(sizes[l - 1]):
                couple(row, (l - 1, i), w[l][i][j])
        if l < top:
            for k in range(sizes[l + 1]):
                couple(row, (l + 1, k), w[l + 1][j][k])
    for col in range(n):  # Gauss-Jordan, exact
        piv = next(r for r in range(col, n) if m[r][col] != 0)
        m[col], m[piv] = m[piv], m[col]
        for r in range(n):
            if r != col and m[r][col] != 0:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col])]
    u = [[fixed.get((l, j)) for j in range(nl)] for l, nl in enumerate(sizes)]
    for (l, j), row in index.items():
        u[l][j] = m[row][n] / m[row][row]
        assert (lo[l][j] == -np.inf or Fraction(lo[l][j]) < u[l][j]) and \
            (hi[l][j] == np.inf or u[l][j] < Fraction(hi[l][j]))  # the float clamps hold exactly
    return u


def exact_grads(net, v_in, states_plus, states_minus, beta):
    """Centered EP's weight gradients (per crossbar, float) from exact phases, batch mean."""
    grads = []
    batch = len(v_in)
    for l, w in enumerate(net.w):
        g = [[Fraction(0)] * w.shape[1] for _ in range(w.shape[0])]
        for b in range(batch):
            below_p = [Fraction(v) for v in v_in[b]] if l == 0 else states_plus[b][l - 1]
            below_m = [Fraction(v) for v in v_in[b]] if l == 0 else states_minus[b][l - 1]
            for i in range(w.shape[0]):
                for j in range(w.shape[1]):
                    dp = below_p[i] - states_plus[b][l][j]
                    dm = below_m[i] - states_minus[b][l][j]
                    g[i][j] += (dp * dp - dm * dm) / (4 * Fraction(beta) * batch)
        grads.append(np.array([[float(x) for x in row] for row in g]))
    return grads


def cosine(a, b):
    return float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_ep_gradient_of_layers_below_rounding_matches_exact_arithmetic():
    net, x, labels, beta = fading_case()
    # the nudged phases at the trainer's rule; this circuit's upper crossbars carry currents
    # 1e-6 to 1e-18 of a usual one's, so its free phase needs 1e-16 A to be as converged
    solver = NumbaSolver(tol_A=1e-16, max_iter=100000, nudge_rtol=1e-3)
    result = centered_ep(net, solver, x, labels, beta)
    assert result.converged.all()
    # the lowest layer's response is below one rounding unit of its voltages
    assert result.nudge_response_V[0] < 1e-16 * result.max_node_V[0]
    assert result.nudge_response_V[0] > 0

    v_in = net.input_voltages(x)
    target = one_hot_targets(labels, net.num_outputs)
    prepared = solver.prepare(net, v_in)
    free, plus, minus = solver.solve_centered(prepared, beta, target)
    exact = {}
    for sign, eq in ((1, plus), (-1, minus)):
        exact[sign] = [exact_state(net, v_in[b], [v[b] for v in eq.v_free], sign * beta, target[b])
                       for b in range(len(x))]
    reference = exact_grads(net, v_in, exact[1], exact[-1], beta)
    for got, ref in zip(result.grad_w, reference):
        assert cosine(got, ref) >= 0.999
        assert np.linalg.norm(got - ref) <= 1e-5 * np.linalg.norm(ref)  # measured: 7e-9 to 8e-8

    # the same phases' voltages alone (v+ - v-) lose the two lowest crossbars' gradients
    plus.response_V = minus.response_V = None
    rounded = param_grads(net, plus, minus, beta, np.full(len(x), 1.0 / len(x)))[0]
    assert np.linalg.norm(rounded[0] - reference[0]) > 0.5 * np.linalg.norm(reference[0])


def test_torch_backend_keeps_the_same_responses():
    """The torch backend solves ideal-diode nudged phases in the same change form: its EP
    gradient on the fading circuit equals numba's, the lowest crossbar included."""
    from epsim.solvers.torch_solver import TorchCircuitSolver

    net, x, labels, beta = fading_case()
    numba = centered_ep(net, NumbaSolver(tol_A=1e-16, max_iter=100000, nudge_rtol=1e-3), x, labels, beta)
    torch_ = centered_ep(net, TorchCircuitSolver(tol_A=1e-16, max_iter=100000, device="cpu", nudge_rtol=1e-3),
                         x, labels, beta)
    assert torch_.converged.all() and torch_.response_kept
    for a, b in zip(torch_.grad_w, numba.grad_w):
        assert np.linalg.norm(a - b) <= 1e-6 * np.linalg.norm(b)


def test_ep_input_gradient_through_a_fading_circuit_matches_implicit_differentiation():
    """The EP input gradient is the first crossbar's source currents' response to the nudge,
    here about 1e-22 of the voltages: from the first layer's carried response it equals the
    implicit-differentiation gradient to centered EP's O(beta^2)."""
    import torch

    from epsim.robustness.input_gradients import (ep_input_gradient, implicit_input_gradient,
                                                  squared_error_loss)

    net, x, labels, beta = fading_case()
    ep = ep_input_gradient(net, NumbaSolver(tol_A=1e-16, max_iter=100000, nudge_rtol=1e-3), x, labels, beta)
    target = torch.as_tensor(one_hot_targets(labels, net.num_outputs))
    ref = implicit_input_gradient(net, torch.as_tensor(x), squared_error_loss(target), tol_A=1e-16,
                                  max_iter=100000)
    got, want = np.asarray(ep.grad_x).ravel(), ref.grad_x.detach().numpy().ravel()
    assert np.linalg.norm(got - want) <= 1e-3 * np.linalg.norm(want)  # measured: 7e-5



@pytest.mark.parametrize("kind,diode,cost", [("mlp", "ideal", "squared-error"), ("cnn", "shockley", "squared-error"),
                                             ("mlp", "shockley", "cross-entropy"), ("cnn", "ideal", "cross-entropy")])
def test_change_form_reaches_the_nudged_equilibrium(kind, diode, cost):
    """A nudged phase solved as its change from a tight free state ends at the equilibrium the
    voltages' own sweeps reach at 1e-19 A (both nudges, Shockley and ideal diodes, both
    costs), its certificate meets the tolerance, and ``response_V`` is ``v - v_free``. (The
    change leaves the free state's own error in, about ``tol / (a g_unit)`` volts: hence a free
    phase at 1e-19 A.)"""
    from test_numba_solver import random_net

    from epsim.solvers.numba_solver import LayeredProblem, solve

    net = random_net(kind, diode, seed=2).with_cost(cost)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (3,) + net.image_shape)
    target = one_hot_targets(rng.integers(0, net.num_outputs, 3), net.num_outputs)
    problem = LayeredProblem(net, net.input_voltages(x))
    free = solve(problem, 0.0, tol_A=1e-19, max_iter=100000)
    for beta in (0.3, -0.3):
        change = solve(problem, beta, target, init=free.v_free, tol_A=1e-15, max_iter=100000, nudge_rtol=1e-12)
        direct = solve(problem, beta, target, init=free.v_free, tol_A=1e-19, max_iter=100000)
        assert change.certificate.all_converged and direct.certificate.all_converged
        assert change.certificate.max_residual_A <= 1e-13
        for vc, vd, d, vf in zip(change.v_free, direct.v_free, change.response_V, free.v_free):
            scale = max(1.0, float(np.abs(vd).max()))
            assert np.abs(vc - vd).max() <= 1e-11 * scale
            assert np.abs(d - (vc - vf)).max() <= 1e-14 * scale


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_attack_ep_path_through_a_fading_circuit(backend):
    """The robustness harness's EP path solves its nudged phases as changes: through the
    fading circuit its cross-entropy input gradient is the implicit one."""
    from epsim.robustness.adapters import CircuitAdapter

    net, x, y, beta = fading_case()
    adapter = CircuitAdapter(net, backend=backend, tol_A=1e-16, max_iter=100000, grad_tol_A=1e-16, ep_beta=beta)
    ep = adapter.input_gradient(x, y, "ce", "ep")
    imp = adapter.input_gradient(x, y, "ce", "implicit")
    assert ep.converged.all() and imp.converged.all()
    assert np.linalg.norm(ep.grad - imp.grad) <= 1e-3 * np.linalg.norm(imp.grad)
