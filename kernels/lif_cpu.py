r"""numba kernels for the fused multi-step LIF (CPU): one pass over all T per neuron.

Same maths as :mod:`neuroplastic.neurons.fused` (see there), over inputs flattened to
``[T, M]`` (``M = B * neurons``), parallel over blocks of neurons (each block runs its
time loop with a SIMD inner loop over the block; neurons are independent: no races). Scalars only (per-neuron
parameter tensors use the torch path). Arithmetic stays in the input dtype, so float32
results equal the torch path's to rounding order.

Surrogate ids: 0 atan, 1 sigmoid, 2 fast_sigmoid, 3 triangle, 4 rectangle.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numba import prange

SURROGATE_IDS = {"atan": 0, "sigmoid": 1, "fast_sigmoid": 2, "triangle": 3, "rectangle": 4}


_BLOCK = 2048  # neurons per task: the block's state stays in L1/L2, the inner loop is SIMD


@nb.njit(cache=True, inline="always")
def _lif_update(v, d, j, a, gain, offset, v_th, v_reset, subtract, z_row):
    """One neuron, one step: membrane ``v[j]`` driven by ``d[j]``, spike into ``z_row[j]``,
    reset; returns the pre-reset membrane."""
    vp = a * v[j] + (gain * d[j] + offset)
    spk = vp > v_th
    z_row[j] = 1 if spk else 0
    if subtract:
        v[j] = vp - v_th if spk else vp
    else:
        v[j] = v_reset if spk else vp
    return vp


@nb.njit(cache=True, parallel=True, fastmath=True)
def lif_forward(x, v0, a, gain, offset, v_th, v_reset, subtract, z_out, vpre_out, v_out):
    """``v_pre_t = a v_{t-1} + gain x_t + offset``; ``z_t = v_pre_t > v_th``; reset. In place.

    ``vpre_out`` of shape ``[0, M]`` skips the pre-reset membrane (inference: no backward
    needs it, nobody records it): one array-sized write less per call."""
    T, M = x.shape
    keep = vpre_out.shape[0] == T
    nblocks = (M + _BLOCK - 1) // _BLOCK
    for blk in prange(nblocks):
        j0 = blk * _BLOCK
        j1 = min(j0 + _BLOCK, M)
        v = v0[j0:j1].copy()
        for t in range(T):
            d = x[t, j0:j1]
            z_row = z_out[t, j0:j1]
            if keep:
                vp_row = vpre_out[t, j0:j1]
                for j in range(j1 - j0):
                    vp_row[j] = _lif_update(v, d, j, a, gain, offset, v_th, v_reset, subtract, z_row)
            else:  # the same loop without the store (unswitched by hand: both stay SIMD)
                for j in range(j1 - j0):
                    _lif_update(v, d, j, a, gain, offset, v_th, v_reset, subtract, z_row)
        v_out[j0:j1] = v


def surrogate_constants(kind: int, alpha: float, dtype) -> np.ndarray:
    """Constants of :func:`lif_backward` in the arrays' dtype (``[1, 0, alpha, c]``, ``c`` the
    surrogate's inner scale), so that float32 data is never promoted to float64 by a float
    literal inside the kernel (which would halve the SIMD width)."""
    inner = {0: math.pi / 2 * alpha, 4: 0.5 / alpha}.get(kind, alpha)
    return np.array([1.0, 0.0, alpha, inner], dtype=dtype)


@nb.njit(cache=True, inline="always")
def _surrogate_row(kind, cst, vp_row, v_th, out):
    """``out[j] = sigma'(vp_row[j] - v_th)``, one branch-free loop per surrogate (SIMD)."""
    n = vp_row.shape[0]
    one, zero, alpha, c = cst[0], cst[1], cst[2], cst[3]
    if kind == 0:
        half_alpha = alpha / (one + one)
        for j in range(n):
            y = c * (vp_row[j] - v_th)
            out[j] = half_alpha / (one + y * y)
    elif kind == 1:
        for j in range(n):
            s = one / (one + math.exp(-alpha * (vp_row[j] - v_th)))
            out[j] = alpha * s * (one - s)
    elif kind == 2:
        for j in range(n):
            d = alpha * abs(vp_row[j] - v_th) + one
            out[j] = one / (d * d)
    elif kind == 3:
        for j in range(n):
            out[j] = alpha * max(zero, one - alpha * abs(vp_row[j] - v_th))
    else:
        for j in range(n):
            out[j] = alpha if abs(vp_row[j] - v_th) < c else zero


@nb.njit(cache=True, parallel=True, fastmath=True)
def lif_backward(gz, vpre, a, gain, v_th, v_reset, subtract, detach, kind, cst, gx_out, gv0_out):
    """Reverse-time BPTT through the LIF (see :mod:`neuroplastic.neurons.fused`); scalars and
    ``cst`` (:func:`surrogate_constants`) in the arrays' dtype."""
    T, M = gz.shape
    one, zero = cst[0], cst[1]
    nblocks = (M + _BLOCK - 1) // _BLOCK
    for blk in prange(nblocks):
        j0 = blk * _BLOCK
        j1 = min(j0 + _BLOCK, M)
        n = j1 - j0
        dv = np.zeros(n, gz.dtype)
        sg = np.empty(n, gz.dtype)
        for t in range(T - 1, -1, -1):
            g_row = gz[t, j0:j1]
            vp_row = vpre[t, j0:j1]
            out_row = gx_out[t, j0:j1]
            _surrogate_row(kind, cst, vp_row, v_th, sg)
            if subtract and detach:
                for j in range(n):
                    dp = g_row[j] * sg[j] + dv[j]
                    out_row[j] = gain * dp
                    dv[j] = a * dp
            elif subtract:
                for j in range(n):
                    dp = (g_row[j] - v_th * dv[j]) * sg[j] + dv[j]
                    out_row[j] = gain * dp
                    dv[j] = a * dp
            elif detach:
                for j in range(n):
                    keep = one if vp_row[j] <= v_th else zero
                    dp = g_row[j] * sg[j] + keep * dv[j]
                    out_row[j] = gain * dp
                    dv[j] = a * dp
            else:
                for j in range(n):
                    keep = one if vp_row[j] <= v_th else zero
                    dp = (g_row[j] + (v_reset - vp_row[j]) * dv[j]) * sg[j] + keep * dv[j]
                    out_row[j] = gain * dp
                    dv[j] = a * dp
        gv0_out[j0:j1] = dv


def supported(*arrays: np.ndarray) -> bool:
    """Whether the numba path applies: float32/float64 C-contiguous arrays."""
    return all(x.dtype in (np.float32, np.float64) and x.flags.c_contiguous for x in arrays)
