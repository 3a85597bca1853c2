"""ngspice inside this process: the shared library (``libngspice``) driven through PySpice.

The ``spice`` backend's other engine runs ``ngspice -b`` as a subprocess per netlist
(:func:`epsim.solvers.ngspice.run_ngspice`); this one loads each netlist into one
long-lived shared ngspice and reads the operating point from memory: no process start, no
raw file. Answers are never trusted as converged on ngspice's word: the ``spice`` backend
certifies every solution with its own KCL residual.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import ConvergenceError
from .ngspice import SpiceError

INSTALL_HINT = ("the pyspice engine needs PySpice (pip install -e '.[spice]') and ngspice's shared "
                "library (apt-get install -y libngspice0-dev)")


class PySpiceEngine:
    """One shared ngspice; :meth:`op` solves a netlist's DC operating point."""

    def __init__(self):
        try:
            from PySpice.Spice.NgSpice.Shared import NgSpiceShared
        except ImportError:
            raise SpiceError(INSTALL_HINT) from None
        # PySpice warns about every ngspice release newer than it knows; the interface used here is stable
        logging.getLogger("PySpice").setLevel(logging.ERROR)
        try:
            self.ng = NgSpiceShared.new_instance()
        except Exception as exc:  # the shared library is missing or cannot be loaded
            raise SpiceError(f"{INSTALL_HINT} ({exc})") from None

    def op(self, netlist_text: str) -> dict:
        """``{node name: volts}`` of the circuit's operating point (node names lower case)."""
        from PySpice.Spice.NgSpice.Shared import NgSpiceCommandError

        ng = self.ng
        ng.clear_output()
        try:
            ng.load_circuit(netlist_text)
            ng.run()
        except NgSpiceCommandError as exc:
            raise ConvergenceError(f"ngspice (shared) failed: {exc}; {ng.stderr[-300:]}") from None
        finally:
            log = ng.stdout + "\n" + ng.stderr
        if "no convergence" in log.lower() or "singular matrix" in log.lower():
            ng.destroy()
            raise ConvergenceError("ngspice (shared) did not find the operating point")
        plot = ng.plot(simulation=None, plot_name=ng.last_plot)
        out = {}
        for name, vec in plot.items():
            if "#branch" in name or name.startswith("i("):
                continue
            out[name.lower()] = float(np.asarray(vec.to_waveform(), dtype=np.float64).reshape(-1)[0])
        ng.destroy()
        return out
