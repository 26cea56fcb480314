"""MNIST from local files: the four IDX files (plain or gzipped) or one ``.npz``.

Nothing is downloaded. :func:`load_mnist` looks, in order, for

1. ``DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``,
2. the same four files in ``DIR/MNIST/raw`` (torchvision's layout),
3. ``DIR/mnist.npz`` (or ``data_dir`` itself when it is an ``.npz`` file) holding
   ``x_train, y_train, x_test, y_test`` (Keras' layout).

IDX format (LeCun): a big-endian header ``0x00 0x00 <type code> <ndim>`` followed by
``ndim`` big-endian uint32 sizes and the data. MNIST images have magic 2051
(``0x00000803``: uint8, 3 dims), labels 2049 (``0x00000801``: uint8, 1 dim).
"""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from neuroplastic.errors import UserError

from .base import ArrayDataset

__all__ = ["load_mnist", "read_idx"]

N_CLASSES = 10
IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type code -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """Read a file, gunzipping it when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"expected a file, found a directory: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed when the name ends in ``.gz``).

    Validates the magic number (two zero bytes, a known type code, ``ndim >= 1``), and
    that the payload holds exactly ``prod(dims)`` items; ``expected_magic`` (e.g. 2051
    for MNIST images) additionally pins type and rank.

    Returns:
        An array of shape ``dims`` in native byte order.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise UserError(f"{path}: too short for an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    zero, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or code not in _IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number {magic:#010x})")
    if ndim < 1:
        raise UserError(f"{path}: IDX header declares 0 dimensions (magic {magic:#010x}); arrays need at least 1")
    if expected_magic is not None and magic != expected_magic:
        raise UserError(f"{path}: magic number {magic} but expected {expected_magic}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX header ({ndim} dims declared)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow for absurd dims
    if len(raw) - header != expected:
        raise UserError(f"{path}: IDX dims {dims} need {expected} data bytes, file has "
                        f"{len(raw) - header}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def _find_idx_dir(root: Path) -> tuple[dict[str, Path] | None, list[str]]:
    """Return the four IDX paths from ``root`` or ``root/MNIST/raw``, plus what was missed."""
    missing: list[str] = []
    for directory in (root, root / "MNIST" / "raw"):
        found: dict[str, Path] = {}
        for key, stem in FILES.items():
            for name in (stem, stem + ".gz"):
                if (directory / name).is_file():
                    found[key] = directory / name
                    break
        if len(found) == len(FILES):
            return found, []
        if found:  # a partial set is worth naming precisely
            missing += [f"{directory / FILES[k]}[.gz]" for k in FILES if k not in found]
    return None, missing


def _to_dataset(images: np.ndarray, labels: np.ndarray, source: str,
                labels_source: str | None = None) -> ArrayDataset:
    """Check shapes/values and build a float32 ``[n, 784]`` dataset. Problems of the
    labels are blamed on ``labels_source`` (their own file; default ``source``)."""
    lsource = labels_source or source
    if images.ndim == 3 and images.shape[1:] == (28, 28):
        images = images.reshape(len(images), 784)
    if images.ndim != 2 or images.shape[1] != 784:
        raise UserError(f"{source}: images must be [n, 28, 28] or [n, 784], got "
                        f"{list(images.shape)}")
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:  # column vector [n, 1]
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"{source}: {len(images)} images but labels of shape "
                        f"{list(labels.shape)}")
    if len(images) == 0:
        raise UserError(f"{source}: no images (the file holds 0 samples)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{lsource}: labels must be integers, got {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= N_CLASSES):
        bad = int(np.flatnonzero((labels < 0) | (labels >= N_CLASSES))[0])
        raise UserError(f"{lsource}: labels must lie in 0..9, got {labels.min()}..{labels.max()} "
                        f"(first bad one: label {labels[bad]} of sample {bad})")
    if np.issubdtype(images.dtype, np.integer):
        if len(images) and (images.min() < 0 or images.max() > 255):
            raise UserError(f"{source}: integer pixels must lie in 0..255")
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
    elif np.issubdtype(images.dtype, np.floating):
        if len(images) and (images.min() < 0.0 or images.max() > 1.0):
            raise UserError(f"{source}: float pixels must already lie in [0, 1] "
                            f"(uint8 pixels are divided by 255)")
        x = torch.from_numpy(images.astype(np.float32))
    else:
        raise UserError(f"{source}: unsupported pixel dtype {images.dtype}")
    return ArrayDataset(x.contiguous(), torch.from_numpy(labels.astype(np.int64)), N_CLASSES)


def _load_npz(path: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Read ``x_train, y_train, x_test, y_test`` from a Keras-style ``mnist.npz``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in npz]
            if missing:
                raise UserError(f"{path}: missing arrays {missing} (has {sorted(npz.files)})")
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except UserError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"cannot read {path} as .npz: {exc}") from None
    return (_to_dataset(arrays["x_train"], arrays["y_train"], f"{path}:x_train", f"{path}:y_train"),
            _to_dataset(arrays["x_test"], arrays["y_test"], f"{path}:x_test", f"{path}:y_test"))


def load_mnist(data_dir: str | Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Load MNIST from local IDX files or an ``.npz`` (see the module docstring).

    Returns:
        ``(train, test)`` with ``x`` float32 ``[n, 784]`` (pixel / 255) and 10 classes.
    """
    root = Path(data_dir).expanduser()
    if root.is_file():
        if root.suffix == ".npz":
            return _load_npz(root)
        raise UserError(f"{root}: expected a directory with the MNIST IDX files or a .npz file")
    if not root.exists():
        raise UserError(f"MNIST data directory not found: {root}")

    paths, missing = _find_idx_dir(root)
    if paths is not None:
        arrays = {key: read_idx(p, IMAGE_MAGIC if key.endswith("images") else LABEL_MAGIC)
                  for key, p in paths.items()}
        for split in ("train", "test"):
            n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
            if n_img != n_lab:
                raise UserError(f"MNIST {split}: {n_img} images in "
                                f"{paths[f'{split}_images']} but {n_lab} labels in "
                                f"{paths[f'{split}_labels']}")
        return (_to_dataset(arrays["train_images"], arrays["train_labels"],
                            str(paths["train_images"]), str(paths["train_labels"])),
                _to_dataset(arrays["test_images"], arrays["test_labels"],
                            str(paths["test_images"]), str(paths["test_labels"])))
    if (root / "mnist.npz").is_file():
        return _load_npz(root / "mnist.npz")
    detail = f"; missing {', '.join(missing)}" if missing else ""
    raise UserError(f"no MNIST data in {root}: looked for {', '.join(FILES.values())} "
                    f"(each optionally .gz) in {root} and {root / 'MNIST' / 'raw'}, "
                    f"and for {root / 'mnist.npz'}{detail}")
