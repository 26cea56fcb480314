"""Reading run directories for figures: one :class:`Run` per method.

A run directory of ``neuroplastic run`` holds ``config.toml``, ``metrics.json``, ``run.h5``
and ``ckpt_task<i>.pt``; a run of several methods holds one such directory per method (and
``summary.json``). :func:`load_runs` accepts either and returns what is there: a run
interrupted half-way (no ``metrics.json`` yet, or fewer tasks than planned) or a ``run.h5``
of an older layout gives a :class:`Run` with the parts it has; a directory that is not a run
is a :class:`~neuroplastic.errors.UserError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..runfile import checkpoints, read_run_h5

__all__ = ["Run", "load_runs", "is_run_dir"]

@dataclass
class Run:
    """One method's run, as far as it got.

    ``h5`` is ``run.h5`` as nested dicts of numpy arrays (``{}`` when missing or unreadable):
    ``acc_matrix [tasks_done, T]``, ``baseline``, ``losses/task_i``, ``dormant/L``,
    ``sparsity/L``, ``rates/task_i/L``, ``probe/...`` (see :mod:`neuroplastic.records`),
    ``plugins/<name>/...``. ``metrics`` is ``metrics.json`` (``{}`` when missing).
    """

    path: Path
    method: str
    metrics: dict[str, Any] = field(default_factory=dict)
    h5: dict[str, Any] = field(default_factory=dict)
    config: str | None = None
    checkpoints: dict[int, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what was missing or unreadable
    tag: str = ""  # the run directory's name when separate runs are compared

    @property
    def acc_matrix(self) -> np.ndarray | None:
        """``R[i, j]`` (percent) for the tasks done, or None."""
        R = self.h5.get("acc_matrix")
        if R is None and self.metrics.get("acc_matrix"):
            R = np.asarray(self.metrics["acc_matrix"], dtype=np.float64)
        return None if R is None or np.size(R) == 0 else np.asarray(R, dtype=np.float64)

    @property
    def tasks(self) -> list[str]:
        names = self.metrics.get("tasks") or _json_attr(self.h5.get("attrs", {}).get("tasks"))
        if names:
            return [str(t) for t in names]
        R = self.acc_matrix
        return [f"task {j}" for j in range(R.shape[1])] if R is not None else []

    @property
    def label(self) -> str:
        """``method``, or ``tag/method`` when separate runs are compared."""
        return f"{self.tag}/{self.method}" if self.tag else self.method

    def masks(self, task: int | None = None) -> dict[str, np.ndarray]:
        """The boolean synapse masks of a checkpoint (the last by default): ``{layer: mask}``."""
        import torch

        if not self.checkpoints:
            return {}
        i = max(self.checkpoints) if task is None else task
        try:
            state = torch.load(self.checkpoints[i], map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a figure is skipped, the report says why
            self.problems.append(f"{self.checkpoints[i].name} unreadable")
            return {}
        sd = state.get("model", {}) if isinstance(state, dict) else {}
        return {k[len("layers."):-len(".mask")] if k.startswith("layers.") else k[:-len(".mask")]: v.numpy()
                for k, v in sd.items() if k.endswith(".mask") and v is not None}


def _json_attr(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return None
    return v


def is_run_dir(path: Path) -> bool:
    """A method's run directory: ``metrics.json``, ``run.h5`` or a checkpoint in it."""
    return path.is_dir() and (any((path / f).is_file() for f in ("metrics.json", "run.h5")) or bool(checkpoints(path)))


def _read_h5(path: Path, problems: list[str]) -> dict[str, Any]:
    if not path.is_file():
        problems.append("run.h5 missing")
        return {}
    try:
        return read_run_h5(path)
    except Exception as exc:  # noqa: BLE001 - partial or foreign file: report what there is
        problems.append(f"run.h5 unreadable ({type(exc).__name__})")
        return {}


def _load_one(d: Path) -> Run:
    problems: list[str] = []
    metrics: dict[str, Any] = {}
    if (d / "metrics.json").is_file():
        try:
            metrics = json.loads((d / "metrics.json").read_text())
            if not isinstance(metrics, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            problems.append("metrics.json unreadable")
            metrics = {}
    else:
        problems.append("metrics.json missing (run interrupted before its first task ended?)")
    h5 = _read_h5(d / "run.h5", problems)
    config = (d / "config.toml").read_text() if (d / "config.toml").is_file() else None
    method = metrics.get("method") or _json_attr(h5.get("attrs", {}).get("method")) or d.name
    if isinstance(method, bytes):
        method = method.decode()
    ckpts = checkpoints(d)
    return Run(path=d, method=str(method), metrics=metrics, h5=h5, config=config, checkpoints=ckpts,
               problems=problems)


def load_runs(path: str | Path) -> list[Run]:
    """Every method's :class:`Run` under ``path`` (itself a run, or a parent of several)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"run directory not found: {path}")
    if not path.is_dir():
        raise UserError(f"{path} is not a directory (give a run directory)")
    if is_run_dir(path):
        return [_load_one(path)]
    subs = sorted(p for p in path.iterdir() if p.is_dir() and is_run_dir(p))
    if not subs:
        raise UserError(f"{path} is not a run directory (no metrics.json, run.h5 or checkpoints in it "
                        "or in its subdirectories)")
    return [_load_one(p) for p in subs]
