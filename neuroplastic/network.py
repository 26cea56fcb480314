r"""The network container and the ``mlp`` / ``cnn`` builders.

:class:`SNN` chains layers (synapse -> neuron -> ... -> readout) over time-first input
``[T, B, ...]`` and returns the readout trace ``[T, B, n_out * n_heads]``. It resets
state, and records spikes and membrane potentials of any layer::

    net = mlp([784, 800, 10])
    with net.recording():               # or net.record(True)
        out = net(spikes)               # [T, B, 10]
    net.recordings["lif1"]["spikes"]    # [T, B, 800]

Multi-head (task-incremental) networks have ``n_heads`` output blocks of ``n_out``;
``forward(x, head=h)`` returns block ``h``.

``mlp(..., recurrent=True)`` makes every hidden population recurrent
(:class:`~neuroplastic.neurons.RecurrentLIF` / :class:`~neuroplastic.neurons.RecurrentALIF`,
:math:`I_t = x_t + W_{rec} z_{t-1}`); their recurrent weights are the synapses
``"<layer>.rec"`` of :meth:`SNN.synapses`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .errors import UserError
from .neurons import LI, NEURONS, RECURRENT_NEURONS, Neuron
from .neurons import functional as NF
from .synapses import AvgPool2d, Conv2d, Flatten, Linear, is_synapse

__all__ = ["SNN", "mlp", "cnn", "unit_gain_r"]


class SNN(nn.Module):
    """A spiking network: an ordered, named list of layers (feed-forward between layers;
    a layer may be a recurrent population)."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], n_out: int, n_heads: int = 1,
                 in_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(dict(layers))
        self.n_out = n_out
        self.n_heads = n_heads
        #: shape of one input sample (no time, no batch), e.g. ``(784,)`` or ``(1, 28, 28)``;
        #: export needs it for conv layers (``None`` when unknown)
        self.in_shape = tuple(int(v) for v in in_shape) if in_shape is not None else None
        self.recordings: dict[str, dict[str, torch.Tensor]] = {}
        self._record = False

    def forward(self, x: torch.Tensor, head: int | None = None) -> torch.Tensor:
        """Run ``x [T, B, ...]`` through all layers from reset state."""
        self.reset()
        self.recordings = {}
        for name, layer in self.layers.items():
            x = layer(x)
            if self._record and isinstance(layer, Neuron):
                rec = {"v": layer.v_trace} if layer.v_trace is not None else {}
                if layer.spiking:
                    rec["spikes"] = x.detach()
                self.recordings[name] = rec
        if head is not None and self.n_heads > 1:
            x = x[..., head * self.n_out:(head + 1) * self.n_out]
        return x

    def reset(self) -> None:
        """Clear every neuron's state."""
        for m in self.modules():
            if isinstance(m, Neuron):
                m.reset()

    def record(self, enabled: bool = True, membranes: bool = True) -> None:
        """Record spikes (and, with ``membranes``, the membrane traces) of every neuron layer
        on the next forward passes. Without membranes, inference keeps its fast kernel."""
        self._record = enabled
        for m in self.modules():
            if isinstance(m, Neuron):
                m.record = enabled and membranes

    @contextlib.contextmanager
    def recording(self, membranes: bool = True) -> Iterator[SNN]:
        self.record(True, membranes)
        try:
            yield self
        finally:
            self.record(False)

    def synapses(self) -> list[tuple[str, nn.Module]]:
        """``(name, layer)`` for every synapse layer, input to output. Synapses nested in a
        layer (the recurrent weight ``rec`` of a recurrent population) are listed right
        after that layer's feed-forward synapse as ``"<layer>.<child>"`` (e.g. ``lif1.rec``)."""
        out = []
        for n, m in self.layers.items():
            if is_synapse(m):
                out.append((n, m))
            else:
                out += [(f"{n}.{c}", child) for c, child in m.named_children() if is_synapse(child)]
        return out

    def neurons(self) -> list[tuple[str, Neuron]]:
        """``(name, layer)`` for every spiking neuron layer (the readout excluded)."""
        return [(n, m) for n, m in self.layers.items() if isinstance(m, Neuron) and m.spiking]


def unit_gain_r(tau_mem: float, dt: float, integration: str) -> float:
    """The resistance R that makes the per-step input gain :math:`(1-a)R` equal 1."""
    a = NF.decay(dt, tau_mem, integration)
    return 1.0 / (1.0 - a)


def _neuron(kind: str, neuron_kw: dict, recurrent_size: int | None = None) -> nn.Module:
    """A spiking population; recurrent (of ``recurrent_size`` neurons) when that is given."""
    if kind not in NEURONS or not NEURONS[kind].spiking:
        raise UserError(f"unknown neuron {kind!r}; choose one of lif, if, cubalif, alif")
    if recurrent_size is not None and kind not in RECURRENT_NEURONS:
        raise UserError(f"recurrent layers need neuron lif or alif, got {kind!r}")
    kw = dict(neuron_kw)
    if kw.pop("unit_gain", True) and kind != "if":
        kw.setdefault("r", unit_gain_r(kw.get("tau_mem", 1e-2), kw.get("dt", 1e-3), kw.get("integration", "exact")))
    if recurrent_size is not None:
        return RECURRENT_NEURONS[kind](recurrent_size, **kw)
    for key in _RECURRENT_ONLY:
        kw.pop(key, None)
    return NEURONS[kind](**kw)


#: neuron keywords only recurrent populations take (dropped for the others, e.g. a spiking readout)
_RECURRENT_ONLY = ("rec_scale", "detach_recurrent")


def _readout(readout: str, neuron: str, neuron_kw: dict) -> nn.Module:
    if readout == "li":
        kw = {k: v for k, v in neuron_kw.items() if k in ("dt", "integration", "tau_mem")}
        kw.setdefault("tau_mem", 1e-2)
        return LI(r=unit_gain_r(kw["tau_mem"], kw.get("dt", 1e-3), kw.get("integration", "exact")), **kw)
    if readout == "spikes":
        return _neuron(neuron, neuron_kw)
    raise UserError(f"readout must be 'li' or 'spikes', got {readout!r}")


def mlp(sizes: Sequence[int], neuron: str = "lif", readout: str = "li", n_heads: int = 1,
        bias: bool = True, recurrent: bool = False, **neuron_kw) -> SNN:
    """``sizes = [n_in, h1, ..., n_out]``: Linear -> neuron per hidden layer, then
    Linear -> readout (``"li"`` leaky-integrator membrane, or ``"spikes"``).

    ``neuron_kw`` go to every neuron (``tau_mem``, ``dt``, ``integration``, ``reset``,
    ``surrogate``...). By default ``r`` is set so the per-step input gain is 1
    (``unit_gain=False`` keeps NIR's ``r = 1``).

    ``recurrent=True``: every hidden layer is a recurrent population
    (:class:`~neuroplastic.neurons.RecurrentLIF`, or :class:`~neuroplastic.neurons.RecurrentALIF`
    for ``neuron="alif"``) with its recurrent synapse ``"<layer>.rec"``; ``rec_scale`` and
    ``detach_recurrent`` in ``neuron_kw`` go to those layers only. The readout stays
    non-recurrent.
    """
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise UserError(f"mlp sizes must be at least two positive integers, got {list(sizes)}")
    given = [k for k in _RECURRENT_ONLY if k in neuron_kw]
    if given and not recurrent:
        raise UserError(f"{', '.join(given)} only apply to recurrent layers (mlp(..., recurrent=True))")
    layers: list[tuple[str, nn.Module]] = []
    for i in range(len(sizes) - 2):
        layers.append((f"fc{i + 1}", Linear(sizes[i], sizes[i + 1], bias=bias)))
        layers.append((f"{neuron}{i + 1}", _neuron(neuron, neuron_kw, int(sizes[i + 1]) if recurrent else None)))
    n_out = sizes[-1]
    layers.append((f"fc{len(sizes) - 1}", Linear(sizes[-2], n_out * n_heads, bias=bias)))
    layers.append(("readout", _readout(readout, neuron, neuron_kw)))
    return SNN(layers, n_out, n_heads, in_shape=(int(sizes[0]),))


def cnn(in_shape: Sequence[int] = (1, 28, 28), channels: Sequence[int] = (16, 32), n_out: int = 10,
        kernel_size: int = 3, neuron: str = "lif", readout: str = "li", n_heads: int = 1,
        bias: bool = True, **neuron_kw) -> SNN:
    """Small conv net: [Conv(k, pad k//2) -> neuron -> AvgPool2] per channel entry ->
    Flatten -> Linear -> readout. Input ``[T, B, C, H, W]``."""
    c, h, w = (int(v) for v in in_shape)
    layers: list[tuple[str, nn.Module]] = []
    for i, ch in enumerate(channels):
        layers.append((f"conv{i + 1}", Conv2d(c, ch, kernel_size, padding=kernel_size // 2, bias=bias)))
        layers.append((f"{neuron}{i + 1}", _neuron(neuron, neuron_kw)))
        layers.append((f"pool{i + 1}", AvgPool2d(2)))
        c, h, w = ch, h // 2, w // 2
    if h < 1 or w < 1:
        raise UserError(f"input {tuple(in_shape)} too small for {len(channels)} pooling stages")
    layers.append(("flatten", Flatten()))
    layers.append(("fc", Linear(c * h * w, n_out * n_heads, bias=bias)))
    layers.append(("readout", _readout(readout, neuron, neuron_kw)))
    return SNN(layers, n_out, n_heads, in_shape=tuple(in_shape))


