"""The seed paper's claims, measured on one results folder: each EP model against its baseline.

Mansingh et al. 2023 claim that EP-CNNs are more robust than BP-CNNs and ViTs, close to
adversarially trained CNNs, at no clean-accuracy cost, and more robust to natural corruptions.
:func:`claims_rows` compares every EP model of a summary (the software EP-CNN and every circuit)
with the baseline each claim names, on the scale's headline columns, and says whether the
difference is larger than its uncertainty: the 95 % t-interval over seeds where both models have
several, else the binomial 95 % interval of each accuracy on its test images, combined in
quadrature. A comparison whose numbers failed a sanity check names the checks.
"""
from __future__ import annotations

import csv
import math
import sys

from epsim.cli import ArgumentParser
from common import MissingResults, eps_label, headline_keys, headline_rows, read_csv, results_dir

# (claim, baseline model, measure): measure "white-box" = the PGD and seed-protocol columns,
# "black-box" = the Square columns, "clean" = full test-set accuracy, "corruptions" = mean over
# corruptions and severities
CLAIMS = (
    ("EP more robust than BP-CNN (white box)", "bp-cnn", "white-box"),
    ("EP more robust than BP-CNN (black box)", "bp-cnn", "black-box"),
    ("EP more robust than ViT", "vit", "white-box"),
    ("EP close to an adversarially trained CNN", "adv-cnn", "white-box"),
    ("no clean-accuracy cost", "bp-cnn", "clean"),
    ("more robust to corruptions", "bp-cnn", "corruptions"),
)


CLAIM_COLUMNS = ("claim", "model", "baseline", "measure", "model_pct", "baseline_pct", "delta_points", "verdict",
                 "checks")


def _half_width(mci, n) -> float | None:
    """95 % half-width of one accuracy: the t-interval over seeds, else binomial on ``n`` images."""
    m, ci, _ = mci
    if ci is not None:
        return ci
    if not n or not math.isfinite(m):
        return None
    return 1.96 * math.sqrt(max(m * (1 - m), 0.25 / n) / n)


def _measures(row, measure, keys, n_test) -> list:
    """``(label, (mean, ci, k), failed checks, images)`` of one model for one measure."""
    if measure == "clean":
        return [("test accuracy", row["test_accuracy"], [], n_test.get(row["model"]))]
    if measure == "corruptions":
        entry = row.get("corruptions")
        return [("corruptions, mean", entry[0], entry[1], row.get("corruptions_n"))] if entry else []
    want = ("pgd-", "advep-") if measure == "white-box" else ("square-",)
    out = []
    for a, e in keys:
        if a.startswith(want) and (a, e) in row:
            mci, failed = row[(a, e)]
            out.append((f"{a} ε={eps_label(e)}", mci, failed, row["n_by_column"].get((a, e))))
    return out


def verdict(delta, half_width) -> str:
    """Whether a difference in accuracy (fractions) is larger than its 95 % half-width."""
    if half_width is None:
        return "no uncertainty"
    if abs(delta) <= half_width:
        return f"within noise (±{100 * half_width:.1f})"
    return f"{'higher' if delta > 0 else 'lower'} (±{100 * half_width:.1f})"


def claims_rows(rdir=None) -> list:
    """One row per claim, EP model and measure: ``claim``, ``model``, ``baseline``, ``measure``,
    ``model_pct``, ``baseline_pct``, ``delta_points``, ``verdict``, ``checks`` (failed checks of
    either number, empty when all passed). A claim whose baseline or EP models are missing gets one
    row with ``verdict`` "not measured"."""
    rdir = results_dir(rdir)
    rows = {r["model"]: r for r in headline_rows(rdir)}
    keys = headline_keys(rdir)
    n_test = {m["model"]: m.get("n_test") for m in read_csv("models.csv", rdir)}
    ep_models = [m for m, r in rows.items() if m == "ep-cnn" or r.get("family") == "circuit"]
    out = []
    for claim, base, measure in CLAIMS:
        found = False
        for model in ep_models if base in rows else ():
            base_measures = {lab: (mci, failed, n) for lab, mci, failed, n in _measures(rows[base], measure, keys, n_test)}
            for lab, mci, failed, n in _measures(rows[model], measure, keys, n_test):
                if lab not in base_measures:
                    continue
                bmci, bfailed, bn = base_measures[lab]
                if not (math.isfinite(mci[0]) and math.isfinite(bmci[0])):
                    continue
                hw = [_half_width(mci, n), _half_width(bmci, bn)]
                half = math.sqrt(sum(h * h for h in hw)) if None not in hw else None
                delta = mci[0] - bmci[0]
                out.append({"claim": claim, "model": rows[model]["label"], "baseline": rows[base]["label"],
                            "measure": lab, "model_pct": 100 * mci[0], "baseline_pct": 100 * bmci[0],
                            "delta_points": 100 * delta, "verdict": verdict(delta, half),
                            "checks": ";".join(sorted(set(failed) | set(bfailed)))})
                found = True
        if not found:
            out.append({"claim": claim, "model": "", "baseline": base, "measure": measure, "model_pct": None,
                        "baseline_pct": None, "delta_points": None, "verdict": "not measured", "checks": ""})
    return out


def claims_markdown(rdir=None) -> str:
    """:func:`claims_rows` as a Markdown table (accuracies in %, Δ in points)."""
    lines = ["Δ = EP model − baseline, in points. Verdict: higher or lower where |Δ| exceeds the 95 % half-width of "
             "the difference (± points: the t-interval over seeds where a model has several, else the binomial "
             "interval on its test images, combined in quadrature), else within noise; ✗ names the sanity checks "
             "either number failed.", "",
             "| claim | EP model | baseline | measure | EP model % | baseline % | Δ points | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in claims_rows(rdir):
        if r["model_pct"] is None:
            lines.append(f"| {r['claim']} | – | {r['baseline']} | {r['measure']} | – | – | – | not measured |")
            continue
        v = r["verdict"] + (f"; ✗ ({r['checks'].replace(';', ', ')})" if r["checks"] else "")
        lines.append(f"| {r['claim']} | {r['model']} | {r['baseline']} | {r['measure']} | {r['model_pct']:.1f} | "
                     f"{r['baseline_pct']:.1f} | {r['delta_points']:+.1f} | {v} |")
    return "\n".join(lines)



def write_claims(rdir) -> int:
    """Write ``claims.csv`` and ``claims.md`` into the summary folder ``rdir``; returns the row count."""
    rows = claims_rows(rdir)
    with open(rdir / "claims.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CLAIM_COLUMNS)
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r[k]) for k in CLAIM_COLUMNS} for r in rows)
    (rdir / "claims.md").write_text(claims_markdown(rdir) + "\n")
    return len(rows)


def main(argv=None) -> int:
    p = ArgumentParser(prog="python analysis/claims.py",
                                description="Write claims.csv and claims.md (the seed's claims, each EP model against "
                                            "its baseline) into a results summary folder.")
    p.add_argument("results", nargs="?", default=None,
                   help="summary folder, or a results folder holding summary/ (default: $EPSIM_RESULTS, else "
                        "analysis/results/cpu)")
    args = p.parse_args(argv)
    try:
        rdir = results_dir(args.results)
        n = write_claims(rdir)
    except MissingResults as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {rdir / 'claims.csv'} and {rdir / 'claims.md'} ({n} comparisons)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
