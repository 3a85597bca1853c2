"""Run bookkeeping shared by the circuit and the software (torch) trainers.

A run lives in a folder ``OUT`` (or only in memory): ``OUT/checkpoint.pt`` holds the
trainer's payload (parameters, optimizer state, config) plus the run's position, running
sums, history and wall time; ``OUT/metrics.json`` holds the final metrics. Both are written
atomically (a temporary file, then a rename), so a run killed mid-write keeps the previous
file.

Replay: epoch ``e`` visits the training set in the permutation drawn from ``(seed, e)``
(:func:`epoch_order`), and a checkpoint records the next batch and the running sums of the
epoch in progress, so resuming from any checkpoint replays exactly the batches an
uninterrupted run would have seen, with the same results.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..checkpoint import check_same_epochs, load_checkpoint, remove_stale_temporaries, save_checkpoint, write_json
from ..errors import EpsimError

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """``(n,)`` the order in which epoch ``epoch`` (0-based) of run ``seed`` visits ``n`` samples."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def num_batches(n: int, batch_size: int) -> int:
    """Batches of an epoch over ``n`` samples (the last one may be short)."""
    return (n + batch_size - 1) // batch_size


class Run:
    """Where a training run is saved and resumed from, its clock and its stopping rules.

    Args:
        out_dir: folder of ``checkpoint.pt`` and ``metrics.json`` (None: nothing is written).
        resume: continue the run saved in ``out_dir``.
        writes: whether this process writes the files (False on the other ranks of a
            multi-process run).
        checkpoint_interval_s: wall time between mid-epoch checkpoints (s).
        time_limit_s: training stops after the batch that reaches this wall time, counted
            over all sessions of the run (s; None: no limit).
        stop_after_batches: stop as if killed after this many batches of this session
            (tests of resumption; None: never).
        log: receives the run's messages.

    After :meth:`resume_from` (or for a new run): ``epoch`` and ``batch`` are where training
    starts (0-based epoch, next batch), ``history`` the per-epoch metrics so far and ``tally``
    the saved running sums of the epoch in progress (None: start the sums afresh).
    """

    def __init__(self, out_dir=None, *, resume=False, writes=True, checkpoint_interval_s=60.0,
                 time_limit_s=None, stop_after_batches=None, log=print):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None
        self.resume, self.writes, self.log = resume, writes, log
        self.checkpoint_interval_s, self.time_limit_s = checkpoint_interval_s, time_limit_s
        self.stop_after_batches = stop_after_batches
        self.epoch, self.batch, self.history, self.tally = 0, 0, [], None
        self._wall_before, self._batches = 0.0, 0
        self.start_clock()

    # ------------------------------------------------------------------ resuming
    def saved_state(self) -> dict | None:
        """The checkpoint dict of the run to continue, or None for a new run.

        Raises:
            EpsimError: ``out_dir`` already holds a run and ``resume`` is off.
        """
        path = self.checkpoint_path
        if path is None or not path.exists():
            if self.resume:
                self.log("no checkpoint to resume from; starting a new run")
            return None
        if not self.resume:
            raise EpsimError(f"{self.out_dir} already holds a run; pass --resume to continue it "
                             "or choose another --out")
        return load_checkpoint(path)

    def check_resumable(self, saved_config, config, state: dict) -> None:
        """Refuse to resume ``state`` (saved with ``saved_config``) with another ``--epochs`` or
        with settings ``config.compatible_with`` names as different.

        Raises:
            EpsimError: naming the recorded epochs or the differing options.
        """
        check_same_epochs(self.checkpoint_path, saved_config.epochs, config.epochs, int(state["epoch"]))
        diff = config.compatible_with(saved_config)
        if diff:
            raise EpsimError(f"cannot resume {self.checkpoint_path}: options {', '.join(diff)} differ "
                             "from the saved run")

    def resume_from(self, state: dict) -> None:
        """Take the position, history, running sums and wall time of the checkpoint ``state``;
        remove temporaries an interrupted write left behind."""
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.history, self.tally = list(state["history"]), state["tally"]
        self._wall_before = float(state["wall_seconds"])
        remove_stale_temporaries(self.checkpoint_path)
        self.log(f"resuming {self.checkpoint_path} at epoch {self.epoch + 1}, batch {self.batch}")

    # ------------------------------------------------------------------ clock and stopping
    def start_clock(self) -> None:
        """Start this session's wall clock (and the interval of mid-epoch checkpoints)."""
        self._t_start = self._last_save = time.perf_counter()

    def wall(self) -> float:
        """Wall time of the run so far, over all its sessions (s)."""
        return self._wall_before + time.perf_counter() - self._t_start

    def batch_done(self) -> bool:
        """Count a finished batch; True when the run must stop as if killed (``stop_after_batches``)."""
        self._batches += 1
        return self.stop_after_batches is not None and self._batches >= self.stop_after_batches

    def out_of_time(self) -> bool:
        """Whether the run's wall time has reached ``time_limit_s``."""
        return self.time_limit_s is not None and self.wall() >= self.time_limit_s

    # ------------------------------------------------------------------ writing
    def save(self, epoch: int, batch: int, tally, payload) -> None:
        """Write the checkpoint: ``payload()`` (the trainer's dict: model, optimizer, config),
        then the position (``epoch``, next ``batch``), ``tally.as_dict()`` (the epoch's running
        sums), the history and the wall time."""
        if self.checkpoint_path is not None and self.writes:
            save_checkpoint(self.checkpoint_path, {**payload(), "epoch": epoch, "batch": batch,
                                                   "tally": tally.as_dict(), "history": self.history,
                                                   "wall_seconds": self.wall()})
        self._last_save = time.perf_counter()

    def save_if_due(self, epoch: int, batch: int, tally, payload) -> None:
        """:meth:`save` when ``checkpoint_interval_s`` has passed since the last checkpoint."""
        if time.perf_counter() - self._last_save > self.checkpoint_interval_s:
            self.save(epoch, batch, tally, payload)

    def write_metrics(self, metrics: dict) -> None:
        """Write ``metrics`` to ``OUT/metrics.json`` (strict JSON, atomically)."""
        if self.out_dir is not None and self.writes:
            write_json(self.out_dir / METRICS_NAME, metrics)


def summary_metrics(config, history: list, wall_seconds: float, **fields) -> dict:
    """The metrics both trainers report: the last epoch's test and train accuracy, the wall
    time (s), the trainer's ``fields``, the run's config and its per-epoch ``history``."""
    last = history[-1] if history else {}
    return {"test_accuracy": last.get("test_accuracy"), "train_accuracy": last.get("train_accuracy"),
            "wall_seconds": wall_seconds, **fields, "config": asdict(config), "history": history}


def progress_bar(iterable, total: int, initial: int, desc: str, enabled: bool):
    """``iterable`` behind a tqdm bar of ``total`` steps starting at ``initial`` (or as it is)."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def show(bar, **values) -> None:
    """Show ``values`` beside a progress bar (nothing without one)."""
    if hasattr(bar, "set_postfix"):
        bar.set_postfix(values, refresh=False)
