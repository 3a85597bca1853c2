"""The results folder's bookkeeping: ``OUT/manifest.json`` and reading its result files.

The manifest records the scale, the plan (step names in order), the git commit, and for every
step its command, outputs, wall time, exit status and log file. Several ``run_all.py``
processes may work in one folder at once on disjoint ``--only`` sets (one per core): each
writes back only the steps it ran or looked at, merged into the manifest on disk under a lock.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import tempfile
from pathlib import Path

MANIFEST = "manifest.json"


class UserError(Exception):
    """A mistake on the command line: printed as one line, exit status 2."""


def now():
    """The time now, to the second (ISO 8601)."""
    return _dt.datetime.now().isoformat(timespec="seconds")


def load_manifest(out: Path) -> dict:
    """``out/manifest.json`` ({} when there is none)."""
    path = out / MANIFEST
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path} is not valid JSON; move it away to start a fresh manifest") from None
    return {}


def save_manifest(out: Path, manifest: dict, steps=None):
    """Write ``out/manifest.json`` atomically (an interrupted write leaves the old one).

    ``steps``: the names of the steps whose records this process owns; the others are taken
    from the manifest on disk, so that processes running other steps in the same folder keep
    theirs (None: every record of ``manifest``), and the plan is the union of theirs and this
    process's (one started from older code may know fewer steps; the description ``what`` is
    that of the last process whose plan added steps). The read-merge-write holds a
    lock on ``out/.manifest.lock``."""
    with open(out / ".manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = dict(manifest)
        if steps is not None:
            disk = load_manifest(out)
            on_disk = disk.get("steps", {})
            mine = manifest.get("steps", {})
            merged["steps"] = {**on_disk, **{k: mine[k] for k in steps if k in mine}}
            # a process started from older code may know fewer steps: it never drops another's,
            # and the scale's description stays the one of the plan that added steps last
            plan = list(disk.get("plan", []))
            known = set(plan)
            added = [n for n in manifest.get("plan", []) if n not in known]
            merged["plan"] = plan + added
            if not added and "what" in disk:
                merged["what"] = disk["what"]
        fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=out)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(merged, indent=2))
        os.replace(tmp, out / MANIFEST)


def read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
