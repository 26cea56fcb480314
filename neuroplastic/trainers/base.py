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

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..plugins.base import Plugin, PluginList

__all__ = ["TrainSettings", "Trainer", "decode", "make_optimizer", "DECODERS", "TRAINER_NAMES", "ALIASES"]

DECODERS = ("mean", "max", "last", "count")
TRAINER_NAMES = ("bptt", "ottt", "eprop", "dsr")
ALIASES = {"online": "ottt"}


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
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    time_steps: int = 6
    encoder: str = "rate"
    decoder: str = "mean"
    eval_batch_size: int = 512
    feedback: str = "symmetric"
    chunk: int = 16

    def __post_init__(self) -> None:
        self.trainer = ALIASES.get(self.trainer, self.trainer)
        if self.trainer not in TRAINER_NAMES:
            raise UserError(f"train.trainer must be one of {', '.join(TRAINER_NAMES)} (or online = ottt), "
                            f"got {self.trainer!r}")
        for key in ("epochs", "batch_size", "time_steps", "eval_batch_size", "chunk"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise UserError(f"train.{key} must be a positive integer, got {getattr(self, key)!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise UserError(f"train.lr must be a positive number, got {self.lr!r}")
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
        self.inputs: torch.Tensor | None = None  # the encoded minibatch of the last full forward
        self.targets: torch.Tensor | None = None
        self.head: int | None = None
        #: dense weight gradients (masked positions included) by synapse name, from
        #: trainers that compute products without calling the synapse modules (e-prop);
        #: sparse plugins that regrow by gradient read them (cleared every step)
        self.dense_grads: dict[str, torch.Tensor] = {}
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
        spikes = self.encoder(x.to(self.device), generator or self.generator)
        self.inputs = spikes
        out = self.model(spikes, head=head)
        return decode(out, self.settings.decoder)

    def compute_gradients(self, x: torch.Tensor, head: int | None) -> torch.Tensor:
        """Fill ``p.grad`` of the trainable parameters for the minibatch ``x`` (targets in
        ``self.targets``); return the task loss (detached scalar, penalties excluded)."""
        raise NotImplementedError

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
        self.targets, self.head = y.to(self.device), head
        self.plugins.before_forward()
        self.optimizer.zero_grad(set_to_none=True)
        self.dense_grads = {}
        loss = self.compute_gradients(x, head)
        self.plugins.after_backward()
        self.optimizer.step()
        self.plugins.after_step()
        self.global_step += 1
        return float(loss)

    # -- a task ---------------------------------------------------------------------
    def train_task(self, sources: list, task_id: int, desc: str = "") -> list[float]:
        """Train ``epochs`` passes over the ``(dataset, head)`` sources (batches of the
        sources interleaved at random). Returns the per-step losses."""
        from neuroplastic.datasets import iterate_minibatches

        self.task_id = task_id
        self.refresh_trainable()
        losses = []
        n_batches = sum(-(-len(ds) // self.settings.batch_size) for ds, _ in sources)
        # disable=None: tqdm turns itself off when the output is not a terminal (logs, CI)
        bar = tqdm(total=n_batches * self.settings.epochs, desc=desc, disable=True if self.quiet else None,
                   leave=False)
        for _ in range(self.settings.epochs):
            iters = [(iterate_minibatches(ds, self.settings.batch_size, True, self.generator), head)
                     for ds, head in sources]
            order = torch.cat([torch.full((-(-len(ds) // self.settings.batch_size),), i)
                               for i, (ds, _) in enumerate(sources)])
            order = order[torch.randperm(len(order), generator=self.generator)]
            for i in order.tolist():
                it, head = iters[i]
                x, y = next(it)
                losses.append(self.train_step(x, y, head))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
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
            logits = self.forward_logits(x, head, gen)
            correct += int((logits.argmax(1).cpu() == y).sum())
        return 100.0 * correct / max(len(ds), 1)
