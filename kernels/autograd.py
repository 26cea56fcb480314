r"""torch autograd for event-driven sparse synapses.

Two levels:

* :class:`EventLinearFunction` — the op on the **nnz values** of a CSR structure:
  :math:`y = x W^T` with :math:`W` given by ``values`` (CSR order). Gradients

  .. math::

      \frac{\partial L}{\partial x_{bi}} = \sum_{k \in \mathrm{row}\, i} w_k\, g_{b\,j(k)}
      \qquad
      \frac{\partial L}{\partial w_k} = \sum_b g_{b\,j(k)}\, x_{b\,i(k)}

  (transposed gather and SDDMM; the latter visits only rows with a nonzero input). A
  layer that stores its weights as nnz values, or that gathers them once per forward
  and reuses them over ``T`` time steps, uses this directly.

* :func:`event_linear` — the convenience form over a **dense** parameter
  ``weight [n_post, n_pre]`` and a bool ``mask``: returns ``x @ (weight * mask).T``.
  The values are gathered from ``weight`` on every call (:func:`masked_values`; weights
  change every optimiser step) and the gradient reaching ``weight`` is dense-shaped but
  zero off the mask (the nnz gradient scattered into zeros). The CSR *structure* lives
  in a :class:`CSRCache` and is rebuilt only when the mask changes.

Cost note (measured, see ``docs/kernels.md``): gathering the values from a dense
``[n_post, n_pre]`` weight reads nearly every cache line of it (2.4-2.9 ms at 4096 x 4096,
several times the event kernel at 2 % firing). Amortise it: pass all time steps at once
(``x [T, B, n]``) or call :func:`masked_values` once and :func:`event_linear_values` per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from neuroplastic.errors import UserError

from . import cpu
from .formats import CSR, csr_from_mask
from .threads import match_torch_threads

__all__ = [
    "CSRCache",
    "EventLinearFunction",
    "event_linear",
    "event_linear_values",
    "masked_values",
]

BACKENDS = ("numba", "cuda")


class CSRCache:
    """The CSR structure of a mask, rebuilt only when the mask changes.

    The key is the mask tensor itself (held by reference), its shape, and torch's
    in-place version counter ``mask._version``, which every in-place write
    (``mask[...] = ...``, ``mask.copy_(...)``, ``mask.logical_and_(...)``) bumps.
    Writes through ``mask.data`` bypass the counter: call :meth:`invalidate` after those.
    ``rebuilds`` counts structure builds (useful in tests and logs).
    """

    def __init__(self) -> None:
        self._mask: torch.Tensor | None = None
        self._key: tuple | None = None
        self._csr: CSR | None = None
        self._device: dict[str, Any] = {}
        self.rebuilds = 0

    def invalidate(self) -> None:
        """Forget the structure (next call rebuilds it)."""
        self._mask = None
        self._key = None
        self._csr = None
        self._device = {}

    def structure(self, mask: torch.Tensor) -> CSR:
        """CSR structure of ``mask [n_post, n_pre]`` (values are placeholder ones)."""
        key = (tuple(mask.shape), mask.device, mask._version)
        if self._csr is None or self._mask is not mask or self._key != key:
            m = mask.detach()
            if m.dtype != torch.bool:
                m = m != 0
            match_torch_threads()
            self._csr = csr_from_mask(m.cpu())
            self._mask = mask
            self._key = key
            self._device = {}
            self.rebuilds += 1
        return self._csr

    def device_structure(self, device: torch.device) -> Any:
        """The structure on a CUDA device (:class:`~neuroplastic.kernels.cuda.DeviceCSR`)."""
        if self._csr is None:
            raise UserError("CSRCache is empty: call structure(mask) first")
        name = str(device)
        if name not in self._device:
            from . import cuda as kcuda

            self._device[name] = kcuda.to_device(self._csr, device, with_values=False)
        return self._device[name]

    def flat_index(self, device: torch.device) -> torch.Tensor:
        """int64 ``[nnz]``: flat position ``j * n_pre + i`` in the dense weight, CSR order."""
        if self._csr is None:
            raise UserError("CSRCache is empty: call structure(mask) first")
        name = "flat:" + str(device)
        if name not in self._device:
            c = self._csr
            flat = c.indices.astype(np.int64) * c.n_pre + c.row_ids()
            self._device[name] = torch.from_numpy(flat).to(device)
        return self._device[name]


# --------------------------------------------------------------------------- values <-> dense


class _MaskedGather(torch.autograd.Function):
    """values = weight at the synapses (CSR order); backward scatters into dense zeros."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, csr: CSR) -> torch.Tensor:
        match_torch_threads()
        ctx.csr = csr
        ctx.weight_shape = weight.shape
        return torch.from_numpy(csr.values_from_dense(weight.detach()))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_values: torch.Tensor) -> tuple[torch.Tensor, None]:
        match_torch_threads()
        grad = torch.zeros(ctx.weight_shape, dtype=grad_values.dtype)
        ctx.csr.scatter_to_dense(grad_values.contiguous(), out=grad)
        return grad, None


def masked_values(weight: torch.Tensor, csr: CSR, cache: CSRCache | None = None) -> torch.Tensor:
    """The synapse values ``weight[j(k), i(k)]`` in CSR order, differentiable w.r.t. ``weight``.

    The gradient flowing back into ``weight`` is dense-shaped and zero off the mask.
    On CUDA this is a torch gather (``cache`` supplies the device index).
    """
    if weight.shape != (csr.n_post, csr.n_pre):
        raise UserError(
            f"weight has shape {tuple(weight.shape)}, expected {(csr.n_post, csr.n_pre)}"
        )
    if weight.device.type == "cuda":
        if cache is None:
            raise UserError("masked_values on CUDA needs the CSRCache that built csr")
        return weight.reshape(-1)[cache.flat_index(weight.device)]
    if weight.dtype not in (torch.float32, torch.float64):
        raise UserError(f"weight must be float32 or float64, got {weight.dtype}")
    return _MaskedGather.apply(weight, csr)


# --------------------------------------------------------------------------- the op on nnz values


class EventLinearFunction(torch.autograd.Function):
    """``y[..., n_post] = x[..., n_pre] W^T`` with ``W`` given by nnz ``values`` on ``csr``.

    ``forward(ctx, x, values, csr, backend="numba", device_csr=None)``; ``x`` must have the
    dtype of ``values``. ``backend``: ``"numba"`` (CPU tensors) or ``"cuda"`` (numba.cuda;
    ``device_csr`` is the structure on the device, built from ``csr`` when omitted).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        values: torch.Tensor,
        csr: CSR,
        backend: str = "numba",
        device_csr: Any = None,
    ) -> torch.Tensor:
        if backend not in BACKENDS:
            raise UserError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if values.shape != (csr.nnz,):
            raise UserError(f"values have shape {tuple(values.shape)}, expected ({csr.nnz},)")
        if x.dtype != values.dtype:
            raise UserError(f"x is {x.dtype} but the synapse values are {values.dtype}")
        ctx.csr = csr
        ctx.backend = backend
        if backend == "cuda":
            from . import cuda as kcuda

            ctx.device_csr = device_csr if device_csr is not None else csr
            y = kcuda.spmm_forward(x, ctx.device_csr, data=values)
        else:
            y = cpu.spmm_forward(x, csr.with_data(values.detach()))
        ctx.save_for_backward(x, values)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        x, values = ctx.saved_tensors
        grad_out = grad_out.to(values.dtype).contiguous()
        grad_x = grad_values = None
        if ctx.backend == "cuda":
            from . import cuda as kcuda

            if ctx.needs_input_grad[0]:
                grad_x = kcuda.spmm_backward_input(grad_out, ctx.device_csr, data=values)
            if ctx.needs_input_grad[1]:
                dtype = np.float64 if values.dtype == torch.float64 else np.float32
                grad_values = kcuda.sddmm_weight_grad(grad_out, x, ctx.device_csr, dtype=dtype)
        else:
            csr = ctx.csr.with_data(values.detach())
            if ctx.needs_input_grad[0]:
                grad_x = cpu.spmm_backward_input(grad_out, csr)
            if ctx.needs_input_grad[1]:
                grad_values = cpu.sddmm_weight_grad(grad_out, x, csr)
        return grad_x, grad_values, None, None, None


def _backend_for(device: torch.device, backend: str) -> str:
    if backend == "auto":
        return "cuda" if device.type == "cuda" else "numba"
    if backend not in BACKENDS:
        raise UserError(f"backend must be 'auto', 'numba' or 'cuda', got {backend!r}")
    return backend


def event_linear_values(
    x: torch.Tensor,
    values: torch.Tensor,
    csr: CSR,
    backend: str = "auto",
    cache: CSRCache | None = None,
) -> torch.Tensor:
    """:class:`EventLinearFunction` with dtype handling and backend choice.

    ``x`` is cast to the dtype of ``values`` (spikes may be bool/int); ``cache`` provides
    the device-resident structure for the CUDA backend.
    """
    b = _backend_for(values.device, backend)
    x = x.to(values.dtype)
    device_csr = None
    if b == "cuda" and cache is not None and values.device.type == "cuda":
        device_csr = cache.device_structure(values.device)
    return EventLinearFunction.apply(x, values, csr, b, device_csr)


def event_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    csr_cache: CSRCache | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Event-driven ``x @ (weight * mask).T`` with gradients for ``x`` and ``weight``.

    Parameters
    ----------
    x : ``[..., n_pre]`` presynaptic activity (spikes or real values; zeros are skipped).
    weight : ``[n_post, n_pre]`` dense parameter (torch ``Linear`` convention).
    mask : bool ``[n_post, n_pre]``; the synapses that exist.
    csr_cache : keeps the CSR structure between calls (rebuilt when ``mask`` changes).
        Without one the structure is rebuilt on every call.
    backend : ``"auto"`` (numba on CPU, numba.cuda on CUDA), ``"numba"`` or ``"cuda"``.

    Returns ``[..., n_post]``. ``weight.grad`` is dense-shaped with zeros off the mask.
    """
    if weight.ndim != 2:
        raise UserError(f"weight must be [n_post, n_pre], got shape {tuple(weight.shape)}")
    if mask.shape != weight.shape:
        raise UserError(f"mask has shape {tuple(mask.shape)}, weight has {tuple(weight.shape)}")
    if x.shape[-1:] != weight.shape[1:]:
        raise UserError(
            f"x has shape {tuple(x.shape)}; its last dimension must be n_pre = {weight.shape[1]}"
        )
    cache = csr_cache if csr_cache is not None else CSRCache()
    csr = cache.structure(mask)
    values = masked_values(weight, csr, cache)
    return event_linear_values(x, values, csr, backend, cache)
