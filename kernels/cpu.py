r"""Event-driven sparse-synapse kernels for the CPU (numba, ``parallel=True``).

Notation: ``x[b, i]`` presynaptic activity (spikes or any real values), ``y[b, j]``
postsynaptic quantity, synapse ``k`` of the :class:`~neuroplastic.kernels.formats.CSR`
connects presynaptic ``i(k)`` to postsynaptic ``j(k) = indices[k]`` with weight
``w_k = data[k]``; rows are presynaptic (forward push). ``B`` counts batch rows; leading
dimensions ``[..., n]`` (e.g. ``[T, B, n]``) are flattened into rows.

* :func:`spmm_forward` — :math:`y_{bj} = \sum_{k: j(k)=j} x_{b\,i(k)}\, w_k`
  (work: events);
* :func:`spmm_backward_input` — :math:`g^x_{bi} = \sum_{k \in \mathrm{row}\,i} w_k\,
  g_{b\,j(k)}` (work: nnz x B, the incoming gradient is dense);
* :func:`sddmm_weight_grad` — :math:`g^w_k = \sum_b g_{b\,j(k)}\, x_{b\,i(k)}`
  (work: events, plus an O(nnz) zero fill of the output);
* :func:`hebbian_update` — :math:`w_k \mathrel{+}= \tfrac{\eta}{B}\sum_b y_{b\,j(k)}\,
  x_{b\,i(k)}` (work: events);
* :func:`eligibility_trace_update` — :math:`e_k \leftarrow \lambda e_k +
  \tfrac1B\sum_b \psi_{b\,j(k)}\, \bar x_{b\,i(k)}` (work: nnz for the decay + events).

"events" = number of (nonzero presynaptic entry, outgoing synapse) pairs
:math:`\sum_b \sum_{i: x_{bi}\neq 0} |\mathrm{row}\, i|`: zero inputs cost one compare
and are never multiplied, so the work follows the firing rate, not the layer size.

Parallel decomposition (numba has no CPU atomics, so every thread owns what it writes):

* forward: ``prange`` over batch rows; each row scans its inputs once, and for every
  nonzero one streams the contiguous CSR segment (indices + values, 8 bytes/synapse in
  float32) and scatter-adds into its own output row, which stays in L1/L2.
* input gradient: ``prange`` over tiles of presynaptic rows ``i`` with the batch as the
  inner, vectorised loop on a transposed copy of the gradient (made by a parallel tiled
  transpose): a tile owns ``g^x[:, i0:i1]``.
* weight gradient / Hebbian / eligibility: ``prange`` over presynaptic rows; row ``i``
  owns its nnz segment ``[indptr_i, indptr_{i+1})`` and visits only the batch rows where
  it was active (the index of :func:`~neuroplastic.kernels.active_index.active_columns`,
  built branch-free: no scan of the zeros), so untouched rows cost nothing (weights) or
  one streaming scale (traces). The parallel version runs in blocks of batch rows so the
  gathered rows of ``y`` stay in L2.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from neuroplastic.errors import UserError

from ._arrays import ArrayLike, as_rows, is_torch, like, to_numpy
from .active_index import active_columns
from .formats import CSR
from .threads import match_torch_threads

__all__ = [
    "spmm_forward",
    "spmm_backward_input",
    "sddmm_weight_grad",
    "hebbian_update",
    "eligibility_trace_update",
]


# --------------------------------------------------------------------------- compiled kernels
#
# Each kernel is a per-row body (plain @njit) driven by two loops: a ``prange`` twin for
# real work and a serial twin for small work. A parallel region waits for *all* its
# threads at the barrier; on a CPU shared with other processes an idle worker may first
# have to wait for a scheduler slice (milliseconds), which dwarfs a 30 us kernel. The
# serial twin is used when the work bound is below ``PARALLEL_MIN_WORK`` (and for a
# single batch row in the forward, which has nothing to split).

#: Below this many (row x synapse) operations the serial twin runs.
PARALLEL_MIN_WORK = 1 << 16


@njit(cache=True, boundscheck=False)
def _push_row(xb, indptr, indices, data, ob):  # pragma: no cover - compiled
    """ob[:] = 0; ob[indices[k]] += xb[i] * data[k] for every nonzero xb[i].

    The segment loop is unrolled by 4 with loads before stores: the targets of one CSR
    row are distinct, so the four read-modify-writes are independent (~5% on Zen 5).
    """
    for j in range(ob.shape[0]):
        ob[j] = 0.0
    for i in range(xb.shape[0]):
        v = xb[i]
        if v != 0.0:
            k = indptr[i]
            k1 = indptr[i + 1]
            while k + 4 <= k1:
                j0 = indices[k]
                j1 = indices[k + 1]
                j2 = indices[k + 2]
                j3 = indices[k + 3]
                a0 = ob[j0] + v * data[k]
                a1 = ob[j1] + v * data[k + 1]
                a2 = ob[j2] + v * data[k + 2]
                a3 = ob[j3] + v * data[k + 3]
                ob[j0] = a0
                ob[j1] = a1
                ob[j2] = a2
                ob[j3] = a3
                k += 4
            while k < k1:
                ob[indices[k]] += v * data[k]
                k += 1


@njit(cache=True, parallel=True, boundscheck=False)
def _push_rows_par(x, indptr, indices, data, out):  # pragma: no cover - compiled
    for b in prange(x.shape[0]):
        _push_row(x[b], indptr, indices, data, out[b])


@njit(cache=True, boundscheck=False)
def _push_rows_seq(x, indptr, indices, data, out):  # pragma: no cover - compiled
    for b in range(x.shape[0]):
        _push_row(x[b], indptr, indices, data, out[b])


@njit(cache=True, boundscheck=False)
def _push_cols_range(x_t, indptr, indices, data, o, i0, i1):  # pragma: no cover - compiled
    """o[:] = 0; for presynaptic rows i0 <= i < i1 with any nonzero x_t[i, :]:
    o[indices[k], :] += data[k] * x_t[i, :] (the batch is the inner, SIMD loop)."""
    n_b = x_t.shape[1]
    for j in range(o.shape[0]):
        for b in range(n_b):
            o[j, b] = 0.0
    for i in range(i0, i1):
        xi = x_t[i]
        active = False
        for b in range(n_b):
            if xi[b] != 0.0:
                active = True
                break
        if not active:
            continue
        for k in range(indptr[i], indptr[i + 1]):
            w = data[k]
            oj = o[indices[k]]
            for b in range(n_b):
                oj[b] += w * xi[b]


@njit(cache=True, parallel=True, boundscheck=False)
def _push_cols_par(x_t, indptr, indices, data, out_p, bounds):  # pragma: no cover - compiled
    """Thread p pushes presynaptic rows [bounds[p], bounds[p+1]) into its own out_p[p]."""
    for p in prange(out_p.shape[0]):
        _push_cols_range(x_t, indptr, indices, data, out_p[p], bounds[p], bounds[p + 1])


@njit(cache=True, parallel=True, boundscheck=False)
def _sum_transpose_par(out_p, out):  # pragma: no cover - compiled
    """out[b, j] = sum_p out_p[p, j, b]; prange over postsynaptic j."""
    for j in prange(out_p.shape[1]):
        for b in range(out_p.shape[2]):
            s = out_p[0, j, b]
            for p in range(1, out_p.shape[0]):
                s += out_p[p, j, b]
            out[b, j] = s


@njit(cache=True, boundscheck=False)
def _gather_row(g_t, k0, k1, indices, data, o):  # pragma: no cover - compiled
    """o[:] = sum_{k0 <= k < k1} data[k] * g_t[indices[k], :] (batch is the inner loop)."""
    for b in range(o.shape[0]):
        o[b] = 0.0
    for k in range(k0, k1):
        w = data[k]
        g = g_t[indices[k]]
        for b in range(o.shape[0]):
            o[b] += w * g[b]


@njit(cache=True, boundscheck=False)
def _gather_rows_seq(g_t, indptr, indices, data, out_t):  # pragma: no cover - compiled
    for i in range(out_t.shape[0]):
        _gather_row(g_t, indptr[i], indptr[i + 1], indices, data, out_t[i])


_TILE = 16  # presynaptic rows (or postsynaptic columns) per tile of the transposes below


@njit(cache=True, parallel=True, boundscheck=False)
def _input_grad_par(g, indptr, indices, data, g_t, out):  # pragma: no cover - compiled
    """``out[b, i] = sum_{k in row i} data[k] * g[b, j(k)]`` without numpy transposes:
    ``g`` is transposed into ``g_t [n_post, B]`` by column tiles in parallel, each tile of
    ``_TILE`` presynaptic rows accumulates ``[_TILE, B]`` (SIMD over the batch) and writes
    it back as ``_TILE`` contiguous entries per batch row."""
    B, n_post = g.shape
    n_pre = out.shape[1]
    for t in prange((n_post + _TILE - 1) // _TILE):
        j0 = t * _TILE
        j1 = min(j0 + _TILE, n_post)
        for b in range(B):
            gb = g[b]
            for j in range(j0, j1):
                g_t[j, b] = gb[j]
    for t in prange((n_pre + _TILE - 1) // _TILE):
        i0 = t * _TILE
        i1 = min(i0 + _TILE, n_pre)
        acc = np.zeros((i1 - i0, B), g.dtype)
        for i in range(i0, i1):
            o = acc[i - i0]
            for k in range(indptr[i], indptr[i + 1]):
                w = data[k]
                src = g_t[indices[k]]
                for b in range(B):
                    o[b] += w * src[b]
        for b in range(B):
            ob = out[b]
            for i in range(i0, i1):
                ob[i] = acc[i - i0, b]


@njit(cache=True, boundscheck=False, inline="always")
def _outer_advance(i, cur, r1, cptr, brows, bvals, y, indptr, indices, out, alpha, beta):  # pragma: no cover
    """Presynaptic row ``i``: fold in its active batch rows ``brows[cur[i]:]`` below ``r1``,
    ``out[k] (=beta*out[k] on the first) += alpha * x[b, i] * y[b, indices[k]]`` over its
    segment ``k``; the list is ascending in ``b``, so the sum runs in batch order."""
    k0 = indptr[i]
    k1 = indptr[i + 1]
    c = cur[i]
    ce = cptr[i + 1]
    while c < ce and brows[c] < r1:
        a = alpha * bvals[c]
        yb = y[brows[c]]
        if c == cptr[i]:
            if beta == 0.0:
                for k in range(k0, k1):
                    out[k] = a * yb[indices[k]]
            else:
                for k in range(k0, k1):
                    out[k] = beta * out[k] + a * yb[indices[k]]
        else:
            for k in range(k0, k1):
                out[k] += a * yb[indices[k]]
        c += 1
    cur[i] = c


@njit(cache=True, boundscheck=False, inline="always")
def _outer_finish(i, cptr, indptr, out, beta, lo, hi, touch_idle):  # pragma: no cover
    """Row ``i`` after all batch rows: an idle row is left alone unless ``touch_idle`` (then
    ``out *= beta``, no clipping); an active one is clipped to ``[lo, hi]``."""
    k0 = indptr[i]
    k1 = indptr[i + 1]
    if cptr[i] == cptr[i + 1]:
        if touch_idle and beta != 1.0:
            for k in range(k0, k1):
                out[k] = beta * out[k]
    elif lo > -np.inf or hi < np.inf:
        for k in range(k0, k1):
            out[k] = min(max(out[k], lo), hi)


#: rows of ``y`` per block of the parallel outer product: a block (~768 KB) stays in L2
#: while every presynaptic row gathers from it
_OUTER_BLOCK_FLOATS = 3 << 16


@njit(cache=True, parallel=True, boundscheck=False)
def _outer_par(cptr, brows, bvals, y, indptr, indices, out, alpha, beta, lo, hi, touch_idle):  # pragma: no cover
    """``out[k] = clip(beta*out[k] + alpha * sum_b y[b, j(k)] x[b, i(k)], lo, hi)`` for every
    presynaptic row, in blocks of rows of ``y`` (the gathers ``y[b, j(k)]`` then hit L2;
    each row keeps a cursor into its ascending batch-row list)."""
    n_pre = cptr.shape[0] - 1
    R = max(16, _OUTER_BLOCK_FLOATS // max(y.shape[1], 1))
    cur = cptr[:-1].copy()
    for r0 in range(0, y.shape[0], R):
        for i in prange(n_pre):
            _outer_advance(i, cur, r0 + R, cptr, brows, bvals, y, indptr, indices, out, alpha, beta)
    for i in prange(n_pre):
        _outer_finish(i, cptr, indptr, out, beta, lo, hi, touch_idle)


@njit(cache=True, boundscheck=False)
def _outer_seq(cptr, brows, bvals, y, indptr, indices, out, alpha, beta, lo, hi, touch_idle):  # pragma: no cover
    """Serial twin of :func:`_outer_par` (one block)."""
    cur = cptr[:-1].copy()
    for i in range(cptr.shape[0] - 1):
        _outer_advance(i, cur, y.shape[0], cptr, brows, bvals, y, indptr, indices, out, alpha, beta)
        _outer_finish(i, cptr, indptr, out, beta, lo, hi, touch_idle)


def _parallel(work: int) -> bool:
    match_torch_threads()
    return work >= PARALLEL_MIN_WORK


#: Column push cost per (synapse x batch row) relative to the row push cost per event,
#: measured single-threaded at n = 4096 (0.13-0.2 ns vs 1.0-1.3 ns; docs/kernels.md).
COLUMN_PUSH_RELATIVE_COST = 0.15
#: Batch rows per column-push block (bounds the per-thread buffers to n_post x 128).
COLUMN_BLOCK = 128


def _choose_forward(x: np.ndarray) -> str:
    """``"cols"`` when streaming each active synapse row once for all batch rows is cheaper.

    The firing rate ``r`` is estimated on ~8 rows spread over the batch (~10 us).

    Per synapse, the row push costs ``r * B`` events and the column push
    ``P(any of B active) * B`` lane updates at ~0.15 of an event each, so the column push
    wins when ``r > 0.15 * (1 - (1 - r)^B)`` (about r > 0.15 for B >= 32).
    """
    n_rows = x.shape[0]
    if n_rows < 4 or x.size == 0:
        return "rows"
    sample = x[:: max(1, n_rows // 8)]  # ~8 rows spread over [T*B]: t=0 alone may be silent
    r = np.count_nonzero(sample) / sample.size
    b = min(n_rows, COLUMN_BLOCK)
    return "cols" if r > COLUMN_PUSH_RELATIVE_COST * (1.0 - (1.0 - r) ** b) else "rows"


def _push_cols(x: np.ndarray, csr: CSR, out: np.ndarray) -> None:
    """Column push in blocks of :data:`COLUMN_BLOCK` rows, one private buffer per thread."""
    parallel = _parallel(x.shape[0] * csr.nnz)
    n_threads = numba.get_num_threads() if parallel else 1
    cuts = np.searchsorted(csr.indptr, np.linspace(0, csr.nnz, n_threads + 1))
    bounds = np.clip(cuts, 0, csr.n_pre).astype(np.int64)
    bounds[0], bounds[-1] = 0, csr.n_pre
    for r0 in range(0, x.shape[0], COLUMN_BLOCK):
        xb = x[r0 : r0 + COLUMN_BLOCK]
        x_t = np.ascontiguousarray(xb.T)
        out_p = np.empty((n_threads, csr.n_post, xb.shape[0]), dtype=csr.dtype)
        if parallel:
            _push_cols_par(x_t, csr.indptr, csr.indices, csr.data, out_p, bounds)
            _sum_transpose_par(out_p, out[r0 : r0 + COLUMN_BLOCK])
        else:
            _push_cols_range(x_t, csr.indptr, csr.indices, csr.data, out_p[0], 0, csr.n_pre)
            out[r0 : r0 + COLUMN_BLOCK] = out_p[0].T


def _outer_on_synapses(active, y, indptr, indices, out, alpha, beta, lo, hi, touch_idle) -> None:
    """Run the outer-product kernel over the active presynaptic entries ``active = (cptr,
    rows, values)`` (serial twin for small work)."""
    fn = _outer_par if _parallel(indices.shape[0] * max(1, y.shape[0])) else _outer_seq
    fn(*active, y, indptr, indices, out, alpha, beta, lo, hi, touch_idle)


# --------------------------------------------------------------------------- python wrappers


def _rows(a: ArrayLike, csr: CSR, n: int, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    return as_rows(to_numpy(a, csr.dtype, name), n, name)


def spmm_forward(
    spikes: ArrayLike, csr: CSR, out: np.ndarray | None = None, method: str = "auto"
) -> ArrayLike:
    r"""Event-driven synaptic propagation :math:`y = x W^T` over existing synapses.

    :math:`y_{bj} = \sum_i x_{bi} W_{ji}` computed as a push: for every nonzero
    :math:`x_{bi}` (binary spikes or real values) add :math:`x_{bi} w_k` to
    :math:`y_{b\,j(k)}` for each synapse ``k`` of presynaptic row ``i``.

    ``spikes`` is ``[..., n_pre]`` (e.g. ``[B, n_pre]`` or ``[T, B, n_pre]``), numpy or
    CPU torch, cast to ``csr.dtype``; returns ``[..., n_post]`` of the same kind.
    ``out`` (numpy ``[rows, n_post]``, C-contiguous, ``csr.dtype``) avoids an allocation.

    ``method``: ``"rows"`` — per batch row, push each nonzero input's synapse segment
    (cost ~ events; threads split batch rows); ``"cols"`` — per presynaptic row with any
    nonzero input, stream its segment once and update all batch rows at once
    (:math:`y_{:,j(k)} \mathrel{+}= w_k x_{:,i}`, SIMD over the batch; cost ~ active
    rows x nnz x B; threads split presynaptic rows into private buffers that are summed);
    ``"auto"`` picks by the measured firing rate (:func:`_choose_forward`).
    """
    x, lead = _rows(spikes, csr, csr.n_pre, "spikes")
    if out is None:
        out = np.empty((x.shape[0], csr.n_post), dtype=csr.dtype)
    elif (
        out.shape != (x.shape[0], csr.n_post)
        or out.dtype != csr.dtype
        or not out.flags.c_contiguous
    ):
        raise UserError(
            f"out must be a C-contiguous {csr.dtype} array of shape {(x.shape[0], csr.n_post)}"
        )
    if method == "auto":
        method = _choose_forward(x)
    if method == "cols":
        _push_cols(x, csr, out)
    elif method == "rows":
        parallel = x.shape[0] > 1 and _parallel(x.shape[0] * csr.nnz)
        push = _push_rows_par if parallel else _push_rows_seq
        push(x, csr.indptr, csr.indices, csr.data, out)
    else:
        raise UserError(f"method must be 'auto', 'rows' or 'cols', got {method!r}")
    return like(out.reshape(*lead, csr.n_post), spikes)


def spmm_backward_input(grad_out: ArrayLike, csr: CSR) -> ArrayLike:
    r"""Input gradient of :func:`spmm_forward`: :math:`g^x = g\, W` on existing synapses.

    :math:`g^x_{bi} = \sum_{k \in \mathrm{row}\, i} w_k\, g_{b\,j(k)}` — a gather along each
    CSR row, race-free when rows are split across threads. ``grad_out`` ``[..., n_post]``
    -> ``[..., n_pre]``. Cost is nnz x rows (the incoming gradient is dense).
    """
    g, lead = _rows(grad_out, csr, csr.n_post, "grad_out")
    if _parallel(g.shape[0] * csr.nnz):
        out = np.empty((g.shape[0], csr.n_pre), dtype=csr.dtype)
        g_t = np.empty((csr.n_post, g.shape[0]), dtype=csr.dtype)
        _input_grad_par(np.ascontiguousarray(g), csr.indptr, csr.indices, csr.data, g_t, out)
        return like(out.reshape(*lead, csr.n_pre), grad_out)
    g_t = np.ascontiguousarray(g.T)
    out_t = np.empty((csr.n_pre, g.shape[0]), dtype=csr.dtype)
    _gather_rows_seq(g_t, csr.indptr, csr.indices, csr.data, out_t)
    return like(np.ascontiguousarray(out_t.T).reshape(*lead, csr.n_pre), grad_out)


def _outer(
    x: ArrayLike, y: ArrayLike, csr: CSR, names: tuple[str, str]
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """The active entries of ``x [..., n_pre]`` by presynaptic neuron (:func:`active_columns`:
    no dense transpose or scan of ``x`` in the kernel) and the rows of ``y [..., n_post]``."""
    xr, lead_x = _rows(x, csr, csr.n_pre, names[0])
    yr, lead_y = _rows(y, csr, csr.n_post, names[1])
    if xr.shape[0] != yr.shape[0]:
        raise UserError(f"{names[0]} has {xr.shape[0]} rows but {names[1]} has {yr.shape[0]}")
    return active_columns(np.ascontiguousarray(xr)), yr


def sddmm_weight_grad(grad_out: ArrayLike, x: ArrayLike, csr: CSR) -> ArrayLike:
    r"""Weight gradient sampled on existing synapses (SDDMM).

    :math:`g^w_k = \sum_b g_{b\,j(k)}\, x_{b\,i(k)}` = the entries of :math:`g^T x` at the
    mask, computed only for presynaptic rows with a nonzero input (others stay 0).
    Returns ``[nnz]`` in CSR order, torch if ``grad_out`` is torch.
    """
    active, y = _outer(x, grad_out, csr, ("x", "grad_out"))
    out = np.zeros(csr.nnz, dtype=csr.dtype)
    _outer_on_synapses(
        active, y, csr.indptr, csr.indices, out, *_scalars(csr, 1.0, 0.0, None, None), False
    )
    return like(out, grad_out)


def _scalars(csr: CSR, alpha: float, beta: float, lo: float | None, hi: float | None) -> tuple:
    """(alpha, beta, lo, hi) as scalars of the value dtype (no float64 promotion in float32)."""
    t = csr.dtype.type
    return t(alpha), t(beta), t(-np.inf if lo is None else lo), t(np.inf if hi is None else hi)


def _inplace_target(data: ArrayLike, csr: CSR, name: str) -> np.ndarray:
    arr = data.detach().numpy() if is_torch(data) else data
    if not isinstance(arr, np.ndarray) or arr.shape != (csr.nnz,) or arr.dtype != csr.dtype:
        raise UserError(f"{name} must be a {csr.dtype} array of shape ({csr.nnz},)")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise UserError(f"{name} must be C-contiguous and writeable (it is updated in place)")
    return arr


def _bump_version(t: ArrayLike) -> None:
    """Tell autograd a tensor was modified in place behind its back."""
    if is_torch(t):
        import torch

        torch.autograd.graph.increment_version(t)


def hebbian_update(
    data: ArrayLike,
    csr: CSR,
    pre: ArrayLike,
    post: ArrayLike,
    lr: float,
    w_min: float | None = None,
    w_max: float | None = None,
) -> ArrayLike:
    r"""Plain Hebbian update on existing synapses, in place.

    .. math:: w_k \leftarrow \mathrm{clip}\Big(w_k + \frac{\eta}{B}\sum_b
              y_{b\,j(k)}\, x_{b\,i(k)},\; w_{\min},\, w_{\max}\Big)

    ``pre`` ``[..., n_pre]`` (spikes or traces), ``post`` ``[..., n_post]``, ``B`` = number
    of rows, :math:`\eta` = ``lr``. Event-driven: only presynaptic rows with a nonzero
    entry are visited, and only those synapses are clipped. ``data`` (``[nnz]``, dtype
    ``csr.dtype``, usually ``csr.data`` or a torch view of it) is returned.
    """
    target = _inplace_target(data, csr, "data")
    active, y = _outer(pre, post, csr, ("pre", "post"))
    n = max(y.shape[0], 1)
    scalars = _scalars(csr, float(lr) / n, 1.0, w_min, w_max)
    _outer_on_synapses(active, y, csr.indptr, csr.indices, target, *scalars, False)
    _bump_version(data)
    return data


def eligibility_trace_update(
    trace: ArrayLike,
    csr: CSR,
    pre_trace: ArrayLike,
    post_pseudo: ArrayLike,
    decay: float,
) -> ArrayLike:
    r"""e-prop style eligibility traces on existing synapses, in place.

    .. math:: e_k \leftarrow \lambda\, e_k + \frac1B \sum_b \psi_{b\,j(k)}\, \bar x_{b\,i(k)}

    with :math:`\bar x` the low-pass filtered presynaptic spikes (``pre_trace``,
    ``[..., n_pre]`` or ``[n_pre]``), :math:`\psi` the postsynaptic pseudo-derivative
    (``post_pseudo``, ``[..., n_post]`` or ``[n_post]``) and :math:`\lambda` = ``decay``.
    The batch average keeps one trace per synapse (e-prop proper keeps one per sample).
    The decay touches every synapse (O(nnz) streaming); the outer product only rows with
    a nonzero presynaptic trace.
    """
    target = _inplace_target(trace, csr, "trace")
    active, y = _outer(pre_trace, post_pseudo, csr, ("pre_trace", "post_pseudo"))
    n = max(y.shape[0], 1)
    scalars = _scalars(csr, 1.0 / n, float(decay), None, None)
    _outer_on_synapses(active, y, csr.indptr, csr.indices, target, *scalars, True)
    _bump_version(trace)
    return trace
