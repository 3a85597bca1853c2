"""Which equilibrium solver a run uses: by backend name, or from a run's settings.

:func:`get_solver` builds a backend by name; :func:`make_solver` is the one place that
decides between the exact wire solver (crossbar wires with resistance) and the chosen
backend, for training, evaluation, device sweeps and exports alike.
"""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class SolverConfig:
    """The solver settings of :func:`make_solver` (a training run's config has the same fields).

    backend: ``numba``, ``torch`` or ``spice`` (used when ``wire_resistance_ohm`` is 0).
    tol_A: KCL residual tolerance (A); max_iter: sweep / iteration limit per phase.
    wire_resistance_ohm: per crossbar wire segment (ohms); > 0 selects the wire solver.
    nudge_rtol: relative stopping rule of the nudged phases (numba and torch backends;
        None: the absolute ``tol_A`` rule).
    """

    backend: str = "numba"
    tol_A: float = 1e-9
    max_iter: int = 1000
    wire_resistance_ohm: float = 0.0
    nudge_rtol: float | None = None


def make_solver(config):
    """The equilibrium solver a run's settings ask for (wire-aware when wires have resistance).

    ``config``: any object with the fields of :class:`SolverConfig` (e.g. a ``TrainConfig``).
    """
    if config.wire_resistance_ohm > 0:
        return get_solver("wires", tol_A=config.tol_A, max_iter=config.max_iter,
                          wire_resistance_ohm=config.wire_resistance_ohm)
    if config.backend in ("numba", "torch"):
        return get_solver(config.backend, tol_A=config.tol_A, max_iter=config.max_iter,
                          nudge_rtol=config.nudge_rtol)
    return get_solver(config.backend, tol_A=config.tol_A, max_iter=config.max_iter)
