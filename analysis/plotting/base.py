"""What every figure function shares: a new figure, saving it, a placeholder figure or panel.

Figures are :class:`matplotlib.figure.Figure` objects made without ``pyplot``: nothing is
shown or kept open, whatever the backend, and each one is saved as PNG by
:func:`common.save_figure` (which prints the path it wrote).
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

import common as C


def subplots(nrows=1, ncols=1, figsize=None, **kw):
    """A new figure and its axes, as ``pyplot.subplots`` returns them."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def save(fig, name: str, out=None) -> Path:
    """Save ``fig`` as ``name`` in ``out`` (default ``$EPSIM_FIGURES``); returns the PNG's path."""
    return C.save_figure(fig, name, out)


def placeholder(name: str, why: str, out=None) -> Path:
    """A one-line figure saying why there is nothing to draw, saved as ``name``."""
    fig, ax = subplots(figsize=(8, 1.6))
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=9, wrap=True)
    ax.set_axis_off()
    return save(fig, name, out)


def blank_panels(axes, why: str) -> None:
    """Write ``why`` across each of ``axes`` (the panels a missing result would fill) and hide them."""
    for ax in axes:
        ax.text(0.5, 0.5, why, ha="center")
        ax.set_axis_off()
