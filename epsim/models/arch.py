"""Circuit architectures written as a compact spec string.

A spec lists the free layers from the input side to the output, separated by commas:

- ``conv:C:K``, ``conv:C:K:S`` or ``conv:C:K:S:P``: a tied convolutional crossbar with ``C``
  output channels (half excitatory, half inhibitory), a ``K x K`` kernel, stride ``S``
  (default 1) and zero padding ``P`` (default 0, ``0 <= P < K``): the kernel positions in the
  padded border join the output node through the same tied conductance to the 0 V rail;
- ``dense:N``: a dense crossbar to ``N`` units.

The last entry is the output layer (linear nodes, no clamp diodes) and must be
``dense:<number of classes>``. Example: ``conv:16:3:1:1,conv:32:3:2,dense:10``;
the DRN-2H network on MNIST is ``dense:1024,dense:1024,dense:10``.
"""
from __future__ import annotations

from ..errors import EpsimError
from .connections import Conv2d, Dense
from .presentation import presented_shape


def parse_arch(spec: str) -> list:
    """``[("conv", C, K, S, P) | ("dense", N), ...]`` from a spec string; raises EpsimError."""
    if not isinstance(spec, str) or not spec.strip():
        raise EpsimError("--arch is empty; example: conv:16:3,dense:10")
    layers = []
    for item in spec.split(","):
        parts = item.strip().lower().split(":")
        kind, args = parts[0], parts[1:]
        try:
            nums = [int(a) for a in args]
        except ValueError:
            raise EpsimError(f"--arch entry {item.strip()!r}: sizes must be whole numbers") from None
        if kind == "dense" and len(nums) == 1:
            layers.append(("dense", nums[0]))
        elif kind == "conv" and len(nums) in (2, 3, 4):
            layers.append(_conv_entry(item.strip(), nums))
        else:
            raise EpsimError(f"--arch entry {item.strip()!r} is not dense:N, conv:C:K, conv:C:K:S "
                             f"or conv:C:K:S:P")
        if any(n < 1 for n in nums[:3]):
            raise EpsimError(f"--arch entry {item.strip()!r}: sizes must be at least 1")
    return layers


def _conv_entry(item: str, nums: list) -> tuple:
    """``("conv", C, K, S, P)`` of a conv entry's numbers ``[C, K(, S(, P))]``; checks the padding."""
    stride = nums[2] if len(nums) > 2 else 1
    padding = nums[3] if len(nums) > 3 else 0
    if padding < 0:
        raise EpsimError(f"--arch entry {item!r}: padding must be 0 or more")
    if padding >= nums[1] >= 1:
        raise EpsimError(f"--arch entry {item!r}: padding {padding} must be smaller than the kernel {nums[1]}")
    return ("conv", nums[0], nums[1], stride, padding)


def format_arch(layers) -> str:
    """Inverse of :func:`parse_arch`."""
    out = []
    for layer in layers:
        if layer[0] == "dense":
            out.append(f"dense:{layer[1]}")
        else:
            padding = layer[4] if len(layer) > 4 else 0
            out.append(f"conv:{layer[1]}:{layer[2]}:{layer[3]}" + (f":{padding}" if padding else ""))
    return ",".join(out)


def connections_from_arch(spec: str, image_shape, num_classes: int, differential: bool = False,
                          model: str | None = None) -> list:
    """Connection objects for images of ``image_shape`` (C, H, W); checks every size.
    ``differential``: every hidden layer presented as ``+v`` and ``-v`` to the crossbar
    above it, which then has twice its input channels (:mod:`.presentation`). ``model``: the
    circuit model whose architecture ``spec`` is (named in the errors instead of ``--arch``)."""
    layers = parse_arch(spec)
    c, h, w = image_shape
    what = f"--arch {spec!r}" if model is None else f"--model {model} ({spec}) on {c}x{h}x{w} images"
    if layers[-1] != ("dense", num_classes):
        raise EpsimError(f"{what} must end with the output layer "
                         f"dense:{num_classes} (the dataset has {num_classes} classes), "
                         f"got {spec.split(',')[-1].strip()!r}")
    shape = (2 * c, h, w)
    conns = []
    for layer in layers:
        if layer[0] == "conv":
            _, ch, k, s, p = layer
            if len(shape) != 3:
                raise EpsimError(f"{what}: a conv layer cannot follow a dense layer")
            if k > shape[1] + 2 * p or k > shape[2] + 2 * p:
                raise EpsimError(f"{what}: kernel {k} is larger than its "
                                 f"{shape[1]}x{shape[2]} input" + (f" padded by {p}" if p else ""))
            conv = Conv2d(shape, ch, k, s, p)
            conns.append(conv)
            shape = conv.out_shape
        else:
            conns.append(Dense(shape, (layer[1],)))
            shape = (layer[1],)
        shape = presented_shape(shape, differential)
    return conns


def has_padded_conv(spec: str) -> bool:
    """Whether the spec has a conv layer with padding > 0."""
    return any(layer[0] == "conv" and layer[4] > 0 for layer in parse_arch(spec))
