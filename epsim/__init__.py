"""epsim: analog-circuit simulator for energy-based networks trained with Equilibrium Propagation."""

__version__ = "0.1.0"
