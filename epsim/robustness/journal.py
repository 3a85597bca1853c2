"""The finished parts of a robustness sweep, kept on disk so an interrupted sweep resumes.

A sweep is a sequence of units: the gradient probe at the clean images, one white-box attack
run (a gradient path × loss × target at one ε, on the images still robust), one run of the
seed's protocol or one Square run at one ε. Each finished unit is recorded in ``OUT/sweep-progress.json`` (written atomically) with
the indices it attacked, its robust mask over them, its counters and the geometry of its
perturbations. Every unit draws its random numbers from a generator seeded by its own key,
so a resumed sweep skips the recorded units and computes the others exactly as an
uninterrupted sweep would. The file carries a digest of the checkpoint, the images and the
settings; another sweep in the same folder is refused. It is removed once the sweep's
results are written.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..checkpoint import _atomic_write
from ..errors import EpsimError

PROGRESS_NAME = "sweep-progress.json"


def sweep_digest(*parts) -> str:
    """sha256 over ``parts``: numpy arrays by dtype, shape and bytes, files (``Path``) by
    content, anything else by its sorted-key JSON."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        elif isinstance(p, Path):
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def check_record(path: Path, recorded_digest, digest: str, resume: bool, what: str):
    """Refuse the progress record ``path`` of an interrupted ``what`` (e.g. "robustness sweep")
    unless ``resume`` is on and ``recorded_digest`` (a callable reading it) is ``digest``."""
    if not resume:
        raise EpsimError(f"{path.parent} holds an interrupted {what} ({path.name}); "
                         "pass --resume to continue it or choose another --out")
    if recorded_digest() != digest:
        raise EpsimError(f"{path} records a {what} of another checkpoint, image set or settings; "
                         f"choose another --out, or delete {path.name} to start over")


def _indices_digest(idx) -> str:
    return hashlib.sha256(np.asarray(idx, np.int64).tobytes()).hexdigest()[:16]


def _to_json(stats: dict) -> dict:
    out = {}
    for k, v in stats.items():
        if isinstance(v, np.ndarray):
            out[k] = {"array": v.tolist(), "dtype": v.dtype.str}
        elif isinstance(v, (np.integer, int)):
            out[k] = int(v)
        else:
            out[k] = float(v)
    return out


def _from_json(stats: dict) -> dict:
    return {k: (np.asarray(v["array"], dtype=v["dtype"]) if isinstance(v, dict) else v) for k, v in stats.items()}


class SweepJournal:
    """The recorded units of one sweep in ``folder`` (see the module docstring).

    Args:
        folder: the sweep's output folder. digest: :func:`sweep_digest` of what defines the
            sweep. resume: continue a recorded sweep; without it an existing record is an error
            (it would be discarded).
    Raises:
        EpsimError: a record exists and ``resume`` is off, or the record is of another sweep
            or unreadable.
    """

    def __init__(self, folder, digest: str, resume: bool):
        self.path = Path(folder) / PROGRESS_NAME
        self.digest = digest
        self.units: dict = {}
        self.reused = 0
        if not self.path.exists():
            return
        data = {}

        def recorded_digest():
            try:
                data.update(json.loads(self.path.read_text()))
                data["units"]
            except (OSError, ValueError, KeyError, TypeError):
                raise EpsimError(f"{self.path} is not a readable sweep record; delete it to start the sweep "
                                 "over") from None
            return data.get("digest")

        check_record(self.path, recorded_digest, digest, resume, "robustness sweep")
        self.units = data["units"]

    def __len__(self) -> int:
        return len(self.units)

    def run(self, key: str, idx, compute):
        """``(robust, stats, geo)`` of unit ``key`` on images ``idx``: the recorded one when the
        unit was recorded on the same indices, else ``compute()``'s (then recorded).
        ``robust`` is (len(idx),) bool; ``stats`` the attack's counters; ``geo`` a dict of floats."""
        stamp = _indices_digest(idx)
        hit = self.units.get(key)
        if hit is not None and hit["indices"] == stamp:
            self.reused += 1
            return (np.array([c == "1" for c in hit["robust"]], bool), _from_json(hit["stats"]),
                    dict(hit["geo"]))
        robust, stats, geo = compute()
        robust = np.asarray(robust, bool)
        self.units[key] = {"indices": stamp, "robust": "".join("1" if r else "0" for r in robust),
                           "stats": _to_json(stats), "geo": {k: float(v) for k, v in geo.items()}}
        data = json.dumps({"digest": self.digest, "units": self.units}).encode()
        _atomic_write(self.path, lambda fh: fh.write(data))
        return robust, stats, geo

    def finish(self):
        """Drop the record (the sweep's results are written)."""
        self.path.unlink(missing_ok=True)
