"""Controlled sources (E, F) in the circuit IR, the SPICE writer and reader and the MNA
solver, and the bidirectional amplifiers a network compiles to: hand circuits, ngspice,
and the KCL of the amplified circuit checked independently of the netlist. Tests that run
ngspice skip when it is not installed."""
from __future__ import annotations


import numpy as np
import pytest

from epsim.circuit.compile import compile_network, layer_node_names, phase_beta
from epsim.circuit.diodes import DiodeModel
from epsim.circuit.netlist import Netlist
from epsim.circuit.spice_reader import read_netlist
from epsim.circuit.spice_writer import format_netlist, write_netlist
from epsim.errors import EpsimError
from epsim.models.resistive import build_mlp, one_hot_targets
from epsim.solvers.mna import solve_mna
from spice_marks import needs_ngspice

GAINS = [3.0, 0.5]
BETA = 0.5


def v(sol, nl, name):
    return sol.voltages_V[nl.node_index(name)]


def ngspice_voltages(nl, tmp_path, name="c.cir"):
    from epsim.solvers.ngspice import run_ngspice, voltages_by_index

    return voltages_by_index(nl, run_ngspice(write_netlist(nl, tmp_path / name)))


def sign_circuit() -> Netlist:
    """1 V across 1 kOhm; F copies that source's current into 1 kOhm; E triples v(in) onto
    1 kOhm and, through a 0 V sensor, onto 2 kOhm."""
    nl = Netlist(title="controlled sources")
    nl.add("V", ["v1"], ["in"], ["0"], [1.0])
    nl.add("R", ["r1"], ["in"], ["0"], [1e3])
    nl.add("F", ["f1"], ["0"], ["out"], [1.0], control="v1")
    nl.add("R", ["r2"], ["out"], ["0"], [1e3])
    nl.add("E", ["e1"], ["e"], ["0"], [3.0], c=["in"], d=["0"])
    nl.add("R", ["r3"], ["e"], ["0"], [1e3])
    nl.add("V", ["vs"], ["e"], ["x"], [0.0])
    nl.add("R", ["r4"], ["x"], ["0"], [2e3])
    return nl


def amplifier_circuit(gain, vs=2.0, r0=1e3, rx=3e3, rm=5e3) -> Netlist:
    """One amplifier triple: source vs -> r0 -> n; E (gain) -> a -> 0 V sensor -> x -> rx ->
    m -> rm -> ground; F draws I(sensor) / gain out of n."""
    nl = Netlist(title="one amplifier")
    nl.add("V", ["vsrc"], ["s"], ["0"], [vs])
    nl.add("R", ["r0", "rx", "rm"], ["s", "x", "m"], ["n", "m", "0"], [r0, rx, rm])
    nl.add("E", ["e_n"], ["a"], ["0"], [gain], c=["n"], d=["0"])
    nl.add("V", ["vs_n"], ["a"], ["x"], [0.0])
    nl.add("F", ["f_n"], ["n"], ["0"], [1.0 / gain], control="vs_n")
    return nl


def amplified_net(gains=GAINS, seed=0, is_A=1e-12):
    """MLP 2x(2x3) -> 5 -> 4 -> 3 with Shockley clamps, random conductances and biases;
    returns (net, (n_0,) input voltages, (3,) target voltages)."""
    net = build_mlp((1, 2, 3), hidden=(5, 4), num_classes=3, input_gain_V=2.0,
                    diode=DiodeModel(kind="shockley", is_A=is_A), amp_gains=gains)
    rng = np.random.default_rng(seed)
    net.init_params(rng)
    net.b = [rng.uniform(-0.4, 0.4, size=b.shape) + 0.05 for b in net.b]
    x = rng.uniform(size=(1, 1, 2, 3))
    return net, net.input_voltages(x)[0], one_hot_targets(np.array([1]), 3)[0]


# ---- hand circuits ----------------------------------------------------------------------
def test_controlled_source_signs_by_hand():
    """SPICE's conventions: I(v1) = -1 mA (current leaves its + node into r1), so F's
    1 * I(v1) flowing from 0 through F into out drains out: v(out) = -1 V."""
    nl = sign_circuit()
    sol = solve_mna(nl)
    assert v(sol, nl, "out") == pytest.approx(-1.0, abs=1e-12)
    assert v(sol, nl, "e") == pytest.approx(3.0, abs=1e-12)
    assert v(sol, nl, "x") == pytest.approx(3.0, abs=1e-12)
    assert sol.source_currents_A == pytest.approx([-1e-3, 1.5e-3], rel=1e-12)
    assert sol.vcvs_currents_A == pytest.approx([-4.5e-3], rel=1e-12)  # E sources 4.5 mA
    assert sol.converged and sol.residual_A < 1e-15


@pytest.mark.parametrize("gain", [3.0, 0.5, 1.0])
def test_amplifier_triple_by_hand(gain):
    """The backward current I/A seen from n is a resistor rx + rm to ground, whatever A."""
    vs, r0, rx, rm = 2.0, 1e3, 3e3, 5e3
    nl = amplifier_circuit(gain, vs, r0, rx, rm)
    sol = solve_mna(nl)
    vn = vs * (rx + rm) / (r0 + rx + rm)
    assert v(sol, nl, "n") == pytest.approx(vn, abs=1e-13)
    assert v(sol, nl, "a") == pytest.approx(gain * vn, abs=1e-13)
    assert v(sol, nl, "m") == pytest.approx(gain * vn * rm / (rx + rm), abs=1e-13)
    assert sol.source_currents_A[1] == pytest.approx(gain * vn / (rx + rm), rel=1e-12)


@needs_ngspice
@pytest.mark.parametrize("make", [sign_circuit, lambda: amplifier_circuit(3.0)])
def test_controlled_sources_match_ngspice(make, tmp_path):
    nl = make()
    got = ngspice_voltages(nl, tmp_path)
    assert np.max(np.abs(got - solve_mna(nl).voltages_V)) <= 1e-12


# ---- IR, writer, reader -----------------------------------------------------------------
def test_ir_controlled_source_errors():
    nl = Netlist()
    with pytest.raises(EpsimError, match="controlling nodes"):
        nl.add("E", ["e1"], ["a"], ["0"], [2.0])
    with pytest.raises(EpsimError, match="controlling V source"):
        nl.add("F", ["f1"], ["a"], ["0"], [2.0])
    with pytest.raises(EpsimError, match="no controlling"):
        nl.add("R", ["r1"], ["a"], ["0"], [2.0], control="v1")
    nl.add("F", ["f1"], ["a"], ["0"], [2.0], control="vnone")
    nl.add("R", ["r1"], ["a"], ["0"], [1.0])
    with pytest.raises(EpsimError, match="f1 names 'vnone', which is not a voltage source"):
        nl.check()
    with pytest.raises(EpsimError, match="not a voltage source"):
        solve_mna(nl)
    with pytest.raises(EpsimError, match="not a voltage source"):
        format_netlist(nl)


def test_e_and_f_cards_round_trip(tmp_path):
    nl = compile_network(*amplified_net()[:2])
    text = format_netlist(nl)
    assert "e_h1_u0 a_h1_u0 0 h1_u0 0 3.0" in text.splitlines()
    assert "vs_h1_u0 a_h1_u0 x_h1_u0 0.0" in text.splitlines()
    assert "f_h1_u0 h1_u0 0 vs_h1_u0 0.3333333333333333" in text.splitlines()
    assert "f_h2_u3 h2_u3 0 vs_h2_u3 2.0" in text.splitlines()
    xyce = format_netlist(nl, "xyce")
    assert "e_h2_u0 a_h2_u0 0 h2_u0 0 0.5" in xyce.splitlines()
    back = read_netlist(write_netlist(nl, tmp_path / "amp.cir"))
    for kind in "RDVIEF":
        a, b = nl.elements(kind), back.elements(kind)
        assert a.names == b.names and np.array_equal(a.value, b.value)  # bit for bit
        ends = [[(src.nodes[i], src.nodes[j]) for i, j in zip(e.a, e.b)] for src, e in ((nl, a), (back, b))]
        assert ends[0] == ends[1]
    e, eb = nl.vcvs, back.vcvs
    assert [nl.nodes[k] for k in e.c] == [back.nodes[k] for k in eb.c]
    assert [nl.nodes[k] for k in e.d] == [back.nodes[k] for k in eb.d]
    assert nl.cccs.control == back.cccs.control


def test_reader_accepts_spice_forms(tmp_path):
    path = tmp_path / "top.cir"
    path.write_text("t\n.param g=2\nV1 IN 0 1\nR1 in 0 1k\nE1 e 0 in 0 {g*1.5}\nR2 e 0 1k\n"
                    "Fx 0 OUT v1 1\nR3 out 0 1k\n.end\n")
    nl = read_netlist(path)
    assert nl.vcvs.value[0] == 3.0 and nl.cccs.control == ["v1"]
    sol = solve_mna(nl)
    assert v(sol, nl, "e") == pytest.approx(3.0) and v(sol, nl, "out") == pytest.approx(-1.0)


@pytest.mark.parametrize("body, message", [
    ("E1 a 0 b 0\n", r"top.cir:4: VCVS E1: expected 'E name p m cp cm gain'"),
    ("E1 a 0 b 0 2 3\n", r"top.cir:4: VCVS E1: expected"),
    ("E1 a 0 b 0 zz\n", r"top.cir:4: cannot read 'zz' as a number"),
    ("E1 a 0 value={2*v(b)}\n", r"top.cir:4: VCVS E1: only the linear form"),
    ("E1 a 0 poly(1) b 0 0 2\n", r"top.cir:4: VCVS E1: only the linear form"),
    ("F1 a 0 v1\n", r"top.cir:4: CCCS F1: expected 'F name p m vname gain'"),
    ("F1 a 0 poly(1) v1 0 2\n", r"top.cir:4: CCCS F1: only the linear form"),
    ("F1 a 0 vnone 2\n", r"top.cir:4: CCCS F1: controlling voltage source vnone not found"),
    ("F1 a 0 r1 2\n", r"top.cir:4: CCCS F1: controlling element r1 is not a voltage source"),
    ("F1 a 0 v1 2\nF1 a 0 v1 3\n", r"top.cir:5: element F1 already defined at line 4"),
])
def test_reader_controlled_source_errors_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "top.cir"
    path.write_text("title\nV1 b 0 1\nR1 a 0 1k\n" + body + ".end\n")
    with pytest.raises(EpsimError, match=message):
        read_netlist(path)


# ---- compiled networks ------------------------------------------------------------------
def test_gain_one_netlist_is_todays():
    net, v_in, target = amplified_net(gains=None)
    ones, _, _ = amplified_net(gains=[1.0, 1.0])
    for beta in (0.0, BETA):
        a = format_netlist(compile_network(net, v_in, beta=beta, target_V=target))
        b = format_netlist(compile_network(ones, v_in, beta=beta, target_V=target))
        assert a == b
    assert " E" not in a and "\ne" not in a and "\nf" not in a and "x_" not in a


def test_only_boundaries_with_gain_get_amplifiers():
    net, v_in, _ = amplified_net(gains=[1.0, 2.0])
    nl = compile_network(net, v_in)
    assert len(nl.vcvs) == len(nl.cccs) == 4  # the 4 nodes of layer 2 only
    assert all(n.startswith("e_h2_") for n in nl.vcvs.names)
    assert not any(n.startswith(("a_h1", "x_h1")) for n in nl.nodes)
    assert any("amplifier layer 2 -> 3, gain 2.0" in line for line in nl.notes)


def test_wire_resistance_with_amplifiers_is_refused():
    net, v_in, _ = amplified_net()
    with pytest.raises(EpsimError, match="wire resistance with amplifiers"):
        compile_network(net, v_in, wire_resistance_ohm=1.0)


def phase_netlists(net, v_in, target):
    return {p: compile_network(net, v_in, beta=phase_beta(p, BETA), target_V=target)
            for p in ("free", "plus", "minus")}


def test_amplified_network_kcl_by_hand(tmp_path):
    """Read-back netlist solved by MNA; then every free node's KCL is rebuilt from the
    network's parameters alone: layer l+1 sees A_l v_i through the crossbar, layer l carries
    1/A_l of that current."""
    net, v_in, target = amplified_net()
    g, i_bias = net.g_S, [net.bias_per_node(l) * net.ranges.g_unit_S for l in range(1, 4)]
    d = net.diode
    for phase, nl in phase_netlists(net, v_in, target).items():
        back = read_netlist(write_netlist(nl, tmp_path / f"{phase}.cir"))
        sol = solve_mna(back, tol_A=1e-15)
        names = layer_node_names(net)
        volts = [v_in] + [np.array([v(sol, back, n) for n in layer]) for layer in names[1:]]
        kcl = [i_b.copy() for i_b in i_bias]  # current into each free node
        for l in range(3):  # connection l: layer l -> l+1, dense (n_in, n_out) conductances
            gain = net.crossbar_input_gain(l)
            into_out = g[l] * (gain * volts[l][:, None] - volts[l + 1][None, :])  # G_ij (A v_i - v_j)
            kcl[l] += into_out.sum(axis=0)
            if l > 0:
                kcl[l - 1] -= into_out.sum(axis=1) / gain
        for l in (0, 1):  # clamp diodes of the hidden layers
            vl = volts[l + 1]
            lo, hi = np.isfinite(net.rail_lo_V[l]), np.isfinite(net.rail_hi_V[l])
            kcl[l] += np.where(lo, d.is_A * np.expm1(-vl / d.n_vt_V), 0.0)
            kcl[l] -= np.where(hi, d.is_A * np.expm1(vl / d.n_vt_V), 0.0)
        b = phase_beta(phase, BETA)
        kcl[2] += b * net.ranges.g_unit_S * (target - volts[3])
        worst = max(np.max(np.abs(k)) for k in kcl)
        assert worst <= 1e-14, f"{phase}: KCL off by {worst:.3g} A"
        assert np.any(volts[1] > 0.05) and np.any(np.abs(volts[2]) > 0.05)  # not a trivial state


# ngspice's diode replaces Shockley's law below -3 nVt by -Is (1 + (3 nVt / (e V))^3): a
# reverse-biased clamp differs by up to ~Is / 100, which moves this network's nodes by
# ~2e-9 V at Is = 1e-12 A (ngspice's voltages meet the KCL of its own law to 1e-20 A). The
# difference scales with Is: at Is = 1e-15 A it is ~2e-12 V, so the comparisons below see
# the amplifiers, not the diode law.
SPICE_IS_A = 1e-15


@needs_ngspice
def test_amplified_network_mna_matches_ngspice(tmp_path):
    """compile -> write -> read -> MNA against compile -> write -> ngspice, every node."""
    net, v_in, target = amplified_net(is_A=SPICE_IS_A)
    for phase, nl in phase_netlists(net, v_in, target).items():
        back = read_netlist(write_netlist(nl, tmp_path / f"{phase}.cir"))
        mna = solve_mna(back, tol_A=1e-15)
        spice = ngspice_voltages(nl, tmp_path, f"{phase}_run.cir")
        diff = max(abs(mna.voltages_V[back.node_index(n)] - spice[k]) for k, n in enumerate(nl.nodes))
        assert diff <= 1e-9, f"{phase}: max |V_mna - V_ngspice| = {diff:.3g} V"


@needs_ngspice
def test_numba_matches_ngspice_with_amplifiers(tmp_path):
    """The layered solver's free and +-beta equilibria (node voltages in volts) against
    ngspice on the exported netlists."""
    from epsim.solvers.numba_solver import NumbaSolver

    net, v_in, target = amplified_net(is_A=SPICE_IS_A)
    solver = NumbaSolver(tol_A=1e-16, max_iter=100000)  # 1e-16 A of KCL: ~1e-10 V here
    prepared = solver.prepare(net, v_in[None])
    free = solver.solve(prepared, 0.0, None)
    names = layer_node_names(net)
    for phase, nl in phase_netlists(net, v_in, target).items():
        beta = phase_beta(phase, BETA)
        eq = free if beta == 0.0 else solver.solve(prepared, beta, target[None], init=free.v_free)
        assert eq.certificate.converged.all()
        spice = ngspice_voltages(nl, tmp_path, f"{phase}.cir")
        diff = max(abs(layer[0, k] - spice[nl.node_index(n)])
                   for layer, layer_names in zip(eq.v_free, names[1:]) for k, n in enumerate(layer_names))
        assert diff <= 1e-9, f"{phase}: max |V_numba - V_ngspice| = {diff:.3g} V"


@needs_ngspice
def test_spice_backend_on_amplified_network():
    """The ``spice`` backend reads the layer nodes of amplified netlists (batch of 2)."""
    from epsim.solvers.spice_backend import SpiceSolver

    net, v_in, target = amplified_net(is_A=SPICE_IS_A)
    v_batch = np.stack([v_in, -0.5 * v_in])
    solver = SpiceSolver(compare_numba=False)
    eq = solver.solve(solver.prepare(net, v_batch), BETA, np.stack([target, target]))
    names = layer_node_names(net)
    for b in range(2):
        nl = compile_network(net, v_batch[b], beta=BETA, target_V=target)
        sol = solve_mna(nl, tol_A=1e-15)
        for layer, layer_names in zip(eq.v_free, names[1:]):
            want = [v(sol, nl, n) for n in layer_names]
            assert np.max(np.abs(layer[b] - want)) <= 1e-9


@needs_ngspice
def test_trained_amplified_circuit_matches_ngspice(tmp_path):
    """A circuit trained with amplifiers and Shockley diodes (digits, one short epoch), ten
    test images x free/+beta/-beta: the numba equilibria (at 1e-15 A) against ngspice on the
    exported netlists, every free node, within 1e-6 V."""
    from epsim.data import load_dataset
    from epsim.solvers.numba_solver import NumbaSolver
    from epsim.training import TrainConfig, train

    digits = load_dataset("digits", train_subset=160, test_subset=10)
    config = TrainConfig(model="mlp-deep", diode="shockley", amp_gain=[3.0, 2.0], epochs=1,
                         input_gain_V=8.0)
    train(config, digits, tmp_path / "run", progress=False, log=lambda *_: None)
    from epsim.models.loading import load_network

    net, _ = load_network(tmp_path / "run" / "checkpoint.pt")
    assert net.amp_gains.tolist() == [3.0, 2.0]
    v_in = net.input_voltages(digits.x_test)
    target = one_hot_targets(digits.y_test, net.num_outputs)
    solver = NumbaSolver(tol_A=1e-15, max_iter=200000)
    prepared = solver.prepare(net, v_in)
    free = solver.solve(prepared, 0.0)
    names = layer_node_names(net)
    worst = 0.0
    for phase in ("free", "plus", "minus"):
        beta = phase_beta(phase, config.beta)
        eq = free if beta == 0.0 else solver.solve(prepared, beta, target, init=free.v_free)
        assert eq.certificate.all_converged
        for b in range(len(v_in)):
            nl = compile_network(net, v_in[b], beta=beta, target_V=target[b])
            spice = ngspice_voltages(nl, tmp_path, f"{phase}_{b}.cir")
            worst = max(worst, max(abs(layer[b, k] - spice[nl.node_index(n)])
                                   for layer, layer_names in zip(eq.v_free, names[1:])
                                   for k, n in enumerate(layer_names)))
    assert worst <= 1e-6, f"max |V_numba - V_ngspice| = {worst:.3g} V"
