"""Notebook 05: the headline numbers, certified accuracy, and every number with its checks.

Every function reads the results folder ``results`` (default ``$EPSIM_RESULTS``: ``curves.csv``,
``corruptions.csv``, ``runs.csv``, ``models.csv``, ``manifest.json``, through the helpers of
:mod:`common`) and writes to ``out`` (default ``$EPSIM_FIGURES``).
"""
from __future__ import annotations

import common as C

from .base import save, subplots


def summary_table(results=None, out=None) -> str:
    """``summary_table.md``: the headline table (clean and robust accuracy at the headline ε, mean ±
    95 % CI over seeds, ✓/✗ with the failed checks, the commands). Returns the Markdown."""
    text = C.headline_markdown(C.results_dir(results))
    md = C.output_dir(out) / "summary_table.md"
    md.write_text(text + "\n")
    print(f"wrote {md}")
    return text


def certified_summary(results=None, out=None) -> str:
    """``certified_summary.csv`` / ``.md``: per model, the certified accuracy at the headline
    white-box ε beside the empirical one (— for software models, "not run" for circuits without a
    certificate; printed when no model has one). Returns the Markdown."""
    crows = C.certified_rows(C.results_dir(results))
    ccols = C.certified_columns(crows)
    C.write_table(crows, ccols, "certified_summary", out)
    if not any(v not in (C.NO_CERTIFICATE, C.NOT_RUN) for r in crows for k, v in r.items() if k.startswith("certify-")):
        print("no certificate in these results: the certified columns fill in once the pipeline is rerun "
              "(python analysis/run_all.py --scale SCALE --out RESULTS_DIR)")
    return C.markdown_table(crows, ccols)


def summary_bars(results=None, out=None):
    """``summary_bars.png``: bars of clean accuracy, the headline robust accuracies and the mean
    corruption accuracy per model (95 % CI whiskers; hatched red where a sanity check failed)."""
    R = C.results_dir(results)
    M = C.manifest(R)
    rows = C.headline_rows(R)
    cols = C.headline_columns(rows)
    keys = cols + ["corruptions"]
    fig, ax = subplots(figsize=(max(7, 1.5 * len(keys) + 2), 4))
    w = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        xs, ms, cis, bad = [], [], [], []
        for j, key in enumerate(["clean"] + keys):
            entry = r.get(key)
            if entry is None:
                continue
            mci, failed = (entry, []) if key == "clean" else entry
            xs.append(j + (i - (len(rows) - 1) / 2) * w)
            ms.append(mci[0])
            cis.append(mci[1] or 0.0)
            bad.append(bool(failed) or (key == "clean" and not r.get("clean_ok")))
        bars = ax.bar(xs, ms, w, yerr=cis if any(cis) else None, color=C.color(r["model"]), label=r["label"],
                      capsize=2)
        for b, f in zip(bars, bad):
            if f:
                b.set_hatch("//")
                b.set_edgecolor("red")
    labels = ["clean"] + [C.column_header((a, e)).replace(" ε=", "\nε=") for a, e in cols] + ["corruptions\n(mean)"]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"headline numbers ({M['scale']} scale; hatched red = a sanity check failed)", fontsize=10)
    return save(fig, "summary_bars.png", out)


def all_numbers(results=None, out=None) -> str:
    """``all_numbers.csv`` / ``.md``: every attack row of ``curves.csv`` and every mean-corruption row
    of ``corruptions.csv`` with its sanity status, checks and driver step. Prints how many failed a
    check; returns the Markdown of those (or a line saying none did)."""
    R = C.results_dir(results)
    curves = C.read_csv("curves.csv", R)
    corr = C.read_csv("corruptions.csv", R)
    allrows = []
    for r in curves:
        allrows.append({"model": r["model"], "seed": r["seed"], "what": r["attack"], "eps": C.eps_label(r["eps"]),
                        "n": r["n"], "clean": r["clean_accuracy"], "accuracy": r["robust_accuracy"],
                        "sanity": ("ok" if r["sanity_ok"] else "FAILED: " + str(r["failed_checks"]).replace(";", ", "))
                                  + (" (sanity-only ε)" if r.get("sanity_only") else ""),
                        "checks": r["checks"], "step": r["step"]})
    for r in corr:
        if r["corruption"] == "mean":
            allrows.append({"model": r["model"], "seed": r["seed"],
                            "what": f"corruptions (mean of {r['n_corruptions']})",
                            "eps": f"severity {r['severity']}", "n": r["n"], "clean": r["clean_accuracy"],
                            "accuracy": r["accuracy"],
                            "sanity": "ok" if r["sanity_ok"]
                                      else "FAILED: " + str(r["failed_checks"]).replace(";", ", "),
                            "checks": "", "step": r["step"]})
    cols = [("model", "model"), ("seed", "seed"), ("what", "attack"), ("eps", "ε / severity"), ("n", "n"),
            ("clean", "clean"), ("accuracy", "accuracy"), ("sanity", "sanity"), ("checks", "checks"),
            ("step", "driver step")]
    C.write_table(allrows, cols, "all_numbers", out)
    failed = [r for r in allrows if not r["sanity"].startswith("ok")]
    print(f"{len(allrows)} numbers, {len(failed)} with a failed sanity check")
    return C.markdown_table(failed, cols) if failed else "**No failed sanity checks.**"


def run_checks(results=None, out=None) -> str:
    """``run_checks.csv`` / ``.md``: every robustness run (``runs.csv``) with its clean accuracy, sanity
    status, the outcome of each run-level check and its wall time. Returns the Markdown."""
    runs = C.read_csv("runs.csv", C.results_dir(results))
    rc = [{"model": r["model"], "seed": r["seed"], "run": r["group"], "n": r["n"], "clean": r["clean_accuracy"],
           "sanity": "ok" if r["sanity_ok"] else "FAILED: " + str(r["failed_checks"]).replace(";", ", "),
           **{k: v for k, v in r.items() if k.startswith("check_")}, "wall_s": r["wall_s"]} for r in runs]
    checks = list(dict.fromkeys(k for r in rc for k in r if k.startswith("check_")))
    cols = [("model", "model"), ("seed", "seed"), ("run", "run"), ("n", "n"), ("clean", "clean"),
            ("sanity", "sanity")] + [(k, k[len("check_"):].replace("_", " ")) for k in checks] + [("wall_s", "wall s")]
    C.write_table(rc, cols, "run_checks", out)
    return C.markdown_table(rc, cols)


def manifest_steps(results=None, out=None) -> str:
    """``manifest_steps.csv`` / ``.md``: every step of the driver's plan (``manifest.json``) with its
    status, wall time and command. Prints the totals; returns the Markdown."""
    M = C.manifest(C.results_dir(results))
    steps = M.get("steps", {})
    st = [{"step": k, "status": v.get("status"), "wall_s": v.get("wall_s"), "command": v.get("command")}
          for k, v in steps.items() if k in M.get("plan", [])]
    cols = [("step", "step"), ("status", "status"), ("wall_s", "wall s"), ("command", "command")]
    C.write_table(st, cols, "manifest_steps", out)
    total = sum(v["wall_s"] or 0 for v in st)
    print(f"{len(st)} steps, {sum(v['status'] == 'done' for v in st)} done, "
          f"total recorded wall time {total / 60:.1f} min")
    return C.markdown_table(st, cols)
