r"""Event-driven *dense-weight* linear layer for sparse (spiking) inputs, CPU/numba.

For an input batch :math:`X \in \mathbb{R}^{M \times K}` (``M = T B`` rows of presynaptic
activity, mostly zeros: spikes) and a dense weight :math:`W \in \mathbb{R}^{N \times K}`:

* forward :math:`Y = X W^\top + b`: per row, only the active inputs touch memory,
  :math:`y_r = b + \sum_{i: x_{ri} \ne 0} x_{ri} W_{:, i}` (a gather of rows of
  :math:`W^\top`; ``M * nnz_per_row * N`` adds instead of ``M * K * N`` multiply-adds);
* weight gradient :math:`\nabla W = G^\top X` driven by the active entries:
  :math:`(\nabla W)_{:, i} = \sum_{r: x_{ri} \ne 0} x_{ri}\, G_{r, :}`, parallel over
  inputs ``i`` (each owns its column: no races, no atomics);
* input gradient :math:`G W` (dense; only computed when the input needs a gradient).

The inner loops run over contiguous rows (of :math:`W^\top`, of :math:`G`), which numba
vectorises (``fastmath`` only licenses SIMD; no reassociation across rows).
The index of active entries (CSR by rows for the
forward, CSC by columns for the gradient) is built once per call in the same pass.
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
    M, K = x.shape
    counts = np.zeros(M + 1, np.int64)
    for r in prange(M):
        c = 0
        for i in range(K):
            if x[r, i] != 0:
                c += 1
        counts[r + 1] = c
    indptr = np.cumsum(counts)
    idx = np.empty(indptr[-1], np.int32)
    val = np.empty(indptr[-1], x.dtype)
    for r in prange(M):
        p = indptr[r]
        for i in range(K):
            if x[r, i] != 0:
                idx[p] = i
                val[p] = x[r, i]
                p += 1
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


@nb.njit(cache=True, parallel=True, fastmath=True)
def _forward(indptr, idx, val, wt, bias, has_bias, out):
    M = indptr.shape[0] - 1
    N = wt.shape[1]
    for r in prange(M):
        o = out[r]
        if has_bias:
            o[:] = bias
        else:
            o[:] = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            w = wt[idx[p]]
            v = val[p]
            for k in range(N):
                o[k] += v * w[k]


@nb.njit(cache=True, parallel=True, fastmath=True)
def _weight_grad(cptr, rows, cval, g, gwt):
    K = cptr.shape[0] - 1
    N = g.shape[1]
    for i in prange(K):
        acc = gwt[i]
        acc[:] = 0.0
        for p in range(cptr[i], cptr[i + 1]):
            gr = g[rows[p]]
            v = cval[p]
            for k in range(N):
                acc[k] += v * gr[k]


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
