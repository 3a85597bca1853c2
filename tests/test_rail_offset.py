"""Clamp rails offset against the Shockley forward drop (``DiodeModel.rail_offset_V``): where
the rails sit, what is refused, checkpoints, numba against torch and ngspice, and the
point of it (the soft clamp moves back toward the ideal diode's 0 V)."""

import numpy as np
import pytest

from epsim.circuit.compile import with_diode
from epsim.circuit.diodes import DiodeModel
from epsim.errors import EpsimError
from epsim.models.resistive import ResistiveNetwork, build_cnn, one_hot_targets
from epsim.solvers.factory import SolverConfig, make_solver
from epsim.solvers.numba_solver import NumbaSolver
from spice_marks import needs_ngspice

SOLVER = NumbaSolver(tol_A=1e-13, max_iter=200000)
OFFSET_V = 0.3


def amplified_cnn(diode: DiodeModel, seed=0) -> ResistiveNetwork:
    """Conv + dense + output with amplifiers, signals of a few volts in the hidden layers."""
    net = build_cnn((1, 6, 6), convs=((4, 3, 1),), hidden=(8,), num_classes=4, input_gain_V=4.0,
                    amp_gains=(2.0, 0.5), diode=diode)
    rng = np.random.default_rng(seed)
    net.init_params(rng, 1.0)
    net.b = [rng.normal(0.0, 0.3, b.shape) * p for b, p in zip(net.b, net.layer_scale)]
    return net


def images(n=4, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, 6, 6))


def free(net, x, solver=SOLVER):
    return solver.solve(solver.prepare(net, net.input_voltages(x)), 0.0)


def test_rails_sit_at_plus_and_minus_the_offset():
    net = amplified_cnn(DiodeModel("shockley", rail_offset_V=OFFSET_V))
    for l in range(net.num_layers - 1):
        lo, hi = net.rail_lo_V[l], net.rail_hi_V[l]
        assert set(lo[np.isfinite(lo)]) == {OFFSET_V} and set(hi[np.isfinite(hi)]) == {-OFFSET_V}
        assert np.isfinite(lo).sum() + np.isfinite(hi).sum() == lo.size
    assert not np.isfinite(net.rail_lo_V[-1]).any() and not np.isfinite(net.rail_hi_V[-1]).any()


@pytest.mark.parametrize("kind, offset", [("shockley", -0.1), ("shockley", float("nan")), ("ideal", 0.3)])
def test_bad_offsets_are_refused(kind, offset):
    with pytest.raises(EpsimError) as exc:
        DiodeModel(kind, rail_offset_V=offset)
    assert "\n" not in str(exc.value)


def test_the_offset_survives_a_description_and_ideal_diodes_drop_it():
    net = amplified_cnn(DiodeModel("shockley", rail_offset_V=OFFSET_V))
    again = ResistiveNetwork.from_description(net.describe())
    assert again.diode.rail_offset_V == OFFSET_V
    np.testing.assert_array_equal(np.concatenate(again.rail_lo_V), np.concatenate(net.rail_lo_V))
    ideal = with_diode(net, "ideal")
    assert ideal.diode.rail_offset_V == 0.0 and set(ideal.rail_lo_V[0][np.isfinite(ideal.rail_lo_V[0])]) == {0.0}
    assert "rail_offset_V" not in ideal.describe()["diode"]   # descriptions as before the field
    assert DiodeModel.from_dict(ideal.describe()["diode"]).rail_offset_V == 0.0


def test_the_offset_moves_the_soft_clamp_toward_the_ideal_one():
    """With the rails at 0 V a Shockley clamp holds its node about one forward drop beyond 0 V;
    offset rails bring the clamped nodes (and so every node) closer to the ideal circuit."""
    base = amplified_cnn(DiodeModel("ideal"))
    x = images(6)
    ideal = free(base, x)
    gaps = {}
    for offset in (0.0, OFFSET_V):
        soft = free(with_diode(base, "shockley", rail_offset_V=offset), x)
        gaps[offset] = max(float(np.abs(a - b).max()) for a, b in zip(soft.v_free, ideal.v_free))
    assert gaps[OFFSET_V] < 0.5 * gaps[0.0]


def test_torch_solver_matches_numba_with_offset_rails():
    net = amplified_cnn(DiodeModel("shockley", rail_offset_V=OFFSET_V))
    x = images()
    ref = free(net, x)
    solver = make_solver(SolverConfig(backend="torch", tol_A=1e-13, max_iter=200000))
    eq = free(net, x, solver)
    for a, b in zip(eq.v_free, ref.v_free):
        assert np.max(np.abs(a - b)) < 1e-9


@needs_ngspice
def test_exported_offset_circuit_matches_ngspice():
    from epsim.solvers.spice_backend import SpiceSolver

    net = amplified_cnn(DiodeModel("shockley", rail_offset_V=OFFSET_V))
    x, y = images(3), np.array([0, 1, 3])
    spice = SpiceSolver(tol_A=1e-12)
    prepared = spice.prepare(net, net.input_voltages(x))
    target = one_hot_targets(y, 4)
    for beta in (0.0, 0.5, -0.5):
        eq = spice.solve(prepared, beta, target if beta else None)
        ref = SOLVER.solve(SOLVER.prepare(net, net.input_voltages(x)), beta, target if beta else None)
        assert eq.certificate.converged.all()
        for a, b in zip(eq.v_free, ref.v_free):
            assert np.max(np.abs(a - b)) <= 1e-6


def test_export_read_mna_matches_numba_with_offset_rails(tmp_path):
    """The exported rails (two bias sources) read back into the general MNA solver: 1e-9 V."""
    from epsim.circuit.compile import compile_network, layer_node_names
    from epsim.circuit.spice_reader import read_netlist
    from epsim.circuit.spice_writer import write_netlist
    from epsim.solvers.mna import solve_mna

    net = amplified_cnn(DiodeModel("shockley", rail_offset_V=OFFSET_V))
    x = images(2)
    tight = NumbaSolver(tol_A=1e-16, max_iter=200000)
    ref = tight.solve(tight.prepare(net, net.input_voltages(x)), 0.0)
    names = layer_node_names(net)
    for b in range(len(x)):
        nl = read_netlist(write_netlist(compile_network(net, net.input_voltages(x)[b]), tmp_path / f"s{b}.cir"))
        table = solve_mna(nl, tol_A=1e-15).table(nl)
        for l in range(1, net.num_layers + 1):
            got = np.array([table[n] for n in names[l]])
            assert np.max(np.abs(got - ref.v_free[l - 1][b])) <= 1e-9


@needs_ngspice
def test_export_command_writes_offset_rails_that_ngspice_agrees_with(tmp_path):
    import json

    from epsim.export import main
    from epsim.solvers.ngspice import run_ngspice

    main(["--reference", "--diode", "shockley", "--rail-offset", "0.25", "--out", str(tmp_path),
          "--phase", "all"])
    netlists = sorted(tmp_path.glob("*.cir"))
    assert len(netlists) == 3
    for path in netlists:
        assert "0.25" in path.read_text() and "-0.25" in path.read_text()
        ref = json.loads(path.with_suffix(".op.json").read_text())["node_voltages_V"]
        table = run_ngspice(path)
        assert set(ref) <= set(table)
        assert max(abs(table[k] - v) for k, v in ref.items()) <= 1e-6


def test_export_refuses_an_offset_for_ideal_diodes(tmp_path):
    from epsim.export import main

    with pytest.raises(EpsimError, match="--diode shockley"):
        main(["--reference", "--diode", "ideal", "--rail-offset", "0.25", "--out", str(tmp_path)])



def test_training_refuses_an_offset_without_shockley_diodes_before_loading_data(monkeypatch):
    import epsim.train as train_cli

    monkeypatch.setattr(train_cli, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    for argv, match in ((["--rail-offset", "0.3"], "--diode shockley"),
                        (["--diode", "shockley", "--rail-offset", "-1"], "voltage >= 0")):
        with pytest.raises(EpsimError, match=match) as exc:
            train_cli.main([*argv, "--no-progress"])
        assert "\n" not in str(exc.value)


def test_a_shockley_circuit_trained_on_offset_rails_records_them(tmp_path):
    from epsim.models.loading import load_network
    from epsim.train import main

    main(["--model", "mlp", "--epochs", "1", "--train-subset", "32", "--test-subset", "16", "--diode", "shockley",
          "--rail-offset", "0.3", "--out", str(tmp_path), "--no-progress"])
    net, state = load_network(tmp_path / "checkpoint.pt")
    assert net.diode.kind == "shockley" and net.diode.rail_offset_V == 0.3
    assert state["config"]["rail_offset_V"] == 0.3


def test_energy_refuses_an_offset_on_ideal_diodes(tmp_path):
    from epsim.energy import main
    from epsim.train import main as train

    train(["--model", "mlp", "--epochs", "1", "--train-subset", "32", "--test-subset", "16", "--out",
           str(tmp_path / "run"), "--no-progress"])
    with pytest.raises(EpsimError, match="--diode shockley"):
        main(["--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--rail-offset", "0.3",
              "--out", str(tmp_path / "energy")])
