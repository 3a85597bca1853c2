"""analysis/plotting: every figure and table function runs on a results folder and writes its file.

The results are the committed cpu summary (``analysis/results/cpu``) with, added in a temporary
copy, certificate rows for the circuit CNN and one synthetic energy run with voltage traces, so
that every branch that draws something is taken; the energy functions also run on the committed
summary alone (no energy runs: placeholder figures and "not run" tables).
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
sys.path.insert(0, str(ANALYSIS))

import plotting as P  # noqa: E402


def _add_certificates(results: Path):
    """Certified rows for the circuit CNN: its PGD-L∞ rows at a lower accuracy."""
    with open(results / "curves.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        columns, rows = reader.fieldnames, list(reader)
    cert = []
    for r in rows:
        if r["model"] == "circuit-cnn" and r["attack"] == "pgd-linf" and r["family_attack"] == "pgd" \
                and r["sanity_only"] != "True":
            cert.append({**r, "attack": "certify-linf", "family_attack": "certify", "group": "linf",
                         "robust_accuracy": str(0.5 * float(r["robust_accuracy"])),
                         "certified_accuracy": str(0.5 * float(r["robust_accuracy"])),
                         "min_certified_margin_V": "0.01"})
    assert cert
    columns += [c for c in ("certified_accuracy", "min_certified_margin_V") if c not in columns]
    with open(results / "curves.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(rows + cert)


def _add_energy_run(results: Path):
    """One energy record of the circuit CNN with an attacked early readout and a traced image."""
    d = results / "energy"
    d.mkdir(exist_ok=True)
    settle = 2.8e-8
    stats = {"median": settle, "p95": 3.1e-8, "mean": settle}
    times = [f * settle for f in (0.1, 0.5, 1, 2)]
    attack = [{"time_s": t, "norm": "l2", "eps": 0.5, "n": 10, "clean_accuracy": 0.9, "robust_accuracy": 0.5,
               "sanity_ok": True, "failed_checks": []} for t in times]
    attack.append({"time_s": None, "norm": "l2", "eps": 0.5, "n": 10, "clean_accuracy": 0.9,
                   "robust_accuracy": 0.6, "sanity_ok": False, "failed_checks": ["monotone"]})
    summary = {"n": 20, "unsettled": 0, "accuracy_dc": 0.95, "settle_time_s": stats,
               "decision_time_s": {"median": 3e-11, "p95": 1e-10, "mean": 5e-11},
               "energy_per_inference_J": {"median": 5e-9, "p95": 6e-9, "mean": 5e-9},
               "static_power_W": {"median": 0.18, "p95": 0.2, "mean": 0.18}, "macs_per_inference": 16128,
               "digital_energy_per_inference_J_estimate": {"fp32_45nm": 7.4e-8, "int8_45nm": 3.7e-9},
               "training_step": {"energy_J_per_image": {"median": 2e-8, "p95": 2.5e-8}},
               "early_readout": [{"time_s": t, "accuracy": 0.9} for t in times], "early_readout_attack": attack}
    settings = {"diode": "ideal", "input_gain_V": 16.0, "dataset": "digits", "t_stop_s": 1e-6,
                "cell_capacitance_F": 1e-16, "node_capacitance_F": 1e-14}
    t = np.linspace(0, 1e-7, 200)
    rise = 1 - np.exp(-t / 1e-8)
    np.savez_compressed(d / "circuit-cnn-s0_traces.npz", t_s=t, labels=np.array([3]),
                        v_out=(rise[:, None, None] * np.linspace(-1, 1, 10)[None, None, :]),
                        layer1=(rise[:, None, None] * np.ones((1, 1, 3))),
                        layer2=(rise[:, None, None] * np.ones((1, 1, 10))),
                        settle_time_s=np.array([settle]), decision_time_s=np.array([3e-11]))
    (d / "circuit-cnn-s0.json").write_text(json.dumps(
        {"model": "circuit-cnn", "family": "circuit", "seed": 0, "step": "energy/circuit-cnn-s0",
         "command": "python -m epsim.energy --checkpoint X --out Y", "settings": settings, "summary": summary,
         "attack_steps": 3, "traces": "circuit-cnn-s0_traces.npz"}))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    r = tmp_path_factory.mktemp("results")
    shutil.copytree(ANALYSIS / "results" / "cpu", r, dirs_exist_ok=True)
    shutil.rmtree(r / "energy", ignore_errors=True)
    _add_certificates(r)
    _add_energy_run(r)
    return r


def test_every_notebook_figure_and_table_has_a_function():
    import make_notebooks as mk

    figures = set(P.FIGURE_FUNCTIONS.values())
    tables = set(P.TABLE_FUNCTIONS.values())
    assert figures == {f for names in mk.FIGURES.values() for f in names}
    assert {t for names in mk.TABLES.values() for t in names} <= tables
    for f in [*P.FIGURE_FUNCTIONS, *P.TABLE_FUNCTIONS]:
        assert f.__doc__ and f.__name__ in P.__all__, f
    assert P.energy_overview.__doc__


@pytest.mark.parametrize("fn", list(P.FIGURE_FUNCTIONS), ids=lambda f: f.__name__)
def test_figure_function_writes_its_png(fn, results, tmp_path, monkeypatch):
    monkeypatch.setenv("EPSIM_FIGURES", str(tmp_path / "elsewhere"))  # `out` wins over the environment
    out = tmp_path / "figs"
    path = fn(results, out)
    assert path == out / P.FIGURE_FUNCTIONS[fn]
    assert path.is_file() and path.stat().st_size > 2000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("fn", list(P.TABLE_FUNCTIONS), ids=lambda f: f.__name__)
def test_table_function_writes_its_table(fn, results, tmp_path):
    name = P.TABLE_FUNCTIONS[fn]
    text = fn(results, tmp_path)
    assert isinstance(text, str) and text
    md = (tmp_path / f"{name}.md").read_text()
    assert md.count("\n") >= 3
    if name != "all_numbers":  # which shows only the numbers with a failed check
        assert md.strip() == text.strip()
    if name != "summary_table":  # the headline block is Markdown only
        with open(tmp_path / f"{name}.csv", newline="") as fh:
            assert len(list(csv.reader(fh))) >= 2


def test_synthetic_branches_are_drawn(results, tmp_path, capsys):
    assert "certify-linf" in P.curves_table(results, tmp_path)
    latency = P.latency_table(results, tmp_path)
    assert "circuit CNN" in latency and "0.600 (PGD-L2 ε=0.5, n=10)" in latency
    readout = P.early_readout_table(results, tmp_path)
    assert "settled" in readout and "FAILED: monotone" in readout
    P.energy_early_readout(results, tmp_path)
    assert "the settled circuit's attack failed a sanity check" in capsys.readouterr().out
    assert P.energy_overview(results) is None
    assert "energy/circuit-cnn-s0: circuit CNN (numba), ideal diodes" in capsys.readouterr().out


def test_energy_functions_without_energy_runs(tmp_path):
    """The committed summary predates the energy steps: placeholder figures, "not run" tables."""
    committed = ANALYSIS / "results" / "cpu"
    if (committed / "energy").is_dir():
        pytest.skip("the committed results hold energy runs")
    assert "not run" in P.energy_overview(committed)
    for fn in (P.energy_traces, P.energy_early_readout, P.energy_per_inference):
        assert fn(committed, tmp_path).stat().st_size > 2000
    for fn in (P.latency_table, P.early_readout_table):
        assert "not run" in fn(committed, tmp_path)


def test_curves_count_each_seed_once_beside_square_and_seed_protocol_runs():
    """On the MNIST results a Square run and a seed-protocol run each repeat PGD on a subset of the
    sweep's images: the curves take the PGD sweep's rows only, one per seed and ε."""
    import common as C

    results = ANALYSIS / "results" / "mnist"
    if not (results / "curves.csv").is_file():
        pytest.skip("no MNIST-scale results")
    curves = C.read_csv("curves.csv", results)
    pgd, _, _ = P.curves.attack_rows(results)
    companions = [r for r in curves if r["attack"] == "pgd-l2" and r["group"] in ("square-l2", "advep-l2")]
    assert companions and not any(C.companion_pgd(r) for r in pgd)
    seeds = {r["seed"] for r in curves if r["model"] == "circuit-drn1h" and r["group"] == "l2"}
    points = C.curve(pgd, "circuit-drn1h", "pgd-l2")
    assert len(seeds) == 3 and points and all(p["seeds"] == 3 for p in points)
    assert {p["n"] for p in points} == {r["n"] for r in curves if r["model"] == "circuit-drn1h" and r["group"] == "l2"}
