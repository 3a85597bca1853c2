"""python -m epsim.gradcheck: check that EP's gradient estimate matches BPTT's (the GDU property).

For a small software EP-CNN, the symmetric-nudging EP estimate of ``∇θ mean(ℓ)``
(free phase and ``±β`` phases relaxed to convergence, small ``β``) is compared with
the gradient obtained by back-propagating the loss through the unrolled synchronous
free-phase dynamics (BPTT).  Both are the gradient of the loss at the free fixed point
in the limit ``β → 0`` with converged phases (Ernoult et al. 2019's "gradient
descending updates" theorem, in its fixed-point form); the command prints the cosine
similarity and norm ratio per layer.  Runs in float64, on digits by default (no download).
"""
from __future__ import annotations

import sys

from .cli import (ArgumentParser, add_dataset, add_deprecated_alias, add_threads, run, set_command_environment,
                  set_threads)

set_command_environment()  # before numpy loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from .data import DATASETS  # noqa: E402
from .errors import EpsimError  # noqa: E402
from .models.ep_cnn import COSTS, SOLVERS, EPCNN, _max_change, bptt_gradients, ep_gradients  # noqa: E402


def layer_names(model: EPCNN) -> list:
    return [f"conv{i + 1}" for i in range(model.num_hidden)] + ["fc"]


def _flat_grads(model: EPCNN) -> list:
    return [torch.cat([p.grad.detach().flatten().clone() for p in group]) for group in model.param_groups()]


def _ep_and_bptt(model: EPCNN, x, y, *, beta, max_iter, tol, solver, bptt_steps=None):
    """The EP estimate (converged phases of ``max_iter`` at most) and the BPTT gradient through
    ``bptt_steps`` steps (default: the free phase's, plus 50), per synapse:
    ``(ep step, EP grads, BPTT grads, BPTT steps, every phase converged)``."""
    step = ep_gradients(model, x, y, beta=beta, t1=max_iter, t2=max_iter, solver=solver, tol=tol,
                        require_convergence=False)
    converged = bool(step.free.converged.all() and step.plus.converged.all() and step.minus.converged.all())
    g_ep = _flat_grads(model)
    steps = bptt_steps if bptt_steps is not None else int(step.free.iterations) + 50
    bptt_gradients(model, x, y, steps=steps, solver=solver)
    return step, g_ep, _flat_grads(model), steps, converged


def _agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Cosine and norm ratio ``|a| / |b|`` of two flat gradients."""
    return {"cosine": float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300)),
            "norm_ratio": float(a.norm() / b.norm().clamp_min(1e-300))}


def gradient_check(model: EPCNN, x: torch.Tensor, y: torch.Tensor, *, beta=1e-3, max_iter=2000,
              tol=1e-13, bptt_steps=None, solver="sync") -> list:
    """Compare EP and BPTT gradients layer by layer.

    Args:
        model: the EP-CNN (float64 recommended). x: ``(B, C, H, W)`` pixels in [0, 1].
        y: ``(B,)`` labels. beta: nudging strength. max_iter, tol: relaxation cap and
        convergence tolerance of all three EP phases. bptt_steps: unrolled steps for
        BPTT (default: the number the free phase needed, plus 50). solver: the dynamics
        of both, ``"sync"`` steps or ``"async"`` odd/even sweeps (the two can reach
        different fixed points; each is compared with its own).
    Returns:
        One dict per synapse: ``layer``, ``cosine``, ``norm_ratio`` (|EP| / |BPTT|),
        plus ``free_steps``, ``converged`` (all three phases reached ``tol``).
    Raises:
        EpsimError: a phase did not converge within ``max_iter``.
    """
    step, g_ep, g_bptt, steps, converged = _ep_and_bptt(model, x, y, beta=beta, max_iter=max_iter, tol=tol,
                                                        solver=solver, bptt_steps=bptt_steps)
    if not converged:
        raise EpsimError(f"the EP phases did not converge to {tol:g} within {max_iter} steps; "
                         "raise --max-iter or loosen --tol")
    return [{"layer": name, **_agreement(a, b), "free_steps": int(step.free.iterations), "bptt_steps": steps,
             "converged": converged} for name, a, b in zip(layer_names(model), g_ep, g_bptt)]


def pool_switches(model: EPCNN, xn: torch.Tensor, state_a: list, state_b: list) -> torch.Tensor:
    """``(B,)`` number of max-pooling windows (all layers) whose selected input differs
    between two states of the same normalised inputs ``xn``: where Φ's max-pool kink
    lies between the two, so a finite difference across them is not a derivative."""
    la, lb = [xn] + list(state_a), [xn] + list(state_b)
    count = torch.zeros(xn.shape[0], dtype=torch.long)
    for l in range(model.num_hidden):
        ia, ib = model._conv_pool(l, la[l])[1], model._conv_pool(l, lb[l])[1]
        count += (ia != ib).flatten(1).sum(1).cpu()
    return count


def per_image_check(model: EPCNN, x: torch.Tensor, y: torch.Tensor, *, beta=1e-3, max_iter=2000,
                    tol=1e-13, solver="sync") -> list:
    """:func:`gradient_check` image by image, with the pooling switches under the nudge.

    Returns one dict per image: ``index``, ``cosine`` and ``norm_ratio`` of its EP gradient
    against its BPTT gradient (all parameters together), ``switches_plus`` /
    ``switches_minus`` (:func:`pool_switches` between the free state and the ``+β`` / ``−β``
    state), ``shift_plus`` / ``shift_minus`` (largest change of any unit between the free and
    the nudged state, divided by ``β``: of order one when the state follows the nudge
    smoothly, much larger when a nudged phase jumps to another equilibrium), ``converged``.
    """
    rows = []
    for i in range(len(y)):
        xi, yi = x[i:i + 1], y[i:i + 1]
        step, g_ep, g_bptt, _, converged = _ep_and_bptt(model, xi, yi, beta=beta, max_iter=max_iter, tol=tol,
                                                        solver=solver)
        xn = model.normalize(xi)
        with torch.no_grad():
            plus = int(pool_switches(model, xn, step.free.state, step.plus.state)[0])
            minus = int(pool_switches(model, xn, step.free.state, step.minus.state)[0])
            shifts = [float(_max_change(r.state, step.free.state)[0]) / beta for r in (step.plus, step.minus)]
        rows.append({"index": i, **_agreement(torch.cat(g_ep), torch.cat(g_bptt)), "switches_plus": plus,
                     "switches_minus": minus, "shift_plus": shifts[0], "shift_minus": shifts[1],
                     "converged": converged})
    return rows


def small_model(image_shape, num_classes, channels=None, seed=0, weight_scale=1.0,
                cost="cross-entropy") -> EPCNN:
    """A small float64 EP-CNN for the check; paddings keep every layer non-empty."""
    c, h, w = image_shape
    if channels is None:
        channels = (8, 16) if h <= 8 else (8, 16, 16, 32)
    paddings = [1] * len(channels)
    if h >= 32 and len(channels) == 4:
        paddings = [1, 1, 1, 0]
    torch.manual_seed(seed)
    model = EPCNN(image_shape, num_classes, channels, paddings, t1=2000, solver="sync", tol=1e-13,
                  cost=cost).double()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(weight_scale)
    return model


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m epsim.gradcheck",
        description="Gradient check for the software EP-CNN (the GDU property): EP gradient (symmetric "
                    "nudging, converged phases, small beta) against the BPTT gradient through the "
                    "free-phase dynamics, per layer (cosine similarity and norm ratio). float64, CPU.")
    add_dataset(p, DATASETS, "dataset the images come from", default="digits")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the dataset files (not needed for digits)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="number of training images (a seeded random subset) the gradients average over")
    add_deprecated_alias(p, "--batch", "--batch-size")
    p.add_argument("--channels", type=int, nargs="+", default=None,
                   help="hidden channels (default 8 16 on 8x8 images, 8 16 16 32 otherwise)")
    p.add_argument("--beta", type=float, default=1e-3, help="nudging strength")
    p.add_argument("--weight-scale", type=float, default=2.0,
                   help="multiply the default initial weights (larger: stronger recurrent coupling)")
    p.add_argument("--max-iter", type=int, default=2000, metavar="N", help="max relaxation steps per phase")
    p.add_argument("--tol", type=float, default=1e-13,
                   help="convergence tolerance of the phases (largest change of a unit in a step)")
    p.add_argument("--solver", default="sync", choices=SOLVERS,
                   help="dynamics of the EP phases and of BPTT: sync steps or async odd/even sweeps (default: sync)")
    p.add_argument("--cost", default="cross-entropy", choices=COSTS,
                   help="cross-entropy readout outside the energy, or squared-error with the output layer "
                        "inside it (default: cross-entropy)")
    p.add_argument("--per-image", action="store_true",
                   help="also check every image alone and count the max-pooling windows whose selected "
                        "input switches between the free and the nudged states (a kink of the energy)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset and the initial weights")
    add_threads(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise EpsimError("--batch-size must be at least 1")
    if not (np.isfinite(args.beta) and args.beta > 0):
        raise EpsimError("--beta must be a positive number")
    if args.max_iter < 1:
        raise EpsimError("--max-iter must be at least 1")
    if args.channels is not None and not (args.channels and all(c >= 1 for c in args.channels)):
        raise EpsimError("--channels must be at least 1 per conv layer")
    if not (np.isfinite(args.tol) and args.tol > 0):
        raise EpsimError("--tol must be a positive number")
    if not (np.isfinite(args.weight_scale) and args.weight_scale > 0):
        raise EpsimError("--weight-scale must be a positive number")
    if args.seed < 0:
        raise EpsimError("--seed must be non-negative")
    set_threads(args.threads)
    from .data import default_data_dir, load_dataset

    ds = load_dataset(args.dataset, args.data_dir or default_data_dir(), train_subset=args.batch_size,
                      test_subset=1, seed=args.seed)
    x = torch.from_numpy(np.asarray(ds.x_train, dtype=np.float64))
    y = torch.from_numpy(ds.y_train)
    model = small_model(ds.image_shape, ds.num_classes, args.channels, args.seed, args.weight_scale, args.cost)
    rows = gradient_check(model, x, y, beta=args.beta, max_iter=args.max_iter, tol=args.tol, solver=args.solver)
    print(f"EP-CNN channels {list(model.channels)}, {args.cost} cost, {args.solver} solver, on {len(y)} {ds.name} images, beta={args.beta:g}, "
          f"free phase converged in {rows[0]['free_steps']} steps (tol {args.tol:g}), "
          f"BPTT through {rows[0]['bptt_steps']} steps")
    print(f"{'layer':<8}{'cosine':>12}{'|EP|/|BPTT|':>14}")
    for r in rows:
        print(f"{r['layer']:<8}{r['cosine']:>12.6f}{r['norm_ratio']:>14.6f}")
    worst = min(r["cosine"] for r in rows)
    print(f"min cosine {worst:.6f}: {'PASS' if worst >= 0.99 else 'FAIL'} (>= 0.99)")
    if args.per_image:
        images = per_image_check(model, x, y, beta=args.beta, max_iter=args.max_iter, tol=args.tol,
                                 solver=args.solver)
        print(f"\n{'image':<7}{'label':>6}{'cosine':>11}{'|EP|/|BPTT|':>14}{'switches +β':>13}{'−β':>5}"
              f"{'max|Δs|/β +β':>15}{'−β':>10}")
        for r in images:
            print(f"{r['index']:<7}{int(y[r['index']]):>6}{r['cosine']:>11.6f}{r['norm_ratio']:>14.6f}"
                  f"{r['switches_plus']:>13}{r['switches_minus']:>5}{r['shift_plus']:>15.3g}{r['shift_minus']:>10.3g}")
        bad = [r for r in images if r["cosine"] < 0.99]
        switched = [r for r in bad if r["switches_plus"] or r["switches_minus"]]
        print(f"{len(bad)} of {len(images)} images below cosine 0.99; {len(switched)} of them with a pooling "
              f"window switched under the nudge")


if __name__ == "__main__":
    sys.exit(run(main))
