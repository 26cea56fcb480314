"""Stopping a run at a safe point: Ctrl-C and SIGTERM set a flag the training loop reads
after every step; the loop then writes a checkpoint and the results so far and raises
:class:`~neuroplastic.errors.Interrupted`. A second Ctrl-C stops at once (Python's usual
``KeyboardInterrupt``). In a data-parallel run every rank stops at the same step (the flag
is all-reduced)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["StopRequest", "stop_on_signals"]


class StopRequest:
    """A flag set by a signal handler (or by :meth:`request`, for tests and embedding)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int = signal.SIGINT) -> None:
        self.signum = int(signum)

    def requested(self) -> bool:
        """Whether any rank was asked to stop (collective in a data-parallel run: call it
        at the same point on every rank)."""
        from .distributed import is_distributed

        if not is_distributed():
            return self.signum is not None
        import torch

        from .distributed import all_reduce

        flag = all_reduce(torch.tensor([0 if self.signum is None else self.signum]), "max")
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install SIGINT/SIGTERM handlers that set a :class:`StopRequest` (main thread only;
    elsewhere the request is only set by hand). The previous handlers come back on exit."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if signum == signal.SIGINT and stop.signum is not None:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        stop.request(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
