"""Spike figures: rasters with firing-rate marginals, firing-rate histograms, membrane traces.

Array-level functions take numpy arrays (time first, as the network runs):

* :func:`raster` -- spikes ``[T, N]`` or ``{layer: [T, N]}``: one raster per layer (at most
  ``max_neurons`` evenly spaced neurons), each neuron's rate on the right and the population
  rate over time below;
* :func:`rate_histogram` -- firing rates ``{layer: [N]}`` (or one such dict per task, overlaid);
* :func:`membrane_traces` -- membranes ``[T, k]`` with the threshold and the spikes.

Run-level figures (:data:`RUN_FIGURES`, name -> ``fn(run) -> Figure``) draw the records of
:mod:`neuroplastic.records` (the fixed test inputs after the last task by default); they
raise :class:`~neuroplastic.plot.style.NoData` when the run lacks them.
:func:`raster_from_simulation` draws the output of ``neuroplastic simulate``.

Times are in steps, or in ms when ``dt`` (the step in seconds, as the model's ``dt``) is given.
Rates are in spikes per step (the fraction of steps with a spike).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .runs import Run
from .style import NoData, new_figure

__all__ = ["raster", "rate_histogram", "membrane_traces", "raster_from_simulation", "run_raster",
           "run_rate_histogram", "run_membrane", "probe_spikes", "RUN_FIGURES", "time_axis", "run_dt", "task_colors"]

SPIKE_COLOR = "#1a1a1a"
RATE_COLOR = "tab:blue"
THRESHOLD_COLOR = "tab:red"


# -- shared helpers (also used by projection.py and animation.py) -----------------------------
def time_axis(dt: float | None) -> tuple[float, str]:
    """``(scale, label)``: step ``t`` is drawn at ``t * scale``; ms when ``dt`` (seconds) is given."""
    if dt is None:
        return 1.0, "time step"
    if not dt > 0:
        raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")
    return float(dt) * 1e3, "time (ms)"


def run_dt(run: Run) -> float | None:
    """The model's step in seconds (``[model] dt`` of the run's config), or None."""
    if not run.config:
        return None
    try:
        import tomllib

        dt = tomllib.loads(run.config).get("model", {}).get("dt")
    except Exception:  # noqa: BLE001 - an unreadable config only loses the ms axis
        return None
    return float(dt) if isinstance(dt, int | float) and not isinstance(dt, bool) and dt > 0 else None


def natural_sorted(names) -> list[str]:
    """``lif2`` before ``lif10``."""
    return sorted(names, key=lambda s: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(s))])


def task_colors(n: int) -> list:
    """One colour per task in order: ``C0`` for one, a sequential ramp (early dark, late light) otherwise."""
    if n <= 1:
        return ["tab:blue"]
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / (n - 1)) for i in range(n)]


def task_indices(tree: Mapping) -> list[int]:
    """The ``i`` of the ``task_i`` keys of ``tree``, ascending."""
    out = []
    for k in tree:
        m = re.fullmatch(r"task_(\d+)", str(k))
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def task_label(run: Run, i: int) -> str:
    names = run.tasks
    return f"task {i} ({names[i]})" if i < len(names) and names[i] != f"task {i}" else f"task {i}"


def _empty_note(ax, text: str = "no spikes") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.35", fontsize=9)


# -- raster ---------------------------------------------------------------------------------
@dataclass
class _Layer:
    name: str
    z: np.ndarray  # bool [T, n_shown]
    ids: np.ndarray  # int [n_shown]: neuron index of each column
    n_total: int  # neurons in the layer
    pop: np.ndarray  # float [T]: mean spikes per step over the given neurons
    heading: str = ""  # replaces "<name>: <N> neurons, <n> shown"
    ylabel: str = "neuron index"


def _spread(n: int, k: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def _as_layers(spikes, max_neurons: int, neurons=None, n_total: Mapping[str, int] | None = None) -> list[_Layer]:
    if isinstance(spikes, Mapping):
        items = list(spikes.items())
    else:
        items = [("spikes", spikes)]
    if not items:
        raise NoData("no spikes given")
    if max_neurons < 1:
        raise ValueError(f"max_neurons must be >= 1, got {max_neurons}")
    out = []
    for name, z in items:
        z = np.asarray(z)
        if z.ndim == 1:
            z = z[:, None]
        if z.ndim != 2:
            raise ValueError(f"spikes of {name!r} must be [T, N], got shape {z.shape}")
        if z.shape[0] == 0 or z.shape[1] == 0:
            raise NoData(f"{name}: no time steps or no neurons (shape {z.shape})")
        z = z != 0
        ids = neurons.get(name) if isinstance(neurons, Mapping) else neurons
        ids = np.arange(z.shape[1]) if ids is None else np.asarray(ids, dtype=np.int64)
        if ids.shape != (z.shape[1],):
            raise ValueError(f"neurons of {name!r}: {ids.shape[0]} ids for {z.shape[1]} columns")
        keep = _spread(z.shape[1], max_neurons)
        total = int((n_total or {}).get(name, z.shape[1]))
        out.append(_Layer(str(name), z[:, keep], ids[keep], total, z.mean(1)))
    return out


def _draw_raster(sub, layer: _Layer, scale: float, tlabel: str) -> None:
    T, n = layer.z.shape
    gs = sub.add_gridspec(2, 2, width_ratios=[5.0, 1.0], height_ratios=[3.0, 1.0])
    ax = sub.add_subplot(gs[0, 0])
    ax_n = sub.add_subplot(gs[0, 1], sharey=ax)
    ax_p = sub.add_subplot(gs[1, 0], sharex=ax)
    t, r = np.nonzero(layer.z)
    if t.size:
        x0, x1 = (t - 0.45) * scale, (t + 0.45) * scale
        y0, y1 = r - 0.42, r + 0.42
        verts = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1),
                          np.stack([x0, y1], 1)], 1)
        # the edge keeps spikes visible when a cell is smaller than a pixel
        ax.add_collection(PolyCollection(verts, facecolors=SPIKE_COLOR, edgecolors=SPIKE_COLOR, linewidths=0.4))
    else:
        _empty_note(ax)
    ax.set_xlim(-0.5 * scale, (T - 0.5) * scale)
    ax.set_ylim(-0.5, n - 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, min_n_ticks=1))
    ids = layer.ids
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: str(ids[int(round(y))]) if 0 <= round(y) < n else ""))
    ax.set_ylabel(layer.ylabel)
    ax.tick_params(labelbottom=False)
    ax.set_title("spikes (rate per neuron on the right, over time below)", fontsize=8, loc="left")
    ax.tick_params(labelsize=8)
    # per-neuron rate
    rates = layer.z.mean(0)
    if n <= 40:  # separate bars
        ax_n.barh(np.arange(n), rates, height=0.8, color=RATE_COLOR, linewidth=0)
    else:  # one outline (fast for many neurons)
        ax_n.stairs(rates, np.arange(n + 1) - 0.5, orientation="horizontal", fill=True, color=RATE_COLOR,
                    linewidth=0)
    hi = float(rates.max())
    ax_n.set_xlim(0, hi * 1.1 if hi > 0 else 1.0)
    if hi == 0:
        _empty_note(ax_n, "silent")
    ax_n.tick_params(labelleft=False, top=True, labeltop=True, bottom=False, labelbottom=False, labelsize=8)
    ax_n.xaxis.set_major_locator(MaxNLocator(nbins=2))
    ax_n.xaxis.set_label_position("top")
    ax_n.set_xlabel("rate (spikes/step)", fontsize=8)
    # population rate over time
    tt = np.arange(T) * scale
    ax_p.fill_between(tt, layer.pop, step="mid", color=RATE_COLOR, alpha=0.35, linewidth=0)
    ax_p.plot(tt, layer.pop, drawstyle="steps-mid", color=RATE_COLOR, linewidth=1.2)
    top = float(layer.pop.max())
    top = top * 1.15 if top > 0 else 1.0
    ax_p.set_ylim(-0.06 * top, top)
    ax_p.yaxis.set_major_locator(MaxNLocator(nbins=2))
    ax_p.set_xlabel(tlabel)
    ax_p.set_ylabel("all neurons\n(spikes/step)", fontsize=8)
    ax_p.tick_params(labelsize=8)
    ax_p.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=scale == 1.0, min_n_ticks=2))
    shown = f", {n} shown (evenly spaced)" if n < layer.n_total else ""
    head = layer.heading or f"{layer.name}: {layer.n_total} neurons{shown}"
    sub.suptitle(f"{head}; mean rate {float(layer.pop.mean()):.3f} spikes/step", fontsize=10, x=0.02, ha="left")


def _raster_figure(layers: list[_Layer], dt: float | None, title: str) -> Figure:
    scale, tlabel = time_axis(dt)
    per = 3.1
    fig = new_figure(7.6, per * len(layers) + 0.45)
    subs = fig.subfigures(len(layers), 1, squeeze=False)[:, 0]
    for sub, layer in zip(subs, layers):
        _draw_raster(sub, layer, scale, tlabel)
    fig.suptitle(title, fontsize=11, fontweight="bold")
    return fig


def raster(spikes: np.ndarray | Mapping[str, np.ndarray], dt: float | None = None, title: str | None = None,
           max_neurons: int = 128, neurons: np.ndarray | Mapping[str, np.ndarray] | None = None) -> Figure:
    """Spike raster of one sample: ``spikes`` ``[T, N]`` (bool or 0/1) or ``{layer: [T, N]}``.

    Per layer: the spikes of at most ``max_neurons`` evenly spaced neurons (black marks), each
    shown neuron's rate on the right and the layer's population rate (mean over all ``N``
    neurons) over time below, both in spikes/step. ``neurons`` gives the neuron index of each
    column (an array, or one per layer) when the columns are a subset of a larger layer;
    ``dt`` (seconds) puts the time axis in ms."""
    layers = _as_layers(spikes, max_neurons, neurons)
    return _raster_figure(layers, dt, title or "Spike raster")


def raster_from_simulation(path: str | Path, sample: int = 0, max_neurons: int = 128) -> Figure:
    """The raster of one sample of a ``neuroplastic simulate`` output (``/nodes/<layer>/
    observables/spikes/data [B, T, n]``): one panel per layer that has spikes, in ms."""
    import h5py

    from ..errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"simulation output not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not an HDF5 file (give the output of neuroplastic simulate)") from None
    with f:
        nodes = f.get("nodes")
        if not isinstance(nodes, h5py.Group):
            raise UserError(f"{path}: no /nodes group (not written by neuroplastic simulate or nir)")
        dt = f.attrs.get("dt")
        dt = float(dt) if dt is not None and float(dt) > 0 else None
        names = [n for n in natural_sorted(nodes) if n != "output"] + (["output"] if "output" in nodes else [])
        spikes: dict[str, np.ndarray] = {}
        skipped = []
        for n in names:
            d = nodes[n].get("observables/spikes/data")
            if not isinstance(d, h5py.Dataset) or d.ndim != 3:
                skipped.append(n)
                continue
            if not 0 <= sample < d.shape[0]:
                raise UserError(f"{path}: sample {sample} out of range (0..{d.shape[0] - 1})")
            spikes[n] = np.asarray(d[sample])
            if dt is None and d.parent.attrs.get("dt") is not None:
                dt = float(d.parent.attrs["dt"]) or None
    if not spikes:
        raise NoData(f"{path.name} holds no spikes (simulate with --record spikes)")
    T = next(iter(spikes.values())).shape[0]
    note = f"\n({', '.join(skipped)}: no spikes recorded)" if skipped else ""
    return raster(spikes, dt=dt, max_neurons=max_neurons,
                  title=f"Simulated spikes of sample {sample} ({T} steps) - {path.name}{note}")


# -- firing-rate histograms ----------------------------------------------------------------------
def rate_histogram(rates: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                   labels: Sequence[str] | None = None, title: str | None = None, bins: int | None = None,
                   legend_title: str = "", max_overlaid: int = 4) -> Figure:
    """Histogram of the neurons' firing rates (spikes/step) per layer: ``{layer: [N]}``, or a
    sequence of such dicts (e.g. one per task, named by ``labels``): up to ``max_overlaid``
    are overlaid (early dark, late light), more are drawn as a heatmap (a row per set, the
    colour the share of neurons in each rate bin). Each panel notes the share of silent
    neurons (rate 0) of the first and the last set."""
    series = [rates] if isinstance(rates, Mapping) else list(rates)
    if not series or not any(len(s) for s in series):
        raise NoData("no firing rates given")
    labels = list(labels) if labels is not None else ([""] if len(series) == 1 else
                                                       [f"{i}" for i in range(len(series))])
    if len(labels) != len(series):
        raise ValueError(f"{len(labels)} labels for {len(series)} sets of rates")
    layers = natural_sorted({k for s in series for k in s})
    colors = task_colors(len(series))
    ncols = min(len(layers), 3)
    nrows = -(-len(layers) // ncols)
    wide = 1 < len(series) <= max_overlaid
    heat = len(series) > max_overlaid
    fig = new_figure(max(3.6 * ncols + (1.3 if wide else 0.0), 6.4),
                     (min(0.22 * len(series), 3.0) + 1.6 if heat else 2.9) * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(layers):
            ax.remove()
            continue
        name = layers[k]
        arrs = [np.asarray(s[name], dtype=np.float64).ravel() if name in s else None for s in series]
        allv = np.concatenate([a for a in arrs if a is not None])
        hi = float(np.nanmax(allv)) if allv.size else 0.0
        hi = hi * 1.02 if hi > 0 else 1.0
        n = max(len(a) for a in arrs if a is not None)
        nb = bins or int(np.clip(np.sqrt(n) * 1.5, 8, 40))
        edges = np.linspace(0.0, hi, nb + 1)
        present = [(a, lab) for a, lab in zip(arrs, labels) if a is not None]
        silent = [float(np.mean(a == 0)) * 100 if a.size else 0.0 for a, _ in present]
        if heat:
            from matplotlib.colors import PowerNorm

            M = np.full((len(series), nb), np.nan)
            for i, a in enumerate(arrs):
                if a is not None and a.size:
                    M[i] = np.histogram(a, bins=edges)[0] / a.size * 100
            im = ax.imshow(np.ma.masked_invalid(M), aspect="auto", interpolation="nearest", cmap="viridis",
                           norm=PowerNorm(0.5, vmin=0, vmax=max(float(np.nanmax(M)), 1e-9)),
                           extent=(0, hi, len(series) - 0.5, -0.5))
            cb = fig.colorbar(im, ax=ax, pad=0.02, fraction=0.06)
            cb.set_label("% of neurons", fontsize=8)
            cb.ax.tick_params(labelsize=7)
            step = max(1, int(np.ceil(len(series) / 12)))
            ax.set_yticks(range(0, len(series), step), [labels[i] for i in range(0, len(series), step)],
                          fontsize=8)
            ax.set_ylabel(legend_title or "set")
        else:
            for a, c in zip(arrs, colors):
                if a is None:
                    continue
                if wide:
                    ax.hist(a, bins=edges, histtype="step", color=c, linewidth=1.6)
                else:
                    ax.hist(a, bins=edges, histtype="stepfilled", facecolor=(*to_rgb(c), 0.35), edgecolor=c,
                            linewidth=1.4)
            ax.set_ylabel("neurons")
            ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            ax.set_ylim(0, None)
            ax.margins(y=0.05)
        first, last = (f"task {lab}" if str(lab).isdigit() else lab for lab in (present[0][1], present[-1][1]))
        note = (f"{n} neurons, {silent[0]:.0f}% silent" if len(silent) == 1 else
                f"{n} neurons; silent: {silent[0]:.0f}% ({first}) \u2192 {silent[-1]:.0f}% ({last})")
        ax.set_title(f"{name}\n{note}", fontsize=9)
        ax.set_xlabel("firing rate (spikes/step)")
        ax.set_xlim(0, hi)
    if wide:
        import matplotlib.lines as mlines

        handles = [mlines.Line2D([], [], color=c, linewidth=2, label=lab) for lab, c in zip(labels, colors)]
        fig.legend(handles=handles, loc="outside right center", fontsize=8, title=legend_title or None,
                   title_fontsize=8, frameon=False)
    fig.suptitle(title or "Firing rates", fontsize=11, fontweight="bold")
    return fig


# -- membrane traces ---------------------------------------------------------------------------
def _draw_traces(sub, v: np.ndarray, v_th, spikes: np.ndarray | None, scale: float, tlabel: str,
                 ids: Sequence[int], name: str | None) -> None:
    T, k = v.shape
    th = np.broadcast_to(np.asarray(v_th, dtype=np.float64), (k,))
    axes = sub.subplots(k, 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    tt = np.arange(T) * scale
    lo = float(min(np.nanmin(v), np.min(th), 0.0))
    hi = float(max(np.nanmax(v), np.max(th)))
    pad = 0.12 * (hi - lo or 1.0)
    marker = "." if T <= 60 else None
    for j, ax in enumerate(axes):
        ax.axhline(th[j], color=THRESHOLD_COLOR, linestyle="--", linewidth=1.0, label="threshold $v_{th}$")
        ax.plot(tt, v[:, j], color="tab:blue", linewidth=1.2, marker=marker, markersize=4, label="membrane v")
        if spikes is not None:
            s = np.nonzero(spikes[:, j])[0]
            if s.size:
                ax.plot(tt[s], np.full(s.size, hi + pad), linestyle="none", marker="v", color=THRESHOLD_COLOR,
                        markersize=5, label="spike", clip_on=False)
        ax.set_ylim(lo - pad, hi + 2 * pad)
        ax.set_ylabel(f"neuron {ids[j]}", fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel(tlabel)
    axes[-1].xaxis.set_major_locator(MaxNLocator(nbins=8, integer=scale == 1.0, min_n_ticks=2))
    if name:
        axes[0].set_title(name, fontsize=10)


def _trace_legend(fig: Figure, with_spikes: bool) -> None:
    import matplotlib.lines as mlines

    h = [mlines.Line2D([], [], color="tab:blue", linewidth=1.2, label="membrane v (pre-reset)"),
         mlines.Line2D([], [], color=THRESHOLD_COLOR, linestyle="--", label="threshold $v_{th}$")]
    if with_spikes:
        h.append(mlines.Line2D([], [], color=THRESHOLD_COLOR, linestyle="none", marker="v", label="spike"))
    fig.legend(handles=h, loc="outside lower center", ncols=len(h), fontsize=8, frameon=False)


def membrane_traces(v: np.ndarray, v_th: float | np.ndarray, spikes: np.ndarray | None = None,
                    dt: float | None = None, title: str | None = None, neurons: Sequence[int] | None = None,
                    max_traces: int = 8) -> Figure:
    """Membrane potentials ``v [T, k]`` of ``k`` neurons, one small panel each (shared axes),
    with the threshold ``v_th`` (a number or one per neuron) dashed and the steps of ``spikes``
    (``[T, k]``, optional) marked above the trace. At most ``max_traces`` (evenly spaced)."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.size == 0:
        raise NoData(f"membrane traces must be a non-empty [T, k] array, got shape {v.shape}")
    keep = _spread(v.shape[1], max_traces)
    ids = np.arange(v.shape[1]) if neurons is None else np.asarray(neurons)
    th = np.broadcast_to(np.asarray(v_th, dtype=np.float64), (v.shape[1],))[keep]
    z = None if spikes is None else (np.asarray(spikes).reshape(v.shape) != 0)[:, keep]
    scale, tlabel = time_axis(dt)
    fig = new_figure(7.0, 0.95 * len(keep) + 1.3)
    _draw_traces(fig, v[:, keep], th, z, scale, tlabel, ids[keep], None)
    _trace_legend(fig, z is not None)
    fig.supylabel("membrane potential v (model units)", fontsize=9)
    fig.suptitle(title or "Membrane potential", fontsize=11, fontweight="bold")
    return fig


# -- run-level figures -----------------------------------------------------------------------------
def _probe(run: Run) -> dict:
    probe = run.h5.get("probe")
    if not isinstance(probe, dict) or not task_indices(probe):
        why = "run.h5 missing or unreadable" if not run.h5 else "run.h5 has no probe records (older layout?)"
        raise NoData(f"no spike records: {why}")
    return probe


def _pick_task(probe: dict, task: int | None) -> int:
    done = task_indices(probe)
    if task is None:
        return done[-1]
    if task not in done:
        raise NoData(f"no spike records after task {task} (recorded: {', '.join(map(str, done))})")
    return task


def _layer_names(entry: dict) -> list[str]:
    return natural_sorted(k for k, v in entry.items() if isinstance(v, dict) and "spikes" in v)


def probe_spikes(run: Run, task: int | None = None, sample: int = 0, with_input: bool = True
                 ) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """``(task, {layer: [T, n_kept]}, {layer: neuron ids}, {layer: n_neurons})`` of one probe sample."""
    probe = _probe(run)
    i = _pick_task(probe, task)
    entry = probe[f"task_{i}"]
    names = _layer_names(entry)
    if not names:
        raise NoData(f"no spiking layer recorded after task {i}")
    spikes, ids, total = {}, {}, {}
    inp = probe.get("input")
    n_samples = entry[names[0]]["spikes"].shape[1]
    if not 0 <= sample < n_samples:
        raise NoData(f"sample {sample} not recorded (the probe holds {n_samples})")
    if with_input and isinstance(inp, np.ndarray) and inp.ndim == 3 and sample < inp.shape[1]:
        spikes["input"] = inp[:, sample, :]
        kept = probe.get("input_neurons")  # which inputs (runs before 2026-12-02 did not record it)
        if kept is not None and len(kept) == inp.shape[2]:
            ids["input"] = np.asarray(kept)
    rates = run.h5.get("rates", {}).get(f"task_{i}", {})
    for n in names:
        spikes[n] = np.asarray(entry[n]["spikes"])[:, sample, :]
        kept = probe.get("neurons", {}).get(n)
        ids[n] = np.asarray(kept) if kept is not None and len(kept) == spikes[n].shape[1] else \
            np.arange(spikes[n].shape[1])
        if n in rates:
            total[n] = int(np.size(rates[n]))
    return i, spikes, ids, total


def _sample_text(run: Run, sample: int) -> str:
    labels = run.h5.get("probe", {}).get("labels")
    if isinstance(labels, np.ndarray) and sample < labels.size:
        return f"test sample {sample} (class {int(labels[sample])})"
    return f"test sample {sample}"


def run_raster(run: Run, task: int | None = None, sample: int = 0, max_neurons: int = 128) -> Figure:
    """The raster of a fixed test sample (its input and every spiking layer) after ``task``
    (default: the last)."""
    i, spikes, ids, total = probe_spikes(run, task, sample)
    layers = _as_layers(spikes, max_neurons, ids, total)
    for lay in layers:
        if lay.name == "input":
            n_rec = spikes["input"].shape[1]
            lay.ylabel = "input index" if "input" in ids else "input (recorded #)"
            lay.heading = f"input: {n_rec} recorded inputs" + (f", {lay.z.shape[1]} shown" if lay.z.shape[1] < n_rec
                                                                 else "")
    return _raster_figure(layers, run_dt(run),
                          f"{run.label}: spikes of {_sample_text(run, sample)} after {task_label(run, i)}")


def run_rate_histogram(run: Run) -> Figure:
    """Firing rates of every neuron per layer after each task (on test samples of all tasks), overlaid."""
    rates = run.h5.get("rates")
    done = task_indices(rates) if isinstance(rates, dict) else []
    if not done:
        raise NoData("no firing-rate records in run.h5 (/rates/task_i)")
    series = [{k: v for k, v in rates[f"task_{i}"].items() if isinstance(v, np.ndarray)} for i in done]
    labels = [str(i) for i in done]
    when = "after each task" if len(done) > 1 else f"after task {done[0]}"
    return rate_histogram(series, labels=labels, legend_title="after task", title=(
        f"{run.label}: firing rates {when}\n(test samples of all tasks)"))


def run_membrane(run: Run, task: int | None = None, sample: int = 0) -> Figure:
    """Membrane traces of a few neurons per layer (a column each) for a fixed test sample."""
    probe = _probe(run)
    i = _pick_task(probe, task)
    entry = probe[f"task_{i}"]
    names = [n for n in _layer_names(entry) if "v" in entry[n]]
    if not names:
        raise NoData(f"no membrane records after task {i}")
    names = names[:4]
    per = 6 if len(names) == 1 else 4
    scale, tlabel = time_axis(run_dt(run))
    fig = new_figure(7.0 if len(names) == 1 else min(3.6 * len(names), 11.0), 0.95 * per + 1.5)
    subs = fig.subfigures(1, len(names), squeeze=False)[0]
    any_spikes = False
    for sub, n in zip(subs, names):
        v = np.asarray(entry[n]["v"], dtype=np.float64)
        if not 0 <= sample < v.shape[1]:
            raise NoData(f"sample {sample} not recorded (the probe holds {v.shape[1]})")
        v = v[:, sample, :]
        th = float(np.asarray(entry[n].get("v_th", 1.0)))
        tn = probe.get("trace_neurons", {}).get(n)
        tn = np.asarray(tn) if tn is not None and len(tn) == v.shape[1] else np.arange(v.shape[1])
        kept = probe.get("neurons", {}).get(n)
        kept = np.asarray(kept) if kept is not None else np.arange(entry[n]["spikes"].shape[2])
        z = np.asarray(entry[n]["spikes"])[:, sample, :]
        pos = {int(k): j for j, k in enumerate(kept)}
        # spikes of the traced neurons (recorded when the probe kept them; else v >= v_th)
        zs = np.stack([z[:, pos[int(k)]] if int(k) in pos else v[:, j] >= th for j, k in enumerate(tn)], 1)
        # prefer neurons that spike (up to ``per``), shown in index order
        sel = np.sort(np.argsort(-zs.sum(0), kind="stable")[:per])
        any_spikes = any_spikes or bool(zs[:, sel].any())
        _draw_traces(sub, v[:, sel], th, zs[:, sel], scale, tlabel, tn[sel], n if len(names) > 1 else None)
    _trace_legend(fig, True)
    fig.supylabel("membrane potential v (model units)", fontsize=9)
    where = f" of layer {names[0]}" if len(names) == 1 else ""
    fig.suptitle(f"{run.label}: membrane{where}, {_sample_text(run, sample)} after {task_label(run, i)}",
                 fontsize=11, fontweight="bold")
    return fig


#: the run figures of this module, in reading order
RUN_FIGURES: dict[str, Callable[[Run], Figure]] = {
    "raster": run_raster,
    "rate_histogram": run_rate_histogram,
    "membrane": run_membrane,
}
