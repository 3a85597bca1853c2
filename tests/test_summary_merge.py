"""Completing a scale in parts: a new summary of some steps merged into the published one."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "analysis"))
PUBLISHED = REPO / "analysis" / "results" / "mnist"

from driver.manifest import UserError  # noqa: E402
from driver.merge import merge_summaries  # noqa: E402

STEP = "robust/vit-s0/l2"


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_rows(path, rows_):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows_[0]))
        w.writeheader()
        w.writerows(rows_)


@pytest.fixture
def part(tmp_path):
    """A summary of one robustness step and its model's training, as a later part would bring:
    the published rows of those steps with the robust accuracies changed."""
    new = tmp_path / "part"
    new.mkdir()
    m = json.loads((PUBLISHED / "manifest.json").read_text())
    keep = {STEP, "train/vit-s0"}
    (new / "manifest.json").write_text(json.dumps({**m, "steps": {k: v for k, v in m["steps"].items() if k in keep},
                                                   "git_head": "part", "updated": "later"}))
    write_rows(new / "models.csv", [r for r in rows(PUBLISHED / "models.csv") if r["step"] in keep])
    curves = [dict(r, robust_accuracy="0.123") for r in rows(PUBLISHED / "curves.csv") if r["step"] == STEP]
    write_rows(new / "curves.csv", curves)
    write_rows(new / "runs.csv", [dict(r, wall_s="1.0") for r in rows(PUBLISHED / "runs.csv") if r["step"] == STEP])
    return new


def test_a_part_replaces_its_steps_and_keeps_every_other_published_row(tmp_path, part):
    dest = tmp_path / "merged"
    merged = merge_summaries(PUBLISHED, part, dest)
    before, after = rows(PUBLISHED / "curves.csv"), rows(dest / "curves.csv")
    assert len(after) == len(before)
    assert {r["robust_accuracy"] for r in after if r["step"] == STEP} == {"0.123"}
    assert [r for r in after if r["step"] != STEP] == [r for r in before if r["step"] != STEP]
    assert rows(dest / "models.csv") and len(rows(dest / "models.csv")) == len(rows(PUBLISHED / "models.csv"))
    assert [r["wall_s"] for r in rows(dest / "runs.csv") if r["step"] == STEP] == ["1.0"]
    assert rows(dest / "corruptions.csv") == rows(PUBLISHED / "corruptions.csv")
    assert sorted(p.name for p in (dest / "adversarial").iterdir()) == sorted(
        p.name for p in (PUBLISHED / "adversarial").iterdir())
    assert merged["steps"].keys() == json.loads((PUBLISHED / "manifest.json").read_text())["steps"].keys()
    assert merged["merged_parts"][-1]["git_head"] == "part" and merged["merged_parts"][-1]["steps"] == sorted(
        {STEP, "train/vit-s0"})
    claims = rows(dest / "claims.csv")
    assert claims and (dest / "claims.md").read_text().strip()


def test_a_retrained_model_that_differs_is_refused(tmp_path, part):
    models = rows(part / "models.csv")
    write_rows(part / "models.csv", [dict(r, test_accuracy="0.5") for r in models])
    with pytest.raises(UserError, match="train/vit-s0"):
        merge_summaries(PUBLISHED, part, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_part_of_another_scale_is_refused(tmp_path, part):
    m = json.loads((part / "manifest.json").read_text())
    (part / "manifest.json").write_text(json.dumps({**m, "scale": "cpu"}))
    with pytest.raises(UserError, match="cpu summary into a mnist"):
        merge_summaries(PUBLISHED, part, tmp_path / "merged")


def test_merge_needs_publish_and_is_a_one_line_error(tmp_path):
    import subprocess
    r = subprocess.run([sys.executable, str(REPO / "analysis" / "run_all.py"), "--scale", "smoke", "--out",
                        str(tmp_path / "o"), "--merge"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --merge needs --publish DIR (the published summary to merge into)"]
    assert not (tmp_path / "o").exists()


def test_a_part_that_repeats_published_results_changes_no_claim(tmp_path, part):
    write_rows(part / "curves.csv", [r for r in rows(PUBLISHED / "curves.csv") if r["step"] == STEP])
    merge_summaries(PUBLISHED, part, tmp_path / "merged")
    assert rows(tmp_path / "merged" / "claims.csv") == rows(PUBLISHED / "claims.csv")


def test_a_retrained_model_within_the_tolerance_keeps_its_published_row_and_is_recorded(tmp_path, part):
    published = {r["step"]: r for r in rows(PUBLISHED / "models.csv")}["train/vit-s0"]
    models = rows(part / "models.csv")
    retrained_acc = f"{float(published['test_accuracy']) + 0.0005:.4f}"  # five test images more
    write_rows(part / "models.csv", [dict(r, test_accuracy=retrained_acc) for r in models])
    with pytest.raises(UserError, match="--retrain-tolerance"):
        merge_summaries(PUBLISHED, part, tmp_path / "refused", tolerance_points=0.04)
    merged = merge_summaries(PUBLISHED, part, tmp_path / "merged", tolerance_points=0.06)
    assert rows(tmp_path / "merged" / "models.csv") == rows(PUBLISHED / "models.csv")
    assert merged["steps"]["train/vit-s0"] == json.loads((PUBLISHED / "manifest.json").read_text())[
        "steps"]["train/vit-s0"]
    last = merged["merged_parts"][-1]
    assert last["steps"] == [STEP]
    assert last["retrained"] == [{"step": "train/vit-s0", "n_test": int(published["n_test"]),
                                  "published_test_accuracy": float(published["test_accuracy"]),
                                  "retrained_test_accuracy": float(retrained_acc), "evaluated_by": [STEP]}]
    assert {r["robust_accuracy"] for r in rows(tmp_path / "merged" / "curves.csv") if r["step"] == STEP} == {"0.123"}
    import common
    lines = common.retrained_lines(merged)
    line = [x for x in lines if x.startswith("**Retrained**: `train/vit-s0`")]
    assert len(line) == 1 and f"`{STEP}`" in line[0] and lines[-1] == ""


def test_the_tolerance_does_not_accept_another_test_set(tmp_path, part):
    write_rows(part / "models.csv", [dict(r, n_test="1000") for r in rows(part / "models.csv")])
    with pytest.raises(UserError, match="on 1000 now"):
        merge_summaries(PUBLISHED, part, tmp_path / "merged", tolerance_points=100)


@pytest.mark.parametrize("args, message", [
    (["--retrain-tolerance", "0.1"], "error: --retrain-tolerance needs --merge"),
    (["--publish", "P", "--merge", "--retrain-tolerance", "-1"],
     "error: --retrain-tolerance must be a number of percentage points >= 0"),
])
def test_retrain_tolerance_user_errors(tmp_path, args, message):
    import subprocess
    r = subprocess.run([sys.executable, str(REPO / "analysis" / "run_all.py"), "--scale", "smoke", "--out",
                        str(tmp_path / "o"), *args], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "o").exists()
