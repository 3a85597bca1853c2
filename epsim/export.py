"""python -m epsim.export: write SPICE netlists of a trained (or the reference) circuit.

Per test sample and phase: ``sample{k}_{phase}.cir`` (ngspice; ``.xyce.cir`` for Xyce) and
``sample{k}_{phase}.op.json`` (the numba solver's node voltages and certificate). Samples
are the first ``--test-subset`` test images of the dataset named in the checkpoint's config.
``--reference`` exports the seeded reference circuit of ``netlists/`` instead.
"""
from __future__ import annotations

import sys

from .cli import (ArgumentParser, add_test_subset, add_threads, prepare_out_dir, run, set_command_environment,
                  set_threads)
from .errors import EpsimError

set_command_environment()  # before numpy loads (below, on use)

PHASE_CHOICES = ("free", "plus", "minus", "all")
DIALECT_CHOICES = ("ngspice", "xyce", "all")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m epsim.export",
        description="Export a circuit model as standalone SPICE netlists (one per test sample "
                    "and phase), each with NAME.op.json holding the numba solver's node voltages.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="checkpoint.pt written by epsim.train")
    src.add_argument("--reference", action="store_true",
                     help="the seeded reference circuit of netlists/ (no checkpoint needed)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the netlists")
    add_test_subset(p, "export the first N test images (in the dataset's order)", default=1, aliases=("--samples",))
    p.add_argument("--phase", default="free", choices=PHASE_CHOICES,
                   help="free (beta=0), plus (+beta), minus (-beta) or all three")
    p.add_argument("--dialect", default="ngspice", choices=DIALECT_CHOICES, help="SPICE dialect(s)")
    p.add_argument("--diode", default=None, choices=("ideal", "shockley"),
                   help="clamp diodes (default: the model's). SPICE has no ideal diode: ideal "
                        "exports use the near-ideal library model circuits/ideal_diode.lib")
    p.add_argument("--rail-offset", type=float, default=None, metavar="V",
                   help="Shockley diodes only: clamp rails at +V (excitatory units) and -V "
                        "(inhibitory) instead of 0 V, cancelling the diodes' forward drop "
                        "(default: the model's, 0 V unless set)")
    p.add_argument("--data-dir", default=None, help="dataset folder (digits needs none)")
    p.add_argument("--tol", type=float, default=1e-15, metavar="A",
                   help="KCL tolerance of the numba solve written to .op.json")
    p.add_argument("--max-iter", type=int, default=100000, help="max numba sweeps per phase")
    p.add_argument("--wire-resistance", type=float, default=None, metavar="OHMS",
                   help="crossbar wire resistance per segment (default: the checkpoint's, 0 for "
                        "--reference); > 0 adds the row/column wire nodes of epsim.circuit.crossbar")
    add_threads(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.test_subset < 1:
        raise EpsimError("--test-subset must be at least 1")
    if not (args.tol > 0 and args.tol < float("inf")):
        raise EpsimError("--tol must be a positive number (amperes)")
    if args.max_iter < 1:
        raise EpsimError("--max-iter must be at least 1")
    if args.rail_offset is not None and not (args.rail_offset >= 0 and args.rail_offset < float("inf")):
        raise EpsimError("--rail-offset must be a voltage >= 0")
    if args.wire_resistance is not None and not (0 <= args.wire_resistance < float("inf")):
        raise EpsimError("--wire-resistance must be a non-negative number of ohms")
    prepare_out_dir(args.out)
    set_threads(args.threads)
    from .circuit.compile import PHASES, with_diode_options
    from .spice.samples import export_samples
    from .data import default_data_dir, load_dataset

    if args.reference:
        from .circuit.reference import REFERENCE_BETA, REFERENCE_TARGET_HIGH_V, reference_network

        net = reference_network()
        dataset_name, beta, high_V = "digits", REFERENCE_BETA, REFERENCE_TARGET_HIGH_V
        source = "reference circuit (epsim.circuit.reference, seeded, untrained)"
    else:
        from .models.loading import load_network

        net, state = load_network(args.checkpoint)
        config = state.get("config", {})
        dataset_name = config.get("dataset", "digits")
        beta, high_V = float(config.get("beta", 0.5)), float(config.get("target_high_V", 1.0))
        source = f"checkpoint {args.checkpoint}"
    net = with_diode_options(net, args.diode, args.rail_offset)
    dataset = load_dataset(dataset_name, args.data_dir or default_data_dir())
    wire_resistance_ohm = args.wire_resistance
    if wire_resistance_ohm is None:
        wire_resistance_ohm = 0.0 if args.reference else float(config.get("wire_resistance_ohm", 0.0))
    n = min(args.test_subset, len(dataset.y_test))
    phases = PHASES if args.phase == "all" else (args.phase,)
    dialects = ("ngspice", "xyce") if args.dialect == "all" else (args.dialect,)
    written = export_samples(net, dataset.x_test[:n], dataset.y_test[:n], args.out, beta=beta,
                             target_high_V=high_V, phases=phases, dialects=dialects,
                             tol_A=args.tol, max_iter=args.max_iter,
                             wire_resistance_ohm=wire_resistance_ohm,
                             header=[f"source: {source}, dataset {dataset_name}"])
    print(f"wrote {len(written)} files for {n} samples x {len(phases)} phases "
          f"({', '.join(dialects)}) to {args.out}")
    if net.diode.kind == "ideal":
        print("note: SPICE has no ideal diode; the netlists use the near-ideal model of "
              "circuits/ideal_diode.lib (forward drop ~0.5 mV), .op.json holds the ideal solution",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run(main))
