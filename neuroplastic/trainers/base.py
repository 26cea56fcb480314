r"""What every trainer strategy shares: settings, decoders, the optimizer, the task loop
and evaluation.

A trainer strategy differs from the others in one thing only, how it turns a minibatch
into gradients (:meth:`Trainer.compute_gradients`). Around it the step is the same for
all of them::

    plugins.before_forward -> zero_grad -> compute_gradients (loss, + plugin penalty)
    -> plugins.after_backward (projections, masks) -> optimizer.step -> plugins.after_step

so every plugin (HLOP, GPM, EWC, GraNet, the dormant monitor) works unchanged with every
trainer. Evaluation is the same full-sequence forward pass for all trainers.

Decoders of the readout ``o [T, B, K]``: ``mean`` (:math:`\frac1T\sum_t o_t`, the default
for the LI membrane), ``max`` (:math:`\max_t o_t`), ``last`` (:math:`o_{T-1}`), ``count``
(spike count :math:`\sum_t z_t`, for a spiking readout).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..errors import Diverged, UserError
from ..plugins.base import Plugin, PluginList

__all__ = ["TrainSettings", "Trainer", "decode", "make_optimizer", "DECODERS", "TRAINER_NAMES", "ALIASES"]

DECODERS = ("mean", "max", "last", "count")
TRAINER_NAMES = ("bptt", "ottt", "eprop", "dsr")
ALIASES = {"online": "ottt"}
#: ``train.encoder`` choices (``events`` is picked by the runner for event data, never configured)
ENCODER_NAMES = ("rate", "poisson", "latency", "direct")
#: largest ``train.lr`` accepted (docs/config.md): far above any rate these networks train with
LR_MAX = 10.0


def decode(out: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Readout trace ``[T, B, K]`` -> logits ``[B, K]``."""
    if how == "mean":
        return out.mean(0)
    if how == "max":
        return out.max(0).values
    if how == "last":
        return out[-1]
    if how == "count":
        return out.sum(0)
    raise UserError(f"decoder must be one of {DECODERS}, got {how!r}")


@dataclass
class TrainSettings:
    """Hyper-parameters of the trainer (the ``[train]`` config section).

    ``trainer``: ``bptt`` (surrogate-gradient BPTT), ``ottt`` (online training through
    time; ``online`` is an alias), ``eprop`` (e-prop, recurrent networks) or ``dsr``
    (differentiation on spike representation). ``feedback`` is e-prop's learning-signal
    path: ``symmetric`` (the readout weights) or ``random`` (fixed random matrices).
    ``chunk``: OTTT's steps per backward pass (memory grows with it, not with ``T``; the
    gradient does not depend on it).
    """

    trainer: str = "bptt"
    epochs: int = 2  # the embedded default's: HLOP's forgetting was measured with these (issue 12)
    batch_size: int = 32
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    time_steps: int = 6
    encoder: str = "direct"  # static images as a constant current (HLOP forgets 2-4x more with rate)
    decoder: str = "mean"
    eval_batch_size: int = 512
    feedback: str = "symmetric"
    chunk: int = 8

    def __post_init__(self) -> None:
        self.trainer = ALIASES.get(self.trainer, self.trainer)
        if self.trainer not in TRAINER_NAMES:
            raise UserError(f"train.trainer must be one of {', '.join(TRAINER_NAMES)} (or online = ottt), "
                            f"got {self.trainer!r}")
        for key in ("epochs", "batch_size", "time_steps", "eval_batch_size", "chunk"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"train.{key} must be a positive integer, got {v!r}")

        def number(key: str) -> float:
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise UserError(f"train.{key} must be a finite number, got {v!r}")
            return float(v)

        if not 0 < number("lr") <= LR_MAX:  # 1e30 or inf trains to NaN at once
            raise UserError(f"train.lr must be in (0, {LR_MAX:g}], got {self.lr!r}")
        if not 0 <= number("momentum") < 1:
            raise UserError(f"train.momentum must be in [0, 1), got {self.momentum!r}")
        if not number("weight_decay") >= 0:
            raise UserError(f"train.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.encoder not in ENCODER_NAMES:
            raise UserError(f"train.encoder must be one of {', '.join(ENCODER_NAMES)} (event data always uses "
                            f"its own spikes), got {self.encoder!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise UserError(f"train.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.decoder not in DECODERS:
            raise UserError(f"train.decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.feedback not in ("symmetric", "random"):
            raise UserError(f"train.feedback must be 'symmetric' or 'random', got {self.feedback!r}")


def make_optimizer(params, s: TrainSettings) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam over ``params``."""
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


class Trainer:
    """Base strategy: owns the model, optimizer, encoder and plugins of one run.

    Subclasses implement :meth:`compute_gradients`. ``graph_through_time`` tells plugins
    whether one backward pass covers the whole sequence (BPTT): plugins that read the
    gradient of a layer's output (HLOP's input-form projection) need it; the others
    project ``weight.grad`` instead.
    """

    name = "base"
    graph_through_time = False

    def __init__(self, model: torch.nn.Module, encoder, settings: TrainSettings,
                 plugins: Plugin | None = None, device: str | torch.device = "cpu", seed: int = 0,
                 quiet: bool = False) -> None:
        self.model = model.to(device)
        self.encoder = encoder
        self.settings = settings
        self.device = torch.device(device)
        self.plugins = plugins if plugins is not None else PluginList([])
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.quiet = quiet
        self.task_id = 0
        self.global_step = 0
        #: where :meth:`train_task` stands (epoch, step, batch order, permutations, losses)
        self.position: dict | None = None
        self.inputs: torch.Tensor | None = None  # the encoded minibatch of the last full forward
        self.targets: torch.Tensor | None = None
        self.head: int | None = None
        #: dense weight gradients (masked positions included) by synapse name, from
        #: trainers that compute products without calling the synapse modules (e-prop);
        #: sparse plugins that regrow by gradient read them (cleared every step)
        self.dense_grads: dict[str, torch.Tensor] = {}
        #: data parallel (torchrun, :mod:`neuroplastic.distributed`): during a training
        #: step, this rank's slice of the global minibatch (``None``: all of it), the shard
        #: sizes of all ranks, this rank's gradient weight (shard size / batch size) and
        #: whether its shard is empty (it then computes on one sample with weight 0)
        self.batch_slice: slice | None = None
        self.shard_sizes: list[int] = [0]
        self.shard_weight = 1.0
        self.shard_empty = False
        distributed.sync_module(self.model)
        self.check_model()
        self.optimizer = make_optimizer(self.model.parameters(), settings)
        self.plugins.setup(self)

    def check_model(self) -> None:
        """Refuse, with one line, a network this strategy cannot train."""

    # -- parameters -----------------------------------------------------------------
    def refresh_trainable(self) -> None:
        """Apply the plugins' freezing rules for the current task (``requires_grad``)."""
        for name, p in self.model.named_parameters():
            p.requires_grad_(self.plugins.trainable(name, p, self.task_id))

    # -- one step -------------------------------------------------------------------
    def forward_logits(self, x: torch.Tensor, head: int | None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode ``x``, run the whole sequence, decode: the logits ``[B, K]``."""
        spikes = self.local(self.encoder(x.to(self.device), generator or self.generator))
        self.inputs = spikes
        out = self.model(spikes, head=head)
        return decode(out, self.settings.decoder)

    def compute_gradients(self, x: torch.Tensor, head: int | None) -> torch.Tensor:
        """Fill ``p.grad`` of the trainable parameters for the minibatch ``x`` (targets in
        ``self.targets``); return the task loss (detached scalar, penalties excluded).

        Data parallel: ``x`` is the global minibatch; encode all of it (the random stream
        of a 1-process run) and compute on :meth:`local` of the encoding only (``targets``
        are already this rank's)."""
        raise NotImplementedError

    def local(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's shard of a global-minibatch tensor along ``dim`` (``[T, B, ...]``:
        1, one step ``[B, ...]``: 0) during a data-parallel training step; ``t`` otherwise."""
        s = self.batch_slice
        return t if s is None else t.narrow(dim, s.start, s.stop - s.start)

    def _shard(self, batch: int) -> None:
        """Set this rank's part of a global minibatch of ``batch`` samples."""
        if not distributed.is_distributed():
            self.batch_slice, self.shard_sizes, self.shard_weight, self.shard_empty = None, [batch], 1.0, False
            return
        s = distributed.shard(batch)
        self.shard_sizes = distributed.shard_sizes(batch)
        self.shard_empty = s.start == s.stop
        # an empty shard (a last minibatch smaller than the world) computes on one sample
        # with weight 0, so that every rank runs the same collectives
        self.batch_slice = slice(0, 1) if self.shard_empty else s
        self.shard_weight = (s.stop - s.start) / batch

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        """Backpropagate ``loss`` plus the plugins' penalty terms; return ``loss`` detached."""
        extra = self.plugins.penalty()
        (loss + extra if extra is not None else loss).backward()
        return loss.detach()

    def add_penalty(self) -> None:
        """Backpropagate the plugins' penalty terms (EWC); they depend on weights only."""
        extra = self.plugins.penalty()
        if extra is not None and extra.requires_grad:
            extra.backward()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, head: int | None) -> float:
        self.model.train()
        self._shard(len(y))
        self.targets, self.head = self.local(y, 0).to(self.device), head
        self.plugins.before_forward()
        self.optimizer.zero_grad(set_to_none=True)
        self.dense_grads = {}
        try:
            loss = self.compute_gradients(x, head)
        finally:
            self.batch_slice = None
        if distributed.is_distributed():  # the gradient of the global batch-mean loss, before any transform
            loss = distributed.reduce_gradients(self.model.parameters(), self.shard_weight, self.dense_grads, loss)
        self.plugins.after_backward()
        self.optimizer.step()
        self.plugins.after_step()
        self.global_step += 1
        return float(loss)

    # -- a task ---------------------------------------------------------------------
    def train_task(self, sources: list, task_id: int, desc: str = "", resume: dict | None = None,
                   after_step: Callable[[dict], None] | None = None) -> list[float]:
        """Train ``epochs`` passes over the ``(dataset, head)`` sources (batches of the
        sources interleaved at random). Returns the per-step losses.

        ``resume``: a :attr:`position` saved inside this task (with the trainer's random
        state restored) continues it step for step. ``after_step(position)`` is called after
        every step (the runner's periodic checkpoints and safe stopping point). A NaN or
        infinite loss raises :class:`~neuroplastic.errors.Diverged` before the step counts.
        """
        self.task_id = task_id
        self.refresh_trainable()
        bs = self.settings.batch_size
        losses = list(resume["losses"]) if resume else []
        n_batches = sum(-(-len(ds) // bs) for ds, _ in sources)
        # disable=None: tqdm turns itself off when the output is not a terminal (logs, CI)
        bar = tqdm(total=n_batches * self.settings.epochs, initial=len(losses), desc=desc,
                   disable=True if self.quiet else None, leave=False)
        first = int(resume["epoch"]) if resume else 0
        for epoch in range(first, self.settings.epochs):
            if resume and epoch == first:
                cursors = [_Cursor(ds, bs, self.generator, **c) for (ds, _), c in zip(sources, resume["cursors"])]
                order, k0 = list(resume["order"]), int(resume["step"])
            else:
                cursors = [_Cursor(ds, bs, self.generator) for ds, _ in sources]
                order = torch.cat([torch.full((-(-len(ds) // bs),), i) for i, (ds, _) in enumerate(sources)])
                order, k0 = order[torch.randperm(len(order), generator=self.generator)].tolist(), 0
            for k in range(k0, len(order)):
                x, y = cursors[order[k]].next()
                loss = self.train_step(x, y, sources[order[k]][1])
                if not math.isfinite(loss):
                    raise Diverged(f"training diverged: the loss is {loss} at task {task_id} epoch {epoch} "
                                   f"step {k} (lower train.lr?)")
                losses.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                self.position = {"epoch": epoch, "step": k + 1, "order": order,
                                 "cursors": [c.state() for c in cursors], "losses": losses}
                if after_step is not None:
                    after_step(self.position)
        bar.close()
        return losses

    @torch.no_grad()
    def evaluate(self, ds, head: int | None = None) -> float:
        """Accuracy (percent) on ``ds`` through ``head``."""
        from neuroplastic.datasets import iterate_minibatches

        self.model.eval()
        correct = 0
        gen = torch.Generator().manual_seed(12345)  # same encoding for every evaluation
        for x, y in iterate_minibatches(ds, self.settings.eval_batch_size, False, None):
            # data parallel: every rank encodes the whole batch (one random stream) and
            # classifies its shard; the counts are summed below
            s = distributed.shard(len(y)) if distributed.is_distributed() else None
            if s is not None and s.start == s.stop:
                self.encoder(x.to(self.device), gen)
                continue
            self.batch_slice = s
            try:
                logits = self.forward_logits(x, head, gen)
            finally:
                self.batch_slice = None
            correct += int((logits.argmax(1).cpu() == (y if s is None else y[s])).sum())
        correct = int(distributed.all_reduce(torch.tensor([correct], dtype=torch.int64)))
        return 100.0 * correct / max(len(ds), 1)


class _Cursor:
    """One source's shuffled minibatches in one epoch, with a position that can be saved.

    The same batches as ``iterate_minibatches(ds, batch_size, True, generator)``: the
    permutation is drawn from ``generator`` when the first batch is taken (so the random
    stream is consumed in the same order as before), and the last batch may be smaller.
    """

    def __init__(self, ds, batch_size: int, generator: torch.Generator, perm=None, pos: int = 0) -> None:
        self.ds, self.batch_size, self.generator = ds, batch_size, generator
        self.perm = None if perm is None else torch.as_tensor(perm)
        self.pos = int(pos)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.perm is None:
            self.perm = torch.randperm(len(self.ds), generator=self.generator)
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        x, y = self.ds.x.index_select(0, idx), self.ds.y.index_select(0, idx)
        return (x if x.dtype.is_floating_point else x.float()), y

    def state(self) -> dict:
        return {"perm": self.perm, "pos": self.pos}
