"""Move a trained circuit to other layer voltages (the same function with ideal diodes) and save it.

    python analysis/operating_point.py --checkpoint RUN/checkpoint.pt --data-dir DATA \
        --hidden-rms 0.15 1 1 1 --out OUT

Scales hidden layer ``l``'s voltages to an RMS of ``--hidden-rms`` volts over its active nodes
(one voltage for every hidden layer, or one per layer; measured on 200 seeded training images
with ideal diodes) by rescaling the input gain, the amplifier gains and the biases
(:mod:`epsim.operating_point`); conductances and outputs are unchanged. A small first
value gives a small input swing; the amplifiers bring the layers above it back up.

Writes ``OUT/checkpoint.pt`` (a circuit checkpoint with the new input gain and amplifier
gains, the source's diodes and solver settings, read by ``epsim.train --init-from``,
``analysis/diode_gap.py`` and ``epsim.export``) and ``OUT/metrics.json``: the operating point,
the ideal-diode test accuracy before and after on ``--test-subset`` images (equal up to the
KCL tolerance), the largest input source voltage and the largest node voltage per layer on
those images. The last line printed is the ``epsim.train`` options that start a run from it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from epsim.cli import ArgumentParser, add_list, set_command_environment
from epsim.errors import EpsimError

set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of a circuit run of epsim.train")
    p.add_argument("--data-dir", default=None, help="folder with the checkpoint's dataset (digits needs none)")
    add_list(p, "--hidden-rms", item=float, required=True, metavar="V",
             help="RMS voltage of every hidden layer (one value) or of each (one per hidden layer), "
                  "over its active nodes")
    p.add_argument("--test-subset", type=int, default=500, metavar="N",
                   help="seeded random N test images for the accuracy and voltage report (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration and test images (default: 0)")
    p.add_argument("--tol", type=float, default=1e-9, help="free-phase KCL tolerance, A (default: 1e-9)")
    p.add_argument("--threads", type=int, default=1, help="numba threads (default: 1)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for checkpoint.pt and metrics.json (must not hold them)")
    args = p.parse_args(argv)
    try:
        if args.test_subset < 1 or not args.tol > 0 or args.threads < 1:
            raise EpsimError("--test-subset, --tol and --threads must be positive")
        out = Path(args.out)
        for name in ("checkpoint.pt", "metrics.json"):
            if (out / name).exists():
                raise EpsimError(f"{out / name} exists: choose another --out")
        import numba

        from epsim.operating_point import hidden_rms_targets
        from epsim.data import default_data_dir, load_dataset
        from epsim.models.loading import load_network

        net, state = load_network(args.checkpoint)
        hidden_rms_targets(args.hidden_rms, net.num_layers - 1)
        config = dict(state.get("config") or {})
        ds = load_dataset(config.get("dataset", "digits"), args.data_dir or default_data_dir())
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    except EpsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from epsim.checkpoint import save_checkpoint, write_json
    from epsim.circuit.compile import with_diode
    from epsim.operating_point import max_node_voltages, rescaled
    from epsim.learning.ep import free_phase_counts
    from epsim.solvers.factory import SolverConfig, make_solver

    solver = make_solver(SolverConfig(tol_A=args.tol, max_iter=100000))
    n = min(args.test_subset, len(ds.y_test))
    idx = np.sort(np.random.default_rng(args.seed).choice(len(ds.y_test), n, replace=False))
    x, y = ds.x_test[idx], ds.y_test[idx]
    t0 = time.perf_counter()
    ideal = with_diode(net, "ideal")
    try:
        moved_ideal, report = rescaled(ideal, solver, ds.x_train, args.hidden_rms, args.seed)
    except EpsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    accuracy = {}
    for name, circuit in (("before", ideal), ("after", moved_ideal)):
        correct, unconverged, _ = free_phase_counts(circuit, solver, x, y)
        accuracy[name] = {"accuracy": correct / n, "unconverged": int(unconverged)}
    diode = dict(net.describe()["diode"])
    moved = with_diode(moved_ideal, diode.pop("kind"), **diode)   # the source's diodes again
    config.update(input_gain_V=moved.input_gain_V, amp_gain=[float(a) for a in moved.amp_gains])
    result = {"checkpoint": str(args.checkpoint), "n_test": n, "seed": args.seed, "tol_A": args.tol,
              "operating_point": report, "ideal_accuracy_before": accuracy["before"],
              "ideal_accuracy_after": accuracy["after"],
              "largest_input_V": float(np.abs(moved.input_voltages(x)).max()),
              "largest_node_voltage_per_layer_V": max_node_voltages(moved_ideal, solver, x),
              "wall_s": round(time.perf_counter() - t0, 1)}
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "checkpoint.pt", {"kind": "circuit", "model": moved.describe(), "config": config,
                                            "w": moved.w, "b": moved.b, "rescaled_from": str(args.checkpoint)})
    write_json(out / "metrics.json", result)
    amps = " ".join(f"{a:.17g}" for a in moved.amp_gains)
    print(f"ideal-diode accuracy {accuracy['before']['accuracy']:.4f} -> {accuracy['after']['accuracy']:.4f} "
          f"on {n} test images; input gain {moved.input_gain_V:.4g} V, largest input "
          f"{result['largest_input_V']:.3g} V; wrote {out}")
    print(f"--init-from {out / 'checkpoint.pt'} --input-gain {moved.input_gain_V:.17g} --amp-gain {amps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
