"""Event-driven CSR propagation vs torch dense matmul vs torch.sparse CSR (CPU).

For every (firing rate, density, batch) point on an ``n x n`` layer it times

* ``event_ms``        — :func:`neuroplastic.kernels.cpu.spmm_forward` on a prebuilt CSR
                        (torch tensors in and out, as a layer would call it);
* ``dense_ms``        — ``x @ W.t()`` with the masked dense weight (torch);
* ``torch_sparse_ms`` — ``torch.sparse.mm(W_csr, x.t())`` with a prebuilt CSR tensor;

and reports ``events_per_s`` (events = (nonzero input, outgoing synapse) pairs) and
``bound_fraction`` = events_per_s / (memory bandwidth / 8 bytes per event), the
bandwidth coming from :func:`measure_bandwidth` (a parallel streaming read of an array
much larger than the last-level cache). A CSR that fits in the L3 cache can exceed 1.

Times are the minimum over ``repeats`` interleaved rounds after one warm-up (robust to
preemption by other processes sharing the CPU, which still makes them noisy: rerun on
a quiet machine for reference numbers).

    neuroplastic bench kernels [--quick]  (or python benchmarks/bench_kernels.py)
    python benchmarks/bench_kernels.py [--quick] [--n N] [--repeats R] [--json FILE]
                                       [--bandwidth GBPS] [--calibrate]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from numba import njit, prange

from neuroplastic.kernels import CSRCache, cpu, csr_from_dense, event_linear

from .timing import interleaved_samples

ROW_KEYS = (
    "rate",
    "density",
    "batch",
    "event_ms",
    "dense_ms",
    "torch_sparse_ms",
    "events_per_s",
    "bound_fraction",
)


# --------------------------------------------------------------------------- measurement helpers


# cache=False on purpose: this script is also loaded by file path (neuroplastic bench,
# tests) under varying module names, and numba's on-disk cache must re-import the module
# by the name it was saved under. Compiling it takes well under a second.
@njit(cache=False, parallel=True, fastmath=True)
def _stream_sum(a):  # pragma: no cover - compiled
    """Sum of a float32 array read once, split into 64 contiguous chunks (vectorised)."""
    n_chunks = 64
    step = (a.shape[0] + n_chunks - 1) // n_chunks
    partial = np.zeros(n_chunks, dtype=np.float32)
    for c in prange(n_chunks):
        seg = a[c * step : min(a.shape[0], (c + 1) * step)]
        acc = np.float32(0.0)
        for i in range(seg.shape[0]):
            acc += seg[i]
        partial[c] = acc
    return partial.sum()


def measure_bandwidth(mbytes: int = 256, repeats: int = 5) -> float:
    """Sustained read bandwidth in bytes/s: best of ``repeats`` parallel streaming sums
    over a float32 array of ``mbytes`` MB (far larger than the L3 cache)."""
    a = np.ones(mbytes * (1 << 20) // 4, dtype=np.float32)
    _stream_sum(a)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        _stream_sum(a)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def _best_ms(
    fns: Sequence[Callable[[], object]], repeats: int | None, budget_s: float = 0.3
) -> list[float]:
    """Minimum wall time (ms) of each function over ``repeats`` interleaved rounds.

    Rounds alternate the functions so a burst of load from other processes hits all of
    them alike, and the minimum discards preempted calls (as ``timeit`` recommends);
    ``repeats=None`` fits the rounds into about ``budget_s`` (3..50).
    """
    for fn in fns:
        fn()  # warm-up (and compile)
    if repeats is None:
        t0 = time.perf_counter()
        for fn in fns:
            fn()
        once = time.perf_counter() - t0
        repeats = int(min(50, max(3, budget_s / max(once, 1e-6))))
    return [float(min(v)) for v in interleaved_samples(fns, repeats, warmup=0)]


def _layer(n: int, density: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.from_numpy(rng.random((n, n), dtype=np.float32) < density)
    weight = torch.from_numpy(rng.standard_normal((n, n), dtype=np.float32))
    return weight, mask


# --------------------------------------------------------------------------- the grid


def run(
    rates: Sequence[float] = (0.005, 0.02, 0.1, 0.3),
    densities: Sequence[float] = (0.01, 0.1, 0.5),
    batches: Sequence[int] = (1, 32),
    n: int = 4096,
    repeats: int | None = None,
    quick: bool = False,
    bandwidth: float | None = None,
    seed: int = 0,
) -> list[dict]:
    """Time the three implementations on every grid point; one dict per point.

    ``repeats=None`` adapts the count to ~0.3 s per point (3..50). ``quick``
    caps ``n`` at 1024 and uses 3 repeats (a smoke run). ``bandwidth`` (bytes/s)
    skips :func:`measure_bandwidth`.
    """
    if quick:
        n = min(n, 1024)
        repeats = 3
    bw = bandwidth if bandwidth is not None else measure_bandwidth(64 if quick else 256)
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for density in densities:
        weight, mask = _layer(n, density, rng)
        w_masked = weight * mask
        csr = csr_from_dense(weight, mask)
        row_len = torch.from_numpy(np.diff(csr.indptr).astype(np.float64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            w_csr = w_masked.to_sparse_csr()
        for batch in batches:
            for rate in rates:
                x = torch.from_numpy(
                    (rng.random((batch, n), dtype=np.float32) < rate).astype(np.float32)
                )
                events = float(((x != 0).to(torch.float64) @ row_len).sum())
                event_ms, dense_ms, sparse_ms = _best_ms(
                    [
                        lambda x=x, c=csr: cpu.spmm_forward(x, c),
                        lambda x=x, w=w_masked: x @ w.t(),
                        lambda x=x, w=w_csr: torch.sparse.mm(w, x.t()),
                    ],
                    repeats,
                )
                eps = events / (event_ms * 1e-3) if event_ms > 0 else float("inf")
                rows.append(
                    {
                        "rate": float(rate),
                        "density": float(density),
                        "batch": int(batch),
                        "event_ms": event_ms,
                        "dense_ms": dense_ms,
                        "torch_sparse_ms": sparse_ms,
                        "events_per_s": eps,
                        "bound_fraction": eps / (bw / 8.0),
                    }
                )
    return rows


def run_end_to_end(
    n: int = 4096,
    density: float = 0.1,
    rate: float = 0.02,
    rows: int = 32,
    repeats: int | None = None,
    seed: int = 0,
) -> dict:
    """The *dense-parameter* layer op, which must gather the nnz values from the dense
    weight on every call: ``event_linear`` (gather + kernel) vs ``x @ (weight * mask).t()``,
    forward only and forward + backward (gradient of the weight; spikes need none), plus
    the gather alone (``gather_ms``)."""
    rng = np.random.default_rng(seed)
    weight, mask = _layer(n, density, rng)
    x = torch.from_numpy((rng.random((rows, n), dtype=np.float32) < rate).astype(np.float32))
    cache = CSRCache()
    csr = cache.structure(mask)
    with torch.no_grad():
        ev, dense, gather = _best_ms(
            [
                lambda: event_linear(x, weight, mask, cache),
                lambda: x @ (weight * mask).t(),
                lambda: csr.values_from_dense(weight),
            ],
            repeats,
        )
    w = weight.clone().requires_grad_(True)

    def step(fn: Callable[[], torch.Tensor]) -> None:
        w.grad = None
        fn().sum().backward()

    ev_bwd, dense_bwd = _best_ms(
        [
            lambda: step(lambda: event_linear(x, w, mask, cache)),
            lambda: step(lambda: x @ (w * mask).t()),
        ],
        repeats,
    )
    return {
        "n": n,
        "density": density,
        "rate": rate,
        "rows": rows,
        "event_linear_ms": ev,
        "dense_masked_ms": dense,
        "gather_ms": gather,
        "event_linear_fwd_bwd_ms": ev_bwd,
        "dense_masked_fwd_bwd_ms": dense_bwd,
    }


# --------------------------------------------------------------------------- dispatch fit


def measure_overheads(n: int = 4096, density: float = 0.1, repeats: int | None = None) -> dict:
    """Per-element costs of a dense-parameter call and fixed per-call overheads.

    ``gather_ns``: nnz value gather from the dense weight per weight element (at
    ``density``); ``mask_ns``: ``weight * mask`` per element; ``event_overhead_ms`` /
    ``dense_overhead_ms``: an 8 x 8 layer, one row (fixed cost of a call).
    """
    rng = np.random.default_rng(1)
    weight, mask = _layer(n, density, rng)
    csr = csr_from_dense(weight, mask)
    gather_ms, mask_ms = _best_ms(
        [lambda: csr.values_from_dense(weight), lambda: weight * mask], repeats
    )
    w8, m8 = _layer(8, 0.5, rng)
    c8 = csr_from_dense(w8, m8)
    x8 = torch.ones(1, 8)
    wm8 = w8 * m8
    o_e, o_d = _best_ms([lambda: cpu.spmm_forward(x8, c8), lambda: x8 @ wm8.t()], 200)
    size = n * n * 1e-6  # ms -> ns per element
    return {
        "gather_ns": gather_ms / size,
        "mask_ns": mask_ms / size,
        "event_overhead_ms": o_e,
        "dense_overhead_ms": o_d,
    }


def fit_cost_model(rows: list[dict], n: int, overheads: dict, cores: int = 2) -> dict:
    """Constants of :class:`neuroplastic.kernels.dispatch.CostModel` from :func:`run` rows.

    Load from other processes only ever adds time, so the estimators lean low:
    ``event_ns`` is the 25th percentile, over points with >= 1e5 events, of the time per
    event per core (``event_ms * min(B, cores) / events``); the dense matmul time does
    not depend on rate or density, so per batch size the fastest point is kept and
    ``dense_ms / n^2 = weight_ns + B * mac_ns`` is solved by least squares.
    """
    per_event = []
    for r in rows:
        events = r["events_per_s"] * r["event_ms"] * 1e-3
        if events >= 1e5:
            per_event.append(r["event_ms"] * 1e6 * min(r["batch"], cores) / events)
    best: dict[int, float] = {}
    for r in rows:
        best[r["batch"]] = min(best.get(r["batch"], np.inf), r["dense_ms"] * 1e6 / (n * n))
    b = np.array(sorted(best), dtype=float)
    t = np.array([best[k] for k in sorted(best)])
    if len(b) > 1:
        (weight_ns, mac_ns), *_ = np.linalg.lstsq(np.stack([np.ones_like(b), b], 1), t, rcond=None)
    else:
        weight_ns, mac_ns = 0.0, t[0] / b[0]
    return {
        "event_ns": float(np.percentile(per_event, 25)) if per_event else float("nan"),
        "mac_ns": float(mac_ns),
        "weight_ns": float(weight_ns),
        **overheads,
    }


# --------------------------------------------------------------------------- CLI


def _table(rows: list[dict]) -> str:
    head = (
        f"{'rate':>6} {'dens':>5} {'B':>3} {'event ms':>9} {'dense ms':>9} {'t.sparse':>9} "
        f"{'x dense':>8} {'x sparse':>8} {'Gev/s':>7} {'bound':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['rate']:>6.3f} {r['density']:>5.2f} {r['batch']:>3d} "
            f"{r['event_ms']:>9.3f} {r['dense_ms']:>9.3f} "
            f"{r['torch_sparse_ms']:>9.3f} {r['dense_ms'] / r['event_ms']:>8.1f} "
            f"{r['torch_sparse_ms'] / r['event_ms']:>8.1f} {r['events_per_s'] / 1e9:>7.3f} "
            f"{r['bound_fraction']:>6.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table (and write the rows as JSON with ``--json FILE``)."""
    p = argparse.ArgumentParser(prog="neuroplastic bench kernels", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="n <= 1024, 3 repeats (smoke run)")
    p.add_argument("--n", type=int, default=4096, help="layer size n_pre = n_post (default 4096)")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed calls per point (default: adaptive)"
    )
    p.add_argument("--json", metavar="FILE", help="write the rows as a JSON list to FILE")
    p.add_argument(
        "--bandwidth", type=float, default=None, help="memory bandwidth in GB/s (skip measuring)"
    )
    p.add_argument(
        "--calibrate", action="store_true", help="also fit and print the dispatch cost model"
    )
    args = p.parse_args(argv)
    if args.n < 1 or (args.repeats is not None and args.repeats < 1):
        print("bench_kernels: error: --n and --repeats must be positive", file=sys.stderr)
        return 2
    if args.bandwidth is not None and args.bandwidth <= 0:
        print("bench_kernels: error: --bandwidth must be positive", file=sys.stderr)
        return 2
    if args.bandwidth is not None:
        bw = args.bandwidth * 1e9
    else:
        bw = measure_bandwidth(64 if args.quick else 256)
    print(
        f"threads: torch {torch.get_num_threads()}, cores {os.cpu_count()}; "
        f"streaming read bandwidth {bw / 1e9:.2f} GB/s -> bound {bw / 8e9:.2f} G events/s"
    )
    rows = run(n=args.n, repeats=args.repeats, quick=args.quick, bandwidth=bw)
    print(_table(rows))
    e2e = run_end_to_end(n=min(args.n, 1024) if args.quick else args.n, repeats=args.repeats)
    print(
        f"dense-parameter layer op at density {e2e['density']}, rate {e2e['rate']}, "
        f"{e2e['rows']} rows: event_linear {e2e['event_linear_ms']:.2f} ms "
        f"(value gather alone {e2e['gather_ms']:.2f} ms) "
        f"vs x @ (weight*mask).t() {e2e['dense_masked_ms']:.2f} ms; "
        "forward+backward (grad of weight): "
        f"{e2e['event_linear_fwd_bwd_ms']:.2f} ms vs {e2e['dense_masked_fwd_bwd_ms']:.2f} ms"
    )
    if args.calibrate:
        n_fit = min(args.n, 1024) if args.quick else args.n
        fit = fit_cost_model(rows, n_fit, measure_overheads(n_fit, repeats=args.repeats))
        print("dispatch cost model: " + ", ".join(f"{k}={v:.4g}" for k, v in fit.items()))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
