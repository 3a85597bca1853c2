"""Attacks, adapters and sanity checks with known answers.

Linear classifiers ``z = W x + b`` have closed-form minimal adversarial distances
(two classes, no box constraint active): ``|z_0 − z_1| / ||w_0 − w_1||_2`` in L2 and
``|z_0 − z_1| / ||w_0 − w_1||_1`` in L∞, which PGD must reach and cannot beat.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn

from epsim.errors import EpsimError
from epsim.models.resistive import build_cnn, build_mlp
from epsim.robustness import sanity as S
from epsim.robustness.adapters import CircuitAdapter, Prediction, TorchAdapter
from epsim.robustness.attacks import (apgd_checkpoints, dlr_loss, fgsm, make_loss, margin_loss,
                                      perturbation_norm, pgd, square_attack)
from epsim.robustness.evaluate import SweepConfig, run_sweep, validate_eps

SHAPE = (1, 4, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


class Linear(nn.Module):
    """``z = W flatten(x) + b`` in float64."""

    def __init__(self, w, b):
        super().__init__()
        self.lin = nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            self.lin.weight.copy_(torch.as_tensor(w))
            self.lin.bias.copy_(torch.as_tensor(b))

    def forward(self, x):
        return self.lin(x.flatten(1))


def linear_problem(seed=0, n=40, k=2, scale=1.0):
    """A linear model on 4x4 images near mid-gray, labels = its own predictions."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(SHAPE))
    w = rng.normal(0, scale, (k, d))
    b = rng.normal(0, 0.1, k)
    x = rng.uniform(0.4, 0.6, (n,) + SHAPE)
    adapter = TorchAdapter(Linear(w, b), SHAPE, k, name="linear")
    y = np.argmax(adapter.predict(x).scores, axis=1)
    return adapter, w, b, x, y


def closed_form_distance(w, b, x, y, norm):
    z = x.reshape(len(x), -1) @ w.T + b
    other = 1 - y
    dw = w[y] - w[other]
    margin = z[np.arange(len(y)), y] - z[np.arange(len(y)), other]
    return margin / (np.linalg.norm(dw, axis=1) if norm == "l2" else np.abs(dw).sum(axis=1))


def grad_fn(adapter, loss, path="bptt"):
    return lambda x, y: adapter.input_gradient(x, y, loss, path)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_pgd_reaches_the_closed_form_minimal_distance(norm, loss):
    adapter, w, b, x, y = linear_problem(seed=1)
    d_star = closed_form_distance(w, b, x, y, norm)
    # the optimal perturbation must stay inside [0, 1] for the closed form to hold
    keep = d_star < 0.39
    x, y, d_star = x[keep], y[keep], d_star[keep]
    assert len(y) >= 10
    rng = np.random.default_rng(0)
    above = pgd(grad_fn(adapter, loss), adapter.predict, x, y, 1.01 * d_star, norm, 30, rng)
    below = pgd(grad_fn(adapter, loss), adapter.predict, x, y, 0.99 * d_star, norm, 30, rng)
    assert not above.robust.any(), f"PGD missed {above.robust.sum()} adversarials at 1.01 d*"
    assert below.robust.all()  # no adversarial exists there: nothing invalid was produced
    dist = perturbation_norm(above.x_adv, x, norm)
    assert np.all(dist <= 1.01 * d_star * (1 + 1e-9))
    assert np.all(dist >= 0.999 * d_star)
    # single step is exact on a linear two-class model too (for L∞ the optimum is a vertex)
    one = fgsm(grad_fn(adapter, loss), adapter.predict, x, y, 1.01 * d_star, norm)
    assert not one.robust.any()


def test_apgd_checkpoints_match_the_published_schedule():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1) == [1]


def test_losses_known_values():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, 1.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    np.testing.assert_allclose(margin_loss(z, y).numpy(), [-1.0, 5.0])
    # dlr = margin / (z_pi1 - z_pi3): (3-1)=2 and (5-1)=4
    np.testing.assert_allclose(dlr_loss(z, y).numpy(), [-0.5, 1.25])
    ce = make_loss("ce", 2.0)(z, y).numpy()
    ref = -np.log(np.exp(2 * z[:, 0].numpy()) / np.exp(2 * z.numpy()).sum(1))
    np.testing.assert_allclose(ce, ref)
    with pytest.raises(EpsimError):
        make_loss("hinge")


@pytest.mark.parametrize("norm,eps", [("l2", 1.5), ("linf", 0.45)])
def test_perturbations_stay_in_the_box_and_the_ball(norm, eps):
    rng = np.random.default_rng(3)
    adapter, _, _, _, _ = linear_problem(seed=2, k=3, scale=0.3)
    x = rng.choice([0.0, 1.0, 0.5], size=(16,) + SHAPE)  # pixels on the box faces
    y = np.argmax(adapter.predict(x).scores, axis=1)
    for res in (pgd(grad_fn(adapter, "ce"), adapter.predict, x, y, eps, norm, 10, rng, restarts=2),
                fgsm(grad_fn(adapter, "dlr"), adapter.predict, x, y, eps, norm),
                square_attack(adapter.predict, x, y, eps, norm, 50, rng)):
        assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
        assert np.all(perturbation_norm(res.x_adv, x, norm) <= eps * (1 + 1e-9))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_square_attack_finds_adversarials_on_an_easy_linear_model(norm):
    adapter, w, b, x, y = linear_problem(seed=4, n=30)
    d_star = closed_form_distance(w, b, x, y, norm)
    eps = float(np.quantile(d_star, 0.8) * 2.5)
    res = square_attack(adapter.predict, x, y, eps, norm, 300, np.random.default_rng(0))
    possible = d_star < eps
    assert np.all(res.robust[~possible])          # never beyond the closed form
    assert (~res.robust[possible]).mean() >= 0.9  # finds (almost) all that exist
    assert np.all(perturbation_norm(res.x_adv, x, norm) <= eps * (1 + 1e-9))
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    q = res.stats["queries"]
    assert q.max() <= 300 and q[~res.robust].min() >= 1


# ---- sanity checks flag broken cases -------------------------------------------------------
def test_sanity_checks_flag_broken_cases():
    n = 50
    lo = np.zeros(n, bool)
    lo[:10] = True          # 20 % robust
    hi = np.zeros(n, bool)
    hi[:40] = True          # 80 % robust
    mono = S.check_monotone([0.1, 0.5], [lo, hi])
    assert mono[0].status == S.NA and mono[1].failed
    assert not S.check_monotone([0.1, 0.5], [hi, lo])[1].failed
    # a couple of discordant images is noise, not a failure
    noisy = lo.copy()
    noisy[10:12] = True
    assert not S.check_monotone([0.1, 0.5], [lo, noisy])[1].failed
    assert S.check_iterative_vs_single(hi, lo, 0.3).failed          # PGD weaker than FGSM
    assert not S.check_iterative_vs_single(lo, hi, 0.3).failed
    assert S.check_blackbox_vs_whitebox(lo, hi, 0.3).failed         # black box beats white box
    assert not S.check_blackbox_vs_whitebox(hi, lo, 0.3).failed
    assert S.check_large_eps(8.0, 0.3, n).failed and not S.check_large_eps(8.0, 0.0, n).failed
    assert S.check_gradients(100, 0, 0, probe_n=10, probe_zero=1).failed
    assert S.check_gradients(100, 0, 1).failed
    assert S.check_gradients(100, 50, 0).failed
    assert not S.check_gradients(100, 0, 0, probe_n=10).failed
    assert S.check_converged(100, 1, 1e-6).failed and not S.check_converged(100, 0, 1e-10).failed
    assert S.check_clean_settings(0.9, 100, 0, {}, recorded_accuracy=0.95, comparable=True).failed
    assert not S.check_clean_settings(0.95, 100, 0, {}, recorded_accuracy=0.95, comparable=True).failed
    assert S.check_clean_settings(0.95, 100, 3, {}).failed
    assert S.check_paths_agree({"ep vs implicit": np.array([0.2, 0.3])}).failed
    assert S.check_in_ball(0.51, 0.5, 0.0, 1.0, "l2").failed
    assert S.check_in_ball(0.5, 0.5, -0.01, 1.0, "l2").failed
    assert S.check_severity_trend([1, 2], [0.5, 0.9], 1000)[1].failed


class Quantized(nn.Module):
    """Gradient masking by design: the input is rounded to 2 levels (zero gradient a.e.)."""

    def __init__(self, w, b):
        super().__init__()
        self.inner = Linear(w, b)

    def forward(self, x):
        return self.inner(torch.round(x))


def test_sweep_flags_gradient_masking():
    """Zero gradients: PGD is stuck, the large-ε check and the gradient check fail, the
    black box beats the white box; every failure is reported next to the numbers."""
    rng = np.random.default_rng(5)
    w = rng.normal(0, 1, (3, 16))
    model = Quantized(w, np.zeros(3))
    adapter = TorchAdapter(model, SHAPE, 3, name="masked")
    x = rng.uniform(0, 1, (30,) + SHAPE)
    y = np.argmax(adapter.predict(x).scores, axis=1)
    cfg = SweepConfig(attacks=("pgd-linf", "square-linf"), eps=(0.5,), losses=("ce",), steps=5, queries=100)
    res = run_sweep(adapter, x, y, cfg, progress=False, log=lambda m: None)
    rows = {(r["attack"], r["eps"]): r for r in res["rows"]}
    pgd_row = rows["pgd-linf", 0.5]
    print({k: r["robust_accuracy"] for k, r in rows.items()})
    # only the random start moves the images: no gradient step ever does
    assert pgd_row["stats"]["grad_zero"] == pgd_row["stats"]["grad_evals"] > 0
    assert {"gradients", "large_eps", "blackbox_vs_whitebox"} <= set(pgd_row["failed_checks"])
    assert rows["pgd-linf", 1.0]["sanity_only"] and rows["pgd-linf", 1.0]["robust_accuracy"] > 0.5
    assert rows["square-linf", 0.5]["robust_accuracy"] < pgd_row["robust_accuracy"] - 0.3
    assert not res["sanity_ok"] and "gradients" in res["failed_checks"]


# ---- torch adapter on a small CNN -----------------------------------------------------------
class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                                 nn.Flatten(), nn.Linear(4 * 4 * 4, 10))

    def forward(self, x):
        return self.net(x)


def test_torch_adapter_sweep_on_a_small_trained_cnn():
    from epsim.data import load_dataset

    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt = torch.as_tensor(ds.x_train[:300], dtype=torch.float32)
    yt = torch.as_tensor(ds.y_train[:300])
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    adapter = TorchAdapter(model, (1, 8, 8), 10, name="tiny-cnn")
    x, y = ds.x_test[:30], ds.y_test[:30]
    cfg = SweepConfig(attacks=("pgd-linf", "fgsm-linf", "square-linf"), eps=(0.05, 0.3), steps=8, queries=40)
    res = run_sweep(adapter, x, y, cfg, progress=False, log=lambda m: None)
    assert res["clean_accuracy"] >= 0.85
    rows = {(r["attack"], r["eps"]): r for r in res["rows"]}
    assert rows["pgd-linf", 0.3]["robust_accuracy"] <= rows["pgd-linf", 0.05]["robust_accuracy"]
    assert rows["pgd-linf", 1.0]["robust_accuracy"] == 0.0
    for r in res["rows"]:
        assert r["robust_accuracy"] <= r["clean_accuracy"]
        assert r["sanity_ok"], (r["attack"], r["eps"], r["failed_checks"])
        assert r["sanity"]["in_ball"]["status"] == "pass"
    assert rows["square-linf", 0.3]["sanity"]["blackbox_vs_whitebox"]["status"] == "pass"
    assert rows["pgd-linf", 0.05]["sanity"]["iterative_vs_single"]["status"] == "pass"
    with pytest.raises(EpsimError):
        adapter.input_gradient(x, y, "ce", "implicit")


def test_eps_validation():
    assert validate_eps([0.5, 0.1, 0.1], ["pgd-l2"], (1, 8, 8)) == (0.1, 0.5)
    assert validate_eps([8.0], ["pgd-l2"], (1, 8, 8)) == (8.0,)
    for bad, attack in ((-0.1, "pgd-l2"), (8.5, "pgd-l2"), (1.5, "pgd-linf"), (float("nan"), "square-l2")):
        with pytest.raises(EpsimError):
            validate_eps([bad], [attack], (1, 8, 8))
    with pytest.raises(EpsimError):
        validate_eps([], ["pgd-l2"], (1, 8, 8))


# ---- circuit adapter: the gradient paths on a small circuit -------------------------------
def small_circuit(seed=0):
    rng = np.random.default_rng(seed)
    net = build_cnn((1, 6, 6), convs=((4, 3, 1),), hidden=(), num_classes=4, input_gain_V=4.0)
    net.init_params(rng, 1.0)
    net.b = [rng.normal(0.0, 0.3, b.shape) for b in net.b]
    return net, rng


def _cos(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_circuit_gradient_paths_agree_for_attack_losses(loss):
    """The EP path (source currents in ±beta phases, nudged toward v_free − dL/dv_out) and BPTT
    (unrolled with the predictor's stopping rule) against implicit differentiation, for the
    attack losses (the squared-error case is in test_input_gradients.py)."""
    net, rng = small_circuit()
    adapter = CircuitAdapter(net, tol_A=1e-12, max_iter=5000, ep_beta=1e-3)
    x = rng.uniform(0, 1, (5, 1, 6, 6))
    y = rng.integers(0, 4, 5)
    imp = adapter.input_gradient(x, y, loss, "implicit")
    ep = adapter.input_gradient(x, y, loss, "ep")
    bptt = adapter.input_gradient(x, y, loss, "bptt")
    assert imp.converged.all() and ep.converged.all() and bptt.converged.all()
    assert np.all(_cos(ep.grad, imp.grad) >= 0.95)
    assert np.all(_cos(bptt.grad, imp.grad) >= 0.999)
    np.testing.assert_allclose(ep.loss, imp.loss, rtol=1e-6)
    # finite differences of the predictor's own loss
    h = 1e-5
    e = np.zeros_like(x)
    e[0, 0, 2, 3] = 1.0
    lf = make_loss(loss, adapter.logit_scale)

    def loss_at(xx):
        z = torch.as_tensor(adapter.predict(xx).scores)
        return lf(z, torch.as_tensor(y[:1])).numpy()[0]

    fd = (loss_at(x[:1] + h * e[:1]) - loss_at(x[:1] - h * e[:1])) / (2 * h)
    assert abs(fd - imp.grad[0, 0, 2, 3]) <= 1e-4 * max(abs(fd), 1e-3)


def test_bptt_stops_each_sample_by_the_predictors_rule():
    """BPTT unrolls each sample until its own KCL residual meets the predictor's tolerance: in
    a batch where one sample settles in far fewer sweeps than the other, each sample's
    gradient equals its gradient computed alone (a stop for the whole batch would sweep the
    early sample on, which changes its gradient by tens of percent here)."""
    rng = np.random.default_rng(0)
    net = build_mlp((1, 4, 4), hidden=(8,) * 4, num_classes=4, input_gain_V=4.0)
    net.init_params(rng, 1.0)
    net.b = [np.zeros_like(b) for b in net.b]      # no biases: a dim image settles in few sweeps
    x = rng.uniform(0, 1, (2, 1, 4, 4))
    x[0] *= 1e-3
    y = np.array([1, 2])
    adapter = CircuitAdapter(net, tol_A=1e-12, max_iter=5000)
    early, late = (adapter.predict(x[i:i + 1]).iterations for i in range(2))
    assert 2 * early <= late
    both = adapter.input_gradient(x, y, "ce", "bptt")
    assert both.converged.all()
    for i in range(2):
        alone = adapter.input_gradient(x[i:i + 1], y[i:i + 1], "ce", "bptt")
        scale = np.abs(alone.grad).max()
        assert scale > 0
        np.testing.assert_allclose(both.grad[i], alone.grad[0], rtol=1e-9, atol=1e-12 * scale)
        np.testing.assert_allclose(both.loss[i], alone.loss[0], rtol=1e-12)


def test_circuit_pgd_uses_the_solver_as_judge():
    """An attack on the circuit reports the solver's certificates and stays in the ball."""
    net, rng = small_circuit(1)
    adapter = CircuitAdapter(net)
    x = rng.uniform(0, 1, (8, 1, 6, 6))
    y = np.argmax(adapter.predict(x).scores, axis=1)
    res = pgd(grad_fn(adapter, "ce", "implicit"), adapter.predict, x, y, 0.5, "l2", 5, rng)
    assert res.stats["predictions"] >= 8 and res.stats["unconverged"] == 0
    assert 0 < res.stats["max_residual"] <= 1e-9
    assert np.all(perturbation_norm(res.x_adv, x, "l2") <= 0.5 * (1 + 1e-9))
    # judged by the predictor: an unconverged equilibrium never counts as correct
    starved = CircuitAdapter(net, max_iter=1)
    p = starved.predict(x)
    assert isinstance(p, Prediction) and not p.converged.all()
    f = fgsm(grad_fn(adapter, "ce", "implicit"), starved.predict, x, y, 0.0, "l2")
    assert not f.robust[~p.converged].any() and f.stats["unconverged"] == int((~p.converged).sum())
