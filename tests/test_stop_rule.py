"""The nudged phases' relative stop rule: EP gradients at the training settings match the
converged ones in every layer, for deep MLPs, a DRN-3H-shaped circuit and two-conv CNNs (plain
and differential, with and without a leak to 0 V)."""
import numpy as np
import pytest

from epsim.data import load_dataset
from epsim.learning.ep import centered_ep
from epsim.learning.optim import ProjectedSGD
from epsim.models.presentation import halves
from epsim.models.registry import build_circuit_model
from epsim.models.resistive import leak_from_ratio
from epsim.solvers import get_solver, make_solver
from epsim.solvers.stop_rule import rule_step
from epsim.training import TrainConfig, preset_config

CONVERGED_TOL_A = 1e-15


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_subset=400, test_subset=10)

# (name, model, arch, input gain V, beta, init, lr per layer): small widths, same shapes. The
# DRN-3H's beta = 2 needs its 1024-unit fan-in into the outputs (the -beta phase's negative
# nudging conductance must stay below an output's total conductance): 0.5 at width 32.
CIRCUITS = [
    ("mlp-deep", "mlp-deep", None, None, 0.5, "uniform", 0.05),
    ("drn-3h-shaped", "drn-3h", "dense:32,dense:32,dense:32,dense:10", 4000.0, 0.5, "clamped-uniform",
     [0.005, 0.02, 0.08, 0.005]),
    ("two-conv cnn", "cnn", "conv:8:3,conv:16:3,dense:10", 16.0, 0.5, "uniform", 0.05),
    ("differential two-conv cnn", "cnn-differential", "conv:8:3,conv:16:3,dense:10", 16.0, 0.5, "uniform", 0.05),
    # a leak of 10x each node's crossbar conductance, amplifiers and input gain x11 to match
    ("leaky differential two-conv cnn", "cnn-differential-leak", "conv:8:3,conv:16:3,dense:10", 176.0, 0.5,
     "clamped-uniform", 0.05),
]
LEAK_RATIO = 10.0


def layer_agreement(net, x, labels, beta, solver):
    """Per layer (cosine, norm ratio) of ``solver``'s EP gradient against the converged one."""
    ref_solver = get_solver("numba", tol_A=CONVERGED_TOL_A, max_iter=100_000)
    ref = centered_ep(net, ref_solver, x, labels, beta)
    got = centered_ep(net, solver, x, labels, beta)
    assert ref.converged.all() and got.converged.all()
    out = []
    for g, g0 in zip(got.grad_w + got.grad_b, ref.grad_w + ref.grad_b):
        n, n0 = np.linalg.norm(g), np.linalg.norm(g0)
        assert n0 > 0
        out.append((float(np.sum(g * g0) / (n * n0)) if n > 0 else 0.0, n / n0))
    return out


@pytest.mark.parametrize("name,model,arch,gain,beta,init,lr", CIRCUITS, ids=[c[0] for c in CIRCUITS])
def test_training_settings_give_the_converged_ep_gradient(digits, name, model, arch, gain, beta, init, lr):
    """Acceptance: with the solver settings training uses (TrainConfig defaults), every layer's
    EP gradient has cosine >= 0.999 and norm within 1 % of the converged (1e-15 A) one, at
    initialisation and after some training."""
    leak = model.endswith("-leak")
    model = model.removesuffix("-leak")
    differential = model.endswith("-differential")
    model = model.removesuffix("-differential")
    gains = [1.0 + LEAK_RATIO] if leak else None
    cfg = preset_config(model, arch=arch, input_gain_V=gain, beta=beta, init=init, differential=differential,
                        amp_gain=gains, leak_ratio=LEAK_RATIO if leak else 0.0)
    assert cfg.tol_A == TrainConfig().tol_A and cfg.nudge_rtol == TrainConfig().nudge_rtol
    solver = make_solver(cfg)
    net = build_circuit_model(model, digits.image_shape, 10, arch=arch, input_gain_V=gain,
                              differential=differential, amp_gains=gains)
    net.init_params(np.random.default_rng(0), 1.0, init)
    if leak:
        net.leak = leak_from_ratio(net, LEAK_RATIO)
    lrs = lr if isinstance(lr, list) else [lr] * net.num_layers
    opt = ProjectedSGD(net, lrs, lrs, 0.0)
    x, y = digits.x_train, digits.y_train
    checks = {"init": layer_agreement(net, x[:8], y[:8], beta, solver)}
    for k in range(40):
        r = centered_ep(net, solver, x[8 + 4 * k:12 + 4 * k], y[8 + 4 * k:12 + 4 * k], beta)
        opt.step(r.grad_w, r.grad_b)
    if differential:  # training has grown the -v halves from 0
        assert all(halves(net.connections[l], net.w[l], net.layer_shapes[l])[1].max() > 0 for l in (1, 2))
    checks["trained"] = layer_agreement(net, x[200:208], y[200:208], beta, solver)
    for when, per_layer in checks.items():
        for l, (cos, ratio) in enumerate(per_layer):
            assert cos >= 0.999 and abs(ratio - 1) <= 0.01, (when, l, cos, ratio)


def test_absolute_stop_truncates_the_lowest_layer(digits):
    """The failure the relative rule fixes: stopping the nudged phases on 1e-9 A shrinks the
    two-conv CNN's lowest-layer gradient well below the converged one."""
    arch = "conv:8:3,conv:16:3,dense:10"
    net = build_circuit_model("cnn", digits.image_shape, 10, arch=arch)
    net.init_params(np.random.default_rng(0), 1.0)
    absolute = layer_agreement(net, digits.x_train[:8], digits.y_train[:8], 0.5,
                               get_solver("numba", tol_A=1e-9, max_iter=1000))
    assert absolute[0][1] < 0.9


class _Rule:
    """Per-batch state of rule_step through the sweeps of one phase (as the solvers keep it)."""

    def __init__(self, rtol, n_layers, batch):
        self.rtol = rtol
        self.change_prev = np.full((n_layers, batch), np.inf)
        self.error = np.zeros((n_layers, batch))

    def update(self, change, response, scale, active):
        met = np.zeros(active.shape, dtype=np.bool_)
        rule_step(change, response, scale, self.change_prev, self.error, self.rtol, active, met)
        return met


def test_rule_waits_for_a_layer_that_has_not_moved():
    rule = _Rule(1e-3, 2, 3)
    active = np.ones(3, bool)
    change = np.array([[0.0, 1e-3, 1e-9], [0.5, 0.5, 0.5]])
    response = np.array([[0.0, 1e-3, 1.0], [0.5, 0.5, 0.5]])
    scale = np.ones((2, 3))
    # first sweep: no contraction seen yet, every sample with a moving layer waits
    assert not rule.update(change, response, scale, active).any()
    # second sweep: layer 1 contracted by 1e-6, layer 0 of sample 0 never moved (fully clamped)
    met = rule.update(np.array([[0.0, 1e-9, 1e-15], [5e-7, 5e-7, 5e-7]]), response, scale, active)
    assert met.tolist() == [True, True, True]
    # a slowly contracting layer (rho = 0.99) with a large tail is not converged
    rule = _Rule(1e-3, 1, 1)
    rule.update(np.array([[1e-3]]), np.array([[1.0]]), np.ones((1, 1)), np.ones(1, bool))
    assert not rule.update(np.array([[0.99e-3]]), np.array([[1.0]]), np.ones((1, 1)), np.ones(1, bool)).any()


@pytest.mark.parametrize("arch,gain", [("conv:8:3,conv:16:3,dense:10", 16.0),
                                       ("dense:32,dense:32,dense:32,dense:10", 400.0)])
def test_torch_backend_uses_the_same_rule(digits, arch, gain):
    """The torch solver stops its nudged phases on the same rule, with the same result."""
    cfg = preset_config("cnn", arch=arch, input_gain_V=gain, backend="torch")
    net = build_circuit_model("cnn", digits.image_shape, 10, arch=arch, input_gain_V=gain)
    net.init_params(np.random.default_rng(0), 1.0)
    torch_solver = make_solver(cfg)
    assert torch_solver.name == "torch" and torch_solver.nudge_rtol == cfg.nudge_rtol
    for cos, ratio in layer_agreement(net, digits.x_train[:8], digits.y_train[:8], 0.5, torch_solver):
        assert cos >= 0.999 and abs(ratio - 1) <= 0.01
