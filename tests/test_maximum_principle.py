"""The maximum principle of a passive network (docs/physics.md, *What a passive network can
compute*): with no bias sources, every free node's normalised voltage lies within the range of
the sources it is connected to (the inputs, the 0 V rails and pads, and in a nudged phase the
targets of the +beta phase), at the solver settings training uses; a bias source is what can
break it. The -beta phase's nudge is a negative conductance, so it is not covered."""
import numpy as np
import pytest

from epsim.circuit.diodes import DiodeModel
from epsim.models.registry import build_circuit_model
from epsim.models.resistive import one_hot_targets
from epsim.solvers.numba_solver import LayeredProblem, solve
from epsim.training import TrainConfig

TRAIN = TrainConfig()  # the trainer's defaults: free phase tol_A, nudged phases nudge_rtol
TARGET_HIGH_V = 1.0

CASES = {
    "dense": dict(arch="dense:12,dense:10,dense:5"),
    "differential conv, padded, amplified": dict(arch="conv:4:3:1:1,conv:6:2:2,dense:5", differential=True,
                                                 amp_gains=[3.0, 0.5]),
    "conv, Shockley diodes": dict(arch="conv:4:3:1,dense:7,dense:5", diode=DiodeModel(kind="shockley")),
}


def network(case, seed=0):
    net = build_circuit_model("test", (1, 6, 6), 5, input_gain_V=2.0, **CASES[case])
    rng = np.random.default_rng(seed)
    net.init_params(rng, 1.0)
    # every conductance conducting, both halves of a differential crossbar included
    net.w = [rng.uniform(0.0, 2.0, w.shape) / np.sqrt(c.fan_in) for c, w in zip(net.connections, net.w)]
    return net


def error_bound_V(net, tol_A) -> float:
    """Largest normalised voltage error a KCL residual of ``tol_A`` can hide: the residual over
    the smallest total conductance of a free node (its crossbar from below only), in the
    units of the layer with the smallest voltage scale."""
    smallest = min(float(view.degree_out.min()) for view in net.crossbar_views())
    return tol_A / (net.ranges.g_unit_S * smallest * float(np.min(net.layer_scale)))


def solved_normalised(net, x, beta, labels, tol_A, nudge_rtol):
    target = one_hot_targets(labels, net.num_outputs, TARGET_HIGH_V)
    v_in = net.input_voltages(x)
    eq = solve(LayeredProblem(net, v_in), beta, target, tol_A=tol_A, max_iter=20000,
               nudge_rtol=nudge_rtol if beta else None)
    assert eq.certificate.all_converged
    return v_in, net.to_normalised(eq.v_free)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_free_voltages_stay_within_the_sources_range(case, beta):
    net = network(case)
    rng = np.random.default_rng(1)
    x, labels = rng.uniform(0, 1, (6,) + net.image_shape), rng.integers(0, 5, 6)
    v_in, u = solved_normalised(net, x, beta, labels, TRAIN.tol_A, TRAIN.nudge_rtol)
    bound_V = max(np.abs(v_in).max(), TARGET_HIGH_V if beta else 0.0)
    slack_V = error_bound_V(net, TRAIN.tol_A)
    assert slack_V < 1e-3 * bound_V  # the check is not swamped by the solver's tolerance
    peak_V = max(np.abs(layer).max() for layer in u)
    assert peak_V <= bound_V + slack_V
    assert np.abs(u[0]).max() > 0.02 * bound_V  # not a circuit stuck at 0 V


def test_a_bias_source_can_push_a_node_beyond_the_inputs_range():
    """The check above can fail: one strong bias current lifts its node above every source."""
    net = network("dense")
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (3,) + net.image_shape)
    v_in = net.input_voltages(x)
    views = net.crossbar_views()
    net.b[0][0] = 5.0 * np.abs(v_in).max() * (views[0].degree_out[0] + views[1].degree_in[0])
    _, u = solved_normalised(net, x, 0.0, np.zeros(3, int), TRAIN.tol_A, None)
    assert u[0][:, 0].min() > np.abs(v_in).max()
