"""Input sources centred on a pixel value (``input_center``): the voltages, every solver
and path that turns pixels into voltages, certificates, checkpoints and the command line;
and the refusal of circuits with floating nodes."""

import numpy as np
import pytest
import torch

from epsim.circuit.diodes import DiodeModel
from epsim.errors import ConvergenceError, EpsimError
from epsim.models.resistive import ResistiveNetwork, build_cnn, build_mlp, one_hot_targets
from epsim.robustness.certify import certify_box
from epsim.solvers.numba_solver import NumbaSolver
from epsim.solvers.torch_solver import TorchCircuit
from spice_marks import needs_ngspice

SOLVER = NumbaSolver(tol_A=1e-13, max_iter=200000)


def centred_mlp(center=0.5, diode="ideal", seed=0):
    net = build_mlp((1, 4, 4), hidden=(10, 8), num_classes=4, input_gain_V=3.0, diode=DiodeModel(diode),
                    input_center=center)
    rng = np.random.default_rng(seed)
    net.init_params(rng, 1.0)
    net.b = [rng.normal(0.0, 0.3, b.shape) for b in net.b]
    return net


def images(n=5, shape=(1, 4, 4), seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n,) + shape)


def test_voltages_are_gain_times_pixel_minus_center():
    x = images()
    net = centred_mlp(0.5)
    v = net.input_voltages(x).reshape(5, 2, 4, 4)
    assert np.array_equal(v[:, 0], 3.0 * (x[:, 0] - 0.5)) and np.array_equal(v[:, 1], 3.0 * (0.5 - x[:, 0]))
    # center 0 is the uncentred circuit, bit for bit
    plain = centred_mlp(0.0)
    assert np.array_equal(plain.input_voltages(x), 3.0 * np.concatenate([x, -x], axis=1).reshape(5, -1))


def test_center_is_validated():
    with pytest.raises(EpsimError, match="input center"):
        centred_mlp(1.5)


def test_torch_solver_takes_the_same_voltages_and_equilibrium():
    net, x = centred_mlp(0.5), images()
    circuit = TorchCircuit(net, dtype="float64")
    assert np.allclose(circuit.input_voltages(torch.from_numpy(x)).numpy(), net.input_voltages(x), atol=0, rtol=0)
    ref = SOLVER.solve(SOLVER.prepare(net, net.input_voltages(x)), 0.0)
    from epsim.solvers.factory import SolverConfig, make_solver

    solver = make_solver(SolverConfig(backend="torch", tol_A=1e-13, max_iter=200000))
    eq = solver.solve(solver.prepare(net, net.input_voltages(x)), 0.0)
    assert np.max(np.abs(eq.v_output - ref.v_output)) < 1e-9


def test_centering_changes_the_equilibrium():
    x = images()
    a = SOLVER.solve(SOLVER.prepare(centred_mlp(0.5), centred_mlp(0.5).input_voltages(x)), 0.0).v_output
    b = SOLVER.solve(SOLVER.prepare(centred_mlp(0.0), centred_mlp(0.0).input_voltages(x)), 0.0).v_output
    assert np.max(np.abs(a - b)) > 1e-3


@pytest.mark.parametrize("diode", ["ideal", "shockley"])
def test_certificate_bounds_hold_with_a_center(diode):
    """The box's corner circuits still bound every point of the box."""
    net = centred_mlp(0.5, diode)
    rng = np.random.default_rng(3)
    x = images(4)
    x[0] = np.round(x[0])
    eps = 0.1
    res = certify_box(net, SOLVER, x, rng.integers(0, 4, 4), eps)
    for k in range(6):
        delta = rng.uniform(-eps, eps, x.shape) if k % 2 else eps * rng.choice([-1.0, 1.0], x.shape)
        xp = np.clip(x + delta, 0.0, 1.0)
        v = SOLVER.solve(SOLVER.prepare(net, net.input_voltages(xp)), 0.0).v_output
        assert np.all(v >= res.lower_V - 1e-9) and np.all(v <= res.upper_V + 1e-9)


def test_description_round_trip_and_old_checkpoints():
    net = centred_mlp(0.25)
    d = net.describe()
    assert d["input_center"] == 0.25
    assert ResistiveNetwork.from_description(d).input_center == 0.25
    del d["input_center"]   # a checkpoint written before centring existed
    assert ResistiveNetwork.from_description(d).input_center == 0.0


def test_implicit_input_gradient_matches_finite_differences_with_a_center():
    """Through ``v_in = gain * (x - c, c - x)``: the implicit input gradient of a Shockley
    circuit (smooth) against central differences of the loss."""
    from epsim.robustness.input_gradients import implicit_input_gradient, squared_error_loss

    net = centred_mlp(0.5, "shockley")
    x = images(2)
    target = one_hot_targets(np.array([0, 2]), 4)
    loss_fn = squared_error_loss(target)

    def loss(xv):
        v = SOLVER.solve(SOLVER.prepare(net, net.input_voltages(xv)), 0.0).v_output
        return float(loss_fn(torch.from_numpy(v)).sum())

    g = implicit_input_gradient(net, x, loss_fn).grad_x
    g = g.numpy() if torch.is_tensor(g) else np.asarray(g)
    h = 1e-5
    for k in [(0, 0, 1, 2), (1, 0, 3, 0), (0, 0, 0, 0)]:
        xp, xm = x.copy(), x.copy()
        xp[k] += h
        xm[k] -= h
        assert (loss(xp) - loss(xm)) / (2 * h) == pytest.approx(g[k], rel=1e-4, abs=1e-9)


@needs_ngspice
def test_exported_centred_circuit_matches_ngspice(tmp_path):
    from epsim.solvers.spice_backend import SpiceSolver

    net = centred_mlp(0.5, "shockley")
    x, y = images(3), np.array([0, 1, 3])
    solver = SpiceSolver(tol_A=1e-12)
    prepared = solver.prepare(net, net.input_voltages(x))
    target = one_hot_targets(y, 4)
    for beta in (0.0, 0.5):
        eq = solver.solve(prepared, beta, target if beta else None)
        ref = SOLVER.solve(SOLVER.prepare(net, net.input_voltages(x)), beta, target if beta else None)
        for a, b in zip(eq.v_free, ref.v_free):
            assert np.max(np.abs(a - b)) <= 1e-6


def test_training_records_the_center(tmp_path):
    from epsim.models.loading import load_network
    from epsim.train import main

    main(["--epochs", "1", "--train-subset", "64", "--test-subset", "32", "--input-center", "0.5",
          "--out", str(tmp_path), "--no-progress"])
    net, state = load_network(tmp_path / "checkpoint.pt")
    assert net.input_center == 0.5 and state["config"]["input_center"] == 0.5


def test_training_refuses_a_center_outside_the_pixel_range(monkeypatch):
    import epsim.train as train_cli

    monkeypatch.setattr(train_cli, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(EpsimError, match="--input-center") as exc:
        train_cli.main(["--input-center", "-0.1", "--no-progress"])
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_floating_node_is_refused_with_a_clear_error(backend):
    """A hidden node whose every conductance is 0 S has no equilibrium: a one-line error
    naming the layer, not a division by zero inside a kernel."""
    net = build_cnn((1, 6, 6), convs=((4, 3, 1),), hidden=(), num_classes=4, input_gain_V=3.0)
    net.init_params(np.random.default_rng(0), 1.0)
    net.w[0][1] = 0.0           # channel 1: no conductance from the inputs
    net.w[1][16:32] = 0.0       # ... nor to the outputs (its 4x4 nodes are rows 16-31)
    x = images(2, (1, 6, 6))
    if backend == "numba":
        with pytest.raises(ConvergenceError, match="layer 1 has 16 node"):
            SOLVER.prepare(net, net.input_voltages(x))
    else:
        with pytest.raises(ConvergenceError, match="layer 1 has 16 node"):
            TorchCircuit(net, dtype="float64")
