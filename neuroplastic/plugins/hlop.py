r"""HLOP: Hebbian Learning based Orthogonal Projection (Xiao et al., ICLR 2024).

Every protected synapse layer (presynaptic dimension ``D``: ``N_in``, or
``C_in*k*k`` for a conv) gets a group of lateral *subspace neurons* with weights
``H [M, D]``; their activity is ``y = H x``. At the start of task ``t`` ``k_t`` new
neurons (random orthonormal rows) join the ``M_old`` neurons of earlier tasks; during
training, after every ``hebb_every``-th optimizer step (default 8; the paper: every
one), the presynaptic activity ``X [n, D]`` of the minibatch drives ``hebb_iters``
iterations of the Oja subspace rule on the *new* rows only (old rows frozen):

.. math::
    Y = X H^\top, \qquad
    \Delta H_{new} = \mathrm{clip}\big(\tfrac1n Y_{new}^\top (X - Y H),\,-10,\,10\big),
    \qquad m \leftarrow 0.9\,m + 0.1\,\Delta H_{new}, \qquad H_{new} \leftarrow H_{new} + \eta\, m

(Hebbian term :math:`Y^\top X`, anti-Hebbian lateral term :math:`-Y^\top Y H`; since the
reconstruction uses all rows, the new rows converge to the principal subspace of the
activity that the old rows do not yet explain). At the task's end the new rows are
merged into the old ones. From task 1 on, the gradient of each protected weight is
projected onto the complement of the old subspace,

.. math:: dW \leftarrow dW\,(I - H_{old}^\top H_{old}),

which is the gradient computed from the projected presynaptic activity
:math:`\tilde x = x - H_{old}^\top H_{old} x`.

*Lazy projection* (``project_every = k > 1``, an option of ours, not the paper's): the
gradients are left alone and every ``k`` optimizer steps, and at the task's end, the
weight's change since the task started is projected instead,
:math:`W \leftarrow W_0 + (W - W_0)(I - Q_{old}^\top Q_{old})`. For SGD with momentum the
update is linear in the gradients, so at every such sync point the change lies in the
complement of the old subspace exactly as with per-step projection (old inputs see
``W_0``); in between, the gradients are computed at weights that still carry up to ``k``
steps of unprojected change (and the optimizer's momentum keeps it), which only perturbs
the new task's trajectory. It costs one projection per ``k`` steps instead of one per step.
Since the accumulated change is projected again at every sync, the projector must be
idempotent: ``Q_old`` is an orthonormal basis of the directions ``H_old`` protects
(right singular vectors with :math:`s^2 \ge 1/2`), computed once per task.

For the per-step projection, as in the official code (pkuxmq/HLOP-SNN,
``modules/hlop_module.py``), the *learned* ``H_old`` is used as it is:
the Oja rule drives its rows towards an orthonormal basis, so ``I - H^T H`` is close to an
orthogonal projector (``orthonormalize = true`` replaces the old rows by an exact
orthonormal basis of their span at each task end instead). The gradient passed to the
layer's input is not projected (only ``weight.grad`` is touched).

Activity: ``"spikes"`` uses every time step of the BPTT input as a sample
(``X = last_input.reshape(T*B, D)``), ``"rate"`` the (weighted) firing rate over ``T``.
Conv layers use unfolded patches. The gradient is projected either in weight form
(``"weight"``: ``grad.reshape(C_out, -1) (I - H^T H)``) or in input form (``"input"``:
``G^T`` times the old-subspace part of the (unfolded) input, ``G`` the gradient of the
layer's output); the two agree exactly without spiking lateral neurons.
``linear_mode = "auto"`` (default) takes the cheaper one per layer; ``conv_mode``
defaults to ``"weight"``. ``spiking = true``
rate-quantises ``y`` (:func:`~neuroplastic.plugins.projection.quantize`) in the Hebbian
update and, in input form, in the projection.

Freezing (``freeze_non_weights``, on by default as in the paper): after task 0 only
parameters with ``ndim >= 2`` (synaptic weights) are trained; biases, thresholds, time
constants and norm parameters stay frozen, since they would shift the response to old
inputs in a way the projection cannot prevent.

Order with other plugins: gradient transforms run in the order of the method string;
use ``hlop+granet`` so the sparse mask is applied after the projection (HLOP never
touches ``layer.mask``; the masked projected gradient is no longer exactly orthogonal).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import distributed
from ..synapses import Conv2d
from .base import Plugin
from .projection import (
    activity_matrix,
    collect_activity,
    energy_fraction,
    gather_activity,
    hebbian_update,
    input_dim,
    is_weight,
    orthonormalize,
    project_weight_grad,
    quantize,
    random_orthonormal_rows,
    reset_optimizer_state,
    resolve_layers,
    subspace_sizes,
    unfold_patches,
)

__all__ = ["HLOP", "HLOPOptions"]

_MODES = ("weight", "input")


@dataclass
class HLOPOptions:
    r"""The ``[hlop]`` config section.

    Defaults run within a training-time budget (at most ~30 % over fine-tuning, measured in
    docs/benchmarks.md): Hebbian iterations on every 8th minibatch, lazy projection every
    16 steps. The Hebbian rate is relative to the activity's energy
    (``lr_scale = "energy"``): :math:`\eta = \eta_E / \langle\|x\|^2\rangle` over the rows of
    each update, ``energy_lr`` :math:`\eta_E = 4`. Oja's rule converges at
    :math:`\eta\lambda_k` per update for the activity's eigenvalues :math:`\lambda_k` and is
    stable for :math:`\eta\lambda_{max} \lesssim 1`; since :math:`\lambda_{max} \le
    \langle\|x\|^2\rangle`, one relative rate fits pixel intensities (energy ~155 on the
    digits) and hidden spikes alike, where fixed rates need a separate ``lr_input`` tuned
    per data set (docs/results.md, "HLOP's defaults on longer, richer tasks": on 10 permuted
    digits tasks BWT -1.93 with the fixed 0.08 / 0.008, -0.94 relative; 12 diverges on the
    augmented proxy). The paper's schedule is ``lr_scale = "none", hebb_every = 1,
    project_every = 1, lr = 0.01, lr_input = 0.001`` (about 2x the training time here).

    Subspace sizes (``init_size`` for task 0, ``inc_size`` added at every later task) are
    lists with one entry per protected layer (or a single entry for all): an int is a
    number of subspace neurons, a float in (0, 1] a fraction of the layer's input
    dimension ``D``. The default scales the paper's PMNIST choice (784-800-800-10:
    ``[80, 200, 100]`` then ``+70`` per task, the increment lowered by 20 every 3rd
    task) to the layer sizes: 0.10 ``D`` for the input layer, 0.125 ``D`` for the last
    layer, 0.25 ``D`` for the others; increments 0.09 ``D``, lowered by
    ``inc_shrink * D`` at every ``inc_shrink_every``-th task. Totals are capped at ``D``.
    """

    layers: list | None = None          # protected synapse layers (default: all but a multi-head readout)
    init_size: list | None = None       # subspace neurons at task 0, per layer
    inc_size: list | None = None        # neurons added at each later task, per layer
    inc_shrink: float = 0.025           # fraction of D removed from the increment ...
    inc_shrink_every: int = 3           # ... at tasks that are multiples of this (0: never)
    lr_scale: str = "energy"            # "energy": energy_lr / mean |x|^2 per update; "none": lr / lr_input
    energy_lr: float = 4.0              # Hebbian rate relative to the activity's energy (lr_scale = "energy")
    lr: float = 0.08                    # Hebbian learning rate with lr_scale = "none" (the paper: 0.01 on every step)
    lr_input: float = 0.008             # ... for the network's input layer (the paper: 0.001)
    momentum: float = 0.9
    hebb_iters: int = 5                 # Oja iterations per minibatch
    hebb_every: int = 8                 # Hebbian update on every k-th training step (the paper: 1)
    project_every: int = 16             # 1: project every gradient (the paper); k > 1: the weight change every k steps
    clip: float = 10.0
    activity: str = "spikes"            # "spikes" (every step) or "rate" (firing rate over T)
    rate_tau: float | None = None       # weighted rate: w_t ~ exp(-(T-1-t)/rate_tau) (None: mean)
    max_rows: int | None = None         # random subset of activity rows per update (conv patches)
    conv_mode: str = "weight"           # "weight" or "input" projection for conv layers
    linear_mode: str = "auto"           # "auto", "input" or "weight" projection for linear layers
    spiking: bool = False               # rate-quantised lateral neurons
    spiking_scale: float = 20.0
    spiking_steps: int = 1000
    orthonormalize: bool = False        # replace old rows by an orthonormal basis at task end
    init_complement: bool = True        # new rows start orthogonal to the old rows' span
    freeze_non_weights: bool = True     # after task 0 train only ndim >= 2 parameters
    reset_optimizer: bool = True        # fresh optimizer state (momentum) at each task start
    energy_samples: int = 256           # samples for the subspace-energy records (0: off)
    seed: int = 0                       # offset on the run's seed (--seed) for this plugin's random choices

    def __post_init__(self) -> None:
        if self.lr_scale not in ("energy", "none"):
            raise ValueError(f"hlop.lr_scale must be 'energy' or 'none', got {self.lr_scale!r}")
        fixed = {f.name: f.default for f in dataclasses.fields(self) if f.name in ("lr", "lr_input")}
        if self.lr_scale == "energy" and (self.lr, self.lr_input) != (fixed["lr"], fixed["lr_input"]):
            raise ValueError("hlop.lr and hlop.lr_input are fixed rates: set hlop.lr_scale = \"none\" to use "
                             "them (the default rate is relative to the activity: hlop.energy_lr)")
        for key in ("lr", "lr_input", "energy_lr", "clip", "spiking_scale"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise ValueError(f"hlop.{key} must be a positive number, got {v!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"hlop.momentum must be in [0, 1), got {self.momentum!r}")
        for key in ("hebb_iters", "hebb_every", "project_every", "spiking_steps"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"hlop.{key} must be a positive integer, got {v!r}")
        for key in ("inc_shrink_every", "energy_samples", "seed"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"hlop.{key} must be a non-negative integer, got {v!r}")
        if self.max_rows is not None and (not isinstance(self.max_rows, int) or self.max_rows < 1):
            raise ValueError(f"hlop.max_rows must be a positive integer, got {self.max_rows!r}")
        if self.activity not in ("spikes", "rate"):
            raise ValueError(f"hlop.activity must be 'spikes' or 'rate', got {self.activity!r}")
        if self.rate_tau is not None and not (isinstance(self.rate_tau, int | float) and self.rate_tau > 0):
            raise ValueError(f"hlop.rate_tau must be a positive number, got {self.rate_tau!r}")
        if self.conv_mode not in _MODES:
            raise ValueError(f"hlop.conv_mode must be 'weight' or 'input', got {self.conv_mode!r}")
        if self.linear_mode not in (*_MODES, "auto"):
            raise ValueError(f"hlop.linear_mode must be 'auto', 'weight' or 'input', got {self.linear_mode!r}")
        if not isinstance(self.inc_shrink, int | float) or self.inc_shrink < 0:
            raise ValueError(f"hlop.inc_shrink must be a non-negative number, got {self.inc_shrink!r}")
        for key in ("layers", "init_size", "inc_size"):
            v = getattr(self, key)
            if v is not None and not isinstance(v, list | tuple):
                raise ValueError(f"hlop.{key} must be a list, got {v!r}")


def _complement_rows(new: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning the projection of ``new`` onto the complement of
    ``span(H)`` (same count; falls back to ``new`` where the complement is too small)."""
    basis = orthonormalize(H).to(torch.float64)
    r = new.to(torch.float64)
    r = r - (r @ basis.T) @ basis
    Q, R = torch.linalg.qr(r.T)
    Q = Q * torch.sign(torch.diagonal(R)).unsqueeze(0)
    if float(torch.diagonal(R).abs().min()) < 1e-6:
        return new
    return Q.T.to(new.dtype).contiguous()


def _lazy_basis(H_old: torch.Tensor) -> torch.Tensor:
    r"""Orthonormal rows spanning the directions the learned ``H_old`` protects: right
    singular vectors with :math:`s^2 \ge 1/2` (where ``I - H^T H`` removes at least half).
    The lazy sync projects the *accumulated* change again at every sync, so its
    projector must be idempotent; ``I - H^T H`` of a learned ``H`` is not (an eigenvalue
    :math:`1 - s^2 < -1` would grow the old-subspace part at every sync)."""
    return orthonormalize(H_old, min_singular=math.sqrt(0.5))


class HLOP(Plugin):
    """Lateral Hebbian subspace circuits protecting old tasks by gradient projection."""

    name = "hlop"
    Options = HLOPOptions

    def __init__(self, options: HLOPOptions | None = None) -> None:
        self.opts = options or HLOPOptions()
        self.task = -1
        self.H: dict[str, torch.Tensor] = {}
        self.mom: dict[str, torch.Tensor] = {}
        self.n_old: dict[str, int] = {}
        self.sizes: dict[str, list[int]] = {}
        self.old_energy: dict[str, list[float]] = {}
        self.captured_energy: dict[str, list[float]] = {}
        self.activity: dict[str, list[torch.Tensor]] = {}
        self._act_sum: dict[str, torch.Tensor] = {}
        self._act_n = 0
        self._steps = 0
        self._gout: dict[str, torch.Tensor] = {}
        self._old_cache: dict[str, tuple] = {}
        self._hooks: list = []
        self.anchor: dict[str, torch.Tensor] = {}
        self._lazy_basis: dict[str, torch.Tensor] = {}
        self.hebbian_s = 0.0
        self.projection_s = 0.0

    # -- setup ------------------------------------------------------------------------
    def setup(self, trainer) -> None:
        self.trainer = trainer
        o = self.opts
        model = trainer.model
        self.layers = resolve_layers(model, o.layers)
        first = model.synapses()[0][0] if model.synapses() else None
        self.dims = {n: input_dim(layer) for n, layer in self.layers.items()}
        names = list(self.layers)
        dims = [self.dims[n] for n in names]
        syn_names = [n for n, _ in model.synapses()]
        default_init = [0.10 if n == first else 0.125 if n == syn_names[-1] else 0.25 for n in names]
        try:
            self.init_sizes = dict(zip(names, subspace_sizes(o.init_size, dims, default_init)))
            self.inc_sizes = dict(zip(names, subspace_sizes(o.inc_size, dims, [0.09] * len(names))))
        except ValueError as exc:
            from ..errors import UserError

            raise UserError(f"[hlop] {exc}") from None
        self.lrs = {n: (o.lr_input if n == first else o.lr) for n in names}
        self.modes = {n: (o.conv_mode if isinstance(layer, Conv2d) else o.linear_mode)
                      for n, layer in self.layers.items()}
        dev = next(model.parameters()).device
        for n, layer in self.layers.items():
            layer.capture = True
            self.H.setdefault(n, torch.zeros(0, self.dims[n], device=dev))
            self.mom.setdefault(n, torch.zeros(0, self.dims[n], device=dev))
            self.n_old.setdefault(n, 0)
            for d in (self.sizes, self.old_energy, self.captured_energy, self.activity):
                d.setdefault(n, [])
            if self.modes[n] in ("input", "auto"):
                self._hooks.append(layer.register_forward_hook(self._grad_catcher(n)))

    def _grad_catcher(self, name: str):
        def hook(module, inputs, out):
            if (out.requires_grad and self.task > 0 and not self._lazy and self.n_old.get(name, 0) > 0
                    and getattr(self.trainer, "graph_through_time", True)):  # else weight form (after_backward)
                out.register_hook(lambda g: self._gout.__setitem__(name, g.detach()))
        return hook

    @property
    def _spiking(self) -> tuple[float, float] | None:
        return (self.opts.spiking_scale, float(self.opts.spiking_steps)) if self.opts.spiking else None

    def increment(self, name: str, task_id: int) -> int:
        """Subspace neurons added to layer ``name`` at the start of task ``task_id``."""
        if task_id == 0:
            return self.init_sizes[name]
        o = self.opts
        k = self.inc_sizes[name]
        if o.inc_shrink_every > 0 and o.inc_shrink > 0:
            k -= (task_id // o.inc_shrink_every) * int(round(o.inc_shrink * self.dims[name]))
        return max(k, 0)

    # -- tasks ------------------------------------------------------------------------
    def on_task_start(self, task_id: int, task) -> None:
        o = self.opts
        if task_id > 0 and o.reset_optimizer:
            reset_optimizer_state(self.trainer.optimizer)
        self.task = task_id
        # how much of the new task's input energy lies in the old subspaces (at its start)
        if task is not None and o.energy_samples > 0 and any(self.n_old[n] > 0 for n in self.layers):
            acts = collect_activity(self.trainer, task.train, task.head, self.layers, o.energy_samples,
                                    seed=self.base_seed() + 7919 * task_id)
            for n, layer in self.layers.items():
                X = torch.cat([activity_matrix(layer, a, o.activity, o.rate_tau) for a in acts[n]])
                m = self.n_old[n]
                self.old_energy[n].append(energy_fraction(X, self.H[n][:m], orthonormal=False) if m else 0.0)
        else:  # task 0 or not measured (energy_samples = 0, no task): NaN; no old rows: exactly 0
            measured = task is not None and o.energy_samples > 0 and task_id > 0
            for n in self.layers:
                self.old_energy[n].append(0.0 if measured else float("nan"))
        gen = torch.Generator().manual_seed(self.base_seed() * 100003 + task_id)
        for n in self.layers:
            H = self.H[n]
            D = self.dims[n]
            k = min(self.increment(n, task_id), D - H.shape[0])
            new = random_orthonormal_rows(k, D, gen).to(H)
            if o.init_complement and H.shape[0] and k:
                new = _complement_rows(new, H)
            self.H[n] = torch.cat([H, new])
            self.mom[n] = torch.zeros(k, D, device=H.device, dtype=H.dtype)
            self._act_sum[n] = torch.zeros(self.H[n].shape[0], device=H.device)
        self._act_n = 0
        self._steps = 0
        self.anchor = ({n: layer.weight.detach().clone() for n, layer in self.layers.items()}
                       if self._lazy else {})
        self._lazy_basis = {n: _lazy_basis(self.H[n][: self.n_old[n]]) for n in self.anchor}

    @property
    def _lazy(self) -> bool:
        """Lazy projection is on from task 1 (task 0 has no old subspace)."""
        return self.opts.project_every > 1 and self.task > 0

    @torch.no_grad()
    def _sync(self) -> None:
        """Project each protected weight's change since the task start (lazy projection)."""
        t0 = time.perf_counter()
        for n, layer in self.layers.items():
            m = self.n_old[n]
            W0 = self.anchor.get(n)
            if m == 0 or W0 is None:
                continue
            W = layer.weight
            if n not in self._lazy_basis:  # resumed mid-task
                self._lazy_basis[n] = _lazy_basis(self.H[n][:m])
            W.copy_(W0 + project_weight_grad(W - W0, self._lazy_basis[n]))
            mask = getattr(layer, "mask", None)
            if mask is not None:
                W.mul_(mask)
        self.projection_s += time.perf_counter() - t0

    def on_task_end(self, task_id: int, task) -> None:
        o = self.opts
        if self._lazy:
            self._sync()
        self.anchor, self._lazy_basis = {}, {}
        for n in self.layers:
            self.activity[n].append((self._act_sum[n] / max(self._act_n, 1)).cpu())
        if task is not None and o.energy_samples > 0:
            acts = collect_activity(self.trainer, task.train, task.head, self.layers, o.energy_samples,
                                    seed=self.base_seed() + 7919 * task_id + 1)
            for n, layer in self.layers.items():
                X = torch.cat([activity_matrix(layer, a, o.activity, o.rate_tau) for a in acts[n]])
                self.captured_energy[n].append(energy_fraction(X, self.H[n], orthonormal=False))
        else:  # not measured: one entry per task all the same
            for n in self.layers:
                self.captured_energy[n].append(float("nan"))
        # merge: the rows of this task join the frozen old subspace
        for n in self.layers:
            if o.orthonormalize:
                self.H[n] = orthonormalize(self.H[n])
            # data parallel: rank 0's rows, bit for bit (they are computed from the same
            # gathered activity on every rank; this guards against rounding on mixed hardware)
            self.H[n] = distributed.broadcast_tensor(self.H[n], 0, device=self.H[n].device)
            M = self.H[n].shape[0]
            self.n_old[n] = M
            self.mom[n] = self.H[n].new_zeros(0, self.dims[n])
            self.sizes[n].append(M)
        self._gout.clear()

    def trainable(self, name: str, param: torch.nn.Parameter, task_id: int) -> bool:
        return not (self.opts.freeze_non_weights and task_id > 0 and not is_weight(param))

    # -- steps ------------------------------------------------------------------------
    @torch.no_grad()
    def after_backward(self) -> None:
        if self.task <= 0 or self._lazy:
            return
        t0 = time.perf_counter()
        for n, layer in self.layers.items():
            m = self.n_old[n]
            g = layer.weight.grad
            if m == 0 or g is None:
                continue
            H_old = self.H[n][:m]
            mode = self.modes[n]
            if mode == "auto":
                mode = self._cheaper_mode(layer, m)
            if (mode == "weight" or getattr(layer, "mask", None) is not None
                    or not getattr(self.trainer, "graph_through_time", True)):
                # online trainers (OTTT, e-prop, DSR) build no graph over the whole
                # sequence, so the output gradient of one backward is not the layer's
                # whole gradient: project weight.grad
                # masked (sparse) layers: project the gradient autograd computed (already
                # zero off the mask); the sparse plugin masks the result again after us
                self._gout.pop(n, None)
                g.copy_(project_weight_grad(g, H_old))
            else:
                gout = self._gout.pop(n, None)
                if gout is None or layer.last_input is None:
                    g.copy_(project_weight_grad(g, H_old))
                else:
                    corr = self._input_correction(n, layer, layer.last_input, gout, H_old)
                    # data parallel: g is the global gradient already; the correction is
                    # a sum over this rank's samples, combined like the gradients
                    g.sub_(distributed.weighted_sum(corr, self.trainer.shard_weight))
        self.projection_s += time.perf_counter() - t0

    def _cheaper_mode(self, layer, M: int) -> str:
        """``linear_mode = "auto"``: the cheaper of the two (equal) projections for this
        layer and minibatch; ``"input"`` with spiking lateral neurons (it quantises)."""
        x = layer.last_input
        if self.opts.spiking:
            return "input"
        if x is None or layer.weight.ndim != 2:
            return "weight"
        C, D = layer.weight.shape
        # the global batch (data parallel: every rank must take the same mode)
        B = sum(self.trainer.shard_sizes) if distributed.is_distributed() else x.shape[1]
        n = B if (x.shape[0] > 1 and x.stride(0) == 0) else x.shape[0] * B
        weight_cost = 2 * C * D * M
        input_cost = n * D * M + min(n * D * (M + C), n * C * M + C * M * D)
        return "input" if input_cost < weight_cost else "weight"

    def _input_correction(self, name: str, layer, x: torch.Tensor, gout: torch.Tensor,
                          H_old: torch.Tensor) -> torch.Tensor:
        r"""``G^T (H^T q(H x))``: the part of the weight gradient carried by the projection
        of the presynaptic input onto the old subspace (summed over steps and samples)."""
        sp = self._spiking
        if isinstance(layer, Conv2d):
            xi = x.reshape(-1, *x.shape[2:])
            U = unfold_patches(layer, xi)                       # [n, D, L]
            Y = torch.einsum("md,ndl->nml", H_old, U)           # [n, M, L]
            if sp is not None:
                Y = quantize(Y, *sp)
            G = gout.reshape(xi.shape[0], gout.shape[2], -1)    # [n, C_out, L]
            corr = torch.einsum("ncl,nml->cm", G, Y) @ H_old    # [C_out, D]
            return corr.reshape(layer.weight.shape)
        if x.shape[0] > 1 and x.stride(0) == 0:
            # the same input at every step (direct encoding): sum the output gradient
            # over T instead of repeating the input rows
            X, G = x[0], gout.sum(0)
        else:
            X, G = x.reshape(-1, x.shape[-1]), gout.reshape(-1, gout.shape[-1])
        Y = X @ H_old.T
        if sp is not None:
            Y = quantize(Y, *sp)
        n, M, D, C = X.shape[0], H_old.shape[0], H_old.shape[1], G.shape[1]
        if n * D * (M + C) < n * C * M + C * M * D:  # few rows: G^T (Y H) is cheaper
            YH = Y @ H_old
            if self.opts.activity == "spikes":  # the Hebbian step reuses Y and Y H
                self._old_cache[name] = (x, Y, YH)
            return G.T @ YH
        return (G.T @ Y) @ H_old

    @torch.no_grad()
    def after_step(self) -> None:
        if self.task < 0:
            return
        o = self.opts
        self._steps += 1
        if self._lazy and self._steps % o.project_every == 0:
            self._sync()
        if (self._steps - 1) % o.hebb_every:
            self._old_cache.clear()
            return
        t0 = time.perf_counter()
        rows_gen = None
        for n, layer in self.layers.items():
            x = layer.last_input
            if x is None or self.H[n].shape[0] == 0:
                continue
            # data parallel: the activity of the whole global minibatch, so every rank's H
            # takes the 1-process update
            x = gather_activity(x, self.trainer.shard_sizes)
            X = activity_matrix(layer, x, o.activity, o.rate_tau).to(self.H[n].dtype)
            cached = self._old_cache.pop(n, None)
            old = cached[1:] if cached is not None and cached[0] is x else None
            if o.max_rows is not None and X.shape[0] > o.max_rows:
                if rows_gen is None:
                    rows_gen = torch.Generator(device=X.device).manual_seed(self._rows_seed())
                idx = torch.randperm(X.shape[0], generator=rows_gen, device=X.device)[: o.max_rows]
                X = X[idx]
                old = None if old is None else (old[0][idx], old[1][idx])
            act = hebbian_update(X, self.H[n], self.mom[n], self.n_old[n], lr=self._rate(n, X),
                                 momentum=o.momentum, iters=o.hebb_iters, clip=o.clip,
                                 spiking=self._spiking, old=old)
            self._act_sum[n] += act
        self._act_n += 1
        self.hebbian_s += time.perf_counter() - t0

    def _rate(self, name: str, X: torch.Tensor) -> float:
        r"""The Hebbian rate of this update: ``energy_lr`` / :math:`\langle\|x\|^2\rangle` over
        the activity rows (``lr_scale = "energy"``), else the fixed ``lr`` / ``lr_input``."""
        if self.opts.lr_scale == "none":
            return self.lrs[name]
        energy = float((X * X).sum(1).mean()) if X.numel() else 0.0
        return self.opts.energy_lr / max(energy, 1e-6)

    def _rows_seed(self) -> int:
        """Seed of the ``max_rows`` subsample of this step: a function of the run's and the
        plugin's seeds, the task and the step (no state to save, the same after a resume)."""
        return ((self.base_seed() * 100003 + self.task) * 1_000_003 + self._steps) % 2**63

    # -- records and state ------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        def clean(v):
            return [None if isinstance(x, float) and math.isnan(x) else x for x in v]

        return {"hlop": {
            "layers": list(self.layers),
            "subspace_sizes": {n: list(self.sizes[n]) for n in self.layers},
            "old_subspace_energy": {n: clean(self.old_energy[n]) for n in self.layers},
            "captured_energy": {n: clean(self.captured_energy[n]) for n in self.layers},
            "hebbian_s": self.hebbian_s,
            "projection_s": self.projection_s,
        }}

    def records(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n in self.layers:
            out[n] = {
                "sizes": torch.tensor(self.sizes[n], dtype=torch.int64),
                "old_energy": torch.tensor(self.old_energy[n], dtype=torch.float64),
                "captured_energy": torch.tensor(self.captured_energy[n], dtype=torch.float64),
                "activity": {f"task_{i}": a for i, a in enumerate(self.activity[n])},
                "H": self.H[n].detach().cpu(),
            }
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "H": {n: t.detach().cpu().clone() for n, t in self.H.items()},
            "momentum": {n: t.detach().cpu().clone() for n, t in self.mom.items()},
            "n_old": dict(self.n_old),
            "sizes": {n: list(v) for n, v in self.sizes.items()},
            "old_energy": {n: list(v) for n, v in self.old_energy.items()},
            "captured_energy": {n: list(v) for n, v in self.captured_energy.items()},
            "activity": {n: [a.clone() for a in v] for n, v in self.activity.items()},
            "hebbian_s": self.hebbian_s,
            "projection_s": self.projection_s,
            "anchor": {n: t.detach().cpu().clone() for n, t in self.anchor.items()},
            "steps": self._steps,
            "act_sum": {n: t.detach().cpu().clone() for n, t in self._act_sum.items()},
            "act_n": self._act_n,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = None
        if getattr(self, "trainer", None) is not None:
            dev = next(self.trainer.model.parameters()).device
        self.task = int(state["task"])
        self.H = {n: t.to(dev) if dev else t.clone() for n, t in state["H"].items()}
        self.mom = {n: t.to(dev) if dev else t.clone() for n, t in state["momentum"].items()}
        self.n_old = {n: int(v) for n, v in state["n_old"].items()}
        self.sizes = {n: [int(x) for x in v] for n, v in state["sizes"].items()}
        self.old_energy = {n: [float(x) for x in v] for n, v in state["old_energy"].items()}
        self.captured_energy = {n: [float(x) for x in v] for n, v in state["captured_energy"].items()}
        self.activity = {n: [a.clone() for a in v] for n, v in state["activity"].items()}
        self.hebbian_s = float(state.get("hebbian_s", 0.0))
        self.projection_s = float(state.get("projection_s", 0.0))
        zeros = {n: torch.zeros(h.shape[0], device=h.device) for n, h in self.H.items()}
        self._act_sum = {n: t.to(zeros[n]) for n, t in state.get("act_sum", zeros).items()}
        self._act_n = int(state.get("act_n", 0))
        self._lazy_basis, self._old_cache = {}, {}  # derived from H: rebuilt when next needed
        self.anchor = {n: t.to(dev) if dev else t.clone() for n, t in state.get("anchor", {}).items()}
        self._steps = int(state.get("steps", 0))
