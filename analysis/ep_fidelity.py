"""A trained circuit's EP gradient at its training solver settings against the converged one.

    python analysis/ep_fidelity.py --checkpoint runs/mnist/checkpoint.pt --data-dir DATA --batch 8

Takes ``--batch`` seeded training images of the checkpoint's dataset and computes the centered
EP gradient (the checkpoint's beta and target voltage) twice: with the solver the run trained
with (its free-phase ``--tol``, ``--nudge-rtol`` and ``--max-iter``) and converged: the free
phase to ``--reference-tol`` (default 1e-15 A), the nudged phases, solved as their changes
from it, to ``--reference-rtol`` of their responses (default 1e-10). Prints, per array of
conductances and of biases (input side first), the cosine between the two and the norm ratio
(training / converged), and the cosine of the gradient the training phases give when their
responses are taken from the voltages, ``v+ - v-`` (``from_voltages_cosine``: what a solver
that does not carry the responses gets; 0 where they are all rounding), as JSON. Float64
resolves a KCL residual of about 1e-16 of a node's drive: on circuits driven by kilovolt
inputs a reference below ~1e-17 A may not be reachable (``converged.reference`` false). What
the stop rule costs on the trained circuit itself, at its own voltages: the tests check the
same on small circuits.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from epsim.cli import ArgumentParser, set_command_environment
from epsim.errors import EpsimError

set_command_environment()


def agreement(got, ref) -> dict:
    """Cosine and norm ratio of two gradient arrays (cosine 0 when ``got`` is all zero)."""
    n, n0 = float(np.linalg.norm(got)), float(np.linalg.norm(ref))
    cos = float(np.sum(got * ref) / (n * n0)) if n > 0 and n0 > 0 else 0.0
    return {"cosine": cos, "norm_ratio": n / n0 if n0 > 0 else float("nan")}


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of a circuit run of epsim.train")
    p.add_argument("--data-dir", default=None, help="folder with the checkpoint's dataset (digits needs none)")
    p.add_argument("--batch", type=int, default=8, metavar="N", help="training images (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image choice (default: 0)")
    p.add_argument("--reference-tol", type=float, default=1e-15, metavar="A",
                   help="KCL tolerance of every phase of the converged reference (default: 1e-15)")
    p.add_argument("--reference-rtol", type=float, default=1e-10, metavar="R",
                   help="relative nudge rule of the reference's nudged phases (default: 1e-10)")
    p.add_argument("--max-iter", type=int, default=100000, metavar="N",
                   help="sweep limit of each phase of the reference; a reference that misses its "
                        "tolerance is reported as not converged (default: 100000)")
    p.add_argument("--threads", type=int, default=1, help="numba threads (default: 1)")
    args = p.parse_args(argv)
    try:
        if args.batch < 1 or args.max_iter < 1 or not args.reference_tol > 0:
            raise EpsimError("--batch, --max-iter and --reference-tol must be positive")
        if not 0 < args.reference_rtol < 1:
            raise EpsimError(f"--reference-rtol must be in (0, 1), got {args.reference_rtol:g}")
        import numba

        from epsim.data import default_data_dir, load_dataset
        from epsim.models.loading import load_network
        from epsim.solvers import get_solver
        from epsim.solvers.factory import SolverConfig, make_solver

        numba.set_num_threads(args.threads)
        net, state = load_network(args.checkpoint)
        config = state["config"]
        ds = load_dataset(config["dataset"], args.data_dir or default_data_dir())
    except EpsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from epsim.learning.ep import centered_ep

    idx = np.sort(np.random.default_rng(args.seed).choice(len(ds.y_train), args.batch, replace=False))
    x, y = ds.x_train[idx], ds.y_train[idx]
    settings = SolverConfig(**{f: config[f] for f in SolverConfig.__dataclass_fields__ if f in config})
    training = make_solver(settings)
    reference = get_solver("numba", tol_A=args.reference_tol, max_iter=args.max_iter,
                           nudge_rtol=args.reference_rtol)
    beta, high_V = config["beta"], config.get("target_high_V", 1.0)
    got = centered_ep(net, training, x, y, beta, target_high_V=high_V)
    ref = centered_ep(net, reference, x, y, beta, target_high_V=high_V)
    rounded = centered_ep(net, training, x, y, beta, target_high_V=high_V, keep_responses=False)
    rows = [{"array": f"{kind}{l + 1}", **agreement(g, g0),
             "from_voltages_cosine": agreement(g1, g0)["cosine"]}
            for kind, grads, grads0, grads1 in (("w", got.grad_w, ref.grad_w, rounded.grad_w),
                                                ("b", got.grad_b, ref.grad_b, rounded.grad_b))
            for l, (g, g0, g1) in enumerate(zip(grads, grads0, grads1))]
    result = {"checkpoint": str(args.checkpoint), "images": int(args.batch), "seed": args.seed,
              "training_solver": {"backend": settings.backend, "tol_A": settings.tol_A,
                                  "nudge_rtol": settings.nudge_rtol, "max_iter": settings.max_iter},
              "reference_tol_A": args.reference_tol, "reference_nudge_rtol": args.reference_rtol,
              "converged": {"training": bool(got.converged.all()), "reference": bool(ref.converged.all())},
              "per_array": rows,
              "min_cosine": min(r["cosine"] for r in rows),
              "max_norm_error": max(abs(r["norm_ratio"] - 1) for r in rows)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
