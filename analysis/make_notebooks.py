"""Write the analysis notebooks (``analysis/*.ipynb``) from the cell sources below.

    python analysis/make_notebooks.py            # (re)write the notebooks, no outputs
    python analysis/make_notebooks.py --execute  # and run them against $EPSIM_RESULTS, keeping outputs

The notebooks only read the results summary written by ``analysis/run_all.py`` (through
``analysis/common.py``) and draw; every number they show comes from those files.
Figures (PNG) and tables (CSV + Markdown) go to ``$EPSIM_FIGURES`` (default ``analysis/figures``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import os, sys
from pathlib import Path
here = Path.cwd() if (Path.cwd() / "common.py").is_file() else Path.cwd() / "analysis"
sys.path.insert(0, str(here))
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Markdown, Image, display
import common as C

R = C.results_dir()
M = C.manifest(R)
print(f"results: {R}")
print(f"scale: {M['scale']} -- {M.get('what', '')}")
print(f"figures and tables: {C.figures_dir()}")
"""

# ----------------------------------------------------------------------------- 01
CURVES = [
    new_markdown_cell("""\
# Robustness curves: circuit vs software models

Accuracy under attack against the perturbation radius ε, one curve per model, in the style of
Figure 3 of Mansingh et al. (2023). ε is measured on images with pixels in [0, 1] (before they
become circuit input voltages), so the same ε means the same for every model. White-box PGD is
APGD along **every** gradient path a model offers (circuits: BPTT through the solver's sweeps,
implicit differentiation at the equilibrium, and the EP estimate read from the input sources'
currents), with CE and DLR losses; an image counts as robust only if it survived all of them.
Square is the black-box attack querying each model's own predictor (for circuits: the numba
equilibrium solver). Bands: 95 % t-interval over training seeds where a model has several.
A red ✗ marks a point whose automatic sanity checks failed (see the table).

Dashed lines in the PGD panels: **certified** accuracy of each circuit model at the same norm and ε
(`--attack certify-l2` / `certify-linf`: the circuit's monotonicity bounds every output over the
L∞ box of radius ε by two equilibrium solves, and an image is certified when the bounds cannot
change its prediction; L2 through the L∞ box that contains the ball, so only ε ≤ 1). It is a lower
bound on the true robust accuracy where the attacks give an upper bound. Software models have no
certificate; results from a run without `certify-*` show no dashed line."""),
    new_code_cell(SETUP),
    new_code_cell("""\
curves = C.read_csv("curves.csv", R)
# PGD curves come from the PGD sweeps; Square from wherever it ran (its own runs at a few ε,
# or the PGD sweep itself); the PGD rows of a Square run only serve its black-box check.
pgd = [r for r in curves if r["family_attack"] == "pgd" and not str(r.get("group") or "").startswith("square-")]
square = [r for r in curves if r["family_attack"] == "square"]
cert = [r for r in curves if r["family_attack"] == "certify"]
print(f"certificate rows: {len(cert)}" + ("" if cert else " (these results come from a run without certify-*: "
      "no certified curves; rerun analysis/run_all.py to add them)"))
panels = [(a, rows) for a, rows in (("pgd-l2", pgd), ("pgd-linf", pgd), ("square-l2", square), ("square-linf", square))
          if any(r["attack"] == a for r in rows)]
fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.8), squeeze=False)
for ax, (attack, rows) in zip(axes[0], panels):
    for model in C.models_present(rows):
        pts = C.curve(rows, model, attack)
        if not pts:
            continue
        eps = np.array([p["eps"] for p in pts]); m = np.array([p["mean"] for p in pts])
        k = max(p["seeds"] for p in pts)
        ax.plot(eps, m, "o-", color=C.color(model), ms=4,
                label=f"{C.label(model)}" + (f" ({k} seeds)" if k > 1 else ""))
        if any(p["ci"] is not None for p in pts):
            ci = np.array([p["ci"] or 0.0 for p in pts])
            ax.fill_between(eps, np.clip(m - ci, 0, 1), np.clip(m + ci, 0, 1), color=C.color(model), alpha=0.2)
        bad = [p for p in pts if not p["sanity_ok"]]
        if bad:
            ax.plot([p["eps"] for p in bad], [p["mean"] for p in bad], "x", color="red", ms=9, mew=2)
        cpts = C.certified_curves(cert, model, attack)
        if cpts:
            ax.plot([p["eps"] for p in cpts], [p["mean"] for p in cpts], "--", color=C.color(model), lw=1.5,
                    marker="v", ms=4, mfc="white", label=f"{C.label(model)}: certified")
            cbad = [p for p in cpts if not p["sanity_ok"]]
            if cbad:
                ax.plot([p["eps"] for p in cbad], [p["mean"] for p in cbad], "x", color="red", ms=9, mew=2)
    C.eps_axis(ax, [r["eps"] for r in rows if r["attack"] == attack and not r.get("sanity_only")])
    ax.set_ylim(-0.02, 1.02); ax.grid(alpha=0.3)
    ax.set_title(C.ATTACK_LABELS.get(attack, attack), fontsize=10)
    ax.set_xlabel("ε (pixel units)"); ax.set_ylabel("robust accuracy")
    n = sorted({r["n"] for r in rows if r["attack"] == attack})
    ax.text(0.02, 0.02, f"n = {', '.join(map(str, n))} images", transform=ax.transAxes, fontsize=8)
legend = {}
for ax in axes[0]:
    for h, l in zip(*ax.get_legend_handles_labels()):
        legend.setdefault(l, h)
fig.legend(list(legend.values()), list(legend), loc="upper center", ncol=min(len(legend), 6), fontsize=8,
           bbox_to_anchor=(0.5, -0.1))
fig.suptitle(f"Accuracy vs ε ({M['scale']} scale)", y=1.02)
_png = C.save_figure(fig, "robustness_curves.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("""\
## Certified vs empirical robust accuracy (circuit models)

For each circuit model and norm: the empirical robust accuracy under white-box PGD (solid; the
per-image worst case over gradient paths and losses: an upper bound on the true robust accuracy)
and the certified accuracy at the same ε on the same images (dashed: a lower bound). The true
robust accuracy lies in the shaded band between them. Where a model has several seeds: mean over
seeds. The harness checks image by image that no certified image is broken by the attack
(`certified_le_robust`); a red ✗ marks a point where a check failed."""),
    new_code_cell("""\
fam = C.families(R)
circuits = [m for m in C.models_present(pgd + cert) if fam.get(m) == "circuit"] if pgd else []
norms = [a for a in ("pgd-l2", "pgd-linf") if any(r["attack"] == a for r in pgd)]
with_cert = [m for m in circuits if any(r["model"] == m for r in cert)]
shape = (len(with_cert), len(norms)) if with_cert and norms else (1, 1)
fig, axes = plt.subplots(*shape, figsize=(4.5 * shape[1] + (3 if shape == (1, 1) else 0), 3.3 * shape[0]),
                         squeeze=False)
for i, model in enumerate(with_cert):
    for j, attack in enumerate(norms):
        ax = axes[i][j]
        emp = C.curve(pgd, model, attack)
        cpts = C.certified_curves(cert, model, attack)
        ax.plot([p["eps"] for p in emp], [p["mean"] for p in emp], "o-", color=C.color(model), ms=4,
                label="empirical (PGD)")
        if cpts:
            ax.plot([p["eps"] for p in cpts], [p["mean"] for p in cpts], "v--", color=C.color(model), ms=4,
                    mfc="white", label="certified")
            both = [(c["eps"], c["mean"], e["mean"]) for c in cpts for e in emp if C.same_eps(c["eps"], e["eps"])]
            if both:
                x, lo, hi = map(np.array, zip(*both))
                ax.fill_between(x, lo, hi, color=C.color(model), alpha=0.15, label="true robust accuracy lies here")
        else:
            ax.text(0.5, 0.5, "no certificate at this norm", transform=ax.transAxes, ha="center", fontsize=8)
        bad = [p for p in emp + cpts if not p["sanity_ok"]]
        if bad:
            ax.plot([p["eps"] for p in bad], [p["mean"] for p in bad], "x", color="red", ms=9, mew=2)
        C.eps_axis(ax, [p["eps"] for p in emp + cpts]); ax.set_ylim(-0.02, 1.02); ax.grid(alpha=0.3)
        k = max([p["seeds"] for p in emp + cpts] or [1])
        ax.set_title(f"{C.label(model)}: {attack[len('pgd-'):]}" + (f" ({k} seeds)" if k > 1 else ""), fontsize=9)
        ax.set_xlabel("ε (pixel units)"); ax.set_ylabel("accuracy"); ax.legend(fontsize=7)
if not (with_cert and norms):
    why = ("no circuit model in these results" if not circuits else
           "no certificate rows in these results (an older run): rerun analysis/run_all.py, which adds "
           "certify-l2 / certify-linf for the circuit models")
    print(why)
    axes[0][0].text(0.5, 0.5, why.replace(": ", ":\\n", 1), ha="center", va="center", fontsize=9)
    axes[0][0].set_axis_off()
fig.tight_layout()
_png = C.save_figure(fig, "certified_vs_empirical.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("""\
## Worst case over gradient paths (circuit models)

Robust accuracy along each gradient path separately (all losses), for the models with more than
one path. The curve in the figure above is the worst case over paths *per image*, so it can be
below every single path."""),
    new_code_cell("""\
multi = [r for r in pgd if len(str(r.get("paths") or "").split(";")) > 1]
models = C.models_present(multi) if multi else []
attacks = [a for a in ("pgd-l2", "pgd-linf") if any(r["attack"] == a for r in multi)]
fig, axes = plt.subplots(max(len(models), 1), max(len(attacks), 1), figsize=(4.5 * max(len(attacks), 1), 3.4 * max(len(models), 1)),
                         squeeze=False)
styles = {"bptt": "s--", "implicit": "^--", "ep": "v--", "transfer": "d--"}
for i, model in enumerate(models):
    seed = min(r["seed"] for r in multi if r["model"] == model)
    for j, attack in enumerate(attacks):
        ax = axes[i][j]
        rs = sorted([r for r in multi if r["model"] == model and r["attack"] == attack and r["seed"] == seed
                     and not r.get("sanity_only")], key=lambda r: r["eps"])
        eps = [r["eps"] for r in rs]
        per = {}
        for r in rs:
            for kv in str(r["by_path"]).split(";"):
                k, v = kv.split("=")
                per.setdefault(k, []).append(float(v))
        for path, acc in per.items():
            ax.plot(eps, acc, styles.get(path, "o--"), ms=4, label=path)
        ax.plot(eps, [r["robust_accuracy"] for r in rs], "k-", lw=2, label="worst case (per image)")
        C.eps_axis(ax, eps); ax.set_ylim(-0.02, 1.02); ax.grid(alpha=0.3)
        ax.set_title(f"{C.label(model)}, seed {seed}: {attack}", fontsize=9)
        ax.set_xlabel("ε"); ax.set_ylabel("robust accuracy")
        ax.legend(fontsize=7)
if not models:
    axes[0][0].text(0.5, 0.5, "no model with several gradient paths in these results", ha="center")
    axes[0][0].set_axis_off()
fig.tight_layout()
_png = C.save_figure(fig, "robustness_paths.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("## Table: every point of the curves, with its sanity checks"),
    new_code_cell("""\
table = []
for rows in (pgd, square, cert):
    for attack in ("pgd-l2", "pgd-linf", "square-l2", "square-linf", "certify-l2", "certify-linf"):
        for model in C.models_present(rows):
            for p in C.curve(rows, model, attack):
                rs = [r for r in rows if r["model"] == model and r["attack"] == attack and C.same_eps(r["eps"], p["eps"])]
                table.append({"model": C.label(model), "attack": attack, "eps": C.eps_label(p["eps"]), "n": p["n"],
                              "seeds": p["seeds"], "robust_accuracy": p["mean"], "ci95": p["ci"],
                              "clean_accuracy": C.mean_ci(r["clean_accuracy"] for r in rs)[0],
                              "fgsm": C.mean_ci(r.get("fgsm_robust_accuracy") for r in rs)[0]
                                      if attack.startswith("pgd") else None,
                              "worst_path": ";".join(sorted({str(r.get("worst_path")) for r in rs})),
                              "margin": min((r["min_certified_margin_V"] for r in rs
                                             if r.get("min_certified_margin_V") is not None), default=None),
                              "sanity": "ok" if p["sanity_ok"] else "FAILED: " + ", ".join(p["failed"])})
cols = [("model", "model"), ("attack", "attack"), ("eps", "ε"), ("n", "n"), ("seeds", "seeds"),
        ("clean_accuracy", "clean"), ("robust_accuracy", "robust / certified (mean)"), ("ci95", "± 95 % CI"),
        ("fgsm", "FGSM (same ε)"), ("worst_path", "worst path"), ("margin", "min certified margin (V)"),
        ("sanity", "sanity checks")]
C.write_table(table, cols, "robustness_curves")
display(Markdown(C.markdown_table(table, cols)))"""),
]

# ----------------------------------------------------------------------------- 02
CORRUPTIONS = [
    new_markdown_cell("""\
# Natural corruptions

Accuracy on corrupted test images (the CIFAR-10-C corruptions with Hendrycks & Dietterich's
CIFAR parameters, generated by `epsim.robustness.corruptions`; corruptions that do not apply to
the images — e.g. colour saturation on grey images — are left out, and said so in the results).
Severity 0 is the clean accuracy of the same images. Bands / error bars: 95 % t-interval over
training seeds where a model has several."""),
    new_code_cell(SETUP),
    new_code_cell("""\
corr = C.read_csv("corruptions.csv", R)
means = [r for r in corr if r["corruption"] == "mean"]
models = C.models_present(corr)
fig, ax = plt.subplots(figsize=(6, 4))
for model in models:
    rs = [r for r in means if r["model"] == model]
    sev = sorted({r["severity"] for r in rs})
    clean = C.mean_ci(r["clean_accuracy"] for r in rs if r["severity"] == sev[0])
    pts = [clean] + [C.mean_ci(r["accuracy"] for r in rs if r["severity"] == s) for s in sev]
    x = [0] + sev
    m = np.array([p[0] for p in pts]); ci = np.array([p[1] or 0.0 for p in pts])
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
ax.set_xlabel("severity (0 = clean)"); ax.set_ylabel(f"accuracy (mean over {', '.join(map(str, nc))} corruptions)")
ax.set_xticks(range(0, 6)); ax.grid(alpha=0.3); ax.legend(fontsize=8)
ax.set_title(f"Corruption robustness ({M['scale']} scale, n = {means[0]['n']} images)")
_png = C.save_figure(fig, "corruptions_severity.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("## Per corruption (mean over severities and seeds)"),
    new_code_cell("""\
names = [c for c in dict.fromkeys(r["corruption"] for r in corr) if c != "mean"]
mat = np.full((len(models), len(names)), np.nan)
for i, model in enumerate(models):
    for j, name in enumerate(names):
        v = [r["accuracy"] for r in corr if r["model"] == model and r["corruption"] == name]
        if v:
            mat[i, j] = np.mean(v)
fig, ax = plt.subplots(figsize=(0.62 * len(names) + 2.5, 0.55 * len(models) + 1.8))
im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", aspect="auto")
ax.set_xticks(range(len(names))); ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
ax.set_yticks(range(len(models))); ax.set_yticklabels([C.label(m) for m in models], fontsize=8)
for i in range(len(models)):
    for j in range(len(names)):
        if np.isfinite(mat[i, j]):
            ax.text(j, i, f"{100 * mat[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if mat[i, j] < 0.6 else "black")
fig.colorbar(im, ax=ax, label="accuracy")
ax.set_title("accuracy per corruption (%, mean over severities 1–5)")
_png = C.save_figure(fig, "corruptions_per_corruption.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_code_cell("""\
cols_n = 6
rows_n = int(np.ceil(len(names) / cols_n))
fig, axes = plt.subplots(rows_n, cols_n, figsize=(2.6 * cols_n, 2.2 * rows_n), squeeze=False, sharex=True, sharey=True)
for ax, name in zip(axes.flat, names):
    for model in models:
        rs = [r for r in corr if r["model"] == model and r["corruption"] == name]
        sev = sorted({r["severity"] for r in rs})
        ax.plot(sev, [C.mean_ci(r["accuracy"] for r in rs if r["severity"] == s)[0] for s in sev], "o-", ms=3,
                color=C.color(model), label=C.label(model))
    ax.set_title(name, fontsize=8); ax.set_ylim(0, 1.02); ax.grid(alpha=0.3)
for ax in list(axes.flat)[len(names):]:
    ax.set_axis_off()
axes[0][0].legend(fontsize=6)
fig.supxlabel("severity"); fig.supylabel("accuracy")
_png = C.save_figure(fig, "corruptions_grid.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("## Tables"),
    new_code_cell("""\
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
sev_cols = [("model", "model"), ("seeds", "seeds"), ("n", "n"), ("clean", "clean")] + \\
    [(f"s{s}", f"severity {s}") for s in sorted({r["severity"] for r in means})] + [("sanity", "sanity checks")]
C.write_table(sev_rows, sev_cols, "corruptions_severity")
display(Markdown(C.markdown_table(sev_rows, sev_cols)))
per_rows = []
for j, name in enumerate(names):
    row = {"corruption": name}
    for i, model in enumerate(models):
        row[model] = mat[i, j] if np.isfinite(mat[i, j]) else None
    bad = [r for r in corr if r["corruption"] == name and not r["sanity_ok"]]
    row["sanity"] = "ok" if not bad else "FAILED: " + ", ".join(sorted({f for r in bad for f in str(r["failed_checks"]).split(";") if f}))
    per_rows.append(row)
per_cols = [("corruption", "corruption")] + [(m, C.label(m)) for m in models] + [("sanity", "sanity checks")]
C.write_table(per_rows, per_cols, "corruptions_per_corruption")
display(Markdown(C.markdown_table(per_rows, per_cols)))"""),
]

# ----------------------------------------------------------------------------- 03
ADVERSARIAL = [
    new_markdown_cell("""\
# Adversarial examples at a large L2 radius

For each model: clean test image, adversarial image, and the perturbation δ = x_adv − x (grey
images: red = brighter, blue = darker, scaled per model to its largest |δ|). The attack is the
harness's APGD along every gradient path of the model, CE then DLR loss; an image keeps the
first adversarial image that fools the model's own predictor. The same test images for every
model. Mansingh et al. (2023, Figure 2) report that EP-CNN perturbations look semantic; this
notebook shows what our models' perturbations look like, whatever that is."""),
    new_code_cell(SETUP),
    new_code_cell("""\
adv_dir = R / "adversarial"
files = {p.stem.rsplit("-s", 1)[0]: p for p in sorted(adv_dir.glob("*.npz"))}
models = [m for m in C.MODEL_ORDER if m in files] + sorted(set(files) - set(C.MODEL_ORDER))
data = {m: dict(np.load(files[m], allow_pickle=False)) for m in models}
meta = {m: C.read_json(f"adversarial/{files[m].stem}.json", R) for m in models}
k = min(3, min(len(d["y"]) for d in data.values()))

def show(ax, img, **kw):
    img = np.asarray(img)
    if img.shape[0] == 1:
        ax.imshow(img[0], **({"cmap": "gray", "vmin": 0, "vmax": 1} | kw))
    else:
        ax.imshow(np.transpose(img, (1, 2, 0)).clip(0, 1))
    ax.set_xticks([]); ax.set_yticks([])

fig, axes = plt.subplots(len(models), 3 * k, figsize=(1.55 * 3 * k, 1.85 * len(models)), squeeze=False)
for i, m in enumerate(models):
    d = data[m]
    delta = d["x_adv"] - d["x"]
    scale = float(np.abs(delta[:k]).max()) or 1.0
    for j in range(k):
        a0, a1, a2 = axes[i][3 * j], axes[i][3 * j + 1], axes[i][3 * j + 2]
        show(a0, d["x"][j]); show(a1, d["x_adv"][j])
        if delta.shape[1] == 1:
            a2.imshow(delta[j][0], cmap="seismic", vmin=-scale, vmax=scale); a2.set_xticks([]); a2.set_yticks([])
        else:
            show(a2, 0.5 + delta[j] / (2 * scale))
        a0.set_title(f"y={d['y'][j]} pred {d['pred_clean'][j]}", fontsize=7)
        a1.set_title(f"adv pred {d['pred_adv'][j]}" + (" ✗" if d["pred_adv"][j] != d["y"][j] else " ✓"), fontsize=7)
        a2.set_title(f"δ, ‖δ‖={d['perturbation_norm'][j]:.2f}", fontsize=7)
    axes[i][0].set_ylabel(C.label(m), fontsize=8)
eps = {float(d["eps"]) for d in data.values()}; norm = {str(d["norm"]) for d in data.values()}
fig.suptitle(f"clean | adversarial | perturbation, {'/'.join(norm)} ε = {', '.join(f'{e:g}' for e in eps)} "
             f"({M['scale']} scale)", y=1.0)
fig.tight_layout()
_png = C.save_figure(fig, "adversarial_examples.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("""\
## Mean perturbation per model

The average of δ over the shown images is noise-like for most models; the per-class structure is
easier to see in the mean |δ| map (where the attack puts its budget)."""),
    new_code_cell("""\
fig, axes = plt.subplots(1, len(models), figsize=(2.0 * len(models), 2.3), squeeze=False)
for ax, m in zip(axes[0], models):
    d = data[m]
    mag = np.abs(d["x_adv"] - d["x"]).mean(axis=(0, 1))
    ax.imshow(mag, cmap="magma"); ax.set_xticks([]); ax.set_yticks([])
    ax.set_title(C.label(m), fontsize=8)
fig.suptitle("mean |δ| over the attacked images", y=1.05)
_png = C.save_figure(fig, "adversarial_mean_abs_perturbation.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_code_cell("""\
rows = []
for m in models:
    d, j = data[m], meta[m]
    rows.append({"model": C.label(m), "norm": j["norm"], "eps": j["eps"], "n": j["n"], "clean_correct": j["clean_correct"],
                 "fooled": j["fooled"], "mean_norm": float(np.mean(d["perturbation_norm"])),
                 "max_norm": j["max_perturbation_norm"], "paths": ";".join(j["paths"]), "steps": j["steps"],
                 "converged": j["adversarial_converged"]})
cols = [("model", "model"), ("norm", "norm"), ("eps", "ε"), ("n", "images"), ("clean_correct", "clean correct"),
        ("fooled", "fooled"), ("mean_norm", "mean ‖δ‖"), ("max_norm", "max ‖δ‖"), ("paths", "gradient paths"),
        ("steps", "APGD steps"), ("converged", "equilibria converged")]
C.write_table(rows, cols, "adversarial_examples")
display(Markdown(C.markdown_table(rows, cols)))"""),
]

# ----------------------------------------------------------------------------- 04
FIDELITY = [
    new_markdown_cell("""\
# Circuit fidelity: numba vs ngspice, EP vs true gradients

1. **SPICE agreement.** The trained circuit CNN exported by `python -m epsim.export` (Shockley
   clamp diodes, free / +β / −β phases) and solved by ngspice (`.op`); node voltages compared
   with the numba solver's, and solve times (ngspice: one `ngspice -b -r` process per netlist,
   parsing included; numba: one warm single-sample solve on one thread).
2. **Input gradients.** The circuit's EP estimate of ∂L/∂x — read from the input sources'
   currents in the ±β nudged phases — against implicit differentiation at the equilibrium
   (itself checked against finite differences) and BPTT through the solver's sweeps.
3. **Software EP-CNN (GDU check).** EP's parameter gradient against BPTT's, per layer
   (`python -m epsim.gdu`)."""),
    new_code_cell(SETUP),
    new_code_cell("""\
F = C.read_json("fidelity.json", R)
print("available:", ", ".join(F) or "nothing")
sp = F.get("spice_vs_numba"); bench = F.get("bench_spice")
ncol = 2 + (1 if bench and bench.get("rows") else 0)
fig, axes = plt.subplots(1, ncol, figsize=(4.6 * ncol, 3.6), squeeze=False)
ax = axes[0][0]
if sp:
    rows = sp["rows"]
    phases = ["free", "plus", "minus"]
    for p, mk in zip(phases, "o^v"):
        rs = [r for r in rows if r["phase"] == p]
        ax.semilogy([r["sample"] for r in rs], [max(r["max_abs_diff_V"], 1e-18) for r in rs], mk, label=p)
    ax.set_xlabel("test sample"); ax.set_ylabel("max |V_ngspice − V_numba| (V)")
    ax.set_title(f"node voltages, {rows[0]['nodes']} nodes, {rows[0]['diode']} diodes", fontsize=9); ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax = axes[0][1]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["ngspice_s"] for r in rows], 0.4, label="ngspice (process + parse + .op)")
    ax.bar(x + 0.2, [r["numba_s"] for r in rows], 0.4, label="numba (warm, 1 thread)")
    ax.set_yscale("log"); ax.set_xticks(x); ax.set_xticklabels([f"{r['sample']}{r['phase'][0]}" for r in rows], fontsize=7)
    ax.set_ylabel("solve time (s)"); ax.legend(fontsize=7)
    ax.set_title(f"median ratio ngspice/numba = {sp['median_time_ratio']:.0f}×", fontsize=9)
else:
    for a in axes[0][:2]:
        a.text(0.5, 0.5, "no SPICE comparison in these results", ha="center"); a.set_axis_off()
if ncol == 3:
    ax = axes[0][2]
    b = bench["rows"]
    ax.loglog([r["elements"] for r in b], [r["ratio"] for r in b], "o-")
    for r in b:
        ax.annotate(f"{r['ratio']:.0f}×\\nagree {r['agree_V']:.0e} V", (r["elements"], r["ratio"]), fontsize=7,
                    xytext=(-4, 4), textcoords="offset points", ha="right")
    ax.set_xlabel("circuit elements (resistive MLP)"); ax.set_ylabel("ngspice time / numba time")
    ax.set_title("benchmarks/bench_spice.py", fontsize=9); ax.grid(alpha=0.3, which="both")
fig.tight_layout()
_png = C.save_figure(fig, "fidelity_spice.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_code_cell("""\
G = F.get("input_gradients")
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), squeeze=False)
if G:
    eps_rows = G["ep"]
    betas = np.array([e["beta"] for e in eps_rows])
    med = np.array([e["cosine"]["median"] for e in eps_rows]); lo = np.array([e["cosine"]["min"] for e in eps_rows])
    ax = axes[0][0]
    ax.semilogx(betas, 1 - med, "o-", label="EP estimate: 1 − median cosine")
    ax.semilogx(betas, 1 - lo, "v:", label="EP estimate: 1 − worst cosine")
    ax.axhline(max(1 - G["bptt"]["cosine"]["median"], 1e-16), color="k", ls="--", label="BPTT: 1 − median cosine")
    ax.set_yscale("log"); ax.set_xlabel("nudging β of the EP estimate"); ax.set_ylabel("1 − cos(path, implicit)")
    ax.set_title(f"input-gradient direction, {G['n']} images ({G['loss']} loss)", fontsize=9)
    ax.legend(fontsize=7); ax.grid(alpha=0.3, which="both")
    ax = axes[0][1]
    rmed = np.array([e["norm_ratio"]["median"] for e in eps_rows])
    ax.semilogx(betas, rmed, "o-", label="EP / implicit (median)")
    ax.axhline(G["bptt"]["norm_ratio"]["median"], color="k", ls="--", label="BPTT / implicit (median)")
    ax.set_xlabel("β"); ax.set_ylabel("‖g_path‖ / ‖g_implicit‖"); ax.legend(fontsize=7); ax.grid(alpha=0.3)
    ax.set_title("input-gradient magnitude", fontsize=9)
    ax = axes[0][2]
    fd = G["finite_differences"]
    a, b = np.array(fd["directional_fd"]), np.array(fd["directional_implicit"])
    ax.plot(a, b, "o"); lim = float(max(np.abs(a).max(), np.abs(b).max())) * 1.1
    ax.plot([-lim, lim], [-lim, lim], "k:", lw=1)
    ax.set_xlabel("central finite difference of the loss"); ax.set_ylabel("implicit gradient · direction")
    ax.set_title(f"implicit vs finite differences (median rel. err. {fd['relative_error']['median']:.1e})", fontsize=9)
    ax.grid(alpha=0.3)
else:
    for a in axes[0]:
        a.text(0.5, 0.5, "no input-gradient comparison in these results", ha="center"); a.set_axis_off()
fig.tight_layout()
_png = C.save_figure(fig, "fidelity_gradients.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("## Tables"),
    new_code_cell("""\
rows = []
if sp:
    rows.append({"check": "ngspice vs numba node voltages", "value": f"max {sp['max_abs_diff_V']:.2e} V",
                 "detail": f"{len(sp['rows'])} netlists ({sp['model']}, {sp['rows'][0]['nodes']} nodes, "
                           f"{sp['rows'][0]['elements']} elements)", "command": sp["command"]})
    rows.append({"check": "solve time ngspice / numba", "value": f"{sp['median_time_ratio']:.0f}x (median)",
                 "detail": f"ngspice {sp['median_ngspice_s']:.3f} s, numba {sp['median_numba_s']:.5f} s at "
                           f"{sp['numba_tol_A']:g} A", "command": sp["command"]})
if bench and bench.get("rows"):
    for r in bench["rows"]:
        rows.append({"check": f"bench_spice {r['size']} elements", "value": f"{r['ratio']:.0f}x",
                     "detail": f"{r['elements']} elements, ngspice {r['ngspice_s']:.3f} s, numba {r['numba_s']:.5f} s, "
                               f"agree {r['agree_V']:.1e} V", "command": bench["command"]})
if G:
    rows.append({"check": "BPTT vs implicit input gradient", "value": f"median cos {G['bptt']['cosine']['median']:.6f}",
                 "detail": f"worst {G['bptt']['cosine']['min']:.6f}, {G['n']} images", "command": G["command"]})
    for e in G["ep"]:
        rows.append({"check": f"EP (β={e['beta']:g}) vs implicit input gradient",
                     "value": f"median cos {e['cosine']['median']:.6f}",
                     "detail": f"worst {e['cosine']['min']:.6f}, norm ratio {e['norm_ratio']['median']:.4f}, "
                               f"{e['converged']}/{G['n']} converged", "command": G["command"]})
    rows.append({"check": "implicit vs finite differences", "value": f"median rel. err. {G['finite_differences']['relative_error']['median']:.1e}",
                 "detail": f"max {G['finite_differences']['relative_error']['max']:.1e} over {G['finite_differences']['n']} "
                           "random directions (ideal diodes: a kink within ±h gives the outliers)", "command": G["command"]})
gdu = F.get("gdu")
if gdu:
    for r in gdu["rows"]:
        rows.append({"check": f"software EP-CNN: EP vs BPTT, {r['layer']}", "value": f"cos {r['cosine']:.6f}",
                     "detail": f"norm ratio {r['norm_ratio']:.6f}; {gdu['setup']}", "command": gdu["command"]})
cols = [("check", "check"), ("value", "value"), ("detail", "detail"), ("command", "command")]
C.write_table(rows, cols, "fidelity")
display(Markdown(C.markdown_table(rows, cols)))"""),
]

# ----------------------------------------------------------------------------- 05
SUMMARY = [
    new_markdown_cell("""\
# Summary: clean and robust accuracy, with the sanity status of every number

Every cell: mean over training seeds (± 95 % t-interval when there are several), followed by ✓
when every automatic sanity check behind it passed (in-ball, converged equilibria, monotone in
ε, ≈0 at unbounded ε, iterative ≥ single-step, black box ≤ white box, finite non-zero
gradients, clean accuracy with the attack's own predictor, certified ≤ robust), or ✗ and the
names of the checks that failed. The *certified* columns (circuit models only) give the
accuracy the circuit's monotonicity certificate guarantees at the headline ε (a lower bound
beside the attack's upper bound); software models have none (—), and a circuit whose results
come from a run without `certify-*` says "not run"."""),
    new_code_cell(SETUP),
    new_code_cell("""\
display(Markdown(C.headline_markdown(R)))
md = C.figures_dir() / "summary_table.md"
md.write_text(C.headline_markdown(R) + "\\n")
print(f"wrote {md}")"""),
    new_markdown_cell("## Certified accuracy beside the empirical one (headline white-box ε)"),
    new_code_cell("""\
crows = C.certified_rows(R)
ccols = C.certified_columns(crows)
C.write_table(crows, ccols, "certified_summary")
if not any(v not in (C.NO_CERTIFICATE, C.NOT_RUN) for r in crows for k, v in r.items() if k.startswith("certify-")):
    print("no certificate in these results: the certified columns fill in once the pipeline is rerun "
          "(python analysis/run_all.py --scale SCALE --out RESULTS_DIR)")
display(Markdown(C.markdown_table(crows, ccols)))"""),
    new_code_cell("""\
rows = C.headline_rows(R)
cols = C.headline_columns(rows)
keys = cols + ["corruptions"]
fig, ax = plt.subplots(figsize=(max(7, 1.5 * len(keys) + 2), 4))
w = 0.8 / max(len(rows), 1)
for i, r in enumerate(rows):
    xs, ms, cis, bad = [], [], [], []
    for j, key in enumerate(["clean"] + keys):
        entry = r.get(key)
        if entry is None:
            continue
        mci, failed = (entry, []) if key == "clean" else entry
        xs.append(j + (i - (len(rows) - 1) / 2) * w); ms.append(mci[0]); cis.append(mci[1] or 0.0)
        bad.append(bool(failed) or (key == "clean" and not r.get("clean_ok")))
    bars = ax.bar(xs, ms, w, yerr=cis if any(cis) else None, color=C.color(r["model"]), label=r["label"], capsize=2)
    for b, f in zip(bars, bad):
        if f:
            b.set_hatch("//"); b.set_edgecolor("red")
labels = ["clean"] + [C.column_header((a, e)).replace(" ε=", "\\nε=") for a, e in cols] + ["corruptions\\n(mean)"]
ax.set_xticks(range(len(labels))); ax.set_xticklabels(labels, fontsize=8)
ax.set_ylabel("accuracy"); ax.set_ylim(0, 1.05); ax.legend(fontsize=7, ncol=3); ax.grid(axis="y", alpha=0.3)
ax.set_title(f"headline numbers ({M['scale']} scale; hatched red = a sanity check failed)", fontsize=10)
_png = C.save_figure(fig, "summary_bars.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("## Every number with its checks"),
    new_code_cell("""\
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
        allrows.append({"model": r["model"], "seed": r["seed"], "what": f"corruptions (mean of {r['n_corruptions']})",
                        "eps": f"severity {r['severity']}", "n": r["n"], "clean": r["clean_accuracy"],
                        "accuracy": r["accuracy"],
                        "sanity": "ok" if r["sanity_ok"] else "FAILED: " + str(r["failed_checks"]).replace(";", ", "),
                        "checks": "", "step": r["step"]})
cols = [("model", "model"), ("seed", "seed"), ("what", "attack"), ("eps", "ε / severity"), ("n", "n"),
        ("clean", "clean"), ("accuracy", "accuracy"), ("sanity", "sanity"), ("checks", "checks"), ("step", "driver step")]
C.write_table(allrows, cols, "all_numbers")
failed = [r for r in allrows if not r["sanity"].startswith("ok")]
print(f"{len(allrows)} numbers, {len(failed)} with a failed sanity check")
display(Markdown(C.markdown_table(failed, cols) if failed else "**No failed sanity checks.**"))"""),
    new_code_cell("""\
runs = C.read_csv("runs.csv", R)
rc = [{"model": r["model"], "seed": r["seed"], "run": r["group"], "n": r["n"], "clean": r["clean_accuracy"],
       "sanity": "ok" if r["sanity_ok"] else "FAILED: " + str(r["failed_checks"]).replace(";", ", "),
       **{k: v for k, v in r.items() if k.startswith("check_")}, "wall_s": r["wall_s"]} for r in runs]
checks = list(dict.fromkeys(k for r in rc for k in r if k.startswith("check_")))
cols = [("model", "model"), ("seed", "seed"), ("run", "run"), ("n", "n"), ("clean", "clean"), ("sanity", "sanity")] + \
    [(k, k[len("check_"):].replace("_", " ")) for k in checks] + [("wall_s", "wall s")]
C.write_table(rc, cols, "run_checks")
display(Markdown(C.markdown_table(rc, cols)))"""),
    new_code_cell("""\
steps = M.get("steps", {})
st = [{"step": k, "status": v.get("status"), "wall_s": v.get("wall_s"), "command": v.get("command")}
      for k, v in steps.items() if k in M.get("plan", [])]
cols = [("step", "step"), ("status", "status"), ("wall_s", "wall s"), ("command", "command")]
C.write_table(st, cols, "manifest_steps")
total = sum(v["wall_s"] or 0 for v in st)
print(f"{len(st)} steps, {sum(v['status'] == 'done' for v in st)} done, total recorded wall time {total / 60:.1f} min")
display(Markdown(C.markdown_table(st, cols)))"""),
]

# ----------------------------------------------------------------------------- 06
DEVICE = [
    new_markdown_cell("""\
# Crossbar realism: device models and wire resistance

The circuit CNN trained with each device model's conductance updates (`python -m epsim.device_sweep`:
conductance range, finite levels, nonlinear/asymmetric steps, write noise, device-to-device
variation; presets from the literature) and evaluated on crossbars with wire (line) resistance,
solved exactly by nodal analysis, and with read noise (mean ± std over repeated reads). Where the
sweep ran attacks, robust accuracy of each chip under PGD-L2 (gradients of the nominal circuit,
i.e. a transfer attack on the non-ideal chip) and Square-L2 (querying the chip itself)."""),
    new_code_cell(SETUP),
    new_code_cell("""\
try:
    D = C.read_json("device_sweep.json", R)
except C.MissingResults as exc:
    D = None
    print(f"no device sweep in these results ({exc})")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), squeeze=False)
if D:
    ax = axes[0][0]
    for run in D["runs"]:
        ev = sorted(run["eval"], key=lambda e: e["wire_resistance_ohm"])
        ax.errorbar([e["wire_resistance_ohm"] for e in ev], [e["accuracy_mean"] for e in ev],
                    yerr=[e["accuracy_std"] for e in ev], marker="o", capsize=3, label=run["name"])
    ax.set_xscale("symlog", linthresh=1.0); ax.set_ylim(0, 1.02); ax.grid(alpha=0.3)
    ax.set_xlabel("wire resistance per segment (Ω)"); ax.set_ylabel("test accuracy")
    ax.set_title(f"{D['model']} on {D['dataset']}, {D['epochs']} epochs per device", fontsize=9); ax.legend(fontsize=8)
    ax = axes[0][1]
    any_rob = False
    for run in D["runs"]:
        rob = run.get("robustness")
        if not rob:
            continue
        any_rob = True
        for attack, style in (("pgd-l2", "o-"), ("square-l2", "s--")):
            rs = sorted([r for r in rob["rows"] if r["attack"] == attack and not r.get("sanity_only")], key=lambda r: r["eps"])
            if rs:
                ax.plot([r["eps"] for r in rs], [r["robust_accuracy"] for r in rs], style,
                        label=f"{run['name']} {attack} ({rob['wire_resistance_ohm']:g} Ω)")
            bad = [r for r in rs if not r["sanity_ok"]]
            if bad:
                ax.plot([r["eps"] for r in bad], [r["robust_accuracy"] for r in bad], "x", color="red", ms=9, mew=2)
    if any_rob:
        ax.set_xscale("log"); ax.set_ylim(-0.02, 1.02); ax.grid(alpha=0.3); ax.legend(fontsize=6)
        ax.set_xlabel("ε (L2, pixel units)"); ax.set_ylabel("robust accuracy")
        ax.set_title("attacks on the non-ideal chips", fontsize=9)
    else:
        ax.text(0.5, 0.5, "the sweep ran no attacks", ha="center"); ax.set_axis_off()
else:
    for a in axes[0]:
        a.text(0.5, 0.5, "no device sweep in these results", ha="center"); a.set_axis_off()
fig.tight_layout()
_png = C.save_figure(fig, "device_realism.png")
display(Image(filename=str(_png))); plt.close(fig)"""),
    new_code_cell("""\
rows = []
if D:
    for run in D["runs"]:
        row = {"device": run["name"], "train_wires": run.get("train_wire_resistance_ohm"),
               "train_acc": run.get("train_accuracy"), "test_acc": run.get("test_accuracy")}
        for e in run["eval"]:
            row[f"w{e['wire_resistance_ohm']:g}"] = e["accuracy_mean"]
        rob = run.get("robustness")
        if rob:
            for r in rob["rows"]:
                if not r.get("sanity_only"):
                    row[f"{r['attack']}@{r['eps']:g}"] = r["robust_accuracy"]
            row["sanity"] = "ok" if rob["sanity_ok"] else "FAILED: " + ", ".join(rob["failed_checks"])
        unconv = sum(e.get("unconverged", 0) for e in run["eval"])
        row["unconverged"] = unconv
        rows.append(row)
keys = list(dict.fromkeys(k for r in rows for k in r))
names = {"device": "device", "train_wires": "trained with wires (Ω)", "train_acc": "train acc.",
         "test_acc": "test acc. (no wires)", "sanity": "attack sanity", "unconverged": "unconverged solves"}
cols = [(k, names.get(k, f"{k[1:]} Ω" if k.startswith("w") else k)) for k in keys]
if not rows:
    rows, cols = [{"note": "no device sweep in these results"}], [("note", "note")]
C.write_table(rows, cols, "device_realism")
display(Markdown(C.markdown_table(rows, cols)))"""),
]

# ----------------------------------------------------------------------------- 07
ENERGY = [
    new_markdown_cell("""\
# Energy and latency of the circuits

`python -m epsim.energy` (README, "Energy and latency") simulates each test image's free phase of
the trained circuit **in time**: every free node has a capacitance to ground (by default 0.1 fF per
crossbar cell on its lines plus 10 fF per node: order-of-magnitude assumptions for a sub-micron
crossbar, not a process's figures), the inputs switch on at t = 0 with every node at 0 V, and an
adaptive BDF2 integrator follows the node voltages until they settle. Per image it measures the
**settling time** (every output within 1 mV of its DC value), the **decision time** (after which the
predicted class no longer changes), the **energy per inference** the sources deliver until settled,
the **static power** at equilibrium, and the energy of a **training step** (free, +β and −β phases
plus the expected programming pulses of one SGD step). **Early readout**: accuracy of the class read
at fixed times before or after the median settling time and, where the run attacked it, the robust
accuracy of PGD-L2 (implicit gradients of the settled circuit, CE and DLR) against the circuit read at
those times beside the settled circuit's. The digital figures are **estimates**: the network's
multiply-accumulates per feed-forward inference × 4.6 pJ (32-bit float) or 0.23 pJ (8-bit integer)
per MAC at 45 nm (Horowitz, ISSCC 2014), arithmetic only, no memory access.

One run per circuit model (first training seed), `energy/<model>-s<seed>` of `analysis/run_all.py`;
results from a run without those steps show "not run" and how to rerun."""),
    new_code_cell(SETUP),
    new_code_cell("""\
E = C.energy_results(R)
if not E:
    MISSING = C.energy_not_run(R)
    print(MISSING)
    display(Markdown("**Energy and latency " + MISSING + "**"))
else:
    MISSING = None
    for e in E:
        s, st = e["summary"], e["settings"]
        print(f"{e['step']}: {C.label(e['model'])}, {st.get('diode')} diodes, input gain {st.get('input_gain_V')} V, "
              f"{s['n']} {st.get('dataset')} test images ({s.get('unsettled', 0)} unsettled within "
              f"{1e9 * st['t_stop_s']:g} ns), capacitances {1e15 * st['cell_capacitance_F']:g} fF per cell + "
              f"{1e15 * st['node_capacitance_F']:g} fF per node\\n    {e['command']}")

def time_axis(ax):  # log time axis labelled at 1, 2, 5 x 10^k ns
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}")); ax.xaxis.set_minor_formatter(NullFormatter())

def placeholder(name, why):
    fig, ax = plt.subplots(figsize=(8, 1.6))
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=9, wrap=True); ax.set_axis_off()
    _png = C.save_figure(fig, name)
    display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("""\
## Voltage traces of one image

The free phase of the first test image in each circuit model: the first three nodes of every hidden
layer and every output (the image's class in black), from the inputs switching on until after the
outputs settle. Dashed: this image's settling time; dotted: its decision time."""),
    new_code_cell("""\
traced = [(e, C.energy_traces(e, R)) for e in E]
traced = [(e, t) for e, t in traced if t is not None]
if not traced:
    placeholder("energy_traces.png", "energy and latency " + MISSING if MISSING else
                "no voltage traces in these results (the energy runs saved no traces.npz)")
else:
    layers = [sorted((k for k in t if k.startswith("layer")), key=lambda k: int(k[5:]))[:-1] for _, t in traced]
    ncol = max(len(ls) for ls in layers) + 1
    fig, axes = plt.subplots(len(traced), ncol, figsize=(3.6 * ncol, 2.7 * len(traced)), squeeze=False)
    for i, ((e, t), ls) in enumerate(zip(traced, layers)):
        s = e["summary"]
        ts = 1e9 * t["t_s"]
        own = {k: float(t[k][0]) for k in ("settle_time_s", "decision_time_s") if k in t}
        end = own.get("settle_time_s", (s["settle_time_s"].get("p95") or float("nan")))
        t_max = min(ts[-1], 2.5e9 * end) if np.isfinite(end) and end > 0 else ts[-1]
        keep = ts <= t_max
        y = int(t["labels"][0])
        panels = [(f"layer {k[5:]}: first {t[k].shape[2]} nodes", t[k][:, 0, :], None) for k in ls]
        panels.append((f"outputs (class {y} in black)", t["v_out"][:, 0, :], y))
        where = list(range(len(panels) - 1)) + [ncol - 1]  # the outputs in the last column
        for j in set(range(ncol)) - set(where):
            axes[i][j].set_axis_off()
        for (title, v, cls), j in zip(panels, where):
            ax = axes[i][j]
            for n in range(v.shape[1]):
                ax.plot(ts[keep], v[keep, n], lw=2.2 if n == cls else 1.0,
                        color="k" if n == cls else None, alpha=1.0 if cls is None or n == cls else 0.6)
            if "settle_time_s" in own:
                ax.axvline(1e9 * own["settle_time_s"], color="gray", ls="--", lw=1)
            if "decision_time_s" in own:
                ax.axvline(1e9 * own["decision_time_s"], color="gray", ls=":", lw=1)
            ax.set_title(f"{C.label(e['model'])}: {title}", fontsize=8); ax.grid(alpha=0.3)
            ax.set_xlabel("time (ns)"); ax.set_ylabel("V")
    fig.tight_layout()
    _png = C.save_figure(fig, "energy_traces.png")
    display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("""\
## Reading the class early

Left: test accuracy of the class read at each readout time (0.1, 0.25, 0.5, 1 and 2 × the median
settling time), the settled (DC) accuracy dashed. Right, where the run attacked the early readout:
robust accuracy under PGD-L2 against the circuit read at each time (solid) and against the settled
circuit (dashed), with the clean accuracy of the attacked images read at the same time (dotted);
a red ✗ marks a point whose sanity checks failed."""),
    new_code_cell("""\
if not E:
    placeholder("energy_early_readout.png", "energy and latency " + MISSING)
else:
    attacked = [e for e in E if e["summary"].get("early_readout_attack")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), squeeze=False)
    ax = axes[0][0]
    for e in E:
        s = e["summary"]
        pts = [p for p in s.get("early_readout") or [] if p.get("time_s") is not None]  # null: nothing settled
        ax.plot([1e9 * p["time_s"] for p in pts], [p["accuracy"] for p in pts], "o-", color=C.color(e["model"]),
                label=f"{C.label(e['model'])} ({s['n']} images)")
        if s.get("accuracy_dc") is not None:
            ax.axhline(s["accuracy_dc"], color=C.color(e["model"]), ls="--", lw=1)
    time_axis(ax)
    ax.set_ylim(-0.02, 1.02); ax.grid(alpha=0.3)
    ax.set_xlabel("readout time after the inputs switch on (ns)"); ax.set_ylabel("accuracy")
    ax.set_title("early readout (dashed: settled)", fontsize=9); ax.legend(fontsize=7)
    ax = axes[0][1]
    for e in attacked:
        rows = e["summary"]["early_readout_attack"]
        early = sorted((r for r in rows if r["time_s"] is not None), key=lambda r: r["time_s"])
        x = [1e9 * r["time_s"] for r in early]
        col = C.color(e["model"])
        ax.plot(x, [r["robust_accuracy"] for r in early], "o-", color=col,
                label=f"{C.label(e['model'])}: robust, read early (n = {rows[0]['n']})")
        ax.plot(x, [r["clean_accuracy"] for r in early], ":", color=col, lw=1, label=f"{C.label(e['model'])}: clean")
        for r in rows:
            if r["time_s"] is None:
                ax.axhline(r["robust_accuracy"], color=col, ls="--", lw=1.2, label=f"{C.label(e['model'])}: robust, settled")
        bad = [r for r in early if not r.get("sanity_ok", True)]
        if bad:
            ax.plot([1e9 * r["time_s"] for r in bad], [r["robust_accuracy"] for r in bad], "x", color="red", ms=9, mew=2)
        if any(not r.get("sanity_ok", True) for r in rows if r["time_s"] is None):
            print(f"{e['step']}: the settled circuit's attack failed a sanity check")
    if attacked:
        kinds = sorted({(r["norm"], r["eps"]) for e in attacked for r in e["summary"]["early_readout_attack"]})
        steps = sorted({e.get("attack_steps") for e in attacked if e.get("attack_steps")})
        time_axis(ax)
        ax.set_ylim(-0.02, 1.02); ax.grid(alpha=0.3); ax.legend(fontsize=6)
        ax.set_xlabel("readout time (ns)"); ax.set_ylabel("accuracy")
        ax.set_title(", ".join(f"PGD-{nm.upper()} ε = {ep:g}" for nm, ep in kinds)
                     + (f", {'/'.join(map(str, steps))} steps" if steps else "") + " (dashed: settled)", fontsize=9)
    else:
        ax.text(0.5, 0.5, "the energy runs did not attack the early readout\\n(rerun with --attack-eps)",
                ha="center", va="center", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    _png = C.save_figure(fig, "energy_early_readout.png")
    display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("""\
## Energy per inference: circuit vs digital estimates

Median energy per inference of each circuit (the whisker reaches the 95th percentile over images),
per training step per image where measured, and the digital estimates for the same network
(fp32 and int8 multiply-accumulates at 45 nm, arithmetic only). Log scale."""),
    new_code_cell("""\
if not E:
    placeholder("energy_per_inference.png", "energy and latency " + MISSING)
else:
    bars = [("circuit: inference", "#d62728"), ("circuit: training step per image", "#ff9896"),
            ("digital fp32 (estimate)", "#1f77b4"), ("digital int8 (estimate)", "#aec7e8")]
    fig, ax = plt.subplots(figsize=(max(6, 2.6 * len(E) + 2), 4))
    w = 0.8 / len(bars)
    shown, labelled = [], set()
    for i, e in enumerate(E):
        s = e["summary"]
        d = s.get("digital_energy_per_inference_J_estimate") or {}
        ts = ((s.get("training_step") or {}).get("energy_J_per_image") or {})
        vals = [(s["energy_per_inference_J"]["median"], s["energy_per_inference_J"].get("p95")),
                (ts.get("median"), ts.get("p95")), (d.get("fp32_45nm"), None), (d.get("int8_45nm"), None)]
        for j, ((v, p95), (name, col)) in enumerate(zip(vals, bars)):
            x = i + (j - (len(bars) - 1) / 2) * w
            if v is None:
                ax.text(x, 0, "not run", rotation=90, ha="center", va="bottom", fontsize=6,
                        transform=ax.get_xaxis_transform())
                continue
            err = [[0], [p95 - v]] if p95 is not None and p95 >= v else None
            ax.bar(x, v, w, color=col, yerr=err, capsize=2, label=None if name in labelled else name)
            labelled.add(name)
            ax.annotate(f"{1e9 * v:.3g}", (x, v if err is None else p95), xytext=(0, 2), textcoords="offset points",
                        ha="center", fontsize=6)
            shown += [v] + ([p95] if err is not None else [])
    ax.set_yscale("log"); ax.set_ylim(min(shown) / 4, max(shown) * 3); ax.set_xticks(range(len(E)))
    ax.set_xticklabels([f"{C.label(e['model'])}\\n{e['summary']['macs_per_inference']:,} MACs" for e in E], fontsize=8)
    ax.set_ylabel("energy (J; labels in nJ)"); ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"energy per inference ({M['scale']} scale)", fontsize=10)
    _png = C.save_figure(fig, "energy_per_inference.png")
    display(Image(filename=str(_png))); plt.close(fig)"""),
    new_markdown_cell("## Table"),
    new_code_cell("""\
def q(d, key, stat="median", scale=1.0):
    v = (d.get(key) or {}).get(stat)
    return None if v is None else scale * v

rows = []
for e in E:
    s, st = e["summary"], e["settings"]
    d = s.get("digital_energy_per_inference_J_estimate") or {}
    tr = s.get("training_step") or {}
    settled = next((r for r in s.get("early_readout_attack") or [] if r["time_s"] is None), None)
    rows.append({"model": C.label(e["model"]), "seed": e["seed"], "diode": st.get("diode"), "n": s["n"],
                 "unsettled": s.get("unsettled"),
                 "settle_med": q(s, "settle_time_s", scale=1e9), "settle_p95": q(s, "settle_time_s", "p95", 1e9),
                 "decision_med": q(s, "decision_time_s", scale=1e9),
                 "decision_p95": q(s, "decision_time_s", "p95", 1e9),
                 "energy_med": q(s, "energy_per_inference_J", scale=1e9),
                 "energy_p95": q(s, "energy_per_inference_J", "p95", 1e9),
                 "train_med": q(tr, "energy_J_per_image", scale=1e9) if tr else "not run",
                 "power_med": q(s, "static_power_W"), "macs": s.get("macs_per_inference"),
                 "fp32": 1e9 * d["fp32_45nm"] if "fp32_45nm" in d else None,
                 "int8": 1e9 * d["int8_45nm"] if "int8_45nm" in d else None,
                 "acc": s.get("accuracy_dc"),
                 "robust": (f"{settled['robust_accuracy']:.3f} (PGD-{settled['norm'].upper()} "
                            f"ε={settled['eps']:g}, n={settled['n']})") if settled else "not run"})
cols = [("model", "model"), ("seed", "seed"), ("diode", "diodes"), ("n", "images"), ("unsettled", "unsettled"),
        ("settle_med", "settling median (ns)"), ("settle_p95", "settling p95 (ns)"),
        ("decision_med", "decision median (ns)"), ("decision_p95", "decision p95 (ns)"),
        ("energy_med", "energy / inference median (nJ)"), ("energy_p95", "energy / inference p95 (nJ)"),
        ("train_med", "training step / image median (nJ)"), ("power_med", "static power median (W)"),
        ("macs", "MACs / inference"), ("fp32", "digital fp32 (nJ, estimate)"), ("int8", "digital int8 (nJ, estimate)"),
        ("acc", "accuracy (settled)"), ("robust", "robust accuracy (settled)")]
readout = []
for e in E:
    att = {r["time_s"]: r for r in e["summary"].get("early_readout_attack") or []}
    med = e["summary"]["settle_time_s"].get("median")
    for p in [p for p in e["summary"].get("early_readout") or [] if p.get("time_s") is not None]:
        a = next((r for t, r in att.items() if t is not None and abs(t - p["time_s"]) <= 1e-6 * p["time_s"]), None)
        readout.append({"model": C.label(e["model"]), "time_ns": 1e9 * p["time_s"],
                        "x_median": p["time_s"] / med if med else None, "accuracy": p["accuracy"],
                        "clean_attacked": a["clean_accuracy"] if a else None,
                        "robust": a["robust_accuracy"] if a else None,
                        "sanity": ("ok" if a.get("sanity_ok", True) else "FAILED: " + ", ".join(a["failed_checks"]))
                                  if a else "not run"})
    if None in att:
        r = att[None]
        readout.append({"model": C.label(e["model"]), "time_ns": "settled", "accuracy": e["summary"].get("accuracy_dc"),
                        "clean_attacked": r["clean_accuracy"], "robust": r["robust_accuracy"],
                        "sanity": "ok" if r.get("sanity_ok", True) else "FAILED: " + ", ".join(r["failed_checks"])})
rcols = [("model", "model"), ("time_ns", "readout time (ns)"), ("x_median", "× median settling"),
         ("accuracy", "accuracy (all images)"), ("clean_attacked", "clean (attacked images)"),
         ("robust", "robust (PGD)"), ("sanity", "attack sanity")]
if not E:
    rows = readout = [{"note": "energy and latency " + MISSING}]
    cols = rcols = [("note", "note")]
C.write_table(rows, cols, "energy_latency")
display(Markdown(C.markdown_table(rows, cols)))
C.write_table(readout, rcols, "energy_early_readout")
display(Markdown(C.markdown_table(readout, rcols)))"""),
]

NOTEBOOKS = {
    "01_robustness_curves.ipynb": CURVES,
    "02_corruptions.ipynb": CORRUPTIONS,
    "03_adversarial_examples.ipynb": ADVERSARIAL,
    "04_circuit_fidelity.ipynb": FIDELITY,
    "05_summary_table.ipynb": SUMMARY,
    "06_device_realism.ipynb": DEVICE,
    "07_energy_latency.ipynb": ENERGY,
}
# What each notebook writes to $EPSIM_FIGURES (the notebook test checks these).
FIGURES = {
    "01_robustness_curves.ipynb": ["robustness_curves.png", "certified_vs_empirical.png", "robustness_paths.png"],
    "02_corruptions.ipynb": ["corruptions_severity.png", "corruptions_per_corruption.png", "corruptions_grid.png"],
    "03_adversarial_examples.ipynb": ["adversarial_examples.png", "adversarial_mean_abs_perturbation.png"],
    "04_circuit_fidelity.ipynb": ["fidelity_spice.png", "fidelity_gradients.png"],
    "05_summary_table.ipynb": ["summary_bars.png"],
    "06_device_realism.ipynb": ["device_realism.png"],
    "07_energy_latency.ipynb": ["energy_traces.png", "energy_early_readout.png", "energy_per_inference.png"],
}
TABLES = {
    "01_robustness_curves.ipynb": ["robustness_curves"],
    "02_corruptions.ipynb": ["corruptions_severity", "corruptions_per_corruption"],
    "03_adversarial_examples.ipynb": ["adversarial_examples"],
    "04_circuit_fidelity.ipynb": ["fidelity"],
    "05_summary_table.ipynb": ["certified_summary", "all_numbers", "run_checks", "manifest_steps"],
    "06_device_realism.ipynb": ["device_realism"],
    "07_energy_latency.ipynb": ["energy_latency", "energy_early_readout"],
}


def build(name) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[c.copy() for c in NOTEBOOKS[name]])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb, timeout=600):
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--execute", action="store_true", help="run each notebook and keep its outputs")
    args = p.parse_args(argv)
    for name in NOTEBOOKS:
        nb = build(name)
        if args.execute:
            print(f"executing {name} against {os.environ.get('EPSIM_RESULTS', 'analysis/results/cpu')}")
            execute(nb)
        nbformat.write(nb, HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    sys.exit(main())
