"""An interrupted robustness sweep resumes from OUT/sweep-progress.json to the results of an
uninterrupted one, and refuses a record that is not its own."""
import json

import pytest

from epsim.data import load_dataset
from epsim.robustness import journal as J
from epsim.robustness.cli import cli
from epsim.training import TrainConfig, train

from interrupt import Interrupted, stop_sweeps_after

pytestmark = pytest.mark.usefixtures("one_thread")

SWEEP = ["--attack", "pgd-l2,square-l2,advep-l2", "--eps", "0.5,2", "--test-subset", "12", "--steps", "4",
         "--queries", "20", "--loss", "ce,dlr-t", "--target-classes", "2", "--no-progress"]
VOLATILE = {"wall_s", "resumed_runs", "command"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits-mlp")
    ds = load_dataset("digits", train_subset=200, seed=0)
    train(TrainConfig(model="mlp", epochs=1, train_subset=200), ds, out, progress=False, log=lambda *a: None)
    return str(out / "checkpoint.pt")


def _stable(results):
    """The results without the wall times and the resume bookkeeping."""
    if isinstance(results, dict):
        return {k: _stable(v) for k, v in results.items() if k not in VOLATILE}
    if isinstance(results, list):
        return [_stable(v) for v in results]
    return results


def test_interrupted_sweep_resumes_to_the_uninterrupted_results(checkpoint, tmp_path, monkeypatch, capsys):
    assert cli(["--checkpoint", checkpoint, *SWEEP, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "robustness.json").read_text())
    assert not (tmp_path / "whole" / J.PROGRESS_NAME).exists()
    assert whole["resumed_runs"] == 0

    part = tmp_path / "part"
    computed = stop_sweeps_after(monkeypatch, 3)
    with pytest.raises(Interrupted):
        cli(["--checkpoint", checkpoint, *SWEEP, "--out", str(part)])
    monkeypatch.undo()
    record = json.loads((part / J.PROGRESS_NAME).read_text())
    assert sorted(record["units"]) == sorted(computed) and len(computed) == 3 and computed[0] == "gradient-probe"
    assert not (part / "robustness.json").exists()

    capsys.readouterr()
    assert cli(["--checkpoint", checkpoint, *SWEEP, "--out", str(part)]) == 2  # kept, not overwritten
    err = capsys.readouterr().err
    assert "--resume" in err and len(err.strip().splitlines()) == 1
    other = [a if a != "4" else "5" for a in SWEEP]  # --steps 5: another sweep
    assert cli(["--checkpoint", checkpoint, *other, "--out", str(part), "--resume"]) == 2
    assert "another checkpoint, image set or settings" in capsys.readouterr().err

    assert cli(["--checkpoint", checkpoint, *SWEEP, "--out", str(part), "--resume"]) == 0
    assert "resuming: 3 finished runs recorded" in capsys.readouterr().out  # the gradient probe and 2 attacks
    resumed = json.loads((part / "robustness.json").read_text())
    assert resumed["resumed_runs"] == 3
    assert not (part / J.PROGRESS_NAME).exists()
    assert _stable(resumed["rows"]) == _stable(whole["rows"])
    assert _stable(resumed["checks"]) == _stable(whole["checks"])
    assert {r["attack"] for r in resumed["rows"]} == {"pgd-l2", "square-l2", "advep-l2"}


def test_a_record_of_another_sweep_is_refused_and_a_broken_one_named(tmp_path):
    j = J.SweepJournal(tmp_path, "abc", resume=False)
    j.run("pgd|l2|0.5|ep|ce", [0, 1, 2], lambda: ([True, False, True], {"predictions": 3}, {"max_norm": 0.5}))
    again = J.SweepJournal(tmp_path, "abc", resume=True)
    robust, stats, geo = again.run("pgd|l2|0.5|ep|ce", [0, 1, 2], lambda: pytest.fail("recomputed"))
    assert robust.tolist() == [True, False, True] and stats == {"predictions": 3} and geo == {"max_norm": 0.5}
    assert again.reused == 1
    # the same unit on other images (a different clean prediction) is computed anew
    fresh = again.run("pgd|l2|0.5|ep|ce", [0, 2], lambda: ([False, False], {"predictions": 2}, {"max_norm": 0.4}))
    assert fresh[0].tolist() == [False, False] and again.reused == 1
    with pytest.raises(J.EpsimError, match="another checkpoint"):
        J.SweepJournal(tmp_path, "abd", resume=True)
    (tmp_path / J.PROGRESS_NAME).write_text("{not json")
    with pytest.raises(J.EpsimError, match="not a readable sweep record"):
        J.SweepJournal(tmp_path, "abc", resume=True)
