"""What every equilibrium solver returns: node voltages plus a convergence certificate."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConvergenceError


@dataclass
class Certificate:
    """Proof of (non-)convergence of a batch of DC solves.

    residual_A: ``(B,)`` max KCL violation over the free nodes of each sample, in amperes
                (for an ideal-diode clamped node: the part of the resistor current a
                diode cannot carry, i.e. current of the wrong sign).
    iterations: sweeps (or Newton steps) used.
    tol_A:      the tolerance the solve was asked to reach.
    stop_met:   ``(B,)`` bool, for a solve that stopped on a rule other than ``tol_A``
                (the nudged phases' relative rule, :mod:`epsim.solvers.stop_rule`):
                which samples met that rule. None: the rule is ``residual_A <= tol_A``.
    """

    residual_A: np.ndarray
    iterations: int
    tol_A: float
    backend: str = "numba"
    stop_met: np.ndarray | None = None

    @property
    def converged(self) -> np.ndarray:
        """``(B,)`` bool: which samples met their stopping rule."""
        if self.stop_met is not None:
            return np.asarray(self.stop_met, dtype=bool)
        return self.residual_A <= self.tol_A

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    @property
    def max_residual_A(self) -> float:
        return float(np.max(self.residual_A)) if self.residual_A.size else 0.0

    def require(self, what: str = "equilibrium"):
        """Raise :class:`ConvergenceError` unless every sample converged."""
        if not self.all_converged:
            bad = int(np.sum(~self.converged))
            if self.stop_met is not None:
                raise ConvergenceError(
                    f"{what}: {bad}/{self.residual_A.size} samples did not meet the relative nudge "
                    f"stop rule after {self.iterations} sweeps; raise --max-iter or --nudge-rtol")
            raise ConvergenceError(
                f"{what}: {bad}/{self.residual_A.size} samples did not converge "
                f"(max KCL residual {self.max_residual_A:.3g} A > tol {self.tol_A:.3g} A "
                f"after {self.iterations} iterations); raise --max-iter or loosen --tol")


@dataclass
class Equilibrium:
    """Steady state of a batch of circuits.

    v_input: ``(B, n_0)`` input source voltages (V).
    v_free:  list of ``(B, n_l)`` node voltages (V) of the free layers ``1..L``.
    beta:    nudging strength the state was solved for (dimensionless, see the model).
    response_V: for a nudged phase solved as its change from the free state it started
             from, that change, list of ``(B, n_l)`` (V), to its own precision (``v_free``
             minus the free state rounds it to the precision of the voltages themselves);
             None otherwise.
    """

    v_input: np.ndarray
    v_free: list
    beta: float
    certificate: Certificate
    extras: dict = field(default_factory=dict)
    response_V: list | None = None

    @property
    def v_output(self) -> np.ndarray:
        return self.v_free[-1]


def check_nudge(degree_out, beta) -> None:
    """Refuse a ``-beta`` nudge that would make an output node's conductance non-positive
    (squared error) or its node equations non-monotone (cross-entropy): ``|beta|`` must stay
    below every output node's self-conductance ``degree_out`` ((K,) normalised; numpy array
    or torch tensor)."""
    if beta < 0.0 and bool((degree_out + beta <= 0).any()):
        raise ConvergenceError(
            f"nudging beta={beta} makes an output node's conductance non-positive "
            f"(min output self-conductance {float(degree_out.min()):.3g} g_unit): lower --beta")


def check_no_floating_nodes(degrees) -> None:
    """Refuse a circuit with a free node that no conductance connects (total conductance 0):
    its KCL has no solution (a bias current into it) or no unique one.

    Args:
        degrees: per free layer ``1..L``, ``(n_l,)`` total normalised conductance of each node
            (numpy arrays or torch tensors).

    Raises:
        ConvergenceError: naming the layer and the number of floating nodes.
    """
    for l, d in enumerate(degrees, start=1):
        n_floating = int((d <= 0).sum())
        if n_floating:
            raise ConvergenceError(
                f"layer {l} has {n_floating} node(s) with every conductance at 0 S (floating nodes have "
                "no equilibrium): training drove them there; lower the learning rate or set --g-min above 0")
