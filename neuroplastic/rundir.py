"""The run directory: its layout, how it is created, written, read back and resumed.

Layout (one method; a command running several methods gives each its own subdirectory
``RUN/<method>/`` with this layout, plus ``RUN/config.toml`` and ``RUN/summary.json``: per
method run or stopped so far, ``acc``, ``bwt``, ``fwt``, ``wall_s``, ``sparsity``, ``status``
and ``tasks_done``; ``null`` numbers and ``tasks_done`` 0 for a method stopped inside its
first task)::

    config.toml        everything in force (plugin options with their defaults), with a
                       header naming the versions; ``neuroplastic run config.toml`` reruns it
    metrics.json       accuracy matrix, ACC/BWT/FWT, sparsity, dormant ratio, status
                       (running | interrupted | diverged | complete), provenance
    run.h5             arrays for figures (see :mod:`neuroplastic.runfile`)
    ckpt_task<i>.pt    the whole training state after task ``i`` (also what export reads)
    resume.pt          the whole training state inside a task (periodic, and on Ctrl-C /
                       SIGTERM); removed once the task's own checkpoint is written

Rules:

* A new run refuses an existing non-empty directory; ``force`` replaces a directory that
  holds a neuroplastic run (its files are removed first) and refuses any other directory
  (so ``--force --out ~`` deletes nothing); ``resume`` continues one.
* Every file is written to a temporary name and renamed (:mod:`neuroplastic.io`), with the
  user's umask; temporaries left by a killed process are removed when a run (re)opens the
  directory.
* Only rank 0 of a data-parallel run writes (:func:`neuroplastic.distributed.is_main`).

A checkpoint (``ckpt_task<i>.pt`` or ``resume.pt``) is a dict of state dicts and plain
values, loaded with ``weights_only=True``: ``model``, ``optimizer``, ``plugins`` (every
plugin's state), ``generator`` (the trainer's random state: data order and encoding),
``torch_rng`` (the global one), ``global_step``, ``task`` and ``position`` (``None`` when
the task is finished, else the epoch, the step inside it, the epoch's batch order and
each source's permutation), ``acc_matrix``, ``baseline``, ``losses``, ``probe`` (the
figures' recordings so far), ``wall_s`` and ``method``. Restoring it and training on gives
the same numbers as a run that was never interrupted (same seed, CPU).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig, to_toml
from .distributed import barrier, is_main
from .errors import UserError
from .io import load_checkpoint, save_checkpoint, write_json, write_text
from .provenance import versions
from .runfile import checkpoint_name, checkpoints, write_run_h5
from .sparse import load_sparse_state_dict

__all__ = ["RunDir", "MethodDir", "resolved_config", "capture_state", "restore_state", "CONFIG_HEADER"]

#: first line of every ``config.toml`` a run writes: marks a directory as a run directory
CONFIG_HEADER = "# neuroplastic run configuration"
IN_TASK = "resume.pt"


def resolved_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with every plugin's options written out (defaults included), for the record."""
    from dataclasses import asdict

    from .plugins import options_for, parse_method

    plugins = dict(cfg.plugins)
    for method in cfg.methods:
        for name in parse_method(method):
            opts = options_for(name, plugins.get(name))
            if opts is not None:
                plugins[name] = {k: v for k, v in asdict(opts).items() if v is not None}
    return replace(cfg, plugins=plugins)


def _config_text(cfg: RunConfig) -> str:
    v = versions()
    return (f"{CONFIG_HEADER} (neuroplastic {v['neuroplastic']}, commit {v['git_commit'] or 'n/a'}, "
            f"torch {v['torch']}, numba {v['numba']})\n" + to_toml(resolved_config(cfg)))


def _remove_temporaries(root: Path) -> int:
    """Delete ``.<name>.<random>.tmp`` files (atomic writes cut short by a kill)."""
    n = 0
    for p in root.rglob(".*.tmp"):
        if p.is_file():
            p.unlink()
            n += 1
    return n


def _is_run_dir(path: Path) -> bool:
    """A directory some neuroplastic run wrote: its ``config.toml`` carries our header, or it
    holds a run's files (runs written before the header existed)."""
    cfg = path / "config.toml"
    if cfg.is_file():
        with open(cfg, errors="replace") as f:
            if f.readline().startswith(CONFIG_HEADER):
                return True
        return any((path / n).is_file() for n in ("metrics.json", "summary.json", "run.h5"))
    return False


class MethodDir:
    """The files of one method's run (``RUN`` itself, or ``RUN/<method>``)."""

    def __init__(self, path: Path, method: str) -> None:
        self.path, self.method = path, method

    # -- writing ----------------------------------------------------------------------
    def write_config(self, cfg: RunConfig) -> None:
        if is_main():
            write_text(self.path / "config.toml", _config_text(cfg))

    def save_task_end(self, task: int, state: dict[str, Any]) -> None:
        """``ckpt_task<task>.pt``; the in-task checkpoint it supersedes is removed."""
        if is_main():
            save_checkpoint(self.path / checkpoint_name(task), state)
            self.discard_in_task()

    def discard_in_task(self) -> None:
        """Remove ``resume.pt`` (superseded by a task's checkpoint)."""
        if is_main():
            (self.path / IN_TASK).unlink(missing_ok=True)

    def save_in_task(self, state: dict[str, Any]) -> None:
        if is_main():
            save_checkpoint(self.path / IN_TASK, state)

    def write_results(self, metrics: dict[str, Any], tree: dict[str, Any], attrs: dict[str, Any]) -> None:
        """``run.h5`` then ``metrics.json`` (the latter last: it says how far the run got)."""
        if is_main():
            write_run_h5(self.path / "run.h5", tree, attrs)
            write_json(self.path / "metrics.json", metrics)

    def set_status(self, status: str) -> dict[str, Any] | None:
        """Rewrite ``metrics.json``'s ``status`` (after an interruption); returns the metrics."""
        m = self.read_metrics()
        if m is not None and is_main():
            m["status"] = status
            write_json(self.path / "metrics.json", m)
        return m

    # -- reading ----------------------------------------------------------------------
    def read_metrics(self) -> dict[str, Any] | None:
        import json

        p = self.path / "metrics.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"cannot resume: {p} is not valid JSON") from None

    def complete(self) -> bool:
        """Finished: ``metrics.json`` says so and the last task's checkpoint is there."""
        m = self.read_metrics()
        return (bool(m) and m.get("status") == "complete" and m.get("method") == self.method
                and (self.path / checkpoint_name(len(m.get("tasks", [])) - 1)).is_file())

    def task_state(self, task: int) -> dict[str, Any] | None:
        """The checkpoint written after ``task`` (``None`` if there is none)."""
        p = self.path / checkpoint_name(task)
        return load_checkpoint(p) if p.is_file() else None

    def latest_state(self) -> dict[str, Any] | None:
        """The furthest checkpoint (by ``global_step``; a finished task wins a tie), or ``None``."""
        found = [self.path / IN_TASK] if (self.path / IN_TASK).is_file() else []
        found += [p for _, p in sorted(checkpoints(self.path).items())[-1:]]
        states = [load_checkpoint(p) for p in found]
        for p, s in zip(found, states):
            if not isinstance(s, dict) or "model" not in s or "task" not in s:
                raise UserError(f"cannot resume from {p}: not a neuroplastic checkpoint")
            if s.get("method", self.method) != self.method:
                raise UserError(f"cannot resume from {p}: it belongs to method {s.get('method')!r}, "
                                f"not {self.method!r}")
            if "global_step" not in s:
                raise UserError(f"cannot resume from {p}: written by an older version without the "
                                "training position (rerun with --force)")
        if not states:
            return None
        return max(states, key=lambda s: (int(s["global_step"]), s.get("position") is None))


class RunDir:
    """A run directory: opened new (refusing a non-empty one), forced, or for resuming."""

    def __init__(self, root: str | Path, cfg: RunConfig) -> None:
        self.root, self.cfg = Path(root), cfg
        self.several = len(cfg.methods) > 1

    @classmethod
    def open(cls, cfg: RunConfig, *, resume: bool = False, force: bool = False) -> RunDir:
        """Prepare ``cfg.out``; nothing is created before the caller has validated the run."""
        if resume and force:
            raise UserError("--resume and --force exclude each other")
        if not str(cfg.out).strip():
            raise UserError("out (--out) must name a directory, got an empty string")
        root = Path(cfg.out)
        if root.exists() and not root.is_dir():
            raise UserError(f"run directory {root} exists and is not a directory")
        filled = root.is_dir() and any(root.iterdir())
        if resume:
            if not _is_run_dir(root):
                raise UserError(f"cannot resume {root}: not a run directory (no config.toml written by neuroplastic)")
        elif filled:
            if not force:
                raise UserError(f"run directory {root} already holds files; --resume continues that run, "
                                "--force replaces it, or choose another --out")
            if not _is_run_dir(root):
                raise UserError(f"--force refuses to empty {root}: it does not hold a neuroplastic run "
                                "(no config.toml written by neuroplastic)")
        return cls(root, cfg)

    def create(self, *, resume: bool = False, force: bool = False) -> None:
        """Make (or empty, with ``force``) the directory and write ``config.toml``; on resume
        only remove temporaries left by a killed write."""
        barrier()  # every rank has checked the directory before rank 0 fills it
        if is_main():
            if resume:
                _remove_temporaries(self.root)
            else:
                if force and self.root.is_dir():
                    for child in self.root.iterdir():
                        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                self.root.mkdir(parents=True, exist_ok=True)
                write_text(self.root / "config.toml", _config_text(self.cfg))
        barrier()

    def method(self, method: str) -> MethodDir:
        md = MethodDir(self.root / method if self.several else self.root, method)
        if self.several and not md.path.joinpath("config.toml").is_file():
            md.write_config(replace(self.cfg, methods=[method], out=str(md.path)))
        return md

    def write_summary(self, results: dict[str, dict[str, Any]]) -> None:
        if self.several and is_main():
            write_json(self.root / "summary.json",
                       {m: {k: r.get(k) for k in ("acc", "bwt", "fwt", "wall_s", "sparsity", "status", "tasks_done")}
                        for m, r in results.items()})

    def remove_if_unused(self) -> None:
        """Delete a directory this process created when the run failed before writing any
        result (so a mistake found late leaves nothing behind)."""
        if is_main() and self.root.is_dir() and not any(self.root.rglob("*.pt")):
            shutil.rmtree(self.root, ignore_errors=True)


# -- what a checkpoint holds ---------------------------------------------------------

def _to_torch(tree: Any) -> Any:
    """numpy arrays -> tensors (``weights_only`` loading takes tensors, not arrays)."""
    if isinstance(tree, dict):
        return {k: _to_torch(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_torch(v) for v in tree]
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(tree))
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_numpy(v) for v in tree]
    if isinstance(tree, torch.Tensor):
        return tree.numpy()
    return tree


def capture_state(trainer, *, method: str, task: int, position: dict | None, acc_matrix: list,
                  baseline: list, losses: dict, probe: dict, wall_s: float) -> dict[str, Any]:
    """Everything needed to continue training exactly where it stands."""
    return {
        "method": method, "task": task, "position": position,
        "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "plugins": trainer.plugins.state_dict(), "generator": trainer.generator.get_state(),
        "torch_rng": torch.get_rng_state(), "global_step": trainer.global_step,
        "acc_matrix": [list(r) for r in acc_matrix], "baseline": list(baseline),
        "losses": {k: list(v) for k, v in losses.items()}, "probe": _to_torch(probe), "wall_s": float(wall_s),
    }


def restore_state(trainer, state: dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint's training state into ``trainer`` (model, optimizer, plugins and
    random states); returns the run's records (``acc_matrix``, ``baseline``, ``losses``,
    ``probe``, ``wall_s``, ``task``, ``position``)."""
    try:
        load_sparse_state_dict(trainer.model, state["model"])
        trainer.plugins.load_state_dict(state["plugins"])
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot resume: the checkpoint does not fit this run's config ({why})") from None
    trainer.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    trainer.global_step = int(state["global_step"])
    return {"acc_matrix": [list(r) for r in state["acc_matrix"]], "baseline": list(state["baseline"]),
            "losses": {k: list(v) for k, v in state["losses"].items()}, "probe": _to_numpy(state["probe"]),
            "wall_s": float(state["wall_s"]), "task": int(state["task"]), "position": state["position"]}

