"""Figures of what a network does: spikes, HLOP/GPM projection activity, continual-learning
curves, sparsity and dormant neurons, benchmarks; an HTML report and an animation.

Every function returns a :class:`matplotlib.figure.Figure` (no pyplot: works headless and
shows in notebooks). Run-level figures take a :class:`~neuroplastic.plot.runs.Run` (from
:func:`~neuroplastic.plot.runs.load_runs`); array-level ones take numpy arrays.
"""

from .runs import Run, load_runs
from .style import NoData, new_figure, save_png

__all__ = ["Run", "load_runs", "NoData", "new_figure", "save_png"]
