"""analysis/diode_gap.py: a trained circuit's accuracy with ideal and with Shockley diodes."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from epsim.data import load_dataset

SPEC = importlib.util.spec_from_file_location("diode_gap",
                                              Path(__file__).resolve().parents[1] / "analysis" / "diode_gap.py")
diode_gap = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(diode_gap)


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
    assert soft["shockley_diode"] == {"is_A": 1e-12, "n": 1.0} and soft["n"] == 120
    assert soft["gap_points"] == pytest.approx(100 * (soft["ideal"]["accuracy"] - soft["shockley"]["accuracy"]))
    # the ideal diode is the steep-junction limit: at n = 1e-6 the predictions are the ideal ones
    steep = _gap(capsys, "--checkpoint", str(checkpoint), "--test-subset", "120", "--n", "1e-6")
    assert steep["shockley"]["accuracy"] == steep["ideal"]["accuracy"] and steep["gap_points"] == 0


@pytest.mark.parametrize("bad", [["--n", "0"], ["--is-a", "-1"], ["--test-subset", "0"]])
def test_bad_values_are_one_line_errors(checkpoint, capsys, bad):
    assert diode_gap.main(["--checkpoint", str(checkpoint), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
