"""The leak: a fixed conductance from every free node to the 0 V rail. The physics against
the element laws, the exported netlist (MNA and ngspice) and the energy; EP exactness at the
training settings; the solvers' agreement; the trainer's option, checkpoint and refusals."""
import json
import subprocess
import sys

import numpy as np
import pytest

from epsim.circuit.compile import compile_network
from epsim.circuit.diodes import DiodeModel
from epsim.errors import EpsimError
from epsim.models.registry import build_circuit_model
from epsim.models.resistive import ResistiveNetwork, leak_from_ratio
from epsim.solvers.numba_solver import LayeredProblem, NumbaSolver
from test_amplifier_spice import needs_ngspice
from test_amplifiers import (assert_element_laws_hold, assert_energy_minimal, assert_ep_matches_finite_differences,
                             assert_torch_matches_numba)
from scripts import load_script
from test_differential import assert_input_gradient_matches_finite_differences, assert_numba_matches_exported_netlists

ARCHS = {"mlp": "dense:7,dense:6,dense:3", "cnn": "conv:4:3:1:1,conv:4:2:2,dense:5,dense:3"}
RATIO = 3.0


def leaky_net(kind="mlp", diode="ideal", ratio=RATIO, gains=(4.0, 0.5, 2.0), seed=0, is_A=1e-12):
    """A small amplified circuit on 1x4x4 images with a leak of ``ratio`` times each node's
    conductance to the crossbar below, and random biases."""
    arch = ARCHS[kind]
    n_bound = arch.count(",")
    net = build_circuit_model("test", (1, 4, 4), 3, arch=arch, input_gain_V=2.0,
                              diode=DiodeModel(kind=diode, is_A=is_A),
                              amp_gains=list(gains[:n_bound]) if gains else None)
    rng = np.random.default_rng(seed)
    net.init_params(rng, 1.0)
    net.leak = leak_from_ratio(net, ratio)
    p = net.layer_scale
    net.b = [rng.normal(0.0, 0.1, b.shape) * p[l] for l, b in enumerate(net.b)]
    return net


def data(net, batch=4, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (batch,) + net.image_shape), rng.integers(0, net.num_outputs, batch)


def test_the_leak_is_ratio_times_each_nodes_conductance_below():
    """Per channel in conv layers, padding included: every position of a channel has the
    same kernel total, so the tied leak is exactly R times each node's crossbar conductance."""
    net = leaky_net("cnn")
    for l, view in enumerate(net.crossbar_views(), start=1):
        np.testing.assert_allclose(net.leak_per_node(l), RATIO * view.degree_out, rtol=1e-12)
    assert net.leak[0].shape == net.b[0].shape


def test_no_leak_is_todays_circuit():
    """Without a leak the description has no ``leak`` key and the solver's conductances are
    the crossbars' alone; a leak round-trips through the description."""
    plain = leaky_net("cnn", ratio=0.0)
    assert not plain.has_leak and "leak" not in plain.describe()
    leaky = leaky_net("cnn")
    back = ResistiveNetwork.from_description(leaky.describe())
    assert back.has_leak
    for a, b in zip(back.leak, leaky.leak):
        np.testing.assert_array_equal(a, b)
    v_in = plain.input_voltages(data(plain)[0])
    for d0, d1, l in zip(LayeredProblem(plain, v_in).degree, LayeredProblem(leaky, v_in).degree, range(1, 5)):
        np.testing.assert_allclose(d1 - d0, leaky.leak_per_node(l), rtol=1e-12)


def test_bad_leaks_are_refused():
    net = leaky_net()
    with pytest.raises(EpsimError, match=">= 0"):
        net.leak = [-np.ones(b.shape) for b in net.b]
    with pytest.raises(EpsimError, match="shape"):
        net.leak = [np.ones(3) for _ in net.b]
    with pytest.raises(EpsimError, match="leak ratio"):
        leak_from_ratio(net, -1.0)


@pytest.mark.parametrize("beta", [0.0, 0.4, -0.4])
def test_numba_state_satisfies_the_element_laws(beta):
    """KCL written node by node from the element laws (crossbars, amplifiers, biases,
    Shockley diodes, leak, nudge) holds at the solver's state."""
    assert_element_laws_hold(leaky_net("mlp", "shockley", seed=5), beta)


@pytest.mark.parametrize("kind,diode", [("mlp", "ideal"), ("mlp", "shockley"), ("cnn", "ideal")])
def test_ep_is_exact_with_a_leak_at_the_training_settings(kind, diode):
    """Centered EP with the trainer's solver (free phase 1e-9 A, relative nudge rule 1e-3)
    against finite differences of the loss, every layer, with a leak and amplifiers."""
    net = leaky_net(kind, diode, seed=11)
    assert_ep_matches_finite_differences(net, *data(net, seed=12))


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_torch_solver_matches_numba(beta):
    net = leaky_net("cnn", "shockley", seed=15)
    assert_torch_matches_numba(net, *data(net, seed=16), beta)


def test_input_gradient_against_finite_differences():
    net = leaky_net("mlp", "shockley", seed=17)
    assert_input_gradient_matches_finite_differences(net, *data(net, batch=2, seed=18))


def test_export_writes_one_resistor_to_ground_per_node():
    net = leaky_net("cnn")
    nl = compile_network(net, net.input_voltages(data(net, batch=1)[0])[0])
    r = nl.elements("R")
    leaks = [k for k, n in enumerate(r.names) if n.startswith("rleak_")]
    assert len(leaks) == sum(net.layer_sizes[1:])
    g_S = np.sort(1.0 / r.value[leaks])
    expected = np.sort(np.concatenate([net.leak_per_node(l) for l in range(1, net.num_layers + 1)]))
    np.testing.assert_allclose(g_S, expected * net.ranges.g_unit_S, rtol=1e-15)
    assert all(nl.nodes[b] == "0" for b in r.b[leaks])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_export_read_mna_matches_numba(kind, tmp_path):
    assert_numba_matches_exported_netlists(leaky_net(kind, "shockley", seed=21), 22, tmp_path)


@needs_ngspice
def test_numba_matches_ngspice(tmp_path):
    assert_numba_matches_exported_netlists(leaky_net("cnn", "shockley", seed=23, is_A=1e-15), 24, tmp_path,
                                           "ngspice")


def test_the_energy_is_minimal_at_the_equilibrium():
    net = leaky_net("cnn", seed=25)
    assert_energy_minimal(net, *data(net, batch=2, seed=26), seed=27)


def test_a_leak_pulls_nodes_towards_0_V():
    """Same crossbars and sources: the leaky circuit's every hidden node is nearer 0 V."""
    leaky = leaky_net("mlp", gains=None, seed=29)
    plain = leaky_net("mlp", ratio=0.0, gains=None, seed=29)
    x = data(leaky, seed=30)[0]
    solver = NumbaSolver(tol_A=1e-14, max_iter=100000)
    a = solver.solve(solver.prepare(leaky, leaky.input_voltages(x)), 0.0)
    b = solver.solve(solver.prepare(plain, plain.input_voltages(x)), 0.0)
    assert np.abs(a.v_free[0]).mean() < np.abs(b.v_free[0]).mean()


def test_the_certificate_holds_with_a_leak():
    """A leak is a conductance to a fixed rail: the circuit stays monotone in its sources, so
    no point of the certified box leaves the bounds."""
    from epsim.robustness.certify import certify_box

    net = leaky_net("cnn", "shockley", seed=31)
    solver = NumbaSolver(tol_A=1e-13, max_iter=200000)
    rng = np.random.default_rng(32)
    x, y = data(net, batch=4, seed=33)
    res = certify_box(net, solver, x, y, 0.1)
    for _ in range(4):
        xq = np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0.0, 1.0)
        v = solver.solve(solver.prepare(net, net.input_voltages(xq)), 0.0).v_output
        assert np.all(v >= res.lower_V - 1e-9) and np.all(v <= res.upper_V + 1e-9)


def test_wire_resistance_with_a_leak_is_refused():
    from epsim.solvers.wire_network import WiredNetwork

    with pytest.raises(EpsimError, match="leak"):
        WiredNetwork(leaky_net(gains=None), 1.0)
    run = subprocess.run([sys.executable, "-m", "epsim.train", "--dataset", "digits", "--leak-ratio", "2",
                          "--wire-resistance", "1"], capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == "error: --wire-resistance > 0 with --leak-ratio > 0 is not supported"


def test_training_with_a_leak_records_it_and_resumes_with_it(tmp_path, capsys):
    """``leak_ratio`` sizes the leak from the initial conductances; the checkpoint keeps it;
    an interrupted run resumes with the same leak (not one re-derived from its weights) and
    ends where an uninterrupted one does."""
    from epsim.data import load_dataset
    from epsim.training import TrainConfig
    from test_training import assert_resumes_to_the_uninterrupted_run

    digits = load_dataset("digits", train_subset=120, test_subset=60)
    cfg = TrainConfig(leak_ratio=3.0, amp_gain=[4.0], input_gain_V=64.0, epochs=2, train_subset=120,
                      test_subset=60)
    full, whole, _ = assert_resumes_to_the_uninterrupted_run(cfg, digits, tmp_path, 15)
    start = build_circuit_model("cnn", (1, 8, 8), 10, amp_gains=[4.0])
    start.init_params(np.random.default_rng(0), 1.0)
    for got, expected in zip(whole.leak, leak_from_ratio(start, 3.0)):
        assert np.all(expected > 0)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert full["history"][-1]["test_accuracy"] > 0.5
    # the trained leaky circuit's EP gradient at its training settings is the converged one
    fidelity = load_script("analysis/ep_fidelity.py")
    capsys.readouterr()
    assert fidelity.main(["--checkpoint", str(tmp_path / "whole" / "checkpoint.pt"), "--batch", "4",
                          "--reference-tol", "1e-17"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["converged"] == {"training": True, "reference": True}
    assert len(report["per_array"]) == 2 * whole.num_layers
    assert report["min_cosine"] >= 0.999 and report["max_norm_error"] <= 0.01
