"""A scale's steps: one :class:`Step` per command line, with its outputs and dependencies.

:func:`build_plan` turns ``PLANS[scale]`` (:mod:`.scales`) into training steps (one per model
and seed), robustness steps (PGD sweeps with the circuits' certificates, Square, corruptions),
adversarial examples, energy/latency transients of the circuit models, the fidelity checks and
the device sweep. Output paths are relative to the results folder ``OUT``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from . import ANALYSIS, REPO
from .scales import PLANS


def parse_eps(text: str) -> list:
    """``"0.1,8/255,log:0.05:3:8"`` -> [(item as written, value)] (``log:A:B:N`` expanded, written
    with full precision), as ``python -m epsim.robustness --eps`` reads it."""
    out = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        if item.startswith("log:"):
            _, lo, hi, k = item.split(":")
            lo, hi, k = float(lo), float(hi), int(k)
            vals = [lo * (hi / lo) ** (i / (k - 1)) for i in range(k)] if k > 1 else [lo]
            out.extend((repr(v), v) for v in vals)
        elif "/" in item:
            num, den = item.split("/")
            out.append((item, float(num) / float(den)))
        else:
            out.append((item, float(item)))
    return out


CERTIFY_MAX_EPS = {"l2": 1.0, "linf": math.inf}  # certify-l2 works through the L∞ box of radius ε: ε <= 1


def certify_eps(norm: str, eps_text: str) -> tuple:
    """(the ε of a sweep a ``certify-<norm>`` run accepts, as an --eps value; whether that is every ε)."""
    items = parse_eps(eps_text)
    ok = [t for t, v in items if v <= CERTIFY_MAX_EPS[norm] * (1 + 1e-12)]
    return ",".join(ok), len(ok) == len(items)


@dataclass
class Step:
    """One command line of the plan, what it writes and what it needs."""

    name: str
    kind: str                       # train | robustness | adversarial | export | spice | gradients | gdu | bench
    argv: list                      # argv after sys.executable
    outputs: list                   # files (relative to OUT) whose existence means "done"
    deps: list = field(default_factory=list)
    stdout_to: str | None = None    # stdout of the command is this output file
    resume_if: str | None = None    # if this file exists (and outputs do not), add --resume
    meta: dict = field(default_factory=dict)
    requires: str | None = None     # an executable the step needs (skipped, and said so, without it)


def model_dir(model, seed):
    """Where a model's training run writes (relative to OUT)."""
    return f"models/{model}-s{seed}"


def energy_dir(model, seed):
    """Where a model's energy/latency run writes (relative to OUT)."""
    return f"energy/{model}-s{seed}"


def certifiable(spec: dict) -> bool:
    """Whether a plan's model gets certificates: circuits, unless the spec says ``certify: False``
    (differential layers are inverting amplifiers: the circuit is not monotone)."""
    return spec["family"] == "circuit" and spec.get("certify", True)


def robust_groups(a: dict, model: str, certify: bool, frost_dir: str | None = None) -> list:
    """The robustness runs of one model: ``(group, argv)`` pairs.

    ``a`` is a plan's ``attack`` dict: its ``n`` test images for every run, its ``n_by_model`` for
    one model's white-box runs (the PGD sweeps with their certificates and the seed's protocol), its
    ``square`` runs' own ``n`` and ``n_by_model``; ``certify``: the model is a monotone circuit, which
    gets the certificates."""
    pgd = ["--steps", a["steps"], "--restarts", a["restarts"], "--loss", a["loss"]]
    n_white = a.get("n_by_model", {}).get(model, a["n"])
    sq = a.get("square")
    groups = []
    for norm in ("l2", "linf"):
        # Square runs beside PGD at the same ε (the black-box-vs-white-box check needs both in one
        # run): in the PGD sweep itself, or, where Square is too costly for every ε and image
        # (queries x images x relaxation steps), in a run of its own on fewer images and ε.
        attacks = f"pgd-{norm}" if sq else f"pgd-{norm},square-{norm}"
        tail = [*pgd, *([] if sq else ["--queries", a["queries"]]), "--test-subset", n_white]
        # Monotone circuits also get the certificate (certify-*: a lower bound, two solves per
        # image and ε) in the same run, so the harness checks certified <= robust image by image.
        # certify-l2 needs ε <= 1 (it certifies through the L∞ box of radius ε): where the L2 sweep
        # goes beyond 1 the certificate runs on its own at the sweep's ε <= 1, on the same images,
        # and collect() makes the certified <= robust check across the two runs.
        cert_eps, whole = certify_eps(norm, a[norm])
        with_cert = certify and whole
        groups.append((norm, ["--attack", f"{attacks},certify-{norm}" if with_cert else attacks, "--eps", a[norm],
                              *tail]))
        if certify and not whole and cert_eps:
            groups.append((f"certify-{norm}", ["--attack", f"certify-{norm}", "--eps", cert_eps, "--test-subset",
                                               n_white]))
    if sq:
        for norm in ("l2", "linf"):
            groups.append((f"square-{norm}", ["--attack", f"square-{norm},pgd-{norm}", "--eps", sq[norm], *pgd,
                                              "--queries", a["queries"], "--test-subset",
                                              sq.get("n_by_model", {}).get(model, sq["n"]), "--no-large-eps-check"]))
    # The seed paper's protocol (PGD-20 with its step rule, no restarts, BPTT through a truncated
    # zero-start unroll for EP models) beside the harness's PGD on the same images and ε, so the
    # difference between the two protocols is a reported number.
    seed_protocol = a.get("advep")
    for norm in ("l2", "linf") if seed_protocol else ():
        groups.append((f"advep-{norm}", ["--attack", f"advep-{norm},pgd-{norm}", "--eps", seed_protocol[norm], *pgd,
                                         "--unroll", seed_protocol["unroll"], "--test-subset", n_white,
                                         "--no-large-eps-check"]))
    groups.append(("corruptions", ["--attack", "corruptions", "--severities", a["severities"], "--test-subset", a["n"]]
                   + (["--corruptions", a["corruptions"]] if a.get("corruptions") else [])
                   + (["--frost-dir", frost_dir] if frost_dir else [])))
    return groups


def build_plan(scale: str, seeds, data_dir: str | None, out: Path, frost_dir: str | None = None) -> list:
    """Every step of ``scale`` for the training ``seeds``, writing under ``out``, in the order they run
    (training, adversarial examples, energy, fidelity, device sweep, then the robustness runs, every
    model's first seed first)."""
    plan = PLANS[scale]
    dataset = plan["dataset"]
    data_opt = ["--data-dir", data_dir] if data_dir else []
    steps = []

    def o(rel):  # absolute path of an output, for the command line
        return str(out / rel)

    trained = {}  # model -> [(seed, checkpoint rel)]
    for model, spec in plan["models"].items():
        model_seeds = list(seeds) if spec["seeds"] == "all" else list(seeds[:1])
        for seed in model_seeds:
            d = model_dir(model, seed)
            argv = ["-m", "epsim.train", *spec["train"], "--dataset", dataset, *data_opt,
                    "--seed", str(seed), "--out", o(d), "--no-progress"]
            steps.append(Step(f"train/{model}-s{seed}", "train", argv, [f"{d}/metrics.json", f"{d}/checkpoint.pt"],
                              resume_if=f"{d}/checkpoint.pt",
                              meta={"model": model, "family": spec["family"], "seed": seed}))
            trained.setdefault(model, []).append((seed, f"{d}/checkpoint.pt"))

    a = plan["attack"]
    common = ["--seed", "0", "--no-progress"] + data_opt
    if a.get("device"):
        common += ["--device", a["device"]]
    # evaluation order: every model's first seed first (so a run cut short still has every curve);
    # they run after the (short) adversarial-example and fidelity steps
    robust_steps = []
    order = sorted(((model, i, seed, ckpt) for model, lst in trained.items() for i, (seed, ckpt) in enumerate(lst)),
                   key=lambda t: t[1])
    for model, _, seed, ckpt in order:
        fam = plan["models"][model]["family"]
        for group, args in robust_groups(a, model, certifiable(plan["models"][model]), frost_dir):
            d = f"robustness/{model}-s{seed}/{group}"
            argv = ["-m", "epsim.robustness", "--checkpoint", o(ckpt), *args, *common, "--out", o(d)]
            robust_steps.append(Step(f"robust/{model}-s{seed}/{group}", "robustness", argv,
                              [f"{d}/robustness.json", f"{d}/robustness.csv"], deps=[f"train/{model}-s{seed}"],
                              resume_if=f"{d}/sweep-progress.json",
                              meta={"model": model, "family": fam, "seed": seed, "group": group}))

    adv = plan["adversarial"]
    for model, lst in trained.items():
        seed, ckpt = lst[0]
        rel = f"adversarial/{model}-s{seed}.npz"
        argv = [str(ANALYSIS / "steps.py"), "adversarial", "--checkpoint", o(ckpt), "--norm", adv["norm"],
                "--eps", adv["eps"], "--n", adv["n"], "--steps", adv["steps"], "--seed", "0",
                *data_opt, "--out", o(rel)]
        steps.append(Step(f"adversarial/{model}-s{seed}", "adversarial", argv, [rel],
                          deps=[f"train/{model}-s{seed}"],
                          meta={"model": model, "family": plan["models"][model]["family"], "seed": seed}))

    en = plan.get("energy")
    for model, lst in trained.items() if en else ():
        if plan["models"][model]["family"] != "circuit":
            continue
        seed, ckpt = lst[0]
        d = energy_dir(model, seed)
        attack = {**en, **en.get("attack_by_model", {}).get(model, {})}
        argv = ["-m", "epsim.energy", "--checkpoint", o(ckpt), "--test-subset", en["n"], "--attack-eps", en["attack_eps"],
                "--attack-norm", "l2", "--attack-subset", attack["attack_n"], "--attack-steps", attack["attack_steps"],
                "--traces", en["traces"], *data_opt, "--no-progress", "--out", o(d)]
        steps.append(Step(f"energy/{model}-s{seed}", "energy", argv,
                          [f"{d}/energy.json", f"{d}/energy.csv", f"{d}/traces.npz"], deps=[f"train/{model}-s{seed}"],
                          resume_if=f"{d}/energy-progress.npz",
                          meta={"model": model, "family": "circuit", "seed": seed}))

    fid = plan["fidelity"]
    fm = fid["model"]
    if fm in trained:
        seed, ckpt = trained[fm][0]
        n = int(fid["samples"])
        ops = [f"fidelity/spice/sample{k}_{p}.op.json" for k in range(n) for p in ("free", "plus", "minus")]
        steps.append(Step("fidelity/export", "export",
                          ["-m", "epsim.export", "--checkpoint", o(ckpt), "--out", o("fidelity/spice"),
                           "--test-subset", fid["samples"], "--phase", "all", "--diode", "shockley", *data_opt],
                          ops, deps=[f"train/{fm}-s{seed}"], meta={"model": fm, "seed": seed}))
        steps.append(Step("fidelity/spice-vs-numba", "spice",
                          [str(ANALYSIS / "steps.py"), "spice-compare", "--checkpoint", o(ckpt),
                           "--netlists", o("fidelity/spice"), *data_opt,
                           *(["--timeout", fid["spice_timeout_s"]] if fid.get("spice_timeout_s") else []),
                           "--out", o("fidelity/spice_vs_numba.json")],
                          ["fidelity/spice_vs_numba.json"], deps=["fidelity/export"], meta={"model": fm, "seed": seed},
                          requires="ngspice"))
        steps.append(Step("fidelity/input-gradients", "gradients",
                          [str(ANALYSIS / "steps.py"), "input-gradients", "--checkpoint", o(ckpt), "--n", fid["grad_n"],
                           "--betas", fid["grad_betas"], "--seed", "0", *data_opt,
                           "--out", o("fidelity/input_gradients.json")],
                          ["fidelity/input_gradients.json"], deps=[f"train/{fm}-s{seed}"],
                          meta={"model": fm, "seed": seed}))
    steps.append(Step("fidelity/gdu", "gdu", ["-m", "epsim.gradcheck", *fid["gdu"], *data_opt],
                      ["fidelity/gdu.txt"], stdout_to="fidelity/gdu.txt", meta={"model": "ep-cnn"}))
    if fid.get("bench_spice"):
        steps.append(Step("fidelity/bench-spice", "bench",
                          [str(REPO / "benchmarks" / "bench_spice.py"), *fid["bench_spice"]],
                          ["fidelity/bench_spice.txt"], stdout_to="fidelity/bench_spice.txt", requires="ngspice"))
    dev = plan.get("device")
    if dev:
        steps.append(Step("device/sweep", "device",
                          ["-m", "epsim.device_sweep", *dev, "--seed", str(seeds[0]), *data_opt, "--no-progress",
                           "--runs-dir", o("device/runs"), "--out", o("device/device_sweep.json")],
                          ["device/device_sweep.json"],
                          meta={"model": "circuit-" + dev[dev.index("--model") + 1], "seed": seeds[0]}))
    return steps + robust_steps
