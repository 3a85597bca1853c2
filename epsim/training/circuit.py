"""The circuit trainer: batches, EP phases, conductance updates; run bookkeeping in :mod:`.run`.

Determinism and resumption (:mod:`.run`): the order of the training set in epoch ``e`` is
the permutation drawn from ``seed`` and ``e``, and a checkpoint holds the parameters, the
optimizer's momentum, the device states, the position (epoch, next batch) and the running
sums of the epoch in progress. Resuming from any checkpoint therefore replays exactly the
batches an uninterrupted run would have seen, with the same results.

Checkpoint keys: ``kind`` ("circuit"), ``model`` (``ResistiveNetwork.describe()``, which
holds ``g_unit_S``), ``w``/``b`` (normalised conductances ``G/g_unit`` and bias currents
``I/g_unit`` in V, stored exactly as trained), ``optimizer``, ``config``, ``epoch``,
``batch``, ``tally``, ``history``, ``wall_seconds``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..checkpoint import load_checkpoint
from ..circuit.diodes import DiodeModel
from ..distributed import DataParallel
from ..errors import EpsimError
from ..learning.ep import centered_ep, free_phase_counts
from ..learning.low_rank import grad_is_zero, grad_rms
from ..learning.memristive import DeviceArray, get_device_model
from ..learning.optim import OPTIMIZERS, layer_learning_rates, make_optimizer  # noqa: F401  (re-exported)
from ..data import dataset_geometry, random_shifts
from ..models.arch import connections_from_arch, has_padded_conv, parse_arch
from ..models.connections import INITS
from ..models.loading import check_same_operating_point, load_network, restore_network  # noqa: F401  (re-exported)
from ..models.registry import build_circuit_model, model_arch, preset_settings
from ..models.resistive import COSTS, UNIT_POLARITIES, CircuitRanges, ResistiveNetwork, leak_from_ratio
from ..solvers.factory import make_solver
from .run import Run, epoch_order, num_batches, progress_bar, show, summary_metrics

LR_SCHEDULES = ("cosine", "constant", "exponential")
DEFAULT_TOL_A = 1e-9
# accuracies count the prediction of an equilibrium that missed its tolerance as a mistake
UNCONVERGED_COUNTED_AS = "wrong"
AUGMENT_STREAM = 1  # the random-shift generator's key beside (seed, epoch, batch)


@dataclass
class TrainConfig:
    """Everything that defines a circuit training run (units in the field names)."""

    dataset: str = "digits"
    model: str = "cnn"
    arch: str | None = None  # architecture spec (epsim.models.arch); None: the model's
    backend: str = "numba"
    epochs: int = 20
    batch_size: int = 8
    lr: float = 0.1
    lr_bias: float | None = None
    lr_layers: list | None = None  # per-layer multipliers of lr and lr_bias (None: all 1)
    momentum: float = 0.9
    optimizer: str = "sgd"  # epsim.learning.optim.OPTIMIZERS
    lr_schedule: str = "cosine"
    lr_decay: float = 0.99  # per-epoch factor of the exponential schedule
    beta: float = 0.5
    seed: int = 0
    input_gain_V: float | None = None  # None: the model's default
    input_center: float = 0.0  # pixel value whose input sources sit at 0 V
    amp_gain: list | None = None  # amplifier gains between free layers (one, or one per boundary)
    differential: bool = False  # hidden layers presented as +v and -v to the next crossbar
    unit_polarity: str = "split"  # hidden units: half excitatory / half inhibitory, or "excitatory"
    leak_ratio: float = 0.0  # leak to 0 V of every free node, times its initial crossbar conductance
    target_high_V: float = 1.0
    cost: str = "squared-error"  # the output nudge, epsim.models.resistive.COSTS
    weight_gain: float = 1.0
    init: str = "uniform"  # conductance init, epsim.models.connections.INITS
    diode: str = "ideal"
    rail_offset_V: float = 0.0  # Shockley clamp rails at +/- this (V), see DiodeModel
    g_unit_S: float = 1e-6
    g_min_S: float = 0.0
    g_max_S: float = 2e-5
    tol_A: float = DEFAULT_TOL_A  # KCL tolerance of the free phase (A)
    nudge_rtol: float | None = 1e-3  # nudged phases: error per layer / its response; None: tol_A
    max_iter: int = 1000
    init_from: str | None = None  # circuit checkpoint whose conductances and biases start the run
    train_subset: int | None = None
    test_subset: int | None = None
    augment_shift: int = 0  # training images translated by up to this many pixels (0: as given)
    augment_flip: bool = False  # training images mirrored left-right with probability 1/2
    eval_batch_size: int = 500
    device_model: str = "ideal"  # epsim.learning.memristive preset, NAME[:field=value,...]
    wire_resistance_ohm: float = 0.0  # per crossbar wire segment; > 0: the wire-aware solver

    def __post_init__(self):
        if self.lr_layers is not None:  # one comparable form for CLI values and checkpoints
            self.lr_layers = [float(m) for m in self.lr_layers]
        if self.amp_gain is not None:
            self.amp_gain = [float(a) for a in self.amp_gain]

    def validate(self):
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (np.isfinite(self.lr) and self.lr > 0, "--lr must be a positive number"),
            (self.lr_bias is None or (np.isfinite(self.lr_bias) and self.lr_bias >= 0),
             "--lr-bias must be a non-negative number"),
            (self.lr_layers is None or (len(self.lr_layers) > 0 and all(
                np.isfinite(m) and m >= 0 for m in self.lr_layers) and max(self.lr_layers) > 0),
             "--lr-layers must be numbers >= 0, at least one positive"),
            (0 <= self.momentum < 1, "--momentum must be in [0, 1)"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (np.isfinite(self.lr_decay) and 0 < self.lr_decay <= 1, "--lr-decay must be in (0, 1]"),
            (self.init in INITS, f"--init must be one of {', '.join(INITS)}"),
            (self.unit_polarity in UNIT_POLARITIES, f"--unit-polarity must be one of {', '.join(UNIT_POLARITIES)}"),
            (np.isfinite(self.weight_gain) and self.weight_gain > 0, "--weight-gain must be positive"),
            (np.isfinite(self.beta) and self.beta > 0, "--beta must be a positive number"),
            (self.input_gain_V is None or (np.isfinite(self.input_gain_V) and self.input_gain_V > 0),
             "--input-gain must be positive (volts)"),
            (np.isfinite(self.input_center) and 0 <= self.input_center <= 1,
             "--input-center must be a pixel value in [0, 1]"),
            (self.amp_gain is None or (len(self.amp_gain) > 0 and all(
                np.isfinite(a) and a > 0 for a in self.amp_gain)), "--amp-gain must be positive numbers"),
            (np.isfinite(self.leak_ratio) and self.leak_ratio >= 0, "--leak-ratio must be a number >= 0"),
            (self.cost in COSTS, f"--cost must be one of {', '.join(COSTS)} for a circuit model"),
            (np.isfinite(self.rail_offset_V) and self.rail_offset_V >= 0, "--rail-offset must be a voltage >= 0"),
            (self.rail_offset_V == 0 or self.diode == "shockley",
             "--rail-offset offsets Shockley clamp rails: add --diode shockley"),
            (np.isfinite(self.tol_A) and self.tol_A > 0, "--tol must be positive (amperes)"),
            (self.nudge_rtol is None or (np.isfinite(self.nudge_rtol) and 0 < self.nudge_rtol < 1),
             "--nudge-rtol must be in [0, 1) (0: the nudged phases stop on --tol)"),
            (self.max_iter >= 1, "--max-iter must be at least 1"),
            (self.init_from is None or Path(self.init_from).is_file(),
             f"--init-from {self.init_from}: no such checkpoint file"),
            (self.seed >= 0, "--seed must be non-negative"),
            (isinstance(self.augment_shift, int) and self.augment_shift >= 0,
             "--augment-shift must be a whole number of pixels >= 0"),
            (np.isfinite(self.g_min_S) and np.isfinite(self.g_max_S) and 0 <= self.g_min_S < self.g_max_S,
             f"--g-min and --g-max must satisfy 0 <= --g-min < --g-max (siemens), "
             f"got --g-min {self.g_min_S:g} --g-max {self.g_max_S:g}"),
        ]
        for ok, message in checks:
            if not ok:
                raise EpsimError(message)
        if self.arch is not None:
            parse_arch(self.arch)
        self._validate_hardware()

    def validate_shapes(self, from_preset=()):
        """The architecture fits the images and classes of ``self.dataset``, and ``--lr-layers``
        and ``--amp-gain`` have one value per layer / boundary: checked from the dataset's name,
        before its files are read (:func:`train` checks the same against the loaded data).
        ``from_preset``: the fields that hold the ``--model`` preset's values (not given on the
        command line), named as such in the error."""
        image_shape, num_classes = dataset_geometry(self.dataset)
        spec = self.arch if self.arch is not None else model_arch(self.model, image_shape, num_classes)
        num_layers = len(connections_from_arch(spec, image_shape, num_classes, self.differential,
                                               model=self.model if self.arch is None else None))
        network = self.model if self.arch is None else f"--arch {self.arch}"

        def origin(field, option):
            return (f" (the --model {self.model} preset's; give {option} for this architecture)"
                    if field in from_preset else "")

        if self.lr_layers is not None and len(self.lr_layers) != num_layers:
            raise EpsimError(f"--lr-layers needs {num_layers} values for the {network} "
                             f"({num_layers} layers of conductances), got {len(self.lr_layers)}"
                             + origin("lr_layers", "--lr-layers"))
        boundaries = num_layers - 1
        if self.amp_gain is not None and len(self.amp_gain) not in (1, boundaries):
            raise EpsimError(f"--amp-gain needs one gain or {boundaries} (one per boundary between free "
                             f"layers) for the {network}, got {len(self.amp_gain)}" + origin("amp_gain", "--amp-gain"))

    def _validate_hardware(self):
        """Device model and wire resistance options (issue 8)."""
        model = get_device_model(self.device_model)
        defaults = TrainConfig.__dataclass_fields__
        if model.g_max_S is not None and (self.g_min_S, self.g_max_S) != (
                defaults["g_min_S"].default, defaults["g_max_S"].default):
            raise EpsimError(f"device model {model.name} brings its own conductance range "
                             f"[{model.g_min_S:g}, {model.g_max_S:g}] S: drop --g-min/--g-max")
        r = self.wire_resistance_ohm
        if not (np.isfinite(r) and r >= 0):
            raise EpsimError("--wire-resistance must be a non-negative number of ohms")
        if r > 0 and self.amp_gain is not None and any(a != 1.0 for a in self.amp_gain):
            raise EpsimError("--wire-resistance > 0 with amplifiers (--amp-gain != 1) is not supported")
        if r > 0 and self.arch is not None and has_padded_conv(self.arch):
            raise EpsimError("--wire-resistance > 0 with a padded conv layer (conv:C:K:S:P, P > 0) is "
                             "not supported: use padding 0 or wire resistance 0")
        if r > 0 and self.differential:
            raise EpsimError("--wire-resistance > 0 with --differential is not supported")
        if r > 0 and self.leak_ratio > 0:
            raise EpsimError("--wire-resistance > 0 with --leak-ratio > 0 is not supported")
        if r > 0 and self.cost != "squared-error":
            raise EpsimError("--wire-resistance > 0 with --cost cross-entropy is not supported")
        if r > 0 and self.backend != "numba":
            raise EpsimError("--wire-resistance > 0 is solved by the CPU nodal solver: use --backend numba")

    def compatible_with(self, other: "TrainConfig") -> list:
        """Names of fields that must match to resume a run but differ."""
        free_to_change = {"epochs", "eval_batch_size", "max_iter"}
        return [f.name for f in fields(self)
                if f.name not in free_to_change and getattr(self, f.name) != getattr(other, f.name)]


def preset_config(model: str = TrainConfig.model, **given) -> TrainConfig:
    """A :class:`TrainConfig` for ``model``: its defaults, then the model's preset settings
    (:data:`epsim.models.registry.PRESETS`), then the fields in ``given``."""
    unknown = set(given) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise EpsimError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return TrainConfig(model=model, **{**preset_settings(model), **given})


def build_network(config: TrainConfig, dataset) -> ResistiveNetwork:
    diode = DiodeModel(kind=config.diode, rail_offset_V=config.rail_offset_V)
    ranges = CircuitRanges(config.g_unit_S, config.g_min_S, config.g_max_S)
    ranges = get_device_model(config.device_model).circuit_ranges(ranges)
    net = build_circuit_model(config.model, dataset.image_shape, dataset.num_classes, arch=config.arch,
                              input_gain_V=config.input_gain_V, input_center=config.input_center,
                              diode=diode, ranges=ranges,
                              amp_gains=config.amp_gain, differential=config.differential,
                              unit_polarity=config.unit_polarity)
    net.cost = config.cost
    return net


def evaluate(net, solver, x, y, batch_size=500, dp: DataParallel | None = None) -> dict:
    """Free-phase accuracy on ``(x, y)`` with the training solver's exact settings.

    A sample whose equilibrium misses the tolerance counts as wrong (:data:`UNCONVERGED_COUNTED_AS`,
    the rule of ``epsim.robustness``). With a multi-process ``dp`` each rank solves a shard and
    the counts are summed. ``dead_units_per_layer``: per hidden layer, the fraction of nodes
    held at their clamp for every image of ``x`` (they pass no signal and get no EP update).
    """
    dp = dp or DataParallel()
    idx = dp.shard(np.arange(len(y)))
    ever_active = [np.zeros(n, dtype=bool) for n in net.layer_sizes[1:-1]]
    correct, unconverged, worst = free_phase_counts(net, solver, x[idx], y[idx], batch_size, ever_active)
    correct, unconverged = (int(v) for v in dp.sum([correct, unconverged]))
    ever_active = [a > 0 for a in dp.sum([a.astype(np.int64) for a in ever_active])]
    n = max(len(y), 1)
    return {"accuracy": correct / n, "unconverged": unconverged, "max_residual_A": dp.max(worst),
            "n": len(y), "dead_units_per_layer": [float(1.0 - a.mean()) for a in ever_active]}


RESOLVED_ROUNDING_UNITS = 100  # a nudge response of fewer float64 spacings is reported as unresolved


def nudge_rounding_units(nudge_response_V, max_node_V) -> list:
    """Per layer, the mean nudge response (V) in float64 spacings at the layer's largest node
    voltage (V): how many representable steps of its node voltages the nudge moves them. EP's
    drop terms are differences of squares of those voltages, so at a few spacings the layer's
    gradient is rounding, whatever the solver tolerance."""
    return [float(r) / float(np.spacing(max(abs(float(v)), np.finfo(float).tiny)))
            for r, v in zip(nudge_response_V, max_node_V)]


def unresolved_nudge_warning(summary: dict) -> str | None:
    """A warning line when some layer's nudge response is under ``RESOLVED_ROUNDING_UNITS``
    float64 spacings of its node voltages and some update took it from the voltages
    (``summary``: :meth:`_EpochTally.signal_summary`); a solver that carries the responses
    themselves (numba with the relative nudge rule) resolves any size."""
    units = summary["nudge_rounding_units_per_layer"]
    low = [l for l, u in enumerate(units) if u < RESOLVED_ROUNDING_UNITS]
    if not low or not summary.get("updates_from_voltages", 1):
        return None
    parts = [f"layer {l} {summary['nudge_response_V_per_layer'][l]:.1e} V at up to "
             f"{summary['max_node_V_per_layer'][l]:.3g} V ({units[l]:.1f} spacings)" for l in low]
    return ("warning: nudge responses within float64 rounding of the node voltages: " + "; ".join(parts)
            + ". Their EP gradients are rounding: the numba backend with --nudge-rtol solves the nudged "
              "phases as changes from the free state and resolves them")


class _EpochTally:
    """Running sums over the batches of one epoch (checkpointed with the run)."""

    def __init__(self, d=None):
        d = d or {}
        self.n = int(d.get("n", 0))
        self.correct = int(d.get("correct", 0))
        self.loss_sum = float(d.get("loss_sum", 0.0))
        self.unconverged = int(d.get("unconverged", 0))
        self.max_residual_A = float(d.get("max_residual_A", 0.0))
        self.iterations = int(d.get("iterations", 0))
        self.batches = int(d.get("batches", 0))
        self.silent = [int(c) for c in d.get("silent", [])]   # per layer: updates with grad_w exactly 0
        self.grad_rms = [float(v) for v in d.get("grad_rms", [])]          # per layer: sums over updates
        self.response = [float(v) for v in d.get("response", [])]
        self.max_node_V = [float(v) for v in d.get("max_node_V", [])]  # per layer, all phases
        self.updates = int(d.get("updates", 0))
        self.from_voltages = int(d.get("from_voltages", 0))  # updates whose responses were v+ - v-

    def add_signal(self, grad_w, nudge_response_V, max_node_V, response_kept=False):
        """Fold in one update's per-layer EP signal: whether its conductance gradient is exactly
        zero, its RMS (V^2), the nudge response of the layer's nodes (V) and their largest
        |voltage| (V); ``response_kept``: the solver carried the responses themselves."""
        self.from_voltages += int(not response_kept)
        L = len(grad_w)
        counts = self.silent or [0] * L
        self.silent = [c + int(grad_is_zero(g)) for c, g in zip(counts, grad_w)]
        rms = self.grad_rms or [0.0] * L
        self.grad_rms = [s + grad_rms(g) for s, g in zip(rms, grad_w)]
        resp = self.response or [0.0] * L
        self.response = [s + float(r) for s, r in zip(resp, nudge_response_V)]
        peak = self.max_node_V or [0.0] * L
        self.max_node_V = [max(s, float(v)) for s, v in zip(peak, max_node_V)]
        self.updates += 1

    def signal_summary(self) -> dict:
        """Per-layer means over the epoch's updates (input side first)."""
        n = max(self.updates, 1)
        response = [s / n for s in self.response]
        return {"silent_updates_per_layer": list(self.silent),
                "grad_rms_per_layer": [s / n for s in self.grad_rms],
                "nudge_response_V_per_layer": response,
                "max_node_V_per_layer": list(self.max_node_V),
                "nudge_rounding_units_per_layer": nudge_rounding_units(response, self.max_node_V),
                "updates_from_voltages": self.from_voltages}

    def add(self, n, correct, loss_sum, unconverged, max_residual_A, iterations):
        """Fold in one (global) batch's totals."""
        self.n += int(n)
        self.correct += int(correct)
        self.loss_sum += float(loss_sum)
        self.unconverged += int(unconverged)
        self.max_residual_A = max(self.max_residual_A, float(max_residual_A))
        self.iterations += int(iterations)
        self.batches += 1

    def as_dict(self):
        return dict(vars(self))


def train(config: TrainConfig, dataset, out_dir=None, *, resume=False, progress=True,
          stop_after_batches=None, checkpoint_interval_s=60.0, time_limit_s=None, log=print) -> dict:
    """Train a circuit model with centered EP; return the metrics dict.

    Args:
        config: run settings. dataset: a :class:`epsim.data.Dataset`.
        out_dir: folder for ``checkpoint.pt`` and ``metrics.json`` (None: keep in memory).
        resume: continue the run saved in ``out_dir``.
        stop_after_batches: stop (as if killed) after this many batches of this call,
            leaving the last checkpoint behind; used to test resumption.
        checkpoint_interval_s: wall time between mid-epoch checkpoints.
        time_limit_s: stop training after the batch that reaches this wall time (s, counted
            over every session of the run), evaluate the test set, checkpoint and write the
            metrics (``stop_reason`` "time limit"; the cut epoch's history entry is marked
            ``partial``); resuming with a larger limit continues from that batch.
    """
    config.validate()
    dp = DataParallel()
    try:
        return _train(config, dataset, out_dir, dp, resume=resume, progress=progress,
                      stop_after_batches=stop_after_batches, checkpoint_interval_s=checkpoint_interval_s,
                      time_limit_s=time_limit_s, log=log)
    finally:
        # a process group left alive aborts the rank at interpreter exit (gloo's threads)
        dp.close()


def _train(config: TrainConfig, dataset, out_dir, dp, *, resume, progress, stop_after_batches,
           checkpoint_interval_s, time_limit_s, log) -> dict:
    if not dp.is_main:
        progress, log = False, (lambda *_: None)
    solver = make_solver(config)
    net = build_network(config, dataset)
    rng = np.random.default_rng(config.seed)
    net.init_params(rng, config.weight_gain, config.init)
    run = Run(out_dir, resume=resume, writes=dp.is_main, checkpoint_interval_s=checkpoint_interval_s,
              time_limit_s=time_limit_s, stop_after_batches=stop_after_batches, log=log)
    state = run.saved_state()
    if state is None and config.init_from is not None:
        source = load_checkpoint(config.init_from)
        restore_network(net, source, config.init_from)
        check_same_operating_point(net, source, config.init_from)
        lo, hi = net.w_bounds
        net.w = [np.clip(w, lo, hi) for w in net.w]
    if state is None and config.leak_ratio > 0 and not net.has_leak:
        net.leak = leak_from_ratio(net, config.leak_ratio)
    devices = DeviceArray(get_device_model(config.device_model), net, config.seed, dp.rank)
    devices.program(net)
    solver = devices.wrap_solver(solver)
    opt = make_optimizer(config, net, device=devices)
    if state is not None:
        restore_network(net, state, run.checkpoint_path)
        run.check_resumable(TrainConfig(**state["config"]), config, state)
        opt.load_state(state["optimizer"])
        devices.load_state(state.get("devices"))
        run.resume_from(state)
    tally, history, start_batch = _EpochTally(run.tally), run.history, run.batch
    run.start_clock()

    def payload():
        return {"kind": "circuit", "model": net.describe(), "config": asdict(config), "w": net.w, "b": net.b,
                "optimizer": opt.state(), "devices": devices.state()}

    n_train = len(dataset.y_train)
    n_batches = num_batches(n_train, config.batch_size)
    stop_reason = None
    for epoch in range(run.epoch, config.epochs):
        stopped_at = None   # the next batch of an epoch the time limit cut short
        order = epoch_order(config.seed, epoch, n_train)
        opt.scale = lr_scale(config, epoch)
        bar = progress_bar(range(start_batch, n_batches), n_batches, start_batch,
                           f"epoch {epoch + 1}/{config.epochs}", progress)
        for k in bar:
            batch = order[k * config.batch_size:(k + 1) * config.batch_size]
            idx = dp.shard(batch)
            labels = dataset.y_train[idx]
            if config.augment_shift or config.augment_flip:
                # drawn for the whole global batch from (seed, epoch, batch): resumes and ranks agree
                images = dp.shard(random_shifts(dataset.x_train[batch], config.augment_shift,
                                                np.random.default_rng([config.seed, epoch, k, AUGMENT_STREAM]),
                                                flip=config.augment_flip))
            else:
                images = dataset.x_train[idx]
            result = centered_ep(net, solver, images, labels, config.beta,
                                 target_high_V=config.target_high_V, factored=not dp.active)
            n_used = int(result.converged.sum())
            grad_w, grad_b = result.grad_w, result.grad_b
            totals = [len(labels), int(np.sum((result.predictions == labels) & result.free_converged)),
                      float(np.sum(result.loss)), int(np.sum(~result.converged)), result.iterations]
            if dp.active:
                # means over each shard's converged samples -> mean over the global batch
                grads, n_used = dp.mean(grad_w + grad_b, n_used)
                grad_w, grad_b = grads[:len(grad_w)], grads[len(grad_w):]
                totals = dp.sum(totals)
            if n_used:
                opt.step(grad_w, grad_b)
                tally.add_signal(grad_w, result.nudge_response_V, result.max_node_V, result.response_kept)
            tally.add(totals[0], totals[1], totals[2], totals[3], dp.max(result.residual_A), totals[4])
            show(bar, loss=f"{tally.loss_sum / tally.n:.4f}", acc=f"{tally.correct / tally.n:.3f}",
                 res=f"{tally.max_residual_A:.1e}A")
            if run.batch_done():
                run.save(epoch, k + 1, tally, payload)
                return {"interrupted": True}
            if time_limit_s is not None and dp.max(float(run.out_of_time())) > 0:  # all ranks stop together
                stop_reason = "time limit"
                if k + 1 < n_batches:
                    stopped_at = k + 1
                    break
            run.save_if_due(epoch, k + 1, tally, payload)
        start_batch = 0
        test = evaluate(net, solver, dataset.x_test, dataset.y_test, config.eval_batch_size, dp)
        history.append({
            "epoch": epoch + 1 if stopped_at is None else epoch + stopped_at / n_batches,
            "train_loss": tally.loss_sum / max(tally.n, 1),
            "train_accuracy": tally.correct / max(tally.n, 1), "test_accuracy": test["accuracy"],
            "train_unconverged": tally.unconverged, "test_unconverged": test["unconverged"],
            "max_residual_A": max(tally.max_residual_A, test["max_residual_A"]),
            "mean_iterations_per_batch": tally.iterations / max(tally.batches, 1),
            **tally.signal_summary(),
            "dead_units_per_layer": test["dead_units_per_layer"],
            "wall_seconds": run.wall()})
        if stopped_at is not None:
            history[-1]["partial"] = True
        h = history[-1]
        log(f"epoch {h['epoch']:.3g}/{config.epochs}: train loss {h['train_loss']:.4f} "
            f"acc {h['train_accuracy']:.4f}, test acc {h['test_accuracy']:.4f}, "
            f"max KCL residual {h['max_residual_A']:.2e} A"
            + (f", UNCONVERGED train {h['train_unconverged']} test {h['test_unconverged']}"
               if h["train_unconverged"] or h["test_unconverged"] else ""))
        # reported in the history always; warned about when it is more than an occasional update
        silent = [l for l, c in enumerate(tally.silent) if c >= max(1, 0.01 * tally.batches)]
        if silent:
            log(f"warning: layer(s) {', '.join(map(str, silent))} had an exactly zero EP gradient in "
                f"{', '.join(str(tally.silent[l]) for l in silent)} of {tally.batches} updates: the nudged "
                f"phases did not move their nodes; see nudge_response_V_per_layer in metrics.json"
                + (f" and lower --nudge-rtol (now {config.nudge_rtol:g})" if config.nudge_rtol
                   else f" and lower --tol (now {config.tol_A:g} A)"))
        unresolved = unresolved_nudge_warning(h)
        if unresolved:
            log(unresolved)
        if stopped_at is not None:
            run.save(epoch, stopped_at, tally, payload)
        else:
            tally = _EpochTally()
            run.save(epoch + 1, 0, tally, payload)
        if stop_reason is not None:
            log(f"time limit of {time_limit_s:.0f} s reached; stopped "
                + (f"in epoch {epoch + 1}" if stopped_at is not None else f"after epoch {epoch + 1}")
                + " (continue with --resume and a larger --time-limit)")
            break
    if hasattr(solver, "summary"):
        log(solver.summary())
    metrics = final_metrics(config, net, history, run.wall(), len(dataset.y_test), stop_reason)
    metrics["processes"] = dp.world
    run.write_metrics(metrics)
    dp.barrier()  # no rank leaves (and tears its connections down) while another still writes
    return metrics


def lr_scale(config: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier of ``epoch`` (0-based): cosine decay to 0, constant, or
    ``lr_decay ** epoch`` (exponential)."""
    if config.lr_schedule == "constant":
        return 1.0
    if config.lr_schedule == "exponential":
        return float(config.lr_decay ** epoch)
    return 0.5 * (1.0 + np.cos(np.pi * epoch / config.epochs))


def final_metrics(config, net, history, wall_seconds, n_test, stop_reason=None) -> dict:
    """metrics.json of a circuit run (:func:`.run.summary_metrics` plus the circuit's fields);
    ``stop_reason``: None (every epoch ran) or ``"time limit"``."""
    last = history[-1] if history else {}
    return summary_metrics(
        config, history, wall_seconds, backend=config.backend, dataset=config.dataset, model=config.model,
        epochs=config.epochs, stopped_early=stop_reason is not None, stop_reason=stop_reason, n_test=n_test, num_params=net.num_params(),
        test_unconverged=last.get("test_unconverged"), unconverged_counted_as=UNCONVERGED_COUNTED_AS,
        max_residual_A=max((h["max_residual_A"] for h in history), default=None))

