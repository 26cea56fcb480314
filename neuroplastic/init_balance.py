r"""Data-driven starting scale of the synapses that feed deeper hidden spiking layers.

PyTorch's default initialisation draws a ``Linear`` / ``Conv2d`` weight from
:math:`U(-1/\sqrt{n_{in}}, 1/\sqrt{n_{in}})`, so a neuron's input current
:math:`I = \sum_i w_i x_i` has variance :math:`\mathbb{E}[x^2] / 3`. An analog input (pixel
intensities into the first layer) gives currents of order one; spikes :math:`z \in \{0, 1\}` at
rate :math:`p` give :math:`\mathbb{E}[z^2] = p`. At the 1-2 % a first hidden layer fires at on
the digits, the second layer's membrane stays an order of magnitude below threshold (std 0.097
against 0.49 for the first layer, threshold 1), it never fires, and only the surrogate's tail
carries gradient: a 784-800-800-10 LIF network reached 24 % on one digits task, 784-256-256-10
31 %, against 94 % for 784-256-10.

**The mechanism** (:func:`balance_hidden_layers`): on one batch of the first task's training
data, each *hidden* spiking layer after the first, in order, has its incoming synapse (the
nearest layer with a weight before it: weight and bias) multiplied by

.. math:: g_k = \sigma_1 / \sigma_k,

(repeated, at most :data:`ROUNDS` times, until :math:`g_k` is within :data:`TOLERANCE` of 1:
resets make a layer that fires respond less than linearly), where :math:`\sigma_k` is the
standard deviation of layer :math:`k`'s membrane before reset over neurons, samples and steps,
and :math:`\sigma_1` the first spiking layer's. Every hidden layer then starts as excited as
the one the input drives; layers are scaled in order, so each sees its predecessors already
scaled. No constant is chosen: the first layer, which trains well from PyTorch's
initialisation, is the reference. The readout (the last neuron layer) is left alone: the loss
reaches it directly. A network with one hidden spiking layer is not touched (the embedded
default), nor is anything when :math:`\sigma_1` or :math:`\sigma_k` is zero.
``model.balance_init = false`` turns it off.
"""

from __future__ import annotations

import math

import torch

from .network import SNN
from .neurons import Neuron

__all__ = ["balance_hidden_layers", "needs_balance"]

#: corrections per layer at most, and the relative mismatch that ends them early (a silent
#: layer responds linearly: one round; a layer that fires needs two or three)
ROUNDS, TOLERANCE = 4, 0.01


def _hidden_spiking(model: SNN) -> list[tuple[int, str]]:
    """``(index, name)`` of the spiking neuron layers, the last neuron layer (readout) excluded."""
    layers = list(model.layers.items())
    neurons = [(i, n) for i, (n, m) in enumerate(layers) if isinstance(m, Neuron)]
    return [(i, n) for i, n in neurons[:-1] if layers[i][1].spiking]


def needs_balance(model: SNN) -> bool:
    """Whether ``model`` has a hidden spiking layer after the first (else nothing to scale)."""
    return len(_hidden_spiking(model)) >= 2


def _synapse_before(model: SNN, index: int) -> tuple[str, torch.nn.Module] | None:
    """``(name, layer)`` of the nearest layer before ``index`` that has a weight (skipping
    pooling, flatten); None when a neuron layer comes first."""
    for name, m in reversed(list(model.layers.items())[:index]):
        if isinstance(m, Neuron):
            return None
        if isinstance(getattr(m, "weight", None), torch.Tensor):
            return name, m
    return None


def _membrane_std(model: SNN, x: torch.Tensor, name: str) -> float:
    with torch.no_grad(), model.recording(membranes=True):
        model(x)
        v = model.recordings[name].get("v")
    return float(v.float().std()) if v is not None and v.numel() > 1 else 0.0


def balance_hidden_layers(model: SNN, x: torch.Tensor) -> dict[str, float]:
    """Scale the synapses into hidden spiking layers 2, 3, ... of ``model`` so that each
    layer's membrane std on the encoded batch ``x [T, B, ...]`` equals the first hidden
    spiking layer's (module doc). Returns the gain applied per synapse layer (by name)."""
    hidden = _hidden_spiking(model)
    if len(hidden) < 2:
        return {}
    was_training = model.training
    model.eval()
    gains: dict[str, float] = {}
    try:
        ref = _membrane_std(model, x, hidden[0][1])
        if not ref > 0:
            return {}
        for index, name in hidden[1:]:
            found = _synapse_before(model, index)
            if found is None:
                continue
            syn_name, syn = found
            total = 1.0
            for _ in range(ROUNDS):  # a layer that fires responds less than linearly: repeat
                std = _membrane_std(model, x, name)
                if not (std > 0 and math.isfinite(std)):
                    break
                g = ref / std
                if abs(g - 1.0) < TOLERANCE:
                    break
                with torch.no_grad():
                    syn.weight.mul_(g)
                    if getattr(syn, "bias", None) is not None:
                        syn.bias.mul_(g)
                total *= g
            if total != 1.0:
                gains[syn_name] = total
    finally:
        model.reset()
        model.train(was_training)
    return gains
