"""Read SPICE netlists of epsim's subset back into the circuit IR.

The subset: elements ``R`` (resistor), ``D`` (diode), ``V`` and ``I`` (DC sources, optional
``DC`` keyword), ``E`` (voltage-controlled voltage source, linear form only:
``Ename p m cp cm gain``) and ``F`` (current-controlled current source:
``Fname p m vctl gain``, ``vctl`` a V source of the circuit); cards
``.model NAME D(IS=.. N=..)``, ``.include``/``.inc`` (paths relative to the including file),
``.param``, ``.options``/``.temp`` (temperature only), analysis and output cards (``.op``,
``.dc``, ``.print``, ``.save``, ``.nodeset``, ``.ic``: ignored), ``.control ... .endc``
(skipped) and ``.end``. Also: comment lines (``*``), inline comments
(``;`` or `` $ ``), ``+`` continuation lines, case-insensitive names, SPICE number suffixes
(``t g meg k m mil u n p f a``, trailing unit letters ignored: ``10kOhm``), ``{expr}``
parameter expressions (``+ - * / **``, parentheses, parameter names).

The first line of a top-level netlist is its title (SPICE rule); included files have none.
Temperature: ``.options temp=`` / ``.temp`` are read with ngspice's constants, Xyce's
``.options device temp=`` with Xyce's, and converted to epsim's temperature (same ``kT/q``),
the inverse of :mod:`epsim.circuit.spice_writer`. ``TEMP`` must equal ``TNOM``.

Every problem raises :class:`~epsim.errors.EpsimError` naming ``file:line``.
"""
from __future__ import annotations

import ast
import operator
import re
from pathlib import Path

import numpy as np

from ..errors import EpsimError
from .netlist import DiodeCard, Netlist
from .spice_writer import epsim_temperature_K

SUFFIXES = (("meg", 1e6), ("mil", 25.4e-6), ("t", 1e12), ("g", 1e9), ("k", 1e3), ("m", 1e-3),
            ("u", 1e-6), ("n", 1e-9), ("p", 1e-12), ("f", 1e-15), ("a", 1e-18))
NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)([a-z]*)$")
TOKEN = re.compile(r"\{[^}]*\}|'[^']*'|\"[^\"]*\"|[^\s]+")
UNSUPPORTED_ELEMENTS = {
    "c": "capacitor", "l": "inductor", "k": "coupled inductors", "x": "subcircuit instance",
    "m": "MOSFET", "q": "bipolar transistor", "j": "JFET", "z": "MESFET", "g": "VCCS",
    "h": "CCVS", "b": "behavioural source", "s": "voltage switch",
    "w": "current switch", "t": "transmission line", "o": "lossy line", "u": "RC line",
    "y": "transmission line", "a": "XSPICE code model", "n": "OSDI device", "p": "coupled line",
}
IGNORED_CARDS = {".op", ".dc", ".print", ".save", ".probe", ".nodeset", ".ic", ".title", ".width",
                 ".meas", ".measure", ".global", ".plot"}
DIODE_PARAMS = {"is", "n", "level"}
ELEMENT_KINDS = "rdvief"
READ_KINDS = "R, D, V, I, E and F"


class _Loc:
    def __init__(self, file, line):
        self.file, self.line = file, line

    def error(self, message) -> EpsimError:
        return EpsimError(f"{self.file}:{self.line}: {message}")


def parse_number(text: str, params: dict | None = None, loc: _Loc | None = None) -> float:
    """A SPICE value: number with optional scale suffix, ``{expr}`` or a parameter name."""
    t = text.strip().lower()
    if t.startswith("{") and t.endswith("}"):
        return _eval_expr(t[1:-1], params or {}, loc)
    if t.startswith("'") and t.endswith("'"):
        return _eval_expr(t[1:-1], params or {}, loc)
    m = NUMBER.match(t)
    if m:
        value = float(m.group(1))
        letters = m.group(2)
        for suffix, scale in SUFFIXES:
            if letters.startswith(suffix):
                return value * scale
        return value
    if params and t in params:
        return params[t]
    where = loc.error if loc else EpsimError
    raise where(f"cannot read {text!r} as a number")


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: operator.pow}


def _eval_expr(expr: str, params: dict, loc):
    def bad(msg):
        return loc.error(msg) if loc else EpsimError(msg)

    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise bad(f"cannot parse expression {{{expr}}}") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id.lower() not in params:
                raise bad(f"unknown parameter {node.id!r} in expression {{{expr}}}")
            return params[node.id.lower()]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        raise bad(f"unsupported expression {{{expr}}}: only numbers, parameters, + - * / **")

    try:
        return float(ev(tree))
    except ZeroDivisionError:
        raise bad(f"division by zero in {{{expr}}}") from None


def _logical_lines(path: Path, has_title: bool):
    """``(loc, text)`` statements of a file: continuations joined, comments dropped."""
    try:
        raw = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EpsimError(f"cannot read netlist {path}: {exc}") from None
    title = None
    out = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if has_title and number == 1:
            title = line.strip()
            continue
        line = re.split(r";|\s\$(?=\s|$)", line, maxsplit=1)[0].rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("*"):
            continue
        if stripped.startswith("+"):
            if not out:
                raise _Loc(path, number).error("continuation line '+' with nothing to continue")
            out[-1] = (out[-1][0], out[-1][1] + " " + stripped[1:])
            continue
        out.append((_Loc(path, number), stripped))
    return title, out


def _tokens(text: str) -> list:
    text = re.sub(r"\s*=\s*", "=", text)
    return TOKEN.findall(text)


class _Reader:
    def __init__(self):
        self.params = {}
        self.statements = []
        self.models = {}
        self.temp = None  # (value_C, dialect, loc)
        self.tnom = None
        self.stack = []

    def read_file(self, path: Path, has_title: bool):
        path = Path(path)
        key = path.resolve()
        if key in self.stack:
            raise EpsimError(f"{path}: .include loop")
        self.stack.append(key)
        title, lines = _logical_lines(path, has_title)
        in_control = False
        for loc, text in lines:
            tokens = _tokens(text)
            head = tokens[0].lower()
            if in_control:
                in_control = head != ".endc"
                continue
            if head == ".control":
                in_control = True
            elif head == ".end":
                break
            elif head in (".include", ".inc", ".lib"):
                self._include(tokens, loc, path)
            elif head == ".param":
                self._param(tokens, loc)
            elif head == ".model":
                self._model(text, loc)
            elif head in (".options", ".option", ".opt"):
                self._options(tokens, loc)
            elif head == ".temp":
                if len(tokens) != 2:
                    raise loc.error(".temp needs one value (degrees C)")
                self.temp = (parse_number(tokens[1], self.params, loc), "ngspice", loc)
            elif head.startswith("."):
                if head in IGNORED_CARDS:
                    continue
                raise loc.error(f"unsupported control card {tokens[0]} (epsim reads R, D, V, I, E, F, "
                                ".model, .include, .param, .options, .op/.dc/.print, .end)")
            else:
                self.statements.append((loc, tokens))
        self.stack.pop()
        return title

    def _include(self, tokens, loc, path):
        if len(tokens) != 2:
            raise loc.error(f"{tokens[0]} needs exactly one file name (library sections are not supported)")
        name = tokens[1].strip("'\"")
        target = Path(name)
        if not target.is_absolute():
            target = path.parent / target
        if not target.is_file():
            raise loc.error(f"included file {name} not found (looked for {target})")
        self.read_file(target, has_title=False)

    def _param(self, tokens, loc):
        if len(tokens) < 2:
            raise loc.error(".param needs name=value")
        for tok in tokens[1:]:
            if "=" not in tok:
                raise loc.error(f".param expects name=value, got {tok!r}")
            name, value = tok.split("=", 1)
            self.params[name.lower()] = parse_number(value, self.params, loc)

    def _model(self, text, loc):
        m = re.match(r"^\.model\s+(\S+)\s+([a-z]+)\s*\(?(.*?)\)?\s*$", text, flags=re.I)
        if not m:
            raise loc.error("malformed .model card; expected .model NAME D(IS=.. N=..)")
        name, kind, body = m.group(1).lower(), m.group(2).lower(), m.group(3)
        if kind != "d":
            raise loc.error(f"unsupported model type {m.group(2)} for {name}: epsim reads diode (D) models")
        values = {"is": 1e-14, "n": 1.0}  # SPICE defaults
        for tok in _tokens(body.replace("(", " ").replace(")", " ")):
            if "=" not in tok:
                raise loc.error(f"diode model {name}: expected PARAM=value, got {tok!r}")
            key, value = tok.split("=", 1)
            key = key.lower()
            if key not in DIODE_PARAMS:
                raise loc.error(f"diode model {name}: unsupported parameter {key.upper()} "
                                "(epsim's DC diode has IS and N only)")
            values[key] = parse_number(value, self.params, loc)
        if values.get("level", 1.0) != 1.0:
            raise loc.error(f"diode model {name}: only LEVEL=1 is supported")
        try:
            card = DiodeCard(name, values["is"], values["n"])
        except EpsimError as exc:
            raise loc.error(str(exc)) from None
        if name in self.models and self.models[name][0] != card:
            raise loc.error(f"diode model {name} defined twice with different parameters")
        self.models[name] = (card, loc)

    def _options(self, tokens, loc):
        dialect = "ngspice"
        rest = tokens[1:]
        if rest and rest[0].lower() in ("device", "nonlin", "timeint", "output", "linsol"):
            dialect = "xyce"
            if rest[0].lower() != "device":
                return
            rest = rest[1:]
        for tok in rest:
            if "=" not in tok:
                continue
            key, value = tok.split("=", 1)
            key = key.lower()
            if key == "temp":
                self.temp = (parse_number(value, self.params, loc), dialect, loc)
            elif key == "tnom":
                self.tnom = (parse_number(value, self.params, loc), dialect, loc)

    def build(self, title, path) -> Netlist:
        temp_C, dialect, loc = self.temp or (27.0, "ngspice", None)
        tnom_C = self.tnom[0] if self.tnom else 27.0
        if temp_C != tnom_C:
            where = loc or self.tnom[2]
            raise where.error(f"TEMP={temp_C} differs from TNOM={tnom_C}: temperature scaling of IS "
                              "is not modelled; set them equal")
        nl = Netlist(title=title or Path(path).stem, temp_K=epsim_temperature_K(temp_C, dialect))
        for card, _ in self.models.values():
            nl.add_model(card)
        groups = {k: _Group() for k in ELEMENT_KINDS.upper()}
        seen = {}
        for loc, tokens in self.statements:
            name = tokens[0].lower()
            kind = name[0]
            if kind not in ELEMENT_KINDS:
                what = UNSUPPORTED_ELEMENTS.get(kind, "unknown element")
                raise loc.error(f"unsupported element {tokens[0]} ({what}); epsim reads {READ_KINDS}")
            if name in seen:
                raise loc.error(f"element {tokens[0]} already defined at line {seen[name].line}")
            seen[name] = loc
            group = groups[kind.upper()]
            if kind == "d":
                self._diode(tokens, loc, group)
            elif kind == "e":
                self._vcvs(tokens, loc, group)
            elif kind == "f":
                self._cccs(tokens, loc, group)
            else:
                group.value.append(self._element_value(kind, tokens, loc))
            group.names.append(name)
            group.a.append(tokens[1].lower())
            group.b.append(tokens[2].lower())
        _check_controls(groups, seen)
        for kind, g in groups.items():
            if g.names:
                nl.add(kind, g.names, g.a, g.b, np.array(g.value),
                       model=g.model if kind == "D" else None, **g.controls(kind))
        return nl

    def _diode(self, tokens, loc, group):
        if len(tokens) != 4:
            raise loc.error(f"diode {tokens[0]}: expected 'D name anode cathode model'"
                            + (" (area factors and options are not supported)" if len(tokens) > 4 else ""))
        if tokens[3].lower() not in self.models:
            raise loc.error(f"diode {tokens[0]}: no .model named {tokens[3]}")
        group.model.append(tokens[3].lower())
        group.value.append(1.0)

    def _vcvs(self, tokens, loc, group):
        """``Ename p m cp cm gain``; VALUE=, POLY and table forms are refused."""
        if _nonlinear_form(tokens[3:]):
            raise loc.error(f"VCVS {tokens[0]}: only the linear form 'E name p m cp cm gain' "
                            "is supported")
        if len(tokens) != 6:
            raise loc.error(f"VCVS {tokens[0]}: expected 'E name p m cp cm gain'")
        group.c.append(tokens[3].lower())
        group.d.append(tokens[4].lower())
        group.value.append(parse_number(tokens[5], self.params, loc))

    def _cccs(self, tokens, loc, group):
        """``Fname p m vctl gain``; POLY forms are refused."""
        if _nonlinear_form(tokens[3:]):
            raise loc.error(f"CCCS {tokens[0]}: only the linear form 'F name p m vname gain' "
                            "is supported")
        if len(tokens) != 5:
            raise loc.error(f"CCCS {tokens[0]}: expected 'F name p m vname gain'")
        group.control.append(tokens[3].lower())
        group.cards.append((loc, tokens[0], tokens[3]))
        group.value.append(parse_number(tokens[4], self.params, loc))

    def _element_value(self, kind, tokens, loc):
        label = {"r": "resistor", "v": "voltage source", "i": "current source"}[kind]
        if len(tokens) < 3:
            raise loc.error(f"{label} {tokens[0]}: expected '{tokens[0][0].upper()}name node node value'")
        args = tokens[3:]
        if kind == "r":
            if len(args) == 1 and args[0].lower().startswith("r="):
                args = [args[0][2:]]
            if len(args) != 1:
                raise loc.error(f"resistor {tokens[0]}: expected one value"
                                + (f", got extra {' '.join(args[1:])!r}" if len(args) > 1 else ""))
            value = parse_number(args[0], self.params, loc)
            if value == 0:
                raise loc.error(f"resistor {tokens[0]} of 0 ohm")
            return value
        if args and args[0].lower() == "dc":
            args = args[1:]
        if not args:
            return 0.0
        if len(args) != 1:
            raise loc.error(f"{label} {tokens[0]}: only DC values are supported, got {' '.join(args)!r}")
        return parse_number(args[0], self.params, loc)


class _Group:
    """Parsed elements of one kind, as lists for :meth:`Netlist.add`."""

    def __init__(self):
        self.names, self.a, self.b, self.value = [], [], [], []
        self.model, self.c, self.d, self.control = [], [], [], []
        self.cards = []  # F only: (loc, name, controlling source) as written

    def controls(self, kind) -> dict:
        if kind == "E":
            return {"c": self.c, "d": self.d}
        if kind == "F":
            return {"control": self.control}
        return {}


def _nonlinear_form(args) -> bool:
    """Whether controlled-source arguments use a POLY, VALUE=, TABLE or LAPLACE form."""
    for tok in args:
        t = tok.lower()
        if t in ("poly", "value", "table", "laplace") or t.startswith(("poly(", "value=", "table=",
                                                                          "laplace=")):
            return True
    return False


def _check_controls(groups, seen):
    """Every F source must name a V source of the circuit (SPICE's own rule)."""
    for loc, name, ctl in groups["F"].cards:
        if ctl.lower() not in seen:
            raise loc.error(f"CCCS {name}: controlling voltage source {ctl} not found")
        if ctl[0].lower() != "v":
            raise loc.error(f"CCCS {name}: controlling element {ctl} is not a voltage source (V)")


def read_netlist(path) -> Netlist:
    """Parse the SPICE file ``path`` (and what it includes) into a :class:`Netlist`."""
    path = Path(path)
    if not path.is_file():
        raise EpsimError(f"netlist {path} not found")
    reader = _Reader()
    title = reader.read_file(path, has_title=True)
    return reader.build(title, path)


def read_library(path) -> list:
    """Diode model cards defined in a library file (no title line)."""
    reader = _Reader()
    reader.read_file(Path(path), has_title=False)
    if reader.statements:
        loc, tokens = reader.statements[0]
        raise loc.error(f"library files hold .model cards only, found element {tokens[0]}")
    return [card for card, _ in reader.models.values()]
