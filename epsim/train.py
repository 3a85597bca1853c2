"""python -m epsim.train: train an EP network compiled to a resistive circuit, or a software model.

With no options it trains the circuit CNN on scikit-learn's 8x8 digits (no download)
with the numba nodal-analysis solver and prints the held-out test accuracy. ``--model``
ep-cnn, bp-cnn, adv-cnn or vit trains a torch model instead (:mod:`epsim.training.software`).
Every option is defined here; the trainers in :mod:`epsim.training` take config objects.
"""
from __future__ import annotations

import os
import sys

from .cli import (ArgumentParser, add_dataset, add_device, add_list, add_test_subset, add_threads, explicit_options,
                  prepare_out_dir, run, set_command_environment, set_threads)

set_command_environment()  # before numpy loads

from .data import DATASETS, default_data_dir, load_dataset  # noqa: E402
from .errors import EpsimError  # noqa: E402
from .models.connections import INITS  # noqa: E402
from .models.ep_cnn import COSTS, SOLVERS  # noqa: E402
from .models.loading import TORCH_MODELS  # noqa: E402
from .models.registry import CIRCUIT_MODELS, preset_settings  # noqa: E402
from .models.resistive import UNIT_POLARITIES  # noqa: E402
from .solvers import BACKENDS  # noqa: E402
from .learning.optim import OPTIMIZERS  # noqa: E402
from .training import CHECKPOINT_NAME, LR_SCHEDULES, TrainConfig, preset_config, train  # noqa: E402
from .training.software import PRESET_NAMES, TORCH_OPTIMIZERS, resolve_config, train_torch  # noqa: E402

TORCH_ONLY_OPTIMIZERS = tuple(o for o in TORCH_OPTIMIZERS if o not in OPTIMIZERS)

# Which models an option applies to (argparse destinations): SHARED_OPTIONS mean the same for
# circuit and torch models, TORCH_OPTIONS apply to the torch models only, every other option
# to the circuit models only.
SHARED_OPTIONS = frozenset({
    "model", "backend", "dataset", "data_dir", "download", "train_subset", "test_subset", "epochs",
    "batch_size", "lr", "momentum", "optimizer", "lr_schedule", "beta", "seed", "threads", "out", "resume",
    "checkpoint_interval", "time_limit", "no_progress", "cost"})
TORCH_OPTIONS = frozenset({
    "preset", "device", "channels", "paddings", "lrs", "weight_decay", "t1", "t2", "solver", "ep_tol", "ep_nudge_tol", "ep_omega",
    "init_scale", "init_gains", "input_std_scale", "adv_norm", "adv_eps", "adv_steps", "adv_step_size", "embed_dim",
    "depth", "heads", "no_augment", "stop_at_accuracy", "val_subset", "val_every"})
TORCH_GROUP = "torch models (--model ep-cnn | bp-cnn | adv-cnn | vit, --backend torch)"
_PRESET = " (default: from the preset)"


def build_parser() -> ArgumentParser:
    d = TrainConfig()
    p = ArgumentParser(
        prog="python -m epsim.train",
        description="Train an Equilibrium-Propagation network built as a resistive-crossbar "
                    "circuit (conductances, clamp diodes, sources) with centered EP and local "
                    "conductance updates, or a software model with torch (--model ep-cnn, bp-cnn, "
                    "adv-cnn, vit). Writes OUT/metrics.json and OUT/checkpoint.pt. List options "
                    "take values separated by spaces, commas, or both.")
    g = p.add_argument_group("data")
    add_dataset(g, DATASETS, f"dataset to train on (default: {d.dataset}; a torch model without --dataset "
                             "trains on its --preset's)", default=d.dataset)
    g.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the dataset files (default: $EPSIM_DATA_DIR or ./data)")
    g.add_argument("--download", action="store_true", help="download missing dataset files (checksummed)")
    g.add_argument("--train-subset", type=int, default=None, metavar="N",
                   help="train on N random training images (a seeded subset; default: all)")
    add_test_subset(g, "test on N random test images (a seeded subset; default: all)")
    g.add_argument("--augment-shift", type=int, default=d.augment_shift, metavar="PIXELS",
                   help="circuit models: translate every training image by a random whole-pixel offset of "
                        "up to PIXELS along each axis, edge pixels repeated, drawn anew each epoch from "
                        "--seed (default: 0, the images as given)")
    g.add_argument("--augment-flip", action="store_true", default=d.augment_flip,
                   help="circuit models: mirror every training image left-right with probability 1/2, drawn "
                        "anew each epoch from --seed (natural images such as CIFAR-10; not digits)")
    _add_circuit_model_options(p.add_argument_group("model and solver"), d)
    _add_training_options(p.add_argument_group("training"), d)
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, metavar="DIR", help="write metrics.json and checkpoint.pt here")
    g.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    g.add_argument("--checkpoint-interval", type=float, default=60.0, metavar="S",
                   help="seconds between mid-epoch checkpoints (one is also written after every epoch)")
    g.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                   help="stop training after the batch that reaches this many minutes of wall time (over "
                        "every session of the run), evaluate, checkpoint and write metrics; --resume with a "
                        "larger limit continues it")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_torch_options(p.add_argument_group(
        TORCH_GROUP,
        "Software EP-CNN and baselines trained with torch on CPU or CUDA. A preset sets the "
        "architecture and hyper-parameters; --dataset, --epochs, --batch-size, --lr, --momentum, "
        "--lr-schedule, --beta, --seed given explicitly override it."))
    return p


def _add_circuit_model_options(g, d: TrainConfig) -> None:
    g.add_argument("--model", default=d.model, choices=CIRCUIT_MODELS + TORCH_MODELS,
                   help="circuit architecture, or a torch model (see the torch models group). "
                        "drn-xs, drn-1h, drn-2h, drn-3h, drn-xl: the published deep resistive "
                        "networks (Scellier 2024) with their training settings as defaults "
                        "(input gain, beta, per-layer learning rates, batch 4, plain SGD, lr x0.99 "
                        "per epoch, epochs); cnn-deep, cnn-paper: the seed's four-stage EP-CNN "
                        "as an amplified circuit (16-32-64-64 / 128-256-512-512 channels); "
                        "options given explicitly override them")
    g.add_argument("--arch", default=None, metavar="SPEC",
                   help="circuit architecture from input to output, e.g. "
                        "'conv:16:3,conv:32:3:2,dense:10' or 'dense:1024,dense:1024,dense:10': "
                        "conv:C:K[:S[:P]] (tied conv, C channels, KxK kernel, stride S, zero padding P < K: "
                        "conductances to the 0 V rail at the border), "
                        "dense:N; the last entry is the output layer, dense:<classes> "
                        "(default: the --model's)")
    g.add_argument("--backend", default=d.backend, choices=BACKENDS,
                   help="equilibrium solver of the circuit models (torch models: torch)")
    g.add_argument("--diode", default=d.diode, choices=("ideal", "shockley"), help="clamp diode model")
    g.add_argument("--rail-offset", type=float, default=d.rail_offset_V, metavar="V",
                   help="with --diode shockley: clamp rails at +V (excitatory units) and -V "
                        "(inhibitory) instead of 0 V, cancelling the diodes' forward drop "
                        f"(default: {d.rail_offset_V:g})")
    g.add_argument("--input-gain", type=float, default=d.input_gain_V, metavar="V",
                   help="input source voltage for a pixel of value 1, applied as +V and -V "
                        "(default: per model and image size, e.g. 16 V for the digits cnn/mlp, "
                        "64 V for the MNIST mlp, 480 V for drn-1h, 16 V for an --arch circuit)")
    g.add_argument("--input-center", type=float, default=d.input_center, metavar="PIXEL",
                   help="pixel value whose input sources sit at 0 V: a pixel x drives +gain*(x - PIXEL) "
                        "and -gain*(x - PIXEL); 0.5 centres natural images such as CIFAR-10 "
                        f"(default: {d.input_center:g}, black at 0 V)")
    add_list(g, "--amp-gain", item=float, default=None, metavar="A",
             help="bidirectional amplifier gain between consecutive free layers: one "
                  "value for every boundary or one per boundary (input side first); 1 = "
                  "no amplifier (default: none)")
    g.add_argument("--leak-ratio", type=float, default=d.leak_ratio, metavar="R",
                   help="give every free node a fixed conductance to 0 V of R times its initial "
                        "conductance to the crossbar below (not trained): nodes settle nearer a weighted "
                        "sum of the layer below than its average. With --amp-gain 1+R and the input "
                        "gain times 1+R the circuit starts close to what R = 0 computes "
                        f"(default: {d.leak_ratio:g}, no leak)")
    g.add_argument("--cost", default=None, choices=COSTS,
                   help="the cost EP descends. Circuit models: squared-error = a conductance from each "
                        "output to a source at its target voltage; cross-entropy = a controlled "
                        "current source per output, beta*(y - softmax(v / 1 V)). ep-cnn: cross-entropy = "
                        "linear readout outside the energy (Laborieux et al.); squared-error = a linear "
                        "output layer inside the energy (Scellier et al.'s DCHN)"
                        + " (default: squared-error; ep-cnn: from the preset)")
    g.add_argument("--differential", action="store_true", default=d.differential,
                   help="present every hidden layer to the crossbar above it as +v and -v (an "
                        "inverting and a non-inverting amplifier per node, as the input sources), "
                        "so each unit reaches the next layer with either sign; that crossbar has "
                        "twice the inputs (default: off, +v only)")
    g.add_argument("--unit-polarity", default=d.unit_polarity, choices=UNIT_POLARITIES,
                   help="hidden units: half excitatory (v >= 0) and half inhibitory (v <= 0), or all "
                        "excitatory (with --differential, every unit still reaches the next layer "
                        "with both signs)")
    g.add_argument("--g-max", type=float, default=d.g_max_S, metavar="S", help="largest conductance (siemens)")
    g.add_argument("--g-min", type=float, default=d.g_min_S, metavar="S", help="smallest conductance (siemens)")
    g.add_argument("--tol", type=float, default=d.tol_A, metavar="A",
                   help="KCL residual tolerance of the free phase (and of prediction)")
    g.add_argument("--nudge-rtol", type=float, default=d.nudge_rtol, metavar="R",
                   help="the nudged phases stop when every layer's remaining voltage error is "
                        "below R times that layer's response to the nudge (numba and torch "
                        "backends; spice, --wire-resistance > 0 and R = 0 stop them on --tol)")
    g.add_argument("--max-iter", type=int, default=d.max_iter, metavar="N", help="max solver sweeps per phase")
    g.add_argument("--device-model", default=d.device_model, metavar="NAME",
                   help="conductance device model: ideal, rram or pcm (range, levels, nonlinear "
                        "asymmetric pulse response, write/read noise, device variation; "
                        "NAME:field=value,... overrides a field, e.g. rram:read_noise=0)")
    g.add_argument("--wire-resistance", type=float, default=d.wire_resistance_ohm, metavar="OHMS",
                   help="resistance of each crossbar row/column wire segment; > 0 solves the "
                        "circuit with its wire nodes by exact nodal analysis (slower)")


def _add_training_options(g, d: TrainConfig) -> None:
    g.add_argument("--epochs", type=int, default=d.epochs, metavar="N",
                   help=f"passes over the training set (default: {d.epochs}, or the --model's or --preset's)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N",
                   help=f"images per update (default: {d.batch_size}, or the --model's or --preset's)")
    g.add_argument("--lr", type=float, default=d.lr,
                   help="learning rate: of conductances, in units of g_unit (circuit models), or of "
                        "every layer (torch models)")
    g.add_argument("--lr-bias", type=float, default=None, help="learning rate of bias currents (default: --lr)")
    add_list(g, "--lr-layers", item=float, default=None, metavar="M",
             help="per-layer multipliers of --lr and --lr-bias, one per layer of conductances "
                  "(input side first), e.g. 3 1 for the cnn on CIFAR-10; 0 keeps a layer as it is "
                  "(default: all 1)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="heavy-ball momentum (0: plain SGD)")
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS + TORCH_ONLY_OPTIMIZERS,
                   help="update rule: sgd (heavy-ball, --momentum) or adam (running averages of the "
                        "gradient and its square, 0.9 / 0.999; each parameter moves by about --lr per "
                        "step); circuit models apply it per device to the EP gradient of the conductances "
                        "and biases; torch models also take adamw (Adam with decoupled --weight-decay) "
                        "(default: sgd for circuit models, the --preset's for torch models)")
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
    g.add_argument("--init-from", default=None, metavar="CKPT",
                   help="circuit models: start from the conductances and biases of this circuit "
                        "checkpoint (the same architecture, input gain, input center and amplifier gains; "
                        "normalised values as saved, clipped to this "
                        "run's conductance range, so a device window that excludes them resets them), "
                        "e.g. to fine-tune a trained circuit with another --diode, --optimizer or "
                        "schedule; the update rule's state, device states and epochs start fresh, and "
                        "--resume continues this run, not CKPT's (default: draw them per --init)")
    g.add_argument("--beta", type=float, default=d.beta,
                   help="nudging strength: nudge conductance beta*g_unit to the target, phases +beta and -beta")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the initial parameters, the data subsets, the batch order and augmentation")
    add_threads(g, aliases=("--torch-threads",))


def _add_torch_options(g) -> None:
    g.add_argument("--preset", default=None, choices=PRESET_NAMES,
                   help="cifar10-paper / cifar100-paper: the seed paper's settings; cifar10-small: "
                        "an eighth of the width, sized for a 2-core CPU; cifar10-dchn: the same widths "
                        "with Scellier et al. 2023's DCHN recipe (output layer in the energy, odd/even "
                        "sweeps 60/20, centred EP); cifar10-hour: cifar10-dchn over-relaxed (--ep-omega 1.4) "
                        "with Adam, 8 epochs, sized for an hour of torchrun on two cores; digits, mnist: sized for their "
                        "images (default: the --dataset's, else cifar10-small)")
    add_device(g, "torch device of the torch models")
    add_list(g, "--channels", item=int, default=None, metavar="C", help="conv channels per layer" + _PRESET)
    add_list(g, "--paddings", item=int, default=None, metavar="P", help="conv zero padding per layer" + _PRESET)
    add_list(g, "--lrs", item=float, default=None, metavar="LR",
             help="ep-cnn: learning rate per synapse (conv layers, then the readout)" + _PRESET)
    g.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay" + _PRESET)
    g.add_argument("--t1", type=int, default=None, metavar="N", help="ep-cnn: max free-phase steps" + _PRESET)
    g.add_argument("--t2", type=int, default=None, metavar="N",
                   help="ep-cnn: max steps of each nudged phase" + _PRESET)
    g.add_argument("--solver", default=None, choices=SOLVERS,
                   help="ep-cnn: sync = the published synchronous loop (samples stop individually "
                        "once converged to --ep-tol); async = odd/even sweeps (a different fixed point)" + _PRESET)
    g.add_argument("--ep-tol", type=float, default=None,
                   help="ep-cnn: a sample's relaxation stops when no unit moves more than this "
                        "in a step (0: never before T1/T2)" + _PRESET)
    g.add_argument("--ep-nudge-tol", type=float, default=None,
                   help="ep-cnn: the same stop for the nudged phases (a preset without one uses --ep-tol); "
                        "smaller keeps the lower layers' small response to the nudge" + _PRESET)
    g.add_argument("--ep-omega", type=float, default=None, metavar="OMEGA",
                   help="ep-cnn, --solver async: relaxation factor in [1, 2); each sweep moves a layer "
                        "OMEGA times the way to its update, clipped to [0, 1] (projected over-relaxation: "
                        "the same fixed points, reached in fewer sweeps; 1 = plain odd/even)" + _PRESET)
    g.add_argument("--init-scale", type=float, default=None,
                   help="ep-cnn: multiply the default initial weights and biases" + _PRESET)
    add_list(g, "--init-gains", item=float, default=None, metavar="G",
             help="ep-cnn: per synapse (conv layers, then the readout), initial weights drawn within "
                  "2*G times PyTorch's default bounds" + _PRESET)
    g.add_argument("--input-std-scale", type=float, default=None,
                   help="ep-cnn: inputs are (x - mean) / (this * std); the paper uses 3" + _PRESET)
    g.add_argument("--adv-norm", default=None, choices=("l2", "linf"), help="adv-cnn: PGD norm" + _PRESET)
    g.add_argument("--adv-eps", type=float, default=None,
                   help="adv-cnn: PGD radius in [0,1] pixels (e.g. 0.5 or 0.0314)" + _PRESET)
    g.add_argument("--adv-steps", type=int, default=None, metavar="N", help="adv-cnn: PGD steps" + _PRESET)
    g.add_argument("--adv-step-size", type=float, default=None, help="adv-cnn: PGD step (default: 2.5*eps/steps)")
    g.add_argument("--embed-dim", type=int, default=None, metavar="N", help="vit: token width" + _PRESET)
    g.add_argument("--depth", type=int, default=None, metavar="N", help="vit: encoder layers" + _PRESET)
    g.add_argument("--heads", type=int, default=None, metavar="N", help="vit: attention heads" + _PRESET)
    g.add_argument("--no-augment", action="store_true",
                   help="no random crop + flip (applied by default on CIFAR images only)")
    g.add_argument("--stop-at-accuracy", type=float, default=None, metavar="FRACTION",
                   help="stop training once the accuracy on --val-subset held-out training images reaches "
                        "this fraction (e.g. 0.5), to compare models at matched clean accuracy; the test "
                        "set is not looked at (default: train every epoch)")
    g.add_argument("--val-subset", type=int, default=None, metavar="N",
                   help="with --stop-at-accuracy: training images held out for the check (default: 2000)")
    g.add_argument("--val-every", type=int, default=None, metavar="BATCHES",
                   help="with --stop-at-accuracy: batches between checks, and at every epoch's end (default: 50)")


# TrainConfig field of each circuit option whose name differs from the field's
CONFIG_FIELDS = {"input_gain": "input_gain_V", "rail_offset": "rail_offset_V", "amp_gain": "amp_gain", "g_max": "g_max_S", "g_min": "g_min_S", "tol": "tol_A",
                 "device_model": "device_model", "wire_resistance": "wire_resistance_ohm"}
CIRCUIT_CONFIG_OPTIONS = ("dataset", "arch", "backend", "diode", "rail_offset", "input_gain", "input_center", "amp_gain",
                          "leak_ratio", "cost", "differential", "unit_polarity", "g_max", "g_min", "tol",
                          "nudge_rtol", "max_iter", "device_model", "wire_resistance", "epochs",
                          "batch_size", "lr", "lr_bias", "lr_layers", "momentum", "optimizer", "lr_schedule",
                          "lr_decay", "init", "init_from", "weight_gain", "beta", "seed", "train_subset",
                          "test_subset", "augment_shift", "augment_flip")
# TorchTrainConfig field of each torch option whose name differs from the field's
TORCH_CONFIG_FIELDS = {"lr_schedule": "schedule", "ep_tol": "tol", "ep_nudge_tol": "nudge_tol", "ep_omega": "omega"}
TORCH_CONFIG_OPTIONS = ("dataset", "epochs", "batch_size", "lr", "lrs", "momentum", "optimizer", "weight_decay",
                        "lr_schedule",
                        "channels", "paddings", "t1", "t2", "beta", "solver", "ep_tol", "ep_nudge_tol", "ep_omega",
                        "init_scale", "init_gains", "cost", "input_std_scale", "adv_norm", "adv_eps", "adv_steps", "adv_step_size", "embed_dim",
                        "depth", "heads", "stop_at_accuracy", "val_subset", "val_every")


def main(argv=None):
    args = build_parser().parse_args(argv)
    given = explicit_options(build_parser, argv)
    if args.model in TORCH_MODELS:
        return train_software_model(args, given)
    return train_circuit_model(args, given)


def train_circuit_model(args, given: set) -> dict:
    """``python -m epsim.train`` for a circuit ``--model``; ``given``: the options on the command line."""
    torch_only = sorted(given & TORCH_OPTIONS)
    if torch_only:
        raise EpsimError(f"option(s) {', '.join('--' + k.replace('_', '-') for k in torch_only)} apply to "
                         f"the torch models ({', '.join(TORCH_MODELS)}) only, not the circuit --model "
                         f"{args.model}")
    if args.optimizer in TORCH_ONLY_OPTIMIZERS:
        raise EpsimError(f"--optimizer {args.optimizer} applies to the torch models only; circuit models "
                         f"take {' or '.join(OPTIMIZERS)}")
    if args.nudge_rtol == 0:
        args.nudge_rtol = None  # 0: the nudged phases stop on --tol
    config = preset_config(args.model, **{CONFIG_FIELDS.get(k, k): getattr(args, k)
                                          for k in CIRCUIT_CONFIG_OPTIONS if k in given})
    config.validate()
    config.validate_shapes(from_preset=set(preset_settings(args.model)) - {CONFIG_FIELDS.get(k, k) for k in given})
    check_momentum(config.optimizer, given)
    if "lr_decay" in given and config.lr_schedule != "exponential":
        raise EpsimError(f"--lr-decay is the per-epoch factor of --lr-schedule exponential; this run's schedule "
                         f"is {config.lr_schedule}")
    check_time_limit(args.time_limit)
    check_run_options(args)
    dataset = load_dataset(args.dataset, args.data_dir or default_data_dir(), download=args.download,
                           train_subset=args.train_subset, test_subset=args.test_subset, seed=args.seed)
    net_name = args.model if config.arch is None else f"--arch {config.arch}"
    report(f"training circuit {net_name} on {dataset.name} ({len(dataset.y_train)} train / "
          f"{len(dataset.y_test)} test) with backend {config.backend}, {config.epochs} epochs")
    metrics = train(config, dataset, args.out, resume=args.resume, progress=not args.no_progress,
                    checkpoint_interval_s=args.checkpoint_interval,
                    time_limit_s=None if args.time_limit is None else 60.0 * args.time_limit)
    report(f"test accuracy: {metrics['test_accuracy']:.4f} ({metrics['n_test']} images), "
          f"train accuracy: {metrics['train_accuracy']:.4f}, wall time {metrics['wall_seconds']:.1f} s")
    if metrics.get("test_unconverged"):
        report(f"warning: {metrics['test_unconverged']} test equilibria did not reach the tolerance",
              file=sys.stderr)
    _print_written(args.out)
    return metrics


def train_software_model(args, given: set) -> dict:
    """``python -m epsim.train`` for a torch ``--model``; ``given``: the options on the command line."""
    if "backend" in given and args.backend != "torch":
        raise EpsimError(f"--model {args.model} runs on --backend torch only (got --backend {args.backend})")
    circuit_only = sorted(given - SHARED_OPTIONS - TORCH_OPTIONS)
    if circuit_only:
        raise EpsimError(f"option(s) {', '.join('--' + k.replace('_', '-') for k in circuit_only)} "
                         f"apply to circuit models only, not --model {args.model}")
    config = resolve_config(
        args.model, args.preset, augment=False if args.no_augment else None, seed=args.seed,
        train_subset=args.train_subset, test_subset=args.test_subset,
        **{TORCH_CONFIG_FIELDS.get(k, k): getattr(args, k) for k in TORCH_CONFIG_OPTIONS if k in given})
    check_momentum(config.optimizer, given)
    if args.model == "vit" and (config.embed_dim % config.heads):
        raise EpsimError(f"--embed-dim {config.embed_dim} must be a multiple of --heads {config.heads}")
    check_time_limit(args.time_limit)
    if ({"val_subset", "val_every"} & given) and args.stop_at_accuracy is None:
        raise EpsimError("--val-subset and --val-every apply with --stop-at-accuracy only")
    check_run_options(args)
    from .models.loading import pick_device

    device = pick_device(args.device)
    dataset = load_dataset(config.dataset, args.data_dir or default_data_dir(), download=args.download,
                           train_subset=args.train_subset, test_subset=args.test_subset, seed=args.seed)
    report(f"training {config.model} (preset {config.preset}) on {dataset.name} ({len(dataset.y_train)} train / "
          f"{len(dataset.y_test)} test) with backend torch on {device}, {config.epochs} epochs")
    metrics = train_torch(config, dataset, args.out, resume=args.resume, device=args.device,
                          progress=not args.no_progress, checkpoint_interval_s=args.checkpoint_interval,
                          time_limit_s=None if args.time_limit is None else 60.0 * args.time_limit)
    report(f"test accuracy: {metrics['test_accuracy']:.4f} ({metrics['n_test']} images), "
          f"train accuracy: {metrics['train_accuracy']:.4f}, wall time {metrics['wall_seconds']:.1f} s")
    if metrics.get("test_unconverged"):
        report(f"note: {metrics['test_unconverged']} test free phases stopped at T1 before reaching the tolerance")
    _print_written(args.out)
    return metrics


def check_momentum(optimizer: str, given: set) -> None:
    """``--momentum`` is the heavy-ball term of sgd: refuse it beside an adaptive rule."""
    if optimizer != "sgd" and "momentum" in given:
        raise EpsimError(f"--momentum applies to --optimizer sgd, not {optimizer}")


def check_time_limit(minutes) -> None:
    """``--time-limit`` is a positive, finite number of minutes (or not given)."""
    if minutes is not None and not 0 < minutes < float("inf"):
        raise EpsimError("--time-limit must be a positive number of minutes")


def check_run_options(args) -> None:
    """Before any compute: ``--resume`` has an ``--out``, ``--out`` can hold the run's files and
    holds no other run unless resuming; then apply ``--threads``."""
    if args.resume and args.out is None:
        raise EpsimError("--resume needs --out DIR (the folder of the run to continue)")
    if args.out is not None:
        out = prepare_out_dir(args.out)
        if (out / CHECKPOINT_NAME).exists() and not args.resume:
            raise EpsimError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    set_threads(args.threads)


def _print_written(out) -> None:
    if out:
        report(f"wrote {out}/metrics.json and {out}/checkpoint.pt")


def report(*args, **kwargs) -> None:
    """``print`` in a single process and on rank 0 of a torchrun job (the other ranks train
    silently)."""
    if os.environ.get("RANK", "0") == "0":
        print(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(run(main))
