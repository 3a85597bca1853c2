"""Equilibrium solvers behind one interface: ``prepare(net, v_input)`` then ``solve(...)``."""
from __future__ import annotations

from ..errors import EpsimError

BACKENDS = ("numba", "torch", "spice")


def get_solver(name: str, **options):
    """Solver object for backend ``name`` (``tol_A``, ``max_iter`` as options)."""
    if name == "numba":
        from .numba_solver import NumbaSolver

        return NumbaSolver(**options)
    if name == "torch":
        from .torch_solver import TorchCircuitSolver

        return TorchCircuitSolver(**options)
    if name == "wires":  # exact nodal analysis with crossbar wire resistance (not a --backend)
        from .wire_solver import WireSolver

        return WireSolver(**options)
    if name == "spice":
        from .spice_backend import SpiceSolver

        return SpiceSolver(**options)
    raise EpsimError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
