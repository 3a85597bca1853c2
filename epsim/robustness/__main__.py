"""``python -m epsim.robustness``: see :mod:`epsim.robustness.cli`."""
import sys

from .cli import cli

sys.exit(cli())
