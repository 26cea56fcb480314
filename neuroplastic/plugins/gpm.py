r"""GPM: Gradient Projection Memory (Saha, Garg & Roy, ICLR 2021; sahagobinda/GPM).

At the end of every task the *representation matrix* of each protected layer is
collected: the presynaptic activity ``R [n, D]`` on ``n_samples`` training samples (for a
spiking layer every time step of every sample is a row, ``activity = "spikes"``, or the
firing rate over ``T``, ``"rate"``; conv layers use unfolded patches). With the stored
orthonormal basis ``U [k, D]`` (rows) of earlier tasks:

* task 0: SVD :math:`R^\top = U \Sigma V^\top`; keep the first ``r`` directions, ``r`` the
  number of leading singular values whose cumulative energy
  :math:`\sum_{i\le r}\sigma_i^2/\sum_i\sigma_i^2` stays *below* the threshold (GPM's Eq. 5,
  ``np.sum(np.cumsum(ratio) < threshold)``);
* task t > 0: project out what the basis already captures,
  :math:`\hat R = R - R U^\top U`, SVD of :math:`\hat R`, and add the fewest leading
  directions for which
  :math:`(\|R\|^2 - \|\hat R\|^2 + \sum_{i\le r}\hat\sigma_i^2) / \|R\|^2 \ge` threshold
  (Eq. 9); none if the old basis already captures enough.

The threshold is per layer, ``threshold[l] + threshold_inc * t`` (GPM's CIFAR schedule
0.97 + 0.003 t; its PMNIST choice was 0.95/0.99/0.99). For t > 0 the gradient of each
protected weight is projected, :math:`g \leftarrow g - g U^\top U` (``g`` reshaped to
``[C_out, D]``). Like HLOP, biases and other ``ndim <= 1`` parameters are frozen after
task 0 (``freeze_non_weights``; GPM zeroes their gradients) and the optimizer state is
reset at every task start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import distributed
from .base import Plugin
from .projection import (
    activity_matrix,
    collect_activity,
    energy_fraction,
    input_dim,
    is_weight,
    project_weight_grad,
    reset_optimizer_state,
    resolve_layers,
)

__all__ = ["GPM", "GPMOptions", "gpm_update"]


@dataclass
class GPMOptions:
    """The ``[gpm]`` config section."""

    layers: list | None = None         # protected synapse layers (default: all but a multi-head readout)
    threshold: list | None = None      # energy threshold per layer (one entry = all); default [0.97]
    threshold_inc: float = 0.003       # added per task (GPM's CIFAR schedule)
    n_samples: int = 300               # training samples in the representation matrix (GPM PMNIST)
    activity: str = "spikes"           # "spikes" (every step a row) or "rate"
    max_rows: int | None = 8192        # random subset of rows (conv patches) before the SVD
    freeze_non_weights: bool = True
    reset_optimizer: bool = True
    seed: int = 0  # offset on the run's seed (--seed) for this plugin's random choices

    def __post_init__(self) -> None:
        if self.threshold is not None:
            if not isinstance(self.threshold, list | tuple) or not self.threshold:
                raise ValueError(f"gpm.threshold must be a non-empty list, got {self.threshold!r}")
            for v in self.threshold:
                if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
                    raise ValueError(f"gpm.threshold entries must be in (0, 1], got {v!r}")
        if not isinstance(self.threshold_inc, int | float) or self.threshold_inc < 0:
            raise ValueError(f"gpm.threshold_inc must be >= 0, got {self.threshold_inc!r}")
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise ValueError(f"gpm.n_samples must be a positive integer, got {self.n_samples!r}")
        if self.activity not in ("spikes", "rate"):
            raise ValueError(f"gpm.activity must be 'spikes' or 'rate', got {self.activity!r}")
        if self.max_rows is not None and (not isinstance(self.max_rows, int) or self.max_rows < 1):
            raise ValueError(f"gpm.max_rows must be a positive integer, got {self.max_rows!r}")
        if self.layers is not None and not isinstance(self.layers, list | tuple):
            raise ValueError(f"gpm.layers must be a list, got {self.layers!r}")


def gpm_update(R: torch.Tensor, U: torch.Tensor, threshold: float) -> tuple[torch.Tensor, float]:
    """Extend the orthonormal basis ``U [k, D]`` (rows) with the directions of the
    representation ``R [n, D]`` needed to reach ``threshold`` of its energy (GPM's Eq. 5
    for an empty basis, Eq. 9 otherwise). Returns ``(new U, energy fraction of R the old
    basis captured)``."""
    R = R.double()
    D = R.shape[1]
    total = float((R * R).sum())
    if total == 0.0:
        return U, 0.0
    Ud = U.double()
    if U.shape[0] == 0:
        _, S, Vh = torch.linalg.svd(R, full_matrices=False)
        ratio = (S * S) / total
        r = int((torch.cumsum(ratio, 0) < threshold).sum())
        return Vh[:r].to(U.dtype).contiguous(), 0.0
    R_hat = R - (R @ Ud.T) @ Ud
    hat = float((R_hat * R_hat).sum())
    captured = (total - hat) / total
    _, S, Vh = torch.linalg.svd(R_hat, full_matrices=False)
    ratio = ((S * S) / total).tolist()
    acc, r = captured, 0
    for v in ratio:
        if acc >= threshold:
            break
        acc += v
        r += 1
    if r == 0:
        return U, captured
    new = Vh[:r]
    new = new - (new @ Ud.T) @ Ud  # numerically re-orthogonalise against the old basis
    new = torch.linalg.qr(new.T).Q.T
    out = torch.cat([Ud, new])[:D]
    return out.to(U.dtype).contiguous(), captured


class GPM(Plugin):
    """Orthogonal gradient projection onto the complement of stored activity bases."""

    name = "gpm"
    Options = GPMOptions

    def __init__(self, options: GPMOptions | None = None) -> None:
        self.opts = options or GPMOptions()
        self.task = -1
        self.U: dict[str, torch.Tensor] = {}
        self.sizes: dict[str, list[int]] = {}
        self.captured: dict[str, list[float]] = {}
        self.svd_s: list[float] = []
        self.projection_s = 0.0

    def setup(self, trainer) -> None:
        self.trainer = trainer
        model = trainer.model
        self.layers = resolve_layers(model, self.opts.layers)
        thr = list(self.opts.threshold or [0.97])
        if len(thr) == 1:
            thr = thr * len(self.layers)
        if len(thr) != len(self.layers):
            from ..errors import UserError

            raise UserError(f"gpm.threshold needs 1 or {len(self.layers)} entries (one per protected "
                            f"layer: {', '.join(self.layers)}), got {len(thr)}")
        self.thresholds = dict(zip(self.layers, (float(t) for t in thr)))
        dev = next(model.parameters()).device
        for n, layer in self.layers.items():
            self.U.setdefault(n, torch.zeros(0, input_dim(layer), device=dev))
            self.sizes.setdefault(n, [])
            self.captured.setdefault(n, [])

    def threshold(self, name: str, task_id: int) -> float:
        return min(1.0, self.thresholds[name] + self.opts.threshold_inc * task_id)

    def on_task_start(self, task_id: int, task) -> None:
        if task_id > 0 and self.opts.reset_optimizer:
            reset_optimizer_state(self.trainer.optimizer)
        self.task = task_id

    def on_task_end(self, task_id: int, task) -> None:
        o = self.opts
        t0 = time.perf_counter()
        acts = collect_activity(self.trainer, task.train, task.head, self.layers, o.n_samples,
                                seed=self.base_seed() + 104729 * task_id)
        gen = torch.Generator().manual_seed(self.base_seed() + task_id)
        for n, layer in self.layers.items():
            R = torch.cat([activity_matrix(layer, a, o.activity) for a in acts[n]])
            if o.max_rows is not None and R.shape[0] > o.max_rows:
                R = R[torch.randperm(R.shape[0], generator=gen)[: o.max_rows].to(R.device)]
            self.U[n], cap = gpm_update(R, self.U[n], self.threshold(n, task_id))
            # data parallel: R was gathered (collect_activity), so every rank computed the same
            # basis; rank 0's is kept bit for bit (the SVD may round differently elsewhere)
            self.U[n] = distributed.broadcast_tensor(self.U[n], 0, device=self.U[n].device)
            self.captured[n].append(cap)
            self.sizes[n].append(int(self.U[n].shape[0]))
        self.svd_s.append(time.perf_counter() - t0)

    def trainable(self, name: str, param: torch.nn.Parameter, task_id: int) -> bool:
        return not (self.opts.freeze_non_weights and task_id > 0 and not is_weight(param))

    @torch.no_grad()
    def after_backward(self) -> None:
        if self.task <= 0:
            return
        t0 = time.perf_counter()
        for n, layer in self.layers.items():
            g = layer.weight.grad
            if g is not None and self.U[n].shape[0]:
                g.copy_(project_weight_grad(g, self.U[n]))
        self.projection_s += time.perf_counter() - t0

    def energy(self, name: str, X: torch.Tensor) -> float:
        """Fraction of the energy of activity rows ``X`` inside the stored basis."""
        return energy_fraction(X, self.U[name])

    def metrics(self) -> dict[str, Any]:
        return {"gpm": {
            "layers": list(self.layers),
            "basis_sizes": {n: list(v) for n, v in self.sizes.items()},
            "captured_by_old_basis": {n: list(v) for n, v in self.captured.items()},
            "svd_s": list(self.svd_s),
            "projection_s": self.projection_s,
        }}

    def records(self) -> dict[str, Any]:
        out: dict[str, Any] = {n: {"sizes": torch.tensor(self.sizes[n], dtype=torch.int64),
                                   "captured_by_old_basis": torch.tensor(self.captured[n], dtype=torch.float64),
                                   "U": self.U[n].detach().cpu()} for n in self.layers}
        out["svd_s"] = torch.tensor(self.svd_s, dtype=torch.float64)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"task": self.task, "U": {n: u.detach().cpu().clone() for n, u in self.U.items()},
                "sizes": {n: list(v) for n, v in self.sizes.items()},
                "captured": {n: list(v) for n, v in self.captured.items()},
                "svd_s": list(self.svd_s), "projection_s": self.projection_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = next(self.trainer.model.parameters()).device if getattr(self, "trainer", None) else None
        self.task = int(state["task"])
        self.U = {n: (u.to(dev) if dev else u.clone()) for n, u in state["U"].items()}
        self.sizes = {n: [int(x) for x in v] for n, v in state["sizes"].items()}
        self.captured = {n: [float(x) for x in v] for n, v in state["captured"].items()}
        self.svd_s = [float(x) for x in state["svd_s"]]
        self.projection_s = float(state.get("projection_s", 0.0))
