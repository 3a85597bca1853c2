"""The small reference circuit whose netlists live in ``netlists/``.

A digits MLP 2x(8x8) inputs -> 4 hidden units (2 excitatory, 2 inhibitory) -> 10 linear
outputs with Shockley clamp diodes, conductances and bias currents drawn from a seeded
generator (no training), so its netlists are identical on every machine bit for bit.
"""
from __future__ import annotations

import numpy as np

from .diodes import DiodeModel
from ..models.resistive import build_mlp

REFERENCE_SEED = 0
REFERENCE_INPUT_GAIN_V = 16.0
REFERENCE_BETA = 0.5
REFERENCE_TARGET_HIGH_V = 1.0


def reference_network():
    """The reference :class:`~epsim.models.resistive.ResistiveNetwork` (deterministic)."""
    net = build_mlp((1, 8, 8), hidden=(4,), num_classes=10, input_gain_V=REFERENCE_INPUT_GAIN_V,
                    diode=DiodeModel(kind="shockley"))
    net.name = "reference-mlp"
    rng = np.random.default_rng(REFERENCE_SEED)
    net.init_params(rng, weight_gain=1.0)
    net.b = [rng.uniform(-0.5, 0.5, size=b.shape) for b in net.b]
    return net
