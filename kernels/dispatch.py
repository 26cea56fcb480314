r"""Pick event-driven or dense propagation from the expected amount of work.

Cost model (per call, ``B`` rows, layer ``n_pre x n_post``, density ``d``, firing rate
``r`` = fraction of nonzero inputs), fitted to ``benchmarks/bench_kernels.py`` on the
2-core development machine (numbers and command in ``docs/kernels.md``):

.. math::

    t_\text{event} &= o_e + n_\text{pre} n_\text{post}\,\Big(\min\Big(
        \frac{B\, r\, d\; c_e}{\min(B, P)},\;
        \frac{B\, d\, (1 - (1-r)^{B})\, c_c}{P}\ [B \ge 4]\Big)
        + [\text{dense weight}]\; c_g \Big) \\
    t_\text{dense} &= o_d + n_\text{pre} n_\text{post}\,\big(c_w + B\, c_m
        + [\text{dense weight}]\; c_k \big)

``c_e`` ns per synaptic event on one core for the row push (``P`` = cores; it
parallelises over rows), ``c_c`` ns per (synapse x batch row) for the column push
(:func:`~neuroplastic.kernels.cpu.spmm_forward` picks the cheaper of the two), ``c_m``
ns per multiply-add of torch's matmul, ``c_w`` ns per weight read by it, ``c_g`` ns per
dense weight element to gather the nnz values from a dense parameter (``event_linear``),
``c_k`` ns per element for torch's ``weight * mask``; ``o_*`` fixed call overheads.
Event-driven is chosen iff :math:`t_\text{event} < t_\text{dense}`.
Ignoring the overheads, the dense-weight terms and the column push this is the rule

.. math:: r\, d < \frac{\min(B, P)}{B}\cdot\frac{c_w + B\,c_m}{c_e}

i.e. the row push wins when the *expected events per weight* stay below a
batch-dependent threshold (about 0.033 at B = 32); the column push caps the event cost
at :math:`B d c_c / P` per weight, so at B >= 8 and density <= ~0.2 the event path is
chosen at any rate (see the decision table in the docs).

torch.sparse CSR is not a choice: with the column push, the numba forward covers the
points where ``torch.sparse.mm`` beat the row push (many batch rows active per synapse).
No GPU was available: the CUDA rule (:data:`CUDA_MAX_EVENTS_PER_WEIGHT`) is a
conservative placeholder, not a measurement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from neuroplastic.errors import UserError

from .autograd import CSRCache, event_linear
from .spike_linear import (
    MATMUL_MAC_NS,
    MATMUL_WEIGHT_NS,
    sampled_density,
    spike_applicable,
    spike_linear,
    spike_ms,
)

__all__ = ["CostModel", "COST", "choose_backend", "sparse_linear", "CUDA_MAX_EVENTS_PER_WEIGHT"]


@dataclass(frozen=True)
class CostModel:
    """Measured constants of the rule (ns, or ms for the fixed overheads)."""

    event_ns: float  # c_e: per synaptic event, one core (row push)
    column_ns: float  # c_c: per (synapse x batch row) of the column push, one core
    mac_ns: float  # c_m: per multiply-add in torch matmul (2 cores)
    weight_ns: float  # c_w: per weight element read by torch matmul
    gather_ns: float  # c_g: per dense weight element, nnz value gather
    mask_ns: float  # c_k: per element of weight * mask
    event_overhead_ms: float  # o_e
    dense_overhead_ms: float  # o_d
    cores: int

    def event_ms(
        self, size: float, density: float, rate: float, batch: int, dense_weight: bool
    ) -> float:
        rows = batch * rate * density * self.event_ns / max(1, min(batch, self.cores))
        active = 1.0 - (1.0 - rate) ** min(batch, 128)
        cols = batch * density * active * self.column_ns / self.cores if batch >= 4 else np.inf
        per = min(rows, cols) + (self.gather_ns if dense_weight else 0.0)
        return self.event_overhead_ms + size * per * 1e-6

    def dense_ms(self, size: float, batch: int, dense_weight: bool) -> float:
        per = self.weight_ns + batch * self.mac_ns + (self.mask_ns if dense_weight else 0.0)
        return self.dense_overhead_ms + size * per * 1e-6


#: Measured on the 2-core development machine (AMD EPYC Zen 5, 32 MB L3) in quiet
#: windows, n = 4096 (docs/kernels.md, "Measurements"): row push 0.50-0.54 ms for 1.11 M
#: events on 2 threads -> ~1.0 ns/event/core; column push ~0.15 ns per (synapse x row)
#: single-threaded; torch matmul 2.7 ms (B=1) and 8.9 ms (B=32) -> weight_ns + B*mac_ns;
#: value gather 2.4-2.9 ms and ``weight * mask`` ~40 ms at density 0.1; call overheads
#: from ``measure_overheads``. Refit with ``bench_kernels.py --calibrate`` when quiet.
COST = CostModel(
    event_ns=1.0,
    column_ns=0.15,
    mac_ns=MATMUL_MAC_NS,
    weight_ns=MATMUL_WEIGHT_NS,
    gather_ns=0.16,
    mask_ns=2.4,
    event_overhead_ms=0.0055,
    dense_overhead_ms=0.002,
    cores=min(2, os.cpu_count() or 1),
)

#: ns per input element (``batch * n_pre``) for the CSR kernels' index of the
#: active inputs (``active_columns``: 1.2 ms for a 3200 x 784 input, measured)
SCAN_NS = 0.5

#: GPU placeholder (unmeasured): event-driven only when r*d <= this.
CUDA_MAX_EVENTS_PER_WEIGHT = 1e-3


def choose_backend(
    device: torch.device | str,
    density: float,
    firing_rate: float,
    batch: int,
    *,
    size: int | None = None,
    dense_weight: bool = False,
    spike: bool = False,
    training: bool = False,
    n_pre: int | None = None,
) -> str:
    """``"numba"`` | ``"cuda"`` | ``"spike"`` | ``"torch"`` for a layer with this density
    and input rate.

    ``size`` = ``n_pre * n_post`` (default: large, fixed overheads ignored);
    ``dense_weight=True`` charges the per-call value gather (event path) and the
    ``weight * mask`` product (dense path) of a dense-parameter layer. ``spike=True``
    admits a third CPU route: the masked weight ``weight * mask`` multiplied by the
    spike gather of :func:`~neuroplastic.kernels.spike_linear.spike_linear` (event-driven
    in the *inputs*, dense in the synapses; cost
    :func:`~neuroplastic.kernels.spike_linear.spike_ms`). It beats the CSR push above
    a density of about ``SPIKE_ADD_NS * P / c_e`` (~6%): a CSR event is a scattered
    read-modify-write, a gathered add is one lane of a contiguous SIMD row.

    With ``n_pre`` the CSR route also pays ``SCAN_NS`` per input element ``batch * n_pre`` for
    the index of the active inputs its forward builds (measured on the 784-800-800-10
    inference benchmark: without it a 800 -> 10 layer went to the CSR kernels at 4.8 ms per
    5200 rows where the matmul takes 2.5 ms, and an 800 -> 800 layer at 3 % input rate to
    them at 14.9 ms where the spike gather takes 8.5 ms).

    ``training=True`` (the weight needs a gradient) adds the backward pass: twice the
    forward for the matmul and the spike gather (their weight gradients are the same
    kind of product), and for the CSR route its SDDMM weight gradient (one row-push event
    per (active input, synapse), with no column variant) plus ``SCAN_NS`` per input
    element again (the backward builds its own index).
    """
    if not (0.0 <= density <= 1.0 and 0.0 <= firing_rate <= 1.0):
        raise UserError(f"density and firing_rate must lie in [0, 1], got {density}, {firing_rate}")
    if batch < 1:
        raise UserError(f"batch must be >= 1, got {batch}")
    dev = torch.device(device)
    if dev.type == "cuda":
        return "cuda" if firing_rate * density <= CUDA_MAX_EVENTS_PER_WEIGHT else "torch"
    if dev.type != "cpu":
        return "torch"
    if size is None:
        size = 1 << 30
    scan = batch * (n_pre or 0) * SCAN_NS * 1e-6  # the index of the active inputs, built per call
    costs = {
        "numba": COST.event_ms(size, density, firing_rate, batch, dense_weight) + scan,
        "torch": COST.dense_ms(size, batch, dense_weight),
    }
    if spike:
        mask = COST.mask_ns * size * 1e-6 if dense_weight else 0.0
        costs["spike"] = spike_ms(batch, size, 1, firing_rate) + mask + COST.dense_overhead_ms
    if training:
        sddmm = size * batch * firing_rate * density * COST.event_ns / COST.cores * 1e-6
        costs["numba"] += sddmm + scan
        costs["torch"] *= 2
        if "spike" in costs:
            costs["spike"] *= 2
    return min(costs, key=costs.__getitem__)


def sparse_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    cache: CSRCache | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``x @ (weight * mask).T`` by the fastest expected route (or the one asked for).

    ``backend``: ``"auto"`` (:func:`choose_backend` with the sampled firing rate of
    ``x`` and the mask density), ``"numba"``, ``"cuda"`` (event-driven via
    :func:`~neuroplastic.kernels.autograd.event_linear`), ``"spike"`` (spike gather on the
    masked weight, CPU) or ``"torch"`` (dense reference). Gradients flow to ``x`` and
    ``weight`` on every route (zero off the mask).
    """
    if weight.ndim != 2 or mask.shape != weight.shape:
        raise UserError(
            "weight must be [n_post, n_pre] and mask the same shape, "
            f"got {tuple(weight.shape)} and {tuple(mask.shape)}"
        )
    if backend == "auto":
        n_post, n_pre = weight.shape
        rows = max(1, x.numel() // max(n_pre, 1))
        rate = sampled_density(x)
        if cache is not None:
            density = cache.structure(mask).density
        else:
            density = float(mask.count_nonzero()) / max(mask.numel(), 1)
        backend = choose_backend(x.device, density, rate, rows, size=n_pre * n_post, dense_weight=True,
                                 spike=spike_applicable(x, weight),
                                 training=torch.is_grad_enabled() and weight.requires_grad, n_pre=n_pre)
    if backend == "torch":
        return F.linear(x.to(weight.dtype), weight * mask.to(weight.dtype))
    if backend == "spike":
        return spike_linear(x, weight * mask.to(weight.dtype))
    if backend in ("numba", "cuda"):
        return event_linear(x, weight, mask, cache, backend)
    raise UserError(f"backend must be 'auto', 'numba', 'cuda', 'spike' or 'torch', got {backend!r}")
