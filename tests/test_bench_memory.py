"""``neuroplastic bench memory``: the quick run's rows, and the trainers' memory claims.

``graph_mb`` (bytes saved for backward, counted by saved-tensor hooks) is deterministic,
so it checks the claim itself: BPTT's graph grows with T, OTTT's (one chunk of steps,
freed by that chunk's backward) does not beyond the chunk. A version of OTTT that kept
the graph across steps (one backward at the end) fails ``test_graph_memory_of_the_trainers``
and ``test_quick_graph_memory``.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from neuroplastic.bench import memory as bench
from neuroplastic.cli import main

FIELDS = {"trainer", "T", "peak_mb", "graph_mb", "ms_per_sample", "cpu_ms_per_sample", "batch", "hidden",
          "timed_steps", "peak_method", "status"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick bench through the CLI, children on one thread (fast, and no thread
    contention with whatever else the machine runs): ``(exit code, rows, stdout)``."""
    out = tmp_path_factory.mktemp("bench-memory") / "memory.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(["bench", "memory", "--quick", "--json", str(out)])
    return code, json.loads(out.read_text()), buf.getvalue()


def _row(rows, trainer, T):
    (r,) = [r for r in rows if r["trainer"] == trainer and r["T"] == T]
    return r


def test_quick_rows(quick):
    code, rows, text = quick
    assert code == 0
    assert [(r["trainer"], r["T"]) for r in rows] == [(t, T) for t in bench.TRAINERS for T in bench.QUICK_STEPS]
    for r in rows:
        assert FIELDS <= set(r), FIELDS - set(r)
        assert r["status"] == "ok"
        assert r["batch"] == bench.QUICK_BATCH and r["hidden"] == bench.QUICK_HIDDEN
        assert r["ms_per_sample"] > 0 and r["cpu_ms_per_sample"] > 0 and r["timed_steps"] >= 1
        assert r["peak_mb"] is not None and r["peak_mb"] >= 0 and r["graph_mb"] >= 0
        assert r["graph_live_after_mb"] == 0  # no graph outlives its step
        assert r["threads"] == 1
    assert "ms/sample" in text and "OTTT peak_mb" in text and "wrote" in text
    assert any(line.startswith(("PASS:", "FAIL:")) for line in text.splitlines())


def test_quick_graph_memory(quick):
    _, rows, _ = quick
    lo, hi = bench.QUICK_STEPS
    bptt = _row(rows, "bptt", lo)["graph_mb"], _row(rows, "bptt", hi)["graph_mb"]
    assert bptt[1] >= 0.8 * (hi / lo) * bptt[0] > 0  # BPTT saves every step: ~proportional to T
    # OTTT's graph spans min(T, chunk) steps
    chunk = _row(rows, "ottt", hi)["chunk"]
    ottt = _row(rows, "ottt", lo)["graph_mb"], _row(rows, "ottt", hi)["graph_mb"]
    assert ottt[1] == pytest.approx(ottt[0] * min(hi, chunk) / min(lo, chunk), rel=0.1)
    for trainer in ("eprop", "dsr"):  # no graph over time: e-prop none, DSR a graph over rates
        assert _row(rows, trainer, hi)["graph_mb"] <= 1.05 * _row(rows, trainer, lo)["graph_mb"]


def test_graph_memory_of_the_trainers():
    """The memory claim, from T at and beyond OTTT's chunk: BPTT's graph grows with T,
    OTTT's does not (a graph kept across chunks would triple it here)."""
    from neuroplastic.trainers import TrainSettings

    chunk = getattr(TrainSettings(), "chunk", 1)
    lo = chunk + 4
    hi = 3 * lo
    kw = {"batch": bench.QUICK_BATCH, "hidden": bench.QUICK_HIDDEN, "repeats": 1}
    graph = {(tr, T): bench.measure_row(tr, T, **kw)["graph_mb"] for tr in ("bptt", "ottt") for T in (lo, hi)}
    assert graph["bptt", hi] >= 0.8 * (hi / lo) * graph["bptt", lo] > 0
    assert graph["ottt", lo] > 0
    assert graph["ottt", hi] == pytest.approx(graph["ottt", lo], rel=0.05)


def test_saved_tensor_meter_counts_and_frees():
    torch = pytest.importorskip("torch")
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(8, 64)
    meter = bench.SavedTensorMeter(exclude=[w])
    with meter:
        h = x
        for _ in range(4):  # every tanh saves its [8, 64] float output: 2 KiB each
            h = torch.tanh(h @ w)
        peak = meter.live
    assert peak >= 4 * 8 * 64 * 4 and meter.peak == peak
    h.sum().backward()
    del h
    assert meter.live == 0 and meter.peak == peak


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps"),
    (["--steps", "5,x"], "--steps"),
    (["--trainers", "banana"], "banana"),
    (["--batch", "0"], "--batch"),
    (["--hidden", "two"], "--hidden"),
])
def test_bad_arguments_one_line_exit_2(args, message, capsys):
    assert main(["bench", "memory", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neuroplastic: error:") and message in err[0]


def test_memory_options_belong_to_bench_memory(capsys):
    assert main(["bench", "kernels", "--steps", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bench memory" in err[0]
