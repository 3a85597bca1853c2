"""The cross-entropy nudge: a current ``beta g_unit (y - softmax(v / 1 V))`` into each output
node instead of a conductance to a target voltage. The solvers' states against the element
laws and the energy, EP at the training settings against finite differences of the
cross-entropy, torch against numba, the SPICE softmax sources (MNA, ngspice, the reader), the
trainer's option and checkpoint, and the refusals where the nudge has no model (transient,
wires)."""
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp

from epsim.circuit.netlist import Netlist
from epsim.circuit.spice_reader import read_netlist
from epsim.circuit.spice_writer import format_netlist, write_netlist
from epsim.errors import ConvergenceError, EpsimError
from epsim.learning.ep import centered_ep, cross_entropy
from epsim.models.resistive import ResistiveNetwork, one_hot_targets
from epsim.solvers.mna import solve_mna
from epsim.solvers.numba_solver import LayeredProblem, NumbaSolver, solve
from test_amplifier_spice import needs_ngspice
from test_amplifiers import (assert_element_laws_hold, assert_energy_minimal, assert_ep_matches_finite_differences,
                             assert_torch_matches_numba)
from test_differential import assert_numba_matches_exported_netlists
from test_leak import data, leaky_net
from test_training import assert_resumes_to_the_uninterrupted_run

CE = "cross-entropy"


def ce_net(kind="mlp", diode="ideal", seed=11, **kw):
    """A small amplified, leaky circuit (tests/test_leak.py) nudged with the cross-entropy."""
    net = leaky_net(kind, diode, seed=seed, **kw)
    net.cost = CE
    return net


@pytest.mark.parametrize("beta", [0.5, -0.5, 3.0])
def test_numba_state_satisfies_the_element_laws(beta):
    """Shockley diodes, amplifiers and a leak: every node's KCL written out from the element
    laws, the output nodes with the softmax current source, within 1e-12 A."""
    assert_element_laws_hold(ce_net("mlp", "shockley", seed=5), beta)


def test_the_output_block_is_the_minimum_of_its_potential():
    """The output nodes of a nudged phase, given the hidden layer, against scipy's minimiser
    of ``1/2 a u^2 - c.u + beta (lse(u) - y.u)`` (no amplifier at the outputs)."""
    net = ce_net("mlp", gains=None, seed=3)
    x, labels = data(net, seed=4)
    target = one_hot_targets(labels, net.num_outputs)
    problem = LayeredProblem(net, net.input_voltages(x))
    for beta in (0.7, -0.7):
        eq = solve(problem, beta, target, tol_A=1e-15, max_iter=100000)
        a = problem.self_conductance(net.num_layers, beta)
        c = problem.drive(net.num_layers, eq.v_free, 0.0, None)  # neighbours and biases only
        for b in range(len(labels)):
            def potential(u, b=b):
                return 0.5 * a @ (u * u) - c[b] @ u + beta * (logsumexp(u) - target[b] @ u)

            ref = minimize(potential, np.zeros(net.num_outputs), method="BFGS", options={"gtol": 1e-13})
            assert np.abs(eq.v_output[b] - ref.x).max() <= 1e-7


def test_the_energy_is_minimal_at_the_nudged_equilibrium():
    net = ce_net("cnn", seed=25)
    assert_energy_minimal(net, *data(net, batch=2, seed=26), seed=27)


@pytest.mark.parametrize("kind,diode", [("mlp", "ideal"), ("mlp", "shockley"), ("cnn", "ideal")])
def test_ep_is_the_cross_entropy_gradient_at_the_training_settings(kind, diode):
    """Centered EP with the trainer's solver (free phase 1e-9 A, relative nudge rule 1e-3)
    against finite differences of the cross-entropy of the free equilibrium, every array,
    with amplifiers and a leak."""
    net = ce_net(kind, diode)
    assert_ep_matches_finite_differences(net, *data(net, seed=12))


def test_the_trainer_settings_give_the_converged_ep_gradient():
    """The relative stop rule resolves the cross-entropy nudge in every layer: EP at the
    training settings against every phase solved to 1e-15 A, cosine >= 0.999, norm within 1 %."""
    net = ce_net("cnn", seed=41)
    x, labels = data(net, batch=6, seed=42)
    train = centered_ep(net, NumbaSolver(tol_A=1e-9, nudge_rtol=1e-3), x, labels, beta=1.0)
    ref = centered_ep(net, NumbaSolver(tol_A=1e-15, max_iter=200000), x, labels, beta=1.0)
    assert train.converged.all() and ref.converged.all()
    for g, r in zip(train.grad_w + train.grad_b, ref.grad_w + ref.grad_b):
        g, r = g.reshape(-1), r.reshape(-1)
        assert g @ r / (np.linalg.norm(g) * np.linalg.norm(r)) >= 0.999
        assert abs(np.linalg.norm(g) / np.linalg.norm(r) - 1.0) <= 0.01


@pytest.mark.parametrize("beta", [0.0, 0.5, -0.5])
def test_torch_solver_matches_numba(beta):
    net = ce_net("cnn", "shockley", seed=15)
    assert_torch_matches_numba(net, *data(net, seed=16), beta)


def test_large_outputs_and_a_strong_nudge_converge():
    """Outputs of tens of volts (softmax saturated, set by the output biases) and beta near
    the output conductance: the output solve stays convergent, KCL to 1e-12 A."""
    net = ce_net("mlp", "shockley", seed=7)
    x, labels = data(net, seed=8)
    degree_out = LayeredProblem(net, net.input_voltages(x)).degree[-1]
    net.b = net.b[:-1] + [np.array([25.0, -10.0, 40.0]) * degree_out * net.layer_scale[-1]]
    v = NumbaSolver(tol_A=1e-12, max_iter=100000).solve(
        LayeredProblem(net, net.input_voltages(x)), 0.0).v_output
    assert np.abs(v).max() > 20.0
    for b in (0.9 * degree_out.min(), -0.9 * degree_out.min(), 20.0):
        assert_element_laws_hold(net, b)


def test_a_nudge_beyond_the_output_conductance_is_refused():
    net = ce_net()
    x, labels = data(net)
    problem = LayeredProblem(net, net.input_voltages(x))
    beta = 1.1 * problem.degree[-1].min()
    with pytest.raises(ConvergenceError, match="lower --beta"):
        solve(problem, -beta, one_hot_targets(labels, net.num_outputs))


def test_the_cost_is_recorded_and_the_loss_is_the_cross_entropy():
    net = ce_net()
    back = ResistiveNetwork.from_description(net.describe())
    assert back.cost == CE and net.with_cost("squared-error").cost == "squared-error"
    assert "cost" not in net.with_cost("squared-error").describe()
    x, labels = data(net)
    r = centered_ep(net, NumbaSolver(), x, labels, beta=0.5)
    v = solve(LayeredProblem(net, net.input_voltages(x)), 0.0, tol_A=1e-9).v_output
    expected = logsumexp(v, axis=1) - v[np.arange(len(labels)), labels]
    np.testing.assert_allclose(r.loss, expected, rtol=1e-6)
    np.testing.assert_allclose(cross_entropy(v, one_hot_targets(labels, 3)), expected, rtol=1e-12)


def test_transient_and_wire_solver_refuse_the_nudged_phases():
    from epsim.solvers.transient import simulate
    from epsim.solvers.wire_solver import WireSolver

    net = ce_net(gains=None)
    x, labels = data(net, batch=1)
    v_in = net.input_voltages(x)
    target = one_hot_targets(labels, net.num_outputs)
    with pytest.raises(EpsimError, match="cross-entropy-nudged"):
        simulate(net, v_in, t_stop_s=1e-6, beta=0.5, target_V=target)
    plain = ce_net(gains=None, ratio=0.0)
    wire = WireSolver(wire_resistance_ohm=1.0)
    prepared = wire.prepare(plain, v_in)
    wire.solve(prepared, 0.0)  # the free phase solves
    with pytest.raises(EpsimError, match="squared error only"):
        wire.solve(prepared, 0.5, target)


def softmax_circuit(scale_A=2e-3) -> Netlist:
    """Three 1 kOhm nodes, two driven by 1 and 2 mA, and a softmax group on all three."""
    nl = Netlist(title="softmax sources")
    nl.add("R", ["r0", "r1", "r2"], ["o0", "o1", "o2"], ["0"] * 3, 1e3)
    nl.add("I", ["i0", "i1"], ["0", "0"], ["o0", "o1"], [1e-3, 2e-3])
    nl.add("B", ["b0", "b1", "b2"], ["0"] * 3, ["o0", "o1", "o2"], scale_A, target=[1.0, 0.0, 0.0],
           group=["g"] * 3)
    return nl


def test_mna_solves_the_softmax_source_against_scipy():
    from scipy.optimize import fsolve
    from scipy.special import softmax

    nl = softmax_circuit()
    sol = solve_mna(nl, tol_A=1e-16)
    v = np.array([sol.voltages_V[nl.node_index(n)] for n in ("o0", "o1", "o2")])

    def kcl(u):
        return -1e-3 * u + np.array([1e-3, 2e-3, 0.0]) + 2e-3 * (np.array([1.0, 0.0, 0.0]) - softmax(u))

    np.testing.assert_allclose(v, fsolve(kcl, np.zeros(3), xtol=1e-15), atol=1e-12)
    assert np.abs(kcl(v)).max() <= 1e-16


@pytest.mark.parametrize("dialect", ["ngspice", "xyce"])
def test_softmax_sources_round_trip_through_spice_text(dialect, tmp_path):
    nl = softmax_circuit()
    text = format_netlist(nl, dialect)
    assert ("b0 0 o0 I = 0.002 * (1.0 - exp(v(o0)) / (exp(v(o0)) + exp(v(o1)) + exp(v(o2))))" in text
            if dialect == "ngspice" else
            "b0 0 o0 I={0.002 * (1.0 - exp(v(o0)) / (exp(v(o0)) + exp(v(o1)) + exp(v(o2))))}" in text)
    back = read_netlist(write_netlist(nl, tmp_path / "c.cir", dialect))
    b = back.softmax_sources
    assert b.names == ["b0", "b1", "b2"] and b.value.tolist() == [2e-3] * 3
    assert b.target.tolist() == [1.0, 0.0, 0.0] and len(set(b.group.tolist())) == 1
    a = solve_mna(nl, tol_A=1e-16).voltages_V
    np.testing.assert_array_equal(solve_mna(back, tol_A=1e-16).voltages_V[:a.size], a)


@pytest.mark.parametrize("body,message", [
    ("b0 0 o0 I = 2e-3 * (1 - exp(2*v(o0)) / (exp(v(o0))))", "only the softmax current source"),
    ("b0 o1 o0 I = 2e-3 * (1 - exp(v(o0)) / (exp(v(o0))))", "from ground"),
    ("b0 0 o0 I = 2e-3 * (1 - exp(v(o0)) / (exp(v(o0)) + exp(v(o1))))", "one source driving each"),
    ("b0 0 o0 V = 2e-3", "only the softmax current source"),
])
def test_reader_refuses_other_behavioural_sources(body, message, tmp_path):
    path = tmp_path / "bad.cir"
    path.write_text(f"bad\nr0 o0 0 1k\nr1 o1 0 1k\n{body}\n.op\n.end\n")
    with pytest.raises(EpsimError, match=message) as err:
        read_netlist(path)
    assert "bad.cir:4" in str(err.value)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_export_read_mna_matches_numba(kind, tmp_path):
    """Amplifiers, a leak, Shockley diodes, the softmax sources of the nudged phases."""
    assert_numba_matches_exported_netlists(ce_net(kind, "shockley", seed=21), 22, tmp_path)


@needs_ngspice
def test_numba_matches_ngspice(tmp_path):
    assert_numba_matches_exported_netlists(ce_net("cnn", "shockley", seed=23, is_A=1e-15), 24, tmp_path, "ngspice")


def test_training_with_the_cross_entropy_records_it_and_resumes(tmp_path):
    """``--cost cross-entropy`` trains the digits circuit, records the cost in the checkpoint
    and metrics, and an interrupted run resumes to the same parameters."""
    from epsim.data import load_dataset
    from epsim.training import TrainConfig

    digits = load_dataset("digits", train_subset=120, test_subset=60)
    cfg = TrainConfig(cost=CE, epochs=2, train_subset=120, test_subset=60)
    full, whole, state = assert_resumes_to_the_uninterrupted_run(cfg, digits, tmp_path, 15)
    assert whole.cost == CE and state["config"]["cost"] == CE
    # it learns: three times chance on 60 test digits, and the cross-entropy falls
    history = full["history"]
    assert history[-1]["test_accuracy"] > 0.3 and history[-1]["train_loss"] < history[0]["train_loss"]


def test_cli_refuses_the_cross_entropy_with_wire_resistance():
    run = subprocess.run([sys.executable, "-m", "epsim.train", "--dataset", "digits", "--cost", "cross-entropy",
                          "--wire-resistance", "1"], capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == \
        "error: --wire-resistance > 0 with --cost cross-entropy is not supported"


def test_export_writes_and_energy_refuses_the_nudged_phases(tmp_path):
    """A cross-entropy checkpoint: ``epsim.export`` writes every phase (the nudged ones with
    softmax sources, their voltages in ``.op.json``); ``epsim.energy`` asks for
    ``--no-training-step`` with one line, before any work."""
    from epsim.data import load_dataset
    from epsim.training import TrainConfig, train

    digits = load_dataset("digits", train_subset=40, test_subset=20)
    train(TrainConfig(cost=CE, epochs=1, train_subset=40, test_subset=20), digits, tmp_path / "run",
          progress=False, log=lambda *_: None)
    ck = str(tmp_path / "run" / "checkpoint.pt")
    run = subprocess.run([sys.executable, "-m", "epsim.energy", "--checkpoint", ck, "--test-subset", "2",
                          "--out", str(tmp_path / "en")], capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1].startswith("error:") and "add --no-training-step" in run.stderr
    run = subprocess.run([sys.executable, "-m", "epsim.export", "--checkpoint", ck, "--phase", "all",
                          "--out", str(tmp_path / "nl")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    plus = [p for p in (tmp_path / "nl").glob("*.cir") if "plus" in p.name]
    assert plus and "bnudge_0 0 " in plus[0].read_text()
