r"""Synapse layers over time-first tensors ``[T, B, ...]``.

A synapse maps presynaptic activity to postsynaptic current, :math:`I_t = W x_t + b`.
It has no state, so all ``T`` steps go through **one** batched operation
(``[T*B, N_in] @ W^T``, or one conv over ``T*B`` images): no per-step Python matmuls.

Plugins that need the presynaptic activity (HLOP's Hebbian circuit, GPM's
representation matrix, the weight-gradient projection) set ``capture = True``; the layer
then keeps the last input in ``last_input`` (detached, ``[T, B, ...]``). Gradient
transforms act on ``weight.grad`` after ``backward()``; the layer does not know which
method is running. Sparse variants (mask + CSR) subclass these layers.

Online trainers set ``eligibility`` (:class:`~neuroplastic.eligibility.Eligibility`) for
one step: the product is the same, but the weight gradient is taken from the
presynaptic trace it holds (:mod:`neuroplastic.eligibility`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .eligibility import Eligibility, traced_conv2d, traced_linear

try:
    from neuroplastic.kernels import dispatch as _dispatch
    from neuroplastic.kernels import spike_linear as _spike_linear
except ImportError:  # pragma: no cover - numba missing: dense path only
    _dispatch = _spike_linear = None

__all__ = ["Synapse", "Linear", "Conv2d", "AvgPool2d", "SumPool2d", "MaxPool2d", "Flatten", "Scale", "is_synapse"]


class Synapse:
    """Mixin: presynaptic capture and an optional connectivity mask for plugins.

    A sparse synapse is a dense one with a boolean ``mask`` buffer (same shape as
    ``weight``): the forward pass uses ``weight * mask`` and ``mask_version`` counts mask
    changes so kernels can rebuild their CSR view only when it changed.
    """

    capture: bool = False
    last_input: torch.Tensor | None = None
    mask_version: int = 0
    #: set by online trainers for one step: the weight gradient uses ``eligibility.pre``
    eligibility: Eligibility | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", None)

    def _keep(self, x: torch.Tensor) -> None:
        if self.capture:
            self.last_input = x.detach()

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """Install (or with ``None`` remove) the boolean connectivity mask; zero the
        weights outside it."""
        if mask is None:
            self._buffers["mask"] = None
        else:
            mask = mask.to(dtype=torch.bool, device=self.weight.device)
            if mask.shape != self.weight.shape:
                raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(self.weight.shape)}")
            self._buffers["mask"] = mask
            with torch.no_grad():
                self.weight.mul_(mask)
        self.mask_version += 1

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: ``weight * mask`` when masked."""
        return self.weight if self.mask is None else self.weight * self.mask


class Linear(Synapse, nn.Linear):
    """Linear synapse ``[T, B, N_in] -> [T, B, N_out]`` (``weight`` is ``[N_out, N_in]``).

    ``backend``: ``"auto"`` (default) computes the product event-driven from the nonzero
    inputs (:func:`neuroplastic.kernels.spike_linear.spike_linear`) when that is expected
    to be faster on the CPU (rule in :func:`~neuroplastic.kernels.spike_linear.event_dense_worthwhile`),
    else as one dense matmul; ``"dense"`` always uses the matmul; ``"event"`` always the
    event-driven kernel (CPU float tensors). Results agree to float rounding.

    With a ``mask`` (sparse synapses) ``"auto"`` asks
    :func:`neuroplastic.kernels.dispatch.choose_backend` (the measured cost model of
    docs/kernels.md) for the cheapest of the CSR kernels, the spike gather on the masked
    weight and the masked matmul; ``"event"`` forces the CSR kernels. Their CSR structure
    is cached per layer and rebuilt only when the mask changes. :meth:`route` tells which
    path an input takes.
    """

    backend: str = "auto"
    _csr_cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._keep(x)
        if self.eligibility is not None:
            return traced_linear(x, self.eligibility, self.effective_weight(), self.bias)
        route = self.route(x)
        if route in ("numba", "cuda"):
            y = _dispatch.sparse_linear(x, self.weight, self.mask, self._csr_cache, route)
            return y + self.bias if self.bias is not None else y
        if route == "spike":
            return _spike_linear.spike_linear(x, self.effective_weight(), self.bias)
        return F.linear(x, self.effective_weight(), self.bias)

    def route(self, x: torch.Tensor) -> str:
        """How this input is propagated: ``"numba"``/``"cuda"`` (CSR kernels, masked layers),
        ``"spike"`` (spike gather on the dense or masked weight) or ``"torch"`` (matmul)."""
        if self.backend == "dense" or _dispatch is None:
            return "torch"
        masked = self.mask is not None
        if masked and self._csr_cache is None:
            self._csr_cache = _dispatch.CSRCache()
        if self.backend == "event":
            if masked:
                return "numba" if x.device.type == "cpu" else "cuda"
            return "spike"
        if not masked:
            return "spike" if _spike_linear.event_dense_worthwhile(x, self.weight) else "torch"
        rows = max(1, x.numel() // self.in_features)
        density = self._csr_cache.structure(self.mask).density
        return _dispatch.choose_backend(x.device, density, _spike_linear.sampled_density(x), rows,
                                        size=self.weight.numel(), dense_weight=True,
                                        spike=_spike_linear.spike_applicable(x, self.weight),
                                        training=torch.is_grad_enabled() and self.weight.requires_grad,
                                        n_pre=self.in_features)


def _time_batched(fn, x: torch.Tensor) -> torch.Tensor:
    T, B = x.shape[:2]
    y = fn(x.reshape(T * B, *x.shape[2:]))
    return y.reshape(T, B, *y.shape[1:])


class Conv2d(Synapse, nn.Conv2d):
    """2-d convolution over ``[T, B, C, H, W]`` as one conv on ``T*B`` images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._keep(x)
        if self.eligibility is not None:
            pre = self.eligibility.pre.reshape(-1, *x.shape[2:])
            c = self.eligibility.bias  # per time step: repeat for the B images of each step
            elig = Eligibility(pre, c.repeat_interleave(x.shape[1]) if isinstance(c, torch.Tensor) else c)
            return _time_batched(lambda y: traced_conv2d(y, elig, self.effective_weight(), self.bias, self), x)
        return _time_batched(lambda y: self._conv_forward(y, self.effective_weight(), self.bias), x)


class AvgPool2d(nn.AvgPool2d):
    """Average pooling over ``[T, B, C, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _time_batched(super().forward, x)


class SumPool2d(AvgPool2d):
    """Sum pooling over ``[T, B, C, H, W]`` (NIR ``SumPool2d``): the window's sum, zero padding
    counted as zeros (average pooling with divisor 1)."""

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__(kernel_size, stride, padding, count_include_pad=True, divisor_override=1)


class MaxPool2d(nn.MaxPool2d):
    """Max pooling over ``[T, B, C, H, W]`` (of spikes: an OR over the window)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _time_batched(super().forward, x)


class Flatten(nn.Module):
    """``[T, B, ...] -> [T, B, prod(...)]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], -1)


class Scale(nn.Module):
    """Elementwise gain ``y_t = x_t * s`` (NIR ``Scale``); ``s`` has the shape of one sample."""

    def __init__(self, scale) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype)


def is_synapse(m: nn.Module) -> bool:
    """True for synapse layers (the ones with trainable weights and plugins)."""
    return isinstance(m, Synapse)
