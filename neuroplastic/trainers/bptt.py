r"""Surrogate-gradient BPTT (the ``bptt`` trainer strategy).

One step: encode the minibatch to spikes ``[T, B, ...]``, run the network (each synapse
layer is one batched op over all T; each LIF layer one fused autograd node), decode the
readout trace to logits, cross-entropy (+ plugin penalties), one ``backward`` through
all ``T`` steps. Memory grows linearly with ``T`` (the graph keeps every step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Trainer

__all__ = ["BPTTTrainer"]


class BPTTTrainer(Trainer):
    """Backpropagation through time over the whole sequence."""

    name = "bptt"
    graph_through_time = True

    def compute_gradients(self, x: torch.Tensor, head: int | None) -> torch.Tensor:
        logits = self.forward_logits(x, head)
        loss = F.cross_entropy(logits, self.targets)
        return self.backward(loss)
