"""numba vs ngspice on exported netlists, the ngspice runner and raw reader, and the
``spice`` backend. Tests that run ngspice skip when it is not installed."""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from epsim.circuit.compile import layer_node_names, with_diode
from epsim.circuit.diodes import DiodeModel
from epsim.circuit.reference import REFERENCE_BETA, reference_network
from epsim.data import load_dataset
from epsim.errors import ConvergenceError, EpsimError
from epsim.models.resistive import build_mlp, one_hot_targets
from epsim.solvers import spice_backend
from epsim.solvers.ngspice import INSTALL_HINT as HINT
from epsim.solvers.ngspice import SpiceError, read_raw, run_ngspice
from epsim.solvers.numba_solver import LayeredProblem, solve
from epsim.solvers.spice_backend import SpiceSolver
from epsim.spice.samples import export_samples
from spice_marks import needs_ngspice

REPO = Path(__file__).resolve().parents[1]


def run_all(paths):
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(run_ngspice, paths))


def max_diff(table, op):
    ref = op["node_voltages_V"]
    assert set(ref) <= set(table)
    return max(abs(table[k] - v) for k, v in ref.items())


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    """The default digits circuit CNN trained for 3 epochs (ideal diodes), and its config."""
    from epsim.training import TrainConfig, load_network, train

    out = tmp_path_factory.mktemp("trained")
    train(TrainConfig(epochs=3), load_dataset("digits"), out, progress=False, log=lambda *a: None)
    return load_network(out / "checkpoint.pt")


@needs_ngspice
def test_trained_model_numba_equals_ngspice_all_phases(trained_digits, tmp_path):
    """Acceptance: 20 random test inputs x (free, +beta, -beta), Shockley diodes, every
    node: |V_numba - V_ngspice| <= 1e-6 V, ngspice run here on the exported files."""
    net, state = trained_digits
    net = with_diode(net, "shockley")
    ds = load_dataset("digits")
    idx = np.sort(np.random.default_rng(7).choice(len(ds.y_test), size=20, replace=False))
    beta = float(state["config"]["beta"])
    written = export_samples(net, ds.x_test[idx], ds.y_test[idx], tmp_path, beta=beta,
                             sample_ids=idx)
    netlists = [p for p in written if p.suffix == ".cir"]
    assert len(netlists) == 60
    tables = run_all(netlists)
    worst = 0.0
    names = layer_node_names(net)
    problem = LayeredProblem(net, net.input_voltages(ds.x_test[idx]))
    target = one_hot_targets(ds.y_test[idx], 10)
    for path, table in zip(netlists, tables):
        op = json.loads(path.with_suffix(".op.json").read_text())
        assert op["certificate"]["converged"] and op["certificate"]["residual_A"] <= 1e-15
        worst = max(worst, max_diff(table, op))
        # the ngspice state satisfies our own KCL equations
        k = op["sample"]
        v_free = [np.array([[table[n] for n in names[l]]]) for l in range(1, net.num_layers + 1)]
        one = LayeredProblem(net, problem.v_input[k:k + 1])
        assert one.residual_A(v_free, op["beta"], target[k:k + 1])[0] < 1e-12
    assert worst <= 1e-6, f"max |V_numba - V_ngspice| = {worst:.3g} V"


@needs_ngspice
def test_committed_reference_netlists_run_in_ngspice():
    for path in sorted((REPO / "netlists").glob("*.cir")):
        if path.name.endswith(".xyce.cir"):
            continue
        op = json.loads((path.parent / (path.name[:-4] + ".op.json")).read_text())
        assert max_diff(run_ngspice(path), op) <= 1e-6, path.name


@needs_ngspice
def test_exported_folder_moved_elsewhere_runs_and_reads_back(tmp_path):
    """Exports are standalone: a moved folder still runs in ngspice and reads back."""
    from epsim.circuit.spice_reader import read_netlist
    from epsim.export import main

    main(["--reference", "--out", str(tmp_path / "export"), "--phase", "all", "--dialect", "all"])
    moved = tmp_path / "elsewhere" / "deeper" / "netlists"
    shutil.move(str(tmp_path / "export"), str(moved))
    for path in sorted(moved.glob("*.cir")):
        assert ".include" not in path.read_text(), path.name
        assert read_netlist(path).models[0].name == "dclamp"
        if not path.name.endswith(".xyce.cir"):
            op = json.loads((path.parent / (path.name[:-4] + ".op.json")).read_text())
            assert max_diff(run_ngspice(path), op) <= 1e-6, path.name


@needs_ngspice
def test_ideal_diode_export_is_near_ideal_in_ngspice(tmp_path):
    """SPICE gets the steep library diode for an ideal one: close (below a microvolt), not exact."""
    net = with_diode(reference_network(), "ideal")
    ds = load_dataset("digits")
    written = export_samples(net, ds.x_test[:2], ds.y_test[:2], tmp_path, beta=REFERENCE_BETA,
                             phases=("free", "minus"))
    netlists = [p for p in written if p.suffix == ".cir"]
    text = netlists[0].read_text()
    assert "ideal_diode.lib" in text and "dideal" in text
    for path, table in zip(netlists, run_all(netlists)):
        diff = max_diff(table, json.loads(path.with_suffix(".op.json").read_text()))
        assert 0.0 < diff <= 1e-6


def test_missing_ngspice_gives_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SpiceError, match=HINT):
        run_ngspice(tmp_path / "x.cir")
    with pytest.raises(EpsimError, match=HINT):
        SpiceSolver()
    from epsim.cli import run
    from epsim.train import main

    assert run(main, ["--backend", "spice", "--diode", "shockley", "--model", "mlp",
                      "--train-subset", "8", "--test-subset", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and HINT in err[0]


def test_program_named_by_environment_is_the_one_run(tmp_path, monkeypatch):
    """$EPSIM_NGSPICE picks the program (a stand-in that records its arguments and writes
    no results); naming one that does not exist is a one-line error naming the variable."""
    log = tmp_path / "args.txt"
    fake = tmp_path / "my-ngspice"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {log}\n")
    fake.chmod(0o755)
    netlist = tmp_path / "x.cir"
    netlist.write_text("x\n.op\n.end\n")
    monkeypatch.setenv("EPSIM_NGSPICE", str(fake))
    with pytest.raises(SpiceError, match="wrote no results"):
        run_ngspice(netlist)
    assert log.read_text().split()[0] == "-b" and str(netlist) in log.read_text()
    monkeypatch.setenv("EPSIM_NGSPICE", str(tmp_path / "absent"))
    with pytest.raises(SpiceError, match=r"absent.*EPSIM_NGSPICE"):
        SpiceSolver()

@needs_ngspice
def test_ngspice_convergence_failure_is_reported(tmp_path):
    """1 mA into a reverse-biased diode (no gmin) has no operating point: ngspice fails and
    the runner says so instead of returning numbers."""
    path = tmp_path / "nosolution.cir"
    path.write_text("no solution\n.model dq D(IS=1e-12 N=1)\n.options gmin=0\n"
                    "I1 0 a 1m\nD1 0 a dq\n.op\n.end\n")
    with pytest.raises(ConvergenceError, match="did not converge"):
        run_ngspice(path)


@needs_ngspice
def test_ngspice_netlist_error_is_reported(tmp_path):
    path = tmp_path / "bad.cir"
    path.write_text("bad\nR1 a 0 1k\nV1 a 0 zzz\n.op\n.end\n")
    with pytest.raises(SpiceError, match="ngspice failed"):
        run_ngspice(path)


def test_raw_reader_ascii_and_binary(tmp_path):
    header = ("Title: t\nDate: x\nPlotname: Operating Point\nFlags: real\nNo. Variables: 3\n"
              "No. Points: 1\nVariables:\n\t0\tv(a)\tvoltage\n\t1\tv(b)\tvoltage\n"
              "\t2\ti(v1)\tcurrent\n")
    (tmp_path / "a.raw").write_text(header + "Values:\n 0\t1.5\n\t-2.25e-3\n\t3e-6\n")
    (tmp_path / "b.raw").write_bytes(header.encode() + b"Binary:\n"
                                     + np.array([1.5, -2.25e-3, 3e-6], "<f8").tobytes())
    for name in ("a.raw", "b.raw"):
        raw = read_raw(tmp_path / name)
        assert raw["plotname"] == "Operating Point"
        assert raw["variables"]["v(b)"][0] == -2.25e-3 and raw["variables"]["i(v1)"][0] == 3e-6
    (tmp_path / "c.raw").write_bytes(header.encode() + b"Binary:\n" + b"\0" * 8)
    with pytest.raises(SpiceError, match="truncated"):
        read_raw(tmp_path / "c.raw")


def tiny_mlp(diode="shockley"):
    net = build_mlp((1, 8, 8), hidden=(6,), num_classes=10, input_gain_V=4.0,
                    diode=DiodeModel(diode))
    rng = np.random.default_rng(5)
    net.init_params(rng)
    net.b = [rng.uniform(-0.3, 0.3, size=b.shape) for b in net.b]
    return net


@needs_ngspice
def test_spice_solver_matches_numba():
    net = tiny_mlp()
    ds = load_dataset("digits")
    x, y = ds.x_test[:3], ds.y_test[:3]
    solver = SpiceSolver(tol_A=1e-12, max_elements_per_run=2000)  # 2 netlists per solve
    prepared = solver.prepare(net, net.input_voltages(x))
    target = one_hot_targets(y, 10)
    for beta in (0.0, 0.5, -0.5):
        eq = solver.solve(prepared, beta, target if beta else None)
        ref = solve(LayeredProblem(net, net.input_voltages(x)), beta, target, tol_A=1e-16, max_iter=100000)
        assert eq.certificate.all_converged and eq.certificate.backend == "spice"
        for a, b in zip(eq.v_free, ref.v_free):
            assert np.max(np.abs(a - b)) <= 1e-6
    assert solver.stats.equilibria == 9 and "slower" in solver.summary()


@needs_ngspice
def test_spice_solver_marks_a_failed_sample_unconverged(monkeypatch):
    """A batch ngspice cannot solve is split; the sample that still fails gets an infinite
    residual (never zeros), the others are solved."""
    real = spice_backend.run_ngspice

    def flaky(path, **kw):
        if "vs1_in_c0_y0_x0" in Path(path).read_text():
            raise ConvergenceError("simulated ngspice failure")
        return real(path, **kw)

    monkeypatch.setattr(spice_backend, "run_ngspice", flaky)
    net = tiny_mlp()
    x = load_dataset("digits").x_test[:3]
    solver = SpiceSolver(compare_numba=False)
    eq = solver.solve(solver.prepare(net, net.input_voltages(x)), 0.0)
    assert list(eq.certificate.converged) == [True, False, True]
    assert eq.certificate.residual_A[1] == np.inf and np.isnan(eq.v_free[0][1]).all()
    assert solver.stats.failures == 1


@needs_ngspice
def test_spice_backend_refuses_ideal_diodes():
    with pytest.raises(EpsimError, match="--diode shockley"):
        SpiceSolver().prepare(tiny_mlp("ideal"), np.zeros((1, 128)))


@needs_ngspice
def test_train_with_spice_backend_end_to_end():
    from epsim.training import TrainConfig, train

    lines = []
    config = TrainConfig(backend="spice", model="mlp", diode="shockley", epochs=1, batch_size=4,
                         train_subset=8, test_subset=4)
    ds = load_dataset("digits", train_subset=8, test_subset=4)
    metrics = train(config, ds, progress=False, log=lines.append)
    assert metrics["test_unconverged"] == 0 and metrics["max_residual_A"] < 1e-9
    summary = [ln for ln in lines if ln.startswith("spice backend")]
    assert summary and "ngspice is" in summary[0] and "slower" in summary[0]


def _pyspice_available():
    try:
        from epsim.solvers.pyspice_engine import PySpiceEngine

        PySpiceEngine()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _pyspice_available(), reason="needs PySpice and ngspice's shared library")
def test_pyspice_engine_matches_the_subprocess_engine():
    """The spice backend through the shared ngspice (PySpice) gives the subprocess engine's
    voltages, and both are certified by epsim's own KCL residual."""
    from epsim.circuit.diodes import DiodeModel
    from epsim.models.resistive import build_cnn
    from epsim.solvers.spice_backend import SpiceSolver

    net = build_cnn((1, 6, 6), convs=((4, 3, 1),), num_classes=3, input_gain_V=4.0,
                    diode=DiodeModel(kind="shockley"), amp_gains=None)
    rng = np.random.default_rng(0)
    net.init_params(rng)
    net.b = [rng.normal(0.0, 0.3, b.shape) for b in net.b]
    v_in = net.input_voltages(rng.uniform(0, 1, (3, 1, 6, 6)))
    target = np.eye(3)
    out = []
    for engine in ("subprocess", "pyspice"):
        s = SpiceSolver(engine=engine, compare_numba=False)
        eq = s.solve(s.prepare(net, v_in), 0.4, target)
        assert eq.certificate.all_converged
        out.append(eq.v_free)
    for a, b in zip(*out):
        assert np.abs(a - b).max() <= 1e-12


@needs_ngspice
def test_spice_compare_step_resumes_from_the_netlists_it_has_done(tmp_path, monkeypatch):
    """analysis/steps.py spice-compare keeps each netlist's row as it is done: interrupted
    after the first netlist, a rerun runs ngspice on the second only, and the partial record
    is gone once the results are written."""
    import epsim.solvers.ngspice as ngspice_module
    from epsim.export import main as export_main
    from epsim.training import TrainConfig, train

    from scripts import load_script

    train(TrainConfig(model="mlp", epochs=1, train_subset=100), load_dataset("digits", train_subset=100, seed=0),
          tmp_path / "model", progress=False, log=lambda *a: None)
    ckpt = str(tmp_path / "model" / "checkpoint.pt")
    export_main(["--checkpoint", ckpt, "--out", str(tmp_path / "netlists"), "--test-subset", "2", "--phase", "free",
                 "--diode", "shockley"])
    steps = load_script("analysis/steps.py")
    out = tmp_path / "compare.json"
    argv = ["spice-compare", "--checkpoint", ckpt, "--netlists", str(tmp_path / "netlists"), "--repeat", "1",
            "--timeout", "120", "--out", str(out)]
    real, calls = ngspice_module.run_ngspice, []

    def interrupted_at_the_second(path, **options):
        calls.append(Path(path).name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, **options)

    monkeypatch.setattr(ngspice_module, "run_ngspice", interrupted_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        steps.main(argv)
    partial = tmp_path / "compare.json.partial.json"
    assert list(json.loads(partial.read_text())["rows"]) == calls[:1] and not out.exists()

    again = []
    monkeypatch.setattr(ngspice_module, "run_ngspice",
                        lambda path, **options: again.append(Path(path).name) or real(path, **options))
    steps.main(argv)
    assert again == calls[1:]
    result = json.loads(out.read_text())
    assert [r["netlist"] for r in result["rows"]] == calls and result["max_abs_diff_V"] <= 1e-6
    assert not partial.exists()
