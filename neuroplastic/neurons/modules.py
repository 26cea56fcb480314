r"""Neuron modules: thin stateful wrappers over :mod:`.functional` and :mod:`.fused`.

Every neuron takes a time-first input ``[T, B, ...]`` (multi-step ``forward``) or one
step ``[B, ...]`` with an explicit state (``step``). Parameters follow NIR
(``tau_mem``, ``tau_syn``, ``v_leak``, ``r``, ``v_th``, ``v_reset``; seconds for times),
integrated over ``dt`` by ``integration="exact"`` (:math:`a = e^{-dt/\tau}`) or
``"euler"`` (:math:`a = 1 - dt/\tau`). The membrane update is
:math:`v^{pre}_t = a v_{t-1} + (1-a) v_{leak} + (1-a) R I_t`; see
:mod:`neuroplastic.neurons.functional` for the full equations and resets.

Every parameter is a scalar or, for networks read from NIR files that carry per-neuron
values, an array of the layer's shape (stored as a buffer, broadcast over the batch).

``forward`` continues from the state left by the previous call (``reset()`` clears it);
with ``record = True`` the module keeps the last membrane trace (pre-reset membrane,
``[T, B, ...]``) in ``self.v_trace``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..surrogate import Surrogate, get_surrogate
from . import functional as F
from .fused import lif_multistep_fused, lif_multistep_spikes

__all__ = ["Neuron", "LIF", "IF", "CubaLIF", "ALIF", "LI", "CubaLI", "as_constant"]


def as_constant(value) -> float | torch.Tensor:
    """A fixed neuron parameter: a ``float`` for a scalar or an array whose entries are all
    equal, else a float32 tensor of per-neuron values."""
    if isinstance(value, int | float):
        return float(value)
    t = torch.as_tensor(value).detach().to(torch.float64).cpu()
    flat = t.reshape(-1)
    if flat.numel() == 0:
        raise UserError("a neuron parameter array is empty")
    if flat.numel() == 1 or bool((flat == flat[0]).all()):
        return float(flat[0])
    return t.to(torch.float32)


def _positive(name: str, value) -> None:
    ok = bool((value > 0).all()) if isinstance(value, torch.Tensor) else value > 0
    if not ok:
        raise UserError(f"{name} must be positive, got {value}")


def _param(value, learn: bool, shape) -> torch.Tensor | float:
    if not learn:
        return as_constant(value)
    if isinstance(value, int | float):
        return nn.Parameter(torch.full(tuple(shape or ()), float(value)))
    return nn.Parameter(torch.as_tensor(value, dtype=torch.float32).clone())


def rest_like(like: torch.Tensor, v_leak) -> torch.Tensor:
    """The resting membrane ``v_leak`` (scalar or per neuron) broadcast to ``like``."""
    if isinstance(v_leak, torch.Tensor):
        return torch.zeros_like(like) + v_leak.to(like)
    return torch.full_like(like, v_leak)


class Neuron(nn.Module):
    """Base class: state handling, recording, parameter checks."""

    spiking = True

    def __init__(self, *, dt: float = 1e-3, integration: str = "exact", v_th: float = 1.0,
                 v_reset: float = 0.0, v_leak: float = 0.0, r: float = 1.0,
                 reset: str = "subtract", detach_reset: bool = True,
                 surrogate: Surrogate | str = "atan", learn_threshold: bool = False,
                 shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if not dt > 0:
            raise UserError(f"dt must be positive, got {dt}")
        if integration not in F.INTEGRATIONS:
            raise UserError(f"integration must be one of {F.INTEGRATIONS}, got {integration!r}")
        if reset not in F.RESETS:
            raise UserError(f"reset must be one of {F.RESETS}, got {reset!r}")
        self.dt = float(dt)
        self.integration = integration
        self.reset_mode = reset
        self.detach_reset = detach_reset
        self.surrogate = get_surrogate(surrogate)
        self._fixed("v_th", _param(v_th, learn_threshold, shape))
        self._fixed("v_reset", as_constant(v_reset))
        self._fixed("v_leak", as_constant(v_leak))
        self._fixed("r", as_constant(r))
        self.shape = shape
        self.state = None
        self.record = False
        self.v_trace: torch.Tensor | None = None

    def _fixed(self, name: str, value) -> None:
        """Set a parameter: a plain attribute for scalars and ``nn.Parameter``; a buffer for
        per-neuron arrays (so ``.to()`` and ``state_dict`` carry it)."""
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            if hasattr(self, name) and name not in self._buffers:
                delattr(self, name)
            self.register_buffer(name, value)
        else:
            if name in self._buffers:
                del self._buffers[name]
            setattr(self, name, value)

    def reset(self) -> None:
        """Forget the state (call between independent sequences)."""
        self.state = None
        self.v_trace = None

    def _learnable(self) -> bool:
        return any(p.requires_grad for p in self.parameters(recurse=False)) and torch.is_grad_enabled()

    def extra_repr(self) -> str:
        return (f"dt={self.dt}, integration={self.integration!r}, reset={self.reset_mode!r}, "
                f"surrogate={self.surrogate.name}")


class LIF(Neuron):
    r"""Leaky integrate-and-fire: :math:`\tau_m \dot v = (v_{leak} - v) + R I`, spike at
    :math:`v > \vartheta` (strictly: a membrane exactly at threshold does not fire), then reset
    (subtract or zero)."""

    def __init__(self, tau_mem: float = 1e-2, *, learn_tau: bool = False, **kw) -> None:
        super().__init__(**kw)
        tau = _param(tau_mem, learn_tau, kw.get("shape"))
        _positive("tau_mem", tau.detach() if isinstance(tau, torch.Tensor) else tau)
        self._fixed("tau_mem", tau)

    def coefficients(self):
        """Decay ``a`` and input gain ``g = (1 - a) R`` for one step."""
        tau = self.tau_mem.clamp(min=self.dt * 1e-3) if isinstance(self.tau_mem, torch.Tensor) else self.tau_mem
        a = F.decay(self.dt, tau, self.integration)
        return a, (1 - a) * self.r

    def _initial(self, like: torch.Tensor) -> torch.Tensor:
        if self.state is not None:
            return self.state.v
        return rest_like(like, self.v_leak)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gain = self.coefficients()
        v0 = self._initial(x[0])
        if not self.record and not torch.is_grad_enabled():
            fast = lif_multistep_spikes(x, v0, a, gain, self.v_leak, self.v_th, self.v_reset, self.reset_mode)
            if fast is not None:
                z, v = fast
                self.state = F.LIFState(v)
                return z
        if self._learnable():
            z, v_pre, v = F.lif_multistep_autograd(x, v0, a, gain, self.v_leak, self.v_th, self.v_reset,
                                                    self.surrogate, self.reset_mode, self.detach_reset)
        else:
            z, v_pre, v = lif_multistep_fused(x, v0, a, gain, self.v_leak, self.v_th, self.v_reset,
                                              self.surrogate, self.reset_mode, self.detach_reset)
        self.state = F.LIFState(v)
        if self.record:
            self.v_trace = v_pre.detach()
        return z

    def step(self, x: torch.Tensor, state: F.LIFState | None = None) -> tuple[torch.Tensor, F.LIFState]:
        """One step ``x [B, ...]`` from ``state`` (rest if None). Returns ``(z, state)``."""
        a, gain = self.coefficients()
        state = state or F.LIFState(rest_like(x, self.v_leak))
        z, state, _ = F.lif_step(x, state, a, gain, self.v_leak, self.v_th, self.v_reset,
                                 self.surrogate, self.reset_mode, self.detach_reset)
        return z, state


class IF(LIF):
    r"""Integrate-and-fire (no leak): :math:`v_t = v_{t-1} + R I_t` (dt absorbed in R)."""

    def __init__(self, **kw) -> None:
        kw.pop("learn_tau", None)
        kw.pop("tau_mem", None)
        super().__init__(tau_mem=1.0, **kw)
        self.tau_mem = float("inf")

    def coefficients(self):
        return 1.0, self.r


class _CurrentSynapse:
    r"""NIR's current-based synapse in front of a membrane: :math:`\tau_s \dot i = -i + w_{in} I`,
    discretely :math:`i_t = a_s i_{t-1} + (1-a_s) w_{in} I_t`; the membrane is driven by the
    current of the *same* step (mixin of :class:`CubaLIF` and :class:`CubaLI`)."""

    def _init_synapse(self, tau_syn, w_in) -> None:
        self._fixed("tau_syn", as_constant(tau_syn))
        _positive("tau_syn", self.tau_syn)
        self._fixed("w_in", as_constant(w_in))
        self.i_state: torch.Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.i_state = None

    def synapse_coefficients(self):
        a_s = F.decay(self.dt, self.tau_syn, self.integration)
        return a_s, (1 - a_s) * self.w_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_s, g_s = self.synapse_coefficients()
        i0 = self.i_state if self.i_state is not None else torch.zeros_like(x[0])
        i, self.i_state = F.synaptic_filter(x, i0, a_s, g_s)
        return super().forward(i)

    def step(self, x, state=None):
        """One step; ``state`` is ``(membrane state, i)``."""
        inner, i = state if state is not None else (None, torch.zeros_like(x))
        a_s, g_s = self.synapse_coefficients()
        i = a_s * i + g_s * x
        out, inner = super().step(i, inner)
        return out, (inner, i)


class CubaLIF(_CurrentSynapse, LIF):
    r"""Current-based LIF: :math:`\tau_s \dot i = -i + w_{in} I`,
    :math:`\tau_m \dot v = (v_{leak} - v) + R i` (NIR ``CubaLIF``).

    Discrete: :math:`i_t = a_s i_{t-1} + (1-a_s) w_{in} I_t`, then the LIF update driven by
    :math:`i_t` (the current of the *same* step; Norse's ``LIFCell`` uses
    :math:`i_{t-1}` and no :math:`(1-a)` factors).
    """

    def __init__(self, tau_mem: float = 1e-2, tau_syn: float = 5e-3, w_in: float = 1.0, **kw) -> None:
        super().__init__(tau_mem, **kw)
        self._init_synapse(tau_syn, w_in)


class ALIF(LIF):
    r"""Adaptive LIF (Bellec et al.): threshold :math:`\vartheta + \beta_a b_t` with
    :math:`b_t = \rho b_{t-1} + (1-\rho) z_{t-1}`, :math:`\rho = e^{-dt/\tau_{adapt}}`
    (or :math:`1 - dt/\tau_{adapt}` under Euler)."""

    def __init__(self, tau_mem: float = 2e-2, tau_adapt: float = 2e-1, beta_adapt: float = 1.8, **kw) -> None:
        super().__init__(tau_mem, **kw)
        if not tau_adapt > 0:
            raise UserError(f"tau_adapt must be positive, got {tau_adapt}")
        self.tau_adapt = float(tau_adapt)
        self.beta_adapt = float(beta_adapt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        zs, vs = [], []
        for xt in x.unbind(0):
            z, state, v_pre = self._step(xt, state)
            zs.append(z)
            vs.append(v_pre)
        self.state = state
        if self.record:
            self.v_trace = torch.stack(vs).detach()
        return torch.stack(zs)

    def _step(self, x, state):
        a, gain = self.coefficients()
        rho = F.decay(self.dt, self.tau_adapt, self.integration)
        if state is None:
            zero = torch.zeros_like(x)
            state = F.ALIFState(rest_like(x, self.v_leak), zero, zero)
        return F.alif_step(x, state, a, gain, self.v_leak, self.v_th, self.v_reset, rho,
                           self.beta_adapt, self.surrogate, self.reset_mode, self.detach_reset)

    def step(self, x, state=None):
        z, state, _ = self._step(x, state)
        return z, state


class LI(Neuron):
    r"""Leaky integrator readout (no spikes): :math:`\tau_m \dot v = (v_{leak} - v) + R I`.
    ``forward`` returns the membrane trace ``[T, B, ...]``."""

    spiking = False

    def __init__(self, tau_mem: float = 1e-2, **kw) -> None:
        super().__init__(**kw)
        self._fixed("tau_mem", as_constant(tau_mem))
        _positive("tau_mem", self.tau_mem)

    def coefficients(self):
        a = F.decay(self.dt, self.tau_mem, self.integration)
        return a, (1 - a) * self.r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gain = self.coefficients()
        v0 = self.state if self.state is not None else rest_like(x[0], self.v_leak)
        v, self.state = F.li_multistep(x, v0, a, gain, self.v_leak)
        if self.record:
            self.v_trace = v.detach()
        return v

    def step(self, x, state=None):
        a, gain = self.coefficients()
        v = state if state is not None else rest_like(x, self.v_leak)
        v = a * v + (1 - a) * self.v_leak + gain * x
        return v, v


class CubaLI(_CurrentSynapse, LI):
    r"""Current-based leaky integrator (NIR ``CubaLI``): :math:`\tau_s \dot i = -i + w_{in} I`,
    :math:`\tau_m \dot v = (v_{leak} - v) + R i`; the synaptic filter of :class:`CubaLIF`
    (current of the same step) followed by :class:`LI`. ``forward`` returns the membrane."""

    def __init__(self, tau_mem: float = 1e-2, tau_syn: float = 5e-3, w_in: float = 1.0, **kw) -> None:
        super().__init__(tau_mem, **kw)
        self._init_synapse(tau_syn, w_in)
