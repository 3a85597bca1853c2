"""Centered-EP conductance gradients of circuits with wire resistance.

With wire resistance a device's two terminals are internal wire nodes, not neuron nodes, so
the local quantity of the EP learning rule is the voltage across the device itself: the wire
solver reports it per nudged phase (``Equilibrium.extras["device_drop_V"]``, per connection
``(B, T, R, C)`` in V, with the crossbar layouts in ``extras["layouts"]``, see
:mod:`epsim.circuit.crossbar` and :mod:`epsim.solvers.wire_solver`).
"""
from __future__ import annotations

import numpy as np


def device_param_grads(net, eq_plus, eq_minus, beta, weights):
    """Centered-EP gradients from the drops across the devices themselves (with wires).

    ``dL/dw_t = sum_b weight_b sum_(devices of t) [ (dv^+)^2 - (dv^-)^2 ] / (4 beta)``, where
    ``dv`` is the voltage between a device's row-wire and column-wire nodes (in
    ``Equilibrium.extras["device_drop_V"]``); bias gradients use the neuron voltages.
    """
    drops_p = eq_plus.extras["device_drop_V"]
    drops_m = eq_minus.extras["device_drop_V"]
    layouts = eq_plus.extras["layouts"]
    grad_w, grad_b = [], []
    for l, (dp, dm, lay) in enumerate(zip(drops_p, drops_m, layouts)):
        sq = np.einsum("b,btrc->rc", weights, dp * dp - dm * dm)
        g = np.bincount(lay.param.ravel(), weights=sq.ravel(), minlength=net.w[l].size)
        grad_w.append((0.5 * g / (2.0 * beta)).reshape(net.w[l].shape))
        dv = (eq_plus.v_free[l] - eq_minus.v_free[l]) * weights[:, None]
        shape = net.layer_shapes[l + 1]
        if len(shape) == 3:
            dv = dv.reshape(dv.shape[0], shape[0], -1).sum(axis=2)
        grad_b.append(-dv.sum(axis=0) / (2.0 * beta))
    return grad_w, grad_b
