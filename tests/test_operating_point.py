"""analysis/operating_point.py and epsim.operating_point: a trained circuit moved to other
layer voltages, saved, read back and trained from."""
import json

import numpy as np
import pytest

from epsim.data import load_dataset
from scripts import load_script

operating_point = load_script("analysis/operating_point.py")

ARCH = "dense:24,dense:16,dense:10"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from epsim.training import TrainConfig, train

    out = tmp_path_factory.mktemp("deep")
    train(TrainConfig(model="arch", arch=ARCH, epochs=1, differential=True, input_center=0.5,
                      amp_gain=[2.0, 3.0], lr=0.05),
          load_dataset("digits"), out, progress=False, log=lambda *a: None)
    return out / "checkpoint.pt"


def _move(tmp_path, checkpoint, *rms, capsys=None):
    out = tmp_path / "moved"
    argv = ["--checkpoint", str(checkpoint), "--hidden-rms", *map(str, rms), "--test-subset", "200",
            "--tol", "1e-13", "--out", str(out)]
    assert operating_point.main(argv) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_each_hidden_layer_lands_on_its_rms_and_the_function_is_kept(checkpoint, tmp_path, capsys):
    from epsim.operating_point import CALIBRATION_IMAGES, active_rms
    from epsim.learning.ep import free_phase
    from epsim.models.loading import load_network
    from epsim.solvers.factory import SolverConfig, make_solver

    out, m = _move(tmp_path, checkpoint, 0.2, 3.0)
    assert m["ideal_accuracy_after"] == m["ideal_accuracy_before"]
    assert m["ideal_accuracy_after"]["accuracy"] > 0.5
    before, _ = load_network(checkpoint)
    after, state = load_network(out / "checkpoint.pt")
    solver = make_solver(SolverConfig(tol_A=1e-13, max_iter=100000))
    ds = load_dataset("digits")
    idx = np.sort(np.random.default_rng([0, 2]).choice(len(ds.x_train), CALIBRATION_IMAGES, replace=False))
    np.testing.assert_allclose(active_rms(after, solver, ds.x_train[idx]), [0.2, 3.0], rtol=1e-6)
    # the saved operating point is the model's, and the config says the same
    k = m["operating_point"]["factors"]
    assert after.input_gain_V == pytest.approx(before.input_gain_V * k[0], rel=1e-12)
    np.testing.assert_allclose(after.amp_gains, [2.0 * k[1] / k[0], 3.0 / k[1]], rtol=1e-12)
    assert state["config"]["input_gain_V"] == after.input_gain_V
    assert state["config"]["amp_gain"] == [float(a) for a in after.amp_gains]
    # node voltages: layer l scaled by k_l, outputs unchanged
    x = ds.x_test[:20]
    a, b = free_phase(before, solver, x), free_phase(after, solver, x)
    for l, kl in enumerate(k):
        np.testing.assert_allclose(b.v_free[l], kl * a.v_free[l], rtol=0, atol=1e-6 * kl)
    np.testing.assert_allclose(b.v_output, a.v_output, rtol=0, atol=1e-6)
    shown = np.sort(np.random.default_rng(0).choice(len(ds.y_test), 200, replace=False))
    assert m["largest_input_V"] == pytest.approx(float(np.abs(after.input_voltages(ds.x_test[shown])).max()),
                                                 rel=1e-12)
    assert len(m["largest_node_voltage_per_layer_V"]) == 3
    # the last line is the options that start a training run from it
    options = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert options[:2] == ["--init-from", str(out / "checkpoint.pt")]
    assert float(options[options.index("--input-gain") + 1]) == after.input_gain_V
    assert [float(a) for a in options[options.index("--amp-gain") + 1:]] == list(after.amp_gains)


def test_training_starts_from_the_moved_circuit_with_shockley_diodes(checkpoint, tmp_path):
    from epsim.training import TrainConfig, train

    out, m = _move(tmp_path, checkpoint, 1.0)
    op = m["operating_point"]
    result = train(TrainConfig(model="arch", arch=ARCH, epochs=1, differential=True, input_center=0.5,
                               input_gain_V=op["input_gain_V"], amp_gain=op["amp_gains"],
                               init_from=str(out / "checkpoint.pt"), diode="shockley", rail_offset_V=0.4,
                               lr=0.01, train_subset=64, test_subset=100),
                   load_dataset("digits"), tmp_path / "ft", progress=False, log=lambda *a: None)
    assert result["test_accuracy"] > 0.5


@pytest.mark.parametrize("bad", [["--hidden-rms", "1", "2", "3"], ["--hidden-rms", "0"],
                                 ["--hidden-rms", "1", "--test-subset", "0"]])
def test_bad_values_are_one_line_errors_before_any_output(checkpoint, tmp_path, capsys, bad):
    out = tmp_path / "o"
    assert operating_point.main(["--checkpoint", str(checkpoint), "--out", str(out), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert not out.exists()


def test_an_existing_output_is_refused(checkpoint, tmp_path, capsys):
    out, _ = _move(tmp_path, checkpoint, 1.0)
    assert operating_point.main(["--checkpoint", str(checkpoint), "--hidden-rms", "1", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
