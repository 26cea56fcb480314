r"""Synapse layers over time-first tensors ``[T, B, ...]``.

A synapse maps presynaptic activity to postsynaptic current, :math:`I_t = W x_t + b`.
It has no state, so all ``T`` steps go through **one** batched operation
(``[T*B, N_in] @ W^T``, or one conv over ``T*B`` images): no per-step Python matmuls.

Plugins that need the presynaptic activity (HLOP's Hebbian circuit, GPM's
representation matrix, the weight-gradient projection) set ``capture = True``; the layer
then keeps the last input in ``last_input`` (detached, ``[T, B, ...]``). Gradient
transforms act on ``weight.grad`` after ``backward()``; the layer does not know which
method is running. Sparse variants (mask + CSR) subclass these layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Synapse", "Linear", "Conv2d", "AvgPool2d", "MaxPool2d", "Flatten", "is_synapse"]


class Synapse:
    """Mixin: presynaptic capture for plugins."""

    capture: bool = False
    last_input: torch.Tensor | None = None

    def _keep(self, x: torch.Tensor) -> None:
        if self.capture:
            self.last_input = x.detach()


class Linear(nn.Linear, Synapse):
    """Dense linear synapse ``[T, B, N_in] -> [T, B, N_out]`` (``weight`` is ``[N_out, N_in]``)."""

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward pass uses (sparse subclasses apply their mask)."""
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._keep(x)
        return F.linear(x, self.effective_weight(), self.bias)


def _time_batched(fn, x: torch.Tensor) -> torch.Tensor:
    T, B = x.shape[:2]
    y = fn(x.reshape(T * B, *x.shape[2:]))
    return y.reshape(T, B, *y.shape[1:])


class Conv2d(nn.Conv2d, Synapse):
    """Dense 2-d convolution over ``[T, B, C, H, W]`` as one conv on ``T*B`` images."""

    def effective_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._keep(x)
        return _time_batched(lambda y: self._conv_forward(y, self.effective_weight(), self.bias), x)


class AvgPool2d(nn.AvgPool2d):
    """Average pooling over ``[T, B, C, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _time_batched(super().forward, x)


class MaxPool2d(nn.MaxPool2d):
    """Max pooling over ``[T, B, C, H, W]`` (of spikes: an OR over the window)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _time_batched(super().forward, x)


class Flatten(nn.Module):
    """``[T, B, ...] -> [T, B, prod(...)]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], -1)


def is_synapse(m: nn.Module) -> bool:
    """True for synapse layers (the ones with trainable weights and plugins)."""
    return isinstance(m, Synapse)
