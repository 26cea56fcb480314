"""Helpers of the trainers that run a network one time step at a time."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import UserError
from ..neurons import Neuron
from ..synapses import is_synapse

__all__ = ["detach_state", "postsynaptic_leaks", "neuron_leak", "per_step_loss", "step_weight"]


def detach_state(m: nn.Module) -> None:
    """Cut a neuron's state from the graph of the steps before (its values stay)."""
    st = getattr(m, "state", None)
    if isinstance(st, torch.Tensor):
        m.state = st.detach()
    elif dataclasses.is_dataclass(st):
        m.state = type(st)(**{f.name: getattr(st, f.name).detach() for f in dataclasses.fields(st)})
    i = getattr(m, "i_state", None)
    if isinstance(i, torch.Tensor):
        m.i_state = i.detach()


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


def per_step_loss(out_t: torch.Tensor, targets: torch.Tensor, T: int) -> torch.Tensor:
    r"""The online trainers' loss of one step, :math:`\frac1T \mathrm{CE}(o_t, y)`: the mean
    over steps of the cross-entropy of the readout at each step (OTTT's and e-prop's loss)."""
    return torch.nn.functional.cross_entropy(out_t, targets) / T


def step_weight(decoder: str, t: int, T: int) -> float:
    r"""The weight :math:`w_t` of step ``t`` in the online trainers' loss
    :math:`\sum_t w_t\,\mathrm{CE}(o_t, y)`: the readout is read where the decoder reads it,
    ``last`` at the final step only (:math:`w_{T-1} = 1`), every other decoder at every step
    (:math:`w_t = 1/T`)."""
    if decoder == "last":
        return 1.0 if t == T - 1 else 0.0
    return 1.0 / T
