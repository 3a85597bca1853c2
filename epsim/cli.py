"""Shared command-line plumbing: user errors become one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

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


def prepare_out_dir(path, flag: str = "--out") -> Path:
    """Create the output folder ``path`` (with its parents) and check that files can be written
    in it, before any compute: a run must not end in an error about where to put its results.

    Args:
        path: the folder a command writes its results to. flag: the option that named it.
    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    Raises:
        EpsimError: ``path`` is an existing file, a parent of it is a file, or the folder
            cannot be created or written to (read-only or without permission).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EpsimError(f"{flag} {path} is an existing file, not a folder: choose another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise EpsimError(f"{flag} {path}: a parent of it is a file, not a folder") from None
    except OSError as exc:
        raise EpsimError(f"{flag} {path}: cannot create the folder ({exc.strerror})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".epsim-write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EpsimError(f"{flag} {path}: cannot write in the folder ({exc.strerror})") from None
    return path


def prepare_out_file(path, flag: str = "--out") -> Path:
    """Check that the result file ``path`` can be written (its folder created and writable,
    ``path`` not a folder) before any compute; return it as a :class:`~pathlib.Path`.

    Raises:
        EpsimError: as :func:`prepare_out_dir` for the folder, or ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise EpsimError(f"{flag} {path} is a folder; give the path of the file to write")
    prepare_out_dir(path.parent, flag=f"{flag} folder")
    return path
