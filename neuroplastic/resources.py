"""How much memory this machine can give a run, and refusing sizes that cannot fit.

Impossible sizes (``model.hidden = [1000000000]``, ``data.tasks = 100000``) are refused
with one line *before* anything is allocated: the caller estimates the bytes it is about
to need (a lower bound: what the tensors themselves take, no allocator overhead) and
:func:`check_fits` compares it with the memory available now: ``MemAvailable`` of
``/proc/meminfo`` (``os.sysconf`` pages where there is no ``/proc``), capped by a cgroup
(container) limit when there is one. Where none of these can be read, nothing is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

__all__ = ["available_memory", "format_bytes", "check_fits"]


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysconf_available() -> int | None:
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def _cgroup_room() -> int | None:
    """What a cgroup memory limit leaves (v2 ``memory.max``, v1 ``limit_in_bytes``)."""
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                         "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(limit).read_text().strip()
            if text == "max":
                return None
            lim = int(text)
            if lim >= 1 << 60:  # v1's "no limit"
                return None
            return max(lim - int(Path(used).read_text().strip()), 0)
        except (OSError, ValueError):
            continue
    return None


def available_memory() -> int | None:
    """Bytes of RAM a new allocation can get now, or ``None`` when unknown."""
    free = _meminfo_available() or _sysconf_available()
    room = _cgroup_room()
    if free is None:
        return room
    return free if room is None else min(free, room)


def format_bytes(n: float) -> str:
    """``3.1 TB``, ``512.0 MB``... (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    raise AssertionError("unreachable")


def check_fits(nbytes: float, what: str) -> None:
    """Refuse (:class:`UserError`) when ``nbytes`` exceed the available memory.

    ``what`` starts the message and names the setting at fault, e.g.
    ``"model.hidden = [1000000000] needs"``; the estimate and what is available follow.
    """
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise UserError(f"{what} at least {format_bytes(nbytes)} of memory; this machine has "
                        f"{format_bytes(avail)} available")
