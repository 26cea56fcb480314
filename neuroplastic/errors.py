"""User-facing errors.

Anything a user can get wrong (a config key, a path, a shape) raises :class:`UserError`
with one line naming the problem; the CLI prints ``neuroplastic: error: <message>`` and
exits with code 2, never a traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: printed as one line by the CLI, exit code 2."""
