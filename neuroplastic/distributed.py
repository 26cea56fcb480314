"""Data-parallel training on ``torch.distributed`` (launched with ``torchrun``).

This module is the one place that knows whether the process is one rank of several.
Without ``torchrun`` (no process group) every function answers as a single process:
rank 0 of 1, main process, barriers are no-ops.
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["is_distributed", "rank", "world_size", "is_main", "barrier"]


def is_distributed() -> bool:
    """Whether a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files and prints results."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()
