"""Gathering a results folder into ``OUT/summary``: the compact files the notebooks read.

``models.csv`` (one row per trained model), ``curves.csv`` (one row per attack, model, seed and
ε, with its sanity checks), ``corruptions.csv``, ``runs.csv`` (one row per robustness run),
``energy.csv`` and ``energy/`` (settings, summary and one image's traces per energy run),
``claims.csv`` / ``claims.md`` (the seed paper's claims, each EP model against its baseline),
``adversarial/`` (the adversarial examples), ``fidelity.json``, ``device_sweep.json`` and a
copy of the manifest without the argv lists.
"""
from __future__ import annotations

import csv
import json
import shlex
import shutil
from pathlib import Path

from claims import write_claims
from common import ENERGY_DIR, same_eps

from .manifest import MANIFEST, UserError, load_manifest, read_json
from .parsers import parse_bench_spice, parse_gdu

SUMMARY = "summary"


def _write_csv(path: Path, rows, columns):
    """``rows`` (dicts) as CSV with these ``columns``; None as an empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


MODEL_COLUMNS = ("model", "family", "seed", "dataset", "test_accuracy", "n_test", "train_accuracy", "epochs",
                 "num_params", "test_unconverged", "train_wall_s", "step", "command")
CURVE_COLUMNS = ("model", "family", "seed", "group", "attack", "family_attack", "norm", "eps", "n", "clean_accuracy",
                 "robust_accuracy", "n_robust", "fgsm_robust_accuracy", "worst_path", "by_path", "paths", "losses",
                 "steps", "restarts", "queries", "queries_used_mean", "sanity_only", "sanity_ok", "failed_checks",
                 "checks", "max_perturbation", "certified_accuracy", "min_certified_margin_V",
                 "in_domain_robust_accuracy", "harness_robust_accuracy", "wall_s", "step")
CORRUPTION_COLUMNS = ("model", "family", "seed", "group", "corruption", "severity", "n", "n_corruptions", "skipped",
                      "clean_accuracy", "accuracy", "sanity_ok", "failed_checks", "step")
RUN_COLUMNS = ("model", "family", "seed", "group", "n", "clean_accuracy", "recorded_test_accuracy", "sanity_ok",
               "failed_checks", "check_clean_settings", "check_paths_agree", "check_gradients_at_clean",
               "grad_paths", "wall_s", "step", "command")


def _checks_str(row):
    return ";".join(f"{k}={v.get('status')}" for k, v in sorted((row.get("sanity") or {}).items()))


def _add_check(row, name, status, detail=None):
    checks = dict(kv.split("=", 1) for kv in str(row.get("checks") or "").split(";") if "=" in kv)
    checks[name] = status
    row["checks"] = ";".join(f"{k}={v}" for k, v in sorted(checks.items()))
    if status == "FAIL":
        failed = [f for f in str(row.get("failed_checks") or "").split(";") if f]
        row["failed_checks"] = ";".join(sorted(set(failed) | {name}))
        row["sanity_ok"] = False


def certificate_cross_checks(curves) -> int:
    """``certified_le_robust``, image by image, for a certificate that ran apart from the attacks
    (``certify-l2`` at the ε <= 1 of an L2 sweep that goes beyond 1): every attack row of the same
    model, seed, norm, ε and images (same ``--test-subset``; every run uses ``--seed 0``) in another run gets
    the check, the certificate row ``certified_le_<attack>``, as the harness does within one run.
    Returns the number of pairs checked."""
    certs = [r for r in curves if r.get("family_attack") == "certify" and r.get("_mask")]
    k = 0
    for c in certs:
        key = (c["model"], c["seed"], c.get("norm"), c.get("n"))
        for r in curves:
            if (r.get("family_attack") in ("certify", None) or r.get("step") == c.get("step") or not r.get("_mask")
                    or (r["model"], r["seed"], r.get("norm"), r.get("n")) != key
                    or not same_eps(r.get("eps"), c.get("eps")) or len(r["_mask"]) != len(c["_mask"])):
                continue
            broken = sum(a == "1" and b == "0" for a, b in zip(c["_mask"], r["_mask"]))
            status = "FAIL" if broken else "pass"
            _add_check(r, "certified_le_robust", status)
            _add_check(c, f"certified_le_{r['attack']}", status)
            k += 1
    return k


ENERGY_COLUMNS = ("model", "family", "seed", "diode", "n", "unsettled", "accuracy_dc", "settle_time_median_s",
                  "settle_time_p95_s", "decision_time_median_s", "decision_time_p95_s", "energy_per_inference_median_J",
                  "energy_per_inference_p95_J", "static_power_median_W", "training_step_energy_median_J_per_image",
                  "macs_per_inference", "digital_fp32_J_estimate", "digital_int8_J_estimate", "attack_norm",
                  "attack_eps", "attack_n", "attack_steps", "robust_accuracy_settled", "wall_s", "step", "command")


def _option(command: str, flag: str):
    """The value of ``flag`` in a recorded command line (None when absent)."""
    try:
        parts = shlex.split(command or "")
    except ValueError:
        return None
    return parts[parts.index(flag) + 1] if flag in parts[:-1] else None


TRACE_POINTS = 400  # time points of a published voltage trace


def trace_points(t_s, n: int = TRACE_POINTS):
    """Indices, increasing, of at most about ``n`` of the time points ``t_s`` (s, ascending) that
    a plot of the trace needs: the first and last, and those nearest to ``n`` times spaced
    evenly in log time (a transient's adaptive steps crowd its first nanoseconds)."""
    import numpy as np

    t = np.asarray(t_s, float)
    if len(t) <= n:
        return np.arange(len(t))
    positive = t[t > 0]
    grid = np.geomspace(positive[0], t[-1], n) if len(positive) else np.linspace(t[0], t[-1], n)
    idx = np.clip(np.searchsorted(t, grid), 0, len(t) - 1)
    return np.unique(np.concatenate([[0, len(t) - 1], idx]))


def collect_energy(out: Path, rec: dict, data: dict, dest: Path, base: dict) -> dict:
    """One ``energy/<model>-s<seed>`` step into the summary: its settings and summary (not the
    per-image arrays) to ``dest/<model>-s<seed>.json``, the free-phase traces of its first traced
    image (at most about ``TRACE_POINTS`` time points, voltages in float32: output voltages,
    the probed nodes of every layer, and that image's own settling and decision times) to
    ``dest/<model>-s<seed>_traces.npz``. Returns its ``energy.csv`` row."""
    import numpy as np

    tag = f"{base['model']}-s{base['seed']}"
    dest.mkdir(parents=True, exist_ok=True)
    summary, settings = data.get("summary") or {}, data.get("settings") or {}
    per = data.get("per_image") or {}
    attack = summary.get("early_readout_attack") or []
    steps = _option(rec.get("command"), "--attack-steps")
    record = {**base, "command": rec.get("command"), "wall_s": data.get("wall_s"), "settings": settings,
              "summary": summary, "attack_steps": int(steps) if steps and attack else None, "traces": None}
    src = out / rec["outputs"][2] if len(rec.get("outputs", [])) > 2 else None
    if src is not None and src.is_file():
        with np.load(src, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if len(arrays.get("labels", [])):
            keep = trace_points(arrays["t_s"])
            small = {"t_s": arrays["t_s"][keep], "labels": arrays["labels"][:1],
                     "v_out": arrays["v_out"][keep, :1].astype(np.float32),
                     **{k: v[keep, :1].astype(np.float32) for k, v in arrays.items() if k.startswith("layer")}}
            for key in ("settle_time_s", "decision_time_s"):
                if per.get(key):
                    small[key] = np.asarray(per[key][:1], float)
            np.savez_compressed(dest / f"{tag}_traces.npz", **small)
            record["traces"] = f"{tag}_traces.npz"
    (dest / f"{tag}.json").write_text(json.dumps(record, indent=1))

    def med(key, stat="median"):
        return (summary.get(key) or {}).get(stat)

    digital = summary.get("digital_energy_per_inference_J_estimate") or {}
    settled = next((r for r in attack if r.get("time_s") is None), {})
    return {**base, "diode": settings.get("diode"), "n": summary.get("n"), "unsettled": summary.get("unsettled"),
            "accuracy_dc": summary.get("accuracy_dc"), "settle_time_median_s": med("settle_time_s"),
            "settle_time_p95_s": med("settle_time_s", "p95"), "decision_time_median_s": med("decision_time_s"),
            "decision_time_p95_s": med("decision_time_s", "p95"),
            "energy_per_inference_median_J": med("energy_per_inference_J"),
            "energy_per_inference_p95_J": med("energy_per_inference_J", "p95"),
            "static_power_median_W": med("static_power_W"),
            "training_step_energy_median_J_per_image":
                ((summary.get("training_step") or {}).get("energy_J_per_image") or {}).get("median"),
            "macs_per_inference": summary.get("macs_per_inference"),
            "digital_fp32_J_estimate": digital.get("fp32_45nm"), "digital_int8_J_estimate": digital.get("int8_45nm"),
            "attack_norm": settled.get("norm"), "attack_eps": settled.get("eps"), "attack_n": settled.get("n"),
            "attack_steps": record["attack_steps"], "robust_accuracy_settled": settled.get("robust_accuracy"),
            "wall_s": data.get("wall_s"), "command": rec.get("command")}


def collect(out: Path, log=print) -> Path:
    """Gather the results of ``out`` into ``out/summary`` (compact CSV/JSON/NPZ for the notebooks)."""
    manifest = load_manifest(out)
    if not manifest:
        raise UserError(f"{out} has no {MANIFEST}: run the driver into it first")
    steps = manifest.get("steps", {})
    summ = out / SUMMARY
    if summ.exists():
        shutil.rmtree(summ)
    summ.mkdir(parents=True)
    models, curves, corr, runs, energy = [], [], [], [], []
    for name in manifest.get("plan", []):
        rec = steps.get(name) or {}
        if rec.get("status") != "done":
            continue
        kind = rec.get("kind")
        base = {"model": rec.get("model"), "family": rec.get("family"), "seed": rec.get("seed"), "step": name,
                "group": rec.get("group")}
        if kind == "train":
            m = read_json(out / rec["outputs"][0])
            if m is None:
                continue
            models.append({**base, "dataset": m.get("dataset"), "test_accuracy": m.get("test_accuracy"),
                           "n_test": m.get("n_test"), "train_accuracy": m.get("train_accuracy"),
                           "epochs": m.get("epochs"), "num_params": m.get("num_params"),
                           "test_unconverged": m.get("test_unconverged"), "train_wall_s": m.get("wall_seconds"),
                           "command": rec.get("command")})
        elif kind == "robustness":
            r = read_json(out / rec["outputs"][0])
            if r is None:
                continue
            checks = r.get("checks", {})
            runs.append({**base, "n": r.get("n"), "clean_accuracy": r.get("clean_accuracy"),
                         "recorded_test_accuracy": r.get("recorded_test_accuracy"), "sanity_ok": r.get("sanity_ok"),
                         "failed_checks": ";".join(r.get("failed_checks", [])),
                         **{f"check_{k}": f"{v.get('status')}: {v.get('detail')}" for k, v in checks.items()},
                         "grad_paths": ";".join(r.get("grad_paths", [])), "wall_s": r.get("wall_s"),
                         "command": rec.get("command")})
            n_corr = len({row.get("corruption") for row in r.get("rows", [])
                          if row.get("family") == "corruptions" and row.get("corruption") != "mean"})
            for row in r.get("rows", []):
                if row.get("family") == "corruptions":
                    corr.append({**base, "corruption": row.get("corruption"), "severity": row.get("severity"),
                                 "n": row.get("n"), "n_corruptions": n_corr if row.get("corruption") == "mean" else None,
                                 "skipped": ";".join(row.get("not_applicable", []) + row.get("missing_files", [])),
                                 "clean_accuracy": row.get("clean_accuracy"), "accuracy": row.get("robust_accuracy"),
                                 "sanity_ok": row.get("sanity_ok"), "failed_checks": ";".join(row.get("failed_checks", []))})
                else:
                    by = row.get("by_path") or {}
                    curves.append({**base, "attack": row.get("attack"), "family_attack": row.get("family"),
                                   "norm": row.get("norm"), "eps": row.get("eps"), "n": row.get("n"),
                                   "clean_accuracy": row.get("clean_accuracy"),
                                   "robust_accuracy": row.get("robust_accuracy"), "n_robust": row.get("n_robust"),
                                   "fgsm_robust_accuracy": row.get("fgsm_robust_accuracy"),
                                   "worst_path": row.get("worst_path"),
                                   "by_path": ";".join(f"{k}={v:.4f}" for k, v in by.items()),
                                   "paths": ";".join(row.get("paths") or []), "losses": ";".join(row.get("losses") or []),
                                   "steps": row.get("steps"), "restarts": row.get("restarts"),
                                   "queries": row.get("queries"), "queries_used_mean": row.get("queries_used_mean"),
                                   "sanity_only": row.get("sanity_only"), "sanity_ok": row.get("sanity_ok"),
                                   "failed_checks": ";".join(row.get("failed_checks", [])), "checks": _checks_str(row),
                                   "max_perturbation": row.get("max_perturbation"), "wall_s": row.get("wall_s"),
                                   "certified_accuracy": row.get("certified_accuracy"),
                                   "min_certified_margin_V": row.get("min_certified_margin_V"),
                                   "in_domain_robust_accuracy": row.get("in_domain_robust_accuracy"),
                                   "harness_robust_accuracy": row.get("harness_robust_accuracy"),
                                   "_mask": row.get("robust_mask")})
        elif kind == "energy":
            data = read_json(out / rec["outputs"][0])
            if data is not None:
                energy.append(collect_energy(out, rec, data, summ / ENERGY_DIR, base))
        elif kind == "adversarial":
            src = out / rec["outputs"][0]
            dst = summ / "adversarial" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            meta = src.with_suffix(".json")
            if meta.is_file():
                shutil.copy2(meta, dst.with_suffix(".json"))
    n_cross = certificate_cross_checks(curves)
    _write_csv(summ / "models.csv", models, MODEL_COLUMNS)
    _write_csv(summ / "curves.csv", curves, CURVE_COLUMNS)
    _write_csv(summ / "corruptions.csv", corr, CORRUPTION_COLUMNS)
    extra = sorted({k for r in runs for k in r if k.startswith("check_") and k not in RUN_COLUMNS})
    _write_csv(summ / "runs.csv", runs, RUN_COLUMNS[:-4] + tuple(extra) + RUN_COLUMNS[-4:])
    if energy:
        _write_csv(summ / "energy.csv", energy, ENERGY_COLUMNS)
    fidelity = {}
    for name, key in (("fidelity/spice-vs-numba", "spice_vs_numba"), ("fidelity/input-gradients", "input_gradients")):
        rec = steps.get(name) or {}
        if rec.get("status") == "done":
            data = read_json(out / rec["outputs"][0])
            if data is not None:
                fidelity[key] = {**data, "command": rec.get("command"), "step": name}
    rec = steps.get("device/sweep") or {}
    if rec.get("status") == "done":
        data = read_json(out / rec["outputs"][0])
        if data is not None:
            for run in data.get("runs", []):
                run.pop("history", None)
                if str(run.get("run_dir", "")).startswith(str(out) + "/"):
                    run["run_dir"] = "$RESULTS/" + str(run["run_dir"])[len(str(out)) + 1:]
            data["command"], data["step"] = rec.get("command"), "device/sweep"
            (summ / "device_sweep.json").write_text(json.dumps(data, indent=1))
    rec = steps.get("fidelity/gdu") or {}
    if rec.get("status") == "done":
        fidelity["gdu"] = {**parse_gdu((out / rec["outputs"][0]).read_text()), "command": rec.get("command"),
                           "step": "fidelity/gdu"}
    rec = steps.get("fidelity/bench-spice") or {}
    if rec.get("status") == "done":
        fidelity["bench_spice"] = {"rows": parse_bench_spice((out / rec["outputs"][0]).read_text()),
                                   "command": rec.get("command"), "step": "fidelity/bench-spice"}
    (summ / "fidelity.json").write_text(json.dumps(fidelity, indent=2))
    small = {k: v for k, v in manifest.items() if k != "steps"}
    small["steps"] = {k: {kk: vv for kk, vv in v.items() if kk != "argv"} for k, v in steps.items()}
    (summ / MANIFEST).write_text(json.dumps(small, indent=2))
    write_claims(summ)
    n_cert = sum(r.get("family_attack") == "certify" for r in curves)
    log(f"summary: {len(models)} models, {len(curves)} attack rows ({n_cert} certificate rows"
        + (f", {n_cross} certified <= robust checks across runs" if n_cross else "") + f"), "
        f"{len(corr)} corruption rows, {len(energy)} energy runs -> {summ}")
    return summ
