"""Device models (issue 8): the ideal device changes nothing, the statistics of simulated
updates and reads match the model's parameters, conductances never leave their range, and
noisy runs are deterministic under the seed and resume exactly."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from epsim.data import load_dataset
from epsim.errors import EpsimError
from epsim.learning.ep import centered_ep
from epsim.learning.memristive import (PRESETS, DeviceArray, DeviceModel, ReadNoiseSolver, get_device_model,
                                       pulse_response, pulses_from_reset)
from epsim.learning.optim import ProjectedSGD
from epsim.solvers import get_solver
from epsim.training import (CHECKPOINT_NAME, TrainConfig, build_network, load_network, lr_scale, train)

SMALL = dict(train_subset=96, test_subset=48, epochs=2, batch_size=8)
QUIET = dict(progress=False, log=lambda *_: None)
# std of a standard normal truncated to +-3
TRUNC_STD = 0.9866


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_subset=SMALL["train_subset"], test_subset=SMALL["test_subset"])


def fake_net(shape, lo=0.0, hi=2.0):
    return SimpleNamespace(w=[np.zeros(shape)], w_bounds=(lo, hi))


def model(**kw):
    base = dict(name="test", levels_up=50, levels_down=50)
    return DeviceModel(**{**base, **kw})


# ---- the ideal device ------------------------------------------------------------------
def test_ideal_device_and_no_wires_reproduce_the_plain_training_loop(tmp_path, digits):
    """Acceptance: --device-model ideal --wire-resistance 0 gives exactly the parameters of
    the training loop without any device model (ProjectedSGD alone, layered solver)."""
    cfg = TrainConfig(**SMALL, device_model="ideal", wire_resistance_ohm=0.0)
    train(cfg, digits, tmp_path, **QUIET)
    trained, _ = load_network(tmp_path / CHECKPOINT_NAME)
    # the same run by hand, with no device model anywhere
    net = build_network(cfg, digits)
    net.init_params(np.random.default_rng(cfg.seed), cfg.weight_gain)
    opt = ProjectedSGD(net, cfg.lr, cfg.lr_bias, cfg.momentum)
    solver = get_solver("numba", tol_A=cfg.tol_A, max_iter=cfg.max_iter, nudge_rtol=cfg.nudge_rtol)
    n = len(digits.y_train)
    for epoch in range(cfg.epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
        opt.scale = lr_scale(cfg, epoch)
        for k in range(0, n, cfg.batch_size):
            idx = order[k:k + cfg.batch_size]
            r = centered_ep(net, solver, digits.x_train[idx], digits.y_train[idx], cfg.beta, factored=True)
            if r.converged.any():
                opt.step(r.grad_w, r.grad_b)
    for a, b in zip(trained.w + trained.b, net.w + net.b):
        np.testing.assert_array_equal(a, b)


def test_ideal_device_update_is_the_projected_update():
    rng = np.random.default_rng(0)
    w = rng.uniform(0, 2, (40, 7))
    dw = rng.normal(0, 1, w.shape)
    dev = DeviceArray(PRESETS["ideal"], fake_net(w.shape, 0.0, 1.5), seed=3)
    assert dev.is_ideal and dev.wrap_solver("solver") == "solver"
    got = w.copy()
    dev.update(0, got, dw)
    np.testing.assert_array_equal(got, np.clip(w + dw, 0.0, 1.5))
    assert dev.read([w])[0] is w


# ---- statistics of simulated updates ---------------------------------------------------
@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize("x0", [0.2, 0.7])
def test_one_pulse_mean_and_spread_match_the_model(direction, x0):
    """100k devices at the same state get one pulse: the mean step is the model's
    state-dependent step, its spread the per-pulse write noise (fraction of the range)."""
    m = model(nonlinearity_up=1.5, nonlinearity_down=0.5, write_noise=0.01, stochastic_rounding=False)
    shape = (100_000,)
    lo, hi = 0.1, 2.1
    dev = DeviceArray(m, fake_net(shape, lo, hi), seed=1)
    span = hi - lo
    w = np.full(shape, lo + x0 * span)
    dev.update(0, w, np.full(shape, direction * span / m.levels_up))  # exactly one pulse
    step = (w - lo) / span - x0
    if direction > 0:
        expect = pulse_response(x0, 1, m.nonlinearity_up, 1.0, m.levels_up) - x0
    else:
        expect = -(pulse_response(1 - x0, 1, m.nonlinearity_down, 1.0, m.levels_down) - (1 - x0))
    assert np.mean(step) == pytest.approx(expect, abs=4 * m.write_noise / np.sqrt(shape[0]))
    assert np.std(step) == pytest.approx(m.write_noise, rel=0.02)
    # soft bounds: potentiation steps shrink towards Gmax, depression steps towards Gmin
    up_lo = pulse_response(0.2, 1, 1.5, 1.0, 50) - 0.2
    up_hi = pulse_response(0.7, 1, 1.5, 1.0, 50) - 0.7
    assert up_hi < up_lo


def test_many_pulses_compose_and_noise_grows_as_sqrt_n():
    m = model(nonlinearity_up=2.0, write_noise=0.005, stochastic_rounding=False)
    shape = (50_000,)
    dev = DeviceArray(m, fake_net(shape, 0.0, 1.0), seed=2)
    w = np.full(shape, 0.1)
    n = 9
    dev.update(0, w, np.full(shape, n / m.levels_up))
    x = 0.1  # the noise-free state, one pulse at a time
    for _ in range(n):
        x = pulse_response(x, 1, 2.0, 1.0, m.levels_up)
    assert np.mean(w) == pytest.approx(float(x), abs=1e-4)
    assert np.std(w) == pytest.approx(m.write_noise * np.sqrt(n), rel=0.02)


def test_stochastic_rounding_keeps_the_mean_pulse_count():
    m = model()
    dev = DeviceArray(m, fake_net((1,), 0.0, 1.0), seed=0)
    u = np.random.default_rng(5).random(200_000)
    dw = np.full(u.shape, 2.3 / m.levels_up)
    n_up, n_dn = dev.pulse_counts(dw, m.levels_up, m.levels_down, u)
    assert set(np.unique(n_up)) == {2.0, 3.0} and not n_dn.any()
    assert np.mean(n_up) == pytest.approx(2.3, abs=0.01)


def test_noise_free_linear_device_stays_on_its_levels():
    """Finite levels: without noise or nonlinearity every state is Gmin + k (Gmax-Gmin)/levels."""
    m = model(levels_up=16, levels_down=16, stochastic_rounding=True)
    shape = (500,)
    dev = DeviceArray(m, fake_net(shape, 0.5, 2.5), seed=4)
    net = fake_net(shape, 0.5, 2.5)
    net.w[0] = np.random.default_rng(1).uniform(0, 3, shape)
    dev.program(net)
    w = net.w[0]
    rng = np.random.default_rng(2)
    for _ in range(50):
        dev.update(0, w, rng.normal(0, 0.3, shape))
        k = (w - 0.5) / (2.0 / 16)
        np.testing.assert_allclose(k, np.rint(k), atol=1e-9)
    assert len(np.unique(np.rint(k))) > 8


def test_device_to_device_spreads_match_the_model():
    m = model(d2d_range=0.05, d2d_step=0.2, d2d_nonlinearity=0.3, nonlinearity_up=1.0, nonlinearity_down=1.0)
    shape = (200, 500)
    dev = DeviceArray(m, fake_net(shape, 0.2, 2.0), seed=9)
    d = dev.layers[0]
    assert np.mean(d.lo) == pytest.approx(0.2, rel=0.003)
    assert np.std(d.lo / 0.2) == pytest.approx(0.05 * TRUNC_STD, rel=0.02)
    assert np.std(d.hi / 2.0) == pytest.approx(0.05 * TRUNC_STD, rel=0.02)
    assert np.std(d.s_up) == pytest.approx(0.2 * TRUNC_STD, rel=0.02)
    assert np.std(d.nu_dn) == pytest.approx(0.3 * TRUNC_STD, rel=0.03)
    assert np.corrcoef(d.s_up.ravel(), d.s_dn.ravel())[0, 1] == pytest.approx(0.0, abs=0.01)
    # the same seed gives the same chip, another seed another one
    again = DeviceArray(m, fake_net(shape, 0.2, 2.0), seed=9).layers[0]
    np.testing.assert_array_equal(again.hi, d.hi)
    assert not np.array_equal(DeviceArray(m, fake_net(shape, 0.2, 2.0), seed=10).layers[0].hi, d.hi)


@pytest.mark.parametrize("name", ["rram", "pcm"])
def test_conductances_never_leave_their_range(name):
    m = PRESETS[name]
    net = SimpleNamespace(w=[np.random.default_rng(0).uniform(0, 3, (64, 40))], w_bounds=(
        m.g_min_S / (m.g_max_S / 2), 2.0))
    dev = DeviceArray(m, net, seed=1)
    dev.program(net)
    lo, hi = dev.bounds(0)
    nom_lo, nom_hi = net.w_bounds
    assert np.all(lo >= nom_lo * (1 - 3 * m.d2d_range)) and np.all(hi <= nom_hi * (1 + 3 * m.d2d_range))
    w = net.w[0]
    rng = np.random.default_rng(3)
    for k in range(300):
        dev.update(0, w, rng.normal(0, 0.5 if k % 2 else 0.02, w.shape))
        assert np.all(w >= lo) and np.all(w <= hi)
        assert np.all(np.isfinite(w))
    assert np.any(w == lo) and np.any(w == hi)  # the bounds are reached, and hold


def test_program_writes_initial_conductances_on_levels():
    m = model(levels_up=10, levels_down=10, nonlinearity_up=1.0)
    net = fake_net((1000,), 0.0, 1.0)
    net.w[0] = np.random.default_rng(0).uniform(0, 1, 1000)
    target = net.w[0].copy()
    DeviceArray(m, net, seed=0).program(net)
    levels = pulse_response(0.0, np.arange(11), 1.0, 1.0, 10)
    dist = np.abs(net.w[0][:, None] - levels[None, :]).min(axis=1)
    assert dist.max() < 1e-12
    # the nearest pulse count, so within one (largest) step of the target
    assert np.abs(net.w[0] - target).max() <= levels[1] - levels[0] + 1e-12
    np.testing.assert_allclose(pulses_from_reset(levels, 1.0, 1.0, 10), np.arange(11), atol=1e-9)


def test_read_noise_statistics_and_the_wrapped_solver():
    m = model(read_noise=0.03)
    net = fake_net((400, 500), 0.0, 2.0)
    net.w[0][:] = 1.2
    dev = DeviceArray(m, net, seed=0)
    r1, r2 = dev.read(net.w)[0], dev.read(net.w)[0]
    assert np.mean(r1) == pytest.approx(1.2, rel=1e-3)
    assert np.std(r1 / 1.2) == pytest.approx(0.03, rel=0.02)
    assert not np.array_equal(r1, r2)  # a fresh draw per read
    assert np.all(net.w[0] == 1.2)  # reading never writes
    seen = []
    wrapped = dev.wrap_solver(SimpleNamespace(prepare=lambda n, v: seen.append(n.w[0]) or "p",
                                              solve=lambda p, *a: p, name="x", tol_A=1e-9))
    assert isinstance(wrapped, ReadNoiseSolver) and wrapped.tol_A == 1e-9
    wrapped.prepare(net, None)
    assert seen[0] is not net.w[0] and not np.array_equal(seen[0], net.w[0])


# ---- specs, presets, errors ------------------------------------------------------------
def test_device_specs_and_errors():
    m = get_device_model("rram:read_noise=0,levels_up=64,stochastic_rounding=false")
    assert (m.read_noise, m.levels_up, m.stochastic_rounding, m.write_noise) == (0.0, 64, False, 0.037)
    assert get_device_model(m.spec()) == m and get_device_model("pcm").spec() == "pcm"
    for bad in ("nand", "rram:foo=1", "rram:levels_up=x", "rram:read_noise=-1", "ideal:write_noise=0.1",
                "rram:levels_down=0"):
        with pytest.raises(EpsimError):
            get_device_model(bad)
    for name, preset in PRESETS.items():
        assert preset.name == name
    assert PRESETS["ideal"].is_ideal and not PRESETS["rram"].is_ideal


def test_device_presets_set_the_circuit_range(digits):
    net = build_network(TrainConfig(device_model="rram"), digits)
    assert (net.ranges.g_min_S, net.ranges.g_max_S) == (1e-6, 1e-5)
    assert net.w_bounds == pytest.approx((0.2, 2.0))
    with pytest.raises(EpsimError, match="brings its own conductance range"):
        TrainConfig(device_model="rram", g_max_S=5e-5).validate()


# ---- determinism -----------------------------------------------------------------------
def test_noisy_device_training_is_deterministic_under_the_seed(tmp_path, digits):
    cfg = dict(SMALL, epochs=1, device_model="rram")
    a = train(TrainConfig(**cfg), digits, tmp_path / "a", **QUIET)
    b = train(TrainConfig(**cfg), digits, tmp_path / "b", **QUIET)
    c = train(TrainConfig(**cfg, seed=1), digits, tmp_path / "c", **QUIET)
    na, _ = load_network(tmp_path / "a" / CHECKPOINT_NAME)
    nb, _ = load_network(tmp_path / "b" / CHECKPOINT_NAME)
    nc, _ = load_network(tmp_path / "c" / CHECKPOINT_NAME)
    for x, y in zip(na.w + na.b, nb.w + nb.b):
        np.testing.assert_array_equal(x, y)
    assert a["history"][0]["test_accuracy"] == b["history"][0]["test_accuracy"]
    assert not np.array_equal(na.w[0], nc.w[0])
    assert c["config"]["device_model"] == "rram"


@pytest.mark.parametrize("stop_after", [5, 14])
def test_noisy_device_run_resumes_exactly(tmp_path, digits, stop_after):
    """Write noise, pulse rounding and read noise streams are checkpointed: a run killed
    mid-epoch (or right after an epoch's evaluation) resumes to the same parameters."""
    cfg = TrainConfig(**SMALL, device_model="pcm")
    train(cfg, digits, tmp_path / "full", **QUIET)
    part = tmp_path / "part"
    assert train(cfg, digits, part, stop_after_batches=stop_after, **QUIET) == {"interrupted": True}
    train(cfg, digits, part, resume=True, **QUIET)
    full, _ = load_network(tmp_path / "full" / CHECKPOINT_NAME)
    resumed, state = load_network(part / CHECKPOINT_NAME)
    for x, y in zip(full.w + full.b, resumed.w + resumed.b):
        np.testing.assert_array_equal(x, y)
    assert state["devices"]["spec"] == "pcm"
    with pytest.raises(EpsimError, match="differ"):
        train(TrainConfig(**SMALL, device_model="rram"), digits, part, resume=True, **QUIET)


def test_cli_device_model_flag(tmp_path):
    from epsim.train import main

    main(["--device-model", "pcm:read_noise=0", "--epochs", "1", "--train-subset", "40", "--test-subset",
          "20", "--out", str(tmp_path), "--no-progress"])
    _, state = load_network(tmp_path / CHECKPOINT_NAME)
    assert state["config"]["device_model"] == "pcm:read_noise=0"
    assert state["config"]["wire_resistance_ohm"] == 0.0


def test_device_sweep_writes_its_schema(tmp_path):
    import json

    from epsim.device_sweep import SCHEMA, main

    out = tmp_path / "sweep.json"
    main(["--out", str(out), "--devices", "ideal", "rram:levels_up=32,levels_down=32", "--epochs", "1",
          "--train-subset", "32", "--test-subset", "24", "--wire-resistances", "0", "30",
          "--read-repeats", "2", "--eval-batch-size", "12", "--no-progress"])
    d = json.loads(out.read_text())
    assert d["schema"] == SCHEMA and d["n_test"] == 24 and len(d["runs"]) == 2
    ideal, rram = d["runs"]
    assert [e["wire_resistance_ohm"] for e in ideal["eval"]] == [0.0, 30.0]
    assert ideal["eval"][0]["accuracy_mean"] == ideal["test_accuracy"]  # same solver, no noise
    assert ideal["eval"][0]["repeats"] == 1 and rram["eval"][0]["repeats"] == 2
    assert rram["device_model"] == "rram:levels_up=32,levels_down=32"
    for run in d["runs"]:
        for e in run["eval"]:
            assert 0.0 <= e["accuracy_mean"] <= 1.0 and e["unconverged"] == 0
    assert d["devices"]["ideal"]["levels_up"] == 0
