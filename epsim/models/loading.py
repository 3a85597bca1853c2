"""Trained models back from their checkpoint files: one reader for every kind.

A checkpoint (:mod:`epsim.checkpoint`) says what it holds in its ``kind`` key:

* ``"circuit"``: a resistive network (:class:`~epsim.models.resistive.ResistiveNetwork`),
  rebuilt from ``model`` (its ``describe()`` dict, diode law included) with the normalised
  parameters ``w`` (``G / g_unit``) and ``b`` (``I_bias / g_unit``, V) stored as trained;
  its device technology is the ``device_model`` of the recorded ``config``
  (:func:`epsim.learning.memristive.get_device_model`).
* one of :data:`TORCH_MODELS`: a software model rebuilt from ``arch`` (its ``describe()``
  dict) with the weights of ``state_dict``; it maps ``(B, C, H, W)`` pixels in [0, 1] to
  ``(B, K)`` logits.

:func:`load_trained` reads the file once and returns a :class:`TrainedModel`;
:func:`load_network` and :func:`load_torch_model` are its circuit-only and software-only
forms. Only models and checkpoints are imported here (no trainer, no harness).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..checkpoint import load_checkpoint
from ..errors import EpsimError
from .resistive import ResistiveNetwork

CIRCUIT_KIND = "circuit"
TORCH_MODELS = ("ep-cnn", "bp-cnn", "adv-cnn", "vit")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainedModel:
    """What a checkpoint holds.

    kind:         ``"circuit"`` or one of :data:`TORCH_MODELS`.
    model:        the :class:`ResistiveNetwork` (circuit) or the ``torch.nn.Module`` in eval
                  mode on the requested device (software).
    config:       the training run's recorded config (a dict; ``{}`` when absent).
    dataset:      the dataset it was trained on (None when not recorded).
    device_model: the circuit's :class:`~epsim.learning.memristive.DeviceModel` (None for software).
    state:        the whole checkpoint dict (``history``, ``epoch``, ...; arrays as numpy).
    """

    kind: str
    model: object
    config: dict = field(default_factory=dict)
    dataset: str | None = None
    device_model: object = None
    state: dict = field(default_factory=dict)

    @property
    def is_circuit(self) -> bool:
        return self.kind == CIRCUIT_KIND


def checkpoint_kind(state: dict, path, expect: str | None = None) -> str:
    """The ``kind`` of checkpoint dict ``state`` read from ``path``, checked.

    ``expect``: ``"circuit"``, ``"torch"`` (any of :data:`TORCH_MODELS`) or None (either).
    Raises :class:`EpsimError` naming the file when the kind is not the expected one.
    """
    kind = state.get("kind")
    torch_names = ", ".join(TORCH_MODELS)
    if expect == CIRCUIT_KIND and kind != CIRCUIT_KIND:
        raise EpsimError(f"{path} holds a {kind!r} model, not a circuit model")
    if expect == "torch" and kind not in TORCH_MODELS:
        raise EpsimError(f"{path} holds a {kind!r} model, not one of the torch models ({torch_names})")
    if kind != CIRCUIT_KIND and kind not in TORCH_MODELS:
        raise EpsimError(f"{path} holds a {kind!r} model, neither a circuit model nor one of the "
                         f"torch models ({torch_names})")
    return kind


def load_trained(path, *, device="cpu", expect: str | None = None) -> TrainedModel:
    """Read checkpoint ``path`` once and rebuild the model it holds.

    device: torch device of a software model (``auto`` | ``cpu`` | ``cuda`` or a
    ``torch.device``); circuits are numpy objects and ignore it.
    expect: see :func:`checkpoint_kind`.
    """
    state = load_checkpoint(path)
    kind = checkpoint_kind(state, path, expect)
    config = dict(state.get("config") or {})
    if kind == CIRCUIT_KIND:
        from ..learning.memristive import get_device_model

        net = ResistiveNetwork.from_description(state["model"])
        restore_network(net, state, path)
        return TrainedModel(kind, net, config, config.get("dataset"),
                            get_device_model(config.get("device_model", "ideal")), state)
    model = model_from_arch(kind, state["arch"])
    try:
        model.load_state_dict(to_tensors(state["state_dict"]))
    except RuntimeError as exc:
        raise EpsimError(f"{path}: weights do not fit the saved architecture ({str(exc).splitlines()[0]})") from None
    model.epsim_kind, model.epsim_preset = kind, state.get("preset")
    model.epsim_dataset = state.get("dataset")
    model = model.to(pick_device(device) if isinstance(device, str) else device).eval()
    return TrainedModel(kind, model, config, config.get("dataset") or state.get("dataset"), None, state)


# ---- circuits ----------------------------------------------------------------------------
def restore_network(net: ResistiveNetwork, state: dict, path) -> None:
    """Load a checkpoint's parameters (conductances, biases, and the leak it was built with)
    into ``net`` after checking it is the same circuit."""
    checkpoint_kind(state, path, CIRCUIT_KIND)
    if state["model"]["connections"] != net.describe()["connections"]:
        raise EpsimError(f"{path} is a checkpoint of a different model shape "
                         f"({state['model']['name']}, {len(state['model']['connections'])} layers)")
    try:
        net.set_params(state["w"], state["b"])
        net.leak = state["model"].get("leak")
    except EpsimError as exc:
        raise EpsimError(f"{path}: {exc}") from None


def check_same_operating_point(net: ResistiveNetwork, state: dict, path) -> None:
    """Refuse to start ``net`` from a circuit checkpoint built with another input gain, input
    center or amplifier gains: its conductances would then compute another function."""
    saved = state["model"]
    gains = np.asarray(saved.get("amp_gains", np.ones(len(net.connections) - 1)), dtype=np.float64)
    same = (np.isclose(saved["input_gain_V"], net.input_gain_V, rtol=1e-9, atol=0.0)
            and np.isclose(saved.get("input_center", 0.0), net.input_center, rtol=0.0, atol=1e-12)
            and gains.shape == net.amp_gains.shape and np.allclose(gains, net.amp_gains, rtol=1e-9, atol=0.0))
    if not same:
        amps = " ".join(f"{a:.17g}" for a in gains)
        raise EpsimError(f"{path} was built with --input-gain {saved['input_gain_V']:.17g} --input-center "
                         f"{saved.get('input_center', 0.0):g} --amp-gain {amps}: give the same to start from it")


def load_network(path) -> tuple:
    """``(network, checkpoint dict)`` from a circuit checkpoint file."""
    loaded = load_trained(path, expect=CIRCUIT_KIND)
    return loaded.model, loaded.state


# ---- software models ---------------------------------------------------------------------
def load_torch_model(path, device="cpu"):
    """A trained torch model from ``checkpoint.pt``, in eval mode on ``device``.

    The module maps ``(B, C, H, W)`` pixels in [0, 1] to logits; for the EP-CNN its
    ``forward`` runs the free phase with the training run's inference settings
    (``model.relax`` gives the state and convergence certificate).  Attributes
    ``epsim_kind``, ``epsim_preset`` and ``epsim_dataset`` say what it is.
    """
    return load_trained(path, device=device, expect="torch").model


def model_from_arch(kind: str, arch: dict):
    """Rebuild an (untrained) software model of ``kind`` from its ``describe()`` dict."""
    from .baselines import BPCNN, ViT
    from .ep_cnn import EPCNN

    arch = dict(arch)
    if kind == "ep-cnn":
        return EPCNN(**arch)
    if kind in ("bp-cnn", "adv-cnn"):
        return BPCNN(**arch)
    if kind == "vit":
        return ViT(**arch)
    raise EpsimError(f"checkpoint holds a {kind!r} model, not one of {', '.join(TORCH_MODELS)}")


def pick_device(name: str = "auto"):
    """The torch device ``name`` names: ``auto`` (CUDA when available, else CPU), ``cpu``,
    ``cuda`` or ``cuda:N``; a CUDA device torch does not see is an error."""
    import torch

    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if name not in DEVICES and not (kind == "cuda" and index.isdigit()):
        raise EpsimError(f"unknown device {name!r}; choose from {', '.join(DEVICES)} or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise EpsimError(f"--device {name} asked for, but torch sees no CUDA GPU (use --device cpu or auto)")
    if index and int(index) >= torch.cuda.device_count():
        raise EpsimError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA GPU(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)


def to_tensors(obj):
    """Numpy arrays (anywhere in nested dicts/lists) as torch tensors, for ``load_state_dict``."""
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {k: to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_tensors(v) for v in obj]
    return obj
