r"""Sparse synapses as masks: density initialisation, optimizer-state masking, dense
gradients for regrowth, and loading a sparse checkpoint.

A sparse synapse is an ordinary :class:`~neuroplastic.synapses.Linear` or
:class:`~neuroplastic.synapses.Conv2d` with a boolean ``mask`` buffer installed by
``set_mask`` (a mask is a buffer plus a hook, as in ``torch.nn.utils.prune``). The
forward pass uses ``weight * mask``; ``mask_version`` counts changes so the event-driven
kernels rebuild their CSR view only when needed. This module holds the helpers the
pruning plugins (:mod:`neuroplastic.plugins.granet`) share.

Layer densities for a target overall density :math:`D` over layers :math:`l` with
:math:`n_l` weights:

* ``uniform``: :math:`d_l = D`.
* ``erk`` (Erdos-Renyi-Kernel, RigL / GraNet): :math:`d_l = \epsilon\,
  \frac{\sum_i k_i}{\prod_i k_i}` over the weight shape :math:`(k_i)` (``n_out + n_in``
  over ``n_out * n_in`` for a linear layer, ``C_out + C_in + k_h + k_w`` over their
  product for a conv), with :math:`\epsilon` solved so that
  :math:`\sum_l d_l n_l = D \sum_l n_l`. A layer whose :math:`d_l` would exceed 1 is
  made dense and :math:`\epsilon` is solved again over the rest (repeated until no layer
  exceeds 1).
* ``explicit``: the densities are given per layer.

Masks are drawn with an **exact** count of ones, ``round(d_l * n_l)``, at random
positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from .errors import UserError

__all__ = [
    "sparse_layers",
    "erk_densities",
    "uniform_densities",
    "layer_densities",
    "random_mask",
    "init_masks",
    "apply_masks",
    "mask_grads",
    "mask_optimizer_state",
    "model_masks",
    "masks_in_state_dict",
    "load_masks",
    "load_sparse_state_dict",
    "DenseGrad",
    "OPTIMIZER_STATE_KEYS",
]

# per-parameter optimizer state tensors that are masked like the weight
OPTIMIZER_STATE_KEYS = (
    "momentum_buffer",
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
    "square_avg",
    "acc_delta",
    "sum",
)


def _is_synapse(m: nn.Module) -> bool:
    from .synapses import is_synapse

    return is_synapse(m)


def sparse_layers(model: nn.Module, exclude: Iterable[str] = ()) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of the synapse layers that can be sparse, input to output.

    For an :class:`~neuroplastic.network.SNN` the names are its layer names (``fc1``...);
    for any other module, the dotted module names. ``exclude`` lists names kept dense.
    """
    exclude = set(exclude)
    if hasattr(model, "synapses") and callable(model.synapses):
        layers = list(model.synapses())
    else:
        layers = [(n, m) for n, m in model.named_modules() if _is_synapse(m)]
    unknown = exclude - {n for n, _ in layers}
    if unknown:
        raise UserError(
            f"exclude names unknown synapse layer(s) {sorted(unknown)}; "
            f"layers: {[n for n, _ in layers]}"
        )
    return [(n, m) for n, m in layers if n not in exclude]


# -- layer densities ---------------------------------------------------------------------
def uniform_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """Every layer at ``density``."""
    return {n: float(density) for n in shapes}


def erk_densities(
    shapes: Mapping[str, Sequence[int]], density: float, power_scale: float = 1.0
) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities with the >1 redistribution (see the module doc).

    Returns ``{name: d_l}`` with ``sum(d_l * n_l) == density * sum(n_l)`` (up to float
    rounding) and every ``d_l <= 1``.
    """
    if not 0.0 <= density <= 1.0:
        raise UserError(f"density must be in [0, 1], got {density}")
    numel = {n: float(torch.Size(s).numel()) for n, s in shapes.items()}
    raw = {n: (sum(s) / numel[n]) ** power_scale for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        rhs = sum(density * numel[n] for n in shapes if n not in dense)
        rhs -= sum((1.0 - density) * numel[n] for n in dense)
        divisor = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        if divisor <= 0:  # everything dense
            return {n: 1.0 for n in shapes}
        eps = rhs / divisor
        over = [n for n in shapes if n not in dense and eps * raw[n] > 1.0]
        if not over:
            break
        # like RigL/GraNet: make the layer(s) with the largest raw probability dense
        top = max(raw[n] for n in over)
        dense.update(n for n in over if raw[n] == top)
    return {n: 1.0 if n in dense else max(0.0, eps * raw[n]) for n in shapes}


def layer_densities(
    shapes: Mapping[str, Sequence[int]],
    density: float,
    distribution: str = "erk",
    explicit: Sequence[float] | Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per-layer densities for overall ``density`` (``erk``, ``uniform`` or ``explicit``).

    ``explicit`` (a list in layer order, or ``{name: density}``) is used as given for
    ``distribution="explicit"``; ``density`` is then ignored.
    """
    if distribution == "erk":
        return erk_densities(shapes, density)
    if distribution == "uniform":
        return uniform_densities(shapes, density)
    if distribution == "explicit":
        names = list(shapes)
        if explicit is None:
            raise UserError("distribution 'explicit' needs layer_density (one density per layer)")
        if not isinstance(explicit, Mapping):
            if len(explicit) != len(names):
                raise UserError(
                    f"layer_density has {len(explicit)} entries for {len(names)} "
                    f"sparse layers {names}"
                )
            explicit = dict(zip(names, explicit))
        missing = set(names) - set(explicit)
        if missing:
            raise UserError(f"layer_density misses layer(s) {sorted(missing)}")
        out = {n: float(explicit[n]) for n in names}
        for n, d in out.items():
            if not 0.0 < d <= 1.0:
                raise UserError(f"layer_density of {n} must be in (0, 1], got {d}")
        return out
    raise UserError(f"distribution must be erk, uniform or explicit, got {distribution!r}")


def random_mask(
    shape: Sequence[int],
    density: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean mask with exactly ``round(density * numel)`` ones at random positions."""
    n = torch.Size(shape).numel()
    k = int(round(float(density) * n))
    k = min(max(k, 0), n)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:k]] = True
    return mask.reshape(tuple(shape)).to(device)


def init_masks(
    model: nn.Module,
    density: float,
    distribution: str = "erk",
    explicit: Sequence[float] | Mapping[str, float] | None = None,
    generator: torch.Generator | None = None,
    exclude: Iterable[str] = (),
) -> dict[str, float]:
    """Install random masks on the sparse layers of ``model`` (weights outside are zeroed).

    Returns the per-layer densities used. A layer at density 1 gets an all-ones mask.
    """
    layers = sparse_layers(model, exclude)
    dens = layer_densities(
        {n: tuple(m.weight.shape) for n, m in layers}, density, distribution, explicit
    )
    for n, m in layers:
        m.set_mask(random_mask(m.weight.shape, dens[n], generator, m.weight.device))
    return dens


# -- keeping masked entries at zero ------------------------------------------------------
@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """``weight *= mask`` for every masked synapse (in place, no graph)."""
    for _, m in sparse_layers(model):
        if getattr(m, "mask", None) is not None:
            m.weight.mul_(m.mask)


@torch.no_grad()
def mask_grads(model: nn.Module) -> None:
    """``weight.grad *= mask`` for every masked synapse with a gradient."""
    for _, m in sparse_layers(model):
        if getattr(m, "mask", None) is not None and m.weight.grad is not None:
            m.weight.grad.mul_(m.mask)


@torch.no_grad()
def mask_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Zero the optimizer state of masked weights at masked positions (SGD momentum
    buffers, Adam first and second moments, ...), so a pruned weight receives no update
    from stale momentum and a regrown one starts from a clean state."""
    for _, m in sparse_layers(model):
        mask = getattr(m, "mask", None)
        if mask is None:
            continue
        state = optimizer.state.get(m.weight)
        if not state:
            continue
        for key, value in state.items():
            if key in OPTIMIZER_STATE_KEYS and torch.is_tensor(value) and value.shape == mask.shape:
                value.mul_(mask)


def model_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer name: mask}`` of the masked synapse layers."""
    return {n: m.mask for n, m in sparse_layers(model) if getattr(m, "mask", None) is not None}


# -- checkpoints -------------------------------------------------------------------------
def masks_in_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{module path: mask}`` for every ``<path>.mask`` entry of a model state dict."""
    return {
        k[: -len(".mask")]: v
        for k, v in state_dict.items()
        if k.endswith(".mask") and torch.is_tensor(v)
    }


def load_masks(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> int:
    """Install the masks of a saved state dict into a freshly built ``model``.

    A fresh model has no ``mask`` buffers (they are ``None`` until a sparse method sets
    them), so ``model.load_state_dict(sparse_state)`` would reject the ``.mask`` keys.
    Call this first::

        state = torch.load(path, weights_only=True)["model"]
        load_masks(model, state)
        model.load_state_dict(state)

    Returns the number of masks installed.
    """
    modules = dict(model.named_modules())
    n = 0
    for path, mask in masks_in_state_dict(state_dict).items():
        mod = modules.get(path)
        if mod is None or not _is_synapse(mod):
            raise UserError(
                f"checkpoint has a mask for {path!r}, which is not a synapse layer of this model"
            )
        mod.set_mask(mask.to(torch.bool))
        n += 1
    return n


def load_sparse_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True
):
    """:func:`load_masks` then ``model.load_state_dict``."""
    load_masks(model, state_dict)
    return model.load_state_dict(state_dict, strict=strict)


# -- dense gradients ---------------------------------------------------------------------
class DenseGrad:
    r"""Records the dense gradient :math:`\partial L / \partial W_{\mathrm{eff}}` of
    chosen synapse layers, masked positions included.

    The forward pass uses ``weight * mask``, so autograd's ``weight.grad`` is zero off the
    mask and says nothing about where to regrow. When :attr:`enabled`, a forward hook keeps
    the layer input ``x`` and a tensor hook on the output receives
    :math:`\delta = \partial L / \partial I`; the dense gradient is
    :math:`\sum_{t,b} \delta_{t,b} x_{t,b}^\top` (for a conv, the weight gradient of the
    convolution over all ``T*B`` images). It costs one extra weight-gradient product per
    layer and is switched on only for the steps that update masks.
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module]]) -> None:
        self.enabled = False
        self.grads: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(n, m)) for n, m in layers]

    def _hook(self, name: str, layer: nn.Module):
        def fwd(module, inputs, output):
            if not (
                self.enabled
                and torch.is_grad_enabled()
                and torch.is_tensor(output)
                and output.requires_grad
            ):
                return
            elig = getattr(module, "eligibility", None)  # online trainers: the presynaptic trace
            x = (elig.pre if elig is not None else inputs[0]).detach()

            def grad_hook(g):
                dense = _weight_grad(layer, x, g.detach())
                self.grads[name] = dense if name not in self.grads else self.grads[name] + dense

            output.register_hook(grad_hook)

        return fwd

    def clear(self) -> None:
        self.grads = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _weight_grad(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    w = layer.weight
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise UserError("dense gradients of conv layers need padding_mode='zeros'")
        xi = x.reshape(-1, *x.shape[-3:]).to(g.dtype)
        gi = g.reshape(-1, *g.shape[-3:])
        return torch.nn.grad.conv2d_weight(
            xi, w.shape, gi, layer.stride, layer.padding, layer.dilation, layer.groups
        )
    # linear: I = x W^T + b over any leading dims
    return g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1]).to(g.dtype)
