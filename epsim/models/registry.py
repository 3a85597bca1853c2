"""Named circuit architectures, sized for the dataset they are trained on."""
from __future__ import annotations

from ..circuit.devices import DiodeModel
from ..errors import EpsimError
from .resistive import CircuitRanges, build_cnn, build_mlp

CIRCUIT_MODELS = ("cnn", "mlp", "mlp-deep")
# Node voltages of a resistive network are weighted averages of their neighbours', so the
# signal shrinks with depth and with fan-in: deeper circuits and larger images need a
# larger input swing. Keys: (model, small image); values measured best on digits / MNIST
# (the large-image cnn: on CIFAR-10).
DEFAULT_INPUT_GAIN_V = {("cnn", True): 16.0, ("mlp", True): 16.0, ("mlp-deep", True): 48.0,
                        ("cnn", False): 16.0, ("mlp", False): 64.0, ("mlp-deep", False): 128.0}
# KCL tolerance (A) fine enough for the nudge to reach every layer: a hidden node moves by
# its residual over its total conductance, and the cnn on large images has thousands of
# hidden nodes, each tied to the outputs by a small conductance, so at 1e-9 A its conv
# layer's EP gradient is exactly zero (see silent_updates_per_layer in the training history).
DEFAULT_TOL_A = {("cnn", False): 1e-12}
FALLBACK_TOL_A = 1e-9


def is_small_image(image_shape) -> bool:
    """True for images of at most 16x16 pixels (the digits), which get the small variants."""
    return image_shape[1] * image_shape[2] <= 256


def default_tol_A(name: str, image_shape) -> float:
    """Default KCL residual tolerance (A) of circuit model ``name`` on ``image_shape``."""
    return DEFAULT_TOL_A.get((name, is_small_image(image_shape)), FALLBACK_TOL_A)


def build_circuit_model(name: str, image_shape, num_classes: int, *, input_gain_V=None,
                        diode: DiodeModel | None = None, ranges: CircuitRanges | None = None):
    """Circuit network ``name`` for images of ``image_shape`` (C, H, W).

    - ``cnn``: one tied conv layer, then a dense crossbar to the outputs. On images of at
      most 16x16 pixels a 3x3 conv with 16 channels; on larger ones a 4x4 stride-2 conv with
      32 channels (half excitatory, half inhibitory), which halves the resolution.
    - ``mlp``: one hidden layer (64 units on 8x8 images, 100 otherwise: DRN-XS on MNIST).
    - ``mlp-deep``: two hidden layers of the same width.

    ``input_gain_V=None`` takes the model's default from :data:`DEFAULT_INPUT_GAIN_V`.
    """
    if name not in CIRCUIT_MODELS:
        raise EpsimError(f"unknown circuit model {name!r}; choose from {', '.join(CIRCUIT_MODELS)}")
    small = is_small_image(image_shape)
    if input_gain_V is None:
        input_gain_V = DEFAULT_INPUT_GAIN_V[(name, small)]
    kw = dict(input_gain_V=input_gain_V, diode=diode, ranges=ranges)
    width = 64 if small else 100
    if name == "cnn":
        convs = ((16, 3, 1),) if small else ((32, 4, 2),)
        net = build_cnn(image_shape, convs, (), num_classes, **kw)
    elif name == "mlp":
        net = build_mlp(image_shape, (width,), num_classes, **kw)
    else:
        net = build_mlp(image_shape, (width, width), num_classes, **kw)
    net.name = name
    return net
