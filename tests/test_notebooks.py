"""The analysis notebooks run headless against the smoke-scale driver output.

``test_smoke_driver_and_notebooks`` runs ``analysis/run_all.py --scale smoke`` into a temporary
folder (training, attacks, corruptions, adversarial examples, SPICE and gradient fidelity:
a few minutes on 2 cores), executes every notebook with nbclient against it, and checks that
each figure was written and each table has rows, all within the 5-minute budget
(``EPSIM_NOTEBOOK_BUDGET_S`` overrides it). The other tests are fast checks of the driver.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANALYSIS = REPO / "analysis"
sys.path.insert(0, str(ANALYSIS))

BUDGET_S = float(os.environ.get("EPSIM_NOTEBOOK_BUDGET_S", "300"))


def _driver(*args, timeout=900):
    return subprocess.run([sys.executable, str(ANALYSIS / "run_all.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.timeout(1200)
def test_smoke_driver_and_notebooks(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import make_notebooks as mk

    t0 = time.perf_counter()
    out = tmp_path / "results"
    proc = _driver("--scale", "smoke", "--out", str(out))
    t_driver = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scale"] == "smoke"
    for name in manifest["plan"]:
        rec = manifest["steps"][name]
        assert rec["status"] in ("done", "skipped"), (name, rec)
        if rec["status"] == "done" and "wall_s" in rec:
            assert rec["command"].startswith("python ") and rec["wall_s"] >= 0
    for f in ("models.csv", "curves.csv", "corruptions.csv", "runs.csv", "fidelity.json", "manifest.json"):
        assert (out / "summary" / f).is_file(), f

    # resumable: a second run skips every step
    proc2 = _driver("--scale", "smoke", "--out", str(out), "--only", "train/")
    assert proc2.returncode == 0 and "done earlier, skipped" in proc2.stdout

    figs = tmp_path / "figures"
    monkeypatch.setenv("EPSIM_RESULTS", str(out))
    monkeypatch.setenv("EPSIM_FIGURES", str(figs))
    for name in mk.NOTEBOOKS:
        nb = mk.build(name)
        mk.execute(nb, timeout=300)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, (name, errors)
        for fig in mk.FIGURES[name]:
            path = figs / fig
            assert path.is_file() and path.stat().st_size > 2000, (name, fig)
        for table in mk.TABLES[name]:
            with open(figs / f"{table}.csv", newline="") as fh:
                rows = list(csv.reader(fh))
            assert len(rows) >= 2, (name, table)
            assert (figs / f"{table}.md").read_text().count("\n") >= 3, (name, table)
    summary = (figs / "summary_table.md").read_text()
    assert "circuit CNN" in summary and "python -m epsim.robustness" in summary
    total = time.perf_counter() - t0
    print(f"smoke driver {t_driver:.0f} s, driver + notebooks {total:.0f} s")
    assert total <= BUDGET_S, f"smoke driver + notebooks took {total:.0f} s (budget {BUDGET_S:.0f} s)"


def test_driver_dry_run_lists_every_scale(tmp_path):
    for scale in ("smoke", "cpu", "gpu"):
        proc = _driver("--scale", scale, "--out", str(tmp_path / scale), "--dry-run", timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "python -m epsim.train" in proc.stdout and "python -m epsim.robustness" in proc.stdout
        assert "$RESULTS/" in proc.stdout
        assert not (tmp_path / scale).exists()
    gpu = _driver("--scale", "gpu", "--out", str(tmp_path / "g"), "--dry-run", timeout=120).stdout
    assert "cifar10-paper" in gpu and "--dataset cifar10" in gpu and "--queries 1000 --n 1000" in gpu


def test_driver_user_errors_are_one_line(tmp_path):
    proc = _driver("--scale", "smoke", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path / "missing"),
                   timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "error:" in proc.stderr
    proc = _driver("--scale", "smoke", "--out", str(tmp_path / "y"), "--collect-only", timeout=120)
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr and proc.stderr.strip().count("\n") == 0
    proc = _driver("--scale", "smoke", "--out", str(tmp_path / "z"), "--seeds", "1", "1", "--dry-run", timeout=120)
    assert proc.returncode == 2 and "--seeds" in proc.stderr


def test_notebooks_on_disk_match_their_sources():
    """The committed .ipynb files hold the cells of analysis/make_notebooks.py (outputs may differ)."""
    nbformat = pytest.importorskip("nbformat")
    import make_notebooks as mk

    for name in mk.NOTEBOOKS:
        disk = nbformat.read(ANALYSIS / name, as_version=4)
        want = mk.build(name)
        assert [c.source for c in disk.cells] == [c.source for c in want.cells], name


def test_output_parsers():
    import run_all

    gdu = run_all.parse_gdu("EP-CNN channels [8, 16] on 4 digits images, beta=0.001, ...\n"
                            "layer         cosine   |EP|/|BPTT|\nconv1       0.999999      1.000010\n"
                            "fc          1.000000      0.999990\nmin cosine 0.999999: PASS (>= 0.99)\n")
    assert [r["layer"] for r in gdu["rows"]] == ["conv1", "fc"] and gdu["rows"][0]["cosine"] == 0.999999
    assert gdu["verdict"].startswith("min cosine")
    bench = run_all.parse_bench_spice(" size  elements  nodes  ngspice s    numba s    MNA s  ngspice/numba   agree V\n"
                                      "  1e3       801    135     0.0412    0.00010   0.0035           412x   3.1e-13\n")
    assert bench == [{"size": "1e3", "elements": 801, "nodes": 135, "ngspice_s": 0.0412, "numba_s": 0.0001,
                      "mna_s": 0.0035, "ratio": 412.0, "agree_V": 3.1e-13}]
