r"""Recurrent spiking populations: LIF / ALIF neurons with all-to-all recurrent synapses.

A population of :math:`N` neurons receives the current of the feed-forward synapse in
front of it, :math:`x_t` (``[B, N]`` per step), plus its own spikes of the previous step
through the recurrent weight :math:`W_{rec}` (``[N, N]``, row = postsynaptic neuron):

.. math::

    I_t = x_t + W_{rec} z_{t-1}, \qquad z_{-1} = 0,

then exactly one step of the neuron on :math:`I_t`
(:func:`~neuroplastic.neurons.functional.lif_step` for :class:`RecurrentLIF`,
:func:`~neuroplastic.neurons.functional.alif_step` for :class:`RecurrentALIF`):

.. math::

    v^{pre}_t = a v_{t-1} + (1-a) v_{leak} + g I_t, \quad
    z_t = H(v^{pre}_t - \vartheta_t), \quad v_t = \mathrm{reset}(v^{pre}_t, z_t)

with :math:`\vartheta_t = \vartheta` (LIF) or :math:`\vartheta + \beta_a b_t`,
:math:`b_t = \rho b_{t-1} + (1-\rho) z_{t-1}` (ALIF); :math:`a, g, \rho` as in
:mod:`neuroplastic.neurons.functional` (``integration`` exact or euler).

:math:`W_{rec}` lives in a child synapse ``self.rec`` (a
:class:`neuroplastic.synapses.Linear` without bias), so it can carry a sparse ``mask``
(``layer.rec.set_mask(m)``: the forward pass uses ``weight * mask``) and plugins see it as
the synapse ``"<layer>.rec"`` of :meth:`neuroplastic.network.SNN.synapses`. Seen from
outside, ``rec`` behaves like a feed-forward synapse applied to the presynaptic train
shifted by one step, :math:`[z_{-1}, z_0, \dots, z_{T-2}]`:

* with ``rec.capture = True`` that train (detached, ``[T, B, N]``) is left in
  ``rec.last_input`` after each ``forward``;
* ``rec``'s forward hooks are called once per ``forward`` (after the time loop) with that
  train as input and the recurrent current :math:`[W_{rec} z_{t-1}]_t` (``[T, B, N]``) as
  output; when gradients are on, that output receives
  :math:`\partial L / \partial (W_{rec} z_{t-1})` in ``backward`` (so gradient hooks such
  as GraNet's dense gradient or HLOP's input projection work as on any synapse).
  Forward pre-hooks are not called and values returned by hooks are ignored.

The recurrent product is always a dense matmul per step on ``rec.effective_weight()``
(``rec.backend`` is not used).

Initialisation: like ``nn.Linear`` scaled by ``rec_scale``,
:math:`W_{rec,ij} \sim U(-s/\sqrt N, s/\sqrt N)` with :math:`s` = ``rec_scale``
(default 0.5: with the unit input gain of :func:`neuroplastic.network.mlp` the recurrent
drive of a population firing at rate :math:`p` has standard deviation about
:math:`s\sqrt{p/3} \approx 0.09\,\vartheta` at :math:`p = 0.1`, so an untrained network
neither falls silent nor runs away). The diagonal (self-connections) is left free, as
in ``nn.Linear``; install ``rec.set_mask(~torch.eye(N, dtype=torch.bool))`` to forbid
self-connections (Bellec et al.'s LSNN has none). It is not zeroed at initialisation
because exact zeros of an unmasked weight count as sparsity in the run metrics.

``detach_recurrent=True`` stops the gradient through :math:`z_{t-1}` in the recurrent
current (the outputs are unchanged): BPTT then computes what e-prop computes (Bellec et
al. 2020), the gradient that ignores the recurrent paths between neurons.

``forward(x [T, B, N]) -> z [T, B, N]`` continues from the state of the previous call
(spikes :math:`z_{t-1}` included); ``reset()`` clears it. ``step(x [B, N], state)`` does
one step and returns ``(z, state)`` with a :class:`RecurrentState`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as TF
from torch import nn

from ..errors import UserError
from ..synapses import Linear
from . import functional as F
from .modules import ALIF, LIF, rest_like

__all__ = ["RecurrentState", "RecurrentLIF", "RecurrentALIF", "recurrent_current"]


@dataclass
class RecurrentState:
    """State of a recurrent population: the neuron's own state (``LIFState`` or
    ``ALIFState``, ``[B, N]`` tensors) and the spikes of the last step ``z`` (``[B, N]``),
    the presynaptic input of :math:`W_{rec}` at the next step."""

    neuron: F.LIFState | F.ALIFState
    z: torch.Tensor


def recurrent_current(x: torch.Tensor, z_prev: torch.Tensor, w_rec: torch.Tensor,
                      detach: bool = False) -> torch.Tensor:
    r""":math:`I_t = x_t + W_{rec} z_{t-1}` (``z_prev`` detached in the product when ``detach``)."""
    return x + TF.linear(z_prev.detach() if detach else z_prev, w_rec)


def call_forward_hooks(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    """Call ``module``'s forward hooks as ``module(*inputs)`` returning ``output`` would."""
    for hid, hook in list(module._forward_hooks.items()):
        if hid in module._forward_hooks_with_kwargs:
            hook(module, inputs, {}, output)
        else:
            hook(module, inputs, output)


class _Recurrent:
    """Mixin over a neuron module (LIF or ALIF): the recurrent synapse and the time loop."""

    def _init_recurrent(self, size: int, rec_scale: float, detach_recurrent: bool) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UserError(f"recurrent layer size must be a positive integer, got {size!r}")
        if not (isinstance(rec_scale, int | float) and math.isfinite(rec_scale) and rec_scale >= 0):
            raise UserError(f"rec_scale must be a non-negative number, got {rec_scale!r}")
        self.size = size
        self.rec_scale = float(rec_scale)
        self.detach_recurrent = bool(detach_recurrent)
        self.rec = Linear(size, size, bias=False)
        bound = self.rec_scale / math.sqrt(size)
        with torch.no_grad():
            self.rec.weight.uniform_(-bound, bound)

    def _check_input(self, x: torch.Tensor, dims: int) -> None:
        if x.dim() != dims or x.shape[-1] != self.size:
            want = "[T, B, N]" if dims == 3 else "[B, N]"
            raise UserError(f"{type(self).__name__} of {self.size} neurons expects input {want} with "
                            f"N = {self.size}, got shape {tuple(x.shape)}")

    def initial_state(self, like: torch.Tensor) -> RecurrentState:
        """The resting state for one step's input ``like`` (``[B, N]``): membrane at
        ``v_leak``, no adaptation, no previous spikes."""
        zero = torch.zeros_like(like)
        if isinstance(self, ALIF):
            return RecurrentState(F.ALIFState(rest_like(like, self.v_leak), zero, zero), zero)
        return RecurrentState(F.LIFState(rest_like(like, self.v_leak)), zero)

    def recurrent_input(self, x: torch.Tensor, z_prev: torch.Tensor) -> torch.Tensor:
        r""":math:`I_t = x_t + W_{rec} z_{t-1}` with the masked weight and ``detach_recurrent``."""
        return recurrent_current(x, z_prev, self.rec.effective_weight(), self.detach_recurrent)

    def step(self, x: torch.Tensor, state: RecurrentState | None = None) -> tuple[torch.Tensor, RecurrentState]:
        """One step ``x [B, N]`` (feed-forward current) from ``state`` (rest if None).
        Returns ``(z_t, RecurrentState(neuron_state_t, z_t))``."""
        self._check_input(x, 2)
        state = state if state is not None else self.initial_state(x)
        z, inner, _ = self.neuron_step(self.recurrent_input(x, state.z), state.neuron)
        return z, RecurrentState(inner, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, 3)
        state = self.state if self.state is not None else self.initial_state(x[0])
        w = self.rec.effective_weight()
        hooked = bool(self.rec._forward_hooks)
        tap = (torch.zeros_like(x).requires_grad_() if hooked and torch.is_grad_enabled() else None)
        zs, vs, prev, cur = [], [], [], []
        taps = tap.unbind(0) if tap is not None else None
        for t, xt in enumerate(x.unbind(0)):  # unbind: an O(T) backward, not a [T, ...] fill per step
            z_prev = state.z
            r = TF.linear(z_prev.detach() if self.detach_recurrent else z_prev, w)
            if hooked:
                cur.append(r.detach())
                if tap is not None:
                    r = r + taps[t]  # zero; its gradient is dL/d(W_rec z_{t-1})
            z, inner, v_pre = self.neuron_step(xt + r, state.neuron)
            prev.append(z_prev)
            zs.append(z)
            vs.append(v_pre)
            state = RecurrentState(inner, z)
        self.state = state
        if self.record:
            self.v_trace = torch.stack(vs).detach()
        if self.rec.capture or hooked:
            pre = torch.stack(prev).detach()
            if self.rec.capture:
                self.rec.last_input = pre
            if hooked:
                currents = torch.stack(cur)
                if tap is not None:
                    with torch.no_grad():
                        tap.copy_(currents)  # values for the hooks; the sums above saved nothing
                    currents = tap
                call_forward_hooks(self.rec, (pre,), currents)
        return torch.stack(zs)

    def extra_repr(self) -> str:
        return (f"size={self.size}, rec_scale={self.rec_scale}, detach_recurrent={self.detach_recurrent}, "
                + super().extra_repr())


class RecurrentLIF(_Recurrent, LIF):
    r"""LIF population with recurrent synapses ``rec`` (:math:`I_t = x_t + W_{rec} z_{t-1}`,
    then :func:`~neuroplastic.neurons.functional.lif_step`); see the module docstring.

    Args:
        size: number of neurons :math:`N`.
        tau_mem: membrane time constant (seconds), as :class:`~neuroplastic.neurons.LIF`.
        rec_scale: :math:`W_{rec}` starts uniform in :math:`\pm` ``rec_scale`` :math:`/\sqrt N`.
        detach_recurrent: no gradient through :math:`z_{t-1}` in the recurrent current.
        **kw: the other neuron parameters (``dt``, ``integration``, ``v_th``, ``r``, ...).
    """

    def __init__(self, size: int, tau_mem: float = 1e-2, *, rec_scale: float = 0.5,
                 detach_recurrent: bool = False, **kw) -> None:
        kw.setdefault("shape", (size,) if isinstance(size, int) else None)
        super().__init__(tau_mem, **kw)
        self._init_recurrent(size, rec_scale, detach_recurrent)

    def neuron_step(self, current: torch.Tensor, state: F.LIFState) -> tuple[torch.Tensor, F.LIFState, torch.Tensor]:
        """The LIF step on the total current :math:`I_t`: ``(z_t, LIFState, v_pre_t)``."""
        a, gain = self.coefficients()
        return F.lif_step(current, state, a, gain, self.v_leak, self.v_th, self.v_reset,
                          self.surrogate, self.reset_mode, self.detach_reset)


class RecurrentALIF(_Recurrent, ALIF):
    r"""Adaptive LIF population with recurrent synapses ``rec``
    (:math:`I_t = x_t + W_{rec} z_{t-1}`, then :func:`~neuroplastic.neurons.functional.alif_step`);
    see the module docstring. Arguments as :class:`RecurrentLIF` plus ``tau_adapt`` and
    ``beta_adapt`` of :class:`~neuroplastic.neurons.ALIF`."""

    def __init__(self, size: int, tau_mem: float = 2e-2, tau_adapt: float = 2e-1, beta_adapt: float = 1.8, *,
                 rec_scale: float = 0.5, detach_recurrent: bool = False, **kw) -> None:
        kw.setdefault("shape", (size,) if isinstance(size, int) else None)
        super().__init__(tau_mem, tau_adapt, beta_adapt, **kw)
        self._init_recurrent(size, rec_scale, detach_recurrent)

    def neuron_step(self, current: torch.Tensor, state: F.ALIFState) -> tuple[torch.Tensor, F.ALIFState, torch.Tensor]:
        """The ALIF step on the total current :math:`I_t`: ``(z_t, ALIFState, v_pre_t)``."""
        return self._step(current, state)
