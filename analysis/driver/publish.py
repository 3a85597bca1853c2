"""Publishing a summary: a copy in the repository and the README's headline block from it."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from common import headline_markdown

from . import REPO
from .manifest import MANIFEST, read_json


def headline_markers(scale: str) -> tuple:
    """The lines that open and close a scale's headline block in the README."""
    return f"<!-- headline:{scale}:start -->", f"<!-- headline:{scale}:end -->"


def publish(summary: Path, dest: Path, readme: Path | None = None, log=print):
    """Copy ``summary`` to ``dest`` and rewrite the headline block of its scale in ``readme``
    (``<!-- headline:SCALE:start -->`` … ``<!-- headline:SCALE:end -->``) from it."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in summary.rglob("*"):
        if p.is_file():
            t = dest / p.relative_to(summary)
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, t)
    log(f"published {summary} -> {dest}")
    if readme is not None and readme.is_file():
        text = readme.read_text()
        scale = (read_json(dest / MANIFEST) or {}).get("scale")
        start, end = headline_markers(scale)
        if start not in text or end not in text:
            log(f"{readme} has no headline block for scale {scale} ({start} … {end}): left unchanged")
        else:
            try:
                rel = dest.resolve().relative_to(REPO)
            except ValueError:
                rel = dest
            block = f"{start}\n{headline_markdown(dest, source=str(rel))}\n{end}"
            text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
            readme.write_text(text)
            log(f"updated the headline block of {readme}")
