r"""Online training through time (OTTT; Xiao et al., NeurIPS 2022), the ``ottt`` strategy.

The network runs one step at a time. Every synapse layer keeps a presynaptic trace
:math:`\hat a_t = \lambda \hat a_{t-1} + s_t` (:math:`\lambda` the membrane decay of the
neuron layer it feeds, the readout's for the last layer). Each step has its own loss
:math:`L_t = w_t\,\mathrm{CE}(o_t, y)` on the readout :math:`o_t` (:math:`w_t = 1/T`; with
the ``last`` decoder only the final step counts, :math:`w_{T-1} = 1`); its gradient flows
through the current step only (the neuron states of earlier steps are detached) and
the weight gradient of every layer is taken from the trace
(:mod:`neuroplastic.eligibility`):

.. math:: \nabla_W L = \sum_t \delta_t \hat a_t^\top, \qquad
          \delta_t = \partial L_t / \partial I_t \ \text{(spatial backprop at step } t)

accumulated in ``weight.grad`` (OTTT-A: one optimizer step per minibatch).

The steps are processed in chunks of ``chunk`` steps (``[train] chunk``, default 8):
each layer runs the chunk at once (one batched product, the multi-step neuron kernel,
no graph), and the neuron's dependence on its past is cut by a straight-through form
with the *local* derivative of one step, :math:`\hat z_t = z_t + \psi_t\,g\,(I_t - \mathrm{sg}(I_t))`
(:math:`\psi_t = \sigma'(v^{pre}_t - \vartheta)`, :math:`g` the input gain; the LI readout
:math:`\hat o_t = o_t + g (I_t - \mathrm{sg}(I_t))`): exactly the gradient of the step-by-step
algorithm, whatever the chunk (tested), with one backward per chunk. Memory grows with
the chunk, not with ``T``; the input is encoded a chunk at a time
(:meth:`~neuroplastic.encoders._Encoder.chunks`, the random numbers of step-by-step
encoding) for the same reason. With ``T = 1`` the
gradient equals BPTT's exactly; for the readout weights it is the exact gradient of
:math:`\sum_t L_t` (the LI readout is linear).

Plugins see the traces as the presynaptic activity: a layer with ``capture`` gets
``last_input = [\hat a_0, ..., \hat a_{T-1}]`` after the step (HLOP's Hebbian rule on
traces, as in the paper's OTTT path; this record does grow with ``T``). Sparse layers
multiply their gradient by the mask (gradient on existing synapses only). LIF, IF and
CubaLIF layers with fixed parameters; recurrent and adaptive layers are refused (use
``eprop`` or ``bptt``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..eligibility import Eligibility
from ..errors import UserError
from ..neurons import IF, LI, LIF, CubaLI, CubaLIF, Neuron
from ..synapses import is_synapse
from .base import Trainer
from .stepping import postsynaptic_leaks, step_weight

__all__ = ["OTTTTrainer"]

_LOCAL = (LIF, IF, CubaLIF, LI, CubaLI)


def _scan(s: torch.Tensor, a: torch.Tensor | None, c: float, lam: float):
    r"""Presynaptic traces over a chunk: :math:`a_t = \lambda a_{t-1} + s_t` (``[k, B, ...]``)
    and the bias traces :math:`c_t = \lambda c_{t-1} + 1` (``[k]``)."""
    out = torch.empty_like(s)  # written in place: no per-step allocation
    cs = []
    for t in range(s.shape[0]):
        if a is None:
            out[t].copy_(s[t])
        else:
            torch.add(s[t], a, alpha=lam, out=out[t])
        a = out[t]
        c = lam * c + 1.0
        cs.append(c)
    return out, a.clone(), torch.tensor(cs, dtype=s.dtype, device=s.device), c


def _local_gain(layer: Neuron):
    r""":math:`\partial v^{pre}_t / \partial I_t` at fixed past: the input gain (times the
    current synapse's gain for the Cuba neurons)."""
    _, g = layer.coefficients()
    if isinstance(layer, CubaLIF | CubaLI):
        g = g * layer.synapse_coefficients()[1]
    return g


def _through_one_step(layer: Neuron, current: torch.Tensor) -> torch.Tensor:
    """Run a neuron layer over a chunk without a graph; return its output with the
    derivative of one step only (straight-through, see the module docstring)."""
    with torch.no_grad():
        record = layer.record
        layer.record = layer.spiking
        try:
            out = layer(current.detach())
            v_pre = layer.v_trace
        finally:
            layer.record = record
            if not record:
                layer.v_trace = None
    g = _local_gain(layer)
    if isinstance(g, torch.Tensor):
        g = g.to(current)
    delta = current - current.detach()
    if not layer.spiking:
        return out + g * delta
    v_th = layer.v_th.to(current) if isinstance(layer.v_th, torch.Tensor) else layer.v_th
    psi = layer.surrogate.grad(v_pre - v_th)
    return out + psi * g * delta


class OTTTTrainer(Trainer):
    """Online training through time with presynaptic traces."""

    name = "ottt"

    def check_model(self) -> None:
        for name, layer in self.model.layers.items():
            if hasattr(layer, "rec"):
                raise UserError(f"the ottt trainer trains feed-forward networks; layer {name!r} is recurrent "
                                "(use --trainer eprop or bptt)")
            if isinstance(layer, Neuron):
                if type(layer) not in _LOCAL:
                    raise UserError(f"the ottt trainer supports lif, if and cubalif neurons; layer {name!r} is "
                                    f"{type(layer).__name__} (use --trainer bptt)")
                if any(p.requires_grad for p in layer.parameters(recurse=False)):
                    raise UserError(f"the ottt trainer does not learn neuron parameters (layer {name!r})")
        self.leaks = postsynaptic_leaks(self.model)

    def compute_gradients(self, x: torch.Tensor, head: int | None) -> torch.Tensor:
        model = self.model
        model.reset()
        layers = list(model.layers.items())
        T = self.encoder.time_steps
        traces: dict[str, torch.Tensor | None] = {}
        bias_trace: dict[str, float] = {}
        kept: dict[str, list[torch.Tensor]] = {n: [] for n, m in layers if is_synapse(m) and m.capture}
        total = torch.zeros(())
        steps = 0
        # every chunk accumulates into the gradients (OTTT-A): allocating them before the
        # first chunk makes one chunk cost what every later chunk costs (a fresh product
        # added in place), so the step's peak is the same for T <= chunk and T >> chunk;
        # these parameters get a gradient from every chunk anyway, so nothing else changes
        for _, layer in layers:
            if is_synapse(layer):
                for p in (layer.weight, layer.bias):
                    if p is not None and p.requires_grad and p.grad is None:
                        p.grad = torch.zeros_like(p)
        try:
            chunks = self.encoder.chunks(x.to(self.device), self.settings.chunk, self.generator)
            for h in chunks:
                h = self.local(h, 1)
                k = h.shape[0]
                for name, layer in layers:
                    if is_synapse(layer):
                        pre, traces[name], c, bias_trace[name] = _scan(
                            h.detach(), traces.get(name), bias_trace.get(name, 0.0), self.leaks[name])
                        layer.eligibility = Eligibility(pre, c)
                        h = layer(h)
                        layer.eligibility = None
                        if name in kept:
                            kept[name].append(pre)
                    elif isinstance(layer, Neuron):
                        h = _through_one_step(layer, h)
                    else:
                        h = layer(h)
                if head is not None and model.n_heads > 1:
                    h = h[..., head * model.n_out:(head + 1) * model.n_out]
                # sum over the chunk's steps of w_t CE(o_t, y)
                w = torch.tensor([step_weight(self.settings.decoder, steps + i, T) for i in range(k)], dtype=h.dtype)
                per_step = F.cross_entropy(h.reshape(-1, h.shape[-1]), self.targets.repeat(k),
                                           reduction="none").reshape(k, -1).mean(1)
                loss = (per_step * w).sum()
                if loss.requires_grad:
                    loss.backward()
                total = total + loss.detach()
                steps += k
                # drop this chunk's graph now (its nodes keep the traces as ctx attributes
                # until the last tensor referring to them goes), not when the next chunk
                # reassigns the names: the next chunk's forward must not hold two graphs
                del h, loss, per_step
        finally:
            for _, layer in layers:
                if is_synapse(layer):
                    layer.eligibility = None
        for name, chunks in kept.items():
            model.layers[name].last_input = torch.cat(chunks)
        self.add_penalty()
        return total
