"""What produced a run: versions, git commit, host, seed and times (``metrics.json``,
``run.h5`` attributes and the comment header of ``config.toml``)."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["versions", "git_commit", "now_utc", "provenance"]


def now_utc() -> str:
    """The current time, ISO 8601 in UTC with seconds (``2026-12-02T13:55:11Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree this package was imported from, ``+dirty`` when it
    has uncommitted changes; ``None`` outside a git checkout (an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """Versions of this package, Python and the numerical libraries a result depends on."""
    import numba
    import numpy
    import torch

    from . import __version__

    return {"neuroplastic": __version__, "git_commit": git_commit(), "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": numpy.__version__, "numba": numba.__version__,
            "platform": platform.platform()}


def provenance(seed: int, started: str, finished: str | None = None) -> dict[str, Any]:
    """The ``provenance`` entry of ``metrics.json``: versions, seed, start and end times,
    torch's thread count and the number of data-parallel ranks."""
    import torch

    from .distributed import world_size

    return {**versions(), "seed": int(seed), "started": started, "finished": finished,
            "torch_threads": torch.get_num_threads(), "world_size": world_size()}
