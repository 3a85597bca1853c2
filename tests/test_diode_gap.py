"""analysis/diode_gap.py: a trained circuit's accuracy with ideal and with Shockley diodes."""
import json

import numpy as np
import pytest

from epsim.data import load_dataset
from scripts import load_script
from spice_marks import needs_ngspice

diode_gap = load_script("analysis/diode_gap.py")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from epsim.training import TrainConfig, train

    out = tmp_path_factory.mktemp("mlp")
    train(TrainConfig(model="mlp", epochs=2), load_dataset("digits"), out, progress=False, log=lambda *a: None)
    return out / "checkpoint.pt"


def _gap(capsys, *argv):
    assert diode_gap.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_ideal_accuracy_is_the_trainers_and_a_steep_junction_closes_the_gap(checkpoint, capsys):
    from epsim.models.loading import load_network
    from epsim.solvers.factory import SolverConfig, make_solver
    from epsim.training.circuit import evaluate

    soft = _gap(capsys, "--checkpoint", str(checkpoint), "--test-subset", "120")
    ds = load_dataset("digits")
    idx = np.sort(np.random.default_rng(0).choice(len(ds.y_test), 120, replace=False))
    net, _ = load_network(checkpoint)
    ref = evaluate(net, make_solver(SolverConfig(tol_A=1e-9, max_iter=100000)), ds.x_test[idx], ds.y_test[idx])
    assert soft["ideal"]["accuracy"] == pytest.approx(ref["accuracy"])
    assert soft["shockley_diode"] == {"is_A": 1e-12, "n": 1.0, "rail_offset_V": 0.0} and soft["n"] == 120
    assert soft["gap_points"] == pytest.approx(100 * (soft["ideal"]["accuracy"] - soft["shockley"]["accuracy"]))
    # the ideal diode is the steep-junction limit: at n = 1e-6 the predictions are the ideal ones
    steep = _gap(capsys, "--checkpoint", str(checkpoint), "--test-subset", "120", "--n", "1e-6")
    assert steep["shockley"]["accuracy"] == steep["ideal"]["accuracy"] and steep["gap_points"] == 0


@needs_ngspice
def test_ngspice_solves_the_same_shockley_circuit(checkpoint, capsys):
    assert diode_gap.main(["--checkpoint", str(checkpoint), "--test-subset", "40", "--spice-images", "6",
                           "--rail-offset", "0.3"]) == 0
    captured = capsys.readouterr()
    spice = json.loads(captured.out)["spice"]
    assert spice["n"] == 6 and spice["unconverged_ngspice"] == 0
    assert spice["max_abs_diff_V"] <= 1e-6
    assert spice["accuracy_ngspice"] == spice["accuracy_numba"]
    rows = spice["per_image"]
    assert len(rows) == 6 and all(r["class_ngspice"] == r["class_numba"] for r in rows)
    assert max(r["max_abs_diff_V"] for r in rows) == spice["max_abs_diff_V"]
    assert "ngspice image 6/6" in captured.err


@needs_ngspice
def test_an_ngspice_timeout_is_reported_beside_the_numba_results(checkpoint, capsys):
    assert diode_gap.main(["--checkpoint", str(checkpoint), "--test-subset", "20", "--spice-images", "2",
                           "--spice-timeout", "0.001"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "within" in out["spice"]["error"] and out["spice"]["n"] == 2
    assert 0 <= out["shockley"]["accuracy"] <= 1
    assert captured.err.strip().startswith("warning: ngspice:")


@pytest.mark.parametrize("bad", [["--n", "0"], ["--is-a", "-1"], ["--test-subset", "0"],
                                 ["--spice-images", "-1"], ["--rail-offset", "-0.2"],
                                 ["--spice-timeout", "0"], ["--hidden-rms", "0"], ["--hidden-rms", "1", "2"]])
def test_bad_values_are_one_line_errors(checkpoint, capsys, bad):
    assert diode_gap.main(["--checkpoint", str(checkpoint), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_layer_scales_keep_the_ideal_function_and_scale_each_hidden_layer():
    from epsim.circuit.compile import with_layer_scales
    from epsim.models.resistive import build_cnn
    from epsim.solvers.numba_solver import NumbaSolver

    net = build_cnn((1, 6, 6), convs=((4, 3, 1), (6, 2, 2)), hidden=(), num_classes=4, input_gain_V=3.0,
                    amp_gains=(2.0, 0.5))
    rng = np.random.default_rng(0)
    net.init_params(rng, 1.0)
    net.b = [rng.normal(0, 0.3, b.shape) * p for b, p in zip(net.b, net.layer_scale)]
    k = [4.0, 0.3]
    out = with_layer_scales(net, k)
    assert out.input_gain_V == 12.0 and np.allclose(out.amp_gains, [2.0 * 0.3 / 4.0, 0.5 / 0.3])
    solver = NumbaSolver(tol_A=1e-14, max_iter=100000)
    x = rng.uniform(0, 1, (5, 1, 6, 6))
    a = solver.solve(solver.prepare(net, net.input_voltages(x)), 0.0)
    b = solver.solve(solver.prepare(out, out.input_voltages(x)), 0.0)
    # equal up to the solves' KCL tolerance (1e-14 A over node conductances of ~1e-6 S)
    for l, kl in enumerate(k):
        np.testing.assert_allclose(b.v_free[l], kl * a.v_free[l], rtol=0, atol=1e-7)
    np.testing.assert_allclose(b.v_output, a.v_output, rtol=0, atol=1e-7)
    assert np.abs(b.v_free[0]).max() > 1.0 and np.abs(b.v_free[1]).max() > 1e-2
    with pytest.raises(Exception, match="positive finite layer factors"):
        with_layer_scales(net, [1.0])


def test_hidden_rms_rescales_and_keeps_the_ideal_accuracy(checkpoint, capsys):
    r = _gap(capsys, "--checkpoint", str(checkpoint), "--test-subset", "120", "--hidden-rms", "5")
    assert r["ideal"]["accuracy"] == r["ideal_before_rescaling"]["accuracy"]
    op = r["operating_point"]
    assert op["hidden_rms_V"] == 5 and len(op["factors"]) == 1
    assert op["factors"][0] == pytest.approx(5 / op["rms_before_V"][0])
    assert len(r["max_node_V_per_layer"]) == 2 and r["max_node_V_per_layer"][0] > 5
