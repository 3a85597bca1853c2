"""Software EP-CNN: dynamics, fixed points, EP vs BPTT gradients (GDU), presets, training plumbing."""
import json

import numpy as np
import pytest
import torch

from epsim.data import Dataset
from epsim.errors import EpsimError
from epsim.gradcheck import gradient_check, per_image_check, pool_switches, small_model
from epsim.models.ep_cnn import EP_PRESETS, EPCNN, SOLVERS, _max_change, ep_gradients, hard_sigmoid
from epsim.training.software import (load_torch_model, resolve_config, train_step, train_torch,
                                  _generator)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: threads only add synchronisation cost on shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(seed=0, channels=(4, 6, 8), shape=(3, 8, 8), scale=2.0):
    torch.manual_seed(seed)
    m = EPCNN(shape, 5, channels, (1,) * len(channels), t1=400, solver="sync", tol=1e-12).double()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(scale)
    return m


def batch(n=6, shape=(3, 8, 8), classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n,) + shape, generator=g, dtype=torch.float64),
            torch.randint(0, classes, (n,), generator=g))


def energy(m, xn, state):
    return sum((s ** 2).flatten(1).sum(1) for s in state) - m.phi(xn, state)


def test_hard_sigmoid_is_clip_half():
    u = torch.tensor([-3.0, 0.0, 1.0, 2.0, 5.0])
    assert torch.equal(hard_sigmoid(u), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


@pytest.mark.parametrize("cost", ["cross-entropy", "squared-error"])
def test_closed_form_drive_equals_autograd_of_phi(cost):
    """The update uses ∂Φ/∂s in closed form; it must equal autograd of Φ (the reference code's way),
    for every free layer (the output layer too, when it is in the energy)."""
    m = tiny_model() if cost == "cross-entropy" else output_model()
    assert len(m.state_shapes) == 3 + (cost == "squared-error")
    x, y = batch()
    xn = m.normalize(x)
    state = [torch.rand((6,) + s, dtype=torch.float64, requires_grad=True) for s in m.state_shapes]
    for beta in (0.0, 0.7, -0.3):
        auto = torch.autograd.grad(m.phi(xn, state, beta, y).sum(), state)
        closed = m.phi_grad(xn, [s.detach() for s in state], beta, y)
        assert len(closed) == len(state)
        for a, c in zip(auto, closed):
            assert torch.allclose(a, c, atol=1e-12)


def test_sync_early_stop_reaches_the_full_loops_fixed_point():
    m = tiny_model()
    x, _ = batch(8)
    with torch.no_grad():
        fast = m.relax(x, solver="sync", max_iter=150, tol=1e-12)
    with torch.enable_grad():                       # autograd on: all 150 steps, no early stop
        full = m.relax(x, solver="sync", max_iter=150)
    assert full.iterations == 150
    assert fast.sample_steps.max() < 150            # it did stop early
    assert bool(fast.converged.all())
    assert float(_max_change(fast.state, [s.detach() for s in full.state]).max()) < 1e-10
    # and it is a fixed point: s = σ(∂Φ/∂s)
    xn = m.normalize(x)
    again = [hard_sigmoid(u) for u in m.phi_grad(xn, fast.state)]
    assert float(_max_change(again, fast.state).max()) < 1e-11


@pytest.mark.parametrize("solver", SOLVERS)
def test_samples_stop_individually_without_changing_the_others(solver):
    m = tiny_model()
    x, y = batch(8)
    with torch.no_grad():
        together = m.relax(x, solver=solver, max_iter=300, tol=1e-12)
        alone = m.relax(x[3:4], solver=solver, max_iter=300, tol=1e-12)
        nudged = m.relax(x, y, 0.5, together.state, solver=solver, max_iter=300, tol=1e-12)
        nudged_alone = m.relax(x[3:4], y[3:4], 0.5, [s[3:4] for s in together.state], solver=solver,
                               max_iter=300, tol=1e-12)
    assert bool(together.converged.all()) and bool(nudged.converged.all())
    assert len(set(together.sample_steps.tolist())) > 1      # samples stopped at different steps
    assert int(together.iterations) == int(together.sample_steps.max())
    for whole, one in ((together, alone), (nudged, nudged_alone)):
        assert int(one.sample_steps[0]) == int(whole.sample_steps[3])
        for a, b in zip(one.state, whole.state):
            assert torch.allclose(a[0], b[3], atol=1e-14)
    # each stopped sample is a fixed point of its own phase
    xn = m.normalize(x)
    for rel, beta in ((together, 0.0), (nudged, 0.5)):
        again = [hard_sigmoid(u) for u in m.phi_grad(xn, rel.state, beta, y)]
        assert float(_max_change(again, rel.state).max()) < 1e-10


@pytest.mark.parametrize("cost", ["cross-entropy", "squared-error"])
def test_async_sweeps_decrease_the_energy_and_reach_a_fixed_point(cost):
    m = tiny_model() if cost == "cross-entropy" else output_model()
    x, _ = batch(4)
    xn = m.normalize(x)
    previous = None
    with torch.no_grad():
        for sweeps in (1, 2, 4, 8, 16, 400):
            rel = m.relax(x, solver="async", max_iter=sweeps, tol=0.0)
            e = energy(m, xn, rel.state)
            if previous is not None:
                assert bool((e <= previous + 1e-9).all())
            previous = e
        again = [m.activation(l, u) for l, u in enumerate(m.phi_grad(xn, rel.state))]
    assert float(_max_change(again, rel.state).max()) < 1e-10


def gdu_setup(n):
    """The GDU checks' model (two conv layers, strong coupling), ``n`` random 8x8 images and
    labels, and the generator that drew them."""
    m = small_model((1, 8, 8), 10, (6, 8), seed=1, weight_scale=2.0)
    g = torch.Generator().manual_seed(3)
    x = torch.rand((n, 1, 8, 8), generator=g, dtype=torch.float64)
    return m, x, torch.randint(0, 10, (n,), generator=g), g


def assert_tight_gdu(rows):
    """Every layer's converged EP gradient within cosine 0.999 and 1 % in norm of BPTT's."""
    for r in rows:
        assert r["converged"] and r["cosine"] >= 0.999, r
        assert 0.99 < r["norm_ratio"] < 1.01, r


def output_model(seed=0, channels=(4, 6, 8), shape=(3, 8, 8), scale=2.0):
    """``tiny_model`` with the squared-error cost: a linear output layer inside the energy."""
    torch.manual_seed(seed)
    m = EPCNN(shape, 5, channels, (1,) * len(channels), t1=400, solver="sync", tol=1e-12,
              cost="squared-error").double()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(scale)
    return m


@pytest.mark.parametrize("solver", SOLVERS)
def test_output_layer_in_the_energy_fixed_points(solver):
    """Both solvers reach a stationary point of E = Σ‖s‖² − Φ + βℓ: hidden layers s = σ(∂Φ/∂s),
    the output o = (W s_L + b + β·onehot(y)) / (2 + β), logits = o, loss = ½‖o − onehot(y)‖²."""
    m = output_model(scale=1.0)
    assert m.state_shapes[-1] == (5,)
    x, y = batch(8)
    xn = m.normalize(x)
    onehot = torch.nn.functional.one_hot(y, 5).double()
    with torch.no_grad():
        free = m.relax(x, solver=solver, max_iter=400, tol=1e-13)
        for beta, rel in ((0.0, free), (0.5, m.relax(x, y, 0.5, free.state, solver=solver, max_iter=400, tol=1e-13)),
                          (-0.5, m.relax(x, y, -0.5, free.state, solver=solver, max_iter=400, tol=1e-13))):
            assert bool(rel.converged.all())
            again = [m.activation(l, u) for l, u in enumerate(m.phi_grad(xn, rel.state, beta, y))]
            assert float(_max_change(again, rel.state).max()) < 1e-11
            fc = m.synapses[-1](rel.state[-2].flatten(1))
            assert torch.allclose(rel.state[-1], (fc + beta * onehot) / (2 + beta), atol=1e-12)
        assert torch.equal(m.readout(free.state), free.state[-1])
        assert torch.allclose(m.loss(free.state[-1], y), 0.5 * ((free.state[-1] - onehot) ** 2).sum(1))
        if solver == m.solver:                      # forward runs the model's own solver
            assert torch.allclose(m(x), free.state[-1], atol=1e-11)


def test_output_layer_in_the_energy_gdu_ep_gradient_matches_bptt():
    """EP's gradient of the squared-error cost equals BPTT's through the converged synchronous
    dynamics, for every parameter, the output layer's synapse included."""
    m = output_model(seed=1, channels=(6, 8), scale=2.0)
    x, y = batch(8)
    rows = gradient_check(m, x, y, beta=1e-3)
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc"]
    assert_tight_gdu(rows)


def test_output_layer_in_the_energy_gdu_holds_for_the_odd_even_solver():
    """The odd/even sweeps reach another stationary point than the synchronous loop; EP with
    them estimates BPTT through the same sweeps."""
    m = output_model(seed=2, channels=(6, 8), scale=2.0)
    x, y = batch(8)
    rows = gradient_check(m, x, y, beta=1e-3, solver="async")
    assert_tight_gdu(rows)


def test_per_image_check_reports_smooth_nudges_and_counts_pool_switches():
    m, x, y, g = gdu_setup(3)
    rows = per_image_check(m, x, y, beta=1e-3)
    assert [r["index"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["converged"] and r["cosine"] >= 0.999 and 0.99 < r["norm_ratio"] < 1.01, r
        assert 0 < r["shift_plus"] < 10 and 0 < r["shift_minus"] < 10, r    # |Δs| of order β
    xn = m.normalize(x)
    with torch.no_grad():
        s = m.relax(x).state
        other = [s[0], torch.rand(s[1].shape, generator=g, dtype=torch.float64)]
        assert pool_switches(m, xn, s, s).tolist() == [0, 0, 0]
        # the second conv pools conv(s_1): only a changed s_1 can move its windows' maxima
        assert pool_switches(m, xn, s, [torch.rand(s[0].shape, generator=g, dtype=torch.float64), s[1]]).min() > 0
        assert pool_switches(m, xn, s, other).tolist() == [0, 0, 0]


@pytest.mark.parametrize("solver", SOLVERS)
def test_nudged_phases_stop_on_their_own_tolerance(solver):
    """A loose free-phase stop with a tight nudged-phase stop: the nudged phases run on until
    their own tolerance, and with it the EP update approaches the converged one."""
    m = output_model(scale=1.0)
    assert m.state_shapes[-1] == (5,)
    x, y = batch(8)
    loose = ep_gradients(m, x, y, beta=0.2, t1=400, t2=400, solver=solver, tol=1e-3, require_convergence=False)
    g_loose = [p.grad.clone() for p in m.parameters()]
    tight = ep_gradients(m, x, y, beta=0.2, t1=400, t2=400, solver=solver, tol=1e-3, nudge_tol=1e-12,
                         require_convergence=False)
    g_tight = [p.grad.clone() for p in m.parameters()]
    assert float(loose.plus.residual.max()) > 1e-12 and (loose.plus.residual <= 1e-3).all()
    assert (tight.plus.residual <= 1e-12).all() and (tight.minus.residual <= 1e-12).all()
    assert tight.plus.sample_steps.float().mean() > loose.plus.sample_steps.float().mean()
    assert torch.equal(tight.free.residual, loose.free.residual)        # the free phase is unchanged
    ep_gradients(m, x, y, beta=0.2, t1=400, t2=400, solver=solver, tol=1e-12, require_convergence=False)
    ref = [p.grad.clone() for p in m.parameters()]
    err = lambda g: sum(float((a - b).norm()) for a, b in zip(g, ref))   # noqa: E731
    assert err(g_tight) < err(g_loose)
    with pytest.raises(EpsimError, match="--ep-nudge-tol"):
        resolve_config("ep-cnn", "cifar10-dchn", nudge_tol=-1.0)


@pytest.mark.parametrize("cost", ["cross-entropy", "squared-error"])
def test_over_relaxed_sweeps_reach_a_fixed_point_of_the_plain_update_in_fewer_sweeps(cost):
    """Projected over-relaxation (omega > 1) stops at a stationary point of the plain update
    s = σ(∂Φ/∂s), free and nudged, and needs fewer sweeps than omega = 1 to get there."""
    plain = output_model() if cost == "squared-error" else tiny_model()
    fast = output_model() if cost == "squared-error" else tiny_model()
    fast.omega = 1.4
    x, y = batch(8)
    xn = fast.normalize(x)
    with torch.no_grad():
        free = fast.relax(x, solver="async", max_iter=2000, tol=1e-13)
        for beta, rel in ((0.0, free), (0.5, fast.relax(x, y, 0.5, free.state, solver="async", max_iter=2000, tol=1e-13))):
            assert bool(rel.converged.all())
            again = [fast.activation(l, u) for l, u in enumerate(fast.phi_grad(xn, rel.state, beta, y))]
            assert float(_max_change(again, rel.state).max()) < 1e-11
        base = plain.relax(x, solver="async", max_iter=2000, tol=1e-13)
    assert bool(base.converged.all())
    assert float(free.sample_steps.float().mean()) < float(base.sample_steps.float().mean())


def test_over_relaxed_nudged_phases_reach_the_plain_nudged_state_and_keep_the_gdu():
    """From the same free state, over-relaxed nudged phases reach the state the plain ones
    reach, and EP through the over-relaxed dynamics equals BPTT through them. (At a nudge as
    large as β = 0.2 one of these 8 samples lands on a neighbouring stationary point: the
    overshoot can switch a pooling window; training checks its updates with ep_budget.py.)"""
    m = output_model(seed=2, channels=(6, 8), scale=2.0)
    m.omega = 1.4
    x, y = batch(8)
    with torch.no_grad():
        free = m.relax(x, solver="async", max_iter=2000, tol=1e-13)
        fast = m.relax(x, y, 0.05, free.state, solver="async", max_iter=2000, tol=1e-13)
        m.omega = 1.0
        slow = m.relax(x, y, 0.05, free.state, solver="async", max_iter=2000, tol=1e-13)
        m.omega = 1.4
    assert max(float((a - b).abs().max()) for a, b in zip(fast.state, slow.state)) < 1e-10
    assert float(fast.sample_steps.float().mean()) < float(slow.sample_steps.float().mean())
    assert_tight_gdu(gradient_check(m, x, y, beta=1e-3, solver="async"))


def test_omega_is_checked_and_recorded():
    m = EPCNN((3, 8, 8), 5, (4,), (1,), solver="async", omega=1.5)
    assert EPCNN(**m.describe()).omega == 1.5
    assert EPCNN(**{k: v for k, v in m.describe().items() if k != "omega"}).omega == 1.0   # older checkpoints
    for bad in (0.9, 2.0, float("nan")):
        with pytest.raises(EpsimError, match=r"must be in \[1, 2\)"):
            EPCNN((3, 8, 8), 5, (4,), (1,), solver="async", omega=bad)
    with pytest.raises(EpsimError, match="odd/even solver"):
        EPCNN((3, 8, 8), 5, (4,), (1,), solver="sync", omega=1.5)
    with pytest.raises(EpsimError, match="odd/even solver"):
        m.relax(torch.rand(1, 3, 8, 8), solver="sync")
    assert resolve_config("ep-cnn", "cifar10-dchn", omega=1.4).omega == 1.4
    with pytest.raises(EpsimError, match=r"--ep-omega 1.4 \(given or the preset.s\) needs the odd/even solver"):
        resolve_config("ep-cnn", "cifar10-small", omega=1.4)
    with pytest.raises(EpsimError, match="given or the preset"):
        resolve_config("ep-cnn", "cifar10-hour", solver="sync")
    assert resolve_config("ep-cnn", "cifar10-hour", solver="sync", omega=1.0).solver == "sync"


def test_dchn_preset_builds_the_published_recipe_in_this_models_units():
    cfg = resolve_config("ep-cnn", "cifar10-dchn", dataset="cifar10")
    assert (cfg.cost, cfg.solver, cfg.t1, cfg.t2, cfg.beta, cfg.batch_size) == ("squared-error", "async", 60, 20, 0.2, 32)
    from dataclasses import asdict
    from epsim.models.ep_cnn import build_ep_cnn

    torch.manual_seed(0)
    m = build_ep_cnn(asdict(cfg), (3, 32, 32), 10, "cifar10").requires_grad_(False)
    assert m.cost == "squared-error" and [s[1] for s in m.state_shapes[:-1]] == [16, 8, 4, 2]
    for synapse, gain in zip(m.synapses, cfg.init_gains):
        fan_in = synapse.weight[0].numel()
        bound = 2 * gain / fan_in ** 0.5           # the weights' uniform bound
        assert float(synapse.weight.abs().max()) <= bound
        assert float(synapse.weight.abs().max()) > 0.95 * bound
        assert float(synapse.bias.abs().max()) <= 1 / fan_in ** 0.5
    with pytest.raises(EpsimError, match="--init-gains needs 5 values"):
        resolve_config("ep-cnn", "cifar10-dchn", init_gains=(1.0, 1.0))
    with pytest.raises(EpsimError, match="unknown EP-CNN cost"):
        EPCNN((3, 8, 8), 5, (4,), (1,), cost="hinge")


def test_hour_preset_is_the_dchn_recipe_over_relaxed_with_adam():
    """cifar10-hour is cifar10-dchn with --ep-omega 1.4 --optimizer adam --lrs 1e-3 (every synapse)
    --epochs 8 and nothing else: the command its README result was measured with."""
    from dataclasses import asdict

    hour = asdict(resolve_config("ep-cnn", "cifar10-hour"))
    dchn = asdict(resolve_config("ep-cnn", "cifar10-dchn", omega=1.4, optimizer="adam", lrs=(1e-3,) * 5, epochs=8))
    assert {k for k in hour if hour[k] != dchn[k]} == {"preset"}
    assert (hour["omega"], hour["optimizer"], hour["epochs"], hour["solver"]) == (1.4, "adam", 8, "async")


def test_gdu_ep_gradient_matches_bptt():
    m, x, y, _ = gdu_setup(8)
    rows = gradient_check(m, x, y, beta=1e-3)
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc"]
    for r in rows:
        assert r["cosine"] >= 0.99, r
        assert 0.95 < r["norm_ratio"] < 1.05, r


def test_ep_estimate_is_biased_at_large_beta_but_converges_as_beta_shrinks():
    """A real EP property, not a tautology: the error of the estimate falls with beta."""
    m, x, y, _ = gdu_setup(8)
    err = [1 - min(r["cosine"] for r in gradient_check(m, x[:4], y[:4], beta=b, tol=1e-10)) for b in (0.5, 0.05)]
    assert err[1] < err[0]


def test_gdu_command_prints_per_layer_cosines(capsys):
    from epsim.gradcheck import main

    main(["--batch-size", "4", "--channels", "4", "6", "--tol", "1e-10"])
    out = capsys.readouterr().out
    assert "conv1" in out and "conv2" in out and "fc" in out and "PASS" in out


def test_ep_gradients_drop_unconverged_samples_with_the_async_solver():
    m = tiny_model()
    x, y = batch(6)
    step = ep_gradients(m, x, y, beta=0.5, t1=1, t2=1, solver="async", tol=1e-12)
    assert not bool(step.used.any())                # one sweep converges nothing: no update
    assert all(float(p.grad.abs().max()) == 0 for p in m.parameters())
    step = ep_gradients(m, x, y, beta=0.5, t1=400, t2=400, solver="async", tol=1e-10)
    assert bool(step.used.all())
    assert any(float(p.grad.abs().max()) > 0 for p in m.parameters())


@pytest.mark.parametrize("preset,classes", [("cifar10-paper", 10), ("cifar100-paper", 100),
                                            ("cifar10-small", 10)])
def test_presets_build_and_train_one_batch_with_tiny_t(preset, classes):
    cfg = resolve_config("ep-cnn", preset, t1=2, t2=1, batch_size=2)
    assert cfg.dataset == EP_PRESETS[preset]["dataset"]
    from epsim.training.software import build_model, make_optimizer

    m = build_model(cfg, (3, 32, 32), classes, cfg.dataset)
    assert [s[1] for s in m.state_shapes] == [16, 8, 4, 1]      # paddings 1,1,1,0 + 2x2 pools
    assert m.state_shapes[-1][0] == cfg.channels[-1]
    opt = make_optimizer(m, cfg)
    assert [g["lr"] for g in opt.param_groups] == list(cfg.lrs)
    before = [p.detach().clone() for p in m.parameters()]
    x = torch.rand(2, 3, 32, 32)
    stats = train_step(m, opt, cfg, x, torch.tensor([0, 1]), _generator((0, 0, 0), "cpu"))
    assert stats["n"] == 2 and np.isfinite(stats["loss_sum"])
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert m(x).shape == (2, classes)


def test_paper_preset_values():
    p = EP_PRESETS["cifar10-paper"]
    assert p["channels"] == (128, 256, 512, 512) and p["paddings"] == (1, 1, 1, 0)
    assert (p["t1"], p["t2"], p["beta"], p["batch_size"], p["epochs"]) == (250, 30, 0.5, 128, 120)
    assert p["lrs"] == (0.25, 0.15, 0.1, 0.08, 0.05) and p["weight_decay"] == 3e-4
    assert EP_PRESETS["cifar100-paper"]["channels"] == (128, 256, 512, 1024)


def synthetic(n_train=24, n_test=10, shape=(3, 8, 8), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset("synthetic", rng.random((n_train,) + shape, dtype=np.float32),
                   rng.integers(0, classes, n_train), rng.random((n_test,) + shape, dtype=np.float32),
                   rng.integers(0, classes, n_test), classes)


def small_config(**kw):
    kw = dict(dict(channels=(4, 6), paddings=(1, 1), epochs=2, batch_size=8, t1=30, t2=10, tol=1e-5,
                   dataset="synthetic"), **kw)
    return resolve_config("ep-cnn", "cifar10-small", **kw)


def test_training_writes_metrics_and_resume_replays_the_same_run(tmp_path):
    ds = synthetic()
    cfg = small_config()
    ref = train_torch(cfg, ds, tmp_path / "a", progress=False, log=lambda *a: None)
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    for key in ("test_accuracy", "train_accuracy", "wall_seconds", "dataset", "model", "epochs", "n_test", "history"):
        assert key in m
    assert m["backend"] == "torch" and m["model"] == "ep-cnn" and m["n_test"] == 10
    assert len(m["history"]) == 2 and "mean_steps_per_sample" in m["history"][0]
    # interrupted after 4 batches (mid second epoch), then resumed
    out = train_torch(cfg, ds, tmp_path / "b", progress=False, stop_after_batches=4, log=lambda *a: None)
    assert out == {"interrupted": True}
    with pytest.raises(EpsimError, match="--resume"):
        train_torch(cfg, ds, tmp_path / "b", progress=False, log=lambda *a: None)
    res = train_torch(cfg, ds, tmp_path / "b", resume=True, progress=False, log=lambda *a: None)
    assert res["test_accuracy"] == ref["test_accuracy"]
    a = load_torch_model(tmp_path / "a" / "checkpoint.pt")
    b = load_torch_model(tmp_path / "b" / "checkpoint.pt")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    # a changed option cannot resume the run
    with pytest.raises(EpsimError, match="beta"):
        train_torch(small_config(beta=0.9), ds, tmp_path / "b", resume=True, progress=False, log=lambda *a: None)


def test_load_torch_model_gives_an_inference_module(tmp_path):
    ds = synthetic()
    train_torch(small_config(epochs=1), ds, tmp_path, progress=False, log=lambda *a: None)
    m = load_torch_model(tmp_path / "checkpoint.pt")
    assert isinstance(m, EPCNN) and not m.training and m.epsim_kind == "ep-cnn"
    x = torch.from_numpy(ds.x_test)
    with torch.no_grad():
        logits = m(x)
    assert logits.shape == (10, 4)
    acc = float((logits.argmax(1) == torch.from_numpy(ds.y_test)).float().mean())
    saved = json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"]
    assert acc == pytest.approx(saved)


def test_cli_rejects_other_backends_and_circuit_options(tmp_path):
    from epsim.train import main

    with pytest.raises(EpsimError, match="backend torch"):
        main(["--model", "ep-cnn", "--backend", "numba"])
    with pytest.raises(EpsimError, match="--diode"):
        main(["--model", "ep-cnn", "--diode", "shockley"])
    with pytest.raises(EpsimError, match="--lrs needs 3"):
        main(["--model", "ep-cnn", "--channels", "4", "4", "--paddings", "1", "1", "--lrs", "0.1"])


def test_cli_trains_ep_cnn_on_digits(tmp_path, capsys):
    from epsim.train import main

    main(["--model", "ep-cnn", "--backend", "torch", "--dataset", "digits", "--channels", "4", "8",
          "--paddings", "1", "1", "--epochs", "1", "--train-subset", "64", "--test-subset", "32",
          "--batch-size", "32", "--t1", "40", "--t2", "10", "--ep-tol", "1e-5", "--no-progress",
          "--out", str(tmp_path)])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["dataset"] == "digits" and m["config"]["channels"] == [4, 8] and m["n_test"] == 32
    assert "test accuracy" in capsys.readouterr().out


def test_model_rejects_images_it_cannot_take():
    with pytest.raises(EpsimError, match="does not fit"):
        EPCNN((1, 8, 8), 10, (8, 8, 8, 8), (1, 1, 1, 0))
    m = EPCNN((3, 8, 8), 10, (4,), (1,))
    with pytest.raises(EpsimError, match="expects images"):
        m(torch.rand(2, 1, 8, 8))
