"""The analysis notebooks run headless against the smoke-scale driver output.

``test_smoke_driver_and_notebooks`` runs ``analysis/run_all.py --scale smoke`` into a temporary
folder (training, attacks, corruptions, adversarial examples, SPICE and gradient fidelity:
a few minutes on 2 cores), executes every notebook with nbclient against it, and checks that
each figure was written and each table has rows; it prints how long that took (a timing, not a
pass/fail criterion: the machine may be shared). The other tests are fast checks of the driver.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from epsim.errors import EpsimError

REPO = Path(__file__).resolve().parents[1]
ANALYSIS = REPO / "analysis"
sys.path.insert(0, str(ANALYSIS))


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
    # certificates: circuit models only, beside the PGD curves of the same norm, checked against them
    with open(out / "summary" / "curves.csv", newline="") as fh:
        curves = list(csv.DictReader(fh))
    cert = [r for r in curves if r["family_attack"] == "certify"]
    assert {r["attack"] for r in cert} == {"certify-l2", "certify-linf"}
    assert {r["family"] for r in cert} == {"circuit"}
    for r in cert:
        assert r["certified_accuracy"] == r["robust_accuracy"] and r["sanity_ok"] == "True", r
        assert "certified_le_clean=pass" in r["checks"] and f"certified_le_pgd-{r['norm']}=pass" in r["checks"], r
        pgd = [p for p in curves if p["attack"] == f"pgd-{r['norm']}" and p["model"] == r["model"]
               and abs(float(p["eps"]) - float(r["eps"])) < 1e-9 and p["n"] == r["n"]]
        assert pgd and all("certified_le_robust=pass" in p["checks"] for p in pgd), r
        assert all(float(r["robust_accuracy"]) <= float(p["robust_accuracy"]) for p in pgd), r

    # the seed's protocol beside the harness's PGD: every model, both norms, checked against it
    advep = [r for r in curves if r["attack"].startswith("advep-")]
    assert {(r["model"], r["norm"]) for r in advep} == {(m, n) for m in ("circuit-cnn", "bp-cnn") for n in ("l2", "linf")}
    assert all("advep_ge_harness=pass" in r["checks"] and r["sanity_ok"] == "True" for r in advep), advep
    # its final iterates judged again clipped to [0, 1], reported beside
    assert all(0 <= float(r["in_domain_robust_accuracy"]) <= float(r["clean_accuracy"]) for r in advep), advep
    assert all(r["harness_robust_accuracy"] != "" for r in advep), advep

    # energy and latency: one run per circuit model (first seed), its summary and first image's traces
    energy = json.loads((out / "summary" / "energy" / "circuit-cnn-s0.json").read_text())
    assert energy["step"] == "energy/circuit-cnn-s0" and energy["command"].startswith("python -m epsim.energy")
    assert energy["summary"]["n"] == 20 and energy["summary"]["training_step"]["energy_J_per_image"]["median"] > 0
    attack = energy["summary"]["early_readout_attack"]
    assert [r["time_s"] is None for r in attack][0] and len(attack) == 1 + len(energy["summary"]["early_readout"])
    assert {(r["norm"], r["eps"], r["n"]) for r in attack} == {("l2", 0.5, 10)} and energy["attack_steps"] == 3
    assert not list((out / "summary" / "energy").glob("bp-cnn*"))
    with np.load(out / "summary" / "energy" / energy["traces"]) as tr:
        assert tr["v_out"].shape[1] == 1 and tr["layer1"].shape == (len(tr["t_s"]), 1, 3)
        assert tr["t_s"][0] == 0 and np.isfinite(tr["settle_time_s"]).all()
    with open(out / "summary" / "energy.csv", newline="") as fh:
        assert [r["model"] for r in csv.DictReader(fh)] == ["circuit-cnn"]

    # the seed's claims: the circuit CNN against the BP-CNN on every headline column both have
    with open(out / "summary" / "claims.csv", newline="") as fh:
        claims = list(csv.DictReader(fh))
    white = [r for r in claims if r["claim"].endswith("(white box)") and r["model"] == "circuit CNN (numba)"]
    assert white and all(r["baseline"] == "BP-CNN" and r["verdict"] != "not measured" for r in white), claims
    assert {r["measure"] for r in white} >= {"pgd-l2 ε=0.5", "pgd-linf ε=0.1"}
    for r in white:
        assert float(r["delta_points"]) == pytest.approx(float(r["model_pct"]) - float(r["baseline_pct"]))
    assert [r["verdict"] for r in claims if r["claim"] == "EP more robust than ViT"] == ["not measured"]
    assert "| EP more robust than BP-CNN (white box) | circuit CNN (numba) | BP-CNN |" in \
        (out / "summary" / "claims.md").read_text()

    # publishing rewrites the scale's own headline block of a README and keeps another scale's
    from driver.publish import headline_markers, publish

    readme = tmp_path / "README.md"
    cpu_block = "{}\ncpu numbers\n{}".format(*headline_markers("cpu"))
    readme.write_text("# results\n{}\n{}\nold smoke numbers\n{}\n".format(cpu_block, *headline_markers("smoke")))
    publish(out / "summary", tmp_path / "published", readme=readme, log=lambda *_: None)
    text = readme.read_text()
    assert cpu_block in text and "old smoke numbers" not in text and "Scale **smoke**" in text, text
    assert "| circuit CNN (numba) |" in text and (tmp_path / "published" / "curves.csv").is_file()

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
    latency = (figs / "energy_latency.md").read_text()
    assert "circuit CNN" in latency and "not run" not in latency, latency
    assert "settled" in (figs / "energy_early_readout.md").read_text()
    summary = (figs / "summary_table.md").read_text()
    assert "circuit CNN" in summary and "python -m epsim.robustness" in summary
    assert "certified l2 ε=0.5" in summary and "certified linf ε=0.1" in summary
    certified = (figs / "certified_summary.md").read_text()
    bp = next(line for line in certified.splitlines() if line.startswith("| BP-CNN"))
    circ = next(line for line in certified.splitlines() if line.startswith("| circuit CNN"))
    assert "—" in bp and "not run" not in circ and "—" not in circ, certified
    total = time.perf_counter() - t0
    print(f"smoke driver {t_driver:.0f} s, driver + notebooks {total:.0f} s")


def test_driver_dry_run_lists_every_scale(tmp_path):
    for scale in ("smoke", "cpu", "mnist", "gpu"):
        proc = _driver("--scale", scale, "--out", str(tmp_path / scale), "--dry-run", timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "python -m epsim.train" in proc.stdout and "python -m epsim.robustness" in proc.stdout
        assert "$RESULTS/" in proc.stdout
        assert not (tmp_path / scale).exists()
    gpu = _driver("--scale", "gpu", "--out", str(tmp_path / "g"), "--dry-run", timeout=120).stdout
    assert "cifar10-paper" in gpu and "--dataset cifar10" in gpu and "--queries 1000 --test-subset 1000" in gpu
    mnist = _driver("--scale", "mnist", "--out", str(tmp_path / "m"), "--dry-run", timeout=120).stdout
    assert "--model drn-1h" in mnist and "--model cnn-deep" in mnist and "--dataset mnist" in mnist
    for model in ("circuit-drn1h", "circuit-cnn-deep", "ep-cnn", "bp-cnn", "adv-cnn", "vit"):
        # the seed's protocol beside the harness's PGD, same images and ε, for every model
        assert f"robust/{model}-s0/advep-l2" in mnist and f"robust/{model}-s0/advep-linf" in mnist
    assert "--attack advep-l2,pgd-l2 --eps 1,2,3" in mnist and "--unroll 29 --test-subset 1000" in mnist


def test_headline_columns_and_attacked_subset_per_scale(tmp_path):
    """A results folder's headline columns are its scale's (mnist names its own; the others use
    ``HEADLINE``), the table's note names the models attacked on fewer images, and a partial run
    says which steps have not run."""
    import common
    from driver.scales import PLANS

    for scale, want in (("cpu", common.HEADLINE), ("mnist", PLANS["mnist"]["headline"])):
        (tmp_path / scale).mkdir()
        (tmp_path / scale / "manifest.json").write_text(json.dumps({"scale": scale}))
        assert common.headline_keys(tmp_path / scale) == tuple(want)
    assert ("pgd-l2", 2.0) in common.headline_keys(tmp_path / "mnist")
    man = {"plan": ["train/a", "train/b", "robust/a/l2", "robust/a/linf", "energy/a"],
           "steps": {"train/a": {"status": "done"}, "train/b": {"status": "skipped"}, "robust/a/l2": {"status": "failed"}}}
    assert common.progress_lines(man) == ["**Partial run**: 2 of 5 steps done; not run yet: `robust/a/…` (2 steps), "
                                          "`energy/a`.", ""]
    one_left = {**man, "steps": {**man["steps"], "robust/a/linf": {"status": "done"}, "energy/a": {"status": "done"}}}
    assert common.progress_lines(one_left) == ["**Partial run**: 4 of 5 steps done; not run yet: `robust/a/l2`.", ""]
    assert common.code_version_text(man) == "git commit not recorded"
    man["steps"]["train/a"]["git_head"] = "0123456789abcdef"
    assert common.code_version_text(man) == "git 0123456789"
    man["steps"]["robust/a/l2"].update(status="done", git_head="fedcba9876543210")
    assert common.code_version_text(man) == "steps run from git 0123456789, fedcba9876"
    for n in man["plan"][2:]:
        man["steps"][n] = {"status": "done"}
    assert common.progress_lines(man) == []
    rows = [{"label": "DRN-1H", "n": "1000"}, {"label": "deep CNN", "n": "200"}, {"label": "BP-CNN", "n": "1000"}]
    assert common.attacked_subset_text(rows) == ("Attacked subset: n = 1000 test images (the same seeded subset for "
                                                 "every model; deep CNN: the first 200 of them).")
    assert common.attacked_subset_text(rows[:1]).startswith("Attacked subset: n = 1000 test images (the same")
    assert common.attacked_subset_text([{"label": "x"}]) == "Attacked subset: none yet."


def test_claim_verdicts_weigh_the_difference_against_its_uncertainty():
    import claims

    # one seed each: binomial 95 % half-widths on the images, combined in quadrature
    hw = claims._half_width((0.5, None, 1), 100)
    assert hw == pytest.approx(1.96 * 0.05)
    assert claims._half_width((0.5, 0.03, 3), 100) == 0.03  # several seeds: their t-interval
    assert claims._half_width((0.0, None, 1), 100) > 0  # an accuracy of 0 is not exact either
    both = (2 * hw * hw) ** 0.5
    assert claims.verdict(0.5 * both, both).startswith("within noise")
    assert claims.verdict(1.1 * both, both).startswith("higher") and claims.verdict(-1.1 * both, both).startswith("lower")
    assert claims.verdict(0.2, None) == "no uncertainty"


def test_claims_command_on_the_committed_summary(tmp_path):
    """``python analysis/claims.py RESULTS`` rewrites the claims files of a summary; a folder without
    results is a one-line error."""
    committed = ANALYSIS / "results" / "cpu"
    shutil.copytree(committed, tmp_path / "cpu")
    (tmp_path / "cpu" / "claims.md").unlink()
    proc = subprocess.run([sys.executable, str(ANALYSIS / "claims.py"), str(tmp_path / "cpu")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cpu" / "claims.md").read_text() == (committed / "claims.md").read_text()
    bad = subprocess.run([sys.executable, str(ANALYSIS / "claims.py"), str(tmp_path / "none")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no results in") and bad.stderr.count("\n") == 1


def test_white_box_runs_of_one_model_on_fewer_images(tmp_path):
    """``n_by_model`` (mnist: the four-conv circuit CNN and the EP-CNN) sets the images of that
    model's white-box runs (PGD sweeps, their certificates, the seed's protocol), Square's own
    ``n_by_model`` its Square runs'; its corruption runs and every other model's runs keep the
    plan's counts."""
    import run_all

    plan = run_all.PLANS["mnist"]
    a = plan["attack"]
    steps = run_all.build_plan("mnist", plan["seeds"], None, tmp_path)
    seen = set()
    for s in (s for s in steps if s.kind == "robustness"):
        n = s.argv[s.argv.index("--test-subset") + 1]
        group = s.meta["group"]
        if group.startswith("square-"):
            want = a["square"].get("n_by_model", {}).get(s.meta["model"], a["square"]["n"])
        elif group == "corruptions":
            want = a["n"]
        else:
            want = a["n_by_model"].get(s.meta["model"], a["n"])
        assert n == want, (s.name, n)
        seen.add((s.meta["model"], n))
    assert ("circuit-cnn-deep", "200") in seen and ("circuit-cnn-deep", "1000") in seen and ("ep-cnn", "100") in seen
    assert ("circuit-drn1h", "1000") in seen and a["n"] == "1000"
    # the differential circuit is not monotone: no certificate, as for software models
    cnn2 = [s for s in steps if s.kind == "robustness" and s.meta["model"] == "circuit-cnn2"]
    assert cnn2 and not any("certify" in " ".join(s.argv) for s in cnn2)
    assert any("certify-l2" in " ".join(s.argv) for s in steps if s.meta.get("model") == "circuit-drn1h")


def test_certificates_for_circuit_models_only(tmp_path):
    """Every scale's plan: the PGD groups of monotone circuit models also run certify-* at the same ε
    (certify-l2 at the ε <= 1 of the sweep, on the same images, in a run of its own where the
    sweep goes beyond 1); software models and circuits with differential layers are never asked
    for a certificate."""
    import run_all

    for scale in run_all.SCALES:
        steps = run_all.build_plan(scale, run_all.PLANS[scale]["seeds"], None, tmp_path)
        robust = [s for s in steps if s.kind == "robustness"]
        for s in robust:
            attacks = s.argv[s.argv.index("--attack") + 1].split(",")
            certs = [a for a in attacks if a.startswith("certify-")]
            if not run_all.certifiable(run_all.PLANS[scale]["models"][s.meta["model"]]):
                assert not certs, (scale, s.name, attacks)
                continue
            group = s.meta["group"]
            if group.startswith("certify-"):
                assert attacks == [group], (scale, s.name, attacks)
            elif group not in ("l2", "linf"):
                assert not certs, (scale, s.name, attacks)
            assert certs in ([], [f"certify-{group.split('-')[-1]}"]), (scale, s.name, attacks)
            if "certify-l2" in certs:  # the harness refuses certify-l2 at ε > 1
                assert all(v <= 1 for _, v in run_all.parse_eps(s.argv[s.argv.index("--eps") + 1])), (scale, s.name)
        for model, spec in run_all.PLANS[scale]["models"].items():
            if not run_all.certifiable(spec):
                continue
            seed = run_all.PLANS[scale]["seeds"][0]
            by_group = {s.meta["group"]: s for s in robust if s.meta["model"] == model and s.meta["seed"] == seed}
            for norm in ("l2", "linf"):
                pgd = by_group[norm]
                in_run = f"certify-{norm}" in pgd.argv[pgd.argv.index("--attack") + 1]
                cert = pgd if in_run else by_group[f"certify-{norm}"]
                sweep = run_all.parse_eps(pgd.argv[pgd.argv.index("--eps") + 1])
                certified = run_all.parse_eps(cert.argv[cert.argv.index("--eps") + 1])
                want = [v for _, v in sweep if norm == "linf" or v <= 1]
                assert [v for _, v in certified] == pytest.approx(want), (scale, model, norm)
                assert cert.argv[cert.argv.index("--test-subset") + 1] == pgd.argv[pgd.argv.index("--test-subset") + 1]
        # the other models' commands are the plan's attacks, unchanged
        for s in robust:
            if not run_all.certifiable(run_all.PLANS[scale]["models"][s.meta["model"]]) and s.meta["group"] in ("l2", "linf"):
                norm = s.meta["group"]
                sq = run_all.PLANS[scale]["attack"].get("square")
                assert s.argv[s.argv.index("--attack") + 1] == (f"pgd-{norm}" if sq else f"pgd-{norm},square-{norm}")


def test_robustness_step_reruns_when_its_results_lack_an_attack(tmp_path):
    """An older results folder (no certify-* in the circuit runs) reruns those steps, not skips them."""
    import run_all

    steps = run_all.build_plan("smoke", (0,), None, tmp_path)
    step = next(s for s in steps if s.name == "robust/circuit-cnn-s0/linf")
    # an interrupted sweep continues from its record
    assert step.resume_if == "robustness/circuit-cnn-s0/linf/sweep-progress.json"
    for rel in step.outputs:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / step.outputs[1]).write_text("")
    (tmp_path / step.outputs[0]).write_text(json.dumps({"config": {"attacks": ["pgd-linf", "square-linf"]}}))
    assert not run_all.step_done(step, tmp_path)
    (tmp_path / step.outputs[0]).write_text(json.dumps({"config": {"attacks": ["certify-linf", "pgd-linf",
                                                                               "square-linf"]}}))
    assert run_all.step_done(step, tmp_path)


def test_two_drivers_in_one_folder_keep_each_others_step_records(tmp_path):
    """Two run_all processes on disjoint --only sets: each writes back only its own steps'
    records, so neither erases what the other recorded meanwhile, nor the steps of the other's
    plan."""
    from driver.manifest import load_manifest, save_manifest

    first = {"scale": "smoke", "steps": {"train/a": {"status": "done", "wall_s": 1.0}}}
    save_manifest(tmp_path, first, {"train/a"})
    second = {"scale": "smoke", "steps": {"train/a": {"status": "failed"}, "train/b": {"status": "done"}}}
    save_manifest(tmp_path, second, {"train/b"})  # its stale copy of train/a is not written back
    first["steps"]["robust/a"] = {"status": "done"}
    save_manifest(tmp_path, first, {"train/a", "robust/a"})
    steps = load_manifest(tmp_path)["steps"]
    assert steps == {"train/a": {"status": "done", "wall_s": 1.0}, "train/b": {"status": "done"},
                     "robust/a": {"status": "done"}}
    # a process started from older code knows fewer steps: the plan keeps the newer one's too
    save_manifest(tmp_path, {"scale": "smoke", "plan": ["train/a", "train/b", "train/c"], "steps": {},
                             "what": "a, b and c"}, set())
    save_manifest(tmp_path, {"scale": "smoke", "plan": ["train/a", "train/b"], "steps": {}, "what": "a and b"}, set())
    assert load_manifest(tmp_path)["plan"] == ["train/a", "train/b", "train/c"]
    assert load_manifest(tmp_path)["what"] == "a, b and c"
    save_manifest(tmp_path, {"scale": "smoke", "steps": {}})  # no owner set: the manifest as given
    assert load_manifest(tmp_path)["steps"] == {}
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.timeout(600)
def test_notebooks_without_certificates(tmp_path, monkeypatch):
    """The committed cpu results predate certify-*: notebooks 01 and 05 run on them, draw no
    certified curve, and say "not run" (circuits) / "—" (software) in the certified column."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import make_notebooks as mk

    results = ANALYSIS / "results" / "cpu"
    with open(results / "curves.csv", newline="") as fh:
        if any(r["family_attack"] == "certify" for r in csv.DictReader(fh)):
            pytest.skip("the committed results hold certificates")
    figs = tmp_path / "figures"
    monkeypatch.setenv("EPSIM_RESULTS", str(results))
    monkeypatch.setenv("EPSIM_FIGURES", str(figs))
    for name in ("01_robustness_curves.ipynb", "05_summary_table.ipynb"):
        nb = mk.build(name)
        mk.execute(nb, timeout=300)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, (name, errors)
        for fig in mk.FIGURES[name]:
            assert (figs / fig).is_file(), (name, fig)
    certified = (figs / "certified_summary.md").read_text()
    assert "not run" in next(line for line in certified.splitlines() if line.startswith("| circuit CNN"))
    assert "—" in next(line for line in certified.splitlines() if line.startswith("| BP-CNN"))
    assert "certified" not in (figs / "summary_table.md").read_text().split("Commands")[0]


def test_energy_steps_for_circuit_models(tmp_path):
    """Every scale: one ``energy/<model>-s<seed>`` step per circuit model (first seed only), on its
    checkpoint, at the scale's image count, attacking the early readout with PGD-L2 at the L2
    headline ε (which is in the scale's L2 sweep); software models get none."""
    import common
    import run_all

    want = {"smoke": ("20", "10", "3"), "cpu": ("360", "100", "20"), "mnist": ("200", "100", "20"),
            "gpu": ("1000", "100", "20")}
    # the amplified deep CNN's early readout costs a transient per prediction: a smaller attack
    want_by_model = {("mnist", "circuit-cnn-deep"): ("200", "20", "10"), ("mnist", "circuit-cnn2"): ("200", "20", "10")}
    headline_l2 = next(e for a, e in common.HEADLINE if a == "pgd-l2")
    for scale in run_all.SCALES:
        plan = run_all.PLANS[scale]
        seed = plan["seeds"][0]
        steps = run_all.build_plan(scale, plan["seeds"], None, tmp_path)
        energy = {s.name: s for s in steps if s.kind == "energy"}
        circuits = [m for m, spec in plan["models"].items() if spec["family"] == "circuit"]
        assert sorted(energy) == sorted(f"energy/{m}-s{seed}" for m in circuits), (scale, sorted(energy))
        for m in circuits:
            s = energy[f"energy/{m}-s{seed}"]
            opt = {a: s.argv[i + 1] for i, a in enumerate(s.argv[:-1]) if a.startswith("--")}
            assert s.argv[:2] == ["-m", "epsim.energy"] and "--no-progress" in s.argv
            assert opt["--checkpoint"] == str(tmp_path / f"models/{m}-s{seed}/checkpoint.pt")
            assert (opt["--test-subset"], opt["--attack-subset"], opt["--attack-steps"]) == \
                want_by_model.get((scale, m), want[scale]), (scale, s.argv)
            assert s.resume_if == f"energy/{m}-s{seed}/energy-progress.npz"
            assert opt["--attack-norm"] == "l2" and float(opt["--attack-eps"]) == pytest.approx(headline_l2)
            assert any(abs(v - headline_l2) < 1e-12 for _, v in run_all.parse_eps(plan["attack"]["l2"])), scale
            assert int(opt["--traces"]) >= 1 and s.deps == [f"train/{m}-s{seed}"]
            assert s.outputs == [f"energy/{m}-s{seed}/{f}" for f in ("energy.json", "energy.csv", "traces.npz")]
    proc = _driver("--scale", "cpu", "--out", str(tmp_path / "c"), "--dry-run", timeout=120)
    assert "energy/circuit-mlp-s0\n    python -m epsim.energy --checkpoint $RESULTS/models/circuit-mlp-s0/" in proc.stdout


def test_energy_step_reruns_when_its_results_lack_the_attack(tmp_path):
    import run_all

    step = next(s for s in run_all.build_plan("smoke", (0,), None, tmp_path) if s.kind == "energy")
    (tmp_path / step.outputs[0]).parent.mkdir(parents=True)
    for rel in step.outputs[1:]:
        (tmp_path / rel).write_text("")
    (tmp_path / step.outputs[0]).write_text(json.dumps({"summary": {"n": 20, "early_readout": []}}))
    assert not run_all.step_done(step, tmp_path)
    (tmp_path / step.outputs[0]).write_text(json.dumps({"summary": {"early_readout_attack": [{"time_s": None}]}}))
    assert run_all.step_done(step, tmp_path)


def _run_notebook(mk, name, results, figs, monkeypatch):
    monkeypatch.setenv("EPSIM_RESULTS", str(results))
    monkeypatch.setenv("EPSIM_FIGURES", str(figs))
    nb = mk.build(name)
    mk.execute(nb, timeout=300)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, (name, errors)
    text = "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    return text


@pytest.mark.timeout(600)
def test_energy_notebook_without_energy_results(tmp_path, monkeypatch):
    """The committed cpu results predate the energy step: notebook 07 runs on them, says "not run"
    with the command that adds the results, and shows no number."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import make_notebooks as mk

    results = tmp_path / "results"
    shutil.copytree(ANALYSIS / "results" / "cpu", results)
    shutil.rmtree(results / "energy", ignore_errors=True)
    (results / "energy.csv").unlink(missing_ok=True)
    figs = tmp_path / "figures"
    text = _run_notebook(mk, "07_energy_latency.ipynb", results, figs, monkeypatch)
    assert "not run" in text and "python analysis/run_all.py --scale cpu" in text and "--only energy/" in text
    for fig in mk.FIGURES["07_energy_latency.ipynb"]:
        assert (figs / fig).is_file(), fig
    for table in mk.TABLES["07_energy_latency.ipynb"]:
        with open(figs / f"{table}.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["note"] and len(rows) == 2 and "not run" in rows[1][0], (table, rows)


@pytest.mark.timeout(600)
def test_energy_notebook_with_partial_energy_results(tmp_path, monkeypatch):
    """An energy run without the early-readout attack, the training step and traces (older
    options): notebook 07 draws what is there and says "not run" for the rest."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import make_notebooks as mk

    results = tmp_path / "results"
    shutil.copytree(ANALYSIS / "results" / "cpu", results)
    shutil.rmtree(results / "energy", ignore_errors=True)
    (results / "energy").mkdir()
    stats = {"median": 2.8e-8, "p95": 3.1e-8, "mean": 2.8e-8}
    summary = {"n": 360, "unsettled": 0, "accuracy_dc": 0.97, "settle_time_s": stats,
               "decision_time_s": {"median": 3e-11, "p95": 1e-10, "mean": 5e-11},
               "energy_per_inference_J": {"median": 5e-9, "p95": 6e-9, "mean": 5e-9},
               "static_power_W": {"median": 0.18, "p95": 0.2, "mean": 0.18}, "macs_per_inference": 16128,
               "digital_energy_per_inference_J_estimate": {"fp32_45nm": 7.4e-8, "int8_45nm": 3.7e-9},
               "early_readout": [{"time_s": f * 2.8e-8, "accuracy": 0.97} for f in (0.1, 0.5, 1, 2)]}
    settings = {"diode": "ideal", "input_gain_V": 16.0, "dataset": "digits", "t_stop_s": 1e-6,
                "cell_capacitance_F": 1e-16, "node_capacitance_F": 1e-14}
    (results / "energy" / "circuit-cnn-s0.json").write_text(json.dumps(
        {"model": "circuit-cnn", "family": "circuit", "seed": 0, "step": "energy/circuit-cnn-s0",
         "command": "python -m epsim.energy --checkpoint X --out Y", "settings": settings, "summary": summary,
         "traces": None}))
    figs = tmp_path / "figures"
    text = _run_notebook(mk, "07_energy_latency.ipynb", results, figs, monkeypatch)
    assert "circuit CNN" in text
    for fig in mk.FIGURES["07_energy_latency.ipynb"]:
        assert (figs / fig).is_file(), fig
    with open(figs / "energy_latency.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["images"] == "360" and row["training step / image median (nJ)"] == "not run"
    assert row["robust accuracy (settled)"] == "not run" and float(row["energy / inference median (nJ)"]) == 5.0
    with open(figs / "energy_early_readout.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(r["attack sanity"] == "not run" and r["robust (PGD)"] == "" for r in rows)


def test_driver_user_errors_are_one_line(tmp_path):
    proc = _driver("--scale", "smoke", "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path / "missing"),
                   timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "error:" in proc.stderr
    proc = _driver("--scale", "smoke", "--out", str(tmp_path / "y"), "--collect-only", timeout=120)
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr and proc.stderr.strip().count("\n") == 0
    proc = _driver("--scale", "smoke", "--out", str(tmp_path / "z"), "--seeds", "1", "1", "--dry-run", timeout=120)
    assert proc.returncode == 2 and "--seeds" in proc.stderr
    proc = _driver("--scale", "nope", "--out", str(tmp_path / "s"), timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: argument --scale") and proc.stderr.count("\n") == 1
    for pattern, message in (("robust/no-such-model", "selects none of the"), ("[", "not a step name")):
        # a typo in --only would otherwise run nothing and exit 0
        proc = _driver("--scale", "smoke", "--out", str(tmp_path / "o"), "--only", "train/", pattern, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert not (tmp_path / "o").exists()


def test_driver_dry_run_prints_the_selected_steps(tmp_path):
    proc = _driver("--scale", "smoke", "--out", str(tmp_path / "x"), "--dry-run", "--only", "train/", timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = [line for line in proc.stdout.splitlines() if not line.startswith(" ")]
    assert names and all(n.startswith("train/") for n in names)
    everything = _driver("--scale", "smoke", "--out", str(tmp_path / "x"), "--dry-run", timeout=120).stdout
    assert set(names) == {n for n in everything.splitlines() if n.startswith("train/")}
    regex = _driver("--scale", "smoke", "--out", str(tmp_path / "x"), "--dry-run", "--only", r"robust/.*/l2",
                    timeout=120).stdout
    assert regex and all(n.startswith("robust/") and n.endswith("/l2") for n in regex.splitlines()
                         if not n.startswith(" "))


def test_notebooks_on_disk_match_their_sources():
    """The committed .ipynb files hold the cells of analysis/make_notebooks.py (outputs may differ)."""
    nbformat = pytest.importorskip("nbformat")
    import make_notebooks as mk

    for name in mk.NOTEBOOKS:
        disk = nbformat.read(ANALYSIS / name, as_version=4)
        want = mk.build(name)
        assert [c.source for c in disk.cells] == [c.source for c in want.cells], name


def test_notebooks_dir_leaves_the_committed_notebooks(tmp_path):
    """``--notebooks-dir`` writes every notebook there and none into analysis/; a file as the
    folder is a one-line error."""
    pytest.importorskip("nbformat")
    import make_notebooks as mk

    before = {name: (ANALYSIS / name).stat().st_mtime_ns for name in mk.NOTEBOOKS}
    mk.main(["--notebooks-dir", str(tmp_path / "nb")])
    assert sorted(p.name for p in (tmp_path / "nb").iterdir()) == sorted(mk.NOTEBOOKS)
    assert before == {name: (ANALYSIS / name).stat().st_mtime_ns for name in mk.NOTEBOOKS}
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    proc = subprocess.run([sys.executable, str(ANALYSIS / "make_notebooks.py"), "--notebooks-dir", str(a_file)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --notebooks-dir {a_file} is an existing file, not a folder: choose another --notebooks-dir"]


def test_results_folder_is_taken_from_the_callers_folder(tmp_path, monkeypatch):
    """The kernels run in analysis/: a relative EPSIM_RESULTS / EPSIM_FIGURES is made absolute
    against the folder the command was started in, and a missing results folder is refused."""
    import make_notebooks as mk

    (tmp_path / "res").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EPSIM_RESULTS", "res")
    monkeypatch.setenv("EPSIM_FIGURES", "figs")
    mk.results_from_caller()
    assert os.environ["EPSIM_RESULTS"] == str(tmp_path / "res")
    assert os.environ["EPSIM_FIGURES"] == str(tmp_path / "figs")
    monkeypatch.setenv("EPSIM_RESULTS", "missing")
    with pytest.raises(EpsimError, match="EPSIM_RESULTS=.*missing is not a folder"):
        mk.results_from_caller()


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


def test_published_energy_traces_are_thinned_to_a_plot_s_points(tmp_path):
    from driver.summary import TRACE_POINTS, collect_energy, trace_points

    t = np.concatenate([[0.0], np.geomspace(1e-12, 1e-6, 4999)])
    v = np.random.default_rng(0).normal(size=(len(t), 2, 10))
    run = tmp_path / "run"
    (run / "e").mkdir(parents=True)
    np.savez_compressed(run / "e" / "traces.npz", t_s=t, labels=np.array([3, 4]), v_out=v, layer1=v[:, :, :3])
    rec = {"command": "python -m epsim.energy --attack-steps 2",
           "outputs": ["e/energy.json", "e/energy.csv", "e/traces.npz"]}
    data = {"summary": {}, "settings": {}, "per_image": {"settle_time_s": [1e-7, 2e-7]}}
    collect_energy(run, rec, data, tmp_path / "dest", {"model": "circuit-x", "seed": 0})
    with np.load(tmp_path / "dest" / "circuit-x-s0_traces.npz") as z:
        kept_t, kept_v, layer1 = z["t_s"], z["v_out"], z["layer1"]
        assert list(z["labels"]) == [3] and list(z["settle_time_s"]) == [1e-7]
    assert TRACE_POINTS // 2 < len(kept_t) <= TRACE_POINTS + 2
    assert kept_t[0] == 0.0 and kept_t[-1] == t[-1] and np.all(np.diff(kept_t) > 0)
    keep = trace_points(t)
    assert kept_v.dtype == np.float32 and kept_v.shape == (len(keep), 1, 10)
    np.testing.assert_array_equal(kept_v, v[keep, :1].astype(np.float32))
    np.testing.assert_array_equal(layer1, v[keep, :1, :3].astype(np.float32))
    # log-spaced: each decade of time keeps about the same number of points
    decades = np.histogram(np.log10(kept_t[1:]), bins=np.arange(-12, -5))[0]
    assert decades.min() > 0.5 * decades.max(), decades
    assert list(trace_points(t[:50])) == list(range(50))
