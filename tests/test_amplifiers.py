"""Bidirectional amplifiers between layers: the physics, the equivalence with a rescaled
passive network, EP exactness, and agreement of the numba and torch solvers."""
import numpy as np
import pytest
from scipy.special import softmax

from epsim.circuit.diodes import DiodeModel
from epsim.errors import EpsimError
from epsim.learning.ep import centered_ep, squared_error
from epsim.robustness.input_gradients import (ep_input_gradient, implicit_input_gradient,
                                              squared_error_loss)
from epsim.models.resistive import ResistiveNetwork, build_cnn, build_mlp, one_hot_targets
from epsim.solvers.factory import make_solver
from epsim.solvers.numba_solver import LayeredProblem, NumbaSolver, solve
from epsim.solvers.torch_solver import TorchCircuitSolver
from epsim.training import TrainConfig
from test_ep_gradient import cosine, finite_difference

GAINS = (4.0, 0.5, 10.0)


def amplified_net(kind="mlp", diode="ideal", gains=GAINS, input_gain_V=1.0, seed=0):
    """A small circuit with amplifiers; biases scaled with the layers' voltage scale."""
    rng = np.random.default_rng(seed)
    d = DiodeModel(kind=diode)
    if kind == "mlp":
        net = build_mlp((1, 4, 4), hidden=(12, 10, 8), num_classes=5, input_gain_V=input_gain_V,
                        diode=d, amp_gains=gains)
    else:
        net = build_cnn((1, 6, 6), convs=((4, 3, 1), (6, 2, 2)), hidden=(6,), num_classes=5,
                        input_gain_V=input_gain_V, diode=d, amp_gains=gains)
    net.init_params(rng, 1.0)
    p = net.layer_scale
    net.b = [rng.normal(0.0, 0.2, b.shape) * p[l] for l, b in enumerate(net.b)]
    return net


def passive_equivalent(net):
    """The passive network whose voltages are the amplified one's times ``P_L / P_l``:
    input gain times ``P_L``, layer-l biases times ``P_L / P_l``, same conductances."""
    p = net.layer_scale
    d = net.describe()
    d["amp_gains"] = None
    d["input_gain_V"] = net.input_gain_V * p[-1]
    out = ResistiveNetwork.from_description(d)
    out.w = [w.copy() for w in net.w]
    out.b = [b * p[-1] / p[l] for l, b in enumerate(net.b)]
    return out


def data(net, batch=6, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch,) + net.image_shape)
    return x, rng.integers(0, net.num_outputs, batch)


def physical_kcl_A(net, v_input, v_free, beta=0.0, target_V=None):
    """(B,) max |KCL| (A) of the amplified circuit, written out node by node from the
    element laws (dense connections only): crossbar currents from the amplifier outputs
    (``+A v``, and ``-A v`` on the inverting copies of a differential layer), the current
    each amplifier draws back (``/A``, sign flipped on an inverting copy), biases, Shockley
    diodes, the leak to 0 V, the nudge (a conductance to the targets, or with the
    cross-entropy cost the current ``beta g (y - softmax(v / 1 V))``)."""
    g = net.ranges.g_unit_S
    d = net.diode
    layers = [v_input] + list(v_free)
    worst = np.zeros(v_input.shape[0])
    for l in range(1, net.num_layers + 1):
        v = layers[l]
        gain_in = net.crossbar_input_gain(l - 1)
        w_in = net.w[l - 1]
        below = layers[l - 1]
        if l > 1 and net.differential[l - 2]:
            below = np.concatenate([below, -below], axis=1)
        # current into layer-l node j from the crossbar below: sum_i G_ij (A v_i - v_j)
        i_node = (gain_in * below) @ w_in - v * w_in.sum(axis=0)
        if l < net.num_layers:
            gain_out = net.crossbar_input_gain(l)
            w_out = net.w[l]
            n = v.shape[1]
            copies = ((1.0, w_out[:n]), (-1.0, w_out[n:])) if net.differential[l - 1] else ((1.0, w_out),)
            for sign, rows in copies:
                # current the (sign) amplifier output supplies to the next crossbar, drawn back / A
                supplied = sign * gain_out * v * rows.sum(axis=1) - layers[l + 1] @ rows.T
                i_node -= sign * supplied / gain_out
        i_node += net.bias_per_node(l)
        i_node -= net.leak_per_node(l) * v  # the leak to 0 V (zero unless the network has one)
        lo, hi = net.rail_lo_V[l - 1], net.rail_hi_V[l - 1]
        has_lo, has_hi = np.isfinite(lo), np.isfinite(hi)
        is_n, nvt = d.is_A / g, d.n_vt_V
        with np.errstate(over="ignore"):  # the branch np.where discards, at nodes without that diode
            i_node += np.where(has_lo, is_n * (np.exp((np.where(has_lo, lo, 0) - v) / nvt) - 1), 0.0)
            i_node -= np.where(has_hi, is_n * (np.exp((v - np.where(has_hi, hi, 0)) / nvt) - 1), 0.0)
        if l == net.num_layers and beta != 0.0 and net.cost == "cross-entropy":
            i_node += beta * (target_V - softmax(v, axis=1))
        elif l == net.num_layers and beta != 0.0:
            i_node += beta * (target_V - v)
        worst = np.maximum(worst, np.abs(i_node).max(axis=1) * g)
    return worst


def test_gains_of_one_are_the_passive_circuit_bit_for_bit():
    plain = amplified_net(gains=None, seed=3)
    ones = amplified_net(gains=(1.0, 1.0, 1.0), seed=3)
    assert not ones.has_amplifiers
    x, labels = data(plain)
    solver = NumbaSolver(tol_A=1e-12, max_iter=20000, nudge_rtol=1e-3)
    a = centered_ep(plain, solver, x, labels, 0.5)
    b = centered_ep(ones, solver, x, labels, 0.5)
    for ga, gb in zip(a.grad_w + a.grad_b, b.grad_w + b.grad_b):
        assert np.array_equal(ga, gb)


def test_bad_gains_are_refused():
    with pytest.raises(EpsimError, match="gains"):
        build_mlp((1, 4, 4), hidden=(8, 8), num_classes=3, amp_gains=(1.0, 2.0, 3.0))
    with pytest.raises(EpsimError, match="> 0"):
        build_mlp((1, 4, 4), hidden=(8, 8), num_classes=3, amp_gains=(-1.0, 2.0))
    net = build_mlp((1, 4, 4), hidden=(8, 8), num_classes=3, amp_gains=3.0)
    assert net.amp_gains.tolist() == [3.0, 3.0]
    assert ResistiveNetwork.from_description(net.describe()).amp_gains.tolist() == [3.0, 3.0]


@pytest.mark.parametrize("beta", [0.0, 0.4, -0.4])
def test_numba_state_satisfies_the_amplified_kcl(beta):
    """The solver's voltages obey the circuit's KCL written from the element laws."""
    assert_element_laws_hold(amplified_net(diode="shockley", seed=5), beta)


def assert_element_laws_hold(net, beta):
    """The solver's state at 1e-14 A satisfies :func:`physical_kcl_A` to 1e-12 A, and its
    certificate reports that physical residual, not the normalised one."""
    x, labels = data(net)
    v_in = net.input_voltages(x)
    target = one_hot_targets(labels, net.num_outputs)
    eq = solve(LayeredProblem(net, v_in), beta, target, tol_A=1e-14, max_iter=100000)
    assert eq.certificate.all_converged
    kcl = physical_kcl_A(net, v_in, eq.v_free, beta, target)
    assert kcl.max() <= 1e-12
    assert np.allclose(eq.certificate.residual_A, kcl, rtol=1e-3, atol=1e-15)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_amplified_ideal_network_is_a_rescaled_passive_network(kind):
    """``v_l P_L / P_l`` of the amplified circuit = the passive circuit's voltages (same
    sweeps in exact arithmetic), and the EP gradients agree (biases up to ``P_L / P_l``)."""
    amp = amplified_net(kind, seed=7)
    pas = passive_equivalent(amp)
    p = amp.layer_scale
    x, labels = data(amp, seed=8)
    fixed = dict(tol_A=0.0, max_iter=400)  # the same number of sweeps for both
    target = one_hot_targets(labels, amp.num_outputs)
    for beta in (0.0, 0.5):
        ea = solve(LayeredProblem(amp, amp.input_voltages(x)), beta, target, **fixed)
        ep = solve(LayeredProblem(pas, pas.input_voltages(x)), beta, target, **fixed)
        for l, (va, vp) in enumerate(zip(ea.v_free, ep.v_free)):
            assert np.abs(va * p[-1] / p[l] - vp).max() <= 1e-12 * max(1.0, np.abs(vp).max())
    # the nudged phases are solved as changes from the free state, whose own error stays in
    # the drops' sums: a free phase at 1e-16 A keeps it below the 1e-8 (of each layer's
    # largest entry) compared here
    solver = NumbaSolver(tol_A=1e-16, max_iter=100000, nudge_rtol=1e-10)
    ra, rp = centered_ep(amp, solver, x, labels, 0.5), centered_ep(pas, solver, x, labels, 0.5)
    assert ra.converged.all() and rp.converged.all()
    for l in range(amp.num_layers):
        assert np.abs(ra.grad_w[l] - rp.grad_w[l]).max() <= 1e-8 * np.abs(rp.grad_w[l]).max()
        assert np.abs(ra.grad_b[l] * p[l] / p[-1] - rp.grad_b[l]).max() <= 1e-8 * np.abs(rp.grad_b[l]).max()


@pytest.mark.parametrize("kind,diode", [("mlp", "ideal"), ("mlp", "shockley"), ("cnn", "ideal")])
def test_ep_is_exact_with_amplifiers_at_the_training_settings(kind, diode):
    """Centered EP with the trainer's solver (free phase 1e-9 A, relative nudge rule 1e-3)
    and a small beta against finite differences of the loss, every layer, gains != 1."""
    net = amplified_net(kind, diode, seed=11)
    assert_ep_matches_finite_differences(net, *data(net, batch=4, seed=12))


def assert_ep_matches_finite_differences(net, x, labels, seed=13):
    """Centered EP (beta 0.01) with the trainer's solver settings against finite differences
    of the loss on 8 random parameters of every array: cosine >= 0.99, error <= 5 %."""
    result = centered_ep(net, make_solver(TrainConfig()), x, labels, beta=0.01)
    assert result.converged.all()
    rng = np.random.default_rng(seed)
    for params, grads in ((net.w, result.grad_w), (net.b, result.grad_b)):
        for p, g in zip(params, grads):
            idx = rng.choice(p.size, size=min(8, p.size), replace=False)
            fd = finite_difference(net, x, labels, p, idx)
            assert cosine(g.reshape(-1)[idx], fd) >= 0.99
            assert np.linalg.norm(g.reshape(-1)[idx] - fd) <= 0.05 * np.linalg.norm(fd)


@pytest.mark.parametrize("diode", ["ideal", "shockley"])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_torch_solver_matches_numba_with_amplifiers(diode, beta):
    net = amplified_net("cnn", diode, seed=15)
    assert_torch_matches_numba(net, *data(net, seed=16), beta)


def assert_torch_matches_numba(net, x, labels, beta):
    """numba and torch (CPU) equilibria at 1e-13 A agree to 1e-9 V, and so do their
    reported residuals (within 20 %)."""
    target = one_hot_targets(labels, net.num_outputs)
    numba = NumbaSolver(tol_A=1e-13, max_iter=100000)
    tch = TorchCircuitSolver(tol_A=1e-13, max_iter=100000, device="cpu")
    a = numba.solve(numba.prepare(net, net.input_voltages(x)), beta, target)
    b = tch.solve(tch.prepare(net, net.input_voltages(x)), beta, target)
    assert a.certificate.all_converged and b.certificate.all_converged
    for va, vb in zip(a.v_free, b.v_free):
        assert np.abs(va - vb).max() <= 1e-9
    assert np.allclose(a.certificate.residual_A, b.certificate.residual_A, rtol=0.2, atol=1e-15)


def test_input_gradients_with_amplifiers():
    """The implicit input gradient (normalised Hessian) against finite differences of the
    physical loss, and the EP source-current estimate (with its ``P_L^2``) against it."""
    net = amplified_net("mlp", "shockley", seed=17)
    x, labels = data(net, batch=3, seed=18)
    target = one_hot_targets(labels, net.num_outputs)
    imp = implicit_input_gradient(net, x, squared_error_loss(target), tol_A=1e-14, max_iter=200000)
    h = 1e-6
    rng = np.random.default_rng(19)
    for i in rng.choice(x[0].size, size=6, replace=False):
        xp, xm = x.copy(), x.copy()
        xp.reshape(3, -1)[:, i] += h
        xm.reshape(3, -1)[:, i] -= h
        fd = (squared_error(_out(net, xp), target) - squared_error(_out(net, xm), target)) / (2 * h)
        assert np.allclose(np.asarray(imp.grad_x).reshape(3, -1)[:, i], fd, rtol=1e-4, atol=1e-9)
    ep = ep_input_gradient(net, NumbaSolver(tol_A=1e-14, max_iter=200000), x, labels, beta=1e-3)
    a, b = np.asarray(ep.grad_x).reshape(-1), np.asarray(imp.grad_x).reshape(-1)
    assert cosine(a, b) >= 0.999
    assert np.linalg.norm(a - b) <= 0.01 * np.linalg.norm(b)


def _out(net, x):
    return solve(LayeredProblem(net, net.input_voltages(x)), 0.0, tol_A=1e-15, max_iter=200000).v_output


def test_wire_resistance_with_amplifiers_is_refused():
    from epsim.solvers.wire_network import WiredNetwork

    with pytest.raises(EpsimError, match="amplifiers"):
        WiredNetwork(amplified_net(), 1.0)


def test_energy_is_the_layer_weighted_co_content():
    """Ideal diodes: the numba equilibrium is the minimiser of ``net.energy`` over the
    feasible box: no feasible random perturbation lowers it."""
    net = amplified_net(seed=21)
    assert_energy_minimal(net, *data(net, batch=2, seed=22))


def assert_energy_minimal(net, x, labels, beta=0.3, seed=23):
    """No feasible random perturbation (1e-3 of each layer's scale) of the +beta equilibrium
    of images ``x`` lowers ``net.energy``."""
    v_in = net.input_voltages(x)
    target = one_hot_targets(labels, net.num_outputs)
    eq = solve(LayeredProblem(net, v_in), beta, target, tol_A=1e-15, max_iter=200000)
    e0 = net.energy(v_in, eq.v_free, beta, target)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        v = [np.clip(s + 1e-3 * rng.normal(size=s.shape) * p, lo, hi)
             for s, p, lo, hi in zip(eq.v_free, net.layer_scale, net.rail_lo_V, net.rail_hi_V)]
        assert np.all(net.energy(v_in, v, beta, target) >= e0 - 1e-12)
