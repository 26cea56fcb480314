r"""Online training through time (OTTT; Xiao et al., NeurIPS 2022), the ``ottt`` strategy.

The network runs one step at a time. Every synapse layer keeps a presynaptic trace
:math:`\hat a_t = \lambda \hat a_{t-1} + s_t` (:math:`\lambda` the membrane decay of the
neuron layer it feeds, the readout's for the last layer). Each step has its own loss
:math:`L_t = \frac1T\,\mathrm{CE}(o_t, y)` on the readout :math:`o_t`; its gradient flows
through the current step only (the neuron states of earlier steps are detached) and
the weight gradient of every layer is taken from the trace
(:mod:`neuroplastic.eligibility`):

.. math:: \nabla_W L = \sum_t \delta_t \hat a_t^\top, \qquad
          \delta_t = \partial L_t / \partial I_t \ \text{(spatial backprop at step } t)

accumulated in ``weight.grad`` step after step (OTTT-A: one optimizer step per
minibatch). No graph is kept across steps, so memory does not grow with ``T``; the input
is encoded step by step (:meth:`~neuroplastic.encoders._Encoder.steps`) for the same
reason. With ``T = 1`` the gradient equals BPTT's exactly; for the readout weights it
is the exact gradient of :math:`\sum_t L_t` (the LI readout is linear).

Plugins see the traces as the presynaptic activity: a layer with ``capture`` gets
``last_input = [\hat a_0, ..., \hat a_{T-1}]`` after the step (HLOP's Hebbian rule on
traces, as in the paper's OTTT path; this record does grow with ``T``). Sparse layers
multiply their gradient by the mask (gradient on existing synapses only). Recurrent
layers are refused (use ``eprop`` or ``bptt``).
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..eligibility import Eligibility
from ..neurons import Neuron
from ..synapses import is_synapse
from .base import Trainer
from .stepping import detach_state, per_step_loss, postsynaptic_leaks

__all__ = ["OTTTTrainer"]


class OTTTTrainer(Trainer):
    """Online training through time with presynaptic traces."""

    name = "ottt"

    def check_model(self) -> None:
        for name, layer in self.model.layers.items():
            if hasattr(layer, "rec"):
                raise UserError(f"the ottt trainer trains feed-forward networks; layer {name!r} is recurrent "
                                "(use --trainer eprop or bptt)")
        self.leaks = postsynaptic_leaks(self.model)

    def compute_gradients(self, x: torch.Tensor, head: int | None) -> torch.Tensor:
        model = self.model
        model.reset()
        layers = list(model.layers.items())
        T = self.encoder.time_steps
        traces: dict[str, torch.Tensor] = {}
        bias_trace: dict[str, float] = {}
        kept: dict[str, list[torch.Tensor]] = {n: [] for n, m in layers if is_synapse(m) and m.capture}
        total = torch.zeros(())
        steps = 0
        try:
            for s in self.encoder.steps(x.to(self.device), self.generator):
                h = s.unsqueeze(0)
                for name, layer in layers:
                    if is_synapse(layer):
                        lam = self.leaks[name]
                        pre = h.detach()
                        traces[name] = pre if name not in traces else lam * traces[name] + pre
                        bias_trace[name] = 1.0 + lam * bias_trace.get(name, 0.0)
                        layer.eligibility = Eligibility(traces[name], bias_trace[name])
                        h = layer(h)
                        layer.eligibility = None
                        if name in kept:
                            kept[name].append(traces[name][0])
                    else:
                        h = layer(h)
                out = h[0]
                if head is not None and model.n_heads > 1:
                    out = out[..., head * model.n_out:(head + 1) * model.n_out]
                loss = per_step_loss(out, self.targets, T)
                loss.backward()
                total = total + loss.detach()
                for m in model.modules():
                    if isinstance(m, Neuron):
                        detach_state(m)
                steps += 1
        finally:
            for _, layer in layers:
                if is_synapse(layer):
                    layer.eligibility = None
        for name, rows in kept.items():
            model.layers[name].last_input = torch.stack(rows)
        self.add_penalty()
        return total * (T / max(steps, 1))
