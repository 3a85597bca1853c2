"""Train and evaluate every model of the analysis notebooks, resumably, into one folder.

    python analysis/run_all.py --scale smoke --out /tmp/epsim-smoke          # a few minutes (CI)
    python analysis/run_all.py --scale cpu --out runs/analysis-cpu           # about an hour, 2 cores
    python analysis/run_all.py --scale gpu --out runs/analysis-gpu --data-dir DATA   # paper scale, CUDA
    python analysis/run_all.py --scale cpu --out runs/analysis-cpu --dry-run # print the plan only
    python analysis/run_all.py --scale cpu --out runs/analysis-cpu --publish analysis/results/cpu

Every step is one command line of the project's CLIs (``python -m epsim.train``,
``python -m epsim.robustness``, ``python -m epsim.export``, ``python -m epsim.gradcheck``,
``python -m epsim.energy``, ``benchmarks/bench_spice.py``) or of ``analysis/steps.py``
(adversarial examples, ngspice vs numba comparison, input-gradient agreement: thin wrappers
over the library's public functions), run as a subprocess with ``sys.executable``. A step
whose output files exist is skipped (a robustness step only if its results hold every attack
of its command), so an interrupted run continues where it stopped (an interrupted training
run continues with ``--resume``). Circuit models' PGD runs also compute the monotonicity
certificate (``certify-l2`` / ``certify-linf``) at the same ε; software models get none. The
first seed of every circuit model also gets an ``energy/<model>-s<seed>`` step (transient
settling time, energy and power, early readout, PGD-L2 against the early readout at the L2
headline ε). ``OUT/manifest.json`` records, for every step, the command, its output files,
its wall time, exit status and log file, and the scale.

At the end (and with ``--collect-only``) the results are gathered into the compact,
notebook-ready folder ``OUT/summary/`` (CSV/JSON/NPZ, a few hundred kB): the notebooks in
``analysis/`` read only that folder. ``--publish DIR`` copies it to ``DIR`` (e.g.
``analysis/results/cpu``, which is committed) and rewrites the headline block of
``analysis/README.md`` from it.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCALES = ("smoke", "cpu", "gpu")
MANIFEST = "manifest.json"
SUMMARY = "summary"


class UserError(Exception):
    """A mistake on the command line: printed as one line, exit status 2."""


# --------------------------------------------------------------------------- the plans
# Models: label -> how to train it. ``family`` is "circuit" (resistive EP network solved by
# the numba nodal-analysis solver) or "software" (torch). ``seeds``: "all" trains one
# model per --seeds value (curves get confidence intervals over seeds), "first" only the
# first seed.
def _circuit(model, *extra, seeds="all"):
    return {"family": "circuit", "train": ["--model", model, "--backend", "numba", *extra], "seeds": seeds}


def _software(model, *extra, seeds="first"):
    return {"family": "software", "train": ["--model", model, "--backend", "torch", *extra], "seeds": seeds}


# Small torch models for 8x8 digits: two conv layers (8 -> 4 -> 2 after pooling), no random
# crops (4-pixel crops would cut half of an 8x8 digit away), CPU.
_DIGITS_CONV = ("--channels", "32", "64", "--paddings", "1", "1", "--no-augment", "--device", "cpu")

# Energy and latency (``python -m epsim.energy``) of every circuit model's first seed: transients of
# the free phase (and the nudged phases of a training step) on the scale's test images, the early
# readout, and PGD-L2 against the early readout at the L2 headline ε (analysis/common.py HEADLINE,
# in every scale's L2 sweep), on the first ``attack_n`` of those images.
ENERGY_ATTACK_EPS = "0.5"

PLANS = {
    "smoke": {
        "what": "digits; circuit CNN (numba, 3 epochs) and a tiny BP-CNN; 20 images, 5 PGD steps, "
                "50 Square queries, 2 corruptions; SPICE fidelity on 2 samples; energy/latency transients on 20 images",
        "dataset": "digits",
        "seeds": (0,),
        "models": {
            "circuit-cnn": _circuit("cnn", "--epochs", "3"),
            "bp-cnn": _software("bp-cnn", "--channels", "8", "16", "--paddings", "1", "1", "--no-augment",
                                "--device", "cpu", "--epochs", "3", "--batch-size", "64"),
        },
        "attack": {"n": "20", "steps": "5", "restarts": "1", "loss": "ce", "queries": "50",
                   "l2": "0.5,2", "linf": "0.1,0.3",
                   "corruptions": "gaussian_noise,contrast", "severities": "1,2,3,4,5"},
        "adversarial": {"norm": "l2", "eps": "2.0", "n": "4", "steps": "10"},
        "fidelity": {"model": "circuit-cnn", "samples": "2", "grad_n": "8", "grad_betas": "0.1,0.01",
                     "gdu": ["--batch-size", "4", "--max-iter", "1000"], "bench_spice": None},
        "device": ["--model", "cnn", "--epochs", "1", "--devices", "ideal", "rram", "--wire-resistances", "0", "100",
                   "--train-subset", "200", "--test-subset", "60", "--read-repeats", "2"],
        "energy": {"n": "20", "attack_eps": ENERGY_ATTACK_EPS, "attack_n": "10", "attack_steps": "3", "traces": "4"},
    },
    "cpu": {
        "what": "digits (8x8, 1437 train / 360 test); circuit CNN x3 seeds and circuit MLP (numba); "
                "software EP-CNN (x1 seed), BP-CNN (x3 seeds), AdvCNN (PGD-L2 0.5), ViT sized for 8x8 (torch, CPU); "
                "100 test images, APGD 20 steps CE+DLR along every gradient path, 5 eps per norm; "
                "Square 1000 queries on 50 images at 3 eps per norm; 18 corruptions x 5 severities; "
                "SPICE fidelity on 5 samples x 3 phases; energy/latency transients of the circuit models on the 360 "
                "test images",
        "dataset": "digits",
        "seeds": (0, 1, 2),
        "models": {
            "circuit-cnn": _circuit("cnn"),
            "circuit-mlp": _circuit("mlp", seeds="first"),
            "bp-cnn": _software("bp-cnn", *_DIGITS_CONV, "--epochs", "20", "--batch-size", "64", seeds="all"),
            "adv-cnn": _software("adv-cnn", *_DIGITS_CONV, "--epochs", "20", "--batch-size", "64",
                                 "--adv-norm", "l2", "--adv-eps", "0.5", "--adv-steps", "7"),
            "vit": _software("vit", "--embed-dim", "64", "--depth", "4", "--heads", "4", "--no-augment",
                             "--device", "cpu", "--epochs", "40", "--batch-size", "64"),
            # --ep-tol 1e-5: a tighter per-sample stop than the small preset's 1e-4 (digits relax quickly)
            "ep-cnn": _software("ep-cnn", *_DIGITS_CONV, "--epochs", "8", "--batch-size", "16", "--ep-tol", "1e-5"),
        },
        "attack": {"n": "100", "steps": "20", "restarts": "1", "loss": "ce,dlr", "queries": "1000",
                   "l2": "0.1,0.25,0.5,1,2", "linf": "0.02,8/255,0.05,0.1,0.2",
                   "square": {"n": "50", "l2": "0.25,0.5,1", "linf": "0.05,0.1,0.2"},
                   "corruptions": None, "severities": "1,2,3,4,5"},
        "adversarial": {"norm": "l2", "eps": "2.0", "n": "6", "steps": "50"},
        "fidelity": {"model": "circuit-cnn", "samples": "5", "grad_n": "50", "grad_betas": "0.5,0.1,0.01,0.001",
                     "gdu": ["--batch-size", "16"], "bench_spice": ["--repeat", "3"]},
        "device": ["--model", "cnn", "--epochs", "10", "--robustness", "--attack-subset", "100"],
        # the whole digits test set; the early readout attacked on the robustness runs' image count
        "energy": {"n": "360", "attack_eps": ENERGY_ATTACK_EPS, "attack_n": "100", "attack_steps": "20", "traces": "4"},
    },
    "gpu": {
        "what": "CIFAR-10 at the seed paper's scale: circuit CNN and MLP (torch backend on CUDA), EP-CNN / BP-CNN "
                "/ AdvCNN / ViT with the cifar10-paper presets; 1000 test images, APGD 50 steps x 2 "
                "restarts, Square 1000 queries on 1000 images, CIFAR-10-C 19 x 5; energy/latency transients of the circuit "
                "models on 1000 images",
        "dataset": "cifar10",
        "seeds": (0, 1, 2),
        "models": {
            # the learning rates of the 2-core CIFAR-10 run (45.1 % after 3 epochs, analysis/cifar_cpu.sh,
            # whose nudged phases stopped on 1e-12 A); here they stop on the relative nudge rule
            "circuit-cnn": {"family": "circuit", "seeds": "all",
                            "train": ["--model", "cnn", "--backend", "torch", "--epochs", "30", "--lr", "0.05",
                                      "--lr-layers", "3", "1"]},
            "circuit-mlp": {"family": "circuit", "seeds": "all",
                            "train": ["--model", "mlp", "--backend", "torch", "--epochs", "30", "--lr", "0.05"]},
            "ep-cnn": _software("ep-cnn", "--preset", "cifar10-paper", "--device", "cuda", seeds="all"),
            "bp-cnn": _software("bp-cnn", "--preset", "cifar10-paper", "--device", "cuda", seeds="all"),
            "adv-cnn": _software("adv-cnn", "--preset", "cifar10-paper", "--device", "cuda"),
            "vit": _software("vit", "--preset", "cifar10-paper", "--device", "cuda"),
        },
        "attack": {"n": "1000", "steps": "50", "restarts": "2", "loss": "ce,dlr", "queries": "1000",
                   "l2": "log:0.05:3:8,0.5", "linf": "1/255,2/255,4/255,8/255,0.0215,16/255,0.1",
                   "square": {"n": "1000", "l2": "0.25,0.5,1", "linf": "4/255,0.0215,8/255"},
                   "corruptions": None, "severities": "1,2,3,4,5", "device": "cuda"},
        "adversarial": {"norm": "l2", "eps": "3.0", "n": "8", "steps": "100"},
        "fidelity": {"model": "circuit-cnn", "samples": "5", "grad_n": "100", "grad_betas": "0.5,0.1,0.01,0.001",
                     "gdu": ["--dataset", "cifar10", "--batch-size", "16"], "bench_spice": ["--repeat", "3"]},
        "device": ["--model", "cnn", "--dataset", "mnist", "--epochs", "10", "--robustness", "--attack-subset", "1000"],
        # the scale's image count (the first 1000 CIFAR-10 test images); the attack as at the cpu scale
        "energy": {"n": "1000", "attack_eps": ENERGY_ATTACK_EPS, "attack_n": "100", "attack_steps": "20", "traces": "4"},
    },
}


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
    return f"models/{model}-s{seed}"


def energy_dir(model, seed):
    return f"energy/{model}-s{seed}"


def build_plan(scale: str, seeds, data_dir: str | None, out: Path, frost_dir: str | None = None) -> list:
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
    pgd = ["--steps", a["steps"], "--restarts", a["restarts"], "--loss", a["loss"]]
    sq = a.get("square")
    groups = []  # (group, argv, families it runs for: None = every model)
    for norm in ("l2", "linf"):
        # Square runs beside PGD at the same ε (the black-box-vs-white-box check needs both in one
        # run): in the PGD sweep itself, or, where Square is too costly for every ε and image
        # (queries x images x relaxation steps), in a run of its own on fewer images and ε.
        attacks = f"pgd-{norm}" if sq else f"pgd-{norm},square-{norm}"
        tail = [*pgd, *([] if sq else ["--queries", a["queries"]]), "--test-subset", a["n"]]
        # Circuits also get the monotonicity certificate (certify-*: a lower bound, two solves per
        # image and ε) in the same run, so the harness checks certified <= robust image by image.
        # certify-l2 needs ε <= 1 (it certifies through the L∞ box of radius ε): where the L2 sweep
        # goes beyond 1 the certificate runs on its own at the sweep's ε <= 1, on the same images,
        # and collect() makes the certified <= robust check across the two runs.
        cert_eps, whole = certify_eps(norm, a[norm])
        groups.append((norm, ["--attack", attacks, "--eps", a[norm], *tail], ("software",) if whole else None))
        if whole:
            groups.append((norm, ["--attack", f"{attacks},certify-{norm}", "--eps", a[norm], *tail], ("circuit",)))
        elif cert_eps:
            groups.append((f"certify-{norm}", ["--attack", f"certify-{norm}", "--eps", cert_eps, "--test-subset", a["n"]],
                           ("circuit",)))
    if sq:
        for norm in ("l2", "linf"):
            groups.append((f"square-{norm}", ["--attack", f"square-{norm},pgd-{norm}", "--eps", sq[norm], *pgd,
                                              "--queries", a["queries"], "--test-subset", sq["n"], "--no-large-eps-check"], None))
    groups.append(("corruptions", ["--attack", "corruptions", "--severities", a["severities"], "--test-subset", a["n"]]
                   + (["--corruptions", a["corruptions"]] if a.get("corruptions") else [])
                   + (["--frost-dir", frost_dir] if frost_dir else []), None))
    # evaluation order: every model's first seed first (so a run cut short still has every curve);
    # they run after the (short) adversarial-example and fidelity steps
    robust_steps = []
    order = sorted(((model, i, seed, ckpt) for model, lst in trained.items() for i, (seed, ckpt) in enumerate(lst)),
                   key=lambda t: t[1])
    for model, _, seed, ckpt in order:
        fam = plan["models"][model]["family"]
        for group, args, families in groups:
            if families is not None and fam not in families:
                continue
            d = f"robustness/{model}-s{seed}/{group}"
            argv = ["-m", "epsim.robustness", "--checkpoint", o(ckpt), *args, *common, "--out", o(d)]
            robust_steps.append(Step(f"robust/{model}-s{seed}/{group}", "robustness", argv,
                              [f"{d}/robustness.json", f"{d}/robustness.csv"], deps=[f"train/{model}-s{seed}"],
                              meta={"model": model, "family": fam, "seed": seed, "group": group}))

    adv = plan["adversarial"]
    for model, lst in trained.items():
        seed, ckpt = lst[0]
        rel = f"adversarial/{model}-s{seed}.npz"
        argv = [str(HERE / "steps.py"), "adversarial", "--checkpoint", o(ckpt), "--norm", adv["norm"],
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
        argv = ["-m", "epsim.energy", "--checkpoint", o(ckpt), "--test-subset", en["n"], "--attack-eps", en["attack_eps"],
                "--attack-norm", "l2", "--attack-subset", en["attack_n"], "--attack-steps", en["attack_steps"],
                "--traces", en["traces"], *data_opt, "--no-progress", "--out", o(d)]
        steps.append(Step(f"energy/{model}-s{seed}", "energy", argv,
                          [f"{d}/energy.json", f"{d}/energy.csv", f"{d}/traces.npz"], deps=[f"train/{model}-s{seed}"],
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
                          [str(HERE / "steps.py"), "spice-compare", "--checkpoint", o(ckpt),
                           "--netlists", o("fidelity/spice"), *data_opt, "--out", o("fidelity/spice_vs_numba.json")],
                          ["fidelity/spice_vs_numba.json"], deps=["fidelity/export"], meta={"model": fm, "seed": seed},
                          requires="ngspice"))
        steps.append(Step("fidelity/input-gradients", "gradients",
                          [str(HERE / "steps.py"), "input-gradients", "--checkpoint", o(ckpt), "--n", fid["grad_n"],
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
                          ["device/device_sweep.json"], meta={"model": "circuit-cnn", "seed": seeds[0]}))
    return steps + robust_steps


# --------------------------------------------------------------------------- running
def _now():
    return _dt.datetime.now().isoformat(timespec="seconds")


def display_command(argv, out: Path) -> str:
    """The command as a user would type it: ``python ...`` with the results folder as ``$RESULTS``."""
    parts = ["python"]
    for a in argv:
        s = str(a)
        if s.startswith(str(out)):
            s = "$RESULTS" + s[len(str(out)):]
        elif s.startswith(str(REPO) + os.sep):
            s = s[len(str(REPO)) + 1:]
        parts.append(s)
    return " ".join(shlex.quote(p) if not p.startswith("$RESULTS") else p for p in parts)


def load_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path} is not valid JSON; move it away to start a fresh manifest") from None
    return {}


def save_manifest(out: Path, manifest: dict):
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / MANIFEST)


def git_state():
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        return head or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_step(step: Step, out: Path, env: dict, log=print) -> dict:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / (step.name.replace("/", "__") + ".log")
    argv = list(step.argv)
    resumed = False
    if step.resume_if and (out / step.resume_if).is_file():
        argv.append("--resume")
        resumed = True
    cmd = [sys.executable, *argv]
    rec = {"kind": step.kind, "argv": cmd, "command": display_command(argv, out), "outputs": step.outputs,
           "log": str(log_path.relative_to(out)), "started": _now(), "resumed": resumed, **step.meta}
    log(f"[{_now()}] {step.name}: {rec['command']}")
    t0 = time.perf_counter()
    with open(log_path, "w") as lf:
        lf.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        lf.flush()
        if step.stdout_to:
            target = out / step.stdout_to
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            with open(tmp, "w") as fh:
                proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=lf)
            if proc.returncode == 0:
                os.replace(tmp, target)
                lf.write(target.read_text())
            else:
                lf.write(tmp.read_text())
                tmp.unlink()
        else:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=lf, stderr=subprocess.STDOUT)
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    rec["finished"] = _now()
    rec["returncode"] = proc.returncode
    missing = [p for p in step.outputs if not (out / p).is_file()]
    if proc.returncode == 0 and not missing:
        rec["status"] = "done"
    else:
        rec["status"] = "failed"
        tail = log_path.read_text().strip().splitlines()[-3:]
        rec["error"] = (f"missing outputs {missing}; " if proc.returncode == 0 else "") + " | ".join(tail)
    log(f"    {rec['status']} in {rec['wall_s']:.1f} s" + (f": {rec.get('error', '')}" if rec["status"] != "done" else ""))
    return rec


def step_done(step: Step, out: Path) -> bool:
    """A step is done when its outputs exist; a robustness step also when its results hold every
    attack its command asks for (a plan that gained an attack, e.g. certify-* for circuits,
    reruns that step in an older results folder instead of skipping it); an energy step also
    when its results hold the early-readout attack its command asks for."""
    if not all((out / p).is_file() for p in step.outputs):
        return False
    if step.kind == "robustness" and "--attack" in step.argv:
        wanted = set(step.argv[step.argv.index("--attack") + 1].split(","))
        data = _read_json(out / step.outputs[0])
        have = set(((data or {}).get("config") or {}).get("attacks") or [])
        return wanted <= have
    if step.kind == "energy" and "--attack-eps" in step.argv:  # an energy run without the early-readout attack
        data = _read_json(out / step.outputs[0])
        return bool(((data or {}).get("summary") or {}).get("early_readout_attack"))
    return True


def execute(steps, out: Path, scale: str, *, only=None, force=False, driver_command=None, log=print) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(out)
    if manifest.get("scale") not in (None, scale):
        raise UserError(f"{out} holds a {manifest['scale']!r} run; use another --out for --scale {scale}")
    manifest.update({"scale": scale, "what": PLANS[scale]["what"], "out": str(out), "python": sys.executable,
                     "git_head": git_state(), "plan": [s.name for s in steps]})
    if driver_command and not only:
        manifest["driver_command"] = driver_command
    manifest.setdefault("created", _now())
    manifest.setdefault("steps", {})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    status = {}
    for step in steps:
        if only and not any(re.fullmatch(pat, step.name) or step.name.startswith(pat) for pat in only):
            continue
        prev = manifest["steps"].get(step.name)
        done = step_done(step, out)
        if done and not force:
            if prev is None or prev.get("status") != "done":
                prev = {"kind": step.kind, "command": display_command(step.argv, out), "outputs": step.outputs,
                        "status": "done", "note": "outputs were already there", **step.meta}
            manifest["steps"][step.name] = prev
            status[step.name] = "done"
            log(f"[{_now()}] {step.name}: done earlier, skipped")
            continue
        if step.requires and shutil.which(step.requires) is None:
            manifest["steps"][step.name] = {"kind": step.kind, "command": display_command(step.argv, out),
                                            "outputs": step.outputs, "status": "skipped",
                                            "error": f"{step.requires} is not installed", **step.meta}
            status[step.name] = "skipped"
            log(f"[{_now()}] {step.name}: skipped ({step.requires} is not installed)")
            save_manifest(out, manifest)
            continue
        blocked = [d for d in step.deps if status.get(d, manifest["steps"].get(d, {}).get("status")) != "done"]
        if blocked:
            manifest["steps"][step.name] = {"kind": step.kind, "command": display_command(step.argv, out),
                                            "outputs": step.outputs, "status": "blocked",
                                            "error": f"needs {', '.join(blocked)}", **step.meta}
            status[step.name] = "blocked"
            log(f"[{_now()}] {step.name}: blocked by {', '.join(blocked)}")
            save_manifest(out, manifest)
            continue
        rec = run_step(step, out, env, log)
        manifest["steps"][step.name] = rec
        status[step.name] = rec["status"]
        manifest["updated"] = _now()
        save_manifest(out, manifest)
    manifest["updated"] = _now()
    save_manifest(out, manifest)
    return manifest


# --------------------------------------------------------------------------- summary
def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_csv(path: Path, rows, columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


MODEL_COLUMNS = ("model", "family", "seed", "dataset", "test_accuracy", "n_test", "train_accuracy", "epochs",
                 "num_params", "test_unconverged", "train_wall_s", "step", "command")
CURVE_COLUMNS = ("model", "family", "seed", "group", "attack", "family_attack", "norm", "eps", "n", "clean_accuracy",
                 "robust_accuracy", "n_robust", "fgsm_robust_accuracy", "worst_path", "by_path", "paths", "losses",
                 "steps", "restarts", "queries", "queries_used_mean", "sanity_only", "sanity_ok", "failed_checks",
                 "checks", "max_perturbation", "certified_accuracy", "min_certified_margin_V", "wall_s", "step")
CORRUPTION_COLUMNS = ("model", "family", "seed", "group", "corruption", "severity", "n", "n_corruptions", "skipped",
                      "clean_accuracy", "accuracy", "sanity_ok", "failed_checks", "step")
RUN_COLUMNS = ("model", "family", "seed", "group", "n", "clean_accuracy", "recorded_test_accuracy", "sanity_ok",
               "failed_checks", "check_clean_settings", "check_paths_agree", "check_gradients_at_clean",
               "grad_paths", "wall_s", "step", "command")


def _checks_str(row):
    return ";".join(f"{k}={v.get('status')}" for k, v in sorted((row.get("sanity") or {}).items()))


def _same_eps(a, b) -> bool:
    return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))


def _add_check(row, name, status, detail=None):
    checks = dict(kv.split("=", 1) for kv in str(row.get("checks") or "").split(";") if "=" in kv)
    checks[name] = status
    row["checks"] = ";".join(f"{k}={v}" for k, v in sorted(checks.items()))
    if status == "FAIL":
        failed = [f for f in str(row.get("failed_checks") or "").split(";") if f]
        row["failed_checks"] = ";".join(sorted(set(failed) | {name}))
        row["sanity_ok"] = False


def certificate_cross_checks(curves) -> int:
    """``certified_le_robust``, image by image, for a certificate that ran apart from the attacks
    (``certify-l2`` at the ε <= 1 of an L2 sweep that goes beyond 1): every attack row of the same
    model, seed, norm, ε and images (same ``--test-subset``; every run uses ``--seed 0``) in another run gets
    the check, the certificate row ``certified_le_<attack>``, as the harness does within one run.
    Returns the number of pairs checked."""
    certs = [r for r in curves if r.get("family_attack") == "certify" and r.get("_mask")]
    k = 0
    for c in certs:
        key = (c["model"], c["seed"], c.get("norm"), c.get("n"))
        for r in curves:
            if (r.get("family_attack") in ("certify", None) or r.get("step") == c.get("step") or not r.get("_mask")
                    or (r["model"], r["seed"], r.get("norm"), r.get("n")) != key
                    or not _same_eps(r.get("eps"), c.get("eps")) or len(r["_mask"]) != len(c["_mask"])):
                continue
            broken = sum(a == "1" and b == "0" for a, b in zip(c["_mask"], r["_mask"]))
            status = "FAIL" if broken else "pass"
            _add_check(r, "certified_le_robust", status)
            _add_check(c, f"certified_le_{r['attack']}", status)
            k += 1
    return k


ENERGY_DIR = "energy"
ENERGY_COLUMNS = ("model", "family", "seed", "diode", "n", "unsettled", "accuracy_dc", "settle_time_median_s",
                  "settle_time_p95_s", "decision_time_median_s", "decision_time_p95_s", "energy_per_inference_median_J",
                  "energy_per_inference_p95_J", "static_power_median_W", "training_step_energy_median_J_per_image",
                  "macs_per_inference", "digital_fp32_J_estimate", "digital_int8_J_estimate", "attack_norm",
                  "attack_eps", "attack_n", "attack_steps", "robust_accuracy_settled", "wall_s", "step", "command")


def _option(command: str, flag: str):
    """The value of ``flag`` in a recorded command line (None when absent)."""
    try:
        parts = shlex.split(command or "")
    except ValueError:
        return None
    return parts[parts.index(flag) + 1] if flag in parts[:-1] else None


def collect_energy(out: Path, rec: dict, data: dict, dest: Path, base: dict) -> dict:
    """One ``energy/<model>-s<seed>`` step into the summary: its settings and summary (not the
    per-image arrays) to ``dest/<model>-s<seed>.json``, the free-phase traces of its first traced
    image (time points, output voltages, the probed nodes of every layer, and that image's own
    settling and decision times) to ``dest/<model>-s<seed>_traces.npz``. Returns its
    ``energy.csv`` row."""
    import numpy as np

    tag = f"{base['model']}-s{base['seed']}"
    dest.mkdir(parents=True, exist_ok=True)
    summary, settings = data.get("summary") or {}, data.get("settings") or {}
    per = data.get("per_image") or {}
    attack = summary.get("early_readout_attack") or []
    steps = _option(rec.get("command"), "--attack-steps")
    record = {**base, "command": rec.get("command"), "wall_s": data.get("wall_s"), "settings": settings,
              "summary": summary, "attack_steps": int(steps) if steps and attack else None, "traces": None}
    src = out / rec["outputs"][2] if len(rec.get("outputs", [])) > 2 else None
    if src is not None and src.is_file():
        with np.load(src, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if len(arrays.get("labels", [])):
            small = {"t_s": arrays["t_s"], "labels": arrays["labels"][:1], "v_out": arrays["v_out"][:, :1],
                     **{k: v[:, :1] for k, v in arrays.items() if k.startswith("layer")}}
            for key in ("settle_time_s", "decision_time_s"):
                if per.get(key):
                    small[key] = np.asarray(per[key][:1], float)
            np.savez_compressed(dest / f"{tag}_traces.npz", **small)
            record["traces"] = f"{tag}_traces.npz"
    (dest / f"{tag}.json").write_text(json.dumps(record, indent=1))

    def med(key, stat="median"):
        return (summary.get(key) or {}).get(stat)

    digital = summary.get("digital_energy_per_inference_J_estimate") or {}
    settled = next((r for r in attack if r.get("time_s") is None), {})
    return {**base, "diode": settings.get("diode"), "n": summary.get("n"), "unsettled": summary.get("unsettled"),
            "accuracy_dc": summary.get("accuracy_dc"), "settle_time_median_s": med("settle_time_s"),
            "settle_time_p95_s": med("settle_time_s", "p95"), "decision_time_median_s": med("decision_time_s"),
            "decision_time_p95_s": med("decision_time_s", "p95"),
            "energy_per_inference_median_J": med("energy_per_inference_J"),
            "energy_per_inference_p95_J": med("energy_per_inference_J", "p95"),
            "static_power_median_W": med("static_power_W"),
            "training_step_energy_median_J_per_image":
                ((summary.get("training_step") or {}).get("energy_J_per_image") or {}).get("median"),
            "macs_per_inference": summary.get("macs_per_inference"),
            "digital_fp32_J_estimate": digital.get("fp32_45nm"), "digital_int8_J_estimate": digital.get("int8_45nm"),
            "attack_norm": settled.get("norm"), "attack_eps": settled.get("eps"), "attack_n": settled.get("n"),
            "attack_steps": record["attack_steps"], "robust_accuracy_settled": settled.get("robust_accuracy"),
            "wall_s": data.get("wall_s"), "command": rec.get("command")}


def collect(out: Path, log=print) -> Path:
    """Gather the results of ``out`` into ``out/summary`` (compact CSV/JSON/NPZ for the notebooks)."""
    manifest = load_manifest(out)
    if not manifest:
        raise UserError(f"{out} has no {MANIFEST}: run the driver into it first")
    steps = manifest.get("steps", {})
    summ = out / SUMMARY
    if summ.exists():
        shutil.rmtree(summ)
    summ.mkdir(parents=True)
    models, curves, corr, runs, energy = [], [], [], [], []
    for name in manifest.get("plan", []):
        rec = steps.get(name) or {}
        if rec.get("status") != "done":
            continue
        kind = rec.get("kind")
        base = {"model": rec.get("model"), "family": rec.get("family"), "seed": rec.get("seed"), "step": name,
                "group": rec.get("group")}
        if kind == "train":
            m = _read_json(out / rec["outputs"][0])
            if m is None:
                continue
            models.append({**base, "dataset": m.get("dataset"), "test_accuracy": m.get("test_accuracy"),
                           "n_test": m.get("n_test"), "train_accuracy": m.get("train_accuracy"),
                           "epochs": m.get("epochs"), "num_params": m.get("num_params"),
                           "test_unconverged": m.get("test_unconverged"), "train_wall_s": m.get("wall_seconds"),
                           "command": rec.get("command")})
        elif kind == "robustness":
            r = _read_json(out / rec["outputs"][0])
            if r is None:
                continue
            checks = r.get("checks", {})
            runs.append({**base, "n": r.get("n"), "clean_accuracy": r.get("clean_accuracy"),
                         "recorded_test_accuracy": r.get("recorded_test_accuracy"), "sanity_ok": r.get("sanity_ok"),
                         "failed_checks": ";".join(r.get("failed_checks", [])),
                         **{f"check_{k}": f"{v.get('status')}: {v.get('detail')}" for k, v in checks.items()},
                         "grad_paths": ";".join(r.get("grad_paths", [])), "wall_s": r.get("wall_s"),
                         "command": rec.get("command")})
            n_corr = len({row.get("corruption") for row in r.get("rows", [])
                          if row.get("family") == "corruptions" and row.get("corruption") != "mean"})
            for row in r.get("rows", []):
                if row.get("family") == "corruptions":
                    corr.append({**base, "corruption": row.get("corruption"), "severity": row.get("severity"),
                                 "n": row.get("n"), "n_corruptions": n_corr if row.get("corruption") == "mean" else None,
                                 "skipped": ";".join(row.get("not_applicable", []) + row.get("missing_files", [])),
                                 "clean_accuracy": row.get("clean_accuracy"), "accuracy": row.get("robust_accuracy"),
                                 "sanity_ok": row.get("sanity_ok"), "failed_checks": ";".join(row.get("failed_checks", []))})
                else:
                    by = row.get("by_path") or {}
                    curves.append({**base, "attack": row.get("attack"), "family_attack": row.get("family"),
                                   "norm": row.get("norm"), "eps": row.get("eps"), "n": row.get("n"),
                                   "clean_accuracy": row.get("clean_accuracy"),
                                   "robust_accuracy": row.get("robust_accuracy"), "n_robust": row.get("n_robust"),
                                   "fgsm_robust_accuracy": row.get("fgsm_robust_accuracy"),
                                   "worst_path": row.get("worst_path"),
                                   "by_path": ";".join(f"{k}={v:.4f}" for k, v in by.items()),
                                   "paths": ";".join(row.get("paths") or []), "losses": ";".join(row.get("losses") or []),
                                   "steps": row.get("steps"), "restarts": row.get("restarts"),
                                   "queries": row.get("queries"), "queries_used_mean": row.get("queries_used_mean"),
                                   "sanity_only": row.get("sanity_only"), "sanity_ok": row.get("sanity_ok"),
                                   "failed_checks": ";".join(row.get("failed_checks", [])), "checks": _checks_str(row),
                                   "max_perturbation": row.get("max_perturbation"), "wall_s": row.get("wall_s"),
                                   "certified_accuracy": row.get("certified_accuracy"),
                                   "min_certified_margin_V": row.get("min_certified_margin_V"),
                                   "_mask": row.get("robust_mask")})
        elif kind == "energy":
            data = _read_json(out / rec["outputs"][0])
            if data is not None:
                energy.append(collect_energy(out, rec, data, summ / ENERGY_DIR, base))
        elif kind == "adversarial":
            src = out / rec["outputs"][0]
            dst = summ / "adversarial" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            meta = src.with_suffix(".json")
            if meta.is_file():
                shutil.copy2(meta, dst.with_suffix(".json"))
    n_cross = certificate_cross_checks(curves)
    _write_csv(summ / "models.csv", models, MODEL_COLUMNS)
    _write_csv(summ / "curves.csv", curves, CURVE_COLUMNS)
    _write_csv(summ / "corruptions.csv", corr, CORRUPTION_COLUMNS)
    extra = sorted({k for r in runs for k in r if k.startswith("check_") and k not in RUN_COLUMNS})
    _write_csv(summ / "runs.csv", runs, RUN_COLUMNS[:-4] + tuple(extra) + RUN_COLUMNS[-4:])
    if energy:
        _write_csv(summ / "energy.csv", energy, ENERGY_COLUMNS)
    fidelity = {}
    for name, key in (("fidelity/spice-vs-numba", "spice_vs_numba"), ("fidelity/input-gradients", "input_gradients")):
        rec = steps.get(name) or {}
        if rec.get("status") == "done":
            data = _read_json(out / rec["outputs"][0])
            if data is not None:
                fidelity[key] = {**data, "command": rec.get("command"), "step": name}
    rec = steps.get("device/sweep") or {}
    if rec.get("status") == "done":
        data = _read_json(out / rec["outputs"][0])
        if data is not None:
            for run in data.get("runs", []):
                run.pop("history", None)
            data["command"], data["step"] = rec.get("command"), "device/sweep"
            (summ / "device_sweep.json").write_text(json.dumps(data, indent=1))
    rec = steps.get("fidelity/gdu") or {}
    if rec.get("status") == "done":
        fidelity["gdu"] = {**parse_gdu((out / rec["outputs"][0]).read_text()), "command": rec.get("command"),
                           "step": "fidelity/gdu"}
    rec = steps.get("fidelity/bench-spice") or {}
    if rec.get("status") == "done":
        fidelity["bench_spice"] = {"rows": parse_bench_spice((out / rec["outputs"][0]).read_text()),
                                   "command": rec.get("command"), "step": "fidelity/bench-spice"}
    (summ / "fidelity.json").write_text(json.dumps(fidelity, indent=2))
    small = {k: v for k, v in manifest.items() if k != "steps"}
    small["steps"] = {k: {kk: vv for kk, vv in v.items() if kk != "argv"} for k, v in steps.items()}
    (summ / MANIFEST).write_text(json.dumps(small, indent=2))
    n_cert = sum(r.get("family_attack") == "certify" for r in curves)
    log(f"summary: {len(models)} models, {len(curves)} attack rows ({n_cert} certificate rows"
        + (f", {n_cross} certified <= robust checks across runs" if n_cross else "") + f"), "
        f"{len(corr)} corruption rows, {len(energy)} energy runs -> {summ}")
    return summ


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"


def parse_gdu(text: str) -> dict:
    """Rows of ``python -m epsim.gradcheck``'s table: layer, cosine, |EP|/|BPTT|; plus its header and verdict."""
    rows = []
    for line in text.splitlines():
        m = re.fullmatch(rf"\s*(conv\d+|fc)\s+({_NUM})\s+({_NUM})\s*", line)
        if m:
            rows.append({"layer": m.group(1), "cosine": float(m.group(2)), "norm_ratio": float(m.group(3))})
    head = next((ln for ln in text.splitlines() if ln.startswith("EP-CNN")), "")
    verdict = next((ln for ln in text.splitlines() if ln.startswith("min cosine")), "")
    return {"rows": rows, "setup": head, "verdict": verdict}


def parse_bench_spice(text: str) -> list:
    """Rows of ``benchmarks/bench_spice.py``'s table."""
    rows = []
    for line in text.splitlines():
        m = re.fullmatch(rf"\s*(\S+)\s+(\d+)\s+(\d+)\s+({_NUM})\s+({_NUM})\s+({_NUM})\s+({_NUM})x\s+({_NUM})\s*", line)
        if m:
            rows.append({"size": m.group(1), "elements": int(m.group(2)), "nodes": int(m.group(3)),
                         "ngspice_s": float(m.group(4)), "numba_s": float(m.group(5)), "mna_s": float(m.group(6)),
                         "ratio": float(m.group(7)), "agree_V": float(m.group(8))})
    return rows


# --------------------------------------------------------------------------- publish
HEAD_START, HEAD_END = "<!-- headline:start -->", "<!-- headline:end -->"


def publish(summary: Path, dest: Path, readme: Path | None = None, log=print):
    """Copy ``summary`` to ``dest`` and rewrite the headline block of ``readme`` from it."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in summary.rglob("*"):
        if p.is_file():
            t = dest / p.relative_to(summary)
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, t)
    log(f"published {summary} -> {dest}")
    if readme is not None and readme.is_file():
        sys.path.insert(0, str(HERE))
        from common import headline_markdown  # noqa: E402

        text = readme.read_text()
        if HEAD_START in text and HEAD_END in text:
            try:
                rel = dest.resolve().relative_to(REPO)
            except ValueError:
                rel = dest
            block = f"{HEAD_START}\n{headline_markdown(dest, source=str(rel))}\n{HEAD_END}"
            text = re.sub(re.escape(HEAD_START) + r".*?" + re.escape(HEAD_END), lambda _: block, text, flags=re.S)
            readme.write_text(text)
            log(f"updated the headline block of {readme}")


# --------------------------------------------------------------------------- CLI
def build_parser():
    p = argparse.ArgumentParser(prog="python analysis/run_all.py", description=__doc__.splitlines()[0],
                                epilog="Scales: " + "; ".join(f"{k}: {v['what']}" for k, v in PLANS.items()))
    p.add_argument("--scale", choices=SCALES, required=True)
    p.add_argument("--out", required=True, metavar="RESULTS_DIR", help="folder for every result file and the manifest")
    p.add_argument("--data-dir", default=None, help="dataset folder (CIFAR-10 for --scale gpu; digits needs none)")
    p.add_argument("--frost-dir", default=None,
                   help="frost textures for the frost corruption (default: $EPSIM_FROST_DIR, else DATA_DIR/frost; "
                        "without them frost is skipped, and the results say so)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="training seeds of the multi-seed models (default: smoke 0; cpu, gpu 0 1 2)")
    p.add_argument("--only", nargs="+", default=None, metavar="STEP",
                   help="run only steps whose name starts with (or matches) one of these, e.g. train/ fidelity/")
    p.add_argument("--force", action="store_true", help="rerun steps even if their outputs exist")
    p.add_argument("--dry-run", action="store_true", help="print the plan (commands) and exit")
    p.add_argument("--collect-only", action="store_true", help="only (re)build RESULTS_DIR/summary")
    p.add_argument("--publish", default=None, metavar="DIR",
                   help="copy RESULTS_DIR/summary to DIR and refresh the headline block of analysis/README.md")
    return p


def driver_command(argv, out: Path) -> str:
    """This driver's command line, with the results folder written as ``$RESULTS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    keep, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in ("--publish",):
            skip = True
            continue
        if a.startswith("--publish="):
            continue
        keep.append(a)
    shown = []
    for i, a in enumerate(keep):
        if i > 0 and keep[i - 1] == "--out":
            a = "$RESULTS"
        elif a.startswith("--out="):
            a = "--out=$RESULTS"
        shown.append(a if a.startswith("$RESULTS") or a.startswith("--out=") else shlex.quote(a))
    return "python analysis/run_all.py " + " ".join(shown)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    seeds = tuple(args.seeds) if args.seeds else PLANS[args.scale]["seeds"]
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise UserError("--seeds must be distinct non-negative integers")
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise UserError(f"--data-dir {args.data_dir} is not a folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if args.frost_dir and not Path(args.frost_dir).is_dir():
        raise UserError(f"--frost-dir {args.frost_dir} is not a folder")
    steps = build_plan(args.scale, seeds, str(Path(args.data_dir).resolve()) if args.data_dir else None, out,
                       str(Path(args.frost_dir).resolve()) if args.frost_dir else None)
    if args.dry_run:
        for s in steps:
            print(f"{s.name}\n    {display_command(s.argv, out)}" + (f" > $RESULTS/{s.stdout_to}" if s.stdout_to else ""))
        return 0
    failed = []
    if not args.collect_only:
        if args.scale == "gpu":
            print("note: the gpu scale is the paper-scale configuration (CUDA, CIFAR-10); it takes days on a CPU",
                  file=sys.stderr)
        manifest = execute(steps, out, args.scale, only=args.only, force=args.force,
                           driver_command=driver_command(argv, out))
        failed = [k for k, v in manifest["steps"].items() if v.get("status") in ("failed", "blocked")
                  and k in manifest["plan"]]
    summ = collect(out)
    if args.publish:
        publish(summ, Path(args.publish), HERE / "README.md")
    if failed:
        print(f"{len(failed)} step(s) failed or blocked: {', '.join(failed)} (see {out}/logs; rerun to retry)",
              file=sys.stderr)
        return 1
    return 0


def cli(argv=None) -> int:
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
