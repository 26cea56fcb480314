r"""Differentiation on spike representation (DSR; Meng et al., CVPR 2022), the ``dsr``
strategy: the trainer of HLOP's main results.

The forward pass is the spiking network itself, run without a graph (the fast inference
kernels). The backward pass goes through the *spike representation*: for a LIF layer
with decay :math:`\lambda` (per-step input gain :math:`g`, threshold :math:`\vartheta`)
the weighted firing rate

.. math:: r = \frac{\sum_{t} \lambda^{T-1-t} s_t}{\sum_t \lambda^{T-1-t}}
          \;\approx\; f(u) = \mathrm{clamp}\Big(\frac{g\,u + (1-\lambda)\,v_{leak}}{\vartheta},\,0,\,1\Big),
          \qquad u = W \hat r_{in} + b,

where :math:`\hat r_{in}` is the input's weighted rate with the same :math:`\lambda`
(subtract reset; IF neurons have :math:`\lambda = 1`: plain rates). Each layer's
representation is the measured rate with the mapping's gradient,
:math:`\hat r = r + f(u) - \mathrm{sg}(f(u))` (sg: stop-gradient), and the loss is
differentiated through these maps only: one small graph whatever ``T``. The readout
stays exact: for the LI readout :math:`o_t = \kappa o_{t-1} + g_o (W s_t + b)` the
``mean`` / ``last`` decoders are linear, :math:`\mathrm{logits} = W p + C b` with
:math:`p = \sum_t c_t s_t`, :math:`C = \sum_t c_t`
(``mean``: :math:`c_t = \frac{g_o}{T}\sum_{t' \ge t}\kappa^{t'-t}`; ``last``:
:math:`c_t = g_o \kappa^{T-1-t}`), so the readout weights get their exact gradient and
the last hidden layer receives :math:`C\,W^\top \delta`. A spiking readout with the
``count`` (or ``mean``) decoder is a representation layer like the others.

Plugins see the representation: a layer with ``capture`` gets
``last_input = r_in[None]`` (``[1, B, ...]``, the weighted rates; HLOP's Hebbian rule on
rates, as in the paper's DSR runs). Supports LIF and IF layers (dense, conv, sparse);
recurrent, adaptive and current-based layers are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..neurons import IF, LI, LIF, Neuron
from ..synapses import is_synapse
from .base import Trainer, decode
from .stepping import neuron_leak

__all__ = ["DSRTrainer", "weighted_rate", "rate_map"]


def weighted_rate(s: torch.Tensor, lam: float) -> torch.Tensor:
    r""":math:`\sum_t \lambda^{T-1-t} s_t / \sum_t \lambda^{T-1-t}` over the first dim."""
    T = s.shape[0]
    w = torch.tensor([lam ** (T - 1 - t) for t in range(T)], dtype=s.dtype, device=s.device)
    return torch.tensordot(w / w.sum(), s, dims=([0], [0]))


def rate_map(layer: Neuron, u: torch.Tensor) -> torch.Tensor:
    r"""DSR's map from the weighted input :math:`u` to the firing rate,
    :math:`\mathrm{clamp}((g u + (1-a) v_{leak}) / \vartheta, 0, 1)`."""
    a, g = layer.coefficients()
    v_th, v_leak = layer.v_th, layer.v_leak
    if isinstance(v_th, torch.Tensor):
        v_th = v_th.to(u)
    if isinstance(v_leak, torch.Tensor):
        v_leak = v_leak.to(u)
    return torch.clamp((g * u + (1 - a) * v_leak) / v_th, 0.0, 1.0)


def readout_coefficients(readout: LI, T: int, decoder: str) -> torch.Tensor:
    """The ``c_t`` with ``logits = sum_t c_t (W s_t + b)`` for an LI readout."""
    k, g = readout.coefficients()
    k, g = float(k), float(g)
    tail = k ** torch.arange(T - 1, -1, -1, dtype=torch.float64)  # kappa^(T-1-t)
    if decoder == "mean":  # g/T sum_{t' >= t} kappa^(t'-t) = g/T (sum_{j <= T-1-t} kappa^j)
        return g / T * torch.cumsum(tail.flip(0), 0).flip(0)
    if decoder == "last":
        return g * tail
    raise UserError(f"the dsr trainer decodes an LI readout with decoder mean or last, got {decoder!r}")


class DSRTrainer(Trainer):
    """Gradients through the weighted firing-rate representation."""

    name = "dsr"

    def check_model(self) -> None:
        layers = list(self.model.layers.items())
        for name, layer in layers:
            if hasattr(layer, "rec"):
                raise UserError(f"the dsr trainer trains feed-forward networks; layer {name!r} is recurrent")
            if isinstance(layer, Neuron) and layer.spiking and type(layer) not in (LIF, IF):
                raise UserError(f"the dsr trainer supports lif and if neurons; layer {name!r} is "
                                f"{type(layer).__name__}")
        readout = layers[-1][1]
        if isinstance(readout, LI) and type(readout) is LI:
            readout_coefficients(readout, 1, self.settings.decoder)  # checks the decoder
        elif not (isinstance(readout, Neuron) and readout.spiking and self.settings.decoder in ("count", "mean")):
            raise UserError("the dsr trainer needs an LI readout (decoder mean or last) or a spiking readout "
                            "(decoder count or mean)")
        syn = [n for n, m in layers if is_synapse(m)]
        self.last_synapse = syn[-1]

    def compute_gradients(self, x: torch.Tensor, head: int | None) -> torch.Tensor:
        model = self.model
        layers = list(model.layers.items())
        last = model.layers[self.last_synapse]
        spikes = self.local(self.encoder(x.to(self.device), self.generator))
        self.inputs = spikes
        T = spikes.shape[0]
        saved = last.capture
        last.capture = True
        try:
            with torch.no_grad(), model.recording(membranes=False):
                out = model(spikes, head=head)
            rec = dict(model.recordings)
            s_last = last.last_input
        finally:
            last.capture = saved
        logits_true = decode(out, self.settings.decoder)

        first_neuron = next(m for _, m in layers if isinstance(m, Neuron))
        r = weighted_rate(spikes, neuron_leak(first_neuron))
        u = None
        spiking_readout = not isinstance(layers[-1][1], LI)
        for name, layer in layers:
            if is_synapse(layer) and name == self.last_synapse and not spiking_readout:
                break
            if is_synapse(layer):
                u = layer(r.unsqueeze(0))[0]
            elif isinstance(layer, Neuron):
                f = rate_map(layer, u)
                r = weighted_rate(rec[name]["spikes"], neuron_leak(layer)) + f - f.detach()
            else:
                r = layer(r.unsqueeze(0))[0]
        if spiking_readout:
            z = r * (T if self.settings.decoder == "count" else 1.0)
        else:
            c = readout_coefficients(layers[-1][1], T, self.settings.decoder).to(s_last)
            p = torch.tensordot(c, s_last, dims=([0], [0]))
            # through the module, so its hooks see the product (GraNet's dense gradient)
            z = last(p.unsqueeze(0))[0] + ((c.sum() - 1) * last.bias if last.bias is not None else 0.0)
            z = z + c.sum() * F.linear(r - r.detach(), last.effective_weight().detach())
            if last.capture:
                last.last_input = r.detach().unsqueeze(0)
        if head is not None and model.n_heads > 1:
            z = z[..., head * model.n_out:(head + 1) * model.n_out]
        logits = logits_true + z - z.detach()
        loss = F.cross_entropy(logits, self.targets)
        return self.backward(loss)
