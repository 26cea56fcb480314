"""One thread budget for torch and numba.

numba sizes its parallel regions by ``NUMBA_NUM_THREADS`` (default: all cores) and ignores
``OMP_NUM_THREADS`` and ``torch.set_num_threads``. Two processes that each asked for one
thread (two seeds side by side, or data-parallel ranks) then run two numba threads each
on two cores, and the threads spin at every barrier waiting for a descheduled partner:
a 6 s run took 105 s that way. Every numba-parallel entry point calls
:func:`match_torch_threads` first, so numba uses what torch uses.
"""

from __future__ import annotations

import numba
import torch

__all__ = ["match_torch_threads"]


def match_torch_threads() -> int:
    """Set numba's thread count to ``torch.get_num_threads()`` (capped by
    ``NUMBA_NUM_THREADS``) and return it."""
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n
