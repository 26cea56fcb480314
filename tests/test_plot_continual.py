"""Continual-learning, sparsity/dormant and benchmark figures, rendered from a small real run
(two methods: dense fine-tuning and HLOP + GraNet + the dormant monitor) and checked for content.

Set ``NEUROPLASTIC_PLOT_REVIEW=DIR`` to keep the PNGs of the run for looking at them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from neuroplastic.errors import UserError
from neuroplastic.plot import bench, continual, sparsity
from neuroplastic.plot.runs import Run, load_runs
from neuroplastic.plot.style import NoData, rendered, save_png

CONFIG = """
methods = ["finetune", "hlop+granet+dormant"]
seed = 0
quiet = true
[data]
dataset = "digits"
tasks = 3
max_per_task = 300
[model]
hidden = [64]
[train]
epochs = 2
lr = 0.05
[granet]
sparsity = 0.8
update_every = 2
[dormant]
every = 2
"""

RUN_FIGURES = {**continual.RUN_FIGURES, **sparsity.RUN_FIGURES}
SPARSE_ONLY = {"sparsity", "sparse_schedule", "masks"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from neuroplastic.cli import main

    tmp = tmp_path_factory.mktemp("plotrun")
    cfg = tmp / "run.toml"
    cfg.write_text(CONFIG)
    assert main(["run", str(cfg), "--out", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run"


@pytest.fixture(scope="module")
def runs(run_dir) -> dict[str, Run]:
    return {r.method: r for r in load_runs(run_dir)}


@pytest.fixture(scope="module")
def review_dir(tmp_path_factory) -> Path:
    d = os.environ.get("NEUROPLASTIC_PLOT_REVIEW")
    return Path(d) if d else tmp_path_factory.mktemp("png")


def main_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def check_figure(fig, titles: tuple[str, ...] = (), xlabels: tuple[str, ...] = ()) -> None:
    """Content: something drawn inside every axes, every axes titled and labelled, tick labels
    side by side not overlapping, the expected title / x-label fragments present."""
    px = rendered(fig)
    h = px.shape[0]
    bg = np.round(np.asarray(to_rgba(fig.get_facecolor())[:3]) * 255).astype(np.uint8)
    renderer = fig.canvas.get_renderer()
    axes = main_axes(fig)
    assert axes, "figure without axes"
    for ax in axes:
        assert ax.has_data(), f"empty axes {ax.get_title()!r}"
        bb = ax.get_window_extent(renderer)
        x0, x1 = int(bb.x0) + 2, int(bb.x1) - 2
        y0, y1 = h - int(bb.y1) + 2, h - int(bb.y0) - 2  # pixel rows count from the top
        inside = px[y0:y1, x0:x1, :3]
        assert inside.size and (inside != bg).any(-1).mean() > 0.005, f"blank plotting area in {ax.get_title()!r}"
        assert ax.get_title().strip(), "axes without a title"
        assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), f"unlabelled axis in {ax.get_title()!r}"
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text() and t.get_rotation() == 0]
            boxes = [t.get_window_extent(renderer) for t in labels]
            for a, b in zip(boxes, boxes[1:]):
                assert not a.overlaps(b), f"overlapping tick labels in {ax.get_title()!r}"
    for cb in (ax for ax in fig.axes if ax.get_label() == "<colorbar>"):
        assert cb.get_ylabel().strip() or cb.get_xlabel().strip() or cb.get_yticklabels(), "unlabelled colour bar"
    text = " ".join([ax.get_title() for ax in axes] + [fig.get_suptitle()])
    for t in titles:
        assert t in text, f"{t!r} not in titles {text!r}"
    xl = " ".join(ax.get_xlabel() for ax in axes)
    for t in xlabels:
        assert t in xl, f"{t!r} not in x labels {xl!r}"


# --------------------------------------------------------------------------- from the real run


def test_run_figures_of_the_sparse_method(runs, review_dir):
    run = runs["hlop+granet+dormant"]
    assert list(RUN_FIGURES) == ["accuracy_matrix", "task_accuracy", "losses", "sparsity", "sparse_schedule",
                                 "dormant", "masks"]
    expect = {
        "accuracy_matrix": (("hlop+granet+dormant", "ACC", "BWT", "FWT"), ("evaluated on task j",)),
        "task_accuracy": (("accuracy on each task",), ("after training task",)),
        "losses": (("training loss per task",), ("training step",)),
        "sparsity": (("sparsity per layer",), ("after training task",)),
        "sparse_schedule": (("GraNet schedule", "Sparsity at each mask update", "regrown", "Death rate"),
                            ("training step",)),
        "dormant": (("After each task", "During training"), ("after training task", "training step")),
        "masks": (("fc1 [64 x 784]", "fc2 [10 x 64]", "present"), ("presynaptic neuron",)),
    }
    for name, fn in RUN_FIGURES.items():
        fig = fn(run)
        check_figure(fig, *expect[name])
        save_png(fig, review_dir / f"{run.method.replace('+', '_')}_{name}.png")
    R = run.acc_matrix
    fig = continual.run_accuracy_matrix(run)
    assert f"ACC {run.metrics['acc']:.1f}%" in fig.axes[0].get_title()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == run.tasks
    # one annotated value per cell
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {f"{v:.1f}" for v in R.ravel()} <= texts
    fig = sparsity.run_masks(run)
    present = 100 * np.mean(run.masks()["fc1"])
    assert f"{present:.1f}% of synapses present" in main_axes(fig)[0].get_title()


def test_dense_method_skips_the_sparse_figures(runs, review_dir):
    run = runs["finetune"]
    for name, fn in RUN_FIGURES.items():
        if name in SPARSE_ONLY:
            with pytest.raises(NoData) as exc:
                fn(run)
            assert "\n" not in str(exc.value) and str(exc.value)
        else:
            fig = fn(run)
            check_figure(fig)
            save_png(fig, review_dir / f"{run.method}_{name}.png")
    with pytest.raises(NoData, match="GraNet"):
        sparsity.run_sparse_schedule(run)


def test_compare_figures(runs, run_dir, review_dir):
    both = list(runs.values())
    assert list(continual.COMPARE_FIGURES) == ["compare_accuracy", "compare_task_accuracy"]
    for name, fn in continual.COMPARE_FIGURES.items():
        fig = fn(both)
        check_figure(fig)
        save_png(fig, review_dir / f"{name}.png")
    fig = continual.compare_accuracy(str(run_dir))  # a run directory of several methods
    ticks = [t.get_text() for t in main_axes(fig)[0].get_xticklabels()]
    assert ticks == [r.label for r in both]
    assert [ax.get_ylabel() for ax in main_axes(fig)] == ["ACC (%)", "BWT (percentage points)",
                                                          "FWT (percentage points)"]
    fig = continual.compare_task_accuracy(both)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [r.label for r in both]


def test_run_directory_paths_accepted(run_dir):
    check_figure(continual.run_accuracy_matrix(str(run_dir / "finetune")))
    check_figure(sparsity.run_masks(run_dir / "hlop+granet+dormant"))


def test_a_run_without_records_gives_nodata(tmp_path):
    empty = Run(path=tmp_path, method="x")
    for fn in RUN_FIGURES.values():
        with pytest.raises(NoData):
            fn(empty)
    for fn in continual.COMPARE_FIGURES.values():
        with pytest.raises(NoData):
            fn([empty, empty])


def test_interrupted_run(runs):
    run = runs["hlop+granet+dormant"]
    part = Run(path=run.path, method=run.method, h5={**run.h5, "acc_matrix": run.h5["acc_matrix"][:2]})
    fig = continual.run_accuracy_matrix(part)
    assert "2 of 3 tasks trained" in fig.axes[0].get_title()
    check_figure(fig)
    check_figure(continual.run_task_accuracy(part))
    fig = continual.compare_accuracy([runs["finetune"], part])
    assert "(2 of 3 tasks)" in " ".join(t.get_text() for t in main_axes(fig)[0].get_xticklabels())


def test_older_layout(runs):
    """A run.h5 from before the figure records: matrix and losses only; metrics.json has the rest."""
    run = runs["hlop+granet+dormant"]
    h5 = {k: run.h5[k] for k in ("acc_matrix", "baseline", "losses")}
    old = Run(path=run.path, method=run.method, metrics=run.metrics, h5=h5)
    for name in ("accuracy_matrix", "task_accuracy", "losses", "sparsity"):
        check_figure(RUN_FIGURES[name](old))
    ticks = [t.get_text() for t in sparsity.run_sparsity(old).axes[0].get_xticklabels()]
    assert ticks == [run.tasks[-1]]  # metrics.json holds the sparsity after the last task
    for name in ("sparse_schedule", "dormant"):
        with pytest.raises(NoData):
            RUN_FIGURES[name](old)


# --------------------------------------------------------------------------- arrays: 1 and 10 tasks, 5 methods


@pytest.mark.parametrize("T", [1, 10])
def test_array_figures_one_and_ten_tasks(T):
    rng = np.random.default_rng(T)
    R = rng.uniform(0, 100, (T, T))
    b = rng.uniform(0, 20, T)
    names = [f"perm-{j}" for j in range(T)]
    fig = continual.accuracy_matrix(R, names, baseline=b)
    check_figure(fig, ("ACC",), ("evaluated on task j",))
    assert ("BWT" in fig.axes[0].get_title()) == (T > 1)
    check_figure(continual.task_accuracy(R, b, names), ("over the sequence",))
    check_figure(continual.losses({f"task_{j}": rng.random(25) for j in range(T)}, names))
    methods = ["finetune", "ewc", "gpm", "hlop", "hlop+granet"]
    table = {m: continual.summary_of(Run(path=Path("."), method=m, h5={"acc_matrix": R - k, "baseline": b}))
             for k, m in enumerate(methods)}
    fig = continual.method_metrics(table)
    check_figure(fig)
    assert len(main_axes(fig)) == (3 if T > 1 else 1)
    if T > 1:
        check_figure(continual.method_task_accuracy({m: R - k for k, m in enumerate(methods)}, names))
    else:
        with pytest.raises(NoData):
            continual.method_task_accuracy({m: R for m in methods})
    layers = {"fc1": np.linspace(0.5, 0.9, T), "fc2": np.full(T, 0.3), "overall": np.linspace(0.45, 0.85, T)}
    check_figure(sparsity.sparsity_per_task(layers, names))
    check_figure(sparsity.dormant_ratios({"lif1": rng.random(T), "lif2": rng.random(T), "overall": rng.random(T)},
                                         names))


def test_schedule_and_masks_from_arrays():
    steps = np.arange(10, 310, 10)
    target = np.where(steps < 150, 0.9 * (1 - (1 - steps / 150) ** 3), np.nan)
    reached = np.nan_to_num(target, nan=0.9)
    fig = sparsity.sparse_schedule(steps, target, reached, {"fc1": reached, "fc2": reached / 2},
                                   regrown=np.r_[np.linspace(5000, 100, 15), np.full(15, 20)],
                                   death_rate=np.linspace(0.5, 0.005, 30), task_starts=[0, 100, 200],
                                   tasks=["a", "b", "c"], end=300)
    check_figure(fig, ("GraNet schedule",))
    assert main_axes(fig)[1].get_yscale() == "log"  # thousands then tens: log scale
    rng = np.random.default_rng(0)
    big = rng.random((2048, 2048)) < 0.05
    dens, br, bc = sparsity.block_density(big, 160, 480)
    assert dens.shape == (np.ceil(2048 / br), np.ceil(2048 / bc)) and br * bc > 1
    assert abs(dens.mean() - big.mean()) < 1e-3
    fig = sparsity.mask_images({"conv": rng.random((8, 2, 3, 3)) < 0.5, "fc": big})
    check_figure(fig, ("conv [8 x 2 x 3 x 3]", "blocks"))
    with pytest.raises(NoData):
        sparsity.mask_images({})
    with pytest.raises(NoData, match="dense"):
        sparsity.sparsity_per_task({"fc1": [0.0, 0.0]})


# --------------------------------------------------------------------------- benchmarks


def _simulate_rows() -> list[dict]:
    common = {"T": 100, "samples": 256, "batch": 256, "sizes": [784, 800, 800, 10], "density": 0.1,
              "input_rate": 0.05, "hidden_rate": 0.03, "threads": 2, "cores": 2}
    return [
        {"tool": "neuroplastic (run_batches)", "status": "ok", "samples_per_s": 1375.0, "agreement": 1.0,
         "layer_ms": {"fc1": 38.0, "lif1": 10.0, "fc2": 32.0, "lif2": 11.0, "fc3": 14.0, "readout": 1.0},
         "routes": {"fc1": "spike", "fc2": "spike", "fc3": "torch"}, "speedup_vs_fastest_peer": 3.26, **common},
        {"tool": "neuroplastic (simulate, writes h5)", "status": "ok", "samples_per_s": 799.0, "agreement": 1.0,
         "speedup_vs_fastest_peer": 1.89, **common},
        {"tool": "norse", "status": "ok", "samples_per_s": 405.0, "agreement": 0.999969, **common},
        {"tool": "rockpool", "status": "unsupported: LIF", "samples_per_s": None, "agreement": None, **common},
    ]


PEERS_ROW = {"T": 25, "batch": 128, "sizes": [784, 800, 10], "rate": 0.1, "threads": 2,
             "ours_snntorch_cfg_ms": 16.7, "snntorch_ms": 65.5, "ours_norse_cfg_ms": 16.5, "norse_ms": 60.6,
             "ours_ms": 16.7, "speedup": 3.62}


def test_bench_figures(tmp_path, review_dir):
    from neuroplastic.bench import kernels

    real = kernels.run(rates=(0.02, 0.1), densities=(0.1, 0.5), batches=(1, 4), n=256, repeats=1, bandwidth=1e10)
    (tmp_path / "kernels.json").write_text(json.dumps(real))
    (tmp_path / "simulate.json").write_text(json.dumps(_simulate_rows()))
    (tmp_path / "peers.json").write_text(json.dumps([PEERS_ROW]))
    expect = {"kernels": (("density 10%, batch 4", "time per call"), ("input firing rate",)),
              "simulate": (("Simulating one NIR file", "3.26x", "Where our time goes"), ("samples per second",)),
              "peers": (("Training step", "3.62x"), ("milliseconds per training step",))}
    for kind, (titles, xlabels) in expect.items():
        rows = json.loads((tmp_path / f"{kind}.json").read_text())
        assert bench.bench_kind(rows) == kind
        fig = bench.bench_figure_from_json(tmp_path / f"{kind}.json")
        check_figure(fig, titles, xlabels)
        save_png(fig, review_dir / f"bench_{kind}.png")
    fig = bench.bench_figure(_simulate_rows())
    texts = " ".join(t.get_text() for t in main_axes(fig)[0].texts)
    assert "unsupported: LIF" in texts and "agreement 0.999969" in texts
    check_figure(bench.bench_figure([PEERS_ROW, {**PEERS_ROW, "snntorch_ms": 70.0, "speedup": 3.4}]))


def test_bench_bad_input(tmp_path):
    with pytest.raises(NoData, match="keys"):
        bench.bench_figure([{"foo": 1}])
    with pytest.raises(NoData):
        bench.bench_figure([])
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(UserError):
        bench.bench_figure_from_json(bad)
    with pytest.raises(UserError):
        bench.bench_figure_from_json(tmp_path / "missing.json")
