"""In-memory datasets, continual-learning tasks and task streams.

Three small records carry everything the trainers need:

* :class:`ArrayDataset` -- features ``x`` (float32, ``[n, D]`` for flattened images or
  ``[n, T, D]`` spike frames for event data) and int64 labels ``y``.
* :class:`Task` -- one step of a continual-learning stream: a train and a test set, the
  global classes it contains and the output head that scores it.
* :class:`TaskStream` -- the ordered tasks plus the network geometry they imply.

:func:`iterate_minibatches` walks a dataset in batches with plain index tensors (no
``DataLoader``, no worker processes): the data is already in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from neuroplastic.errors import UserError

__all__ = ["ArrayDataset", "Task", "TaskStream", "iterate_minibatches"]

Index = slice | int | Sequence[int] | np.ndarray | torch.Tensor


@dataclass
class ArrayDataset:
    """Features and labels held in memory.

    Attributes:
        x: ``[n, D]`` float32 in ``[0, 1]`` (flattened static images) or ``[n, T, D]``
            spike frames (event data such as SHD).
        y: ``[n]`` int64 class labels in ``0 .. n_classes - 1``.
        n_classes: number of classes the labels are drawn from (not all need occur).
    """

    x: torch.Tensor
    y: torch.Tensor
    n_classes: int

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise UserError("ArrayDataset needs torch tensors for x and y")
        if self.x.dim() < 2:
            raise UserError(f"ArrayDataset x must be [n, ...] with at least 2 dims, got "
                            f"shape {tuple(self.x.shape)}")
        if self.y.dim() != 1:
            raise UserError(f"ArrayDataset y must be 1-D [n], got shape {tuple(self.y.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise UserError(f"ArrayDataset x has {self.x.shape[0]} samples but y has "
                            f"{self.y.shape[0]}")
        if self.y.dtype.is_floating_point or self.y.dtype == torch.bool:
            raise UserError(f"ArrayDataset labels must be integers, got {self.y.dtype}")
        if self.y.dtype != torch.int64:
            self.y = self.y.to(torch.int64)
        if int(self.n_classes) < 1:
            raise UserError(f"ArrayDataset n_classes must be >= 1, got {self.n_classes}")
        self.n_classes = int(self.n_classes)
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= self.n_classes):
            raise UserError(f"ArrayDataset labels must lie in 0..{self.n_classes - 1}, got "
                            f"{int(self.y.min())}..{int(self.y.max())}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample (``x.shape[1:]``)."""
        return tuple(self.x.shape[1:])

    def subset(self, idx: Index) -> ArrayDataset:
        """Return the samples selected by ``idx`` (slice, integer indices or boolean mask)."""
        if isinstance(idx, slice):
            return ArrayDataset(self.x[idx], self.y[idx], self.n_classes)
        index = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
        if index.dim() == 0:
            index = index.reshape(1)
        if index.dtype == torch.bool:
            if index.shape[0] != len(self):
                raise UserError(f"subset mask has {index.shape[0]} entries for a dataset of "
                                f"{len(self)}")
            index = index.nonzero().flatten()
        elif index.numel() == 0:
            index = index.to(torch.int64)
        elif index.dtype.is_floating_point:
            raise UserError("subset indices must be integers or a boolean mask")
        else:
            index = index.to(torch.int64)
            lo, hi = int(index.min()), int(index.max())
            if lo < -len(self) or hi >= len(self):
                raise UserError(f"subset index out of range for a dataset of {len(self)} "
                                f"samples (got {lo}..{hi})")
        index = torch.where(index < 0, index + len(self), index)
        return ArrayDataset(self.x.index_select(0, index), self.y.index_select(0, index),
                            self.n_classes)


@dataclass
class Task:
    """One task of a continual-learning stream.

    Attributes:
        name: e.g. ``"perm-0"`` or ``"split-0:[0, 1]"``.
        train: training samples of this task.
        test: test samples of this task.
        classes: global class ids present in this task.
        head: output head scoring this task: 0 for a shared head, the task index for
            task-incremental multi-head streams.

    Labels inside ``train``/``test`` are global class ids when the head is shared over all
    classes (permuted streams, class-incremental splits); they are positions
    ``0 .. len(classes) - 1`` in ``classes`` for task- and domain-incremental splits.
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset
    classes: list[int]
    head: int


@dataclass
class TaskStream:
    """An ordered sequence of tasks and the network geometry they need.

    Attributes:
        tasks: the tasks, in training order.
        n_inputs: input features per time step (``D``: 784 for 28x28 images, 700 for SHD).
        n_outputs: size of each output head.
        n_heads: 1 for a shared head; the number of tasks for task-incremental streams.
        time_steps: ``None`` for static images (the encoder picks ``T``); ``T`` for
            event data whose samples are already ``[T, D]`` frames.
        description: one human-readable line.
    """

    tasks: list[Task]
    n_inputs: int
    n_outputs: int
    n_heads: int
    time_steps: int | None
    description: str

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]


def iterate_minibatches(
    ds: ArrayDataset,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` minibatches of ``ds`` (the last one may be smaller).

    Without shuffling the batches are views (slices) of ``ds.x``; with shuffling one
    ``torch.randperm`` drawn from ``generator`` orders the epoch. Features that are not
    floating point (e.g. ``uint8`` spike frames) are converted to float32 per batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(ds)
    perm = torch.randperm(n, generator=generator) if shuffle else None
    convert = not ds.x.dtype.is_floating_point
    for start in range(0, n, batch_size):
        if perm is None:
            xb, yb = ds.x[start:start + batch_size], ds.y[start:start + batch_size]
        else:
            idx = perm[start:start + batch_size]
            xb, yb = ds.x.index_select(0, idx), ds.y.index_select(0, idx)
        yield (xb.float() if convert else xb), yb
