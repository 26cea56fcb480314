"""Atomic file writing and checkpoints.

Every file is written to a temporary name in the same directory and renamed into place
(``os.replace`` is atomic on POSIX), so an interrupted run never leaves a half-written
``metrics.json``, ``run.h5`` or checkpoint. Checkpoints hold state dicts only and load
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

__all__ = ["atomic_path", "write_json", "write_text", "save_checkpoint", "load_checkpoint"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` a dict of state dicts / tensors / plain values atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory, not a file")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles: the message below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise UserError(f"cannot read checkpoint {path}: {_checkpoint_problem(path, exc)}") from None
    bad = _failed_checksum(path)  # torch does not check the CRCs: damaged tensor bytes load silently
    if bad is not None:
        raise UserError(f"cannot read checkpoint {path}: the file is damaged ({bad} fails its checksum)")
    return state


def _failed_checksum(path: Path) -> str | None:
    """The first member of a zip-format checkpoint whose CRC does not match (or ``None``)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
        return None  # not a zip (the legacy format) or unreadable: torch.load had its say


def _checkpoint_problem(path: Path, exc: Exception) -> str:
    """One line saying why ``torch.load`` failed on ``path`` (never torch's advice to load
    with ``weights_only=False``, which would run whatever code the file holds)."""
    text = str(exc).strip()
    why = text.splitlines()[0] if text else type(exc).__name__
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        return err.strerror or str(err)
    if not head:
        return "the file is empty"
    refused = "weights only load failed" in text.lower() or "weights_only" in text
    objects = "it holds objects other than tensors and plain values (not loaded: that could run code)"
    if not zipfile.is_zipfile(path):
        if head == b"PK\x03\x04":  # a zip archive without its end: cut short
            return "the file is truncated (an incomplete torch.save archive)"
        if refused and head[:1] == b"\x80":  # a pickle: the legacy torch.save format
            return objects
        return "not a torch.save file (corrupt or foreign bytes)"
    if refused:
        return objects
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
        return "the file is damaged (an unreadable torch.save archive)"
    if not any(n.endswith("/data.pkl") for n in names):
        return "a zip archive but not a torch.save file"
    if bad is not None:
        return f"the file is damaged ({bad} fails its checksum)"
    return f"the file is damaged ({type(exc).__name__}: {why[:200]})"
