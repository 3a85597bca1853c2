"""The seed's attack protocol (advep-*): its steps, no clipping, its truncated-unroll
gradient, and the gap to the harness's worst case on a small EP-CNN and a circuit."""
import numpy as np
import pytest
import torch

from epsim.models.ep_cnn import EPCNN
from epsim.robustness.adapters import CircuitAdapter, TorchAdapter
from epsim.robustness.attacks import seed_pgd
from epsim.robustness.evaluate import SweepConfig, run_sweep


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def small_ep_cnn():
    torch.manual_seed(0)
    m = EPCNN((1, 8, 8), 5, (4, 6), (1, 1), t1=60, solver="sync", tol=1e-8).double()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(2.0)
    return TorchAdapter(m, (1, 8, 8), 5, name="ep-cnn-small")


def own_labels(adapter, n=24, seed=1):
    """Images and the model's own (converged) predictions as labels: every image is clean-correct."""
    x = np.random.default_rng(seed).uniform(0, 1, (n,) + adapter.image_shape)
    return x, np.argmax(adapter.predict(x).scores, axis=1)


def test_seed_pgd_steps_project_without_clipping():
    """Linear scores: every step moves 2.5 eps / 20 along sign(g); the result stays in the
    eps-ball but may leave [0, 1]; only the final iterate is judged, and again clipped to
    [0, 1] (where this one is not adversarial)."""
    w = np.zeros((1, 1, 2, 2))
    w[0, 0, 0, 0] = 1.0
    calls = []

    def grad_fn(x, y):
        from epsim.robustness.adapters import GradientResult
        return GradientResult(np.broadcast_to(w, x.shape).copy(), np.zeros(len(x)), np.ones(len(x), bool), "lin")

    def predict(x):
        from epsim.robustness.adapters import Prediction
        calls.append(x.copy())
        s = np.stack([np.zeros(len(x)), x.reshape(len(x), -1)[:, 0] - 1.05], 1)
        return Prediction(s, np.ones(len(x), bool), None, 0)

    x = np.full((1, 1, 2, 2), 0.99)
    res = seed_pgd(grad_fn, predict, x, np.array([0]), 0.1, "linf")
    assert np.isclose(res.x_adv[0, 0, 0, 0], 1.09)  # 20 steps of 0.0125, projected at +0.1: past 1
    assert np.allclose(res.x_adv.reshape(-1)[1:], 0.99)
    assert len(calls) == 3 and not res.robust[0]  # the clean image, the final iterate, then it clipped
    # the break needs the pixel at 1.09: the same iterate clipped to [0, 1] is still classified right
    assert np.isclose(calls[2].max(), 1.0) and res.stats["robust_in_domain"].tolist() == [True]
    clipped = seed_pgd(grad_fn, predict, x, np.array([0]), 0.1, "linf", clip=True)
    assert clipped.x_adv.max() <= 1.0 and clipped.robust[0] and "robust_in_domain" not in clipped.stats


def test_seed_protocol_weakens_as_the_unroll_shortens_and_never_beats_the_harness():
    adapter = small_ep_cnn()
    x, y = own_labels(adapter)
    eps = (0.3, 0.6)
    by_unroll = {}
    for unroll in (2, 60):
        cfg = SweepConfig(attacks=("pgd-l2", "advep-l2"), eps=eps, losses=("ce", "dlr"), steps=50,
                          unroll=unroll, large_eps_check=False)
        out = run_sweep(adapter, x, y, cfg, progress=False, log=lambda *_: None)
        rows = {(r["attack"], r["eps"]): r for r in out["rows"]}
        for e in eps:
            seed_row = rows["advep-l2", e]
            assert seed_row["sanity"]["advep_ge_harness"]["status"] == "pass"
            assert seed_row["robust_accuracy"] >= rows["pgd-l2", e]["robust_accuracy"]
            assert seed_row["protocol_gap"] == pytest.approx(
                seed_row["robust_accuracy"] - rows["pgd-l2", e]["robust_accuracy"])
        by_unroll[unroll] = [rows["advep-l2", e]["robust_accuracy"] for e in eps]
    assert all(a >= b for a, b in zip(by_unroll[2], by_unroll[60]))
    assert sum(by_unroll[2]) > sum(by_unroll[60])


def test_circuit_unrolled_gradient_tends_to_the_equilibrium_gradient():
    from epsim.models.resistive import build_mlp

    net = build_mlp((1, 4, 4), hidden=(8,), num_classes=3, input_gain_V=4.0)
    net.init_params(np.random.default_rng(0))
    adapter = CircuitAdapter(net, tol_A=1e-13, max_iter=100000)
    x, y = own_labels(adapter, n=4)
    ref = adapter.input_gradient(x, y, "ce", "implicit").grad.reshape(4, -1)
    errs = []
    for n in (1, 200):
        g = adapter.unrolled_gradient(x, y, "ce", n).grad.reshape(4, -1)
        errs.append(np.linalg.norm(g - ref) / np.linalg.norm(ref))
    assert errs[1] < 1e-6 < errs[0]


def test_targeted_loss_and_targets_reach_the_gradient():
    """dlr-t's value, the target ranks, and APGD handing each still-robust image its own
    target through the subsets it attacks."""
    from epsim.robustness.adapters import GradientResult, Prediction
    from epsim.robustness.attacks import pgd, target_classes, targeted_dlr_loss

    z = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0]])
    y2 = torch.tensor([[0, 2]])
    assert float(targeted_dlr_loss(z, y2)) == pytest.approx((2.0 - 3.0) / (3.0 - 0.5 * (1.0 + 0.0)))
    scores = np.array([[3.0, 1.0, 2.0, 0.0, -1.0]])
    assert [int(target_classes(scores, np.array([0]), r)[0]) for r in (1, 2, 3)] == [2, 1, 3]

    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (6, 1, 2, 2))
    y = np.zeros(6, int)
    targets = np.arange(6) % 4 + 1
    seen = []

    def grad_fn(xq, yq):
        assert yq.shape == (len(xq), 2)
        for xi, (label, t) in zip(xq, yq):
            i = int(np.argmin(np.abs(x - xi).reshape(6, -1).max(axis=1)))
            seen.append(int(t) == targets[i] and label == 0)
        return GradientResult(np.ones_like(xq), np.zeros(len(xq)), np.ones(len(xq), bool), "t")

    def predict(xq):  # image i is broken once its first pixel exceeds 0.8 + 0.01 i
        first = xq.reshape(len(xq), -1)[:, 0]
        keep = np.array([f < 0.8 + 0.01 * int(np.argmin(np.abs(x - xi).reshape(6, -1).max(axis=1)))
                         for f, xi in zip(first, xq)])
        return Prediction(np.stack([keep * 1.0, 1.0 - keep], 1), np.ones(len(xq), bool), None, 0)

    pgd(grad_fn, predict, x, y, 0.05, "linf", 10, rng, targets=targets)
    assert seen and all(seen)


def test_harness_with_the_targeted_loss_is_at_least_as_strong():
    from epsim.models.resistive import build_mlp

    net = build_mlp((1, 4, 4), hidden=(10,), num_classes=5, input_gain_V=4.0)
    net.init_params(np.random.default_rng(3))
    adapter = CircuitAdapter(net, tol_A=1e-12, max_iter=100000)
    x, y = own_labels(adapter, n=16, seed=4)
    out = {}
    for losses in (("ce",), ("ce", "dlr-t")):
        cfg = SweepConfig(attacks=("pgd-l2",), eps=(0.4,), paths=("implicit",), losses=losses, steps=10,
                          large_eps_check=False, target_classes=2)
        rows = run_sweep(adapter, x, y, cfg, progress=False, log=lambda *_: None)["rows"]
        out[losses] = np.array(list(rows[0]["robust_mask"])) == "1"
    assert not np.any(out["ce", "dlr-t"] & ~out["ce",])


def _tiny_torch_checkpoint(tmp_path, model, channels=(4,), **extra):
    from epsim.data import Dataset
    from epsim.training.software import resolve_config, train_torch

    rng = np.random.default_rng(0)
    ds = Dataset("synthetic", rng.random((16, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, 16),
                 rng.random((6, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, 6), 3)
    cfg = resolve_config(model, "digits", epochs=1, batch_size=8, dataset="synthetic", augment=False,
                         channels=channels, paddings=(1,) * len(channels), **extra)
    train_torch(cfg, ds, tmp_path / model, progress=False, log=lambda *a: None)
    return tmp_path / model / "checkpoint.pt", ds


def test_max_iter_sets_an_ep_model_s_inference_budget_and_its_bptt_unroll(tmp_path):
    """``--max-iter N`` on a software EP model relaxes every prediction and BPTT gradient for N
    steps (recorded as ``inference_t1``); a feed-forward model refuses it before any attack."""
    from epsim.errors import EpsimError
    from epsim.robustness.adapters import load_model
    from epsim.robustness.cli import main

    path, ds = _tiny_torch_checkpoint(tmp_path, "ep-cnn", channels=(4, 6), t1=6, t2=2, tol=1e-12)
    trained = load_model(path).adapter
    longer = load_model(path, max_iter=9).adapter
    assert trained.settings()["inference_t1"] == 6 and longer.settings()["inference_t1"] == 9
    x, y = ds.x_test.astype(np.float64), ds.y_test
    xt = torch.as_tensor(x, dtype=longer.dtype)
    with torch.no_grad():
        for adapter, steps in ((trained, 6), (longer, 9)):
            own = adapter.model.readout(adapter.model.relax(xt, max_iter=steps, solver="sync").state)
            np.testing.assert_allclose(adapter.predict(x).scores, own.double().numpy(), rtol=1e-6, atol=1e-7)
    assert not np.allclose(trained.predict(x).scores, longer.predict(x).scores)
    g6, g9 = (a.input_gradient(x, y, "ce", "bptt").grad for a in (trained, longer))
    assert not np.allclose(g6, g9)  # the gradient runs through the longer relaxation
    bp, _ = _tiny_torch_checkpoint(tmp_path, "bp-cnn")
    with pytest.raises(EpsimError, match="feed-forward bp-cnn.*--max-iter") as exc:
        main(["--checkpoint", str(bp), "--attack", "pgd-l2", "--eps", "0.5", "--max-iter", "5",
              "--out", str(tmp_path / "r"), "--no-progress"])
    assert "\n" not in str(exc.value) and not (tmp_path / "r" / "robustness.json").exists()


def test_the_unroll_follows_the_model_s_own_dynamics():
    """An EP-CNN trained with odd/even sweeps (the DCHN preset's solver) is unrolled with them."""
    torch.manual_seed(0)
    m = EPCNN((1, 8, 8), 5, (4, 6), (1, 1), t1=60, solver="async", tol=1e-8, cost="squared-error").double()
    adapter = TorchAdapter(m, (1, 8, 8), 5, name="ep-cnn-async")
    x, y = own_labels(adapter, n=4)
    got = adapter.unrolled_gradient(x, y, "ce", 3).grad
    for solver, same in (("async", True), ("sync", False)):
        xt = torch.as_tensor(x).requires_grad_(True)
        with torch.enable_grad():
            logits = m.readout(m.relax(xt, max_iter=3, tol=0.0, solver=solver).state)
            torch.nn.functional.cross_entropy(logits, torch.as_tensor(y), reduction="sum").backward()
        assert np.allclose(got, xt.grad.numpy(), atol=1e-12) == same
