"""analysis/ep_budget.py: the EP-CNN's gradient at capped relaxation budgets against a long one."""
import json
import re

import pytest

from epsim.data import load_dataset
from epsim.training.software import resolve_config
from scripts import load_script

ep_budget = load_script("analysis/ep_budget.py")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from epsim.training.software import train_torch

    out = tmp_path_factory.mktemp("ep")
    cfg = resolve_config("ep-cnn", "digits", channels=(4, 6), epochs=1, batch_size=16, t1=30, t2=10)
    train_torch(cfg, load_dataset("digits", train_subset=64, test_subset=16), out, progress=False,
                log=lambda *a: None)
    return out / "checkpoint.pt"


@pytest.mark.parametrize("solver", ["sync", "async"])
def test_budget_rows_report_cosines_and_converged_fractions(checkpoint, solver, capsys):
    assert ep_budget.main(["--checkpoint", str(checkpoint), "--data-dir", str(checkpoint.parent), "--batch", "16",
                           "--solver", solver, "--budgets", "1:1", "300:150", "--reference", "300:150",
                           "--min-cosine", "0.999"]) == 0
    out = capsys.readouterr().out
    header = re.search(rf"\({solver}; (\d+)% of free, (\d+)% of nudged phases converged to 1e-06\)", out)
    assert header, out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if re.match(r"\d+:\d+ ", line)}
    # 6 parameters (2 conv + readout, weights and biases), the two converged fractions, the
    # samples used (all of them without --as-trained), the verdict and the mean sweeps
    assert len(rows["1:1"]) == 12 and len(rows["300:150"]) == 12
    assert rows["1:1"][10:] == ["1.0", "1.0"]
    assert 1 < float(rows["300:150"][10]) < 300 and 1 < float(rows["300:150"][11]) < 150
    # the reference budget against itself: the same gradient, the header's fractions
    assert all(c == "1.000" for c in rows["300:150"][:6])
    assert rows["300:150"][6:10] == [f"{header.group(1)}%", f"{header.group(2)}%", "100%", "pass"]
    # one step from the zero state moves the units: no free phase has converged
    assert rows["1:1"][6] == "0%" and rows["1:1"][8] == "100%"
    assert min(float(c) for c in rows["1:1"][:6]) < 0.999 and rows["1:1"][9] == "fail"


def test_as_trained_compares_the_update_training_applies(checkpoint, capsys):
    argv = ["--checkpoint", str(checkpoint), "--data-dir", str(checkpoint.parent), "--batch", "16", "--as-trained",
            "--tol", "1e-4", "--reference-tol", "1e-9", "--reference", "300:150"]
    assert ep_budget.main(argv + ["--solver", "async", "--budgets", "1:1", "300:150"]) == 0
    out = capsys.readouterr().out
    assert "on the samples each update uses" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if re.match(r"\d+:\d+ ", line)}
    # the odd/even solver keeps only samples whose three phases converged: none after one sweep
    assert rows["1:1"][8] == "0%" and rows["1:1"][9] == "fail"
    assert rows["300:150"][8] == "100%" and rows["300:150"][9] == "pass"
    # the synchronous loop keeps every sample, converged or not
    assert ep_budget.main(argv + ["--solver", "sync", "--budgets", "1:1"]) == 0
    row = next(line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.startswith("1:1 "))
    assert row[6] == "0%" and row[8] == "100%"


def test_omega_relaxes_every_phase_with_the_factor_given(checkpoint, capsys):
    """--omega replaces the checkpoint's relaxation factor in every phase. On this weakly coupled
    digits network plain sweeps converge fast and over-relaxation overshoots: it costs sweeps
    here (it saves them on strongly coupled ones, tests/test_ep_cnn.py)."""
    argv = ["--checkpoint", str(checkpoint), "--data-dir", str(checkpoint.parent), "--batch", "16", "--solver", "async",
            "--budgets", "300:150", "--reference", "300:150", "--tol", "1e-9"]
    sweeps = {}
    for omega in ("1", "1.4"):
        assert ep_budget.main(argv + ["--omega", omega]) == 0
        out = capsys.readouterr().out
        assert ("omega 1.4;" in out) == (omega == "1.4")
        row = next(line.split()[1:] for line in out.splitlines() if line.startswith("300:150 "))
        assert row[6:10] == ["100%", "100%", "100%", "pass"]
        sweeps[omega] = float(row[10]) + 2 * float(row[11])
    assert sweeps["1.4"] != sweeps["1"]


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    for argv in (["--batch", "0"], ["--beta", "0"], ["--tol", "-1"], ["--min-cosine", "2"], ["--omega", "2.5"],
                 ["--omega", "1.4", "--solver", "sync"],
                 ["--out", str(tmp_path / "missing" / "b.json")], ["--out", str(tmp_path)]):
        assert ep_budget.main(["--checkpoint", str(tmp_path / "none.pt"), "--data-dir", str(tmp_path)] + argv) == 2
        err = capsys.readouterr().err.strip()
        # the option named, before the (missing) checkpoint is read
        assert err.startswith("error: ") and "\n" not in err and argv[0] in err, err


def test_the_reference_can_stop_tighter_than_the_budgets(checkpoint, capsys, tmp_path):
    assert ep_budget.main(["--checkpoint", str(checkpoint), "--data-dir", str(checkpoint.parent), "--batch", "8",
                           "--budgets", "300:150", "--reference", "300:150", "--tol", "0.5",
                           "--reference-tol", "1e-9", "--out", str(tmp_path / "budget.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "budget.json").read_text())
    assert report["reference"]["tol"] == 1e-9 and len(report["budgets"]) == 1
    # the file holds the printed row
    b = report["budgets"][0]
    printed = next(line.split()[1:] for line in out.splitlines() if line.startswith("300:150 "))
    assert [f"{c:.3f}" for c in b["cosine"].values()] == printed[:6]
    assert b["passes"] == (printed[9] == "pass")
    assert "converged to 1e-09); budgets stop at 0.5 (nudged phases 0.5);" in out
    assert report["nudge_tol"] == 0.5             # without --nudge-tol, the nudged phases stop at --tol
    row = next(line.split()[1:] for line in out.splitlines() if line.startswith("300:150 "))
    # a stop at 0.5 leaves the phases after a sweep or two: not the reference's gradient
    assert min(float(c) for c in row[:6]) < 0.999
