"""Running the steps: one subprocess each, skipped when done, recorded in the manifest.

A step is done when its output files exist (and, for robustness and energy steps, when its
results hold every attack its command asks for); a training step whose checkpoint exists
resumes with ``--resume``; a step whose dependencies failed is blocked; one that needs a missing
executable (ngspice) is skipped and said so.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from . import REPO
from .manifest import UserError, load_manifest, now, read_json, save_manifest
from .plan import Step
from .scales import PLANS


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


def step_selected(name: str, only) -> bool:
    """Whether step ``name`` is one of ``only`` (names, name prefixes or regular expressions
    matching the whole name); every step when ``only`` is empty."""
    return not only or any(name.startswith(pat) or re.fullmatch(pat, name) for pat in only)


def check_only(steps, only, scale: str) -> None:
    """A :class:`UserError` for an ``--only`` pattern that is not a valid expression or selects
    none of ``steps`` (a typo would otherwise run nothing and exit 0)."""
    names = [s.name for s in steps]
    for pat in only or ():
        try:
            re.compile(pat)
        except re.error as exc:
            raise UserError(f"--only {pat!r} is not a step name, prefix or regular expression ({exc})") from None
        if not any(step_selected(n, [pat]) for n in names):
            raise UserError(f"--only {pat!r} selects none of the {len(names)} steps of the {scale} plan "
                            f"(list them with --dry-run)")


def git_state():
    """The checkout's commit (None outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        return head or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_step(step: Step, out: Path, env: dict, log=print) -> dict:
    """Run one step (its log in ``out/logs``); returns its manifest record."""
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
           "log": str(log_path.relative_to(out)), "started": now(), "resumed": resumed, "git_head": git_state(),
           **step.meta}
    log(f"[{now()}] {step.name}: {rec['command']}")
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
    rec["finished"] = now()
    rec["returncode"] = proc.returncode
    missing = [p for p in step.outputs if not (out / p).is_file()]
    if proc.returncode == 0 and not missing:
        rec["status"] = "done"
    else:
        rec["status"] = "failed"
        tail = log_path.read_text().strip().splitlines()[-3:]
        rec["error"] = (f"missing outputs {missing}; " if proc.returncode == 0 else "") + " | ".join(tail)
    log(f"[{now()}] {step.name}: {rec['status']} in {rec['wall_s']:.1f} s"
        + (f": {rec.get('error', '')}" if rec["status"] != "done" else ""))
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
        data = read_json(out / step.outputs[0])
        have = set(((data or {}).get("config") or {}).get("attacks") or [])
        return wanted <= have
    if step.kind == "energy" and "--attack-eps" in step.argv:  # an energy run without the early-readout attack
        data = read_json(out / step.outputs[0])
        return bool(((data or {}).get("summary") or {}).get("early_readout_attack"))
    return True


def step_environment(jobs: int) -> dict:
    """The steps' environment: the repository on ``PYTHONPATH``; with ``jobs`` > 1 concurrent steps,
    the CPU threads of each (numba, OpenMP, MKL) default to an equal share of the cores (a value
    already set in the environment wins)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if jobs > 1:
        share = str(max(1, (os.cpu_count() or 1) // jobs))
        for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, share)
    return env


def execute(steps, out: Path, scale: str, *, only=None, force=False, driver_command=None, log=print,
            jobs: int = 1) -> dict:
    """Run the ``steps`` not done yet (those matching ``only``; every one with ``force``), up to
    ``jobs`` at a time in plan order (a step starts once every step it depends on is done), saving
    the manifest after each; returns the manifest."""
    if jobs < 1:
        raise UserError("--jobs must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(out)
    if manifest.get("scale") not in (None, scale):
        raise UserError(f"{out} holds a {manifest['scale']!r} run; use another --out for --scale {scale}")
    manifest.update({"scale": scale, "what": PLANS[scale]["what"], "out": str(out), "python": sys.executable,
                     "git_head": git_state(), "plan": [s.name for s in steps]})
    if driver_command and not only:
        manifest["driver_command"] = driver_command
    manifest.setdefault("created", now())
    manifest.setdefault("steps", {})
    env = step_environment(jobs)
    status = {}
    touched = set()  # the steps whose manifest records this process writes
    queue = []  # the steps to run, in plan order
    for step in steps:
        if not step_selected(step.name, only):
            continue
        touched.add(step.name)
        prev = manifest["steps"].get(step.name)
        if step_done(step, out) and not force:
            if prev is None or prev.get("status") != "done":
                prev = {"kind": step.kind, "command": display_command(step.argv, out), "outputs": step.outputs,
                        "status": "done", "note": "outputs were already there", **step.meta}
            manifest["steps"][step.name] = prev
            status[step.name] = "done"
            log(f"[{now()}] {step.name}: done earlier, skipped")
            continue
        queue.append(step)
    unfinished = {s.name for s in queue}  # queued or running in this process

    def record(step, rec, why=None):
        manifest["steps"][step.name] = rec
        status[step.name] = rec["status"]
        unfinished.discard(step.name)
        manifest["updated"] = now()
        if why:
            log(f"[{now()}] {step.name}: {rec['status']} {why}")
        save_manifest(out, manifest, touched)

    def not_run(step, state, error, why):
        record(step, {"kind": step.kind, "command": display_command(step.argv, out), "outputs": step.outputs,
                      "status": state, "error": error, **step.meta}, why)

    running = {}  # future -> step
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while queue or running:
            for step in list(queue):
                if len(running) >= jobs:
                    break
                if step.requires and shutil.which(step.requires) is None:
                    queue.remove(step)
                    not_run(step, "skipped", f"{step.requires} is not installed", f"({step.requires} is not installed)")
                    continue
                if any(d in unfinished for d in step.deps):
                    continue  # waits for a step of this process
                queue.remove(step)
                blocked = [d for d in step.deps if status.get(d, manifest["steps"].get(d, {}).get("status")) != "done"]
                if blocked:
                    not_run(step, "blocked", f"needs {', '.join(blocked)}", f"by {', '.join(blocked)}")
                    continue
                running[pool.submit(run_step, step, out, env, log)] = step
            if not running:
                for step in list(queue):  # only possible with a dependency cycle in the plan
                    queue.remove(step)
                    not_run(step, "blocked", "dependency cycle", "by a dependency cycle")
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                record(running.pop(future), future.result())
    manifest["updated"] = now()
    save_manifest(out, manifest, touched)
    manifest["steps"] = load_manifest(out).get("steps", manifest["steps"])
    return manifest
