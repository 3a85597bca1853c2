"""Shared command-line plumbing of the ``python -m epsim.*`` commands.

* :func:`set_command_environment`: process settings every command makes before numpy loads.
* :class:`ArgumentParser` / :class:`HelpFormatter`: one-line errors (exit status 2), every
  default shown once.
* Option helpers, one name per concept across the commands: :func:`add_test_subset`,
  :func:`add_attack_subset`, :func:`add_threads`, :func:`add_device`, :func:`add_dataset`,
  :func:`add_list` (space- and comma-separated lists), :func:`add_deprecated_alias`.
* :func:`run` (user errors become ``error: ...`` on stderr, exit status 2),
  :func:`prepare_out_dir` / :func:`prepare_out_file` (the output location is checked before
  any compute).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from .errors import EpsimError


def set_command_environment() -> None:
    """Thread settings of the command-line tools, for a process that has not loaded numpy yet.

    Call it at the top of every command module, before numpy (or numba) is imported; a
    library import leaves the process environment alone. Values already set win.
    """
    # numba's parallel loops run on OpenMP; its default busy-waiting threads make every short
    # parallel region wait for a time slice when the cores are shared (measured: 50x slower
    # training steps on a loaded 2-core machine). Sleeping workers cost nothing measurable
    # when the machine is idle. Must be set before the OpenMP runtime loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # The solver's matrix products are small (a batch times one crossbar); multi-threaded
    # OpenBLAS spends longer synchronising its threads than computing them (measured: a
    # 16x1568 @ 1568x100 product takes 0.2 ms on one thread, 60 ms on two busy cores), and
    # numba already parallelises over the batch. Set before numpy loads OpenBLAS.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default once: not when its help already states one (``(default``),
    nor when there is none to show (None, False, an empty list). List defaults are shown as
    they are typed (space-separated). Texts with line breaks (examples) are kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "(default" in text or default is argparse.SUPPRESS or default is None or default is False \
                or (isinstance(default, (list, tuple)) and not default):
            return text
        shown = " ".join(str(v) for v in default) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        import textwrap

        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump), exit status 2, and
    :class:`HelpFormatter` unless another is given.

    ``warn_deprecated``: whether a deprecated alias (:func:`add_deprecated_alias`) prints its
    warning when parsed (off for the second parse of :func:`explicit_options`).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.warn_deprecated = True

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- option helpers
def add_deprecated_alias(parser, old: str, new: str) -> argparse.Action:
    """Accept option ``old`` as a deprecated spelling of the existing option ``new`` (of
    ``parser`` or of the argument group ``parser``).

    The alias takes the same values and lands in the same destination, is hidden from
    ``--help``, and prints ``warning: OLD is deprecated; use NEW`` on stderr when used.
    """
    target = parser._option_string_actions[new]
    return parser.add_argument(old, action=_DeprecatedAlias, target=target, dest=target.dest,
                               nargs=target.nargs, type=target.type, choices=target.choices,
                               metavar=target.metavar, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


class _DeprecatedAlias(argparse.Action):
    """Warns, then does what the option it stands for does."""

    def __init__(self, option_strings, dest, target=None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.target = target

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(parser, "warn_deprecated", True):
            print(f"warning: {option_string} is deprecated; use {self.target.option_strings[0]}",
                  file=sys.stderr)
        self.target(parser, namespace, values, self.target.option_strings[0])


def deprecated_aliases(parser) -> dict:
    """``{old: new}`` of every deprecated alias of ``parser``."""
    return {a.option_strings[0]: a.target.option_strings[0] for a in parser._actions
            if isinstance(a, _DeprecatedAlias)}


def add_test_subset(parser, help: str, *, default=None, aliases=(), type=int) -> argparse.Action:
    """``--test-subset N``: how many test images a command uses. ``help`` says which ones
    (random or the first N) and what the default means; ``aliases`` are deprecated names."""
    action = parser.add_argument("--test-subset", type=type, default=default, metavar="N", help=help)
    for old in aliases:
        add_deprecated_alias(parser, old, "--test-subset")
    return action


def add_attack_subset(parser, help: str, *, default=100) -> argparse.Action:
    """``--attack-subset N`` (deprecated ``--attack-n``): how many test images are attacked."""
    action = parser.add_argument("--attack-subset", type=int, default=default, metavar="N", help=help)
    add_deprecated_alias(parser, "--attack-n", "--attack-subset")
    return action


def add_threads(parser, aliases=()) -> argparse.Action:
    """``--threads N``: CPU threads of numba and torch (applied by :func:`set_threads`)."""
    action = parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="CPU threads of numba and torch (default: the libraries' own choice); on busy "
             "shared cores 1 can be several times faster than 2")
    for old in aliases:
        add_deprecated_alias(parser, old, "--threads")
    return action


def set_threads(n) -> None:
    """Apply ``--threads``: ``n`` numba and torch CPU threads (None: leave the defaults)."""
    if n is None:
        return
    if n < 1:
        raise EpsimError("--threads must be at least 1")
    import numba
    import torch

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(n)


DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_name(text: str) -> str:
    """argparse type of ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    name = str(text).strip().lower()
    if not _DEVICE_RE.match(name):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; choose from {', '.join(DEVICE_NAMES)}")
    return name


def add_device(parser, help: str, *, default="auto") -> argparse.Action:
    """``--device``: a torch device, validated (:func:`device_name`); ``help`` says what runs there."""
    return parser.add_argument("--device", type=device_name, default=default, metavar="{" + ",".join(DEVICE_NAMES) + "}",
                               help=help + "; auto: CUDA when present, else CPU")


def add_dataset(parser, choices, help: str, *, default=None) -> argparse.Action:
    """``--dataset`` with ``choices`` (the dataset names a command can use)."""
    return parser.add_argument("--dataset", default=default, choices=tuple(choices), help=help)


def add_list(parser, *flags, item=str, choices=None, split=None, **kwargs) -> argparse.Action:
    """A list option: values separated by spaces (``--x a b``), commas (``--x a,b``) or both.

    Args:
        item: converts one value (``str``, ``int``, ``float``, or a function that returns a
            list, e.g. for ``log:a:b:n``); choices: allowed values (checked after ``item``).
        split: splits one command-line word into values (default: at commas).
        kwargs: the remaining ``add_argument`` arguments (``default``, ``metavar``, ``help``).
    """
    return parser.add_argument(*flags, nargs="+", type=ListItems(item, choices, split), action=_ExtendList, **kwargs)


class ListItems:
    """argparse type of one word of a list option: the word split (at commas) and converted."""

    def __init__(self, item=str, choices=None, split=None):
        self.item, self.choices, self.split = item, choices, split or _split_commas
        self.__name__ = getattr(item, "__name__", "value")  # argparse's "invalid <name> value"

    def __call__(self, word: str) -> list:
        out = []
        for part in self.split(word):
            try:
                value = self.item(part)
            except EpsimError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
            except (TypeError, ValueError):
                raise argparse.ArgumentTypeError(f"invalid {self.__name__} value: {part!r}") from None
            values = value if isinstance(value, list) else [value]
            for v in values:
                if self.choices is not None and v not in self.choices:
                    raise argparse.ArgumentTypeError(
                        f"invalid choice {v!r}; choose from {', '.join(map(str, self.choices))}")
            out.extend(values)
        return out


def _split_commas(word: str) -> list:
    return [p.strip() for p in str(word).split(",") if p.strip()]


class _ExtendList(argparse.Action):
    """Stores the values of all the option's words as one flat list."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [v for word in values for v in word])



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
    probe.warn_deprecated = False
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
