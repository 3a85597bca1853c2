"""One Markdown table from several ``python -m epsim.robustness`` output folders.

    python analysis/robustness_table.py LABEL=DIR[,DIR...] ... [--columns pgd-l2@0.5 square-linf@8/255 ...]

Each ``LABEL=DIR,DIR`` names one model and the robustness folders of its runs (e.g. its L2,
L∞ and corruption runs); every cell is read from a row of a ``robustness.json`` there, with
✓ when every sanity check of that row and of its run passed, else the failed checks.
Columns are ``ATTACK@EPS`` (ε as on the command line, e.g. ``8/255``) or ``corruptions@S``
(mean over corruptions at severity ``S``); a missing row prints as ``–``.
"""
from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

from epsim.cli import ArgumentParser

DEFAULT_COLUMNS = ("pgd-l2@0.25", "pgd-l2@0.5", "square-l2@0.5", "pgd-linf@2/255", "pgd-linf@8/255",
                   "square-linf@8/255", "corruptions@1", "corruptions@5")


def _eps(text: str) -> float:
    return float(Fraction(text)) if "/" in text else float(text)


def _load(dirs):
    runs = []
    for d in dirs:
        path = Path(d) / "robustness.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist")
        runs.append(json.loads(path.read_text()))
    return runs


def _find(runs, column):
    attack, _, arg = column.partition("@")
    for run in runs:
        for row in run["rows"]:
            if row["attack"] != attack or row.get("sanity_only"):
                continue
            if attack == "corruptions":
                if row.get("corruption") == "mean" and row.get("severity") == int(arg):
                    return run, row
            elif row.get("eps") is not None and abs(row["eps"] - _eps(arg)) < 1e-9:
                return run, row
    return None, None


def _cell(run, row) -> str:
    if row is None:
        return "–"
    failed = sorted(set(row.get("failed_checks") or []) | set(run.get("failed_checks") or []))
    mark = "✓" if not failed else "✗ " + ", ".join(failed)
    return f"{100 * row['robust_accuracy']:.1f} {mark}"


def table(models: dict, columns) -> str:
    head = "| model | n | clean | " + " | ".join(columns) + " |"
    lines = [head, "|" + "---|" * (3 + len(columns))]
    for label, runs in models.items():
        first = runs[0]
        cells = [_cell(*_find(runs, c)) for c in columns]
        lines.append(f"| {label} | {first['n']} | {100 * first['clean_accuracy']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", metavar="LABEL=DIR[,DIR...]")
    p.add_argument("--columns", nargs="+", default=list(DEFAULT_COLUMNS), metavar="ATTACK@EPS")
    args = p.parse_args(argv)
    models = {}
    for spec in args.models:
        label, sep, dirs = spec.partition("=")
        if not sep or not dirs:
            print(f"error: {spec!r} is not LABEL=DIR[,DIR...]", file=sys.stderr)
            return 2
        models[label] = _load(dirs.split(","))
    print(table(models, args.columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
