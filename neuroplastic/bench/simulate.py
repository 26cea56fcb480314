r"""``neuroplastic bench simulate``: inference throughput on one NIR file, ours vs every peer that loads it.

The network: MLP 784-800-800-10 of LIF neurons (spiking readout), forward Euler, reset to
zero, ``dt = 1 ms``, ``tau_mem = 20 ms`` and NIR's ``r = 1`` (``unit_gain=False``: Norse's
importer ignores ``r``, so with our default unit gain, ``r = 1/(1-a) = 20``, it would
compute a different, silent network). Every synapse layer is 90 % sparse (uniform random
masks with exact density, seeded); zero biases; each layer's weights are scaled (bisection
on a gain, layer by layer, on the first samples) so that it fires at ~3 % of the steps.

It is exported once with :func:`neuroplastic.export.to_nir` / ``write_nir`` and run on the
same Bernoulli input (``T = 100`` steps, 256 samples, rate 0.05, seeded) by

* ``neuroplastic (run_batches)``: :func:`neuroplastic.simulate.load_model` on the file,
  then :func:`neuroplastic.simulate.run_batches` (spikes of every layer, in memory) consumed
  fully; this network takes its fused one-kernel path (:mod:`neuroplastic.simulate_fused`;
  ``fused`` in the row says whether it did);
* ``neuroplastic (simulate, writes h5)``: the same through :func:`neuroplastic.simulate.simulate`,
  which also writes every layer's spikes to an HDF5 file;
* ``neuroplastic (run_batches, layer by layer)``: ``run_batches(..., fused=False)``, the
  per-layer torch/numba path (the per-layer times and routes are this path's);
* every peer of :mod:`neuroplastic.bench.nir_peers` that imports the file with its own NIR
  importer (a peer that is missing or refuses the graph gets a row saying why).

The agreement with our output (fraction of equal output entries, ``[T, B, 10]``; also the
Jaccard index of the spikes) is computed first; then every tool runs the whole input in
batches, the tools interleaved (:func:`neuroplastic.bench.timing.interleaved_samples`), and
``samples_per_s`` is the sample count over the median wall time of a pass (``cpu_ms_per_batch``:
the median process CPU time, all threads, which other processes on a shared machine do not
inflate; ``load_avg``: the 1-minute load average before and after the timing; ``steal``: the
share of the machine's CPU time the hypervisor gave to other guests during the timing, which
no load average inside the machine shows; ``cpu``: the processor's model name).
``speedup_vs_fastest_peer`` (our rows) divides our samples/s by the fastest peer's.

    neuroplastic bench simulate [--json FILE] [--quick]
    python -m neuroplastic.bench.simulate [--json FILE] [--quick] [--sizes 784,800,800,10]
        [--steps T] [--samples N] [--batch B] [--repeats R] [--peers norse,snntorch,...]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import UserError
from ..export import agreement, read_nir, to_nir, write_nir
from ..io import write_json
from ..network import SNN, mlp
from ..simulate import load_model, run_batches, simulate
from ..simulate_fused import why_not
from ..sparse import init_masks
from . import nir_peers
from .timing import cpu_model, cpu_ticks, interleaved_samples, load_avg, steal_fraction

SIZES = (784, 800, 800, 10)
T, SAMPLES, BATCH = 100, 256, 256
DENSITY, INPUT_RATE = 0.1, 0.05
DT, TAU_MEM = 1e-3, 2e-2
#: firing rate every layer is calibrated to, and the band the bisection stops in
TARGET_RATE, RATE_BAND = 0.03, (0.025, 0.035)
#: samples the gains are calibrated on
CAL_SAMPLES = 32
REPEATS, QUICK_REPEATS, QUICK_SAMPLES = 5, 2, 64
SEED = 0

OURS = "neuroplastic (run_batches)"
OURS_H5 = "neuroplastic (simulate, writes h5)"
OURS_LAYERS = "neuroplastic (run_batches, layer by layer)"
#: our rows (the rest are peers)
OURS_ALL = (OURS, OURS_H5, OURS_LAYERS)


# --------------------------------------------------------------------------- network and input


def inputs(steps: int, samples: int, n_in: int, rate: float = INPUT_RATE, seed: int = SEED) -> torch.Tensor:
    """Bernoulli(``rate``) spikes ``[steps, samples, n_in]`` (float32)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, samples, n_in, generator=g) < rate).float()


def _calibrated_gain(rate: Callable[[float], float]) -> float:
    """:func:`nir_peers.fit_gain` at this benchmark's target rate (doubling/halving steps)."""
    return nir_peers.fit_gain(rate, TARGET_RATE, RATE_BAND, step=2.0, max_iter=60)


def build_model(sizes: Sequence[int], x_cal: torch.Tensor, density: float = DENSITY, seed: int = SEED) -> SNN:
    """The LIF MLP with exact-density random masks and zero biases, each layer's weights
    scaled so that it fires at about :data:`TARGET_RATE` on ``x_cal [T, b, n_in]``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = mlp(list(sizes), neuron="lif", readout="spikes", reset="zero", integration="euler", dt=DT,
                  tau_mem=TAU_MEM, unit_gain=False)
    init_masks(net, density, "uniform", generator=torch.Generator().manual_seed(seed + 1))
    layers = list(net.layers.values())
    h = x_cal
    with torch.no_grad():
        for syn, neuron in zip(layers[0::2], layers[1::2]):
            syn.bias.zero_()
            w0 = syn.weight.detach().clone()

            def spikes(gain: float, syn=syn, neuron=neuron, w0=w0, h=h) -> torch.Tensor:
                syn.weight.copy_(gain * w0)
                neuron.reset()
                return neuron(syn(h))

            gain = _calibrated_gain(lambda g: float(spikes(g).mean()))
            h = spikes(gain)
    net.reset()
    return net


# --------------------------------------------------------------------------- the tools


def _ours_pass(model: SNN, x: np.ndarray, batch: int, rates: dict | None = None,
               fused: bool | None = None) -> np.ndarray:
    """Our output spikes ``[B, T, n_out]`` (bool) through :func:`run_batches`; with ``rates``,
    also every layer's spike count and size."""
    outs = []
    for _, rows in run_batches(model, x, batch=batch, record=("spikes",), quiet=True, fused=fused):
        outs.append(rows["output"]["spikes"])
        if rates is not None:
            for layer, obs in rows.items():
                acc = rates.setdefault(layer, [0.0, 0])
                acc[0] += float(obs["spikes"].sum())
                acc[1] += obs["spikes"].size
    return np.concatenate(outs)


def _peer_pass(peer: str, model, x: torch.Tensor, batch: int) -> torch.Tensor:
    """The peer's output ``[T, B, n_out]`` on ``x``, ``batch`` samples per call."""
    return torch.cat([nir_peers.run(peer, model, x[:, s:s + batch]) for s in range(0, x.shape[1], batch)], dim=1)


def _routes_and_layer_ms(model: SNN, x: torch.Tensor, repeats: int) -> tuple[dict[str, str], dict[str, float]]:
    """Which kernel each synapse layer takes (``layer.route``) and each layer's median time (ms)
    per pass of :func:`~neuroplastic.simulate.run_batches` over the batch ``x`` (summed over the
    chunks it runs in), over ``repeats`` passes, taken with forward hooks."""
    routes: dict[str, str] = {}
    times: dict[str, list[float]] = {name: [] for name in model.layers}
    current: dict[str, float] = {}
    seen: dict[str, int] = {}
    handles = []
    for name, layer in model.layers.items():  # (hooks: run_batches takes the layer-by-layer path)
        def pre(mod, inp, name=name):
            if hasattr(mod, "route") and inp[0].numel() > seen.get(name, 0):  # the largest chunk's route
                seen[name] = inp[0].numel()
                routes[name] = mod.route(inp[0])
            current[name] = current.get(name, 0.0) - time.perf_counter()

        def post(mod, inp, out, name=name):
            current[name] += time.perf_counter()

        handles += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
    try:
        xn = x.numpy()
        for _ in range(max(1, repeats)):
            current.clear()
            for _batch in run_batches(model, xn, xn.shape[1], quiet=True):
                pass
            for name in model.layers:
                times[name].append(current.get(name, 0.0) * 1e3)
    finally:
        for h in handles:
            h.remove()
    return routes, {k: statistics.median(v) for k, v in times.items()}


def _cpu_timed(fn: Callable[[], object], out: list[float]) -> Callable[[], object]:
    """``fn`` that also appends its process CPU time (ms, all threads) to ``out``: the cost
    that other processes on the machine cannot inflate (they can only take the cores away)."""

    def timed() -> object:
        c0 = time.process_time()
        result = fn()
        out.append((time.process_time() - c0) * 1e3)
        return result

    return timed


def _compare(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
    both = float(((ours > 0) & (theirs > 0)).sum())
    either = float(((ours > 0) | (theirs > 0)).sum())
    return {"agreement": agreement(ours, theirs), "spike_jaccard": both / either if either else 1.0,
            "output_rate": float((theirs > 0).float().mean())}


# --------------------------------------------------------------------------- the benchmark


def run(sizes: Sequence[int] = SIZES, steps: int = T, samples: int = SAMPLES, batch: int = BATCH,
        repeats: int = REPEATS, warmup: int = 1, peers: Sequence[str] = nir_peers.PEERS,
        density: float = DENSITY, input_rate: float = INPUT_RATE, seed: int = SEED) -> list[dict]:
    """One row per tool (ours twice, then every peer in ``peers``); see the module doc."""
    sizes = [int(s) for s in sizes]
    batch = min(batch, samples)
    x = inputs(steps, samples, sizes[0], input_rate, seed)
    x_np = x.numpy()
    model = build_model(sizes, x[:, :CAL_SAMPLES], density, seed)
    common = {"T": steps, "samples": samples, "batch": batch, "sizes": sizes, "density": density,
              "input_rate": float(x.mean()), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
              "torch": torch.__version__, "machine": platform.machine(), "cpu": cpu_model()}
    rows: list[dict] = []
    fns: list[Callable[[], object]] = []
    with tempfile.TemporaryDirectory(prefix="np-bench-sim-") as tmp:
        path, h5 = Path(tmp) / "mlp.nir", Path(tmp) / "out.h5"
        write_nir(path, to_nir(model))
        ours_model = load_model(path)
        counts: dict[str, list] = {}
        ref_np = _ours_pass(ours_model, x_np, batch, counts)
        ref = torch.from_numpy(ref_np).transpose(0, 1).float()
        rates = {k: s / n for k, (s, n) in counts.items()}
        hidden = [rates[name] for name, _ in ours_model.neurons()[:-1]]  # the last one is the readout
        common["hidden_rate"] = statistics.fmean(hidden) if hidden else math.nan
        routes, layer_ms = _routes_and_layer_ms(ours_model, x[:, :batch], repeats)
        rows.append({"tool": OURS, **_compare(ref, ref), "layer_rates": rates, "routes": routes,
                     "layer_ms": layer_ms, "fused": why_not(ours_model) is None})
        fns.append(lambda: _ours_pass(ours_model, x_np, batch))

        simulate(ours_model, x_np, h5, batch=batch, record=("spikes",), quiet=True)
        with h5py.File(h5, "r") as f:
            written = torch.from_numpy(f["nodes/output/observables/spikes/data"][()]).transpose(0, 1).float()
        rows.append({"tool": OURS_H5, **_compare(ref, written), "fused": why_not(ours_model) is None})
        fns.append(lambda: simulate(ours_model, x_np, h5, batch=batch, record=("spikes",), quiet=True))

        layered = torch.from_numpy(_ours_pass(ours_model, x_np, batch, fused=False)).transpose(0, 1).float()
        rows.append({"tool": OURS_LAYERS, **_compare(ref, layered), "fused": False})
        fns.append(lambda: _ours_pass(ours_model, x_np, batch, fused=False))

        graph = read_nir(path)
        for peer in peers:
            row: dict = {"tool": peer, "samples_per_s": None, "agreement": None}
            rows.append(row)
            if not nir_peers.available(peer):
                row["status"] = "not installed"
                continue
            try:
                pm = nir_peers.load(peer, graph, DT)
                out = _peer_pass(peer, pm, x, batch)
            except nir_peers.PeerUnsupported as exc:
                row["status"] = f"unsupported: {exc}"
                continue
            except Exception as exc:  # noqa: BLE001 - a peer crashing on the file is a result, not our error
                row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                continue
            if tuple(out.shape) != tuple(ref.shape):
                row["status"] = f"failed: output shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
                continue
            row.update(_compare(ref, out))
            fns.append(lambda peer=peer, pm=pm: _peer_pass(peer, pm, x, batch))

        timed = [r for r in rows if r.get("status") is None]
        for r in timed:
            r["status"] = "ok"
        cpu: list[list[float]] = [[] for _ in fns]
        load0, ticks0 = load_avg(), cpu_ticks()
        samples_ms = interleaved_samples([_cpu_timed(fn, c) for fn, c in zip(fns, cpu)], repeats, warmup)
        common["load_avg"] = [load0, load_avg()]
        common["steal"] = steal_fraction(ticks0, cpu_ticks())
    n_batches = math.ceil(samples / batch)
    for r, ms, c in zip(timed, samples_ms, cpu):
        med = statistics.median(ms)
        r.update(samples_per_s=samples / (med * 1e-3), ms_per_batch=med / n_batches,
                 ms_per_batch_min=min(ms) / n_batches, cpu_ms_per_batch=statistics.median(c[-len(ms):]) / n_batches,
                 repeats=len(ms))
    peer_rates = [r["samples_per_s"] for r in timed if r["tool"] not in OURS_ALL]
    fastest = max(peer_rates, default=None)
    for r in rows:
        for k, v in common.items():
            r.setdefault(k, v)
        if r["tool"] in OURS_ALL:
            r["speedup_vs_fastest_peer"] = r["samples_per_s"] / fastest if fastest else None
    return rows


# --------------------------------------------------------------------------- CLI


def _table(rows: list[dict]) -> str:
    r0 = rows[0]
    head = (f"simulate one NIR file: MLP {'-'.join(map(str, r0['sizes']))} LIF (euler, zero reset), "
            f"density {r0['density']:.2f}, T={r0['T']}, {r0['samples']} samples in batches of {r0['batch']}, "
            f"input rate {r0['input_rate']:.3f}, hidden rate {r0['hidden_rate']:.3f}, "
            f"{r0['threads']} threads / {r0['cores']} cores")
    cols = (f"{'tool':<44}{'samples/s':>11}{'ms/batch':>11}{'cpu ms/batch':>14}{'agreement':>11}{'jaccard':>9}"
            f"{'out rate':>10}")
    lines = [head, cols, "-" * len(cols)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['tool']:<44}  {r['status'][:110]}")
            continue
        lines.append(f"{r['tool']:<44}{r['samples_per_s']:>11.1f}{r['ms_per_batch']:>11.1f}"
                     f"{r['cpu_ms_per_batch']:>14.1f}{r['agreement']:>11.6f}{r['spike_jaccard']:>9.4f}"
                     f"{r['output_rate']:>10.4f}")
    ours = rows[0]
    if ours.get("speedup_vs_fastest_peer") is not None:
        lines.append(f"speedup (ours / fastest peer): run_batches {ours['speedup_vs_fastest_peer']:.2f}x"
                     f"{' (fused)' if ours.get('fused') else ''}, "
                     f"simulate with h5 {rows[1]['speedup_vs_fastest_peer']:.2f}x, layer by layer "
                     f"{rows[2]['speedup_vs_fastest_peer']:.2f}x (target >= 5x)")
    load = r0.get("load_avg") or [None, None]
    if None not in load:
        lines.append(f"1-min load average {load[0]:.2f} before timing, {load[1]:.2f} after "
                     f"(above {r0['cores']}: other processes took CPU time from these numbers)")
    if r0.get("steal") is not None:
        lines.append(f"steal {100 * r0['steal']:.1f} % of the machine's CPU time during timing (the hypervisor ran "
                     f"other guests); cpu: {r0.get('cpu')}")
    lines.append("layer-by-layer routes: " + ", ".join(f"{k}={v}" for k, v in ours["routes"].items())
                 + "; per-layer ms per pass: " + ", ".join(f"{k} {v:.1f}" for k, v in ours["layer_ms"].items()))
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="neuroplastic bench simulate", description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="FILE", help="write the rows as a JSON list to FILE")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_REPEATS} repetitions, {QUICK_SAMPLES} samples (smoke run)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="layer sizes (default %(default)s)")
    p.add_argument("--steps", type=int, default=T, help="time steps T (default %(default)s)")
    p.add_argument("--samples", type=int, default=None, help=f"samples (default {SAMPLES}, --quick {QUICK_SAMPLES})")
    p.add_argument("--batch", type=int, default=BATCH, help="samples per call (default %(default)s)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed rounds (default {REPEATS}, --quick "
                                                             f"{QUICK_REPEATS})")
    p.add_argument("--peers", default=",".join(nir_peers.PEERS), help="comma-separated (default %(default)s)")
    a = p.parse_args(argv)
    sizes = _ints(a.sizes)
    samples = a.samples if a.samples is not None else QUICK_SAMPLES if a.quick else SAMPLES
    repeats = a.repeats if a.repeats is not None else QUICK_REPEATS if a.quick else REPEATS
    peers = [s for s in a.peers.split(",") if s]
    if len(sizes) < 2 or min(sizes) < 1 or min(a.steps, samples, a.batch, repeats) < 1:
        raise UserError("--sizes, --steps, --samples, --batch and --repeats must be positive")
    unknown = sorted(set(peers) - set(nir_peers.PEERS))
    if unknown:
        raise UserError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(nir_peers.PEERS)}")
    rows = run(sizes, a.steps, samples, a.batch, repeats, warmup=0 if a.quick else 1, peers=peers)
    print(_table(rows))
    if a.json:
        write_json(a.json, rows)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
