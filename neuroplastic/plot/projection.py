"""Projection figures: what HLOP's lateral subspace neurons (and GPM's bases) do across tasks.

Array-level functions (numpy in, :class:`~matplotlib.figure.Figure` out):

* :func:`subspace_activity` -- the mean activity ``|y|`` (``y = H x``) of every subspace neuron
  during each task, a heatmap per layer (neurons of later tasks do not exist yet: grey);
* :func:`subspace_energy` -- per task, the fraction of the task's input energy already inside
  the old (protected) subspace when it starts (overlap: interference), and inside the whole
  subspace when it ends (how much of the task is protected from now on); GPM's
  ``captured_by_old_basis`` beside them;
* :func:`subspace_sizes` -- subspace dimension after each task, against the input dimension;
* :func:`principal_angles` -- the mean principal angle between the subspaces that every two
  tasks added (90 degrees: orthogonal, nothing shared; 0: the same directions), from
  :func:`task_subspace_angles`.

:data:`RUN_FIGURES` draws them from a run's ``plugins/hlop`` and ``plugins/gpm`` records
(see :meth:`neuroplastic.plugins.hlop.HLOP.records`, :meth:`neuroplastic.plugins.gpm.GPM.records`)
and raises :class:`~neuroplastic.plot.style.NoData` for a run of another method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .runs import Run
from .spikes import natural_sorted, task_indices
from .style import NoData, new_figure

__all__ = ["subspace_activity", "subspace_energy", "subspace_sizes", "principal_angles",
           "task_subspace_angles", "run_hlop_activity", "run_subspace_energy", "run_subspace_sizes",
           "run_principal_angles", "RUN_FIGURES"]

METHOD_COLORS = {"HLOP": "tab:blue", "GPM": "tab:orange"}


# -- helpers ---------------------------------------------------------------------------------
def _task_ticks(ax, n: int) -> None:
    ax.set_xlim(-0.4, max(n - 1, 0) + 0.4)
    if n <= 12:
        ax.set_xticks(range(n))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("task")


def _grid(fig: Figure, n: int, max_cols: int = 3):
    ncols = min(n, max_cols)
    nrows = -(-n // ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.remove()
    return list(axes.flat[:n])


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.35", fontsize=9,
            wrap=True)


def _floats(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64).ravel()


# -- subspace activity -----------------------------------------------------------------------------
def subspace_activity(activity: Mapping[str, Sequence[np.ndarray]] | Sequence[np.ndarray],
                      title: str | None = None, task_labels: Sequence[str] | None = None) -> Figure:
    """Heatmap per layer of the mean ``|y|`` of each subspace neuron (columns: rows of ``H`` in
    the order they were added) during each task (rows). ``activity`` is ``{layer: [a_0, a_1, ...]}``
    with ``a_i [M_i]`` (``M_i`` neurons exist during task ``i``; later ones are grey), or one
    such list. The top axis tells in which task each block of neurons was added."""
    if not isinstance(activity, Mapping):
        activity = {"subspace": activity}
    layers = [k for k in natural_sorted(activity) if len(activity[k])]
    if not layers:
        raise NoData("no subspace activity given")
    fig = new_figure(7.6, sum(min(0.26 * len(activity[k]), 3.2) + 1.45 for k in layers) + 0.5)
    subs = fig.subfigures(len(layers), 1, squeeze=False)[:, 0]
    for sub, name in zip(subs, layers):
        acts = [_floats(a) for a in activity[name]]
        sizes = [a.size for a in acts]
        M = max(sizes)
        A = np.full((len(acts), max(M, 1)), np.nan)
        for i, a in enumerate(acts):
            A[i, :a.size] = np.abs(a)
        ax = sub.subplots()
        finite = A[np.isfinite(A)]
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
        vmax = vmax if vmax > 0 else 1.0
        from matplotlib import colormaps

        cmap = colormaps["viridis"].with_extremes(bad="0.88")
        im = ax.imshow(np.ma.masked_invalid(A), aspect="auto", interpolation="nearest", cmap=cmap, vmin=0,
                       vmax=vmax, extent=(-0.5, A.shape[1] - 0.5, len(acts) - 0.5, -0.5))
        extend = "max" if finite.size and finite.max() > vmax * 1.001 else "neither"
        cb = sub.colorbar(im, ax=ax, extend=extend, pad=0.01, fraction=0.05)
        cb.set_label("mean |y|\n(a.u.)", fontsize=8)
        cb.ax.tick_params(labelsize=8)
        # blocks: the neurons added by each task
        starts = [0] + sizes[:-1]
        for s in starts[1:]:
            if 0 < s < M:
                ax.axvline(s - 0.5, color="white", linewidth=1.2)
        ax.set_ylabel("during task")
        ax.set_yticks(range(len(acts)) if len(acts) <= 12 else
                      np.unique(np.linspace(0, len(acts) - 1, 8).round().astype(int)))
        if task_labels is not None:
            ax.set_yticklabels([str(task_labels[i]) for i in ax.get_yticks().astype(int)])
        ax.set_xlabel("subspace neuron (row of H, in the order added)")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True, min_n_ticks=1))
        centres, names = [], []
        for i, (a, b) in enumerate(zip(starts, sizes)):
            if b > a:
                centres.append((a + b - 1) / 2)
                names.append(str(i))
        top = ax.secondary_xaxis("top")
        step = max(1, int(np.ceil(len(centres) / 12)))
        top.set_xticks(centres[::step], names[::step])
        top.tick_params(labelsize=8, length=2)
        top.set_xlabel("added in task", fontsize=8)
        grey = " (grey: not added yet)" if len(set(sizes)) > 1 else ""
        sub.suptitle(f"{name}: {M} subspace neuron{'s' if M != 1 else ''}{grey}", fontsize=10, x=0.02, ha="left")
    fig.suptitle(title or "Activity of the subspace neurons", fontsize=11, fontweight="bold")
    return fig


# -- energy inside the subspace ------------------------------------------------------------------------
def subspace_energy(old_energy: Mapping[str, Sequence[float]] | None = None,
                    captured_energy: Mapping[str, Sequence[float]] | None = None,
                    gpm_captured: Mapping[str, Sequence[float]] | None = None,
                    title: str | None = None) -> Figure:
    """Per layer and task, the fraction (0..1, drawn in %) of a task's input energy

    * ``old_energy``: inside the old subspace when the task starts (HLOP; high: the new task
      overlaps what earlier tasks protect; ``NaN`` for task 0),
    * ``captured_energy``: inside the whole subspace when the task ends (HLOP),
    * ``gpm_captured``: inside GPM's basis of the earlier tasks, at the task's end (task 0
      has no old basis and is left out).

    Each is ``{layer: [tasks]}``; any may be None."""
    series = []
    if old_energy:
        series.append(("HLOP, at the task's start: inside the earlier tasks' subspace (overlap)", old_energy,
                       "tab:blue", "o", "-", True))
    if captured_energy:
        series.append(("HLOP, at the task's end: inside the whole subspace (protected from now on)",
                       captured_energy, "tab:blue", "s", "--", False))
    if gpm_captured:
        series.append(("GPM, at the task's end: inside the earlier tasks' basis (overlap)", gpm_captured,
                       "tab:orange", "D", "-", True))
    layers = natural_sorted({k for _, d, *_ in series for k in d})
    if not layers:
        raise NoData("no subspace energy given")
    n_tasks = max(len(_floats(d[k])) for _, d, *_ in series for k in d)
    fig = new_figure(max(3.5 * min(len(layers), 3), 6.4), 3.0 * -(-len(layers) // 3) + 1.3)
    axes = _grid(fig, len(layers))
    handles = {}
    for ax, name in zip(axes, layers):
        drawn = False
        for label, d, color, marker, ls, old in series:
            if name not in d:
                continue
            y = _floats(d[name]) * 100
            if old and y.size:
                y = y.copy()
                y[0] = np.nan  # task 0 has no old subspace
            x = np.arange(y.size)
            ok = np.isfinite(y)
            if not ok.any():
                continue
            (h,) = ax.plot(x[ok], y[ok], color=color, marker=marker, linestyle=ls, linewidth=1.5, markersize=5)
            handles.setdefault(label, h)
            if n_tasks <= 4:  # few points: write the values
                for xi, yi in zip(x[ok], y[ok]):
                    ax.annotate(f"{yi:.0f}%", (xi, yi), textcoords="offset points", xytext=(7, -3), fontsize=7,
                                color=color)
            drawn = True
        if not drawn:
            _note(ax, "one task: no old subspace yet")
        ax.set_ylim(-3, 103)
        ax.set_ylabel("task's input energy (%)")
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
        _task_ticks(ax, n_tasks)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=1, fontsize=8,
                   frameon=False)
    fig.suptitle(title or "How much of each task's input lies in the protected subspace", fontsize=11,
                 fontweight="bold")
    return fig


# -- subspace sizes ------------------------------------------------------------------------------------
def subspace_sizes(sizes: Mapping[str, Sequence[int]] | Mapping[str, Mapping[str, Sequence[int]]],
                   dims: Mapping[str, int] | None = None, title: str | None = None) -> Figure:
    """Subspace dimension per layer after each task: ``{layer: [tasks]}`` (one method) or
    ``{method: {layer: [tasks]}}`` (e.g. ``HLOP``, ``GPM``), with each layer's input dimension
    ``dims[layer]`` (the largest possible) as a dashed line."""
    if sizes and all(isinstance(v, Mapping) for v in sizes.values()):
        by_method = {str(m): dict(v) for m, v in sizes.items()}
    else:
        by_method = {"subspace": dict(sizes)}
    layers = natural_sorted({k for v in by_method.values() for k in v})
    if not layers:
        raise NoData("no subspace sizes given")
    n_tasks = max(len(_floats(v[k])) for v in by_method.values() for k in v)
    fig = new_figure(max(3.5 * min(len(layers), 3), 6.4), 3.0 * -(-len(layers) // 3) + 1.0)
    axes = _grid(fig, len(layers))
    handles = {}
    markers = "osD^v"
    for ax, name in zip(axes, layers):
        top = 0.0
        for j, (method, d) in enumerate(by_method.items()):
            if name not in d:
                continue
            y = _floats(d[name])
            color = METHOD_COLORS.get(method, f"C{j}")
            (h,) = ax.plot(np.arange(y.size), y, color=color, marker=markers[j % 5], linewidth=1.5,
                           markersize=6 - j, linestyle=("-", "--", ":", "-.")[j % 4], alpha=0.9)
            handles.setdefault(method, h)
            top = max(top, float(np.nanmax(y)) if y.size else 0.0)
        D = (dims or {}).get(name)
        if D:
            ax.axhline(D, color="0.4", linestyle=":", linewidth=1.2)
            ax.text(0.02, D, f"input dimension D = {D}", transform=ax.get_yaxis_transform(), ha="left",
                    va="bottom", fontsize=8, color="0.3")
            top = max(top, D)
        ax.set_ylim(0, top * 1.12 if top > 0 else 1)
        ax.set_ylabel("dimension (rows)")
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
        _task_ticks(ax, n_tasks)
        ax.set_xlabel("after task")
    if len(handles) > 1 or "subspace" not in handles:
        names = {"HLOP": "HLOP: subspace neurons", "GPM": "GPM: basis vectors"}
        fig.legend(list(handles.values()), [names.get(k, k) for k in handles], loc="outside lower center",
                   ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title or "Size of the protected subspace", fontsize=11, fontweight="bold")
    return fig


# -- principal angles ---------------------------------------------------------------------------------
def _orthonormal(rows: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """Orthonormal rows spanning ``rows`` ``[k, D]``, from the small ``k x k`` Gram matrix
    (``Q = L^-1/2 V^T rows``; directions with a singular value below ``rtol * max`` dropped)."""
    if rows.shape[0] == 0:
        return rows
    rows = rows.astype(np.float64)
    lam, V = np.linalg.eigh(rows @ rows.T)
    keep = lam > (rtol ** 2) * max(float(lam.max()), 1e-300)
    return (V[:, keep] / np.sqrt(lam[keep])).T @ rows


def task_subspace_angles(H: np.ndarray, sizes: Sequence[int], reduce: str = "min") -> np.ndarray:
    """Principal angles (degrees) between the subspaces the tasks added: ``H [M, D]`` holds the
    rows of every task in order, ``sizes`` the cumulative row counts after each task (task ``i``
    owns rows ``sizes[i-1]:sizes[i]``). Each block is orthonormalised, ``cos`` of the angles
    are the singular values of ``Q_i Q_j^T``; ``reduce`` is ``"mean"`` or ``"min"`` (the
    smallest angle: the most shared direction). Returns ``[tasks, tasks]`` (``NaN`` where a
    task added no rows)."""
    if reduce not in ("mean", "min"):
        raise ValueError(f"reduce must be 'mean' or 'min', got {reduce!r}")
    H = np.asarray(H, dtype=np.float64)
    sizes = [int(s) for s in np.asarray(sizes).ravel()]
    if any(b < a for a, b in zip([0] + sizes, sizes)) or (sizes and sizes[-1] > H.shape[0]):
        raise ValueError(f"sizes {sizes} are not cumulative row counts of H with {H.shape[0]} rows")
    Q = [_orthonormal(H[a:b]) for a, b in zip([0] + sizes[:-1], sizes)]
    n = len(Q)
    out = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(i, n):
            if Q[i].shape[0] == 0 or Q[j].shape[0] == 0:
                continue
            s = np.clip(np.linalg.svd(Q[i] @ Q[j].T, compute_uv=False), -1.0, 1.0)
            ang = np.degrees(np.arccos(s))
            out[i, j] = out[j, i] = float(ang.mean() if reduce == "mean" else ang.min())
    return out


def principal_angles(subspaces: Mapping[str, tuple[np.ndarray, Sequence[int]]]
                     | Mapping[str, Mapping[str, tuple[np.ndarray, Sequence[int]]]],
                     reduce: str = "min", title: str | None = None) -> Figure:
    """Heatmaps of the principal angle (degrees) between every two tasks' subspaces
    (:func:`task_subspace_angles`; ``reduce="min"``: the smallest angle, i.e. the direction the
    two share most; ``"mean"``: the average over all angles): ``{layer: (H, sizes)}``, or
    ``{method: {layer: (H, sizes)}}`` for a row of panels per method. The diagonal (a task
    with itself) is grey; the colour range starts at most at 80 degrees so that nearly
    orthogonal subspaces still differ in colour, and the angles are written in the cells."""
    if subspaces and all(isinstance(v, Mapping) for v in subspaces.values()):
        by_method = {str(m): dict(v) for m, v in subspaces.items()}
    else:
        by_method = {"": dict(subspaces)}
    mats = {m: {k: task_subspace_angles(H, s, reduce) for k, (H, s) in _natural_items(d)}
            for m, d in by_method.items()}
    mats = {m: {k: a for k, a in d.items() if a.shape[0] >= 2} for m, d in mats.items()}
    mats = {m: d for m, d in mats.items() if d}
    if not mats:
        raise NoData("principal angles need at least two tasks")
    ncols = max(len(d) for d in mats.values())
    nrows = len(mats)
    n_max = max(a.shape[0] for d in mats.values() for a in d.values())
    off = np.concatenate([a[~np.eye(a.shape[0], dtype=bool)] for d in mats.values() for a in d.values()])
    off = off[np.isfinite(off)]
    # the colour range starts below the smallest angle (at most 80 degrees): near-orthogonal
    # subspaces (the usual case) still show their differences; the numbers are written in the cells
    lo = min(80.0, float(np.floor(off.min() / 10) * 10)) if off.size else 0.0
    cell = 3.0 if n_max <= 6 else 3.3
    width = min(max(cell * ncols + 1.0, 5.2), 10.5)
    cell = min(cell, (width - 1.0) / ncols)
    fig = new_figure(width, cell * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    from matplotlib import colormaps

    cmap = colormaps["magma"].with_extremes(bad="0.85")
    im = None
    for r, (method, d) in enumerate(mats.items()):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(d):
                ax.remove()
                continue
            name, A = list(d.items())[c]
            n = A.shape[0]
            M = A.copy()
            M[np.eye(n, dtype=bool)] = np.nan
            im = ax.imshow(np.ma.masked_invalid(M), cmap=cmap, vmin=lo, vmax=90, interpolation="nearest")
            if n <= 12:
                fs = 8 if n <= 5 else 6.5 if n <= 8 else 5.5
                fmt = "{:.1f}" if n <= 8 else "{:.0f}"
                for i in range(n):
                    for j in range(n):
                        if i != j and np.isfinite(M[i, j]):
                            dark = (M[i, j] - lo) / max(90 - lo, 1e-9) < 0.55
                            ax.text(j, i, fmt.format(M[i, j]), ha="center", va="center", fontsize=fs,
                                    color="white" if dark else "black")
            ticks = range(n) if n <= 12 else np.unique(np.linspace(0, n - 1, 8).round().astype(int))
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.tick_params(labelsize=8)
            ax.set_xlabel("task")
            ax.set_ylabel("task")
            ax.set_title(f"{method} {name}".strip(), fontsize=10)
    kept = [a for a in axes.flat if a in fig.axes]
    cb = fig.colorbar(im, ax=kept, shrink=0.85 if nrows > 1 else 0.95, pad=0.02)
    what = "smallest" if reduce == "min" else "mean"
    cb.set_label(f"{what} principal angle (degrees)", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    fig.suptitle(title or f"Overlap of the tasks' subspaces\n({what} principal angle; 90 = orthogonal)",
                 fontsize=11, fontweight="bold")
    return fig


def _natural_items(d: Mapping) -> list:
    return [(k, d[k]) for k in natural_sorted(d)]


# -- run-level figures -----------------------------------------------------------------------------------
def _plugin(run: Run, name: str) -> dict[str, dict]:
    tree = run.h5.get("plugins", {}).get(name, {})
    return {k: tree[k] for k in natural_sorted(tree) if isinstance(tree[k], dict)} if isinstance(tree, dict) else {}


def _nothing(run: Run, what: str) -> NoData:
    if not run.h5:
        return NoData(f"no run.h5 to read {what} from")
    return NoData(f"no {what} in run.h5 (method {run.method})")


def _config_section(run: Run, name: str) -> dict:
    if not run.config:
        return {}
    try:
        import tomllib

        sec = tomllib.loads(run.config).get(name, {})
    except Exception:  # noqa: BLE001
        return {}
    return sec if isinstance(sec, dict) else {}


def _gpm_rows(U: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """GPM's basis as rows ``[k, D]`` (its records hold ``U`` as rows; accept columns too)."""
    U = np.asarray(U)
    k = int(sizes[-1]) if len(sizes) else 0
    if U.ndim == 2 and U.shape[0] != k and U.shape[1] == k:
        return U.T
    return U


def run_hlop_activity(run: Run) -> Figure:
    """HLOP's subspace neurons' mean ``|y|`` during each task, per protected layer."""
    hlop = _plugin(run, "hlop")
    act = {}
    for layer, rec in hlop.items():
        a = rec.get("activity", {})
        if isinstance(a, dict) and task_indices(a):
            act[layer] = [a[f"task_{i}"] for i in task_indices(a)]
    if not act:
        raise _nothing(run, "HLOP activity records")
    return subspace_activity(act, title=f"{run.label}: activity |y| = |Hx| of HLOP's subspace neurons per task")


def run_subspace_energy(run: Run) -> Figure:
    """HLOP's ``old_energy`` and ``captured_energy`` and GPM's ``captured_by_old_basis`` per layer."""
    hlop, gpm = _plugin(run, "hlop"), _plugin(run, "gpm")
    old, cap, g = {}, {}, {}
    for layer, rec in hlop.items():
        c = _floats(rec.get("captured_energy", []))
        if c.size:  # without it (energy_samples = 0) old_energy holds placeholders only
            cap[layer] = c
            if "old_energy" in rec:
                old[layer] = _floats(rec["old_energy"])
    for layer, rec in gpm.items():
        c = _floats(rec.get("captured_by_old_basis", []))
        if c.size:
            g[layer] = c
    if not (old or cap or g):
        raise _nothing(run, "HLOP/GPM subspace-energy records")
    return subspace_energy(old or None, cap or None, g or None,
                           title=f"{run.label}: share of each task's input inside the protected subspace")


def run_subspace_sizes(run: Run) -> Figure:
    """Subspace dimension after each task per layer (HLOP's neurons, GPM's basis vectors)."""
    sizes: dict[str, dict[str, np.ndarray]] = {}
    dims: dict[str, int] = {}
    for method, key, mat in (("HLOP", "hlop", "H"), ("GPM", "gpm", "U")):
        for layer, rec in _plugin(run, key).items():
            s = np.asarray(rec.get("sizes", []))
            if s.size:
                sizes.setdefault(method, {})[layer] = s
                if isinstance(rec.get(mat), np.ndarray) and rec[mat].ndim == 2:
                    dims[layer] = int((rec[mat] if key == "hlop" else _gpm_rows(rec[mat], s)).shape[1])
    if not sizes:
        raise _nothing(run, "HLOP/GPM subspace sizes")
    return subspace_sizes(sizes, dims, title=f"{run.label}: size of the protected subspace")


def run_principal_angles(run: Run) -> Figure:
    """Smallest principal angle between the subspaces of every two tasks (HLOP's ``H`` blocks;
    GPM's basis blocks, orthogonal by construction, for comparison)."""
    subspaces: dict[str, dict] = {}
    reasons = []
    hlop = _plugin(run, "hlop")
    if hlop and _config_section(run, "hlop").get("orthonormalize") is True:
        reasons.append("HLOP ran with orthonormalize = true (H's rows are no longer grouped by task)")
        hlop = {}
    for method, tree, mat in (("HLOP", hlop, "H"), ("GPM", _plugin(run, "gpm"), "U")):
        for layer, rec in tree.items():
            s = np.asarray(rec.get("sizes", []))
            M = rec.get(mat)
            if not isinstance(M, np.ndarray) or M.ndim != 2 or not s.size:
                continue
            M = M if method == "HLOP" else _gpm_rows(M, s)
            if s[-1] > M.shape[0]:
                continue
            if s.size < 2:
                reasons.append("one task: no pair of tasks to compare")
                continue
            subspaces.setdefault(method, {})[layer] = (M, s)
    if not subspaces:
        if reasons:
            raise NoData(reasons[-1])
        raise _nothing(run, "HLOP/GPM subspaces (H, U)")
    return principal_angles(subspaces, reduce="min", title=(
        f"{run.label}: smallest principal angle between the tasks' subspaces\n"
        "(the direction two tasks share most; 90 = orthogonal, 0 = shared)"))


#: the run figures of this module, in reading order
RUN_FIGURES: dict[str, Callable[[Run], Figure]] = {
    "hlop_activity": run_hlop_activity,
    "subspace_energy": run_subspace_energy,
    "subspace_sizes": run_subspace_sizes,
    "principal_angles": run_principal_angles,
}
