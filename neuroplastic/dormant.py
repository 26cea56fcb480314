r"""Dormant ratio of spiking layers (DrM, Xu et al. ICLR 2024; ReDo, Sokar et al. 2023).

For a layer with neurons :math:`i = 1..N` and activity :math:`h_i` (for spiking layers the
firing rate over time steps and samples), the score is

.. math::  s_i = \frac{\mathbb{E}|h_i|}{\frac1N \sum_k \mathbb{E}|h_k|}

and neuron :math:`i` is dormant when :math:`s_i \le \tau` (``tau = 0.025`` as in DrM). A
neuron that never fires has :math:`s_i = 0` and is dormant; a layer where nothing fires
is entirely dormant. The overall ratio pools the neurons of all layers.
"""

from __future__ import annotations

import torch

__all__ = ["neuron_scores", "dormant_mask", "dormant_ratio", "dormant_ratios", "scores_from_rates",
           "FiringRateMonitor", "postsynaptic_neurons", "perturb_factor"]


def neuron_scores(activity: torch.Tensor) -> torch.Tensor:
    """Scores ``s_i`` from activity ``[T, B, N...]`` (or ``[B, N...]``); neurons are the
    trailing dims after time and batch (conv channels x positions are separate neurons)."""
    a = activity.detach().abs().float()
    lead = 2 if a.dim() >= 3 else 1
    rate = a.reshape(*a.shape[:lead], -1).mean(dim=tuple(range(lead)))
    mean = rate.mean()
    if mean <= 0:
        return torch.zeros_like(rate)
    return rate / mean


def dormant_mask(activity: torch.Tensor, tau: float = 0.025) -> torch.Tensor:
    """Boolean ``[N]``: which neurons are dormant (``s_i <= tau``)."""
    return neuron_scores(activity) <= tau


def dormant_ratio(activity: torch.Tensor, tau: float = 0.025) -> float:
    """Fraction of dormant neurons in one layer."""
    return float(dormant_mask(activity, tau).float().mean())


def dormant_ratios(recordings: dict[str, torch.Tensor], tau: float = 0.025) -> dict[str, float]:
    """Per-layer ratios plus ``"overall"`` (all neurons pooled) from ``{layer: spikes}``."""
    out: dict[str, float] = {}
    masks = []
    for name, spikes in recordings.items():
        m = dormant_mask(spikes, tau)
        out[name] = float(m.float().mean())
        masks.append(m)
    if masks:
        out["overall"] = float(torch.cat(masks).float().mean())
    return out


def scores_from_rates(rates: torch.Tensor) -> torch.Tensor:
    """Scores ``s_i`` from per-neuron mean activities ``[N]`` (already averaged over time
    and samples): ``rate_i / mean_k rate_k`` (all zeros when nothing fires)."""
    rates = rates.detach().abs().float().reshape(-1)
    mean = rates.mean() if rates.numel() else rates.new_zeros(())
    if mean <= 0:
        return torch.zeros_like(rates)
    return rates / mean


class FiringRateMonitor:
    """Accumulates per-neuron firing rates of spiking layers during training.

    A forward hook on each neuron layer adds the spike counts of every call (time steps
    and samples summed) while :attr:`enabled`; :meth:`rates` returns the mean rate per
    neuron since the last :meth:`clear`, shaped like one sample of the layer (``[N]``,
    or ``[C, H, W]`` for conv layers). It never keeps spike tensors, so it costs one sum
    per layer and step.
    """

    def __init__(self, layers, enabled: bool = True) -> None:
        self.enabled = enabled
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in layers]

    def _hook(self, name: str):
        def fwd(module, inputs, output):
            if not self.enabled or not torch.is_tensor(output):
                return
            z = output.detach()
            lead = 2 if z.dim() >= 2 else 1  # [T, B, ...]
            n = 1
            for d in z.shape[:lead]:
                n *= int(d)
            s = z.reshape(n, *z.shape[lead:]).float().sum(0)
            self.sums[name] = s if name not in self.sums else self.sums[name] + s
            self.counts[name] = self.counts.get(name, 0) + n

        return fwd

    def rates(self) -> dict[str, torch.Tensor]:
        """``{layer: mean rate per neuron}`` since the last clear."""
        return {k: v / max(self.counts[k], 1) for k, v in self.sums.items()}

    def ratios(self, tau: float = 0.025) -> dict[str, float]:
        """Per-layer dormant ratios and ``"overall"`` (neurons pooled) from the rates."""
        out: dict[str, float] = {}
        masks = []
        for name, r in self.rates().items():
            m = scores_from_rates(r) <= tau
            out[name] = float(m.float().mean())
            masks.append(m)
        if masks:
            out["overall"] = float(torch.cat(masks).float().mean())
        return out

    def all_reduce(self) -> None:
        """Data parallel: add up the ranks' sums and counts (each rank saw its shard of the
        minibatches), so every rank holds the rates of the whole minibatches. A layer some
        rank has not seen is fine (it adds nothing). No-op in a single process."""
        from . import distributed

        if not distributed.is_distributed():
            return
        mine = {k: (v.detach().cpu(), self.counts[k]) for k, v in self.sums.items()}
        device = next((v.device for v in self.sums.values()), torch.device("cpu"))
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for part in distributed.all_gather_object(mine):
            for k, (v, c) in part.items():
                sums[k] = v if k not in sums else sums[k] + v
                counts[k] = counts.get(k, 0) + int(c)
        self.sums = {k: v.to(device) for k, v in sums.items()}
        self.counts = counts

    def clear(self) -> None:
        self.sums, self.counts = {}, {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def postsynaptic_neurons(model) -> dict[str, str]:
    """``{synapse name: neuron layer name}``: the spiking layer each synapse drives (the
    first spiking neuron after it, before the next synapse), for an
    :class:`~neuroplastic.network.SNN`. A recurrent layer's own synapse ``"<layer>.rec"``
    drives that layer. Synapses that drive no spiking layer (the readout) are absent."""
    from .neurons import Neuron
    from .synapses import is_synapse

    out: dict[str, str] = {}
    pending: str | None = None
    for name, layer in model.layers.items():
        if is_synapse(layer):
            pending = name
        elif isinstance(layer, Neuron) and pending is not None:
            if layer.spiking:
                out[pending] = name
            pending = None
        if isinstance(layer, Neuron) and layer.spiking and is_synapse(getattr(layer, "rec", None)):
            out[f"{name}.rec"] = name
    return out


def perturb_factor(beta: float, k: float = 2.0, a_min: float = 0.2, a_max: float = 0.9) -> float:
    """DrM's interpolation weight ``a = clip(1 - k * beta, a_min, a_max)`` for
    ``theta <- a * theta + (1 - a) * theta_init`` (``beta``: the dormant ratio)."""
    return float(min(max(1.0 - k * float(beta), a_min), a_max))
