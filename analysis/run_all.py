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
run continues with ``--resume``, an interrupted robustness sweep with ``--resume`` from the
attack runs it recorded). Circuit models' PGD runs also compute the monotonicity
certificate (``certify-l2`` / ``certify-linf``) at the same ε; software models get none. The
first seed of every circuit model also gets an ``energy/<model>-s<seed>`` step (transient
settling time, energy and power, early readout, PGD-L2 against the early readout at the L2
headline ε). ``OUT/manifest.json`` records, for every step, the command, its output files,
its wall time, exit status and log file, and the scale.

At the end (and with ``--collect-only``) the results are gathered into the compact,
notebook-ready folder ``OUT/summary/`` (CSV/JSON/NPZ, a few hundred kB): the notebooks in
``analysis/`` read only that folder. ``--publish DIR`` copies it to ``DIR`` (e.g.
``analysis/results/cpu``, which is committed) and rewrites the headline block of
``analysis/README.md`` from it. With ``--merge`` the steps run now replace theirs in ``DIR`` and
the published results of every other step are kept (``driver/merge.py``): a scale can be
completed in parts. A model retrained for a part must reproduce its published test accuracy
(``--retrain-tolerance POINTS``: within that many percentage points, both accuracies recorded).

This file is the command line; the work is done by ``analysis/driver/``: the scales
(``driver/scales.py``), their steps (``driver/plan.py``), running them (``driver/runner.py``,
``driver/manifest.py``), the summary (``driver/summary.py``, ``driver/parsers.py``) and
publishing it (``driver/publish.py``, ``driver/merge.py``).
"""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _path in (HERE.parent, HERE):  # epsim, and the driver package and common.py beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from epsim.cli import ArgumentParser  # noqa: E402

from driver.manifest import MANIFEST, UserError  # noqa: E402
from driver.parsers import parse_bench_spice, parse_gdu  # noqa: E402
from driver.plan import build_plan, certifiable, parse_eps  # noqa: E402
from driver.merge import merged_summary  # noqa: E402
from driver.publish import publish  # noqa: E402
from driver.runner import check_only, display_command, execute, step_done, step_selected  # noqa: E402
from driver.scales import PLANS, SCALES  # noqa: E402
from driver.summary import collect  # noqa: E402

# The CLI below, and the pieces of the driver it is made of (imported from here by the tests).
__all__ = ["PLANS", "SCALES", "UserError", "build_parser", "build_plan", "certifiable", "cli", "collect", "display_command",
           "driver_command", "execute", "main", "parse_bench_spice", "parse_eps", "parse_gdu", "publish", "step_done"]


def build_parser():
    """The driver's command line."""
    p = ArgumentParser(prog="python analysis/run_all.py", description=__doc__.splitlines()[0],
                                epilog="Scales: " + "; ".join(f"{k}: {v['what']}" for k, v in PLANS.items()))
    p.add_argument("--scale", choices=SCALES, required=True,
                   help="which plan to run (the models, attacks and sizes of each are listed below)")
    p.add_argument("--out", required=True, metavar="RESULTS_DIR", help="folder for every result file and the manifest")
    p.add_argument("--data-dir", default=None, help="dataset folder (CIFAR-10 for --scale gpu; digits needs none)")
    p.add_argument("--frost-dir", default=None,
                   help="frost textures for the frost corruption (default: $EPSIM_FROST_DIR, else DATA_DIR/frost; "
                        "without them frost is skipped, and the results say so)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="training seeds of the multi-seed models (default: smoke 0; cpu, gpu 0 1 2)")
    p.add_argument("--only", nargs="+", default=None, metavar="STEP",
                   help="run only steps whose name starts with (or, as a regular expression, matches) one of these, "
                        "e.g. train/ fidelity/ (with --dry-run: print only those)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run up to N steps at a time, in plan order, each once the steps it needs are done; "
                        "each step's numba/OpenMP threads default to cores / N (NUMBA_NUM_THREADS, "
                        "OMP_NUM_THREADS already set win)")
    p.add_argument("--force", action="store_true", help="rerun steps even if their outputs exist")
    p.add_argument("--dry-run", action="store_true", help="print the plan (commands) and exit")
    p.add_argument("--collect-only", action="store_true", help="only (re)build RESULTS_DIR/summary")
    p.add_argument("--publish", default=None, metavar="DIR",
                   help="copy RESULTS_DIR/summary to DIR and refresh the headline block of analysis/README.md")
    p.add_argument("--merge", action="store_true",
                   help="with --publish: keep DIR's results of the steps this run did not do, replace those it "
                        "did, rebuild the claims (a retrained model must reproduce its published test accuracy)")
    p.add_argument("--retrain-tolerance", type=float, default=0.0, metavar="POINTS",
                   help="with --merge: accept a retrained model whose test accuracy is within POINTS percentage "
                        "points of the published one (e.g. retrained on another CPU); the published training row "
                        "is kept and the manifest records both accuracies (default: 0, exact)")
    return p


def driver_command(argv, out: Path) -> str:
    """This driver's command line, with the results folder written as ``$RESULTS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    keep, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in ("--publish", "--retrain-tolerance"):
            skip = True
            continue
        if a.startswith(("--publish=", "--retrain-tolerance=")) or a == "--merge":
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
    """Plan, run (or print with --dry-run), collect and publish; returns the exit status."""
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    seeds = tuple(args.seeds) if args.seeds else PLANS[args.scale]["seeds"]
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise UserError("--seeds must be distinct non-negative integers")
    if args.jobs < 1:
        raise UserError("--jobs must be at least 1")
    if args.merge and not args.publish:
        raise UserError("--merge needs --publish DIR (the published summary to merge into)")
    if args.retrain_tolerance != 0.0 and not args.merge:
        raise UserError("--retrain-tolerance needs --merge")
    if not args.retrain_tolerance >= 0:
        raise UserError("--retrain-tolerance must be a number of percentage points >= 0")
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise UserError(f"--data-dir {args.data_dir} is not a folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if args.frost_dir and not Path(args.frost_dir).is_dir():
        raise UserError(f"--frost-dir {args.frost_dir} is not a folder")
    steps = build_plan(args.scale, seeds, str(Path(args.data_dir).resolve()) if args.data_dir else None, out,
                       str(Path(args.frost_dir).resolve()) if args.frost_dir else None)
    check_only(steps, args.only, args.scale)
    if args.dry_run:
        for s in steps:
            if not step_selected(s.name, args.only):
                continue
            print(f"{s.name}\n    {display_command(s.argv, out)}" + (f" > $RESULTS/{s.stdout_to}" if s.stdout_to else ""))
        return 0
    failed = []
    if not args.collect_only:
        if args.scale == "gpu":
            print("note: the gpu scale is the paper-scale configuration (CUDA, CIFAR-10); it takes days on a CPU",
                  file=sys.stderr)
        manifest = execute(steps, out, args.scale, only=args.only, force=args.force,
                           driver_command=driver_command(argv, out), jobs=args.jobs)
        failed = [k for k, v in manifest["steps"].items() if v.get("status") in ("failed", "blocked")
                  and k in manifest["plan"]]
    summ = collect(out)
    if args.publish:
        if args.merge and (Path(args.publish) / MANIFEST).is_file():
            merged = merged_summary(Path(args.publish), summ, args.retrain_tolerance)
            publish(merged, Path(args.publish), HERE / "README.md")
            shutil.rmtree(merged.parent)
        else:
            publish(summ, Path(args.publish), HERE / "README.md")
    if failed:
        print(f"{len(failed)} step(s) failed or blocked: {', '.join(failed)} (see {out}/logs; rerun to retry)",
              file=sys.stderr)
        return 1
    return 0


def cli(argv=None) -> int:
    """:func:`main` with user errors as one line (exit status 2)."""
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
