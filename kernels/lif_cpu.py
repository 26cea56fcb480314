r"""numba kernels for the fused multi-step LIF (CPU): one pass over all T per neuron.

Same maths as :mod:`neuroplastic.neurons.fused` (see there), over inputs flattened to
``[T, M]`` (``M = B * neurons``), parallel over neurons (each neuron's time loop is
sequential; neurons are independent, so there are no races). Scalars only (per-neuron
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


@nb.njit(cache=True, inline="always")
def _surrogate_grad(kind, alpha, x):
    if kind == 0:
        y = math.pi / 2 * alpha * x
        return alpha / 2 / (1 + y * y)
    if kind == 1:
        s = 1.0 / (1.0 + math.exp(-alpha * x))
        return alpha * s * (1 - s)
    if kind == 2:
        d = alpha * abs(x) + 1.0
        return 1.0 / (d * d)
    if kind == 3:
        return alpha * max(0.0, 1 - alpha * abs(x))
    return alpha if abs(x) < 0.5 / alpha else 0.0


@nb.njit(cache=True, parallel=True)
def lif_forward(drive, v0, a, v_th, v_reset, subtract, z_out, vpre_out, v_out):
    """``v_pre_t = a v_{t-1} + drive_t``; ``z_t = v_pre_t > v_th``; reset. In place."""
    T, M = drive.shape
    for j in prange(M):
        v = v0[j]
        for t in range(T):
            vp = a * v + drive[t, j]
            vpre_out[t, j] = vp
            if vp > v_th:
                z_out[t, j] = 1
                v = vp - v_th if subtract else v_reset
            else:
                z_out[t, j] = 0
                v = vp
        v_out[j] = v


@nb.njit(cache=True, parallel=True)
def lif_backward(gz, vpre, a, gain, v_th, v_reset, subtract, detach, kind, alpha, gx_out, gv0_out):
    """Reverse-time BPTT through the LIF (see :mod:`neuroplastic.neurons.fused`)."""
    T, M = gz.shape
    for j in prange(M):
        dv = 0.0
        for t in range(T - 1, -1, -1):
            vp = vpre[t, j]
            sg = _surrogate_grad(kind, alpha, vp - v_th)
            dp = gz[t, j] * sg
            if subtract:
                dp += dv
                if not detach:
                    dp -= v_th * dv * sg
            else:
                if vp <= v_th:
                    dp += dv
                if not detach:
                    dp += (v_reset - vp) * dv * sg
            gx_out[t, j] = gain * dp
            dv = a * dp
        gv0_out[j] = dv


def supported(*arrays: np.ndarray) -> bool:
    """Whether the numba path applies: float32/float64 C-contiguous arrays."""
    return all(x.dtype in (np.float32, np.float64) and x.flags.c_contiguous for x in arrays)
