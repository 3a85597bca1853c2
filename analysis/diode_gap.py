"""A trained circuit's test accuracy with its ideal diodes and with Shockley diodes, same conductances.

    python analysis/diode_gap.py --checkpoint runs/cnn-deep/checkpoint.pt --data-dir DATA \
        --test-subset 1000

Training and the attacks use ideal clamp diodes (exact box constraints); a fabricated circuit
has junctions with a soft knee and reverse leakage. This solves the free phase of the same
seeded test images twice, with the checkpoint's conductances, biases and amplifiers, once with
ideal diodes and once with Shockley diodes ``I = Is (exp(V / (n Vt)) - 1)`` at ``--is-a`` and
``--n``, and prints the two accuracies and their difference as JSON. A sample whose free phase
misses the KCL tolerance counts as wrong.

``--hidden-rms V [V ...]`` first moves the trained circuit to another operating point: every
hidden layer's voltages (one ``V``) or each layer's (one ``V`` per hidden layer) are scaled to
that RMS over the layer's active nodes (measured on 200 seeded *training* images with ideal
diodes) by rescaling the input gain, the amplifier gains and the biases
(:mod:`epsim.operating_point`; ``analysis/operating_point.py`` saves such a circuit as
a checkpoint to train from). With ideal diodes this is the
same function (the JSON's ``ideal`` accuracy is that of the rescaled circuit, and
``ideal_before_rescaling`` that of the checkpoint's); a Shockley diode's knee (a few tenths of
a volt) stays where it is, so a larger ``V`` leaves it smaller beside the signals. The JSON
reports the factors, the resulting input gain and amplifier gains, and the largest node
voltage per layer on the test images.

``--rail-offset V`` puts the Shockley circuit's clamp rails at ``+V`` (excitatory units) and
``-V`` (inhibitory) instead of 0 V: a Shockley clamp holds its node about one forward drop
``n Vt ln(I / Is)`` beyond its rail, and the offset brings it back near the ideal diode's 0 V
(two bias sources in the circuit).

``--spice-images K`` also solves the first ``K`` of the images with ngspice (``.op`` on the
exported Shockley circuit, one image per run, a progress line per image on stderr): the JSON's
``spice`` entry holds ngspice's accuracy on them beside numba's Shockley accuracy on the same
images, the largest node-voltage difference between the two, ngspice's wall time, and each
image's two predicted classes (``per_image``). Circuits of millions of elements want an
ngspice with KLU (``EPSIM_NGSPICE``, README *SPICE*). A physical check of the
Shockley numbers, not of the ideal ones (SPICE has no ideal diode).
"""
from __future__ import annotations

import json
import sys
import time
import numpy as np

from epsim.cli import ArgumentParser, add_list, set_command_environment
from epsim.errors import EpsimError

set_command_environment()  # the commands' thread settings (OpenMP workers sleep when idle)

SPICE_REFERENCE_TOL_A = 1e-13   # KCL tolerance of the numba solve ngspice is compared with


def accuracy(net, solver, x, y) -> dict:
    """Free-phase accuracy of ``net`` on images ``x`` (N, C, H, W), labels ``y`` (N,)."""
    from epsim.learning.ep import free_phase_counts

    correct, unconverged, worst = free_phase_counts(net, solver, x, y)
    return {"accuracy": correct / len(y), "unconverged": unconverged, "max_residual_A": worst}


def spice_check(shockley, solver, x, y, tol_A: float, timeout_s: float = 3600.0) -> dict:
    """The Shockley circuit's free phase of ``x`` (K, C, H, W) by ngspice and by ``solver``
    (numba), one image per ngspice run: both accuracies on labels ``y`` (K,), ngspice's wall
    time, and the largest |V_ngspice − V_numba| (V) against a numba solve at
    ``SPICE_REFERENCE_TOL_A`` (at the accuracy's ``tol_A`` the numba voltages are only good to
    about ``tol_A`` over a node's conductance); ``per_image`` holds each image's label, both
    predicted classes, that difference and ngspice's seconds. A progress line per image goes
    to stderr. A sample ngspice cannot solve, or whose answer misses ``tol_A``, counts as
    wrong, as in the numba count."""
    from epsim.learning.ep import free_phase
    from epsim.solvers.factory import SolverConfig, make_solver
    from epsim.solvers.spice_backend import SpiceSolver

    spice = SpiceSolver(tol_A=tol_A, compare_numba=False, timeout_s=timeout_s)
    tight_solver = make_solver(SolverConfig(tol_A=SPICE_REFERENCE_TOL_A, max_iter=10**6))
    rows = []
    for k in range(len(y)):
        xk = x[k:k + 1]
        t0 = time.perf_counter()
        by_spice = free_phase(shockley, spice, xk)
        wall_s = time.perf_counter() - t0
        by_numba = free_phase(shockley, solver, xk)
        tight = free_phase(shockley, tight_solver, xk)
        solved = bool(by_spice.certificate.converged[0])
        diff = max(float(np.abs(a - b).max()) for a, b in zip(by_spice.v_free, tight.v_free)) \
            if solved and tight.certificate.converged[0] else float("nan")
        rows.append({"label": int(y[k]),
                     "class_ngspice": int(np.argmax(by_spice.v_output[0])) if solved else None,
                     "class_numba": int(np.argmax(by_numba.v_output[0]))
                     if by_numba.certificate.converged[0] else None,
                     "max_abs_diff_V": diff, "ngspice_s": round(wall_s, 1)})
        print(f"ngspice image {k + 1}/{len(y)}: {wall_s:.0f} s, max |V_ngspice - V_numba| {diff:.1e} V",
              file=sys.stderr, flush=True)

    def acc(key):
        return float(np.mean([r[key] == r["label"] for r in rows]))

    diffs = [r["max_abs_diff_V"] for r in rows if not np.isnan(r["max_abs_diff_V"])]
    return {"n": int(len(y)), "accuracy_ngspice": acc("class_ngspice"), "accuracy_numba": acc("class_numba"),
            "unconverged_ngspice": sum(r["class_ngspice"] is None for r in rows),
            "max_abs_diff_V": max(diffs) if diffs else float("nan"),
            "reference_tol_A": SPICE_REFERENCE_TOL_A,
            "ngspice_wall_s": round(sum(r["ngspice_s"] for r in rows), 1), "per_image": rows}


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of a circuit run of epsim.train")
    p.add_argument("--data-dir", default=None, help="folder with the checkpoint's dataset (digits needs none)")
    p.add_argument("--test-subset", type=int, default=1000, metavar="N",
                   help="seeded random N test images (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset (default: 0)")
    p.add_argument("--is-a", type=float, default=1e-12, help="Shockley saturation current Is, A (default: 1e-12)")
    p.add_argument("--n", type=float, default=1.0, help="Shockley emission coefficient (default: 1)")
    p.add_argument("--tol", type=float, default=1e-9, help="free-phase KCL tolerance, A (default: 1e-9)")
    p.add_argument("--threads", type=int, default=1, help="numba threads (default: 1)")
    add_list(p, "--hidden-rms", item=float, default=None, metavar="V",
             help="scale every hidden layer (one voltage) or each (one per hidden layer) to this RMS "
                  "voltage over its active nodes before comparing (default: the checkpoint's "
                  "operating point)")
    p.add_argument("--rail-offset", type=float, default=0.0, metavar="V",
                   help="Shockley clamp rails at +V (excitatory) and -V (inhibitory) instead of 0 V, "
                        "to cancel the diodes' forward drop, about n Vt ln(I/Is) at the nodes' "
                        "currents I (default: 0)")
    p.add_argument("--spice-images", type=int, default=0, metavar="K",
                   help="also solve the first K images' Shockley circuit with ngspice and compare "
                        "(default: 0, none)")
    p.add_argument("--spice-timeout", type=float, default=3600.0, metavar="S",
                   help="wall-clock limit of each ngspice run, seconds (default: 3600; a circuit of "
                        "a million resistors takes minutes)")
    args = p.parse_args(argv)
    try:
        if args.test_subset < 1 or args.is_a <= 0 or args.n <= 0 or args.tol <= 0:
            raise EpsimError("--test-subset, --is-a, --n and --tol must be positive")
        if not (np.isfinite(args.rail_offset) and args.rail_offset >= 0):
            raise EpsimError("--rail-offset must be a voltage >= 0")
        if args.spice_images < 0:
            raise EpsimError("--spice-images must be 0 or more")
        if not args.spice_timeout > 0:
            raise EpsimError("--spice-timeout must be a positive number of seconds")
        if args.spice_images:
            from epsim.solvers.ngspice import find_ngspice

            find_ngspice()
        import numba

        from epsim.circuit.compile import with_diode
        from epsim.data import default_data_dir, load_dataset
        from epsim.models.loading import load_network
        from epsim.operating_point import hidden_rms_targets, max_node_voltages, rescaled
        from epsim.solvers.factory import SolverConfig, make_solver

        numba.set_num_threads(args.threads)
        net, state = load_network(args.checkpoint)
        if args.hidden_rms is not None:
            hidden_rms_targets(args.hidden_rms, net.num_layers - 1)
        dataset = state.get("config", {}).get("dataset", "digits")
        ds = load_dataset(dataset, args.data_dir or default_data_dir())
    except EpsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = min(args.test_subset, len(ds.y_test))
    idx = np.sort(np.random.default_rng(args.seed).choice(len(ds.y_test), n, replace=False))
    x, y = ds.x_test[idx], ds.y_test[idx]
    solver = make_solver(SolverConfig(tol_A=args.tol, max_iter=100000))
    ideal = with_diode(net, "ideal")
    result = {"checkpoint": str(args.checkpoint), "dataset": dataset, "n": n, "seed": args.seed,
              "tol_A": args.tol, "shockley_diode": {"is_A": args.is_a, "n": args.n,
                                                    "rail_offset_V": args.rail_offset}}
    if args.hidden_rms is not None:
        result["ideal_before_rescaling"] = accuracy(ideal, solver, x, y)
        try:
            ideal, result["operating_point"] = rescaled(ideal, solver, ds.x_train, args.hidden_rms, args.seed)
        except EpsimError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    shockley = with_diode(ideal, "shockley", is_A=args.is_a, n=args.n, rail_offset_V=args.rail_offset)
    for name, circuit in (("ideal", ideal), ("shockley", shockley)):
        t0 = time.perf_counter()
        result[name] = {**accuracy(circuit, solver, x, y), "wall_s": round(time.perf_counter() - t0, 1)}
    result["max_node_V_per_layer"] = max_node_voltages(ideal, solver, x)
    result["gap_points"] = 100 * (result["ideal"]["accuracy"] - result["shockley"]["accuracy"])
    if args.spice_images:
        k = min(args.spice_images, n)
        try:
            result["spice"] = spice_check(shockley, solver, x[:k], y[:k], args.tol, args.spice_timeout)
        except EpsimError as exc:   # ngspice failed or timed out: keep the numba results
            print(f"warning: ngspice: {exc}", file=sys.stderr)
            result["spice"] = {"n": k, "error": str(exc)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
