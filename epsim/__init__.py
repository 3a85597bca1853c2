"""epsim: analog-circuit simulator for energy-based networks trained with Equilibrium Propagation.

Importing the library changes nothing in the process; the command-line tools set their
thread environment themselves (:func:`epsim.cli.set_command_environment`).
"""

__version__ = "0.1.0"
