"""Netlist reader time against netlist length: continuation lines must cost linear time.

A netlist of ``N`` ``+`` continuation lines (7 bytes each) after a ``.print`` card is read with
``epsim.circuit.spice_reader.read_netlist`` for N doubling from ``--min-lines`` to
``--max-lines``; per N the median of ``--repeat`` reads, in seconds, and the ratio to the
previous N's time (about 2 for linear time, about 4 for quadratic).

    python benchmarks/bench_reader.py [--min-lines 40000] [--max-lines 320000] [--repeat 3]
"""
from __future__ import annotations

import sys
import statistics
import tempfile
import time
from pathlib import Path

from epsim.cli import ArgumentParser, run
from epsim.circuit.spice_reader import read_netlist


def continuation_netlist(path: Path, lines: int) -> Path:
    path.write_text("title\nV1 a 0 1\nR1 a 0 1k\n.print dc\n" + "+ v(a)\n" * lines + ".end\n")
    return path


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min-lines", type=int, default=40_000, help="smallest number of continuation lines")
    p.add_argument("--max-lines", type=int, default=320_000, help="largest number of continuation lines")
    p.add_argument("--repeat", type=int, default=3, help="reads per size (median reported)")
    args = p.parse_args(argv)
    if not 0 < args.min_lines <= args.max_lines or args.repeat < 1:
        p.error("need 0 < --min-lines <= --max-lines and --repeat >= 1")
    print("| continuation lines | MB | read s (median) | ratio to previous |")
    print("|---|---|---|---|")
    previous = None
    with tempfile.TemporaryDirectory() as tmp:
        lines = args.min_lines
        while lines <= args.max_lines:
            path = continuation_netlist(Path(tmp) / "long.cir", lines)
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                read_netlist(path)
                times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            ratio = f"{t / previous:.2f}" if previous else "–"
            print(f"| {lines:,} | {path.stat().st_size / 1e6:.1f} | {t:.3f} | {ratio} |")
            previous, lines = t, lines * 2


if __name__ == "__main__":
    sys.exit(run(main))
