"""Write the circuit IR as a standalone SPICE netlist (ngspice or Xyce dialect).

A written file runs as is: ``ngspice -b FILE`` (prints the node voltages; add ``-r out.raw``
for a binary raw file with every node at full precision) or ``Xyce FILE``. It is standalone:
the diode models of the component library (``circuits/*.lib``) are copied into the netlist as
``.model`` cards, each under a comment naming its library file, so the file can be moved or
sent anywhere. ``standalone=False`` writes ``.include`` lines instead, with paths relative to
the netlist's folder (both simulators resolve them from the including file). Values are plain
Python floats written with ``repr`` (shortest exact round trip).

Dialects:

- ``ngspice``: ``.options`` for tight tolerances, ``.op``, ``.end``. No ``.control`` block:
  under ``ngspice -b -r`` a control section would run the analysis a second time.
- ``xyce``: ``.OPTIONS DEVICE``/``NONLIN`` cards and a one-point ``.DC`` sweep of the first
  voltage source at its own value with ``.PRINT DC`` of every node voltage (Xyce prints
  through ``.PRINT``; no ``.control``). Not run here: Xyce is not installed.

Amplifier elements are written in SPICE's linear forms, the same in both dialects:
``Ename p m cp cm gain`` and ``Fname p m vctl gain``. A softmax current source (the
cross-entropy nudge) is a behavioural source, ``Bname 0 m I = A * (y - exp(v(m)) / (exp(v(m1))
+ exp(v(m2)) + ...))`` (Xyce: ``I={...}``), its softmax group the nodes of the denominator;
``exp`` of a node voltage above ~700 V overflows in either simulator.

Temperature: a simulator computes ``Vt = k T / q`` with its own constants (ngspice 39:
CODATA 2014; Xyce: the SPICE3 values). The netlist's ``TEMP`` and ``TNOM`` (equal, so ``IS``
is not temperature-scaled) are chosen so that the simulator's ``Vt`` equals epsim's
(CODATA 2018) at the IR's ``temp_K``; the reader inverts this
(:mod:`epsim.circuit.spice_dialects`).

Tolerances (ngspice): ``reltol=1e-9 vntol=1e-12 abstol=1e-15`` make ngspice iterate until
node voltages move by less than ~1e-9 relative, and ``gmin=0`` removes the 1e-12 S that SPICE
puts across every junction by default (not part of the circuit; it would shift clamped
nodes by up to ~1e-7 V). With ngspice's defaults (reltol 1e-3) voltages can be off by 1e-4 V.
``.options klu`` selects the KLU sparse solver in ngspice builds that have it (ngspice 44
prints "Using KLU as Direct Linear Solver"; builds without it ignore the option): on circuits
of millions of elements it is the difference between minutes and hours.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import EpsimError
from .netlist import KINDS, Netlist
from .spice_dialects import check_dialect, simulator_temperature_C
from .spice_reader import read_library

NGSPICE_OPTIONS = {"reltol": 1e-9, "vntol": 1e-12, "abstol": 1e-15, "gmin": 0.0, "itl1": 500}
XYCE_OPTIONS = {"DEVICE": {"GMIN": 0.0},
                "NONLIN": {"RELTOL": 1e-9, "ABSTOL": 1e-15, "DELTAXTOL": 1e-12, "RHSTOL": 1e-15,
                           "MAXSTEP": 500}}
SECTION_TITLES = {"V": "voltage sources (inputs, nudging targets, rails)",
                  "R": "resistors (crossbar conductances, nudging)",
                  "D": "clamp diodes", "I": "bias current sources",
                  "E": "voltage-controlled voltage sources (amplifiers, forward: a_N = A * v(N))",
                  "F": "current-controlled current sources (amplifiers, backward: I(vs_N) / A out of N)",
                  "B": "softmax current sources (cross-entropy nudge)"}
SENSE_TITLE = "voltage sources (inputs, nudging targets, rails, amplifier current sensors vs_N)"
WRITE_ORDER = ("V", "R", "D", "I", "E", "F", "B")


def library_dir() -> Path:
    """The SPICE component library folder ``circuits/`` next to the package."""
    return Path(__file__).resolve().parents[2] / "circuits"


def fmt(x) -> str:
    """A plain-float SPICE number (``repr`` of a Python float: exact, never a numpy repr)."""
    return repr(float(x))


def _library_cards(lib_dir):
    """``{model name: (DiodeCard, file)}`` of every ``.lib`` file in the component library."""
    cards = {}
    if lib_dir is not None and Path(lib_dir).is_dir():
        for path in sorted(Path(lib_dir).glob("*.lib")):
            for card in read_library(path):
                cards[card.name] = (card, path)
    return cards


def _model_lines(netlist, netlist_dir, lib_dir, standalone=True):
    """The diode model lines: a library model as its ``.model`` card under a comment naming the
    library file (``standalone``) or as an ``.include`` of that file; other models as cards."""
    lib = _library_cards(lib_dir)
    lines = []
    for card in netlist.models:
        found = lib.get(card.name)
        if card.ideal:
            if found is None:
                raise EpsimError(f"ideal diodes need the near-ideal model {card.name!r} of the "
                                 f"component library (circuits/ideal_diode.lib), not found in {lib_dir}")
        elif found is not None and (found[0].is_A, found[0].n) != (card.is_A, card.n):
            found = None
        if found is None:
            lines.append(_model_card(card))
        elif standalone:
            lines += [f"* model {card.name} of the component library, circuits/{Path(found[1]).name}",
                      _model_card(found[0])]
        else:
            lines.append(_include_line(found[1], netlist_dir))
    return sorted(set(lines), key=lines.index)


def _model_card(card) -> str:
    return f".model {card.name} D(IS={fmt(card.is_A)} N={fmt(card.n)})"


def _include_line(path, netlist_dir):
    path = Path(path).resolve()
    if netlist_dir is not None:
        path = Path(os.path.relpath(path, Path(netlist_dir).resolve()))
    return f".include {path.as_posix()}"


def element_lines(netlist: Netlist, kind: str, dialect: str = "ngspice") -> list:
    """SPICE lines of every element of ``kind`` (``dialect`` matters for B sources only)."""
    e = netlist.elements(kind)
    nodes = netlist.nodes
    if kind == "B":
        members = {}
        for m, g in zip(e.b.tolist(), e.group.tolist()):
            members.setdefault(g, []).append(nodes[m])
        lines = []
        for n, m, v, y, g in zip(e.names, e.b.tolist(), e.value.tolist(), e.target.tolist(), e.group.tolist()):
            total = " + ".join(f"exp(v({k}))" for k in members[g])
            expr = f"{v!r} * ({y!r} - exp(v({nodes[m]})) / ({total}))"
            lines.append(f"{n} 0 {nodes[m]} " + (f"I = {expr}" if dialect == "ngspice" else f"I={{{expr}}}"))
        return lines
    if kind == "D":
        models = [m.name for m in netlist.models]
        return [f"{n} {nodes[a]} {nodes[b]} {models[m]}"
                for n, a, b, m in zip(e.names, e.a.tolist(), e.b.tolist(), e.model.tolist())]
    if kind == "E":
        return [f"{n} {nodes[a]} {nodes[b]} {nodes[c]} {nodes[d]} {v!r}"
                for n, a, b, c, d, v in zip(e.names, e.a.tolist(), e.b.tolist(), e.c.tolist(),
                                            e.d.tolist(), e.value.tolist())]
    if kind == "F":
        return [f"{n} {nodes[a]} {nodes[b]} {ctl} {v!r}"
                for n, a, b, ctl, v in zip(e.names, e.a.tolist(), e.b.tolist(), e.control,
                                           e.value.tolist())]
    return [f"{n} {nodes[a]} {nodes[b]} {v!r}"
            for n, a, b, v in zip(e.names, e.a.tolist(), e.b.tolist(), e.value.tolist())]


def _section_title(netlist: Netlist, kind: str) -> str:
    if kind == "V" and len(netlist.cccs):
        return SENSE_TITLE
    return SECTION_TITLES[kind]


def _element_counts(netlist: Netlist) -> str:
    """``"12 R, 4 D, 3 V, 5 I"`` (E and F only when the circuit has them)."""
    kinds = [k for k in KINDS if k in "RDVI" or len(netlist.elements(k))]
    return ", ".join(f"{len(netlist.elements(k))} {k}" for k in kinds)


def format_netlist(netlist: Netlist, dialect: str = "ngspice", *, netlist_dir=None,
                   lib_dir=None, header=(), standalone: bool = True) -> str:
    """The netlist text.

    Args:
        netlist: the circuit.
        dialect: ``ngspice`` or ``xyce``.
        netlist_dir: folder the file will be written to (with ``standalone=False``, ``.include``
            paths are made relative to it; None writes absolute paths).
        lib_dir: component library folder (default :func:`library_dir`).
        header: extra comment lines for the header.
        standalone: copy the library's model cards into the netlist (default) instead of
            including the library files.
    """
    check_dialect(dialect)
    lib_dir = library_dir() if lib_dir is None else lib_dir
    temp_C = simulator_temperature_C(netlist.temp_K, dialect)
    out = [netlist.title.replace("\n", " "),
           f"* written by epsim.circuit.spice_writer, dialect {dialect}; run: "
           + ("ngspice -b -r OUT.raw THIS_FILE" if dialect == "ngspice" else "Xyce THIS_FILE")]
    out += [f"* {line}" for line in list(header) + list(netlist.notes)]
    out.append(f"* {netlist.num_nodes - 1} nodes, " + _element_counts(netlist))
    out.append(f"* temperature {netlist.temp_K!r} K in epsim's constants = {temp_C!r} C in "
               f"{dialect}'s (same thermal voltage kT/q)")
    out += _model_lines(netlist, netlist_dir, lib_dir, standalone)
    if dialect == "ngspice":
        opts = " ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in NGSPICE_OPTIONS.items())
        out.append(f".options temp={temp_C!r} tnom={temp_C!r} {opts}")
        out.append(".options klu")
    else:
        dev = dict(XYCE_OPTIONS["DEVICE"], TEMP=temp_C, TNOM=temp_C)
        out.append(".OPTIONS DEVICE " + " ".join(f"{k}={v!r}" for k, v in dev.items()))
        out.append(".OPTIONS NONLIN " + " ".join(f"{k}={v!r}" for k, v in XYCE_OPTIONS["NONLIN"].items()))
    netlist.control_indices()  # an F source must name an existing V source
    for kind in WRITE_ORDER:
        lines = element_lines(netlist, kind, dialect)
        if lines:
            out.append(f"* {_section_title(netlist, kind)}")
            out += lines
    if dialect == "ngspice":
        out.append(".op")
    else:
        out += _xyce_analysis(netlist)
    out.append(".end")
    return "\n".join(out) + "\n"


def _xyce_analysis(netlist):
    v = netlist.vsources
    lines = []
    if len(v):
        name, value = v.names[0], fmt(v.value[0])
    else:
        name, value = "vxyce_sweep", "0.0"
        lines.append(f"{name} xyce_sweep 0 0.0")
    lines.append(f".DC {name} {value} {value} 1")
    nodes = netlist.nodes[1:]
    lines.append(".PRINT DC FORMAT=CSV")
    lines += [f"+ V({n})" for n in nodes]
    return lines


def write_netlist(netlist: Netlist, path, dialect: str = "ngspice", *, lib_dir=None, header=(),
                  standalone: bool = True) -> Path:
    """Write ``netlist`` to ``path`` (folders created) and return the path
    (``standalone``: see :func:`format_netlist`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = format_netlist(netlist, dialect, netlist_dir=path.parent, lib_dir=lib_dir, header=header,
                          standalone=standalone)
    path.write_text(text)
    return path


def node_voltage_table(netlist: Netlist, voltages_V) -> dict:
    """``{node name: volts}`` (ground left out) from ``(num_nodes,)`` voltages."""
    v = np.asarray(voltages_V, dtype=np.float64)
    return {n: float(x) for n, x in zip(netlist.nodes[1:], v[1:])}
