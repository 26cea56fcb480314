r"""``neuroplastic bench memory``: peak memory and time per sample of one training step,
per trainer strategy and sequence length ``T``.

The network: :func:`neuroplastic.network.mlp` ``784-N-10`` (LIF hidden layer, LI readout;
``N = 256``), SGD, ``B = 32`` uniform random images in [0, 1] (fixed seed) rate-encoded
to ``T`` steps, random labels. Every ``(trainer, T)`` row is measured by **two fresh
Python processes**, so no row's peak is polluted by another's and the memory
instrumentation does not slow the timing. Each builds everything and runs one warm-up
step with a short sequence (``min(T, 5)`` steps: the gradients, the optimizer's momentum,
numba's compiled kernels and thread pools, torch's buffers are allocated here; none of
them depends on ``T``). Then

* the **memory** process (glibc's mmap threshold fixed, see ``peak_mb``) resets the
  kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``, which also resets
  ``getrusage().ru_maxrss``), reads the resident set ``rss0`` and runs **one step** at
  the full ``T`` while a thread samples ``/proc/self/statm`` every millisecond and
  ``torch.autograd.graph.saved_tensors_hooks`` count the tensors autograd saves for
  backward;
* the **timing** process (glibc's defaults) runs up to ``repeats`` steps at the full
  ``T``, wall and process CPU time (all threads) of each. A row whose first step takes
  long gets fewer steps (at least one) so that they take about :data:`ROW_BUDGET_S`;
  every row is measured, none extrapolated.

Columns:

* ``peak_mb``: peak resident memory during the memory step minus ``rss0`` (MiB): the
  kernel's high-water mark (VmHWM / ``ru_maxrss`` after the reset) or, where
  ``clear_refs`` is not writable, the 1 ms samples (``peak_method`` says which). The
  memory process runs with glibc's mmap threshold fixed at 128 KiB
  (``MALLOC_MMAP_THRESHOLD_``): by default glibc raises it up to 32 MiB after the first
  large free and then keeps freed buffers in the heap, so a step after the warm-up would
  reuse them without a new peak. Smaller allocations still come from the heap and reuse
  its free space, so a trainer made of small buffers can show less than it allocates.
* ``graph_mb``: the peak of the bytes held by tensors saved for backward (distinct
  storages, the model's parameters excluded), tracked by the pack hook (adds the
  storage's size when a tensor is saved) and a ``weakref.finalize`` on the packed object
  (subtracts it when autograd frees the graph). Deterministic: it grows with ``T`` for
  BPTT (the graph keeps all steps) and must not for OTTT beyond its chunk (one backward
  per ``chunk`` steps, ``chunk`` in the row). Tensors a custom autograd
  function keeps as ``ctx`` attributes instead of ``save_for_backward`` are not seen
  (the spike-gather kernel's index, when that route is taken: ``routes`` in the row).
* ``ms_per_sample`` / ``cpu_ms_per_sample``: the median timed step's wall / process CPU
  time divided by the batch size. On a machine shared with other jobs, torch's OpenMP
  threads spin waiting for descheduled partners: compare the CPU time, the load column,
  or run with ``OMP_NUM_THREADS=1`` (the children inherit the environment).

Checks printed after the table (PASS / FAIL, not assertions): OTTT's ``peak_mb`` at the
largest ``T`` within 1.2x of its value at the smallest ``T`` (and, since OTTT backpropagates
chunks of ``chunk`` steps so its graph spans ``min(T, chunk)`` steps, also from the smallest
``T >= chunk``); OTTT's ``graph_mb`` likewise; OTTT's ``ms_per_sample`` within 1.5x of
BPTT's at ``T = 100``.

    neuroplastic bench memory [--json FILE] [--steps 10,100,1000] [--trainers bptt,ottt,eprop,dsr]
        [--batch B] [--hidden N] [--repeats R] [--quick]
    python -m neuroplastic.bench.memory [same options]

``--quick``: steps 5,20, ``B = 8``, ``N = 32``, one timed step, one process per row for
both parts (the test's smoke run; its times are not for reading).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from .timing import load_avg

__all__ = ["SavedTensorMeter", "RSSSampler", "current_rss", "measure_row", "run", "checks", "main"]

TRAINERS = ("bptt", "ottt", "eprop", "dsr")
STEPS = (10, 100, 1000)
BATCH, HIDDEN, REPEATS = 32, 256, 3
QUICK_STEPS, QUICK_BATCH, QUICK_HIDDEN, QUICK_REPEATS = (5, 20), 8, 32, 1
N_IN, N_OUT = 784, 10
SEED = 0
#: sequence length of the warm-up step
WARMUP_T = 5
#: seconds the timed steps of one row may take (fewer than ``repeats`` steps beyond it, at least one)
ROW_BUDGET_S = 30.0
#: RSS sampling period of the memory step (s)
SAMPLE_S = 1e-3
#: the checks' thresholds
PEAK_RATIO, TIME_RATIO, TIME_T = 1.2, 1.5, 100
#: glibc settings of the child: a fixed mmap threshold (no dynamic growth), so buffers of
#: 128 KiB and more are returned to the OS when freed and each step's peak is visible
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
MIB = 2 ** 20
_ROW_TAG = "NEUROPLASTIC-BENCH-ROW "

# --------------------------------------------------------------------------- measuring tools


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4096


_PAGE = _page_size()


def current_rss() -> int | None:
    """The resident set of this process in bytes: ``/proc/self/statm``, else psutil, else None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        pass
    try:  # pragma: no cover - systems without /proc
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # pragma: no cover  # noqa: BLE001
        return None


def _maxrss_bytes() -> int:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in bytes (KiB on Linux, bytes on macOS)."""
    v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(v) if sys.platform == "darwin" else int(v) * 1024


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM, and with it ``ru_maxrss``) to the current
    RSS; False where that is not possible (not Linux >= 4.0, read-only /proc)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm() -> int | None:
    """VmHWM (peak resident set since the last reset) in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class RSSSampler:
    """A thread that reads the RSS every ``interval`` seconds and keeps the maximum."""

    def __init__(self, interval: float = SAMPLE_S) -> None:
        self.interval = interval
        self.peak = current_rss() or 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            rss = current_rss()
            if rss is not None:
                self.peak = max(self.peak, rss)
                self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss() or 0)


class _Saved:
    """What the pack hook returns: the saved tensor, whose lifetime is the graph's."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor) -> None:
        self.tensor = tensor


class SavedTensorMeter:
    """Live and peak bytes of the tensors autograd saves for backward.

    Use as ``with meter: loss.backward()``-style context around the forward and backward
    (it installs :func:`torch.autograd.graph.saved_tensors_hooks`). Each distinct storage
    is counted once while any saved reference to it is alive; storages of ``exclude``
    (the model's parameters) are not counted: they exist whether or not a graph does.
    """

    def __init__(self, exclude=()) -> None:
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.live = 0
        self.peak = 0
        self.saved = 0
        self._refs: dict[int, list[int]] = {}  # storage address -> [references, bytes]
        self._hooks = None

    def _pack(self, t):
        try:
            st = t.untyped_storage()
            key, nbytes = st.data_ptr(), st.nbytes()
        except (RuntimeError, NotImplementedError):  # no plain storage (sparse, wrapper tensors)
            return t
        if nbytes == 0 or key in self.exclude:
            return t
        entry = self._refs.get(key)
        if entry is None:
            self._refs[key] = [1, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        else:
            entry[0] += 1
        self.saved += 1
        box = _Saved(t)
        weakref.finalize(box, self._release, key)
        return box

    def _release(self, key: int) -> None:
        entry = self._refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]

    @staticmethod
    def _unpack(box):
        return box.tensor if isinstance(box, _Saved) else box

    def __enter__(self) -> SavedTensorMeter:
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None


# --------------------------------------------------------------------------- one row (child process)


def _routes(model, x_step) -> dict[str, str]:
    """Which product each synapse layer takes for a ``[1, B, n_in]`` step of the input
    (BPTT and DSR run all ``T`` at once, but the choice depends on the density)."""
    import torch

    out: dict[str, str] = {}
    layers = list(model.layers.items())
    h = x_step
    with torch.no_grad():
        model.reset()
        for name, layer in layers:
            if hasattr(layer, "route"):
                out[name] = layer.route(h)
            h = layer(h)
        model.reset()
    return out


def measure_row(trainer: str, T: int, batch: int = BATCH, hidden: int = HIDDEN, repeats: int = REPEATS,
                seed: int = SEED, budget_s: float = ROW_BUDGET_S, parts: Sequence[str] = ("memory", "time")) -> dict:
    """Measure one ``(trainer, T)`` row in *this* process: its memory step and/or its
    timed steps (``parts``). The bench runs each part in a fresh process (see
    :func:`run_child`); see the module doc for the procedure."""
    import torch

    from ..encoders import make_encoder
    from ..network import mlp
    from ..trainers import TrainSettings, make_trainer

    with torch.random.fork_rng():  # the caller's random state is left alone (in-process use)
        torch.manual_seed(seed)
        net = mlp([N_IN, hidden, N_OUT])
    settings = TrainSettings(trainer=trainer, time_steps=T, batch_size=batch)
    warm_T = min(T, WARMUP_T)
    tr = make_trainer(net, make_encoder("rate", warm_T), settings, quiet=True, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, N_IN, generator=g)
    y = torch.randint(0, N_OUT, (batch,), generator=g)
    row: dict = {"trainer": trainer, "T": T, "batch": batch, "hidden": hidden}

    t0 = time.perf_counter()
    tr.train_step(x, y, None)  # warm-up: one-off allocations, kernels compiled, pools started
    row.update(warmup_s=time.perf_counter() - t0, warmup_T=warm_T)
    tr.encoder = make_encoder("rate", T)

    if "memory" in parts:
        gc.collect()
        hwm_ok = _reset_peak()
        rss0 = current_rss()
        ru0 = _maxrss_bytes()
        meter = SavedTensorMeter(exclude=list(net.parameters()))
        t0 = time.perf_counter()
        with RSSSampler() as sampler, meter:
            loss = tr.train_step(x, y, None)
        mem_s = time.perf_counter() - t0
        ru1 = _maxrss_bytes()
        hwm = _hwm() if hwm_ok else None
        peak = max(sampler.peak, rss0 or 0)
        if hwm is not None:
            peak = max(peak, hwm)
        if ru1 > ru0:  # a new high-water mark during the step (the reset also resets ru_maxrss)
            peak = max(peak, ru1)
        row.update({
            "peak_mb": (peak - rss0) / MIB if rss0 is not None else None,
            "graph_mb": meter.peak / MIB,
            "memory_step_s": mem_s,
            "rss_before_mb": rss0 / MIB if rss0 is not None else None, "peak_rss_mb": peak / MIB,
            "peak_method": "hwm" if hwm is not None else "sampled", "rss_samples": sampler.samples,
            "graph_tensors": meter.saved,
            "graph_live_after_mb": meter.live / MIB,  # 0 unless something kept a graph alive after the step
            "loss": loss, "malloc_env": {k: os.environ.get(k) for k in CHILD_ENV},
        })

    if "time" in parts:
        wall: list[float] = []
        cpu: list[float] = []
        while True:
            c0, t0 = time.process_time(), time.perf_counter()
            tr.train_step(x, y, None)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            # a slow row stops early: as many steps as fit in the budget, at least one
            if len(wall) >= min(repeats, max(1, int(budget_s // wall[0]))):
                break
        wall_med, cpu_med = statistics.median(wall), statistics.median(cpu)
        row.update({
            "ms_per_sample": wall_med / batch * 1e3,
            "cpu_ms_per_sample": cpu_med / batch * 1e3,
            "ms_per_step": wall_med * 1e3,
            "ms_per_step_all": [w * 1e3 for w in wall],
            "timed_steps": len(wall),
        })
    row.update({
        "routes": _routes(net, make_encoder("rate", 1)(x, torch.Generator().manual_seed(seed))),
        "sizes": [N_IN, hidden, N_OUT], "seed": seed,
        "chunk": getattr(settings, "chunk", None) if trainer == "ottt" else None,
        "threads": torch.get_num_threads(), "cores": os.cpu_count(), "torch": torch.__version__,
        "machine": platform.machine(), "status": "ok",
    })
    return row


def _child(spec_json: str) -> None:
    """Entry point of the child process: measure the row ``spec`` and print it as JSON."""
    spec = json.loads(spec_json)
    row = measure_row(**spec)
    print(_ROW_TAG + json.dumps(row), flush=True)


_CHILD_CODE = "import sys; from neuroplastic.bench.memory import _child; _child(sys.argv[1])"


def _spawn(spec: dict, extra_env: dict[str, str]) -> dict:
    """:func:`measure_row` ``(**spec)`` in a fresh Python process (same interpreter and
    package); ``{"status": "failed: ..."}`` if the child dies."""
    import neuroplastic

    env = {**os.environ, **extra_env}
    root = str(Path(neuroplastic.__file__).resolve().parent.parent)  # the child imports this very package
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-c", _CHILD_CODE, json.dumps(spec)], capture_output=True,
                          text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_ROW_TAG) and proc.returncode == 0:
            return json.loads(line[len(_ROW_TAG):])
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    why = err[-1] if err else f"exit code {proc.returncode}"
    if proc.returncode < 0:
        why = f"killed by signal {-proc.returncode} (out of memory?)"
    return {"status": f"failed ({spec['parts'][0]}): {why}"}


def run_child(trainer: str, T: int, batch: int, hidden: int, repeats: int, seed: int = SEED,
              budget_s: float = ROW_BUDGET_S, split: bool = True) -> dict:
    """One row from two fresh processes: the memory step with glibc's mmap threshold fixed
    (:data:`CHILD_ENV`), the timed steps with glibc's defaults (the fixed threshold costs
    page faults: +40-55 % on a step at T = 100), so neither part disturbs the other.
    ``split=False`` (``--quick``): one process does both, the timing under the fixed threshold."""
    spec = {"trainer": trainer, "T": T, "batch": batch, "hidden": hidden, "repeats": repeats, "seed": seed,
            "budget_s": budget_s}
    if split:
        mem = _spawn({**spec, "parts": ["memory"]}, CHILD_ENV)
        timed = _spawn({**spec, "parts": ["time"]}, {})
    else:
        mem = timed = _spawn({**spec, "parts": ["memory", "time"]}, CHILD_ENV)
    row = {"trainer": trainer, "T": T, "batch": batch, "hidden": hidden, "peak_mb": None, "graph_mb": None,
           "ms_per_sample": None, "cpu_ms_per_sample": None}
    row.update({k: v for k, v in timed.items() if k not in ("warmup_s",)})
    row.update({k: v for k, v in mem.items() if k not in ("warmup_s", "status")})
    failed = [part.get("status") for part in (mem, timed) if part.get("status") != "ok"]
    row["status"] = "; ".join(failed) if failed else "ok"
    row["warmup_s"] = {"memory": mem.get("warmup_s"), "time": timed.get("warmup_s")}
    return row


# --------------------------------------------------------------------------- the benchmark


def run(trainers: Sequence[str] = TRAINERS, steps: Sequence[int] = STEPS, batch: int = BATCH,
        hidden: int = HIDDEN, repeats: int = REPEATS, seed: int = SEED, budget_s: float = ROW_BUDGET_S,
        quiet: bool = False, split: bool = True) -> list[dict]:
    """One row per ``(trainer, T)``, each measured in its own processes (:func:`run_child`)."""
    from tqdm.auto import tqdm

    jobs = [(tr, T) for tr in trainers for T in steps]
    rows = []
    bar = tqdm(jobs, desc="bench memory", disable=True if quiet else None, leave=False)
    for tr, T in bar:
        bar.set_postfix_str(f"{tr} T={T}", refresh=True)
        load0 = load_avg()
        row = run_child(tr, T, batch, hidden, repeats, seed, budget_s, split)
        row["load_avg"] = [load0, load_avg()]
        rows.append(row)
    bar.close()
    return rows


def _row(rows: list[dict], trainer: str, T: int) -> dict | None:
    for r in rows:
        if r["trainer"] == trainer and r["T"] == T and r.get("status") == "ok":
            return r
    return None


def _ratio_check(name: str, hi: dict | None, lo: dict | None, key: str, limit: float,
                 unit: str = "MiB") -> tuple[str, bool | None, str]:
    if hi is None or lo is None or hi.get(key) is None or lo.get(key) is None:
        return name, None, "not measured"
    ratio = hi[key] / lo[key] if lo[key] > 0 else (1.0 if hi[key] <= 0 else float("inf"))
    return name, hi[key] <= limit * lo[key], f"{hi[key]:.3f} {unit} vs {lo[key]:.3f} {unit} ({ratio:.2f}x)"


def checks(rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The targets: ``(name, passed or None when not measured, detail)``.

    OTTT runs its steps in chunks (``[train] chunk``, one backward per chunk): its graph
    spans ``min(T, chunk)`` steps, so below the chunk its memory still grows with ``T``.
    Besides the target (largest vs smallest ``T``), the same comparison is made from the
    smallest measured ``T >= chunk`` when the smallest ``T`` is below the chunk."""
    out: list[tuple[str, bool | None, str]] = []
    ts = sorted({r["T"] for r in rows if r["trainer"] == "ottt" and r.get("status") == "ok"})
    if len(ts) < 2:
        out.append(("OTTT peak_mb at the largest T within 1.2x of the smallest T", None,
                    "needs ottt rows at two values of T"))
    else:
        lo, hi = _row(rows, "ottt", ts[0]), _row(rows, "ottt", ts[-1])
        chunk = hi.get("chunk") or 1
        ref = next((t for t in ts if t >= chunk), ts[0])
        out.append(_ratio_check(f"OTTT peak_mb at T={ts[-1]} within {PEAK_RATIO}x of T={ts[0]}", hi, lo,
                                "peak_mb", PEAK_RATIO))
        if ref != ts[0] and ref != ts[-1]:
            out.append(_ratio_check(f"OTTT peak_mb at T={ts[-1]} within {PEAK_RATIO}x of T={ref} "
                                    f"(first T >= chunk {chunk})", hi, _row(rows, "ottt", ref), "peak_mb",
                                    PEAK_RATIO))
        else:
            ref = ts[0]
        out.append(_ratio_check(f"OTTT graph_mb at T={ts[-1]} within {PEAK_RATIO}x of T={ref}", hi,
                                _row(rows, "ottt", ref), "graph_mb", PEAK_RATIO))
    name = f"OTTT ms_per_sample within {TIME_RATIO}x of BPTT's at T={TIME_T}"
    o, b = _row(rows, "ottt", TIME_T), _row(rows, "bptt", TIME_T)
    if o is None or b is None:
        out.append((name, None, f"needs ottt and bptt rows at T={TIME_T}"))
    else:
        ratio = o["ms_per_sample"] / b["ms_per_sample"]
        out.append((name, ratio <= TIME_RATIO, f"{o['ms_per_sample']:.3f} vs {b['ms_per_sample']:.3f} ms "
                                                f"({ratio:.2f}x; CPU time "
                                                f"{o['cpu_ms_per_sample'] / b['cpu_ms_per_sample']:.2f}x)"))
    return out


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _row_load(r: dict) -> float | None:
    loads = [v for v in (r.get("load_avg") or []) if v is not None]
    return max(loads) if loads else None


def table(rows: list[dict]) -> str:
    r0 = next((r for r in rows if r.get("status") == "ok"), rows[0])
    head = (f"training step memory and time: mlp 784-{r0['hidden']}-10 (LIF, LI readout), batch {r0['batch']}, "
            f"rate-coded random images, SGD; one fresh process per row"
            + (f"; {r0['threads']} threads / {r0['cores']} cores, torch {r0['torch']}" if "threads" in r0 else ""))
    chunk = next((r.get("chunk") for r in rows if r.get("chunk")), None)
    if chunk:
        head += f"; ottt chunk {chunk} steps"
    cols = (f"{'trainer':<8}{'T':>6}{'peak_mb':>10}{'graph_mb':>10}{'ms/sample':>11}{'cpu ms/sample':>15}"
            f"{'steps':>7}{'mem step s':>12}{'load':>6}")
    lines = [head, cols, "-" * len(cols)]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['trainer']:<8}{r['T']:>6}  {r['status'][:100]}")
            continue
        lines.append(f"{r['trainer']:<8}{r['T']:>6}{_fmt(r['peak_mb'], '.1f'):>10}{r['graph_mb']:>10.2f}"
                     f"{r['ms_per_sample']:>11.3f}{r['cpu_ms_per_sample']:>15.3f}{r['timed_steps']:>7}"
                     f"{r['memory_step_s']:>12.2f}{_fmt(_row_load(r), '.1f'):>6}")
    loads = [v for r in rows for v in (r.get("load_avg") or []) if v is not None]
    if loads and "cores" in r0 and max(loads) > r0["cores"]:
        lines.append(f"note: the 1-minute load average reached {max(loads):.1f} on {r0['cores']} cores (load column: "
                     "the larger of before/after each row): other processes took CPU time from these timings")
    for name, ok, detail in checks(rows):
        verdict = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        lines.append(f"{verdict}: {name}: {detail}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{what} must be comma-separated positive integers, got {text!r}")
    return values


def _trainers(text: str) -> list[str]:
    from ..trainers import ALIASES, TRAINER_NAMES

    names = [ALIASES.get(t.strip(), t.strip()) for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TRAINER_NAMES]
    if bad or not names:
        raise UserError(f"unknown trainer(s) {', '.join(bad) or repr(text)}; choose from {', '.join(TRAINER_NAMES)}")
    return list(dict.fromkeys(names))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="neuroplastic bench memory", description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="FILE", help="write the rows as a JSON list to FILE")
    p.add_argument("--quick", action="store_true",
                   help=f"steps {','.join(map(str, QUICK_STEPS))}, batch {QUICK_BATCH}, hidden {QUICK_HIDDEN}, "
                        f"{QUICK_REPEATS} timed step, one process per row (smoke run)")
    p.add_argument("--steps", help=f"time steps T, comma-separated (default {','.join(map(str, STEPS))})")
    p.add_argument("--trainers", help=f"comma-separated (default {','.join(TRAINERS)})")
    p.add_argument("--batch", type=int, help=f"samples per step (default {BATCH}, --quick {QUICK_BATCH})")
    p.add_argument("--hidden", type=int, help=f"hidden LIF neurons N (default {HIDDEN}, --quick {QUICK_HIDDEN})")
    p.add_argument("--repeats", type=int, help=f"timed steps per row (default {REPEATS}, --quick {QUICK_REPEATS})")
    a = p.parse_args(argv)
    steps = _ints(a.steps, "--steps") if a.steps is not None else list(QUICK_STEPS if a.quick else STEPS)
    trainers = _trainers(a.trainers) if a.trainers is not None else list(TRAINERS)
    batch = a.batch if a.batch is not None else QUICK_BATCH if a.quick else BATCH
    hidden = a.hidden if a.hidden is not None else QUICK_HIDDEN if a.quick else HIDDEN
    repeats = a.repeats if a.repeats is not None else QUICK_REPEATS if a.quick else REPEATS
    for what, v in (("--batch", batch), ("--hidden", hidden), ("--repeats", repeats)):
        if v < 1:
            raise UserError(f"{what} must be a positive integer, got {v}")
    rows = run(trainers, steps, batch, hidden, repeats, split=not a.quick)
    print(table(rows))
    if a.json:
        from ..io import write_json

        write_json(a.json, rows)
        print(f"wrote {a.json}")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
