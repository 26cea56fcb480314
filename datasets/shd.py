"""Spiking Heidelberg Digits (SHD, Cramer et al. 2020) from local HDF5 files.

Reads ``DIR/shd_train.h5`` and ``DIR/shd_test.h5`` (or the distributed
``shd_train.h5.gz`` / ``shd_test.h5.gz``, decompressed in memory). Each file holds

* ``spikes/times``: one variable-length float array per sample, spike times in seconds,
* ``spikes/units``: one variable-length integer array per sample, channel ids 0..699,
* ``labels``: one integer per sample, 20 classes (digits 0-9 in English and German).

Spikes are binned into ``time_steps`` equal bins over ``[0, max_time]`` (a spike at
exactly ``max_time`` falls in the last bin, later ones are dropped) and each bin holds 1
if the channel spiked in it at least once: binary ``[n, time_steps, n_channels]`` frames.

Memory: the full training set at the defaults (8156 x 100 x 700 float32) takes ~2.3 GB;
pass ``dtype=torch.uint8`` to store it in ~0.6 GB
(:func:`~neuroplastic.datasets.base.iterate_minibatches` converts batches to float32).
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np
import torch

from neuroplastic.errors import UserError

from .base import ArrayDataset

__all__ = ["load_shd"]

N_CLASSES = 20


def _open_h5(path: Path):  # -> h5py.File
    """Open ``path`` read-only; ``.gz`` files are decompressed into memory first."""
    import h5py

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return h5py.File(io.BytesIO(fh.read()), "r")
        return h5py.File(path, "r")
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read {path} as HDF5: {exc}") from None


def _find(root: Path, split: str) -> Path:
    for name in (f"shd_{split}.h5", f"shd_{split}.h5.gz"):
        if (root / name).is_file():
            return root / name
    raise UserError(f"SHD {split} file not found: looked for shd_{split}.h5[.gz] in {root}")


def _bin(path: Path, time_steps: int, max_time: float, n_channels: int,
         dtype: torch.dtype) -> ArrayDataset:
    """Read one SHD file and bin its spikes into ``[n, time_steps, n_channels]`` frames.

    Every rule is checked before the frames are allocated: the three datasets exist,
    one spike-time list and one unit list per label, equal lengths per sample, unit ids
    whole numbers in ``0..n_channels-1``, spike times finite and >= 0, labels integers in
    ``0..19``, and the frames fit in memory."""
    from neuroplastic.resources import check_fits

    with _open_h5(path) as f:
        try:
            times_obj = f["spikes"]["times"][()]
            units_obj = f["spikes"]["units"][()]
            labels = np.asarray(f["labels"][()])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            why = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path}: not an SHD file (needs spikes/times, spikes/units and "
                            f"labels): {why}") from None
    if np.ndim(times_obj) < 1 or np.ndim(units_obj) < 1:
        raise UserError(f"{path}: spikes/times and spikes/units must hold one list per sample, got "
                        f"shapes {list(np.shape(times_obj))} and {list(np.shape(units_obj))}")
    n = len(labels) if labels.ndim == 1 else -1
    if labels.ndim != 1 or len(times_obj) != n or len(units_obj) != n:
        raise UserError(f"{path}: {len(times_obj)} spike-time lists, {len(units_obj)} unit "
                        f"lists and labels of shape {list(labels.shape)} do not match")
    if n == 0:
        raise UserError(f"{path}: no samples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: labels must be integers, got {labels.dtype}")
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        bad = int(np.flatnonzero((labels < 0) | (labels >= N_CLASSES))[0])
        raise UserError(f"{path}: labels must lie in 0..{N_CLASSES - 1}, got "
                        f"{labels.min()}..{labels.max()} (first bad one: label {labels[bad]} of sample {bad})")
    try:
        times_list = [np.asarray(t, dtype=np.float64).reshape(-1) for t in times_obj]
        units_list = [np.asarray(u).reshape(-1) for u in units_obj]
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: spike times and units must be numbers: {exc}") from None

    lengths = np.array([len(t) for t in times_list], dtype=np.int64)
    unit_lengths = np.array([len(u) for u in units_list], dtype=np.int64)
    bad = np.nonzero(lengths != unit_lengths)[0]
    if len(bad):
        raise UserError(f"{path}: sample {bad[0]} has {lengths[bad[0]]} spike times but "
                        f"{unit_lengths[bad[0]]} units")
    check_fits(n * time_steps * n_channels * torch.empty((), dtype=dtype).element_size(),
               f"{path}: {n} samples x {time_steps} steps x {n_channels} channels need")
    x = torch.zeros(n * time_steps * n_channels, dtype=dtype)
    if lengths.sum() > 0:
        times = np.concatenate(times_list)
        units = np.concatenate(units_list)
        if units.dtype.kind not in "iuf" or (units.dtype.kind == "f" and not np.all(units == np.floor(units))):
            raise UserError(f"{path}: spike unit ids must be whole numbers, got {units.dtype} values")
        sample = np.repeat(np.arange(n, dtype=np.int64), lengths)
        if not np.all(np.isfinite(times)) or times.min() < 0:
            i = int(np.flatnonzero(~np.isfinite(times) | (times < 0))[0])
            raise UserError(f"{path}: spike times must be finite and >= 0 seconds; sample "
                            f"{sample[i]} has {times[i]}")
        if units.min() < 0 or units.max() >= n_channels:
            raise UserError(f"{path}: spike unit ids span {units.min():.0f}..{units.max():.0f} but "
                            f"n_channels={n_channels}")
        units = units.astype(np.int64)
        keep = times <= max_time
        t_bin = np.minimum((times[keep] / max_time * time_steps).astype(np.int64),
                           time_steps - 1)
        flat = (sample[keep] * time_steps + t_bin) * n_channels + units[keep]
        x[torch.from_numpy(flat)] = 1
    x = x.reshape(n, time_steps, n_channels)
    return ArrayDataset(x, torch.from_numpy(labels.astype(np.int64)), N_CLASSES)


def load_shd(
    data_dir: str | Path,
    time_steps: int = 100,
    max_time: float = 1.0,
    n_channels: int = 700,
    dtype: torch.dtype = torch.float32,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Load SHD train/test as binary spike frames ``[n, time_steps, n_channels]``.

    Args:
        data_dir: directory holding ``shd_train.h5`` and ``shd_test.h5`` (or ``.h5.gz``).
        time_steps: number of time bins ``T``.
        max_time: length in seconds of the binned window ``[0, max_time]``.
        n_channels: input channels ``D``; unit ids must be below it.
        dtype: storage dtype of the frames (float32 by default, as every loader).

    Returns:
        ``(train, test)`` with 20 classes.
    """
    if isinstance(time_steps, bool) or not isinstance(time_steps, (int, np.integer)) \
            or time_steps < 1:
        raise UserError(f"time_steps must be a positive integer, got {time_steps!r}")
    if isinstance(n_channels, bool) or not isinstance(n_channels, (int, np.integer)) \
            or n_channels < 1:
        raise UserError(f"n_channels must be a positive integer, got {n_channels!r}")
    if not float(max_time) > 0.0:
        raise UserError(f"max_time must be positive (seconds), got {max_time}")
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"dtype must be a torch.dtype, got {dtype!r}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"SHD data directory not found: {root}")
    train_path, test_path = _find(root, "train"), _find(root, "test")
    args = (int(time_steps), float(max_time), int(n_channels), dtype)
    return _bin(train_path, *args), _bin(test_path, *args)
