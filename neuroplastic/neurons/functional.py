r"""Neuron maths as pure functions (the modules in :mod:`.modules` are thin wrappers).

All neurons follow NIR's ODEs so that export is faithful:

* LIF:     :math:`\tau_m \dot v = (v_{leak} - v) + R I`
* IF:      :math:`\dot v = R I`  (discrete: :math:`v_t = v_{t-1} + R I_t`, dt absorbed in R)
* CubaLIF: :math:`\tau_s \dot i = -i + I`, then the LIF equation driven by :math:`i`
* LI:      the LIF equation without spikes (a leaky readout)
* ALIF:    LIF with threshold :math:`\vartheta_t = \vartheta + \beta_a b_t`,
  :math:`b_t = \rho b_{t-1} + (1-\rho) z_{t-1}`, :math:`\rho = e^{-dt/\tau_{adapt}}`.

Discretisation over one step of length ``dt`` (``integration``):

* ``"exact"``: :math:`a = e^{-dt/\tau}` (exact for input held constant over the step),
* ``"euler"``: :math:`a = 1 - dt/\tau` (forward Euler; what Norse's and snnTorch's NIR
  importers compute).

Both give the same update :math:`v^{pre}_t = a v_{t-1} + (1-a) v_{leak} + (1-a) R I_t`.
A spike is :math:`z_t = H(v^{pre}_t - \vartheta)`; the reset is
``"subtract"`` (:math:`v_t = v^{pre}_t - z_t \vartheta`) or ``"zero"``
(:math:`v_t = (1 - z_t) v^{pre}_t + z_t v_{reset}`). With ``detach_reset`` the reset
path carries no gradient (snnTorch's and SpikingJelly's default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..surrogate import Surrogate

__all__ = [
    "decay",
    "LIFState",
    "lif_step",
    "lif_multistep_autograd",
    "reset_membrane",
    "synaptic_filter",
    "li_multistep",
    "ALIFState",
    "alif_step",
]

INTEGRATIONS = ("exact", "euler")
RESETS = ("subtract", "zero")


def decay(dt: float, tau: float | torch.Tensor, integration: str = "exact") -> torch.Tensor | float:
    """Per-step decay factor :math:`a`: ``exp(-dt/tau)`` (exact) or ``1 - dt/tau`` (euler)."""
    if integration not in INTEGRATIONS:
        raise UserError(f"integration must be one of {INTEGRATIONS}, got {integration!r}")
    if isinstance(tau, torch.Tensor):
        return torch.exp(-dt / tau) if integration == "exact" else 1 - dt / tau
    if not tau > 0:
        raise UserError(f"time constant must be positive, got {tau}")
    return math.exp(-dt / tau) if integration == "exact" else 1 - dt / tau


@dataclass
class LIFState:
    """Membrane potential ``v`` of a LIF/IF population (``[B, ...]``)."""

    v: torch.Tensor


def reset_membrane(
    v_pre: torch.Tensor, z: torch.Tensor, v_th, v_reset, reset: str, detach_reset: bool
) -> torch.Tensor:
    """Apply the reset to the pre-spike membrane ``v_pre`` given spikes ``z``."""
    zr = z.detach() if detach_reset else z
    if reset == "subtract":
        return v_pre - zr * v_th
    if reset == "zero":
        return v_pre * (1 - zr) + zr * v_reset
    raise UserError(f"reset must be one of {RESETS}, got {reset!r}")


def lif_step(
    x: torch.Tensor,
    state: LIFState,
    a,
    gain,
    v_leak,
    v_th,
    v_reset,
    surrogate: Surrogate,
    reset: str = "subtract",
    detach_reset: bool = True,
) -> tuple[torch.Tensor, LIFState, torch.Tensor]:
    """One LIF step. Returns ``(z_t, new_state, v_pre_t)``.

    :math:`v^{pre} = a v + (1-a) v_{leak} + g I` with ``gain`` :math:`g = (1-a) R`
    (``a = 1, g = R`` gives the IF neuron).
    """
    v_pre = a * state.v + (1 - a) * v_leak + gain * x
    z = surrogate(v_pre - v_th)
    v = reset_membrane(v_pre, z, v_th, v_reset, reset, detach_reset)
    return z, LIFState(v), v_pre


def lif_multistep_autograd(
    x: torch.Tensor, v0: torch.Tensor, a, gain, v_leak, v_th, v_reset, surrogate: Surrogate,
    reset: str = "subtract", detach_reset: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference multi-step LIF over ``x [T, B, ...]`` through plain autograd.

    Used when a parameter (time constant, threshold) is learnable. Returns
    ``(z [T,...], v_pre [T,...], v_final)``.
    """
    state = LIFState(v0)
    zs, vs = [], []
    for xt in x.unbind(0):  # unbind: one O(T) backward (x[t] would fill a [T, ...] gradient per step)
        z, state, v_pre = lif_step(xt, state, a, gain, v_leak, v_th, v_reset, surrogate, reset,
                                   detach_reset)
        zs.append(z)
        vs.append(v_pre)
    return torch.stack(zs), torch.stack(vs), state.v


def synaptic_filter(x: torch.Tensor, i0: torch.Tensor, a_syn, gain_syn) -> tuple[torch.Tensor, torch.Tensor]:
    """Current-based synapse over time: :math:`i_t = a_s i_{t-1} + g_s I_t`.

    With ``g_s = 1 - a_s`` this is NIR's :math:`\\tau_s \\dot i = -i + I`. Linear, so the
    whole trace is computed before the membrane. Returns ``(i [T,...], i_final)``.
    """
    out = []
    i = i0
    for xt in x.unbind(0):
        i = a_syn * i + gain_syn * xt
        out.append(i)
    return torch.stack(out), i


def li_multistep(x: torch.Tensor, v0: torch.Tensor, a, gain, v_leak) -> tuple[torch.Tensor, torch.Tensor]:
    """Leaky integrator (no spikes): :math:`v_t = a v_{t-1} + (1-a) v_{leak} + g I_t`."""
    out = []
    v = v0
    for xt in x.unbind(0):
        v = a * v + (1 - a) * v_leak + gain * xt
        out.append(v)
    return torch.stack(out), v


@dataclass
class ALIFState:
    """Membrane ``v``, adaptation ``b`` and last spikes ``z`` of an ALIF population."""

    v: torch.Tensor
    b: torch.Tensor
    z: torch.Tensor


def alif_step(
    x: torch.Tensor, state: ALIFState, a, gain, v_leak, v_th, v_reset, rho, beta_adapt,
    surrogate: Surrogate, reset: str = "subtract", detach_reset: bool = True,
) -> tuple[torch.Tensor, ALIFState, torch.Tensor]:
    """One adaptive-LIF step (Bellec et al. 2018/2020).

    :math:`b_t = \\rho b_{t-1} + (1-\\rho) z_{t-1}`, threshold
    :math:`\\vartheta_t = \\vartheta + \\beta_a b_t`; membrane as in :func:`lif_step`
    with the adaptive threshold (and subtract-reset by :math:`\\vartheta_t`).
    """
    b = rho * state.b + (1 - rho) * state.z
    th = v_th + beta_adapt * b
    v_pre = a * state.v + (1 - a) * v_leak + gain * x
    z = surrogate(v_pre - th)
    v = reset_membrane(v_pre, z, th, v_reset, reset, detach_reset)
    return z, ALIFState(v, b, z), v_pre
