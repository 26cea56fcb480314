"""The two reference strategies: ``finetune`` (no protection: the lower bound) and
``multitask`` (joint training on every task seen so far: the upper bound)."""

from __future__ import annotations

from .base import Plugin


class Finetune(Plugin):
    """Plain sequential training; forgets."""

    name = "finetune"


class Multitask(Plugin):
    """Train task ``t`` on the union of tasks ``0..t`` (each with its own head)."""

    name = "multitask"

    def train_sources(self, task_id, stream, sources):
        return [(task.train, task.head) for task in stream.tasks[: task_id + 1]]
