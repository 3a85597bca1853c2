"""python -m epsim.robustness: one-line errors for bad input, and a tiny end-to-end run."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from epsim.checkpoint import save_checkpoint
from epsim.data import load_dataset
from epsim.models.resistive import build_mlp
from epsim.robustness.cli import cli, parse_eps, warn_unused_options
from epsim.errors import EpsimError
from epsim.training import TrainConfig, train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small digits circuit MLP (2 epochs on 300 images), evaluated on the full test set."""
    out = tmp_path_factory.mktemp("digits-mlp")
    config = TrainConfig(model="mlp", epochs=2, train_subset=300)
    ds = load_dataset("digits", train_subset=300, seed=0)
    metrics = train(config, ds, out, progress=False, log=lambda *a: None)
    return out / "checkpoint.pt", metrics


def _error(capsys, argv):
    """Run the CLI in-process; return (exit status, stderr)."""
    try:
        status = cli(argv)
    except SystemExit as exc:  # argparse errors
        status = exc.code
    err = capsys.readouterr().err
    return status, err


def test_bad_input_gives_one_line_errors(trained, tmp_path, capsys):
    ckpt, _ = trained
    base = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "r"), "--test-subset", "4", "--no-progress"]
    cases = [
        (["--checkpoint", str(tmp_path / "missing.pt"), "--attack", "pgd-l2", "--eps", "0.5",
          "--out", str(tmp_path / "r")], "not found"),
        (base + ["--attack", "pgd-l2", "--eps", "-0.1"], "non-negative"),
        (base + ["--attack", "pgd-linf", "--eps", "1.5"], "out of range"),
        (base + ["--attack", "pgd-l2", "--eps", "8.5"], "out of range"),
        (base + ["--attack", "pgd-l3", "--eps", "0.5"], "unknown attack"),
        (base + ["--attack", "pgd-l2", "--eps", "half"], "cannot read"),
        (base + ["--attack", "pgd-l2"], "--eps is required"),
        (base + ["--attack", "pgd-l2", "--eps", "0.5", "--loss", "hinge"], "unknown loss"),
        (base + ["--attack", "pgd-l2", "--eps", "0.5", "--grad-path", "transfer"], "--transfer-from"),
        (base + ["--attack", "pgd-l2", "--eps", "0.5", "--dataset", "mnist"], "trained on digits"),
        (base[:-3] + ["--test-subset", "9999", "--attack", "pgd-l2", "--eps", "0.5"], "larger than"),
        (base + ["--attack", "corruptions", "--corruptions", "saturate"], "not applicable"),
        (base + ["--attack", "corruptions", "--severities", "7"], "severities"),
    ]
    for argv, words in cases:
        status, err = _error(capsys, argv)
        assert status == 2, (argv[-6:], err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], (argv, err)


def test_value_errors_come_before_loading_or_writing(trained, tmp_path, capsys):
    """Values wrong for any model are refused before the checkpoint or data load and before --out
    is created: nothing on stdout, no output folder."""
    ckpt, _ = trained
    out = tmp_path / "never"
    base = ["--checkpoint", str(ckpt), "--out", str(out), "--no-progress"]
    cases = [
        (base + ["--attack", "pgd-l2", "--eps", "-1"], "non-negative"),
        (base + ["--attack", "pgd-l2", "--eps", "nan"], "non-negative"),
        (base + ["--attack", "advep-l2", "--eps", "0.5", "--unroll", "0"], "--unroll"),
        (base + ["--attack", "corruptions", "--severities", "6"], "severities are 1..5"),
        (base + ["--attack", "corruptions", "--corruptions", "rain"], "unknown corruption"),
    ]
    for argv, words in cases:
        status = cli(argv)
        captured = capsys.readouterr()
        assert status == 2 and words in captured.err and len(captured.err.strip().splitlines()) == 1, (argv, captured)
        assert captured.out == "" and not out.exists(), (argv, captured.out)


def test_model_errors_come_before_the_data_and_the_output_folder(tmp_path, capsys):
    """What does not fit the model (a certificate of a software model, a gradient path it lacks,
    images of another shape) is refused once the checkpoint is read: before the dataset is
    loaded (its folder here does not exist) and before --out is created."""
    from epsim.train import main as train_main

    software = tmp_path / "bp"
    train_main(["--model", "bp-cnn", "--dataset", "digits", "--train-subset", "64", "--test-subset", "16",
                "--epochs", "1", "--out", str(software), "--no-progress"])
    capsys.readouterr()
    net = build_mlp((1, 7, 7), (8,), 10)
    net.init_params(np.random.default_rng(0))
    odd_shape = tmp_path / "odd.pt"
    save_checkpoint(odd_shape, {"kind": "circuit", "model": net.describe(), "w": net.w, "b": net.b,
                                "config": {"dataset": "digits", "backend": "numba", "tol_A": 1e-9, "max_iter": 100}})
    out = tmp_path / "never"
    base = ["--out", str(out), "--no-progress", "--data-dir", str(tmp_path / "no-such-folder")]
    bp = ["--checkpoint", str(software / "checkpoint.pt")]
    cases = [
        (bp + ["--attack", "certify-l2", "--eps", "0.1"], "need a circuit model"),
        (bp + ["--attack", "pgd-l2", "--eps", "0.5", "--grad-path", "ep"], "not available"),
        (["--checkpoint", str(odd_shape), "--attack", "pgd-l2", "--eps", "0.5"], "expects (1, 7, 7) images"),
    ]
    for argv, words in cases:
        status = cli(argv + base)
        captured = capsys.readouterr()
        assert status == 2 and words in captured.err and len(captured.err.strip().splitlines()) == 1, (argv, captured)
        assert captured.out == "" and not out.exists(), (argv, captured.out)


def test_options_no_chosen_attack_reads_are_named():
    lines = warn_unused_options({"unroll", "queries", "steps", "eps"}, ["pgd-l2"])
    assert len(lines) == 2 and lines[0].startswith("warning: --unroll applies to advep-* only")
    assert "--queries applies to square-* only" in lines[1] and all(line.endswith("ignored") for line in lines)
    assert warn_unused_options({"unroll", "queries", "steps"}, ["advep-l2", "square-l2", "pgd-l2"]) == []
    (line,) = warn_unused_options({"eps", "severities"}, ["corruptions"])
    assert line.startswith("warning: --eps applies to") and "corruptions" in line.split("not to")[1]
    assert warn_unused_options(set(), ["pgd-l2"]) == []


def test_an_ignored_option_is_warned_on_stderr(trained, tmp_path, capsys):
    ckpt, _ = trained
    status = cli(["--checkpoint", str(ckpt), "--out", str(tmp_path / "r"), "--test-subset", "4", "--no-progress",
                  "--attack", "corruptions", "--corruptions", "gaussian_noise", "--severities", "1",
                  "--unroll", "5"])
    err = capsys.readouterr().err
    assert status == 0 and "warning: --unroll applies to advep-* only, not to --attack corruptions; ignored" in err


def test_checkpoint_dataset_shape_mismatch(tmp_path, capsys):
    """A circuit for 7x7 images claiming to be a digits model is refused before any attack."""
    net = build_mlp((1, 7, 7), (8,), 10)
    net.init_params(np.random.default_rng(0))
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"kind": "circuit", "model": net.describe(), "w": net.w, "b": net.b,
                           "config": {"dataset": "digits", "backend": "numba", "tol_A": 1e-9, "max_iter": 100}})
    status, err = _error(capsys, ["--checkpoint", str(path), "--attack", "pgd-l2", "--eps", "0.5",
                                  "--out", str(tmp_path / "r"), "--test-subset", "4"])
    assert status == 2 and "expects (1, 7, 7) images" in err and len(err.strip().splitlines()) == 1


def test_module_entry_point_exit_status(tmp_path):
    r = subprocess.run([sys.executable, "-m", "epsim.robustness", "--checkpoint", str(tmp_path / "none.pt"),
                        "--attack", "square-l2", "--eps", "1", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_parse_eps():
    assert parse_eps("0.5, 8/255") == [0.5, 8 / 255]
    np.testing.assert_allclose(parse_eps("log:0.05:3:3"), [0.05, np.sqrt(0.05 * 3), 3.0])
    with pytest.raises(EpsimError):
        parse_eps("log:0:3:3")


def test_tiny_end_to_end_run_writes_json_and_csv(trained, tmp_path, capsys):
    ckpt, metrics = trained
    out = tmp_path / "robust"
    status = cli(["--checkpoint", str(ckpt), "--attack", "pgd-l2,fgsm-l2,square-l2", "--eps", "0.5,2",
                  "--test-subset", "12", "--steps", "5", "--queries", "30", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert status == 0
    res = json.loads((out / "robustness.json").read_text())
    assert res["n"] == 12 and res["dataset"] == "digits" and res["grad_paths"] == ["bptt", "implicit", "ep"]
    assert res["model"]["backend"] == "numba" and res["model"]["tol_A"] == 1e-9
    rows = {(r["attack"], r["eps"]): r for r in res["rows"]}
    assert set(rows) == {("pgd-l2", 0.5), ("pgd-l2", 2.0), ("pgd-l2", 8.0), ("fgsm-l2", 0.5), ("fgsm-l2", 2.0),
                         ("square-l2", 0.5), ("square-l2", 2.0)}
    assert rows["pgd-l2", 8.0]["sanity_only"] and not rows["pgd-l2", 2.0]["sanity_only"]
    for r in res["rows"]:
        assert r["n"] == 12 and 0 <= r["robust_accuracy"] <= r["clean_accuracy"] == res["clean_accuracy"]
        assert r["sanity"]["converged"]["status"] == "pass"
        assert r["sanity"]["in_ball"]["status"] == "pass"
        assert r["sanity_ok"] == (not r["failed_checks"])
        assert len(r["robust_mask"]) == 12
    pgd_row = rows["pgd-l2", 0.5]
    assert set(pgd_row["by_path"]) == {"bptt", "implicit", "ep"}
    assert pgd_row["robust_accuracy"] <= min(pgd_row["by_path"].values())
    assert pgd_row["worst_path"] in pgd_row["by_path"]
    for name in ("monotone", "large_eps", "iterative_vs_single", "blackbox_vs_whitebox", "gradients",
                 "clean_settings"):
        assert name in pgd_row["sanity"]
    assert pgd_row["sanity"]["gradients"]["status"] == "pass"
    assert rows["square-l2", 2.0]["sanity"]["blackbox_vs_whitebox"]["status"] in ("pass", "FAIL")
    with open(out / "robustness.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(res["rows"])
    assert {"attack", "eps", "clean_accuracy", "robust_accuracy", "worst_path", "sanity_ok",
            "check_monotone", "check_large_eps"} <= set(table[0])
    assert "pgd-l2" in printed and "worst path" in printed


def test_full_test_set_reproduces_the_training_accuracy_and_corruptions(trained, tmp_path, capsys):
    ckpt, metrics = trained
    out = tmp_path / "c"
    status = cli(["--checkpoint", str(ckpt), "--attack", "corruptions", "--corruptions",
                  "gaussian_noise,contrast", "--severities", "1,5", "--test-subset", "all", "--out", str(out),
                  "--no-progress"])
    capsys.readouterr()
    assert status == 0
    res = json.loads((out / "robustness.json").read_text())
    assert res["n"] == 360 and res["clean_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-12)
    assert res["checks"]["clean_settings"]["status"] == "pass"
    assert "equals the training run" in res["checks"]["clean_settings"]["detail"]
    names = [(r["corruption"], r["severity"]) for r in res["rows"]]
    assert names == [("gaussian_noise", 1), ("gaussian_noise", 5), ("contrast", 1), ("contrast", 5),
                     ("mean", 1), ("mean", 5)]
    for r in res["rows"]:
        assert r["sanity"]["clean_settings"]["status"] == "pass"
        if r["corruption"] == "mean":
            assert r["sanity"]["severity_trend"]["status"] in ("pass", "n/a")
        else:
            assert r["sanity"]["converged"]["status"] == "pass"
            assert 0 <= r["robust_accuracy"] <= 1
    mean = {r["severity"]: r["robust_accuracy"] for r in res["rows"] if r["corruption"] == "mean"}
    assert mean[5] < mean[1] <= res["clean_accuracy"] + 0.05
