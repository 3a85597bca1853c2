"""Helpers shared by the analysis notebooks: where the results are, reading them, plotting.

Nothing here computes a result: it reads the compact summary written by
``analysis/run_all.py`` (``RESULTS_DIR/summary`` or a published copy such as
``analysis/results/cpu``) and aggregates over seeds (mean and a 95 % t-interval).

Environment:
    EPSIM_RESULTS   results folder (a driver ``--out`` folder or a summary folder);
                    default ``analysis/results/cpu``.
    EPSIM_FIGURES   where figures (PNG) and tables (CSV + Markdown) are written;
                    default ``analysis/figures``.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent

MODEL_ORDER = ("circuit-cnn", "circuit-mlp", "circuit-drn1h", "circuit-cnn2", "circuit-cnn-deep", "ep-cnn", "bp-cnn",
               "adv-cnn", "vit")
MODEL_LABELS = {
    "circuit-cnn": "circuit CNN (numba)",
    "circuit-mlp": "circuit MLP (numba)",
    "circuit-drn1h": "DRN-1H circuit (numba)",
    "circuit-cnn2": "two-conv circuit CNN (numba)",
    "circuit-cnn-deep": "four-conv circuit CNN (numba)",
    "ep-cnn": "EP-CNN (torch)",
    "bp-cnn": "BP-CNN",
    "adv-cnn": "AdvCNN",
    "vit": "ViT",
}
MODEL_COLORS = {
    "circuit-cnn": "#d62728", "circuit-mlp": "#ff7f0e", "circuit-drn1h": "#ff7f0e", "circuit-cnn2": "#d62728",
    "circuit-cnn-deep": "#e377c2", "ep-cnn": "#1f77b4",
    "bp-cnn": "#2ca02c", "adv-cnn": "#9467bd", "vit": "#8c564b",
}
ATTACK_LABELS = {"pgd-l2": "PGD-L2 (APGD, white box)", "pgd-linf": "PGD-L∞ (APGD, white box)",
                 "square-l2": "Square-L2 (black box)", "square-linf": "Square-L∞ (black box)",
                 "certify-l2": "certified L2 (circuits)", "certify-linf": "certified L∞ (circuits)"}
# The headline columns: (attack, ε); those absent from a run are left out.
HEADLINE = (("pgd-l2", 0.5), ("square-l2", 0.5), ("pgd-linf", 8 / 255), ("square-linf", 8 / 255),
            ("pgd-linf", 0.1), ("square-linf", 0.1))
# The certificate of each white-box attack's norm (``python -m epsim.robustness --attack certify-*``,
# circuit models only: a lower bound on robust accuracy, where the attack gives an upper bound).
CERTIFY_FOR = {"pgd-l2": "certify-l2", "pgd-linf": "certify-linf"}
# Cell of the certified column for a model that cannot have a certificate (software models).
NO_CERTIFICATE = "—"
# ... and for a circuit model whose results hold no certificate at that ε (an older run).
NOT_RUN = "not run"


class MissingResults(Exception):
    """The results folder (or one of its files) is not there."""


# --------------------------------------------------------------------------- locations
def results_dir(path=None) -> Path:
    """The summary folder: ``$EPSIM_RESULTS`` (or ``path``), its ``summary/`` if it has one."""
    r = Path(path or os.environ.get("EPSIM_RESULTS") or HERE / "results" / "cpu")
    if not r.is_absolute():
        r = (Path.cwd() / r).resolve()
    if (r / "summary").is_dir():
        r = r / "summary"
    if not (r / "manifest.json").is_file():
        raise MissingResults(f"no results in {r}: run `python analysis/run_all.py --scale smoke --out DIR` "
                             "and set EPSIM_RESULTS=DIR")
    return r


def figures_dir() -> Path:
    d = Path(os.environ.get("EPSIM_FIGURES") or HERE / "figures")
    d.mkdir(parents=True, exist_ok=True)
    return d


def output_dir(out=None) -> Path:
    """``out`` (created if needed), or the figures folder when ``out`` is None."""
    if out is None:
        return figures_dir()
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    return d


# --------------------------------------------------------------------------- reading
def _value(v: str):
    if v == "":
        return None
    if v in ("True", "False"):
        return v == "True"
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def read_csv(name: str, rdir=None) -> list:
    path = (rdir or results_dir()) / name
    if not path.is_file():
        raise MissingResults(f"{path} is missing")
    with open(path, newline="") as fh:
        return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def read_json(name: str, rdir=None):
    path = (rdir or results_dir()) / name
    if not path.is_file():
        raise MissingResults(f"{path} is missing")
    return json.loads(path.read_text())


def manifest(rdir=None) -> dict:
    return read_json("manifest.json", rdir)


def models_present(rows) -> list:
    names = {r["model"] for r in rows}
    return [m for m in MODEL_ORDER if m in names] + sorted(names - set(MODEL_ORDER))


def label(model) -> str:
    return MODEL_LABELS.get(model, model)


def color(model) -> str:
    return MODEL_COLORS.get(model, "#7f7f7f")


def step_command(step: str, rdir=None) -> str:
    return (manifest(rdir).get("steps", {}).get(step) or {}).get("command", "")


# --------------------------------------------------------------------------- energy and latency
ENERGY_DIR = "energy"  # the summary's folder of ``python -m epsim.energy`` results (analysis/run_all.py)


def energy_results(rdir=None) -> list:
    """The energy/latency results of the summary, one record per circuit model run
    (``energy/<model>-s<seed>.json``: model, seed, step, command, settings, summary, traces),
    in model order; ``[]`` when the results hold none (a run from before the energy step)."""
    d = (rdir or results_dir()) / ENERGY_DIR
    recs = [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else []
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    return sorted(recs, key=lambda r: (order.get(r.get("model"), len(order)), str(r.get("model")), r.get("seed") or 0))


def energy_traces(rec, rdir=None):
    """The voltage traces of one energy record (a dict of arrays: ``t_s``, ``labels``, ``v_out``,
    ``layer<l>``, and the traced image's ``settle_time_s`` / ``decision_time_s``), or None."""
    import numpy as np

    name = rec.get("traces")
    path = (rdir or results_dir()) / ENERGY_DIR / name if name else None
    if path is None or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def energy_not_run(rdir=None) -> str:
    """What to say when the results hold no energy/latency results, and how to get them."""
    rdir = rdir or results_dir()
    scale = manifest(rdir).get("scale") or "SCALE"
    try:
        where = rdir.resolve().relative_to(HERE.parent)
    except ValueError:
        where = rdir
    return (f"not run: the results in {where} hold no energy/latency results (they predate the driver's "
            f"energy steps). Rerun with `python analysis/run_all.py --scale {scale} --out RESULTS_DIR --only energy/` "
            "on the results folder they came from (only the energy steps run, on its circuit checkpoints; "
            "`--publish analysis/results/cpu` refreshes the committed copy).")


# --------------------------------------------------------------------------- statistics
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values) -> tuple:
    """(mean, half-width of the 95 % t-interval over the values, count); half-width None for one value."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return float("nan"), None, 0
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None, len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    t = _T975.get(len(v) - 1, 1.96)
    return m, t * sd / math.sqrt(len(v)), len(v)


def companion_pgd(row) -> bool:
    """Whether a ``curves.csv`` row is the PGD run beside a Square or seed-protocol attack (its
    group ``square-*`` / ``advep-*``): it repeats the PGD sweep on a subset of its images for
    that attack's comparison, so curves and headline cells count the sweep's row only."""
    return str(row.get("attack", "")).startswith("pgd") and str(row.get("group") or "").startswith(("square-", "advep-"))


def same_eps(a, b) -> bool:
    return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))


def curve(rows, model, attack) -> list:
    """Points of one accuracy-vs-ε curve, aggregated over seeds (sanity-only ε left out).

    Returns ``[{"eps", "mean", "ci", "seeds", "sanity_ok", "failed"}]`` sorted by ε.
    """
    pts = {}
    for r in rows:
        if r["model"] != model or r["attack"] != attack or r.get("sanity_only"):
            continue
        key = round(float(r["eps"]), 10)
        pts.setdefault(key, []).append(r)
    out = []
    for eps in sorted(pts):
        rs = pts[eps]
        m, ci, k = mean_ci(r["robust_accuracy"] for r in rs)
        failed = sorted({f for r in rs for f in str(r.get("failed_checks") or "").split(";") if f})
        out.append({"eps": eps, "mean": m, "ci": ci, "seeds": k, "n": rs[0].get("n"),
                    "sanity_ok": all(bool(r.get("sanity_ok")) for r in rs), "failed": failed})
    return out


def families(rdir=None) -> dict:
    """model -> "circuit" or "software" (from ``models.csv``)."""
    return {m["model"]: m.get("family") for m in read_csv("models.csv", rdir)}


def certified_curves(rows, model, attack) -> list:
    """The certified-accuracy curve (:func:`curve` points) of ``model`` at the norm of the white-box
    ``attack`` (e.g. ``pgd-l2`` -> ``certify-l2``); empty when the results hold no certificate."""
    cert = CERTIFY_FOR.get(attack)
    return curve(rows, model, cert) if cert else []


def eps_axis(ax, eps_values):
    """Log-scale ε axis with a labelled tick at every ε of the sweep (8/255 written as such)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = sorted({float(e) for e in eps_values})
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([eps_label(e) for e in ticks], fontsize=7, rotation=45)


# --------------------------------------------------------------------------- output
def save_figure(fig, name: str, out=None) -> Path:
    """Save ``fig`` as ``name`` in ``out`` (default: the figures folder); returns its path."""
    path = output_dir(out) / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")
    return path


def fmt(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2e}"
    return str(v)


def markdown_table(rows, columns) -> str:
    """``columns``: list of (key, header). Cells are formatted with :func:`fmt`."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)).replace("|", "\\|") for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep] + body)


def write_table(rows, columns, name: str, out=None) -> Path:
    """Write ``name.csv`` and ``name.md`` (same rows) to ``out`` (default: the figures folder);
    returns the .md path."""
    d = output_dir(out)
    with open(d / f"{name}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([h for _, h in columns])
        for r in rows:
            w.writerow(["" if r.get(k) is None else r.get(k) for k, _ in columns])
    md = d / f"{name}.md"
    md.write_text(markdown_table(rows, columns) + "\n")
    print(f"wrote {d / (name + '.csv')} and {md} ({len(rows)} rows)")
    return md


# --------------------------------------------------------------------------- headline
def eps_label(eps) -> str:
    for k in (1, 2, 4, 8, 16):
        if same_eps(eps, k / 255):
            return f"{k}/255"
    return f"{float(eps):g}"


def headline_keys(rdir=None) -> tuple:
    """The ``(attack, ε)`` columns of a results folder's headline table: its scale's ``headline``
    (analysis/driver/scales.py) where the plan names one, else :data:`HEADLINE`."""
    from driver.scales import PLANS

    scale = manifest(results_dir(rdir)).get("scale")
    return tuple(PLANS.get(scale, {}).get("headline", HEADLINE))


def certifiable_model(model: str, rdir=None) -> bool:
    """Whether a model of a results folder can have a certificate: a circuit its scale's plan does
    not mark ``certify: False`` (differential layers: not monotone)."""
    from driver.plan import certifiable
    from driver.scales import PLANS

    scale = manifest(results_dir(rdir)).get("scale")
    spec = PLANS.get(scale, {}).get("models", {}).get(model)
    return certifiable(spec) if spec else model.startswith("circuit-")


def headline_rows(rdir=None) -> list:
    """One row per model: clean accuracy and the headline robust accuracies, mean ± CI over seeds,
    each with its sanity status (``ok`` or the failed checks); ``n`` the white-box runs' images,
    ``n_by_column`` each headline column's, ``corruptions_n`` the corruption runs'."""
    rdir = rdir or results_dir()
    keys = headline_keys(rdir)
    curves = read_csv("curves.csv", rdir)
    runs = read_csv("runs.csv", rdir)
    corr = read_csv("corruptions.csv", rdir)
    models = read_csv("models.csv", rdir)
    rows = []
    for model in models_present(models):
        ms = [m for m in models if m["model"] == model]
        row = {"model": model, "label": label(model), "family": ms[0].get("family"),
               "certifiable": certifiable_model(model, rdir)}
        row["seeds"] = len(ms)
        row["test_accuracy"] = mean_ci(m["test_accuracy"] for m in ms)
        rs = [r for r in runs if r["model"] == model and r.get("group") in ("l2", "linf")]
        if rs:
            row["clean"] = mean_ci(r["clean_accuracy"] for r in rs if r.get("group") == "l2")
            row["clean_ok"] = all("pass" in str(r.get("check_clean_settings")) for r in rs)
            row["n"] = rs[0].get("n")
        for attack, eps in keys:
            pts = [r for r in curves if r["model"] == model and r["attack"] == attack and same_eps(r["eps"], eps)
                   and not companion_pgd(r)]
            if pts:
                failed = sorted({f for r in pts for f in str(r.get("failed_checks") or "").split(";") if f})
                row[(attack, eps)] = (mean_ci(r["robust_accuracy"] for r in pts), failed)
                row.setdefault("n_by_column", {})[(attack, eps)] = pts[0].get("n")
            cert = CERTIFY_FOR.get(attack)
            cpts = [r for r in curves if cert and r["model"] == model and r["attack"] == cert
                    and same_eps(r["eps"], eps)]
            if cpts:
                failed = sorted({f for r in cpts for f in str(r.get("failed_checks") or "").split(";") if f})
                row[(cert, eps)] = (mean_ci(r["robust_accuracy"] for r in cpts), failed)
        cm = [r for r in corr if r["model"] == model and r["corruption"] == "mean"]
        if cm:
            failed = sorted({f for r in cm for f in str(r.get("failed_checks") or "").split(";") if f})
            per_seed = {}
            for r in cm:
                per_seed.setdefault(r["seed"], []).append(r["accuracy"])
            row["corruptions"] = (mean_ci(sum(v) / len(v) for v in per_seed.values()), failed)
            row["corruptions_n"] = cm[0].get("n")
            s5 = [r for r in cm if r["severity"] == 5]
            if s5:
                row["corruptions_s5"] = (mean_ci(r["accuracy"] for r in s5), failed)
        rows.append(row)
    return rows


def _pm(mci) -> str:
    m, ci, k = mci
    if not math.isfinite(m):
        return "–"
    return f"{100 * m:.1f}" + (f" ± {100 * ci:.1f}" if ci is not None else "")


def _cell(entry) -> str:
    if entry is None:
        return "–"
    mci, failed = entry
    return _pm(mci) + (" ✓" if not failed else f" ✗ ({', '.join(failed)})")


def headline_columns(rows, keys=HEADLINE) -> list:
    """The attack columns of the headline table (those of ``keys`` some model has), each white-box
    column followed by its certified column where some model has a certificate at that ε."""
    present = []
    for a, e in keys:
        if any((a, e) in r for r in rows):
            present.append((a, e))
            cert = CERTIFY_FOR.get(a)
            if cert and any((cert, e) in r for r in rows):
                present.append((cert, e))
    return present


def certified_cell(row, key) -> str:
    """A certified-accuracy cell: the value (✓/✗) for a circuit model, ``—`` for a software
    model or a circuit with differential layers (no certificate exists), ``not run`` for a
    monotone circuit whose results hold none."""
    if key in row:
        return _cell(row[key])
    return NOT_RUN if row.get("family") == "circuit" and row.get("certifiable", True) else NO_CERTIFICATE


def column_header(key) -> str:
    a, e = key
    if a.startswith("certify-"):
        return f"certified {a[len('certify-'):]} ε={eps_label(e)}"
    return f"{a} ε={eps_label(e)}"


def certified_rows(rdir=None) -> list:
    """One row per model for the certified column of the summary: at every headline white-box ε,
    the empirical (PGD) robust accuracy and the certified accuracy (circuits; ``—`` for software
    models, ``not run`` for circuits whose results hold no certificate)."""
    rows = headline_rows(results_dir(rdir))
    out = []
    for r in rows:
        row = {"model": r["label"], "family": r.get("family")}
        for a, e in headline_keys(rdir):
            cert = CERTIFY_FOR.get(a)
            if cert is None or not any((a, e) in x for x in rows):
                continue
            row[f"{a}@{eps_label(e)}"] = _cell(r.get((a, e)))
            row[f"{cert}@{eps_label(e)}"] = certified_cell(r, (cert, e))
        out.append(row)
    return out


def certified_columns(rows) -> list:
    """(key, header) pairs for :func:`certified_rows`."""
    keys = list(dict.fromkeys(k for r in rows for k in r if "@" in k))
    return [("model", "model"), ("family", "family")] + [
        (k, (f"certified {k.split('@')[0][len('certify-'):]} ε={k.split('@')[1]}" if k.startswith("certify-")
             else f"{k.split('@')[0]} ε={k.split('@')[1]}")) for k in keys]


def _wall(rec) -> str:
    w = rec.get("wall_s")
    return f"{w:.0f} s" if isinstance(w, (int, float)) else "time not recorded"


def code_version_text(man) -> str:
    """The commits the run's steps ran from (each step records its own; older manifests only the
    driver's), or that they were not recorded (a run from a copy outside git)."""
    heads = sorted({str(r.get("git_head"))[:10] for r in man.get("steps", {}).values()
                    if r.get("status") == "done" and r.get("git_head")})
    if not heads and man.get("git_head"):
        heads = [str(man["git_head"])[:10]]
    if not heads:
        return "git commit not recorded"
    return f"git {heads[0]}" if len(heads) == 1 else f"steps run from git {', '.join(heads)}"


def progress_lines(man) -> list:
    """A line saying which of the plan's steps have not run yet (none when every step has)."""
    steps = man.get("steps", {})
    plan = man.get("plan", [])
    missing = [n for n in plan if (steps.get(n) or {}).get("status") not in ("done", "skipped")]
    if not missing:
        return []
    groups = {}  # "robust/<model>" -> its missing steps
    for n in missing:
        groups.setdefault("/".join(n.split("/")[:2]), []).append(n)
    names = [f"`{v[0]}`" if len(v) == 1 else f"`{g}/…` ({len(v)} steps)" for g, v in groups.items()]
    return [f"**Partial run**: {len(plan) - len(missing)} of {len(plan)} steps done; not run yet: "
            + ", ".join(names) + ".", ""]


def retrained_lines(man) -> list:
    """A line per model retrained for a later part of a merged run (``run_all.py --merge
    --retrain-tolerance``): its two test accuracies and the steps that evaluated the retrained
    instance (every other step of that model evaluated the published one)."""
    out = []
    for part in man.get("merged_parts") or []:
        for r in part.get("retrained") or []:
            steps = ", ".join(f"`{k}`" for k in r.get("evaluated_by", [])) or "none"
            out.append(f"**Retrained**: `{r['step']}` was trained again for a later part and reached "
                       f"{100 * r['retrained_test_accuracy']:.2f} % on {r['n_test']:,} test images (published: "
                       f"{100 * r['published_test_accuracy']:.2f} %, the row in the table); its steps {steps} "
                       "evaluated the retrained instance, its other steps the published one.")
    return out + [""] if out else []


def attacked_subset_text(rows) -> str:
    """How many test images the white-box runs attacked: one count, or the common count and the
    models attacked on fewer (the first images of the same seeded subset)."""
    counts = {r["label"]: int(r["n"]) for r in rows if r.get("n") not in (None, "")}
    if not counts:
        return "Attacked subset: none yet."
    common_n = max(set(counts.values()), key=lambda n: (list(counts.values()).count(n), n))
    fewer = [f"{m}: the first {n}" for m, n in counts.items() if n != common_n]
    return (f"Attacked subset: n = {common_n} test images (the same seeded subset for every model"
            + (f"; {', '.join(fewer)} of them" if fewer else "") + ").")


def headline_markdown(rdir=None, source: str | None = None) -> str:
    """The headline table (Markdown) with the commands that produced each number."""
    rdir = results_dir(rdir)
    man = manifest(rdir)
    rows = headline_rows(rdir)
    cols = headline_columns(rows, headline_keys(rdir))
    models = read_csv("models.csv", rdir)
    datasets = sorted({str(m.get("dataset")) for m in models})
    lines = [f"Scale **{man.get('scale')}** ({man.get('what', '')}); results: `{source or rdir}` "
             f"({code_version_text(man)}, run {man.get('created', '?')} – {man.get('updated', '?')}).",
             "", *progress_lines(man), *retrained_lines(man),
             "",
             "Accuracy in %, mean ± 95 % t-interval over seeds where a model has several; "
             "✓ = every sanity check of every number behind the cell passed, ✗ = the failed checks are named.",
             ""]
    head = ["model", "seeds", "test acc. (full test set)", "clean acc. (attacked subset)"] + \
        [column_header(c) for c in cols] + ["corruptions, mean sev. 1–5", "corruptions, sev. 5"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        clean = (_pm(r["clean"]) + (" ✓" if r.get("clean_ok") else " ✗ (clean_settings)")) if "clean" in r else "–"
        cells = [r["label"], str(r["seeds"]), _pm(r["test_accuracy"]), clean] + \
            [certified_cell(r, c) if c[0].startswith("certify-") else _cell(r.get(c)) for c in cols] + \
            [_cell(r.get("corruptions")), _cell(r.get("corruptions_s5"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Dataset: {', '.join(datasets)}. {attacked_subset_text(rows)} "
              "Commands (``$RESULTS`` = the results folder; other seeds differ only in `--seed` and paths):", ""]
    steps = man.get("steps", {})
    done = [(n, steps[n]) for n in man.get("plan", []) if (steps.get(n) or {}).get("status") == "done"]
    first_seed = {m["model"]: min(x["seed"] for x in models if x["model"] == m["model"]) for m in models}
    for name, rec in done:
        if rec.get("kind") == "train" and rec.get("seed") == first_seed.get(rec.get("model")):
            lines.append(f"- `{name}` ({_wall(rec)}): `{rec.get('command')}`")
    # robustness runs: the same arguments for every model (only the checkpoint and output paths differ)
    groups = {}
    for name, rec in done:
        if rec.get("kind") == "robustness":
            tag = f"{rec.get('model')}-s{rec.get('seed')}"
            groups.setdefault((rec.get("group"), rec.get("command", "").replace(tag, "MODEL")), []).append((tag, rec))
    for (group, cmd), recs in groups.items():
        walls = ", ".join(f"{t} {_wall(r)}" for t, r in recs)
        lines.append(f"- robustness `{group}`, MODEL = each of {', '.join(t for t, _ in recs)} ({walls}): `{cmd}`")
    lines.append("")
    whole = man.get("driver_command") or f"python analysis/run_all.py --scale {man.get('scale')} --out $RESULTS"
    lines.append(f"Whole run: `{whole}`.")
    return "\n".join(lines)
