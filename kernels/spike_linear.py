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

__all__ = ["spike_linear", "event_dense_worthwhile", "sampled_density", "MAX_DENSITY"]

#: above this input density the dense matmul is faster (measured, docs/kernels.md)
MAX_DENSITY = 0.2


@nb.njit(cache=True, parallel=True)
def _row_index(x):
    """CSR of the nonzero entries of ``x [M, K]``. Branch-free: every column index is written
    to a per-row scratch slot and the slot pointer advances only on a nonzero (a data-dependent
    branch at ~10% density mispredicts often enough to cost 4x)."""
    M, K = x.shape
    scratch = np.empty((M, K), np.int32)
    counts = np.zeros(M + 1, np.int64)
    for r in prange(M):
        c = 0
        s = scratch[r]
        xr = x[r]
        for i in range(K):
            s[c] = i
            c += 1 if xr[i] != 0 else 0
        counts[r + 1] = c
    indptr = np.cumsum(counts)
    idx = np.empty(indptr[-1], np.int32)
    val = np.empty(indptr[-1], x.dtype)
    for r in prange(M):
        p0 = indptr[r]
        s = scratch[r]
        xr = x[r]
        for q in range(indptr[r + 1] - p0):
            i = s[q]
            idx[p0 + q] = i
            val[p0 + q] = xr[i]
    return indptr, idx, val


@nb.njit(cache=True)
def _col_index(indptr, idx, val, K):
    """Transpose the row index (CSR of X) into a column index (CSC of X)."""
    M = indptr.shape[0] - 1
    nnz = idx.shape[0]
    cptr = np.zeros(K + 1, np.int64)
    for p in range(nnz):
        cptr[idx[p] + 1] += 1
    for i in range(K):
        cptr[i + 1] += cptr[i]
    fill = cptr[:-1].copy()
    rows = np.empty(nnz, np.int32)
    cval = np.empty(nnz, val.dtype)
    for r in range(M):
        for p in range(indptr[r], indptr[r + 1]):
            i = idx[p]
            q = fill[i]
            rows[q] = r
            cval[q] = val[p]
            fill[i] = q + 1
    return cptr, rows, cval


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


class _SpikeLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias):  # type: ignore[override]
        xn = x2.detach().contiguous().numpy()
        indptr, idx, val = _row_index(xn)
        wt = weight.detach().t().contiguous().numpy()  # [K, N]: rows of W^T are gathered
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
    lead = x.shape[:-1]
    y = _SpikeLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.reshape(*lead, weight.shape[0])


def event_dense_worthwhile(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Dispatch rule: CPU float tensors, enough outputs per gathered row (``N >= 64``) and
    work (``M K N >= 2^22``) to matter, and an input density below :data:`MAX_DENSITY`,
    estimated on a strided sample of ~1/61 of the entries (counting all of them would cost
    a full pass over ``x``)."""
    if (
        x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or weight.dtype != x.dtype
    ):
        return False
    if weight.shape[0] < 64 or x.numel() * weight.shape[0] < 2**22:  # the dense matmul wins
        return False
    return sampled_density(x) <= MAX_DENSITY


def sampled_density(x: torch.Tensor, stride: int = 61) -> float:
    """Fraction of nonzero entries of ``x`` estimated on every ``stride``-th entry (a prime
    stride, so it does not alias with layer widths)."""
    sample = x.reshape(-1)[::stride]
    return int(torch.count_nonzero(sample)) / max(sample.numel(), 1)
