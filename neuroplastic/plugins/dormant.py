r"""The ``dormant`` plugin: dormant-ratio curves during training, and DrM's perturbation.

**Monitor.** Firing rates of every spiking layer are accumulated over the training
minibatches (a forward hook, no spike tensors kept); every ``every`` steps (and at each
task end) the per-layer and overall dormant ratios are logged (score
:math:`s_i = \bar r_i / \frac1N\sum_k \bar r_k`, dormant when :math:`s_i \le \tau`,
``tau = 0.025``; see :mod:`neuroplastic.dormant`). The curves go to ``run.h5`` under
``/plugins/dormant/`` (``step``, ``overall``, ``layers/<name>``) and the last values to
``metrics.json`` as ``dormant_train``. (The runner's own ``dormant_ratio`` is measured on
test data after each task.)

**Perturbation** (DrM, Xu et al. ICLR 2024), off by default: every ``perturb_every``
steps and/or at the start of every task after the first, each trainable synapse
parameter moves toward a re-initialisation,

.. math:: \theta \leftarrow a\,\theta + (1 - a)\,\theta_{init},\qquad
          a = \mathrm{clip}(1 - k\beta,\ a_{min},\ a_{max}),

with :math:`\beta` the last overall dormant ratio (``perturb_rate`` :math:`k = 2`,
``perturb_min`` 0.2, ``perturb_max`` 0.9 as in DrM). :math:`\theta_{init}` is a fresh
random initialisation (``perturb_target = "fresh"``, DrM's choice) or the network's
initial weights (``"initial"``). Masks are respected (masked weights stay 0) and the
optimizer state of the perturbed parameters is reset, as DrM does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..dormant import FiringRateMonitor, perturb_factor
from ..errors import UserError
from ..sparse import sparse_layers
from .base import Plugin

__all__ = ["DormantOptions", "DormantMonitor", "perturb"]


@dataclass
class DormantOptions:
    """The ``[dormant]`` section."""

    tau: float = 0.025
    every: int = 25
    perturb_every: int = 0
    perturb_on_task_start: bool = False
    perturb_rate: float = 2.0
    perturb_min: float = 0.2
    perturb_max: float = 0.9
    perturb_target: str = "fresh"
    seed: int = 0  # offset on the run's seed (--seed) for this plugin's random choices

    def __post_init__(self) -> None:
        def bad(key, want):
            raise UserError(f"dormant.{key} must be {want}, got {getattr(self, key)!r}")

        for key in ("every",):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(key, "a positive integer (steps)")
        v = self.perturb_every
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            bad("perturb_every", "a non-negative integer (steps; 0 = never)")
        if not isinstance(self.perturb_on_task_start, bool):
            bad("perturb_on_task_start", "true or false")
        for key in ("tau", "perturb_rate", "perturb_min", "perturb_max"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                bad(key, "a non-negative number")
        if not self.tau < 1:
            bad("tau", "below 1")
        if not 0 <= self.perturb_min <= self.perturb_max <= 1:
            bad("perturb_max", f"in [perturb_min ({self.perturb_min}), 1]")
        if self.perturb_target not in ("fresh", "initial"):
            bad("perturb_target", "'fresh' or 'initial'")


@torch.no_grad()
def perturb(
    model: torch.nn.Module,
    a: float,
    optimizer: torch.optim.Optimizer | None = None,
    target: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> int:
    """``theta <- a * theta + (1 - a) * theta_init`` on every trainable synapse parameter.

    ``target`` maps ``"<layer>.weight"`` / ``"<layer>.bias"`` to the initial values; without
    it each layer is re-initialised afresh (its ``reset_parameters``, seeded by ``seed``, on
    the generators of the devices the model lives on; every generator is left as it was).
    Masked weights stay zero; the optimizer state of the changed parameters is cleared.
    Returns the number of parameters changed.
    """
    n = 0
    gpus = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=gpus):
        # not torch.manual_seed: it would also reseed every other GPU's generator, which
        # fork_rng does not restore
        torch.default_generator.manual_seed(seed)
        for d in gpus:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        for name, layer in sparse_layers(model):
            if target is None:
                fresh = copy.deepcopy(layer)
                fresh._forward_hooks.clear()
                fresh.reset_parameters()
                new = {"weight": fresh.weight, "bias": getattr(fresh, "bias", None)}
            else:
                new = {"weight": target.get(f"{name}.weight"), "bias": target.get(f"{name}.bias")}
            for pname in ("weight", "bias"):
                p = getattr(layer, pname, None)
                if p is None or not p.requires_grad or new[pname] is None:
                    continue
                p.mul_(a).add_(new[pname].to(p.device), alpha=1.0 - a)
                if pname == "weight" and getattr(layer, "mask", None) is not None:
                    p.mul_(layer.mask)
                if optimizer is not None and p in optimizer.state:
                    optimizer.state[p] = {}
                n += 1
    return n


class DormantMonitor(Plugin):
    """Dormant-ratio curves over training, optionally DrM-style perturbation."""

    name = "dormant"
    Options = DormantOptions

    def __init__(self, options: DormantOptions | None = None) -> None:
        self.opts = options if options is not None else DormantOptions()
        self.step = 0
        self.task_id = 0
        self.monitor: FiringRateMonitor | None = None
        self.init_params: dict[str, torch.Tensor] | None = None
        self.hist: dict[str, Any] = {
            "step": [],
            "task": [],
            "overall": [],
            "layers": {},
            "perturb_step": [],
            "perturb_factor": [],
            "perturb_beta": [],
        }
        self.last: dict[str, float] = {}

    def setup(self, trainer) -> None:
        super().setup(trainer)
        model = trainer.model
        if not hasattr(model, "neurons"):
            raise UserError("the dormant plugin needs an SNN model (model.neurons())")
        self.monitor = FiringRateMonitor(model.neurons(), enabled=False)
        if self.opts.perturb_target == "initial":
            self.init_params = {
                f"{n}.{p}": getattr(m, p).detach().clone()
                for n, m in sparse_layers(model)
                for p in ("weight", "bias")
                if getattr(m, p, None) is not None
            }

    def before_forward(self) -> None:
        # training minibatches only (data parallel: not the stand-in sample of an empty shard)
        self.monitor.enabled = not getattr(self.trainer, "shard_empty", False)

    def after_step(self) -> None:
        self.monitor.enabled = False
        self.step += 1
        if self.step % self.opts.every == 0:
            self._log()
        if self.opts.perturb_every and self.step % self.opts.perturb_every == 0:
            self.perturb()

    def on_task_start(self, task_id, task) -> None:
        self.task_id = task_id
        if task_id > 0 and self.opts.perturb_on_task_start:
            self.perturb()

    def on_task_end(self, task_id, task) -> None:
        if distributed.any_rank(bool(self.monitor.counts)):
            self._log()

    def _log(self) -> None:
        self.monitor.all_reduce()  # data parallel: the firing counts of every rank's shard
        ratios = self.monitor.ratios(self.opts.tau)
        self.monitor.clear()
        if not ratios:
            return
        self.last = ratios
        h = self.hist
        h["step"].append(self.step)
        h["task"].append(self.task_id)
        h["overall"].append(ratios["overall"])
        for k, v in ratios.items():
            if k != "overall":
                h["layers"].setdefault(k, []).append(v)

    def perturb(self) -> float:
        """Apply DrM's perturbation now (beta = the last overall dormant ratio); returns a."""
        if not self.last and distributed.any_rank(bool(self.monitor.counts)):
            self._log()
        beta = self.last.get("overall", 0.0)
        o = self.opts
        a = perturb_factor(beta, o.perturb_rate, o.perturb_min, o.perturb_max)
        perturb(
            self.trainer.model,
            a,
            self.trainer.optimizer,
            self.init_params,
            seed=self.base_seed() * 100003 + len(self.hist["perturb_step"]),
        )
        self.hist["perturb_step"].append(self.step)
        self.hist["perturb_factor"].append(a)
        self.hist["perturb_beta"].append(beta)
        return a

    def metrics(self) -> dict[str, Any]:
        return {"dormant_train": dict(self.last), "perturbations": len(self.hist["perturb_step"])}

    def records(self) -> dict[str, Any]:
        h = self.hist
        if not h["step"] and not h["perturb_step"]:
            return {}
        out: dict[str, Any] = {
            "step": np.asarray(h["step"], dtype=np.int64),
            "task": np.asarray(h["task"], dtype=np.int64),
            "overall": np.asarray(h["overall"], dtype=np.float64),
            "layers": {k: np.asarray(v, dtype=np.float64) for k, v in h["layers"].items()},
        }
        if h["perturb_step"]:
            out["perturb_step"] = np.asarray(h["perturb_step"], dtype=np.int64)
            out["perturb_factor"] = np.asarray(h["perturb_factor"], dtype=np.float64)
            out["perturb_beta"] = np.asarray(h["perturb_beta"], dtype=np.float64)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "task_id": self.task_id, "hist": self.hist, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state.get("step", self.step)
        self.task_id = state.get("task_id", self.task_id)
        self.hist = state.get("hist", self.hist)
        self.last = state.get("last", self.last)
