"""Helpers of the trainers that run a network one time step at a time."""

from __future__ import annotations

import torch

from ..errors import UserError
from ..neurons import Neuron
from ..synapses import is_synapse

__all__ = ["postsynaptic_leaks", "neuron_leak", "step_weight"]


def neuron_leak(m: Neuron) -> float:
    """The membrane decay :math:`a` of one step (1 for IF); per-neuron values are averaged
    (a presynaptic trace has one decay)."""
    a, _ = m.coefficients()
    return float(a.mean()) if isinstance(a, torch.Tensor) else float(a)


def postsynaptic_leaks(model) -> dict[str, float]:
    """``{synapse name: decay of the first neuron layer after it}``: the :math:`\\lambda` of
    its presynaptic trace."""
    out: dict[str, float] = {}
    pending: list[str] = []
    for name, layer in model.layers.items():
        if is_synapse(layer):
            pending.append(name)
        elif isinstance(layer, Neuron):
            for p in pending:
                out[p] = neuron_leak(layer)
            pending = []
    if pending:
        raise UserError(f"synapse layer {pending[0]!r} is not followed by a neuron layer")
    return out


def step_weight(decoder: str, t: int, T: int) -> float:
    r"""The weight :math:`w_t` of step ``t`` in the online trainers' loss
    :math:`\sum_t w_t\,\mathrm{CE}(o_t, y)`: the readout is read where the decoder reads it,
    ``last`` at the final step only (:math:`w_{T-1} = 1`), every other decoder at every step
    (:math:`w_t = 1/T`)."""
    if decoder == "last":
        return 1.0 if t == T - 1 else 0.0
    return 1.0 / T
