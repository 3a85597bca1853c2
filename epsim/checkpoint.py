"""Atomic, validated checkpoints (``checkpoint.pt``) and result files (JSON).

A checkpoint is a plain dict of tensors and Python scalars saved with ``torch.save`` and
read back with ``torch.load(weights_only=True)``; it is written to a temporary file in
the same folder, flushed to disk, then renamed over the old one, so a kill at any moment
leaves either the old or the new checkpoint, never a torn one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import EpsimError

FORMAT = "epsim-checkpoint"
VERSION = 1


def remove_stale_temporaries(path) -> list:
    """Delete the ``.NAME.*.tmp`` files a killed :func:`_atomic_write` of ``path`` left behind
    (one writer per file is assumed); return the paths removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:  # gone already, or a folder we may only read: leave it
            pass
    return removed


def glob_escape(name: str) -> str:
    """``name`` with the glob wildcards ``*?[`` matched literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _atomic_write(path: Path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


NON_FINITE_KEY = "non_finite"


def write_json(path, obj):
    """Write ``obj`` as indented strict JSON (RFC 8259), atomically.

    JSON has no infinity or NaN: such a float is written as ``null`` and, when ``obj`` is a
    dict, its dotted path (list items by index, e.g. ``"history.2.max_residual_A"``) is listed
    under ``"non_finite"``, so a reader can tell a missing value from an infinite one.
    """
    clean, non_finite = strict_json_value(obj)
    if non_finite and isinstance(clean, dict):
        clean[NON_FINITE_KEY] = non_finite
    data = json.dumps(clean, indent=2, allow_nan=False).encode()
    _atomic_write(Path(path), lambda fh: fh.write(data))


def strict_json_value(obj, where: str = "") -> tuple:
    """``(copy, paths)``: ``obj`` with numpy values and paths made plain, every non-finite
    float replaced by None, and the dotted paths of those floats."""
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    elif isinstance(obj, Path):
        return str(obj), []
    if isinstance(obj, float):
        return (obj, []) if np.isfinite(obj) else (None, [where or "."])
    if isinstance(obj, dict):
        items = [(str(k), strict_json_value(v, f"{where}.{k}" if where else str(k))) for k, v in obj.items()]
        return {k: v for k, (v, _) in items}, [p for _, (_, ps) in items for p in ps]
    if isinstance(obj, (list, tuple)):
        items = [strict_json_value(v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(obj)]
        return [v for v, _ in items], [p for _, ps in items for p in ps]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj, []
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__} at {where or 'top level'}")


def _to_torch(obj):
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_torch(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _to_numpy(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_numpy(v) for v in obj]
    return obj


def save_checkpoint(path, payload: dict):
    """Save ``payload`` (numpy arrays allowed anywhere) atomically to ``path``."""
    import torch

    data = dict(payload, format=FORMAT, version=VERSION)
    _atomic_write(Path(path), lambda fh: torch.save(_to_torch(data), fh))


def load_checkpoint(path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; tensors come back as numpy."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EpsimError(f"checkpoint {path} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling problem is a bad file, not a bug
        raise EpsimError(f"checkpoint {path} cannot be read ({type(exc).__name__}): "
                         "not an epsim checkpoint or a damaged file") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EpsimError(f"{path} is not an epsim checkpoint")
    if data.get("version") != VERSION:
        raise EpsimError(f"checkpoint {path} has format version {data.get('version')}, "
                         f"this epsim reads version {VERSION}")
    return _to_numpy(data)


def check_same_epochs(ckpt_path, saved_epochs: int, epochs: int, epochs_done: int) -> None:
    """A resumed run keeps its ``--epochs`` (the learning-rate schedule spans the run, and
    metrics.json records one length): a different value is refused, naming the recorded one."""
    if int(saved_epochs) != int(epochs):
        state = "finished" if epochs_done >= saved_epochs else f"{epochs_done} done"
        raise EpsimError(f"cannot resume {ckpt_path} with --epochs {epochs}: the run was started with "
                         f"--epochs {saved_epochs} ({state}); resume it with --epochs {saved_epochs} "
                         "or start a new run in another --out")
