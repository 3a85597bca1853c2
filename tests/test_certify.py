"""Certified robustness from the circuit's monotonicity: soundness (no point of the box,
random or an attack's iterate, leaves the bounds), exactness on a one-layer linear circuit,
the harness rows and their checks, and refusals."""
import numpy as np
import pytest

from epsim.circuit.diodes import DiodeModel
from epsim.errors import EpsimError
from epsim.models.resistive import build_cnn, build_mlp
from epsim.robustness.adapters import CircuitAdapter
from epsim.robustness.attacks import pgd
from epsim.robustness.certify import certify_box, certify_per_read, corner_voltages
from epsim.robustness.evaluate import SweepConfig, run_sweep
from epsim.solvers.numba_solver import NumbaSolver
from epsim.solvers.torch_solver import TorchCircuitSolver

SOLVER = NumbaSolver(tol_A=1e-13, max_iter=200000)


def random_circuit(kind, diode, amplified, seed):
    rng = np.random.default_rng(seed)
    d = DiodeModel(kind=diode)
    gains = (3.0, 0.5) if amplified else None
    if kind == "mlp":
        net = build_mlp((1, 4, 4), hidden=(10, 8), num_classes=4, input_gain_V=3.0, diode=d, amp_gains=gains)
    else:
        net = build_cnn((1, 6, 6), convs=((4, 3, 1), (6, 2, 2)), hidden=(), num_classes=4,
                        input_gain_V=3.0, diode=d, amp_gains=gains)
    net.init_params(rng, 1.0)
    p = net.layer_scale
    net.b = [rng.normal(0.0, 0.3, b.shape) * p[l] for l, b in enumerate(net.b)]
    return net


def outputs(net, x):
    eq = SOLVER.solve(SOLVER.prepare(net, net.input_voltages(x)), 0.0)
    assert eq.certificate.all_converged
    return eq.v_output


CASES = [(k, d, a) for k in ("mlp", "cnn") for d in ("ideal", "shockley") for a in (False, True)]


@pytest.mark.parametrize("kind,diode,amplified", CASES)
def test_no_point_of_the_box_leaves_the_bounds(kind, diode, amplified):
    """Random points, sign corners and clipped points of the box, over several seeds."""
    for seed in range(3):
        net = random_circuit(kind, diode, amplified, seed)
        rng = np.random.default_rng(100 + seed)
        x = rng.uniform(0, 1, (6,) + net.image_shape)
        x[0] = np.round(x[0])  # pixels at 0 and 1: the clipping of the box matters
        y = rng.integers(0, net.num_outputs, 6)
        eps = 0.1
        res = certify_box(net, SOLVER, x, y, eps)
        assert np.all(res.lower_V <= res.upper_V)
        for k in range(6):
            delta = rng.uniform(-eps, eps, x.shape) if k % 2 else eps * rng.choice([-1.0, 1.0], x.shape)
            v = outputs(net, np.clip(x + delta, 0.0, 1.0))
            assert np.all(v >= res.lower_V - 1e-9) and np.all(v <= res.upper_V + 1e-9)


@pytest.mark.parametrize("amplified", [False, True])
def test_attack_iterates_stay_inside_the_bounds(amplified):
    """Every image the harness's PGD queries at ε lies between the certificate's bounds."""
    net = random_circuit("mlp", "ideal", amplified, seed=7)
    rng = np.random.default_rng(8)
    x = rng.uniform(0, 1, (5,) + net.image_shape)
    y = np.argmax(outputs(net, x), axis=1)  # labels the circuit gets right: PGD attacks them
    eps = 0.08
    res = certify_box(net, SOLVER, x, y, eps)
    adapter = CircuitAdapter(net, tol_A=1e-13, max_iter=200000)
    seen = []

    def predict(xq):
        pred = adapter.predict(xq)
        seen.append((np.asarray(xq).copy(), pred.scores))
        return pred

    pgd(lambda xq, yq: adapter.input_gradient(xq, yq, "margin", "implicit"), predict, x, y, eps,
        "linf", 10, np.random.default_rng(9))
    assert len(seen) >= 10
    for xq, scores in seen:
        # each query is a sub-batch of the still-robust images: find them by distance
        for row, xs in zip(scores, xq):
            i = int(np.argmin(np.abs(x - xs).reshape(len(x), -1).max(axis=1)))
            assert np.all(row >= res.lower_V[i] - 1e-9) and np.all(row <= res.upper_V[i] + 1e-9)


def test_bounds_are_exact_for_a_one_layer_linear_circuit():
    """Input sources -> conductances -> linear outputs: ``v_j = (sum_i G_ij v_i + I_j) / sum_i
    G_ij``; the bounds are this formula at the corners of the relaxed box."""
    net = build_mlp((1, 3, 3), hidden=(), num_classes=3, input_gain_V=2.0)
    rng = np.random.default_rng(11)
    net.init_params(rng, 1.0)
    net.b = [rng.normal(0.0, 0.5, b.shape) for b in net.b]
    x = rng.uniform(0, 1, (4, 1, 3, 3))
    eps = 0.2
    res = certify_box(net, SOLVER, x, np.zeros(4, int), eps)
    w, b = net.w[0], net.b[0]
    lo, hi = np.clip(x - eps, 0, 1).reshape(4, -1), np.clip(x + eps, 0, 1).reshape(4, -1)
    g = net.input_gain_V
    upper = (np.concatenate([g * hi, -g * lo], 1) @ w + b) / w.sum(axis=0)
    lower = (np.concatenate([g * lo, -g * hi], 1) @ w + b) / w.sum(axis=0)
    assert np.allclose(res.upper_V, upper, rtol=0, atol=1e-12)
    assert np.allclose(res.lower_V, lower, rtol=0, atol=1e-12)


def test_torch_backend_certifies_alike():
    net = random_circuit("cnn", "shockley", True, seed=13)
    rng = np.random.default_rng(14)
    x = rng.uniform(0, 1, (5,) + net.image_shape)
    y = rng.integers(0, 4, 5)
    a = certify_box(net, SOLVER, x, y, 0.05)
    b = certify_box(net, TorchCircuitSolver(tol_A=1e-13, max_iter=200000, device="cpu"), x, y, 0.05)
    assert np.allclose(a.lower_V, b.lower_V, atol=1e-9) and np.allclose(a.upper_V, b.upper_V, atol=1e-9)
    assert np.array_equal(a.certified, b.certified)


def test_radius_is_validated():
    net = random_circuit("mlp", "ideal", False, seed=0)
    x = np.zeros((1,) + net.image_shape)
    for eps in (-0.1, 1.5, float("nan")):
        with pytest.raises(EpsimError, match="radius"):
            corner_voltages(net, x, eps)


def test_harness_rows_and_the_certified_le_robust_check():
    """``certify-linf`` rows beside PGD: certified <= robust <= clean sample by sample,
    monotone in ε, and the check fails when an attack "breaks" a certified image."""
    net = random_circuit("mlp", "ideal", True, seed=21)
    rng = np.random.default_rng(22)
    x = rng.uniform(0, 1, (12,) + net.image_shape)
    adapter = CircuitAdapter(net, tol_A=1e-12, max_iter=100000)
    y = np.argmax(adapter.predict(x).scores, axis=1)
    y[:2] = (y[:2] + 1) % net.num_outputs  # two wrong labels: clean accuracy < 1
    cfg = SweepConfig(attacks=("certify-linf", "pgd-linf"), eps=(0.01, 0.05), paths=("implicit",),
                      losses=("margin",), steps=10)
    out = run_sweep(adapter, x, y, cfg, progress=False, log=lambda *_: None)
    rows = {(r["attack"], r["eps"]): r for r in out["rows"]}
    for eps in (0.01, 0.05):
        cert, att = rows["certify-linf", eps], rows["pgd-linf", eps]
        assert cert["certified_accuracy"] <= att["robust_accuracy"] <= cert["clean_accuracy"]
        assert att["sanity"]["certified_le_robust"]["status"] == "pass"
        assert cert["sanity"]["certified_le_pgd-linf"]["status"] == "pass"
        assert cert["sanity"]["certified_le_clean"]["status"] == "pass"
        assert cert["sanity"]["monotone"]["status"] == ("n/a" if eps == 0.01 else "pass")
        assert cert["stats"]["predictions"] == 2 * len(y)
    assert rows["certify-linf", 0.01]["certified_accuracy"] > 0
    # a larger box certifies a subset of the images a smaller one does
    small, large = (np.array(list(rows["certify-linf", e]["robust_mask"])) == "1" for e in (0.01, 0.05))
    assert not np.any(large & ~small)


def test_certified_le_robust_fails_on_a_contradiction():
    from epsim.robustness import sanity as S

    c = S.check_certified_le_robust(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool), 0.1, "pgd-linf")
    assert c.failed and "1 certified image(s) broken" in c.detail


def test_software_models_are_refused():
    class Software:
        kind, name, image_shape, grad_paths = "torch", "bp-cnn", (1, 4, 4), ("bptt",)

    with pytest.raises(EpsimError, match="circuit model"):
        run_sweep(Software(), np.zeros((1, 1, 4, 4)), np.zeros(1, int),
                  SweepConfig(attacks=("certify-linf",), eps=(0.1,)), progress=False, log=lambda *_: None)


def test_certificate_holds_with_wire_resistance():
    """The wire-aware solver's circuit (resistive row/column wires, still positive
    conductances) obeys the same bounds: random points of the box stay inside them."""
    from epsim.solvers.wire_solver import WireSolver

    net = random_circuit("mlp", "ideal", False, seed=31)
    solver = WireSolver(tol_A=1e-13, max_iter=200000, wire_resistance_ohm=2000.0)
    rng = np.random.default_rng(32)
    x = rng.uniform(0, 1, (4,) + net.image_shape)
    y = rng.integers(0, net.num_outputs, 4)
    res = certify_box(net, solver, x, y, 0.1)
    plain = certify_box(net, SOLVER, x, y, 0.1)
    assert not np.allclose(res.upper_V, plain.upper_V)  # the wires change the circuit
    for k in range(6):
        xp = np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1)
        eq = solver.solve(solver.prepare(net, net.input_voltages(xp)), 0.0)
        assert np.all(eq.v_output >= res.lower_V - 1e-9) and np.all(eq.v_output <= res.upper_V + 1e-9)


def test_read_noise_is_certified_per_read():
    """With read noise the two corners must see the same read: a noisy solver is refused,
    and the per-read certificate bounds every image of the box read with those conductances."""
    from epsim.learning.memristive import DeviceArray, get_device_model

    net = random_circuit("mlp", "ideal", False, seed=41)
    devices = DeviceArray(get_device_model("rram:read_noise=0.05"), net, seed=1)
    rng = np.random.default_rng(42)
    x = rng.uniform(0, 1, (4,) + net.image_shape)
    y = rng.integers(0, net.num_outputs, 4)
    with pytest.raises(EpsimError, match="certify_per_read"):
        certify_box(net, devices.wrap_solver(SOLVER), x, y, 0.1)
    state = devices.read_rng.bit_generator.state
    res = certify_per_read(net, devices, SOLVER, x, y, 0.1)
    devices.read_rng.bit_generator.state = state  # the same read again
    import copy
    read = copy.copy(net)
    read.w = devices.read(net.w)
    assert not np.allclose(read.w[0], net.w[0])
    for k in range(6):
        v = outputs(read, np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1))
        assert np.all(v >= res.lower_V - 1e-9) and np.all(v <= res.upper_V + 1e-9)


def test_split_certificate_is_tighter_and_sound():
    """Splitting the box certifies a superset of the basic certificate, and every image it
    certifies keeps its label at random points and sign corners of the box."""
    from epsim.robustness.certify import certify_split

    net = random_circuit("mlp", "ideal", True, seed=51)
    rng = np.random.default_rng(52)
    x = rng.uniform(0, 1, (30,) + net.image_shape)
    y = np.argmax(outputs(net, x), axis=1)
    eps = 0.1
    basic = certify_box(net, SOLVER, x, y, eps).certified
    split, solves = certify_split(net, SOLVER, x, y, eps, split_pixels=3)
    assert not np.any(basic & ~split) and split.sum() > basic.sum()  # measured 9 vs 5 of 30
    assert np.all(solves[basic] == 2) and np.all(solves[~basic] == 2 + 2 * 8)
    for k in range(10):
        delta = rng.uniform(-eps, eps, x.shape) if k % 2 else eps * rng.choice([-1.0, 1.0], x.shape)
        pred = np.argmax(outputs(net, np.clip(x + delta, 0, 1)), axis=1)
        assert np.all(pred[split] == y[split])
