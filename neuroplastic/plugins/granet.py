r"""Sparse synapses that prune and regenerate: GraNet, GMP, RigL, SET and static masks.

One plugin class, :class:`SparseTraining`, registered under five names whose only
difference is the default options (so the methods can be compared fairly, option by
option):

=========  =====================  ================  =======================================
name       start                  gradual pruning   regeneration
=========  =====================  ================  =======================================
granet     dense (init_density=1)  cubic, global     drop smallest |w|, grow largest |grad|
gmp        dense                  cubic, global     none
rigl       ERK at 1 - sparsity    none              drop smallest |w|, grow largest |grad|
set        ERK at 1 - sparsity    none              drop smallest |w|, grow at random
static     ERK at 1 - sparsity    none              none (a fixed random mask)
=========  =====================  ================  =======================================

Sparse-to-sparse GraNet is ``[granet] init_density = 0.5`` (ERK masks at density 0.5 at
the start, then pruned to the target).

**Schedule** (Zhu & Gupta; GraNet). With :math:`k` the step count of the schedule's
span, :math:`k_0` / :math:`k_1` the start / end steps, :math:`s_i` the initial and
:math:`s_f` the final sparsity, the target sparsity is

.. math:: s(k) = s_f + (s_i - s_f)\left(1 - \frac{k - k_0}{k_1 - k_0}\right)^3,
          \qquad k_0 \le k \le k_1

(:math:`s_i` before :math:`k_0`, :math:`s_f` after :math:`k_1`). Every ``update_every``
steps :math:`\Delta T` from :math:`k_0` (and at :math:`k_1`), after the optimizer step:

1. **prune** (``prune = true``, :math:`k \le k_1`): keep the ``round((1 - s(k)) N)``
   largest-magnitude active weights over all sparse layers (``global_pruning``), or per
   layer ``round(n_l d_l(k))`` with each layer on its own cubic from its initial density
   to its final density of the ``distribution``;
2. **regenerate** (``regrow != "none"``): per layer drop the
   :math:`\lceil r\,\mathrm{nnz}_l \rceil` smallest-|w| active weights and grow as many
   inactive ones (just-dropped positions included) with the largest
   :math:`|\partial L / \partial W|` of the current minibatch (``gradient``) or at random
   (``random``). New connections start at exactly 0 with zero optimizer state (a weight
   dropped and grown back in the same update keeps its value, as in GraNet's and RigL's
   code). The death
   rate decays on a cosine,
   :math:`r(k) = r_{min} + \tfrac12 (r_0 - r_{min})(1 + \cos(\pi k / S))`
   (``death_rate`` :math:`r_0 = 0.5` -> ``death_rate_min`` 0.005 over the span of
   :math:`S` steps).

The dense gradient: the forward pass uses ``weight * mask``, so ``weight.grad`` is zero
off the mask. On update steps a :class:`~neuroplastic.sparse.DenseGrad` hook records
:math:`\partial L / \partial (W \odot M)` (dense) during ``backward``; ``after_backward``
then masks ``weight.grad`` (after any projection of earlier plugins: ``hlop+granet``
projects, then masks), and ``after_step`` re-applies the masks to the weights and to
the optimizer state (momentum buffers, Adam moments), so pruned weights stay exactly 0.

**Continual runs** (``span``): ``first_task`` (default) runs the pruning schedule and the
death-rate cosine over task 0's steps, so the network reaches the target sparsity
within task 0; later tasks keep that density and, with ``regrow_later_tasks``, keep
regenerating every :math:`\Delta T` steps at ``death_rate_min``. ``each_task`` prunes in
task 0 too but restarts the death-rate cosine at every task. ``all_tasks`` spreads both
over the steps of the whole stream.

**Dormant-aware regeneration** (``dormant_aware``): firing rates of each spiking layer are
accumulated between updates; neurons with score :math:`s_i \le \tau` (DrM) are dormant
and up to ``dormant_share`` of a layer's regrowth goes to their incoming synapses (the
largest |grad| among them), the rest as usual. With ``dormant_init > 0`` those new
synapses start at ``dormant_init`` times the layer's mean active |w| (positive: the
inputs are non-negative spikes, so this raises the dormant neuron's drive) instead of 0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from .. import distributed
from ..errors import UserError
from ..sparse import (
    DenseGrad,
    apply_masks,
    init_masks,
    layer_densities,
    mask_grads,
    mask_optimizer_state,
    sparse_layers,
)
from .base import Plugin

__all__ = [
    "SparseOptions",
    "SparseTraining",
    "GraNet",
    "GMP",
    "RigL",
    "SET",
    "Static",
    "cubic_sparsity",
    "cosine_death_rate",
]

DISTRIBUTIONS = ("erk", "uniform", "explicit")
REGROW = ("gradient", "random", "none")
UNITS = ("fraction", "step", "epoch")
SPANS = ("first_task", "each_task", "all_tasks")


def cubic_sparsity(k: float, s_i: float, s_f: float, k0: int, k1: int) -> float:
    """The cubic schedule :math:`s(k)` (``s_i`` before ``k0``, ``s_f`` from ``k1`` on)."""
    if k < k0:  # (k == k0 == k1, a one-shot prune, is at the target)
        return float(s_i)
    if k >= k1 or k1 <= k0:
        return float(s_f)
    return float(s_f + (s_i - s_f) * (1.0 - (k - k0) / (k1 - k0)) ** 3)


def cosine_death_rate(k: float, total: float, r0: float, r_min: float) -> float:
    """``r_min + (r0 - r_min) (1 + cos(pi k / total)) / 2`` with ``k`` clipped to ``[0, total]``."""
    if total <= 0:
        return float(r_min)
    x = min(max(k / total, 0.0), 1.0)
    return float(r_min + 0.5 * (r0 - r_min) * (1.0 + math.cos(math.pi * x)))


@dataclass
class SparseOptions:
    """Options of the sparse methods (the ``[granet]``, ``[gmp]``, ``[rigl]``, ``[set]``,
    ``[static]`` sections; each name has its own defaults)."""

    _section: ClassVar[str] = "granet"

    sparsity: float = 0.9
    init_density: float = 1.0
    distribution: str = "erk"
    layer_density: list = field(default_factory=list)
    exclude: list = field(default_factory=list)
    prune: bool = True
    global_pruning: bool = True
    regrow: str = "gradient"
    death_rate: float = 0.5
    death_rate_min: float = 0.005
    start: float = 0.0
    end: float = 0.75
    unit: str = "fraction"
    update_every: int = 20
    span: str = "first_task"
    steps_per_task: int = 0
    regrow_later_tasks: bool = True
    dormant_aware: bool = False
    dormant_share: float = 0.5
    dormant_tau: float = 0.025
    dormant_init: float = 0.0
    seed: int = 0  # offset on the run's seed (--seed) for this plugin's random choices

    def __post_init__(self) -> None:
        sec = self._section

        def bad(key, want):
            raise UserError(f"{sec}.{key} must be {want}, got {getattr(self, key)!r}")

        def num(key):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float):
                bad(key, "a number")
            return float(v)

        for key in ("prune", "global_pruning", "regrow_later_tasks", "dormant_aware"):
            if not isinstance(getattr(self, key), bool):
                bad(key, "true or false")
        if not 0.0 <= num("sparsity") < 1.0:
            bad("sparsity", "in [0, 1)")
        if not 0.0 < num("init_density") <= 1.0:
            bad("init_density", "in (0, 1]")
        if self.distribution not in DISTRIBUTIONS:
            bad("distribution", " or ".join(DISTRIBUTIONS))
        if not isinstance(self.layer_density, list) or not all(
            isinstance(d, int | float) and not isinstance(d, bool) and 0 < d <= 1 for d in self.layer_density
        ):
            bad("layer_density", "a list of densities in (0, 1]")
        if self.distribution == "explicit" and not self.layer_density:
            raise UserError(f"{sec}.layer_density is needed with distribution = 'explicit'")
        if not isinstance(self.exclude, list) or not all(isinstance(n, str) for n in self.exclude):
            bad("exclude", "a list of layer names")
        if self.regrow not in REGROW:
            bad("regrow", " or ".join(REGROW))
        if not 0.0 <= num("death_rate") <= 1.0:
            bad("death_rate", "in [0, 1]")
        if not 0.0 <= num("death_rate_min") <= num("death_rate"):
            bad("death_rate_min", "in [0, death_rate]")
        if self.unit not in UNITS:
            bad("unit", " or ".join(UNITS))
        if num("start") < 0 or num("end") < num("start"):
            bad("end", f"a number >= start ({self.start})")
        if self.unit == "step":
            for key in ("start", "end") if self.prune else ("start",):
                if getattr(self, key) != int(getattr(self, key)):
                    bad(key, "whole steps when unit = 'step'")
        if isinstance(self.update_every, bool) or not isinstance(self.update_every, int) or self.update_every < 1:
            bad("update_every", "a positive integer (steps)")
        if self.span not in SPANS:
            bad("span", " or ".join(SPANS))
        if isinstance(self.steps_per_task, bool) or not isinstance(self.steps_per_task, int) or self.steps_per_task < 0:
            bad("steps_per_task", "a non-negative integer (0: computed from the stream)")
        if not 0.0 <= num("dormant_share") <= 1.0:
            bad("dormant_share", "in [0, 1]")
        if num("dormant_init") < 0:
            bad("dormant_init", "a non-negative number")
        if not 0.0 <= num("dormant_tau") < 1.0:
            bad("dormant_tau", "in [0, 1)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            bad("seed", "an integer")


def _variant(name: str, **defaults):
    """An Options subclass of :class:`SparseOptions` with other defaults."""
    fields = []
    for f in dataclasses.fields(SparseOptions):
        if f.name in defaults:
            fields.append((f.name, f.type, field(default=defaults[f.name])))
    cls = dataclasses.make_dataclass(f"{name.capitalize()}Options", fields, bases=(SparseOptions,))
    cls._section = name
    cls.__doc__ = f"Options of ``[{name}]`` (see :class:`SparseOptions`); defaults: {defaults or 'GraNet'}."
    return cls


class SparseTraining(Plugin):
    """Masks on every synapse layer, gradual magnitude pruning and neuroregeneration.

    See the module docstring for the maths and :class:`SparseOptions` for the keys.
    Works on any model whose synapse layers are :class:`~neuroplastic.synapses.Synapse`
    (``model.synapses()`` of an :class:`~neuroplastic.network.SNN`).
    """

    name = "granet"
    Options = SparseOptions

    def __init__(self, options: SparseOptions | None = None) -> None:
        self.opts = options if options is not None else self.Options()
        self.step = 0  # completed steps, all tasks
        self.task_step = 0  # completed steps in the current task
        self.task_id = 0
        self.span_steps: int | None = None  # S: steps of the schedule's span
        self.task0_steps: int | None = None  # steps of task 0 (for unit = epoch)
        self.cur_task_steps: int | None = None
        self.n_tasks = 1
        self.generator = torch.Generator().manual_seed(int(self.opts.seed))
        self.hist: dict[str, Any] = {
            "step": [],
            "task": [],
            "target": [],
            "sparsity": [],
            "death_rate": [],
            "regrown": [],
            "regrown_dormant": [],
            "dormant_neurons": [],
            "layers": {},
        }
        self.n_updates = 0
        self.n_regrown = 0
        self.layers: list = []
        self.dense_grad: DenseGrad | None = None
        self.rates = None
        self.post: dict[str, str] = {}
        self._init_density: dict[str, float] = {}
        self._final_density: dict[str, float] = {}
        self.s_i = 0.0
        self.s_f = float(self.opts.sparsity)

    # -- setup ----------------------------------------------------------------------
    def setup(self, trainer) -> None:
        super().setup(trainer)
        # random masks and random regrowth: from the run's seed and this plugin's seed
        self.generator = torch.Generator().manual_seed(self.base_seed())
        o = self.opts
        model = trainer.model
        self.layers = sparse_layers(model, o.exclude)
        if not self.layers:
            raise UserError(f"{self.name}: the model has no synapse layers to sparsify")
        shapes = {n: tuple(m.weight.shape) for n, m in self.layers}
        explicit = o.layer_density or None
        self._final_density = layer_densities(shapes, 1.0 - o.sparsity, o.distribution, explicit)
        total = sum(m.weight.numel() for _, m in self.layers)
        self.s_f = 1.0 - sum(self._final_density[n] * m.weight.numel() for n, m in self.layers) / total
        if o.prune:
            if o.init_density < 1.0:
                if o.distribution == "explicit":
                    raise UserError(f"{self.name}.init_density < 1 needs distribution erk or uniform")
                init_masks(model, o.init_density, o.distribution, None, self.generator, o.exclude)
            elif any(getattr(m, "mask", None) is not None for _, m in self.layers):
                pass  # keep masks already there (e.g. loaded from a checkpoint)
        else:
            init_masks(model, 1.0 - o.sparsity, o.distribution, explicit, self.generator, o.exclude)
        self._init_density = {n: self._density(m) for n, m in self.layers}
        self.s_i = 1.0 - sum(self._init_density[n] * m.weight.numel() for n, m in self.layers) / total
        # (the masks' synapse counts are whole numbers: the start may be sparser than the
        # target's densities by up to one synapse per layer without being "sparser")
        if o.prune and self.s_i > self.s_f + len(self.layers) / total:
            raise UserError(
                f"{self.name}: init_density {o.init_density} is already sparser than the target sparsity {o.sparsity}"
            )
        if o.regrow == "gradient":
            self.dense_grad = DenseGrad(self.layers)
        if o.dormant_aware:
            from ..dormant import FiringRateMonitor, postsynaptic_neurons

            if not hasattr(model, "layers"):
                raise UserError(f"{self.name}.dormant_aware needs an SNN model (its layer order)")
            self.post = postsynaptic_neurons(model)
            neurons = dict(model.neurons())
            self.rates = FiringRateMonitor(
                [(n, neurons[n]) for n in sorted(set(self.post.values())) if n in neurons],
                enabled=False,
            )
        mask_optimizer_state(trainer.optimizer, model)
        self._sync_masks()

    def _sync_masks(self) -> None:
        """Data parallel: install rank 0's masks on every rank. Every rank decides the same
        masks (identical weights, reduced dense gradients and firing rates, the same
        generator); this makes them identical bit for bit whatever the rounding."""
        if not distributed.is_distributed():
            return
        changed = False
        for _, m in self.layers:
            mask = getattr(m, "mask", None)
            if mask is None:
                continue
            got = distributed.broadcast(mask.clone(), 0)
            if not torch.equal(got, mask):
                m.set_mask(got)
                changed = True
        if changed:
            mask_optimizer_state(self.trainer.optimizer, self.trainer.model)

    def _reduce_dense_grads(self) -> None:
        """Data parallel: the dense gradients of the global minibatch (weighted like the
        weight gradients); a layer missing on a rank counts zero there."""
        grads = self.dense_grad.grads
        names = sorted(set().union(*distributed.all_gather_object(sorted(grads))))
        weights = dict(self.layers)
        for n in names:
            if n not in grads:
                grads[n] = torch.zeros_like(weights[n].weight)
        distributed.reduce_gradients([], self.trainer.shard_weight, grads)

    @staticmethod
    def _density(layer) -> float:
        mask = getattr(layer, "mask", None)
        return 1.0 if mask is None else float(mask.sum()) / mask.numel()

    # -- run length -------------------------------------------------------------------
    def set_run_length(self, steps_per_task: int, n_tasks: int = 1) -> None:
        """Tell the schedule how long the run is (the continual runner does this through
        :meth:`train_sources`; call it when driving a :class:`Trainer` by hand)."""
        self.task0_steps = int(steps_per_task)
        self.cur_task_steps = int(steps_per_task)
        self.n_tasks = int(n_tasks)
        self.span_steps = int(steps_per_task) * (int(n_tasks) if self.opts.span == "all_tasks" else 1)

    def on_task_start(self, task_id, task) -> None:
        self.task_id = task_id
        self.task_step = 0

    def train_sources(self, task_id, stream, sources):
        o = self.opts
        s = self.trainer.settings
        here = o.steps_per_task or s.epochs * sum(-(-len(ds) // s.batch_size) for ds, _ in sources)
        self.cur_task_steps = here
        if task_id == 0:
            self.n_tasks = len(stream.tasks)
            self.task0_steps = here
            if o.span == "all_tasks":
                self.span_steps = (
                    o.steps_per_task * self.n_tasks
                    if o.steps_per_task
                    else sum(s.epochs * -(-len(t.train) // s.batch_size) for t in stream.tasks)
                )
            else:
                self.span_steps = here
        return sources

    def _steps(self, value: float) -> int:
        o = self.opts
        if o.unit == "step":
            return int(value)
        if self.span_steps is None:
            raise UserError(
                f"{self.name}: the run length is unknown; set {self.name}.steps_per_task, "
                f"use unit = 'step', or call set_run_length()"
            )
        if o.unit == "fraction":
            return int(round(value * self.span_steps))
        per_epoch = self.task0_steps / max(self.trainer.settings.epochs, 1)
        return int(round(value * per_epoch))

    @property
    def k0(self) -> int:
        return self._steps(self.opts.start)

    @property
    def k1(self) -> int:
        return self._steps(self.opts.end)

    def target_sparsity(self, k: int) -> float:
        """The scheduled overall sparsity after ``k`` steps of the span."""
        if not self.opts.prune:
            return self.s_f
        return cubic_sparsity(k, self.s_i, self.s_f, self.k0, self.k1)

    def _clock(self) -> tuple[int | None, int]:
        """``(k, k_rate)``: the schedule clock (``None`` once the span is over) and the
        death-rate clock, for the step just completed."""
        o = self.opts
        if o.span == "all_tasks":
            return self.step, self.step
        if self.task_id == 0:
            return self.task_step, self.task_step
        return None, self.task_step

    def death_rate(self) -> float:
        """The death rate for the current step."""
        o = self.opts
        k, kr = self._clock()
        if k is None:
            if o.span == "each_task":
                return cosine_death_rate(kr, self.cur_task_steps or 1, o.death_rate, o.death_rate_min)
            return float(o.death_rate_min)
        if self.span_steps is not None:
            total = self.span_steps
        elif o.unit == "step":  # no run length given: decay over the pruning window
            total = max(self.k1, 1)
        else:
            total = self._steps(1.0)  # raises: the run length is unknown
        return cosine_death_rate(kr, total, o.death_rate, o.death_rate_min)

    def _event(self, k: int | None, task_step: int) -> tuple[bool, bool]:
        """``(prune, regrow)`` for the step with clock ``k`` (after it)."""
        o = self.opts
        if not o.prune and o.regrow == "none":
            return False, False  # static masks: no events
        every = o.update_every
        if k is None:  # later tasks of first_task / each_task
            regrow = o.regrow != "none" and o.regrow_later_tasks and task_step % every == 0
            return False, regrow
        k0 = self.k0
        if k < max(k0, 1):
            return False, False
        k1 = self.k1
        on_grid = (k - k0) % every == 0
        prune = o.prune and k <= k1 and (on_grid or k == k1)
        regrow = o.regrow != "none" and (on_grid or prune)
        return prune, regrow

    # -- hooks ------------------------------------------------------------------------
    def before_forward(self) -> None:
        if self.rates is not None:
            # firing rates of training minibatches only (not an empty shard's stand-in sample)
            self.rates.enabled = not getattr(self.trainer, "shard_empty", False)
        if self.dense_grad is not None:
            self.dense_grad.clear()
            k, _ = self._clock_next()
            self.dense_grad.enabled = self._event(k, self.task_step + 1)[1]

    def _clock_next(self):
        o = self.opts
        if o.span == "all_tasks":
            return self.step + 1, self.step + 1
        if self.task_id == 0:
            return self.task_step + 1, self.task_step + 1
        return None, self.task_step + 1

    def after_backward(self) -> None:
        if self.dense_grad is not None and self.dense_grad.enabled and distributed.is_distributed():
            self._reduce_dense_grads()
        mask_grads(self.trainer.model)

    def after_step(self) -> None:
        model = self.trainer.model
        apply_masks(model)
        mask_optimizer_state(self.trainer.optimizer, model)
        self.step += 1
        self.task_step += 1
        k, _ = self._clock()
        prune, regrow = self._event(k, self.task_step)
        if prune or regrow:
            self.update(prune, regrow, k)
        if self.dense_grad is not None:
            self.dense_grad.enabled = False
            self.dense_grad.clear()
        if self.rates is not None:
            self.rates.enabled = False

    def on_task_end(self, task_id, task) -> None:
        o = self.opts
        # the schedule must have reached the target by the end of its span
        last_of_span = task_id == (self.n_tasks - 1 if o.span == "all_tasks" else 0)
        if o.prune and last_of_span:
            if self._overall_sparsity() < self.s_f - 0.5 / self._n_total():
                self._prune(self.s_f)
                self._sync_masks()
                self._record(None, 0.0, 0, 0, 0)

    # -- mask updates -----------------------------------------------------------------
    def _n_total(self) -> int:
        return sum(m.weight.numel() for _, m in self.layers)

    def _overall_sparsity(self) -> float:
        nnz = sum(self._density(m) * m.weight.numel() for _, m in self.layers)
        return 1.0 - nnz / self._n_total()

    def _masks(self) -> dict[str, torch.Tensor]:
        return {
            n: (m.mask.clone() if getattr(m, "mask", None) is not None else torch.ones_like(m.weight, dtype=torch.bool))
            for n, m in self.layers
        }

    @torch.no_grad()
    def update(self, prune: bool, regrow: bool, k: int | None) -> None:
        """One mask update after the step just taken: prune to ``s(k)``, then regenerate."""
        target = self.target_sparsity(k) if (prune and k is not None) else None
        if self.rates is not None:
            self.rates.all_reduce()  # data parallel: the firing counts of every rank's shard
        if prune:
            self._prune(target)
        n_grown = n_dorm = n_dormant_neurons = 0
        r = self.death_rate()
        if regrow and r > 0:
            n_grown, n_dorm, n_dormant_neurons = self._regenerate(r)
        self._sync_masks()
        if self.rates is not None:
            self.rates.clear()
        self.n_updates += 1
        self.n_regrown += n_grown
        self._record(target, r if regrow else 0.0, n_grown, n_dorm, n_dormant_neurons)

    def _install(self, masks: dict[str, torch.Tensor]) -> None:
        for n, m in self.layers:
            old = getattr(m, "mask", None)
            if old is not None and torch.equal(old, masks[n]):
                continue
            m.set_mask(masks[n])
        mask_optimizer_state(self.trainer.optimizer, self.trainer.model)

    @torch.no_grad()
    def _prune(self, target: float) -> None:
        masks = self._masks()
        N = self._n_total()
        if self.opts.global_pruning:
            keep = int(round((1.0 - target) * N))
            nnz = sum(int(v.sum()) for v in masks.values())
            if keep >= nnz:
                return
            scores = torch.cat(
                [
                    torch.where(masks[n], m.weight.detach().abs(), torch.full_like(m.weight, -1.0)).flatten()
                    for n, m in self.layers
                ]
            )
            idx = torch.topk(scores, keep, sorted=False).indices
            flat = torch.zeros(N, dtype=torch.bool)
            flat[idx.cpu()] = True
            off = 0
            for n, m in self.layers:
                size = m.weight.numel()
                masks[n] = flat[off : off + size].reshape(m.weight.shape).to(m.weight.device)
                off += size
        else:
            # each layer on its own cubic, from its initial density to its final density
            s_i, s_f = self.s_i, self.s_f
            c = 0.0 if s_f == s_i else (target - s_f) / (s_i - s_f)  # = (1 - progress)^3
            for n, m in self.layers:
                d = self._final_density[n] + (self._init_density[n] - self._final_density[n]) * c
                keep = int(round(d * m.weight.numel()))
                nnz = int(masks[n].sum())
                if keep >= nnz:
                    continue
                scores = torch.where(masks[n], m.weight.detach().abs(), torch.full_like(m.weight, -1.0)).flatten()
                new = torch.zeros_like(scores, dtype=torch.bool)
                new[torch.topk(scores, keep, sorted=False).indices] = True
                masks[n] = new.reshape(m.weight.shape)
        self._install(masks)

    def _dormant_rows(self, name: str, n_rows: int) -> torch.Tensor | None:
        if self.rates is None or name not in self.post:
            return None
        rate = self.rates.rates().get(self.post[name])
        if rate is None:
            return None
        if rate.dim() > 1:  # conv: one row per output channel
            rate = rate.reshape(rate.shape[0], -1).mean(1)
        if rate.numel() != n_rows:
            return None
        from ..dormant import scores_from_rates

        return scores_from_rates(rate) <= self.opts.dormant_tau

    @torch.no_grad()
    def _regenerate(self, r: float) -> tuple[int, int, int]:
        o = self.opts
        masks = self._masks()
        grads = dict(getattr(self.trainer, "dense_grads", {}))  # graph-free trainers (e-prop)
        grads.update(self.dense_grad.grads if self.dense_grad is not None else {})
        grown_total = dorm_total = dormant_neurons = 0
        for n, m in self.layers:
            mask = masks[n]
            nnz, size = int(mask.sum()), mask.numel()
            if nnz == 0 or nnz == size:
                continue
            if o.regrow == "gradient":
                if n not in grads:
                    continue  # frozen layer: no gradient, no regeneration
                score_grow = grads[n].abs()
            else:
                score_grow = torch.rand(mask.shape, generator=self.generator).to(mask.device)
            n_drop = min(math.ceil(r * nnz), nnz)
            w = m.weight.detach()
            # drop: the n_drop smallest |w| among active weights
            drop_scores = torch.where(mask, w.abs(), torch.full_like(w, float("inf"))).flatten()
            drop_idx = torch.topk(drop_scores, n_drop, largest=False, sorted=False).indices
            after = mask.flatten().clone()
            after[drop_idx] = False
            # grow: n_drop inactive positions with the largest score
            cand = ~after
            grow = torch.zeros_like(after)
            grow_dormant = torch.zeros_like(after)
            n_grow = n_drop
            rows = self._dormant_rows(n, mask.shape[0]) if o.dormant_aware else None
            if rows is not None and bool(rows.any()):
                dormant_neurons += int(rows.sum())
                in_rows = rows.reshape(-1, *([1] * (mask.dim() - 1))).expand_as(mask).flatten()
                pool = cand & in_rows
                n_d = min(int(round(o.dormant_share * n_grow)), int(pool.sum()))
                if n_d > 0:
                    s = torch.where(pool, score_grow.flatten(), torch.full_like(score_grow.flatten(), -1.0))
                    grow_dormant[torch.topk(s, n_d, sorted=False).indices] = True
                    grow |= grow_dormant
                    n_grow -= n_d
                    cand = cand & ~grow
            if n_grow > 0:
                s = torch.where(cand, score_grow.flatten(), torch.full_like(score_grow.flatten(), -1.0))
                grow[torch.topk(s, n_grow, sorted=False).indices] = True
            new = (after | grow).reshape(mask.shape)
            # new connections start at 0 (a dropped weight grown back at once keeps its
            # value: it never left, as in GraNet's and RigL's code)
            fresh = grow & ~mask.flatten()
            flat_w = m.weight.view(-1)
            flat_w[fresh] = 0.0
            fresh_dormant = fresh & grow_dormant
            if o.dormant_init > 0 and bool(fresh_dormant.any()):
                scale = float(w[mask].abs().mean()) if nnz else 0.0
                flat_w[fresh_dormant] = o.dormant_init * scale
            grown_total += int(fresh.sum())
            dorm_total += int(fresh_dormant.sum())
            masks[n] = new
        self._install(masks)
        return grown_total, dorm_total, dormant_neurons

    # -- records ----------------------------------------------------------------------
    def _record(self, target, r, n_grown, n_dorm, n_dormant_neurons) -> None:
        h = self.hist
        h["step"].append(self.step)
        h["task"].append(self.task_id)
        h["target"].append(float("nan") if target is None else float(target))
        h["sparsity"].append(self._overall_sparsity())
        h["death_rate"].append(float(r))
        h["regrown"].append(int(n_grown))
        h["regrown_dormant"].append(int(n_dorm))
        h["dormant_neurons"].append(int(n_dormant_neurons))
        for n, m in self.layers:
            h["layers"].setdefault(n, []).append(1.0 - self._density(m))

    def metrics(self) -> dict[str, Any]:
        return {
            self.name: {
                "target_sparsity": self.s_f,
                "initial_sparsity": self.s_i,
                "updates": self.n_updates,
                "regrown": self.n_regrown,
                "regrown_into_dormant": int(sum(self.hist["regrown_dormant"])),
                "layer_sparsity": {n: 1.0 - self._density(m) for n, m in self.layers},
            }
        }

    def records(self) -> dict[str, Any]:
        h = self.hist
        if not h["step"]:
            return {}
        out = {
            k: np.asarray(v, dtype=np.float64 if k in ("target", "sparsity", "death_rate") else np.int64)
            for k, v in h.items()
            if k != "layers"
        }
        out["layer_sparsity"] = {n: np.asarray(v, dtype=np.float64) for n, v in h["layers"].items()}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "task_step": self.task_step,
            "task_id": self.task_id,
            "span_steps": self.span_steps,
            "task0_steps": self.task0_steps,
            "cur_task_steps": self.cur_task_steps,
            "n_tasks": self.n_tasks,
            "n_updates": self.n_updates,
            "n_regrown": self.n_regrown,
            "s_i": self.s_i,
            "s_f": self.s_f,
            "init_density": dict(self._init_density),
            "generator": self.generator.get_state(),
            "hist": self.hist,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in (
            "step",
            "task_step",
            "task_id",
            "span_steps",
            "task0_steps",
            "cur_task_steps",
            "n_tasks",
            "n_updates",
            "n_regrown",
            "s_i",
            "s_f",
        ):
            if key in state:
                setattr(self, key, state[key])
        if "init_density" in state:
            self._init_density = dict(state["init_density"])
        if "generator" in state:
            self.generator.set_state(state["generator"])
        if "hist" in state:
            self.hist = state["hist"]


GraNet = SparseTraining


class GMP(SparseTraining):
    """Gradual magnitude pruning (Zhu & Gupta), no regeneration."""

    name = "gmp"
    Options = _variant("gmp", regrow="none")


class RigL(SparseTraining):
    """RigL: constant density (ERK at ``1 - sparsity``), drop by |w|, grow by |grad|."""

    name = "rigl"
    Options = _variant("rigl", prune=False)


class SET(SparseTraining):
    """SET: constant density, drop by |w|, grow at random."""

    name = "set"
    Options = _variant("set", prune=False, regrow="random")


class Static(SparseTraining):
    """A fixed random sparse mask (ERK at ``1 - sparsity``)."""

    name = "static"
    Options = _variant("static", prune=False, regrow="none")
