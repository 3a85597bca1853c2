"""The digits circuit checkpoint the benchmarks measure on: a given one, or the default
``python -m epsim.train`` run (seed 0) trained into a temporary folder."""
from __future__ import annotations

import tempfile
from pathlib import Path

from epsim.data import load_dataset
from epsim.training import TrainConfig, train


def digits_checkpoint(path=None) -> Path:
    if path is not None:
        return Path(path)
    tmp = Path(tempfile.mkdtemp(prefix="epsim-bench-"))
    train(TrainConfig(), load_dataset("digits"), tmp, progress=False, log=lambda *_: None)
    return tmp / "checkpoint.pt"
