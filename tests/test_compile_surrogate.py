"""analysis/compile_surrogate.py: a trained surrogate mapped onto a circuit's conductances."""
import json

import numpy as np
import pytest

from epsim.data import load_dataset
from epsim.learning.ep import free_phase
from epsim.models.loading import load_network
from epsim.solvers.factory import SolverConfig, make_solver
from scripts import load_script

surrogate = load_script("analysis/circuit_surrogate.py")
compiler = load_script("analysis/compile_surrogate.py")
ARCH = "conv:4:3:1,conv:6:3:2,dense:10"


@pytest.fixture(scope="module")
def ordinary(tmp_path_factory):
    """An ordinary network (weighted sums, signed weights) trained 2 epochs on the digits."""
    out = tmp_path_factory.mktemp("ordinary")
    assert surrogate.main(["--arch", ARCH, "--dataset", "digits", "--node", "sum", "--weights", "signed",
                           "--input-gain", "1", "--cost", "ce", "--epochs", "2", "--lr", "0.01",
                           "--out", str(out)]) == 0
    return out


def source_outputs(run_dir, x):
    """Outputs (B, 10) of the saved surrogate for images ``x``."""
    from epsim.checkpoint import load_checkpoint
    from epsim.models.arch import parse_arch

    state = load_checkpoint(run_dir / "surrogate.pt")
    cfg = state["config"]
    model = surrogate.Surrogate(parse_arch(cfg["arch"]), x.shape[1:], node=cfg["node"], weights=cfg["weights"],
                                input_gain_V=cfg["input_gain"], input_center=cfg["input_center"])
    model.load(state["g"], state["b"])
    return surrogate.outputs(model, x).numpy()


def test_the_map_keeps_every_prediction_and_the_circuit_follows_at_low_loading(ordinary, tmp_path):
    out = tmp_path / "compiled"
    assert compiler.main(["--surrogate", str(ordinary), "--loading", "0.001", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["feedforward_max_rel_error"] < 1e-10
    assert m["compiled_feedforward_test_accuracy"] == m["surrogate_test_accuracy"] > 0.5
    assert max(m["loading_measured_per_boundary"]) <= 0.001 * (1 + 1e-9)
    assert m["circuit_unconverged"] == 0

    # the checkpoint is an ordinary circuit checkpoint: its free phase (KCL, both directions)
    # gives outputs proportional to the ordinary network's, to the loading's order
    net, state = load_network(out / "checkpoint.pt")
    assert min(w.min() for w in net.w) >= 0
    assert state["config"]["tol_A"] == 1e-13 and state["config"]["max_iter"] == 100000
    x = load_dataset("digits").x_test[:32]
    eq = free_phase(net, make_solver(SolverConfig(tol_A=1e-14, max_iter=100000)), x)
    assert eq.certificate.converged.all()
    ref = source_outputs(ordinary, x)
    k = np.sum(eq.v_output * ref) / np.sum(ref * ref)
    assert k > 0
    assert np.max(np.abs(eq.v_output - k * ref)) < 0.02 * np.max(np.abs(k * ref))
    assert np.mean(eq.v_output.argmax(1) == ref.argmax(1)) >= 31 / 32
    assert abs(np.sqrt(np.mean(eq.v_output ** 2)) - 1.0) < 0.5  # --output-rms 1 V, on other images


def test_equal_loading_gives_every_crossbar_the_same_largest_conductance(ordinary, tmp_path):
    assert compiler.main(["--surrogate", str(ordinary), "--loading", "equal", "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert np.allclose(m["largest_conductance_per_layer"], 10.0)  # half of the default g_max / g_unit
    assert m["compiled_feedforward_test_accuracy"] == m["surrogate_test_accuracy"]


def test_a_circuit_class_surrogate_maps_as_it_is(tmp_path):
    run = tmp_path / "run"
    assert surrogate.main(["--arch", ARCH, "--dataset", "digits", "--input-gain", "16", "--epochs", "1",
                           "--lr", "0.01", "--out", str(run)]) == 0
    out = tmp_path / "compiled"
    assert compiler.main(["--surrogate", str(run), "--loading", "0.001", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["feedforward_max_rel_error"] < 1e-10
    assert m["compiled_feedforward_test_accuracy"] == m["surrogate_test_accuracy"]
    assert abs(m["circuit_test_accuracy"] - m["surrogate_test_accuracy"]) <= 0.02


@pytest.mark.parametrize("argv, message", [
    (["--loading", "0"], "--loading must be a positive number or 'equal'"),
    (["--loading", "abc"], "--loading must be a positive number or 'equal'"),
    (["--tol", "-1"], "--tol must be positive"),
    (["--output-rms", "volts"], "--output-rms must be a positive number of volts, 'fit' or 'logits'"),
])
def test_bad_input_is_one_line_error(argv, message, ordinary, tmp_path, capsys):
    assert compiler.main(["--surrogate", str(ordinary), "--out", str(tmp_path)] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "metrics.json").exists()


def test_missing_surrogate_and_existing_output_are_refused(ordinary, tmp_path, capsys):
    assert compiler.main(["--surrogate", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "metrics.json").write_text("{}")
    assert compiler.main(["--surrogate", str(ordinary), "--out", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err


def test_hidden_rms_moves_the_operating_point_with_amplifiers(ordinary, tmp_path):
    passive, amplified = tmp_path / "p", tmp_path / "a"
    assert compiler.main(["--surrogate", str(ordinary), "--loading", "0.01", "--out", str(passive)]) == 0
    assert compiler.main(["--surrogate", str(ordinary), "--loading", "0.01", "--hidden-rms", "0.5",
                          "--out", str(amplified)]) == 0
    p, a = (json.loads((d / "metrics.json").read_text()) for d in (passive, amplified))
    assert a["circuit_test_accuracy"] == p["circuit_test_accuracy"]
    assert a["input_gain_V"] < p["input_gain_V"] and max(a["amp_gains"]) > 1
    assert np.allclose(a["operating_point"]["hidden_rms_V"], 0.5)
    net, _ = load_network(amplified / "checkpoint.pt")
    assert np.allclose(net.amp_gains, a["amp_gains"])


def test_output_fit_gives_the_least_squares_scale(ordinary, tmp_path):
    assert compiler.main(["--surrogate", str(ordinary), "--loading", "0.01", "--output-rms", "fit",
                          "--out", str(tmp_path)]) == 0
    net, _ = load_network(tmp_path / "checkpoint.pt")
    ds = load_dataset("digits")
    eq = free_phase(net, make_solver(SolverConfig(tol_A=1e-14, max_iter=100000)), ds.x_train[:512])
    target = np.eye(10)[ds.y_train[:512]]
    design = np.stack([eq.v_output.ravel(), np.ones(eq.v_output.size)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, target.ravel(), rcond=None)
    assert abs(scale - 1.0) < 0.05 and abs(shift) < 0.05  # already at the least-squares fit
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["feedforward_max_rel_error"] < 1e-10
    assert m["compiled_feedforward_test_accuracy"] == m["surrogate_test_accuracy"]


def test_output_logits_makes_the_circuit_outputs_the_surrogate_logits_in_volts(ordinary, tmp_path):
    assert compiler.main(["--surrogate", str(ordinary), "--loading", "0.001", "--output-rms", "logits",
                          "--hidden-rms", "0.5", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["output_rms"] == "logits"
    net, _ = load_network(tmp_path / "checkpoint.pt")
    x = load_dataset("digits").x_test[:32]
    eq = free_phase(net, make_solver(SolverConfig(tol_A=1e-14, max_iter=100000)), x)
    logits = source_outputs(ordinary, x)
    # the circuit's outputs (V) are the logits, to the loading's order (0.1 %)
    assert np.max(np.abs(eq.v_output - logits)) < 0.01 * np.max(np.abs(logits))
