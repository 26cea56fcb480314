r"""Event-driven *dense-weight* linear layer for sparse (spiking) inputs, CPU/numba.

For an input batch :math:`X \in \mathbb{R}^{M \times K}` (``M = T B`` rows of presynaptic
activity, mostly zeros: spikes) and a dense weight :math:`W \in \mathbb{R}^{N \times K}`:

* forward :math:`Y = X W^\top + b`: per row, only the active inputs touch memory,
  :math:`y_r = b + \sum_{i: x_{ri} \ne 0} x_{ri} W_{:, i}` (a gather of rows of
  :math:`W^\top`; ``M * nnz_per_row * N`` adds instead of ``M * K * N`` multiply-adds);
* weight gradient :math:`\nabla W = G^\top X` driven by the active entries:
  :math:`(\nabla W)_{:, i} = \sum_{r: x_{ri} \ne 0} x_{ri}\, G_{r, :}`, parallel over
  inputs ``i`` (each owns its column: no races, no atomics), blocked over rows of :math:`G`;
* input gradient :math:`G W` (dense; only computed when the input needs a gradient).

The inner loops run over contiguous rows (of :math:`W^\top`, of :math:`G`), which numba
vectorises; eight gathered rows are summed per pass over the accumulator row (a fixed
pairwise order: results differ from a dense matmul only by float rounding). The index of
active entries is built once per forward (CSR by rows, branch-free) and transposed for the
weight gradient (CSC by columns), which reuses it.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch
from numba import prange

from neuroplastic.errors import UserError

from .active_index import col_index as _col_index
from .active_index import row_index as _row_index
from .threads import match_torch_threads

__all__ = ["spike_linear", "event_dense_worthwhile", "spike_applicable", "spike_ms", "matmul_ms", "sampled_density"]

@nb.njit(cache=True, inline="always")
def _gather_rows(idx, val, src, p, e, acc):
    """``acc += sum_{q in [p, e)} val[q] * src[idx[q]]``, eight source rows per pass over
    ``acc`` (one load/store of the accumulator per eight rows instead of per row)."""
    N = acc.shape[0]
    while p + 8 <= e:
        s0, s1, s2, s3 = src[idx[p]], src[idx[p + 1]], src[idx[p + 2]], src[idx[p + 3]]
        s4, s5, s6, s7 = src[idx[p + 4]], src[idx[p + 5]], src[idx[p + 6]], src[idx[p + 7]]
        v0, v1, v2, v3 = val[p], val[p + 1], val[p + 2], val[p + 3]
        v4, v5, v6, v7 = val[p + 4], val[p + 5], val[p + 6], val[p + 7]
        for k in range(N):
            acc[k] += ((v0 * s0[k] + v1 * s1[k]) + (v2 * s2[k] + v3 * s3[k])) + (
                (v4 * s4[k] + v5 * s5[k]) + (v6 * s6[k] + v7 * s7[k]))
        p += 8
    while p < e:
        s0 = src[idx[p]]
        v0 = val[p]
        for k in range(N):
            acc[k] += v0 * s0[k]
        p += 1


@nb.njit(cache=True, parallel=True, fastmath=True)
def _forward(indptr, idx, val, wt, bias, has_bias, out):
    M = indptr.shape[0] - 1
    for r in prange(M):
        o = out[r]
        if has_bias:
            o[:] = bias
        else:
            o[:] = 0.0
        _gather_rows(idx, val, wt, indptr[r], indptr[r + 1], o)


#: rows of G per block of the weight gradient: a block (~768 KB) stays in a core's L2
_WGRAD_BLOCK_FLOATS = 3 << 16


@nb.njit(cache=True, parallel=True, fastmath=True)
def _weight_grad(cptr, rows, cval, g, gwt):
    """``gwt[i] = sum_r cval * g[r]`` over the CSC column ``i``, in blocks of rows of ``g``
    small enough to stay in L2 while every column gathers from them (the rows of a CSC
    column are sorted, so each column keeps a cursor across blocks)."""
    K = cptr.shape[0] - 1
    M, N = g.shape
    R = max(32, _WGRAD_BLOCK_FLOATS // max(N, 1))
    cur = cptr[:-1].copy()
    for i in prange(K):
        gwt[i][:] = 0.0
    for r0 in range(0, M, R):
        r1 = r0 + R
        for i in prange(K):
            p = cur[i]
            e = p
            pe = cptr[i + 1]
            while e < pe and rows[e] < r1:
                e += 1
            _gather_rows(rows, cval, g, p, e, gwt[i])
            cur[i] = e


#: per (shape, dtype): a reusable ``W^T`` buffer. A fresh multi-MB tensor per call costs
#: more in page faults than the transpose itself (40 ms for a new 4096 x 4096 copy vs
#: ~5 ms into a warm buffer). The contents are always rewritten (a weight changed through
#: ``.data`` keeps its version counter, so skipping the copy would not be safe) and only
#: read inside ``forward``.
_WT_BUFFERS: dict[tuple, torch.Tensor] = {}


def _transposed(weight: torch.Tensor) -> np.ndarray:
    """``weight.T`` as a C-contiguous ``[K, N]`` array, in a buffer reused across calls."""
    w = weight.detach()
    key = (tuple(w.shape), w.dtype)
    buf = _WT_BUFFERS.get(key)
    if buf is None:
        buf = _WT_BUFFERS[key] = torch.empty(w.shape[1], w.shape[0], dtype=w.dtype)
    buf.copy_(w.t())
    return buf.numpy()


class _SpikeLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias):  # type: ignore[override]
        match_torch_threads()
        xn = x2.detach().contiguous().numpy()
        indptr, idx, val = _row_index(xn)
        wt = _transposed(weight)  # [K, N]: rows of W^T are gathered
        out = torch.empty(x2.shape[0], weight.shape[0], dtype=x2.dtype)
        b = bias.detach().numpy() if bias is not None else np.zeros(1, xn.dtype)
        _forward(indptr, idx, val, wt, b, bias is not None, out.numpy())
        ctx.index = (indptr, idx, val, xn.shape[1])
        ctx.save_for_backward(weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        match_torch_threads()
        g = g.contiguous()
        gx = g @ weight if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1]:
            indptr, idx, val, K = ctx.index
            cptr, rows, cval = _col_index(indptr, idx, val, K)
            gwt = torch.empty(K, g.shape[1], dtype=g.dtype)
            _weight_grad(cptr, rows, cval, g.numpy(), gwt.numpy())
            gw = gwt.t()
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def spike_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ weight.T + bias`` over ``x [..., K]`` computed from the nonzero entries of ``x``
    (numba, CPU, float32/float64). Gradients for ``x``, ``weight`` and ``bias``."""
    tensors = [t for t in (x, weight, bias) if t is not None]
    if any(t.device.type != "cpu" for t in tensors):
        raise UserError("spike_linear runs on the CPU; got a tensor on "
                        + ", ".join(sorted({str(t.device) for t in tensors if t.device.type != "cpu"})))
    if x.dtype not in (torch.float32, torch.float64) or any(t.dtype != x.dtype for t in tensors):
        raise UserError(f"spike_linear needs float32 or float64 tensors of one dtype, got "
                        f"{', '.join(str(t.dtype) for t in tensors)}")
    if weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise UserError(f"spike_linear: x [..., {x.shape[-1]}] does not fit weight {list(weight.shape)}")
    lead = x.shape[:-1]
    y = _SpikeLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.reshape(*lead, weight.shape[0])


#: Cost of the spike gather, fitted on the 2-core development machine (Zen 5, 32 MB L3)
#: with ``python benchmarks/bench_spike_gather.py`` (docs/kernels.md): a fixed ~0.3 ms
#: (index build, buffers, parallel launch), ns per weight element for the ``W^T`` copy, ns
#: per gathered add (forward; the weight gradient costs about the same) while ``W^T`` fits
#: in the last-level cache and beyond it; torch's matmul: ns per multiply-add and per
#: weight read (also the dense constants of :data:`neuroplastic.kernels.dispatch.COST`:
#: 2.7 ms at B = 1 and 8.9 ms at B = 32 for 4096 x 4096).
SPIKE_FIXED_MS = 0.3
TRANSPOSE_NS = 0.8
SPIKE_ADD_NS = 0.03
SPIKE_ADD_NS_LARGE = 0.065
LARGE_WEIGHT_ELEMENTS = 1 << 22
MATMUL_MAC_NS = 0.0118
MATMUL_WEIGHT_NS = 0.152


def spike_ms(rows: int, n_in: int, n_out: int, rate: float) -> float:
    """Expected forward time of :func:`spike_linear`: fixed part, ``W^T`` copy, and one add
    per (active input, output) pair."""
    size = n_in * n_out
    add = SPIKE_ADD_NS if size <= LARGE_WEIGHT_ELEMENTS else SPIKE_ADD_NS_LARGE
    return SPIKE_FIXED_MS + size * (TRANSPOSE_NS + rows * rate * add) * 1e-6


def matmul_ms(rows: int, n_in: int, n_out: int) -> float:
    """Expected forward time of torch's dense ``x @ W^T``."""
    return n_in * n_out * (MATMUL_WEIGHT_NS + rows * MATMUL_MAC_NS) * 1e-6


def spike_applicable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """CPU float tensors of one dtype and at least 64 outputs (a gathered row shorter than
    that does not fill the SIMD loop: measured at parity with the matmul at 10 outputs)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and weight.dtype == x.dtype and weight.shape[0] >= 64)


def event_dense_worthwhile(x: torch.Tensor, weight: torch.Tensor, rate: float | None = None) -> bool:
    """Dispatch rule: :func:`spike_linear` when applicable (:func:`spike_applicable`) and its
    expected time (:func:`spike_ms`, at the input density ``rate``, by default estimated on
    a strided sample of ~1/61 of the entries) is below the matmul's (:func:`matmul_ms`).
    Ignoring the fixed costs this is ``rate < MATMUL_MAC_NS / SPIKE_ADD_NS`` (~0.39); the
    copy of ``W^T`` and the fixed part send small batches (below ~100-200 rows at
    784 x 800) to the matmul."""
    if not spike_applicable(x, weight):
        return False
    n_out, n_in = weight.shape
    rows = x.numel() // max(n_in, 1)
    if rate is None:
        rate = sampled_density(x)
    return spike_ms(rows, n_in, n_out, rate) < matmul_ms(rows, n_in, n_out)


def sampled_density(x: torch.Tensor, stride: int = 61) -> float:
    """Fraction of nonzero entries of ``x``: exact for small tensors, else estimated on every
    ``stride``-th entry (a prime stride, so it does not alias with layer widths; counting
    all of a large input would cost a full pass over it)."""
    flat = x.reshape(-1)
    sample = flat if flat.numel() <= 1 << 16 else flat[::stride]
    return int(torch.count_nonzero(sample)) / max(sample.numel(), 1)
