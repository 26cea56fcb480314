r"""Fused event-driven inference of a feed-forward chain of synapse + neuron layers (CPU, numba).

One call runs every layer of a chain ``Linear -> neuron -> Linear -> neuron -> ...`` over all
``T`` steps for a chunk of samples: ``prange`` over the samples; per sample the layers in
order, each over all ``T`` steps (a feed-forward chain allows it: layer ``l`` at step ``t``
needs only layer ``l - 1`` at step ``t``, whose spikes are already in the output; one layer's
weights stay in the core's cache for ``T`` steps); per layer and step

1. **input current** :math:`I_t = W x_t + b` from the *active* inputs only (the nonzero
   entries of :math:`x_t`, listed in ascending order):

   * masked (sparse) layer, input-major CSR of the real synapses only
     (``indptr``/``indices``/``data``, rows = presynaptic neurons): :math:`I \leftarrow 0`;
     for every active input :math:`i` (ascending), for each of its synapses :math:`k`:
     :math:`I_{j(k)} \leftarrow I_{j(k)} + x_i w_k` (one float32 multiply, one add, no FMA;
     the multiply is skipped for spikes, :math:`1 \cdot w = w` exactly); then
     :math:`I \leftarrow I + b`. This is the arithmetic, in this order, of the CSR row push
     :func:`neuroplastic.kernels.cpu.spmm_forward` (``method="rows"``) followed by the
     layer's ``y + bias``;
   * dense (unmasked) layer, ``W^T [n_in, n_out]``: :math:`I \leftarrow b` (or 0), then the
     gathered rows :math:`x_i W^T_{i,:}` of the active inputs added eight at a time by
     :func:`neuroplastic.kernels.spike_linear._gather_rows` itself (the spike gather's
     forward: same function, same ``fastmath`` flags);

2. **neuron update**, with the float32 arithmetic of the layer-by-layer kernels:

   * LIF / IF (``kind 0``): :math:`v^{pre} = a v + (g I + c)`, :math:`z = [v^{pre} > \vartheta]`,
     reset to :math:`v^{pre} - \vartheta` (subtract) or :math:`v_{reset}` (zero), by
     :func:`neuroplastic.kernels.lif_cpu._lif_update` inside a ``fastmath`` loop like
     :func:`~neuroplastic.kernels.lif_cpu.lif_forward` (IF: :math:`a = 1`, :math:`g = R`);
   * CubaLIF (``kind 1``): first the synaptic current :math:`i \leftarrow a_s i + g_s I`
     (two products, one add, as torch computes ``a_s * i + g_s * x``), then LIF on :math:`i`;
   * LI readout (``kind 2``): :math:`v \leftarrow (a v + c_{li}) + g I` (torch's
     ``a * v + (1 - a) v_leak + gain * x``, left to right), no spikes;
   * CubaLI readout (``kind 3``): the synaptic current, then LI;

   spikes go straight into the layer's ``uint8`` block ``[B, T, n]`` of ``spk`` (samples
   first), the membrane before reset into its float32 block of ``vrec`` when recorded, and
   the spiking neurons' ids (ascending) become the next layer's active inputs.

Layer ``l`` is described by row ``l`` of ``ints`` / ``flts`` (columns ``I_*`` / ``F_*``
below); the weights of all layers are concatenated (``wdense`` for dense layers, the CSR
arrays for masked ones, ``indptr`` already offset into ``indices``/``data``). Outputs
``spk``/``vrec`` are flat buffers holding one contiguous ``[n_samples, T, n]`` block per
layer; sample ``x0 + b`` of ``x`` is written at row ``b0 + b`` of each block (so a batch can
be computed in several chunks, and a batch of a larger array read in place). ``bad[b]`` is
set when sample ``x0 + b`` has a NaN or infinite input. No state leaves the call: every
sample starts from rest (``v = v_leak``, ``i = 0``).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import prange

from .lif_cpu import _lif_update
from .spike_linear import _gather_rows

__all__ = ["run_chain", "I_COLS", "F_COLS", "SYN_DENSE", "SYN_CSR", "LIF", "CUBALIF", "LI", "CUBALI"]

#: synapse kinds (column ``I_SYN``)
SYN_DENSE, SYN_CSR = 0, 1
#: neuron kinds (column ``I_NEURON``)
LIF, CUBALIF, LI, CUBALI = 0, 1, 2, 3

#: integer columns: synapse kind, inputs, outputs, offset of the layer's weights (``wdense`` or
#: ``data``), offset of its ``indptr`` rows, offset of its bias, has bias, neuron kind, subtract
#: reset, offset of its block in ``spk`` (-1: none), in ``vrec`` (-1: not recorded)
I_COLS = ("syn", "n_in", "n_out", "w_off", "ptr_off", "b_off", "has_bias", "neuron", "subtract",
          "spk_off", "v_off")
(I_SYN, I_NIN, I_NOUT, I_WOFF, I_POFF, I_BOFF, I_HASBIAS, I_NEURON, I_SUBTRACT, I_SPKOFF,
 I_VOFF) = range(len(I_COLS))
#: float32 columns: decay ``a``, input gain ``g``, LIF drive offset ``c = (1-a) v_leak`` (exactly 0
#: for ``v_leak = 0``), threshold, reset value, rest ``v_leak`` (initial membrane), synaptic decay
#: ``a_s`` and gain ``g_s``, LI offset ``(1-a) v_leak``
F_COLS = ("a", "gain", "offset", "v_th", "v_reset", "v0", "a_syn", "g_syn", "li_offset")
F_A, F_GAIN, F_OFFSET, F_VTH, F_VRESET, F_V0, F_ASYN, F_GSYN, F_LIOFF = range(len(F_COLS))


@nb.njit(cache=True, boundscheck=False)
def _csr_current(act, val, nact, spiking, ptr, indices, data, bias, has_bias, acc):  # pragma: no cover
    """``acc = sum_{active i, ascending} x_i w_{i,:}`` over the real synapses, then ``+ bias``
    (no fastmath: one rounding per product and per add, in this order)."""
    for j in range(acc.shape[0]):
        acc[j] = 0.0
    for q in range(nact):
        i = act[q]
        # the row's slices: loop counters from 0 and unsigned indices compile without the
        # negative-index fix-ups (0.7 instead of 1.3 ns per synapse, measured)
        row_j = indices[ptr[i]:ptr[i + 1]]
        row_w = data[ptr[i]:ptr[i + 1]]
        if spiking:
            for k in range(row_j.shape[0]):
                acc[row_j[k]] += row_w[k]
        else:
            xi = val[q]
            for k in range(row_j.shape[0]):
                acc[row_j[k]] += xi * row_w[k]
    if has_bias:
        for j in range(acc.shape[0]):
            acc[j] = acc[j] + bias[j]


@nb.njit(cache=True, fastmath=True, boundscheck=False)
def _dense_current(act, val, nact, wt, bias, has_bias, acc):  # pragma: no cover
    """The spike gather's forward for one row: ``acc = bias (or 0) + sum of x_i W^T[i]``."""
    if has_bias:
        acc[:] = bias
    else:
        acc[:] = 0.0
    _gather_rows(act, val, wt, 0, nact, acc)


@nb.njit(cache=True, fastmath=True, boundscheck=False)
def _lif_row(v, d, a, gain, offset, v_th, v_reset, subtract, z_row, vp_row, keep):  # pragma: no cover
    """One step of a LIF/IF population: the loop of :func:`~.lif_cpu.lif_forward`."""
    n = d.shape[0]
    if keep:
        for j in range(n):
            vp_row[j] = _lif_update(v, d, j, a, gain, offset, v_th, v_reset, subtract, z_row)
    else:
        for j in range(n):
            _lif_update(v, d, j, a, gain, offset, v_th, v_reset, subtract, z_row)


@nb.njit(cache=True, boundscheck=False)
def _syn_row(i_syn, d, a_s, g_s):  # pragma: no cover
    """Current-based synapse: ``i = a_s i + g_s d`` (torch's two products and one add)."""
    for j in range(d.shape[0]):
        i_syn[j] = a_s * i_syn[j] + g_s * d[j]


@nb.njit(cache=True, boundscheck=False)
def _li_row(v, d, a, c, g, vp_row):  # pragma: no cover
    """Leaky integrator: ``v = (a v + c) + g d`` (torch's ``a * v + c + gain * x``)."""
    for j in range(d.shape[0]):
        w = (a * v[j] + c) + g * d[j]
        v[j] = w
        vp_row[j] = w


@nb.njit(cache=True, parallel=True, nogil=True, boundscheck=False)
def run_chain(x, x0, ints, flts, wdense, indptr, indices, data, bias, spk, vrec, b0, n_samples,
              bad):  # pragma: no cover
    """Run the chain on samples ``x0 .. x0 + len(bad)`` of ``x [T, B, n_in]`` (float32, C order);
    see the module doc for the other arguments."""
    T = x.shape[0]
    n_in0 = x.shape[2]
    B = bad.shape[0]
    L = ints.shape[0]
    max_in = n_in0
    max_out = 1
    for l in range(L):
        max_in = max(max_in, ints[l, I_NIN])
        max_out = max(max_out, ints[l, I_NOUT])
    for b in prange(B):
        v = np.empty(max_out, np.float32)
        i_syn = np.empty(max_out, np.float32)
        acc = np.empty(max_out, np.float32)
        act = np.empty(max_in, np.int32)
        val = np.empty(max_in, np.float32)
        ones = np.ones(max_in, np.float32)
        vp_dummy = np.empty(0, np.float32)
        flag = 0
        row = b0 + b
        prev_zo = 0
        for l in range(L):  # layer by layer over all T: one layer's weights stay in cache
            n_in = ints[l, I_NIN]
            n_out = ints[l, I_NOUT]
            kind = ints[l, I_NEURON]
            vs = v[:n_out]
            vs[:] = flts[l, F_V0]
            i_syn[:n_out] = 0.0
            bl = bias[ints[l, I_BOFF]:ints[l, I_BOFF] + n_out]
            has_bias = ints[l, I_HASBIAS] != 0
            w0 = ints[l, I_WOFF]
            p0 = ints[l, I_POFF]
            csr = ints[l, I_SYN] == SYN_CSR
            wt = wdense[w0:w0 + n_in * n_out].reshape((n_in, n_out)) if not csr else wdense[:0].reshape((0, 1))
            ptr = indptr[p0:p0 + n_in + 1] if csr else indptr[:0]
            vo = ints[l, I_VOFF] * n_samples * T
            keep = vo >= 0
            zo = ints[l, I_SPKOFF] * n_samples * T
            for t in range(T):
                nact = 0
                if l == 0:
                    xr = x[t, x0 + b]
                    bits = xr.view(np.uint32)
                    odd = 0
                    for i in range(n_in0):  # NaN or infinite: exponent all ones (SIMD)
                        odd += 1 if (bits[i] & np.uint32(0x7F800000)) == np.uint32(0x7F800000) else 0
                    if odd:
                        flag = 1
                    for i in range(n_in0):  # the active inputs, branch-free
                        act[nact] = i
                        nact += 1 if xr[i] != 0 else 0
                    for q in range(nact):
                        val[q] = xr[act[q]]
                    cur = val
                    spiking = False
                else:
                    z_prev = spk[prev_zo + (row * T + t) * n_in:prev_zo + (row * T + t + 1) * n_in]
                    for j in range(n_in):  # the previous layer's spikes, branch-free
                        act[nact] = j
                        nact += z_prev[j]
                    cur = ones
                    spiking = True
                d = acc[:n_out]
                if csr:
                    _csr_current(act, cur, nact, spiking, ptr, indices, data, bl, has_bias, d)
                else:
                    _dense_current(act, cur, nact, wt, bl, has_bias, d)
                if kind == CUBALIF or kind == CUBALI:
                    d = i_syn[:n_out]
                    _syn_row(d, acc[:n_out], flts[l, F_ASYN], flts[l, F_GSYN])
                vp_row = vrec[vo + (row * T + t) * n_out:vo + (row * T + t + 1) * n_out] if keep else vp_dummy
                if kind == LI or kind == CUBALI:
                    _li_row(vs, d, flts[l, F_A], flts[l, F_LIOFF], flts[l, F_GAIN], vp_row)
                    continue
                z_row = spk[zo + (row * T + t) * n_out:zo + (row * T + t + 1) * n_out]
                _lif_row(vs, d, flts[l, F_A], flts[l, F_GAIN], flts[l, F_OFFSET], flts[l, F_VTH],
                         flts[l, F_VRESET], ints[l, I_SUBTRACT] != 0, z_row, vp_row, keep)
            prev_zo = zo
        bad[b] = flag
