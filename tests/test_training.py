"""Training loop: determinism, kill-and-resume, atomic checkpoints, user errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from epsim import checkpoint as ckpt_mod
from epsim.checkpoint import load_checkpoint, save_checkpoint
from epsim.data import load_dataset
from epsim.errors import EpsimError
from epsim.learning.ep import centered_ep
from epsim.models.registry import build_circuit_model
from epsim.solvers import get_solver
from epsim.training import CHECKPOINT_NAME, TrainConfig, load_network, train

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(train_subset=120, test_subset=60, epochs=2, batch_size=8)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_subset=SMALL["train_subset"], test_subset=SMALL["test_subset"])


def config(**kw):
    return TrainConfig(**{**SMALL, **kw})


def params_of(out_dir):
    net, state = load_network(out_dir / CHECKPOINT_NAME)
    return net, state


def test_training_learns_and_writes_metrics(tmp_path, digits):
    metrics = train(config(epochs=3), digits, tmp_path, progress=False, log=lambda *_: None)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test_accuracy", "train_accuracy", "wall_seconds", "backend", "dataset", "model",
                "epochs", "history"):
        assert key in on_disk
    assert 0.0 <= on_disk["test_accuracy"] <= 1.0
    assert len(on_disk["history"]) == 3
    assert on_disk["test_accuracy"] > 0.5  # chance is 0.1
    assert on_disk["history"][-1]["max_residual_A"] <= on_disk["config"]["tol_A"] == 1e-9  # digits default
    assert metrics["test_accuracy"] == on_disk["test_accuracy"]


def test_layer_learning_rates_scale_each_layer(tmp_path, digits):
    plain = train(config(epochs=1), digits, tmp_path / "a", progress=False, log=lambda *_: None)
    ones = train(config(epochs=1, lr_layers=[1, 1]), digits, tmp_path / "b", progress=False, log=lambda *_: None)
    assert plain["test_accuracy"] == ones["test_accuracy"]
    net_a, _ = params_of(tmp_path / "a")
    net_b, _ = params_of(tmp_path / "b")
    for wa, wb in zip(net_a.w, net_b.w):
        np.testing.assert_array_equal(wa, wb)
    train(config(epochs=1, lr_layers=[0, 1]), digits, tmp_path / "c", progress=False, log=lambda *_: None)
    net_c, _ = params_of(tmp_path / "c")
    init = load_network(tmp_path / "a" / CHECKPOINT_NAME)[0]
    init.init_params(np.random.default_rng(SMALL.get("seed", 0)), 1.0)
    # a zero multiplier keeps layer 0 at its initial conductances and biases; layer 1 still learns
    np.testing.assert_array_equal(net_c.w[0], init.w[0])
    np.testing.assert_array_equal(net_c.b[0], init.b[0])
    assert np.abs(net_c.w[1] - init.w[1]).max() > 1e-3


def test_layers_without_ep_signal_are_reported(tmp_path, digits):
    """An absolute stop rule at a loose tolerance leaves the conv layer's nodes unmoved by the
    nudge: counted and warned; the relative nudge rule (the default) resolves every layer."""
    lines = []
    metrics = train(config(epochs=1, tol_A=3e-7, nudge_rtol=None), digits, tmp_path, progress=False,
                    log=lines.append)
    silent = metrics["history"][-1]["silent_updates_per_layer"]
    assert silent[0] > 0 and silent[1] == 0
    assert any("exactly zero EP gradient" in line and "--tol" in line for line in lines)
    assert metrics["history"][-1]["nudge_response_V_per_layer"][0] < 1e-9
    relative = train(config(epochs=1, tol_A=3e-7), digits, tmp_path / "rel", progress=False,
                     log=lambda *_: None)
    h = relative["history"][-1]
    assert h["silent_updates_per_layer"] == [0, 0]
    assert all(r > 0 for r in h["nudge_response_V_per_layer"]) and all(g > 0 for g in h["grad_rms_per_layer"])
    assert all(u > 1e3 for u in h["nudge_rounding_units_per_layer"])   # resolved: no rounding warning


def test_a_nudge_within_float64_rounding_is_measured_and_warned():
    """The nudge response in float64 spacings of the layer's largest node voltage; a layer
    under 100 spacings (a three-conv circuit's first stage: 1.4e-13 V at up to 297 V) is named
    in a warning, resolved layers are not."""
    from epsim.training.circuit import _EpochTally, nudge_rounding_units, unresolved_nudge_warning

    assert nudge_rounding_units([np.spacing(297.0) * 3, 1e-6], [297.0, 1.0]) == pytest.approx(
        [3.0, 1e-6 / np.spacing(1.0)])
    assert nudge_rounding_units([0.0], [0.0]) == [0.0]
    tally = _EpochTally()
    for response in ([1.2e-13, 1.2e-11, 6e-9, 3e-5], [1.6e-13, 1.6e-11, 6e-9, 4e-5]):
        tally.add_signal([np.ones(2)] * 4, response, [297.3, 328.2, 223.8, 52.6])
    summary = tally.signal_summary()
    units = summary["nudge_rounding_units_per_layer"]
    assert units[0] == pytest.approx(1.4e-13 / np.spacing(297.3)) and units[0] < 3
    assert min(units[1:]) > 100
    line = unresolved_nudge_warning(summary)
    assert line.startswith("warning:") and "layer 0 1.4e-13 V at up to 297 V" in line
    assert "layer 1" not in line and "--nudge-rtol" in line
    kept = _EpochTally()  # the same responses, carried by the solver itself: resolved
    kept.add_signal([np.ones(2)] * 4, [1.2e-13, 1.2e-11, 6e-9, 3e-5], [297.3, 328.2, 223.8, 52.6], True)
    assert kept.signal_summary()["updates_from_voltages"] == 0
    assert unresolved_nudge_warning(kept.signal_summary()) is None
    summary["nudge_rounding_units_per_layer"] = [500.0] * 4
    assert unresolved_nudge_warning(summary) is None


def test_dead_units_are_counted_per_hidden_layer(digits):
    """A node held at its clamp on every image is dead: the count agrees with the free
    equilibria solved directly, and a bias that pins a channel at its clamp raises it."""
    from epsim.learning.ep import active_nodes, free_phase
    from epsim.solvers.factory import make_solver
    from epsim.training.circuit import build_network, evaluate

    cfg = config()
    net = build_network(cfg, digits)
    net.init_params(np.random.default_rng(0), 1.0)
    solver = make_solver(cfg)
    x, y = digits.x_test, digits.y_test
    dead = evaluate(net, solver, x, y, batch_size=25)["dead_units_per_layer"]
    assert len(dead) == net.num_layers - 1
    direct = active_nodes(net, free_phase(net, solver, x).v_free[:-1])
    assert dead == [float(1.0 - a.any(axis=0).mean()) for a in direct]
    excitatory = np.flatnonzero(net.rail_lo_V[0][::net.layer_shapes[1][1] * net.layer_shapes[1][2]] == 0)
    net.b[0][excitatory[0]] = -1e3   # a large current out of an excitatory channel's nodes
    pinned = evaluate(net, solver, x, y)["dead_units_per_layer"][0]
    active = active_nodes(net, free_phase(net, solver, x).v_free[:1])[0].reshape((len(y),) + net.layer_shapes[1])
    assert not active[:, excitatory[0]].any() and active[:, excitatory[0]].size > 0
    assert pinned == float(1.0 - active.any(axis=0).mean()) > dead[0]


def assert_resumes_to_the_uninterrupted_run(cfg, dataset, tmp_path, stop_after_batches) -> tuple:
    """Train ``cfg`` whole (``tmp_path/whole``) and interrupted after ``stop_after_batches``
    then resumed (``tmp_path/parts``): the same parameters and leak. Returns the whole run's
    ``(metrics, network, checkpoint state)``."""
    quiet = dict(progress=False, log=lambda *_: None)
    full = train(cfg, dataset, tmp_path / "whole", **quiet)
    assert train(cfg, dataset, tmp_path / "parts", stop_after_batches=stop_after_batches,
                 **quiet) == {"interrupted": True}
    train(cfg, dataset, tmp_path / "parts", resume=True, **quiet)
    whole, state = load_network(tmp_path / "whole" / CHECKPOINT_NAME)
    parts, _ = load_network(tmp_path / "parts" / CHECKPOINT_NAME)
    for a, b in zip(whole.leak + whole.w + whole.b, parts.leak + parts.w + parts.b):
        np.testing.assert_array_equal(a, b)
    return full, whole, state


@pytest.mark.parametrize("stop_after,optimizer", [(3, "sgd"), (15, "sgd"), (20, "sgd"), (15, "adam")])
def test_interrupted_run_resumes_to_identical_result(tmp_path, digits, stop_after, optimizer):
    cfg = config(optimizer=optimizer, lr=0.1 if optimizer == "sgd" else 0.005)
    full = train(cfg, digits, tmp_path / "full", progress=False, log=lambda *_: None)
    part = tmp_path / "part"
    assert train(cfg, digits, part, progress=False, stop_after_batches=stop_after,
                 log=lambda *_: None) == {"interrupted": True}
    resumed = train(cfg, digits, part, resume=True, progress=False, log=lambda *_: None)
    net_full, _ = params_of(tmp_path / "full")
    net_part, _ = params_of(part)
    for a, b in zip(net_full.w + net_full.b, net_part.w + net_part.b):
        np.testing.assert_array_equal(a, b)
    strip = lambda h: [{k: v for k, v in e.items() if k != "wall_seconds"} for e in h]
    assert strip(full["history"]) == strip(resumed["history"])


def test_time_limit_stops_evaluates_and_resumes_to_identical_result(tmp_path, digits):
    """A run stopped by its time limit writes its metrics (the cut epoch marked partial) and a
    checkpoint at the next batch; resumed without a limit it ends with the parameters and the
    per-epoch results of an uninterrupted run."""
    cfg = config()
    full = train(cfg, digits, tmp_path / "full", progress=False, log=lambda *_: None)
    part = tmp_path / "part"
    cut = train(cfg, digits, part, progress=False, time_limit_s=1e-9, log=lambda *_: None)
    assert cut["stopped_early"] and cut["stop_reason"] == "time limit"
    assert len(cut["history"]) == 1 and cut["history"][0]["partial"]
    n_batches = -(-SMALL["train_subset"] // SMALL["batch_size"])
    assert cut["history"][0]["epoch"] == pytest.approx(1 / n_batches)
    assert 0 <= cut["test_accuracy"] <= 1 and (part / "metrics.json").is_file()
    state = load_checkpoint(part / CHECKPOINT_NAME)
    assert (int(state["epoch"]), int(state["batch"])) == (0, 1)
    resumed = train(cfg, digits, part, resume=True, progress=False, log=lambda *_: None)
    assert not resumed["stopped_early"] and resumed["stop_reason"] is None
    net_full, _ = params_of(tmp_path / "full")
    net_part, _ = params_of(part)
    for a, b in zip(net_full.w + net_full.b, net_part.w + net_part.b):
        np.testing.assert_array_equal(a, b)
    strip = lambda h: [{k: v for k, v in e.items() if k != "wall_seconds"} for e in h]
    assert strip(resumed["history"][1:]) == strip(full["history"])


def test_time_limit_at_an_epoch_end_is_not_a_partial_epoch(tmp_path, digits):
    """A limit reached on an epoch's last batch ends that epoch normally, then stops."""
    cfg = config(batch_size=SMALL["train_subset"])  # one batch per epoch
    cut = train(cfg, digits, tmp_path, progress=False, time_limit_s=1e-9, log=lambda *_: None)
    assert cut["stop_reason"] == "time limit" and [h["epoch"] for h in cut["history"]] == [1]
    assert "partial" not in cut["history"][0]
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert (int(state["epoch"]), int(state["batch"])) == (1, 0)


def test_killed_process_resumes_to_identical_result(tmp_path):
    """SIGKILL a real training process at an arbitrary moment, then resume it."""
    args = [sys.executable, "-m", "epsim.train", "--train-subset", "150", "--test-subset", "50",
            "--epochs", "3", "--no-progress", "--checkpoint-interval", "0"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run(args + ["--out", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "part")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "part" / CHECKPOINT_NAME).exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(args + ["--out", str(tmp_path / "part"), "--resume"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert a["test_accuracy"] == b["test_accuracy"]
    net_a, _ = params_of(tmp_path / "full")
    net_b, _ = params_of(tmp_path / "part")
    for x, y in zip(net_a.w, net_b.w):
        np.testing.assert_array_equal(x, y)


def test_crash_during_checkpoint_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"kind": "circuit", "value": np.arange(3.0)})
    import torch

    def torn_save(obj, fh):
        fh.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"kind": "circuit", "value": np.arange(5.0)})
    monkeypatch.undo()
    np.testing.assert_array_equal(load_checkpoint(path)["value"], np.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_existing_run_is_not_overwritten(tmp_path, digits):
    train(config(epochs=1), digits, tmp_path, progress=False, log=lambda *_: None)
    with pytest.raises(EpsimError, match="--resume"):
        train(config(epochs=1), digits, tmp_path, progress=False, log=lambda *_: None)


def test_resume_with_a_different_model_is_refused(tmp_path, digits):
    train(config(epochs=1), digits, tmp_path, progress=False, log=lambda *_: None)
    with pytest.raises(EpsimError, match="different model shape"):
        train(config(epochs=2, model="mlp"), digits, tmp_path, resume=True, progress=False,
              log=lambda *_: None)


def test_init_from_starts_at_a_checkpoints_parameters(tmp_path, digits):
    """``init_from``: the run starts at the checkpoint's conductances and biases (at a vanishing
    rate it ends there), with a fresh update rule; a resume continues the new run; another shape
    is refused."""
    train(config(epochs=1), digits, tmp_path / "a", progress=False, log=lambda *_: None)
    source = str(tmp_path / "a" / CHECKPOINT_NAME)
    train(config(epochs=1, lr=1e-30, init_from=source), digits, tmp_path / "b", progress=False,
          log=lambda *_: None)
    (net_a, _), (net_b, state_b) = params_of(tmp_path / "a"), params_of(tmp_path / "b")
    for a, b in zip(net_a.w + net_a.b, net_b.w + net_b.b):
        np.testing.assert_allclose(b, a, rtol=1e-14, atol=1e-20)
        assert np.abs(a).max() > 1e-3
    assert state_b["config"]["init_from"] == source
    fresh = train(config(epochs=1), digits, tmp_path / "c", progress=False, log=lambda *_: None)
    tuned = train(config(epochs=1, init_from=source), digits, tmp_path / "d", progress=False, log=lambda *_: None)
    assert tuned["history"][0]["train_accuracy"] > fresh["history"][0]["train_accuracy"]
    # an interrupted fine-tune resumes from its own checkpoint, not from the source's parameters
    cfg = config(epochs=2, init_from=source)
    whole = train(cfg, digits, tmp_path / "e", progress=False, log=lambda *_: None)
    assert train(cfg, digits, tmp_path / "f", progress=False, stop_after_batches=17,
                 log=lambda *_: None) == {"interrupted": True}
    resumed = train(cfg, digits, tmp_path / "f", resume=True, progress=False, log=lambda *_: None)
    assert [h["test_accuracy"] for h in whole["history"]] == [h["test_accuracy"] for h in resumed["history"]]
    with pytest.raises(EpsimError, match="different model shape"):
        train(config(epochs=1, model="mlp", init_from=source), digits, tmp_path / "g", progress=False,
              log=lambda *_: None)
    # the same conductances in a circuit of another input gain would compute another function
    with pytest.raises(EpsimError, match=r"built with --input-gain .* give the same"):
        train(config(epochs=1, input_gain_V=7.0, init_from=source), digits, tmp_path / "h", progress=False,
              log=lambda *_: None)
    assert not (tmp_path / "h" / CHECKPOINT_NAME).exists()


def _doctor_checkpoint(path, edit):
    state = load_checkpoint(path)
    edit(state)
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "version")})


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "epsim.train", "--no-progress", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def assert_one_line_error(result, pattern):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and pattern in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args,pattern", [
    (["--backend", "nope"], "--backend"),
    (["--model", "nope"], "--model"),
    (["--dataset", "nope"], "--dataset"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "does not exist"),
    (["--dataset", "mnist", "--data-dir", "."], "train-images-idx3-ubyte"),
    (["--epochs", "0"], "--epochs"),
    (["--beta", "nan"], "--beta"),
    (["--resume"], "--out"),
    (["--lr-layers", "1", "1", "1"], "--lr-layers needs 2 values"),
    (["--lr-layers", "1", "-1"], "--lr-layers"),
    (["--lr-layers", "0", "0"], "--lr-layers must be numbers >= 0, at least one positive"),
    (["--model", "cnn-deep"], "--model cnn-deep (conv:16:3:1,conv:32:3:2,conv:64:3:2,conv:64:3:2,dense:10) on "
                              "1x8x8 images: kernel 3 is larger than its 2x2 input"),
    (["--time-limit", "0"], "--time-limit must be a positive number of minutes"),
    (["--time-limit", "inf"], "--time-limit must be a positive number of minutes"),
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to --optimizer sgd"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--optimizer", "adamw"], "--optimizer adamw applies to the torch models only"),
    (["--init-from", "/nonexistent/checkpoint.pt"], "--init-from /nonexistent/checkpoint.pt: no such"),
    (["--model", "bp-cnn", "--init-from", "x.pt"], "apply to circuit models only"),
    (["--model", "bp-cnn", "--optimizer", "adamw", "--momentum", "0.5"], "--momentum applies to --optimizer sgd"),
])
def test_cli_user_errors_are_one_line(args, pattern, tmp_path):
    assert_one_line_error(run_cli(*args, cwd=tmp_path), pattern)


@pytest.mark.parametrize("args,pattern", [
    (["--arch", "conv:16:40:1,dense:10"], "kernel 40 is larger than its 28x28 input"),
    (["--arch", "conv:16:5:2,dense:10", "--lr-layers", "1", "2", "3"],
     "--lr-layers needs 2 values for the --arch conv:16:5:2,dense:10"),
    (["--model", "drn-2h", "--lr-layers", "1", "1"], "--lr-layers needs 3 values for the drn-2h"),
    (["--model", "cnn-deep", "--amp-gain", "1", "2"], "--amp-gain needs one gain or 4 (one per boundary between "
                                                      "free layers) for the cnn-deep, got 2"),
    (["--model", "drn-2h", "--arch", "dense:100,dense:10"],
     "got 3 (the --model drn-2h preset's; give --lr-layers for this architecture)"),
    (["--model", "cnn-deep", "--arch", "conv:16:3:1,dense:10", "--lr-layers", "1", "1"],
     "--amp-gain needs one gain or 1 (one per boundary between free layers) for the --arch "
     "conv:16:3:1,dense:10, got 4 (the --model cnn-deep preset's; give --amp-gain for this architecture)"),
    (["--arch", "dense:32,dense:5"], "must end with the output layer dense:10"),
])
def test_cli_shape_errors_come_before_the_data_and_the_out_dir(args, pattern, tmp_path):
    """Shape mistakes are found from the dataset's name: the empty --data-dir (which holds no
    MNIST files) is never read, no --out folder is made and nothing goes to stdout."""
    out = tmp_path / "run"
    result = run_cli(*args, "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(out), cwd=tmp_path)
    assert_one_line_error(result, pattern)
    assert result.stdout == "" and not out.exists()


def test_cli_rejects_bad_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert run_cli("--train-subset", "40", "--test-subset", "20", "--epochs", "1", "--out", str(out)).returncode == 0
    ck = out / CHECKPOINT_NAME
    # a checkpoint whose conductances went negative
    _doctor_checkpoint(ck, lambda s: s["w"][0].__setitem__((0, 0, 0, 0), -1.0))
    assert_one_line_error(run_cli("--train-subset", "40", "--test-subset", "20", "--epochs", "2",
                                  "--out", str(out), "--resume"), "negative conductances")
    # a checkpoint of a different model shape
    _doctor_checkpoint(ck, lambda s: s["w"].__setitem__(0, np.abs(s["w"][0][:, :1])))
    assert_one_line_error(run_cli("--train-subset", "40", "--test-subset", "20", "--epochs", "2",
                                  "--out", str(out), "--resume"), "shape")
    # a file that is not a checkpoint at all
    ck.write_bytes(b"not a checkpoint")
    assert_one_line_error(run_cli("--train-subset", "40", "--test-subset", "20", "--epochs", "2",
                                  "--out", str(out), "--resume"), "cannot be read")
    # a resume under a different model
    out2 = tmp_path / "run2"
    assert run_cli("--train-subset", "40", "--test-subset", "20", "--epochs", "1", "--out", str(out2)).returncode == 0
    assert_one_line_error(run_cli("--train-subset", "40", "--test-subset", "20", "--epochs", "2",
                                  "--model", "mlp", "--out", str(out2), "--resume"), "different model shape")


def test_nonfinite_checkpoint_values_are_rejected(tmp_path, digits):
    train(config(epochs=1), digits, tmp_path, progress=False, log=lambda *_: None)
    _doctor_checkpoint(tmp_path / CHECKPOINT_NAME, lambda s: s["b"][0].__setitem__(0, np.nan))
    with pytest.raises(EpsimError, match="NaN or inf"):
        load_network(tmp_path / CHECKPOINT_NAME)


def test_large_image_cnn_relative_nudge_rule_resolves_every_layer():
    """On 32x32x3 images the cnn's conv layer is silent when the nudged phases stop on 1e-9 A;
    the relative nudge rule at the same free-phase tolerance gives it its EP gradient."""
    shape = (3, 32, 32)
    net = build_circuit_model("cnn", shape, 10)
    net.init_params(np.random.default_rng(0), 1.0)
    rng = np.random.default_rng(1)
    x, labels = rng.uniform(0, 1, size=(4, *shape)), np.array([0, 3, 5, 9])

    def layer_grad_max(nudge_rtol):
        solver = get_solver("numba", tol_A=1e-9, max_iter=1000, nudge_rtol=nudge_rtol)
        result = centered_ep(net, solver, x, labels, 0.5)
        assert result.converged.all()
        return [float(np.abs(g).max()) for g in result.grad_w]

    absolute, relative = layer_grad_max(None), layer_grad_max(1e-3)
    assert absolute[0] == 0.0 and absolute[1] > 0
    assert all(g > 0 for g in relative)


@pytest.mark.parametrize("factored", [False, True])
def test_sgd_step_moves_every_layer_by_lr_times_gradient(digits, factored):
    """ProjectedSGD without momentum: each layer's conductances and biases move by exactly
    -lr * gradient (per-layer rates), whether the dense gradients come as arrays or factors."""
    from epsim.learning.optim import ProjectedSGD

    net = build_circuit_model("mlp-deep", digits.image_shape, 10)
    net.init_params(np.random.default_rng(0), 1.0)
    w0, b0 = [w.copy() for w in net.w], [b.copy() for b in net.b]
    r = centered_ep(net, get_solver("numba", tol_A=1e-9, nudge_rtol=1e-3), digits.x_train[:8],
                    digits.y_train[:8], 0.5, factored=factored)
    dense = [g.dense() if factored else g for g in r.grad_w]
    lrs = [0.01, 0.02, 0.04]
    ProjectedSGD(net, lrs, [2 * v for v in lrs], 0.0).step(r.grad_w, r.grad_b)
    lo, hi = net.w_bounds
    for l in range(3):
        np.testing.assert_allclose(net.w[l], np.clip(w0[l] - lrs[l] * dense[l], lo, hi), rtol=0, atol=1e-12)
        np.testing.assert_allclose(net.b[l], b0[l] - 2 * lrs[l] * r.grad_b[l], rtol=0, atol=1e-15)
        assert np.any(net.b[l] != b0[l])


def test_adam_step_matches_its_definition_and_stays_in_range(digits):
    """ProjectedAdam against Adam written out for two steps (bias-corrected moments, per-layer
    rates, conductances clipped to range, biases not); the first step moves every parameter
    with a nonzero gradient by its rate (the sign of the gradient), whatever the layer's
    gradient scale."""
    from epsim.learning.optim import ProjectedAdam

    net = build_circuit_model("mlp-deep", digits.image_shape, 10)
    net.init_params(np.random.default_rng(0), 1.0)
    solver = get_solver("numba", tol_A=1e-9, nudge_rtol=1e-3)
    lrs, lo, hi = [0.01, 0.02, 0.04], *net.w_bounds
    opt = ProjectedAdam(net, lrs, [2 * v for v in lrs])
    ref_p = [p.copy() for p in net.w + net.b]
    m = [np.zeros_like(p) for p in ref_p]
    v = [np.zeros_like(p) for p in ref_p]
    for t, sl in ((1, slice(0, 8)), (2, slice(8, 16))):
        r = centered_ep(net, solver, digits.x_train[sl], digits.y_train[sl], 0.5)
        before = [p.copy() for p in net.w + net.b]
        opt.step(r.grad_w, r.grad_b)
        for k, g in enumerate(r.grad_w + r.grad_b):
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g * g
            rate = lrs[k % 3] * (1 if k < 3 else 2)
            ref_p[k] = ref_p[k] - rate * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v[k] / (1 - 0.999 ** t)) + 1e-8)
            if k < 3:
                ref_p[k] = np.clip(ref_p[k], lo, hi)
            np.testing.assert_allclose((net.w + net.b)[k], ref_p[k], rtol=0, atol=1e-12)
        if t == 1:
            for l in range(3):
                big = np.abs(r.grad_w[l]) > 1e-4
                inside = (before[l] - lrs[l] > lo) & (before[l] + lrs[l] < hi)
                moved = (before[l] - net.w[l])[big & inside]
                assert moved.size > 0
                np.testing.assert_allclose(moved, lrs[l] * np.sign(r.grad_w[l][big & inside]), rtol=1e-3)
    assert all(np.all((w >= lo) & (w <= hi)) for w in net.w)


def test_random_shifts_translate_each_image_by_its_own_offset():
    from epsim.data import random_shifts

    x = np.zeros((5, 1, 7, 7))
    x[:, 0, 3, 3] = 1.0  # one bright pixel in the middle
    out = random_shifts(x, 2, np.random.default_rng(0))
    assert out.shape == x.shape
    positions = [tuple(np.argwhere(o[0] == 1.0)[0]) for o in out]
    assert all(abs(r - 3) <= 2 and abs(c - 3) <= 2 for r, c in positions)
    assert len(set(positions)) > 1 and np.all(out.sum(axis=(1, 2, 3)) == 1.0)
    edge = np.arange(49, dtype=float).reshape(1, 1, 7, 7)
    shifted = random_shifts(edge, 3, np.random.default_rng(1))
    assert set(np.unique(shifted)) <= set(np.unique(edge))  # edge pixels repeated, nothing new
    assert random_shifts(x, 0, np.random.default_rng(0)) is x
    flipped = random_shifts(edge.repeat(64, axis=0), 0, np.random.default_rng(2), flip=True)
    mirrored = np.all(flipped == edge[..., ::-1], axis=(1, 2, 3))
    assert np.all(mirrored | np.all(flipped == edge, axis=(1, 2, 3))) and 10 < mirrored.sum() < 54


def test_augmented_training_resumes_to_the_uninterrupted_run(tmp_path):
    """The shifts of a batch come from (seed, epoch, batch): an interrupted run resumes to the
    same parameters, and the images the run sees differ from the unshifted run's."""
    from epsim.data import load_dataset
    from epsim.training import TrainConfig, load_network, train

    digits = load_dataset("digits", train_subset=80, test_subset=40)
    cfg = TrainConfig(augment_shift=1, augment_flip=True, epochs=2, train_subset=80, test_subset=40)
    _, whole, state = assert_resumes_to_the_uninterrupted_run(cfg, digits, tmp_path, 7)
    train(TrainConfig(epochs=2, train_subset=80, test_subset=40), digits, tmp_path / "plain",
          progress=False, log=lambda *_: None)
    plain, _ = load_network(tmp_path / "plain" / CHECKPOINT_NAME)
    assert state["config"]["augment_shift"] == 1 and state["config"]["augment_flip"]
    assert not np.array_equal(whole.w[0], plain.w[0])
