"""Circuit IR: named nodes and R, D, V, I, E, F, B elements with plain-float values, plus diode models.

Conventions (SPICE):

- node ``"0"`` is ground, index 0; every other node gets the next index when first named.
- ``R name a b ohms``: a linear resistor; a negative value is a negative conductance
  (still a reciprocal one-port: it is how the ``-beta`` nudge is built).
- ``D name anode cathode model``: ``I = Is (exp(V/(n Vt)) - 1)``, ``V = v_anode - v_cathode``.
- ``V name p m volts``: ``v_p - v_m = volts``; its branch current flows from ``p`` through
  the source to ``m``.
- ``I name p m amps``: ``amps`` flow from ``p`` through the source to ``m``, i.e. the source
  draws current out of ``p`` and injects it into ``m``.
- ``E name p m cp cm gain``: voltage-controlled voltage source, ``v_p - v_m = gain (v_cp - v_cm)``;
  like a ``V`` source it has a branch current, flowing from ``p`` through the source to ``m``.
- ``F name p m vctl gain``: current-controlled current source: ``gain * I(vctl)`` flows from
  ``p`` through the source to ``m``, where ``I(vctl)`` is the branch current of the voltage
  source named ``vctl`` (from its ``+`` node through it to its ``-`` node; positive when
  current enters its ``+`` terminal from the circuit).
- ``B name 0 m amps`` (softmax current source, the cross-entropy nudge): of a group of them,
  element k drives ``amps_k * (y_k - softmax_k)`` from ground through the source into its
  node ``m_k``, ``softmax`` over the group of ``exp(v_m / 1 V)``; ``y_k`` is its ``target``
  (a probability). Written as SPICE behavioural sources ``B name 0 m I=...``; the group is
  the set of nodes in the expression's denominator. Its ``p`` node must be ground.

Elements are stored kind by kind as arrays (names, node indices, values), so circuits of
1e5 elements are built, written and solved without per-element Python objects.
The junction temperature ``temp_K`` defines the thermal voltage ``k T / q`` with the same
constants as :class:`epsim.circuit.diodes.DiodeModel`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import EpsimError
from .diodes import BOLTZMANN_J_PER_K, ELEMENTARY_CHARGE_C

GROUND = "0"
KINDS = ("R", "D", "V", "I", "E", "F", "B")
KIND_NAMES = {"R": "resistor", "D": "diode", "V": "voltage source", "I": "current source",
              "E": "voltage-controlled voltage source", "F": "current-controlled current source",
              "B": "softmax current source"}


@dataclass(frozen=True)
class DiodeCard:
    """A diode ``.model``: Shockley parameters, or the layered model's ideal diode.

    name:  model name as written in the netlist (lower case).
    is_A:  saturation current (A); n: emission coefficient.
    ideal: True for the layered model's ideal diode (a box constraint). SPICE has no such
           device: the writer emits the near-ideal approximation of the component library
           and the general MNA solver refuses it.
    """

    name: str
    is_A: float = 1e-12
    n: float = 1.0
    ideal: bool = False

    def __post_init__(self):
        if not (np.isfinite(self.is_A) and self.is_A > 0 and np.isfinite(self.n) and self.n > 0):
            raise EpsimError(f"diode model {self.name}: IS and N must be positive numbers")


@dataclass
class Elements:
    """All elements of one kind: ``names`` (list of str), node indices ``a``/``b`` (int arrays;
    R: the two ends, D: anode/cathode, V/I/E/F: plus/minus) and ``value`` (float array: ohms,
    volts, amperes, or the dimensionless gain of E and F). Diodes carry ``model`` (int array
    indexing ``Netlist.models``); E sources their controlling nodes ``c``/``d`` (int arrays,
    plus/minus); F sources ``control``, the names of their controlling V sources (list of str);
    B sources ``target`` (float array, y) and ``group`` (int array: elements with the same
    number share one softmax)."""

    names: list
    a: np.ndarray
    b: np.ndarray
    value: np.ndarray
    model: np.ndarray | None = None
    c: np.ndarray | None = None
    d: np.ndarray | None = None
    control: list | None = None
    target: np.ndarray | None = None
    group: np.ndarray | None = None

    def __len__(self):
        return len(self.names)


@dataclass
class Netlist:
    """A DC circuit: nodes, elements by kind, diode models, temperature and header notes."""

    title: str = "epsim circuit"
    temp_K: float = 300.15
    notes: list = field(default_factory=list)

    def __post_init__(self):
        self.nodes = [GROUND]
        self._node_index = {GROUND: 0}
        self.models = []
        self._model_index = {}
        self._parts = {k: [] for k in KINDS}
        self._cache = {}

    # ---- nodes and models ------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        """Number of nodes including ground."""
        return len(self.nodes)

    def node_ids(self, names) -> np.ndarray:
        """Indices of node ``names`` (an iterable of str), creating the new ones."""
        index = self._node_index
        out = np.empty(len(names), dtype=np.int64)
        for k, name in enumerate(names):
            i = index.get(name)
            if i is None:
                i = index[name] = len(self.nodes)
                self.nodes.append(name)
            out[k] = i
        return out

    def has_node(self, name: str) -> bool:
        return name in self._node_index

    def node_index(self, name: str) -> int:
        """Index of an existing node; EpsimError if the circuit has no such node."""
        try:
            return self._node_index[name]
        except KeyError:
            raise EpsimError(f"circuit {self.title!r} has no node {name!r}") from None

    def add_model(self, card: DiodeCard) -> int:
        """Register a diode model (a second card of the same name must be identical)."""
        i = self._model_index.get(card.name)
        if i is not None:
            if self.models[i] != card:
                raise EpsimError(f"diode model {card.name} defined twice with different parameters")
            return i
        self._model_index[card.name] = len(self.models)
        self.models.append(card)
        return len(self.models) - 1

    def model_index(self, name: str) -> int:
        try:
            return self._model_index[name]
        except KeyError:
            raise EpsimError(f"no diode model named {name!r} in circuit {self.title!r}") from None

    # ---- elements --------------------------------------------------------------------
    def _nodes(self, nodes):
        if isinstance(nodes, np.ndarray) and nodes.dtype.kind in "iu":
            return nodes.astype(np.int64)
        return self.node_ids(list(nodes))

    def add(self, kind: str, names, a, b, value, model=None, *, c=None, d=None, control=None,
            target=None, group=None):
        """Append elements of ``kind`` (R, D, V, I, E, F, B); ``a``/``b`` are node names or indices.

        ``model`` (diodes only): one model name for all, or one per element.
        ``c``/``d`` (E only): controlling nodes (names or indices), plus and minus.
        ``control`` (F only): controlling V source names, one for all or one per element.
        ``target``/``group`` (B only): each element's target probability, and a label (any
        hashable) per element naming its softmax group (elements added together with the same
        label share one softmax; labels of different calls never do).
        ``value`` is the gain for E and F, the current scale (A) for B.
        """
        if kind not in KINDS:
            raise EpsimError(f"unsupported element kind {kind!r}; the IR holds {', '.join(KINDS)}")
        names = list(names)
        a, b = self._nodes(a), self._nodes(b)
        if kind == "D":
            if isinstance(model, str):
                model_ids = np.full(len(names), self.model_index(model), dtype=np.int64)
            else:
                model_ids = np.array([self.model_index(m) for m in model], dtype=np.int64)
            value = np.ones(len(names))
        else:
            model_ids = None
            value = np.asarray(value, dtype=np.float64).reshape(-1)
            if value.size == 1 and len(names) != 1:
                value = np.full(len(names), float(value[0]))
        ctrl_c, ctrl_d, control = self._controls(kind, len(names), c, d, control)
        targets, groups = self._softmax_groups(kind, len(names), a, target, group)
        if not (len(names) == a.size == b.size == value.size):
            raise EpsimError(f"{KIND_NAMES[kind]} arrays of different lengths")
        if not np.all(np.isfinite(value)):
            raise EpsimError(f"{KIND_NAMES[kind]} with a NaN or infinite value")
        if kind == "R" and np.any(value == 0):
            raise EpsimError("a resistor of 0 ohm (use a voltage source of 0 V for a short)")
        self._parts[kind].append(Elements(names, a, b, value, model_ids, ctrl_c, ctrl_d, control,
                                          targets, groups))
        self._cache.pop(kind, None)

    def _softmax_groups(self, kind, count, p_nodes, target, group):
        """Targets and global group numbers of ``count`` new B elements, validated."""
        if kind != "B":
            if target is not None or group is not None:
                raise EpsimError(f"a {KIND_NAMES[kind]} has no target or softmax group")
            return None, None
        if target is None or group is None:
            raise EpsimError("a softmax current source needs its target and softmax group")
        target = np.asarray(target, dtype=np.float64).reshape(-1)
        labels = list(group)
        if not (target.size == len(labels) == count):
            raise EpsimError(f"{KIND_NAMES[kind]} arrays of different lengths")
        if not np.all(np.isfinite(target)):
            raise EpsimError("a softmax current source with a NaN or infinite target")
        if np.any(p_nodes != 0):
            raise EpsimError("a softmax current source drives a node from ground: its first node must be 0")
        first = sum(len(set(p.group.tolist())) for p in self._parts["B"])
        numbering = {}
        for label in labels:
            numbering.setdefault(label, first + len(numbering))
        return target, np.array([numbering[label] for label in labels], dtype=np.int64)

    def _controls(self, kind, count, c, d, control):
        """Controlling nodes (E) or source names (F) of ``count`` new elements, validated."""
        if kind == "E":
            if c is None or d is None:
                raise EpsimError("a voltage-controlled voltage source needs controlling nodes c and d")
            c, d = self._nodes(c), self._nodes(d)
            if not c.size == d.size == count:
                raise EpsimError(f"{KIND_NAMES[kind]} arrays of different lengths")
            return c, d, None
        if kind == "F":
            if control is None:
                raise EpsimError("a current-controlled current source needs its controlling V source")
            control = [control] * count if isinstance(control, str) else [str(v) for v in control]
            if len(control) != count:
                raise EpsimError(f"{KIND_NAMES[kind]} arrays of different lengths")
            return None, None, control
        if c is not None or d is not None or control is not None:
            raise EpsimError(f"a {KIND_NAMES[kind]} has no controlling nodes or source")
        return None, None, None

    def elements(self, kind: str) -> Elements:
        """All elements of ``kind`` concatenated in insertion order."""
        if kind not in self._cache:
            parts = self._parts[kind]

            def cat(field_name, dtype):
                xs = [getattr(p, field_name) for p in parts]
                return np.concatenate(xs) if xs else np.zeros(0, dtype=dtype)

            self._cache[kind] = Elements(
                [n for p in parts for n in p.names], cat("a", np.int64), cat("b", np.int64),
                cat("value", np.float64),
                model=cat("model", np.int64) if kind == "D" else None,
                c=cat("c", np.int64) if kind == "E" else None,
                d=cat("d", np.int64) if kind == "E" else None,
                control=[v for p in parts for v in p.control] if kind == "F" else None,
                target=cat("target", np.float64) if kind == "B" else None,
                group=cat("group", np.int64) if kind == "B" else None)
        return self._cache[kind]

    @property
    def resistors(self) -> Elements:
        return self.elements("R")

    @property
    def diodes(self) -> Elements:
        return self.elements("D")

    @property
    def vsources(self) -> Elements:
        return self.elements("V")

    @property
    def isources(self) -> Elements:
        return self.elements("I")

    @property
    def vcvs(self) -> Elements:
        """Voltage-controlled voltage sources (E)."""
        return self.elements("E")

    @property
    def cccs(self) -> Elements:
        """Current-controlled current sources (F)."""
        return self.elements("F")

    @property
    def softmax_sources(self) -> Elements:
        """Softmax current sources (B)."""
        return self.elements("B")

    def control_indices(self) -> np.ndarray:
        """``(num F,)`` index into :attr:`vsources` of each F source's controlling V source
        (names matched case-insensitively); EpsimError naming the first one missing."""
        index = {name.lower(): k for k, name in enumerate(self.vsources.names)}
        f = self.cccs
        out = np.empty(len(f), dtype=np.int64)
        for k, (name, ctl) in enumerate(zip(f.names, f.control)):
            i = index.get(ctl.lower())
            if i is None:
                raise EpsimError(f"current-controlled source {name} names {ctl!r}, which is not a "
                                 f"voltage source of circuit {self.title!r}")
            out[k] = i
        return out

    def num_elements(self) -> int:
        return sum(len(self.elements(k)) for k in KINDS)

    # ---- physics helpers -------------------------------------------------------------
    @property
    def vt_V(self) -> float:
        """Thermal voltage k T / q (V) at ``temp_K``."""
        return BOLTZMANN_J_PER_K * self.temp_K / ELEMENTARY_CHARGE_C

    def check(self):
        """Raise EpsimError for duplicate element names (SPICE names are case-insensitive) or an
        F source whose controlling V source does not exist."""
        seen = set()
        for kind in KINDS:
            for name in self.elements(kind).names:
                key = name.lower()
                if key in seen:
                    raise EpsimError(f"element name {name!r} used twice in circuit {self.title!r}")
                seen.add(key)
        self.control_indices()
