r"""Continual-learning metrics (GEM, Lopez-Paz & Ranzato 2017).

``R[i, j]`` is the accuracy on task ``j`` after training task ``i`` (``T`` tasks),
``b_j`` the accuracy of the untrained network on task ``j``:

.. math::
    ACC = \frac1T \sum_j R_{T-1,j}, \qquad
    BWT = \frac{1}{T-1} \sum_{j<T-1} (R_{T-1,j} - R_{j,j}), \qquad
    FWT = \frac{1}{T-1} \sum_{j>0} (R_{j-1,j} - b_j)

Averages are over ``T-1`` terms (the official GEM code divides by ``T``; we do not).
BWT and FWT are ``None`` for a single task.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import UserError

__all__ = ["acc", "bwt", "fwt", "summarize"]


def _matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise UserError(f"accuracy matrix must be square and non-empty, got shape {R.shape}")
    return R


def acc(R) -> float:
    """Average final accuracy over all tasks."""
    R = _matrix(R)
    return float(R[-1].mean())


def bwt(R) -> float | None:
    """Backward transfer (negative = forgetting)."""
    R = _matrix(R)
    T = R.shape[0]
    if T < 2:
        return None
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def fwt(R, baseline: Sequence[float] | None) -> float | None:
    """Forward transfer against the untrained network's accuracies ``baseline``."""
    R = _matrix(R)
    T = R.shape[0]
    if T < 2 or baseline is None:
        return None
    b = np.asarray(baseline, dtype=float)
    if b.shape != (T,):
        raise UserError(f"baseline must have one accuracy per task ({T}), got {b.shape}")
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def summarize(R, baseline: Sequence[float] | None = None) -> dict[str, float | None]:
    """``{"acc", "bwt", "fwt"}`` of an accuracy matrix (percent in, percent out)."""
    return {"acc": acc(R), "bwt": bwt(R), "fwt": fwt(R, baseline)}
