"""General MNA Newton solver: hand circuits with known answers, and agreement with the
layered numba solver on exported-and-read-back netlists (round trip to 1e-9 V)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq, root

from epsim.circuit.compile import compile_network, layer_node_names, phase_beta, with_diode
from epsim.circuit.diodes import BOLTZMANN_J_PER_K, ELEMENTARY_CHARGE_C, DiodeModel
from epsim.circuit.netlist import DiodeCard, Netlist
from epsim.circuit.spice_reader import read_netlist
from epsim.circuit.spice_writer import write_netlist
from epsim.errors import ConvergenceError, EpsimError
from epsim.models.registry import build_circuit_model
from epsim.models.resistive import build_mlp, one_hot_targets
from epsim.solvers.mna import solve_mna
from epsim.solvers.numba_solver import LayeredProblem, solve

VT_V = BOLTZMANN_J_PER_K * 300.15 / ELEMENTARY_CHARGE_C


def v(sol, nl, name):
    return sol.voltages_V[nl.node_index(name)]


def test_divider_and_current_source_signs():
    nl = Netlist()
    nl.add("V", ["v1"], ["in"], ["0"], [10.0])
    nl.add("R", ["r1", "r2"], ["in", "mid"], ["mid", "0"], [1e3, 3e3])
    nl.add("I", ["i1"], ["0"], ["x"], [1e-3])  # 1 mA from ground through the source into x
    nl.add("R", ["r3"], ["x"], ["0"], [2e3])
    sol = solve_mna(nl)
    assert v(sol, nl, "mid") == pytest.approx(7.5, abs=1e-12)
    assert v(sol, nl, "x") == pytest.approx(2.0, abs=1e-12)
    # the source's branch current flows from + through the source: -10 V / 4 kOhm
    assert sol.source_currents_A[0] == pytest.approx(-2.5e-3, rel=1e-12)
    assert sol.converged and sol.residual_A < 1e-15


def test_negative_resistor_parallel():
    """1 kOhm in parallel with -3 kOhm is 1.5 kOhm: a 1 mA source makes 1.5 V."""
    nl = Netlist()
    nl.add("I", ["i1"], ["0"], ["a"], [1e-3])
    nl.add("R", ["r1", "r2"], ["a", "a"], ["0", "0"], [1e3, -3e3])
    assert v(solve_mna(nl), nl, "a") == pytest.approx(1.5, abs=1e-12)


@pytest.mark.parametrize("v_src, anode_is_node", [(5.0, True), (-5.0, False), (0.3, True), (-2.0, True)])
def test_diode_clamp_against_brentq(v_src, anode_is_node):
    is_A, n = 1e-12, 1.3
    nl = Netlist()
    nl.add_model(DiodeCard("dm", is_A, n))
    nl.add("V", ["v1"], ["in"], ["0"], [v_src])
    nl.add("R", ["r1"], ["in"], ["a"], [1e4])
    nl.add("D", ["d1"], ["a"] if anode_is_node else ["0"], ["0"] if anode_is_node else ["a"], None, model="dm")
    sign = 1.0 if anode_is_node else -1.0

    def kcl(x):  # current leaving node a
        return (x - v_src) / 1e4 + sign * is_A * np.expm1(sign * x / (n * VT_V))

    ref = brentq(kcl, -abs(v_src) - 1, abs(v_src) + 1, xtol=1e-15, rtol=1e-15)
    sol = solve_mna(nl)
    assert v(sol, nl, "a") == pytest.approx(ref, abs=1e-12)


def test_diode_network_against_scipy_root():
    """Three nodes, two diodes of each orientation, a bias source: dense KCL solved by scipy."""
    is_A, nvt = 1e-14, VT_V
    nl = Netlist()
    nl.add_model(DiodeCard("dq", is_A, 1.0))
    nl.add("V", ["va", "vb"], ["s1", "s2"], ["0", "0"], [3.0, -2.0])
    nl.add("R", ["r1", "r2", "r3", "r4", "r5"], ["s1", "s2", "n1", "n2", "n3"],
           ["n1", "n2", "n2", "n3", "0"], [1e3, 2e3, 5e2, 1e3, 4e3])
    nl.add("D", ["d1", "d2", "d3"], ["n1", "0", "n3"], ["0", "n2", "n1"], None, model="dq")
    nl.add("I", ["i1"], ["n2"], ["0"], [2e-4])  # draws 0.2 mA out of n2

    def diode(x):
        return is_A * np.expm1(x / nvt)

    def kcl(x):
        n1, n2, n3 = x
        return [(n1 - 3.0) / 1e3 + (n1 - n2) / 5e2 + diode(n1) - diode(n3 - n1),
                (n2 + 2.0) / 2e3 + (n2 - n1) / 5e2 + (n2 - n3) / 1e3 - diode(-n2) + 2e-4,
                (n3 - n2) / 1e3 + n3 / 4e3 + diode(n3 - n1)]

    sol = solve_mna(nl)
    ref = root(kcl, [0.5, -0.5, 0.3], tol=1e-14, method="hybr")
    assert ref.success
    got = [v(sol, nl, k) for k in ("n1", "n2", "n3")]
    assert np.allclose(got, ref.x, atol=1e-9)
    assert np.max(np.abs(kcl(got))) < 1e-15


def test_gmin_stepping_rescues_hard_start(monkeypatch):
    """With plain Newton capped at a few steps, gmin stepping still finds the exact answer."""
    import epsim.solvers.mna as mna

    nl = Netlist()
    nl.add_model(DiodeCard("dq", 1e-15, 1.0))
    nl.add("I", ["i1"], ["0"], ["a"], [1.0])  # 1 A forced through a chain of diodes
    nl.add("D", ["d1", "d2"], ["a", "b"], ["b", "0"], None, model="dq")
    nl.add("R", ["r1"], ["a"], ["0"], [1e6])
    easy = solve_mna(nl)
    calls = []
    real = mna._newton

    def capped(sysm, x, gmin, tol_A, vtol_V, max_iter):
        calls.append(gmin)
        return real(sysm, x, gmin, tol_A, vtol_V, 3 if len(calls) == 1 else max_iter)

    monkeypatch.setattr(mna, "_newton", capped)
    hard = solve_mna(nl)
    assert hard.gmin_steps > 0 and calls[-1] == 0.0
    assert np.allclose(hard.voltages_V, easy.voltages_V, atol=1e-12)


def test_refuses_ideal_diodes_and_floating_nodes():
    nl = Netlist()
    nl.add_model(DiodeCard("dideal", ideal=True))
    nl.add("V", ["v1"], ["a"], ["0"], [1.0])
    nl.add("D", ["d1"], ["a"], ["0"], None, model="dideal")
    with pytest.raises(EpsimError, match="ideal diodes"):
        solve_mna(nl)
    nl = Netlist()
    nl.add("V", ["v1"], ["a"], ["0"], [1.0])
    nl.add("R", ["r1"], ["b"], ["c"], [1e3])
    with pytest.raises(EpsimError, match="singular"):
        solve_mna(nl)


def test_no_solution_is_a_convergence_error():
    """1 mA pushed into a reverse-biased diode has no DC solution (reverse current <= Is)."""
    nl = Netlist()
    nl.add_model(DiodeCard("dq", 1e-12, 1.0))
    nl.add("I", ["i1"], ["0"], ["a"], [1e-3])
    nl.add("D", ["d1"], ["0"], ["a"], None, model="dq")
    with pytest.raises(ConvergenceError, match="did not converge"):
        solve_mna(nl, max_iter=50)
    assert not solve_mna(nl, max_iter=50, strict=False).converged


def _random_net(kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "cnn":
        net = build_circuit_model("cnn", (1, 8, 8), 10, diode=DiodeModel("shockley"))
    else:
        net = build_mlp((1, 8, 8), hidden=(12, 6), num_classes=10, input_gain_V=4.0,
                        diode=DiodeModel("shockley", is_A=1e-13, n=1.2))
    net.init_params(rng)
    net.b = [rng.uniform(-0.3, 0.3, size=b.shape) for b in net.b]
    return net


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_roundtrip_export_read_mna_matches_numba(kind, tmp_path):
    """export -> read -> general MNA equals the layered numba solve to 1e-9 V, all phases."""
    from epsim.data import load_dataset

    net = _random_net(kind, 3)
    ds = load_dataset("digits")
    x, y = ds.x_test[:2], ds.y_test[:2]
    v_in = net.input_voltages(x)
    target = one_hot_targets(y, 10)
    problem = LayeredProblem(net, v_in)
    names = layer_node_names(net)
    for phase in ("free", "plus", "minus"):
        beta = phase_beta(phase, 0.5)
        eq = solve(problem, beta, target, tol_A=1e-16, max_iter=100000)
        assert eq.certificate.all_converged
        for b in range(len(y)):
            path = write_netlist(compile_network(net, v_in[b], beta=beta, target_V=target[b]),
                                 tmp_path / f"{kind}_{phase}_{b}.cir")
            nl = read_netlist(path)
            sol = solve_mna(nl, tol_A=1e-15)
            table = sol.table(nl)
            for l in range(1, net.num_layers + 1):
                got = np.array([table[n] for n in names[l]])
                assert np.max(np.abs(got - eq.v_free[l - 1][b])) <= 1e-9, (phase, b, l)


def test_ideal_network_compiles_but_mna_refuses():
    net = with_diode(_random_net("mlp", 1), "ideal")
    nl = compile_network(net, np.zeros(net.layer_sizes[0]))
    with pytest.raises(EpsimError, match="Shockley"):
        solve_mna(nl)


def test_committed_netlists_both_dialects_solve_to_their_op_json():
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "netlists"
    for phase in ("free", "plus", "minus"):
        ref = json.loads((folder / f"sample0_{phase}.op.json").read_text())["node_voltages_V"]
        for name in (f"sample0_{phase}.cir", f"sample0_{phase}.xyce.cir"):
            nl = read_netlist(folder / name)
            table = solve_mna(nl, tol_A=1e-15).table(nl)
            assert max(abs(table[k] - v) for k, v in ref.items()) <= 1e-9, name
