"""The nudged phases' stop rule: every layer's remaining error small against its response.

A nudged phase starts from the free state and moves each layer by its *response* to the
nudge, ``delta_l = v_l(beta) - v_l(0)``. The EP gradient of layer ``l`` is made of these
responses, so what matters is the error of ``v_l`` relative to ``|delta_l|``, layer by
layer. An absolute KCL tolerance does not give that: a node whose total conductance is
``a`` stops once its response is below ``tol_A / a``, and layers far from the outputs,
whose response is attenuated by every layer in between, can stop before they move at all.

Per sample and layer, after each sweep:

- ``change_l``: the largest voltage change of the layer's nodes in this sweep (V);
- ``response_l``: the largest distance of the layer's nodes from the free state (V);
- ``rho_l = change_l / change_l(previous sweep)``, the observed contraction of block
  coordinate descent, capped at ``RHO_MAX`` (and taken as ``RHO_MAX`` on the first sweep
  or after a sweep in which the layer did not move);
- the remaining error is bounded by the geometric tail ``change_l / (1 - rho_l)``
  (which counts the last change too, so it is never below it).

The sample has converged when for every layer
``change_l / (1 - rho_l) <= rtol * response_l + floor_V``, where ``floor_V`` is the
rounding level of the layer's voltages (a layer the nudge cannot move, e.g. fully clamped,
converges once it stops changing). Units: volts throughout; ``rtol`` is dimensionless.
"""
from __future__ import annotations

import numba as nb
import numpy as np

RHO_MAX = 0.99        # contraction assumed before two sweeps have been seen, and its cap
ROUNDING = 64 * np.finfo(np.float64).eps


@nb.njit(cache=True)
def rule_step(change_V, response_V, scale_V, change_prev, error_V, rtol, active, met):
    """One sweep of the rule for a batch, in place; the arrays are ``(L, B)`` except
    ``active``/``met`` ``(B,)`` bool. Updates ``change_prev`` and ``error_V`` (the error bound)
    of the active samples and sets ``met`` where the rule holds."""
    n_layers, batch = change_V.shape
    for b in range(batch):
        if not active[b]:
            continue
        ok = True
        for l in range(n_layers):
            change = change_V[l, b]
            prev = change_prev[l, b]
            if change == 0.0:
                error = 0.0
            else:
                rho = change / prev if (prev > 0.0 and prev < np.inf) else RHO_MAX
                if rho > RHO_MAX:
                    rho = RHO_MAX
                error = change / (1.0 - rho)
            error_V[l, b] = error
            change_prev[l, b] = change
            if error > rtol * response_V[l, b] + ROUNDING * scale_V[l, b]:
                ok = False
        if ok:
            met[b] = True
