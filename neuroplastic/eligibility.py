r"""Synapse products whose weight gradient is taken from a presynaptic *trace*.

Online trainers (OTTT) compute the forward pass of one step from the spikes ``s_t`` but
assign credit to the weights through the presynaptic trace
:math:`\hat a_t = \lambda \hat a_{t-1} + s_t` (:math:`\lambda` the leak of the
postsynaptic neuron), which carries the past of the input without keeping a graph:

.. math:: I_t = W s_t + b, \qquad
          \frac{\partial L_t}{\partial W} = \delta_t \hat a_t^\top, \qquad
          \frac{\partial L_t}{\partial b} = \delta_t\, c_t, \qquad
          \frac{\partial L_t}{\partial s_t} = W^\top \delta_t

with :math:`\delta_t = \partial L_t / \partial I_t` and :math:`c_t = \sum_{\tau \le t}
\lambda^{t-\tau}` the trace of the bias's constant input. A synapse layer whose
``eligibility`` is set (:class:`Eligibility`) computes its product through these
functions; the layer does not know which trainer set it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Eligibility", "traced_linear", "traced_conv2d"]


@dataclass
class Eligibility:
    """The signal a weight gradient is computed from: ``pre`` (shape of the layer input)
    and ``bias``, the trace :math:`c_t` of the bias's constant input: a number, or one
    value per leading index of the input (per time step of a ``[T, B, ...]`` chunk)."""

    pre: torch.Tensor
    bias: float | torch.Tensor = 1.0


def _bias_grad(g: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_{rows} c_{row}\, g_{row}` over every dim but the channel dim 1 (conv) or
    the last (linear) -- ``g`` is ``[rows, C]`` or ``[rows, C, H, W]``."""
    per_row = g.reshape(g.shape[0], g.shape[1], -1).sum(2)
    if isinstance(scale, torch.Tensor):
        return (per_row * scale.to(g).reshape(-1, 1)).sum(0)
    return per_row.sum(0) * scale


def _bias_rows(scale, lead: int, rows: int):
    """A per-time-step bias trace ``[T]`` repeated for the ``rows // T`` samples of each step."""
    if isinstance(scale, torch.Tensor) and scale.numel() > 1:
        return scale.repeat_interleave(rows // lead) if scale.numel() == lead else scale
    return float(scale) if isinstance(scale, torch.Tensor) else scale


class _TracedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pre, weight, bias, bias_scale):  # type: ignore[override]
        ctx.save_for_backward(pre, weight)
        rows = x.numel() // x.shape[-1]
        ctx.bias_scale = _bias_rows(bias_scale, x.shape[0] if x.dim() > 2 else rows, rows)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        pre, weight = ctx.saved_tensors
        gx = g @ weight.to(g.dtype) if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[2]:
            gw = g.reshape(-1, g.shape[-1]).T @ pre.reshape(-1, pre.shape[-1]).to(g.dtype)
        gb = None
        if ctx.has_bias and ctx.needs_input_grad[3]:
            gb = _bias_grad(g.reshape(-1, g.shape[-1]), ctx.bias_scale)
        return gx, None, gw, gb, None


class _TracedConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pre, weight, bias, bias_scale, conv):  # type: ignore[override]
        ctx.save_for_backward(pre, weight)
        ctx.bias_scale, ctx.conv, ctx.has_bias = bias_scale, conv, bias is not None
        ctx.x_shape = x.shape
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        pre, weight = ctx.saved_tensors
        c = ctx.conv
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(ctx.x_shape, weight, g, c.stride, c.padding, c.dilation, c.groups)
        if ctx.needs_input_grad[2]:
            gw = torch.nn.grad.conv2d_weight(pre.to(g.dtype), weight.shape, g, c.stride, c.padding, c.dilation,
                                             c.groups)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            gb = _bias_grad(g, ctx.bias_scale)
        return gx, None, gw, gb, None, None


def traced_linear(x: torch.Tensor, elig: Eligibility, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` whose weight gradient is :math:`\\delta^\\top` ``elig.pre``."""
    return _TracedLinear.apply(x, elig.pre.detach(), weight, bias, elig.bias)


def traced_conv2d(x: torch.Tensor, elig: Eligibility, weight: torch.Tensor, bias: torch.Tensor | None,
                  conv: torch.nn.Conv2d) -> torch.Tensor:
    """A conv over ``x [N, C, H, W]`` (the layer's stride, padding...) whose weight gradient
    is taken from ``elig.pre`` (same shape as ``x``)."""
    if conv.padding_mode != "zeros":
        raise ValueError("traced convolutions need padding_mode='zeros'")
    return _TracedConv2d.apply(x, elig.pre.detach(), weight, bias, elig.bias, conv)
