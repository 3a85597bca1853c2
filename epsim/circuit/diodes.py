"""Two-terminal nonlinear device models used by the circuits: the clamp diodes.

Conventions (SPICE): a diode conducts from anode to cathode; the current through it is
``I = Is * (exp(V / (n * Vt)) - 1)`` with ``V = V_anode - V_cathode`` in volts.
An *ideal* diode is the limit of zero forward drop and zero reverse current: it imposes
the inequality ``V_anode <= V_cathode``, carrying whatever non-negative current KCL needs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import EpsimError

BOLTZMANN_J_PER_K = 1.380649e-23
ELEMENTARY_CHARGE_C = 1.602176634e-19


@dataclass(frozen=True)
class DiodeModel:
    """Clamp-diode model.

    kind:        ``"ideal"`` (exact box constraint) or ``"shockley"``.
    is_A:        saturation current Is in amperes (Shockley only).
    n:           emission coefficient (dimensionless, Shockley only).
    temp_K:      junction temperature in kelvin; the thermal voltage is k*T/q.
    """

    kind: str = "ideal"
    is_A: float = 1e-12
    n: float = 1.0
    temp_K: float = 300.15

    def __post_init__(self):
        if self.kind not in ("ideal", "shockley"):
            raise EpsimError(f"unknown diode model {self.kind!r}; choose 'ideal' or 'shockley'")
        if not (self.is_A > 0 and self.n > 0 and self.temp_K > 0):
            raise EpsimError("diode parameters Is, n and T must all be positive")

    @property
    def vt_V(self) -> float:
        """Thermal voltage k*T/q in volts."""
        return BOLTZMANN_J_PER_K * self.temp_K / ELEMENTARY_CHARGE_C

    @property
    def n_vt_V(self) -> float:
        """Emission coefficient times thermal voltage, in volts."""
        return self.n * self.vt_V

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiodeModel":
        return cls(**d)
