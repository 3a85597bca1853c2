"""EP-CNN: the EP weight gradient at capped relaxation budgets against the converged one.

    python analysis/ep_budget.py --checkpoint runs/ep/checkpoint.pt --data-dir DATA \
        --budgets 60:15 100:30 --reference 400:200

For each ``T1:T2`` budget (free-phase steps : steps of each nudged phase of the synchronous
solver, or sweeps of the odd/even ``--solver async``), prints per parameter the cosine between the EP gradient estimate at that budget
and at the long ``--reference`` budget, on ``--batch`` training images, and the fraction of
free / nudged phases whose last step moved no unit by more than ``--tol`` (converged). A low
cosine means the phases stop far from their fixed points and the update is not the EP
gradient; a reference whose phases have not all converged is not a converged reference.
A budget passes the gradient check when every parameter's cosine is at least ``--min-cosine``.
The last two columns are the sweeps (or steps) a sample's free phase and each of its nudged
phases ran on average: what the budget costs. ``--omega`` relaxes every phase, the
reference's included, with another relaxation factor than the checkpoint's (odd/even only).

By default every sample counts. ``--as-trained`` compares the update training applies: the
odd/even solver leaves samples whose phases did not all converge out of it (the synchronous loop
keeps them), and the reference is taken on the samples that update uses (``used`` column).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from epsim.checkpoint import write_json
from epsim.cli import ArgumentParser, set_command_environment
from epsim.data import load_dataset
from epsim.errors import EpsimError
from epsim.models.ep_cnn import SOLVERS, check_omega, ep_gradients
from epsim.models.loading import load_torch_model

set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)


def _budget(text: str) -> tuple:
    try:
        t1, t2 = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not T1:T2") from None
    if t1 < 1 or t2 < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: T1 and T2 must be at least 1")
    return t1, t2


def gradients(model, x, y, budget, beta, tol, solver="sync", as_trained=False, nudge_tol=None) -> tuple:
    """(per-parameter EP gradients, fraction of free phases converged, of nudged phases, the
    ``(B,)`` bool mask of the samples the gradients average over: every sample, or with
    ``as_trained`` those the trainer keeps for ``solver``; mean steps per sample of the free
    phase and of a nudged phase)."""
    step = ep_gradients(model, x, y, beta=beta, t1=budget[0], t2=budget[1], solver=solver, tol=tol,
                        nudge_tol=nudge_tol, require_convergence=None if as_trained else False)
    nudged = torch.cat([step.plus.converged, step.minus.converged]).float().mean()
    free_steps = float(step.free.sample_steps.float().mean())
    nudged_steps = float(torch.cat([step.plus.sample_steps, step.minus.sample_steps]).float().mean())
    return ([p.grad.detach().clone() for p in model.parameters()], float(step.free.converged.float().mean()),
            float(nudged), step.used.bool(), (free_steps, nudged_steps))


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of an ep-cnn run")
    p.add_argument("--data-dir", required=True, help="folder with the checkpoint's dataset")
    p.add_argument("--budgets", type=_budget, nargs="+", default=[(60, 15), (100, 30)], metavar="T1:T2",
                   help="capped budgets to compare: free-phase and nudged-phase steps (default: 60:15 100:30)")
    p.add_argument("--reference", type=_budget, default=(400, 200), metavar="T1:T2",
                   help="the long budget taken as converged (its converged fractions are printed; default: 400:200)")
    p.add_argument("--solver", choices=SOLVERS, default="sync",
                   help="relaxation of every phase: synchronous steps or odd/even sweeps (default: sync)")
    p.add_argument("--omega", type=float, default=None,
                   help="relaxation factor of the odd/even sweeps in [1, 2) for every phase (default: "
                        "the checkpoint's)")
    p.add_argument("--batch", type=int, default=64, help="training images the gradients are taken on (default: 64)")
    p.add_argument("--beta", type=float, default=0.5, help="nudging strength of the ±beta phases (default: 0.5)")
    p.add_argument("--tol", type=float, default=1e-6,
                   help="per-sample stop of the budgets' relaxations, e.g. the preset's (default: 1e-6)")
    p.add_argument("--nudge-tol", type=float, default=None,
                   help="per-sample stop of the budgets' nudged phases, e.g. the preset's (default: --tol)")
    p.add_argument("--reference-tol", type=float, default=None,
                   help="per-sample stop of the reference's relaxations (default: --tol)")
    p.add_argument("--min-cosine", type=float, default=0.99,
                   help="a budget passes when every parameter's cosine is at least this (default: 0.99)")
    p.add_argument("--as-trained", action="store_true",
                   help="compare the update training applies (the odd/even solver leaves samples with an "
                        "unconverged phase out) against the reference on the same samples")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="also write the reference and every budget's row to this JSON file")
    p.add_argument("--seed", type=int, default=1, help="seed of the image subset (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = p.parse_args(argv)
    try:
        if args.batch < 1 or args.threads < 1:
            raise EpsimError("--batch and --threads must be at least 1")
        if args.reference_tol is None:
            args.reference_tol = args.tol
        if args.nudge_tol is None:
            args.nudge_tol = args.tol
        if not args.beta > 0 or not args.tol >= 0 or not args.reference_tol >= 0 or not args.nudge_tol >= 0:
            raise EpsimError("--beta must be positive, --tol, --nudge-tol and --reference-tol non-negative")
        if not -1.0 <= args.min_cosine <= 1.0:
            raise EpsimError("--min-cosine must be between -1 and 1")
        if args.omega is not None:
            check_omega(args.omega, args.solver, "--omega")
        if args.out is not None and (Path(args.out).is_dir() or not Path(args.out).parent.is_dir()):
            raise EpsimError(f"--out {args.out}: need a file path in an existing folder")
        torch.set_num_threads(args.threads)
        model = load_torch_model(args.checkpoint)
        if getattr(model, "epsim_kind", None) != "ep-cnn":
            raise EpsimError(f"{args.checkpoint} is not an ep-cnn checkpoint")
        if args.omega is not None:
            model.omega = float(args.omega)
        check_omega(model.omega, args.solver, "--omega")
        model.train()
        ds = load_dataset(model.epsim_dataset, args.data_dir, train_subset=args.batch, test_subset=1,
                          seed=args.seed)
    except EpsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    x, y = torch.from_numpy(ds.x_train).float(), torch.from_numpy(ds.y_train).long()
    names = [n for n, _ in model.named_parameters()]
    ref, free_ok, nudged_ok, _, _ = gradients(model, x, y, args.reference, args.beta, args.reference_tol, args.solver)
    print(f"{args.checkpoint}: {args.batch} training images, reference T1:T2 = "
          f"{args.reference[0]}:{args.reference[1]} ({args.solver}"
          + (f", omega {model.omega:g}" if model.omega != 1.0 else "") + f"; {free_ok:.0%} of free, {nudged_ok:.0%} of nudged phases "
          f"converged to {args.reference_tol:g}); budgets stop at {args.tol:g} (nudged phases {args.nudge_tol:g}); cosine with the reference EP gradient"
          + (" on the samples each update uses" if args.as_trained else ""))
    verdict_head = f"cos>={args.min_cosine:g}"
    print(f"{'T1:T2':<9}" + " ".join(f"{n:>18}" for n in names)
          + f"{'free conv.':>12}{'nudged conv.':>14}{'used':>6}  {verdict_head}"
          + f"{'free sweeps':>13}{'nudged sweeps':>15}")
    report = {"checkpoint": str(args.checkpoint), "solver": args.solver, "omega": model.omega,
              "batch": args.batch, "beta": args.beta,
              "as_trained": args.as_trained, "min_cosine": args.min_cosine, "tol": args.tol, "nudge_tol": args.nudge_tol,
              "reference": {"t1": args.reference[0], "t2": args.reference[1], "tol": args.reference_tol,
                            "free_converged": free_ok, "nudged_converged": nudged_ok},
              "budgets": []}
    for budget in args.budgets:
        g, free_ok, nudged_ok, used, (free_steps, nudged_steps) = gradients(model, x, y, budget, args.beta, args.tol, args.solver,
                                                args.as_trained, args.nudge_tol)
        if not bool(used.any()):
            cos = [float("nan")] * len(g)
        else:
            ref_used = ref if bool(used.all()) else gradients(model, x[used], y[used], args.reference, args.beta,
                                                              args.reference_tol, args.solver)[0]
            cos = [float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
                   for a, b in zip(g, ref_used)]
        verdict = "pass" if all(c >= args.min_cosine for c in cos) else "fail"
        print(f"{budget[0]}:{budget[1]}".ljust(9) + " ".join(f"{c:>18.3f}" for c in cos)
              + f"{free_ok:>12.0%}{nudged_ok:>14.0%}{float(used.float().mean()):>6.0%}  {verdict:<{len(verdict_head)}}"
              + f"{free_steps:>13.1f}{nudged_steps:>15.1f}")
        report["budgets"].append({"t1": budget[0], "t2": budget[1], "cosine": dict(zip(names, cos)),
                                  "free_converged": free_ok, "nudged_converged": nudged_ok,
                                  "used": float(used.float().mean()), "passes": verdict == "pass",
                                  "free_sweeps": free_steps, "nudged_sweeps": nudged_steps})
    if args.out is not None:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
