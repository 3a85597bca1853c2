"""The pipeline behind ``analysis/run_all.py``, one job per module.

* :mod:`.scales`: what each scale runs (``PLANS``: models and how to train them, attacks, fidelity,
  device sweep and energy settings).
* :mod:`.plan`: a scale's steps (:class:`~.plan.Step`: command line, outputs, dependencies).
* :mod:`.manifest`: the results folder's ``manifest.json`` and reading its result files.
* :mod:`.runner`: running the steps as subprocesses, resumably, recording each in the manifest.
* :mod:`.summary`: gathering the results into the notebooks' compact ``OUT/summary``
  (with :mod:`.parsers` for the CLIs that print a table instead of writing a file).
* :mod:`.publish`: copying a summary into the repository and refreshing the README headline block.

``analysis/steps.py`` holds the small result-writing steps that no project CLI offers; the plan
runs it like any other command line.
"""
from __future__ import annotations

from pathlib import Path

ANALYSIS = Path(__file__).resolve().parents[1]  # analysis/
REPO = ANALYSIS.parent
