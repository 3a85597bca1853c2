"""BP-CNN, AdvCNN, ViT baselines, PGD, augmentation and the torch trainer's plumbing."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from epsim.data import Dataset
from epsim.errors import EpsimError
from epsim.models.baselines import ADV_PRESETS, BP_PRESETS, VIT_PRESETS, BPCNN, ViT
from epsim.robustness.attacks import adversarial_examples as pgd
from epsim.training.software import (augment_batch, build_model, load_torch_model, make_optimizer,
                                  pick_device, resolve_config, train_step, train_torch, _generator)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: threads only add synchronisation cost on shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL = {
    "bp-cnn": dict(channels=(8, 16), paddings=(1, 1), lr=0.05),
    "adv-cnn": dict(channels=(8, 16), paddings=(1, 1), lr=0.05, adv_steps=2),
    "vit": dict(embed_dim=24, depth=2, heads=12, mlp_dim=48, patch=4, lr=1e-3),
}


def fixed_batch(n=16, shape=(3, 8, 8), classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n,) + shape, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("model", ["bp-cnn", "adv-cnn", "vit"])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(model):
    cfg = resolve_config(model, "cifar10-small", batch_size=16, **SMALL[model])
    torch.manual_seed(0)
    net_ = build_model(cfg, (3, 8, 8), 4)
    opt = make_optimizer(net_, cfg)
    x, y = fixed_batch()
    gen_seed = (0, 0, 0)

    def loss_now():
        net = copy.deepcopy(net_)          # train-mode batch norm must not move the real running stats
        inputs = x
        if model == "adv-cnn":   # the same PGD examples the step trains on
            net.eval()
            inputs = pgd(net, x, y, cfg.adv_eps, cfg.adv_norm, cfg.adv_steps, None,
                         rng=_generator(gen_seed, "cpu"))
        net.train()
        with torch.no_grad():
            return float(F.cross_entropy(net(inputs), y))

    before = loss_now()
    stats = train_step(net_, opt, cfg, x, y, _generator(gen_seed, "cpu"))
    assert stats["loss_sum"] / stats["n"] == pytest.approx(before, rel=1e-4)
    assert loss_now() < before


def test_pgd_stays_in_the_ball_and_in_pixel_range_and_raises_the_loss():
    torch.manual_seed(0)
    net = BPCNN((3, 8, 8), 4, (8, 16), (1, 1)).eval()
    x, y = fixed_batch()
    x[0] = 0.0
    x[1] = 1.0                      # pixels at the box edges: clipping must act
    with torch.no_grad():
        clean = float(F.cross_entropy(net(x), y))
    for norm, eps in (("l2", 0.5), ("linf", 8 / 255)):
        adv = pgd(net, x, y, eps, norm, steps=5, rng=0)
        d = (adv - x).flatten(1)
        size = d.norm(dim=1) if norm == "l2" else d.abs().amax(1)
        assert float(size.max()) <= eps * (1 + 1e-5)
        assert float(size.max()) > 0.5 * eps                     # it does move
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        with torch.no_grad():
            assert float(F.cross_entropy(net(adv), y)) > clean
        assert torch.equal(adv, pgd(net, x, y, eps, norm, steps=5, rng=0))   # seeded


def test_pgd_rejects_bad_arguments():
    net = BPCNN((3, 8, 8), 4, (8,), (1,)).eval()
    x, y = fixed_batch(2)
    with pytest.raises(EpsimError, match="norm"):
        pgd(net, x, y, 0.1, "l1")
    with pytest.raises(EpsimError, match="eps"):
        pgd(net, x, y, -0.1, "l2")


def test_adversarial_training_sees_perturbed_inputs(monkeypatch):
    """The AdvCNN step trains on PGD examples inside the ball, not on the clean batch."""
    import epsim.robustness.attacks as pgd_module

    seen = {}
    real = pgd_module.adversarial_examples

    def spy(model_fn, x, y, eps, norm, steps, step_size, rng=None, **kw):
        out = real(model_fn, x, y, eps, norm, steps, step_size, rng, **kw)
        seen.update(x=x, adv=out, eps=eps, norm=norm, steps=steps)
        return out

    monkeypatch.setattr(pgd_module, "adversarial_examples", spy)
    cfg = resolve_config("adv-cnn", "cifar10-small", adv_norm="linf", adv_eps=8 / 255, adv_steps=3,
                         **{k: v for k, v in SMALL["adv-cnn"].items() if k != "adv_steps"})
    net = build_model(cfg, (3, 8, 8), 4)
    x, y = fixed_batch()
    train_step(net, make_optimizer(net, cfg), cfg, x, y, _generator((0, 0, 0), "cpu"))
    assert seen["norm"] == "linf" and seen["steps"] == 3
    d = (seen["adv"] - seen["x"]).abs().amax()
    assert 0 < float(d) <= 8 / 255 + 1e-6


def test_models_normalise_pixels_inside():
    net = BPCNN((3, 8, 8), 4, (8,), (1,), mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    sd = net.state_dict()
    assert torch.allclose(sd["normalize.mean"].flatten(), torch.tensor([0.1, 0.2, 0.3]))
    vit = ViT((3, 8, 8), 4, patch=4, embed_dim=24, depth=1, heads=12, mlp_dim=24)
    assert "normalize.std" in vit.state_dict()
    assert vit(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_presets_follow_the_brief():
    assert BP_PRESETS["cifar10-paper"]["channels"] == (128, 256, 512, 512)
    assert BP_PRESETS["cifar100-paper"]["channels"] == (128, 256, 512, 1024)
    assert ADV_PRESETS["cifar10-paper"]["adv_norm"] == "l2" and ADV_PRESETS["cifar10-paper"]["adv_eps"] == 0.5
    v = VIT_PRESETS["cifar10-paper"]
    assert (v["depth"], v["heads"], v["patch"]) == (7, 12, 4) and v["embed_dim"] % 12 == 0


@pytest.mark.parametrize("model", ["bp-cnn", "vit"])
def test_paper_presets_build_and_run_a_batch(model):
    cfg = resolve_config(model, "cifar10-paper", batch_size=2)
    net = build_model(cfg, (3, 32, 32), 10, "cifar10")
    opt = make_optimizer(net, cfg)
    stats = train_step(net, opt, cfg, torch.rand(2, 3, 32, 32), torch.tensor([1, 2]), _generator((0,), "cpu"))
    assert stats["n"] == 2 and np.isfinite(stats["loss_sum"])


def test_vit_configuration_errors():
    with pytest.raises(EpsimError, match="multiple of 12"):
        ViT((3, 8, 8), 4, patch=4, embed_dim=20, heads=12)
    with pytest.raises(EpsimError, match="patch size"):
        ViT((3, 10, 10), 4, patch=4, embed_dim=24, heads=12)


def test_augment_crops_and_flips_windows_of_the_padded_image():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 3, 8, 8, generator=g)
    out = augment_batch(x, torch.Generator().manual_seed(2), padding=2)
    assert out.shape == x.shape
    xp = F.pad(x, (2, 2, 2, 2), mode="replicate")
    kinds = set()
    for i in range(len(x)):
        hits = [(oy, ox, f) for oy in range(5) for ox in range(5) for f in (False, True)
                if torch.equal(out[i], (lambda w: w.flip(2) if f else w)(xp[i, :, oy:oy + 8, ox:ox + 8]))]
        assert hits, i
        kinds.update((h[2], (h[0], h[1]) == (2, 2)) for h in hits)
    assert (True, False) in kinds and (False, False) in kinds       # flips and shifts both occur
    again = augment_batch(x, torch.Generator().manual_seed(2), padding=2)
    assert torch.equal(out, again)


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(EpsimError, match="no CUDA"):
            pick_device("cuda")


def synthetic(n_train=32, n_test=12, shape=(3, 8, 8), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset("synthetic", rng.random((n_train,) + shape, dtype=np.float32),
                   rng.integers(0, classes, n_train), rng.random((n_test,) + shape, dtype=np.float32),
                   rng.integers(0, classes, n_test), classes)


@pytest.mark.parametrize("model", ["bp-cnn", "adv-cnn", "vit"])
def test_metrics_resume_and_reload(model, tmp_path):
    ds = synthetic()
    cfg = resolve_config(model, "cifar10-small", epochs=2, batch_size=8, dataset="synthetic", augment=True,
                         **SMALL[model])  # crops and flips on: resume must replay their draws too
    quiet = dict(progress=False, log=lambda *a: None)
    ref = train_torch(cfg, ds, tmp_path / "a", **quiet)
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["backend"] == "torch" and m["model"] == model and m["epochs"] == 2 and m["n_test"] == 12
    assert len(m["history"]) == 2 and 0 <= m["test_accuracy"] <= 1
    train_torch(cfg, ds, tmp_path / "b", stop_after_batches=5, **quiet)
    res = train_torch(cfg, ds, tmp_path / "b", resume=True, **quiet)
    assert res["test_accuracy"] == ref["test_accuracy"]
    a, b = (load_torch_model(tmp_path / d / "checkpoint.pt") for d in "ab")
    assert a.epsim_kind == model and not a.training
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), atol=1e-5), k
    with torch.no_grad():
        acc = float((a(torch.from_numpy(ds.x_test)).argmax(1) == torch.from_numpy(ds.y_test)).float().mean())
    assert acc == pytest.approx(m["test_accuracy"])


def test_load_torch_model_rejects_circuit_checkpoints(tmp_path):
    from epsim.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "c.pt", {"kind": "circuit"})
    with pytest.raises(EpsimError, match="not one of the torch models"):
        load_torch_model(tmp_path / "c.pt")


def test_time_limit_stops_and_still_writes_metrics(tmp_path):
    ds = synthetic()
    cfg = resolve_config("bp-cnn", "cifar10-small", epochs=50, batch_size=8, dataset="synthetic", **SMALL["bp-cnn"])
    m = train_torch(cfg, ds, tmp_path, time_limit_s=1e-9, progress=False, log=lambda *a: None)
    assert m["stopped_early"] and m["epochs_completed"] < 1
    assert json.loads((tmp_path / "metrics.json").read_text())["stopped_early"] is True


def test_hold_out_is_a_seeded_disjoint_split():
    from epsim.training.software import hold_out

    x, y = torch.arange(50.0).reshape(50, 1), torch.arange(50)
    xt, yt, xv, yv = hold_out(x, y, 10, seed=3)
    assert len(yv) == 10 and len(yt) == 40
    assert set(yt.tolist()).isdisjoint(yv.tolist()) and set(yt.tolist()) | set(yv.tolist()) == set(range(50))
    assert torch.equal(hold_out(x, y, 10, seed=3)[3], yv) and not torch.equal(hold_out(x, y, 10, seed=4)[3], yv)
    with pytest.raises(EpsimError, match="leaves no training images"):
        hold_out(x, y, 50, seed=0)


def _learnable(n_train=400, n_test=40, seed=0):
    """Two classes told apart by the mean brightness: a small CNN learns them in a few batches."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_train + n_test)
    x = (rng.random((n_train + n_test, 3, 8, 8)) * 0.5 + 0.5 * y[:, None, None, None]).astype(np.float32)
    return Dataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 2)


def test_stop_at_accuracy_stops_on_held_out_images(tmp_path):
    ds = _learnable()
    cfg = resolve_config("bp-cnn", "cifar10-small", epochs=20, batch_size=8, dataset="synthetic",
                         stop_at_accuracy=0.9, val_subset=100, val_every=5, **SMALL["bp-cnn"])
    m = train_torch(cfg, ds, tmp_path, progress=False, log=lambda *a: None)
    assert m["stop_reason"] == "accuracy" and m["stopped_early"] and m["epochs_completed"] < 20
    assert m["validation_accuracy"] >= 0.9 and m["n_validation"] == 100
    # the check sees only held-out training images: the last entry's validation accuracy is
    # the one that stopped the run, recorded apart from the test accuracy
    last = m["history"][-1]
    assert last["validation_accuracy"] == m["validation_accuracy"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["stop_reason"] == "accuracy"


def test_unreachable_accuracy_target_runs_every_epoch():
    ds = synthetic()   # random labels: 0.99 on held-out images is out of reach
    cfg = resolve_config("bp-cnn", "cifar10-small", epochs=2, batch_size=8, dataset="synthetic",
                         stop_at_accuracy=0.99, val_subset=8, **SMALL["bp-cnn"])
    m = train_torch(cfg, ds, None, progress=False, log=lambda *a: None)
    assert m["stop_reason"] is None and not m["stopped_early"] and m["epochs_completed"] == 2
    assert len(m["history"]) == 2 and all("validation_accuracy" in h for h in m["history"])
