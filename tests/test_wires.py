"""Wire (line) resistance (issue 8): crossbar layout, exact tile elimination, the wire-aware
solver against the general sparse MNA solver and ngspice, EP gradients through the device
drops, and training with wires."""
from __future__ import annotations


import numpy as np
import pytest

from epsim.circuit.compile import compile_network, layer_node_names
from epsim.circuit.crossbar import crossbar_layout, named_internal_voltages
from epsim.circuit.diodes import DiodeModel
from epsim.data import load_dataset
from epsim.errors import EpsimError
from epsim.learning.ep import centered_ep
from epsim.models.connections import Conv2d, Dense
from epsim.models.resistive import build_cnn, build_mlp, one_hot_targets
from epsim.solvers import get_solver
from epsim.solvers.mna import solve_mna
from epsim.solvers.numba_solver import NumbaSolver
from epsim.solvers.wire_network import tile_eliminate, tile_internal
from epsim.solvers.wire_solver import WireSolver
from epsim.training import TrainConfig, train
from spice_marks import needs_ngspice


def tile_matrix(G, g):
    """Dense conductance matrix of one tile, nodes ``[ports (R+C), xr (RC), xc (RC)]``."""
    R, C = G.shape
    P = R + C
    xr = P + np.arange(R * C).reshape(R, C)
    xc = P + R * C + xr - P
    A = np.zeros((P + 2 * R * C,) * 2)

    def add(a, b, w):
        A[a, a] += w
        A[b, b] += w
        A[a, b] -= w
        A[b, a] -= w

    for r in range(R):
        add(r, xr[r, 0], g)
        for c in range(1, C):
            add(xr[r, c - 1], xr[r, c], g)
    for c in range(C):
        for r in range(R - 1):
            add(xc[r, c], xc[r + 1, c], g)
        add(xc[R - 1, c], R + c, g)
        for r in range(R):
            add(xr[r, c], xc[r, c], G[r, c])
    return A, P


def all_voltages(solver, prepared, eq, net, k):
    """``{node name: volts}`` of sample ``k``: neurons and every internal wire node."""
    out = {}
    for l, names in enumerate(layer_node_names(net)):
        out.update(zip(names, prepared.v_input[k] if l == 0 else eq.v_free[l - 1][k]))
    internal = prepared.wired.internal(prepared.v_input[k:k + 1], [v[k:k + 1] for v in eq.v_free])
    out.update(named_internal_voltages(internal, 0))
    return out


def small_net(diode="shockley", seed=0, cnn=False):
    rng = np.random.default_rng(seed)
    if cnn:
        net = build_cnn((1, 5, 5), ((4, 3, 1),), (), 3, input_gain_V=3.0, diode=DiodeModel(diode))
    else:
        net = build_mlp((1, 3, 4), (10,), 4, input_gain_V=3.0, diode=DiodeModel(diode))
    net.init_params(rng)
    net.b = [rng.normal(0, 0.05, b.shape) for b in net.b]
    x = rng.uniform(0, 1, (3,) + net.image_shape)
    return net, net.input_voltages(x), one_hot_targets(np.array([0, 2, 1]), net.num_outputs)


# ---- layout and tiles ------------------------------------------------------------------
@pytest.mark.parametrize("conn", [Dense((2, 3, 4), (5,)), Conv2d((2, 6, 5), 3, 3, 1), Conv2d((4, 7, 7), 2, 2, 2)])
def test_layout_places_every_pair_once(conn):
    lay = crossbar_layout(conn)
    t, i, j = conn.pairs()
    e = lay.pair.ravel()
    assert np.array_equal(np.sort(e), np.arange(t.size))
    tiles, rows, cols = np.meshgrid(np.arange(lay.n_tiles), np.arange(lay.rows), np.arange(lay.cols), indexing="ij")
    np.testing.assert_array_equal(t[e], lay.param[rows, cols].ravel())
    np.testing.assert_array_equal(i[e], lay.row_node[tiles, rows].ravel())
    np.testing.assert_array_equal(j[e], lay.col_node[tiles, cols].ravel())


@pytest.mark.parametrize("R, C, g", [(1, 1, 2.0), (3, 2, 5.0), (6, 7, 1e2), (9, 4, 1e5)])
def test_tile_elimination_equals_the_dense_schur_complement(R, C, g):
    rng = np.random.default_rng(R * C)
    G = rng.uniform(0, 1, (R, C))
    G[0, -1] = 0.0  # an open device
    A, P = tile_matrix(G, g)
    Aii, Aip = A[P:, P:], A[P:, :P]
    Y_ref = A[:P, :P] - Aip.T @ np.linalg.solve(Aii, Aip)
    Y, F, s, _ = tile_eliminate(G, g)
    np.testing.assert_allclose(Y, Y_ref, atol=1e-12 * max(1.0, g / 10) * np.abs(Y_ref).max())
    np.testing.assert_allclose(Y.sum(axis=1), 0.0, atol=1e-12 * np.abs(Y).max())
    v = rng.normal(size=(4, P))
    inner = -np.linalg.solve(Aii, Aip @ v.T).T
    xr, xc = np.empty((4, R, C)), np.empty((4, R, C))
    tile_internal(G, g, F, s, np.ascontiguousarray(v[:, :R]), np.ascontiguousarray(v[:, R:]), xr, xc)
    np.testing.assert_allclose(xr.reshape(4, -1), inner[:, :R * C], atol=1e-11)
    np.testing.assert_allclose(xc.reshape(4, -1), inner[:, R * C:], atol=1e-11)


# ---- the solver against the general sparse MNA solver ---------------------------------
@pytest.mark.parametrize("cnn", [False, True])
@pytest.mark.parametrize("r_ohm", [30.0, 3e4])
def test_wire_solver_equals_sparse_mna_on_the_compiled_netlist(cnn, r_ohm):
    """Shockley diodes, every phase, every node (internal wire nodes included): the reduced
    solver and the general sparse Newton solver on the exported IR agree to 1e-9 V."""
    net, v_in, target = small_net("shockley", cnn=cnn)
    solver = WireSolver(tol_A=1e-16, max_iter=200, wire_resistance_ohm=r_ohm)
    prepared = solver.prepare(net, v_in)
    for beta in (0.0, 0.4, -0.4):
        eq = solver.solve(prepared, beta, target if beta else None)
        assert eq.certificate.all_converged
        for k in range(v_in.shape[0]):
            nl = compile_network(net, v_in[k], beta=beta, target_V=target[k], wire_resistance_ohm=r_ohm)
            mna = solve_mna(nl, tol_A=1e-15).table(nl)
            ours = all_voltages(solver, prepared, eq, net, k)
            assert set(ours) <= set(mna) and len(mna) - len(ours) == (net.num_outputs if beta else 0)
            assert max(abs(ours[n] - mna[n]) for n in ours) < 1e-9


def test_netlist_with_wires_has_the_documented_nodes():
    net, v_in, _ = small_net("ideal", cnn=True)
    plain = compile_network(net, v_in[0])
    wired = compile_network(net, v_in[0], wire_resistance_ohm=5.0)
    extra = sum(2 * lay.n_tiles * lay.rows * lay.cols for lay in map(crossbar_layout, net.connections))
    assert wired.num_nodes == plain.num_nodes + extra
    devices = [n for n in wired.resistors.names if not n.startswith("rw")]
    assert sorted(devices) == sorted(plain.resistors.names)
    names = wired.resistors.names
    r0 = names.index("rwr1_t0_r0_c0")  # first row segment: from the driver to xr[0, 0]
    assert wired.nodes[wired.resistors.a[r0]] == "in_c0_y0_x0"
    assert wired.nodes[wired.resistors.b[r0]] == "xr1_t0_r0_c0"
    last = names.index(f"rwc1_t0_r{crossbar_layout(net.connections[0]).rows - 1}_c2")
    assert wired.nodes[wired.resistors.b[last]] == "h1_c2_y0_x0"  # column 2 ends at channel 2


# ---- ideal diodes ----------------------------------------------------------------------
def test_ideal_diodes_small_wire_resistance_tends_to_the_layered_solution():
    net, v_in, target = small_net("ideal", cnn=True)
    layered = NumbaSolver(tol_A=1e-15, max_iter=100000)
    ref = layered.solve(layered.prepare(net, v_in), 0.4, target)
    errs = []
    for r_ohm in (1.0, 1e-2):
        # KCL evaluated in floating point at a wire node carries ~ g_wire * ulp(V) of noise:
        # 1e-13 A at 0.01 ohm
        solver = WireSolver(tol_A=1e-12, wire_resistance_ohm=r_ohm)
        eq = solver.solve(solver.prepare(net, v_in), 0.4, target)
        assert eq.certificate.all_converged
        errs.append(max(np.abs(a - b).max() for a, b in zip(eq.v_free, ref.v_free)))
    assert errs[1] < 1e-4 and errs[1] < errs[0] / 50  # linear in the wire resistance


def test_certificate_rejects_a_wrong_state():
    net, v_in, _ = small_net("ideal")
    solver = WireSolver(tol_A=1e-12, max_iter=1, wire_resistance_ohm=100.0)
    prepared = solver.prepare(net, v_in)
    eq = solver.solve(prepared, 0.0, init=[np.full_like(v, 5.0) for v in
                                           solver.solve(prepared, 0.0).v_free])
    assert not eq.certificate.all_converged  # one active-set step from a bad start


# ---- EP with wires ---------------------------------------------------------------------
def test_ep_gradient_through_device_drops_matches_finite_differences():
    """Centered EP with wire resistance (device drops at the internal nodes) estimates the
    gradient of the loss of the free equilibrium; checked against finite differences."""
    net, v_in, target = small_net("shockley", seed=3)
    labels = np.argmax(target, axis=1)
    x = v_in[:, :v_in.shape[1] // 2] / net.input_gain_V
    x = x.reshape((-1,) + net.image_shape)
    solver = WireSolver(tol_A=1e-18, max_iter=200, wire_resistance_ohm=2e4)
    ep = centered_ep(net, solver, x, labels, beta=1e-3)

    def loss():
        eq = solver.solve(solver.prepare(net, v_in), 0.0)
        return np.mean(0.5 * np.sum((eq.v_output - target) ** 2, axis=1))

    rng = np.random.default_rng(0)
    for l in range(2):
        for flat in rng.choice(net.w[l].size, 3, replace=False):
            idx = np.unravel_index(flat, net.w[l].shape)
            h = 1e-5
            old = net.w[l][idx]
            net.w[l][idx] = old + h
            up = loss()
            net.w[l][idx] = old - h
            dn = loss()
            net.w[l][idx] = old
            fd = (up - dn) / (2 * h)
            assert ep.grad_w[l][idx] == pytest.approx(fd, rel=2e-3, abs=1e-7)


@pytest.mark.parametrize("cnn", [False, True])
def test_wires_change_the_gradient(cnn):
    """The EP gradient with wires uses the drops across the devices, not across the neurons
    (tied conv parameters: summed over every tile that holds them)."""
    net, v_in, target = small_net("ideal", cnn=cnn)
    labels = np.argmax(target, axis=1)
    x = (v_in[:, :v_in.shape[1] // 2] / net.input_gain_V).reshape((-1,) + net.image_shape)
    plain = centered_ep(net, NumbaSolver(tol_A=1e-14, max_iter=100000), x, labels, 0.5)
    tiny = centered_ep(net, WireSolver(tol_A=1e-12, wire_resistance_ohm=1e-2), x, labels, 0.5)
    large = centered_ep(net, WireSolver(tol_A=1e-12, wire_resistance_ohm=3e4), x, labels, 0.5)
    assert tiny.converged.all() and large.converged.all()
    for a, b, c in zip(plain.grad_w, tiny.grad_w, large.grad_w):
        np.testing.assert_allclose(b, a, atol=1e-4 * np.abs(a).max())
        assert np.abs(c - a).max() > 1e-2 * np.abs(a).max()


# ---- training ----------------------------------------------------------------------------
def test_training_with_wire_resistance(tmp_path):
    ds = load_dataset("digits", train_subset=48, test_subset=24)
    metrics = train(TrainConfig(epochs=1, train_subset=48, test_subset=24, wire_resistance_ohm=10.0),
                    ds, tmp_path, progress=False, log=lambda *_: None)
    assert metrics["config"]["wire_resistance_ohm"] == 10.0
    assert metrics["test_unconverged"] == 0 and metrics["max_residual_A"] <= 1e-9
    assert metrics["test_accuracy"] > 0.2


def test_wire_options_are_validated():
    for kw, pattern in [(dict(wire_resistance_ohm=-1.0), "non-negative"),
                        (dict(wire_resistance_ohm=float("nan")), "non-negative"),
                        (dict(wire_resistance_ohm=1.0, backend="spice"), "--backend numba")]:
        with pytest.raises(EpsimError, match=pattern):
            TrainConfig(**kw).validate()
    net, v_in, _ = small_net("ideal")
    with pytest.raises(EpsimError, match="too small"):
        WireSolver(wire_resistance_ohm=1e-6).prepare(net, v_in)
    assert isinstance(get_solver("wires", wire_resistance_ohm=1.0), WireSolver)


# ---- ngspice -----------------------------------------------------------------------------
@needs_ngspice
def test_64x64_crossbar_with_wires_matches_ngspice(tmp_path):
    """Acceptance: a 64x64 crossbar (64 input sources -> 64 Shockley-clamped hidden nodes,
    then a 64x2 crossbar to 2 outputs), 100 ohm per wire segment: every node voltage of the
    wire solver (internal wire nodes included) equals ngspice's on the exported netlist
    within 1e-6 V."""
    from epsim.solvers.ngspice import ngspice_op

    rng = np.random.default_rng(11)
    net = build_mlp((1, 4, 8), (64,), 2, input_gain_V=4.0, diode=DiodeModel("shockley"))
    assert net.connections[0].param_shape == (64, 64)
    net.init_params(rng)
    net.b = [rng.normal(0, 0.05, b.shape) for b in net.b]
    v_in = net.input_voltages(rng.uniform(0, 1, (1, 1, 4, 8)))
    solver = WireSolver(tol_A=1e-15, max_iter=200, wire_resistance_ohm=100.0)
    prepared = solver.prepare(net, v_in)
    eq = solver.solve(prepared, 0.0)
    assert eq.certificate.all_converged
    nl = compile_network(net, v_in[0], wire_resistance_ohm=100.0)
    spice = dict(zip(nl.nodes[1:], ngspice_op(nl, workdir=tmp_path)[1:]))
    ours = all_voltages(solver, prepared, eq, net, 0)
    assert len(ours) == nl.num_nodes - 1
    diff = max(abs(ours[n] - spice[n]) for n in ours)
    assert diff <= 1e-6
    # the wires matter at this resistance: far from the no-wire solution
    layered = NumbaSolver(tol_A=1e-13, max_iter=100000)
    plain = layered.solve(layered.prepare(net, v_in), 0.0)
    assert np.abs(plain.v_free[0] - eq.v_free[0]).max() > 1e3 * max(diff, 1e-9)


def test_export_with_wires_round_trips_through_the_sparse_solver(tmp_path):
    """epsim.export --wire-resistance: the netlist holds the wire nodes, .op.json their
    voltages (wire solver); read back and solved by the sparse MNA solver they agree."""
    from epsim.circuit.spice_reader import read_netlist
    from epsim.export import main as export_main

    export_main(["--reference", "--out", str(tmp_path), "--test-subset", "1", "--phase", "minus",
                 "--diode", "shockley", "--wire-resistance", "50"])
    import json

    op = json.loads((tmp_path / "sample0_minus.op.json").read_text())
    assert op["solver"] == "wires" and op["wire_resistance_ohm"] == 50.0 and op["certificate"]["converged"]
    nl = read_netlist(tmp_path / "sample0_minus.cir")
    table = solve_mna(nl, tol_A=1e-15).table(nl)
    volts = op["node_voltages_V"]
    assert any(k.startswith("xr1_") for k in volts) and len(volts) == nl.num_nodes - 1
    assert max(abs(table[k] - v) for k, v in volts.items()) < 1e-9
