"""Notebook 01: accuracy against ε under attack, certified accuracy, gradient paths.

Every function reads ``curves.csv`` (and ``models.csv``, ``manifest.json``) of the results
folder ``results`` (default ``$EPSIM_RESULTS``, see :func:`common.results_dir`) and writes to
``out`` (default ``$EPSIM_FIGURES``).
"""
from __future__ import annotations

import numpy as np

import common as C

from .base import save, subplots


def attack_rows(results=None) -> tuple:
    """The rows of ``curves.csv`` as ``(pgd, square, certified)``.

    PGD curves come from the PGD sweeps; Square from wherever it ran (its own runs at a few ε,
    or the PGD sweep itself); the PGD rows of a Square or seed-protocol run only serve that
    attack's comparison (:func:`common.companion_pgd`).
    """
    curves = C.read_csv("curves.csv", C.results_dir(results))
    pgd = [r for r in curves if r["family_attack"] == "pgd" and not C.companion_pgd(r)]
    square = [r for r in curves if r["family_attack"] == "square"]
    cert = [r for r in curves if r["family_attack"] == "certify"]
    return pgd, square, cert


def robustness_curves(results=None, out=None):
    """``robustness_curves.png``: robust accuracy against ε, one panel per attack (PGD-L2, PGD-L∞,
    Square-L2, Square-L∞, those present), one curve per model with its 95 % band over seeds, each
    circuit model's certified accuracy dashed beside its PGD curve, a red ✗ on points whose sanity
    checks failed. Prints how many certificate rows the results hold."""
    R = C.results_dir(results)
    M = C.manifest(R)
    pgd, square, cert = attack_rows(R)
    print(f"certificate rows: {len(cert)}" + ("" if cert else " (these results come from a run without certify-*: "
          "no certified curves; rerun analysis/run_all.py to add them)"))
    panels = [(a, rows) for a, rows in (("pgd-l2", pgd), ("pgd-linf", pgd), ("square-l2", square),
                                        ("square-linf", square))
              if any(r["attack"] == a for r in rows)]
    fig, axes = subplots(1, len(panels), figsize=(4.3 * len(panels), 3.8), squeeze=False)
    for ax, (attack, rows) in zip(axes[0], panels):
        for model in C.models_present(rows):
            pts = C.curve(rows, model, attack)
            if not pts:
                continue
            eps = np.array([p["eps"] for p in pts])
            m = np.array([p["mean"] for p in pts])
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
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(C.ATTACK_LABELS.get(attack, attack), fontsize=10)
        ax.set_xlabel("ε (pixel units)")
        ax.set_ylabel("robust accuracy")
        n = sorted({r["n"] for r in rows if r["attack"] == attack})
        ax.text(0.02, 0.02, f"n = {', '.join(map(str, n))} images", transform=ax.transAxes, fontsize=8)
    legend = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(lab, h)
    fig.legend(list(legend.values()), list(legend), loc="upper center", ncol=min(len(legend), 6), fontsize=8,
               bbox_to_anchor=(0.5, -0.1))
    fig.suptitle(f"Accuracy vs ε ({M['scale']} scale)", y=1.02)
    return save(fig, "robustness_curves.png", out)


def certified_vs_empirical(results=None, out=None):
    """``certified_vs_empirical.png``: for each circuit model with a certificate and each norm, the
    empirical PGD robust accuracy (solid, an upper bound) and the certified accuracy (dashed, a
    lower bound) against ε, the band between them shaded; a panel saying why when the results hold
    no circuit model or no certificate (printed too)."""
    R = C.results_dir(results)
    pgd, _, cert = attack_rows(R)
    fam = C.families(R)
    circuits = [m for m in C.models_present(pgd + cert) if fam.get(m) == "circuit"] if pgd else []
    norms = [a for a in ("pgd-l2", "pgd-linf") if any(r["attack"] == a for r in pgd)]
    with_cert = [m for m in circuits if any(r["model"] == m for r in cert)]
    shape = (len(with_cert), len(norms)) if with_cert and norms else (1, 1)
    fig, axes = subplots(*shape, figsize=(4.5 * shape[1] + (3 if shape == (1, 1) else 0), 3.3 * shape[0]),
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
                    ax.fill_between(x, lo, hi, color=C.color(model), alpha=0.15,
                                    label="true robust accuracy lies here")
            else:
                ax.text(0.5, 0.5, "no certificate at this norm", transform=ax.transAxes, ha="center", fontsize=8)
            bad = [p for p in emp + cpts if not p["sanity_ok"]]
            if bad:
                ax.plot([p["eps"] for p in bad], [p["mean"] for p in bad], "x", color="red", ms=9, mew=2)
            C.eps_axis(ax, [p["eps"] for p in emp + cpts])
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            k = max([p["seeds"] for p in emp + cpts] or [1])
            ax.set_title(f"{C.label(model)}: {attack[len('pgd-'):]}" + (f" ({k} seeds)" if k > 1 else ""),
                         fontsize=9)
            ax.set_xlabel("ε (pixel units)")
            ax.set_ylabel("accuracy")
            ax.legend(fontsize=7)
    if not (with_cert and norms):
        why = ("no circuit model in these results" if not circuits else
               "no certificate rows in these results (an older run): rerun analysis/run_all.py, which adds "
               "certify-l2 / certify-linf for the circuit models")
        print(why)
        axes[0][0].text(0.5, 0.5, why.replace(": ", ":\n", 1), ha="center", va="center", fontsize=9)
        axes[0][0].set_axis_off()
    fig.tight_layout()
    return save(fig, "certified_vs_empirical.png", out)


PATH_STYLES = {"bptt": "s--", "implicit": "^--", "ep": "v--", "transfer": "d--"}


def robustness_paths(results=None, out=None):
    """``robustness_paths.png``: for each model with several gradient paths (first seed) and each
    PGD norm, robust accuracy along each path (``by_path`` of ``curves.csv``) against ε, with the
    per-image worst case over paths."""
    R = C.results_dir(results)
    pgd, _, _ = attack_rows(R)
    multi = [r for r in pgd if len(str(r.get("paths") or "").split(";")) > 1]
    models = C.models_present(multi) if multi else []
    attacks = [a for a in ("pgd-l2", "pgd-linf") if any(r["attack"] == a for r in multi)]
    fig, axes = subplots(max(len(models), 1), max(len(attacks), 1),
                         figsize=(4.5 * max(len(attacks), 1), 3.4 * max(len(models), 1)), squeeze=False)
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
                ax.plot(eps, acc, PATH_STYLES.get(path, "o--"), ms=4, label=path)
            ax.plot(eps, [r["robust_accuracy"] for r in rs], "k-", lw=2, label="worst case (per image)")
            C.eps_axis(ax, eps)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{C.label(model)}, seed {seed}: {attack}", fontsize=9)
            ax.set_xlabel("ε")
            ax.set_ylabel("robust accuracy")
            ax.legend(fontsize=7)
    if not models:
        axes[0][0].text(0.5, 0.5, "no model with several gradient paths in these results", ha="center")
        axes[0][0].set_axis_off()
    fig.tight_layout()
    return save(fig, "robustness_paths.png", out)


def curves_table(results=None, out=None) -> str:
    """``robustness_curves.csv`` / ``.md``: every point of the PGD, Square and certified curves
    (mean over seeds, 95 % CI, clean accuracy, FGSM at the same ε, worst gradient path, smallest
    certified margin) with its sanity status. Returns the Markdown table."""
    pgd, square, cert = attack_rows(results)
    table = []
    for rows in (pgd, square, cert):
        for attack in ("pgd-l2", "pgd-linf", "square-l2", "square-linf", "certify-l2", "certify-linf"):
            for model in C.models_present(rows):
                for p in C.curve(rows, model, attack):
                    rs = [r for r in rows
                          if r["model"] == model and r["attack"] == attack and C.same_eps(r["eps"], p["eps"])]
                    table.append({"model": C.label(model), "attack": attack, "eps": C.eps_label(p["eps"]),
                                  "n": p["n"], "seeds": p["seeds"], "robust_accuracy": p["mean"], "ci95": p["ci"],
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
    C.write_table(table, cols, "robustness_curves", out)
    return C.markdown_table(table, cols)
