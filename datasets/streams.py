"""Continual-learning task streams built from one train/test pair.

* :func:`permuted` -- every task is the whole data set under a fixed permutation of the
  input features (pixels, or channels of event data). Task 0 is the identity unless
  ``permute_first``. One shared head over all classes (domain-incremental).
* :func:`split` -- every task holds ``classes_per_task`` classes, in order
  ``0,1 | 2,3 | ...``, in one of three settings:

  ========  =================================  =========  =========  =========
  setting   labels inside a task               head       n_outputs  n_heads
  ========  =================================  =========  =========  =========
  task      position in the task's classes     task idx   k          n_tasks
  domain    position in the task's classes     0          k          1
  class     global class ids                   0          n_classes  1
  ========  =================================  =========  =========  =========
"""

from __future__ import annotations

import math

import torch

from neuroplastic.errors import UserError

from .base import ArrayDataset, Task, TaskStream

__all__ = ["permuted", "split", "SETTINGS"]

SETTINGS = ("task", "domain", "class")


def _check_pair(train: ArrayDataset, test: ArrayDataset) -> None:
    if not isinstance(train, ArrayDataset) or not isinstance(test, ArrayDataset):
        raise UserError("streams need ArrayDataset train and test sets")
    if train.shape != test.shape:
        raise UserError(f"train samples have shape {list(train.shape)} but test samples "
                        f"{list(test.shape)}")
    if train.n_classes != test.n_classes:
        raise UserError(f"train has {train.n_classes} classes but test {test.n_classes}")
    if len(train.shape) not in (1, 2):
        raise UserError(f"samples must be [D] or [T, D], got {list(train.shape)}")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


def _cap(ds: ArrayDataset, max_n: int | None, generator: torch.Generator) -> ArrayDataset:
    """Deterministic random subset of at most ``max_n`` samples (original order kept)."""
    if max_n is None or len(ds) <= max_n:
        return ds
    idx = torch.randperm(len(ds), generator=generator)[:max_n].sort().values
    return ds.subset(idx)


def _geometry(ds: ArrayDataset) -> tuple[int, int | None]:
    """``(n_inputs, time_steps)`` of samples shaped ``[D]`` or ``[T, D]``."""
    if len(ds.shape) == 1:
        return ds.shape[0], None
    return ds.shape[1], ds.shape[0]


def permuted(
    train: ArrayDataset,
    test: ArrayDataset,
    n_tasks: int,
    seed: int = 0,
    permute_first: bool = False,
    *,
    max_per_task: int | None = None,
) -> TaskStream:
    """Permuted-input stream: task ``i`` applies permutation ``i`` to the feature axis.

    Permutation ``i`` is the ``i``-th ``torch.randperm(D)`` drawn from a
    ``torch.Generator`` seeded with ``seed``; task 0 uses the identity instead unless
    ``permute_first`` (so tasks ``1..`` are the same either way). For ``[n, T, D]``
    event data the ``D`` channels are permuted, identically at every time step.
    Labels stay global class ids; one shared head of ``n_classes`` outputs.

    ``max_per_task`` caps the training samples of each task (a different deterministic
    subset per task, drawn from ``seed``); test sets are kept whole.
    """
    _check_pair(train, test)
    n_tasks = _positive_int(n_tasks, "n_tasks")
    if max_per_task is not None:
        _positive_int(max_per_task, "max_per_task")
    n_inputs, time_steps = _geometry(train)
    _check_copies_fit(train, test, n_tasks - (0 if permute_first else 1), max_per_task)
    perm_gen = torch.Generator().manual_seed(int(seed))
    cap_gen = torch.Generator().manual_seed(int(seed) + 1)
    classes = list(range(train.n_classes))
    tasks = []
    for i in range(n_tasks):
        perm = torch.randperm(n_inputs, generator=perm_gen)
        task_train = _cap(train, max_per_task, cap_gen)
        if i == 0 and not permute_first:
            tr, te = task_train, test
        else:
            tr = ArrayDataset(task_train.x.index_select(-1, perm), task_train.y,
                              task_train.n_classes)
            te = ArrayDataset(test.x.index_select(-1, perm), test.y, test.n_classes)
        tasks.append(Task(name=f"perm-{i}", train=tr, test=te, classes=list(classes), head=0))
    first = "all permuted" if permute_first else "task 0 identity"
    return TaskStream(
        tasks=tasks, n_inputs=n_inputs, n_outputs=train.n_classes, n_heads=1,
        time_steps=time_steps,
        description=(f"permuted: {n_tasks} tasks ({first}, seed {seed}), "
                     f"shared head of {train.n_classes} classes"),
    )


def _check_copies_fit(train: ArrayDataset, test: ArrayDataset, copies: int, max_per_task: int | None) -> None:
    """Refuse, before building anything, ``copies`` permuted copies of the (capped)
    training set and the test set that would not fit in memory (each permuted task holds
    its own copy: ``data.tasks = 100000`` on 1797 digits would need terabytes)."""
    from neuroplastic.resources import check_fits

    n_train = len(train) if max_per_task is None else min(len(train), max_per_task)
    sample = math.prod(train.shape) * train.x.element_size()
    check_fits(copies * (n_train + len(test)) * sample,
               f"{copies + 1} permuted tasks (data.tasks), each a copy of {n_train} training and "
               f"{len(test)} test samples of {math.prod(train.shape)} features, need")


def _select(ds: ArrayDataset, classes: list[int], remap: bool, n_out: int) -> ArrayDataset:
    """Samples of ``ds`` whose label is in ``classes``; labels remapped to positions."""
    cls = torch.tensor(classes, dtype=torch.int64)
    mask = torch.isin(ds.y, cls)
    x, y = ds.x[mask], ds.y[mask]
    if remap:
        lookup = torch.full((ds.n_classes,), -1, dtype=torch.int64)
        lookup[cls] = torch.arange(len(classes))
        y = lookup[y]
    return ArrayDataset(x, y, n_out)


def split(
    train: ArrayDataset,
    test: ArrayDataset,
    classes_per_task: int = 2,
    n_tasks: int | None = None,
    setting: str = "task",
    seed: int = 0,
    *,
    max_per_task: int | None = None,
) -> TaskStream:
    """Split-classes stream: task ``i`` holds classes ``i*k .. i*k + k - 1``.

    Args:
        classes_per_task: ``k``.
        n_tasks: number of tasks; default ``n_classes // k`` (leftover classes unused).
        setting: ``"task"`` (task-incremental, one head of ``k`` per task, labels
            remapped to ``0..k-1``), ``"domain"`` (one shared head of ``k``, labels
            remapped to ``0..k-1``) or ``"class"`` (one shared head of ``n_classes``,
            global labels).
        seed: seeds the ``max_per_task`` subsets only; the class order is fixed.
        max_per_task: optional cap on training samples per task.
    """
    _check_pair(train, test)
    if setting not in SETTINGS:
        raise UserError(f"unknown split setting {setting!r}; choose one of "
                        f"{', '.join(SETTINGS)}")
    k = _positive_int(classes_per_task, "classes_per_task")
    n_classes = train.n_classes
    if k > n_classes:
        raise UserError(f"classes_per_task={k} exceeds the {n_classes} classes of the data")
    max_tasks = n_classes // k
    n_tasks = max_tasks if n_tasks is None else _positive_int(n_tasks, "n_tasks")
    if n_tasks > max_tasks:
        raise UserError(f"{n_tasks} tasks of {k} classes need {n_tasks * k} classes; "
                        f"the data has {n_classes} (at most {max_tasks} tasks)")
    if max_per_task is not None:
        _positive_int(max_per_task, "max_per_task")
    n_inputs, time_steps = _geometry(train)
    remap = setting != "class"
    n_out = k if remap else n_classes
    cap_gen = torch.Generator().manual_seed(int(seed) + 1)
    tasks = []
    for i in range(n_tasks):
        classes = list(range(i * k, (i + 1) * k))
        tr = _cap(_select(train, classes, remap, n_out), max_per_task, cap_gen)
        te = _select(test, classes, remap, n_out)
        tasks.append(Task(name=f"split-{i}:{classes}", train=tr, test=te, classes=classes,
                          head=i if setting == "task" else 0))
    n_heads = n_tasks if setting == "task" else 1
    return TaskStream(
        tasks=tasks, n_inputs=n_inputs, n_outputs=n_out, n_heads=n_heads,
        time_steps=time_steps,
        description=(f"split ({setting}-incremental): {n_tasks} tasks of {k} classes, "
                     f"{n_heads} head{'s' if n_heads > 1 else ''} of {n_out} outputs"),
    )
