"""User-facing errors.

Anything a user can get wrong (a config key, a path, a shape) raises :class:`UserError`
with one line naming the problem; the CLI prints ``neuroplastic: error: <message>`` and
exits with code 2, never a traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: printed as one line by the CLI, exit code 2."""


class RunStopped(Exception):
    """A run that stopped before its end on purpose (not a bug): the CLI prints the message
    as one line and exits with ``exit_code``."""

    exit_code = 1


class Interrupted(RunStopped):
    """Ctrl-C or SIGTERM: the run wrote a checkpoint at a safe point and can be resumed.
    Exit code 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), as shells report."""

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class Diverged(RunStopped):
    """The loss became NaN or infinite: training stopped, the last good checkpoint is kept
    (exit code 3)."""

    exit_code = 3
