r"""numba.cuda kernels for event-driven sparse synapses (same maths as :mod:`.cpu`).

Importable without a GPU (kernels compile on first launch). Every kernel is *warp-free*
(no shuffles, votes or warp-synchronous tricks), so the whole module runs under the
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which is how the tests exercise it.

Decompositions (``x [rows, n_pre]``, ``y``/``g [rows, n_post]``, CSR rows = presynaptic):

* :func:`spmm_forward` ``method="push"`` (default, event-driven): grid
  ``(ceil(n_pre / PRE_PER_BLOCK), rows)``; a block walks its chunk of presynaptic
  neurons of one row, skips zero inputs (a block-uniform branch), and its threads stride
  over the contiguous CSR segment (coalesced loads) doing
  ``atomicAdd(y[b, j(k)], x[b, i] w_k)``. Atomic order makes float sums
  non-deterministic in the last bits.
* ``method="pull"`` (deterministic, not event-driven): one thread per ``(b, j)`` sums
  its CSC column, :math:`y_{bj} = \sum_{m} x_{b\,i_m} w_{\mathrm{perm}_m}`.
* :func:`spmm_backward_input`: one thread per ``(b, i)`` gathers its CSR row,
  :math:`g^x_{bi} = \sum_{k \in \mathrm{row}\, i} w_k g_{b\,j(k)}` (race-free).
* :func:`sddmm_weight_grad`, :func:`hebbian_update`, :func:`eligibility_trace_update`:
  one block per presynaptic row ``i`` (grid-stride), threads over its synapses ``k``:
  :math:`o_k \leftarrow \mathrm{clip}(\beta o_k + \alpha \sum_{b: x_{bi}\neq0} x_{bi} y_{b\,j(k)})`
  (each ``k`` has one owner: no atomics).

Given torch CUDA tensors, arrays are wrapped with ``cuda.as_cuda_array`` (no copies)
and kernels are launched on torch's current stream via ``cuda.external_stream``.
numpy / CPU torch inputs are copied to the device and results copied back (that is the
simulator path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import cuda

from neuroplastic.errors import UserError

from ._arrays import ArrayLike, float_dtype, is_torch
from .formats import CSR, SynapseShape

__all__ = [
    "DeviceCSR",
    "to_device",
    "spmm_forward",
    "spmm_backward_input",
    "sddmm_weight_grad",
    "hebbian_update",
    "eligibility_trace_update",
    "is_available",
]

THREADS = 128
PRE_PER_BLOCK = 32
MAX_GRID = 65535


def is_available() -> bool:
    """True when a real CUDA device is usable (False under the simulator)."""
    try:
        return bool(cuda.is_available()) and not _simulating()
    except Exception:  # pragma: no cover - driver problems
        return False


def _simulating() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)


# --------------------------------------------------------------------------- kernels


@cuda.jit(cache=True)
def _push_kernel(x, indptr, indices, data, out):  # pragma: no cover - device code
    n_rows, n_pre = x.shape
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    i0 = cuda.blockIdx.x * PRE_PER_BLOCK
    i1 = min(i0 + PRE_PER_BLOCK, n_pre)
    for b in range(cuda.blockIdx.y, n_rows, cuda.gridDim.y):
        for i in range(i0, i1):
            v = x[b, i]
            if v != 0:
                for k in range(indptr[i] + tid, indptr[i + 1], nt):
                    cuda.atomic.add(out, (b, indices[k]), v * data[k])


@cuda.jit(cache=True)
def _pull_kernel(x, c_indptr, c_indices, perm, data, out):  # pragma: no cover - device code
    n_rows, n_post = out.shape
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if j >= n_post:
        return
    for b in range(cuda.blockIdx.y, n_rows, cuda.gridDim.y):
        s = 0.0
        for m in range(c_indptr[j], c_indptr[j + 1]):
            v = x[b, c_indices[m]]
            if v != 0:
                s += v * data[perm[m]]
        out[b, j] = s


@cuda.jit(cache=True)
def _gather_kernel(g, indptr, indices, data, out):  # pragma: no cover - device code
    n_rows, n_pre = out.shape
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if i >= n_pre:
        return
    for b in range(cuda.blockIdx.y, n_rows, cuda.gridDim.y):
        s = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            s += data[k] * g[b, indices[k]]
        out[b, i] = s


@cuda.jit(cache=True)
def _outer_kernel(x, y, indptr, indices, out, alpha, beta, lo, hi, touch_idle):  # pragma: no cover
    n_rows, n_pre = x.shape
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for i in range(cuda.blockIdx.x, n_pre, cuda.gridDim.x):
        active = False
        for b in range(n_rows):
            if x[b, i] != 0:
                active = True
        for k in range(indptr[i] + tid, indptr[i + 1], nt):
            if active:
                j = indices[k]
                s = 0.0
                for b in range(n_rows):
                    v = x[b, i]
                    if v != 0:
                        s += v * y[b, j]
                if beta == 0:
                    o = alpha * s
                else:
                    o = beta * out[k] + alpha * s
                out[k] = min(max(o, lo), hi)
            elif touch_idle and beta != 1:
                out[k] = beta * out[k]


# --------------------------------------------------------------------------- device records


@dataclass
class DeviceCSR(SynapseShape):
    """A :class:`CSR` structure (and optionally values) resident on the device.

    ``indptr, indices, c_indptr, c_indices, perm, data`` are numba device arrays (views
    of torch CUDA tensors when built from torch). ``owners`` keeps those tensors alive.
    """

    indptr: Any
    indices: Any
    c_indptr: Any
    c_indices: Any
    perm: Any
    data: Any
    shape: tuple[int, int]
    dtype: np.dtype
    owners: tuple = ()


def to_device(csr: CSR, device: Any = None, with_values: bool = True) -> DeviceCSR:
    """Copy a CSR (structure, transposed index and, optionally, values) to the GPU once.

    With ``device`` (a torch CUDA device) the arrays are torch tensors on it, wrapped
    without copies; otherwise numba device arrays (``cuda.to_device``). Without values
    (``with_values=False``) every op needs ``data=``.
    """
    csc = csr.csc
    host = (csr.indptr, csr.indices, csc.indptr, csc.indices, csc.perm)
    if with_values:
        host = host + (csr.data,)
    if device is not None and _has_torch_cuda():
        import torch

        tensors = tuple(torch.from_numpy(a).to(device) for a in host)
        arrays = tuple(cuda.as_cuda_array(t) for t in tensors)
        owners = tensors
    else:
        arrays = tuple(cuda.to_device(a) for a in host)
        owners = ()
    if not with_values:
        arrays = arrays + (None,)
    return DeviceCSR(*arrays, shape=csr.shape, dtype=csr.dtype, owners=owners)


def _has_torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available() and hasattr(cuda, "as_cuda_array") and not _simulating()


# --------------------------------------------------------------------------- boundary


class _Launch:
    """Moves operands to the device, picks the stream, and brings results back."""

    def __init__(self, template: ArrayLike, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.torch_cuda = is_torch(template) and template.device.type == "cuda"
        self.template = template
        if self.torch_cuda:
            import torch

            self.stream = cuda.external_stream(
                torch.cuda.current_stream(template.device).cuda_stream
            )
        elif hasattr(cuda, "default_stream"):
            self.stream = cuda.default_stream()
        else:  # the simulator has no default_stream()
            self.stream = cuda.stream()

    def operand(self, a: ArrayLike, dtype: np.dtype | None = None) -> Any:
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        if is_torch(a) and a.device.type == "cuda":
            import torch

            tdt = torch.float64 if dtype == np.float64 else torch.float32
            return cuda.as_cuda_array(a.detach().to(tdt).contiguous())
        if hasattr(a, "copy_to_host"):  # already a numba device array
            return a
        host = a.detach().cpu().numpy() if is_torch(a) else np.asarray(a)
        return cuda.to_device(np.ascontiguousarray(host, dtype=dtype), stream=self.stream)

    def empty(self, shape: tuple[int, ...], zero: bool) -> tuple[Any, Any]:
        """(device array, owner) of ``shape``; owner is the torch tensor when on torch."""
        if self.torch_cuda:
            import torch

            tdt = torch.float64 if self.dtype == np.float64 else torch.float32
            fn = torch.zeros if zero else torch.empty
            t = fn(shape, dtype=tdt, device=self.template.device)
            return cuda.as_cuda_array(t), t
        host = np.zeros(shape, dtype=self.dtype)
        return cuda.to_device(host, stream=self.stream), None

    def result(self, dev: Any, owner: Any, shape: tuple[int, ...]) -> ArrayLike:
        if owner is not None:
            return owner.reshape(shape)
        host = dev.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        host = host.reshape(shape)
        if is_torch(self.template):
            import torch

            return torch.from_numpy(host)
        return host


def _structure(csr: CSR | DeviceCSR, launch: _Launch) -> DeviceCSR:
    if isinstance(csr, DeviceCSR):
        return csr
    if launch.torch_cuda:
        return to_device(csr, launch.template.device)
    return to_device(csr)


def _values(dcsr: DeviceCSR, data: ArrayLike | None, launch: _Launch) -> Any:
    if data is None:
        if dcsr.data is None:
            raise UserError("no synapse values: pass data= or a DeviceCSR built with values")
        return dcsr.data
    return launch.operand(data)


def _rows_of(a: ArrayLike, n: int, name: str) -> tuple[tuple[int, ...], int]:
    shape = tuple(a.shape)
    if len(shape) == 0 or shape[-1] != n:
        raise UserError(f"{name} has shape {shape}; its last dimension must be {n}")
    return shape[:-1], int(np.prod(shape[:-1], dtype=np.int64))


def _flat(a: ArrayLike, rows: int, n: int) -> ArrayLike:
    return a.reshape(rows, n)


def _grid_rows(rows: int) -> int:
    return max(1, min(rows, MAX_GRID))


# --------------------------------------------------------------------------- public ops


def spmm_forward(
    spikes: ArrayLike, csr: CSR | DeviceCSR, data: ArrayLike | None = None, method: str = "push"
) -> ArrayLike:
    r""":math:`y_{bj} = \sum_i x_{bi} W_{ji}` on the GPU: ``[..., n_pre]`` -> ``[..., n_post]``.

    ``data`` overrides the values held by ``csr`` (e.g. the nnz weight tensor of a
    layer). ``method``: ``"push"`` (event-driven, atomics) or ``"pull"`` (deterministic).
    """
    dtype = _dtype(csr, data)
    launch = _Launch(spikes, dtype)
    d = _structure(csr, launch)
    lead, rows = _rows_of(spikes, d.n_pre, "spikes")
    x = launch.operand(_flat(spikes, rows, d.n_pre))
    w = _values(d, data, launch)
    if method == "push":
        out, owner = launch.empty((rows, d.n_post), zero=True)
        if rows and d.n_pre:
            grid = (math.ceil(d.n_pre / PRE_PER_BLOCK), _grid_rows(rows))
            _push_kernel[grid, THREADS, launch.stream](x, d.indptr, d.indices, w, out)
    elif method == "pull":
        out, owner = launch.empty((rows, d.n_post), zero=True)
        if rows and d.n_post:
            grid = (math.ceil(d.n_post / THREADS), _grid_rows(rows))
            _pull_kernel[grid, THREADS, launch.stream](x, d.c_indptr, d.c_indices, d.perm, w, out)
    else:
        raise UserError(f"method must be 'push' or 'pull', got {method!r}")
    return launch.result(out, owner, (*lead, d.n_post))


def spmm_backward_input(
    grad_out: ArrayLike, csr: CSR | DeviceCSR, data: ArrayLike | None = None
) -> ArrayLike:
    r""":math:`g^x_{bi} = \sum_{k \in \mathrm{row}\,i} w_k\, g_{b\,j(k)}`.

    ``grad_out [..., n_post]`` -> ``[..., n_pre]``.
    """
    dtype = _dtype(csr, data)
    launch = _Launch(grad_out, dtype)
    d = _structure(csr, launch)
    lead, rows = _rows_of(grad_out, d.n_post, "grad_out")
    g = launch.operand(_flat(grad_out, rows, d.n_post))
    w = _values(d, data, launch)
    out, owner = launch.empty((rows, d.n_pre), zero=True)
    if rows and d.n_pre:
        grid = (math.ceil(d.n_pre / THREADS), _grid_rows(rows))
        _gather_kernel[grid, THREADS, launch.stream](g, d.indptr, d.indices, w, out)
    return launch.result(out, owner, (*lead, d.n_pre))


def _outer_launch(
    x: ArrayLike,
    y: ArrayLike,
    d: DeviceCSR,
    launch: _Launch,
    out: Any,
    alpha: float,
    beta: float,
    lo: float,
    hi: float,
    touch_idle: bool,
) -> None:
    lead_x, rows = _rows_of(x, d.n_pre, "pre")
    _, rows_y = _rows_of(y, d.n_post, "post")
    if rows != rows_y:
        raise UserError(f"pre has {rows} rows but post has {rows_y}")
    xd = launch.operand(_flat(x, rows, d.n_pre))
    yd = launch.operand(_flat(y, rows, d.n_post))
    if d.n_pre and d.nnz:
        t = launch.dtype.type
        grid = max(1, min(d.n_pre, MAX_GRID))
        _outer_kernel[grid, THREADS, launch.stream](
            xd, yd, d.indptr, d.indices, out, t(alpha), t(beta), t(lo), t(hi), bool(touch_idle)
        )


def sddmm_weight_grad(
    grad_out: ArrayLike, x: ArrayLike, csr: CSR | DeviceCSR, dtype: np.dtype | None = None
) -> ArrayLike:
    r""":math:`g^w_k = \sum_b g_{b\,j(k)} x_{b\,i(k)}` on existing synapses; returns ``[nnz]``.

    ``dtype`` defaults to the dtype of ``csr``'s values.
    """
    launch = _Launch(grad_out, np.dtype(dtype) if dtype is not None else _dtype(csr, None))
    d = _structure(csr, launch)
    out, owner = launch.empty((d.nnz,), zero=True)
    _outer_launch(x, grad_out, d, launch, out, 1.0, 0.0, -np.inf, np.inf, False)
    return launch.result(out, owner, (d.nnz,))


def _inplace(target: ArrayLike, d: DeviceCSR, launch: _Launch) -> tuple[Any, Any]:
    """Device view of ``target`` and a callback that writes results back to it."""
    if is_torch(target) and target.device.type == "cuda":
        if not target.is_contiguous():
            raise UserError("the updated tensor must be contiguous")
        return cuda.as_cuda_array(target.detach()), None
    return launch.operand(target), target


def _write_back(dev: Any, host_target: Any, launch: _Launch) -> None:
    if host_target is None:
        return
    res = dev.copy_to_host(stream=launch.stream)
    launch.stream.synchronize()
    if is_torch(host_target):
        import torch

        host_target.detach().copy_(torch.from_numpy(res))
    else:
        host_target[...] = res


def hebbian_update(
    data: ArrayLike,
    csr: CSR | DeviceCSR,
    pre: ArrayLike,
    post: ArrayLike,
    lr: float,
    w_min: float | None = None,
    w_max: float | None = None,
) -> ArrayLike:
    r"""In place Hebbian update, see :func:`neuroplastic.kernels.cpu.hebbian_update`.

    :math:`w_k \leftarrow \mathrm{clip}(w_k + \tfrac{\eta}{B}\sum_b y_{b\,j(k)} x_{b\,i(k)})`
    on synapses of presynaptic rows with a nonzero entry.
    """
    launch = _Launch(data, float_dtype(data.dtype))
    d = _structure(csr, launch)
    dev, host = _inplace(data, d, launch)
    rows = max(1, int(np.prod(tuple(pre.shape[:-1]), dtype=np.int64)))
    lo = -np.inf if w_min is None else w_min
    hi = np.inf if w_max is None else w_max
    _outer_launch(pre, post, d, launch, dev, float(lr) / rows, 1.0, lo, hi, False)
    _write_back(dev, host, launch)
    return data


def eligibility_trace_update(
    trace: ArrayLike,
    csr: CSR | DeviceCSR,
    pre_trace: ArrayLike,
    post_pseudo: ArrayLike,
    decay: float,
) -> ArrayLike:
    r"""In place eligibility traces, see :func:`neuroplastic.kernels.cpu.eligibility_trace_update`.

    :math:`e_k \leftarrow \lambda e_k + \tfrac1B \sum_b \psi_{b\,j(k)} \bar x_{b\,i(k)}`
    """
    launch = _Launch(trace, float_dtype(trace.dtype))
    d = _structure(csr, launch)
    dev, host = _inplace(trace, d, launch)
    rows = max(1, int(np.prod(tuple(pre_trace.shape[:-1]), dtype=np.int64)))
    _outer_launch(
        pre_trace, post_pseudo, d, launch, dev, 1.0 / rows, float(decay), -np.inf, np.inf, True
    )
    _write_back(dev, host, launch)
    return trace


def _dtype(csr: CSR | DeviceCSR, data: ArrayLike | None) -> np.dtype:
    return float_dtype(data.dtype) if data is not None else np.dtype(csr.dtype)
