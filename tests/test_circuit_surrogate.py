"""analysis/circuit_surrogate.py: the feed-forward surrogate of a circuit network."""
import json

import numpy as np
import pytest
import torch

from epsim.data import load_dataset
from epsim.learning.ep import free_phase
from epsim.models.arch import parse_arch
from epsim.solvers.factory import SolverConfig, make_solver
from epsim.training.circuit import TrainConfig, build_network
from scripts import load_script

surrogate = load_script("analysis/circuit_surrogate.py")


def test_average_node_is_the_circuit_without_top_down_currents():
    """A dense differential circuit whose readout conductances are 1e-9 of the hidden layer's:
    its free phase (numba, KCL to 1e-14 A) gives the hidden voltages of the surrogate's one pass,
    and outputs (no bias) at the conductance-weighted average of the presented hidden layer."""
    ds = load_dataset("digits")
    net = build_network(TrainConfig(arch="dense:12,dense:10", differential=True, dataset="digits"), ds)
    rng = np.random.default_rng(3)
    net.init_params(rng, 1.0, "clamped-uniform")
    w0 = net.w[0]
    w1 = rng.uniform(0, 1e-9, size=net.w[1].shape)
    b = [rng.uniform(-0.5, 0.5, size=net.b[0].shape), np.zeros(net.b[1].shape)]  # no output bias: it
    # would set the weakly connected outputs far from the hidden layer and pull on it
    net.set_params([w0, w1], b)
    x = ds.x_test[:16]
    v = free_phase(net, make_solver(SolverConfig(tol_A=1e-14, max_iter=100000)), x)
    assert v.certificate.converged.all()
    hidden_V, out_V = v.v_free[0], v.v_free[1]

    model = surrogate.Surrogate(parse_arch("dense:12,dense:10"), x.shape[1:], input_gain_V=net.input_gain_V,
                                input_center=net.input_center)
    with torch.no_grad():
        model.g[0].copy_(torch.as_tensor(w0))
        model.g[1].copy_(torch.as_tensor(w1))
        for t, bias in zip(model.b, b):
            t.copy_(torch.as_tensor(bias))
        xt = torch.as_tensor(x, dtype=torch.float64)
        u = xt - net.input_center
        u = net.input_gain_V * torch.cat([u, -u], 1).flatten(1)
        d = (u @ model.g[0] + model.b[0]) / model.g[0].sum(0)
        v1 = torch.cat([d[:, :6].clamp(min=0), d[:, 6:].clamp(max=0)], 1).numpy()
        out = model.forward(xt).numpy()
    assert np.max(np.abs(hidden_V - v1)) < 1e-6
    assert np.max(np.abs(out_V - out)) < 1e-6
    assert (v1[:, :6] > 0).any() and (v1[:, 6:] < 0).any()  # both polarities live


def test_conductances_stay_non_negative_and_the_loss_falls(tmp_path):
    rc = surrogate.main(["--arch", "conv:4:3:2,dense:10", "--dataset", "digits", "--epochs", "2",
                         "--input-gain", "16", "--lr", "0.01", "--out", str(tmp_path)])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    h = m["history"]
    assert len(h) == 2 and h[1]["train_loss"] < h[0]["train_loss"]
    assert h[1]["test_accuracy"] > 0.5
    assert m["config"]["lr_layers"] == [1.0, 0.5]


def test_projection_keeps_conductances_non_negative():
    model = surrogate.Surrogate(parse_arch("conv:4:3:2,dense:10"), (1, 8, 8))
    with torch.no_grad():
        model.g[0].sub_(1.0)
    model.project()
    assert all(float(g.detach().min()) >= 0 for g in model.g)
    signed = surrogate.Surrogate(parse_arch("conv:4:3:2,dense:10"), (1, 8, 8), weights="signed")
    assert any(float(g.detach().min()) < 0 for g in signed.g)


@pytest.mark.parametrize("argv, message", [
    (["--arch", "conv:4:3:2"], "must end with the dense output layer"),
    (["--arch", "conv:4:3:2,dense:10", "--lr-layers", "1"], "--lr-layers needs 2 values"),
    (["--arch", "conv:4:3:2,dense:7"], "digits has 10 classes"),
    (["--arch", "dense:10", "--epochs", "0"], "--epochs must be positive"),
    (["--arch", "conv:4:9:1,dense:10"], "does not fit"),
])
def test_bad_input_is_one_line_error(argv, message, tmp_path, capsys):
    assert surrogate.main(argv + ["--dataset", "digits", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "metrics.json").exists()


def test_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("{}")
    assert surrogate.main(["--arch", "dense:10", "--dataset", "digits", "--out", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err


def test_leak_ratio_starts_as_the_circuit_and_changes_only_the_node_equation():
    """With a leak of R times each node's initial conductance and amplifiers of 1 + R, the
    network's initial outputs are those of R = 0; after the conductances change they differ."""
    layers, shape = parse_arch("conv:4:3:2,dense:10"), (1, 8, 8)
    plain = surrogate.Surrogate(layers, shape, input_gain_V=16.0, seed=1)
    leaky = surrogate.Surrogate(layers, shape, input_gain_V=16.0, leak_ratio=9.0, seed=1)
    x = torch.as_tensor(load_dataset("digits").x_test[:8], dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(plain.forward(x), leaky.forward(x), rtol=1e-12, atol=1e-12)
        for model in (plain, leaky):
            model.g[1].mul_(2.0)
        # average node: doubling the readout's conductances changes nothing; with a leak it does
        assert torch.allclose(plain.forward(x) , surrogate.Surrogate(layers, shape, input_gain_V=16.0, seed=1).forward(x),
                              rtol=1e-12, atol=1e-12)
        assert not torch.allclose(leaky.forward(x), plain.forward(x), rtol=1e-3, atol=0)


def test_saves_the_trained_parameters(tmp_path):
    from epsim.checkpoint import load_checkpoint

    assert surrogate.main(["--arch", "dense:10", "--dataset", "digits", "--epochs", "1", "--input-gain", "16",
                           "--bias-lr-ratio", "10", "--out", str(tmp_path)]) == 0
    state = load_checkpoint(tmp_path / "surrogate.pt")
    assert state["config"]["arch"] == "dense:10" and state["config"]["bias_lr_ratio"] == 10
    assert state["g"][0].shape == (128, 10) and state["b"][0].shape == (10,)
    assert state["g"][0].min() >= 0


@pytest.mark.parametrize("argv, message", [
    (["--leak-ratio", "-1"], "--leak-ratio must be a number >= 0"),
    (["--bias-lr-ratio", "0"], "--bias-lr-ratio must be positive"),
])
def test_bad_leak_and_bias_rate(argv, message, tmp_path, capsys):
    assert surrogate.main(["--arch", "dense:10", "--dataset", "digits", "--out", str(tmp_path)] + argv) == 2
    assert message in capsys.readouterr().err
