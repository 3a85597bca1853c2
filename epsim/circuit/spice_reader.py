"""Read SPICE netlists of epsim's subset back into the circuit IR.

The subset: elements ``R`` (resistor), ``D`` (diode), ``V`` and ``I`` (DC sources, optional
``DC`` keyword), ``E`` (voltage-controlled voltage source, linear form only:
``Ename p m cp cm gain``) and ``F`` (current-controlled current source:
``Fname p m vctl gain``, ``vctl`` a V source of the circuit); cards
``.model NAME D(IS=.. N=..)``, ``.include``/``.inc`` (paths relative to the including file),
``.param``, ``.options``/``.temp`` (temperature only), analysis and output cards (``.op``,
``.dc``, ``.print``, ``.save``, ``.nodeset``, ``.ic``: ignored), ``.control ... .endc``
(skipped; a ``.control`` without its ``.endc`` is an error: it would silently drop the rest of
the circuit) and ``.end``. Also: comment lines (``*``), inline comments (``;`` or `` $ ``),
``+`` continuation lines (joined in linear time), case-insensitive names, SPICE number suffixes
(``t g meg k m mil u n p f a``, trailing unit letters ignored: ``10kOhm``), ``{expr}`` parameter
expressions (``+ - * / **``, parentheses, parameter names; evaluated in floats with a nesting
limit, see :func:`_eval_expr`).
Every value must be a finite number, every temperature above absolute zero.

The first line of a top-level netlist is its title (SPICE rule); included files have none.
Temperature: ``.options temp=`` / ``.temp`` are read with ngspice's constants, Xyce's
``.options device temp=`` with Xyce's, and converted to epsim's temperature (same ``kT/q``),
the inverse of :mod:`epsim.circuit.spice_writer`. ``TEMP`` must equal ``TNOM``.

Every problem raises :class:`~epsim.errors.EpsimError` naming ``file:line``, quoting at most
about 80 characters of the offending text.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..errors import EpsimError
from .netlist import DiodeCard, Netlist
from .spice_dialects import epsim_temperature_K

SUFFIXES = (("meg", 1e6), ("mil", 25.4e-6), ("t", 1e12), ("g", 1e9), ("k", 1e3), ("m", 1e-3),
            ("u", 1e-6), ("n", 1e-9), ("p", 1e-12), ("f", 1e-15), ("a", 1e-18))
NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)([a-z]*)$")
UNSUPPORTED_ELEMENTS = {
    "c": "capacitor", "l": "inductor", "k": "coupled inductors", "x": "subcircuit instance",
    "m": "MOSFET", "q": "bipolar transistor", "j": "JFET", "z": "MESFET", "g": "VCCS",
    "h": "CCVS", "s": "voltage switch",
    "w": "current switch", "t": "transmission line", "o": "lossy line", "u": "RC line",
    "y": "transmission line", "a": "XSPICE code model", "n": "OSDI device", "p": "coupled line",
}
IGNORED_CARDS = {".op", ".dc", ".print", ".save", ".probe", ".nodeset", ".ic", ".title", ".width",
                 ".meas", ".measure", ".global", ".plot"}
DIODE_PARAMS = {"is", "n", "level"}
ELEMENT_KINDS = "rdviefb"
READ_KINDS = "R, D, V, I, E, F and B (softmax current sources only)"
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"
_EXP_V = r"exp\(v\(([^()\s]+)\)\)"
SOFTMAX_SOURCE = re.compile(  # I = A * (y - exp(v(m)) / (exp(v(m1)) + ...)), blanks removed
    rf"^i=(?P<brace>\{{)?(?P<a>{_NUM})\*\((?P<y>{_NUM})-{_EXP_V}/\((?P<den>{_EXP_V}(?:\+{_EXP_V})*)\)\)(?(brace)\}})$",
    flags=re.I)
MAX_QUOTE = 80           # characters of netlist text quoted in an error message
MAX_NUMBER_CHARS = 100   # a longer token is not read as a number (bounds the regex's work)
MAX_EXPR_DEPTH = 64      # nesting (parentheses, unary signs, powers) of a {expression}


class _Loc:
    """A place in a netlist file: ``file:line`` of error messages."""

    def __init__(self, file, line):
        self.file, self.line = file, line

    def error(self, message) -> EpsimError:
        """An error at this place; netlist text in ``message`` is cut to a readable length."""
        return EpsimError(f"{self.file}:{self.line}: {_clip_message(message)}")


def _clip_message(message: str, limit: int = 4 * MAX_QUOTE) -> str:
    """``message`` with every run of non-blank characters cut to MAX_QUOTE (runs that
    :func:`quote` and :func:`clip` already cut are left alone), and at most ``limit`` characters
    long: an error names the problem, it does not echo the file."""
    longest = MAX_QUOTE + 10  # what quote() and clip() leave of a long token
    message = re.sub(r"\S{%d,}" % (longest + 1),
                     lambda m: f"{m.group()[:MAX_QUOTE]}... ({len(m.group())} characters)", message)
    return message if len(message) <= limit else message[:limit] + "..."


EXPR_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?)|([a-z_][a-z0-9_]*)|(\*\*|[-+*/()]))")


def clip(text: str, limit: int = MAX_QUOTE) -> str:
    """Netlist text for an error message, cut to ``limit`` characters."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def quote(text: str, limit: int = MAX_QUOTE) -> str:
    """``repr`` of netlist text for an error message, cut to ``limit`` characters."""
    text = str(text)
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def parse_number(text: str, params: dict | None = None, loc: _Loc | None = None) -> float:
    """A finite SPICE value: number with optional scale suffix, ``{expr}`` or a parameter name."""
    t = text.strip().lower()
    if (t.startswith("{") and t.endswith("}")) or (len(t) > 1 and t.startswith("'") and t.endswith("'")):
        return _eval_expr(t[1:-1], params or {}, loc)
    where = loc.error if loc else EpsimError
    m = NUMBER.match(t) if len(t) <= MAX_NUMBER_CHARS else None
    if m:
        value = float(m.group(1))
        letters = m.group(2)
        for suffix, scale in SUFFIXES:
            if letters.startswith(suffix):
                value *= scale
                break
        if not np.isfinite(value):
            raise where(f"value {quote(text)} is not a finite number")
        return value
    if params and t in params:
        return params[t]
    raise where(f"cannot read {quote(text)} as a number")


def _eval_expr(expr: str, params: dict, loc) -> float:
    """Value of a ``{expr}``: numbers, parameter names, ``+ - * / **`` and parentheses, with
    Python's precedence (``-2**2 == -4``, ``**`` right-associative).

    Bounded: floats only (no arbitrary-precision integers), every intermediate result must be
    finite and real, nesting deeper than :data:`MAX_EXPR_DEPTH` is refused; every problem is an
    :class:`EpsimError` at ``loc``.
    """
    return _ExprParser(expr, params, loc).parse()


class _ExprParser:
    """Recursive-descent evaluator of a parameter expression (see :func:`_eval_expr`)."""

    def __init__(self, expr: str, params: dict, loc):
        self.expr, self.params, self.loc = expr, params, loc
        self.tokens = self._tokenize(expr)
        self.pos = 0

    def fail(self, message) -> EpsimError:
        text = f"{message} in expression {{{clip(self.expr)}}}" if self.expr else message
        return self.loc.error(text) if self.loc else EpsimError(text)

    def _tokenize(self, expr):
        tokens, pos, n = [], 0, len(expr)
        while pos < n:
            m = EXPR_TOKEN.match(expr, pos)
            if m is None or m.end() == pos:
                if expr[pos:].strip() == "":
                    break
                raise self.fail(f"cannot parse {quote(expr[pos:pos + 20])}")
            number, name, op = m.groups()
            if number is not None:
                tokens.append(("num", float(number)))
            elif name is not None:
                tokens.append(("name", name))
            else:
                tokens.append(("op", op))
            pos = m.end()
        return tokens

    def parse(self) -> float:
        if not self.tokens:
            raise self.fail("empty expression")
        value = self._sum(0)
        if self.pos != len(self.tokens):
            raise self.fail(f"unexpected {quote(str(self.tokens[self.pos][1]))}")
        return value

    def _peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None)

    def _checked(self, value: float) -> float:
        if not np.isfinite(value):
            raise self.fail("a result that is not a finite number")
        return value

    def _sum(self, depth):
        value = self._product(depth)
        while self._peek() in (("op", "+"), ("op", "-")):
            op = self.tokens[self.pos][1]
            self.pos += 1
            rhs = self._product(depth)
            value = self._checked(value + rhs if op == "+" else value - rhs)
        return value

    def _product(self, depth):
        value = self._unary(depth)
        while self._peek() in (("op", "*"), ("op", "/")):
            op = self.tokens[self.pos][1]
            self.pos += 1
            rhs = self._unary(depth)
            if op == "/" and rhs == 0:
                raise self.fail("division by zero")
            value = self._checked(value * rhs if op == "*" else value / rhs)
        return value

    def _unary(self, depth):
        if depth > MAX_EXPR_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_EXPR_DEPTH} levels")
        if self._peek() in (("op", "-"), ("op", "+")):
            sign = -1.0 if self.tokens[self.pos][1] == "-" else 1.0
            self.pos += 1
            return sign * self._unary(depth + 1)
        return self._power(depth)

    def _power(self, depth):
        base = self._atom(depth)
        if self._peek() != ("op", "**"):
            return base
        self.pos += 1
        exponent = self._unary(depth + 1)
        try:
            value = math.pow(base, exponent)
        except OverflowError:
            raise self.fail("a power that overflows") from None
        except ValueError:  # a negative base to a fractional power, or 0 to a negative one
            raise self.fail(f"a power that is not a real number (({base:g})**({exponent:g}))") from None
        return self._checked(value)

    def _atom(self, depth):
        kind, value = self._peek()
        self.pos += 1
        if kind == "num":
            return self._checked(value)
        if kind == "name":
            if value not in self.params:
                raise self.fail(f"unknown parameter {quote(value)}")
            return self.params[value]
        if (kind, value) == ("op", "("):
            inner = self._sum(depth + 1)
            if self._peek() != ("op", ")"):
                raise self.fail("a missing ')'")
            self.pos += 1
            return inner
        raise self.fail("a missing operand" if kind is None else f"unexpected {quote(value)}")


def _logical_lines(path: Path, has_title: bool):
    """``(title, [(loc, text)])``: the statements of a file, continuation lines joined (in
    linear time), comments dropped, runs of blanks made one space."""
    title, out = None, []  # out: (loc, [pieces of the statement])
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if has_title and number == 1:
            title = line.strip()
            continue
        line = re.split(r";|\s\$(?=\s|$)", line, maxsplit=1)[0]
        stripped = " ".join(line.split())
        if not stripped or stripped.startswith("*"):
            continue
        if stripped.startswith("+"):
            if not out:
                raise _Loc(path, number).error("continuation line '+' with nothing to continue")
            out[-1][1].append(stripped[1:])
            continue
        out.append((_Loc(path, number), [stripped]))
    return title, [(loc, " ".join(p for p in pieces if p)) for loc, pieces in out]


def _read_text(path: Path) -> str:
    """The file's text (UTF-8); bytes that are not UTF-8 are an error at their line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EpsimError(f"cannot read netlist {path}: {exc.strerror}") from None
    try:
        return raw.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise _Loc(path, line).error(f"byte {raw[exc.start]:#04x} is not UTF-8 text") from None


_RUN = re.compile(r"\S+")
_QUOTES = {"{": "}", "'": "'", '"': '"'}


def _tokens(text: str) -> list:
    """Blank-separated tokens of a statement; ``{...}``, ``'...'`` and ``"..."`` are one token
    each (blanks inside allowed). Linear in the length of ``text``."""
    text = re.sub(r" ?= ?", "=", " ".join(text.split()))
    out, i, n = [], 0, len(text)
    unclosed = set()  # closing characters absent from the rest of the text
    while i < n:
        if text[i] == " ":
            i += 1
            continue
        close = _QUOTES.get(text[i])
        if close is not None and close not in unclosed:
            j = text.find(close, i + 1)
            if j >= 0:
                out.append(text[i:j + 1])
                i = j + 1
                continue
            unclosed.add(close)
        run = _RUN.match(text, i)
        out.append(run.group())
        i = run.end()
    return out


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
        self.stack.append(key)
        title, lines = _logical_lines(path, has_title)
        control = None  # where the open .control block began
        for loc, text in lines:
            tokens = _tokens(text)
            head = tokens[0].lower()
            if control is not None:
                if head == ".endc":
                    control = None
                continue
            if head == ".control":
                control = loc
            elif head == ".endc":
                raise loc.error(".endc without .control")
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
                self.temp = (_temperature_C(tokens[1], self.params, loc, "ngspice", "TEMP"), "ngspice", loc)
            elif head.startswith("."):
                if head in IGNORED_CARDS:
                    continue
                raise loc.error(f"unsupported control card {tokens[0]} (epsim reads R, D, V, I, E, F, "
                                ".model, .include, .param, .options, .op/.dc/.print, .end)")
            else:
                self.statements.append((loc, tokens))
        if control is not None:
            raise control.error(".control without .endc: every line after it would be taken for a "
                                "simulator command and dropped from the circuit; close the block with .endc")
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
        if target.resolve() in self.stack:
            raise loc.error(f"{tokens[0]} {name} includes a file that is already being read (an include loop)")
        self.read_file(target, has_title=False)

    def _param(self, tokens, loc):
        if len(tokens) < 2:
            raise loc.error(".param needs name=value")
        for tok in tokens[1:]:
            if "=" not in tok:
                raise loc.error(f".param expects name=value, got {quote(tok)}")
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
                raise loc.error(f"diode model {name}: expected PARAM=value, got {quote(tok)}")
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
                self.temp = (_temperature_C(value, self.params, loc, dialect, "TEMP"), dialect, loc)
            elif key == "tnom":
                self.tnom = (_temperature_C(value, self.params, loc, dialect, "TNOM"), dialect, loc)

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
            elif kind == "b":
                self._softmax_source(tokens, loc, group)
            else:
                group.value.append(self._element_value(kind, tokens, loc))
            group.names.append(name)
            group.a.append(tokens[1].lower())
            group.b.append(tokens[2].lower())
        _check_controls(groups, seen)
        _check_softmax_groups(groups["B"])
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

    def _softmax_source(self, tokens, loc, group):
        """``Bname 0 m I = A * (y - exp(v(m)) / (exp(v(m1)) + ...))`` (``I={...}`` too): the
        softmax current source epsim writes; other behavioural sources are refused."""
        form = "'B name 0 m I = A * (y - exp(v(m)) / (exp(v(m1)) + exp(v(m2)) + ...))'"
        if len(tokens) < 4:
            raise loc.error(f"behavioural source {tokens[0]}: expected {form}")
        m = SOFTMAX_SOURCE.match("".join(tokens[3:]))
        if m is None:
            raise loc.error(f"behavioural source {tokens[0]}: epsim reads only the softmax current "
                            f"source {form}, got {quote(' '.join(tokens[3:]))}")
        node = tokens[2].lower()
        members = tuple(n.lower() for n in re.findall(_EXP_V, m.group("den"), flags=re.I))
        if tokens[1] != "0" or m.group(4).lower() != node or node not in members:
            raise loc.error(f"behavioural source {tokens[0]}: the softmax source drives its own node "
                            f"from ground (B name 0 m) and its numerator and denominator name that node")
        group.value.append(parse_number(m.group("a"), self.params, loc))
        group.target.append(parse_number(m.group("y"), self.params, loc))
        group.group.append(members)
        group.cards.append((loc, tokens[0], node))

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
                                + (f", got extra {quote(' '.join(args[1:]))}" if len(args) > 1 else ""))
            value = parse_number(args[0], self.params, loc)
            if value == 0:
                raise loc.error(f"resistor {tokens[0]} of 0 ohm")
            return value
        if args and args[0].lower() == "dc":
            args = args[1:]
        if not args:
            return 0.0
        if len(args) != 1:
            raise loc.error(f"{label} {tokens[0]}: only DC values are supported, got {quote(' '.join(args))}")
        return parse_number(args[0], self.params, loc)


def _temperature_C(text, params, loc, dialect, what) -> float:
    """A netlist temperature in degrees C, checked to be above absolute zero in ``dialect``."""
    temp_C = parse_number(text, params, loc)
    if not epsim_temperature_K(temp_C, dialect) > 0:
        raise loc.error(f"{what}={temp_C:g} C is at or below absolute zero (-273.15 C)")
    return temp_C


class _Group:
    """Parsed elements of one kind, as lists for :meth:`Netlist.add`."""

    def __init__(self):
        self.names, self.a, self.b, self.value = [], [], [], []
        self.model, self.c, self.d, self.control = [], [], [], []
        self.target, self.group = [], []  # B only
        self.cards = []  # F: (loc, name, controlling source); B: (loc, name, node), as written

    def controls(self, kind) -> dict:
        if kind == "E":
            return {"c": self.c, "d": self.d}
        if kind == "F":
            return {"control": self.control}
        if kind == "B":
            return {"target": self.target, "group": self.group}
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


def _check_softmax_groups(group):
    """Each softmax group's denominator names exactly the nodes its sources drive, once each."""
    driven = {}
    for (loc, name, node), members in zip(group.cards, group.group):
        driven.setdefault(members, []).append((loc, name, node))
    for members, cards in driven.items():
        nodes = [node for _, _, node in cards]
        if sorted(nodes) != sorted(members) or len(set(members)) != len(members):
            loc, name, _ = cards[0]
            raise loc.error(f"behavioural source {name}: its softmax over {', '.join(members)} needs one "
                            f"source driving each of those nodes, found sources on {', '.join(nodes)}")


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
