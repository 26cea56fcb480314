r"""Continual-learning figures: the accuracy matrix, each task's accuracy over the sequence,
the training loss per task, and several methods side by side.

Array-level functions take what ``run.h5`` holds (``R[i, j]`` in percent, the untrained
accuracies ``b_j``, the per-step losses of each task); the ``run_*`` wrappers take a
:class:`~neuroplastic.plot.runs.Run` (or a run directory) and the ``compare_*`` ones a list
of runs. Every function returns a :class:`matplotlib.figure.Figure` and raises
:class:`~neuroplastic.plot.style.NoData` when the run lacks what the figure needs.

:data:`RUN_FIGURES` and :data:`COMPARE_FIGURES` list the figures in reading order
(``name -> function``; the names are file-name safe).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ..metrics import summarize
from .runs import Run, load_runs
from .style import ACC_CMAP, TASK_CMAP, NoData, new_figure

__all__ = [
    "RUN_FIGURES",
    "COMPARE_FIGURES",
    "accuracy_matrix",
    "task_accuracy",
    "losses",
    "method_metrics",
    "method_task_accuracy",
    "run_accuracy_matrix",
    "run_task_accuracy",
    "run_losses",
    "compare_accuracy",
    "compare_task_accuracy",
    "colors",
    "as_run",
    "as_runs",
    "run_labels",
    "summary_of",
    "baseline_of",
    "task_names",
]

RunLike = Run | str | Path


# --------------------------------------------------------------------------- shared helpers


def colors(n: int) -> list:
    """``n`` distinguishable colours (tab10 up to 10, then evenly spaced on turbo)."""
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps[TASK_CMAP]
        return [cmap(k) for k in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(x) for x in np.linspace(0.05, 0.95, n)]


def as_run(run: RunLike) -> Run:
    """A :class:`Run`, or the first method's run of a run directory."""
    if isinstance(run, Run):
        return run
    return load_runs(run)[0]


def as_runs(runs: Sequence[RunLike] | str | Path) -> list[Run]:
    """Runs from a list of runs / run directories, or every method of one run directory."""
    if isinstance(runs, str | Path):
        return load_runs(runs)
    out: list[Run] = []
    for r in runs:
        out.extend([r] if isinstance(r, Run) else load_runs(r))
    return out


def run_labels(runs: Sequence[Run]) -> list[str]:
    """``run.label`` of each run, with the parent directory added where two would be equal."""
    labels = [r.label for r in runs]
    if len(set(labels)) == len(labels):
        return labels
    return [f"{lab} ({r.path.parent.name})" if labels.count(lab) > 1 else lab for lab, r in zip(labels, runs)]


def task_names(tasks: Sequence[str] | None, n: int) -> list[str]:
    """``tasks`` padded / cut to ``n`` names (``task j`` where missing)."""
    names = [str(t) for t in (tasks or [])][:n]
    return names + [f"task {j}" for j in range(len(names), n)]


def category_ticks(ax, axis: str, positions: Sequence[float], labels: Sequence[str], fontsize: float = 8.5,
                   top: bool = False, ref=None) -> None:
    """Category tick labels on ``axis`` ("x" or "y"), thinned and (x) rotated when they would
    not fit side by side (``top``: the labels of a top axis, rotated upwards; ``ref``: the axes
    whose width they share, for a secondary axis)."""
    positions, labels = list(positions), list(labels)
    n = len(labels)
    step = max(1, math.ceil(n / 16))
    pos, lab = positions[::step], labels[::step]
    if axis != "x":
        ax.set_yticks(pos, lab, fontsize=fontsize)
        return
    ax.set_xticks(pos, lab, fontsize=fontsize)
    longest = max((len(s) for s in lab), default=0)
    box = (ref or ax).get_position()
    per_label = ax.figure.get_figwidth() * box.width * 0.9 / max(len(lab), 1)
    if longest * fontsize * 0.62 / 72 > 0.92 * per_label:
        for t in ax.get_xticklabels():
            t.set_rotation(35)
            t.set_horizontalalignment("left" if top else "right")
            t.set_rotation_mode("anchor")


def mark_tasks(ax, starts: Sequence[float], names: Sequence[str], end: float, top_labels: bool = True) -> None:
    """Dotted lines at the task boundaries; the task names on a top axis, centred on each task."""
    for s in starts[1:]:
        ax.axvline(s, color="0.45", lw=0.8, ls=":", zorder=0)
    if not top_labels or not len(starts):
        return
    edges = list(starts) + [end]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    top = ax.secondary_xaxis("top")
    top.tick_params(length=0, pad=2)
    category_ticks(top, "x", centres, list(names)[: len(centres)], fontsize=7.5, top=True, ref=ax)


def _finite(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def summary_of(run: Run) -> dict[str, float | None]:
    """``{"acc", "bwt", "fwt"}`` from ``metrics.json``, else computed from the matrix (None
    where it cannot be: a run interrupted before its last task has no final ACC)."""
    m = run.metrics
    if all(k in m for k in ("acc", "bwt", "fwt")):
        return {k: _finite(m[k]) for k in ("acc", "bwt", "fwt")}
    R = run.acc_matrix
    if R is None or R.shape[0] == 0:
        return {"acc": None, "bwt": None, "fwt": None}
    k = R.shape[0]
    b = baseline_of(run)
    out = summarize(R[:, :k], b[:k] if b is not None and len(b) >= k else None)
    return {key: _finite(v) for key, v in out.items()}


def baseline_of(run: Run) -> np.ndarray | None:
    b = run.h5.get("baseline")
    if b is None:
        b = run.metrics.get("baseline")
    if b is None:
        return None
    b = np.asarray(b, dtype=np.float64).ravel()
    return b if b.size else None


# --------------------------------------------------------------------------- array level


def _matrix(R, tasks) -> tuple[np.ndarray, int, int, list[str]]:
    """``R`` as a float ``[tasks_done, T]`` array with its sizes and task names."""
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 1:
        R = R[None, :]
    if R.ndim != 2 or R.size == 0:
        raise NoData("no accuracy matrix (no task finished)")
    return R, R.shape[0], R.shape[1], task_names(tasks, R.shape[1])


def accuracy_matrix(R, tasks: Sequence[str] | None = None, baseline=None, title: str | None = None,
                    summary: Mapping[str, float | None] | None = None) -> Figure:
    """Heatmap of ``R[i, j]`` (percent; rows = after training task ``i``, columns = evaluated
    on task ``j``) on a fixed 0-100 colour scale, values written in the cells, the diagonal
    (each task right after its own training) outlined; ACC/BWT/FWT in the title (``summary``,
    or computed when ``R`` is square)."""
    R, n_done, T, names = _matrix(R, tasks)
    if summary is None and n_done == T:
        b = baseline if baseline is not None and np.size(baseline) == T else None
        summary = summarize(R, b)
    fig = new_figure(min(13.0, max(5.0, 0.62 * T + 2.9)), min(10.0, max(3.4, 0.5 * n_done + 2.3)))
    ax = fig.add_subplot()
    im = ax.imshow(R, cmap=ACC_CMAP, vmin=0, vmax=100, aspect="auto", interpolation="nearest")
    if T <= 16:
        size = 9 if T <= 5 else 8 if T <= 8 else 7 if T <= 12 else 6
        fmt = "{:.1f}" if T <= 6 else "{:.0f}"
        for i in range(n_done):
            for j in range(T):
                v = R[i, j]
                if not math.isfinite(v):
                    continue
                r, g, b_, _ = im.cmap(im.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b_ < 0.5  # text colour by the cell's luminance
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=size,
                        color="white" if dark else "black", fontweight="bold" if i == j else "normal")
    for j in range(min(n_done, T)):
        ax.add_patch(Rectangle((j - 0.5, j - 0.5), 1, 1, fill=False, ec="#e8413c", lw=1.6))
    category_ticks(ax, "x", range(T), names)
    category_ticks(ax, "y", range(n_done), names[:n_done])
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    head = title or "Accuracy matrix R[i, j] (%)"
    parts = []
    if summary:
        if summary.get("acc") is not None:
            parts.append(f"ACC {summary['acc']:.1f}%")
        for k in ("bwt", "fwt"):
            if summary.get(k) is not None:
                parts.append(f"{k.upper()} {summary[k]:+.1f}")
    if n_done < T:
        parts.append(f"{n_done} of {T} tasks trained")
    ax.set_title(head + ("\n" + ",  ".join(parts) if parts else ""), fontsize=10)
    fig.colorbar(im, ax=ax, label="accuracy (%)", fraction=0.06, pad=0.02)
    return fig


def task_accuracy(R, baseline=None, tasks: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Each task's accuracy over the sequence: one line per task ``j``, solid from its own
    training on (``R[j, j], R[j+1, j], ...``: what is kept or forgotten), thin dashed before
    it (the untrained network's ``b_j`` at "untrained", then ``R[i, j]`` for ``i < j``); the
    black line is the average accuracy over the tasks trained so far."""
    R, n_done, T, names = _matrix(R, tasks)
    b = np.asarray(baseline, dtype=np.float64).ravel() if baseline is not None else None
    if b is not None and b.size != T:
        b = None
    off = 1 if b is not None else 0  # x of "after task i" is i + off
    fig = new_figure(min(12.0, max(6.4, 0.55 * (n_done + off) + 4.6)), 4.2)
    ax = fig.add_subplot()
    cols = colors(T)
    handles = []
    for j in range(T):
        pre_x = ([0] if b is not None else []) + [i + off for i in range(min(j, n_done))]
        pre_y = ([b[j]] if b is not None else []) + [R[i, j] for i in range(min(j, n_done))]
        if j < n_done and pre_x:  # connect to the point right after training task j
            pre_x, pre_y = pre_x + [j + off], pre_y + [R[j, j]]
        if len(pre_x) > 1:
            ax.plot(pre_x, pre_y, color=cols[j], lw=0.9, ls="--", alpha=0.45)
        elif pre_x:
            ax.plot(pre_x, pre_y, color=cols[j], ls="none", marker=".", alpha=0.6)
        if j < n_done:
            xs = [i + off for i in range(j, n_done)]
            ax.plot(xs, R[j:n_done, j], color=cols[j], lw=1.8, marker="o", ms=4, zorder=2)
        handles.append(Line2D([], [], color=cols[j], lw=1.8, marker="o", ms=4, label=names[j]))
    avg = [float(np.mean(R[i, : min(i + 1, T)])) for i in range(n_done)]
    # under the tasks' lines (after task 0 the average is task 0's own accuracy)
    ax.plot([i + off for i in range(n_done)], avg, color="black", lw=3.2, marker="s", ms=8, zorder=1.5)
    handles += [Line2D([], [], color="black", lw=3.2, marker="s", ms=8, label="average over tasks\ntrained so far"),
                Line2D([], [], color="0.4", lw=0.9, ls="--", label="before its training")]
    labels_x = (["untrained"] if b is not None else []) + names[:n_done]
    category_ticks(ax, "x", range(n_done + off), labels_x)
    ax.set_xlim(-0.3, n_done + off - 0.7)
    ax.set_ylim(0, 102)
    ax.set_xlabel("after training task")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Accuracy on each task over the sequence", fontsize=10)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, ncol=1 if len(handles) <= 14 else 2,
               title="task", title_fontsize=8, frameon=False)
    return fig


def _loss_list(data) -> list[np.ndarray]:
    if isinstance(data, Mapping):
        keys = sorted(data, key=lambda k: int(str(k).rsplit("_", 1)[-1]) if str(k).rsplit("_", 1)[-1].isdigit()
                      else 10**9)
        return [np.asarray(data[k], dtype=np.float64).ravel() for k in keys]
    return [np.asarray(v, dtype=np.float64).ravel() for v in data]


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average ignoring NaNs (same length)."""
    if window <= 1 or y.size < 3:
        return y
    ok = np.isfinite(y)
    k = np.ones(window)
    num = np.convolve(np.where(ok, y, 0.0), k, mode="same")
    den = np.convolve(ok.astype(float), k, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def losses(per_task, tasks: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """The training loss of every step, the tasks one after the other (raw in light colour, a
    moving average on top), the task boundaries dotted and the task names on the top axis.
    ``per_task``: ``{"task_0": losses, ...}`` (as in ``run.h5``) or a list of arrays."""
    segs = _loss_list(per_task)
    if not segs or sum(s.size for s in segs) == 0 or not any(np.isfinite(s).any() for s in segs):
        raise NoData("no training losses recorded")
    names = task_names(tasks, len(segs))
    cols = colors(len(segs))
    fig = new_figure(min(12.0, max(6.4, 0.5 * len(segs) + 5.0)), 3.8)
    ax = fig.add_subplot()
    starts, x0 = [], 0
    total = sum(s.size for s in segs)
    window = max(1, min(total // 60, 50))
    for j, y in enumerate(segs):
        starts.append(x0 - 0.5)
        if y.size:
            x = np.arange(x0, x0 + y.size)
            if window > 1:
                ax.plot(x, y, color=cols[j], lw=0.6, alpha=0.35)
                ax.plot(x, _smooth(y, window), color=cols[j], lw=1.7)
            else:
                ax.plot(x, y, color=cols[j], lw=1.4, marker="." if y.size < 30 else None)
        x0 += y.size
    mark_tasks(ax, starts, names, x0 - 0.5)
    ax.set_xlim(-0.5, x0 - 0.5)
    finite = np.concatenate([s[np.isfinite(s)] for s in segs])
    log = bool(finite.min() > 0 and finite.max() / finite.min() > 100)
    if log:  # a diverging task would flatten the others on a linear scale
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=min(0.0, float(finite.min())))
    ax.set_xlabel("training step (all tasks in order)")
    ax.set_ylabel("training loss" + (" (log scale)" if log else ""))
    ax.grid(axis="y", alpha=0.3)
    note = f" (lines: moving average over {window} steps)" if window > 1 else ""
    ax.set_title((title or "Training loss per task") + note, fontsize=10)
    return fig


def method_metrics(table: Mapping[str, Mapping[str, float | None]], title: str | None = None) -> Figure:
    """ACC / BWT / FWT bars of several methods (``{label: {"acc", "bwt", "fwt"}}``), one panel
    per metric that any method has: ACC on 0-100 %, BWT and FWT (percentage points) around 0."""
    labels = list(table)
    if not labels:
        raise NoData("no runs to compare")
    specs = [("acc", "ACC: final average accuracy", "ACC (%)"),
             ("bwt", "BWT: backward transfer\n(< 0: forgetting)", "BWT (percentage points)"),
             ("fwt", "FWT: forward transfer", "FWT (percentage points)")]
    specs = [s for s in specs if any(_finite(table[lab].get(s[0])) is not None for lab in labels)]
    if not specs:
        raise NoData("no ACC/BWT/FWT in any run (no run finished its tasks)")
    n = len(labels)
    cols = colors(n)
    width = min(13.0, max(6.0, len(specs) * (0.42 * n + 1.7)))
    longest = max(len(s) for s in labels)
    rotate = n * max(longest, 4) > 28 / 3 * (0.42 * n + 1.7) or longest > 12
    fig = new_figure(width, 3.9 + (0.06 * min(longest, 30) if rotate else 0))
    axes = fig.subplots(1, len(specs), squeeze=False)[0]
    for ax, (key, name, ylabel) in zip(axes, specs):
        vals = [_finite(table[lab].get(key)) for lab in labels]
        x = np.arange(n)
        heights = [v if v is not None else 0.0 for v in vals]
        ax.bar(x, heights, color=cols, width=0.7, edgecolor="black", lw=0.5)
        if key == "acc":
            ax.set_ylim(0, 112)
            ax.set_yticks(range(0, 101, 20))
        else:
            m = max([abs(v) for v in vals if v is not None] + [1.0])
            ax.set_ylim(-1.45 * m, 1.45 * m)
            ax.axhline(0, color="black", lw=0.8)
        span = ax.get_ylim()[1] - ax.get_ylim()[0]
        for xi, v in zip(x, vals):
            if v is None:
                ax.text(xi, 0.02 * span if key == "acc" else 0.0, "n/a", ha="center", va="bottom", fontsize=8,
                        color="0.35")
                continue
            txt = f"{v:.1f}" if key == "acc" else f"{v:+.1f}"
            below = v < 0
            ax.text(xi, v + (-0.02 if below else 0.02) * span, txt, ha="center", va="top" if below else "bottom",
                    fontsize=8 if n <= 6 else 7)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_xticks(x, labels, fontsize=8.5)
        if rotate:
            for t in ax.get_xticklabels():
                t.set_rotation(35)
                t.set_horizontalalignment("right")
                t.set_rotation_mode("anchor")
        ax.set_xlabel("method")
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=9.5)
        ax.grid(axis="y", alpha=0.3)
    shown = " / ".join(k.upper() for k, _, _ in specs)
    missing = "" if len(specs) == 3 else " (BWT and FWT need two tasks or more)" if len(specs) == 1 else ""
    fig.suptitle(title or f"Methods side by side: {shown}{missing}", fontsize=11)
    return fig


def method_task_accuracy(matrices: Mapping[str, Any], tasks: Sequence[str] | None = None,
                         title: str | None = None) -> Figure:
    """Several methods' accuracy matrices (``{label: R}``) as two panels: the average accuracy
    over the tasks trained so far after each task, and the final accuracy on each task."""
    mats = {lab: np.asarray(R, dtype=np.float64) for lab, R in matrices.items() if R is not None and np.size(R)}
    mats = {lab: (R[None, :] if R.ndim == 1 else R) for lab, R in mats.items()}
    if not mats:
        raise NoData("no accuracy matrix in any run")
    labels = list(mats)
    cols = dict(zip(labels, colors(len(labels))))
    T = max(R.shape[1] for R in mats.values())
    n_max = max(R.shape[0] for R in mats.values())
    if T == 1:
        raise NoData("a single task: no sequence to compare (its accuracy is in the ACC bars)")
    names = task_names(tasks, T)
    fig = new_figure(min(13.0, max(8.0, 0.9 * T + 5.5)), 4.3)
    ax1, ax2 = fig.subplots(1, 2)
    ms = 5 if T <= 12 else 3
    partial = False
    for lab, R in mats.items():
        k = R.shape[0]
        avg = [float(np.mean(R[i, : min(i + 1, R.shape[1])])) for i in range(k)]
        ax1.plot(range(k), avg, color=cols[lab], lw=1.8, marker="o", ms=ms)
        last = R[k - 1, : min(k, R.shape[1])]  # the tasks trained (an interrupted run has fewer)
        ax2.plot(range(last.size), last, color=cols[lab], lw=1.2, marker="o", ms=ms, alpha=0.9)
        partial |= k < R.shape[1]
    for ax in (ax1, ax2):
        ax.set_ylim(0, 102)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.4, (n_max if ax is ax1 else T) - 0.6)
    category_ticks(ax1, "x", range(n_max), names[:n_max])
    category_ticks(ax2, "x", range(T), names)
    ax1.set_xlabel("after training task")
    ax2.set_xlabel("evaluated on task")
    ax1.set_title("Average accuracy over the tasks trained so far", fontsize=9.5)
    ax2.set_title("Accuracy on each task after the last task" + (" trained" if partial else ""), fontsize=9.5)
    def legend_label(lab):
        k, t = mats[lab].shape
        return f"{lab} ({k} of {t} tasks trained)" if k < t else lab

    handles = [Line2D([], [], color=cols[lab], lw=1.8, marker="o", ms=5, label=legend_label(lab)) for lab in labels]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8.5, frameon=False)
    fig.suptitle(title or "Methods side by side: accuracy over the sequence", fontsize=11)
    return fig


# --------------------------------------------------------------------------- run level


def _matrix_or_nodata(run: Run) -> np.ndarray:
    R = run.acc_matrix
    if R is None:
        raise NoData(f"{run.label}: no accuracy matrix (no task finished)")
    return R


def run_accuracy_matrix(run: RunLike) -> Figure:
    """:func:`accuracy_matrix` of a run (ACC/BWT/FWT from its ``metrics.json``)."""
    run = as_run(run)
    R = _matrix_or_nodata(run)
    summary = summary_of(run) if R.shape[0] == R.shape[1] or run.metrics else None
    return accuracy_matrix(R, run.tasks, baseline_of(run), title=f"{run.label}: accuracy matrix R[i, j] (%)",
                           summary=summary)


def run_task_accuracy(run: RunLike) -> Figure:
    """:func:`task_accuracy` of a run."""
    run = as_run(run)
    return task_accuracy(_matrix_or_nodata(run), baseline_of(run), run.tasks,
                         title=f"{run.label}: accuracy on each task over the sequence")


def run_losses(run: RunLike) -> Figure:
    """:func:`losses` of a run (``run.h5`` ``losses/task_i``)."""
    run = as_run(run)
    per_task = run.h5.get("losses")
    if not isinstance(per_task, Mapping) or not per_task:
        raise NoData(f"{run.label}: no training losses in run.h5")
    names = run.tasks
    return losses(per_task, names, title=f"{run.label}: training loss per task")


def compare_accuracy(runs: Sequence[RunLike] | str | Path) -> Figure:
    """:func:`method_metrics` of several runs (one bar per run, labelled ``run.label``)."""
    runs = as_runs(runs)
    table = {}
    for lab, r in zip(run_labels(runs), runs):
        R = r.acc_matrix
        if R is not None and R.shape[0] < R.shape[1]:  # interrupted: its metrics cover fewer tasks
            lab = f"{lab}\n({R.shape[0]} of {R.shape[1]} tasks)"
        table[lab] = summary_of(r)
    return method_metrics(table)


def compare_task_accuracy(runs: Sequence[RunLike] | str | Path) -> Figure:
    """:func:`method_task_accuracy` of several runs."""
    runs = as_runs(runs)
    mats = {lab: r.acc_matrix for lab, r in zip(run_labels(runs), runs)}
    tasks = max((r.tasks for r in runs), key=len, default=None)
    return method_task_accuracy(mats, tasks)


#: one run's figures, in reading order
RUN_FIGURES: dict[str, Callable[[Run], Figure]] = {
    "accuracy_matrix": run_accuracy_matrix,
    "task_accuracy": run_task_accuracy,
    "losses": run_losses,
}

#: figures of several runs side by side, in reading order
COMPARE_FIGURES: dict[str, Callable[[list[Run]], Figure]] = {
    "compare_accuracy": compare_accuracy,
    "compare_task_accuracy": compare_task_accuracy,
}
