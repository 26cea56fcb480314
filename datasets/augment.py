r"""Deterministic distortions of square images: more, and more varied, samples per task.

``augment(ds, copies, seed)`` returns ``copies`` versions of every image: the original
and ``copies - 1`` distorted ones. Each distortion is a random affine map followed by an
elastic deformation (Simard et al., 2003), both drawn from a generator seeded by
``seed``:

* affine: rotation :math:`\theta \sim U(-15°, 15°)`, scale :math:`s \sim U(0.85, 1.15)`,
  shear :math:`\sim U(-0.2, 0.2)`, shift :math:`\sim U(-0.1, 0.1)` of the image width;
* elastic: a displacement field of i.i.d. :math:`U(-1, 1)` values smoothed by a
  normalised Gaussian of width ``sigma`` = 4 pixels and multiplied by ``alpha`` = 34
  pixels (the MNIST values of Simard et al.; at 28x28, scaled with the side): about
  1.4 pixels of displacement (standard deviation), sampled bilinearly.

On the scikit-learn digits (8x8 upscaled to 28x28, each class a handful of strokes) this
turns the 1347 training images of a task into ``1347 * copies`` distinct ones whose
pixels no longer share one 64-dimensional subspace: tasks get longer and their activity
richer, as on MNIST, without a download (the proxy of docs/results.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from neuroplastic.errors import UserError

from .base import ArrayDataset

__all__ = ["augment", "distort"]


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def distort(images: torch.Tensor, generator: torch.Generator, alpha: float | None = None,
            sigma: float | None = None) -> torch.Tensor:
    """One random affine + elastic distortion per image of ``images [n, H, W]`` (values in
    ``[0, 1]``, returned clamped to it)."""
    n, H, W = images.shape
    scale_px = W / 28.0
    alpha = 34.0 * scale_px if alpha is None else alpha
    sigma = 4.0 * scale_px if sigma is None else sigma

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(shape or (n,), generator=generator)

    theta = u(-math.pi / 12, math.pi / 12)
    s = u(0.85, 1.15)
    shear = u(-0.2, 0.2)
    shift = u(-0.2, 0.2, n, 2)  # in normalised coordinates [-1, 1]: 0.1 of the width
    cos, sin = torch.cos(theta) / s, torch.sin(theta) / s
    A = torch.stack([torch.stack([cos, -sin + shear * cos, shift[:, 0]], 1),
                     torch.stack([sin, cos + shear * sin, shift[:, 1]], 1)], 1)  # [n, 2, 3]
    grid = F.affine_grid(A, (n, 1, H, W), align_corners=False)
    field = u(-1.0, 1.0, n, 2, H, W)
    k = _gaussian_kernel(sigma)
    pad = len(k) // 2
    field = F.conv2d(F.pad(field.reshape(-1, 1, H, W), (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    field = F.conv2d(F.pad(field, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1)).reshape(n, 2, H, W)
    # pixels -> normalised coordinates (2 / side per pixel)
    disp = field.permute(0, 2, 3, 1) * alpha * torch.tensor([2.0 / W, 2.0 / H])
    out = F.grid_sample(images[:, None], grid + disp, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0].clamp_(0.0, 1.0)


def augment(ds: ArrayDataset, copies: int, seed: int = 0) -> ArrayDataset:
    """``copies`` versions of every square image of ``ds`` (the original first), as one
    dataset of ``len(ds) * copies`` samples, in blocks: all originals, then the first
    distortion of every image, and so on. Deterministic in ``seed``."""
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise UserError(f"data.augment must be a positive integer (copies per image), got {copies!r}")
    if copies == 1:
        return ds
    if ds.x.dim() != 2 or math.isqrt(ds.x.shape[1]) ** 2 != ds.x.shape[1]:
        raise UserError(f"data.augment needs flat square images, got samples of shape {tuple(ds.shape)}")
    side = math.isqrt(ds.x.shape[1])
    images = ds.x.reshape(-1, side, side).to(torch.float32)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
    xs = [ds.x]
    for _ in range(copies - 1):
        xs.append(distort(images, gen).reshape(len(ds), -1).to(ds.x.dtype))
    return ArrayDataset(torch.cat(xs), ds.y.repeat(copies), ds.n_classes)
