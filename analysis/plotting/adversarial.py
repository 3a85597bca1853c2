"""Notebook 03: adversarial examples at a large L2 radius.

Every function reads ``adversarial/<model>-s<seed>.npz`` (clean and adversarial images,
labels, predictions, perturbation norms; ``analysis/steps.py adversarial``) and its ``.json``
sidecar from the results folder ``results`` (default ``$EPSIM_RESULTS``) and writes to
``out`` (default ``$EPSIM_FIGURES``).
"""
from __future__ import annotations

import numpy as np

import common as C

from .base import save, subplots


def load(results=None) -> tuple:
    """(models in the usual order, model -> arrays of its ``.npz``, model -> its ``.json``)."""
    R = C.results_dir(results)
    files = {p.stem.rsplit("-s", 1)[0]: p for p in sorted((R / "adversarial").glob("*.npz"))}
    models = [m for m in C.MODEL_ORDER if m in files] + sorted(set(files) - set(C.MODEL_ORDER))
    data = {}
    for m in models:
        with np.load(files[m], allow_pickle=False) as z:
            data[m] = {k: z[k] for k in z.files}
    meta = {m: C.read_json(f"adversarial/{files[m].stem}.json", R) for m in models}
    return models, data, meta


def _image(ax, img, **kw):
    """Draw one image (channels first; one channel in grey on [0, 1]) without ticks."""
    img = np.asarray(img)
    if img.shape[0] == 1:
        ax.imshow(img[0], **({"cmap": "gray", "vmin": 0, "vmax": 1} | kw))
    else:
        ax.imshow(np.transpose(img, (1, 2, 0)).clip(0, 1))
    ax.set_xticks([])
    ax.set_yticks([])


def adversarial_examples(results=None, out=None):
    """``adversarial_examples.png``: one row per model, for up to three images: the clean image, the
    adversarial image (with both predictions) and the perturbation δ (grey images: red brighter,
    blue darker, scaled per model to its largest |δ|)."""
    R = C.results_dir(results)
    M = C.manifest(R)
    models, data, _ = load(R)
    k = min(3, min(len(d["y"]) for d in data.values()))
    fig, axes = subplots(len(models), 3 * k, figsize=(1.55 * 3 * k, 1.85 * len(models)), squeeze=False)
    for i, m in enumerate(models):
        d = data[m]
        delta = d["x_adv"] - d["x"]
        scale = float(np.abs(delta[:k]).max()) or 1.0
        for j in range(k):
            a0, a1, a2 = axes[i][3 * j], axes[i][3 * j + 1], axes[i][3 * j + 2]
            _image(a0, d["x"][j])
            _image(a1, d["x_adv"][j])
            if delta.shape[1] == 1:
                a2.imshow(delta[j][0], cmap="seismic", vmin=-scale, vmax=scale)
                a2.set_xticks([])
                a2.set_yticks([])
            else:
                _image(a2, 0.5 + delta[j] / (2 * scale))
            a0.set_title(f"y={d['y'][j]} pred {d['pred_clean'][j]}", fontsize=7)
            a1.set_title(f"adv pred {d['pred_adv'][j]}" + (" ✗" if d["pred_adv"][j] != d["y"][j] else " ✓"),
                         fontsize=7)
            a2.set_title(f"δ, ‖δ‖={d['perturbation_norm'][j]:.2f}", fontsize=7)
        axes[i][0].set_ylabel(C.label(m), fontsize=8)
    eps = {float(d["eps"]) for d in data.values()}
    norm = {str(d["norm"]) for d in data.values()}
    fig.suptitle(f"clean | adversarial | perturbation, {'/'.join(norm)} ε = {', '.join(f'{e:g}' for e in eps)} "
                 f"({M['scale']} scale)", y=1.0)
    fig.tight_layout()
    return save(fig, "adversarial_examples.png", out)


def mean_abs_perturbation(results=None, out=None):
    """``adversarial_mean_abs_perturbation.png``: per model, the map of mean |δ| over the attacked
    images and channels (where the attack puts its budget)."""
    models, data, _ = load(results)
    fig, axes = subplots(1, len(models), figsize=(2.0 * len(models), 2.3), squeeze=False)
    for ax, m in zip(axes[0], models):
        d = data[m]
        mag = np.abs(d["x_adv"] - d["x"]).mean(axis=(0, 1))
        ax.imshow(mag, cmap="magma")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(C.label(m), fontsize=8)
    fig.suptitle("mean |δ| over the attacked images", y=1.05)
    return save(fig, "adversarial_mean_abs_perturbation.png", out)


def adversarial_table(results=None, out=None) -> str:
    """``adversarial_examples.csv`` / ``.md``: per model, the attack (norm, ε, steps, gradient
    paths), images clean-correct and fooled, mean and largest ‖δ‖, whether the equilibria
    converged. Returns the Markdown."""
    models, data, meta = load(results)
    rows = []
    for m in models:
        d, j = data[m], meta[m]
        rows.append({"model": C.label(m), "norm": j["norm"], "eps": j["eps"], "n": j["n"],
                     "clean_correct": j["clean_correct"], "fooled": j["fooled"],
                     "mean_norm": float(np.mean(d["perturbation_norm"])), "max_norm": j["max_perturbation_norm"],
                     "paths": ";".join(j["paths"]), "steps": j["steps"], "converged": j["adversarial_converged"]})
    cols = [("model", "model"), ("norm", "norm"), ("eps", "ε"), ("n", "images"), ("clean_correct", "clean correct"),
            ("fooled", "fooled"), ("mean_norm", "mean ‖δ‖"), ("max_norm", "max ‖δ‖"), ("paths", "gradient paths"),
            ("steps", "APGD steps"), ("converged", "equilibria converged")]
    C.write_table(rows, cols, "adversarial_examples", out)
    return C.markdown_table(rows, cols)
