"""Publishing a summary: a copy in the repository and the README's headline block from it."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from common import headline_markdown

from . import REPO


HEAD_START, HEAD_END = "<!-- headline:start -->", "<!-- headline:end -->"


def publish(summary: Path, dest: Path, readme: Path | None = None, log=print):
    """Copy ``summary`` to ``dest`` and rewrite the headline block of ``readme`` from it."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in summary.rglob("*"):
        if p.is_file():
            t = dest / p.relative_to(summary)
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, t)
    log(f"published {summary} -> {dest}")
    if readme is not None and readme.is_file():
        text = readme.read_text()
        if HEAD_START in text and HEAD_END in text:
            try:
                rel = dest.resolve().relative_to(REPO)
            except ValueError:
                rel = dest
            block = f"{HEAD_START}\n{headline_markdown(dest, source=str(rel))}\n{HEAD_END}"
            text = re.sub(re.escape(HEAD_START) + r".*?" + re.escape(HEAD_END), lambda _: block, text, flags=re.S)
            readme.write_text(text)
            log(f"updated the headline block of {readme}")
