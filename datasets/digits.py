"""scikit-learn's bundled handwritten digits, optionally resized to MNIST's 28x28.

The 1797 8x8 images (values 0..16) ship inside scikit-learn, so they are the one real
data set available without a download. They are scaled to ``[0, 1]`` and, by default,
resized to 28x28 with bilinear interpolation: each permuted task then lives in its own
~64-dimensional subspace of a 784-dimensional input, as with MNIST, instead of all tasks
crowding the same 64 dimensions (where projection methods such as HLOP or GPM run out of
room after a few tasks).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from neuroplastic.errors import UserError

from .base import ArrayDataset

__all__ = ["load_digits"]

N_CLASSES = 10


def load_digits(
    size: int = 28, test_fraction: float = 0.25, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """Load scikit-learn's digits as flattened float32 images in ``[0, 1]``.

    Args:
        size: side of the square output image; 8 keeps the original resolution, any
            other value resizes with bilinear interpolation (``align_corners=False``).
        test_fraction: fraction of the 1797 samples held out for testing (stratified).
        seed: ``random_state`` of the stratified train/test split.

    Returns:
        ``(train, test)`` with ``x`` of shape ``[n, size * size]`` and 10 classes.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise UserError(f"digits size must be a positive integer, got {size!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise UserError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0  # [n, 8, 8]
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    size = int(size)
    if size != 8:
        images = F.interpolate(images[:, None], size=(size, size), mode="bilinear",
                               align_corners=False)[:, 0]
    x = images.reshape(len(images), size * size).clamp_(0.0, 1.0).contiguous()

    try:
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=float(test_fraction),
            stratify=bunch.target, random_state=seed)
    except ValueError as exc:  # e.g. a test fraction too small to hold every class
        raise UserError(f"cannot split digits with test_fraction={test_fraction}: {exc}") from None
    train_idx = torch.as_tensor(np.sort(train_idx))
    test_idx = torch.as_tensor(np.sort(test_idx))
    return (ArrayDataset(x[train_idx], labels[train_idx], N_CLASSES),
            ArrayDataset(x[test_idx], labels[test_idx], N_CLASSES))
