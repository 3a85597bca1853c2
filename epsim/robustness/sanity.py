"""Automatic sanity checks of a robustness evaluation (Carlini et al. 2019, Tramèr et al. 2020).

Each check returns a :class:`Check` with status ``pass``, ``FAIL`` or ``n/a`` and a
one-line detail; :mod:`epsim.robustness.evaluate` attaches them to every number they
concern, and a failed check is printed next to that number.

Paired comparisons. Two attacks evaluated on the same images are compared sample by
sample: with ``k_a`` images robust under A but broken by B and ``k_b`` the reverse, "A is
more robust than B beyond noise" means ``k_a > k_b + 2·sqrt(k_a + k_b)`` (a two-sigma
sign test on the discordant images; up to 4 discordant images are never significant).
Checks on aggregate accuracies only (no masks) use the binomial standard error instead.

The checks:

* :func:`check_monotone` — robust accuracy does not increase with ε.
* :func:`check_large_eps` — the iterative white-box attack drives robust accuracy to ≈ 0
  at a large ε (default threshold 2 %): "unbounded attacks must succeed". The harness adds
  an ε at which any image can reach any other (L∞ 1, L2 ``sqrt(C·H·W)``) unless the sweep
  already has one.
* :func:`check_iterative_vs_single` — PGD is not weaker than FGSM at the same ε.
* :func:`check_blackbox_vs_whitebox` — Square (black box) does not beat PGD (white box).
* :func:`check_gradients` — input gradients are finite and non-zero.
* :func:`check_converged` — every equilibrium the predictor solved on perturbed inputs met
  its tolerance (for a circuit an unconverged one counts as a misclassification,
  conservatively; the software EP-CNN's fixed-T1 prediction is kept, as published).
* :func:`check_clean_settings` — the clean accuracy is the predictor's used under attack,
  its equilibria converged, and it reproduces the training run's test accuracy when the
  same test set and settings are used.
* :func:`check_paths_agree` — the circuit's gradient paths (BPTT, implicit, EP) point the
  same way (median cosine ≥ 0.9).
* :func:`check_in_ball` — every adversarial image is in [0, 1] and within ε.
* :func:`check_certified_le_robust` — no attack breaks an image the circuit's certificate
  proves robust at the same ε (certified ≤ robust, sample by sample), and
  :func:`check_certified_le_clean` — every certified image is classified correctly.
  Either failing means a bug in the certificate or in the attack's predictor.
* :func:`check_protocol_gap` — the seed's attack protocol, its final iterates clipped to
  [0, 1], does not find images the harness's worst case missed (beyond noise): if it does,
  the harness is the weaker attack.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PASS, FAIL, NA = "pass", "FAIL", "n/a"


@dataclass
class Check:
    """One sanity-check outcome: ``status`` in {pass, FAIL, n/a} and a one-line ``detail``."""

    name: str
    status: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def to_dict(self) -> dict:
        return {"status": self.status, "detail": self.detail}


def significantly_more(k_a: int, k_b: int) -> bool:
    """Paired sign test: ``k_a`` discordant images favour A, ``k_b`` favour B; A wins beyond noise?"""
    return k_a > k_b + 2.0 * math.sqrt(k_a + k_b)


def _paired(more_robust, less_robust):
    """(k_a, k_b): images robust under the first mask only, under the second only."""
    a, b = np.asarray(more_robust, bool), np.asarray(less_robust, bool)
    return int((a & ~b).sum()), int((b & ~a).sum())


def check_monotone(eps, masks) -> list:
    """Robust accuracy non-increasing in ε, one :class:`Check` per ε (the first is n/a).

    eps: increasing radii; masks: one (n,) bool robust mask per ε. Row ``i`` fails when it
    is more robust than row ``i − 1`` beyond noise.
    """
    out = [Check("monotone", NA, "smallest ε of the sweep")] if len(eps) else []
    for i in range(1, len(eps)):
        k_up, k_down = _paired(masks[i], masks[i - 1])
        acc_prev, acc = float(np.mean(masks[i - 1])), float(np.mean(masks[i]))
        if significantly_more(k_up, k_down):
            out.append(Check("monotone", FAIL,
                             f"robust accuracy rises from {acc_prev:.3f} at ε={eps[i - 1]:g} to {acc:.3f} "
                             f"at ε={eps[i]:g} ({k_up} images robust only at the larger ε, {k_down} the reverse)"))
        else:
            rel = "≤" if acc <= acc_prev else "> (within noise)"
            out.append(Check("monotone", PASS, f"{acc:.3f} {rel} {acc_prev:.3f} at ε={eps[i - 1]:g} "
                                               f"({k_up} images robust only at the larger ε, {k_down} the reverse)"))
    return out


def check_large_eps(eps: float, robust_accuracy: float, n: int, *, threshold: float = 0.02,
                    unbounded: float | None = None) -> Check:
    """Robust accuracy at the largest ε must be ≈ 0 (≤ ``threshold``).

    unbounded: the ε at which every image can reach every other (for the detail text).
    """
    what = (f"ε={eps:g}" + (" (unbounded: any image reachable)" if unbounded is not None and eps >= unbounded
                            else ""))
    if robust_accuracy <= threshold:
        return Check("large_eps", PASS, f"robust accuracy {robust_accuracy:.3f} ≤ {threshold:g} at {what}")
    return Check("large_eps", FAIL,
                 f"robust accuracy {robust_accuracy:.3f} > {threshold:g} at {what} on {n} images: the "
                 "attack fails where success is possible (weak attack or gradient masking)")


def check_iterative_vs_single(pgd_mask, fgsm_mask, eps: float) -> Check:
    """PGD (iterative) must not leave more images robust than FGSM (single step) beyond noise."""
    k_pgd_only, k_fgsm_only = _paired(pgd_mask, fgsm_mask)
    pa, fa = float(np.mean(pgd_mask)), float(np.mean(fgsm_mask))
    if significantly_more(k_pgd_only, k_fgsm_only):
        return Check("iterative_vs_single", FAIL,
                     f"PGD robust accuracy {pa:.3f} > FGSM {fa:.3f} at ε={eps:g} ({k_pgd_only} images "
                     f"broken by FGSM only, {k_fgsm_only} by PGD only)")
    if pa <= fa:
        return Check("iterative_vs_single", PASS, f"PGD {pa:.3f} ≤ FGSM {fa:.3f}")
    return Check("iterative_vs_single", PASS, f"PGD {pa:.3f} > FGSM {fa:.3f} within noise ({k_pgd_only} "
                                              f"images broken by FGSM only, {k_fgsm_only} by PGD only)")


def check_blackbox_vs_whitebox(bb_mask, wb_mask, eps: float) -> Check:
    """The black-box attack must not break more images than the white-box one beyond noise."""
    k_wb_only_robust, k_bb_only_robust = _paired(wb_mask, bb_mask)
    ba, wa = float(np.mean(bb_mask)), float(np.mean(wb_mask))
    if significantly_more(k_wb_only_robust, k_bb_only_robust):
        return Check("blackbox_vs_whitebox", FAIL,
                     f"black-box robust accuracy {ba:.3f} < white-box {wa:.3f} at ε={eps:g} "
                     f"({k_wb_only_robust} images broken by the black box only, {k_bb_only_robust} "
                     "by the white box only): the white-box attack is weak or the gradients mislead")
    if ba >= wa:
        return Check("blackbox_vs_whitebox", PASS, f"black box {ba:.3f} ≥ white box {wa:.3f}")
    return Check("blackbox_vs_whitebox", PASS, f"black box {ba:.3f} < white box {wa:.3f} within noise "
                                               f"({k_wb_only_robust} images broken by the black box only, "
                                               f"{k_bb_only_robust} by the white box only)")


def check_gradients(n_evals: int, n_zero: int, n_nonfinite: int, *, probe_n: int = 0,
                    probe_zero: int = 0, probe_nonfinite: int = 0, max_zero_fraction: float = 0.01,
                    n_unconverged: int = 0) -> Check:
    """Input gradients finite and non-zero.

    probe_*: per-sample gradients at the clean inputs (every path and loss): any zero or
    non-finite one fails. n_*: per-sample gradients during the attack: any non-finite one
    fails, and so does a zero fraction above ``max_zero_fraction``. n_unconverged: gradients
    whose equilibria missed their tolerance (reported, not failed: success is judged by the
    predictor, never by the gradient's forward pass).
    """
    if n_evals == 0 and probe_n == 0:
        return Check("gradients", NA, "no gradient was needed (every image already misclassified)")
    bad = []
    if probe_nonfinite or n_nonfinite:
        bad.append(f"{probe_nonfinite + n_nonfinite} non-finite")
    if probe_zero:
        bad.append(f"{probe_zero}/{probe_n} zero at clean inputs")
    if n_evals and n_zero / n_evals > max_zero_fraction:
        bad.append(f"{n_zero}/{n_evals} zero during the attack")
    detail = (f"{probe_n} gradients at clean inputs, {n_evals} during the attack; "
              f"{probe_zero + n_zero} zero, {probe_nonfinite + n_nonfinite} non-finite"
              + (f", {n_unconverged} from unconverged equilibria" if n_unconverged else ""))
    if bad:
        return Check("gradients", FAIL, "; ".join(bad) + f" ({detail})")
    return Check("gradients", PASS, detail)


def check_converged(n_solves: int, n_unconverged: int, max_residual=None, unit: str = "A") -> Check:
    """Every predictor solve on perturbed inputs converged (certificate).

    unit: of the residual, ``A`` (circuit KCL residual: an unconverged solve counts as a
    misclassification) or ``""`` (software EP-CNN: last-step change, prediction kept).
    """
    if n_solves == 0:
        return Check("converged", NA, "no predictor call")
    res = f", max residual {max_residual:.3g}{' ' + unit if unit else ''}" if max_residual is not None else ""
    if n_unconverged:
        how = "counted as misclassified" if unit == "A" else "fixed-step prediction used as computed"
        return Check("converged", FAIL, f"{n_unconverged}/{n_solves} equilibria did not converge{res} ({how})")
    return Check("converged", PASS, f"{n_solves} equilibria converged{res}")


def check_clean_settings(clean_accuracy: float, n: int, n_unconverged: int, settings: dict, *,
                         recorded_accuracy=None, comparable: bool = False) -> Check:
    """Clean accuracy from the very predictor used under attack; converged; reproduces training.

    comparable: the images are the full test set and the settings equal the training run's,
    so the clean accuracy must equal ``recorded_accuracy`` exactly.
    """
    keys = ("backend", "tol_A", "max_iter", "t1", "solver", "tol")
    desc = ", ".join(f"{k}={settings[k]}" for k in keys if k in settings) or "the model's forward pass"
    if n_unconverged:
        return Check("clean_settings", FAIL, f"{n_unconverged}/{n} clean equilibria did not converge ({desc})")
    if comparable and recorded_accuracy is not None:
        if abs(clean_accuracy - recorded_accuracy) > 0.5 / max(n, 1):
            return Check("clean_settings", FAIL,
                         f"clean accuracy {clean_accuracy:.4f} differs from the training run's test "
                         f"accuracy {recorded_accuracy:.4f} on the same {n} images ({desc})")
        return Check("clean_settings", PASS, f"{clean_accuracy:.4f} with the predictor used under attack "
                                             f"({desc}); equals the training run's test accuracy")
    return Check("clean_settings", PASS, f"{clean_accuracy:.4f} on {n} images with the predictor used under "
                                         f"attack ({desc})")


def check_paths_agree(cosines: dict, threshold: float = 0.9) -> Check:
    """``cosines``: {"ep vs implicit (ce)": (n,) per-sample cosines, …}; median ≥ threshold."""
    if not cosines:
        return Check("paths_agree", NA, "a single gradient path")
    parts, bad = [], []
    for k, c in cosines.items():
        c = np.asarray(c, np.float64)
        c = c[np.isfinite(c)]
        med = float(np.median(c)) if len(c) else float("nan")
        parts.append(f"{k}: median {med:.4f}")
        if not (med >= threshold):
            bad.append(k)
    if bad:
        return Check("paths_agree", FAIL, "gradient paths disagree (" + "; ".join(parts) + ")")
    return Check("paths_agree", PASS, "; ".join(parts))


def check_in_ball(max_norm: float, eps: float, lo: float, hi: float, norm: str) -> Check:
    """Adversarial images inside the ε-ball (relative slack 1e-9) and inside [0, 1]."""
    if max_norm > eps * (1 + 1e-9) + 1e-12 or lo < 0.0 or hi > 1.0:
        return Check("in_ball", FAIL, f"max {norm} perturbation {max_norm:.6g} vs ε={eps:g}, pixels in "
                                      f"[{lo:.3g}, {hi:.3g}]")
    return Check("in_ball", PASS, f"max {norm} perturbation {max_norm:.4g} ≤ ε={eps:g}, pixels in [0, 1]")


def check_certified_le_robust(cert_mask, robust_mask, eps: float, attack: str) -> Check:
    """Every image certified at ``eps`` survives ``attack`` at ``eps`` (masks (N,) bool)."""
    cert, robust = np.asarray(cert_mask, bool), np.asarray(robust_mask, bool)
    broken = int((cert & ~robust).sum())
    detail = (f"{attack} ε={eps:g}: certified {cert.mean():.3f} <= robust {robust.mean():.3f}; "
              f"{broken} certified image(s) broken")
    return Check("certified_le_robust", FAIL if broken else PASS, detail)


def check_certified_le_clean(cert_mask, clean_mask, eps: float) -> Check:
    """Every image certified at ``eps`` is classified correctly when clean."""
    cert, clean = np.asarray(cert_mask, bool), np.asarray(clean_mask, bool)
    bad = int((cert & ~clean).sum())
    return Check("certified_le_clean", FAIL if bad else PASS,
                 f"ε={eps:g}: certified {cert.mean():.3f} <= clean {clean.mean():.3f}; "
                 f"{bad} certified image(s) misclassified clean")


def check_protocol_gap(seed_mask, harness_mask, eps: float) -> Check:
    """The seed's protocol does not break images the harness's worst case leaves robust,
    beyond noise (paired sign test); the gap itself is a result, reported beside.
    ``seed_mask``: robust under the seed's iterates as valid images (clipped to [0, 1])."""
    k_harness_only, k_seed_only = _paired(harness_mask, seed_mask)
    seed, harness = float(np.mean(seed_mask)), float(np.mean(harness_mask))
    detail = (f"ε={eps:g}: seed protocol, iterates clipped to [0, 1], {seed:.3f} vs harness {harness:.3f} "
              f"({k_harness_only} images robust only under the harness, {k_seed_only} only under the seed protocol)")
    return Check("advep_ge_harness", FAIL if significantly_more(k_harness_only, k_seed_only) else PASS, detail)


def summarize(checks) -> tuple:
    """(all_ok, names of failed checks) of an iterable of :class:`Check`."""
    failed = [c.name for c in checks if c.failed]
    return not failed, failed


def check_severity_trend(severities, accuracies, n_images: int) -> list:
    """Mean accuracy over corruptions non-increasing with severity, beyond binomial noise.

    accuracies: mean accuracy per severity (over corruptions and ``n_images`` images each);
    severity ``s`` fails when it beats ``s − 1`` by more than two standard errors.
    """
    out = [Check("severity_trend", NA, "lowest severity")] if len(severities) else []
    for i in range(1, len(severities)):
        p = 0.5 * (accuracies[i] + accuracies[i - 1])
        se = math.sqrt(max(p * (1 - p), 1e-12) * 2.0 / max(n_images, 1))
        if accuracies[i] > accuracies[i - 1] + 2 * se:
            out.append(Check("severity_trend", FAIL, f"mean accuracy rises from {accuracies[i - 1]:.3f} "
                                                     f"(severity {severities[i - 1]}) to {accuracies[i]:.3f}"))
        else:
            rel = "≤" if accuracies[i] <= accuracies[i - 1] else "> (within noise)"
            out.append(Check("severity_trend", PASS, f"{accuracies[i]:.3f} {rel} {accuracies[i - 1]:.3f}"))
    return out
