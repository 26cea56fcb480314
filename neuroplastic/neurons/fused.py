r"""Fused multi-step LIF: one forward loop and one hand-written backward over all T.

Autograd through a Python loop of T steps records ~10 nodes per step; here the whole
``[T, B, ...]`` sequence is a single autograd node. Forward (no graph):

.. math::
    v^{pre}_t = a v_{t-1} + (1-a) v_{leak} + g I_t,\quad z_t = H(v^{pre}_t - \vartheta),\quad
    v_t = \mathrm{reset}(v^{pre}_t, z_t)

Backward (BPTT), with :math:`\sigma'_t = \sigma'(v^{pre}_t - \vartheta)` and
:math:`\bar v_t = \partial L/\partial v_t = a\, \partial L / \partial v^{pre}_{t+1}`:

* subtract, detached reset: :math:`\partial L/\partial v^{pre}_t = \bar z_t \sigma'_t + \bar v_t`
* subtract, attached:       :math:`(\bar z_t - \vartheta \bar v_t)\sigma'_t + \bar v_t`
* zero, detached:           :math:`\bar z_t \sigma'_t + (1 - z_t)\bar v_t`
* zero, attached:           :math:`(\bar z_t + (v_{reset} - v^{pre}_t)\bar v_t)\sigma'_t + (1-z_t)\bar v_t`

and :math:`\partial L/\partial I_t = g\, \partial L/\partial v^{pre}_t`. Identical (to float
rounding) to autograd through :func:`.functional.lif_step`; parameters here are constants
(learnable ones use the autograd path).
"""

from __future__ import annotations

import torch

from ..surrogate import Surrogate

__all__ = ["lif_multistep_fused", "lif_multistep_spikes"]


try:  # the numba kernels are optional at import time (pure-torch fallback below)
    from neuroplastic.kernels import lif_cpu as _lif_cpu
    from neuroplastic.kernels.threads import match_torch_threads as _match_threads
except ImportError:  # pragma: no cover
    _lif_cpu = None


def _numba_ok(*tensors, scalars=()) -> bool:
    """The numba CPU kernels take CPU float tensors and scalar parameters."""
    if _lif_cpu is None:
        return False
    return all(isinstance(s, float | int) for s in scalars) and all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)


def _offset(a, v_leak):
    """The constant drive ``(1 - a) v_leak`` (exactly 0.0 for the usual ``v_leak = 0``)."""
    return 0.0 if isinstance(v_leak, float | int) and v_leak == 0 else (1 - a) * v_leak


def _numba_forward(x, v0, a, gain, offset, v_th, v_reset, reset: str, trace: bool):
    """The numba kernel over ``x [T, ...]``: ``(z, v_pre or None, v_final)`` shaped like ``x``
    (``trace=False`` skips the pre-reset membrane)."""
    _match_threads()
    xc = x.detach().contiguous()
    x2 = xc.reshape(xc.shape[0], -1)
    v0c = v0.detach().expand_as(xc[0]).contiguous().reshape(-1).to(xc.dtype)
    z_all = torch.empty_like(x2)
    v = torch.empty_like(v0c)
    np_t = x2.numpy().dtype.type
    v_pre = torch.empty_like(x2) if trace else torch.empty(0, x2.shape[1], dtype=x2.dtype)
    _lif_cpu.lif_forward(x2.numpy(), v0c.numpy(), np_t(a), np_t(gain), np_t(offset), np_t(v_th),
                         np_t(v_reset), reset == "subtract", z_all.numpy(), v_pre.numpy(), v.numpy())
    shape = xc.shape
    return z_all.reshape(shape), (v_pre.reshape(shape) if trace else None), v.reshape(shape[1:])


class _FusedLIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, v0, a, gain, v_leak, v_th, v_reset, surrogate, reset, detach_reset):  # type: ignore[override]
        ctx.set_materialize_grads(False)  # v_pre and v carry no gradient: no zero tensors for them
        ctx.params = (a, gain, v_th, v_reset, surrogate, reset, detach_reset)
        ctx.v0_needs_grad = v0.requires_grad
        offset = _offset(a, v_leak)
        if _numba_ok(x, v0, scalars=(a, gain, v_th, v_reset, offset)) and x.dim() >= 2:
            # the kernel computes v_pre = a v + gain x + offset itself: no pass over x here
            z_all, v_pre_all, v = _numba_forward(x, v0, a, gain, offset, v_th, v_reset, reset, trace=True)
            ctx.save_for_backward(v_pre_all)
            ctx.mark_non_differentiable(v_pre_all, v)
            return z_all, v_pre_all, v
        drive = gain * x
        if not (isinstance(v_leak, float | int) and v_leak == 0):
            drive = drive + (1 - a) * v_leak
        v_pre_all = torch.empty_like(drive)
        z_all = torch.empty_like(drive)
        v = v0
        reset_value = torch.as_tensor(v_reset, dtype=drive.dtype, device=drive.device)
        subtract = reset == "subtract"
        for t in range(x.shape[0]):
            v_pre = torch.add(drive[t], v, alpha=a) if isinstance(a, float) else drive[t] + a * v
            v_pre_all[t] = v_pre
            z = v_pre > v_th
            z_all[t] = z
            if subtract:
                v = v_pre - z.to(v_pre.dtype) * v_th  # bool * float would round v_th to float32
            else:
                v = torch.where(z, reset_value, v_pre)
        ctx.save_for_backward(v_pre_all)
        ctx.mark_non_differentiable(v_pre_all, v)
        return z_all, v_pre_all, v

    @staticmethod
    def backward(ctx, gz, _gv_pre, _gv):  # type: ignore[override]
        (v_pre_all,) = ctx.saved_tensors
        if gz is None:  # the spikes were not used by the loss
            return (None,) * 10
        a, gain, v_th, v_reset, surrogate, reset, detach_reset = ctx.params
        if _numba_ok(gz, v_pre_all, scalars=(a, gain, v_th, v_reset)) and gz.dim() >= 2:
            _match_threads()
            T = gz.shape[0]
            g2 = gz.contiguous().to(v_pre_all.dtype).reshape(T, -1)
            gx = torch.empty_like(g2)
            gv0 = torch.empty_like(g2[0])
            vp = v_pre_all.reshape(T, -1).numpy()
            np_t = vp.dtype.type
            kind = _lif_cpu.SURROGATE_IDS[surrogate.name]
            _lif_cpu.lif_backward(g2.numpy(), vp, np_t(a), np_t(gain), np_t(v_th), np_t(v_reset),
                                  reset == "subtract", bool(detach_reset), kind,
                                  _lif_cpu.surrogate_constants(kind, float(surrogate.alpha), vp.dtype),
                                  gx.numpy(), gv0.numpy())
            gv0 = gv0.reshape(gz.shape[1:]) if ctx.v0_needs_grad else None
            return gx.reshape(gz.shape), gv0, None, None, None, None, None, None, None, None
        sg = surrogate.grad(v_pre_all - v_th)
        gsg = gz * sg
        d_pre = torch.empty_like(gsg)
        dv = None
        for t in range(gsg.shape[0] - 1, -1, -1):
            if dv is None:
                dp = gsg[t]
            elif reset == "subtract":
                dp = gsg[t] + dv if detach_reset else gsg[t] - v_th * dv * sg[t] + dv
            else:
                keep = (v_pre_all[t] <= v_th).to(gsg.dtype)
                dp = gsg[t] + keep * dv
                if not detach_reset:
                    dp = dp + (v_reset - v_pre_all[t]) * dv * sg[t]
            d_pre[t] = dp
            dv = a * dp
        gx = gain * d_pre
        gv0 = dv if ctx.v0_needs_grad else None
        return gx, gv0, None, None, None, None, None, None, None, None


def lif_multistep_fused(
    x: torch.Tensor, v0: torch.Tensor, a, gain, v_leak, v_th, v_reset, surrogate: Surrogate,
    reset: str = "subtract", detach_reset: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-step LIF over ``x [T, B, ...]`` as one autograd node.

    Returns ``(z [T,...], v_pre [T,...], v_final)``; only ``z`` carries gradient.
    """
    return _FusedLIF.apply(x, v0, a, gain, v_leak, v_th, v_reset, surrogate, reset, detach_reset)


def lif_multistep_spikes(x: torch.Tensor, v0: torch.Tensor, a, gain, v_leak, v_th, v_reset,
                         reset: str = "subtract") -> tuple[torch.Tensor, torch.Tensor] | None:
    """Inference only (no gradient, no membrane trace): ``(z [T,...], v_final)`` from the numba
    kernel that skips the pre-reset membrane, or ``None`` when that kernel does not apply
    (per-neuron parameters, non-CPU or non-float tensors). Same spikes as
    :func:`lif_multistep_fused`."""
    offset = _offset(a, v_leak)
    if x.dim() < 2 or not _numba_ok(x, v0, scalars=(a, gain, v_th, v_reset, offset)):
        return None
    z_all, _, v = _numba_forward(x, v0, a, gain, offset, v_th, v_reset, reset, trace=False)
    return z_all, v
