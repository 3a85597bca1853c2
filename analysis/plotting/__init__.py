"""The figures and tables of the analysis notebooks, one function each.

Every function takes ``results`` (a results folder: a driver ``--out`` folder or a summary
such as ``analysis/results/cpu``; default ``$EPSIM_RESULTS``, see :func:`common.results_dir`)
and ``out`` (where to write; default ``$EPSIM_FIGURES``, else ``analysis/figures``). It reads
only the results summary written by ``analysis/run_all.py`` and computes nothing new. A figure
function writes one PNG and returns its path; a table function writes ``NAME.csv`` and
``NAME.md`` and returns the Markdown to show. The notebooks (``analysis/make_notebooks.py``)
call them and :func:`show` what they return.

* 01 robustness curves: :func:`robustness_curves`, :func:`certified_vs_empirical`,
  :func:`robustness_paths`; :func:`curves_table` (:mod:`.curves`)
* 02 corruptions: :func:`corruptions_severity`, :func:`corruptions_per_corruption`,
  :func:`corruptions_grid`; :func:`severity_table`, :func:`per_corruption_table` (:mod:`.corruptions`)
* 03 adversarial examples: :func:`adversarial_examples`, :func:`mean_abs_perturbation`;
  :func:`adversarial_table` (:mod:`.adversarial`)
* 04 circuit fidelity: :func:`fidelity_spice`, :func:`fidelity_gradients`; :func:`fidelity_table`
  (:mod:`.fidelity`)
* 05 summary: :func:`summary_bars`; :func:`summary_table`, :func:`certified_summary`,
  :func:`all_numbers`, :func:`run_checks`, :func:`manifest_steps` (:mod:`.summary`)
* 06 device realism: :func:`device_realism`; :func:`device_table` (:mod:`.device`)
* 07 energy and latency: :func:`energy_overview` (printed), :func:`energy_traces`,
  :func:`energy_early_readout`, :func:`energy_per_inference`; :func:`latency_table`,
  :func:`early_readout_table` (:mod:`.energy`)

The package imports ``common`` (``analysis/common.py``) by name: put ``analysis/`` on
``sys.path`` first, as the notebooks and tests do.
"""
from __future__ import annotations

from pathlib import Path

from .adversarial import adversarial_examples, adversarial_table, mean_abs_perturbation
from .corruptions import (corruptions_grid, corruptions_per_corruption, corruptions_severity, per_corruption_table,
                          severity_table)
from .curves import certified_vs_empirical, curves_table, robustness_curves, robustness_paths
from .device import device_realism, device_table
from .energy import early_readout_table, energy_early_readout, energy_per_inference, energy_traces, latency_table
from .energy import overview as energy_overview
from .fidelity import fidelity_gradients, fidelity_spice, fidelity_table
from .summary import all_numbers, certified_summary, manifest_steps, run_checks, summary_bars, summary_table

# Every figure function and the PNG it writes; every table function and the tables it writes.
FIGURE_FUNCTIONS = {
    robustness_curves: "robustness_curves.png", certified_vs_empirical: "certified_vs_empirical.png",
    robustness_paths: "robustness_paths.png", corruptions_severity: "corruptions_severity.png",
    corruptions_per_corruption: "corruptions_per_corruption.png", corruptions_grid: "corruptions_grid.png",
    adversarial_examples: "adversarial_examples.png",
    mean_abs_perturbation: "adversarial_mean_abs_perturbation.png", fidelity_spice: "fidelity_spice.png",
    fidelity_gradients: "fidelity_gradients.png", summary_bars: "summary_bars.png",
    device_realism: "device_realism.png", energy_traces: "energy_traces.png",
    energy_early_readout: "energy_early_readout.png", energy_per_inference: "energy_per_inference.png",
}
TABLE_FUNCTIONS = {
    curves_table: "robustness_curves", severity_table: "corruptions_severity",
    per_corruption_table: "corruptions_per_corruption", adversarial_table: "adversarial_examples",
    fidelity_table: "fidelity", summary_table: "summary_table", certified_summary: "certified_summary",
    all_numbers: "all_numbers", run_checks: "run_checks", manifest_steps: "manifest_steps",
    device_table: "device_realism", latency_table: "energy_latency", early_readout_table: "energy_early_readout",
}


def show(*items):
    """Show in a notebook what the functions return: a PNG path as an image, text as Markdown
    (None is skipped)."""
    from IPython.display import Image, Markdown, display

    for item in items:
        if item is None:
            continue
        display(Image(filename=str(item)) if isinstance(item, Path) else Markdown(item))


__all__ = [
    "FIGURE_FUNCTIONS", "TABLE_FUNCTIONS", "show",
    "robustness_curves", "certified_vs_empirical", "robustness_paths", "curves_table",
    "corruptions_severity", "corruptions_per_corruption", "corruptions_grid", "severity_table", "per_corruption_table",
    "adversarial_examples", "mean_abs_perturbation", "adversarial_table",
    "fidelity_spice", "fidelity_gradients", "fidelity_table",
    "summary_table", "certified_summary", "summary_bars", "all_numbers", "run_checks", "manifest_steps",
    "device_realism", "device_table",
    "energy_overview", "energy_traces", "energy_early_readout", "energy_per_inference", "latency_table",
    "early_readout_table",
]
