r"""Fixed-point weights as neuromorphic chips take them: signed integers plus one scale per
output row.

For a weight row :math:`w_r` and ``bits`` :math:`b`, :math:`q_{max} = 2^{b-1} - 1`,
:math:`s_r = \max_j |w_{rj}| / q_{max}` (1 for an all-zero row) and
:math:`q_{rj} = \mathrm{round}(w_{rj} / s_r)`, clipped to :math:`[-q_{max}, q_{max}]`;
the weight the network computes with is :math:`q_{rj} s_r`. Rows are output neurons
(``weight[r]``; for a conv, output channel ``r``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError

__all__ = ["BITS", "quantize_rows", "dequantize_rows", "quantize_model"]

BITS = (8, 16)


def _check(bits: int) -> None:
    if bits not in BITS:
        raise UserError(f"quantize must be one of {BITS} bits, got {bits!r}")


def quantize_rows(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scales)`` of a weight ``[rows, ...]``: ``q`` int8/int16 of ``w``'s shape, ``scales`` float32 [rows]."""
    _check(bits)
    w = np.asarray(w, dtype=np.float32)
    rows = w.reshape(w.shape[0], -1)
    qmax = 2 ** (bits - 1) - 1
    peak = np.abs(rows).max(axis=1) if rows.size else np.zeros(w.shape[0], np.float32)
    scales = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(rows / scales[:, None]), -qmax, qmax).astype(np.int8 if bits == 8 else np.int16)
    return q.reshape(w.shape), scales


def dequantize_rows(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 weight ``q * scale[row]``."""
    q = np.asarray(q)
    return (q.reshape(q.shape[0], -1).astype(np.float32) * np.asarray(scales, np.float32)[:, None]).reshape(q.shape)


@torch.no_grad()
def quantize_model(model: torch.nn.Module, bits: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Replace every synapse layer's weight by its fixed-point value (in place, masks kept).
    Returns ``{layer: (q, scales)}``."""
    from ..synapses import is_synapse

    _check(bits)
    out = {}
    for name, layer in model.named_modules():
        if not is_synapse(layer):
            continue
        q, s = quantize_rows(layer.effective_weight().detach().cpu().numpy(), bits)
        layer.weight.copy_(torch.from_numpy(dequantize_rows(q, s)).to(layer.weight))
        out[name.removeprefix("layers.")] = (q, s)
    return out
