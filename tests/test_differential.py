"""Differential presentation of hidden layers (each node reaches the next crossbar as +A v
and -A v): the physics against the element laws and the exported netlist, EP exactness at
the training settings, the solvers' agreement, and the refusals."""
import subprocess
import sys

import numpy as np
import pytest

from epsim.circuit.compile import compile_network, layer_node_names, phase_beta
from epsim.circuit.diodes import DiodeModel
from epsim.circuit.spice_reader import read_netlist
from epsim.circuit.spice_writer import write_netlist
from epsim.errors import EpsimError
from epsim.learning.ep import centered_ep, squared_error
from epsim.models.presentation import halves
from epsim.models.registry import build_circuit_model
from epsim.models.resistive import ResistiveNetwork, one_hot_targets
from epsim.robustness.certify import certify_box
from epsim.robustness.input_gradients import implicit_input_gradient, squared_error_loss
from epsim.solvers.mna import solve_mna
from epsim.solvers.numba_solver import LayeredProblem, NumbaSolver, solve
from test_amplifier_spice import needs_ngspice, ngspice_voltages
from test_amplifiers import (assert_element_laws_hold, assert_energy_minimal, assert_ep_matches_finite_differences,
                             assert_torch_matches_numba)

ARCHS = {"mlp": "dense:7,dense:6,dense:3", "cnn": "conv:4:3:1:1,conv:4:2:2,dense:5,dense:3"}


def diff_net(kind="mlp", diode="ideal", gains=(3.0, 0.5, 2.0), seed=0, is_A=1e-12):
    """A small differential circuit on 1x4x4 images with amplifiers and random biases."""
    arch = ARCHS[kind]
    n_bound = arch.count(",")
    net = build_circuit_model("test", (1, 4, 4), 3, arch=arch, input_gain_V=2.0,
                              diode=DiodeModel(kind=diode, is_A=is_A),
                              amp_gains=list(gains[:n_bound]) if gains else None, differential=True)
    rng = np.random.default_rng(seed)
    net.init_params(rng, 1.0)
    # both halves of every differential crossbar conducting (training's start has the -v half at 0)
    net.w = [rng.uniform(0.0, 2.0, w.shape) / np.sqrt(c.fan_in) for c, w in zip(net.connections, net.w)]
    p = net.layer_scale
    net.b = [rng.normal(0.0, 0.1, b.shape) * p[l] for l, b in enumerate(net.b)]
    return net


def data(net, batch=4, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (batch,) + net.image_shape), rng.integers(0, net.num_outputs, batch)


def test_training_starts_from_the_plain_circuit():
    """init_params: the -v half of every differential crossbar at 0, the +v half drawn as
    the plain circuit's (same generator, same fan-in)."""
    diff = build_circuit_model("test", (1, 4, 4), 3, arch=ARCHS["cnn"], differential=True)
    plain = build_circuit_model("test", (1, 4, 4), 3, arch=ARCHS["cnn"])
    diff.init_params(np.random.default_rng(3), 1.0, "clamped-uniform")
    plain.init_params(np.random.default_rng(3), 1.0, "clamped-uniform")
    assert np.array_equal(diff.w[0], plain.w[0])
    for l in range(1, diff.num_layers):
        pos, neg = halves(diff.connections[l], diff.w[l], diff.layer_shapes[l])
        assert np.array_equal(pos, plain.w[l]) and not neg.any()


def test_crossbars_take_both_polarities():
    net = diff_net("cnn")
    assert [c.in_shape for c in net.connections] == [(2, 4, 4), (8, 4, 4), (8, 2, 2), (10,)]
    assert net.layer_shapes[1:] == [(4, 4, 4), (4, 2, 2), (5,), (3,)]
    back = ResistiveNetwork.from_description(net.describe())
    assert back.differential.tolist() == [True, True, True]
    plain = build_circuit_model("test", (1, 4, 4), 3, arch=ARCHS["cnn"])
    assert "differential" not in plain.describe() and not plain.is_differential


@pytest.mark.parametrize("beta", [0.0, 0.4, -0.4])
def test_numba_state_satisfies_the_element_laws(beta):
    assert_element_laws_hold(diff_net("mlp", "shockley", seed=5), beta)


def test_an_empty_inverting_half_is_the_plain_circuit():
    """With every conductance on the -v copies at 0, the differential circuit is the plain
    one: same voltages, and EP gives the plain gradient on the +v half."""
    diff = diff_net("cnn", gains=None, seed=7)
    plain = build_circuit_model("test", (1, 4, 4), 3, arch=ARCHS["cnn"], input_gain_V=2.0)
    w_plain = [diff.w[0].copy()]
    for l in range(1, diff.num_layers):
        pos, neg = halves(diff.connections[l], diff.w[l], diff.layer_shapes[l])
        neg[...] = 0.0
        w_plain.append(pos.copy())
    plain.set_params(w_plain, [b.copy() for b in diff.b])
    x, labels = data(diff, seed=8)
    solver = NumbaSolver(tol_A=1e-15, max_iter=100000, nudge_rtol=None)
    rd, rp = centered_ep(diff, solver, x, labels, 0.5), centered_ep(plain, solver, x, labels, 0.5)
    for l, (gd, gp) in enumerate(zip(rd.grad_w, rp.grad_w)):
        half = gd if l == 0 else halves(diff.connections[l], gd, diff.layer_shapes[l])[0]
        assert np.allclose(half, gp, rtol=1e-7, atol=1e-9 * np.abs(gp).max())
    for gd, gp in zip(rd.grad_b, rp.grad_b):
        assert np.allclose(gd, gp, rtol=1e-7, atol=1e-9 * np.abs(gp).max())


@pytest.mark.parametrize("kind,diode", [("mlp", "ideal"), ("mlp", "shockley"), ("cnn", "ideal")])
def test_ep_is_exact_with_differential_layers_at_the_training_settings(kind, diode):
    """Centered EP with the trainer's solver (free phase 1e-9 A, relative nudge rule 1e-3)
    and a small beta against finite differences of the loss, every layer, gains != 1."""
    net = diff_net(kind, diode, seed=11)
    assert_ep_matches_finite_differences(net, *data(net, seed=12))


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_torch_solver_matches_numba(beta):
    net = diff_net("cnn", "shockley", seed=15)
    assert_torch_matches_numba(net, *data(net, seed=16), beta)


def test_input_gradient_against_finite_differences():
    net = diff_net("mlp", "shockley", seed=17)
    assert_input_gradient_matches_finite_differences(net, *data(net, batch=2, seed=18))


def assert_input_gradient_matches_finite_differences(net, x, labels):
    """The implicit input gradient of the squared error against central differences of the
    converged free phase, on 5 random pixels of each of the 2 images ``x``."""
    target = one_hot_targets(labels, net.num_outputs)
    imp = implicit_input_gradient(net, x, squared_error_loss(target), tol_A=1e-14, max_iter=200000)

    def out(xx):
        return solve(LayeredProblem(net, net.input_voltages(xx)), 0.0, tol_A=1e-15, max_iter=200000).v_output

    h = 1e-6
    for i in np.random.default_rng(19).choice(x[0].size, size=5, replace=False):
        xp, xm = x.copy(), x.copy()
        xp.reshape(2, -1)[:, i] += h
        xm.reshape(2, -1)[:, i] -= h
        fd = (squared_error(out(xp), target) - squared_error(out(xm), target)) / (2 * h)
        assert np.allclose(np.asarray(imp.grad_x).reshape(2, -1)[:, i], fd, rtol=1e-4, atol=1e-9)


def phase_netlists(net, v_in, target, beta=0.5):
    return {phase: compile_network(net, v_in, beta=phase_beta(phase, beta),
                                   target_V=None if phase == "free" else target)
            for phase in ("free", "plus", "minus")}


def max_phase_difference_V(net, seed, reference) -> dict:
    """Per phase (free, plus, minus), the largest |V_numba - V_reference| over every free
    node of one random input; ``reference(netlist, phase)`` gives the voltage of each node
    of the netlist, in ``netlist.nodes`` order."""
    x, labels = data(net, batch=1, seed=seed)
    v_in = net.input_voltages(x)
    target = one_hot_targets(labels, net.num_outputs)
    solver = NumbaSolver(tol_A=1e-16, max_iter=200000)
    prepared = solver.prepare(net, v_in)
    free = solver.solve(prepared, 0.0)
    names = layer_node_names(net)
    out = {}
    for phase, nl in phase_netlists(net, v_in[0], target[0]).items():
        beta = phase_beta(phase, 0.5)
        eq = free if beta == 0.0 else solver.solve(prepared, beta, target, init=free.v_free)
        ref = reference(nl, phase)
        out[phase] = max(abs(layer[0, k] - ref[nl.node_index(n)])
                         for layer, layer_names in zip(eq.v_free, names[1:]) for k, n in enumerate(layer_names))
    return out


def assert_numba_matches_exported_netlists(net, seed, tmp_path, simulator="mna"):
    """compile -> write -> read -> MNA (``simulator="mna"``) or ngspice on the written file,
    against the layered solver: every free node of one random input, free and +-beta, within
    1e-9 V."""
    def mna(nl, phase):
        back = read_netlist(write_netlist(nl, tmp_path / f"{phase}.cir"))
        volts = solve_mna(back, tol_A=1e-16).voltages_V
        return [volts[back.node_index(n)] for n in nl.nodes]

    def ngspice(nl, phase):
        return ngspice_voltages(nl, tmp_path, f"{phase}.cir")

    for phase, diff in max_phase_difference_V(net, seed, mna if simulator == "mna" else ngspice).items():
        assert diff <= 1e-9, f"{phase}: max |V_numba - V_{simulator}| = {diff:.3g} V"


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_export_read_mna_matches_numba(kind, tmp_path):
    """compile -> write -> read -> MNA against the layered solver, free and +-beta, every
    node (the inverting amplifiers are E and F elements with negative gains)."""
    assert_numba_matches_exported_netlists(diff_net(kind, "shockley", seed=21), 22, tmp_path)


@needs_ngspice
def test_numba_matches_ngspice(tmp_path):
    net = diff_net("cnn", "shockley", seed=23, is_A=1e-15)  # ngspice's reverse knee: see README
    assert_numba_matches_exported_netlists(net, 24, tmp_path, "ngspice")


def test_the_energy_is_minimal_at_the_equilibrium():
    """Ideal diodes: no feasible random perturbation of the numba equilibrium lowers the
    layer-weighted co-content of the presented network."""
    net = diff_net("cnn", seed=25)
    assert_energy_minimal(net, *data(net, batch=2, seed=26), seed=27)


def test_refusals():
    net = diff_net("mlp")
    x, labels = data(net, batch=1)
    with pytest.raises(EpsimError, match="monotone"):
        certify_box(net, NumbaSolver(), x, labels, 0.01)
    from epsim.solvers.wire_network import WiredNetwork

    with pytest.raises(EpsimError, match="differential"):
        WiredNetwork(diff_net("mlp", gains=None), 1.0)
    run = subprocess.run([sys.executable, "-m", "epsim.train", "--dataset", "digits", "--differential",
                          "--wire-resistance", "1"], capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1].startswith("error: --wire-resistance > 0 with --differential")


def test_all_excitatory_units():
    """``unit_polarity="excitatory"``: every hidden node clamped at v >= 0 (one diode each in
    the export), recorded in the description; the default split is left out of it."""
    net = build_circuit_model("test", (1, 4, 4), 3, arch=ARCHS["cnn"], differential=True,
                              unit_polarity="excitatory")
    for lo, hi in zip(net.rail_lo_V[:-1], net.rail_hi_V[:-1]):
        assert np.all(lo == 0.0) and np.all(np.isposinf(hi))
    back = ResistiveNetwork.from_description(net.describe())
    assert back.unit_polarity == "excitatory"
    assert "unit_polarity" not in diff_net("cnn").describe()
    net.init_params(np.random.default_rng(0))
    nl = compile_network(net, net.input_voltages(np.full((1, 1, 4, 4), 0.5))[0])
    names = [n.lower() for n in nl.elements("D").names]
    assert names and all(n.startswith("dlo_") for n in names)
    with pytest.raises(EpsimError, match="unit polarity"):
        build_circuit_model("test", (1, 4, 4), 3, arch=ARCHS["cnn"], unit_polarity="mixed")


@needs_ngspice
def test_a_trained_differential_circuit_exports_and_ngspice_agrees(tmp_path):
    """Train a differential digits circuit for an epoch (its -v halves grow from 0), export it
    with Shockley diodes, and solve the files with ngspice: every node of the op.json that
    the exporter wrote with numba within 1e-6 V, all three phases."""
    import json

    from epsim.export import main as export
    from epsim.solvers.ngspice import run_ngspice
    from epsim.train import main as train
    from epsim.training import load_network

    run = tmp_path / "run"
    train(["--dataset", "digits", "--arch", "conv:4:3,dense:8,dense:10", "--differential", "--epochs", "1",
           "--train-subset", "120", "--test-subset", "20", "--no-progress", "--out", str(run)])
    trained, _ = load_network(run / "checkpoint.pt")
    assert trained.differential.tolist() == [True, True]
    assert halves(trained.connections[1], trained.w[1], trained.layer_shapes[1])[1].max() > 0  # -v half grew
    export(["--checkpoint", str(run / "checkpoint.pt"), "--diode", "shockley", "--phase", "all",
            "--out", str(tmp_path / "spice")])
    netlists = sorted((tmp_path / "spice").glob("*.cir"))
    assert len(netlists) == 3 and all("en_h1_" in p.read_text() for p in netlists)
    for path in netlists:
        ref = json.loads(path.with_suffix(".op.json").read_text())["node_voltages_V"]
        table = run_ngspice(path)
        assert max(abs(table[k] - v) for k, v in ref.items()) <= 1e-6
