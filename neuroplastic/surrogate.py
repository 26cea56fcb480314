r"""Surrogate gradients for the spike non-linearity.

The forward pass is the Heaviside step :math:`z = H(x)` of the distance to threshold
:math:`x = v - \vartheta`; the backward pass replaces :math:`\delta(x)` by a smooth
pseudo-derivative :math:`\sigma'(x)` with a slope parameter :math:`\alpha`:

==============  ==========================================================  ===============
name            :math:`\sigma'(x)`                                           default alpha
==============  ==========================================================  ===============
atan            :math:`\frac{\alpha}{2} / (1 + (\frac{\pi}{2}\alpha x)^2)`     2    (snnTorch ATan)
sigmoid         :math:`\alpha\, s(\alpha x)(1 - s(\alpha x))`, s = logistic  25   (snnTorch)
fast_sigmoid    :math:`1 / (\alpha |x| + 1)^2`  (SuperSpike)                  25   (snnTorch)
triangle        :math:`\alpha \max(0, 1 - \alpha |x|)`  (unit area)          1
rectangle       :math:`\alpha\, [|x| < 1/(2\alpha)]`  (unit area)            1
==============  ==========================================================  ===============

A :class:`Surrogate` is a small frozen record; ``surrogate(x)`` applies the spike
function with that backward, ``surrogate.grad(x)`` evaluates :math:`\sigma'(x)` (used by
the fused multi-step neuron kernels, which write their own backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import UserError

__all__ = ["Surrogate", "get_surrogate", "SURROGATES", "spike"]

_DEFAULT_ALPHA = {"atan": 2.0, "sigmoid": 25.0, "fast_sigmoid": 25.0, "triangle": 1.0, "rectangle": 1.0}
SURROGATES = tuple(_DEFAULT_ALPHA)


@dataclass(frozen=True)
class Surrogate:
    """A named surrogate derivative with slope ``alpha`` (see the module table)."""

    name: str = "atan"
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.name not in _DEFAULT_ALPHA:
            raise UserError(f"unknown surrogate {self.name!r}; choose one of {', '.join(SURROGATES)}")
        if self.alpha is None:
            object.__setattr__(self, "alpha", _DEFAULT_ALPHA[self.name])
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise UserError(f"surrogate slope alpha must be a positive number, got {self.alpha}")

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """The pseudo-derivative :math:`\\sigma'(x)` elementwise."""
        a = self.alpha
        if self.name == "atan":
            return (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)
        if self.name == "sigmoid":
            s = torch.sigmoid(a * x)
            return a * s * (1 - s)
        if self.name == "fast_sigmoid":
            return 1.0 / (a * x.abs() + 1.0) ** 2
        if self.name == "triangle":
            return a * torch.clamp(1 - a * x.abs(), min=0)
        return a * (x.abs() < 0.5 / a).to(x.dtype)  # rectangle

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return spike(x, self)


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * ctx.surrogate.grad(x), None


def spike(x: torch.Tensor, surrogate: Surrogate | str = "atan") -> torch.Tensor:
    """Heaviside spike ``(x > 0)`` with the surrogate's backward."""
    return _Spike.apply(x, get_surrogate(surrogate))


def get_surrogate(spec: Surrogate | str | None = None, alpha: float | None = None) -> Surrogate:
    """Return a :class:`Surrogate` from a name (optionally ``"name:alpha"``) or an object."""
    if spec is None:
        spec = "atan"
    if isinstance(spec, Surrogate):
        return spec if alpha is None else Surrogate(spec.name, alpha)
    if isinstance(spec, str):
        name, _, a = spec.partition(":")
        if a:
            try:
                alpha = float(a)
            except ValueError:
                raise UserError(f"bad surrogate slope in {spec!r}") from None
        return Surrogate(name.strip(), alpha)
    raise UserError(f"surrogate must be a name or a Surrogate, got {type(spec).__name__}")
