"""Notebook 07: energy and latency of the circuits (``python -m epsim.energy``).

Every function reads the ``energy/<model>-s<seed>.json`` records (settings, summary, command;
one per circuit model's first seed) and ``energy/<model>-s<seed>_traces.npz`` (one image's
voltage traces) of the results folder ``results`` (default ``$EPSIM_RESULTS``, through
:func:`common.energy_results` / :func:`common.energy_traces`) and writes to ``out`` (default
``$EPSIM_FIGURES``). Results from before the energy steps give figures and tables that say
"not run" and how to rerun.
"""
from __future__ import annotations

import numpy as np

import common as C

from .base import placeholder, save, subplots


def overview(results=None):
    """Print one line per energy run (model, diodes, input gain, images, unsettled, capacitances,
    command). Returns None, or, when the results hold no energy runs, the Markdown saying so."""
    R = C.results_dir(results)
    E = C.energy_results(R)
    if not E:
        missing = C.energy_not_run(R)
        print(missing)
        return "**Energy and latency " + missing + "**"
    for e in E:
        s, st = e["summary"], e["settings"]
        print(f"{e['step']}: {C.label(e['model'])}, {st.get('diode')} diodes, input gain {st.get('input_gain_V')} V, "
              f"{s['n']} {st.get('dataset')} test images ({s.get('unsettled', 0)} unsettled within "
              f"{1e9 * st['t_stop_s']:g} ns), capacitances {1e15 * st['cell_capacitance_F']:g} fF per cell + "
              f"{1e15 * st['node_capacitance_F']:g} fF per node\n    {e['command']}")
    return None


def time_axis(ax):
    """Log time axis labelled at 1, 2, 5 × 10^k ns."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _not_run(R) -> str:
    return "energy and latency " + C.energy_not_run(R)


def energy_traces(results=None, out=None):
    """``energy_traces.png``: the free phase of the first traced test image of each circuit model,
    the probed nodes of every hidden layer and every output (the image's class in black) against
    time, with that image's settling (dashed) and decision (dotted) times."""
    R = C.results_dir(results)
    E = C.energy_results(R)
    traced = [(e, C.energy_traces(e, R)) for e in E]
    traced = [(e, t) for e, t in traced if t is not None]
    if not traced:
        return placeholder("energy_traces.png", _not_run(R) if not E else
                           "no voltage traces in these results (the energy runs saved no traces.npz)", out)
    layers = [sorted((k for k in t if k.startswith("layer")), key=lambda k: int(k[5:]))[:-1] for _, t in traced]
    ncol = max(len(ls) for ls in layers) + 1
    fig, axes = subplots(len(traced), ncol, figsize=(3.6 * ncol, 2.7 * len(traced)), squeeze=False)
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
            ax.set_title(f"{C.label(e['model'])}: {title}", fontsize=8)
            ax.grid(alpha=0.3)
            ax.set_xlabel("time (ns)")
            ax.set_ylabel("V")
    fig.tight_layout()
    return save(fig, "energy_traces.png", out)


def energy_early_readout(results=None, out=None):
    """``energy_early_readout.png``: accuracy of the class read at each readout time (the settled
    accuracy dashed); and, where the runs attacked the early readout, robust accuracy under PGD
    against the circuit read at each time beside the settled circuit's, with the clean accuracy of
    the attacked images (a red ✗ where a sanity check failed, printed for the settled circuit)."""
    R = C.results_dir(results)
    E = C.energy_results(R)
    if not E:
        return placeholder("energy_early_readout.png", _not_run(R), out)
    attacked = [e for e in E if e["summary"].get("early_readout_attack")]
    fig, axes = subplots(1, 2, figsize=(11, 3.8), squeeze=False)
    ax = axes[0][0]
    for e in E:
        s = e["summary"]
        pts = [p for p in s.get("early_readout") or [] if p.get("time_s") is not None]  # null: nothing settled
        ax.plot([1e9 * p["time_s"] for p in pts], [p["accuracy"] for p in pts], "o-", color=C.color(e["model"]),
                label=f"{C.label(e['model'])} ({s['n']} images)")
        if s.get("accuracy_dc") is not None:
            ax.axhline(s["accuracy_dc"], color=C.color(e["model"]), ls="--", lw=1)
    time_axis(ax)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_xlabel("readout time after the inputs switch on (ns)")
    ax.set_ylabel("accuracy")
    ax.set_title("early readout (dashed: settled)", fontsize=9)
    ax.legend(fontsize=7)
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
                ax.axhline(r["robust_accuracy"], color=col, ls="--", lw=1.2,
                           label=f"{C.label(e['model'])}: robust, settled")
        bad = [r for r in early if not r.get("sanity_ok", True)]
        if bad:
            ax.plot([1e9 * r["time_s"] for r in bad], [r["robust_accuracy"] for r in bad], "x", color="red", ms=9,
                    mew=2)
        if any(not r.get("sanity_ok", True) for r in rows if r["time_s"] is None):
            print(f"{e['step']}: the settled circuit's attack failed a sanity check")
    if attacked:
        kinds = sorted({(r["norm"], r["eps"]) for e in attacked for r in e["summary"]["early_readout_attack"]})
        steps = sorted({e.get("attack_steps") for e in attacked if e.get("attack_steps")})
        time_axis(ax)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        ax.set_xlabel("readout time (ns)")
        ax.set_ylabel("accuracy")
        ax.set_title(", ".join(f"PGD-{nm.upper()} ε = {ep:g}" for nm, ep in kinds)
                     + (f", {'/'.join(map(str, steps))} steps" if steps else "") + " (dashed: settled)", fontsize=9)
    else:
        ax.text(0.5, 0.5, "the energy runs did not attack the early readout\n(rerun with --attack-eps)",
                ha="center", va="center", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return save(fig, "energy_early_readout.png", out)


ENERGY_BARS = [("circuit: inference", "#d62728"), ("circuit: training step per image", "#ff9896"),
               ("digital fp32 (estimate)", "#1f77b4"), ("digital int8 (estimate)", "#aec7e8")]


def energy_per_inference(results=None, out=None):
    """``energy_per_inference.png``: per circuit model (log scale), the median energy per inference
    (whisker to the 95th percentile), per training step per image where measured, and the digital
    fp32 / int8 estimates for the same network ("not run" where a value is missing)."""
    R = C.results_dir(results)
    E = C.energy_results(R)
    if not E:
        return placeholder("energy_per_inference.png", _not_run(R), out)
    M = C.manifest(R)
    bars = ENERGY_BARS
    fig, ax = subplots(figsize=(max(6, 2.6 * len(E) + 2), 4))
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
    ax.set_yscale("log")
    ax.set_ylim(min(shown) / 4, max(shown) * 3)
    ax.set_xticks(range(len(E)))
    ax.set_xticklabels([f"{C.label(e['model'])}\n{e['summary']['macs_per_inference']:,} MACs" for e in E], fontsize=8)
    ax.set_ylabel("energy (J; labels in nJ)")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"energy per inference ({M['scale']} scale)", fontsize=10)
    return save(fig, "energy_per_inference.png", out)


def _stat(d, key, stat="median", scale=1.0):
    v = (d.get(key) or {}).get(stat)
    return None if v is None else scale * v


LATENCY_COLUMNS = [
    ("model", "model"), ("seed", "seed"), ("diode", "diodes"), ("n", "images"), ("unsettled", "unsettled"),
    ("settle_med", "settling median (ns)"), ("settle_p95", "settling p95 (ns)"),
    ("decision_med", "decision median (ns)"), ("decision_p95", "decision p95 (ns)"),
    ("energy_med", "energy / inference median (nJ)"), ("energy_p95", "energy / inference p95 (nJ)"),
    ("train_med", "training step / image median (nJ)"), ("power_med", "static power median (W)"),
    ("macs", "MACs / inference"), ("fp32", "digital fp32 (nJ, estimate)"), ("int8", "digital int8 (nJ, estimate)"),
    ("acc", "accuracy (settled)"), ("robust", "robust accuracy (settled)")]
READOUT_COLUMNS = [
    ("model", "model"), ("time_ns", "readout time (ns)"), ("x_median", "× median settling"),
    ("accuracy", "accuracy (all images)"), ("clean_attacked", "clean (attacked images)"),
    ("robust", "robust (PGD)"), ("sanity", "attack sanity")]


def latency_table(results=None, out=None) -> str:
    """``energy_latency.csv`` / ``.md``: per circuit model, settling and decision time (median,
    p95), energy per inference and per training step, static power, MACs, the digital estimates,
    and the settled accuracy and robust accuracy ("not run" where missing). Returns the Markdown."""
    R = C.results_dir(results)
    E = C.energy_results(R)
    rows = []
    for e in E:
        s, st = e["summary"], e["settings"]
        d = s.get("digital_energy_per_inference_J_estimate") or {}
        tr = s.get("training_step") or {}
        settled = next((r for r in s.get("early_readout_attack") or [] if r["time_s"] is None), None)
        rows.append({"model": C.label(e["model"]), "seed": e["seed"], "diode": st.get("diode"), "n": s["n"],
                     "unsettled": s.get("unsettled"),
                     "settle_med": _stat(s, "settle_time_s", scale=1e9),
                     "settle_p95": _stat(s, "settle_time_s", "p95", 1e9),
                     "decision_med": _stat(s, "decision_time_s", scale=1e9),
                     "decision_p95": _stat(s, "decision_time_s", "p95", 1e9),
                     "energy_med": _stat(s, "energy_per_inference_J", scale=1e9),
                     "energy_p95": _stat(s, "energy_per_inference_J", "p95", 1e9),
                     "train_med": _stat(tr, "energy_J_per_image", scale=1e9) if tr else "not run",
                     "power_med": _stat(s, "static_power_W"), "macs": s.get("macs_per_inference"),
                     "fp32": 1e9 * d["fp32_45nm"] if "fp32_45nm" in d else None,
                     "int8": 1e9 * d["int8_45nm"] if "int8_45nm" in d else None,
                     "acc": s.get("accuracy_dc"),
                     "robust": (f"{settled['robust_accuracy']:.3f} (PGD-{settled['norm'].upper()} "
                                f"ε={settled['eps']:g}, n={settled['n']})") if settled else "not run"})
    cols = LATENCY_COLUMNS
    if not E:
        rows, cols = [{"note": _not_run(R)}], [("note", "note")]
    C.write_table(rows, cols, "energy_latency", out)
    return C.markdown_table(rows, cols)


def early_readout_table(results=None, out=None) -> str:
    """``energy_early_readout.csv`` / ``.md``: per circuit model and readout time (and the settled
    circuit), accuracy on all images, clean and robust accuracy of the attacked images, and the
    attack's sanity status ("not run" where the readout was not attacked). Returns the Markdown."""
    R = C.results_dir(results)
    E = C.energy_results(R)
    readout = []
    for e in E:
        att = {r["time_s"]: r for r in e["summary"].get("early_readout_attack") or []}
        med = e["summary"]["settle_time_s"].get("median")
        for p in [p for p in e["summary"].get("early_readout") or [] if p.get("time_s") is not None]:
            a = next((r for t, r in att.items() if t is not None and abs(t - p["time_s"]) <= 1e-6 * p["time_s"]),
                     None)
            readout.append({"model": C.label(e["model"]), "time_ns": 1e9 * p["time_s"],
                            "x_median": p["time_s"] / med if med else None, "accuracy": p["accuracy"],
                            "clean_attacked": a["clean_accuracy"] if a else None,
                            "robust": a["robust_accuracy"] if a else None,
                            "sanity": ("ok" if a.get("sanity_ok", True) else "FAILED: " + ", ".join(a["failed_checks"]))
                                      if a else "not run"})
        if None in att:
            r = att[None]
            readout.append({"model": C.label(e["model"]), "time_ns": "settled",
                            "accuracy": e["summary"].get("accuracy_dc"),
                            "clean_attacked": r["clean_accuracy"], "robust": r["robust_accuracy"],
                            "sanity": "ok" if r.get("sanity_ok", True) else "FAILED: " + ", ".join(r["failed_checks"])})
    cols = READOUT_COLUMNS
    if not E:
        readout, cols = [{"note": _not_run(R)}], [("note", "note")]
    C.write_table(readout, cols, "energy_early_readout", out)
    return C.markdown_table(readout, cols)
