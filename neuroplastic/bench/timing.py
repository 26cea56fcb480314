"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence


def load_avg() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def cpu_ticks() -> tuple[int, int] | None:
    """``(steal, total)`` clock ticks of the whole machine so far, from ``/proc/stat``
    (None where there is none). *Steal* is time the hypervisor ran something else while a
    virtual CPU of this machine had work: load inside the machine cannot show it."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 8:
        return None
    return fields[7], sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)


def steal_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time between two :func:`cpu_ticks` readings that the
    hypervisor stole (0 on bare metal; None when unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``; else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
