"""What a run records after each task for its figures (``run.h5``), bounded in size.

After task ``i`` the runner calls :meth:`TaskProbe.after_task`, which runs the network once
(no gradient) on

* a few **fixed test inputs** (the first ``n_samples`` test samples of task 0, encoded with
  a fixed seed) and keeps, per spiking layer, the spikes of at most ``max_neurons`` neurons
  (a fixed, evenly spaced choice) and the membrane of ``n_traces`` of them;
* up to ``n_rate`` test samples of **every** task, and keeps each neuron's firing rate
  (spikes per step, averaged over time and samples) and the dormant ratio (DrM/ReDo).

Layout inside ``run.h5`` (``L`` = spiking layer name, ``i`` = task index)::

    /probe/neurons/L              int   [n_kept]                 which neurons are kept
    /probe/trace_neurons/L        int   [n_traces]               whose membrane is kept
    /probe/labels                 int   [n_samples]              labels of the fixed inputs
    /probe/input                  bool  [T, n_samples, n_in_kept] their input spikes (at most
                                                                 ``max_neurons`` inputs, evenly spaced)
    /probe/input_neurons          int   [n_in_kept]              which inputs (flat index)
    /probe/task_i/L/spikes        bool  [T, n_samples, n_kept]
    /probe/task_i/L/v             float32 [T, n_samples, n_traces]  pre-reset membrane
    /probe/task_i/L/v_th          float                          the layer's threshold
    /rates/task_i/L               float32 [n_neurons]            firing rate of every neuron
    /sparsity/L                   float [tasks_done]             fraction of absent synapses
    /dormant/L                    float [tasks_done]             dormant ratio (as before)

With the defaults (4 samples, <= 256 neurons, 8 traces) a 10-task run of a 784-800-800-10
network at T = 100 records ~2.5 MB.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .dormant import dormant_ratios

__all__ = ["TaskProbe"]


def _spread(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` evenly spaced indices of ``range(n)``."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


class TaskProbe:
    """Records spikes, membranes, firing rates, dormant ratios and sparsity after each task."""

    def __init__(self, trainer, stream, n_samples: int = 4, max_neurons: int = 256, n_traces: int = 8,
                 n_rate: int = 256) -> None:
        from neuroplastic.datasets import iterate_minibatches

        self.trainer, self.stream = trainer, stream
        self.n_rate, self.max_neurons, self.n_traces = n_rate, max_neurons, n_traces
        self.x, y = next(iterate_minibatches(stream.tasks[0].test, n_samples, False, None))
        self.head0 = stream.tasks[0].head
        self.tree: dict[str, Any] = {"probe": {"labels": y.numpy().astype(np.int64)}, "rates": {},
                                     "sparsity": {}, "dormant": {}}

    def _record(self, x: torch.Tensor, head, membranes: bool) -> tuple[torch.Tensor, dict[str, dict]]:
        """The encoded input and every layer's recordings (encoding seed 1, as the runner's
        dormant pass always used)."""
        model = self.trainer.model
        with torch.no_grad(), model.recording(membranes):
            self.trainer.forward_logits(x, head, torch.Generator().manual_seed(1))
            return self.trainer.inputs, dict(model.recordings)

    @torch.no_grad()
    def after_task(self, i: int, sparsity: dict[str, float]) -> dict[str, float]:
        """Record task ``i``; returns the dormant ratios (per layer and ``overall``)."""
        from neuroplastic.datasets import iterate_minibatches

        model = self.trainer.model
        probe = self.tree["probe"]
        inputs, recs = self._record(self.x, self.head0, membranes=True)
        if "input" not in probe:
            flat = inputs.reshape(inputs.shape[0], inputs.shape[1], -1)
            keep = _spread(flat.shape[2], self.max_neurons)
            probe["input"] = flat[:, :, keep].cpu().numpy() != 0
            probe["input_neurons"] = keep
        entry = probe.setdefault(f"task_{i}", {})
        for name, rec in recs.items():
            if "spikes" not in rec:
                continue
            z = rec["spikes"].reshape(rec["spikes"].shape[0], rec["spikes"].shape[1], -1)
            keep = probe.setdefault("neurons", {}).setdefault(name, _spread(z.shape[2], self.max_neurons))
            traces = probe.setdefault("trace_neurons", {}).setdefault(name, _spread(z.shape[2], self.n_traces))
            layer = model.layers[name]
            out = {"spikes": z[:, :, keep].cpu().numpy() != 0,
                   "v_th": float(layer.v_th.mean()) if isinstance(layer.v_th, torch.Tensor) else float(layer.v_th)}
            if "v" in rec and rec["v"] is not None:
                v = rec["v"].reshape(z.shape)
                out["v"] = v[:, :, traces].cpu().numpy().astype(np.float32)
            entry[name] = out
        spikes: dict[str, list[torch.Tensor]] = {}
        for task in self.stream.tasks:
            x, _ = next(iterate_minibatches(task.test, self.n_rate, False, None))
            _, recs = self._record(x, task.head, membranes=False)
            for name, rec in recs.items():
                if "spikes" in rec:
                    spikes.setdefault(name, []).append(rec["spikes"].reshape(*rec["spikes"].shape[:2], -1))
        pooled = {k: torch.cat(v, dim=1) for k, v in spikes.items()}
        self.tree["rates"][f"task_{i}"] = {k: v.float().mean((0, 1)).cpu().numpy().astype(np.float32)
                                           for k, v in pooled.items()}
        dormant = dormant_ratios(pooled)
        for k, v in dormant.items():
            self.tree["dormant"].setdefault(k, []).append(v)
        for k, v in sparsity.items():
            self.tree["sparsity"].setdefault(k, []).append(v)
        return dormant

