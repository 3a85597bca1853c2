"""Zero padding of tied conv crossbars: the kernel positions outside the input join the output
node through the same tied conductance to the 0 V rail.

(a) padding 0 runs the valid kernels, bit for bit; (b) a padded conv equals a dense crossbar
built from the valid conv on the zero-padded input (pad fixed at 0 V, not free), and a case
by hand; (c) the numba equilibrium satisfies KCL of the compiled netlist (MNA, Shockley
diodes, via a SPICE file) and agrees with torch; (d) centered EP at the trainer's solver
settings matches finite differences; (e) implicit and EP input gradients match finite
differences; (f) certificate bounds hold; (g) ngspice agrees with numba; (h) the arch spec,
checkpoints and refusals.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from epsim.circuit.compile import compile_network, layer_node_names, phase_beta
from epsim.circuit.crossbar import crossbar_layout
from epsim.circuit.diodes import DiodeModel
from epsim.circuit.spice_reader import read_netlist
from epsim.circuit.spice_writer import write_netlist
from epsim.errors import EpsimError
from epsim.learning.ep import centered_ep, squared_error
from epsim.models.arch import connections_from_arch, format_arch, parse_arch
from epsim.models.connections import (Conv2d, _conv_forward, _conv_drop_product, _conv_transpose,
                                      connection_from_description)
from epsim.models.resistive import ResistiveNetwork, build_cnn, one_hot_targets
from epsim.robustness.certify import certify_box
from epsim.robustness.input_gradients import ep_input_gradient, implicit_input_gradient, squared_error_loss
from epsim.solvers import make_solver
from epsim.solvers.mna import solve_mna
from epsim.solvers.numba_solver import LayeredProblem, NumbaSolver, connection_layout, solve
from epsim.solvers.torch_solver import TorchCircuit, TorchCircuitSolver
from epsim.training import TrainConfig, preset_config
from spice_marks import needs_ngspice

TIGHT = NumbaSolver(tol_A=1e-16, max_iter=100000)
PADDED = [Conv2d((2, 6, 5), 3, 3, 1, 1), Conv2d((2, 7, 7), 2, 3, 2, 2), Conv2d((2, 5, 5), 2, 2, 2, 1),
          Conv2d((4, 4, 6), 2, 4, 1, 3)]


def padded_net(diode="ideal", seed=0, amp_gains=None, gain=4.0):
    """A two-conv CNN on 6x6 images, both convs padded, random conductances and biases."""
    rng = np.random.default_rng(seed)
    net = build_cnn((1, 6, 6), convs=((4, 3, 1, 1), (4, 3, 2, 2)), hidden=(), num_classes=4,
                    input_gain_V=gain, diode=DiodeModel(diode), amp_gains=amp_gains)
    net.init_params(rng, 1.0)
    p = net.layer_scale
    net.b = [rng.normal(0.0, 0.3, b.shape) * p[l] for l, b in enumerate(net.b)]
    return net


def random_images(net, n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, net.num_outputs, n)
    return rng.uniform(0, 1, (n,) + net.image_shape), labels, one_hot_targets(labels, net.num_outputs)


# ---- (a) padding 0 is today's valid conv, bit for bit ----------------------------------------
def old_pairs(conn):
    """The conductance list of a valid conv in its original loop order (netlist element order)."""
    co, ci, k, _ = conn.param_shape
    _, h_out, w_out = conn.out_shape
    _, h, w = conn.in_shape
    t_list, i_list, j_list = [], [], []
    for a in range(co):
        for y in range(h_out):
            for x in range(w_out):
                for c in range(ci):
                    for dy in range(k):
                        for dx in range(k):
                            t_list.append(((a * ci + c) * k + dy) * k + dx)
                            i_list.append((c * h + y * conn.stride + dy) * w + x * conn.stride + dx)
                            j_list.append((a * h_out + y) * w_out + x)
    return np.array(t_list), np.array(i_list), np.array(j_list)


@pytest.mark.parametrize("shape,co,k,s", [((2, 6, 5), 3, 3, 1), ((4, 7, 7), 2, 2, 2), ((1, 8, 8), 3, 3, 2)])
def test_padding_zero_is_the_valid_conv_bit_for_bit(shape, co, k, s):
    conn = Conv2d(shape, co, k, s, padding=0)
    assert conn.out_shape == Conv2d(shape, co, k, s).out_shape
    assert conn.describe() == {"kind": "conv", "in_shape": list(shape), "c_out": co, "kernel": k, "stride": s}
    rng = np.random.default_rng(0)
    w = rng.uniform(0, 1, conn.param_shape)
    v_in, v_out = rng.normal(size=(3, conn.n_in)), rng.normal(size=(3, conn.n_out))
    b = (3,)
    out = np.zeros(b + conn.out_shape)
    _conv_forward(w, v_in.reshape(b + conn.in_shape), s, out)
    assert np.array_equal(conn.drive_out(w, v_in), out.reshape(3, -1))
    back = np.zeros(b + conn.in_shape)
    _conv_transpose(w, v_out.reshape(b + conn.out_shape), s, back)
    assert np.array_equal(conn.drive_in(w, v_out), back.reshape(3, -1))
    assert np.array_equal(conn.degree_out(w), conn.drive_out(w, np.ones((1, conn.n_in)))[0])
    assert np.array_equal(conn.degree_in(w), conn.drive_in(w, np.ones((1, conn.n_out)))[0])
    sq = np.zeros(b + conn.param_shape)
    x_in, x_out = v_in.reshape(b + conn.in_shape), v_out.reshape(b + conn.out_shape)
    _conv_drop_product(x_in, x_out, x_in, x_out, s, sq)
    assert np.array_equal(conn.sq_drop_sum(v_in, v_out), sq.sum(axis=0))
    for got, ref in zip(conn.pairs(), old_pairs(conn)):
        assert np.array_equal(got, ref)
    assert conn.pad_pairs()[0].size == 0


def test_padding_zero_solvers_and_torch_maps_are_unchanged():
    """The numba layout says padding 0 and the torch degrees are the drives of all-ones states."""
    net = build_cnn((1, 6, 6), convs=((4, 3, 1), (6, 2, 2)), num_classes=5)
    net.init_params(np.random.default_rng(0), 1.0)
    _, shapes, _ = connection_layout(net)
    assert shapes.shape == (3, 9) and np.all(shapes[:2, 8] == 0)
    c = TorchCircuit(net, "cpu")
    for l in range(1, net.num_layers + 1):
        below = c.drive_out(l - 1, torch.ones(1, net.layer_sizes[l - 1], dtype=torch.float64))[0]
        above = c.drive_in(l, torch.ones(1, net.layer_sizes[l + 1], dtype=torch.float64))[0] \
            if l < net.num_layers else 0.0
        assert torch.allclose(c.degree[l - 1], below + above, rtol=1e-14, atol=0)


# ---- (b) padded conv = valid conv on the zero-padded input, as a dense crossbar ---------------
def dense_reference(conn, w):
    """Conductance matrix (n_padded_in, n_out) of the valid conv on the padded input, built from
    its explicit conductance list, and the flat indices of the real (unpadded) input nodes."""
    valid = Conv2d(conn.padded_shape, conn.out_shape[0], conn.kernel, conn.stride)
    t, i, j = valid.pairs()
    G = np.zeros((valid.n_in, valid.n_out))
    np.add.at(G, (i, j), w.reshape(-1)[t])
    c, h, wd = conn.in_shape
    p = conn.padding
    grid = np.arange(valid.n_in).reshape(conn.padded_shape)
    return G, grid[:, p:p + h, p:p + wd].reshape(-1), valid


@pytest.mark.parametrize("conn", PADDED, ids=lambda c: f"{c.param_shape}s{c.stride}p{c.padding}")
def test_padded_conv_equals_dense_crossbar_on_zero_padded_input(conn):
    rng = np.random.default_rng(2)
    w = rng.uniform(0, 1, conn.param_shape)
    v_in, v_out = rng.normal(size=(3, conn.n_in)), rng.normal(size=(3, conn.n_out))
    G, real, valid = dense_reference(conn, w)
    assert conn.out_shape == valid.out_shape
    x_pad = np.zeros((3, valid.n_in))
    x_pad[:, real] = v_in  # the pad stays at 0 V
    np.testing.assert_allclose(conn.drive_out(w, v_in), x_pad @ G, rtol=0, atol=1e-12)
    np.testing.assert_allclose(conn.drive_in(w, v_out), (v_out @ G.T)[:, real], rtol=0, atol=1e-12)
    # diagonals: every output node carries the whole kernel (pad included), inputs their own
    np.testing.assert_allclose(conn.degree_out(w), G.sum(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(conn.degree_in(w), G.sum(axis=1)[real], rtol=0, atol=1e-12)
    # EP's local quantity: squared drops of every conductance, the pad's (0 - v_j)^2 included
    t, i, j = valid.pairs()
    sq = np.zeros(w.size)
    np.add.at(sq, t, ((x_pad[:, i] - v_out[:, j]) ** 2).sum(axis=0))
    np.testing.assert_allclose(conn.sq_drop_sum(v_in, v_out), sq.reshape(w.shape), rtol=1e-12, atol=1e-12)
    # pairs() and pad_pairs() split the valid conv's list into node-to-node and node-to-rail
    tr, ir, jr = conn.pairs()
    tp, jp = conn.pad_pairs()
    assert tr.size + tp.size == t.size and tp.size > 0
    rebuilt = np.zeros_like(G)
    np.add.at(rebuilt, (real[ir], jr), w.reshape(-1)[tr])
    pad_cols = np.zeros(valid.n_out)
    np.add.at(pad_cols, jp, w.reshape(-1)[tp])
    np.testing.assert_allclose(rebuilt.sum(axis=0) + pad_cols, G.sum(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(rebuilt[real], G[real], rtol=0, atol=0)
    # the torch solver's maps equal the reference too (a one-crossbar circuit of this conv)
    net = ResistiveNetwork((conn.in_shape[0] // 2,) + conn.in_shape[1:], [conn])
    net.w = [w]
    tc = TorchCircuit(net, "cpu")
    np.testing.assert_allclose(tc.drive_out(0, torch.tensor(v_in)).numpy(), x_pad @ G, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tc.drive_in(0, torch.tensor(v_out)).numpy(), (v_out @ G.T)[:, real],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(tc.degree[0].numpy(), G.sum(axis=0), rtol=0, atol=1e-12)


def test_one_pixel_by_hand():
    """A 1x1 input, 3x3 kernel, padding 1: one output node, joined to the pixel through the
    kernel's centre and to ground through the other eight conductances."""
    conn = Conv2d((1, 1, 1), 1, 3, 1, 1)
    assert conn.out_shape == (1, 1, 1)
    w = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    assert conn.drive_out(w, np.array([[2.0]]))[0, 0] == 10.0  # g[1, 1] * 2 V
    assert conn.drive_in(w, np.array([[3.0]]))[0, 0] == 15.0
    assert conn.degree_out(w)[0] == 45.0 and conn.degree_in(w)[0] == 5.0
    # squared drops: (2 - 1)^2 through the centre, (0 - 1)^2 through each pad conductance
    assert np.array_equal(conn.sq_drop_sum(np.array([[2.0]]), np.array([[1.0]])), np.ones((1, 1, 3, 3)))
    assert np.array_equal(conn.pairs()[0], [4])
    assert np.array_equal(np.sort(conn.pad_pairs()[0]), [0, 1, 2, 3, 5, 6, 7, 8])


# ---- (c) KCL of the compiled netlist (MNA) and numba vs torch ---------------------------------
@pytest.mark.parametrize("amplified", [False, True])
def test_numba_equilibrium_satisfies_the_netlist_kcl_and_matches_torch(tmp_path, amplified):
    net = padded_net("shockley", seed=1, amp_gains=(2.5,) if amplified else None)
    x, _, target = random_images(net, 2, seed=2)
    v_in = net.input_voltages(x)
    problem = LayeredProblem(net, v_in)
    torch_solver = TorchCircuitSolver(tol_A=1e-15, max_iter=100000, device="cpu")
    prepared = torch_solver.prepare(net, v_in)
    names = layer_node_names(net)
    for phase in ("free", "plus", "minus"):
        beta = phase_beta(phase, 0.5)
        eq = solve(problem, beta, target, tol_A=1e-16, max_iter=100000)
        assert eq.certificate.all_converged
        et = torch_solver.solve(prepared, beta, target if beta else None)
        assert et.certificate.all_converged
        for a, b in zip(eq.v_free, et.v_free):
            assert np.max(np.abs(a - b)) <= 1e-8
        for b in range(len(x)):
            nl = compile_network(net, v_in[b], beta=beta, target_V=target[b])
            pads = [n for n in nl.elements("R").names if n.startswith("rpad")]
            assert len(pads) == sum(c.pad_pairs()[0].size for c in net.connections)
            nl = read_netlist(write_netlist(nl, tmp_path / f"{phase}_{b}.cir"))  # SPICE round trip
            table = solve_mna(nl, tol_A=1e-15).table(nl)
            for l in range(1, net.num_layers + 1):
                got = np.array([table[n] for n in names[l]])
                assert np.max(np.abs(got - eq.v_free[l - 1][b])) <= 1e-9, (phase, b, l)


# ---- (d) centered EP at the trainer's solver settings vs finite differences -------------------
def test_centered_ep_at_training_settings_matches_finite_differences():
    from epsim.models.registry import build_circuit_model

    arch = "conv:4:3:2:1,conv:6:3:1:2,dense:10"
    cfg = preset_config("cnn", arch=arch)
    assert (cfg.tol_A, cfg.nudge_rtol) == (TrainConfig().tol_A, TrainConfig().nudge_rtol)
    net = build_circuit_model("cnn", (1, 8, 8), 10, arch=arch)
    net.init_params(np.random.default_rng(0), 1.0, cfg.init)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (4, 1, 8, 8))
    labels = rng.integers(0, 10, 4)
    target = one_hot_targets(labels, 10)
    solver = make_solver(cfg)
    result = centered_ep(net, solver, x, labels, cfg.beta)
    assert result.converged.all()

    def loss():
        eq = TIGHT.solve(TIGHT.prepare(net, net.input_voltages(x)))
        assert eq.certificate.all_converged
        return squared_error(eq.v_output, target).mean()

    def finite_difference(array, idx, h=1e-6):
        flat, out = array.reshape(-1), []
        for i in idx:
            old = flat[i]
            flat[i] = old + h
            up = loss()
            flat[i] = old - h
            down = loss()
            flat[i] = old
            out.append((up - down) / (2 * h))
        return np.array(out)

    def error(est, fd):
        cos = float(est @ fd / (np.linalg.norm(est) * np.linalg.norm(fd)))
        return cos, float(np.linalg.norm(est - fd) / np.linalg.norm(fd))

    # the pad's share of the gradient: without it the second conv's estimate would be off
    free, plus, minus = solver.solve_centered(solver.prepare(net, net.input_voltages(x)), cfg.beta, target)
    for params, grads in ((net.w, result.grad_w), (net.b, result.grad_b)):
        for l, (p, g) in enumerate(zip(params, grads)):
            idx = rng.choice(p.size, size=min(10, p.size), replace=False)
            fd = finite_difference(p, idx)
            cos, rel = error(g.reshape(-1)[idx], fd)
            assert cos >= 0.99 and rel <= 0.05, (l, cos, rel)
            if params is net.w and l == 1:
                t, j = net.connections[1].pad_pairs()
                pad = np.zeros(p.size)
                np.add.at(pad, t, (plus.v_free[1][:, j] ** 2 - minus.v_free[1][:, j] ** 2).sum(axis=0))
                without_pad = g.reshape(-1) - 0.5 * pad / (2 * cfg.beta * len(labels))
                assert error(without_pad[idx], fd)[1] > 0.1


# ---- (e) input gradients ----------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("diode", ["ideal", "shockley"])
def test_input_gradients_match_finite_differences(diode):
    net = padded_net(diode, seed=3)
    x, labels, target = random_images(net, 2, seed=4)
    solver = NumbaSolver(tol_A=1e-15, max_iter=100000)
    h = 1e-5
    n = int(np.prod(net.image_shape))
    e = np.eye(n).reshape((n,) + net.image_shape)
    xs = np.concatenate([x[:, None] + h * e[None], x[:, None] - h * e[None]], axis=1)
    eq = solver.solve(solver.prepare(net, net.input_voltages(xs.reshape((-1,) + net.image_shape))))
    assert eq.certificate.all_converged
    loss = 0.5 * np.sum((eq.v_output - np.repeat(target, 2 * n, axis=0)) ** 2, axis=1).reshape(2, 2, n)
    fd = ((loss[:, 0] - loss[:, 1]) / (2 * h)).reshape(x.shape)
    assert np.linalg.norm(fd) > 0
    imp = implicit_input_gradient(net, x, squared_error_loss(target), device="cpu")
    assert imp.converged.all()
    np.testing.assert_allclose(imp.grad_x, fd, atol=1e-5 * np.abs(fd).max())
    ep = ep_input_gradient(net, solver, x, labels, beta=1e-3)
    cos = float(np.ravel(ep.grad_x) @ np.ravel(fd) / (np.linalg.norm(ep.grad_x) * np.linalg.norm(fd)))
    assert cos >= 0.999


# ---- (f) certificates -------------------------------------------------------------------------
@pytest.mark.parametrize("diode,amplified", [("ideal", False), ("shockley", False), ("ideal", True)])
def test_no_point_of_the_box_leaves_the_certified_bounds(diode, amplified):
    solver = NumbaSolver(tol_A=1e-13, max_iter=200000)
    for seed in range(2):
        net = padded_net(diode, seed, amp_gains=(3.0,) if amplified else None, gain=3.0)
        x, y, _ = random_images(net, 5, seed=100 + seed)
        x[0] = np.round(x[0])
        eps = 0.1
        res = certify_box(net, solver, x, y, eps)
        assert res.converged.all() and np.all(res.lower_V <= res.upper_V)
        rng = np.random.default_rng(seed)
        for k in range(5):
            delta = rng.uniform(-eps, eps, x.shape) if k % 2 else eps * rng.choice([-1.0, 1.0], x.shape)
            eq = solver.solve(solver.prepare(net, net.input_voltages(np.clip(x + delta, 0.0, 1.0))), 0.0)
            assert eq.certificate.all_converged
            assert np.all(eq.v_output >= res.lower_V - 1e-9) and np.all(eq.v_output <= res.upper_V + 1e-9)


# ---- (g) ngspice --------------------------------------------------------------------------------
@needs_ngspice
def test_ngspice_on_an_exported_padded_circuit_agrees_with_numba(tmp_path):
    from epsim.solvers.ngspice import run_ngspice
    from epsim.spice.samples import export_samples

    net = padded_net("shockley", seed=5)
    x, labels, _ = random_images(net, 2, seed=6)
    written = export_samples(net, x, labels, tmp_path, beta=0.5)
    netlists = [p for p in written if p.suffix == ".cir"]
    assert len(netlists) == 6 and "rpad" in netlists[0].read_text()
    for path in netlists:
        op = json.loads(path.with_suffix(".op.json").read_text())
        table = run_ngspice(path)
        worst = max(abs(table[k] - v) for k, v in op["node_voltages_V"].items())
        assert worst <= 1e-6, (path.name, worst)


# ---- (h) arch spec, descriptions, refusals ---------------------------------------------------
def test_arch_spec_with_padding():
    layers = parse_arch("conv:8:3:1:1,conv:16:3:2,conv:4:5:2:2,dense:10")
    assert layers[:3] == [("conv", 8, 3, 1, 1), ("conv", 16, 3, 2, 0), ("conv", 4, 5, 2, 2)]
    assert format_arch(layers) == "conv:8:3:1:1,conv:16:3:2,conv:4:5:2:2,dense:10"
    assert parse_arch(format_arch(layers)) == layers
    conns = connections_from_arch("conv:8:3:1:1,conv:16:3:2:1,dense:10", (1, 8, 8), 10)
    assert [c.out_shape for c in conns[:2]] == [(8, 8, 8), (16, 4, 4)]
    assert [c.padding for c in conns[:2]] == [1, 1]
    # a kernel larger than the input fits once the input is padded
    assert connections_from_arch("conv:2:5:1:1,dense:10", (1, 3, 3), 10)[0].out_shape == (2, 1, 1)


@pytest.mark.parametrize("spec,message", [
    ("conv:8:3:1:3,dense:10", "padding 3 must be smaller than the kernel 3"),
    ("conv:8:3:1:-1,dense:10", "padding must be 0 or more"),
    ("conv:8:3:1:1:1,dense:10", "not dense:N, conv:C:K, conv:C:K:S or conv:C:K:S:P"),
    ("conv:8:3:0:1,dense:10", "at least 1"),
    ("conv:8:3:1:x,dense:10", "whole numbers"),
    ("conv:2:6:1:1,dense:10", "kernel 6 is larger than its 3x3 input padded by 1"),
])
def test_bad_padded_specs_are_one_line_errors(spec, message):
    with pytest.raises(EpsimError, match=message) as info:
        connections_from_arch(spec, (1, 3, 3), 10)
    assert "\n" not in str(info.value)


def test_descriptions_and_old_checkpoints():
    conn = Conv2d((2, 6, 6), 4, 3, 2, 1)
    d = conn.describe()
    assert d["padding"] == 1
    again = connection_from_description(d)
    assert (again.padding, again.out_shape) == (1, conn.out_shape)
    old = {"kind": "conv", "in_shape": [2, 6, 6], "c_out": 4, "kernel": 3, "stride": 2}
    assert connection_from_description(old).padding == 0
    net = padded_net()
    rebuilt = ResistiveNetwork.from_description(json.loads(json.dumps(net.describe())))
    assert [getattr(c, "padding", 0) for c in rebuilt.connections] == [1, 2, 0]


def test_wire_resistance_with_padding_is_refused():
    with pytest.raises(EpsimError, match="padded conv"):
        crossbar_layout(Conv2d((2, 6, 6), 4, 3, 1, 1))
    net = padded_net()
    with pytest.raises(EpsimError, match="padded conv"):
        compile_network(net, np.zeros(net.layer_sizes[0]), wire_resistance_ohm=1.0)
    with pytest.raises(EpsimError, match="padded conv"):
        TrainConfig(model="cnn", arch="conv:4:3:1:1,dense:10", wire_resistance_ohm=1.0).validate()
    with pytest.raises(EpsimError, match="padding -1"):
        Conv2d((2, 6, 6), 4, 3, 1, -1)


def test_padded_arch_trains_and_reloads(tmp_path):
    from epsim.data import load_dataset
    from epsim.training import CHECKPOINT_NAME, load_network, train

    digits = load_dataset("digits", train_subset=32, test_subset=16)
    cfg = TrainConfig(arch="conv:4:3:1:1,conv:8:3:2:1,dense:10", epochs=1, input_gain_V=16.0)
    metrics = train(cfg, digits, tmp_path, progress=False, log=lambda *_: None)
    assert metrics["history"][-1]["train_unconverged"] == 0
    net, state = load_network(tmp_path / CHECKPOINT_NAME)
    assert net.arch == cfg.arch and [c.padding for c in net.connections[:2]] == [1, 1]
    assert net.layer_shapes[1:3] == [(4, 8, 8), (8, 4, 4)]
