"""Input gradients dL/dx: BPTT, implicit differentiation and the EP estimate from the input
sources' currents, against central finite differences of the numba free-phase loss."""
import numpy as np
import pytest
import torch

from epsim.circuit.diodes import DiodeModel
from epsim.errors import ConvergenceError, EpsimError
from epsim.robustness.input_gradients import (
    bptt_input_gradient, circuit_forward, ep_input_gradient, implicit_input_gradient,
    input_source_currents_A, squared_error_loss)
from epsim.models.resistive import build_cnn, build_mlp, one_hot_targets
from epsim.solvers.numba_solver import NumbaSolver
from epsim.solvers.torch_solver import TorchCircuit, TorchCircuitSolver

CASES = [(k, d) for k in ("mlp", "cnn") for d in ("ideal", "shockley")]
TIGHT = NumbaSolver(tol_A=1e-15, max_iter=5000)


pytestmark = pytest.mark.usefixtures("one_thread")


def random_net(kind, diode="ideal", seed=0):
    rng = np.random.default_rng(seed)
    d = DiodeModel(kind=diode)
    if kind == "mlp":
        net = build_mlp((1, 4, 4), hidden=(10, 6), num_classes=3, input_gain_V=4.0, diode=d)
    else:
        net = build_cnn((1, 7, 7), convs=((3, 3, 1), (3, 2, 2)), hidden=(), num_classes=3,
                        input_gain_V=4.0, diode=d)
    net.init_params(rng, 1.0)
    net.b = [rng.normal(0.0, 0.5, b.shape) for b in net.b]
    return net


def batch(net, n=2, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n,) + net.image_shape)
    labels = rng.integers(0, net.num_outputs, n)
    return x, labels, one_hot_targets(labels, net.num_outputs)


def finite_difference(net, x, target, h=1e-5):
    """Central differences of the numba free-phase loss 1/2||v_out - y||^2 per pixel."""
    b, n = x.shape[0], int(np.prod(net.image_shape))
    e = np.eye(n).reshape((n,) + net.image_shape)
    xs = np.concatenate([x[:, None] + h * e[None], x[:, None] - h * e[None]], axis=1)
    eq = TIGHT.solve(TIGHT.prepare(net, net.input_voltages(xs.reshape((-1,) + net.image_shape))))
    assert eq.certificate.all_converged
    loss = 0.5 * np.sum((eq.v_output - np.repeat(target, 2 * n, axis=0)) ** 2, axis=1).reshape(b, 2, n)
    return ((loss[:, 0] - loss[:, 1]) / (2 * h)).reshape(x.shape)


def cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("kind,diode", CASES)
def test_bptt_implicit_and_finite_differences_agree(kind, diode):
    net = random_net(kind, diode)
    x, _, target = batch(net)
    fd = finite_difference(net, x, target)
    assert np.linalg.norm(fd) > 0
    imp = implicit_input_gradient(net, x, squared_error_loss(target), device="cpu")
    bptt = bptt_input_gradient(net, torch.tensor(x), squared_error_loss(target), n_iter=60, device="cpu")
    assert imp.converged.all()
    assert imp.grad_x.shape == x.shape and isinstance(imp.grad_x, np.ndarray)
    assert torch.is_tensor(bptt.grad_x) and bptt.grad_x.shape == x.shape
    assert cosine(imp.grad_x, fd) >= 0.99
    assert cosine(bptt.grad_x.numpy(), fd) >= 0.99
    # in fact they agree far better than the acceptance bound
    np.testing.assert_allclose(imp.grad_x, fd, atol=1e-5 * np.abs(fd).max())
    np.testing.assert_allclose(bptt.grad_x.numpy(), imp.grad_x, atol=1e-5 * np.abs(fd).max())
    # the losses reported are those of the free equilibrium
    eq = TIGHT.solve(TIGHT.prepare(net, net.input_voltages(x)))
    np.testing.assert_allclose(imp.loss, 0.5 * np.sum((eq.v_output - target) ** 2, axis=1), rtol=1e-5)


@pytest.mark.parametrize("kind,diode", CASES)
def test_jacobi_preconditioned_adjoint_solve_gives_the_plain_cg_gradient(kind, diode):
    """The preconditioner changes the CG's path, not its solution: both reach the adjoint
    tolerance and the gradients agree to it; on these small circuits it takes no more
    iterations than the plain CG."""
    net = random_net(kind, diode)
    x, _, target = batch(net, n=3)
    plain = implicit_input_gradient(net, x, squared_error_loss(target), device="cpu", jacobi=False)
    pre = implicit_input_gradient(net, x, squared_error_loss(target), device="cpu", jacobi=True)
    assert plain.converged.all() and pre.converged.all()
    assert pre.extras["adjoint_iterations"] <= plain.extras["adjoint_iterations"]
    np.testing.assert_allclose(pre.grad_x, plain.grad_x, rtol=0, atol=1e-8 * np.abs(plain.grad_x).max())


@pytest.mark.parametrize("kind,diode", CASES)
def test_ep_input_gradient_matches_implicit(kind, diode):
    """Also fixes the sign: dL/dv_in = +(I^{+beta} - I^{-beta}) / (2 beta g_unit)."""
    net = random_net(kind, diode)
    x, labels, target = batch(net, n=3)
    imp = implicit_input_gradient(net, x, squared_error_loss(target), device="cpu")
    # ideal diodes: the gradient has kinks where a node meets its rail, and a nudge that moves
    # a node across one (here a node 2e-5 V from its rail) changes the estimate: a small beta
    beta = 1e-3 if diode == "shockley" else 1e-5
    ep = ep_input_gradient(net, NumbaSolver(tol_A=1e-16, max_iter=100000), x, labels, beta=beta)
    assert ep.converged.all()
    err = np.linalg.norm(ep.grad_x - imp.grad_x) / np.linalg.norm(imp.grad_x)
    assert err <= (1e-4 if diode == "shockley" else 1e-3)  # measured <= 5e-6 / 1.5e-4
    assert cosine(ep.grad_x, imp.grad_x) >= 1 - 1e-6
    # same estimate with the torch backend, returned as a tensor for a tensor input
    ep_t = ep_input_gradient(net, TorchCircuitSolver(tol_A=1e-16, max_iter=100000, device="cpu"),
                             torch.tensor(x), target, beta=beta)
    assert torch.is_tensor(ep_t.grad_x)
    np.testing.assert_allclose(ep_t.grad_x.numpy(), ep.grad_x, rtol=1e-5, atol=1e-8 * np.abs(ep.grad_x).max())


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_source_currents_match_the_mna_branch_currents(kind):
    """Each input source's current from the layered solution equals the branch current the
    general MNA solver finds for that source in the compiled netlist (Shockley diodes)."""
    from epsim.circuit.compile import compile_network
    from epsim.solvers.mna import solve_mna

    net = random_net(kind, "shockley")
    x, _, _ = batch(net, n=2)
    eq = TIGHT.solve(TIGHT.prepare(net, net.input_voltages(x)))
    i_src = input_source_currents_A(net, eq.v_input, eq.v_free[0])
    n0 = net.layer_sizes[0]
    for b in range(len(x)):
        sol = solve_mna(compile_network(net, eq.v_input[b]), tol_A=1e-15)
        # SPICE convention: branch current flows from + through the source to -, so the
        # current a source delivers into the network is minus its branch current
        mna = -sol.source_currents_A[:n0]
        np.testing.assert_allclose(i_src[b], mna, rtol=1e-7, atol=1e-14)


def test_circuit_forward_reaches_the_solver_equilibrium_and_differentiates():
    net = random_net("cnn", "shockley")
    x, _, target = batch(net)
    circuit = TorchCircuit(net, "cpu")
    xt = torch.tensor(x, requires_grad=True)
    v_out = circuit_forward(circuit, xt, n_iter=60)
    eq = TIGHT.solve(TIGHT.prepare(net, net.input_voltages(x)))
    np.testing.assert_allclose(v_out.detach().numpy(), eq.v_output, atol=1e-9)
    squared_error_loss(target)(v_out).sum().backward()
    assert xt.grad is not None and torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0
    # nudged forward pulls the outputs toward the target
    v_nudged = circuit_forward(circuit, torch.tensor(x), 60, beta=1.0, target_V=target)
    assert np.all(np.abs(v_nudged.numpy() - target).sum(1) < np.abs(eq.v_output - target).sum(1))


def test_float32_circuit_forward_gradient():
    net = random_net("mlp", "ideal")
    x, _, target = batch(net)
    ref = implicit_input_gradient(net, x, squared_error_loss(target), device="cpu")
    g32 = bptt_input_gradient(net, torch.tensor(x, dtype=torch.float32), squared_error_loss(target), 60,
                              device="cpu", dtype="float32")
    assert g32.grad_x.dtype == torch.float32
    assert cosine(g32.grad_x.numpy(), ref.grad_x) >= 0.999


def test_unconverged_and_bad_arguments_raise():
    net = random_net("mlp", "shockley")
    x, labels, target = batch(net)
    with pytest.raises(ConvergenceError):
        implicit_input_gradient(net, x, squared_error_loss(target), max_iter=1, device="cpu")
    flagged = implicit_input_gradient(net, x, squared_error_loss(target), max_iter=1, device="cpu",
                                      strict=False)
    assert not flagged.converged.any()
    with pytest.raises(ConvergenceError):
        ep_input_gradient(net, NumbaSolver(tol_A=1e-15, max_iter=1), x, labels, 1e-3)
    with pytest.raises(EpsimError):
        ep_input_gradient(net, TIGHT, x, labels, beta=0.0)
    with pytest.raises(EpsimError):
        ep_input_gradient(net, TIGHT, x, labels[:1], beta=1e-3)
    with pytest.raises(EpsimError):
        implicit_input_gradient(net, x, lambda v: v, device="cpu")  # loss of wrong shape
    with pytest.raises(EpsimError):
        circuit_forward(net, torch.tensor(x), 0)
    with pytest.raises(EpsimError):
        circuit_forward(net, torch.zeros(2, 1, 3, 3), 5)


def test_implicit_gradient_at_a_given_numba_equilibrium():
    net = random_net("cnn", "ideal")
    x, _, target = batch(net)
    eq = TIGHT.solve(TIGHT.prepare(net, net.input_voltages(x)))
    own = implicit_input_gradient(net, x, squared_error_loss(target), device="cpu")
    given = implicit_input_gradient(net, x, squared_error_loss(target), device="cpu", equilibrium=eq)
    np.testing.assert_allclose(given.grad_x, own.grad_x, rtol=1e-6, atol=1e-9)
    with pytest.raises(EpsimError):
        implicit_input_gradient(net, x[::-1].copy(), squared_error_loss(target), device="cpu", equilibrium=eq)


@pytest.mark.parametrize("diode", ["ideal", "shockley"])
def test_ep_gradient_from_a_given_free_phase(diode):
    """A free phase solved beforehand (as the circuit adapter does, warm-started from the
    predictor's equilibrium) gives the EP gradient of a fresh solve, and one of other images
    or of a nudged phase is refused."""
    net = random_net("cnn", diode)
    x, labels, _ = batch(net, n=3)
    own = ep_input_gradient(net, TIGHT, x, labels, 1e-3)
    prepared = TIGHT.prepare(net, net.input_voltages(x))
    rough = NumbaSolver(tol_A=1e-9, max_iter=5000).solve(prepared, 0.0)  # the predictor's tolerance
    free = TIGHT.solve(prepared, 0.0, init=rough.v_free)
    assert free.certificate.all_converged
    given = ep_input_gradient(net, TIGHT, x, labels, 1e-3, free=free)
    np.testing.assert_allclose(given.grad_x, own.grad_x, rtol=0, atol=1e-7 * np.abs(own.grad_x).max())
    with pytest.raises(EpsimError, match="other input images"):
        ep_input_gradient(net, TIGHT, x[::-1].copy(), labels, 1e-3, free=free)
    nudged = TIGHT.solve(prepared, 1e-3, one_hot_targets(labels, net.num_outputs), init=free.v_free)
    with pytest.raises(EpsimError, match="another beta"):
        ep_input_gradient(net, TIGHT, x, labels, 1e-3, free=nudged)
