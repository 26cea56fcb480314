"""Benchmark charts from the JSON of ``neuroplastic bench peers|kernels|simulate --json FILE``.

The kind of benchmark is recognised from the rows' keys:

* **peers** (``ours_snntorch_cfg_ms``, ``snntorch_ms``, ``norse_ms``, ``speedup``...): the
  training step's milliseconds of ours (both matching configurations) against snnTorch and
  Norse, bars (several rows: the median bar and each run as a dot);
* **kernels** (``rate``, ``density``, ``batch``, ``event_ms``, ``dense_ms``,
  ``torch_sparse_ms``): time per call against the input firing rate, one panel per batch
  size and synapse density, the three implementations as lines (log-log);
* **simulate** (``tool``, ``samples_per_s``, ``agreement``, ``status``): samples per second
  per tool with the output agreement written next to each bar (tools that could not run
  say why), and our per-layer time per pass when the row has it.

:func:`bench_figure` takes the rows, :func:`bench_figure_from_json` the file; both return a
:class:`matplotlib.figure.Figure` and raise :class:`~neuroplastic.plot.style.NoData` for
rows of no known kind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from ..errors import UserError
from .continual import colors
from .style import NoData, new_figure

__all__ = ["bench_figure", "bench_figure_from_json", "bench_kind", "peers_figure", "kernels_figure",
           "simulate_figure"]

OURS_COLOR, PEER_COLOR = "#1f77b4", "#ff7f0e"

_PEER_BARS = (("ours_snntorch_cfg_ms", "neuroplastic\n(snnTorch-matching config)", True),
              ("ours_norse_cfg_ms", "neuroplastic\n(Norse-matching config)", True),
              ("snntorch_ms", "snnTorch", False),
              ("norse_ms", "Norse", False))
_KERNEL_LINES = (("event_ms", "event-driven CSR (ours)", "#1f77b4", "o"),
                 ("dense_ms", "dense matmul (torch)", "#7f7f7f", "s"),
                 ("torch_sparse_ms", "torch.sparse CSR", "#ff7f0e", "^"))


def _num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def bench_kind(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """``"peers"``, ``"kernels"``, ``"simulate"`` or None, from the keys of the rows."""
    keys = set().union(*(set(r) for r in rows if isinstance(r, Mapping))) if rows else set()
    if {"tool", "samples_per_s"} <= keys:
        return "simulate"
    if {"rate", "density", "batch", "event_ms", "dense_ms"} <= keys:
        return "kernels"
    if {"snntorch_ms", "norse_ms"} & keys and {"ours_ms", "ours_snntorch_cfg_ms", "ours_norse_cfg_ms"} & keys:
        return "peers"
    return None


def _hbar_labels(ax, ys, values, texts, span: float) -> None:
    for y, v, t in zip(ys, values, texts):
        ax.text((v or 0.0) + 0.01 * span, y, t, va="center", ha="left", fontsize=8)


def peers_figure(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Figure:
    """Training-step milliseconds of ours vs snnTorch and Norse (``bench peers`` rows)."""
    bars = [(key, lab, ours, [v for r in rows if (v := _num(r.get(key))) is not None])
            for key, lab, ours in _PEER_BARS]
    bars = [b for b in bars if b[3]]
    if not bars:
        raise NoData("no timings in the peers rows")
    fig = new_figure(7.6, 1.6 + 0.62 * len(bars))
    ax = fig.add_subplot()
    ys = np.arange(len(bars))[::-1]
    med = [float(np.median(v)) for *_, v in bars]
    ax.barh(ys, med, color=[OURS_COLOR if o else PEER_COLOR for _, _, o, _ in bars], height=0.62,
            edgecolor="black", lw=0.5)
    if len(rows) > 1:
        for y, (*_, v) in zip(ys, bars):
            ax.plot(v, np.full(len(v), y), ls="none", marker="o", ms=4, color="black", alpha=0.7)
    top = max(max(v) for *_, v in bars)
    ax.set_xlim(0, 1.22 * top)
    _hbar_labels(ax, ys, [max(v) for *_, v in bars], [f"{m:.1f} ms" for m in med], top)
    ax.set_yticks(ys, [lab for _, lab, _, _ in bars], fontsize=8.5)
    ax.set_xlabel("milliseconds per training step (lower is better)" + (", median of runs (dots: each run)"
                                                                         if len(rows) > 1 else ""))
    ax.set_ylabel("implementation")
    ax.grid(axis="x", alpha=0.3)
    r0 = rows[0]
    shape = "-".join(str(s) for s in r0.get("sizes", [])) or "?"
    speed = [s for r in rows if (s := _num(r.get("speedup"))) is not None]
    sub = f"speedup (faster peer / slower of ours): {np.median(speed):.2f}x" if speed else ""
    head = title or (f"Training step, MLP {shape} LIF, T={r0.get('T', '?')}, batch {r0.get('batch', '?')}, "
                     f"{r0.get('threads', '?')} threads")
    ax.set_title(head + ("\n" + sub if sub else ""), fontsize=10)
    return fig


def kernels_figure(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Figure:
    """Time per call vs input firing rate, event-driven CSR vs dense matmul vs torch.sparse
    (``bench kernels`` rows): one panel per (batch, density), log-log."""
    rows = [r for r in rows if _num(r.get("rate")) and _num(r.get("density")) and _num(r.get("batch"))]
    if not rows:
        raise NoData("no grid points in the kernels rows")
    densities = sorted({float(r["density"]) for r in rows})
    batches = sorted({int(r["batch"]) for r in rows})
    nr, nc = len(batches), len(densities)
    fig = new_figure(min(13.0, 1.4 + 3.3 * nc), 1.5 + 2.7 * nr)
    axes = fig.subplots(nr, nc, squeeze=False, sharey=True)
    for a, b in enumerate(batches):
        for c, d in enumerate(densities):
            ax = axes[a, c]
            pts = sorted((r for r in rows if int(r["batch"]) == b and float(r["density"]) == d),
                         key=lambda r: float(r["rate"]))
            for key, _, col, mk in _KERNEL_LINES:
                xy = [(float(r["rate"]), v) for r in pts if (v := _num(r.get(key))) is not None and v > 0]
                if xy:
                    x, y = zip(*xy)
                    ax.plot(x, y, color=col, marker=mk, ms=5, lw=1.6)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.tick_params(axis="y", labelleft=True, labelsize=8)
            ax.set_title(f"density {100 * d:g}%, batch {b}", fontsize=9.5)
            ax.set_xlabel("input firing rate")
            ax.set_ylabel("ms per call")
            ax.grid(alpha=0.3, which="major")
            rates = sorted({float(r["rate"]) for r in pts})
            if rates:
                ax.set_xticks(rates, [f"{100 * x:g}%" for x in rates], fontsize=8)
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xlim(rates[0] / 1.6, rates[-1] * 1.6)
    handles = [Line2D([], [], color=col, marker=mk, lw=1.6, label=lab) for _, lab, col, mk in _KERNEL_LINES]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8.5, frameon=False)
    fig.suptitle(title or "Sparse propagation: time per call (lower is better)", fontsize=11)
    return fig


def simulate_figure(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Figure:
    """Samples per second of every tool on one NIR file (``bench simulate`` rows), the output
    agreement with ours next to each bar; our per-layer time per pass when recorded."""
    rows = [r for r in rows if isinstance(r, Mapping) and r.get("tool") is not None]
    if not rows:
        raise NoData("no tools in the simulate rows")
    ours = [str(r["tool"]).startswith("neuroplastic") for r in rows]
    layer_ms = next((r.get("layer_ms") for r in rows if isinstance(r.get("layer_ms"), Mapping) and r["layer_ms"]),
                    None)
    routes = next((r.get("routes") for r in rows if isinstance(r.get("routes"), Mapping)), None) or {}
    n = len(rows)
    fig = new_figure(9.0, 1.7 + 0.5 * n + (0.32 * len(layer_ms) + 1.4 if layer_ms else 0))
    if layer_ms:
        ax, ax2 = fig.subplots(2, 1, height_ratios=[0.5 * n + 0.6, 0.32 * len(layer_ms) + 0.5])
    else:
        ax, ax2 = fig.add_subplot(), None
    ys = np.arange(n)[::-1]
    vals = [_num(r.get("samples_per_s")) for r in rows]
    top = max([v for v in vals if v is not None] + [1.0])
    ax.barh(ys, [v or 0.0 for v in vals], color=[OURS_COLOR if o else PEER_COLOR for o in ours], height=0.62,
            edgecolor="black", lw=0.5)
    texts = []
    for r, v in zip(rows, vals):
        if v is None:
            status = str(r.get("status") or "no timing")
            texts.append(status if len(status) <= 70 else status[:67] + "...")
        else:
            agr = _num(r.get("agreement"))
            texts.append(f"{v:,.0f}/s" + (f"   agreement {agr:.6f}" if agr is not None else ""))
    ax.set_xlim(0, 1.6 * top)
    _hbar_labels(ax, ys, vals, texts, top)
    ax.set_yticks(ys, [str(r["tool"]).replace(" (", "\n(") for r in rows], fontsize=8.5)
    ax.set_xlabel("samples per second (higher is better)")
    ax.set_ylabel("tool")
    ax.grid(axis="x", alpha=0.3)
    r0 = rows[0]
    shape = "-".join(str(s) for s in r0.get("sizes", [])) or "?"
    dens = _num(r0.get("density"))
    head = title or (f"Simulating one NIR file: MLP {shape} LIF"
                     + (f", {100 * dens:g}% of synapses" if dens is not None else "")
                     + f", T={r0.get('T', '?')}, {r0.get('samples', '?')} samples")
    sp = _num(r0.get("speedup_vs_fastest_peer"))
    ax.set_title(head + (f"\nours / fastest peer: {sp:.2f}x" if sp is not None else ""), fontsize=10)
    if ax2 is not None:
        names = list(layer_ms)
        y2 = np.arange(len(names))[::-1]
        ms = [_num(layer_ms[k]) or 0.0 for k in names]
        cols = colors(len(names))
        ax2.barh(y2, ms, color=cols, height=0.62, edgecolor="black", lw=0.5)
        t2 = max(ms + [1e-9])
        ax2.set_xlim(0, 1.3 * t2)
        _hbar_labels(ax2, y2, ms, [f"{m:.1f} ms" + (f" ({routes[k]})" if k in routes else "")
                                   for k, m in zip(names, ms)], t2)
        ax2.set_yticks(y2, names, fontsize=8.5)
        ax2.set_xlabel("milliseconds per pass over one batch")
        ax2.set_ylabel("layer")
        ax2.grid(axis="x", alpha=0.3)
        ax2.set_title("Where our time goes (per layer; kernel route in brackets)", fontsize=9.5)
    return fig


def bench_figure(rows: Sequence[Mapping[str, Any]] | Mapping[str, Any], title: str | None = None) -> Figure:
    """The chart for the rows of ``neuroplastic bench peers|kernels|simulate --json``."""
    if isinstance(rows, Mapping):
        rows = [rows]
    rows = [r for r in rows if isinstance(r, Mapping)]
    if not rows:
        raise NoData("no benchmark rows")
    kind = bench_kind(rows)
    if kind == "simulate":
        return simulate_figure(rows, title)
    if kind == "kernels":
        return kernels_figure(rows, title)
    if kind == "peers":
        return peers_figure(rows, title)
    keys = sorted(set().union(*(set(r) for r in rows)))
    shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    raise NoData(f"not rows of neuroplastic bench peers, kernels or simulate (keys: {shown})")


def bench_figure_from_json(path: str | Path, title: str | None = None) -> Figure:
    """:func:`bench_figure` of a JSON file written by ``neuroplastic bench ... --json FILE``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"benchmark file not found: {path}")
    try:
        rows = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not JSON ({type(exc).__name__}): give the file of neuroplastic bench --json") \
            from None
    if not isinstance(rows, list | dict):
        raise NoData(f"{path}: expected a list of rows")
    return bench_figure(rows, title)
