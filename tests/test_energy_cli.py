"""python -m epsim.energy: the table of settling time, energy and power, and its input checks."""
import json

import numpy as np
import pytest

from epsim.data import load_dataset
from epsim.energy import main
from epsim.errors import EpsimError
from epsim.training import TrainConfig, train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(epochs=1), load_dataset("digits", train_subset=200, test_subset=40), out,
          progress=False, log=lambda *_: None)
    return out / "checkpoint.pt"


def test_energy_table(checkpoint, tmp_path):
    main(["--checkpoint", str(checkpoint), "--out", str(tmp_path), "--test-subset", "12", "--no-progress",
          "--t-stop", "4e-7"])
    result = json.loads((tmp_path / "energy.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    s = result["summary"]
    assert s["n"] == 12 and s["unsettled"] == 0
    assert 0 < s["settle_time_s"]["median"] <= s["settle_time_s"]["p95"] < 4e-7
    assert s["decision_time_s"]["median"] <= s["settle_time_s"]["median"]
    assert s["energy_per_inference_J"]["median"] > 0 and s["static_power_W"]["median"] > 0
    assert s["macs_per_inference"] == 6 * 6 * 16 * 2 * 9 + 576 * 10
    step = s["training_step"]
    assert step["energy_J_per_image"]["median"] >= step["phases_energy_J_per_image"]["median"] > \
        s["energy_per_inference_J"]["median"]
    assert len(s["early_readout"]) == 5 and all(0 <= r["accuracy"] <= 1 for r in s["early_readout"])
    assert (tmp_path / "energy.csv").read_text().count("\n") == 2
    traces = np.load(tmp_path / "traces.npz")
    assert traces["v_out"].shape == (len(traces["t_s"]), 4, 10) and traces["layer1"].shape[2] == 3
    assert traces["t_s"][0] == 0 and np.all(np.diff(traces["t_s"]) > 0)


@pytest.mark.parametrize("args,message", [
    (["--t-stop", "-1"], "--t-stop"), (["--lte-tol", "0"], "--lte-tol"),
    (["--readout-times", "-0.5"], "--readout-times"), (["--test-subset", "0"], "--test-subset"),
    (["--cell-capacitance", "0", "--node-capacitance", "0"], "both be 0"),
    (["--attack-norm", "linf"], "--attack-norm applies to the early-readout attack only"),
    (["--attack-subset", "3", "--attack-steps", "2"], "--attack-steps, --attack-subset apply to")])
def test_bad_options_fail_before_any_work(checkpoint, tmp_path, args, message):
    with pytest.raises(EpsimError, match=message):
        main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), *args])
    assert not (tmp_path / "o").exists()


def test_unreadable_readout_times_are_a_usage_error(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), "--readout-times", "a,b"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "--readout-times" in err[0]
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_refused(checkpoint, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(EpsimError, match="not a folder"):
        main(["--checkpoint", str(checkpoint), "--out", str(f)])


def test_early_readout_adapter_reads_the_transient(checkpoint):
    from epsim.robustness.adapters import CircuitAdapter
    from epsim.robustness.readout import EarlyReadoutAdapter
    from epsim.models.loading import load_network

    net, _ = load_network(checkpoint)
    base = CircuitAdapter(net, tol_A=1e-12, max_iter=100000)
    x = load_dataset("digits", test_subset=6).x_test
    settled = base.predict(x).scores
    late = EarlyReadoutAdapter(base, 5e-7, tol_A=1e-12, lte_tol_V=1e-6).predict(x).scores
    early = EarlyReadoutAdapter(base, 1e-10, tol_A=1e-12).predict(x).scores
    assert np.abs(late - settled).max() < 1e-5
    assert np.abs(early - settled).max() > 1e-2  # read long before settling (~30 ns)
    with pytest.raises(EpsimError, match="readout time"):
        EarlyReadoutAdapter(base, 0.0)


def test_energy_attack_rows(checkpoint, tmp_path):
    main(["--checkpoint", str(checkpoint), "--out", str(tmp_path), "--test-subset", "8", "--no-progress",
          "--no-training-step", "--t-stop", "2e-7", "--readout-times", "1e-9,1e-7", "--attack-eps", "0.5",
          "--attack-subset", "6", "--attack-steps", "3"])
    rows = json.loads((tmp_path / "energy.json").read_text())["summary"]["early_readout_attack"]
    assert [r["time_s"] for r in rows] == [None, 1e-9, 1e-7]
    assert all(0 <= r["robust_accuracy"] <= r["clean_accuracy"] <= 1 for r in rows)


def test_interrupted_run_resumes_to_the_uninterrupted_results(checkpoint, tmp_path, monkeypatch):
    """Killed during the early-readout attack, a run continues with --resume: the transients
    are read back (not simulated again), the finished attack runs are reused, and the results
    equal an uninterrupted run's; without --resume the record is refused."""
    import epsim.energy as energy
    from interrupt import Interrupted, stop_sweeps_after

    args = ["--checkpoint", str(checkpoint), "--test-subset", "8", "--no-progress", "--t-stop", "2e-7",
            "--readout-times", "1e-9,1e-7", "--attack-eps", "0.5", "--attack-subset", "6", "--attack-steps", "3"]
    main([*args, "--out", str(tmp_path / "whole")])
    whole = json.loads((tmp_path / "whole" / "energy.json").read_text())
    assert not (tmp_path / "whole" / "energy-progress.npz").exists()

    part = tmp_path / "part"
    stop_sweeps_after(monkeypatch, 3)
    with pytest.raises(Interrupted):
        main([*args, "--out", str(part)])
    monkeypatch.undo()
    assert (part / "energy-progress.npz").exists() and not (part / "energy.json").exists()
    with pytest.raises(EpsimError, match="--resume"):
        main([*args, "--out", str(part)])
    monkeypatch.setattr(energy, "_transients", lambda *a: pytest.fail("transients simulated again"))
    main([*args, "--out", str(part), "--resume"])
    resumed = json.loads((part / "energy.json").read_text())
    assert resumed["summary"] == whole["summary"]
    assert resumed["per_image"] == whole["per_image"]
    assert not (part / "energy-progress.npz").exists() and not (part / "readout-progress").exists()


def test_run_killed_during_the_transients_resumes_from_its_finished_batches(checkpoint, tmp_path, monkeypatch):
    """Each transient batch is recorded as it finishes: a run killed in its second batch
    simulates only that batch again on --resume, and ends with the uninterrupted run's results."""
    import epsim.energy as energy

    args = ["--checkpoint", str(checkpoint), "--test-subset", "8", "--batch-size", "4", "--no-progress",
            "--t-stop", "2e-7", "--readout-times", "1e-9,1e-7"]
    main([*args, "--out", str(tmp_path / "whole")])
    whole = json.loads((tmp_path / "whole" / "energy.json").read_text())

    real_phase, calls = energy._phase, []

    def phase(*a, **k):
        calls.append(1)
        if len(calls) == 4:          # the free phase of the second batch (3 phases per batch)
            raise KeyboardInterrupt
        return real_phase(*a, **k)

    monkeypatch.setattr(energy, "_phase", phase)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(part)])
    assert (part / "energy-progress.npz").exists() and not (part / "energy.json").exists()
    with pytest.raises(EpsimError, match="--resume"):
        main([*args, "--out", str(part)])
    calls.clear()
    monkeypatch.setattr(energy, "_phase", lambda *a, **k: (calls.append(1), real_phase(*a, **k))[1])
    main([*args, "--out", str(part), "--resume"])
    assert len(calls) == 3           # the second batch's three phases, not the first's again
    resumed = json.loads((part / "energy.json").read_text())
    assert resumed["summary"] == whole["summary"]
    assert resumed["per_image"] == whole["per_image"]
    with np.load(part / "traces.npz") as a, np.load(tmp_path / "whole" / "traces.npz") as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert not (part / "energy-progress.npz").exists()
