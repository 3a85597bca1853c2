"""Notebook 02: accuracy under natural corruptions.

Every function reads ``corruptions.csv`` (and ``manifest.json``) of the results folder
``results`` (default ``$EPSIM_RESULTS``) and writes to ``out`` (default ``$EPSIM_FIGURES``).
Severity 0 is the clean accuracy of the same images.
"""
from __future__ import annotations

import numpy as np

import common as C

from .base import save, subplots


def _rows(results):
    """(every row of ``corruptions.csv``, the rows of the mean over corruptions, the models)."""
    corr = C.read_csv("corruptions.csv", C.results_dir(results))
    return corr, [r for r in corr if r["corruption"] == "mean"], C.models_present(corr)


def per_corruption(corr, models) -> tuple:
    """(corruption names, models × corruptions matrix of accuracy, mean over severities and
    seeds; NaN where a model has no row)."""
    names = [c for c in dict.fromkeys(r["corruption"] for r in corr) if c != "mean"]
    mat = np.full((len(models), len(names)), np.nan)
    for i, model in enumerate(models):
        for j, name in enumerate(names):
            v = [r["accuracy"] for r in corr if r["model"] == model and r["corruption"] == name]
            if v:
                mat[i, j] = np.mean(v)
    return names, mat


def corruptions_severity(results=None, out=None):
    """``corruptions_severity.png``: accuracy (mean over corruptions) against severity 0–5, one
    curve per model with its 95 % band over seeds, a red ✗ where a sanity check failed. Prints the
    corruptions left out of the mean (not applicable to the images, or files missing)."""
    R = C.results_dir(results)
    M = C.manifest(R)
    _, means, models = _rows(R)
    fig, ax = subplots(figsize=(6, 4))
    for model in models:
        rs = [r for r in means if r["model"] == model]
        sev = sorted({r["severity"] for r in rs})
        clean = C.mean_ci(r["clean_accuracy"] for r in rs if r["severity"] == sev[0])
        pts = [clean] + [C.mean_ci(r["accuracy"] for r in rs if r["severity"] == s) for s in sev]
        x = [0] + sev
        m = np.array([p[0] for p in pts])
        ci = np.array([p[1] or 0.0 for p in pts])
        k = max(p[2] for p in pts)
        ax.plot(x, m, "o-", color=C.color(model), label=C.label(model) + (f" ({k} seeds)" if k > 1 else ""))
        if k > 1:
            ax.fill_between(x, m - ci, m + ci, color=C.color(model), alpha=0.2)
        bad = [s for s in sev if any(not r["sanity_ok"] for r in rs if r["severity"] == s)]
        if bad:
            ax.plot(bad, [m[x.index(s)] for s in bad], "x", color="red", ms=9, mew=2)
    nc = sorted({r.get("n_corruptions") for r in means})
    skipped = sorted({s for r in means for s in str(r.get("skipped") or "").split(";") if s})
    if skipped:
        print(f"not in the mean (not applicable to these images, or files missing): {', '.join(skipped)}")
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel(f"accuracy (mean over {', '.join(map(str, nc))} corruptions)")
    ax.set_xticks(range(0, 6))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Corruption robustness ({M['scale']} scale, n = {means[0]['n']} images)")
    return save(fig, "corruptions_severity.png", out)


def corruptions_per_corruption(results=None, out=None):
    """``corruptions_per_corruption.png``: heat map of accuracy per model and corruption (%, mean
    over severities 1–5 and seeds)."""
    corr, _, models = _rows(results)
    names, mat = per_corruption(corr, models)
    fig, ax = subplots(figsize=(0.62 * len(names) + 2.5, 0.55 * len(models) + 1.8))
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)))
    ax.set_yticklabels([C.label(m) for m in models], fontsize=8)
    for i in range(len(models)):
        for j in range(len(names)):
            if np.isfinite(mat[i, j]):
                ax.text(j, i, f"{100 * mat[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="accuracy")
    ax.set_title("accuracy per corruption (%, mean over severities 1–5)")
    return save(fig, "corruptions_per_corruption.png", out)


def corruptions_grid(results=None, out=None):
    """``corruptions_grid.png``: one panel per corruption, accuracy against severity per model
    (mean over seeds)."""
    corr, _, models = _rows(results)
    names, _ = per_corruption(corr, models)
    cols_n = 6
    rows_n = int(np.ceil(len(names) / cols_n))
    fig, axes = subplots(rows_n, cols_n, figsize=(2.6 * cols_n, 2.2 * rows_n), squeeze=False, sharex=True,
                         sharey=True)
    for ax, name in zip(axes.flat, names):
        for model in models:
            rs = [r for r in corr if r["model"] == model and r["corruption"] == name]
            sev = sorted({r["severity"] for r in rs})
            ax.plot(sev, [C.mean_ci(r["accuracy"] for r in rs if r["severity"] == s)[0] for s in sev], "o-", ms=3,
                    color=C.color(model), label=C.label(model))
        ax.set_title(name, fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_axis_off()
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("severity")
    fig.supylabel("accuracy")
    return save(fig, "corruptions_grid.png", out)


def severity_table(results=None, out=None) -> str:
    """``corruptions_severity.csv`` / ``.md``: per model, the clean accuracy and the accuracy at
    each severity (mean over corruptions and seeds), with the sanity status. Returns the Markdown."""
    _, means, models = _rows(results)
    sev_rows = []
    for model in models:
        rs = [r for r in means if r["model"] == model]
        row = {"model": C.label(model), "seeds": len({r["seed"] for r in rs}), "n": rs[0]["n"],
               "clean": C.mean_ci(r["clean_accuracy"] for r in rs)[0]}
        for s in sorted({r["severity"] for r in rs}):
            row[f"s{s}"] = C.mean_ci(r["accuracy"] for r in rs if r["severity"] == s)[0]
        failed = sorted({f for r in rs for f in str(r.get("failed_checks") or "").split(";") if f})
        row["sanity"] = "ok" if all(r["sanity_ok"] for r in rs) else "FAILED: " + ", ".join(failed)
        sev_rows.append(row)
    sev_cols = [("model", "model"), ("seeds", "seeds"), ("n", "n"), ("clean", "clean")] + \
        [(f"s{s}", f"severity {s}") for s in sorted({r["severity"] for r in means})] + [("sanity", "sanity checks")]
    C.write_table(sev_rows, sev_cols, "corruptions_severity", out)
    return C.markdown_table(sev_rows, sev_cols)


def per_corruption_table(results=None, out=None) -> str:
    """``corruptions_per_corruption.csv`` / ``.md``: per corruption, each model's accuracy (mean
    over severities and seeds) and the sanity status. Returns the Markdown."""
    corr, _, models = _rows(results)
    names, mat = per_corruption(corr, models)
    per_rows = []
    for j, name in enumerate(names):
        row = {"corruption": name}
        for i, model in enumerate(models):
            row[model] = mat[i, j] if np.isfinite(mat[i, j]) else None
        bad = [r for r in corr if r["corruption"] == name and not r["sanity_ok"]]
        row["sanity"] = "ok" if not bad else "FAILED: " + ", ".join(
            sorted({f for r in bad for f in str(r["failed_checks"]).split(";") if f}))
        per_rows.append(row)
    per_cols = [("corruption", "corruption")] + [(m, C.label(m)) for m in models] + [("sanity", "sanity checks")]
    C.write_table(per_rows, per_cols, "corruptions_per_corruption", out)
    return C.markdown_table(per_rows, per_cols)
