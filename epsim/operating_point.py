"""The operating voltages of a trained circuit: measure them and move them.

With ideal clamp diodes at 0 V a layered circuit is positively homogeneous: scaling a hidden
layer's voltages, with the input gain, the amplifier gains and the biases rescaled to match
(:func:`~epsim.circuit.compile.with_layer_scales`), computes the same function. A physical
junction's knee, a few n·Vt wide and a forward drop of a few tenths of a volt, does not scale,
so the voltages a trained circuit runs at decide how close Shockley diodes come to the ideal
ones. This module picks those voltages by the RMS of each hidden layer's active nodes.
"""
from __future__ import annotations

import numpy as np

from .errors import EpsimError

CALIBRATION_IMAGES = 200   # seeded training images the RMS is measured on


def active_rms(net, solver, x) -> list:
    """Per hidden layer, the RMS voltage (V) over nodes off their clamp, free phase of ``x``
    (``(B, C, H, W)`` or ``(B, n)`` pixels); 0 for a layer with no active node."""
    from .learning.ep import active_nodes, free_phase

    eq = free_phase(net, solver, x)
    return [float(np.sqrt(np.mean(v[a] ** 2))) if a.any() else 0.0
            for v, a in zip(eq.v_free[:-1], active_nodes(net, eq.v_free[:-1]))]


def hidden_rms_targets(hidden_rms_V, num_hidden: int) -> list:
    """``hidden_rms_V`` (one voltage, or one per hidden layer) as ``num_hidden`` voltages (V);
    an :class:`EpsimError` when the count or a value is wrong."""
    v = [float(a) for a in np.atleast_1d(hidden_rms_V)]
    if len(v) == 1:
        v = v * num_hidden
    if len(v) != num_hidden:
        raise EpsimError(f"--hidden-rms needs one voltage or {num_hidden} (one per hidden layer), got {len(v)}")
    if not all(np.isfinite(a) and a > 0 for a in v):
        raise EpsimError("--hidden-rms must be positive numbers of volts")
    return v


def rescaled(net, solver, x_train, hidden_rms_V, seed: int) -> tuple:
    """``(circuit, report)``: ``net`` with hidden layer ``l``'s active-node RMS moved to
    ``hidden_rms_V`` (one voltage for every hidden layer, or one per layer) on
    :data:`CALIBRATION_IMAGES` seeded training images (``x_train``, ideal diodes), and a dict of
    what changed (RMS before, factors, input gain in V, amplifier gains)."""
    from .circuit.compile import with_layer_scales

    targets = hidden_rms_targets(hidden_rms_V, net.num_layers - 1)
    idx = np.random.default_rng([seed, 2]).choice(len(x_train), min(CALIBRATION_IMAGES, len(x_train)),
                                                 replace=False)
    rms = active_rms(net, solver, x_train[np.sort(idx)])
    if min(rms) <= 0:
        raise EpsimError("a hidden layer has no active node on the calibration images: cannot rescale it")
    factors = [t / r for t, r in zip(targets, rms)]
    out = with_layer_scales(net, factors)
    report = {"hidden_rms_V": targets[0] if len(set(targets)) == 1 else targets, "rms_before_V": rms,
              "factors": factors, "input_gain_V": out.input_gain_V,
              "amp_gains": [float(a) for a in out.amp_gains]}
    return out, report


def max_node_voltages(net, solver, x, batch: int = 500) -> list:
    """Per free layer, the largest |node voltage| (V) over the free phases of ``x``."""
    from .learning.ep import free_phase

    peak = np.zeros(net.num_layers)
    for i in range(0, len(x), batch):
        eq = free_phase(net, solver, x[i:i + batch])
        peak = np.maximum(peak, [float(np.abs(v).max()) for v in eq.v_free])
    return peak.tolist()
