"""The netlist reader never crashes (issue 17): every problem in a netlist is an EpsimError that
names file:line and quotes little of the file; bounded expressions, long continuations,
.control without .endc and temperatures below absolute zero refused; a seeded mutation fuzzer."""
import random
import re

import pytest

from epsim.circuit.reference import REFERENCE_BETA, reference_network
from epsim.circuit.spice_reader import parse_number, read_netlist
from epsim.data import load_dataset
from epsim.errors import EpsimError
from epsim.spice.samples import export_samples

MAX_MESSAGE = 400  # characters of an error message, whatever the netlist holds


def read_error(tmp_path, body, title="title\n* comment\n"):
    """The EpsimError of reading ``title + body``; checks it is located and short."""
    path = tmp_path / "top.cir"
    path.write_text(title + body + ".end\n")
    with pytest.raises(EpsimError) as exc:
        read_netlist(path)
    message = str(exc.value)
    assert re.match(re.escape(str(path)) + r":\d+: ", message), message[:200]
    assert len(message) <= MAX_MESSAGE and "\n" not in message, message[:200]
    return message


@pytest.mark.parametrize("value, words", [
    ("{10**400}", "a power that overflows"),
    ("{2**1e10}", "a power that overflows"),
    ("{(-8)**0.5}", "not a real number"),
    ("{0**-1}", "not a real number"),
    ("{1e308*10-1e308*10}", "not a finite number"),
    ("1e999", "not a finite number"),
    ("'1e999'", "not a finite number"),
    ("{1e999}", "not a finite number"),
    ("nan", "cannot read 'nan'"),
    ("inf", "cannot read 'inf'"),
    ("{1/0}", "division by zero"),
    ("{(1}", "missing ')'"),
    ("{1+}", "missing operand"),
    ("{}", "empty expression"),
    ("{2k}", "unexpected 'k'"),
])
def test_bad_values_are_located_errors(tmp_path, value, words):
    assert words in read_error(tmp_path, f"R1 a 0 {value}\n")


def test_deep_nesting_is_a_located_error(tmp_path):
    for value in ["{" + "-" * 1000 + "1}", "{" + "(" * 100_000 + "1" + ")" * 100_000 + "}",
                  "{" + "2**" * 5000 + "1}"]:
        assert "nesting deeper than" in read_error(tmp_path, f"R1 a 0 {value}\n")


def test_expressions_keep_pythons_precedence():
    assert parse_number("{-2**2}") == -4.0 and parse_number("{2**3**2}") == 512.0
    assert parse_number("{2**-1}") == 0.5 and parse_number("{(1+2)*3 - 4/2}") == 7.0
    assert parse_number("{ - - a}", {"a": 3.0}) == 3.0


def test_long_text_is_quoted_short(tmp_path):
    message = read_error(tmp_path, "R1 a 0 " + "x" * 5_000_000 + "\n")
    assert "5000000 characters" in message
    assert len(read_error(tmp_path, "R1 a 0 1k " + "1 " * 1_000_000 + "\n")) <= MAX_MESSAGE
    assert len(read_error(tmp_path, "Q" + "x" * 1_000_000 + " a 0\n")) <= MAX_MESSAGE
    assert "100001 characters" in read_error(tmp_path, "R1 a 0 " + "1" * 100_000 + "#\n")


def test_320000_continuation_lines_are_read(tmp_path):
    """320,000 '+' lines (2.2 MB) join their card; that this takes linear time is timed by
    benchmarks/bench_reader.py (BENCHMARKS.md), not here."""
    path = tmp_path / "long.cir"
    path.write_text("title\nV1 a 0 1\nR1 a 0 1k\n.print dc\n" + "+ v(a)\n" * 320_000 + ".end\n")
    netlist = read_netlist(path)
    assert netlist.num_elements() == 2 and list(netlist.resistors.value) == [1000.0]


def test_control_without_endc_is_a_located_error(tmp_path):
    message = read_error(tmp_path, "R1 a 0 1\n.control\nrun\nR2 a 0 2\n")
    assert "top.cir:4: .control without .endc" in message


def test_temperature_below_absolute_zero_is_a_located_error(tmp_path):
    for body in (".options temp=-300 tnom=-300\n", ".temp -300\n", ".options device temp=-400\n",
                 ".options temp={-273.15-1}\n"):
        assert "top.cir:3: " in read_error(tmp_path, body + "R1 a 0 1\n") and "absolute zero" in \
            read_error(tmp_path, body + "R1 a 0 1\n")


def test_include_loop_and_undecodable_bytes_are_located(tmp_path):
    assert "top.cir:3: .include top.cir includes a file" in read_error(tmp_path, ".include top.cir\n")
    path = tmp_path / "top.cir"
    path.write_bytes(b"title\nR1 a 0 1\nR2 a 0 \xff\n.end\n")
    with pytest.raises(EpsimError, match=re.escape(str(path)) + ":3: byte 0xff is not UTF-8"):
        read_netlist(path)


# ---- fuzzing -------------------------------------------------------------------------------
NASTY_VALUES = [
    "{10**400}", "{(-8)**0.5}", "{" + "-" * 1000 + "1}", "{" + "(" * 500 + "1" + ")" * 500 + "}",
    "1e999", "nan", "inf", "-inf", "{1/0}", "{0**-1}", "{2**1e10}", "{a}", "{1+}", "{}", "''", "'",
    "{", "}", "=", "1k", "0", "-0", "1meg", "1e-400", "x" * 5000, "{1e308*10}", "{1e308*10-1e308*10}",
    "dc", "DC 1", "sin(0 1 1k)", "poly(1)", "value={1}", "1_000", "0x10", "1..2", ".", "+",
    "{2**3**4**5}", "{(1}", "{1)}", "temp=-300", "{" + "1+" * 3000 + "1}", "1" * 3000 + "#",
    "{nan}", "{inf}", "'1e999'",
]
NASTY_LINES = [
    ".control", ".endc", ".end", ".options temp=-300", ".options temp=-300 tnom=-300", ".temp -500",
    ".temp 1e999", ".include nowhere.lib", ".include {self}", ".param x=1e999", ".param y={10**400}",
    ".param", ".model dclamp D(IS=-1 N=1)", ".model dclamp D(IS=1e-12 N=1 RS=3)", ".model q NPN",
    ".model d2 D(IS=nan)", ".subckt a b", "+ 1", "x1 a b c", "c1 a 0 1p", "f1 a 0 vnope 2",
    "f1 a 0 r1_0 2", "e1 a 0 b 0 {1e999}", "d1 a 0 nomodel", "v1", "r1 a", "rzero a 0 0",
    "i1 0 a 1e999", "\u00e4", "\x00", ".lib x y", ".param a=1 b={a*2}", ".options device temp=-400",
    "+" + " +" * 2000, ".model", ".model d3 D(IS=1e-12 N=0)", ".options temp={-300}",
    ".options temp=27 tnom=28", "e2 a 0 b 0 poly(1) 1 2", "f2 a 0 vin_c0_y0_x0 {1/0}",
]
CHARS = list("{}()+-*/=;$'\".eE0123456789 \tabcxyz\u00b5\x00\r\n") + ["**", "\u2028"]


def mutate(text: str, rng: random.Random, self_name: str) -> str:
    """One to three random edits of ``text``: lines deleted, copied, swapped, truncated; tokens
    replaced by hostile values; hostile lines, characters and continuations inserted."""
    lines = text.split("\n")
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op, i = rng.randrange(10), rng.randrange(len(lines))
        if op == 0 and len(lines) > 1:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            tokens = lines[i].split(" ")
            tokens[rng.randrange(len(tokens))] = rng.choice(NASTY_VALUES)
            lines[i] = " ".join(tokens)
        elif op == 4:
            lines.insert(i, rng.choice(NASTY_LINES).replace("{self}", self_name))
        elif op == 5:
            joined = "\n".join(lines)
            lines = joined[:rng.randrange(len(joined) + 1)].split("\n")
        elif op == 6:
            k = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:k] + rng.choice(CHARS) * rng.choice([1, 1, 2, 50]) + lines[i][k:]
        elif op == 7:
            k = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:k] + lines[i][k + rng.randrange(1, 20):]
        elif op == 8:
            lines[i] = rng.choice("rdvifecxq.+*;") + lines[i][1:]
        else:
            lines.insert(i, "+ " + rng.choice(NASTY_VALUES))
    return "\n".join(lines)


def test_fuzzed_netlists_give_only_located_errors(tmp_path):
    """600 seeded mutations of the reference circuit's exported netlists (ngspice and Xyce
    dialects, -beta phase): each reads, or fails with an EpsimError naming
    file:line in one short line; no other exception escapes."""
    ds = load_dataset("digits")
    written = export_samples(reference_network(), ds.x_test[:1], ds.y_test[:1], tmp_path / "export",
                             beta=REFERENCE_BETA, phases=("minus",), dialects=("ngspice", "xyce"))
    bases = [p.read_text() for p in written if p.name.endswith(".cir")]
    path = tmp_path / "export" / "case.cir"
    location = re.compile(re.escape(str(path)) + r":\d+: ")
    read, failed = 0, []
    for seed in range(600):
        rng = random.Random(seed)
        path.write_text(mutate(rng.choice(bases), rng, path.name), encoding="utf-8", errors="surrogatepass")
        try:
            read_netlist(path)
            read += 1
        except EpsimError as exc:
            message = str(exc)
            if not location.match(message) or len(message) > MAX_MESSAGE or "\n" in message:
                failed.append((seed, message[:200]))
    assert not failed, failed[:5]
    assert 50 < read < 550  # the mutations hit both outcomes
