"""Plugins: continual-learning and plasticity methods as small sets of hooks.

A method (HLOP, GPM, EWC, GraNet, the dormant monitor...) subclasses :class:`Plugin` and
overrides only the hooks it needs. Plugins compose (``--method hlop+granet``): a
:class:`PluginList` calls each hook on every plugin **in the order given**, so gradient
transforms run in that order after ``backward()`` (the documented order for sparse runs:
projection first, then the mask: ``hlop+granet``).

Hook order in one training step (see :class:`neuroplastic.training.Trainer`)::

    before_forward -> forward -> loss + sum(penalty) -> backward -> after_backward
    -> optimizer.step -> after_step

and around tasks: ``on_task_start`` (before training task t), ``train_sources`` (which
datasets to train on), ``on_task_end`` (after training, before evaluation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..training import Trainer


class Plugin:
    """Base plugin: every hook is a no-op."""

    name = "plugin"

    def setup(self, trainer: Trainer) -> None:
        """Called once when the trainer is built (model and optimizer exist)."""
        self.trainer = trainer

    def on_task_start(self, task_id: int, task) -> None: ...

    def train_sources(self, task_id: int, stream, sources: list) -> list:
        """Return the ``(dataset, head)`` list to train on (default: unchanged)."""
        return sources

    def before_forward(self) -> None: ...

    def penalty(self) -> torch.Tensor | None:
        """An extra loss term (EWC); ``None`` for none."""
        return None

    def after_backward(self) -> None:
        """Gradient transforms on ``p.grad`` (projection, masks)."""

    def after_step(self) -> None:
        """After ``optimizer.step()`` (Hebbian updates, pruning, statistics)."""

    def on_task_end(self, task_id: int, task) -> None: ...

    def trainable(self, name: str, param: torch.nn.Parameter, task_id: int) -> bool:
        """Whether ``param`` is trained during task ``task_id`` (default: yes)."""
        return True

    def metrics(self) -> dict[str, Any]:
        """Entries for ``metrics.json`` (JSON-serialisable)."""
        return {}

    def records(self) -> dict[str, Any]:
        """Arrays for ``run.h5`` under ``/plugins/<name>/`` (numpy arrays or nested dicts)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PluginList(Plugin):
    """Several plugins called in order; itself a plugin."""

    name = "+"

    def __init__(self, plugins: list[Plugin]) -> None:
        self.plugins = list(plugins)

    def setup(self, trainer):
        for p in self.plugins:
            p.setup(trainer)

    def on_task_start(self, task_id, task):
        for p in self.plugins:
            p.on_task_start(task_id, task)

    def train_sources(self, task_id, stream, sources):
        for p in self.plugins:
            sources = p.train_sources(task_id, stream, sources)
        return sources

    def before_forward(self):
        for p in self.plugins:
            p.before_forward()

    def penalty(self):
        terms = [t for p in self.plugins if (t := p.penalty()) is not None]
        return sum(terms) if terms else None

    def after_backward(self):
        for p in self.plugins:
            p.after_backward()

    def after_step(self):
        for p in self.plugins:
            p.after_step()

    def on_task_end(self, task_id, task):
        for p in self.plugins:
            p.on_task_end(task_id, task)

    def trainable(self, name, param, task_id):
        return all(p.trainable(name, param, task_id) for p in self.plugins)

    def metrics(self):
        out: dict[str, Any] = {}
        for p in self.plugins:
            out.update(p.metrics())
        return out

    def records(self):
        return {p.name: r for p in self.plugins if (r := p.records())}

    def state_dict(self):
        return {p.name: p.state_dict() for p in self.plugins}

    def load_state_dict(self, state):
        for p in self.plugins:
            if p.name in state:
                p.load_state_dict(state[p.name])
