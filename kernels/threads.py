"""One thread budget for torch and numba.

numba sizes its parallel regions by ``NUMBA_NUM_THREADS`` (default: all cores) and ignores
``OMP_NUM_THREADS`` and ``torch.set_num_threads``. Worse, starting numba's OpenMP pool
sets the OpenMP thread count of the process, and torch's OpenMP runtime picks that up:
after the first numba kernel a process started with ``OMP_NUM_THREADS=1`` runs torch on
all cores. Two single-thread runs side by side (two seeds, or data-parallel ranks) then
spin at every barrier waiting for descheduled partners: a 10 s run took 54 s that way.

Every numba-parallel entry point calls :func:`match_torch_threads` first. Its first call
starts numba's pool with a trivial kernel and puts torch's thread count back to what it
was; every call sets numba's count to torch's. So both follow ``OMP_NUM_THREADS`` /
``torch.set_num_threads``.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

__all__ = ["match_torch_threads"]

_started = False


@numba.njit(parallel=True, cache=True)
def _touch(a):  # pragma: no cover - compiled
    for i in prange(a.shape[0]):
        a[i] = i


def match_torch_threads() -> int:
    """Set numba's thread count to ``torch.get_num_threads()`` (capped by
    ``NUMBA_NUM_THREADS``) and return it."""
    global _started
    if not _started:
        want = torch.get_num_threads()
        _touch(np.zeros(2 * numba.config.NUMBA_NUM_THREADS))  # starts numba's pool
        torch.set_num_threads(want)
        _started = True
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n
