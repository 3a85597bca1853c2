"""Circuit architectures from spec strings, the DRN presets, and their command line."""
import json
import subprocess
import sys

import numpy as np
import pytest

from epsim.data import load_dataset
from epsim.errors import EpsimError
from epsim.models.arch import connections_from_arch, format_arch, parse_arch
from epsim.models.registry import PRESETS, build_circuit_model, model_arch
from epsim.training import CHECKPOINT_NAME, TrainConfig, load_network, lr_scale, preset_config, train
from epsim.train import main as train_main


def test_spec_round_trip_and_shapes():
    spec = "conv:16:5:2,conv:32:3,dense:64,dense:10"
    layers = parse_arch(spec)
    assert layers == [("conv", 16, 5, 2, 0), ("conv", 32, 3, 1, 0), ("dense", 64), ("dense", 10)]
    assert parse_arch(format_arch(layers)) == layers
    conns = connections_from_arch(spec, (1, 28, 28), 10)
    assert [c.out_shape for c in conns] == [(16, 12, 12), (32, 10, 10), (64,), (10,)]
    assert conns[0].in_shape == (2, 28, 28)


@pytest.mark.parametrize("spec,message", [
    ("", "empty"), ("dense:x,dense:10", "whole numbers"), ("pool:2,dense:10", "not dense:N"),
    ("dense:0,dense:10", "at least 1"), ("dense:64,dense:9", "must end with the output layer dense:10"),
    ("dense:64,conv:8:3,dense:10", "cannot follow a dense"), ("conv:8:30,dense:10", "larger than"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(EpsimError, match=message):
        connections_from_arch(spec, (1, 28, 28), 10)


def test_named_models_keep_their_circuits():
    """The named models build the same connections as before the spec existed."""
    assert model_arch("cnn", (1, 8, 8), 10) == "conv:16:3:1,dense:10"
    assert model_arch("cnn", (3, 32, 32), 10) == "conv:32:4:2,dense:10"
    assert model_arch("mlp", (1, 28, 28), 10) == "dense:100,dense:10"
    assert model_arch("mlp-deep", (1, 8, 8), 10) == "dense:64,dense:64,dense:10"
    net = build_circuit_model("drn-2h", (1, 28, 28), 10)
    assert net.layer_sizes == [1568, 1024, 1024, 10] and net.input_gain_V == 2000.0


def test_presets_carry_the_published_settings():
    cfg = preset_config("drn-3h")
    assert (cfg.input_gain_V, cfg.beta, cfg.batch_size, cfg.momentum, cfg.epochs) == (4000.0, 2.0, 4, 0.0, 50)
    assert cfg.lr * np.array(cfg.lr_layers) == pytest.approx([0.005, 0.02, 0.08, 0.005])
    assert cfg.lr_bias * np.array(cfg.lr_layers) == pytest.approx([0.0005, 0.002, 0.008, 0.0005])
    assert lr_scale(cfg, 2) == pytest.approx(0.99 ** 2)
    # explicit options override the preset, other models keep TrainConfig's defaults
    assert preset_config("drn-1h", beta=0.5, epochs=3).beta == 0.5
    assert preset_config("mlp") == TrainConfig(model="mlp")
    assert set(PRESETS) == {"drn-xs", "drn-1h", "drn-2h", "drn-3h", "drn-xl", "cnn-deep", "cnn-paper"}
    deep = preset_config("cnn-deep")
    assert (deep.input_gain_V, deep.amp_gain, deep.batch_size) == (4.0, [12.0, 3.5, 2.2, 1.5], 4)


def test_clamped_uniform_init_matches_its_definition():
    net = build_circuit_model("drn-1h", (1, 28, 28), 10)
    net.init_params(np.random.default_rng(0), 1.0, "clamped-uniform")
    w = net.w[0]
    assert 0.45 < np.mean(w == 0) < 0.55
    assert w.max() < 1 / np.sqrt(1568) and w.min() == 0


def test_arch_run_records_its_spec_and_reloads(tmp_path):
    digits = load_dataset("digits", train_subset=64, test_subset=32)
    cfg = TrainConfig(arch="conv:4:3,conv:8:3:2,dense:10", epochs=1, input_gain_V=16.0)
    metrics = train(cfg, digits, tmp_path, progress=False, log=lambda *_: None)
    net, state = load_network(tmp_path / CHECKPOINT_NAME)
    assert state["model"]["arch"] == "conv:4:3,conv:8:3:2,dense:10" and net.arch == cfg.arch
    assert [c.kind for c in net.connections] == ["conv", "conv", "dense"]
    h = metrics["history"][-1]
    assert len(h["grad_rms_per_layer"]) == 3 and len(h["nudge_response_V_per_layer"]) == 3


def test_cli_preset_with_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    train_main(["--model", "drn-xs", "--train-subset", "40", "--test-subset", "20", "--epochs", "1",
                "--beta", "0.5", "--out", str(out), "--no-progress"])
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["beta"] == 0.5 and config["input_gain_V"] == 100.0 and config["batch_size"] == 4
    assert config["momentum"] == 0.0 and config["lr_schedule"] == "exponential"


@pytest.mark.parametrize("args,message", [
    (["--arch", "dense:64,dense:9"], "must end with the output layer"),
    (["--nudge-rtol", "1.5"], "--nudge-rtol must be in"),
    (["--lr-decay", "0"], "--lr-decay must be in"),
    (["--model", "mlp", "--lr-decay", "0.9"], "--lr-decay is the per-epoch factor of --lr-schedule exponential"),
])
def test_cli_rejects_bad_options_in_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "epsim.train", *args, "--train-subset", "8", "--test-subset", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
