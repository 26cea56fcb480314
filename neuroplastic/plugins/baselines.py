"""The two reference strategies: ``finetune`` (no protection: the lower bound) and
``multitask`` (joint training on every task seen so far: the upper bound)."""

from __future__ import annotations

import torch

from .base import Plugin


class Finetune(Plugin):
    """Plain sequential training; forgets."""

    name = "finetune"


class Multitask(Plugin):
    """Train task ``t`` on the union of tasks ``0..t``. Tasks that share a head (permuted
    and domain-incremental streams) are merged into one data set, so every minibatch mixes
    them (i.i.d. joint training); tasks with their own head keep their own minibatches
    (a minibatch goes through one head), interleaved at random by the trainer."""

    name = "multitask"

    def train_sources(self, task_id, stream, sources):
        by_head: dict = {}
        for task in stream.tasks[: task_id + 1]:
            by_head.setdefault(task.head, []).append(task.train)
        return [(_merge(parts), head) for head, parts in by_head.items()]


def _merge(parts: list):
    """One data set holding every sample of ``parts`` (same sample shape and classes)."""
    if len(parts) == 1:
        return parts[0]
    from neuroplastic.datasets import ArrayDataset

    return ArrayDataset(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                        max(p.n_classes for p in parts))
