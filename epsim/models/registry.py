"""Named circuit architectures and presets, sized for the dataset they are trained on.

A name maps to an architecture spec (:mod:`epsim.models.arch`) and, for the presets of
published deep resistive networks (Scellier 2024, "A fast algorithm to simulate nonlinear
resistive networks"), to the training settings published with them.

Their units are epsim's: in both, conductances are in units of one reference conductance
(epsim's ``g_unit``, so a weight ``w`` is ``G / g_unit``), bias currents are in ``g_unit``
volts, node voltages and the input gain are in volts, the cost is
``beta/2 * sum (v_out - y)^2`` with one-hot targets of 1 V (a nudging conductance
``beta * g_unit`` to the target), and the learning rates apply to plain SGD on those
normalised parameters with the gradient averaged over the batch. So the published numbers
carry over unchanged. What differs: the published code runs a fixed 4-6 block coordinate
sweeps per phase, epsim solves every phase to its stopping rule.
"""
from __future__ import annotations

from ..circuit.diodes import DiodeModel
from ..errors import EpsimError
from .arch import connections_from_arch
from .resistive import CircuitRanges, ResistiveNetwork

# Node voltages of a resistive network are weighted averages of their neighbours', so the
# signal shrinks with depth and with fan-in: deeper circuits and larger images need a
# larger input swing. Keys: (model, small image); values measured best on digits / MNIST
# (the large-image cnn: on CIFAR-10).
DEFAULT_INPUT_GAIN_V = {("cnn", True): 16.0, ("mlp", True): 16.0, ("mlp-deep", True): 48.0,
                        ("cnn", False): 16.0, ("mlp", False): 64.0, ("mlp-deep", False): 128.0}
ARCH_INPUT_GAIN_V = 16.0  # an --arch circuit without --input-gain

_DRN_COMMON = {"batch_size": 4, "momentum": 0.0, "lr_schedule": "exponential", "lr_decay": 0.99,
               "init": "clamped-uniform", "weight_gain": 1.0, "target_high_V": 1.0}
# Scellier 2024, papers/fast-drn/drn.py of rain-neuromorphics/energy-based-learning.
# lr is the first layer's rate; lr_layers multiply it (and lr_bias) layer by layer.
PRESETS = {
    "drn-xs": {"arch": "dense:100,dense:{K}", "input_gain_V": 100.0, "beta": 1.0, "lr": 0.006,
               "lr_bias": 0.006, "epochs": 10, **_DRN_COMMON},
    "drn-1h": {"arch": "dense:1024,dense:{K}", "input_gain_V": 480.0, "beta": 1.0, "lr": 0.006,
               "lr_bias": 0.006, "epochs": 50, **_DRN_COMMON},
    "drn-2h": {"arch": "dense:1024,dense:1024,dense:{K}", "input_gain_V": 2000.0, "beta": 1.0,
               "lr": 0.002, "lr_bias": 0.002, "lr_layers": [1.0, 3.0, 9.0], "epochs": 50,
               **_DRN_COMMON},
    "drn-3h": {"arch": "dense:1024,dense:1024,dense:1024,dense:{K}", "input_gain_V": 4000.0,
               "beta": 2.0, "lr": 0.005, "lr_bias": 0.0005, "lr_layers": [1.0, 4.0, 16.0, 1.0],
               "epochs": 50, **_DRN_COMMON},
    "drn-xl": {"arch": "dense:32768,dense:{K}", "input_gain_V": 800.0, "beta": 1.0, "lr": 0.006,
               "lr_bias": 0.006, "epochs": 100, **_DRN_COMMON},
}
# Circuit versions of the seed's EP-CNN: four 3x3 tied conv stages (the later three with
# stride 2: a circuit pools by strided convolution), a dense readout, and bidirectional
# amplifiers between layers sized at initialisation (clamped-uniform conductances) to give
# every layer a node-voltage RMS near 0.2 V from a 4 V input swing. Valid on 28x28 and
# 32x32 images (no padding): 28 -> 26 -> 12 -> 5 -> 2, 32 -> 30 -> 14 -> 6 -> 2.
_CNN_DEEP_COMMON = {"input_gain_V": 4.0, "amp_gain": [12.0, 3.5, 2.2, 1.5], "beta": 1.0,
                    "momentum": 0.0, "lr_schedule": "exponential", "lr_decay": 0.99,
                    "init": "clamped-uniform", "weight_gain": 1.0, "target_high_V": 1.0}
# Per-layer rates that give every layer about the same relative conductance change per update
# at initialisation (gradient RMS / conductance scale measured on MNIST: the third conv stage
# gets the smallest EP signal).
_CNN_DEEP_LAYER_RATES = [1.0, 5.0, 35.0, 15.0, 1.0]
PRESETS.update({
    "cnn-deep": {"arch": "conv:16:3:1,conv:32:3:2,conv:64:3:2,conv:64:3:2,dense:{K}", "lr": 0.05,
                 "lr_bias": 0.05, "lr_layers": _CNN_DEEP_LAYER_RATES, "batch_size": 4,
                 "epochs": 20, **_CNN_DEEP_COMMON},
    "cnn-paper": {"arch": "conv:128:3:1,conv:256:3:2,conv:512:3:2,conv:512:3:2,dense:{K}",
                  "lr": 0.05, "lr_bias": 0.05, "lr_layers": _CNN_DEEP_LAYER_RATES,
                  "batch_size": 32, "epochs": 50, **_CNN_DEEP_COMMON},
})
PRESET_ERRORS = {"drn-xs": "3.46 %", "drn-1h": "1.57 %", "drn-2h": "1.48 %", "drn-3h": "1.66 %",
                 "drn-xl": "1.33 %"}
CIRCUIT_MODELS = ("cnn", "mlp", "mlp-deep") + tuple(PRESETS)


def is_small_image(image_shape) -> bool:
    """True for images of at most 16x16 pixels (the digits), which get the small variants."""
    return image_shape[1] * image_shape[2] <= 256


def model_arch(name: str, image_shape, num_classes: int) -> str:
    """Architecture spec of circuit model ``name`` for images of ``image_shape`` (C, H, W).

    - ``cnn``: one tied conv layer, then a dense crossbar to the outputs. On images of at
      most 16x16 pixels a 3x3 conv with 16 channels; on larger ones a 4x4 stride-2 conv with
      32 channels (half excitatory, half inhibitory), which halves the resolution.
    - ``mlp``: one hidden layer (64 units on 8x8 images, 100 otherwise: DRN-XS on MNIST).
    - ``mlp-deep``: two hidden layers of the same width.
    - ``drn-*``: the published deep resistive networks (:data:`PRESETS`).
    - ``cnn-deep`` / ``cnn-paper``: the seed's four-stage EP-CNN as an amplified circuit,
      16-32-64-64 channels for two CPU cores, 128-256-512-512 as published.
    """
    if name not in CIRCUIT_MODELS:
        raise EpsimError(f"unknown circuit model {name!r}; choose from {', '.join(CIRCUIT_MODELS)}")
    if name in PRESETS:
        return PRESETS[name]["arch"].format(K=num_classes)
    small = is_small_image(image_shape)
    width = 64 if small else 100
    if name == "cnn":
        conv = "conv:16:3:1" if small else "conv:32:4:2"
        return f"{conv},dense:{num_classes}"
    if name == "mlp":
        return f"dense:{width},dense:{num_classes}"
    return f"dense:{width},dense:{width},dense:{num_classes}"


def default_input_gain_V(name: str, image_shape, arch: str | None = None) -> float:
    """Input gain (V) of circuit model ``name`` when none is given."""
    if arch is not None:
        return ARCH_INPUT_GAIN_V
    if name in PRESETS:
        return PRESETS[name]["input_gain_V"]
    return DEFAULT_INPUT_GAIN_V[(name, is_small_image(image_shape))]


def preset_settings(name: str) -> dict:
    """Training settings a preset brings (TrainConfig field names), empty for other models."""
    settings = dict(PRESETS.get(name, {}))
    settings.pop("arch", None)
    return settings


def build_circuit_model(name: str, image_shape, num_classes: int, *, arch: str | None = None,
                        input_gain_V=None, diode: DiodeModel | None = None,
                        ranges: CircuitRanges | None = None, amp_gains=None,
                        input_center: float = 0.0, differential: bool = False,
                        unit_polarity: str = "split") -> ResistiveNetwork:
    """Circuit network ``name`` (or the spec ``arch``) for images of ``image_shape`` (C, H, W).

    ``input_gain_V=None`` takes the model's default (:func:`default_input_gain_V`);
    ``amp_gains``: amplifier gains between free layers (None: no amplifiers);
    ``input_center``: the pixel value whose input sources sit at 0 V;
    ``differential``: every hidden layer presented as ``+v`` and ``-v`` to the next crossbar;
    ``unit_polarity``: hidden units half excitatory / half inhibitory (``split``) or all
    excitatory.
    """
    spec = arch if arch is not None else model_arch(name, image_shape, num_classes)
    if input_gain_V is None:
        input_gain_V = default_input_gain_V(name, image_shape, arch)
    conns = connections_from_arch(spec, image_shape, num_classes, differential, model=name if arch is None else None)
    net = ResistiveNetwork(image_shape, conns, input_gain_V=input_gain_V, diode=diode, ranges=ranges,
                           name=name if arch is None else "arch", amp_gains=amp_gains,
                           input_center=input_center, differential=differential,
                           unit_polarity=unit_polarity)
    net.arch = spec
    return net
