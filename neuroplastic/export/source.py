"""A trained network from a run directory or a checkpoint, ready to export.

``RUN_DIR`` is a run directory of ``neuroplastic run`` (one method) or its parent (several
methods side by side: ``method`` picks one). The checkpoint is the last task's
``ckpt_task<I>.pt`` unless ``task`` names another. A checkpoint path can be given
directly; its ``config.toml`` is read from the same directory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..runfile import checkpoints

__all__ = ["RunModel", "load_run_model", "build_from_state"]

@dataclass
class RunModel:
    """A network rebuilt from a run: the model, its config and the checkpoint it came from."""

    model: Any
    cfg: Any
    checkpoint: dict[str, Any]
    path: Path
    method: str
    task: int


def _method_dir(root: Path, method: str | None) -> Path:
    from ..config import load_config

    if checkpoints(root):
        if method is not None:
            methods = load_config(root / "config.toml").methods if (root / "config.toml").is_file() else []
            if methods and method not in methods:
                raise UserError(f"{root} holds method {methods[0]!r}, not {method!r}")
        return root
    subs = sorted(p.name for p in root.iterdir() if p.is_dir() and checkpoints(p))
    if not subs:
        raise UserError(f"{root} holds no checkpoints (ckpt_task<I>.pt): not a run directory")
    if method is None:
        if len(subs) == 1:
            return root / subs[0]
        raise UserError(f"{root} holds several methods ({', '.join(subs)}): choose one with --method")
    if method not in subs:
        raise UserError(f"method {method!r} is not in {root}; it holds {', '.join(subs)}")
    return root / method


def load_run_model(path: str | Path, method: str | None = None, task: int | None = None) -> RunModel:
    """Rebuild the network of a run (see the module doc)."""
    from ..config import load_config
    from ..io import load_checkpoint

    path = Path(path)
    if not path.exists():
        raise UserError(f"not found: {path}")
    if path.is_dir():
        mdir = _method_dir(path, method)
        ckpts = checkpoints(mdir)
        if task is None:
            task = max(ckpts)
        if task not in ckpts:
            raise UserError(f"no checkpoint for task {task} in {mdir} (tasks: {', '.join(map(str, sorted(ckpts)))})")
        ckpt_path = ckpts[task]
    else:
        ckpt_path, mdir = path, path.parent
    if not (mdir / "config.toml").is_file():
        raise UserError(f"{mdir} has no config.toml: cannot tell which network the checkpoint holds")
    cfg = load_config(mdir / "config.toml")
    state = load_checkpoint(ckpt_path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{ckpt_path} is not a neuroplastic checkpoint (no model state)")
    the_method = str(state.get("method", cfg.methods[0]))
    cfg = replace(cfg, methods=[the_method])
    model = build_from_state(cfg, state["model"], ckpt_path)
    return RunModel(model, cfg, state, ckpt_path, the_method, int(state.get("task", task or 0)))


class _Geometry:
    def __init__(self, n_inputs: int, n_outputs: int, n_heads: int) -> None:
        self.n_inputs, self.n_outputs, self.n_heads = n_inputs, n_outputs, n_heads


def build_from_state(cfg, sd: dict[str, torch.Tensor], where: Path):
    """The network of ``cfg`` with the weights (and masks) of state dict ``sd``."""
    from ..continual import build_model
    from ..sparse import load_sparse_state_dict

    weights = [k for k in sd if k.endswith(".weight") and sd[k].dim() >= 2]
    if not weights:
        raise UserError(f"{where} holds no synapse weights")
    first, last = sd[weights[0]], sd[weights[-1]]
    n_heads = cfg.data.tasks if cfg.data.stream == "split" and cfg.data.setting == "task" else 1
    if last.shape[0] % n_heads:
        raise UserError(f"{where}: readout of {last.shape[0]} outputs does not split into {n_heads} heads")
    n_inputs = first.shape[1] if cfg.model.arch == "mlp" else _cnn_inputs(cfg, sd, weights)
    geometry = _Geometry(int(n_inputs), int(last.shape[0] // n_heads), n_heads)
    try:
        model = build_model(cfg, geometry)
        load_sparse_state_dict(model, sd)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UserError(f"{where} does not match the network in its config.toml: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model


def _cnn_inputs(cfg, sd, weights) -> int:
    """Square image side of a conv run, from the first dense layer's fan-in."""
    fc_in = sd[weights[-1]].shape[1]
    c = cfg.model.channels[-1]
    cell = fc_in // c
    for side in range(1, 1025):
        h = side
        for _ in cfg.model.channels:
            h //= 2
        if h * h == cell:
            return side * side
    raise UserError("cannot infer the image size of this conv checkpoint")

