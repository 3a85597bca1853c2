"""User-facing error type: every mistake a user can make maps to one of these.

The command-line entry points catch :class:`EpsimError` and print its message as a
single line on stderr with a non-zero exit status, never a traceback.
"""


class EpsimError(Exception):
    """A problem with user input (options, files, data); the message is one actionable line."""


class ConvergenceError(EpsimError):
    """An equilibrium solve did not reach its tolerance and the caller asked for strictness."""
