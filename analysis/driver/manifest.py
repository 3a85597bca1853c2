"""The results folder's bookkeeping: ``OUT/manifest.json`` and reading its result files.

The manifest records the scale, the plan (step names in order), the git commit, and for every
step its command, outputs, wall time, exit status and log file.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
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


def save_manifest(out: Path, manifest: dict):
    """Write ``out/manifest.json`` (through a temporary file, so an interrupted write leaves the old one)."""
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / MANIFEST)


def read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
