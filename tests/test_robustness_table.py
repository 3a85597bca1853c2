"""analysis/robustness_table.py reads the rows of robustness.json files into one table."""
import json

import pytest

from scripts import load_script

robustness_table = load_script("analysis/robustness_table.py")


def _run(tmp_path, name, rows, failed=()):
    d = tmp_path / name
    d.mkdir()
    (d / "robustness.json").write_text(json.dumps({"n": 500, "clean_accuracy": 0.8, "failed_checks": list(failed),
                                                   "rows": rows}))
    return str(d)


def test_cells_come_from_matching_rows_with_their_checks(tmp_path):
    l2 = _run(tmp_path, "l2", [
        {"attack": "pgd-l2", "eps": 0.5, "robust_accuracy": 0.25, "failed_checks": []},
        {"attack": "pgd-l2", "eps": 55.4, "robust_accuracy": 0.0, "sanity_only": True, "failed_checks": []}])
    linf = _run(tmp_path, "linf", [{"attack": "pgd-linf", "eps": 8 / 255, "robust_accuracy": 0.1,
                                    "failed_checks": ["monotone"]}], failed=["converged"])
    corr = _run(tmp_path, "c", [{"attack": "corruptions", "corruption": "mean", "severity": 5,
                                 "robust_accuracy": 0.6, "failed_checks": []},
                                {"attack": "corruptions", "corruption": "fog", "severity": 5,
                                 "robust_accuracy": 0.1, "failed_checks": []}])
    models = {"m": robustness_table._load([l2, linf, corr])}
    text = robustness_table.table(models, ["pgd-l2@0.5", "pgd-linf@8/255", "corruptions@5", "square-l2@0.5"])
    row = text.splitlines()[-1]
    assert row == "| m | 500 | 80.0 | 25.0 ✓ | 10.0 ✗ converged, monotone | 60.0 ✓ | – |"


def test_bad_spec_is_a_one_line_error(tmp_path, capsys):
    assert robustness_table.main(["no-equals-sign"]) == 2
    with pytest.raises(SystemExit, match="does not exist"):
        robustness_table.main([f"m={tmp_path / 'missing'}"])
