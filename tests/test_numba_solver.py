"""numba block-coordinate solver: KCL certificates and agreement with independent solves."""
import numpy as np
import pytest

from circuit_reference import solve_ideal, solve_shockley
from epsim.circuit.diodes import DiodeModel
from epsim.errors import ConvergenceError, EpsimError
from epsim.models.resistive import build_cnn, build_mlp, one_hot_targets
from epsim.solvers.numba_solver import LayeredProblem, solve

TIGHT_TOL_A = 1e-15


def random_net(kind, diode="ideal", seed=0):
    rng = np.random.default_rng(seed)
    d = DiodeModel(kind=diode)
    if kind == "mlp":
        net = build_mlp((1, 4, 4), hidden=(12, 8), num_classes=5, input_gain_V=4.0, diode=d)
    else:
        net = build_cnn((1, 6, 6), convs=((4, 3, 1), (6, 2, 2)), hidden=(), num_classes=5,
                        input_gain_V=4.0, diode=d)
    net.init_params(rng, 1.0)
    net.b = [rng.normal(0.0, 0.5, b.shape) for b in net.b]
    return net


def random_inputs(net, batch=5, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch,) + net.image_shape)
    y = rng.integers(0, net.num_outputs, batch)
    return net.input_voltages(x), one_hot_targets(y, net.num_outputs)


CASES = [(k, d) for k in ("mlp", "cnn") for d in ("ideal", "shockley")]


@pytest.mark.parametrize("kind,diode", CASES)
@pytest.mark.parametrize("beta", [0.0, 0.3, -0.3])
def test_kcl_residual_certificate(kind, diode, beta):
    net = random_net(kind, diode)
    v_in, target = random_inputs(net)
    eq = solve(LayeredProblem(net, v_in), beta, target, tol_A=TIGHT_TOL_A, max_iter=20000)
    cert = eq.certificate
    assert cert.all_converged
    assert cert.max_residual_A <= 1e-9
    # the certificate is the residual of the returned state, recomputed here from the element
    # laws, conductance by conductance (Connection.pairs), not by the solver's own code
    independent = kcl_residual_A(net, v_in, eq.v_free, beta, target)
    assert independent.max() <= 1e-9
    np.testing.assert_allclose(cert.residual_A, independent, rtol=1e-3, atol=1e-18)
    # clamps hold: excitatory nodes >= 0 V, inhibitory <= 0 V (ideal); with Shockley diodes
    # within the drop of a diode carrying the largest current any node can receive
    d = net.diode
    i_max = net.ranges.g_unit_S * max(float(np.abs(x).max()) for x in [v_in] + eq.v_free) * 2 * max(
        float(sum(c.degree_out(w).max() + c.degree_in(w).max() for c, w in zip(net.connections, net.w))), 1.0)
    slack = 0.0 if diode == "ideal" else d.n_vt_V * np.log1p(i_max / d.is_A)
    assert slack < 0.6
    for v, lo, hi in zip(eq.v_free, net.rail_lo_V, net.rail_hi_V):
        assert np.all(v >= lo - slack) and np.all(v <= hi + slack)


def kcl_residual_A(net, v_in, v_free, beta=0.0, target=None):
    """(B,) max KCL violation (A) per sample, from every conductance, bias source, clamp diode
    and nudge separately (ideal diodes: only current of the wrong sign at a clamped node)."""
    g = net.ranges.g_unit_S
    layers = [v_in] + list(v_free)
    into = [np.zeros_like(v) for v in v_free]
    for l, conn in enumerate(net.connections):
        t, i, j = conn.pairs()
        G = net.w[l].reshape(-1)[t]
        cur = G * (layers[l][:, i] - layers[l + 1][:, j])  # (B, pairs), from layer l into l+1
        np.add.at(into[l].T, j, cur.T)
        if l > 0:
            np.add.at(into[l - 1].T, i, -cur.T)
        into[l] += net.bias_per_node(l + 1)
    if beta != 0.0:
        into[-1] += beta * (target - v_free[-1])
    worst = np.zeros(len(v_in))
    d = net.diode
    for r, v, lo, hi in zip(into, v_free, net.rail_lo_V, net.rail_hi_V):
        if d.kind == "shockley":
            is_n = d.is_A / g
            r = r + np.where(np.isfinite(lo), is_n * np.expm1((np.where(np.isfinite(lo), lo, 0) - v) / d.n_vt_V), 0)
            r = r - np.where(np.isfinite(hi), is_n * np.expm1((v - np.where(np.isfinite(hi), hi, 0)) / d.n_vt_V), 0)
            bad = np.abs(r)
        else:
            at_lo, at_hi = v <= lo, v >= hi
            bad = np.where(at_lo, np.maximum(r, 0.0), np.where(at_hi, np.maximum(-r, 0.0), np.abs(r)))
        worst = np.maximum(worst, bad.max(axis=1) * g)
    return worst


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("beta", [0.0, 0.3, -0.3])
def test_ideal_diodes_match_bounded_least_squares(kind, beta):
    net = random_net(kind, "ideal")
    v_in, target = random_inputs(net)
    eq = solve(LayeredProblem(net, v_in), beta, target, tol_A=TIGHT_TOL_A, max_iter=20000)
    ref = solve_ideal(net, v_in, beta, target)
    err = max(np.max(np.abs(a - b)) for a, b in zip(eq.v_free, ref))
    assert err <= 1e-8
    # some diodes must be active or the test would not exercise the clamps
    clamped = sum(int(np.sum(v == 0.0)) for v in eq.v_free[:-1])
    assert clamped > 0


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("beta", [0.0, 0.3, -0.3])
def test_shockley_diodes_match_dense_newton(kind, beta):
    net = random_net(kind, "shockley")
    v_in, target = random_inputs(net)
    eq = solve(LayeredProblem(net, v_in), beta, target, tol_A=TIGHT_TOL_A, max_iter=20000)
    ref = solve_shockley(net, v_in, beta, target)
    err = max(np.max(np.abs(a - b)) for a, b in zip(eq.v_free, ref))
    assert err <= 1e-8
    # forward-biased diodes exist (nodes beyond their rail), so the exponential branch is tested
    beyond = sum(int(np.sum((v < lo) | (v > hi))) for v, lo, hi in
                 zip(eq.v_free[:-1], net.rail_lo_V[:-1], net.rail_hi_V[:-1]))
    assert beyond > 0


def test_energy_decreases_monotonically_over_sweeps():
    net = random_net("mlp", "ideal")
    v_in, _ = random_inputs(net)
    problem = LayeredProblem(net, v_in)
    energies = [net.energy(v_in, problem.initial_state()).sum()]
    state = None
    for _ in range(6):
        eq = solve(problem, 0.0, init=state, tol_A=0.0, max_iter=1)
        state = eq.v_free
        energies.append(net.energy(v_in, state).sum())
    assert np.all(np.diff(energies) <= 1e-12)


def test_unconverged_solve_is_reported_not_hidden():
    net = random_net("mlp", "ideal")
    v_in, _ = random_inputs(net)
    eq = solve(LayeredProblem(net, v_in), 0.0, tol_A=TIGHT_TOL_A, max_iter=1)
    assert not eq.certificate.all_converged
    with pytest.raises(ConvergenceError, match="did not converge"):
        eq.certificate.require()


def test_negative_nudge_larger_than_output_conductance_is_refused():
    net = random_net("mlp", "ideal")
    v_in, target = random_inputs(net)
    problem = LayeredProblem(net, v_in)
    too_big = float(problem.degree[-1].min()) + 1.0
    with pytest.raises(ConvergenceError, match="lower --beta"):
        solve(problem, -too_big, target)


def test_nan_and_inf_inputs_are_rejected():
    net = random_net("mlp", "ideal")
    x = np.full((2,) + net.image_shape, 0.5)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(EpsimError, match="NaN or inf"):
        net.input_voltages(x)
    x[0, 0, 0, 0] = np.inf
    with pytest.raises(EpsimError, match="NaN or inf"):
        net.input_voltages(x)


def test_units_scale_out_exactly():
    """Scaling g_unit (all conductances and bias currents alike) leaves voltages unchanged."""
    net = random_net("cnn", "ideal")
    v_in, target = random_inputs(net)
    eq1 = solve(LayeredProblem(net, v_in), 0.3, target, tol_A=TIGHT_TOL_A, max_iter=20000)
    g, i = net.g_S, net.i_bias_A
    net.ranges.g_unit_S *= 1e3
    net.set_params_SI([x * 1e3 for x in g], [x * 1e3 for x in i])
    eq2 = solve(LayeredProblem(net, v_in), 0.3, target, tol_A=TIGHT_TOL_A * 1e3, max_iter=20000)
    for a, b in zip(eq1.v_free, eq2.v_free):
        np.testing.assert_allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("diode", ["ideal", "shockley"])
@pytest.mark.parametrize("nudge_rtol", [1e-3, None])
def test_fused_centered_phases_equal_three_solves(diode, nudge_rtol):
    """solve_centered (one jitted call) gives bit for bit the states, certificates and sweep
    counts of the free, +beta and -beta solves done one by one."""
    from epsim.data import load_dataset
    from epsim.models.registry import build_circuit_model
    from epsim.solvers.numba_solver import NumbaSolver

    ds = load_dataset("digits", train_subset=16, test_subset=8)
    net = build_circuit_model("cnn", ds.image_shape, 10, arch="conv:4:3,dense:8,dense:10",
                              diode=DiodeModel(diode))
    net.init_params(np.random.default_rng(0))
    solver = NumbaSolver(nudge_rtol=nudge_rtol)
    p = solver.prepare(net, net.input_voltages(ds.x_train[:8]))
    t = one_hot_targets(ds.y_train[:8], 10)
    free = solver.solve(p, 0.0)
    one_by_one = (free, solver.solve(p, 0.5, t, init=free.v_free), solver.solve(p, -0.5, t, init=free.v_free))
    for a, b in zip(one_by_one, solver.solve_centered(p, 0.5, t)):
        for va, vb in zip(a.v_free, b.v_free):
            np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(a.certificate.residual_A, b.certificate.residual_A)
        np.testing.assert_array_equal(a.certificate.converged, b.certificate.converged)
        assert a.certificate.iterations == b.certificate.iterations and a.beta == b.beta
