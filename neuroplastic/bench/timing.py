"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def time_ms(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def interleaved_samples(fns: Sequence[Callable[[], object]], repeats: int, warmup: int = 2) -> list[list[float]]:
    """Wall times (ms) of each ``fns[n]()`` over ``repeats`` rounds that call every function
    once in turn (after ``warmup`` such rounds), so a burst of load from other processes
    hits all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for n, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            samples[n].append((time.perf_counter() - t0) * 1e3)
    return samples


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median wall time (ms) of each ``fns[k]()`` over :func:`interleaved_samples` rounds."""
    samples = interleaved_samples(list(fns.values()), repeats, warmup)
    return {k: statistics.median(v) for k, v in zip(fns, samples)}
