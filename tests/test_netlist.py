"""Circuit IR, network compiler, SPICE writer and reader (round trip, syntax, errors), and
the staleness of the committed reference netlists."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from epsim.circuit.compile import compile_network, layer_node_names, with_diode
from epsim.circuit.diodes import DiodeModel
from epsim.circuit.netlist import DiodeCard, Netlist
from epsim.circuit.reference import reference_network
from epsim.circuit.spice_dialects import epsim_temperature_K, simulator_temperature_C
from epsim.circuit.spice_reader import parse_number, read_library, read_netlist
from epsim.circuit.spice_writer import format_netlist, library_dir, write_netlist
from epsim.errors import EpsimError
from epsim.models.resistive import build_cnn

REPO = Path(__file__).resolve().parents[1]


def small_cnn():
    net = build_cnn((1, 5, 5), convs=((4, 3, 1),), num_classes=3, input_gain_V=2.0,
                    diode=DiodeModel("shockley"))
    rng = np.random.default_rng(0)
    net.init_params(rng)
    net.w[0].reshape(-1)[:3] = 0.0  # zero conductances are open circuits
    net.b = [rng.uniform(-0.2, 0.2, size=b.shape) for b in net.b]
    net.b[1][1] = 0.0
    return net


def test_compile_structure_and_names():
    net = small_cnn()
    x = np.random.default_rng(1).uniform(size=(1, 1, 5, 5))
    nl = compile_network(net, net.input_voltages(x)[0], beta=-0.5, target_V=[1.0, 0.0, 0.0])
    t, i, j = net.connections[0].pairs()
    zeros = int(np.sum(net.w[0].reshape(-1)[t] == 0))
    n_conv = t.size - zeros
    n_dense = net.connections[1].pairs()[0].size
    r = nl.resistors
    assert len(r) == n_conv + n_dense + 3  # + nudge resistors
    assert len(nl.vsources) == 50 + 3 and len(nl.diodes) == 36  # 2x5x5 inputs, 3 targets; 4x3x3 hidden
    assert len(nl.isources) == 36 + 2  # biases, one output bias is 0 and left out
    names = layer_node_names(net)
    assert names[0][0] == "in_c0_y0_x0" and names[0][-1] == "in_c1_y4_x4"
    assert names[1][0] == "h1_c0_y0_x0" and names[-1] == ["out_0", "out_1", "out_2"]
    # conductance values and their ends follow Connection.pairs()
    g = 1.0 / r.value[:n_conv]
    keep = net.w[0].reshape(-1)[t] != 0
    assert np.allclose(g, net.w[0].reshape(-1)[t][keep] * 1e-6, rtol=1e-15)
    assert [nl.nodes[a] for a in r.a[:2]] == [names[0][k] for k in i[keep][:2]]
    # -beta nudge: negative resistors of 1/(beta g_unit)
    assert np.allclose(r.value[-3:], -1.0 / (0.5e-6))
    # excitatory units (channels 0, 1): anode on ground; inhibitory: cathode on ground
    d = nl.diodes
    exc = d.names.index("dlo_h1_c0_y0_x0")
    inh = d.names.index("dhi_h1_c3_y2_x2")
    assert nl.nodes[d.a[exc]] == "0" and nl.nodes[d.b[exc]] == "h1_c0_y0_x0"
    assert nl.nodes[d.a[inh]] == "h1_c3_y2_x2" and nl.nodes[d.b[inh]] == "0"
    # bias sources inject into the node: current flows 0 -> node through the source
    ib = nl.isources
    k = ib.names.index("ib_h1_c2_y0_x0")
    assert nl.nodes[ib.b[k]] == "h1_c2_y0_x0" and ib.value[k] == pytest.approx(net.b[0][2] * 1e-6)
    nl.check()


def test_write_read_roundtrip_is_exact(tmp_path):
    net = small_cnn()
    x = np.random.default_rng(2).uniform(size=(1, 1, 5, 5))
    nl = compile_network(net, net.input_voltages(x)[0], beta=0.5, target_V=[0.0, 1.0, 0.0])
    back = read_netlist(write_netlist(nl, tmp_path / "sub" / "c.cir"))
    assert sorted(back.nodes) == sorted(nl.nodes)
    assert back.temp_K == pytest.approx(nl.temp_K, rel=1e-13)
    for kind in "RDVI":
        a, b = nl.elements(kind), back.elements(kind)
        assert a.names == b.names
        for src, got in ((nl, a), (back, b)):
            got.ends = [(src.nodes[i], src.nodes[j]) for i, j in zip(got.a, got.b)]
        assert a.ends == b.ends
        assert np.array_equal(a.value, b.value)  # repr() floats read back bit for bit
    assert back.models == [DiodeCard("dclamp", 1e-12, 1.0)]


def test_writer_inlines_library_models_by_default_and_includes_them_on_request(tmp_path):
    net = small_cnn()
    v = np.zeros(net.layer_sizes[0])
    text = format_netlist(compile_network(net, v), netlist_dir=tmp_path / "a" / "b")
    assert ".include" not in text
    assert "* model dclamp of the component library, circuits/clamp_diode.lib\n" \
           ".model dclamp D(IS=1e-12 N=1.0)\n" in text
    text = format_netlist(compile_network(net, v), netlist_dir=tmp_path / "a" / "b", standalone=False)
    include = [ln for ln in text.splitlines() if ln.startswith(".include")]
    assert len(include) == 1 and not Path(include[0].split()[1]).is_absolute()
    assert (tmp_path / "a" / "b" / include[0].split()[1]).resolve() == library_dir() / "clamp_diode.lib"
    odd = with_diode(net, "shockley")
    odd.diode = DiodeModel("shockley", is_A=2e-14, n=1.5)
    text = format_netlist(compile_network(odd, v))
    assert ".model dclamp D(IS=2e-14 N=1.5)" in text and ".include" not in text
    assert ".op" in text.splitlines() and text.rstrip().endswith(".end")
    assert "np.float64" not in text
    xyce = format_netlist(compile_network(net, v), "xyce")
    assert ".PRINT DC" in xyce and ".control" not in xyce.lower() and ".DC vin_c0_y0_x0" in xyce


def test_library_models_match_the_solver_diodes():
    cards = {c.name: c for p in sorted(library_dir().glob("*.lib")) for c in read_library(p)}
    d = DiodeModel("shockley")
    assert (cards["dclamp"].is_A, cards["dclamp"].n) == (d.is_A, d.n)
    assert cards["dideal"].n < 0.01


def test_temperature_gives_the_same_thermal_voltage():
    for dialect, (k, q) in {"ngspice": (1.38064852e-23, 1.6021766208e-19),
                            "xyce": (1.3806226e-23, 1.6021918e-19)}.items():
        t_c = simulator_temperature_C(300.15, dialect)
        assert k * (t_c + 273.15) / q == pytest.approx(DiodeModel().vt_V, rel=1e-12)
        assert epsim_temperature_K(t_c, dialect) == pytest.approx(300.15, rel=1e-13)


@pytest.mark.parametrize("text, value", [
    ("1k", 1e3), ("2.5meg", 2.5e6), ("3m", 3e-3), ("4u", 4e-6), ("5n", 5e-9), ("6p", 6e-12),
    ("7f", 7e-15), ("1mil", 25.4e-6), ("10kOhm", 1e4), ("-2.5e-3", -2.5e-3), ("1e3V", 1e3),
    (".5", 0.5), ("1G", 1e9), ("2T", 2e12), ("{2*a+1}", 7.0), ("a", 3.0), ("'a/2'", 1.5),
])
def test_parse_number(text, value):
    assert parse_number(text, {"a": 3.0}) == pytest.approx(value, rel=1e-15)


def test_reader_subset(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "d.lib").write_text("* a library\n.MODEL DX D (IS=1e-14\n+ N=1.5)\n")
    path = tmp_path / "top.cir"
    path.write_text(
        "my title line\n"
        "* comment\n"
        ".include lib/d.lib\n"
        ".param rval=2k half={rval/2}\n"
        ".options temp=27 tnom=27 reltol=1e-6\n"
        "V1 IN 0 DC 5 ; inline comment\n"
        "R1 in mid {rval}\n"
        "R2 mid 0\n"
        "+ {half}\n"
        "Rneg mid 0 -10meg $ negative resistor\n"
        "I1 0 mid 1u\n"
        "D1 mid 0 dx\n"
        ".op\n"
        ".control\nrun\nprint all\n.endc\n"
        ".end\n"
        "R9 ignored after end 1\n")
    nl = read_netlist(path)
    assert nl.title == "my title line"
    assert nl.nodes == ["0", "in", "mid"]
    assert nl.resistors.names == ["r1", "r2", "rneg"]
    assert list(nl.resistors.value) == [2e3, 1e3, -1e7]
    assert nl.vsources.value[0] == 5.0 and nl.isources.value[0] == 1e-6
    assert nl.models == [DiodeCard("dx", 1e-14, 1.5)]
    assert nl.temp_K == pytest.approx(epsim_temperature_K(27.0, "ngspice"))


@pytest.mark.parametrize("body, message", [
    ("C1 a 0 1u\n", r"top.cir:3: unsupported element C1 \(capacitor\)"),
    ("X1 a 0 sub\n", r"top.cir:3: unsupported element X1 \(subcircuit instance\)"),
    ("R1 a 0 zzz\n", r"top.cir:3: cannot read 'zzz' as a number"),
    ("R1 a\n", r"top.cir:3: resistor R1: expected"),
    ("R1 a 0 1k tc1=2\n", r"top.cir:3: resistor R1: expected one value"),
    ("V1 a 0 SIN(0 1 1k)\n", r"top.cir:3: .*only DC values"),
    ("D1 a 0 nomodel\n", r"top.cir:3: diode D1: no .model named nomodel"),
    (".model q1 NPN(BF=100)\n", r"top.cir:3: unsupported model type NPN"),
    (".model dd D(IS=1e-12 RS=10)\n", r"top.cir:3: .*unsupported parameter RS"),
    (".subckt cell a b\n", r"top.cir:3: unsupported control card .subckt"),
    (".include nowhere.lib\n", r"top.cir:3: included file nowhere.lib not found"),
    ("+ 1k\n", r"top.cir:3: continuation line"),
    ("R1 a 0 {b*2}\n", r"top.cir:3: unknown parameter 'b'"),
    ("R1 a 0 1k\nR1 a 0 2k\n", r"top.cir:4: element R1 already defined at line 3"),
    (".options temp=50 tnom=27\nR1 a 0 1\n", r"top.cir:3: TEMP=50.0 differs from TNOM"),
])
def test_reader_errors_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "top.cir"
    path.write_text("title\n* comment\n" + body + ".end\n")
    with pytest.raises(EpsimError, match=message):
        read_netlist(path)


def test_ir_rejects_bad_values():
    nl = Netlist()
    with pytest.raises(EpsimError, match="0 ohm"):
        nl.add("R", ["r1"], ["a"], ["0"], [0.0])
    with pytest.raises(EpsimError, match="NaN"):
        nl.add("V", ["v1"], ["a"], ["0"], [np.nan])
    with pytest.raises(EpsimError, match="no diode model"):
        nl.add("D", ["d1"], ["a"], ["0"], None, model="nope")
    nl.add("R", ["r1", "R1"], ["a", "b"], ["0", "0"], [1.0, 2.0])
    with pytest.raises(EpsimError, match="used twice"):
        nl.check()


def _normalise(text):
    return re.sub(r"^\.include .*/", ".include ", text, flags=re.M)


def test_reference_netlists_are_up_to_date(tmp_path):
    """netlists/ must equal a fresh export (command in netlists/README.md)."""
    from epsim.export import main

    main(["--reference", "--out", str(tmp_path), "--test-subset", "1", "--phase", "all", "--dialect", "all"])
    committed = REPO / "netlists"
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in committed.iterdir() if p.name != "README.md"), \
        "netlists/ is stale: rerun the command in netlists/README.md"
    for name in fresh:
        new, old = (tmp_path / name).read_text(), (committed / name).read_text()
        if name.endswith(".json"):
            new, old = json.loads(new), json.loads(old)
            v_new, v_old = new.pop("node_voltages_V"), old.pop("node_voltages_V")
            new["certificate"].pop("residual_A"), old["certificate"].pop("residual_A")
            new["certificate"].pop("iterations"), old["certificate"].pop("iterations")
            assert new == old, f"netlists/{name} is stale"
            assert v_new.keys() == v_old.keys()
            assert max(abs(v_new[k] - v_old[k]) for k in v_new) < 1e-9, f"netlists/{name} is stale"
        else:
            assert _normalise(new) == _normalise(old), \
                f"netlists/{name} is stale: rerun the command in netlists/README.md"
    assert sum(p.stat().st_size for p in committed.iterdir()) < 400_000


def test_reference_network_is_deterministic():
    a, b = reference_network(), reference_network()
    assert all(np.array_equal(x, y) for x, y in zip(a.w + a.b, b.w + b.b))
