"""Shared figure plumbing: figures without pyplot (headless, thread-safe, shown by notebooks),
PNG writing, and the checks tests use.

Every plot function returns a :class:`matplotlib.figure.Figure` made by :func:`new_figure`,
so nothing depends on a display or on pyplot's global state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

__all__ = ["new_figure", "save_png", "NoData", "TASK_CMAP", "ACC_CMAP"]

#: colours of tasks and methods in line plots; accuracy heatmaps
TASK_CMAP = "tab10"
ACC_CMAP = "viridis"


class NoData(Exception):
    """The run does not hold what this figure needs (the report lists it as skipped)."""


def new_figure(width: float = 6.4, height: float = 4.0, **kw) -> Figure:
    """A pyplot-free figure with constrained layout (labels do not overlap)."""
    return Figure(figsize=(width, height), layout="constrained", **kw)


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically; returns the path."""
    from ..io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def rendered(fig: Figure) -> np.ndarray:
    """The figure's pixels ``[H, W, 4]`` (uint8), rendered with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())
