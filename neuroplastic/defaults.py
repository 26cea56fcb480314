"""The embedded default experiment (``neuroplastic run`` with no arguments).

Permuted scikit-learn digits (28x28, task 0 unpermuted), MLP 784-256-10 of LIF neurons
with an LI readout, T=6 steps of the ``direct`` encoder (the pixel intensity as a constant
input current, as HLOP's PMNIST code feeds static images), SGD; methods side by side.

The encoder was ``rate`` (Bernoulli) before issue 12: on 10 permuted tasks HLOP then
forgets 3.6-4 points (``neuroplastic run --method hlop --tasks 10``: ACC 89.5, BWT -4.0;
on the x4 augmented proxy 90.7 / -3.6) against 1.9 and 1.0 with ``direct`` (93.2 / -1.9;
95.4 / -1.0): Bernoulli noise spreads every task's activity over all input dimensions,
outside the subspace HLOP protects (docs/results.md). Finishes in about 12 seconds
on 2 CPU cores.
"""

from __future__ import annotations

from .config import RunConfig, config_from_dict

DEFAULT = {
    "methods": ["finetune", "hlop", "multitask"],
    "seed": 0,
    "out": "runs/default",
    "data": {"dataset": "digits", "stream": "permuted", "tasks": 5},
    "model": {"arch": "mlp", "hidden": [256], "neuron": "lif", "tau_mem": 2e-3, "dt": 1e-3},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "time_steps": 6, "encoder": "direct"},
}


def default_config() -> RunConfig:
    """A fresh validated copy of the default run."""
    import copy

    return config_from_dict(copy.deepcopy(DEFAULT))
