r"""A temporal task that needs memory: delayed evidence accumulation ("cues").

After the evidence-accumulation task of Bellec et al. (2020, *A solution to the learning
dilemma for recurrent networks of spiking neurons*), generated here from a seed, with no
file and no download. Every sample is a binary spike raster ``[T, D]`` (event data, like
SHD frames: streams set ``time_steps = T`` and the encoder passes the events through).

Channels (``D = n_channels``) form four groups of ``g = D // 4`` channels (the noise group
takes the remainder): **left cue** ``[0, g)``, **right cue** ``[g, 2g)``, **recall**
``[2g, 3g)``, **noise** ``[3g, D)``.

Time (``T = time_steps`` steps, ``c = cue_steps``, ``s = c + cue_gap``):

* cue period, steps ``[0, n_cues * s)``: cue ``k`` is a burst on steps
  ``[k s, k s + c)`` in which every channel of its side's group spikes with probability
  ``p_cue`` per step; the ``cue_gap`` steps after it are silent;
* delay, the next ``delay = T - n_cues * s - recall_steps`` steps: silent;
* recall, the last ``recall_steps`` steps: every recall channel spikes with probability
  ``p_recall`` per step, the same for both classes.

On top, every channel at every step spikes with probability ``p_noise`` (background).
The label is the side that got more cues: ``y = 1`` (right) if
:math:`n_{right} > n_{left}` else ``0`` (left); ``n_cues`` is odd, so there is no tie.
Each split has balanced labels (``n // 2`` of each class, one more left when ``n`` is
odd, in random order); given ``y``, the number of cues on the winning side is uniform on
``{(n_cues + 1) / 2, ..., n_cues}`` and the order of the cues is a random permutation.

Why it needs memory: the cues end ``delay + recall_steps`` steps before the end, and the
last ``recall_steps`` steps (and the delay) have the same distribution for both classes,
so a readout of the final steps learns the label only if the network carried the cue
counts across the delay. Read the network at the end (``[train] decoder = "last"``): a
decoder that averages the readout over all steps (``"mean"``) integrates the cues itself
and lets even a memoryless network solve the task.

Every random choice comes from one ``numpy.random.Generator`` seeded with ``seed``
(training samples first, then the test samples).
"""

from __future__ import annotations

import numpy as np
import torch

from neuroplastic.errors import UserError

from .base import ArrayDataset

__all__ = ["load_cues", "cue_layout", "CUE_GROUPS"]

N_CLASSES = 2
#: channel groups, in channel order
CUE_GROUPS = ("left", "right", "recall", "noise")


def _int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _prob(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise UserError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def cue_layout(time_steps: int = 80, n_channels: int = 40, n_cues: int = 7, cue_steps: int = 4,
               cue_gap: int = 2, recall_steps: int = 10) -> dict[str, object]:
    """The channel groups and time windows of :func:`load_cues` for these arguments.

    Returns ``{"left"|"right"|"recall"|"noise": range of channels, "cues": [range of
    steps of cue k], "delay": range of steps, "recall_steps": range of steps}``.
    Raises :class:`UserError` when the cues and the recall do not fit in ``time_steps``
    with a delay of at least one step.
    """
    T = _int("time_steps", time_steps, 1)
    D = _int("n_channels", n_channels, 4)
    n = _int("n_cues", n_cues, 1)
    if n % 2 == 0:
        raise UserError(f"n_cues must be odd (no tie between left and right), got {n}")
    c, gap, r = _int("cue_steps", cue_steps, 1), _int("cue_gap", cue_gap, 0), _int("recall_steps", recall_steps, 1)
    cue_end = n * (c + gap)
    delay = T - cue_end - r
    if delay < 1:
        raise UserError(f"time_steps = {T} is too short: {n} cues of {c}+{gap} steps and {r} recall steps "
                        f"need at least {cue_end + r + 1} (a delay of at least one step)")
    g = D // 4
    return {"left": range(0, g), "right": range(g, 2 * g), "recall": range(2 * g, 3 * g), "noise": range(3 * g, D),
            "cues": [range(k * (c + gap), k * (c + gap) + c) for k in range(n)],
            "delay": range(cue_end, cue_end + delay), "recall_steps": range(T - r, T)}


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    y = np.arange(n) % 2  # n // 2 right, the rest left
    return rng.permutation(y)


def _samples(rng: np.random.Generator, n: int, layout: dict, T: int, D: int, n_cues: int,
             p_cue: float, p_recall: float, p_noise: float) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``(x [n, T, D] float32, y [n] int64, sides [n, n_cues])`` with side 1 = right."""
    y = _labels(rng, n)
    majority = rng.integers(n_cues // 2 + 1, n_cues + 1, size=n)          # cues on the winning side
    k = np.arange(n_cues)[None, :]
    winning = k < majority[:, None]                                     # [n, n_cues] before shuffling
    sides = np.where(winning, y[:, None], 1 - y[:, None])
    sides = rng.permuted(sides, axis=1)
    p = np.full((n, T, D), p_noise, dtype=np.float32)
    left, right = slice(layout["left"].start, layout["left"].stop), slice(layout["right"].start, layout["right"].stop)
    for j, steps in enumerate(layout["cues"]):
        t = slice(steps.start, steps.stop)
        on_right = sides[:, j] == 1
        p[on_right, t, right] = p_cue
        p[~on_right, t, left] = p_cue
    rec = layout["recall_steps"]
    p[:, rec.start:rec.stop, layout["recall"].start:layout["recall"].stop] = p_recall
    x = rng.random((n, T, D), dtype=np.float32) < p
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)), sides


def load_cues(n_train: int = 2000, n_test: int = 500, time_steps: int = 80, n_channels: int = 40,
              n_cues: int = 7, cue_steps: int = 4, cue_gap: int = 2, recall_steps: int = 10,
              p_cue: float = 0.5, p_recall: float = 0.5, p_noise: float = 0.01, seed: int = 0,
              return_sides: bool = False):
    """Generate the delayed-cue evidence-accumulation task (see the module docstring).

    Args:
        n_train, n_test: samples per split.
        time_steps: ``T``; the delay is ``T - n_cues * (cue_steps + cue_gap) - recall_steps``
            steps (28 at the defaults) and must be at least 1.
        n_channels: ``D`` (>= 4), in four groups left / right / recall / noise.
        n_cues: number of cues per sample (odd).
        cue_steps, cue_gap: length of one cue burst and of the silence after it.
        recall_steps: length of the final recall burst.
        p_cue, p_recall, p_noise: spike probability per step and channel of a cue
            channel during its cue, of a recall channel during the recall, and of every
            channel at every step (background).
        seed: seeds the one ``numpy.random.Generator`` all choices come from.
        return_sides: also return the cue sides ``(train_sides, test_sides)``, int arrays
            ``[n, n_cues]`` (1 = right) in cue order.

    Returns:
        ``(train, test)`` :class:`ArrayDataset` with ``x`` float32 0/1 ``[n, T, D]`` and
        2 classes (0 = more left cues, 1 = more right cues); with ``return_sides``
        ``(train, test, train_sides, test_sides)``.
    """
    n_train, n_test = _int("n_train", n_train, 1), _int("n_test", n_test, 1)
    layout = cue_layout(time_steps, n_channels, n_cues, cue_steps, cue_gap, recall_steps)
    probs = [_prob(k, v) for k, v in (("p_cue", p_cue), ("p_recall", p_recall), ("p_noise", p_noise))]
    from neuroplastic.resources import check_fits

    # the float32 frames plus, for the larger split, the probabilities and uniforms drawn for it
    check_fits(4 * int(time_steps) * int(n_channels) * (n_train + n_test + 2 * max(n_train, n_test)),
               f"{n_train} + {n_test} samples x {time_steps} steps x {n_channels} channels need")
    rng = np.random.default_rng(_int("seed", seed, 0))
    args = (layout, int(time_steps), int(n_channels), int(n_cues), *probs)
    x_tr, y_tr, s_tr = _samples(rng, n_train, *args)
    x_te, y_te, s_te = _samples(rng, n_test, *args)
    train, test = ArrayDataset(x_tr, y_tr, N_CLASSES), ArrayDataset(x_te, y_te, N_CLASSES)
    return (train, test, s_tr, s_te) if return_sides else (train, test)
