r"""The one table between our neuron parameters and NIR's continuous-time nodes.

NIR fixes the ODEs, not the discretisation. Our neurons are discrete-time systems: one
step of length ``dt`` multiplies the membrane by :math:`a` and adds
:math:`(1-a)(v_{leak} + R I_t)`. A NIR file is written for a *target* step ``dt`` and
``integration`` so that a simulator stepping the ODE that way computes exactly our
:math:`a` (and :math:`a_s` for the synaptic current):

* ``exact``:  :math:`a = e^{-dt/\tau}`  so  :math:`\tau = -dt / \ln a`
* ``euler``:  :math:`a = 1 - dt/\tau`   so  :math:`\tau = dt / (1 - a)`

When the target equals the neuron's own ``dt`` and ``integration`` the time constant is
written unchanged (bit-exact round trips). :math:`R`, :math:`v_{leak}`,
:math:`v_{threshold}`, :math:`v_{reset}` and :math:`w_{in}` do not depend on the
discretisation. The IF neuron is :math:`\dot v = R I` in NIR; ours adds ``r * I`` per
step, so NIR's :math:`R = r / dt` (a simulator adds :math:`dt R I`).

=========  ==========  ======================================================
ours       NIR         fields (NIR <- ours)
=========  ==========  ======================================================
LIF        LIF         tau <- tau_mem*, r, v_leak, v_threshold <- v_th, v_reset
IF         IF          r <- r / dt, v_threshold <- v_th, v_reset
CubaLIF    CubaLIF     tau_syn*, tau_mem*, r, v_leak, v_threshold <- v_th, v_reset, w_in
LI         LI          tau <- tau_mem*, r, v_leak
CubaLI     CubaLI      tau_syn*, tau_mem*, r, v_leak, w_in
=========  ==========  ======================================================

(* converted for the target discretisation as above.) NIR resets to ``v_reset``; a
neuron with our ``reset="subtract"`` is written with its reset mode in the node's
metadata (``neuroplastic_reset``), which :func:`neuron_from_nir` honours and other
tools ignore. ALIF has no NIR primitive.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import nir
import numpy as np
import torch

from ..errors import UserError
from ..neurons import IF, LI, LIF, CubaLI, CubaLIF, Neuron
from ..neurons import functional as NF

__all__ = ["Timing", "NEURON_TABLE", "continuous_tau", "neuron_to_nir", "neuron_from_nir", "meta_value", "META"]

#: prefix of our keys in NIR metadata (flat: NIR's HDF5 writer stores scalars and strings)
META = "neuroplastic_"


@dataclass(frozen=True)
class Timing:
    """A discretisation: step ``dt`` (seconds) and ``integration`` (``exact``/``euler``)."""

    dt: float
    integration: str

    def __post_init__(self) -> None:
        if not (isinstance(self.dt, int | float) and math.isfinite(self.dt) and self.dt > 0):
            raise UserError(f"dt must be a positive number, got {self.dt!r}")
        if self.integration not in NF.INTEGRATIONS:
            raise UserError(f"integration must be one of {NF.INTEGRATIONS}, got {self.integration!r}")


def continuous_tau(a, timing: Timing):
    """The time constant whose one-step decay under ``timing`` is ``a`` (scalar or array)."""
    a = np.asarray(a, dtype=np.float64)
    if np.any(a >= 1) or (timing.integration == "exact" and np.any(a <= 0)):
        raise UserError(f"a decay factor {a.min():g}..{a.max():g} has no finite {timing.integration} time constant")
    tau = -timing.dt / np.log(a) if timing.integration == "exact" else timing.dt / (1.0 - a)
    return tau


def _tau_for(tau, source: Timing, target: Timing):
    if source == target:
        return _array(tau)
    return continuous_tau(NF.decay(source.dt, torch.as_tensor(_array(tau)), source.integration).numpy(), target)


def _array(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().to(torch.float64).numpy()
    return np.asarray(v, dtype=np.float64)


# (NIR field, our attribute, conversion): "tau" converts between discretisations,
# "per_dt" is our per-step r against NIR's per-second R, "same" is copied.
NEURON_TABLE: dict[type, tuple[type, tuple[tuple[str, str, str], ...]]] = {
    LIF: (nir.LIF, (("tau", "tau_mem", "tau"), ("r", "r", "same"), ("v_leak", "v_leak", "same"),
                    ("v_threshold", "v_th", "same"), ("v_reset", "v_reset", "same"))),
    IF: (nir.IF, (("r", "r", "per_dt"), ("v_threshold", "v_th", "same"), ("v_reset", "v_reset", "same"))),
    CubaLIF: (nir.CubaLIF, (("tau_syn", "tau_syn", "tau"), ("tau_mem", "tau_mem", "tau"), ("r", "r", "same"),
                            ("v_leak", "v_leak", "same"), ("v_threshold", "v_th", "same"),
                            ("v_reset", "v_reset", "same"), ("w_in", "w_in", "same"))),
    LI: (nir.LI, (("tau", "tau_mem", "tau"), ("r", "r", "same"), ("v_leak", "v_leak", "same"))),
    CubaLI: (nir.CubaLI, (("tau_syn", "tau_syn", "tau"), ("tau_mem", "tau_mem", "tau"), ("r", "r", "same"),
                          ("v_leak", "v_leak", "same"), ("w_in", "w_in", "same"))),
}
_FROM_NIR = {nir_cls: (ours, fields) for ours, (nir_cls, fields) in NEURON_TABLE.items()}


def neuron_to_nir(name: str, neuron: Neuron, shape: tuple[int, ...], target: Timing) -> nir.NIRNode:
    """The NIR node of ``neuron`` (population ``shape``) for a simulator stepping ``target``."""
    entry = NEURON_TABLE.get(type(neuron))
    if entry is None:
        raise UserError(f"layer {name!r} ({type(neuron).__name__}) has no NIR primitive; "
                        f"exportable neurons: {', '.join(c.__name__ for c in NEURON_TABLE)}")
    nir_cls, fields = entry
    source = Timing(neuron.dt, neuron.integration)
    kw = {}
    for nir_field, ours, conv in fields:
        value = getattr(neuron, ours)
        if conv == "tau":
            value = _tau_for(value, source, target)
        elif conv == "per_dt":
            value = _array(value) / target.dt
        kw[nir_field] = np.broadcast_to(_array(value), shape).astype(np.float64).copy()  # float64: exact values
    meta = {f"{META}reset": neuron.reset_mode, f"{META}detach_reset": bool(neuron.detach_reset),
            f"{META}surrogate": f"{neuron.surrogate.name}:{float(neuron.surrogate.alpha)!r}"}
    return nir_cls(**kw, metadata=meta)


def is_neuron_node(node: nir.NIRNode) -> bool:
    return type(node) in _FROM_NIR


def meta_value(meta: dict | None, key: str, default=None):
    """A NIR metadata value as a Python scalar or str (NIR's HDF5 reader returns bytes and
    0-d arrays)."""
    v = (meta or {}).get(key, default)
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    return v.decode() if isinstance(v, bytes) else v


def neuron_from_nir(name: str, node: nir.NIRNode, target: Timing) -> tuple[Neuron, tuple[int, ...]]:
    """Our neuron for NIR ``node`` stepped by ``target``; returns ``(module, population shape)``.

    Parameter arrays whose entries are all equal become scalars (the fast fused kernels);
    others stay per-neuron arrays.
    """
    ours, fields = _FROM_NIR[type(node)]
    shape = None
    kw = {}
    for nir_field, attr, conv in fields:
        value = np.asarray(getattr(node, nir_field), dtype=np.float64)
        if shape is None or value.ndim > len(shape):
            shape = tuple(int(s) for s in value.shape)
        if not np.all(np.isfinite(value)):
            raise UserError(f"NIR node {name!r} ({type(node).__name__}): {nir_field} is not finite")
        if conv == "per_dt":
            value = value * target.dt
        if conv == "tau" and target.integration == "euler" and np.any(target.dt / value >= 2):
            warnings.warn(f"NIR node {name!r}: {nir_field} as small as {value.min():g} s makes the forward-Euler "
                          f"step of dt = {target.dt:g} s unstable (dt/tau >= 2): membranes will diverge", stacklevel=3)
        kw[attr] = value
    meta = node.metadata or {}
    kw = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in kw.items()}
    kw["dt"], kw["integration"] = target.dt, target.integration
    if ours not in (LI, CubaLI):
        kw["reset"] = str(meta_value(meta, f"{META}reset", "zero"))
        kw["detach_reset"] = bool(meta_value(meta, f"{META}detach_reset", True))
        kw["surrogate"] = str(meta_value(meta, f"{META}surrogate", "atan"))
    else:
        kw.pop("v_th", None)
    if ours is IF:
        kw.pop("tau_mem", None)
    try:
        return ours(**kw), shape or ()
    except (TypeError, ValueError) as exc:
        raise UserError(f"NIR node {name!r} ({type(node).__name__}): {exc}") from None
