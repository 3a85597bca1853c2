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


def _atomic_write(path: Path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically."""
    data = json.dumps(obj, indent=2, default=_json_default).encode()
    _atomic_write(Path(path), lambda fh: fh.write(data))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


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
