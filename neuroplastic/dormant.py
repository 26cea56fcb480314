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

__all__ = ["neuron_scores", "dormant_mask", "dormant_ratio", "dormant_ratios"]


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
