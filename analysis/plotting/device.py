"""Notebook 06: crossbar realism (device models, wire resistance, attacks on the non-ideal chips).

Every function reads ``device_sweep.json`` (``python -m epsim.device_sweep``, copied by the
driver) of the results folder ``results`` (default ``$EPSIM_RESULTS``) and writes to ``out``
(default ``$EPSIM_FIGURES``); results without a device sweep give a figure and a table saying so.
"""
from __future__ import annotations

import common as C

from .base import blank_panels, save, subplots


def load(results=None, quiet=False):
    """``device_sweep.json`` of the results, or None (said so unless ``quiet``) when there is none."""
    try:
        return C.read_json("device_sweep.json", C.results_dir(results))
    except C.MissingResults as exc:
        if not quiet:
            print(f"no device sweep in these results ({exc})")
        return None


def device_realism(results=None, out=None):
    """``device_realism.png``: test accuracy (mean ± std over reads) against wire resistance, one
    curve per device model; and, where the sweep ran attacks, robust accuracy of each chip under
    PGD-L2 (transfer from the nominal circuit) and Square-L2 against ε."""
    D = load(results)
    fig, axes = subplots(1, 2, figsize=(11, 3.8), squeeze=False)
    if D:
        ax = axes[0][0]
        for run in D["runs"]:
            ev = sorted(run["eval"], key=lambda e: e["wire_resistance_ohm"])
            ax.errorbar([e["wire_resistance_ohm"] for e in ev], [e["accuracy_mean"] for e in ev],
                        yerr=[e["accuracy_std"] for e in ev], marker="o", capsize=3, label=run["name"])
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_xlabel("wire resistance per segment (Ω)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{D['model']} on {D['dataset']}, {D['epochs']} epochs per device", fontsize=9)
        ax.legend(fontsize=8)
        ax = axes[0][1]
        any_rob = False
        for run in D["runs"]:
            rob = run.get("robustness")
            if not rob:
                continue
            any_rob = True
            for attack, style in (("pgd-l2", "o-"), ("square-l2", "s--")):
                rs = sorted([r for r in rob["rows"] if r["attack"] == attack and not r.get("sanity_only")],
                            key=lambda r: r["eps"])
                if rs:
                    ax.plot([r["eps"] for r in rs], [r["robust_accuracy"] for r in rs], style,
                            label=f"{run['name']} {attack} ({rob['wire_resistance_ohm']:g} Ω)")
                bad = [r for r in rs if not r["sanity_ok"]]
                if bad:
                    ax.plot([r["eps"] for r in bad], [r["robust_accuracy"] for r in bad], "x", color="red", ms=9,
                            mew=2)
        if any_rob:
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
            ax.set_xlabel("ε (L2, pixel units)")
            ax.set_ylabel("robust accuracy")
            ax.set_title("attacks on the non-ideal chips", fontsize=9)
        else:
            ax.text(0.5, 0.5, "the sweep ran no attacks", ha="center")
            ax.set_axis_off()
    else:
        blank_panels(axes[0], "no device sweep in these results")
    fig.tight_layout()
    return save(fig, "device_realism.png", out)


DEVICE_HEADERS = {"device": "device", "train_wires": "trained with wires (Ω)", "train_acc": "train acc.",
                  "test_acc": "test acc. (no wires)", "sanity": "attack sanity", "unconverged": "unconverged solves"}


def device_table(results=None, out=None) -> str:
    """``device_realism.csv`` / ``.md``: per device model, training and test accuracy, accuracy at each
    wire resistance, robust accuracy per attack and ε with the attack's sanity status, and the
    unconverged solves. Returns the Markdown."""
    D = load(results, quiet=True)
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
            row["unconverged"] = sum(e.get("unconverged", 0) for e in run["eval"])
            rows.append(row)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cols = [(k, DEVICE_HEADERS.get(k, f"{k[1:]} Ω" if k.startswith("w") else k)) for k in keys]
    if not rows:
        rows, cols = [{"note": "no device sweep in these results"}], [("note", "note")]
    C.write_table(rows, cols, "device_realism", out)
    return C.markdown_table(rows, cols)
