"""Array boundary helpers: numpy inside the kernels, numpy *or* torch at the edges.

Every public kernel function accepts ``numpy.ndarray`` or a CPU ``torch.Tensor`` and
returns the same kind it was given. Conversions share memory whenever dtype and layout
already fit (``Tensor.numpy()`` / ``torch.from_numpy``); a copy is made only to change
dtype or to make an array C-contiguous.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from neuroplastic.errors import UserError

ArrayLike = Any  # numpy.ndarray | torch.Tensor (kept loose: numba-friendly at runtime)

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_torch(a: object) -> bool:
    """True for a ``torch.Tensor``."""
    return isinstance(a, torch.Tensor)


def to_numpy(a: ArrayLike, dtype: np.dtype | type | None = None, name: str = "array") -> np.ndarray:
    """C-contiguous numpy view of ``a`` (a copy only when dtype or layout must change).

    torch tensors are detached first (no autograd through the kernels: the autograd
    functions in :mod:`neuroplastic.kernels.autograd` supply the gradients) and must live
    on the CPU.
    """
    if is_torch(a):
        if a.device.type != "cpu":
            raise UserError(f"{name} is on {a.device}; the numba CPU kernels need CPU tensors")
        t = a.detach()
        if dtype is not None:
            t = t.to(_torch_dtype(dtype))
        arr = t.contiguous().numpy()
    else:
        arr = np.asarray(a)
        if dtype is not None and arr.dtype != np.dtype(dtype):
            arr = arr.astype(dtype)
    return np.ascontiguousarray(arr)


def _torch_dtype(dtype: np.dtype | type) -> torch.dtype:
    return {
        np.dtype(np.float32): torch.float32,
        np.dtype(np.float64): torch.float64,
        np.dtype(np.int32): torch.int32,
        np.dtype(np.int64): torch.int64,
        np.dtype(np.bool_): torch.bool,
    }[np.dtype(dtype)]


def like(result: np.ndarray, template: ArrayLike) -> ArrayLike:
    """Return ``result`` as the same kind (numpy / torch) as ``template``, without copying."""
    return torch.from_numpy(result) if is_torch(template) else result


def float_dtype(dtype: np.dtype | torch.dtype) -> np.dtype:
    """The kernel dtype for values of ``dtype``: float64 stays float64, anything else float32."""
    if isinstance(dtype, torch.dtype):
        return np.dtype(np.float64) if dtype == torch.float64 else np.dtype(np.float32)
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def dtype_of(a: ArrayLike) -> np.dtype | torch.dtype:
    """dtype of a numpy array or torch tensor."""
    return a.dtype


def as_rows(a: np.ndarray, n: int, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Flatten ``a[..., n]`` to ``[rows, n]``; return it with the leading shape."""
    if a.ndim == 0 or a.shape[-1] != n:
        raise UserError(f"{name} has shape {tuple(a.shape)}; its last dimension must be {n}")
    lead = tuple(a.shape[:-1])
    return a.reshape(-1, n), lead
