"""python -m epsim.device_sweep: accuracy (and robustness) of a circuit vs device model and
wire resistance; writes one JSON file.

What it does (all on one dataset, the digits circuit CNN by default):

1. **Train per device preset**: ``epsim.training.train`` (what ``python -m epsim.train
   --device-model NAME`` runs) for each ``--devices`` entry, without wire resistance; each
   run in ``RUNS_DIR/NAME`` (an existing finished run with the same config is reused).
2. **Evaluate each trained chip vs wire resistance** (deployment): the trained conductances
   on crossbars with ``r`` ohms per wire segment for every ``--wire-resistances`` value
   (0: the layered solver; > 0: the exact wire solver), read through the device's read
   noise; ``--read-repeats`` passes with fresh read draws when the device has read noise.
3. **Train with wire resistance** (in situ, ``--train-wires R...``): the ``ideal`` device
   trained through the wire solver for ``--train-wires-epochs`` epochs, evaluated at its own
   ``r``.
4. **Robustness** (``--robustness``): ``epsim.robustness.evaluate.run_sweep`` on each chip's
   deployed predictor (its read noise; the largest wire resistance for the ideal chip):
   PGD-L2 whose gradients come from the nominal circuit (no wires, no read noise: a transfer
   attack from the chip's ideal twin) and Square-L2 querying the deployed predictor itself.

JSON schema (``schema: "epsim.device_sweep/1"``)::

    {"schema", "created", "command", "dataset", "model", "seed", "epochs", "lr",
     "n_test", "devices": {NAME: DeviceModel fields},
     "runs": [                                 # one per trained chip
       {"name": "rram" | "rram@lr=1" (with --device-lrs) | "ideal@wire=10", "device_model": spec, "train_wire_resistance_ohm",
        "epochs", "lr", "run_dir", "test_accuracy" (at the end of training, as trained),
        "train_accuracy", "wall_seconds", "history": [per-epoch dicts of metrics.json],
        "eval": [{"wire_resistance_ohm", "read_noise", "repeats", "accuracies": [...],
                  "accuracy_mean", "accuracy_std", "unconverged", "max_residual_A",
                  "eval_seconds"}],
        "robustness": null | {"wire_resistance_ohm", "n", "clean_accuracy", "sanity_ok",
                  "failed_checks", "rows": [{"attack", "eps", "robust_accuracy",
                  "clean_accuracy", "worst_path", "sanity_only", "sanity_ok",
                  "failed_checks"}]}}]}

Accuracies are fractions in [0, 1]; resistances in ohms; times in seconds.
"""
from __future__ import annotations

import datetime
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .cli import (ArgumentParser, add_attack_subset, add_dataset, add_deprecated_alias, add_list, add_test_subset,
                  add_threads, prepare_out_dir, prepare_out_file, run, set_command_environment, set_threads)

set_command_environment()  # before numpy loads

import numpy as np  # noqa: E402

from .checkpoint import write_json  # noqa: E402
from .data import DATASETS  # noqa: E402
from .errors import EpsimError  # noqa: E402
from .models.registry import CIRCUIT_MODELS  # noqa: E402

SCHEMA = "epsim.device_sweep/1"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m epsim.device_sweep",
        description="Train the circuit with each device model, evaluate it on crossbars with wire "
                    "resistance (and optionally under attack); write one JSON file.")
    p.add_argument("--out", required=True, metavar="PATH", help="JSON file to write")
    p.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="training runs go here (default: next to --out, in device_sweep_runs/)")
    add_dataset(p, DATASETS, "dataset to train and test on", default="digits")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the dataset files (default: $EPSIM_DATA_DIR or ./data)")
    p.add_argument("--model", default="cnn", choices=CIRCUIT_MODELS, help="circuit architecture")
    add_list(p, "--devices", split=split_device_specs, default=["ideal", "rram", "pcm"], metavar="SPEC",
             help="device models (NAME or NAME:field=value,...)")
    add_list(p, "--wire-resistances", item=float, default=[0.0, 1.0, 10.0, 100.0, 1000.0],
             metavar="OHMS", help="wire resistances every trained chip is evaluated at")
    add_list(p, "--train-wires", item=float, default=[], metavar="OHMS",
             help="also train the ideal device with these wire resistances (slow)")
    p.add_argument("--train-wires-epochs", type=int, default=3, metavar="N",
                   help="epochs of each --train-wires run")
    p.add_argument("--epochs", type=int, default=20, metavar="N", help="epochs of each device's run")
    p.add_argument("--lr", type=float, default=0.1,
                   help="learning rate of conductances (in units of g_unit) of every run")
    add_list(p, "--device-lrs", item=float, default=None, metavar="LR",
             help="one learning rate per --devices entry (default: --lr for every device)")
    add_deprecated_alias(p, "--lrs", "--device-lrs")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the training runs, the data subsets and the attacks")
    p.add_argument("--train-subset", type=int, default=None, metavar="N", help="train on N random training images")
    add_test_subset(p, "test on N random test images (a seeded subset; default: all)")
    p.add_argument("--read-repeats", type=int, default=5, metavar="N", help="evaluation passes of a read-noisy chip")
    p.add_argument("--eval-batch-size", type=int, default=36, metavar="N",
                   help="images per read of the crossbar (one read-noise draw per batch)")
    p.add_argument("--robustness", action="store_true", help="also run a small attack sweep per chip")
    add_attack_subset(p, "attack N random images of the test set (a seeded subset)", default=100)
    add_list(p, "--attack-eps", item=float, default=[0.5, 1.0, 2.0], metavar="EPS",
             help="L2 radii in [0,1]-pixel units")
    p.add_argument("--attack-steps", type=int, default=20, metavar="N", help="PGD iterations")
    p.add_argument("--attack-queries", type=int, default=300, metavar="N", help="Square attack queries per image")
    add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def split_device_specs(word: str) -> list:
    """``"ideal,rram:read_noise=0,write_noise=0,pcm"`` -> ``["ideal", "rram:read_noise=0,write_noise=0",
    "pcm"]``: a comma starts a new device spec unless what follows is a ``field=value`` of the last one."""
    specs = []
    for part in (p.strip() for p in str(word).split(",")):
        if not part:
            continue
        if specs and "=" in part and ":" not in part:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs


def deployment_solver(config, net, wire_resistance_ohm, read_stream=0):
    """Predictor of a trained chip: its backend (or the wire solver) behind its read noise.

    ``read_stream`` selects an independent read-noise stream (evaluation repeat index).
    """
    from dataclasses import replace

    from .learning.memristive import DeviceArray, get_device_model
    from .solvers.factory import make_solver

    solver = make_solver(replace(config, wire_resistance_ohm=wire_resistance_ohm))
    devices = DeviceArray(get_device_model(config.device_model), net, config.seed, rank=1000 + read_stream)
    return devices.wrap_solver(solver), devices.model.read_noise


def evaluate_chip(config, net, dataset, wire_resistance_ohm, repeats, batch_size) -> dict:
    """Test accuracy of a trained chip at one wire resistance (mean/std over read draws)."""
    from .training import evaluate

    t0 = time.perf_counter()
    accs, unconverged, worst = [], 0, 0.0
    solver, read_noise = deployment_solver(config, net, wire_resistance_ohm)
    n_rep = repeats if read_noise > 0 else 1
    for k in range(n_rep):
        if k:
            solver, _ = deployment_solver(config, net, wire_resistance_ohm, read_stream=k)
        r = evaluate(net, solver, dataset.x_test, dataset.y_test, batch_size)
        accs.append(r["accuracy"])
        unconverged += r["unconverged"]
        worst = max(worst, r["max_residual_A"])
    return {"wire_resistance_ohm": float(wire_resistance_ohm), "read_noise": read_noise, "repeats": n_rep,
            "accuracies": accs, "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "unconverged": unconverged, "max_residual_A": worst, "eval_seconds": time.perf_counter() - t0}


def train_chip(config, dataset, run_dir: Path, progress, log):
    """Train (or reuse a finished identical run) and return ``(net, metrics)``."""
    from .models.loading import load_network
    from .training import METRICS_NAME, train

    metrics_path = run_dir / METRICS_NAME
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("config") == json.loads(json.dumps(asdict(config))):
            log(f"reusing {run_dir}")
            net, _ = load_network(run_dir / "checkpoint.pt")
            return net, metrics
        raise EpsimError(f"{run_dir} holds a different run; remove it or choose another --runs-dir")
    metrics = train(config, dataset, run_dir, resume=(run_dir / "checkpoint.pt").is_file(),
                    progress=progress, log=log)
    net, _ = load_network(run_dir / "checkpoint.pt")
    return net, metrics


def robustness(config, net, ckpt, dataset, wire_resistance_ohm, args, log) -> dict:
    """A small attack sweep on the deployed predictor (see the module docstring)."""
    from .robustness.adapters import load_model
    from .robustness.evaluate import SweepConfig, run_sweep

    loaded = load_model(ckpt)
    adapter = loaded.adapter
    adapter.solver, _ = deployment_solver(config, net, wire_resistance_ohm, read_stream=500)
    idx = np.random.default_rng([args.seed, 1]).permutation(len(dataset.y_test))[:args.attack_subset]
    cfg = SweepConfig(attacks=("pgd-l2", "square-l2"), eps=tuple(args.attack_eps), paths=("implicit",),
                      losses=("ce",), steps=args.attack_steps, queries=args.attack_queries, seed=args.seed)
    res = run_sweep(adapter, dataset.x_test[idx].astype(np.float64), dataset.y_test[idx], cfg,
                    recorded=None, full_test_set=False, progress=False, log=log)
    rows = [{"attack": r["attack"], "eps": r["eps"], "robust_accuracy": r["robust_accuracy"],
             "clean_accuracy": r["clean_accuracy"], "worst_path": r.get("worst_path"),
             "sanity_only": r.get("sanity_only", False), "sanity_ok": r.get("sanity_ok"),
             "failed_checks": r.get("failed_checks")}
            for r in res["rows"]]
    return {"wire_resistance_ohm": float(wire_resistance_ohm), "n": int(len(idx)),
            "gradients": "implicit, of the nominal circuit (no wires, no read noise): a transfer attack",
            "clean_accuracy": rows[0]["clean_accuracy"] if rows else None,
            "sanity_ok": res.get("sanity_ok"), "failed_checks": res.get("failed_checks"), "rows": rows}


def check_attack_options(args):
    """The --attack-* options of ``--robustness``, checked before any training."""
    for flag, value in (("--attack-subset", args.attack_subset), ("--attack-steps", args.attack_steps),
                        ("--attack-queries", args.attack_queries)):
        if value < 1:
            raise EpsimError(f"{flag} must be at least 1")
    if not args.attack_eps or not all(np.isfinite(e) and e > 0 for e in args.attack_eps):
        raise EpsimError("--attack-eps must be positive numbers (L2 radii in [0, 1]-pixel units)")


def check_attack_eps(eps, image_shape):
    """--attack-eps against the images' L2 range (sqrt(C*H*W)), before any training."""
    from .robustness.evaluate import validate_eps

    try:
        validate_eps(eps, ("pgd-l2",), image_shape)
    except EpsimError as exc:
        raise EpsimError(f"--attack-eps: {exc}") from None


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .data import default_data_dir, load_dataset
    from .learning.memristive import get_device_model
    from .training import preset_config

    if any(r < 0 or not np.isfinite(r) for r in args.wire_resistances + list(args.train_wires)):
        raise EpsimError("wire resistances must be non-negative numbers of ohms")
    if args.read_repeats < 1 or args.eval_batch_size < 1 or args.epochs < 1 or args.train_wires_epochs < 1:
        raise EpsimError("--read-repeats, --eval-batch-size, --epochs and --train-wires-epochs must be at least 1")
    if args.seed < 0:
        raise EpsimError("--seed must be non-negative")
    if args.robustness:
        check_attack_options(args)
    models = {spec: get_device_model(spec) for spec in args.devices}
    lrs = args.device_lrs if args.device_lrs is not None else [args.lr] * len(args.devices)
    if len(lrs) != len(args.devices) or not all(np.isfinite(v) and v > 0 for v in lrs):
        raise EpsimError("--device-lrs needs one positive learning rate per --devices entry")
    out = prepare_out_file(args.out)
    set_threads(args.threads)
    runs_dir = prepare_out_dir(Path(args.runs_dir) if args.runs_dir else out.parent / "device_sweep_runs",
                               "--runs-dir" if args.runs_dir else "--out")
    dataset = load_dataset(args.dataset, args.data_dir or default_data_dir(), train_subset=args.train_subset,
                           test_subset=args.test_subset, seed=args.seed)
    if args.robustness:
        check_attack_eps(args.attack_eps, dataset.image_shape)
    log = print
    progress = not args.no_progress
    result = {"schema": SCHEMA, "created": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "python -m epsim.device_sweep " + " ".join(argv if argv is not None else sys.argv[1:]),
              "dataset": dataset.name, "model": args.model, "seed": args.seed, "epochs": args.epochs,
              "lr": args.lr, "n_test": int(len(dataset.y_test)),
              "devices": {spec: m.to_dict() for spec, m in models.items()}, "runs": []}

    jobs = [(spec if args.device_lrs is None else f"{spec}@lr={lr:g}", spec, 0.0, args.epochs, lr)
            for spec, lr in zip(args.devices, lrs)]
    jobs += [(f"ideal@wire={r:g}", "ideal", float(r), args.train_wires_epochs, args.lr) for r in args.train_wires]
    configs = [preset_config(args.model, dataset=args.dataset, epochs=epochs, lr=lr, seed=args.seed,
                             train_subset=args.train_subset, test_subset=args.test_subset,
                             device_model=spec, wire_resistance_ohm=r_train)
               for _, spec, r_train, epochs, lr in jobs]
    for config in configs:  # every run's settings, before the first one trains
        config.validate()
    for (name, spec, r_train, epochs, lr), config in zip(jobs, configs):
        run_dir = runs_dir / name.replace(":", "_").replace(",", "_").replace("=", "-")
        log(f"== {name}: training {epochs} epochs in {run_dir}")
        net, metrics = train_chip(config, dataset, run_dir, progress, log)
        entry = {"name": name, "device_model": spec, "train_wire_resistance_ohm": r_train, "epochs": epochs,
                 "lr": lr, "run_dir": str(run_dir), "test_accuracy": metrics["test_accuracy"],
                 "train_accuracy": metrics["train_accuracy"], "wall_seconds": metrics["wall_seconds"],
                 "history": metrics["history"], "eval": [], "robustness": None}
        resistances = [r_train] if r_train > 0 else args.wire_resistances
        for r in resistances:
            ev = evaluate_chip(config, net, dataset, r, args.read_repeats, args.eval_batch_size)
            log(f"   wire {r:g} ohm: accuracy {ev['accuracy_mean']:.4f} +- {ev['accuracy_std']:.4f} "
                f"({ev['repeats']} reads, {ev['unconverged']} unconverged, {ev['eval_seconds']:.1f} s)")
            entry["eval"].append(ev)
        if args.robustness:
            r_att = max(resistances) if (spec == "ideal" and r_train == 0) else r_train
            entry["robustness"] = robustness(config, net, run_dir / "checkpoint.pt", dataset, r_att, args, log)
        result["runs"].append(entry)
        write_json(out, result)  # partial results survive an interruption
    log(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run(main))
