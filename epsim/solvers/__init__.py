"""Equilibrium solvers behind one interface: ``prepare(net, v_input)`` then ``solve(...)``."""
from __future__ import annotations

from ..errors import EpsimError

BACKENDS = ("numba",)


def get_solver(name: str, **options):
    """Solver object for backend ``name`` (``tol_A``, ``max_iter`` as options)."""
    if name == "numba":
        from .numba_solver import NumbaSolver

        return NumbaSolver(**options)
    raise EpsimError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
