r"""Sparsity and dormant-neuron figures: per-layer sparsity over the tasks, the sparse-training
schedule over the training steps (GraNet/GMP/RigL/SET: target and reached sparsity, regrown
synapses, death rate), dormant ratios per layer (after each task, and during training when
the ``dormant`` plugin ran), and pictures of the synapse masks.

Array-level functions take what ``run.h5`` and the checkpoints hold; the ``run_*`` wrappers
take a :class:`~neuroplastic.plot.runs.Run` (or a run directory). :data:`RUN_FIGURES` lists
them in reading order. Every function returns a :class:`matplotlib.figure.Figure` and raises
:class:`~neuroplastic.plot.style.NoData` when the run lacks what the figure needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .continual import as_run, category_ticks, colors, mark_tasks, task_names
from .runs import Run
from .style import NoData, new_figure

__all__ = [
    "RUN_FIGURES",
    "SPARSE_PLUGINS",
    "sparsity_per_task",
    "sparse_schedule",
    "dormant_ratios",
    "mask_images",
    "block_density",
    "run_sparsity",
    "run_sparse_schedule",
    "run_dormant",
    "run_masks",
]

#: the plugins whose schedule history ``run.h5`` keeps under ``/plugins/<name>/``
SPARSE_PLUGINS = ("granet", "gmp", "rigl", "set", "static")
_PLUGIN_TITLE = {"granet": "GraNet", "gmp": "GMP", "rigl": "RigL", "set": "SET", "static": "static mask"}

RunLike = Run | str | Path


def _layer_series(data: Mapping[str, object] | None) -> dict[str, np.ndarray]:
    """``{layer: float array}`` of a ``run.h5`` group (non-array entries dropped)."""
    out = {}
    for k, v in (data or {}).items():
        if isinstance(v, Mapping):
            continue
        a = np.asarray(v, dtype=np.float64).ravel()
        if a.size:
            out[str(k)] = a
    return out


def _split_overall(series: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    layers = {k: v for k, v in series.items() if k != "overall"}
    overall = series.get("overall")
    if len(layers) <= 1:  # one layer: its own line says it all
        overall = None
    return layers, overall


def _percent_ylim(ax, values: Sequence[np.ndarray], full: bool) -> None:
    if full:
        ax.set_ylim(0, 102)
        return
    top = max([float(np.nanmax(v)) for v in values if np.isfinite(v).any()] + [0.0])
    ax.set_ylim(0, min(102.0, max(5.0, 1.25 * top + 2.0)))


def _over_tasks(ax, layers: dict[str, np.ndarray], overall: np.ndarray | None, names: list[str], final: bool,
                fmt: str = "{:.1f}%") -> list:
    """Lines ``100 * value`` per layer over the tasks; returns legend handles."""
    cols = colors(len(layers))
    handles = []
    if overall is not None:  # under the layers: a layer at the overall value stays visible
        ax.plot(np.arange(overall.size), 100 * overall, color="black", lw=3.6, marker="s", ms=7, zorder=1)
        lab = f"overall ({fmt.format(100 * overall[-1])})" if final else "overall"
        handles.append(Line2D([], [], color="black", lw=3.6, marker="s", ms=7, label=lab))
    for (name, v), c in zip(layers.items(), cols):
        ax.plot(np.arange(v.size), 100 * v, color=c, lw=1.6, marker="o", ms=4.5, zorder=2)
        lab = f"{name} ({fmt.format(100 * v[-1])})" if final else name
        handles.append(Line2D([], [], color=c, lw=1.6, marker="o", ms=4.5, label=lab))
    n = max(v.size for v in [*layers.values()] + ([overall] if overall is not None else []))
    category_ticks(ax, "x", range(n), names[:n])
    ax.set_xlim(-0.4, n - 0.6)
    ax.set_xlabel("after training task")
    ax.grid(axis="y", alpha=0.3)
    return handles


# --------------------------------------------------------------------------- sparsity


def sparsity_per_task(sparsity: Mapping[str, object], tasks: Sequence[str] | None = None,
                      title: str | None = None) -> Figure:
    """Each layer's sparsity (percent of synapses absent) after each task, 0-100 %
    (``{layer: [tasks_done]}`` as ``run.h5`` ``/sparsity``; ``overall`` dashed black)."""
    series = _layer_series(sparsity)
    if not series:
        raise NoData("no sparsity recorded")
    if all(np.nanmax(np.abs(v)) == 0 for v in series.values()):
        raise NoData("dense run: every layer kept all its synapses")
    layers, overall = _split_overall(series)
    if not layers:
        layers, overall = {"overall": series["overall"]}, None
    n = max(v.size for v in series.values())
    fig = new_figure(min(11.0, max(6.0, 0.5 * n + 4.6)), 3.8)
    ax = fig.add_subplot()
    handles = _over_tasks(ax, layers, overall, task_names(tasks, n), final=True)
    ax.set_ylim(0, 102)
    ax.set_ylabel("sparsity (% of synapses absent)")
    ax.set_title(title or "Sparsity per layer after each task", fontsize=10)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="layer (final value)", title_fontsize=8,
               frameon=False)
    return fig


def sparse_schedule(step, target=None, sparsity=None, layer_sparsity: Mapping[str, object] | None = None,
                    regrown=None, death_rate=None, task_starts: Sequence[float] | None = None,
                    tasks: Sequence[str] | None = None, end: float | None = None, name: str = "GraNet",
                    title: str | None = None) -> Figure:
    """The sparse-training schedule over the training steps (one point per mask update):
    target and reached sparsity, overall and per layer (top); synapses regrown per update
    (middle, when any); the death rate (bottom, when recorded). ``task_starts`` (the first
    step of each task) draws the task boundaries and names."""
    step = np.asarray(step, dtype=np.float64).ravel()
    if step.size == 0:
        raise NoData(f"no {name} updates recorded")

    def arr(v):
        if v is None:
            return None
        a = np.asarray(v, dtype=np.float64).ravel()
        return a if a.size == step.size and np.isfinite(a).any() else None

    target, sparsity, regrown, death_rate = arr(target), arr(sparsity), arr(regrown), arr(death_rate)
    layers = {k: a for k, v in (layer_sparsity or {}).items() if (a := arr(v)) is not None}
    panels = ["sparsity"] if target is not None or sparsity is not None or layers else []
    if regrown is not None and np.nanmax(regrown) > 0:
        panels.append("regrown")
    if death_rate is not None and (regrown is None or np.nanmax(regrown) > 0):
        panels.append("death_rate")
    if not panels:
        raise NoData(f"no {name} schedule values recorded")
    heights = {"sparsity": 2.6, "regrown": 1.7, "death_rate": 1.7}
    fig = new_figure(8.0, 1.1 + sum(heights[p] for p in panels))
    axes = fig.subplots(len(panels), 1, height_ratios=[heights[p] for p in panels], squeeze=False)[:, 0]
    starts = list(task_starts) if task_starts is not None else []
    x_end = end if end is not None else float(step.max())
    lo = min(starts[0] if starts else 0.0, float(step.min()))
    names = task_names(tasks, len(starts))
    ms = 4 if step.size <= 60 else 0
    for k, (ax, panel) in enumerate(zip(axes, panels)):
        if panel == "sparsity":
            cols = colors(len(layers))
            handles = []
            if sparsity is not None:  # under the layers' lines: a layer at the overall value stays visible
                ax.plot(step, 100 * sparsity, color="black", lw=3.4, marker="o", ms=ms + 1, zorder=1)
                handles.append(Line2D([], [], color="black", lw=3.4, label="overall (reached)"))
            for (lname, v), c in zip(layers.items(), cols):
                ax.plot(step, 100 * v, color=c, lw=1.4, marker="o", ms=ms * 0.7, zorder=2)
                handles.append(Line2D([], [], color=c, lw=1.4, label=lname))
            if target is not None:
                ok = np.isfinite(target)
                ax.plot(step[ok], 100 * target[ok], color="#d62728", lw=1.4, ls="--", marker="x", ms=ms + 1,
                        zorder=3)
                handles.append(Line2D([], [], color="#d62728", lw=1.4, ls="--", marker="x", label="target"))
            ax.set_ylim(0, 102)
            ax.set_ylabel("sparsity (%)")
            ax.set_title("Sparsity at each mask update", fontsize=9.5)
            ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        elif panel == "regrown":
            pos = regrown[regrown > 0]
            log = bool(pos.size and pos.max() / pos.min() > 20)
            base = 0.5 * pos.min() if log else 0.0
            shown = np.where(regrown > 0, regrown, np.nan) if log else regrown
            ax.vlines(step, base, shown, color="#2ca02c", lw=1.6)
            ax.plot(step, shown, ls="none", marker="o", ms=max(ms, 2), color="#2ca02c")
            if log:  # the first updates regrow thousands, the later ones a few
                ax.set_yscale("log")
                ax.set_ylim(bottom=base)
            else:
                ax.set_ylim(bottom=0)
            ax.set_ylabel("synapses\nregrown" + (" (log)" if log else ""))
            ax.set_title("Synapses regrown at each update (as many were dropped)", fontsize=9.5)
        else:
            ax.plot(step, death_rate, color="#9467bd", lw=1.6, marker="o", ms=ms)
            ax.set_ylim(bottom=0, top=max(0.05, 1.15 * float(np.nanmax(death_rate))))
            ax.set_ylabel("death rate\n(fraction)")
            ax.set_title("Death rate: share of active synapses dropped and regrown per update", fontsize=9.5)
        pad = 0.01 * max(x_end - lo, 1.0)
        ax.set_xlim(lo - pad, x_end + pad)
        if starts:
            mark_tasks(ax, starts, names, x_end, top_labels=k == 0)
        ax.set_xlabel("training step (all tasks in order)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or f"{name} schedule over training", fontsize=11)
    return fig


# --------------------------------------------------------------------------- dormant


def dormant_ratios(dormant: Mapping[str, object], tasks: Sequence[str] | None = None,
                   history: Mapping[str, object] | None = None, task_starts: Sequence[float] | None = None,
                   end: float | None = None, title: str | None = None) -> Figure:
    """Dormant neurons (percent of a layer's neurons with a firing-rate score <= tau) after
    each task on test data (``{layer: [tasks_done]}``, ``run.h5`` ``/dormant``), and, when
    ``history`` (``/plugins/dormant``: ``step``, ``overall``, ``layers/L``, ``perturb_step``)
    is given, during training on the training minibatches, perturbations marked."""
    series = _layer_series(dormant)
    hist_layers: dict[str, np.ndarray] = {}
    hsteps = None
    if history:
        hsteps = np.asarray(history.get("step", []), dtype=np.float64).ravel()
        hist_layers = {k: v for k, v in _layer_series(history.get("layers")).items() if v.size == hsteps.size}
        if not hist_layers and history.get("overall") is not None:
            ov = np.asarray(history["overall"], dtype=np.float64).ravel()
            if ov.size == hsteps.size and ov.size:
                hist_layers = {"overall": ov}
        if hsteps.size == 0:
            hist_layers = {}
    if not series and not hist_layers:
        raise NoData("no dormant ratios recorded")
    n_panels = int(bool(series)) + int(bool(hist_layers))
    every = [100 * v for v in [*series.values(), *hist_layers.values()]]  # one y scale for both panels
    fig = new_figure(8.0 if hist_layers else 6.4, 1.0 + 2.9 * n_panels)
    axes = list(fig.subplots(n_panels, 1, squeeze=False)[:, 0])
    if series:
        ax = axes.pop(0)
        layers, overall = _split_overall(series)
        if not layers:
            layers, overall = {"overall": series["overall"]}, None
        n = max(v.size for v in series.values())
        handles = _over_tasks(ax, layers, overall, task_names(tasks, n), final=True)
        _percent_ylim(ax, every, full=False)
        ax.set_ylabel("dormant neurons (%)")
        ax.set_title("After each task (test samples of every task)", fontsize=9.5)
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False,
                  title="layer (final value)", title_fontsize=8)
    if hist_layers:
        ax = axes.pop(0)
        hl, hov = _split_overall(hist_layers)
        if not hl:
            hl, hov = hist_layers, None
        cols = colors(len(hl))
        handles = []
        ms = 3 if hsteps.size <= 80 else 0
        if hov is not None:
            ax.plot(hsteps, 100 * hov, color="black", lw=3.2, zorder=1)
            handles.append(Line2D([], [], color="black", lw=3.2, label="overall"))
        for (lname, v), c in zip(hl.items(), cols):
            ax.plot(hsteps, 100 * v, color=c, lw=1.4, marker="o", ms=ms, zorder=2)
            handles.append(Line2D([], [], color=c, lw=1.4, label=lname))
        pert = np.asarray(history.get("perturb_step", []), dtype=np.float64).ravel()
        for s in pert:
            ax.axvline(s, color="#d62728", lw=1.0, alpha=0.7)
        if pert.size:
            handles.append(Line2D([], [], color="#d62728", lw=1.0, label="DrM perturbation"))
        x_end = end if end is not None else float(hsteps.max())
        starts = list(task_starts) if task_starts is not None else []
        lo = min(starts[0] if starts else 0.0, float(hsteps.min()))
        pad = 0.01 * max(x_end - lo, 1.0)
        ax.set_xlim(lo - pad, x_end + pad)
        if starts:
            mark_tasks(ax, starts, task_names(tasks, len(starts)), x_end)
        _percent_ylim(ax, every, full=False)
        ax.set_xlabel("training step (all tasks in order)")
        ax.set_ylabel("dormant neurons (%)")
        ax.set_title("During training (training minibatches, dormant plugin)", fontsize=9.5)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title or "Dormant neurons per layer", fontsize=11)
    return fig


# --------------------------------------------------------------------------- masks


def block_density(mask, max_rows: int = 160, max_cols: int = 480) -> tuple[np.ndarray, int, int]:
    """The fraction of ``True`` entries of ``mask`` (2-D; more dimensions are flattened into
    columns) in blocks of ``br x bc`` so that at most ``max_rows x max_cols`` blocks remain;
    returns ``(density, br, bc)`` (edge blocks average over the entries they have)."""
    m = np.asarray(mask)
    m = m.reshape(m.shape[0], -1) if m.ndim >= 2 else m.reshape(1, -1)
    m = m.astype(np.float64)
    rows, cols = m.shape
    br, bc = max(1, math.ceil(rows / max_rows)), max(1, math.ceil(cols / max_cols))
    if br == bc == 1:
        return m, 1, 1
    R, C = math.ceil(rows / br), math.ceil(cols / bc)
    pad = np.zeros((R * br, C * bc))
    cnt = np.zeros_like(pad)
    pad[:rows, :cols] = m
    cnt[:rows, :cols] = 1.0
    s = pad.reshape(R, br, C, bc).sum((1, 3))
    n = cnt.reshape(R, br, C, bc).sum((1, 3))
    return s / n, br, bc


def mask_images(masks: Mapping[str, object], title: str | None = None, max_layers: int = 8,
                max_rows: int = 160, max_cols: int = 480) -> Figure:
    """One picture per layer's synapse mask (rows: postsynaptic neurons, columns: presynaptic;
    a convolution's kernel entries are columns too), black = synapse present. Large layers are
    shown as the density of blocks (:func:`block_density`) on the same 0-1 colour scale."""
    items = [(str(k), np.asarray(v)) for k, v in masks.items() if v is not None and np.size(v)]
    if not items:
        raise NoData("no synapse masks (a dense run keeps none)")
    shown = items[:max_layers]
    heights = []
    for _, m in shown:
        rows, cols = m.shape[0], int(np.prod(m.shape[1:])) if m.ndim > 1 else m.size
        heights.append(float(np.clip(6.2 * rows / max(cols, 1), 0.9, 2.8)))
    fig = new_figure(8.4, 0.9 + sum(h + 0.75 for h in heights))
    axes = fig.subplots(len(shown), 1, height_ratios=heights, squeeze=False)[:, 0]
    for ax, (name, m) in zip(axes, shown):
        rows = m.shape[0] if m.ndim else 1
        cols = int(np.prod(m.shape[1:])) if m.ndim > 1 else m.size
        dens, br, bc = block_density(m, max_rows, max_cols)
        blocked = br * bc > 1
        # blocks: the scale ends at the densest block (white stays "no synapse"), else a sparse
        # layer's blocks would all be the same pale grey
        if blocked:
            top = min(1.0, max(0.05, math.ceil(float(dens.max()) * 20) / 20))
            look = {"cmap": "Greys", "norm": Normalize(0, top)}
        else:
            look = {"cmap": ListedColormap(["white", "black"]), "norm": BoundaryNorm([0, 0.5, 1], 2)}
        # blocks cover br x bc entries; an edge block with fewer is clipped to its true width
        im = ax.imshow(dens, aspect="auto", interpolation="nearest",
                       extent=(-0.5, dens.shape[1] * bc - 0.5, dens.shape[0] * br - 0.5, -0.5), **look)
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins="auto", integer=True, min_n_ticks=2))
        frac = float(np.asarray(m, dtype=bool).mean())
        shape = " x ".join(str(s) for s in m.shape)
        note = f", shown as density of {br} x {bc} blocks" if blocked else ""
        ax.set_title(f"{name} [{shape}]: {100 * frac:.1f}% of synapses present{note}", fontsize=9)
        ax.set_xlabel("presynaptic neuron" + (" x kernel entry" if m.ndim > 2 else ""))
        ax.set_ylabel("postsynaptic\nneuron")
        cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.015, aspect=12)
        if blocked:
            cb.set_label("fraction\npresent", fontsize=8)
        else:
            cb.set_ticks([0.25, 0.75], labels=["absent", "present"], fontsize=8)
            cb.ax.tick_params(length=0)
            cb.ax.set_ylabel("synapse", fontsize=8)
    more = len(items) - len(shown)
    fig.suptitle((title or "Synapse masks (black: synapse present)") + (f" ({more} more layers not shown)"
                                                                         if more else ""), fontsize=11)
    return fig


# --------------------------------------------------------------------------- run level


def _task_starts(run: Run) -> tuple[list[float], float] | tuple[None, None]:
    """The global step at which each task began, from the per-step losses, and the last step."""
    per_task = run.h5.get("losses")
    if not isinstance(per_task, Mapping) or not per_task:
        return None, None
    keys = sorted((k for k in per_task if str(k).startswith("task_") and str(k)[5:].isdigit()),
                  key=lambda k: int(str(k)[5:]))
    lengths = [np.size(per_task[k]) for k in keys]
    if not lengths or sum(lengths) == 0:
        return None, None
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(float).tolist()
    return starts, float(sum(lengths))


def run_sparsity(run: RunLike) -> Figure:
    """:func:`sparsity_per_task` of a run (``run.h5`` ``/sparsity``)."""
    run = as_run(run)
    series = _layer_series(run.h5.get("sparsity"))
    names = run.tasks
    if not series and isinstance(run.metrics.get("sparsity_per_layer"), Mapping):
        # an older run.h5 without /sparsity: the last task's values from metrics.json
        series = {k: np.asarray([v], dtype=np.float64) for k, v in run.metrics["sparsity_per_layer"].items()
                  if isinstance(v, int | float)}
        done = run.metrics.get("tasks_done") or len(names)
        names = names[done - 1: done] if isinstance(done, int) and 0 < done <= len(names) else []
    if not series:
        raise NoData(f"{run.label}: no sparsity recorded in run.h5")
    return sparsity_per_task(series, names, title=f"{run.label}: sparsity per layer after each task")


def run_sparse_schedule(run: RunLike) -> Figure:
    """:func:`sparse_schedule` of the run's sparse-training plugin (GraNet, GMP, RigL, SET)."""
    run = as_run(run)
    plugins = run.h5.get("plugins") or {}
    for pname in SPARSE_PLUGINS:
        rec = plugins.get(pname)
        if isinstance(rec, Mapping) and np.size(rec.get("step", [])):
            break
    else:
        raise NoData(f"{run.label}: no sparse-training schedule in run.h5 (the method has no GraNet/GMP/RigL/SET)")
    starts, end = _task_starts(run)
    label = _PLUGIN_TITLE.get(pname, pname)
    return sparse_schedule(rec["step"], rec.get("target"), rec.get("sparsity"), rec.get("layer_sparsity"),
                           rec.get("regrown"), rec.get("death_rate"), task_starts=starts, tasks=run.tasks, end=end,
                           name=label, title=f"{run.label}: {label} schedule over training")


def run_dormant(run: RunLike) -> Figure:
    """:func:`dormant_ratios` of a run (``/dormant`` and, if present, ``/plugins/dormant``)."""
    run = as_run(run)
    hist = (run.h5.get("plugins") or {}).get("dormant")
    starts, end = _task_starts(run) if isinstance(hist, Mapping) else (None, None)
    return dormant_ratios(run.h5.get("dormant") or {}, run.tasks, hist if isinstance(hist, Mapping) else None,
                          task_starts=starts, end=end, title=f"{run.label}: dormant neurons per layer")


def run_masks(run: RunLike) -> Figure:
    """:func:`mask_images` of the run's last checkpoint."""
    run = as_run(run)
    masks = run.masks()
    if not masks:
        why = "no checkpoint" if not run.checkpoints else "no synapse masks in the last checkpoint (dense run)"
        raise NoData(f"{run.label}: {why}")
    last = max(run.checkpoints)
    names = run.tasks
    after = names[last] if last < len(names) else f"task {last}"
    return mask_images(masks, title=f"{run.label}: synapse masks after training task {after} (black: present)")


#: one run's figures, in reading order
RUN_FIGURES: dict[str, Callable[[Run], Figure]] = {
    "sparsity": run_sparsity,
    "sparse_schedule": run_sparse_schedule,
    "dormant": run_dormant,
    "masks": run_masks,
}
