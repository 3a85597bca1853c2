"""The SPICE dialects epsim writes and reads, and their temperature convention.

A simulator computes the thermal voltage ``Vt = k T / q`` with its own constants (ngspice 39:
CODATA 2014; Xyce: the SPICE3 values). A netlist's ``TEMP`` and ``TNOM`` (equal, so ``IS``
is not temperature-scaled) are chosen so that the simulator's ``Vt`` equals epsim's
(CODATA 2018, :mod:`epsim.circuit.diodes`) at the circuit's temperature: the writer
(:mod:`epsim.circuit.spice_writer`) converts with :func:`simulator_temperature_C`, the reader
(:mod:`epsim.circuit.spice_reader`) back with :func:`epsim_temperature_K`.
"""
from __future__ import annotations

from ..errors import EpsimError
from .diodes import BOLTZMANN_J_PER_K, ELEMENTARY_CHARGE_C

DIALECTS = ("ngspice", "xyce")
KELVIN_AT_0C = 273.15
EPSIM_K_OVER_Q = BOLTZMANN_J_PER_K / ELEMENTARY_CHARGE_C
SIMULATOR_K_OVER_Q = {
    "ngspice": 1.38064852e-23 / 1.6021766208e-19,
    "xyce": 1.3806226e-23 / 1.6021918e-19,
}


def simulator_temperature_C(temp_K: float, dialect: str) -> float:
    """TEMP/TNOM (degrees C) giving the simulator the thermal voltage epsim has at ``temp_K``."""
    check_dialect(dialect)
    t = temp_K * EPSIM_K_OVER_Q / SIMULATOR_K_OVER_Q[dialect] - KELVIN_AT_0C
    return float(round(t, 12))


def epsim_temperature_K(temp_C: float, dialect: str) -> float:
    """Inverse of :func:`simulator_temperature_C`: epsim temperature (K) of a netlist's TEMP."""
    check_dialect(dialect)
    return float((temp_C + KELVIN_AT_0C) * SIMULATOR_K_OVER_Q[dialect] / EPSIM_K_OVER_Q)


def check_dialect(dialect: str) -> None:
    """EpsimError unless ``dialect`` is one of :data:`DIALECTS`."""
    if dialect not in DIALECTS:
        raise EpsimError(f"unknown SPICE dialect {dialect!r}; choose from {', '.join(DIALECTS)}")
