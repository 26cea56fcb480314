"""The embedded default experiment (``neuroplastic run`` with no arguments).

Permuted scikit-learn digits (28x28, task 0 unpermuted), MLP 784-256-10 of LIF neurons
with an LI readout, T=6 Bernoulli rate steps, SGD; methods side by side. Sized to finish
in about 15 seconds on 2 CPU cores.
"""

from __future__ import annotations

from .config import RunConfig, config_from_dict

DEFAULT = {
    "methods": ["finetune", "hlop", "multitask"],
    "seed": 0,
    "out": "runs/default",
    "data": {"dataset": "digits", "stream": "permuted", "tasks": 5},
    "model": {"arch": "mlp", "hidden": [256], "neuron": "lif", "tau_mem": 2e-3, "dt": 1e-3},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "time_steps": 6},
}


def default_config() -> RunConfig:
    """A fresh validated copy of the default run."""
    import copy

    return config_from_dict(copy.deepcopy(DEFAULT))
