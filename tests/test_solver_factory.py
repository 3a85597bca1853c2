"""make_solver: the one choice between the wire solver and a backend, from a run's settings."""
import pytest

from epsim.errors import EpsimError
from epsim.solvers import BACKENDS, SolverConfig, get_solver, make_solver
from epsim.solvers.numba_solver import NumbaSolver
from epsim.solvers.torch_solver import TorchCircuitSolver
from epsim.solvers.wire_solver import WireSolver
from epsim.training import TrainConfig


@pytest.mark.parametrize("config_type", [SolverConfig, TrainConfig])
def test_wires_win_over_the_backend(config_type):
    for backend in ("numba", "torch"):
        s = make_solver(config_type(backend=backend, tol_A=1e-11, max_iter=77, wire_resistance_ohm=2.5))
        assert isinstance(s, WireSolver)
        assert (s.tol_A, s.max_iter, s.wire_resistance_ohm) == (1e-11, 77, 2.5)


@pytest.mark.parametrize("config_type", [SolverConfig, TrainConfig])
def test_backend_settings(config_type):
    s = make_solver(config_type(backend="numba", tol_A=1e-10, max_iter=5, nudge_rtol=0.01))
    assert isinstance(s, NumbaSolver) and (s.tol_A, s.max_iter, s.nudge_rtol) == (1e-10, 5, 0.01)
    s = make_solver(config_type(backend="torch", tol_A=1e-10, max_iter=5, nudge_rtol=None))
    assert isinstance(s, TorchCircuitSolver) and s.nudge_rtol is None


def test_unknown_backend():
    assert "wires" not in BACKENDS  # chosen by the wire resistance, never by name on the CLI
    with pytest.raises(EpsimError, match="unknown backend"):
        get_solver("nope")
    with pytest.raises(EpsimError, match="unknown backend"):
        make_solver(SolverConfig(backend="nope"))
