r"""Sparse synapse storage: a presynaptic-major CSR plus a transposed (CSC) index.

Layer convention (``torch.nn.Linear``): a dense ``weight`` is ``[n_post, n_pre]`` and the
layer computes ``y = x W^T``. A boolean ``mask`` of the same shape says which synapses
exist.

The event-driven kernels push spikes *forward*, so the CSR rows are **presynaptic**
neurons (it stores :math:`W^T`):

.. math::

    \text{row } i \;(\text{pre}) :\quad
    \{(j_k, w_k) : k \in [\text{indptr}_i, \text{indptr}_{i+1})\},\qquad
    j_k = \text{indices}_k \;(\text{post}),\quad w_k = W_{j_k i}

``indptr`` is int32 ``[n_pre + 1]``, ``indices`` int32 ``[nnz]`` (ascending within a
row), ``data`` float32/float64 ``[nnz]``, ``shape = (n_pre, n_post)``.

The transposed index (:class:`CSCIndex`) lists, per **postsynaptic** neuron ``j``, its
presynaptic ids in ascending order together with ``perm`` (int64): the CSC entry ``m`` is
the CSR entry ``perm[m]``, so ``data[perm]`` is the column-major view of the values
without a second copy of the weights. CSC order is exactly the row-major order of the
masked entries of the dense ``[n_post, n_pre]`` weight, which is what makes gathering
values from (and scattering gradients into) the dense torch parameter cheap: each
postsynaptic row of ``W`` is read (written) contiguously.

All arrays are numpy; torch tensors are accepted at the boundary and shared without
copies when dtype/layout already fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit, prange

from neuroplastic.errors import UserError

from ._arrays import ArrayLike, float_dtype, is_torch, like, to_numpy

__all__ = ["CSR", "CSCIndex", "csr_from_dense", "csr_from_mask"]


# --------------------------------------------------------------------------- numba helpers


@njit(cache=True, parallel=True)
def _mask_to_csc(mask):  # pragma: no cover - compiled
    """Per postsynaptic row ``j`` of ``mask [n_post, n_pre]``: sorted presynaptic ids."""
    n_post, n_pre = mask.shape
    counts = np.zeros(n_post + 1, dtype=np.int64)
    for j in prange(n_post):
        c = 0
        for i in range(n_pre):
            if mask[j, i]:
                c += 1
        counts[j + 1] = c
    indptr = np.empty(n_post + 1, dtype=np.int32)
    acc = 0
    for j in range(n_post + 1):
        acc += counts[j]
        indptr[j] = acc
    indices = np.empty(acc, dtype=np.int32)
    for j in prange(n_post):
        p = indptr[j]
        for i in range(n_pre):
            if mask[j, i]:
                indices[p] = i
                p += 1
    return indptr, indices


@njit(cache=True)
def _transpose_structure(indptr, indices, n_cols):  # pragma: no cover - compiled
    """Counting-sort transpose of a sparsity structure (O(nnz + n_cols)).

    Returns ``(t_indptr, t_indices, perm)`` with ``perm[m]`` = position in the *transposed*
    structure of entry ``m`` of the input, i.e. ``t_data[perm] = data``.
    """
    n_rows = indptr.shape[0] - 1
    nnz = indices.shape[0]
    t_indptr = np.zeros(n_cols + 1, dtype=np.int32)
    for m in range(nnz):
        t_indptr[indices[m] + 1] += 1
    for c in range(n_cols):
        t_indptr[c + 1] += t_indptr[c]
    nxt = t_indptr[:-1].astype(np.int64)
    t_indices = np.empty(nnz, dtype=np.int32)
    perm = np.empty(nnz, dtype=np.int64)
    for r in range(n_rows):
        for m in range(indptr[r], indptr[r + 1]):
            c = indices[m]
            k = nxt[c]
            nxt[c] = k + 1
            t_indices[k] = r
            perm[m] = k
    return t_indptr, t_indices, perm


@njit(cache=True)
def _gather_csc_row(weight_row, m0, m1, c_indices, perm, out):  # pragma: no cover - compiled
    for m in range(m0, m1):
        out[perm[m]] = weight_row[c_indices[m]]


@njit(cache=True)
def _scatter_csc_row(values, m0, m1, c_indices, perm, dense_row):  # pragma: no cover - compiled
    for m in range(m0, m1):
        dense_row[c_indices[m]] = values[perm[m]]


@njit(cache=True, parallel=True)
def _gather_csc_par(weight, c_indptr, c_indices, perm, out):  # pragma: no cover - compiled
    for j in prange(c_indptr.shape[0] - 1):
        _gather_csc_row(weight[j], c_indptr[j], c_indptr[j + 1], c_indices, perm, out)


@njit(cache=True)
def _gather_csc_seq(weight, c_indptr, c_indices, perm, out):  # pragma: no cover - compiled
    for j in range(c_indptr.shape[0] - 1):
        _gather_csc_row(weight[j], c_indptr[j], c_indptr[j + 1], c_indices, perm, out)


@njit(cache=True, parallel=True)
def _scatter_csc_par(values, c_indptr, c_indices, perm, dense):  # pragma: no cover - compiled
    for j in prange(c_indptr.shape[0] - 1):
        _scatter_csc_row(values, c_indptr[j], c_indptr[j + 1], c_indices, perm, dense[j])


@njit(cache=True)
def _scatter_csc_seq(values, c_indptr, c_indices, perm, dense):  # pragma: no cover - compiled
    for j in range(c_indptr.shape[0] - 1):
        _scatter_csc_row(values, c_indptr[j], c_indptr[j + 1], c_indices, perm, dense[j])


#: Below this many dense weight elements the serial gather/scatter runs (see cpu.py).
PARALLEL_MIN_ELEMENTS = 1 << 18


def _gather_csc(weight, c_indptr, c_indices, perm, out) -> None:
    """``out[perm[m]] = weight[j, c_indices[m]]`` for every CSC entry ``m`` of row ``j``."""
    fn = _gather_csc_par if weight.size >= PARALLEL_MIN_ELEMENTS else _gather_csc_seq
    fn(weight, c_indptr, c_indices, perm, out)


def _scatter_csc(values, c_indptr, c_indices, perm, dense) -> None:
    """``dense[j, c_indices[m]] = values[perm[m]]`` (the inverse of :func:`_gather_csc`)."""
    fn = _scatter_csc_par if dense.size >= PARALLEL_MIN_ELEMENTS else _scatter_csc_seq
    fn(values, c_indptr, c_indices, perm, dense)


# --------------------------------------------------------------------------- records


@dataclass
class CSCIndex:
    """Transposed index of a :class:`CSR`: per postsynaptic neuron, its presynaptic ids.

    ``indptr`` int32 ``[n_post + 1]``, ``indices`` int32 ``[nnz]`` (presynaptic ids,
    ascending), ``perm`` int64 ``[nnz]``: CSC entry ``m`` is CSR entry ``perm[m]``
    (so the CSC values are ``csr.data[perm]``). ``shape = (n_post, n_pre)``.
    """

    indptr: np.ndarray
    indices: np.ndarray
    perm: np.ndarray
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        self.indptr = np.ascontiguousarray(self.indptr, dtype=np.int32)
        self.indices = np.ascontiguousarray(self.indices, dtype=np.int32)
        self.perm = np.ascontiguousarray(self.perm, dtype=np.int64)
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        if self.indptr.shape != (self.shape[0] + 1,):
            raise UserError(
                f"CSC indptr has {self.indptr.shape[0]} entries, expected {self.shape[0] + 1}"
            )
        if self.indices.shape != self.perm.shape:
            raise UserError("CSC indices and perm must have the same length")


class SynapseShape:
    """``n_pre``, ``n_post`` and ``nnz`` of a structure with ``shape = (n_pre, n_post)`` and
    an ``indices`` array (one entry per synapse): shared by :class:`CSR` and the device
    copy :class:`neuroplastic.kernels.cuda.DeviceCSR`."""

    shape: tuple[int, int]
    indices: Any

    @property
    def n_pre(self) -> int:
        return self.shape[0]

    @property
    def n_post(self) -> int:
        return self.shape[1]

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])


@dataclass
class CSR(SynapseShape):
    """Presynaptic-major sparse synapses (see the module docstring for the layout).

    Attributes
    ----------
    indptr : int32 ``[n_pre + 1]``
    indices : int32 ``[nnz]`` postsynaptic ids, ascending within each row
    data : float32 or float64 ``[nnz]`` synaptic weights
    shape : ``(n_pre, n_post)``
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]
    _csc: CSCIndex | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.indptr = np.ascontiguousarray(to_numpy(self.indptr, np.int32, "indptr"))
        self.indices = np.ascontiguousarray(to_numpy(self.indices, np.int32, "indices"))
        data = to_numpy(self.data, name="data")
        self.data = np.ascontiguousarray(data, dtype=float_dtype(data.dtype))
        if len(self.shape) != 2:
            raise UserError(f"CSR shape must be (n_pre, n_post), got {self.shape}")
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        n_pre, _ = self.shape
        if self.indptr.shape != (n_pre + 1,):
            raise UserError(
                f"CSR indptr has {self.indptr.shape[0]} entries, expected n_pre + 1 = {n_pre + 1}"
            )
        if self.indices.ndim != 1 or self.indices.shape != self.data.shape:
            raise UserError(
                f"CSR indices {self.indices.shape} and data {self.data.shape} "
                "must be 1-D of equal length"
            )
        if int(self.indptr[0]) != 0 or int(self.indptr[-1]) != self.indices.shape[0]:
            raise UserError("CSR indptr must start at 0 and end at nnz")

    # ------------------------------------------------------------------ basic facts
    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def density(self) -> float:
        """nnz / (n_pre * n_post) (0 for an empty shape)."""
        size = self.shape[0] * self.shape[1]
        return self.nnz / size if size else 0.0

    def check(self) -> None:
        """Full O(nnz) validation: monotone ``indptr``, sorted in-range ``indices``."""
        if np.any(np.diff(self.indptr.astype(np.int64)) < 0):
            raise UserError("CSR indptr must be non-decreasing")
        if self.nnz and (self.indices.min() < 0 or self.indices.max() >= self.n_post):
            raise UserError(f"CSR indices must lie in [0, {self.n_post})")
        row = self.row_ids()
        same_row = row[1:] == row[:-1]
        if np.any(same_row & (self.indices[1:] <= self.indices[:-1])):
            raise UserError("CSR indices must be strictly ascending within each row")

    def row_ids(self) -> np.ndarray:
        """int32 ``[nnz]``: the presynaptic id of each entry (the COO row array)."""
        counts = np.diff(self.indptr)
        return np.repeat(np.arange(self.n_pre, dtype=np.int32), counts)

    # ------------------------------------------------------------------ transposed index
    @property
    def csc(self) -> CSCIndex:
        """The transposed index (built once, O(nnz), then cached on this object)."""
        if self._csc is None:
            t_indptr, t_indices, perm_fwd = _transpose_structure(
                self.indptr, self.indices, self.n_post
            )
            # perm_fwd maps CSR -> CSC; the index stores CSC -> CSR.
            perm = np.empty_like(perm_fwd)
            perm[perm_fwd] = np.arange(self.nnz, dtype=np.int64)
            self._csc = CSCIndex(t_indptr, t_indices, perm, (self.n_post, self.n_pre))
        return self._csc

    # ------------------------------------------------------------------ values
    def with_data(self, data: ArrayLike) -> CSR:
        """A CSR sharing this structure (and its cached CSC index) with new values."""
        out = CSR(self.indptr, self.indices, to_numpy(data, name="data"), self.shape)
        if out.data.shape != self.data.shape:
            raise UserError(
                f"data has {out.data.shape[0]} values, the structure has nnz={self.nnz}"
            )
        out._csc = self._csc
        return out

    def values_from_dense(self, weight: ArrayLike, out: np.ndarray | None = None) -> np.ndarray:
        r"""Gather :math:`w_k = W_{j_k i}` from a dense ``[n_post, n_pre]`` weight.

        Returns a new array of the weight's dtype (float64 stays float64, anything else
        becomes float32), or fills ``out``.

        Walks the CSC index so each row of ``W`` is read contiguously; O(nnz) writes but
        it must touch every cache line of ``W`` that holds a synapse.
        """
        dtype = out.dtype if out is not None else float_dtype(weight.dtype)
        w = to_numpy(weight, dtype, "weight")
        self._check_dense(w, "weight")
        if out is None:
            out = np.empty(self.nnz, dtype=dtype)
        csc = self.csc
        _gather_csc(w, csc.indptr, csc.indices, csc.perm, out)
        return out

    def update_values(self, weight: ArrayLike) -> CSR:
        """Refresh ``data`` in place from a dense weight whose mask is unchanged; returns self."""
        self.values_from_dense(weight, out=self.data)
        return self

    def scatter_to_dense(
        self, values: ArrayLike | None = None, out: ArrayLike | None = None
    ) -> ArrayLike:
        """Dense ``[n_post, n_pre]`` array holding ``values`` (default: ``data``) on the mask.

        Entries off the mask are zero (when ``out`` is given they are left untouched).
        Returns a torch tensor if ``values`` or ``out`` is one.
        """
        src = self.data if values is None else values
        v = to_numpy(src, name="values")
        if v.shape != (self.nnz,):
            raise UserError(f"values have shape {v.shape}, expected ({self.nnz},)")
        if out is None:
            dense = np.zeros((self.n_post, self.n_pre), dtype=v.dtype)
            template = src
        else:
            dense = out.numpy() if is_torch(out) else out
            if not dense.flags.c_contiguous:
                raise UserError("out must be C-contiguous")
            self._check_dense(dense, "out")
            v = v.astype(dense.dtype, copy=False)
            template = out
        csc = self.csc
        _scatter_csc(v, csc.indptr, csc.indices, csc.perm, dense)
        return out if out is not None else like(dense, template)

    def to_dense(self) -> np.ndarray:
        """Dense weight in the layer convention ``[n_post, n_pre]`` (zeros off the mask)."""
        return self.scatter_to_dense()

    def to_mask(self) -> np.ndarray:
        """Boolean ``[n_post, n_pre]`` mask of the existing synapses."""
        mask = np.zeros((self.n_post, self.n_pre), dtype=np.bool_)
        mask[self.indices, self.row_ids()] = True
        return mask

    def _check_dense(self, a: np.ndarray, name: str) -> None:
        if a.shape != (self.n_post, self.n_pre):
            raise UserError(
                f"{name} has shape {tuple(a.shape)}, "
                f"expected [n_post, n_pre] = {(self.n_post, self.n_pre)}"
            )


# --------------------------------------------------------------------------- constructors


def _structure(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, CSCIndex]:
    """CSR ``indptr, indices`` and the CSC index of a bool ``[n_post, n_pre]`` mask."""
    n_post, n_pre = m.shape
    c_indptr, c_indices = _mask_to_csc(m)
    indptr, indices, perm_c2r = _transpose_structure(c_indptr, c_indices, n_pre)
    return indptr, indices, CSCIndex(c_indptr, c_indices, perm_c2r, (n_post, n_pre))


def csr_from_mask(mask: ArrayLike, dtype: np.dtype | type = np.float32) -> CSR:
    """The CSR structure of a bool ``[n_post, n_pre]`` mask with all values 1 (``dtype``)."""
    m = to_numpy(mask, np.bool_, "mask")
    if m.ndim != 2:
        raise UserError(f"mask must be 2-D [n_post, n_pre], got shape {tuple(m.shape)}")
    indptr, indices, csc = _structure(m)
    csr = CSR(
        indptr,
        indices,
        np.ones(indices.shape[0], dtype=float_dtype(np.dtype(dtype))),
        (m.shape[1], m.shape[0]),
    )
    csr._csc = csc
    return csr


def csr_from_dense(
    weight: ArrayLike, mask: ArrayLike | None = None, dtype: np.dtype | None = None
) -> CSR:
    """Build the presynaptic-major :class:`CSR` of a layer weight.

    Parameters
    ----------
    weight : ``[n_post, n_pre]`` (torch ``Linear`` convention), numpy or torch.
    mask : bool ``[n_post, n_pre]``; synapse ``(j, i)`` exists iff ``mask[j, i]``.
        Default: ``weight != 0``.
    dtype : value dtype; default float64 for float64 weights, float32 otherwise.

    The transposed index is built at the same time (both are O(nnz) counting passes).
    """
    w = to_numpy(weight, name="weight")
    if w.ndim != 2:
        raise UserError(f"weight must be 2-D [n_post, n_pre], got shape {tuple(w.shape)}")
    val_dtype = np.dtype(dtype) if dtype is not None else float_dtype(w.dtype)
    if val_dtype not in (np.float32, np.float64):
        raise UserError(f"dtype must be float32 or float64, got {val_dtype}")
    w = w.astype(val_dtype, copy=False)
    m = (w != 0) if mask is None else to_numpy(mask, np.bool_, "mask")
    if m.shape != w.shape:
        raise UserError(f"mask has shape {tuple(m.shape)}, weight has {tuple(w.shape)}")
    n_post, n_pre = w.shape
    indptr, indices, csc = _structure(m)
    csr = CSR(indptr, indices, np.empty(indices.shape[0], dtype=val_dtype), (n_pre, n_post))
    csr._csc = csc
    _gather_csc(w, csc.indptr, csc.indices, csc.perm, csr.data)
    return csr
