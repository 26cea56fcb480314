r"""EWC: Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017), with the online
variant (Schwarz et al. 2018, "Progress & Compress").

At the end of task ``t`` the diagonal Fisher information of every parameter is estimated
from squared gradients of the loss on ``fisher_samples`` training samples, in minibatches
of ``fisher_batch_size`` (GPM/HAT's estimator:
:math:`F = \frac1N \sum_b |b|\, (\nabla_\theta \mathcal L_b)^2`; ``fisher = "sampled"``
draws the labels from the model's own prediction instead of using the true ones), and
the parameters :math:`\theta^*_t` are stored. While training later tasks the loss gets

.. math::
    \text{online:}\quad \frac{\lambda}{2}\sum_i F_i\,(\theta_i - \theta^*_i)^2,
    \qquad F \leftarrow \gamma F + F_t,\ \theta^* \leftarrow \theta^*_t

    \text{separate:}\quad \frac{\lambda}{2}\sum_{s<t}\sum_i F_{s,i}\,(\theta_i - \theta^*_{s,i})^2

through the :meth:`~neuroplastic.plugins.base.Plugin.penalty` hook (it is added to the
loss before ``backward``, so its gradient goes through any later gradient transforms).
The optimizer state is reset at each task start (``reset_optimizer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import distributed
from .base import Plugin
from .projection import reset_optimizer_state

__all__ = ["EWC", "EWCOptions"]


@dataclass
class EWCOptions:
    """The ``[ewc]`` config section."""

    lam: float = 100.0            # penalty strength lambda
    online: bool = True           # one running Fisher (gamma decay) instead of one per task
    gamma: float = 1.0            # decay of the running Fisher (online)
    fisher_samples: int = 256     # training samples for the Fisher estimate
    fisher_batch_size: int = 1    # 1: the per-sample empirical Fisher
    fisher: str = "empirical"     # "empirical" (true labels) or "sampled" (model's labels)
    reset_optimizer: bool = True
    seed: int = 0  # offset on the run's seed (--seed) for this plugin's random choices

    def __post_init__(self) -> None:
        if isinstance(self.lam, bool) or not isinstance(self.lam, int | float) or self.lam < 0:
            raise ValueError(f"ewc.lam must be a non-negative number, got {self.lam!r}")
        if not isinstance(self.gamma, int | float) or not 0 <= self.gamma <= 1:
            raise ValueError(f"ewc.gamma must be in [0, 1], got {self.gamma!r}")
        for key in ("fisher_samples", "fisher_batch_size"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ewc.{key} must be a positive integer, got {v!r}")
        if self.fisher not in ("empirical", "sampled"):
            raise ValueError(f"ewc.fisher must be 'empirical' or 'sampled', got {self.fisher!r}")


class EWC(Plugin):
    """Quadratic penalty anchoring parameters important to old tasks."""

    name = "ewc"
    Options = EWCOptions

    def __init__(self, options: EWCOptions | None = None) -> None:
        self.opts = options or EWCOptions()
        self.task = -1
        # online: one entry; separate: one per finished task
        self.fisher: list[dict[str, torch.Tensor]] = []
        self.anchor: list[dict[str, torch.Tensor]] = []
        self.fisher_mean: list[float] = []
        self.last_penalty = 0.0

    def on_task_start(self, task_id: int, task) -> None:
        if task_id > 0 and self.opts.reset_optimizer:
            reset_optimizer_state(self.trainer.optimizer)
        self.task = task_id

    def estimate_fisher(self, ds, head: int | None) -> dict[str, torch.Tensor]:
        """Diagonal Fisher of the current parameters on the first samples of ``ds``.

        Data parallel (``fisher = "empirical"``): minibatch ``i`` is computed by rank
        ``i mod W`` (the others only encode it, to keep the random stream of the 1-process
        run) and the sums are added over the ranks. The ``sampled`` Fisher draws labels
        from the same stream after each forward pass, so every rank computes all of it."""
        from neuroplastic.datasets import iterate_minibatches

        o = self.opts
        tr = self.trainer
        model = tr.model
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        gen = torch.Generator().manual_seed(self.base_seed() + 15485863 + self.task)
        seen = 0
        was_training = model.training
        model.train()
        split = distributed.is_distributed() and o.fisher == "empirical"
        W, r = distributed.world_size(), distributed.rank()
        with torch.enable_grad():
            for i, (x, y) in enumerate(iterate_minibatches(ds, o.fisher_batch_size, False, None)):
                x, y = x[: o.fisher_samples - seen], y[: o.fisher_samples - seen]
                if split and i % W != r:  # another rank's minibatch: advance the encoding stream only
                    tr.encoder(x.to(tr.device), gen)
                    seen += len(x)
                    if seen >= o.fisher_samples:
                        break
                    continue
                logits = tr.forward_logits(x, head, gen)
                if o.fisher == "sampled":
                    with torch.no_grad():
                        y = torch.multinomial(F.softmax(logits, 1).cpu(), 1, generator=gen)[:, 0]
                loss = F.cross_entropy(logits, y.to(logits.device))
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                for (n, _), g in zip(params.items(), grads):
                    if g is not None:
                        fisher[n] += len(x) * g.detach() ** 2
                seen += len(x)
                if seen >= o.fisher_samples:
                    break
        model.train(was_training)
        if split:
            for f in fisher.values():
                distributed.all_reduce(f)
        return {n: f / max(seen, 1) for n, f in fisher.items()}

    def on_task_end(self, task_id: int, task) -> None:
        o = self.opts
        new = self.estimate_fisher(task.train, task.head)
        theta = {n: p.detach().clone() for n, p in self.trainer.model.named_parameters() if n in new}
        if o.online:
            if self.fisher:
                old = self.fisher[0]
                new = {n: o.gamma * old.get(n, torch.zeros_like(f)) + f for n, f in new.items()}
            self.fisher, self.anchor = [new], [theta]
        else:
            self.fisher.append(new)
            self.anchor.append(theta)
        total = sum(float(f.sum()) for f in new.values())
        count = sum(f.numel() for f in new.values())
        self.fisher_mean.append(total / max(count, 1))

    def penalty(self) -> torch.Tensor | None:
        if not self.fisher or self.opts.lam == 0:
            return None
        params = dict(self.trainer.model.named_parameters())
        terms = []
        for fisher, anchor in zip(self.fisher, self.anchor):
            for n, f in fisher.items():
                p = params.get(n)
                if p is not None:
                    terms.append((f * (p - anchor[n]) ** 2).sum())
        if not terms:
            return None
        pen = 0.5 * self.opts.lam * torch.stack(terms).sum()
        self.last_penalty = float(pen.detach())
        return pen

    def metrics(self) -> dict[str, Any]:
        return {"ewc": {"fisher_mean": list(self.fisher_mean), "last_penalty": self.last_penalty}}

    def records(self) -> dict[str, Any]:
        return {"fisher_mean": torch.tensor(self.fisher_mean, dtype=torch.float64)}

    def state_dict(self) -> dict[str, Any]:
        return {"task": self.task,
                "fisher": [{n: f.detach().cpu().clone() for n, f in d.items()} for d in self.fisher],
                "anchor": [{n: a.detach().cpu().clone() for n, a in d.items()} for d in self.anchor],
                "fisher_mean": list(self.fisher_mean)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = next(self.trainer.model.parameters()).device if getattr(self, "trainer", None) else "cpu"
        self.task = int(state["task"])
        self.fisher = [{n: f.to(dev) for n, f in d.items()} for d in state["fisher"]]
        self.anchor = [{n: a.to(dev) for n, a in d.items()} for d in state["anchor"]]
        self.fisher_mean = [float(x) for x in state["fisher_mean"]]
