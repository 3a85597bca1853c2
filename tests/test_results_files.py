"""Results files say what happened (issue 17): strict JSON, refused options instead of silently
ignored ones, --epochs fixed on --resume, stale temporaries removed, one rule for unconverged
equilibria."""
import json

import numpy as np
import pytest

from epsim import data as data_mod
from epsim.training import circuit as training_mod
from epsim.checkpoint import save_checkpoint, write_json
from epsim.data import Dataset, load_dataset
from epsim.errors import EpsimError
from epsim.training import CHECKPOINT_NAME, TrainConfig, train

QUIET = dict(progress=False, log=lambda *a: None)
TINY = dict(model="mlp", train_subset=40, test_subset=20, epochs=1, batch_size=8)


def _refuse_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def strict_load(path):
    """Parse ``path`` as RFC 8259 JSON: Infinity / NaN are errors (what ``json.tool`` strictness means)."""
    return json.loads(path.read_text(), parse_constant=_refuse_constant)


@pytest.fixture(scope="module")
def tiny_digits():
    return load_dataset("digits", train_subset=TINY["train_subset"], test_subset=TINY["test_subset"])


def test_write_json_is_strict_and_flags_non_finite_values(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"a": float("inf"), "b": [1.0, np.float64("nan"), {"c": -np.inf}],
                      "d": np.arange(2), "e": 1.5})
    data = strict_load(path)
    assert data["a"] is None and data["b"] == [1.0, None, {"c": None}] and data["e"] == 1.5
    assert data["d"] == [0, 1]
    assert data["non_finite"] == ["a", "b.1", "b.2.c"]
    write_json(path, {"a": 1.0})
    assert "non_finite" not in strict_load(path)


def test_metrics_with_an_infinite_residual_are_strict_json(tmp_path, tiny_digits, monkeypatch):
    real = training_mod.evaluate

    def failed_solve(*args, **kwargs):  # e.g. a spice backend failure reports an infinite residual
        return dict(real(*args, **kwargs), max_residual_A=float("inf"))

    monkeypatch.setattr(training_mod, "evaluate", failed_solve)
    train(TrainConfig(**TINY), tiny_digits, tmp_path, **QUIET)
    m = strict_load(tmp_path / "metrics.json")
    assert m["max_residual_A"] is None and m["history"][0]["max_residual_A"] is None
    assert set(m["non_finite"]) == {"max_residual_A", "history.0.max_residual_A"}


def test_tiny_training_and_robustness_runs_write_strict_json(tmp_path, tiny_digits, one_thread):
    from epsim.robustness.cli import main as robustness

    run = tmp_path / "run"
    train(TrainConfig(**TINY), tiny_digits, run, **QUIET)
    metrics = strict_load(run / "metrics.json")
    assert metrics["unconverged_counted_as"] == "wrong"
    robustness(["--checkpoint", str(run / CHECKPOINT_NAME), "--attack", "pgd-l2,square-l2", "--eps", "0.5",
                "--test-subset", "4", "--steps", "2", "--queries", "5", "--grad-path", "implicit", "--loss", "ce",
                "--no-large-eps-check", "--out", str(tmp_path / "robust"), "--no-progress"])
    result = strict_load(tmp_path / "robust" / "robustness.json")
    assert result["n"] == 4 and result["rows"]


def test_torch_options_are_refused_for_circuit_models(monkeypatch):
    from epsim import train as train_cli

    monkeypatch.setattr(train_cli, "load_dataset", lambda *a, **k: pytest.fail("loaded data"))
    with pytest.raises(EpsimError, match=r"--stop-at-accuracy apply to the torch models \(.*\) only"):
        train_cli.main(["--stop-at-accuracy", "0.5", "--no-progress"])
    with pytest.raises(EpsimError, match=r"--device, --preset apply to the torch models \(.*\) only"):
        train_cli.main(["--model", "mlp", "--device", "cpu", "--preset", "cifar10-paper"])


def test_resume_with_other_epochs_is_refused_naming_the_recorded_ones(tmp_path, tiny_digits):
    train(TrainConfig(**TINY), tiny_digits, tmp_path, **QUIET)
    with pytest.raises(EpsimError, match=r"started with --epochs 1 \(finished\)"):
        train(TrainConfig(**dict(TINY, epochs=2)), tiny_digits, tmp_path, resume=True, **QUIET)
    assert strict_load(tmp_path / "metrics.json")["epochs"] == 1
    resumed = train(TrainConfig(**TINY), tiny_digits, tmp_path, resume=True, **QUIET)
    assert resumed["epochs"] == 1 and len(resumed["history"]) == 1


def test_torch_resume_with_other_epochs_is_refused(tmp_path):
    from epsim.training.software import resolve_config, train_torch

    rng = np.random.default_rng(0)
    ds = Dataset("synthetic", rng.random((16, 3, 8, 8), dtype=np.float32), rng.integers(0, 4, 16),
                 rng.random((8, 3, 8, 8), dtype=np.float32), rng.integers(0, 4, 8), 4)
    small = dict(channels=(4, 8), paddings=(1, 1), lr=0.05, batch_size=8, dataset="synthetic")
    train_torch(resolve_config("bp-cnn", "cifar10-small", epochs=1, **small), ds, tmp_path, **QUIET)
    with pytest.raises(EpsimError, match=r"started with --epochs 1 \(finished\)"):
        train_torch(resolve_config("bp-cnn", "cifar10-small", epochs=3, **small), ds, tmp_path, resume=True,
                    **QUIET)


def test_stale_checkpoint_temporaries_are_removed(tmp_path, tiny_digits):
    train(TrainConfig(**TINY), tiny_digits, tmp_path, **QUIET)
    stale = tmp_path / f".{CHECKPOINT_NAME}.k1ll3d.tmp"
    stale.write_bytes(b"torn")
    train(TrainConfig(**TINY), tiny_digits, tmp_path, resume=True, **QUIET)  # finished: no new save
    assert not stale.exists()
    stale.write_bytes(b"torn")
    other = tmp_path / ".other.pt.x.tmp"
    other.write_bytes(b"not ours")
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {"kind": "circuit"})
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_NAME, "metrics.json", other.name])


def test_unconverged_equilibria_count_as_wrong(tmp_path, tiny_digits):
    """One sweep per phase: no free phase meets 1e-9 A, so no prediction may count as right."""
    m = train(TrainConfig(**dict(TINY, max_iter=1)), tiny_digits, tmp_path, **QUIET)
    h = m["history"][0]
    assert h["test_unconverged"] == TINY["test_subset"] and h["train_unconverged"] == TINY["train_subset"]
    assert m["test_accuracy"] == 0.0 and m["train_accuracy"] == 0.0
    assert strict_load(tmp_path / "metrics.json")["unconverged_counted_as"] == "wrong"
