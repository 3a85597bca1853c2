"""Layered resistive EP network: the circuit model.

Circuit
-------
- Layer 0: input nodes held by ideal voltage sources at ``input_gain_V * (+(x - c), -(x - c))``
  (both polarities, so positive conductances can produce signed effects), with ``c`` the
  ``input_center`` pixel value that maps to 0 V (default 0: black is 0 V).
- Hidden layers: free nodes with clamp diodes to the 0 V rail. Excitatory units have a
  diode from the rail to the node (``v >= 0``); inhibitory units a diode from the node to
  the rail (``v <= 0``). Channels (CNN) or units (MLP) are split half/half, or
  (``unit_polarity="excitatory"``, for differentially presented layers, which give each
  unit both signs downstream) all excitatory. A Shockley
  diode model may carry a rail offset (:class:`~epsim.circuit.diodes.DiodeModel`): the
  excitatory rail then sits at ``+offset``, the inhibitory one at ``-offset``.
- Output layer: free, linear nodes (no diode).
- Each pair of adjacent layers is joined by a crossbar of conductances ``G >= 0``
  (dense or tied-convolutional, see :mod:`epsim.models.connections`).
- Every non-input node has a bias current source ``I_bias`` (A) injecting into it
  (tied per channel in conv layers).
- Leak (optional): a fixed conductance ``G_leak`` from every free node to the 0 V rail (tied
  per channel in conv layers, like the biases). It is not trained. With the leak a node no
  longer settles at the conductance-weighted average of its neighbours but closer to 0 V;
  :func:`leak_from_ratio` sizes it as a multiple of each node's crossbar conductance.
- Nudging (``cost``): with the squared error (default) the ``+beta`` phase adds a
  conductance ``beta * g_unit`` from each output node to a voltage source at the target
  voltage; ``-beta`` uses the negative conductance. With the cross-entropy, each output
  node k receives a controlled current ``beta * g_unit * V_CE * (y_k - softmax(v / V_CE)_k)``
  (``y`` the one-hot label, ``V_CE = 1 V`` the logit scale), the negative of the gradient of
  ``beta * g_unit * V_CE^2 * CE(softmax(v / V_CE), y)``: a nonlinear source, but the
  equilibrium is again the minimum of a total energy, so EP is unchanged.
- Bidirectional amplifiers (optional, gain ``A_l`` between free layers ``l`` and ``l+1``,
  ``l = 1..L-1``): forward, a voltage-controlled voltage source presents ``A_l * v`` of
  every layer-l node to the next crossbar; backward, a current-controlled current source
  draws ``1/A_l`` of the current that crossbar takes from the amplifier out of the layer-l
  node. Gain 1 is a plain wire (today's passive circuit, bit for bit).
- Differential presentation (optional, per boundary): a hidden layer also reaches the next
  crossbar through inverting amplifiers, as ``-A_l * v``; that crossbar has twice the inputs
  (:mod:`epsim.models.presentation`).

Units
-----
Parameters are stored *normalised*: ``w = G / g_unit`` (dimensionless) and
``b = I_bias / g_unit`` (V). Node voltages are in volts. Any current computed in
normalised units is converted to amperes by multiplying by ``g_unit_S``. Dividing all
conductances and currents by one constant leaves every node voltage unchanged, so this is
exact. :attr:`ResistiveNetwork.g_S` and :attr:`ResistiveNetwork.i_bias_A` give SI values.

Energy (co-content, normalised by ``g_unit``, units V^2)::

    E(v) = sum_connections 1/2 sum w_ij (v_i - v_j)^2 + 1/2 sum_k leak_k v_k^2
           - sum_k b_k v_k + diode terms
    F(v) = E(v) + beta/2 * sum_o (v_o - y_o)^2                     (squared error)
    F(v) = E(v) + beta * (logsumexp(v_out) - sum_o y_o v_o)          (cross-entropy, V_CE = 1 V)

KCL at every free node is dF/dv = 0 (with the diodes as constraints / co-contents).

Amplified circuits (derivation in the README, "Amplifiers between layers"): with
``P_l = A_1 ... A_{l-1}`` (``P_1 = 1``) the normalised voltages ``u_l = v_l / P_l`` obey the
KCL of a *passive* network whose layer-l biases are ``b_l / P_l``, targets ``y / P_L``, and
clamp diodes ``I_l(u) = I(P_l u) / P_l``, and the cross-entropy term ``beta / P_L^2 *
CE(P_L u_L)``; the energy above, written in ``u``, is the
layer-weighted co-content every solver minimises. A leak keeps its conductance in ``u``
(its current ``leak P_l u`` divided by ``P_l``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from ..circuit.diodes import DiodeModel
from ..errors import EpsimError
from .connections import Conv2d, Dense, connection_from_description
from .presentation import (crossbar_views, initial_conductances, present, presented_shape,
                           validate_differential)


UNIT_POLARITIES = ("split", "excitatory")
COSTS = ("squared-error", "cross-entropy")  # the output nudge: conductance to a target, softmax current  # hidden units: half v >= 0 / half v <= 0, or all v >= 0


@dataclass
class CircuitRanges:
    """Physical scale of the crossbar: conductance unit and programmable range, in siemens."""

    g_unit_S: float = 1e-6
    g_min_S: float = 0.0
    g_max_S: float = 2e-5

    def __post_init__(self):
        if not (self.g_unit_S > 0 and 0 <= self.g_min_S < self.g_max_S):
            raise EpsimError("need g_unit > 0 and 0 <= Gmin < Gmax (siemens)")


class ResistiveNetwork:
    """A layered resistive network; see the module docstring for the circuit.

    Attributes:
        image_shape: ``(C, H, W)`` of the images fed to it (pixels in [0, 1]).
        layer_shapes: node shapes of layers ``0..L``; layer 0 is ``(2C, H, W)``.
        connections: ``L`` connection objects (layer l-1 -> layer l).
        w: ``L`` arrays of normalised conductances, ``connections[l].param_shape``.
        b: ``L`` arrays of normalised bias currents (V) for layers ``1..L``: shape ``(C,)``
           for a ``(C, H, W)`` layer (tied per channel), else the layer's node count.
        leak: ``L`` arrays of normalised leak conductances ``G_leak / g_unit`` (>= 0), the
           shapes of ``b``; all zero unless set (:attr:`has_leak`).
        rail_lo_V / rail_hi_V: ``L`` flat arrays per free layer; ``-inf``/``+inf`` = no diode.
        cost: the nudge at the outputs, one of :data:`COSTS` (``"squared-error"``: a
           conductance to the target voltage; ``"cross-entropy"``: a softmax current source).
    """

    def __init__(self, image_shape, connections, *, input_gain_V=1.0, diode=None,
                 ranges=None, name="custom", amp_gains=None, input_center=0.0, differential=False,
                 unit_polarity="split", leak=None, cost="squared-error"):
        self.image_shape = tuple(int(s) for s in image_shape)
        self.connections = list(connections)
        self.input_gain_V = float(input_gain_V)
        self.input_center = float(input_center)
        if not (np.isfinite(self.input_center) and 0.0 <= self.input_center <= 1.0):
            raise EpsimError(f"input center must be a pixel value in [0, 1], got {input_center!r}")
        self.diode = diode or DiodeModel()
        self.ranges = ranges or CircuitRanges()
        self.name = name
        self.arch = None  # the architecture spec it was built from, when there is one
        c, h, w = self.image_shape
        self.differential = validate_differential(differential, len(self.connections))
        if unit_polarity not in UNIT_POLARITIES:
            raise EpsimError(f"unknown unit polarity {unit_polarity!r}; choose from {', '.join(UNIT_POLARITIES)}")
        self.unit_polarity = unit_polarity
        shapes = [(2 * c, h, w)]
        for l, conn in enumerate(self.connections):
            presented = presented_shape(shapes[-1], l > 0 and bool(self.differential[l - 1]))
            if int(np.prod(conn.in_shape)) != int(np.prod(presented)):
                raise EpsimError(f"connection input {conn.in_shape} does not match layer {shapes[-1]}"
                                 + (" presented differentially" if l > 0 and self.differential[l - 1] else ""))
            shapes.append(conn.out_shape)
        self.layer_shapes = shapes
        self.layer_sizes = [int(np.prod(s)) for s in shapes]
        self.rail_lo_V, self.rail_hi_V = [], []
        for l, shape in enumerate(shapes[1:], start=1):
            lo, hi = self._rails(shape, is_output=(l == len(shapes) - 1), offset_V=self.diode.rail_offset_V,
                                 excitatory_only=unit_polarity == "excitatory")
            self.rail_lo_V.append(lo)
            self.rail_hi_V.append(hi)
        self.w = [np.zeros(conn.param_shape) for conn in self.connections]
        self.b = [np.zeros(self.bias_shape(l)) for l in range(1, len(shapes))]
        self.leak = leak
        self.amp_gains = amp_gains
        self.cost = cost

    # ---- structure -------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """Number of free layers L (hidden layers + output)."""
        return len(self.connections)

    @property
    def num_outputs(self) -> int:
        return self.layer_sizes[-1]

    def bias_shape(self, l: int) -> tuple:
        shape = self.layer_shapes[l]
        return (shape[0],) if len(shape) == 3 else (int(np.prod(shape)),)

    def bias_per_node(self, l: int) -> np.ndarray:
        """Normalised bias current (V) of every node of layer ``l`` (>=1), flat."""
        return self._untied(l, self.b[l - 1])

    def leak_per_node(self, l: int) -> np.ndarray:
        """Normalised leak conductance of every node of layer ``l`` (>=1), flat."""
        return self._untied(l, self.leak[l - 1])

    def _untied(self, l: int, values: np.ndarray) -> np.ndarray:
        """Per-channel ``values`` of a ``(C, H, W)`` layer ``l`` repeated over its positions
        (flat, node order); a flat layer's values as they are."""
        shape = self.layer_shapes[l]
        if len(shape) == 3:
            return np.repeat(values, shape[1] * shape[2])
        return values

    @property
    def leak(self) -> list:
        """``L`` read-only arrays (the shapes of :attr:`b`) of normalised leak conductances to
        0 V; set as a whole (None: no leak)."""
        return self._leak

    @leak.setter
    def leak(self, leak):
        shapes = [self.bias_shape(l) for l in range(1, self.num_layers + 1)]
        if leak is None:
            leak = [np.zeros(s) for s in shapes]
        if len(leak) != len(shapes):
            raise EpsimError(f"{len(leak)} leak arrays for {len(shapes)} free layers")
        out = []
        for l, (g, shape) in enumerate(zip(leak, shapes), start=1):
            g = np.array(g, dtype=np.float64)
            if g.ndim == 0:
                g = np.full(shape, float(g))
            if g.shape != shape:
                raise EpsimError(f"leak of layer {l} has shape {g.shape}, the layer's biases {shape}")
            if not np.all(np.isfinite(g)) or np.any(g < 0):
                raise EpsimError(f"leak conductances of layer {l} must be finite and >= 0")
            g.setflags(write=False)
            out.append(g)
        self._leak = out
        self._has_leak = any(bool(np.any(g > 0)) for g in out)

    @property
    def has_leak(self) -> bool:
        """Whether any free node has a leak conductance to 0 V."""
        return self._has_leak

    @property
    def amp_gains(self) -> np.ndarray:
        """(L-1,) gains of the amplifiers between free layers (1: a plain wire); read-only,
        set as a whole (which re-derives :attr:`layer_scale`)."""
        return self._amp_gains

    @amp_gains.setter
    def amp_gains(self, gains):
        g = validate_amp_gains(gains, len(self.connections)).copy()  # never a view of the caller's array
        scale = np.concatenate([[1.0], np.cumprod(g)])
        g.setflags(write=False)
        scale.setflags(write=False)
        self._amp_gains, self._layer_scale = g, scale
        self._has_amplifiers = bool(np.any(g != 1.0))

    @property
    def has_amplifiers(self) -> bool:
        """Whether any boundary between free layers carries an amplifier (gain != 1)."""
        return self._has_amplifiers

    @property
    def layer_scale(self) -> np.ndarray:
        """(L,) ``P_l = A_1 ... A_{l-1}`` of free layers ``1..L`` (``P_1 = 1``): the factor
        between a layer's node voltages and the normalised voltages the solvers use (read-only)."""
        return self._layer_scale

    @property
    def is_differential(self) -> bool:
        """Whether any hidden layer is presented differentially (:mod:`.presentation`)."""
        return bool(np.any(self.differential))

    def presented(self, k: int, v):
        """(B, m_k) voltages connection ``k``'s input side sees from layer ``k``'s (B, n_k)
        voltages ``v`` (in whatever units ``v`` is): ``[+v, -v]`` for a differential layer,
        else ``v``; the amplifier gain not applied."""
        return present(v, k > 0 and bool(self.differential[k - 1]))

    def per_node(self, k: int, x):
        """(..., m_k) values on connection ``k``'s input terminals -> (..., n_k) per node of
        layer ``k``: the two copies of a differential layer summed."""
        if k > 0 and self.differential[k - 1]:
            n = self.layer_sizes[k]
            return x[..., :n] + x[..., n:]
        return x

    def crossbar_views(self) -> list:
        """The crossbars over the layers' own nodes, as the solvers use them
        (:func:`~epsim.models.presentation.crossbar_views`)."""
        return crossbar_views(self)

    def self_conductances(self, views=None) -> list:
        """Per free layer ``1..L``, ``(n_l,)`` total normalised conductance of every node: the
        crossbars below and above it (as :meth:`crossbar_views` presents them; ``views``: those
        views, when already built) and its leak to 0 V, nudging excluded."""
        views = views if views is not None else self.crossbar_views()
        out = []
        for l in range(1, self.num_layers + 1):
            d = views[l - 1].degree_out
            if l < self.num_layers:
                d = d + views[l].degree_in
            if self.has_leak:
                d = d + self.leak_per_node(l)
            out.append(d)
        return out

    def crossbar_input_gain(self, k: int) -> float:
        """Gain between layer ``k``'s nodes and connection ``k``'s input terminals (the
        amplifier of layer ``k``; 1 for the input layer, whose sources drive it directly)."""
        return 1.0 if k == 0 else float(self.amp_gains[k - 1])

    def to_normalised(self, v_free) -> list:
        """Free-layer voltages (list of (B, n_l), V) -> normalised voltages ``v_l / P_l``."""
        if not self.has_amplifiers:
            return list(v_free)
        return [v / p for v, p in zip(v_free, self.layer_scale)]

    def to_physical(self, u_free) -> list:
        """Inverse of :meth:`to_normalised`: normalised voltages -> node voltages (V)."""
        if not self.has_amplifiers:
            return list(u_free)
        return [u * p for u, p in zip(u_free, self.layer_scale)]

    @staticmethod
    def _rails(shape, is_output, offset_V=0.0, excitatory_only=False):
        n = int(np.prod(shape))
        lo = np.full(n, -np.inf)
        hi = np.full(n, np.inf)
        if is_output:
            return lo, hi
        units = shape[0]
        per_unit = n // units
        n_exc = units if excitatory_only else (units + 1) // 2
        excitatory = np.repeat(np.arange(units) < n_exc, per_unit)
        lo[excitatory] = offset_V
        hi[~excitatory] = -offset_V
        return lo, hi

    def describe(self) -> dict:
        """JSON-able structure (no parameter values): enough to rebuild the network."""
        return {
            "name": self.name,
            "arch": self.arch,
            "image_shape": list(self.image_shape),
            "connections": [c.describe() for c in self.connections],
            "input_gain_V": self.input_gain_V,
            "input_center": self.input_center,
            "diode": self.diode.to_dict(),
            "amp_gains": [float(a) for a in self.amp_gains],
            **({"differential": [bool(f) for f in self.differential]} if self.is_differential else {}),
            **({"unit_polarity": self.unit_polarity} if self.unit_polarity != "split" else {}),
            **({"leak": [g.tolist() for g in self.leak]} if self.has_leak else {}),
            **({"cost": self.cost} if self.cost != "squared-error" else {}),
            "ranges": {"g_unit_S": self.ranges.g_unit_S, "g_min_S": self.ranges.g_min_S,
                       "g_max_S": self.ranges.g_max_S},
        }

    @property
    def cost(self) -> str:
        """The nudge at the outputs, one of :data:`COSTS`."""
        return self._cost

    @cost.setter
    def cost(self, cost: str):
        if cost not in COSTS:
            raise EpsimError(f"unknown cost {cost!r}; choose from {', '.join(COSTS)}")
        self._cost = cost

    def with_cost(self, cost: str) -> "ResistiveNetwork":
        """This network with another output nudge (:data:`COSTS`); itself when unchanged, else a
        shallow copy sharing the parameter arrays."""
        if cost == self.cost:
            return self
        out = copy.copy(self)
        out.cost = cost
        return out

    @classmethod
    def from_description(cls, d: dict) -> "ResistiveNetwork":
        net = cls(d["image_shape"], [connection_from_description(c) for c in d["connections"]],
                  input_gain_V=d["input_gain_V"], diode=DiodeModel.from_dict(d["diode"]),
                  ranges=CircuitRanges(**d["ranges"]), name=d["name"],
                  amp_gains=d.get("amp_gains"), input_center=d.get("input_center", 0.0),
                  differential=d.get("differential", False), unit_polarity=d.get("unit_polarity", "split"),
                  leak=d.get("leak"), cost=d.get("cost", "squared-error"))
        net.arch = d.get("arch")
        return net

    # ---- parameters ------------------------------------------------------------------
    @property
    def w_bounds(self) -> tuple:
        """Normalised conductance range ``(Gmin, Gmax) / g_unit``."""
        r = self.ranges
        return r.g_min_S / r.g_unit_S, r.g_max_S / r.g_unit_S

    @property
    def g_S(self) -> list:
        """Conductances in siemens, one array per connection."""
        return [w * self.ranges.g_unit_S for w in self.w]

    @property
    def i_bias_A(self) -> list:
        """Bias currents in amperes, one array per free layer."""
        return [b * self.ranges.g_unit_S for b in self.b]

    def init_params(self, rng: np.random.Generator, weight_gain: float = 1.0, init: str = "uniform"):
        """Draw conductances (:func:`~epsim.models.presentation.initial_conductances`), zero biases."""
        lo, hi = self.w_bounds
        self.w = [np.clip(initial_conductances(self, l, rng, weight_gain, init), lo, hi)
                  for l in range(self.num_layers)]
        self.b = [np.zeros(self.bias_shape(l)) for l in range(1, self.num_layers + 1)]

    def set_params_SI(self, g_S, i_bias_A):
        """Load conductances (S) and bias currents (A), validating shapes and signs."""
        unit = self.ranges.g_unit_S
        self.set_params([np.asarray(g, dtype=np.float64) / unit for g in g_S],
                        [np.asarray(i, dtype=np.float64) / unit for i in i_bias_A])

    def set_params(self, w, b):
        """Load normalised conductances ``G/g_unit`` and biases ``I/g_unit`` (V), validated."""
        if len(w) != len(self.w) or len(b) != len(self.b):
            raise EpsimError("parameter count does not match this model's layers")
        new_w = []
        for l, (g, ref) in enumerate(zip(w, self.w)):
            g = np.array(g, dtype=np.float64)
            if g.shape != ref.shape:
                raise EpsimError(f"conductance array {l} has shape {g.shape}, model expects {ref.shape}")
            if not np.all(np.isfinite(g)):
                raise EpsimError(f"conductance array {l} holds NaN or inf values")
            if np.any(g < 0):
                raise EpsimError(f"conductance array {l} holds negative conductances "
                                 f"(min {g.min() * self.ranges.g_unit_S:.3g} S)")
            new_w.append(g)
        new_b = []
        for l, (i_b, ref) in enumerate(zip(b, self.b)):
            i_b = np.array(i_b, dtype=np.float64)
            if i_b.shape != ref.shape:
                raise EpsimError(f"bias array {l} has shape {i_b.shape}, model expects {ref.shape}")
            if not np.all(np.isfinite(i_b)):
                raise EpsimError(f"bias array {l} holds NaN or inf values")
            new_b.append(i_b)
        self.w, self.b = new_w, new_b

    def num_params(self) -> int:
        return int(sum(w.size for w in self.w) + sum(b.size for b in self.b))

    # ---- inputs, energy --------------------------------------------------------------
    def input_voltages(self, x: np.ndarray) -> np.ndarray:
        """Input source voltages (V), shape ``(B, n_0)``, from images ``x`` (B, C, H, W) in [0, 1]."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 3:
            x = x[None]
        if x.shape[1:] != self.image_shape:
            raise EpsimError(f"input images have shape {x.shape[1:]}, model expects {self.image_shape}")
        if not np.all(np.isfinite(x)):
            raise EpsimError("input contains NaN or inf values")
        return self.pixels_to_voltages(x, x)

    def pixels_to_voltages(self, x_plus: np.ndarray, x_minus: np.ndarray) -> np.ndarray:
        """``(B, n_0)`` input source voltages (V) with the ``+`` sources driven by images
        ``x_plus`` and the ``-`` sources by ``x_minus`` (both (B, C, H, W) in [0, 1]; the same
        array for an ordinary input, the two ends of a box for a certificate)."""
        c = self.input_center
        v = self.input_gain_V * np.concatenate([x_plus - c, -(x_minus - c)], axis=1)
        return v.reshape(x_plus.shape[0], -1)

    def energy(self, v_input, v_free, beta=0.0, target_V=None) -> np.ndarray:
        """Normalised total energy ``F`` (V^2) per sample for ideal diodes, shape ``(B,)``.

        The ideal diodes enter as constraints (0 inside the feasible box), so this is the
        resistive co-content minus the bias-source work, plus the nudging term. ``v_free``
        and ``target_V`` in volts; with amplifiers, the layer-weighted co-content (the
        energy of the normalised voltages ``v_l / P_l``, biases ``b_l / P_l``, targets
        ``y / P_L``), whose stationary points are the amplified circuit's equilibria. With
        the cross-entropy nudge (:attr:`cost`) ``target_V`` holds the target probabilities.
        """
        p = self.layer_scale
        layers = [v_input] + self.to_normalised(v_free)
        ce = self.cost == "cross-entropy"
        if beta != 0.0 and not ce:
            target_V = np.asarray(target_V) / p[-1]
        e = np.zeros(v_input.shape[0])
        for l, conn in enumerate(self.connections):
            w = self.w[l]
            vi, vo = self.presented(l, layers[l]), layers[l + 1]
            e += 0.5 * (np.einsum("bi,i->b", vi * vi, conn.degree_in(w))
                        + np.einsum("bj,j->b", vo * vo, conn.degree_out(w))
                        - 2.0 * np.einsum("bj,bj->b", conn.drive_out(w, vi), vo))
            e -= vo @ (self.bias_per_node(l + 1) / p[l])
            if self.has_leak:
                e += 0.5 * np.einsum("bj,j->b", vo * vo, self.leak_per_node(l + 1))
        if beta != 0.0 and ce:
            z = layers[-1] * p[-1]  # the physical outputs (V) are the logits, V_CE = 1 V
            m = z.max(axis=1, keepdims=True)
            lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
            e += beta / p[-1] ** 2 * (lse - np.sum(np.asarray(target_V) * z, axis=1))
        elif beta != 0.0:
            e += 0.5 * beta * np.sum((layers[-1] - target_V) ** 2, axis=1)
        return e


def leak_from_ratio(net: ResistiveNetwork, ratio: float) -> list:
    """Leak conductances (normalised, the shapes of ``net.b``) of ``ratio`` times each node's
    conductance to the crossbar below it at ``net``'s present conductances (tied per channel:
    a conv node's kernel total, padding included, is the same at every position).

    With amplifiers of ``1 + ratio`` on every boundary and the input gain times ``1 + ratio``,
    a network whose every layer has this leak computes, with no top-down current, what the
    network without leak and amplifiers computes: each node's average is scaled by
    ``1 / (1 + ratio)`` and the amplifier restores it.
    """
    ratio = float(ratio)
    if not (np.isfinite(ratio) and ratio >= 0):
        raise EpsimError(f"leak ratio must be a number >= 0, got {ratio!r}")
    out = []
    for l, view in enumerate(net.crossbar_views(), start=1):
        d = view.degree_out
        shape = net.layer_shapes[l]
        if len(shape) == 3:
            d = d.reshape(shape[0], -1).mean(axis=1)
        out.append(ratio * d)
    return out


def validate_amp_gains(gains, num_layers: int) -> np.ndarray:
    """Amplifier gains as a (L-1,) float array: None -> all 1, one number -> every
    boundary; each gain must be a finite number > 0."""
    n = max(num_layers - 1, 0)
    if gains is None:
        return np.ones(n)
    g = np.atleast_1d(np.asarray(gains, dtype=np.float64)).reshape(-1)
    if g.size == 1 and n != 1:
        g = np.full(n, float(g[0]))
    if g.size != n:
        raise EpsimError(f"{g.size} amplifier gains for {n} boundaries between free layers "
                         f"(give one gain, or one per boundary)")
    if not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise EpsimError("amplifier gains must be finite numbers > 0")
    return g


def build_mlp(image_shape, hidden=(64,), num_classes=10, **kw) -> ResistiveNetwork:
    """Dense resistive MLP: input(2*C*H*W) -> hidden... -> num_classes."""
    c, h, w = image_shape
    shapes = [(2 * c, h, w)] + [(int(n),) for n in hidden] + [(int(num_classes),)]
    conns = [Dense(a, b) for a, b in zip(shapes[:-1], shapes[1:])]
    return ResistiveNetwork(image_shape, conns, **kw)


def build_cnn(image_shape, convs=((16, 3, 1),), hidden=(), num_classes=10, **kw) -> ResistiveNetwork:
    """Resistive CNN: tied conv layers ``(channels, kernel, stride)`` or ``(channels, kernel,
    stride, padding)``, then dense layers.

    Pooling is done by strided convolutions (a resistive circuit has no max-pool).
    """
    c, h, w = image_shape
    shape = (2 * c, h, w)
    conns = []
    for ch, k, s, *padding in convs:
        conv = Conv2d(shape, ch, k, s, *padding)
        conns.append(conv)
        shape = conv.out_shape
    for n in list(hidden) + [num_classes]:
        conns.append(Dense(shape, (int(n),)))
        shape = (int(n),)
    return ResistiveNetwork(image_shape, conns, **kw)


def nudge_targets(net: ResistiveNetwork, labels: np.ndarray, target_high_V: float = 1.0) -> np.ndarray:
    """``(B, K)`` targets of ``net``'s nudged phases for ``labels`` (B,): one-hot voltages of
    ``target_high_V`` on the label (squared error), or one-hot probabilities (cross-entropy)."""
    high = 1.0 if net.cost == "cross-entropy" else target_high_V
    return one_hot_targets(labels, net.num_outputs, high)


def one_hot_targets(labels: np.ndarray, num_classes: int, high_V: float = 1.0) -> np.ndarray:
    """Target output voltages (V), shape ``(B, K)``: ``high_V`` on the label, 0 elsewhere."""
    y = np.zeros((len(labels), num_classes))
    y[np.arange(len(labels)), labels] = high_V
    return y
