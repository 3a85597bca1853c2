"""torch backend: same equilibria as the numba solver and as independent dense solves.

Tolerances: float64 agrees with numba to <= 1e-6 V (in practice ~1e-14 V); float32 at
tol_A = 1e-10 A agrees to <= 2e-4 V (measured ~1e-5..7e-5 V: the tolerance itself, a KCL
residual of 1e-4 g_unit*V, bounds the voltage error; float32 cannot go much lower).
"""
import numpy as np
import pytest
import torch

from circuit_reference import solve_ideal, solve_shockley
from epsim.circuit.diodes import DiodeModel, TorchRails
from epsim.errors import ConvergenceError, EpsimError
from epsim.learning.ep import centered_ep
from epsim.models.resistive import build_cnn, build_mlp, one_hot_targets
from epsim.solvers import BACKENDS, get_solver
from epsim.solvers.numba_solver import LayeredProblem, NumbaSolver
from epsim.solvers.torch_solver import TorchCircuit, TorchCircuitSolver, resolve_device

TIGHT_TOL_A = 1e-15
CASES = [(k, d) for k in ("mlp", "cnn") for d in ("ideal", "shockley")]


pytestmark = pytest.mark.usefixtures("one_thread")


def random_net(kind, diode="ideal", seed=0):
    """Two free hidden layers + outputs (odd and even layers); the CNN has a stride-2 conv
    on an 8x8 map (3x3 kernel -> 3x3 output), which needs output_padding = 1."""
    rng = np.random.default_rng(seed)
    d = DiodeModel(kind=diode)
    if kind == "mlp":
        net = build_mlp((1, 5, 5), hidden=(12, 8), num_classes=4, input_gain_V=4.0, diode=d)
    else:
        net = build_cnn((1, 10, 10), convs=((4, 3, 1), (4, 3, 2)), hidden=(), num_classes=4,
                        input_gain_V=4.0, diode=d)
    net.init_params(rng, 1.0)
    net.b = [rng.normal(0.0, 0.5, b.shape) for b in net.b]
    return net


def random_inputs(net, batch=6, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch,) + net.image_shape)
    y = rng.integers(0, net.num_outputs, batch)
    return net.input_voltages(x), one_hot_targets(y, net.num_outputs)


def max_dv(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_conv_maps_match_numpy_connection():
    net = random_net("cnn")
    conn = net.connections[1]  # 8x8 -> 3x3, stride 2: output_padding 1
    assert (conn.in_shape[1] - conn.kernel) % conn.stride == 1
    circuit = TorchCircuit(net, "cpu")
    rng = np.random.default_rng(3)
    for k, conn in enumerate(net.connections):
        v_in = rng.normal(size=(3, conn.n_in))
        v_out = rng.normal(size=(3, conn.n_out))
        np.testing.assert_allclose(circuit.drive_out(k, torch.tensor(v_in)).numpy(),
                                   conn.drive_out(net.w[k], v_in), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(circuit.drive_in(k, torch.tensor(v_out)).numpy(),
                                   conn.drive_in(net.w[k], v_out), rtol=1e-12, atol=1e-12)
    for l in range(1, net.num_layers + 1):
        np.testing.assert_allclose(circuit.degree[l - 1].numpy(), LayeredProblem(net, np.zeros((1, net.layer_sizes[0]))).degree[l - 1],
                                   rtol=1e-12)


@pytest.mark.parametrize("kind,diode", CASES)
def test_equilibria_match_numba_float64(kind, diode):
    net = random_net(kind, diode)
    v_in, target = random_inputs(net)
    ns = NumbaSolver(tol_A=TIGHT_TOL_A, max_iter=5000)
    ts = TorchCircuitSolver(tol_A=TIGHT_TOL_A, max_iter=5000, device="cpu")
    pn, pt = ns.prepare(net, v_in), ts.prepare(net, v_in)
    free_n, free_t = ns.solve(pn, 0.0), ts.solve(pt, 0.0)
    assert max_dv(free_n.v_free, free_t.v_free) <= 1e-6
    assert free_t.certificate.all_converged and free_t.certificate.backend == "torch"
    assert free_t.certificate.iterations == free_n.certificate.iterations  # same algorithm
    for beta in (0.4, -0.4):  # nudged phases, warm-started from the free state as in EP
        eq_n = ns.solve(pn, beta, target, init=free_n.v_free)
        eq_t = ts.solve(pt, beta, target, init=free_t.v_free)
        assert max_dv(eq_n.v_free, eq_t.v_free) <= 1e-6
        cert = eq_t.certificate
        assert cert.all_converged and cert.residual_A.shape == (v_in.shape[0],)
        # the certificate is numba's KCL residual of the returned state, per sample, in A
        np.testing.assert_allclose(cert.residual_A, pn.residual_A(eq_t.v_free, beta, target),
                                   rtol=1e-6, atol=1e-20)
        assert all(isinstance(v, np.ndarray) and v.dtype == np.float64 for v in eq_t.v_free)


@pytest.mark.parametrize("diode", ["ideal", "shockley"])
def test_matches_independent_dense_solve(diode):
    net = random_net("mlp", diode)
    v_in, target = random_inputs(net, batch=3)
    ref = (solve_ideal if diode == "ideal" else solve_shockley)(net, v_in, 0.3, target)
    ts = TorchCircuitSolver(tol_A=TIGHT_TOL_A, max_iter=5000, device="cpu")
    eq = ts.solve(ts.prepare(net, v_in), 0.3, target)
    assert max_dv(ref, eq.v_free) <= 1e-6


@pytest.mark.parametrize("kind,diode", CASES)
def test_float32_tolerance(kind, diode):
    net = random_net(kind, diode)
    v_in, target = random_inputs(net)
    ref = NumbaSolver(tol_A=TIGHT_TOL_A, max_iter=5000)
    ts = TorchCircuitSolver(tol_A=1e-10, max_iter=5000, device="cpu", dtype="float32")
    pt, pn = ts.prepare(net, v_in), ref.prepare(net, v_in)
    for beta in (0.0, 0.4):
        eq = ts.solve(pt, beta, target)
        assert eq.certificate.all_converged  # float64 certificate of the float32 state
        assert max_dv(ref.solve(pn, beta, target).v_free, eq.v_free) <= 2e-4


def test_unconverged_solve_is_flagged():
    net = random_net("cnn", "shockley")
    v_in, _ = random_inputs(net)
    ts = TorchCircuitSolver(tol_A=TIGHT_TOL_A, max_iter=2, device="cpu")
    cert = ts.solve(ts.prepare(net, v_in)).certificate
    assert cert.iterations == 2 and not cert.converged.any()
    with pytest.raises(ConvergenceError):
        cert.require()


def test_centered_ep_gradients_match_numba():
    net = random_net("cnn", "ideal")
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (6,) + net.image_shape)
    labels = rng.integers(0, net.num_outputs, 6)
    rn = centered_ep(net, NumbaSolver(tol_A=1e-13), x, labels, 0.5)
    rt = centered_ep(net, TorchCircuitSolver(tol_A=1e-13, device="cpu"), x, labels, 0.5)
    assert rn.converged.all() and rt.converged.all()
    for a, b in zip(rn.grad_w + rn.grad_b, rt.grad_w + rt.grad_b):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_registry_and_user_errors():
    assert "torch" in BACKENDS
    solver = get_solver("torch", tol_A=1e-9, max_iter=10)
    assert isinstance(solver, TorchCircuitSolver)
    net = random_net("mlp")
    v_in, target = random_inputs(net)
    p = solver.prepare(net, v_in)
    with pytest.raises(EpsimError):
        solver.solve(p, 0.5)  # nudged phase without targets
    with pytest.raises(ConvergenceError):
        solver.solve(p, -1e6, target)  # negative output conductance
    with pytest.raises(EpsimError):
        TorchCircuitSolver(dtype="float16")
    with pytest.raises(EpsimError):
        TorchCircuitSolver(device="tpu")
    with pytest.raises(EpsimError):
        solver.prepare(net, v_in[:, :3])
    if not torch.cuda.is_available():
        with pytest.raises(EpsimError):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    net = random_net("cnn", "shockley")
    v_in, target = random_inputs(net)
    cpu = TorchCircuitSolver(tol_A=TIGHT_TOL_A, device="cpu")
    gpu = TorchCircuitSolver(tol_A=TIGHT_TOL_A, device="cuda")
    a = cpu.solve(cpu.prepare(net, v_in), 0.4, target)
    b = gpu.solve(gpu.prepare(net, v_in), 0.4, target)
    assert b.certificate.all_converged
    assert max_dv(a.v_free, b.v_free) <= 1e-9


@pytest.mark.parametrize("arch,differential", [(None, False), ("conv:8:3,dense:12,dense:10", True)])
def test_training_with_torch_backend_matches_numba(arch, differential):
    from epsim.data import load_dataset
    from epsim.training import TrainConfig, train

    data = load_dataset("digits", train_subset=64, test_subset=40)
    runs = {}
    for backend in ("numba", "torch"):
        cfg = TrainConfig(backend=backend, epochs=1, batch_size=8, train_subset=64, test_subset=40,
                          arch=arch, differential=differential)
        runs[backend] = train(cfg, data, None, progress=False, log=lambda *_: None)
    assert runs["torch"]["backend"] == "torch"
    assert runs["torch"]["test_unconverged"] == 0
    assert runs["torch"]["test_accuracy"] == runs["numba"]["test_accuracy"]
    assert abs(runs["torch"]["history"][0]["train_loss"] - runs["numba"]["history"][0]["train_loss"]) < 1e-6


@pytest.mark.parametrize("fast_steps", [3, 0])  # 0: force the safeguarded (bracketed) path
def test_shockley_node_roots_vs_brentq(monkeypatch, fast_steps):
    from scipy.optimize import brentq

    import epsim.solvers.torch_solver as ts

    monkeypatch.setattr(ts, "FAST_NEWTON_STEPS", fast_steps)
    is_n, nvt = 1e-6, 0.02585
    inf = np.inf
    lo = np.array([0.0, -inf, -inf, 0.0, -0.3])  # lo diode, hi diode, none, both, both
    hi = np.array([inf, 0.0, inf, 0.5, 0.2])
    a = np.array([3.0, 0.7, 2.0, 15.0, 1.0])
    c = np.random.default_rng(0).normal(size=(40, 5)) * np.array([[1e-3], [1.0], [30.0], [300.0]] * 10)
    for rails_single in (lo[:3], hi[:3]), (lo, hi):
        lo_r, hi_r = rails_single
        n = len(lo_r)
        rails = TorchRails(torch.tensor(lo_r), torch.tensor(hi_r))
        v = ts.shockley_root(torch.tensor(a[:n]), torch.tensor(c[:, :n]), rails, is_n, nvt).numpy()

        def f(x, k, ck):
            i = 0.0
            if np.isfinite(hi_r[k]):
                i += is_n * (np.exp(min((x - hi_r[k]) / nvt, 300.0)) - 1.0)
            if np.isfinite(lo_r[k]):
                i -= is_n * (np.exp(min((lo_r[k] - x) / nvt, 300.0)) - 1.0)
            return a[k] * x - ck + i

        for b in range(c.shape[0]):
            for k in range(n):
                ref = brentq(f, -1e4, 1e4, args=(k, c[b, k]), xtol=1e-15, rtol=1e-15, maxiter=500)
                assert abs(v[b, k] - ref) <= 1e-12 * (1 + abs(ref)), (b, k, v[b, k], ref)
