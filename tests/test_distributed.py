"""torchrun data-parallel training reproduces single-process training (gloo, loopback)."""
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from epsim.training import CHECKPOINT_NAME, load_network

REPO = Path(__file__).resolve().parents[1]
ARGS = ["-m", "epsim.train", "--train-subset", "96", "--test-subset", "40", "--epochs", "2",
        "--batch-size", "8", "--no-progress"]
_SIGNAL_DEATH = re.compile(r"exitcode\s*:\s*-\d+")
_RANK_TRACEBACK = re.compile(r"\[rank\d+\]: Traceback")
_NATIVE_ERROR = re.compile(r"terminate called|what\(\)|Fatal Python error|Signal \d+|\w+Error:")


def _torchrun(args, out, env):
    """``torchrun --standalone --nproc_per_node=2 args --out out``; returns the CompletedProcess.

    A rank killed by a signal (gloo's loopback TCP transport aborts the process on a socket
    error, outside Python) is retried once in a fresh folder with a warning: it says nothing
    about the training code, which fails with a Python traceback and a positive exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    run = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    if run.returncode != 0 and _SIGNAL_DEATH.search(run.stderr) and not _RANK_TRACEBACK.search(run.stderr):
        native = [ln for ln in run.stderr.splitlines() if _NATIVE_ERROR.search(ln)][:8]
        warnings.warn("a torchrun rank died by a signal; retried once. " + " | ".join(native))
        run = subprocess.run([*cmd, "--out", str(out) + "-retry"], env=env, capture_output=True, text=True,
                             timeout=300)
        run.out = Path(str(out) + "-retry")
    else:
        run.out = Path(out)
    if run.returncode != 0:
        native = [ln for ln in run.stderr.splitlines() if _NATIVE_ERROR.search(ln)][:12]
        raise AssertionError("torchrun failed (rc %d); error lines:\n%s\n--- stderr tail ---\n%s"
                             % (run.returncode, "\n".join(native), run.stderr[-2000:]))
    return run


def test_two_processes_match_one(tmp_path):
    pytest.importorskip("torch.distributed")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *ARGS, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = _torchrun(ARGS, tmp_path / "two", env)
    assert json.loads((two.out / "metrics.json").read_text())["processes"] == 2
    net1, state1 = load_network(tmp_path / "one" / CHECKPOINT_NAME)
    net2, state2 = load_network(two.out / CHECKPOINT_NAME)
    assert state1["epoch"] == state2["epoch"] == 2
    for a, b in zip(net1.w + net1.b, net2.w + net2.b):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    h1, h2 = state1["history"][-1], state2["history"][-1]
    assert h1["test_accuracy"] == h2["test_accuracy"]
    assert h1["train_accuracy"] == h2["train_accuracy"]


@pytest.mark.parametrize("model", ["ep-cnn", "bp-cnn"])
def test_two_processes_match_one_for_software_models(model, tmp_path):
    """The torch trainer under torchrun: each rank relaxes / back-propagates its share of the
    global batch and gradients are averaged over all ranks' samples, so the EP-CNN's weights
    after two epochs are one process's up to float32 summation order. The BP-CNN's batch
    normalisation sees each rank's share only (its statistics, hence its gradients, differ
    from one process's), so there only the run and its accuracy are compared."""
    pytest.importorskip("torch.distributed")
    import torch

    args = ["-m", "epsim.train", "--model", model, "--dataset", "digits", "--train-subset", "64",
            "--test-subset", "40", "--epochs", "2", "--batch-size", "8", "--threads", "1", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = _torchrun(args, tmp_path / "two", env)
    assert two.stdout.count("test accuracy:") == 1  # rank 0 reports, the other rank is silent
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((two.out / "metrics.json").read_text())
    assert m2["processes"] == 2 and m1["processes"] == 1
    s1 = torch.load(tmp_path / "one" / CHECKPOINT_NAME, weights_only=False)["state_dict"]
    s2 = torch.load(two.out / CHECKPOINT_NAME, weights_only=False)["state_dict"]
    for key in s1 if model == "ep-cnn" else ():
        np.testing.assert_allclose(s2[key].numpy(), s1[key].numpy(), rtol=1e-4, atol=1e-5, err_msg=key)
    assert abs(m1["test_accuracy"] - m2["test_accuracy"]) <= (1 if model == "ep-cnn" else 8) / 40


def test_two_processes_stop_together_at_the_time_limit(tmp_path):
    """Under torchrun every rank stops a circuit run after the same batch once the time limit
    is reached on any of them (no rank waits for a collective the other never calls), and rank
    0 writes the metrics and the checkpoint at that batch."""
    pytest.importorskip("torch.distributed")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    two = _torchrun([*ARGS, "--time-limit", "1e-6"], tmp_path / "two", env)
    metrics = json.loads((two.out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["stop_reason"] == "time limit"
    assert [h.get("partial") for h in metrics["history"]] == [True]
    _, state = load_network(two.out / CHECKPOINT_NAME)
    assert (int(state["epoch"]), int(state["batch"])) == (0, 1)
