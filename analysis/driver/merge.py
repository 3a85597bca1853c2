"""Merging a summary of some of a scale's steps into a published summary of the same scale.

A scale's steps can be run in parts, on different machines and days: the part run now brings
its own summary (``OUT/summary``), and the published one (e.g. ``analysis/results/mnist``)
holds the rest. The merge keeps every published row whose step the new summary did not run,
takes the new summary's rows for the steps it ran, and rebuilds the claims from the union.

A step that evaluates a model is only comparable with the published steps of that model if
the model is the same: a model retrained for the new part (its checkpoint was not kept) must
reproduce the published test accuracy on the same test images, or the merge is refused. The
same command on another CPU can end a long run a few test images apart (numba's and the
BLAS's kernels are chosen for the machine and round differently); ``tolerance_points``
accepts such a retrained model when its accuracy is within that many percentage points: the
published training row is kept, and the merged manifest records both accuracies and which
steps evaluated the retrained instance.
"""
from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

from claims import write_claims

from .manifest import MANIFEST, UserError, read_json

TABLES = ("models.csv", "curves.csv", "corruptions.csv", "runs.csv", "energy.csv")
FILE_DIRS = ("adversarial", "energy")


def _read_csv(path: Path) -> tuple:
    """``(columns, rows)`` of a CSV file; ``((), [])`` when there is none."""
    if not path.is_file():
        return (), []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return tuple(reader.fieldnames or ()), list(reader)


def _done_steps(manifest: dict) -> set:
    return {k for k, v in (manifest.get("steps") or {}).items() if v.get("status") == "done"}


def check_same_models(published: Path, new: Path, tolerance_points: float = 0.0) -> list:
    """Refuse to merge when a model trained in both summaries differs: number of test images not
    equal, or test accuracies more than ``tolerance_points`` percentage points apart. Returns the
    retrained models accepted within the tolerance, ``[{"step", "n_test",
    "published_test_accuracy", "retrained_test_accuracy"}]`` (empty when every retrained model
    reproduced its published accuracy exactly)."""
    _, old_rows = _read_csv(published / "models.csv")
    _, new_rows = _read_csv(new / "models.csv")
    old = {r["step"]: r for r in old_rows}
    differ, retrained = [], []
    for r in new_rows:
        o = old.get(r["step"])
        if o is None or (r["test_accuracy"], r["n_test"]) == (o["test_accuracy"], o["n_test"]):
            continue
        gap_points = 100 * abs(float(r["test_accuracy"]) - float(o["test_accuracy"]))
        if r["n_test"] != o["n_test"] or gap_points > tolerance_points + 1e-9:
            differ.append(f"{r['step']} (test accuracy {o['test_accuracy']} on {o['n_test']} published, "
                          f"{r['test_accuracy']} on {r['n_test']} now)")
        else:
            retrained.append({"step": r["step"], "n_test": int(r["n_test"]),
                              "published_test_accuracy": float(o["test_accuracy"]),
                              "retrained_test_accuracy": float(r["test_accuracy"])})
    if differ:
        raise UserError("cannot merge: retrained model(s) differ from the published ones, so their new results "
                        f"would not describe the published models: {'; '.join(differ)} (--retrain-tolerance "
                        "POINTS accepts a retrained model within POINTS percentage points, e.g. one trained on "
                        "another CPU, and records both accuracies)")
    return retrained


def _evaluated_by(manifest: dict, train_step: str, steps) -> list:
    """The steps among ``steps`` that evaluate the model trained by ``train_step``."""
    rec = manifest.get("steps", {}).get(train_step, {})
    key = (rec.get("model"), rec.get("seed"))
    return sorted(k for k in steps if k != train_step
                  and (manifest["steps"][k].get("model"), manifest["steps"][k].get("seed")) == key)


def merge_summaries(published: Path, new: Path, dest: Path, tolerance_points: float = 0.0) -> dict:
    """Write into ``dest`` (created; must not exist) the union of the summaries ``published`` and
    ``new`` (same scale): for every step the new summary ran, its rows and files; for every
    other step, the published ones; claims rebuilt. A model retrained within
    ``tolerance_points`` (:func:`check_same_models`) keeps its published training row. Returns
    the merged manifest."""
    old_m, new_m = read_json(published / MANIFEST) or {}, read_json(new / MANIFEST) or {}
    if not old_m or not new_m:
        raise UserError(f"cannot merge: {published if not old_m else new} has no {MANIFEST}")
    if old_m.get("scale") != new_m.get("scale"):
        raise UserError(f"cannot merge a {new_m.get('scale')} summary into a {old_m.get('scale')} one")
    if not tolerance_points >= 0:
        raise UserError("--retrain-tolerance must be a number of percentage points >= 0")
    retrained = check_same_models(published, new, tolerance_points)
    kept_training = {r["step"] for r in retrained}
    replaced = _done_steps(new_m) - kept_training
    for r in retrained:
        r["evaluated_by"] = _evaluated_by(new_m, r["step"], replaced)
    dest.mkdir(parents=True)
    for name in TABLES:
        old_cols, old_rows = _read_csv(published / name)
        new_cols, new_rows = _read_csv(new / name)
        if not old_cols and not new_cols:
            continue
        columns = list(old_cols) + [c for c in new_cols if c not in old_cols]
        rows = [r for r in old_rows if r.get("step") not in replaced] + \
            [r for r in new_rows if r.get("step") not in kept_training]
        with open(dest / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns, restval="")
            w.writeheader()
            w.writerows(rows)
    for sub in FILE_DIRS:
        for src in (published / sub, new / sub):
            if src.is_dir():
                shutil.copytree(src, dest / sub, dirs_exist_ok=True)
    fidelity = {**(read_json(published / "fidelity.json") or {}), **(read_json(new / "fidelity.json") or {})}
    (dest / "fidelity.json").write_text(json.dumps(fidelity, indent=2))
    sweep = new / "device_sweep.json" if (new / "device_sweep.json").is_file() else published / "device_sweep.json"
    if sweep.is_file():
        shutil.copy2(sweep, dest / "device_sweep.json")
    plan = list(old_m.get("plan", [])) + [s for s in new_m.get("plan", []) if s not in old_m.get("plan", [])]
    steps = {**old_m.get("steps", {}), **{k: v for k, v in new_m.get("steps", {}).items() if k in replaced}}
    parts = old_m.get("merged_parts") or [{k: old_m.get(k) for k in ("git_head", "created", "updated")}]
    merged = {**old_m, "what": new_m.get("what", old_m.get("what")), "plan": plan, "steps": steps,
              "updated": new_m.get("updated"),
              "merged_parts": parts + [{k: new_m.get(k) for k in ("git_head", "created", "updated")}
                                       | {"steps": sorted(replaced)} | ({"retrained": retrained} if retrained else {})]}
    (dest / MANIFEST).write_text(json.dumps(merged, indent=2))
    write_claims(dest)
    return merged


def merged_summary(published: Path, new: Path, tolerance_points: float = 0.0, log=print) -> Path:
    """The merge of ``new`` into ``published`` in a temporary folder (the caller publishes it)."""
    dest = Path(tempfile.mkdtemp(prefix="merged-summary-")) / "summary"
    try:
        merged = merge_summaries(published, new, dest, tolerance_points)
    except BaseException:
        shutil.rmtree(dest.parent, ignore_errors=True)
        raise
    log(f"merged {len(merged['merged_parts'][-1]['steps'])} step(s) of {new} into {published}: "
        f"{len(_done_steps(merged))} of {len(merged['plan'])} planned steps done")
    for r in merged["merged_parts"][-1].get("retrained", []):
        log(f"{r['step']}: retrained at {100 * r['retrained_test_accuracy']:.2f} % (published "
            f"{100 * r['published_test_accuracy']:.2f} %); the published training row is kept")
    return dest
