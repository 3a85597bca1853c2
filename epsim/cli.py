"""Shared command-line plumbing: user errors become one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys

from .errors import EpsimError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already states one or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default in (None, False) or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump) and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def run(main, argv=None) -> int:
    """Call ``main(argv)``; turn :class:`EpsimError` into ``error: ...`` and exit status 2."""
    try:
        main(argv)
    except EpsimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    return 0


def explicit_options(build_parser, argv) -> set:
    """Destinations of the options given on the command line ``argv`` (not left at default)."""
    probe = build_parser()
    probe.set_defaults(**{a.dest: None for a in probe._actions if a.dest != "help"})
    return {k for k, v in vars(probe.parse_args(argv)).items() if v is not None and v is not False}
