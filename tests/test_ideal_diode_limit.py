"""ngspice on the exported netlists of a *trained ideal-diode* circuit: SPICE has no ideal
diode, so exports use the steep library junction ``dideal`` (``circuits/ideal_diode.lib``).
The ideal diode is that junction's limit ``N -> 0``; these tests check that ngspice's node
voltages approach epsim's ideal-diode solution in proportion to ``N`` (the gap is the
junction's forward drop ``N·Vt·ln(I/IS)``, not a solver disagreement), and that at the
library's ``N`` the gap is below a microvolt on every node, in all three EP phases."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from epsim.data import load_dataset
from spice_marks import needs_ngspice

MODEL_CARD = re.compile(r"\.model dideal D\(IS=(?P<is>[^ )]+) N=(?P<n>[^ )]+)\)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The digits circuit CNN trained for 3 epochs with ideal diodes (as training and the
    attacks use it), 5 test images x (free, +beta, -beta) exported with ideal diodes."""
    from epsim.spice.samples import export_samples
    from epsim.training import TrainConfig, load_network, train

    out = tmp_path_factory.mktemp("trained")
    train(TrainConfig(epochs=3), load_dataset("digits"), out, progress=False, log=lambda *a: None)
    net, state = load_network(out / "checkpoint.pt")
    assert net.diode.kind == "ideal"
    ds = load_dataset("digits")
    written = export_samples(net, ds.x_test[:5], ds.y_test[:5], out / "spice",
                             beta=float(state["config"]["beta"]))
    return [p for p in written if p.suffix == ".cir"]


def gap_V(netlists, n=None) -> float:
    """Largest |V_ngspice − V_numba,ideal| over every node of ``netlists``, with the
    junction's emission coefficient replaced by ``n`` (None: the library's)."""
    from epsim.solvers.ngspice import run_ngspice

    worst = 0.0
    for path in netlists:
        run = path
        if n is not None:
            run = path.with_name(f"{path.stem}_N{n:g}.cir")
            run.write_text(MODEL_CARD.sub(lambda m: f".model dideal D(IS={m['is']} N={n:g})",
                                          path.read_text()))
        table = run_ngspice(run)
        ideal = json.loads(path.with_suffix(".op.json").read_text())["node_voltages_V"]
        worst = max(worst, max(abs(table[k] - v) for k, v in ideal.items()))
    return worst


@needs_ngspice
def test_exports_of_the_trained_ideal_circuit_match_it_below_a_microvolt(exported):
    card = MODEL_CARD.search(exported[0].read_text())
    assert card and float(card["n"]) == 1e-6
    gap = gap_V(exported)
    assert 0.0 < gap <= 1e-6, f"max |V_ngspice - V_ideal| = {gap:.3g} V"


@needs_ngspice
def test_ngspice_converges_to_the_ideal_solution_in_proportion_to_n(exported):
    """Each tenfold steeper junction brings every node ten times closer to the ideal-diode
    solution: the remaining gap is the forward drop, which vanishes in the ideal limit."""
    gaps = np.array([gap_V(exported, n) for n in (1e-3, 1e-4, 1e-5)])
    ratios = gaps[:-1] / gaps[1:]
    assert np.all((ratios > 9.0) & (ratios < 11.0)), f"gaps {gaps} V, ratios {ratios}"
    assert gaps[0] < 1e-3
