"""python -m epsim.robustness: attacks and corruptions on a trained model -> robustness.json/.csv.

Thin command line over :func:`epsim.robustness.evaluate.run_sweep`: parse, load the
checkpoint and the test images, run, write ``OUT/robustness.json`` and
``OUT/robustness.csv``, print the table (failed sanity checks next to the numbers).
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import asdict
from pathlib import Path

from ..cli import (ArgumentParser, add_dataset, add_device, add_list, add_test_subset, add_threads, explicit_options,
                   prepare_out_dir, run, set_command_environment, set_threads)

set_command_environment()  # before numpy loads

import numpy as np  # noqa: E402

from ..checkpoint import _atomic_write, write_json  # noqa: E402
from ..data import DATASETS, dataset_geometry  # noqa: E402
from ..errors import EpsimError  # noqa: E402
from ..solvers import BACKENDS  # noqa: E402
from .adapters import PATHS, load_model  # noqa: E402
from .attacks import LOSSES  # noqa: E402
from .evaluate import (ATTACKS, SweepConfig, check_sweep_fits, csv_rows, format_table, run_sweep,  # noqa: E402
                       split_attack)
from .journal import SweepJournal, sweep_digest  # noqa: E402

EXAMPLES = """\
examples:
  python -m epsim.robustness --checkpoint runs/digits-cnn/checkpoint.pt --attack pgd-l2,fgsm-l2,square-l2 \\
      --eps log:0.05:3:8 --test-subset 360 --out runs/digits-cnn/robust-l2
  python -m epsim.robustness --checkpoint runs/digits-cnn/checkpoint.pt --attack pgd-linf square-linf \\
      --eps 0.01 0.02 8/255 0.05 0.1 0.2 --out runs/digits-cnn/robust-linf
  python -m epsim.robustness --checkpoint runs/digits-cnn/checkpoint.pt --attack corruptions --out runs/c

ε is measured on images with pixels in [0, 1] (L2 or L∞ norm of the pixel difference), before
the images become circuit input voltages, so the same ε means the same for every model.
List options take values separated by spaces, commas, or both. An interrupted sweep continues
with the same command and --resume.
"""


def parse_eps(text: str) -> list:
    """``"0.1,8/255,log:0.05:3:8"`` -> floats; ``log:A:B:N`` is N log-spaced values from A to B."""
    out = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        try:
            if item.startswith("log:"):
                _, a, b, k = item.split(":")
                a, b, k = float(a), float(b), int(k)
                if not (a > 0 and b > 0 and k >= 1):
                    raise ValueError
                out.extend(np.geomspace(a, b, k).tolist() if k > 1 else [a])
            elif "/" in item:
                num, den = item.split("/")
                out.append(float(num) / float(den))
            else:
                out.append(float(item))
        except (ValueError, ZeroDivisionError):
            raise EpsimError(f"cannot read ε value {item!r}: use numbers, fractions like 8/255, or "
                             "log:START:STOP:COUNT") from None
    return out


def _choices(items, allowed, what, all_word=None):
    """``items`` (a list option's values) after checking each is in ``allowed`` (or ``all_word``)."""
    if not items:
        raise EpsimError(f"--{what} needs at least one value")
    for t in items:
        if t not in allowed and t != all_word:
            raise EpsimError(f"unknown {what} {t!r}; choose from {', '.join(allowed)}"
                             + (f" or {all_word}" if all_word else ""))
    return items


def test_subset(text: str):
    """argparse type of ``--test-subset``: a count, or ``all`` (None)."""
    if str(text).strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', got {text!r}") from None


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m epsim.robustness",
        description="Robustness of a trained model (circuit or software) to white-box PGD/FGSM (every "
                    "gradient path, worst case reported), black-box Square and natural corruptions, "
                    "with automatic sanity checks. Writes OUT/robustness.json and OUT/robustness.csv.",
        epilog=EXAMPLES)
    g = p.add_argument_group("model and data")
    g.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint.pt of a trained model")
    g.add_argument("--backend", choices=BACKENDS, default=None,
                   help="circuit predictor backend (default: the one it was trained with)")
    g.add_argument("--tol", type=float, default=None, metavar="A",
                   help="predictor KCL tolerance (default: the training run's)")
    g.add_argument("--max-iter", type=int, default=None, metavar="N",
                   help="predictor sweep budget; for a software EP model its inference relaxation "
                        "budget T1, which the BPTT gradient also runs through (default: the training run's)")
    add_dataset(g, DATASETS, "test set (default: the checkpoint's; must match it)")
    g.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the dataset files (default: $EPSIM_DATA_DIR or ./data)")
    add_test_subset(g, "number of test images: a seeded random subset of N, or 'all' (which also checks "
                       "the clean accuracy against the training run's)", default=100, aliases=("--n",),
                    type=test_subset)
    add_device(g, "torch device of gradients and software models", default="cpu")
    g.add_argument("--batch-size", type=int, default=500, metavar="N", help="images per predictor call")
    add_threads(g)
    g = p.add_argument_group("attacks")
    add_list(g, "--attack", required=True, metavar="ATTACK", help=f"attacks: {', '.join(ATTACKS)}")
    add_list(g, "--eps", item=parse_eps, default=[], metavar="EPS",
             help="radii in [0,1]-pixel units: 0.5, 8/255, log:0.05:3:8 (N log-spaced values; "
                  "not used by corruptions)")
    add_list(g, "--grad-path", default=["all"], metavar="PATH",
             help=f"gradient paths: {', '.join(PATHS)}, or all (every path the model offers; the worst "
                  "case is reported)")
    add_list(g, "--loss", default=["ce", "dlr", "dlr-t"], metavar="LOSS",
             help=f"attack losses: {', '.join(LOSSES)}, or all (dlr-t is the targeted DLR of APGD-T, "
                  "one run per --target-classes)")
    g.add_argument("--steps", type=int, default=50, metavar="N", help="PGD iterations per restart")
    g.add_argument("--target-classes", type=int, default=3, metavar="K",
                   help="the targeted loss dlr-t (APGD-T) runs once per target: the K highest-scoring "
                        "other classes at the clean image")
    g.add_argument("--unroll", type=int, default=29, metavar="N",
                   help="advep-* (the seed's protocol): steps of the truncated unroll from the zero "
                        "state its EP gradient backpropagates through (the default is the published value)")
    g.add_argument("--restarts", type=int, default=1, metavar="N", help="PGD random restarts")
    g.add_argument("--queries", type=int, default=1000, metavar="N", help="Square attack queries per image")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the image subset, random starts, Square, corruptions")
    g.add_argument("--transfer-from", default=None, metavar="CHECKPOINT",
                   help="surrogate model for the transfer gradient path")
    g.add_argument("--ce-temperature", type=float, default=1.0, metavar="V",
                   help="circuits: cross-entropy on softmax(v_out / T), T in volts")
    g.add_argument("--ep-beta", type=float, default=0.01, metavar="B", help="nudging of the EP gradient path")
    g.add_argument("--grad-tol", type=float, default=1e-12, metavar="A",
                   help="KCL tolerance of the EP gradient path's solves (A)")
    g.add_argument("--no-large-eps-check", action="store_true",
                   help="do not add the unbounded ε (L∞ 1, L2 sqrt(C*H*W)) to PGD sweeps")
    g.add_argument("--large-eps-threshold", type=float, default=0.02, metavar="ACC",
                   help="robust accuracy counted as ≈0 at the largest ε")
    g = p.add_argument_group("corruptions")
    add_list(g, "--corruptions", default=None, metavar="NAME", help="corruptions (default: every applicable one)")
    add_list(g, "--severities", item=int, default=[1, 2, 3, 4, 5], metavar="S", help="severities 1..5")
    g.add_argument("--frost-dir", default=None, metavar="DIR",
                   help="folder with the frost textures (default: $EPSIM_FROST_DIR, else DATA_DIR/frost; "
                        "frost is skipped, and said so, when they are missing and it was not asked for by name)")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, metavar="DIR", help="write robustness.json and robustness.csv here")
    g.add_argument("--resume", action="store_true",
                   help="continue the sweep interrupted in --out: its finished attack runs (recorded in "
                        "OUT/sweep-progress.json) are not rerun, and the results equal an uninterrupted run's")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _torch_device(name: str) -> str:
    """``--device`` resolved (``auto``: CUDA when present); an absent GPU is an error."""
    from ..models.loading import pick_device

    return str(pick_device(name))


def _write_csv(path: Path, rows):
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    data = buf.getvalue().encode()
    _atomic_write(path, lambda fh: fh.write(data))


# Options that only some attack families read: (option, destination, the families that use it).
_FAMILY_OPTIONS = (
    ("--steps", "steps", {"pgd"}), ("--restarts", "restarts", {"pgd"}),
    ("--target-classes", "target_classes", {"pgd", "fgsm"}), ("--transfer-from", "transfer_from", {"pgd", "fgsm"}),
    ("--unroll", "unroll", {"advep"}), ("--queries", "queries", {"square"}),
    ("--no-large-eps-check", "no_large_eps_check", {"pgd"}),
    ("--large-eps-threshold", "large_eps_threshold", {"pgd"}),
    ("--corruptions", "corruptions", {"corruptions"}), ("--severities", "severities", {"corruptions"}),
    ("--frost-dir", "frost_dir", {"corruptions"}),
    ("--eps", "eps", {"pgd", "fgsm", "square", "certify", "advep"}),
)


def warn_unused_options(given: set, attacks) -> list:
    """One warning line for each option in ``given`` (destinations given on the command line) that
    none of ``attacks`` reads, so a misplaced option is seen rather than silently ignored."""
    families = {split_attack(a)[0] for a in attacks}
    return [f"warning: {flag} applies to {', '.join(sorted(f + ('' if f == 'corruptions' else '-*') for f in used))} "
            f"only, not to --attack {','.join(attacks)}; ignored"
            for flag, dest, used in _FAMILY_OPTIONS if dest in given and not used & families]


def _load_models(args, config) -> tuple:
    """The attacked model and the ``--transfer-from`` surrogate, checked against the sweep and
    the dataset's image shape before any image is read: ``(TrainedModel, surrogate adapter or
    None, dataset name)``."""
    set_threads(args.threads)
    device = _torch_device(args.device)
    circuit_opts = dict(grad_tol_A=args.grad_tol, ep_beta=args.ep_beta, ce_temperature_V=args.ce_temperature,
                        batch_size=args.batch_size)
    loaded = load_model(args.checkpoint, backend=args.backend, tol_A=args.tol, max_iter=args.max_iter,
                        device=device, **circuit_opts)
    adapter = loaded.adapter
    if adapter.kind != "circuit" and (args.backend not in (None, "torch") or args.tol is not None):
        raise EpsimError(f"{args.checkpoint} is a software model ({adapter.name}): --backend and --tol "
                         "apply to circuit checkpoints only")
    dataset_name = args.dataset or loaded.dataset
    if dataset_name is None:
        raise EpsimError(f"{args.checkpoint} does not record its dataset: pass --dataset")
    if loaded.dataset is not None and dataset_name.lower().replace("-", "") != loaded.dataset.lower().replace("-", ""):
        raise EpsimError(f"{args.checkpoint} was trained on {loaded.dataset}, not {dataset_name}: "
                         "evaluate a model on its own dataset")
    image_shape, num_classes = dataset_geometry(dataset_name)
    if tuple(image_shape) != tuple(adapter.image_shape) or num_classes != adapter.num_classes:
        raise EpsimError(f"{args.checkpoint} expects {tuple(adapter.image_shape)} images and "
                         f"{adapter.num_classes} classes; {dataset_name} has {tuple(image_shape)} and {num_classes}")
    surrogate = None
    if args.transfer_from:
        surrogate = load_model(args.transfer_from, device=device, **circuit_opts).adapter
        if tuple(surrogate.image_shape) != tuple(adapter.image_shape) or surrogate.num_classes != adapter.num_classes:
            raise EpsimError(f"--transfer-from model takes {surrogate.image_shape} images with "
                             f"{surrogate.num_classes} classes, the attacked model {adapter.image_shape} "
                             f"with {adapter.num_classes}")
    check_sweep_fits(adapter, config, surrogate)
    return loaded, surrogate, dataset_name


def main(argv=None):
    args = build_parser().parse_args(argv)
    attacks = _choices(args.attack, ATTACKS, "attack")
    for a in attacks:
        split_attack(a)
    for line in warn_unused_options(explicit_options(build_parser, argv), attacks):
        print(line, file=sys.stderr)
    eps = list(args.eps)
    paths = _choices(args.grad_path, PATHS, "grad-path", "all")
    losses = _choices(args.loss, LOSSES, "loss", "all")
    losses = list(LOSSES) if "all" in losses else losses
    severities = tuple(args.severities)
    n = args.test_subset
    if n is not None and n < 1:
        raise EpsimError("--test-subset must be at least 1")
    for name, v in (("--steps", args.steps), ("--restarts", args.restarts), ("--queries", args.queries),
                    ("--batch-size", args.batch_size)):
        if v < 1:
            raise EpsimError(f"{name} must be at least 1")
    if args.tol is not None and not (np.isfinite(args.tol) and args.tol > 0):
        raise EpsimError("--tol must be a positive number (amperes)")
    for name, v in (("--grad-tol", args.grad_tol), ("--ep-beta", args.ep_beta),
                    ("--ce-temperature", args.ce_temperature)):
        if not (np.isfinite(v) and v > 0):
            raise EpsimError(f"{name} must be a positive number")
    if args.seed < 0:
        raise EpsimError("--seed must be non-negative")
    if args.max_iter is not None and args.max_iter < 1:
        raise EpsimError("--max-iter must be at least 1")
    if not (0 <= args.large_eps_threshold < 1):
        raise EpsimError("--large-eps-threshold must be in [0, 1)")
    corruptions = tuple(args.corruptions) if args.corruptions else None
    config = SweepConfig(attacks=tuple(attacks), eps=tuple(eps), paths=tuple(paths), losses=tuple(losses),
                         restarts=args.restarts, steps=args.steps, queries=args.queries, seed=args.seed,
                         severities=severities, corruptions=corruptions,
                         frost_dir=args.frost_dir or (str(Path(args.data_dir) / "frost") if args.data_dir else None),
                         large_eps_check=not args.no_large_eps_check,
                         large_eps_threshold=args.large_eps_threshold, unroll=args.unroll,
                         target_classes=args.target_classes)
    config.check()
    if not Path(args.checkpoint).is_file():
        raise EpsimError(f"checkpoint {args.checkpoint} not found")
    if args.transfer_from and not Path(args.transfer_from).is_file():
        raise EpsimError(f"checkpoint {args.transfer_from} (--transfer-from) not found")
    made_out = not Path(args.out).exists()
    prepare_out_dir(args.out)
    try:
        loaded, surrogate, dataset_name = _load_models(args, config)
    except EpsimError:
        if made_out and not any(Path(args.out).iterdir()):
            Path(args.out).rmdir()  # a refused run leaves no folder behind
        raise
    adapter = loaded.adapter
    from ..data import default_data_dir, load_dataset

    ds = load_dataset(dataset_name, args.data_dir or default_data_dir())
    n_test = len(ds.y_test)
    if n is not None and n > n_test:
        raise EpsimError(f"--test-subset {n} is larger than the {n_test} test images of {ds.name}")
    full = n is None or n == n_test
    if full:
        x, y = ds.x_test.astype(np.float64), ds.y_test
    else:
        idx = np.random.default_rng([args.seed, 1]).permutation(n_test)[:n]
        x, y = ds.x_test[idx].astype(np.float64), ds.y_test[idx]
    digest = sweep_digest(Path(args.checkpoint), Path(args.transfer_from) if args.transfer_from else None,
                          x, np.asarray(y), asdict(config), adapter.settings())
    journal = SweepJournal(args.out, digest, resume=args.resume)
    print(f"{adapter.name} on {ds.name}: {len(y)} test images, attacks {', '.join(attacks)}", flush=True)
    results = run_sweep(adapter, x, y, config, surrogate=surrogate, recorded=loaded.recorded,
                        full_test_set=full, journal=journal,
                        progress=not args.no_progress, log=lambda m: print(m, flush=True))
    results.update({"checkpoint": str(args.checkpoint), "dataset": ds.name,
                    "transfer_from": args.transfer_from, "command": " ".join(sys.argv)})
    out = Path(args.out)
    write_json(out / "robustness.json", results)
    _write_csv(out / "robustness.csv", csv_rows(results))
    journal.finish()
    print(format_table(results))
    print(f"wrote {out / 'robustness.json'} and {out / 'robustness.csv'}"
          + ("" if results["sanity_ok"] else f"; FAILED sanity checks: {', '.join(results['failed_checks'])}"))


def cli(argv=None) -> int:
    return run(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
