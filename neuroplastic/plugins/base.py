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

Seeds: every random choice a plugin makes (random masks, random regrowth, HLOP's initial
rows, sampled activity, the Fisher's sampled labels, DrM's fresh weights) comes from a
private ``torch.Generator`` seeded from :meth:`Plugin.base_seed`, i.e. from
:func:`derive_seed` of the run's seed (``--seed``, ``trainer.seed``) and the plugin's own
``seed`` option. So ``--seed`` changes every plugin's randomness, a plugin's ``seed``
varies that plugin alone, and the global torch RNG is neither used nor consumed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ..training import Trainer

#: distance between the base seeds of consecutive run seeds (a prime)
RUN_SEED_STRIDE = 1_000_003
#: base seeds are reduced modulo this (plugins multiply them by ~1e5 and must stay
#: inside ``torch.Generator.manual_seed``'s 64-bit range)
SEED_MODULUS = 2**40


def derive_seed(run_seed: int | None, plugin_seed: int | None = 0) -> int:
    """The base seed of a plugin: ``(plugin_seed + 1_000_003 * run_seed) mod 2**40``.

    Plain integer arithmetic, so the same on every machine and in every process (no
    ``hash()``). Run seed 0 leaves the plugin's own seed unchanged (runs at ``--seed 0``
    draw exactly what they drew before the run seed reached plugins); different run seeds
    give base seeds 1_000_003 apart, so a plugin ``seed`` offset below that never makes
    two (run seed, plugin seed) pairs collide. ``None`` counts as 0.
    """
    return (int(plugin_seed or 0) + RUN_SEED_STRIDE * int(run_seed or 0)) % SEED_MODULUS


class Plugin:
    """Base plugin: every hook is a no-op."""

    name = "plugin"

    def setup(self, trainer: Trainer) -> None:
        """Called once when the trainer is built (model and optimizer exist)."""
        self.trainer = trainer

    @property
    def run_seed(self) -> int:
        """The run's seed (``trainer.seed``; 0 for a plugin not set up with a trainer)."""
        return int(getattr(getattr(self, "trainer", None), "seed", 0) or 0)

    def base_seed(self) -> int:
        """:func:`derive_seed` of the run's seed and this plugin's ``seed`` option (0 when
        it has none). Seed every private generator of the plugin from this (plus fixed
        per-use offsets such as the task index)."""
        return derive_seed(self.run_seed, getattr(getattr(self, "opts", None), "seed", 0))

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
