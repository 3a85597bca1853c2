"""python -m epsim.energy: settling time, energy and power of a trained circuit per inference
and per training step, from transient simulation (:mod:`epsim.solvers.transient`).

Per test image: the free phase from all nodes at 0 V with the inputs switched on at t = 0,
until every output is within ``--settle-tol`` of its DC value (``settle_time``), and the
time after which the predicted class no longer changes (``decision_time``); the energy the
sources deliver over ``[0, settle_time]`` (``energy_per_inference``) and the power they
deliver at equilibrium (``static_power``). Per training step: the same for the free phase
and for the ``+beta`` and ``-beta`` nudged phases, each started from the free state, plus
the conductance update: programming pulses ``|dG| / dG_pulse`` (``dG_pulse = (Gmax -
Gmin) / --levels``, the expected count under stochastic rounding) times ``--pulse-energy``
for the first step of the run's optimizer (SGD: ``lr * g``; Adam: about ``lr`` for each
nonzero gradient entry) at its base learning rates on its first batch of test images,
shared by the batch's images. A digital estimate beside it: the network's
multiply-accumulates per feed-forward inference times a published energy per MAC
(Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm: 32-bit float multiply 3.7 pJ
+ add 0.9 pJ; 8-bit integer multiply 0.2 pJ + add 0.03 pJ), an estimate that leaves out
memory access. Early readout: test accuracy of the class read at given times before
settling, and with ``--attack-eps``, the robust accuracy of the harness's PGD (implicit
gradients of the settled circuit, CE and DLR) against the circuit read at those times
(:mod:`epsim.robustness.readout`) beside the settled circuit's.

Writes ``OUT/energy.json`` (settings, summary, per-image arrays), ``OUT/energy.csv`` (the
summary, one row) and ``OUT/traces.npz`` (time points and the voltages of the first three
nodes of every layer for the first ``--traces`` images of the free phase). A long run keeps
its transients' results in ``OUT/energy-progress.npz`` once they are done and every finished
early-readout attack run under ``OUT/readout-progress/``; ``--resume`` continues from them
(both are removed when the results are written).
"""
from __future__ import annotations

import csv
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

from .cli import (ArgumentParser, add_attack_subset, add_list, add_test_subset, add_threads, explicit_options,
                  prepare_out_dir, run, set_command_environment, set_threads)

set_command_environment()  # before numpy loads

import numpy as np  # noqa: E402

from .errors import EpsimError  # noqa: E402

DIGITAL_PJ_PER_MAC = {"fp32_45nm": 3.7 + 0.9, "int8_45nm": 0.2 + 0.03}
DIGITAL_SOURCE = "Horowitz, ISSCC 2014, 45 nm (multiply + add; no memory access)"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m epsim.energy", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="circuit checkpoint.pt of epsim.train")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for energy.json and energy.csv")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="dataset folder (digits needs none)")
    add_test_subset(p, "simulate the first N test images (in the dataset's order; default: all)",
                    aliases=("--n",))
    p.add_argument("--diode", default=None, choices=("ideal", "shockley"), help="clamp diodes (default: the model's)")
    p.add_argument("--rail-offset", type=float, default=None, metavar="V",
                   help="Shockley diodes only: clamp rails at +V (excitatory units) and -V "
                        "(inhibitory) instead of 0 V (default: the model's)")
    p.add_argument("--cell-capacitance", type=float, default=1e-16, metavar="F",
                   help="capacitance each crossbar cell adds to its row/column line (farads)")
    p.add_argument("--node-capacitance", type=float, default=1e-14, metavar="F",
                   help="fixed capacitance of every free node (farads)")
    p.add_argument("--t-stop", type=float, default=1e-6, metavar="S", help="simulated window per phase (s)")
    p.add_argument("--dt-max", type=float, default=None, metavar="S", help="largest time step (s; default t-stop/200)")
    p.add_argument("--lte-tol", type=float, default=1e-4, metavar="V",
                   help="local truncation error allowed per time step (V)")
    p.add_argument("--settle-tol", type=float, default=1e-3, metavar="V",
                   help="settled: every output within this of its DC value (V)")
    p.add_argument("--tol", type=float, default=1e-9, metavar="A", help="KCL tolerance of every step and DC solve")
    add_list(p, "--readout-times", item=float, default=None, metavar="S",
             help="early-readout times (s; default: 0.1, 0.25, 0.5, 1, 2 x the median settling time)")
    p.add_argument("--no-training-step", action="store_true", help="inference only (skip the nudged phases)")
    p.add_argument("--levels", type=int, default=100, metavar="N",
                   help="programming pulses across the conductance range (dG_pulse = range / N)")
    p.add_argument("--pulse-energy", type=float, default=1e-12, metavar="J",
                   help="energy of one programming pulse (J)")
    p.add_argument("--batch-size", type=int, default=500, metavar="N", help="images per transient batch")
    p.add_argument("--attack-eps", type=float, default=None, metavar="EPS",
                   help="also attack the early readout: PGD at this radius (pixel units) at every readout time")
    p.add_argument("--attack-norm", default="l2", choices=("l2", "linf"), help="norm of --attack-eps")
    add_attack_subset(p, "attack the first N of the --test-subset images", default=100)
    p.add_argument("--attack-steps", type=int, default=20, metavar="N", help="PGD iterations")
    p.add_argument("--traces", type=int, default=4, metavar="K",
                   help="save the free-phase voltage traces of the first K images (3 nodes per layer) "
                        "to traces.npz (0: none)")
    add_threads(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the run interrupted in --out: its finished transient batches (kept in "
                        "OUT/energy-progress.npz as each finishes) and early-readout attack runs are not recomputed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _validate(args, given: set = frozenset()):
    """One-line errors for bad values; ``given``: the options on the command line."""
    attack_options = sorted(given & {"attack_norm", "attack_subset", "attack_steps"})
    checks = [
        (args.attack_eps is not None or not attack_options,
         f"{', '.join('--' + k.replace('_', '-') for k in attack_options)} "
         f"{'apply' if len(attack_options) > 1 else 'applies'} to the early-readout attack only: add --attack-eps EPS"),
        (args.test_subset is None or args.test_subset >= 1, "--test-subset must be at least 1"),
        (np.isfinite(args.cell_capacitance) and args.cell_capacitance >= 0, "--cell-capacitance must be >= 0 farads"),
        (np.isfinite(args.node_capacitance) and args.node_capacitance >= 0, "--node-capacitance must be >= 0 farads"),
        (args.cell_capacitance + args.node_capacitance > 0, "--cell-capacitance and --node-capacitance cannot both be 0"),
        (np.isfinite(args.t_stop) and args.t_stop > 0, "--t-stop must be a positive time (s)"),
        (args.dt_max is None or (np.isfinite(args.dt_max) and 0 < args.dt_max <= args.t_stop),
         "--dt-max must be in (0, --t-stop]"),
        (np.isfinite(args.lte_tol) and args.lte_tol > 0, "--lte-tol must be a positive voltage"),
        (np.isfinite(args.settle_tol) and args.settle_tol > 0, "--settle-tol must be a positive voltage"),
        (np.isfinite(args.tol) and args.tol > 0, "--tol must be a positive current (A)"),
        (args.rail_offset is None or (np.isfinite(args.rail_offset) and args.rail_offset >= 0),
         "--rail-offset must be a voltage >= 0"),
        (args.levels >= 1, "--levels must be at least 1"),
        (np.isfinite(args.pulse_energy) and args.pulse_energy >= 0, "--pulse-energy must be >= 0 J"),
        (args.batch_size >= 1, "--batch-size must be at least 1"),
        (args.traces >= 0, "--traces must be >= 0"),
        (args.attack_eps is None or (np.isfinite(args.attack_eps) and args.attack_eps > 0),
         "--attack-eps must be a positive radius"),
        (args.attack_subset >= 1 and args.attack_steps >= 1, "--attack-subset and --attack-steps must be at least 1"),
        (args.attack_eps is None or args.attack_norm != "linf" or args.attack_eps <= 1,
         "--attack-eps must be <= 1 for linf"),
    ]
    for ok, message in checks:
        if not ok:
            raise EpsimError(message)
    times = args.readout_times
    if times is not None and not all(np.isfinite(t) and t >= 0 for t in times):
        raise EpsimError("--readout-times must be non-negative times (s)")
    return times


def energy_until(tr, t_end) -> np.ndarray:
    """(B,) energy (J) the sources delivered over ``[0, t_end]`` (B,) (right-endpoint rule,
    the integrator's own; the whole window where ``t_end`` is inf)."""
    dt = np.diff(tr.t_s)
    out = np.empty(len(t_end))
    for b, te in enumerate(t_end):
        k = len(dt) if not np.isfinite(te) else int(np.searchsorted(tr.t_s, te, side="right")) - 1
        out[b] = dt[:k] @ tr.power_W["sources"][:k, b]
    return out


def macs_per_inference(net) -> int:
    """Multiply-accumulates of one feed-forward pass through the same crossbars (a padded
    conv's kernel positions in the pad included: its conductances to the rail exist too)."""
    return int(sum(len(conn.pairs()[0]) + len(conn.pad_pairs()[0]) for conn in net.connections))


def readout_accuracy(t_s, predictions, labels, times) -> list:
    """Accuracy of the class read at each of ``times`` (s): ``predictions`` (T, B) is
    ``argmax v_out`` at each time point ``t_s`` (T,) of a transient, read at the last time
    point at or before each time."""
    out = []
    for t in times:
        k = max(int(np.searchsorted(t_s, t, side="right")) - 1, 0)
        out.append(float(np.mean(predictions[k] == labels)))
    return out


def _phase(net, v_in, caps, args, probe_nodes=0, **kw):
    from .solvers.transient import simulate

    return simulate(net, v_in, caps=caps, t_stop_s=args.t_stop, dt_max_s=args.dt_max, lte_tol_V=args.lte_tol,
                    tol_A=args.tol, probe_nodes=probe_nodes, **kw)


def _recorded_config(state) -> SimpleNamespace:
    """The training settings recorded in a circuit checkpoint (``state["config"]``), with the
    defaults of settings older checkpoints did not record (solver settings included, so the
    result serves :func:`~epsim.solvers.factory.make_solver` as it is)."""
    from .solvers.factory import SolverConfig

    recorded = {**asdict(SolverConfig()), "target_high_V": 1.0, "lr_bias": None, "lr_layers": None, "optimizer": "sgd",
                **state["config"]}
    return SimpleNamespace(**recorded)


def _update_energy_J(net, config, solver, x, labels, args) -> dict:
    """Programming pulses and energy of the first update of the run's optimizer on the batch
    ``(x, labels)``."""
    from .learning.ep import centered_ep
    from .learning.optim import make_optimizer

    res = centered_ep(net, solver, x, labels, config.beta, target_high_V=config.target_high_V)
    opt = make_optimizer(config, net)
    lo, hi = net.w_bounds
    step = (hi - lo) / args.levels
    # expected pulse count (stochastic rounding of |dG| / dG_pulse), at the run's base learning rates
    pulses = float(sum(np.sum(np.abs(opt.first_step(l, g)) / step) for l, g in enumerate(res.grad_w)))
    return {"pulses": pulses, "energy_J": pulses * args.pulse_energy, "batch": len(labels)}


def main(argv=None):
    args = build_parser().parse_args(argv)
    readout = _validate(args, explicit_options(build_parser, argv))
    out = prepare_out_dir(args.out)
    set_threads(args.threads)
    from .checkpoint import write_json
    from .circuit.compile import with_diode_options
    from .data import default_data_dir, load_dataset
    from .solvers.transient import Capacitances
    from .models.loading import load_network
    from .solvers.factory import make_solver
    from .solvers.factory import SolverConfig

    net, state = load_network(args.checkpoint)
    if net.cost != "squared-error" and not args.no_training_step:
        raise EpsimError(f"{args.checkpoint} is nudged with the {net.cost}, whose source the transient "
                         "simulator does not model: add --no-training-step (inference energy only)")
    net = with_diode_options(net, args.diode, args.rail_offset)
    config = _recorded_config(state)
    dataset = load_dataset(config.dataset, args.data_dir or default_data_dir())
    n = len(dataset.y_test) if args.test_subset is None else min(args.test_subset, len(dataset.y_test))
    x, y = dataset.x_test[:n], dataset.y_test[:n]
    caps = Capacitances(args.cell_capacitance, args.node_capacitance)
    dc = make_solver(SolverConfig(tol_A=args.tol, max_iter=100000, nudge_rtol=None))
    print(f"energy of {args.checkpoint} ({net.name}, {net.diode.kind} diodes) on {n} {config.dataset} test images")
    t0 = time.perf_counter()
    from .robustness.journal import sweep_digest

    digest = sweep_digest(Path(args.checkpoint), np.asarray(x), np.asarray(y),
                          {k: v for k, v in vars(args).items() if k not in ("resume", "no_progress", "threads", "out", "data_dir")})
    stage = _TransientRecord(out, digest, args.resume)
    if stage.done:
        per, traces_npz, times, acc_at, upd = stage.load()
        print(f"resuming: the transients of the {n} images are recorded")
    else:
        recorded = stage.recorded_batches
        if recorded:
            print(f"resuming: {recorded} transient batch(es) of {args.batch_size} images are recorded")
        per, traces_npz, times, acc_at = _transients(net, config, dc, caps, x, y, readout, args, stage)
        upd = None
        if not args.no_training_step:
            upd = _update_energy_J(net, config, make_solver(config), x[:config.batch_size], y[:config.batch_size],
                                   args)
        stage.save(per, traces_npz, times, acc_at, upd)
    settled = np.isfinite(per["settle_time_s"])
    macs = macs_per_inference(net)

    def stats(a):
        a = a[np.isfinite(a)]
        return {"median": float(np.median(a)), "p95": float(np.percentile(a, 95)), "mean": float(np.mean(a))} \
            if a.size else {"median": None, "p95": None, "mean": None}

    summary = {
        "n": n, "unsettled": int((~settled).sum()), "accuracy_dc": float(per["correct"].mean()),
        "settle_time_s": stats(per["settle_time_s"]), "decision_time_s": stats(per["decision_time_s"]),
        "energy_per_inference_J": stats(per["energy_per_inference_J"]),
        "static_power_W": stats(per["static_power_W"]),
        "macs_per_inference": macs,
        "digital_energy_per_inference_J_estimate": {k: macs * v * 1e-12 for k, v in DIGITAL_PJ_PER_MAC.items()},
        "digital_source": DIGITAL_SOURCE,
        "early_readout": [{"time_s": float(t), "accuracy": float(a)} for t, a in zip(times, acc_at)],
    }
    if upd is not None:
        phases = per["energy_per_inference_J"] + per["energy_plus_J"] + per["energy_minus_J"]
        summary["training_step"] = {
            "phases_energy_J_per_image": stats(phases),
            "update_pulses_per_batch": upd["pulses"], "update_energy_J_per_batch": upd["energy_J"],
            "batch_size": upd["batch"],
            "energy_J_per_image": stats(phases + upd["energy_J"] / upd["batch"]),
            "pulse_energy_J": args.pulse_energy, "levels": args.levels,
        }
    if args.attack_eps is not None:
        summary["early_readout_attack"] = _attack_readout(net, x[:args.attack_subset], y[:args.attack_subset], times, caps,
                                                          args, out / "readout-progress", digest)
    settings = {"checkpoint": str(args.checkpoint), "model": net.name, "arch": net.arch, "diode": net.diode.kind,
                "rail_offset_V": net.diode.rail_offset_V,
                "input_gain_V": net.input_gain_V, "input_center": net.input_center, "amp_gains": net.amp_gains.tolist(),
                "differential": net.differential.tolist(), "unit_polarity": net.unit_polarity,
                "cell_capacitance_F": args.cell_capacitance, "node_capacitance_F": args.node_capacitance,
                "t_stop_s": args.t_stop, "dt_max_s": args.dt_max, "lte_tol_V": args.lte_tol,
                "settle_tol_V": args.settle_tol, "tol_A": args.tol, "dataset": config.dataset}
    result = {"tool": "epsim.energy", "settings": settings, "summary": summary,
              "per_image": {k: v.tolist() for k, v in per.items() if v.size},
              "wall_s": time.perf_counter() - t0}
    write_json(out / "energy.json", result)
    if args.traces:
        _save_npz(out / "traces.npz", traces_npz)
    _write_csv(out / "energy.csv", settings, summary)
    stage.finish()
    s = summary
    print(f"settling time median {s['settle_time_s']['median']:.3g} s (p95 {s['settle_time_s']['p95']:.3g} s), "
          f"energy per inference median {s['energy_per_inference_J']['median']:.3g} J, static power median "
          f"{s['static_power_W']['median']:.3g} W; digital estimate {macs} MACs = "
          f"{s['digital_energy_per_inference_J_estimate']['fp32_45nm']:.3g} J (fp32) / "
          f"{s['digital_energy_per_inference_J_estimate']['int8_45nm']:.3g} J (int8)")
    if s["unsettled"]:
        print(f"warning: {s['unsettled']} images did not settle within --t-stop {args.t_stop:g} s", file=sys.stderr)
    print(f"wrote {out}/energy.json and {out}/energy.csv ({result['wall_s']:.1f} s)")


def _transients(net, config, dc, caps, x, y, readout, args, stage=None) -> tuple:
    """The transient simulations of every image: ``(per, traces_npz, times, acc_at)`` — the
    per-image arrays of the summary, the free-phase traces of the first ``--traces`` images,
    the early-readout times (s) and the test accuracy read at each. Each batch's results are
    kept in ``stage`` (a :class:`_TransientRecord`) as it finishes, and batches it already
    holds are not simulated again."""
    n = len(y)
    starts = range(0, n, args.batch_size)
    batches = []
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="transients", unit="img", dynamic_ncols=True)
    for k, i in enumerate(starts):
        rec = stage.batch(k) if stage is not None else None
        if rec is None:
            rec = _transient_batch(net, config, dc, caps, x[i:i + args.batch_size], y[i:i + args.batch_size],
                                   args, traces=args.traces if i == 0 else 0)
            if stage is not None:
                stage.save_batch(k, rec)
        batches.append(rec)
        if bar is not None:
            bar.update(len(rec["correct"]))
    if bar is not None:
        bar.close()
    per = {key: np.concatenate([b[key] for b in batches]) if batches and key in batches[0] else np.zeros(0)
           for key in PER_IMAGE}
    traces_npz = {key[len("trace_"):]: v for key, v in batches[0].items() if key.startswith("trace_")} \
        if batches else {}
    if traces_npz:
        traces_npz = {"t_s": batches[0]["t_s"], **traces_npz}
    settled = np.isfinite(per["settle_time_s"])
    med_settle = float(np.median(per["settle_time_s"][settled])) if settled.any() else float("nan")
    times = readout if readout is not None else [f * med_settle for f in (0.1, 0.25, 0.5, 1.0, 2.0)]
    acc_at = np.zeros(len(times))
    for b, i in zip(batches, starts):
        yb = y[i:i + args.batch_size]
        acc_at += np.asarray(readout_accuracy(b["t_s"], b["predictions"], yb, times)) * len(yb)
    acc_at /= max(n, 1)
    return per, traces_npz, list(times), acc_at


# per-image results of the transients (each a (B,) array per batch)
PER_IMAGE = ("settle_time_s", "decision_time_s", "energy_per_inference_J", "static_power_W", "correct",
             "energy_plus_J", "energy_minus_J")


def _transient_batch(net, config, dc, caps, xb, yb, args, traces: int = 0) -> dict:
    """The transients of one batch of images ``xb`` (B, C, H, W): the :data:`PER_IMAGE` arrays
    (the nudged phases' energies unless ``--no-training-step``), the free phase's time points
    ``t_s`` (T,) and the class it reads at each, ``predictions`` (T, B), and with ``traces`` > 0
    the ``trace_*`` arrays of the first ``traces`` images (3 nodes per layer; their times are
    ``t_s``)."""
    from .models.resistive import one_hot_targets
    from .solvers.transient import circuit_powers_W, settling_times_s

    v_in = net.input_voltages(xb)
    prepared = dc.prepare(net, v_in)
    free = dc.solve(prepared, 0.0)
    tr = _phase(net, v_in, caps, args, probe_nodes=3 if traces else 0)
    settle, decide = settling_times_s(tr, free.v_output, args.settle_tol)
    rec = {"settle_time_s": settle, "decision_time_s": decide,
           "energy_per_inference_J": energy_until(tr, settle),
           "static_power_W": circuit_powers_W(net, v_in, free.v_free)["sources"],
           "correct": np.argmax(free.v_output, axis=1) == yb,
           "t_s": np.asarray(tr.t_s), "predictions": np.argmax(tr.v_out, axis=2)}
    if traces:
        k = min(traces, len(yb))
        rec.update({"trace_labels": yb[:k], "trace_v_out": tr.v_out[:, :k],
                    **{f"trace_layer{l}": p[:, :k] for l, p in tr.probes.items()}})
    if not args.no_training_step:
        target = one_hot_targets(yb, net.num_outputs, config.target_high_V)
        for sign, key in ((1.0, "energy_plus_J"), (-1.0, "energy_minus_J")):
            b = sign * config.beta
            ref = dc.solve(prepared, b, target, init=free.v_free)
            trn = _phase(net, v_in, caps, args, init=free.v_free, beta=b, target_V=target)
            s_n, _ = settling_times_s(trn, ref.v_output, args.settle_tol)
            rec[key] = energy_until(trn, s_n)
    return rec


class _TransientRecord:
    """``OUT/energy-progress.npz``: the transients' results of a run, tagged with the run's
    digest (checkpoint, images, options): each batch's as it finishes, then the whole stage's
    once done, so that ``--resume`` simulates only the batches not yet recorded and goes
    straight to the early-readout attack once they all are. Without ``resume`` an existing
    record is an error."""

    def __init__(self, out: Path, digest: str, resume: bool):
        self.path = Path(out) / "energy-progress.npz"
        self.progress_dir = Path(out) / "readout-progress"
        self.digest = digest
        self.done = False
        self._batches = {}
        from .robustness.journal import check_record

        if not self.path.exists() and not self.progress_dir.exists():
            return

        def recorded_digest():
            if not self.path.exists():  # only the attack's records are left: each checks its own digest
                return digest
            with np.load(self.path) as data:
                return str(data["digest"])

        check_record(self.path, recorded_digest, digest, resume, "energy run")
        if self.path.exists():
            with np.load(self.path) as data:
                self.done = bool(data["complete"]) if "complete" in data.files else True
                if not self.done:
                    for key in data.files:
                        if key.startswith("batch"):
                            k, name = key[len("batch"):].split("_", 1)
                            self._batches.setdefault(int(k), {})[name] = data[key]

    @property
    def recorded_batches(self) -> int:
        """How many transient batches the record holds (0 once the stage is complete)."""
        return len(self._batches)

    def batch(self, k: int) -> dict | None:
        """The recorded results of transient batch ``k`` (0-based), or None."""
        return self._batches.get(k)

    def save_batch(self, k: int, rec: dict) -> None:
        """Record batch ``k``'s results (written atomically with every batch recorded so far)."""
        self._batches[k] = rec
        _save_npz(self.path, {"digest": np.array(self.digest), "complete": np.array(False),
                              **{f"batch{j}_{name}": v for j, r in self._batches.items() for name, v in r.items()}})

    def save(self, per, traces_npz, times, acc_at, upd):
        arrays = {"digest": np.array(self.digest), "complete": np.array(True), "times": np.asarray(times, float),
                  "acc_at": acc_at, **{f"per_{k}": v for k, v in per.items()},
                  **{f"trace_{k}": v for k, v in traces_npz.items()}}
        if upd is not None:
            arrays.update({"upd_pulses": np.array(upd["pulses"]), "upd_energy_J": np.array(upd["energy_J"]),
                           "upd_batch": np.array(upd["batch"])})
        _save_npz(self.path, arrays)
        self.done, self._batches = True, {}

    def load(self) -> tuple:
        with np.load(self.path) as data:
            per = {k[4:]: data[k] for k in data.files if k.startswith("per_")}
            traces_npz = {k[6:]: data[k] for k in data.files if k.startswith("trace_")}
            upd = ({"pulses": float(data["upd_pulses"]), "energy_J": float(data["upd_energy_J"]),
                    "batch": int(data["upd_batch"])} if "upd_pulses" in data.files else None)
            return per, traces_npz, [float(t) for t in data["times"]], data["acc_at"], upd

    def finish(self):
        import shutil

        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.progress_dir, ignore_errors=True)


def _attack_readout(net, x, y, times, caps, args, progress_dir: Path, digest: str) -> list:
    """PGD robust accuracy of the settled circuit and of the circuit read at each time; each
    readout's finished attack runs are recorded under ``progress_dir/<k>``."""
    from .robustness.adapters import CircuitAdapter
    from .robustness.evaluate import SweepConfig, run_sweep
    from .robustness.journal import SweepJournal, sweep_digest
    from .robustness.readout import EarlyReadoutAdapter

    base = CircuitAdapter(net, tol_A=args.tol, max_iter=100000, batch_size=args.batch_size)
    cfg = SweepConfig(attacks=(f"pgd-{args.attack_norm}",), eps=(float(args.attack_eps),), paths=("implicit",),
                      losses=("ce", "dlr"), steps=args.attack_steps, large_eps_check=False)
    rows = []
    for k, t in enumerate([None] + list(times)):
        adapter = base if t is None else EarlyReadoutAdapter(base, t, caps=caps, lte_tol_V=args.lte_tol,
                                                             tol_A=args.tol)
        journal = SweepJournal(progress_dir / str(k), sweep_digest(digest, k, t), resume=args.resume)
        out = run_sweep(adapter, x, y, cfg, progress=False, log=lambda *_: None, journal=journal)
        r = out["rows"][0]
        rows.append({"time_s": t, "clean_accuracy": r["clean_accuracy"], "robust_accuracy": r["robust_accuracy"],
                     "norm": args.attack_norm, "eps": float(args.attack_eps), "n": r["n"],
                     "sanity_ok": r["sanity_ok"], "failed_checks": r["failed_checks"]})
        print(f"readout {'settled' if t is None else f'{t:.3g} s'}: clean {r['clean_accuracy']:.3f}, "
              f"PGD-{args.attack_norm} eps={args.attack_eps:g} robust {r['robust_accuracy']:.3f}")
    return rows


def _save_npz(path, arrays):
    tmp = Path(str(path) + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def _write_csv(path, settings, summary):
    row = {"model": settings["model"], "diode": settings["diode"], "n": summary["n"],
           "settle_time_median_s": summary["settle_time_s"]["median"],
           "settle_time_p95_s": summary["settle_time_s"]["p95"],
           "decision_time_median_s": summary["decision_time_s"]["median"],
           "energy_per_inference_median_J": summary["energy_per_inference_J"]["median"],
           "energy_per_inference_p95_J": summary["energy_per_inference_J"]["p95"],
           "static_power_median_W": summary["static_power_W"]["median"],
           "macs_per_inference": summary["macs_per_inference"],
           "digital_fp32_J_estimate": summary["digital_energy_per_inference_J_estimate"]["fp32_45nm"],
           "digital_int8_J_estimate": summary["digital_energy_per_inference_J_estimate"]["int8_45nm"]}
    if "training_step" in summary:
        row["training_step_energy_median_J_per_image"] = summary["training_step"]["energy_J_per_image"]["median"]
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(row))
        w.writeheader()
        w.writerow(row)
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(run(main))
