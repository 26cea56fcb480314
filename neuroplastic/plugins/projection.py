r"""Shared maths of the projection methods (HLOP, GPM): presynaptic activity matrices,
gradient projection, the Oja-subspace lateral circuit, and small helpers.

Notation. A protected synapse layer sees presynaptic activity vectors
:math:`x \in \mathbb{R}^D`: for a :class:`~neuroplastic.synapses.Linear` layer
:math:`D = N_{in}` and ``x`` is the input of one sample at one time step; for a
:class:`~neuroplastic.synapses.Conv2d` layer ``x`` is one unfolded input patch,
:math:`D = C_{in} k_h k_w`. A subspace is stored as a matrix ``H [M, D]`` whose rows span
it (orthonormal for GPM, *learned* and only approximately orthonormal for HLOP). The
weight gradient ``dW`` (reshaped ``[C_out, D]``) is projected onto the complement,

.. math::  dW \leftarrow dW (I - H^\top H) = dW - (dW H^\top) H ,

which for a linear layer equals computing the gradient from projected presynaptic
activity :math:`\tilde x = x - H^\top (H x)` (``dW = G^\top X``), i.e. the response of
the layer to any ``x`` in the span of ``H`` is left unchanged by the update
(:math:`(dW) x = 0`). The gradient passed on to the layer's *input* is never touched.

The pure functions here take and return tensors; the plugins hold the state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from .. import distributed
from ..synapses import Conv2d, Linear

__all__ = [
    "activity_matrix", "unfold_patches", "input_dim", "project_rows", "project_weight_grad",
    "quantize", "oja_subspace_step", "hebbian_update", "orthonormalize", "random_orthonormal_rows",
    "principal_angles", "energy_fraction", "reset_optimizer_state", "rate_weights",
    "collect_activity", "subspace_sizes", "gather_activity",
]


# -- presynaptic activity ---------------------------------------------------------------
def input_dim(layer: torch.nn.Module) -> int:
    """``D``: the dimension of a presynaptic activity vector of ``layer``."""
    if isinstance(layer, Conv2d):
        kh, kw = layer.kernel_size
        return layer.in_channels // layer.groups * kh * kw
    if isinstance(layer, Linear):
        return layer.in_features
    raise TypeError(f"cannot protect layer of type {type(layer).__name__}")


def unfold_patches(layer: Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Images ``[n, C, H, W]`` -> unfolded patches ``[n, C*kh*kw, L]`` (the layer's
    kernel size, dilation, padding and stride; zero padding)."""
    if layer.groups != 1:
        raise ValueError("HLOP/GPM support conv layers with groups == 1 only")
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        pad = 0
    else:
        pad = layer.padding
    if isinstance(pad, str):  # "same" / "valid"
        raise ValueError("conv layers with string padding are not supported by projection")
    return F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=pad, stride=layer.stride)


def rate_weights(T: int, tau: float | None, device=None) -> torch.Tensor:
    r"""Weights ``w_t`` (summing to 1) of the weighted firing rate over ``T`` steps:
    uniform for ``tau = None``, else :math:`w_t \propto e^{-(T-1-t)/\tau}` (later spikes
    count more, as DSR's weighted rate)."""
    if tau is None:
        return torch.full((T,), 1.0 / T, device=device)
    w = torch.exp(-(T - 1 - torch.arange(T, dtype=torch.float32, device=device)) / float(tau))
    return w / w.sum()


def activity_matrix(layer: torch.nn.Module, x: torch.Tensor, activity: str = "spikes",
                    rate_tau: float | None = None) -> torch.Tensor:
    """The rows ``X [n, D]`` of presynaptic activity of ``layer`` for its input
    ``x [T, B, ...]``.

    ``activity = "spikes"``: every step is a sample (``n = T*B``, times ``L`` patches for
    a conv; an input expanded over ``T`` with stride 0, as the ``direct`` encoder makes
    it, gives its ``B`` distinct rows once); ``"rate"``: the (weighted) firing rate over
    ``T`` (``n = B``, times ``L``).
    """
    if activity == "rate":
        w = rate_weights(x.shape[0], rate_tau, x.device).to(x.dtype)
        x = torch.tensordot(w, x, dims=([0], [0]))  # [B, ...]
    elif activity == "spikes":
        if x.shape[0] > 1 and x.stride(0) == 0:
            # the same input at every step (a constant-current/direct encoding expanded
            # over T): the T identical copies of each row change neither the mean
            # second moment nor the Oja update, so keep one (T times cheaper)
            x = x[0]
        else:
            x = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    else:
        raise ValueError(f"activity must be 'spikes' or 'rate', got {activity!r}")
    if isinstance(layer, Conv2d):
        p = unfold_patches(layer, x)  # [n, D, L]
        return p.transpose(1, 2).reshape(-1, p.shape[1])
    return x.reshape(-1, x.shape[-1])


def gather_activity(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Data parallel: the presynaptic input ``[T, B, ...]`` of the global minibatch from
    every rank's shard ``[T, B_r, ...]`` (``sizes``: the ``B_r``; a rank may hold more rows
    than its size, e.g. the one sample an empty shard computes on). The batch order of
    the 1-process run is kept, and an input expanded over ``T`` (stride 0, the ``direct``
    encoder) stays expanded. ``x`` itself in a single process."""
    if not distributed.is_distributed():
        return x
    if x.dim() > 1 and x.shape[0] > 1 and x.stride(0) == 0:
        g = distributed.all_gather(x[0], 0, sizes)
        return g.unsqueeze(0).expand(x.shape[0], *g.shape)
    return distributed.all_gather(x, 1, sizes)


# -- projection -------------------------------------------------------------------------
def project_rows(G: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``G - (G H^T) H`` for ``G [R, D]`` and ``H [M, D]`` (new tensor)."""
    if H.shape[0] == 0:
        return G.clone()
    return G - (G @ H.T) @ H


def project_weight_grad(grad: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Project a weight gradient ``[C_out, ...]`` onto the complement of ``span(H)``:
    ``grad.reshape(C_out, -1) (I - H^T H)`` reshaped back (GPM's ``g - g U U^T``)."""
    g = grad.reshape(grad.shape[0], -1)
    return project_rows(g, H).reshape(grad.shape)


def quantize(y: torch.Tensor, scale: float, steps: float) -> torch.Tensor:
    """Rate-quantised activity of spiking lateral neurons: ``y`` clipped to
    ``[-scale, scale]`` and rounded to a spike count over ``steps`` steps
    (``round(y/scale*steps)/steps*scale``), as HLOP's ``spiking`` option."""
    return (y.clamp(-scale, scale) / scale * steps).round() / steps * scale


# -- the lateral Hebbian circuit --------------------------------------------------------
def oja_subspace_step(X: torch.Tensor, H: torch.Tensor, n_fixed: int,
                      spiking: tuple[float, float] | None = None,
                      clip: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One Oja-subspace (Hebbian + anti-Hebbian) update direction for the free rows.

    .. math:: Y = X H^\top,\qquad \Delta H = \mathrm{clip}\big(\tfrac1n Y^\top (X - Y H), -c, c\big)

    with all rows of ``H`` (old and new) in ``Y`` and the reconstruction ``Y H``, but the
    update computed for the rows ``n_fixed:`` only (old rows are frozen). Returns
    ``(dH_free [M - n_fixed, D], Y [n, M])``. ``spiking = (scale, steps)`` quantises ``Y``.
    """
    n = X.shape[0]
    Y = X @ H.T
    if spiking is not None:
        Y = quantize(Y, *spiking)
    Yn = Y[:, n_fixed:]
    dH = (Yn.T @ X - (Yn.T @ Y) @ H) / n
    return dH.clamp_(-clip, clip), Y


def hebbian_update(X: torch.Tensor, H: torch.Tensor, mom: torch.Tensor, n_fixed: int, *,
                   lr: float, momentum: float = 0.9, iters: int = 5, clip: float = 10.0,
                   spiking: tuple[float, float] | None = None,
                   old: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    r"""``iters`` Oja-subspace iterations on one minibatch, in place on the free rows of
    ``H`` and their momentum ``mom [M - n_fixed, D]`` (an exponential average as in the
    official code: ``m <- mu m + (1 - mu) dH``, ``H <- H + lr m``).

    Vectorised: the frozen rows' activity ``Y_old = X H_old^T`` and the residual
    ``P = X - Y_old H_old`` are computed once per minibatch, so an iteration costs two
    ``[n, k] x [k, D]``-sized products for the ``k`` free rows
    (:math:`\Delta H_f = \tfrac1n Y_f^\top (P - Y_f H_f)`, the same numbers as
    :func:`oja_subspace_step`). Without ``spiking`` and with more rows than dimensions
    (``n > D``, conv patches) the second-moment matrix ``C = X^T X / n`` is used instead:
    :math:`\Delta H_f = H_f C - (H_f C H^\top) H`. ``old = (Y_old, Y_old H_old)`` passes
    the frozen rows' (possibly quantised) activity and reconstruction when the caller has
    them already (HLOP's input-form projection computes both for the same rows). Returns
    ``|Y|`` averaged over samples (first iteration), per subspace neuron ``[M]``.
    """
    n, D = X.shape
    if H.shape[0] == 0:
        return H.new_zeros(0)
    if H.shape[0] == n_fixed:
        Y = X @ H.T
        if spiking is not None:
            Y = quantize(Y, *spiking)
        return Y.abs().mean(0)
    H_old, H_f = H[:n_fixed], H[n_fixed:]
    if spiking is None and n > D:
        C = (X.T @ X) / n
        act = (X @ H.T).abs().mean(0)
        for _ in range(iters):
            HC = H_f @ C  # [k, D]
            dH = (HC - (HC @ H.T) @ H).clamp_(-clip, clip)
            mom.mul_(momentum).add_(dH, alpha=1.0 - momentum)
            H_f.add_(mom, alpha=lr)
        return act
    if n_fixed:
        if old is not None:
            Y_old, P = old[0], X - old[1]
        else:
            Y_old = X @ H_old.T
            if spiking is not None:
                Y_old = quantize(Y_old, *spiking)
            P = X - Y_old @ H_old
        act_old = Y_old.abs().mean(0)
    else:
        P, act_old = X, H.new_zeros(0)
    act = None
    for _ in range(iters):
        Yf = X @ H_f.T
        if spiking is not None:
            Yf = quantize(Yf, *spiking)
        if act is None:
            act = torch.cat([act_old, Yf.abs().mean(0)])
        if n < H_f.shape[0]:  # cheaper association order for few rows
            dH = (Yf.T @ (P - Yf @ H_f) / n).clamp_(-clip, clip)
        else:
            dH = ((Yf.T @ P - (Yf.T @ Yf) @ H_f) / n).clamp_(-clip, clip)
        mom.mul_(momentum).add_(dH, alpha=1.0 - momentum)
        H_f.add_(mom, alpha=lr)
    return act


def random_orthonormal_rows(k: int, D: int, generator: torch.Generator | None = None,
                            dtype=torch.float32) -> torch.Tensor:
    """``k`` random orthonormal rows ``[k, D]`` (``torch.nn.init.orthogonal_``'s recipe:
    QR of a Gaussian matrix with the sign of ``diag(R)`` fixed)."""
    if k == 0:
        return torch.zeros(0, D, dtype=dtype)
    A = torch.randn(max(k, D), min(k, D), generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(R)).unsqueeze(0)
    if k > D:
        return Q.to(dtype)  # [k, D]: more rows than dimensions (orthonormal columns)
    return Q.T.contiguous().to(dtype)


def orthonormalize(H: torch.Tensor, rtol: float = 1e-6, min_singular: float = 0.0) -> torch.Tensor:
    """An orthonormal basis (rows) of ``span(H)`` via SVD; directions with singular value
    below ``rtol * max`` (or below ``min_singular``) are dropped."""
    if H.shape[0] == 0:
        return H.clone()
    _, S, Vh = torch.linalg.svd(H.double(), full_matrices=False)
    keep = (S > rtol * S.max().clamp_min(1e-30)) & (S >= min_singular)
    return Vh[keep].to(H.dtype).contiguous()


def principal_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between ``span(rows of A)`` and
    ``span(rows of B)``."""
    Qa = orthonormalize(A).double()
    Qb = orthonormalize(B).double()
    s = torch.linalg.svdvals(Qa @ Qb.T).clamp(-1.0, 1.0)
    return torch.arccos(s)


def energy_fraction(X: torch.Tensor, H: torch.Tensor, orthonormal: bool = True) -> float:
    r"""Average over rows of :math:`\|P x\|^2 / \|x\|^2` (rows with ``x = 0`` skipped),
    ``P`` the orthogonal projector onto the span of the rows of ``H``: how much of the
    activity lies in that subspace. ``orthonormal=True`` trusts ``H`` to have orthonormal
    rows (``P = H^T H``); otherwise :math:`\|Px\|^2 = y^\top (H H^\top)^{-1} y` with
    ``y = H x`` (a Cholesky solve; exact for any full-rank ``H``)."""
    if H.shape[0] == 0 or X.shape[0] == 0:
        return 0.0
    nx = (X * X).sum(1)
    keep = nx > 0
    if not bool(keep.any()):
        return 0.0
    Y = X[keep] @ H.T
    if orthonormal:
        ny = (Y * Y).sum(1)
    else:
        Hd, Yd = H.double(), Y.double()
        G = Hd @ Hd.T
        eye = torch.eye(len(G), dtype=G.dtype, device=G.device)
        L, info = torch.linalg.cholesky_ex(G + 1e-10 * G.diagonal().mean() * eye)
        if int(info) != 0:  # rank-deficient rows: fall back to an orthonormal basis
            Q = orthonormalize(H).double()
            ny = ((X[keep].double() @ Q.T) ** 2).sum(1)
        else:
            Z = torch.linalg.solve_triangular(L, Yd.T, upper=False)
            ny = (Z * Z).sum(0)
    return float((ny / nx[keep].to(ny.dtype)).mean())


# -- trainer helpers --------------------------------------------------------------------
def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Drop the optimizer's per-parameter state (momentum buffers, Adam moments), as if a
    fresh optimizer were built for the new task (what the HLOP and GPM reference code
    does). Otherwise SGD momentum left from the previous task keeps moving the weights
    in directions the new projection does not constrain."""
    optimizer.state.clear()


@torch.no_grad()
def collect_activity(trainer, ds, head: int | None, layers: dict[str, torch.nn.Module],
                     n_samples: int, batch_size: int = 128, seed: int = 0) -> dict[str, list[torch.Tensor]]:
    """Presynaptic inputs ``[T, B, ...]`` of ``layers`` on the first ``n_samples`` samples
    of ``ds`` (no shuffling; encoded with a private generator so the trainer's random
    stream is not consumed). Returns ``{name: [input per batch]}``.

    Data parallel: every rank encodes each whole batch, runs its shard, and the shards'
    inputs are gathered (:func:`gather_activity`), so every rank returns the inputs of the
    1-process run."""
    from neuroplastic.datasets import iterate_minibatches

    gen = torch.Generator().manual_seed(int(seed))
    saved = {n: layer.capture for n, layer in layers.items()}
    for layer in layers.values():
        layer.capture = True
    out: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    was_training = trainer.model.training
    trainer.model.eval()
    seen = 0
    try:
        for x, _ in iterate_minibatches(ds, min(batch_size, max(n_samples, 1)), False, None):
            x = x[: n_samples - seen]
            sizes = distributed.shard_sizes(len(x))
            if distributed.is_distributed():
                s = distributed.shard(len(x))
                trainer.batch_slice = s if s.stop > s.start else slice(0, 1)  # an empty shard: one sample, ignored
            try:
                trainer.forward_logits(x, head, gen)
            finally:
                trainer.batch_slice = None
            for n, layer in layers.items():
                out[n].append(gather_activity(layer.last_input, sizes))
            seen += len(x)
            if seen >= n_samples:
                break
    finally:
        for n, layer in layers.items():
            layer.capture = saved[n]
        trainer.model.train(was_training)
    return out


def subspace_sizes(spec: Iterable | None, dims: list[int], default: list[float]) -> list[int]:
    """Resolve a per-layer size spec: ``None`` -> ``default``; one entry -> every layer;
    else one entry per layer. An int (or a float > 1) is a count, a float in (0, 1] a
    fraction of the layer's input dimension ``D`` (rounded). Results are clipped to ``[0, D]``."""
    vals = list(default if spec is None else spec)
    if len(vals) == 1:
        vals = vals * len(dims)
    if len(vals) != len(dims):
        raise ValueError(f"need 1 or {len(dims)} sizes (one per protected layer), got {len(vals)}")
    out = []
    for v, D in zip(vals, dims):
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ValueError(f"subspace sizes must be non-negative numbers, got {v!r}")
        frac = isinstance(v, float) and v <= 1.0
        k = int(math.floor(v * D + 0.5)) if frac else int(v)
        out.append(min(k, D))
    return out


def default_layers(model) -> list[str]:
    """The synapse layers a projection method protects by default: all of them, except
    the readout layer of a multi-head (task-incremental) network, whose rows are split
    into per-task heads that other tasks never update (the reference code of HLOP and GPM
    does not project task-specific classifiers either)."""
    names = [n for n, _ in model.synapses()]
    if getattr(model, "n_heads", 1) > 1 and names:
        names = names[:-1]
    return names


def resolve_layers(model, names: list | None) -> dict[str, torch.nn.Module]:
    """``{name: layer}`` of the protected synapse layers (``None``: :func:`default_layers`)."""
    from ..errors import UserError

    syn = dict(model.synapses())
    names = default_layers(model) if names is None else list(names)
    for n in names:
        if n not in syn:
            raise UserError(f"unknown synapse layer {n!r}; the model has {', '.join(syn)}")
        if not isinstance(syn[n], Linear | Conv2d):
            raise UserError(f"layer {n!r} is not a Linear or Conv2d synapse")
    return {n: syn[n] for n in names}


def is_weight(param: torch.Tensor) -> bool:
    """Synaptic weights (``ndim >= 2``) as opposed to biases, thresholds, time constants
    and norm-layer parameters (``ndim <= 1``)."""
    return param.ndim >= 2
