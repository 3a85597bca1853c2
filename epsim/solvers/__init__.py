"""Equilibrium solvers behind one interface: ``prepare(net, v_input)`` then ``solve(...)``.

Built by :mod:`epsim.solvers.factory` (:func:`get_solver` by name, :func:`make_solver` from a
run's settings).
"""
from __future__ import annotations

from .factory import BACKENDS, SolverConfig, get_solver, make_solver

__all__ = ["BACKENDS", "SolverConfig", "get_solver", "make_solver"]
