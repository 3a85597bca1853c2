"""python -m epsim.train: train an EP network compiled to a resistive circuit.

With no options it trains the circuit CNN on scikit-learn's 8x8 digits (no download)
with the numba nodal-analysis solver and prints the held-out test accuracy.
"""
from __future__ import annotations

import sys

from .cli import ArgumentParser, HelpFormatter, explicit_options, prepare_out_dir, run, set_command_environment

set_command_environment()  # before numpy loads

from .data import DATASETS, default_data_dir, load_dataset  # noqa: E402
from .errors import EpsimError  # noqa: E402
from .models.connections import INITS  # noqa: E402
from .models.registry import CIRCUIT_MODELS  # noqa: E402
from .solvers import BACKENDS  # noqa: E402
from .torch_training import TORCH_MODELS, TORCH_OPTIONS, add_torch_arguments, torch_cli_main  # noqa: E402
from .training import CHECKPOINT_NAME, LR_SCHEDULES, TrainConfig, preset_config, train  # noqa: E402


def build_parser() -> ArgumentParser:
    d = TrainConfig()
    p = ArgumentParser(
        prog="python -m epsim.train",
        description="Train an Equilibrium-Propagation network built as a resistive-crossbar "
                    "circuit (conductances, clamp diodes, sources) with centered EP and local "
                    "conductance updates. Writes OUT/metrics.json and OUT/checkpoint.pt.",
        formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset, choices=DATASETS, help="dataset to train on")
    g.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default: $EPSIM_DATA_DIR or ./data)")
    g.add_argument("--download", action="store_true", help="download missing dataset files (checksummed)")
    g.add_argument("--train-subset", type=int, default=None, metavar="N", help="train on N random training images")
    g.add_argument("--test-subset", type=int, default=None, metavar="N", help="test on N random test images")
    g = p.add_argument_group("model and solver")
    g.add_argument("--model", default=d.model, choices=CIRCUIT_MODELS + TORCH_MODELS,
                   help="circuit architecture, or a torch model (see the GPU models group). "
                        "drn-xs, drn-1h, drn-2h, drn-3h, drn-xl: the published deep resistive "
                        "networks (Scellier 2024) with their training settings as defaults "
                        "(input gain, beta, per-layer learning rates, batch 4, plain SGD, lr x0.99 "
                        "per epoch, epochs); cnn-deep, cnn-paper: the seed's four-stage EP-CNN "
                        "as an amplified circuit (16-32-64-64 / 128-256-512-512 channels); "
                        "options given explicitly override them")
    g.add_argument("--arch", default=None, metavar="SPEC",
                   help="circuit architecture from input to output, e.g. "
                        "'conv:16:3,conv:32:3:2,dense:10' or 'dense:1024,dense:1024,dense:10': "
                        "conv:C:K[:S] (tied conv, C channels, KxK kernel, stride S, no padding), "
                        "dense:N; the last entry is the output layer, dense:<classes> "
                        "(default: the --model's)")
    g.add_argument("--backend", default=d.backend, choices=BACKENDS, help="equilibrium solver")
    g.add_argument("--diode", default=d.diode, choices=("ideal", "shockley"), help="clamp diode model")
    g.add_argument("--input-gain", type=float, default=d.input_gain_V, metavar="V",
                   help="input source voltage for a pixel of value 1, applied as +V and -V "
                        "(default: per model and image size, e.g. 16 V for the digits cnn/mlp, "
                        "64 V for the MNIST mlp, 480 V for drn-1h, 16 V for an --arch circuit)")
    g.add_argument("--amp-gain", type=float, nargs="+", default=None, metavar="A",
                   help="bidirectional amplifier gain between consecutive free layers: one "
                        "value for every boundary or one per boundary (input side first); 1 = "
                        "no amplifier (default: none)")
    g.add_argument("--g-max", type=float, default=d.g_max_S, metavar="S", help="largest conductance")
    g.add_argument("--g-min", type=float, default=d.g_min_S, metavar="S", help="smallest conductance")
    g.add_argument("--tol", type=float, default=d.tol_A, metavar="A",
                   help="KCL residual tolerance of the free phase (and of prediction)")
    g.add_argument("--nudge-rtol", type=float, default=d.nudge_rtol, metavar="R",
                   help="the nudged phases stop when every layer's remaining voltage error is "
                        "below R times that layer's response to the nudge (numba and torch "
                        "backends; spice, --wire-resistance > 0 and R = 0 stop them on --tol)")
    g.add_argument("--max-iter", type=int, default=d.max_iter, help="max solver sweeps per phase")
    g.add_argument("--device-model", default=d.device_model, metavar="NAME",
                   help="conductance device model: ideal, rram or pcm (range, levels, nonlinear "
                        "asymmetric pulse response, write/read noise, device variation; "
                        "NAME:field=value,... overrides a field, e.g. rram:read_noise=0)")
    g.add_argument("--wire-resistance", type=float, default=d.wire_resistance_ohm, metavar="OHMS",
                   help="resistance of each crossbar row/column wire segment; > 0 solves the "
                        "circuit with its wire nodes by exact nodal analysis (slower)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate of conductances (in units of g_unit)")
    g.add_argument("--lr-bias", type=float, default=None, help="learning rate of bias currents (default: --lr)")
    g.add_argument("--lr-layers", type=float, nargs="+", default=None, metavar="M",
                   help="per-layer multipliers of --lr and --lr-bias, one per layer of conductances "
                        "(input side first), e.g. 3 1 for the cnn on CIFAR-10 (default: all 1)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="heavy-ball momentum (0: plain SGD)")
    g.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                   help="per-epoch learning-rate schedule: cosine decay to 0 over --epochs, "
                        "constant, or exponential (x --lr-decay per epoch)")
    g.add_argument("--lr-decay", type=float, default=d.lr_decay,
                   help="per-epoch factor of the exponential schedule")
    g.add_argument("--init", default=d.init, choices=INITS,
                   help="initial conductances: uniform on [0, 2s) or clamped-uniform (uniform on "
                        "(-s, s) clamped at 0), s = --weight-gain / sqrt(fan-in)")
    g.add_argument("--weight-gain", type=float, default=d.weight_gain,
                   help="scale of the initial conductances (in units of g_unit)")
    g.add_argument("--beta", type=float, default=d.beta,
                   help="nudging strength: nudge conductance beta*g_unit to the target, phases +beta and -beta")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, metavar="DIR", help="write metrics.json and checkpoint.pt here")
    g.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    g.add_argument("--checkpoint-interval", type=float, default=60.0, metavar="S",
                   help="seconds between mid-epoch checkpoints (one is also written after every epoch)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_torch_arguments(p)
    return p


# TrainConfig field of each circuit option whose name differs from the field's
CONFIG_FIELDS = {"input_gain": "input_gain_V", "amp_gain": "amp_gain", "g_max": "g_max_S", "g_min": "g_min_S", "tol": "tol_A",
                 "device_model": "device_model", "wire_resistance": "wire_resistance_ohm"}
CIRCUIT_CONFIG_OPTIONS = ("dataset", "arch", "backend", "diode", "input_gain", "amp_gain", "g_max", "g_min", "tol",
                          "nudge_rtol", "max_iter", "device_model", "wire_resistance", "epochs",
                          "batch_size", "lr", "lr_bias", "lr_layers", "momentum", "lr_schedule",
                          "lr_decay", "init", "weight_gain", "beta", "seed", "train_subset",
                          "test_subset")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.model in TORCH_MODELS:
        torch_cli_main(argv, build_parser)
        return
    given = explicit_options(build_parser, argv)
    torch_only = sorted(given & TORCH_OPTIONS)
    if torch_only:
        raise EpsimError(f"option(s) {', '.join('--' + k.replace('_', '-') for k in torch_only)} apply to "
                         f"the torch models ({', '.join(TORCH_MODELS)}) only, not the circuit --model "
                         f"{args.model}" + ("; stop a circuit run with Ctrl-C and continue it with --resume"
                                            if "time_limit" in torch_only else ""))
    if args.nudge_rtol == 0:
        args.nudge_rtol = None  # 0: the nudged phases stop on --tol
    config = preset_config(args.model, **{CONFIG_FIELDS.get(k, k): getattr(args, k)
                                          for k in CIRCUIT_CONFIG_OPTIONS if k in given})
    config.validate()
    if args.resume and args.out is None:
        raise EpsimError("--resume needs --out DIR (the folder of the run to continue)")
    if args.out is not None:
        check_run_folder(args.out, args.resume)
    dataset = load_dataset(args.dataset, args.data_dir or default_data_dir(), download=args.download,
                           train_subset=args.train_subset, test_subset=args.test_subset, seed=args.seed)
    net_name = args.model if config.arch is None else f"--arch {config.arch}"
    print(f"training circuit {net_name} on {dataset.name} ({len(dataset.y_train)} train / "
          f"{len(dataset.y_test)} test) with backend {config.backend}, {config.epochs} epochs")
    metrics = train(config, dataset, args.out, resume=args.resume, progress=not args.no_progress,
                    checkpoint_interval_s=args.checkpoint_interval)
    print(f"test accuracy: {metrics['test_accuracy']:.4f} ({metrics['n_test']} images), "
          f"train accuracy: {metrics['train_accuracy']:.4f}, wall time {metrics['wall_seconds']:.1f} s")
    if metrics.get("test_unconverged"):
        print(f"warning: {metrics['test_unconverged']} test equilibria did not reach the tolerance",
              file=sys.stderr)
    if args.out:
        print(f"wrote {args.out}/metrics.json and {args.out}/checkpoint.pt")


def check_run_folder(out, resume: bool):
    """Before any compute: ``out`` can hold the run's files, and holds no other run unless
    ``resume`` (raises :class:`EpsimError` otherwise)."""
    out = prepare_out_dir(out)
    if (out / CHECKPOINT_NAME).exists() and not resume:
        raise EpsimError(f"{out} already holds a run; pass --resume to continue it or choose another --out")


if __name__ == "__main__":
    sys.exit(run(main))
