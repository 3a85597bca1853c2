"""Centered EP estimates the true loss gradient (gradient-descending updates property)."""
import numpy as np
import pytest
from scipy.special import log_softmax

from epsim.learning.ep import centered_ep, squared_error
from epsim.learning.optim import ProjectedSGD
from epsim.models.resistive import one_hot_targets
from epsim.solvers.numba_solver import LayeredProblem, NumbaSolver, solve
from test_numba_solver import random_net

TIGHT = dict(tol_A=1e-16, max_iter=50000)


def loss_at_equilibrium(net, x, labels):
    eq = solve(LayeredProblem(net, net.input_voltages(x)), 0.0, **TIGHT)
    assert eq.certificate.all_converged
    if net.cost == "cross-entropy":  # softmax of the output voltages in volts
        return -log_softmax(eq.v_output, axis=1)[np.arange(len(labels)), labels].mean()
    return squared_error(eq.v_output, one_hot_targets(labels, net.num_outputs)).mean()


def finite_difference(net, x, labels, array, indices, h=1e-6):
    flat = array.reshape(-1)
    out = []
    for i in indices:
        old = flat[i]
        flat[i] = old + h
        up = loss_at_equilibrium(net, x, labels)
        flat[i] = old - h
        down = loss_at_equilibrium(net, x, labels)
        flat[i] = old
        out.append((up - down) / (2 * h))
    return np.array(out)


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("kind,diode", [("mlp", "ideal"), ("cnn", "ideal"), ("mlp", "shockley"), ("cnn", "shockley")])
def test_centered_ep_matches_finite_difference_gradient(kind, diode):
    net = random_net(kind, diode, seed=3)
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (4,) + net.image_shape)
    labels = rng.integers(0, net.num_outputs, 4)
    result = centered_ep(net, NumbaSolver(**TIGHT), x, labels, beta=1e-3)
    assert result.converged.all()
    est, true = [], []
    for params, grads in ((net.w, result.grad_w), (net.b, result.grad_b)):
        for p, g in zip(params, grads):
            idx = rng.choice(p.size, size=min(8, p.size), replace=False)
            fd = finite_difference(net, x, labels, p, idx)
            assert cosine(g.reshape(-1)[idx], fd) >= 1 - 1e-6
            est.append(g.reshape(-1)[idx])
            true.append(fd)
    est, true = np.concatenate(est), np.concatenate(true)
    # centered EP's bias at beta = 1e-3 is O(beta^2), the central difference's O(h^2): measured
    # relative errors 2e-7 to 8e-7
    assert cosine(est, true) >= 1 - 1e-9
    assert np.linalg.norm(est - true) <= 1e-5 * np.linalg.norm(true)


def test_estimate_is_centered_second_order_in_beta():
    """Centered EP's bias shrinks like beta^2: 10x smaller beta, ~100x smaller error."""
    net = random_net("mlp", "ideal", seed=5)
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, (3,) + net.image_shape)
    labels = rng.integers(0, net.num_outputs, 3)
    ref = centered_ep(net, NumbaSolver(**TIGHT), x, labels, beta=1e-4).grad_w[-1]
    errs = [np.linalg.norm(centered_ep(net, NumbaSolver(**TIGHT), x, labels, beta=b).grad_w[-1] - ref)
            for b in (0.2, 0.02)]
    assert errs[1] < errs[0] / 30


def test_update_lowers_the_loss_and_keeps_conductances_in_range():
    net = random_net("cnn", "ideal", seed=7)
    net.ranges.g_min_S, net.ranges.g_max_S = 0.05e-6, 0.3e-6
    lo, hi = net.w_bounds
    net.w = [np.clip(w, lo, hi) for w in net.w]
    rng = np.random.default_rng(8)
    x = rng.uniform(0, 1, (8,) + net.image_shape)
    labels = rng.integers(0, net.num_outputs, 8)
    solver = NumbaSolver(tol_A=1e-12, max_iter=5000)
    opt = ProjectedSGD(net, lr_w=0.05, momentum=0.0)
    before = loss_at_equilibrium(net, x, labels)
    for _ in range(5):
        r = centered_ep(net, solver, x, labels, beta=0.05)
        opt.step(r.grad_w, r.grad_b)
        for w in net.w:
            assert w.min() >= lo and w.max() <= hi
    assert loss_at_equilibrium(net, x, labels) < before
    # a huge step pushes conductances against both bounds, never past them
    opt_big = ProjectedSGD(net, lr_w=1e4, momentum=0.9)
    for _ in range(3):
        r = centered_ep(net, solver, x, labels, beta=0.05)
        opt_big.step(r.grad_w, r.grad_b)
    for g in net.g_S:
        assert g.min() >= net.ranges.g_min_S and g.max() <= net.ranges.g_max_S
    assert any(np.any(w == lo) for w in net.w) and any(np.any(w == hi) for w in net.w)


def test_per_layer_signal_is_the_weighted_rms_of_the_nudge_and_the_peak_voltage():
    net = random_net("mlp", "ideal", seed=3)
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (4,) + net.image_shape)
    labels = rng.integers(0, net.num_outputs, 4)
    solver = NumbaSolver(tol_A=1e-12, max_iter=20000)
    result = centered_ep(net, solver, x, labels, beta=0.5)
    prepared = solver.prepare(net, net.input_voltages(x))
    target = one_hot_targets(labels, net.num_outputs)
    free, plus, minus = solver.solve_centered(prepared, 0.5, target)
    weights = result.converged / max(int(result.converged.sum()), 1)
    for l, (f, p, m) in enumerate(zip(free.v_free, plus.v_free, minus.v_free)):
        rms = np.sqrt(np.mean((0.5 * (p - m)) ** 2, axis=1))
        assert result.nudge_response_V[l] == pytest.approx(float(rms @ weights), rel=1e-12)
        assert result.max_node_V[l] == max(np.abs(f).max(), np.abs(p).max(), np.abs(m).max())
    assert min(result.nudge_response_V) > 0
