"""``run.h5``: the arrays of a run, for plots and reports (and the names of the run's
checkpoints, ``ckpt_task<i>.pt``, which the runner writes and export and plot read).

Layout (all written atomically at the end of every task, so a crash keeps the last one)::

    /acc_matrix          float [tasks_done, T]  (percent; R[i, j])
    /baseline            float [T]              untrained accuracies b_j
    /losses/task_<i>     float [steps]          training loss per step
    /dormant/<layer>     float [tasks_done]     dormant ratio after each task
    /plugins/<name>/...  whatever each plugin's ``records()`` returns
    attrs: method, tasks (task names, JSON), acc, bwt, fwt, wall_s
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .io import atomic_path

__all__ = ["write_run_h5", "read_run_h5", "checkpoint_name", "checkpoints"]

_CKPT = re.compile(r"^ckpt_task(\d+)\.pt$")


def checkpoint_name(task: int) -> str:
    """File name of the checkpoint written after ``task`` (``ckpt_task<i>.pt``)."""
    return f"ckpt_task{task}.pt"


def checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """``{task: path}`` of the checkpoints in a method's run directory (``{}`` if none)."""
    d = Path(run_dir)
    return {int(m.group(1)): p for p in d.iterdir() if (m := _CKPT.match(p.name))} if d.is_dir() else {}


def _write_tree(group: h5py.Group, tree: dict[str, Any]) -> None:
    for key, value in tree.items():
        key = str(key)
        if isinstance(value, dict):
            _write_tree(group.require_group(key), value)
        elif value is None:
            continue
        else:
            arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
            if arr.dtype == object:
                arr = np.asarray(json.dumps(value.tolist() if hasattr(value, "tolist") else value))
            group.create_dataset(key, data=arr)


def write_run_h5(path: str | Path, tree: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Write nested ``tree`` (dicts of arrays) and scalar/JSON ``attrs`` atomically."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_tree(f, tree)
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, list | dict) or v is None else v


def read_run_h5(path: str | Path) -> dict[str, Any]:
    """Read a ``run.h5`` back as nested dicts of numpy arrays (plus ``"attrs"``)."""

    def walk(g):
        return {k: walk(v) if isinstance(v, h5py.Group) else v[()] for k, v in g.items()}

    with h5py.File(path, "r") as f:
        out = walk(f)
        out["attrs"] = dict(f.attrs)
    return out
