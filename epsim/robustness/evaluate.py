"""Run a robustness sweep on one model and turn it into table rows with their sanity checks.

:func:`run_sweep` takes a model adapter (:mod:`epsim.robustness.adapters`), images ``x``
(N, C, H, W) in [0, 1] with labels ``y`` (N,), and a :class:`SweepConfig`; it returns a
JSON-able dict whose ``rows`` hold one entry per (attack, ε) — or per (corruption,
severity) — with clean accuracy, robust accuracy, n, the settings, the gradient path(s)
used and the worst one, and the sanity checks of :mod:`epsim.robustness.sanity`.

Attacks (``ATTACKS``): ``pgd-l2``, ``pgd-linf`` (APGD, restarts, losses, every gradient
path), ``fgsm-l2``, ``fgsm-linf`` (one step), ``square-l2``, ``square-linf`` (black box,
querying the predictor), ``corruptions`` (every applicable CIFAR-10-C corruption × the
severities; ε is not used), ``certify-linf``, ``certify-l2`` (circuits only: certified
accuracy from the circuit's monotonicity, :mod:`epsim.robustness.certify`, two solves per
image and ε; L2 through the L∞ box of the same radius).

``advep-l2``, ``advep-linf``: the seed's protocol (Mansingh et al. 2023, lanl/AdvEP; see
:func:`epsim.robustness.attacks.seed_pgd`): 20 fixed steps of 2.5ε/20 from the clean image,
cross-entropy, no restarts, no clipping to [0, 1], the final iterate judged, and for EP
models (circuits and the software EP-CNN) the gradient of a truncated unroll of
``unroll`` steps from the zero state. Its ``robust_accuracy`` is the seed's own judgement of
the unclipped final iterates; ``in_domain_robust_accuracy`` judges the same iterates clipped
to [0, 1] (valid images, inside the same ε-ball). Beside a ``pgd-*`` row of the same norm and
ε its row reports ``harness_robust_accuracy`` and ``protocol_gap`` (seed − harness) and gets
the check ``advep_ge_harness``: the seed's clipped iterates must not break images the
harness's worst case leaves robust, beyond noise (pixels outside [0, 1] are a larger threat
model, not a weakness of the harness: on MNIST, whose pixels sit mostly at 0 and 1, they
break many more images).

Every attack row with a certificate row of the same norm and ε gets the check
``certified_le_robust``: no image the certificate proves robust may be broken by the attack
(one that is means a bug in one of them).

Worst case: for a white-box attack at one ε, an image counts as robust only if it survived
every gradient path, every loss and every restart (``robust_accuracy``). Each path's own
robust accuracy (over all losses and restarts) is in ``by_path``; ``worst_path`` is the path
with the lowest one. Within a path, losses and restarts run one after the other on the
images still robust.

Every PGD row is paired with an FGSM run at the same ε (same paths and losses; taken from
an ``fgsm-*`` row of the same run when there is one) for the iterative-vs-single-step
check, and every Square row with the PGD row of the same norm and ε when the run has one.
Unless ``large_eps_check`` is off, PGD sweeps get one extra ε at which every image can
reach every other image (L∞ 1, L2 ``sqrt(C·H·W)``) if the sweep has no such ε, marked
``sanity_only``; robust accuracy must be ≈ 0 there.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import EpsimError
from . import sanity as S
from .adapters import transfer_gradient
from .attacks import LOSSES, fgsm, merge_stats, perturbation_norm, pgd, square_attack, target_classes

ATTACKS = ("pgd-l2", "pgd-linf", "fgsm-l2", "fgsm-linf", "square-l2", "square-linf", "certify-l2",
           "certify-linf", "advep-l2", "advep-linf", "corruptions")
_FAMILY_ORDER = {"certify": -1, "fgsm": 0, "pgd": 1, "square": 2, "advep": 3, "corruptions": 4}


@dataclass
class SweepConfig:
    """What to run. ``paths=("all",)`` means every path the model (and a surrogate) offers."""

    attacks: tuple
    eps: tuple = ()
    paths: tuple = ("all",)
    losses: tuple = ("ce", "dlr", "dlr-t")
    restarts: int = 1
    steps: int = 50
    queries: int = 1000
    seed: int = 0
    severities: tuple = (1, 2, 3, 4, 5)
    corruptions: tuple | None = None
    frost_dir: str | None = None
    large_eps_check: bool = True
    large_eps_threshold: float = 0.02
    unroll: int = 29  # the seed protocol's truncated unroll (steps from the zero state)
    target_classes: int = 3  # runs of the targeted loss dlr-t: the top-k other classes

    def check(self) -> None:
        """An :class:`EpsimError` for a value that is wrong whatever the model (the ε range per
        norm needs the image shape: :func:`validate_eps`)."""
        for a in self.attacks:
            split_attack(a)
        for loss in self.losses:
            if loss not in LOSSES:
                raise EpsimError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
        if self.steps < 1 or self.restarts < 1 or self.queries < 1:
            raise EpsimError("--steps, --restarts and --queries must be at least 1")
        if int(self.unroll) < 1:
            raise EpsimError("--unroll must be at least 1 step")
        if int(self.target_classes) < 1:
            raise EpsimError("--target-classes must be at least 1")
        for e in self.eps:
            if not math.isfinite(float(e)) or float(e) < 0:
                raise EpsimError(f"ε must be a non-negative number, got {float(e):g}")
        if "corruptions" in self.attacks:
            from .corruptions import CORRUPTIONS

            for sev in self.severities:
                if not 1 <= int(sev) <= 5:
                    raise EpsimError(f"corruption severities are 1..5, got {sev}")
            for name in self.corruptions or ():
                if name not in CORRUPTIONS:
                    raise EpsimError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")


def split_attack(name: str) -> tuple:
    """``"pgd-l2"`` -> ``("pgd", "l2")``; ``"corruptions"`` -> ``("corruptions", None)``."""
    if name not in ATTACKS:
        raise EpsimError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    if name == "corruptions":
        return "corruptions", None
    family, norm = name.split("-")
    return family, norm


def unbounded_eps(norm: str, image_shape) -> float:
    """Radius at which any image in [0, 1]^d reaches any other: 1 (L∞) or sqrt(d) (L2)."""
    return 1.0 if norm == "linf" else math.sqrt(float(np.prod(image_shape)))


def validate_eps(eps, attacks, image_shape) -> tuple:
    """Check ε values against every attacked norm; returns them sorted (duplicates dropped)."""
    eps = [float(e) for e in eps]
    norms = {split_attack(a)[1] for a in attacks} - {None}
    if norms and not eps:
        raise EpsimError("--eps is required for " + ", ".join(a for a in attacks if a != "corruptions"))
    for e in eps:
        if not math.isfinite(e) or e < 0:
            raise EpsimError(f"ε must be a non-negative number, got {e:g}")
        for norm in norms:
            top = unbounded_eps(norm, image_shape)
            if e > top * (1 + 1e-12):
                raise EpsimError(f"ε={e:g} is out of range for {norm}: pixels are in [0, 1], so an ε above "
                                 f"{top:g} ({'1' if norm == 'linf' else 'sqrt(C*H*W)'}) changes nothing")
    return tuple(sorted(set(eps)))


def _rng(seed, *keys):
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32("|".join(map(str, keys)).encode())])


def _bar(total, desc, enabled):
    if not enabled or total <= 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _mask_str(mask) -> str:
    return "".join("1" if m else "0" for m in np.asarray(mask, bool))


def resolve_paths(adapter, requested, surrogate) -> tuple:
    """Gradient paths to run: ``all`` = the adapter's paths (+ ``transfer`` with a surrogate)."""
    available = tuple(adapter.grad_paths) + (("transfer",) if surrogate is not None else ())
    if "all" in requested:
        return available
    for p in requested:
        if p == "transfer" and surrogate is None:
            raise EpsimError("--grad-path transfer needs a surrogate model (--transfer-from CHECKPOINT)")
        if p not in available:
            raise EpsimError(f"gradient path {p!r} is not available for {adapter.name}; "
                             f"choose from {', '.join(available)}")
    return tuple(dict.fromkeys(requested))


def check_sweep_fits(adapter, config, surrogate=None) -> tuple:
    """Check ``config`` against the model before any image is read or attacked.

    Raises :class:`EpsimError` for a sweep the model cannot run: ε out of range for its
    images, a certificate asked of a software model (or of a circuit that is not monotone),
    a gradient path the model does not have. Returns ``(attacks, eps, white, paths)``: the
    attacks in run order, the sorted ε values, the white-box attacks among them and their
    gradient paths.
    """
    config.check()
    attacks = sorted(dict.fromkeys(config.attacks), key=lambda a: (_FAMILY_ORDER[split_attack(a)[0]], a))
    eps_list = (validate_eps(config.eps, attacks, adapter.image_shape)
                if any(a != "corruptions" for a in attacks) else ())
    if any(split_attack(a)[0] == "certify" for a in attacks):
        if adapter.kind != "circuit":
            raise EpsimError(f"certify-l2/certify-linf need a circuit model; {adapter.name} is a "
                             f"{adapter.kind} model (signed weights, max-pool: no monotonicity certificate)")
        from .certify import check_monotone_circuit

        check_monotone_circuit(adapter.net)
    white = [a for a in attacks if split_attack(a)[0] in ("pgd", "fgsm")]
    paths = resolve_paths(adapter, config.paths, surrogate) if white else ()
    return attacks, eps_list, white, paths


class _Sweep:
    def __init__(self, adapter, x, y, config, surrogate, progress, log, journal=None):
        self.a, self.x, self.y, self.cfg = adapter, np.asarray(x, np.float64), np.asarray(y), config
        self.surrogate, self.progress, self.log = surrogate, progress, log
        self.journal = journal
        self.n = len(self.y)
        self.clean_scores = None  # (N, K), set once the clean predictions are known

    def unit(self, key, idx, compute, bar=None, bar_steps=0):
        """``compute()`` -> ``(robust (len(idx),) bool, stats, geo)`` of one unit of the sweep (an
        attack run, or the gradient probe with an empty mask), or its record from an interrupted
        run of the same sweep (the bar is then advanced by ``bar_steps``)."""
        t0 = time.perf_counter()
        if self.journal is None:
            out = compute()
        else:
            n_before = self.journal.reused
            out = self.journal.run(key, idx, compute)
            if self.journal.reused > n_before:
                if bar is not None:
                    bar.update(bar_steps)
                return out
        if not self.progress:  # no bars: one line per finished run, for logs of long sweeps
            what = f"{int(np.sum(out[0]))}/{len(idx)} robust" if len(out[0]) == len(idx) else "done"
            self.log(f"  {key}: {what} ({time.perf_counter() - t0:.1f} s)")
        return out

    # ---- gradients -------------------------------------------------------------------
    def grad_fn(self, path, loss):
        if path == "transfer":
            return transfer_gradient(self.surrogate, loss)
        return lambda x, y: self.a.input_gradient(x, y, loss, path)

    def gradient_probe(self, paths, losses, correct) -> dict:
        """Gradients at the clean, correctly classified images: zero/non-finite counts, cosines."""
        idx = np.flatnonzero(correct)
        out = {"n": 0, "zero": 0, "nonfinite": 0, "cosines": {}}
        if len(idx) == 0:
            return out
        xs, ys = self.x[idx], self.y[idx]
        grads = {}
        for path in paths:
            for loss in losses:
                yl = ys if loss != "dlr-t" else np.stack([ys, target_classes(self.clean_scores[idx], ys, 1)], 1)
                g = np.asarray(self.grad_fn(path, loss)(xs, yl).grad, np.float64).reshape(len(idx), -1)
                finite = np.isfinite(g).all(axis=1)
                out["n"] += len(idx)
                out["nonfinite"] += int((~finite).sum())
                out["zero"] += int((finite & ~(g != 0).any(axis=1)).sum())
                grads[path, loss] = g
        own = [p for p in paths if p != "transfer"]
        ref = "implicit" if "implicit" in own else (own[0] if own else None)
        for path in own:
            if path == ref:
                continue
            for loss in losses:
                a, b = grads[path, loss], grads[ref, loss]
                den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
                cos = np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), np.nan)
                out["cosines"][f"{path} vs {ref} ({loss})"] = cos
        return out

    # ---- white box -------------------------------------------------------------------
    def white_box(self, family, norm, eps, paths, losses, correct, bar):
        cfg = self.cfg
        robust_all = correct.copy()
        by_path, stats = {}, {}
        geo = {"max_norm": 0.0, "lo": 0.0, "hi": 1.0}
        for path in paths:
            r_path = correct.copy()
            for loss, rank in self.loss_runs(family, losses):
                idx = np.flatnonzero(r_path)
                if len(idx) == 0:
                    if bar is not None:
                        bar.update(cfg.restarts if family == "pgd" else 1)
                    continue
                keys = (family, norm, repr(eps), path, loss, *([rank] if rank else []))

                def attack(idx=idx, path=path, loss=loss, rank=rank, keys=keys):
                    gf = self.grad_fn(path, loss)
                    rng = _rng(cfg.seed, *keys)
                    if family == "pgd":
                        targets = target_classes(self.clean_scores[idx], self.y[idx], rank) if rank else None
                        res = pgd(gf, self.a.predict, self.x[idx], self.y[idx], eps, norm, cfg.steps, rng,
                                  restarts=cfg.restarts, progress=bar.update if bar is not None else None,
                                  targets=targets)
                    else:
                        res = fgsm(gf, self.a.predict, self.x[idx], self.y[idx], eps, norm)
                        if bar is not None:
                            bar.update(1)
                    return res.robust, res.stats, _geometry(res.x_adv, self.x[idx], norm)

                robust, unit_stats, unit_geo = self.unit("|".join(map(str, keys)), idx, attack, bar,
                                                         cfg.restarts if family == "pgd" else 1)
                merge_stats(stats, unit_stats)
                geo["max_norm"] = max(geo["max_norm"], unit_geo["max_norm"])
                geo["lo"] = min(geo["lo"], unit_geo["lo"])
                geo["hi"] = max(geo["hi"], unit_geo["hi"])
                r_path[idx] = robust
            by_path[path] = r_path
            robust_all &= r_path
        return robust_all, by_path, stats, geo

    def loss_runs(self, family, losses) -> list:
        """``(loss, target rank)`` runs of a white-box attack: the targeted ``dlr-t`` once per
        target class (rank 1..``target_classes``) for PGD, not at all for FGSM."""
        runs = []
        for loss in losses:
            if loss != "dlr-t":
                runs.append((loss, 0))
            elif family == "pgd":
                k = min(int(self.cfg.target_classes), self.a.num_classes - 1)
                runs += [(loss, r) for r in range(1, k + 1)]
        return runs

    # ---- the seed's protocol ---------------------------------------------------------
    def seed_protocol(self, norm, eps, correct):
        """``(robust, robust with the final iterates clipped to [0, 1], stats, geo)`` of the seed's
        protocol at one ε: (N,) masks, the first its own (unclipped) judgement."""
        from .attacks import seed_pgd

        idx = np.flatnonzero(correct)
        robust = correct.copy()
        in_domain = correct.copy()
        stats = {}
        geo = {"max_norm": 0.0, "lo": 0.0, "hi": 1.0}
        if len(idx):
            unroll = int(self.cfg.unroll)

            def attack():
                res = seed_pgd(lambda x, y: self.a.unrolled_gradient(x, y, "ce", unroll), self.a.predict,
                               self.x[idx], self.y[idx], eps, norm)
                return res.robust, res.stats, _geometry(res.x_adv, self.x[idx], norm)

            robust[idx], unit_stats, geo = self.unit(f"advep|{norm}|{eps!r}|unroll-{unroll}", idx, attack)
            in_domain[idx] = unit_stats.pop("robust_in_domain", robust[idx])  # absent from older records
            merge_stats(stats, unit_stats)
        return robust, in_domain, stats, geo

    # ---- black box -------------------------------------------------------------------
    def black_box(self, norm, eps, correct, bar):
        idx = np.flatnonzero(correct)
        robust = correct.copy()
        stats, queries = {}, np.zeros(0)
        geo = {"max_norm": 0.0, "lo": 0.0, "hi": 1.0}
        if len(idx):
            def attack():
                rng = _rng(self.cfg.seed, "square", norm, repr(eps))
                res = square_attack(self.a.predict, self.x[idx], self.y[idx], eps, norm, self.cfg.queries, rng,
                                    progress=bar.update if bar is not None else None)
                return res.robust, res.stats, _geometry(res.x_adv, self.x[idx], norm)

            robust[idx], unit_stats, unit_geo = self.unit(f"square|{norm}|{eps!r}|{self.cfg.queries}", idx,
                                                          attack, bar, max(self.cfg.queries - 1, 1))
            merge_stats(stats, unit_stats)
            queries = unit_stats["queries"]
            geo["max_norm"] = unit_geo["max_norm"]
            geo["lo"], geo["hi"] = min(0.0, unit_geo["lo"]), max(1.0, unit_geo["hi"])
        return robust, stats, queries, geo


def _geometry(x_adv, x, norm) -> dict:
    """Largest perturbation norm and the range of the perturbed pixels of one attack run."""
    return {"max_norm": float(perturbation_norm(x_adv, x, norm).max()), "lo": float(x_adv.min()),
            "hi": float(x_adv.max())}


def _conv_check(adapter, n_solves, n_unconverged, max_residual) -> S.Check:
    """``converged`` check, n/a for models without an equilibrium (feed-forward networks)."""
    if not getattr(adapter, "has_equilibrium", True):
        return S.Check("converged", S.NA, "feed-forward model: no equilibrium to certify")
    return S.check_converged(n_solves, n_unconverged, max_residual, "A" if adapter.kind == "circuit" else "")


def run_sweep(adapter, x, y, config: SweepConfig, *, surrogate=None, recorded=None, full_test_set=False,
              progress=True, log=print, journal=None) -> dict:
    """Evaluate ``adapter`` on ``(x, y)`` under ``config``; returns the results dict.

    Args:
        adapter: model adapter; surrogate: optional adapter for the ``transfer`` path.
        x: (N, C, H, W) images in [0, 1]; y: (N,) int labels.
        recorded: the training run's ``{"test_accuracy", "test_subset", "backend", "tol_A",
            "max_iter"}`` for the clean-accuracy check; full_test_set: ``x`` is the whole
            test set, in which case the clean accuracy must reproduce it.
        progress: tqdm bars on stderr; log: a ``print``-like function for status lines.
        journal: a :class:`~epsim.robustness.journal.SweepJournal` recording every finished
            attack run (and supplying those of an interrupted run of the same sweep).
    """
    t_start = time.perf_counter()
    cfg = config
    attacks, eps_list, white, paths = check_sweep_fits(adapter, cfg, surrogate)
    sw = _Sweep(adapter, x, y, cfg, surrogate, progress, log, journal)
    if journal is not None and len(journal):
        log(f"resuming: {len(journal)} finished runs recorded (attack runs and the gradient probe)")
    n = sw.n

    # ---- clean accuracy with the predictor used under attack --------------------------
    clean = adapter.predict(sw.x)
    conv = np.asarray(clean.converged, bool)
    usable = np.ones_like(conv) if getattr(clean, "use_unconverged", False) else conv
    correct = (np.argmax(clean.scores, axis=1) == sw.y) & usable
    sw.clean_scores = np.asarray(clean.scores, np.float64)
    clean_acc = float(correct.mean()) if n else 0.0
    settings = adapter.settings()
    rec = recorded or {}
    comparable = bool(full_test_set and rec.get("test_subset") is None and rec.get("test_accuracy") is not None
                      and all(rec.get(k) == settings.get(k) for k in ("backend", "tol_A", "max_iter")
                              if rec.get(k) is not None))
    clean_check = S.check_clean_settings(clean_acc, n, int((~usable).sum()), settings,
                                         recorded_accuracy=rec.get("test_accuracy"), comparable=comparable)
    log(f"clean accuracy {clean_acc:.4f} on {n} images ({clean_check.status})")
    clean_conv = _conv_check(adapter, n, int((~conv).sum()), None if clean.residual is None or not n
                             else float(np.max(clean.residual)))
    clean_conv.name = "clean_converged"

    run_checks = {"clean_settings": clean_check, "clean_converged": clean_conv}
    grad_check_base = None
    if white:
        idx = np.flatnonzero(correct)

        def probe_run():
            found = sw.gradient_probe(paths, cfg.losses, correct)
            counts = {k: found[k] for k in ("n", "zero", "nonfinite")}
            return np.zeros(0, bool), {**counts, **{f"cos:{k}": v for k, v in found["cosines"].items()}}, {}

        _, recorded_probe, _ = sw.unit("gradient-probe", idx, probe_run)
        probe = {k: recorded_probe[k] for k in ("n", "zero", "nonfinite")}
        probe["cosines"] = {k[4:]: np.asarray(v) for k, v in recorded_probe.items() if k.startswith("cos:")}
        run_checks["paths_agree"] = S.check_paths_agree(probe["cosines"])
        grad_check_base = probe
        run_checks["gradients_at_clean"] = S.check_gradients(0, 0, 0, probe_n=probe["n"], probe_zero=probe["zero"],
                                                             probe_nonfinite=probe["nonfinite"])

    rows, masks = [], {}
    for attack in attacks:
        family, norm = split_attack(attack)
        if family == "corruptions":
            rows.extend(_corruption_rows(sw, correct, clean_acc, clean_check))
            continue
        eps_run = list(eps_list)
        extra = None
        if family == "pgd" and cfg.large_eps_check:
            top = unbounded_eps(norm, adapter.image_shape)
            if not eps_run or eps_run[-1] < top:
                extra = top
                eps_run.append(top)
        if family == "certify":
            rows.extend(_certify_rows(sw, attack, norm, eps_list, correct, clean_acc, clean_check, masks))
            continue
        if family in ("pgd", "fgsm"):
            per_eps = (cfg.restarts if family == "pgd" else 1) * len(paths) * len(sw.loss_runs(family, cfg.losses))
        elif family == "advep":
            per_eps = 1
        else:
            per_eps = max(cfg.queries - 1, 1)
        bar = _bar(per_eps * len(eps_run), attack, progress)
        for eps in eps_run:
            t0 = time.perf_counter()
            row = {"attack": attack, "family": family, "norm": norm, "eps": float(eps), "n": n,
                   "clean_accuracy": clean_acc, "sanity_only": eps == extra}
            if family in ("pgd", "fgsm"):
                robust, by_path, stats, geo = sw.white_box(family, norm, eps, paths, cfg.losses, correct, bar)
                accs = {p: float(m.mean()) for p, m in by_path.items()}
                row.update({"paths": list(paths), "losses": list(cfg.losses),
                            "steps": cfg.steps if family == "pgd" else 1,
                            "restarts": cfg.restarts if family == "pgd" else 1,
                            "by_path": accs, "worst_path": min(accs, key=accs.get) if accs else None})
            elif family == "advep":
                robust, in_domain, stats, geo = sw.seed_protocol(norm, eps, correct)
                if bar is not None:
                    bar.update(1)
                masks["in-domain", attack, eps] = in_domain
                row.update({"paths": [f"unroll-{int(cfg.unroll)}"], "losses": ["ce"], "steps": 20,
                            "in_domain_robust_accuracy": float(in_domain.mean()) if n else 0.0,
                            "restarts": 1, "unroll": int(cfg.unroll), "worst_path": f"unroll-{int(cfg.unroll)}",
                            "protocol": "advep (20 steps of 2.5 eps/20, no restarts, no [0, 1] clipping, "
                                        "final iterate judged)"})
            else:
                robust, stats, queries, geo = sw.black_box(norm, eps, correct, bar)
                row.update({"paths": ["black-box queries"], "queries": cfg.queries,
                            "queries_used_mean": float(queries.mean()) if len(queries) else 0.0,
                            "queries_used_median": float(np.median(queries)) if len(queries) else 0.0,
                            "worst_path": "square"})
            row["robust_accuracy"] = float(robust.mean()) if n else 0.0
            row["n_robust"] = int(robust.sum())
            row["stats"] = {k: (float(v) if isinstance(v, (float, np.floating)) else int(v))
                            for k, v in stats.items() if not isinstance(v, np.ndarray)}
            row["max_perturbation"] = geo["max_norm"]
            row["robust_mask"] = _mask_str(robust)
            row["wall_s"] = time.perf_counter() - t0
            in_ball = (S.check_in_ball(geo["max_norm"], eps, geo["lo"], geo["hi"], norm) if family != "advep"
                       else S.check_in_ball(geo["max_norm"], eps, 0.0, 1.0, norm))
            row["_checks"] = [clean_check, clean_conv, in_ball,
                              _conv_check(adapter, stats.get("predictions", 0), stats.get("unconverged", 0),
                                          stats.get("max_residual"))]
            if family in ("pgd", "fgsm"):
                row["_checks"].append(S.check_gradients(
                    stats.get("grad_evals", 0), stats.get("grad_zero", 0), stats.get("grad_nonfinite", 0),
                    probe_n=grad_check_base["n"], probe_zero=grad_check_base["zero"],
                    probe_nonfinite=grad_check_base["nonfinite"], n_unconverged=stats.get("grad_unconverged", 0)))
                if len(paths) > 1:
                    row["_checks"].append(run_checks["paths_agree"])
            masks[attack, eps] = robust
            rows.append(row)
            log(f"{attack} eps={eps:.4g}: robust accuracy {row['robust_accuracy']:.4f} "
                f"({row['wall_s']:.1f} s)")
        if bar is not None:
            bar.close()

    _cross_checks(rows, masks, sw, paths, correct, cfg)
    for row in rows:
        checks = row.pop("_checks")
        ok, failed = S.summarize(checks)
        row["sanity"] = {c.name: c.to_dict() for c in checks}
        row["sanity_ok"], row["failed_checks"] = ok, failed
    all_failed = sorted({f for r in rows for f in r["failed_checks"]} |
                        {k for k, c in run_checks.items() if c.failed})
    return {
        "tool": "epsim.robustness",
        "model": settings,
        "n": n,
        "clean_accuracy": clean_acc,
        "clean_unconverged": int((~conv).sum()),
        "recorded_test_accuracy": rec.get("test_accuracy"),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "grad_paths": list(paths),
        "checks": {k: c.to_dict() for k, c in run_checks.items()},
        "sanity_ok": not all_failed,
        "failed_checks": all_failed,
        "rows": rows,
        "wall_s": time.perf_counter() - t_start,
        "resumed_runs": journal.reused if journal is not None else 0,
    }


def _certify_rows(sw, attack, norm, eps_list, correct, clean_acc, clean_check, masks) -> list:
    """Certified accuracy per ε (two corner solves per image with the predictor's solver)."""
    from .certify import certify_box

    a = sw.a
    rows = []
    for eps in eps_list:
        t0 = time.perf_counter()
        # an L2 ball of radius > 1 lies in the L∞ box of radius 1, the whole [0, 1] cube
        res = certify_box(a.net, a.solver, sw.x, sw.y, min(eps, 1.0), batch_size=a.batch_size)
        cert = res.certified
        n = sw.n
        masks[attack, eps] = cert
        margins = res.margin_V[cert]
        rows.append({"attack": attack, "family": "certify", "norm": norm, "eps": float(eps), "n": n,
                     "clean_accuracy": clean_acc, "certified_accuracy": float(cert.mean()) if n else 0.0,
                     "robust_accuracy": float(cert.mean()) if n else 0.0, "n_robust": int(cert.sum()),
                     "worst_path": "certificate", "paths": ["certificate (2 solves per image)"],
                     "box": "linf" if norm == "linf" else "linf box containing the l2 ball",
                     "min_certified_margin_V": float(margins.min()) if margins.size else None,
                     "stats": {"predictions": 2 * n, "unconverged": int((~res.converged).sum()),
                               "max_residual": float(res.max_residual_A)},
                     "sanity_only": False, "robust_mask": _mask_str(cert),
                     "wall_s": time.perf_counter() - t0,
                     "_checks": [clean_check, S.check_certified_le_clean(cert, correct, eps),
                                 _conv_check(a, 2 * n, int((~res.converged).sum()), res.max_residual_A)]})
        sw.log(f"{attack} eps={eps:.4g}: certified accuracy {rows[-1]['certified_accuracy']:.4f} "
               f"({rows[-1]['wall_s']:.1f} s)")
    return rows


def _cross_checks(rows, masks, sw, paths, correct, cfg):
    """Checks that compare rows: monotone in ε, ≈0 at large ε, PGD vs FGSM, black vs white box,
    certified ≤ robust."""
    by_attack = {}
    for row in rows:
        if row["family"] != "corruptions":
            by_attack.setdefault(row["attack"], []).append(row)
    for attack, rs in by_attack.items():
        family, norm = split_attack(attack)
        if family == "certify":
            continue
        for r in rs:
            key = (f"certify-{norm}", r["eps"])
            if key in masks:
                c = S.check_certified_le_robust(masks[key], masks[attack, r["eps"]], r["eps"], attack)
                r["_checks"].append(c)
                for cr in by_attack[key[0]]:
                    if cr["eps"] == r["eps"]:
                        cr["_checks"].append(S.Check(f"certified_le_{attack}", c.status, c.detail))
    for attack, rs in by_attack.items():
        eps = [r["eps"] for r in rs]
        for r, c in zip(rs, S.check_monotone(eps, [masks[attack, e] for e in eps])):
            r["_checks"].append(c)
        family, norm = split_attack(attack)
        if family == "pgd":
            top = rs[-1]
            unbounded = unbounded_eps(norm, sw.a.image_shape)
            if cfg.large_eps_check or top["eps"] >= unbounded:
                big = S.check_large_eps(top["eps"], top["robust_accuracy"], top["n"],
                                        threshold=cfg.large_eps_threshold, unbounded=unbounded)
            else:
                big = S.Check("large_eps", S.NA, f"not run (--no-large-eps-check and the largest ε={top['eps']:g} "
                                                 f"is below {unbounded:g})")
            for r in rs:
                r["_checks"].append(big)
            for r in rs:
                key = (f"fgsm-{norm}", r["eps"])
                if key in masks:
                    f_mask = masks[key]
                else:
                    f_mask, _, _, _ = sw.white_box("fgsm", norm, r["eps"], paths, cfg.losses, correct, None)
                r["fgsm_robust_accuracy"] = float(f_mask.mean())
                r["_checks"].append(S.check_iterative_vs_single(masks[attack, r["eps"]], f_mask, r["eps"]))

    def protocol_gap(r, attack_mask, pgd_mask, norm):
        r["harness_robust_accuracy"] = float(pgd_mask.mean())
        r["protocol_gap"] = r["robust_accuracy"] - float(pgd_mask.mean())
        # pixels pushed outside [0, 1] are the seed's larger threat model, not a weakness of the
        # harness: the check judges the seed's final iterates clipped to the image domain
        r["_checks"].append(S.check_protocol_gap(masks["in-domain", r["attack"], r["eps"]], pgd_mask, r["eps"]))

    def blackbox_vs_whitebox(r, attack_mask, pgd_mask, norm):
        c = S.check_blackbox_vs_whitebox(attack_mask, pgd_mask, r["eps"])
        r["_checks"].append(c)
        for w in by_attack.get(f"pgd-{norm}", []):
            if w["eps"] == r["eps"]:
                w["_checks"].append(c)

    _against_pgd(by_attack, masks, "advep", "advep_ge_harness", protocol_gap)
    _against_pgd(by_attack, masks, "square", "blackbox_vs_whitebox", blackbox_vs_whitebox)


def _against_pgd(by_attack, masks, family, check_name, compare):
    """For every row of the attacks of ``family``, ``compare(row, its mask, the PGD mask, norm)``
    against the harness's PGD of the same norm and ε in this run, or a not-applicable
    ``check_name`` where the run has no such PGD. Masks are ``(N,)`` bool, robust per image."""
    for attack, rs in by_attack.items():
        fam, norm = split_attack(attack)
        if fam != family:
            continue
        for r in rs:
            key = (f"pgd-{norm}", r["eps"])
            if key in masks:
                compare(r, masks[attack, r["eps"]], masks[key], norm)
            else:
                r["_checks"].append(S.Check(check_name, S.NA, f"no pgd-{norm} at ε={r['eps']:g} in this run"))


def _corruption_rows(sw, correct, clean_acc, clean_check) -> list:
    """Accuracy under every applicable corruption × severity, plus a mean row per severity."""
    from .corruptions import CORRUPTIONS, applicable, corrupt

    cfg, a = sw.cfg, sw.a
    names = list(cfg.corruptions) if cfg.corruptions else list(CORRUPTIONS)
    usable = [c for c in names if applicable(c, a.image_shape)]
    skipped = [c for c in names if c not in usable]
    if cfg.corruptions and skipped:  # asked for by name: say why it cannot run
        corrupt(sw.x[:1], skipped[0], 1, 0, frost_dir=cfg.frost_dir)
        raise EpsimError(f"corruption {skipped[0]} is not applicable to {a.image_shape} images")
    if skipped:
        sw.log(f"corruptions not applicable to {a.image_shape} images: {', '.join(skipped)}")
    missing = []
    if "frost" in usable and not cfg.corruptions:
        try:  # frost needs texture files; when not asked for by name, skip it (and say so) if absent
            corrupt(sw.x[:1], "frost", 1, 0, frost_dir=cfg.frost_dir)
        except EpsimError as exc:
            usable.remove("frost")
            missing.append("frost")
            sw.log(f"skipping frost: {exc}")
    sevs = [int(s) for s in cfg.severities]
    bar = _bar(len(usable) * len(sevs), "corruptions", sw.progress)
    rows, per_sev = [], {s: [] for s in sevs}
    for name in usable:
        for s in sevs:
            t0 = time.perf_counter()
            xc = corrupt(sw.x, name, s, _rng(cfg.seed, "corruption", name, s), frost_dir=cfg.frost_dir)
            pred = a.predict(xc)
            conv = np.asarray(pred.converged, bool)
            counted = np.ones_like(conv) if getattr(pred, "use_unconverged", False) else conv
            ok = (np.argmax(pred.scores, axis=1) == sw.y) & counted
            acc = float(ok.mean()) if sw.n else 0.0
            per_sev[s].append(acc)
            res = float(np.max(pred.residual)) if pred.residual is not None and sw.n else None
            rows.append({"attack": "corruptions", "family": "corruptions", "norm": None, "eps": None,
                         "corruption": name, "severity": s, "n": sw.n, "clean_accuracy": clean_acc,
                         "robust_accuracy": acc, "n_robust": int(ok.sum()), "worst_path": None,
                         "sanity_only": False, "robust_mask": _mask_str(ok),
                         "wall_s": time.perf_counter() - t0,
                         "_checks": [clean_check, _conv_check(a, sw.n, int((~conv).sum()), res)]})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    means = [float(np.mean(per_sev[s])) if per_sev[s] else float("nan") for s in sevs]
    trend = S.check_severity_trend(sevs, means, sw.n * max(len(usable), 1))
    for s, m, c in zip(sevs, means, trend):
        rows.append({"attack": "corruptions", "family": "corruptions", "norm": None, "eps": None,
                     "corruption": "mean", "severity": s, "n": sw.n, "clean_accuracy": clean_acc,
                     "robust_accuracy": m, "n_corruptions": len(usable), "worst_path": None,
                     "sanity_only": False, "not_applicable": skipped, "missing_files": missing, "wall_s": 0.0,
                     "_checks": [clean_check, c]})
    return rows


# ---- output ----------------------------------------------------------------------------
CSV_COLUMNS = ("attack", "norm", "eps", "corruption", "severity", "n", "clean_accuracy", "robust_accuracy",
               "certified_accuracy", "min_certified_margin_V", "unroll", "in_domain_robust_accuracy",
               "harness_robust_accuracy", "protocol_gap",
               "n_robust", "worst_path", "by_path", "fgsm_robust_accuracy", "paths", "losses", "steps",
               "restarts", "queries", "queries_used_mean", "sanity_only", "sanity_ok", "failed_checks",
               "unconverged", "max_residual", "max_perturbation", "wall_s")


def csv_rows(results) -> list:
    """Flat rows (dicts over :data:`CSV_COLUMNS` plus one ``check_<name>`` status column per check)."""
    names = sorted({k for r in results["rows"] for k in r.get("sanity", {})})
    out = []
    for r in results["rows"]:
        d = {}
        for col in CSV_COLUMNS:
            v = r.get(col)
            if col in ("unconverged", "max_residual"):
                v = r.get("stats", {}).get("unconverged" if col == "unconverged" else "max_residual")
            if isinstance(v, dict):
                v = ";".join(f"{k}={val:.4f}" for k, val in v.items())
            elif isinstance(v, list):
                v = ";".join(map(str, v))
            d[col] = "" if v is None else v
        for name in names:
            d[f"check_{name}"] = r.get("sanity", {}).get(name, {}).get("status", "")
        out.append(d)
    return out


def format_table(results) -> str:
    """Plain-text tables (attacks, then corruptions); failed checks printed next to the number."""
    lines = []
    attack_rows = [r for r in results["rows"] if r["family"] != "corruptions"]
    corr_rows = [r for r in results["rows"] if r["family"] == "corruptions"]

    def sanity(r):
        s = "ok" if r["sanity_ok"] else "FAIL: " + ", ".join(r["failed_checks"])
        return s + (" (sanity-only eps)" if r.get("sanity_only") else "")

    if attack_rows:
        head = f"{'attack':<12} {'eps':>8} {'n':>5} {'clean':>6} {'robust':>7} {'worst path':<10} " \
               f"{'by path':<32} sanity"
        lines += [head, "-" * len(head)]
        for r in attack_rows:
            by = " ".join(f"{k}={v:.3f}" for k, v in (r.get("by_path") or {}).items())
            if r["family"] == "square":
                by = f"queries {r['queries']} (mean used {r['queries_used_mean']:.0f})"
            lines.append(f"{r['attack']:<12} {r['eps']:>8.4g} {r['n']:>5} {r['clean_accuracy']:>6.3f} "
                         f"{r['robust_accuracy']:>7.3f} {str(r.get('worst_path') or ''):<10} {by:<32} {sanity(r)}")
    if corr_rows:
        if lines:
            lines.append("")
        head = f"{'corruption':<18} {'severity':>8} {'n':>5} {'clean':>6} {'accuracy':>8} sanity"
        lines += [head, "-" * len(head)]
        for r in corr_rows:
            lines.append(f"{r['corruption']:<18} {r['severity']:>8} {r['n']:>5} {r['clean_accuracy']:>6.3f} "
                         f"{r['robust_accuracy']:>8.3f} {sanity(r)}")
    for k, c in results["checks"].items():
        lines.append(f"[{c['status']}] {k}: {c['detail']}")
    return "\n".join(lines)
