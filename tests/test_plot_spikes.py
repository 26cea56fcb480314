"""Spike, projection and animation figures (neuroplastic.plot.spikes / projection / animation).

Every run figure is drawn from a small real run (HLOP, GPM and fine-tuning side by side) and
from synthetic runs at the extremes (1 and 10 tasks, layers of 10 and 800 neurons); each is
checked for content: something drawn inside every axes, titles and axis labels set. Set
``NEUROPLASTIC_PLOT_REVIEW=DIR`` to keep the PNGs and the GIF for a look.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from neuroplastic.errors import UserError
from neuroplastic.plot import animation, projection, spikes
from neuroplastic.plot.runs import Run, load_runs
from neuroplastic.plot.style import NoData, rendered, save_png

SMALL_RUN = """
[data]
max_per_task = 200
[model]
hidden = [64]
[train]
epochs = 2
batch_size = 32
time_steps = 8
[hlop]
energy_samples = 64
[gpm]
n_samples = 64
"""

RUN_FIGURES = {**spikes.RUN_FIGURES, **projection.RUN_FIGURES}


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from neuroplastic.cli import main

    tmp = tmp_path_factory.mktemp("plotrun")
    (tmp / "small.toml").write_text(SMALL_RUN)
    out = tmp / "run"
    assert main(["run", str(tmp / "small.toml"), "--method", "hlop,gpm,finetune", "--tasks", "3",
                 "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def runs(run_dir) -> dict[str, Run]:
    return {r.method: r for r in load_runs(run_dir)}


@pytest.fixture
def review(tmp_path) -> Path:
    """Where figures go: ``$NEUROPLASTIC_PLOT_REVIEW`` (kept) or a temporary directory."""
    d = os.environ.get("NEUROPLASTIC_PLOT_REVIEW")
    out = Path(d) if d else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


def keep(fig: Figure, path: Path) -> None:
    """Save a figure for review (only when ``$NEUROPLASTIC_PLOT_REVIEW`` is set: rendering twice costs)."""
    if os.environ.get("NEUROPLASTIC_PLOT_REVIEW"):
        save_png(fig, path)


def synthetic_run(tmp: Path, n_tasks: int, T: int = 150, sizes=(800, 10), seed: int = 0) -> Run:
    """A run as ``load_runs`` returns it, with every record the figures read (HLOP and GPM)."""
    rng = np.random.default_rng(seed)
    n_in, n_samples = 784, 4
    layers = {f"lif{i + 1}": n for i, n in enumerate(sizes)}
    probe = {"labels": np.arange(n_samples), "input": rng.random((T, n_samples, 256)) < 0.2,
             "neurons": {}, "trace_neurons": {}}
    rates = {}
    for i in range(n_tasks):
        entry = probe[f"task_{i}"] = {}
        rates[f"task_{i}"] = {}
        for name, n in layers.items():
            keep = np.unique(np.linspace(0, n - 1, min(n, 256)).round().astype(int))
            probe["neurons"][name] = keep
            probe["trace_neurons"][name] = np.unique(np.linspace(0, n - 1, min(n, 8)).round().astype(int))
            p = rng.beta(0.6, 4.0, size=n) * (1 + 0.05 * i)  # heterogeneous rates
            z = rng.random((T, n_samples, n)) < p
            v = rng.normal(0.4, 0.35, (T, n_samples, len(probe["trace_neurons"][name]))).astype(np.float32)
            entry[name] = {"spikes": z[:, :, keep], "v": v, "v_th": 1.0}
            rates[f"task_{i}"][name] = np.where(rng.random(n) < 0.15, 0.0, p).astype(np.float32)
    dims = {"fc1": n_in, "fc2": sizes[0], "fc3": sizes[1]}
    hlop, gpm = {}, {}
    for L, D in dims.items():
        inc = max(1, D // 12)
        s = np.minimum(np.cumsum([inc] * n_tasks), D)
        Q = np.linalg.qr(rng.normal(size=(D, s[-1])))[0].T  # orthonormal rows [s[-1], D]
        H = Q + 0.2 * rng.normal(size=(s[-1], D)) / np.sqrt(D) * (np.arange(s[-1])[:, None] % 3)
        hlop[L] = {"H": H.astype(np.float32), "sizes": s,
                   "old_energy": np.r_[np.nan, np.linspace(0.2, 0.7, n_tasks - 1)],
                   "captured_energy": np.linspace(0.6, 0.9, n_tasks),
                   "activity": {f"task_{i}": np.abs(rng.normal(1, 0.5, s[i])).astype(np.float32)
                                for i in range(n_tasks)}}
        gpm[L] = {"U": Q.astype(np.float32), "sizes": s,
                  "captured_by_old_basis": np.r_[0.0, np.linspace(0.5, 0.9, n_tasks - 1)]}
    gpm["svd_s"] = np.ones(n_tasks)
    h5 = {"probe": probe, "rates": rates, "plugins": {"hlop": hlop, "gpm": gpm},
          "acc_matrix": np.full((n_tasks, n_tasks), 90.0)}
    return Run(path=tmp, method="hlop+gpm", h5=h5, config="[model]\ndt = 0.001\n",
               metrics={"tasks": [f"perm-{i}" for i in range(n_tasks)]})


# -- content checks --------------------------------------------------------------------------
def check_figure(fig: Figure, title: str | None = None) -> None:
    """Titles and labels set; every axes has something drawn inside it (not just background)."""
    assert isinstance(fig, Figure)
    px = rendered(fig)
    H = px.shape[0]
    bg = px[2, 2, :3].astype(int)  # the figure's background (a corner)
    texts = [fig.get_suptitle()] + [sf.get_suptitle() for sf in fig.subfigs]
    assert any(t.strip() for t in texts), "no figure title"
    if title:
        assert any(title in t for t in texts), (title, texts)
    assert _all_axes(fig), "figure has no axes"
    xlabels = ylabels = 0
    for ax in _all_axes(fig):
        if not ax.get_visible():
            continue
        bb = ax.get_window_extent()
        x0, x1 = int(bb.x0) + 3, int(bb.x1) - 3
        y0, y1 = H - int(bb.y1) + 3, H - int(bb.y0) - 3
        if x1 <= x0 or y1 <= y0:
            continue
        inside = px[y0:y1, x0:x1, :3].astype(int)
        differs = np.abs(inside - bg).sum(-1) > 30
        label = ax.get_title() or ax.get_title(loc="left") or ax.get_ylabel() or ax.get_label()
        assert differs.mean() > 0.001, f"empty axes {label!r}"
        xlabels += bool(ax.get_xlabel())
        ylabels += bool(ax.get_ylabel())
    assert xlabels and ylabels, "axis labels missing"
    # no title, axis label or legend runs off the figure (cut text)
    renderer = fig.canvas.get_renderer()
    W = px.shape[1]
    texts = []
    for f in [fig, *fig.subfigs]:
        texts += [t for t in (f._suptitle, f._supxlabel, f._supylabel) if t is not None]
    for ax in _all_axes(fig):
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
    for leg in fig.legends + [ax.get_legend() for ax in _all_axes(fig) if ax.get_legend()]:
        texts += list(leg.get_texts())
    for t in texts:
        if t.get_visible() and t.get_text().strip():
            bb = t.get_window_extent(renderer)
            assert bb.x0 >= -2 and bb.x1 <= W + 2 and bb.y0 >= -2 and bb.y1 <= H + 2, f"text cut: {t.get_text()!r}"
    for ax in _all_axes(fig):
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel() or ax.get_xlabel(), "colour bar without a label"


def _all_axes(fig) -> list:
    out = list(fig.axes)
    for sf in getattr(fig, "subfigs", []):
        out += [a for a in _all_axes(sf) if a not in out]
    return out


def _plot_axes(fig) -> list:
    """Axes of data (not colour bars or secondary axes)."""
    return [a for a in _all_axes(fig) if a.get_label() != "<colorbar>" and a.get_xlabel() != "added in task"]


# -- run figures of a real run ------------------------------------------------------------------
def test_run_figures_of_every_method(runs, review):
    assert set(runs) == {"hlop", "gpm", "finetune"}
    expect_nodata = {("finetune", k) for k in projection.RUN_FIGURES} | {("gpm", "hlop_activity")}
    for method, run in runs.items():
        for name, fn in RUN_FIGURES.items():
            if (method, name) in expect_nodata:
                with pytest.raises(NoData) as exc:
                    fn(run)
                assert "\n" not in str(exc.value) and method in str(exc.value)
                continue
            fig = fn(run)
            check_figure(fig, title=method)
            keep(fig, review / f"{method}_{name}.png")
    hl = runs["hlop"]
    # the raster holds the input and the hidden layer; the neuron axis is labelled with indices
    fig = spikes.run_raster(hl)
    heads = [sf.get_suptitle() for sf in fig.subfigs]
    assert heads[0].startswith("input") and heads[1].startswith("lif1: 64 neurons"), heads
    assert any(ax.get_xlabel() == "time (ms)" for ax in _all_axes(fig))
    # GPM's energy and sizes appear with HLOP's in a composed run; here: each on its own
    e = projection.run_subspace_energy(runs["gpm"])
    assert any("GPM" in t.get_text() for leg in e.legends for t in leg.get_texts())
    s = projection.run_subspace_sizes(hl)
    assert any("input dimension D = 784" in t.get_text() for ax in s.axes for t in ax.texts)


def test_run_figures_earlier_task_and_bad_choice(runs):
    hl = runs["hlop"]
    check_figure(spikes.run_raster(hl, task=0, sample=1), title="after task 0")
    check_figure(spikes.run_membrane(hl, task=1), title="after task 1")
    with pytest.raises(NoData, match="after task 7"):
        spikes.run_raster(hl, task=7)
    with pytest.raises(NoData, match="sample 9"):
        spikes.run_raster(hl, sample=9)


def test_no_records_is_nodata(tmp_path):
    empty = Run(path=tmp_path, method="finetune")
    for fn in RUN_FIGURES.values():
        with pytest.raises(NoData):
            fn(empty)
    with pytest.raises(NoData):
        animation.animate_run(empty, tmp_path / "a.gif")


# -- extremes: 1 and 10 tasks, layers of 10 and 800 neurons ---------------------------------------
@pytest.mark.parametrize("n_tasks", [1, 10])
def test_synthetic_runs(tmp_path, review, n_tasks):
    run = synthetic_run(tmp_path, n_tasks)
    for name, fn in RUN_FIGURES.items():
        if n_tasks == 1 and name == "principal_angles":
            with pytest.raises(NoData, match="two tasks|one task"):
                fn(run)
            continue
        fig = fn(run)
        check_figure(fig)
        keep(fig, review / f"synthetic{n_tasks}_{name}.png")
    if n_tasks == 10:
        fig = projection.run_principal_angles(run)
        assert len(_plot_axes(fig)) == 6  # HLOP and GPM x 3 layers


def test_raster_arrays(review):
    rng = np.random.default_rng(1)
    # one layer of 10 neurons, no dt: steps
    fig = spikes.raster(rng.random((40, 10)) < 0.3, title="ten neurons")
    check_figure(fig, "ten neurons")
    assert any(ax.get_xlabel() == "time step" for ax in fig.subfigs[0].axes)
    # 800 neurons over 1000 steps in ms, and a silent layer: every panel still has content
    z = {"big": rng.random((1000, 800)) < 0.02, "silent": np.zeros((1000, 5), bool)}
    fig = spikes.raster(z, dt=1e-3, max_neurons=100)
    check_figure(fig)
    assert "800 neurons, 100 shown" in fig.subfigs[0].get_suptitle()
    assert any("no spikes" in t.get_text() for ax in fig.subfigs[1].axes for t in ax.texts)
    keep(fig, review / "array_raster_800.png")
    # the neuron axis shows the given neuron ids
    fig = spikes.raster(np.ones((5, 3)), neurons=np.array([7, 70, 700]))
    rendered(fig)
    ax = fig.subfigs[0].axes[0]
    assert {t.get_text() for t in ax.get_yticklabels()} <= {"7", "70", "700", ""}
    with pytest.raises(NoData):
        spikes.raster({})
    with pytest.raises(ValueError):
        spikes.raster(np.zeros((2, 3, 4)))


def test_rate_histogram_and_membrane_arrays(review):
    rng = np.random.default_rng(2)
    one = {"lif1": rng.beta(0.5, 3, 800), "lif2": rng.beta(0.5, 3, 10)}
    check_figure(spikes.rate_histogram(one), "Firing rates")
    ten = [{"lif1": rng.beta(0.5, 3 + i, 800)} for i in range(10)]
    fig = spikes.rate_histogram(ten[:3], labels=["a", "b", "c"])  # overlaid
    check_figure(fig)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c"]
    fig = spikes.rate_histogram(ten, labels=[f"task {i}" for i in range(10)])  # a heatmap
    check_figure(fig)
    assert not fig.legends and fig.axes[0].get_yticklabels()[-1].get_text() == "task 9"
    keep(fig, review / "array_rate_histogram_10.png")
    v = np.cumsum(rng.normal(0.1, 0.3, (120, 5)), 0) % 1.3
    z = v >= 1.0
    fig = spikes.membrane_traces(v, 1.0, z, dt=5e-4, neurons=[3, 9, 27, 81, 243])
    check_figure(fig, "Membrane")
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["neuron 3", "neuron 9", "neuron 27", "neuron 81", "neuron 243"]
    assert fig.axes[-1].get_xlabel() == "time (ms)"
    keep(fig, review / "array_membrane.png")
    check_figure(spikes.membrane_traces(rng.normal(size=(30, 40)), np.linspace(0.5, 1.5, 40)))  # 8 of 40


def test_projection_arrays(review):
    rng = np.random.default_rng(3)
    acts = {"fc1": [rng.random(s) for s in (20, 35, 50)], "fc2": [rng.random(4)]}
    check_figure(projection.subspace_activity(acts), "Activity")
    check_figure(projection.subspace_energy({"fc1": [np.nan]}, {"fc1": [0.6]}))  # one task
    fig = projection.subspace_energy(None, None, {"a": [0, 0.4, 0.5], "b": [0, 0.7, 0.8]})
    check_figure(fig)
    check_figure(projection.subspace_sizes({"fc1": [10, 20, 30]}, {"fc1": 64}), "Size")
    check_figure(projection.subspace_sizes({"HLOP": {"fc1": [10, 20]}, "GPM": {"fc1": [5, 40]}}))
    # two tasks whose subspaces share one direction (smallest angle 0) and are 45 degrees apart in another
    e = np.eye(4)
    H = np.stack([e[0], e[1], e[0], (e[1] + e[2]) / np.sqrt(2)])
    A = projection.task_subspace_angles(H, [2, 4], reduce="min")
    assert A[0, 1] == pytest.approx(0.0, abs=1e-6) and A[0, 0] == pytest.approx(0.0, abs=1e-6)
    M = projection.task_subspace_angles(H, [2, 4], reduce="mean")
    assert M[0, 1] == pytest.approx(22.5, abs=1e-6)
    # GPM-like blocks: orthogonal; an empty block gives NaN
    A = projection.task_subspace_angles(np.eye(6)[:5], [2, 2, 5])
    assert A[0, 2] == pytest.approx(90.0) and np.isnan(A[1, 0])
    fig = projection.principal_angles({"fc1": (H, [2, 4])}, reduce="mean")
    check_figure(fig)
    keep(fig, review / "array_principal_angles.png")
    with pytest.raises(NoData):
        projection.principal_angles({"fc1": (H, [4])})
    with pytest.raises(ValueError):
        projection.task_subspace_angles(H, [3, 2])


# -- simulate output --------------------------------------------------------------------------
def test_raster_from_simulation(run_dir, tmp_path, review):
    from neuroplastic.cli import main

    nir = tmp_path / "m.nir"
    assert main(["export", str(run_dir), "--method", "hlop", "--format", "nir", "-o", str(nir), "--quiet"]) == 0
    x = np.random.default_rng(0).random((30, 3, 784)) < 0.3
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "sim.h5"
    assert main(["simulate", str(nir), str(tmp_path / "x.npy"), "-o", str(out), "--quiet"]) == 0
    fig = spikes.raster_from_simulation(str(out), sample=2)
    check_figure(fig, "sample 2")
    heads = [sf.get_suptitle() for sf in fig.subfigs]
    assert [h.split(":")[0] for h in heads] == ["lif1"]  # the LI readout has no spikes
    assert any(ax.get_xlabel() == "time (ms)" for ax in _all_axes(fig))
    keep(fig, review / "simulate_raster.png")
    with pytest.raises(UserError, match="out of range"):
        spikes.raster_from_simulation(out, sample=3)
    with pytest.raises(UserError, match="not found"):
        spikes.raster_from_simulation(tmp_path / "nope.h5")
    out_v = tmp_path / "sim_v.h5"
    assert main(["simulate", str(nir), str(tmp_path / "x.npy"), "-o", str(out_v), "--record", "v", "--quiet"]) == 0
    with pytest.raises(NoData, match="no spikes"):
        spikes.raster_from_simulation(out_v)


# -- animation --------------------------------------------------------------------------------
def test_animate_run_gif(runs, review):
    from PIL import Image

    t0 = time.perf_counter()
    path = animation.animate_run(runs["hlop"], review / "hlop_spikes.gif")
    assert time.perf_counter() - t0 < 3.0
    assert path == review / "hlop_spikes.gif" and path.is_file()
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 8  # one frame per step (T = 8)
    assert not [p for p in review.iterdir() if p.name.startswith(".hlop_spikes.gif")]  # no temp file left


def test_animate_long_run_is_bounded(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    z = {"lif1": rng.random((500, 800)) < 0.02, "lif2": rng.random((500, 10)) < 0.2}
    path = animation.animate_spikes(z, tmp_path / "long.gif", dt=1e-3, max_frames=50)
    with Image.open(path) as im:
        assert im.n_frames == 50


def test_mp4_without_ffmpeg_writes_gif(runs, tmp_path, monkeypatch, capsys):
    import shutil

    from PIL import Image

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    path = animation.animate_run(runs["gpm"], tmp_path / "movie.mp4")
    err = capsys.readouterr().err
    assert path == tmp_path / "movie.gif" and path.is_file() and not (tmp_path / "movie.mp4").exists()
    assert "ffmpeg" in err and "movie.gif" in err and err.count("\n") == 1
    with Image.open(path) as im:
        assert im.n_frames > 1
    with pytest.raises(UserError, match=".gif or .mp4"):
        animation.animate_run(runs["gpm"], tmp_path / "movie.avi")


@pytest.mark.skipif(not __import__("shutil").which("ffmpeg"), reason="ffmpeg not on the PATH")
def test_mp4_with_ffmpeg(runs, tmp_path):
    path = animation.animate_run(runs["hlop"], tmp_path / "movie.mp4")
    assert path == tmp_path / "movie.mp4" and path.read_bytes()[4:8] == b"ftyp"  # an MP4 container
