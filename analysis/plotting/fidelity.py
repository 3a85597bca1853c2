"""Notebook 04: circuit fidelity (ngspice vs numba, EP vs true input gradients, software GDU).

Every function reads ``fidelity.json`` of the results folder ``results`` (default
``$EPSIM_RESULTS``): its ``spice_vs_numba``, ``bench_spice``, ``input_gradients`` and ``gdu``
parts, each present only where that step ran; and writes to ``out`` (default
``$EPSIM_FIGURES``).
"""
from __future__ import annotations

import numpy as np

import common as C

from .base import blank_panels, save, subplots


def load(results=None) -> dict:
    """``fidelity.json`` of the results."""
    return C.read_json("fidelity.json", C.results_dir(results))


def fidelity_spice(results=None, out=None):
    """``fidelity_spice.png``: largest |V_ngspice − V_numba| per exported netlist and phase, solve
    times of ngspice and numba per netlist, and (where ``benchmarks/bench_spice.py`` ran) the time
    ratio against circuit size. Prints which fidelity results are available."""
    F = load(results)
    print("available:", ", ".join(F) or "nothing")
    sp = F.get("spice_vs_numba")
    bench = F.get("bench_spice")
    ncol = 2 + (1 if bench and bench.get("rows") else 0)
    fig, axes = subplots(1, ncol, figsize=(4.6 * ncol, 3.6), squeeze=False)
    ax = axes[0][0]
    if sp:
        rows = sp["rows"]
        phases = ["free", "plus", "minus"]
        for p, mk in zip(phases, "o^v"):
            rs = [r for r in rows if r["phase"] == p]
            ax.semilogy([r["sample"] for r in rs], [max(r["max_abs_diff_V"], 1e-18) for r in rs], mk, label=p)
        ax.set_xlabel("test sample")
        ax.set_ylabel("max |V_ngspice − V_numba| (V)")
        ax.set_title(f"node voltages, {rows[0]['nodes']} nodes, {rows[0]['diode']} diodes", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
        ax = axes[0][1]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["ngspice_s"] for r in rows], 0.4, label="ngspice (process + parse + .op)")
        ax.bar(x + 0.2, [r["numba_s"] for r in rows], 0.4, label="numba (warm, 1 thread)")
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r['sample']}{r['phase'][0]}" for r in rows], fontsize=7)
        ax.set_ylabel("solve time (s)")
        ax.legend(fontsize=7)
        ax.set_title(f"median ratio ngspice/numba = {sp['median_time_ratio']:.0f}×", fontsize=9)
    else:
        blank_panels(axes[0][:2], "no SPICE comparison in these results")
    if ncol == 3:
        ax = axes[0][2]
        b = bench["rows"]
        ax.loglog([r["elements"] for r in b], [r["ratio"] for r in b], "o-")
        for r in b:
            ax.annotate(f"{r['ratio']:.0f}×\nagree {r['agree_V']:.0e} V", (r["elements"], r["ratio"]), fontsize=7,
                        xytext=(-4, 4), textcoords="offset points", ha="right")
        ax.set_xlabel("circuit elements (resistive MLP)")
        ax.set_ylabel("ngspice time / numba time")
        ax.set_title("benchmarks/bench_spice.py", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return save(fig, "fidelity_spice.png", out)


def fidelity_gradients(results=None, out=None):
    """``fidelity_gradients.png``: the circuit's EP input-gradient estimate and BPTT against
    implicit differentiation (1 − cosine and norm ratio against the nudging β), and implicit
    differentiation against central finite differences along random directions."""
    G = load(results).get("input_gradients")
    fig, axes = subplots(1, 3, figsize=(14, 3.8), squeeze=False)
    if G:
        eps_rows = G["ep"]
        betas = np.array([e["beta"] for e in eps_rows])
        med = np.array([e["cosine"]["median"] for e in eps_rows])
        lo = np.array([e["cosine"]["min"] for e in eps_rows])
        ax = axes[0][0]
        ax.semilogx(betas, 1 - med, "o-", label="EP estimate: 1 − median cosine")
        ax.semilogx(betas, 1 - lo, "v:", label="EP estimate: 1 − worst cosine")
        ax.axhline(max(1 - G["bptt"]["cosine"]["median"], 1e-16), color="k", ls="--",
                   label="BPTT: 1 − median cosine")
        ax.set_yscale("log")
        ax.set_xlabel("nudging β of the EP estimate")
        ax.set_ylabel("1 − cos(path, implicit)")
        ax.set_title(f"input-gradient direction, {G['n']} images ({G['loss']} loss)", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
        ax = axes[0][1]
        rmed = np.array([e["norm_ratio"]["median"] for e in eps_rows])
        ax.semilogx(betas, rmed, "o-", label="EP / implicit (median)")
        ax.axhline(G["bptt"]["norm_ratio"]["median"], color="k", ls="--", label="BPTT / implicit (median)")
        ax.set_xlabel("β")
        ax.set_ylabel("‖g_path‖ / ‖g_implicit‖")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax.set_title("input-gradient magnitude", fontsize=9)
        ax = axes[0][2]
        fd = G["finite_differences"]
        a, b = np.array(fd["directional_fd"]), np.array(fd["directional_implicit"])
        ax.plot(a, b, "o")
        lim = float(max(np.abs(a).max(), np.abs(b).max())) * 1.1
        ax.plot([-lim, lim], [-lim, lim], "k:", lw=1)
        ax.set_xlabel("central finite difference of the loss")
        ax.set_ylabel("implicit gradient · direction")
        ax.set_title(f"implicit vs finite differences (median rel. err. {fd['relative_error']['median']:.1e})",
                     fontsize=9)
        ax.grid(alpha=0.3)
    else:
        blank_panels(axes[0], "no input-gradient comparison in these results")
    fig.tight_layout()
    return save(fig, "fidelity_gradients.png", out)


def fidelity_table(results=None, out=None) -> str:
    """``fidelity.csv`` / ``.md``: one row per fidelity check (node-voltage agreement, solve-time
    ratios, gradient agreement per path and β, finite differences, the software EP-CNN's per-layer
    GDU check) with the command that produced it. Returns the Markdown."""
    F = load(results)
    sp, bench, G = F.get("spice_vs_numba"), F.get("bench_spice"), F.get("input_gradients")
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
                         "detail": f"{r['elements']} elements, ngspice {r['ngspice_s']:.3f} s, "
                                   f"numba {r['numba_s']:.5f} s, agree {r['agree_V']:.1e} V",
                         "command": bench["command"]})
    if G:
        rows.append({"check": "BPTT vs implicit input gradient",
                     "value": f"median cos {G['bptt']['cosine']['median']:.6f}",
                     "detail": f"worst {G['bptt']['cosine']['min']:.6f}, {G['n']} images", "command": G["command"]})
        for e in G["ep"]:
            rows.append({"check": f"EP (β={e['beta']:g}) vs implicit input gradient",
                         "value": f"median cos {e['cosine']['median']:.6f}",
                         "detail": f"worst {e['cosine']['min']:.6f}, norm ratio {e['norm_ratio']['median']:.4f}, "
                                   f"{e['converged']}/{G['n']} converged", "command": G["command"]})
        fd = G["finite_differences"]
        rows.append({"check": "implicit vs finite differences",
                     "value": f"median rel. err. {fd['relative_error']['median']:.1e}",
                     "detail": f"max {fd['relative_error']['max']:.1e} over {fd['n']} "
                               "random directions (ideal diodes: a kink within ±h gives the outliers)",
                     "command": G["command"]})
    gdu = F.get("gdu")
    if gdu:
        for r in gdu["rows"]:
            rows.append({"check": f"software EP-CNN: EP vs BPTT, {r['layer']}", "value": f"cos {r['cosine']:.6f}",
                         "detail": f"norm ratio {r['norm_ratio']:.6f}; {gdu['setup']}", "command": gdu["command"]})
    cols = [("check", "check"), ("value", "value"), ("detail", "detail"), ("command", "command")]
    C.write_table(rows, cols, "fidelity", out)
    return C.markdown_table(rows, cols)
