"""Early readout under attack: a circuit whose class is read at a fixed time after the
inputs switch on, before it has settled.

:class:`EarlyReadoutAdapter` wraps a :class:`~epsim.robustness.adapters.CircuitAdapter`: its
predictor simulates the free phase from 0 V in time (:func:`epsim.solvers.transient.simulate`)
and reads the output voltages at ``readout_time_s``; the attacker keeps every white-box
gradient path of the settled circuit (BPTT, implicit, EP) and ``unroll`` (the gradient of the
block-sweep unroll). So the harness measures whether reading early helps an attacker who
attacks the settled circuit: the robust accuracy at each readout time against the settled one.
"""
from __future__ import annotations

import numpy as np

from ..errors import EpsimError
from .adapters import Prediction


class EarlyReadoutAdapter:
    """A circuit read at ``readout_time_s`` (s) after its inputs switch on (see the module
    docstring); ``caps``: :class:`~epsim.solvers.transient.Capacitances`; ``lte_tol_V``,
    ``tol_A``: the transient's step error and KCL tolerance."""

    kind = "circuit"
    score_unit = "V"
    has_equilibrium = False

    def __init__(self, base, readout_time_s, *, caps=None, lte_tol_V=1e-4, tol_A=1e-9):
        from ..solvers.transient import Capacitances

        if not (np.isfinite(readout_time_s) and readout_time_s > 0):
            raise EpsimError("the readout time must be a positive time (s)")
        self.base = base
        self.net = base.net
        self.readout_time_s = float(readout_time_s)
        self.caps = caps or Capacitances()
        self.lte_tol_V, self.tol_A = float(lte_tol_V), float(tol_A)
        self.name = f"{base.name} read at {self.readout_time_s:.3g} s"
        self.grad_paths = base.grad_paths
        self.solver, self.batch_size = base.solver, base.batch_size

    @property
    def image_shape(self):
        return self.base.image_shape

    @property
    def num_classes(self):
        return self.base.num_classes

    @property
    def logit_scale(self):
        return self.base.logit_scale

    def settings(self) -> dict:
        return dict(self.base.settings(), readout_time_s=self.readout_time_s,
                    scores="output node voltages (V) at the readout time",
                    cell_capacitance_F=self.caps.cell_F, node_capacitance_F=self.caps.node_F)

    def predict(self, x) -> Prediction:
        from ..solvers.transient import simulate

        x = np.asarray(x, np.float64)
        out = []
        for i in range(0, len(x), self.batch_size):
            tr = simulate(self.net, self.net.input_voltages(x[i:i + self.batch_size]), caps=self.caps,
                          t_stop_s=self.readout_time_s, lte_tol_V=self.lte_tol_V, tol_A=self.tol_A,
                          probe_nodes=0, powers=False)
            out.append(tr.v_out[-1])
        return Prediction(np.concatenate(out), np.ones(len(x), bool), None, 0)

    def input_gradient(self, x, y, loss, path):
        return self.base.input_gradient(x, y, loss, path)

    def unrolled_gradient(self, x, y, loss, n_steps):
        return self.base.unrolled_gradient(x, y, loss, n_steps)
