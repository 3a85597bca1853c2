"""User mistakes of issue 17 give one-line errors (exit 2) before any training or solving."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from epsim import data as data_mod
from epsim.errors import EpsimError

REPO = Path(__file__).resolve().parents[1]


def _no_compute(*args, **kwargs):
    raise AssertionError("compute started before the arguments were checked")


@pytest.fixture
def no_data(monkeypatch):
    """Loading a dataset fails the test: these mistakes must be caught before that."""
    import epsim.train as train_cli

    monkeypatch.setattr(data_mod, "load_dataset", _no_compute)
    monkeypatch.setattr(train_cli, "load_dataset", _no_compute)


def _one_line_error(call, argv, pattern):
    with pytest.raises(EpsimError, match=pattern) as exc:
        call(argv)
    assert "\n" not in str(exc.value)


def _train(argv):
    from epsim.train import main

    main(argv + ["--no-progress"])


def _gradcheck(argv):
    from epsim.gradcheck import main

    main(argv)


def test_robustness_negative_seed(tmp_path):
    from epsim.robustness.cli import main

    _one_line_error(main, ["--checkpoint", str(tmp_path / "c.pt"), "--attack", "pgd-l2", "--eps", "0.5",
                           "--seed", "-1", "--out", str(tmp_path / "r")], "--seed must be non-negative")


@pytest.mark.parametrize("flag, value", [("--tol", "inf"), ("--grad-tol", "inf"), ("--ep-beta", "nan"),
                                         ("--ce-temperature", "0")])
def test_robustness_non_finite_settings(tmp_path, flag, value):
    from epsim.robustness.cli import main

    _one_line_error(main, ["--checkpoint", str(tmp_path / "c.pt"), "--attack", "pgd-l2", "--eps", "0.5",
                           flag, value, "--out", str(tmp_path / "r")], flag)


def test_gradcheck_max_iter_zero(no_data):
    _one_line_error(_gradcheck, ["--max-iter", "0"], "--max-iter must be at least 1")


def test_gradcheck_zero_channels(no_data):
    _one_line_error(_gradcheck, ["--channels", "0", "16"], "--channels must be at least 1")


def test_ep_cnn_zero_channels(no_data):
    _one_line_error(_train, ["--model", "ep-cnn", "--channels", "0", "0"], "--channels must be at least 1")


def test_vit_zero_heads(no_data):
    _one_line_error(_train, ["--model", "vit", "--heads", "0"], "--heads must be at least 1")


def test_vit_zero_depth(no_data):
    _one_line_error(_train, ["--model", "vit", "--depth", "0"], "--depth must be at least 1")


def test_ep_cnn_infinite_tolerance(no_data):
    _one_line_error(_train, ["--model", "ep-cnn", "--ep-tol", "inf"], "--ep-tol")


@pytest.mark.parametrize("argv", [["--g-min", "1e-5", "--g-max", "1e-6"], ["--g-max", "inf"],
                                  ["--g-min=-1e-6"]])
def test_conductance_range_names_the_flags(no_data, argv):
    _one_line_error(_train, argv, "--g-min and --g-max must satisfy")


def test_train_negative_seed(no_data):
    _one_line_error(_train, ["--seed", "-1"], "--seed must be non-negative")


def test_train_infinite_tolerance(no_data):
    _one_line_error(_train, ["--tol", "inf"], "--tol")


@pytest.fixture
def no_training(monkeypatch):
    import epsim.device_sweep as sweep

    monkeypatch.setattr(sweep, "train_chip", _no_compute)


def _sweep(argv):
    from epsim.device_sweep import main

    main(argv + ["--no-progress", "--epochs", "1", "--devices", "ideal"])


@pytest.mark.parametrize("flag, value", [("--attack-subset", "0"), ("--attack-steps", "0"),
                                         ("--attack-queries", "0"), ("--attack-eps", "-1")])
def test_device_sweep_attack_options_before_training(tmp_path, no_training, flag, value):
    _one_line_error(_sweep, ["--out", str(tmp_path / "s.json"), "--robustness", flag, value], flag)


def test_device_sweep_attack_eps_out_of_range_before_training(tmp_path, no_training):
    _one_line_error(_sweep, ["--out", str(tmp_path / "s.json"), "--robustness", "--attack-eps", "100"],
                    "--attack-eps: .*out of range")


def test_device_sweep_train_wires_epochs(tmp_path, no_training):
    _one_line_error(_sweep, ["--out", str(tmp_path / "s.json"), "--train-wires", "10",
                             "--train-wires-epochs", "0"], "--train-wires-epochs")


@pytest.mark.parametrize("module, argv", [
    ("epsim.gradcheck", ["--channels", "0", "16"]),
    ("epsim.train", ["--model", "vit", "--heads", "0"]),
])
def test_entry_points_exit_2_with_one_line(module, argv, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr


def test_export_infinite_tolerance(tmp_path, no_data):
    from epsim.export import main

    _one_line_error(main, ["--reference", "--out", str(tmp_path / "x"), "--tol", "inf"], "--tol")


@pytest.mark.parametrize("value", ["-2", "inf", "nan"])
def test_export_wire_resistance_checked_before_the_data(tmp_path, no_data, value):
    from epsim.export import main

    _one_line_error(main, ["--reference", "--out", str(tmp_path / "x"), "--wire-resistance", value],
                    "--wire-resistance must be a non-negative number")


@pytest.mark.parametrize("argv, pattern", [
    (["--model", "bp-cnn", "--stop-at-accuracy", "1.5"], "--stop-at-accuracy"),
    (["--model", "bp-cnn", "--stop-at-accuracy", "0"], "--stop-at-accuracy"),
    (["--model", "bp-cnn", "--val-every", "10"], "apply with --stop-at-accuracy only"),
    (["--model", "bp-cnn", "--stop-at-accuracy", "0.5", "--val-subset", "0"], "--val-subset"),
    (["--model", "cnn", "--stop-at-accuracy", "0.5"], "torch models"),
])
def test_train_accuracy_target_options(no_data, argv, pattern):
    _one_line_error(_train, argv, pattern)
