"""Data for continual-learning runs: loaders and task streams (``neuroplastic.datasets``).

Loaders return ``(train, test)`` :class:`ArrayDataset` pairs held in memory:

* :func:`load_digits` -- scikit-learn's bundled digits, resized to 28x28 (no download),
* :func:`load_mnist` -- MNIST from local IDX files or an ``.npz``,
* :func:`load_shd` -- Spiking Heidelberg Digits from local HDF5 files,
* :func:`load_cues` -- a generated delayed-cue evidence-accumulation task (event data that
  needs memory; no files).

Streams turn a pair into a :class:`TaskStream`: :func:`permuted` and :func:`split`.
:func:`make_stream` does both from names, as the CLI and configs use them.
"""

from __future__ import annotations

from neuroplastic.errors import UserError

from .augment import augment as augment_images
from .base import ArrayDataset, Task, TaskStream, iterate_minibatches
from .digits import load_digits
from .mnist import load_mnist, read_idx
from .shd import load_shd
from .streams import SETTINGS, permuted, split
from .temporal import cue_layout, load_cues

__all__ = [
    "ArrayDataset",
    "Task",
    "TaskStream",
    "iterate_minibatches",
    "load_digits",
    "load_mnist",
    "load_shd",
    "load_cues",
    "cue_layout",
    "read_idx",
    "permuted",
    "split",
    "make_stream",
    "DATASETS",
    "STREAMS",
    "SETTINGS",
]

DATASETS = ("digits", "mnist", "shd", "cues")
STREAMS = ("permuted", "split")


def make_stream(
    dataset: str = "digits",
    stream: str = "permuted",
    n_tasks: int = 5,
    data_dir: str | None = None,
    seed: int = 0,
    classes_per_task: int = 2,
    setting: str = "task",
    max_per_task: int | None = None,
    augment: int = 1,
    permute_first: bool = False,
) -> TaskStream:
    """Load ``dataset`` and build a task stream from it.

    Args:
        dataset: ``"digits"`` (scikit-learn, 28x28, no files needed), ``"mnist"`` or
            ``"shd"`` (both read from ``data_dir``), ``"cues"`` (generated, 2 classes,
            :func:`load_cues` at its defaults: 2000 train / 500 test samples ``[80, 40]``).
        stream: ``"permuted"`` (task 0 is the identity permutation) or ``"split"``.
        n_tasks: number of tasks.
        data_dir: directory (or, for MNIST, ``.npz`` file) holding the data.
        seed: seeds the permutations and the ``max_per_task`` subsets; the digits
            train/test split and the generated cues data are fixed (seed 0) so seeds
            share one test set.
        classes_per_task: classes per task of a split stream.
        setting: ``"task"``, ``"domain"`` or ``"class"`` for a split stream.
        max_per_task: optional cap on training samples per task (deterministic subset).
        augment: ``copies`` of every training image (:func:`~.augment.augment`: the
            original and ``copies - 1`` deterministic affine + elastic distortions, before
            any permutation); static square images only, the test set is unchanged.
        permute_first: permute task 0 too (permuted streams; default: identity).

    ``setting`` and ``classes_per_task`` are ignored by permuted streams. Sizes that
    cannot fit in memory (a permuted task is a copy of the data) are refused before
    anything is built.
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if stream not in STREAMS:
        raise UserError(f"unknown stream {stream!r}; choose one of {', '.join(STREAMS)}")
    if stream == "split" and setting not in SETTINGS:
        raise UserError(f"unknown split setting {setting!r}; choose one of "
                        f"{', '.join(SETTINGS)}")
    if dataset in ("mnist", "shd") and not data_dir:
        raise UserError(f"dataset {dataset!r} needs a data directory (--data-dir DIR); "
                        f"nothing is downloaded")
    if dataset in ("digits", "cues") and data_dir:
        raise UserError(f"a data directory applies to mnist and shd; dataset {dataset!r} reads no files "
                        f"(got data_dir {str(data_dir)!r})")

    if dataset == "digits":
        train, test = load_digits(size=28, seed=0)
        label = "digits (scikit-learn, 28x28)"
    elif dataset == "cues":
        train, test = load_cues(seed=0)
        label = (f"cues (delayed evidence accumulation, T={train.shape[0]}, {train.shape[1]} channels, "
                 f"decode the last step)")
    elif dataset == "mnist":
        train, test = load_mnist(data_dir)
        label = "MNIST"
    else:
        train, test = load_shd(data_dir)
        label = "SHD"

    if augment != 1:
        if dataset in ("shd", "cues"):
            raise UserError(f"data.augment distorts images; dataset {dataset!r} holds event data")
        from neuroplastic.resources import check_fits

        check_fits(len(train) * augment * train.x[:1].numel() * train.x.element_size(),
                   f"data.augment = {augment} copies of {len(train)} training images need")
        train = augment_images(train, augment, seed=0)
        label += f", training images x{augment} (affine + elastic distortions)"
    if stream == "permuted":
        ts = permuted(train, test, n_tasks, seed=seed, permute_first=permute_first, max_per_task=max_per_task)
    else:
        ts = split(train, test, classes_per_task=classes_per_task, n_tasks=n_tasks,
                   setting=setting, seed=seed, max_per_task=max_per_task)
    n_train = sum(len(t.train) for t in ts.tasks)
    ts.description = (f"{label} {ts.description}; {n_train} train / "
                      f"{sum(len(t.test) for t in ts.tasks)} test samples in all")
    return ts
