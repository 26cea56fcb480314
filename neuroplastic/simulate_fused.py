r"""The fused inference path of :func:`neuroplastic.simulate.run_batches`: is a network a
plain chain the one-kernel simulator (:mod:`neuroplastic.kernels.chain_sim`) can run, and
its arrays.

A network qualifies (:func:`why_not` returns ``None``) when its layers are exactly
``Linear, neuron, Linear, neuron, ...`` with

* every ``Linear`` a float32 CPU :class:`~neuroplastic.synapses.Linear` (bias or none;
  dense, or masked by a bool ``mask``), ``backend`` ``"auto"`` or ``"event"`` (``"dense"``
  asks for torch's matmul: the layer-by-layer path), no online-trainer ``eligibility``,
  no ``capture``, each one's inputs the previous one's outputs;
* every neuron an :class:`~neuroplastic.neurons.LIF`, :class:`~neuroplastic.neurons.IF` or
  :class:`~neuroplastic.neurons.CubaLIF` (the exact classes: not ALIF, not recurrent), or, as
  the last layer only, an :class:`~neuroplastic.neurons.LI` / :class:`~neuroplastic.neurons.CubaLI`
  readout, with scalar (not per-neuron, not learnable) parameters: the ones the numba
  neuron kernels take;
* no forward hooks on the network or its layers (they would not run).

Per step the kernel computes, for each layer, :math:`I_t = W x_t + b` from the active
inputs only and the neuron update (see :mod:`neuroplastic.kernels.chain_sim` for the
exact order of the float32 operations). **Exactness**: the spikes and membranes equal,
bit for bit, those of the layer-by-layer path when that path propagates each masked layer
by the CSR row push and each dense layer by the spike gather (``layer.backend =
"event"``, inputs sparse enough for the row push: the CSR forward switches to its column
push above ~15 % active inputs, which sums in another order). Under ``backend="auto"``
the layer-by-layer path picks, per layer and per chunk size, the CSR push, the spike gather
or torch's matmul; the matmul sums the same terms in MKL's order, so a membrane within float
rounding of the threshold could spike in one path and not in the other. On the benchmark
network of docs/benchmarks.md (issue 9) every spike of every layer and the hidden membranes
are equal; the readout membrane (its layer goes to the matmul) differs in the last bits
(at most 9.5e-7), none of it within that distance of the threshold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .neurons import IF, LI, LIF, CubaLI, CubaLIF, Neuron
from .neurons.fused import _offset
from .synapses import Linear

__all__ = ["FusedChain", "why_not", "prepare", "enabled", "ENV"]

#: set to ``0`` to make :func:`~neuroplastic.simulate.run_batches` always take the
#: layer-by-layer path (tests, benchmarks)
ENV = "NEUROPLASTIC_FUSED"

_SPIKING = (LIF, IF, CubaLIF)
_READOUT = (LI, CubaLI)


def enabled() -> bool:
    """False when the environment variable :data:`ENV` is ``0`` / ``false`` / ``no`` / ``off``."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _scalar(v) -> bool:
    return isinstance(v, float | int) and not isinstance(v, bool)


def _neuron_problem(name: str, m: Neuron, last: bool) -> str | None:
    kind = type(m)
    if kind not in _SPIKING and not (last and kind in _READOUT):
        where = "" if kind in _READOUT else " (fused: LIF, IF, CubaLIF; LI/CubaLI as readout)"
        return f"layer {name!r} is a {kind.__name__}{where}" + (" not at the end" if kind in _READOUT else "")
    a, gain = m.coefficients()
    values = [a, gain, m.v_th, m.v_reset, m.v_leak]
    if kind in (CubaLIF, CubaLI):
        values += list(m.synapse_coefficients())
    if not all(_scalar(v) for v in values):
        return f"layer {name!r} has per-neuron or learnable parameters"
    return None


def _linear_problem(name: str, m: Linear) -> str | None:
    if type(m) is not Linear:
        return f"layer {name!r} is a {type(m).__name__}"
    if m.backend not in ("auto", "event"):
        return f"layer {name!r} has backend {m.backend!r}"
    if m.eligibility is not None or m.capture:
        return f"layer {name!r} captures its input or carries an eligibility trace"
    tensors = [m.weight] + ([m.bias] if m.bias is not None else [])
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return f"layer {name!r} is not float32 on the CPU"
    if m.mask is not None and (m.mask.dtype != torch.bool or m.mask.device.type != "cpu"):
        return f"layer {name!r} has a non-bool mask"
    return None


def why_not(model) -> str | None:
    """``None`` when ``model`` qualifies for the fused path (module doc), else the reason."""
    from .network import SNN

    if not isinstance(model, SNN):
        return "not an SNN"
    layers = list(model.layers.items())
    if not layers or len(layers) % 2:
        return "not a chain of (synapse, neuron) pairs"
    if model._forward_hooks or model._forward_pre_hooks:
        return "the network has forward hooks"
    n = None
    for p, ((sname, syn), (nname, neu)) in enumerate(zip(layers[0::2], layers[1::2])):
        for name, m in ((sname, syn), (nname, neu)):
            if m._forward_hooks or m._forward_pre_hooks:
                return f"layer {name!r} has forward hooks"
        if not isinstance(syn, Linear):
            return f"layer {sname!r} is a {type(syn).__name__}, not a Linear synapse"
        if not isinstance(neu, Neuron):
            return f"layer {nname!r} is a {type(neu).__name__}, not a neuron"
        why = _linear_problem(sname, syn) or _neuron_problem(nname, neu, p == len(layers) // 2 - 1)
        if why:
            return why
        if n is not None and syn.in_features != n:
            return f"layer {sname!r} takes {syn.in_features} inputs, the layer before gives {n}"
        n = syn.out_features
    in_shape = model.in_shape
    if in_shape is not None and tuple(in_shape) != (layers[0][1].in_features,):
        return f"input shape {tuple(in_shape)} is not ({layers[0][1].in_features},)"
    return None


@dataclass
class FusedChain:
    """A qualifying network as the arrays of :func:`neuroplastic.kernels.chain_sim.run_chain`
    (built by :func:`prepare`; weights copied at that moment)."""

    names: list[str]  #: the neuron layers' names, input to output
    sizes: list[int]  #: their widths
    spiking: list[bool]
    n_in: int
    ints: np.ndarray
    flts: np.ndarray
    wdense: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    bias: np.ndarray
    record_v: bool

    @property
    def widest(self) -> int:
        """The widest layer (input included): what the layer-by-layer path sizes chunks by."""
        return max([self.n_in, *self.sizes])

    def buffers(self, n_samples: int, T: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero-free flat output buffers ``(spk uint8, vrec float32)`` for ``n_samples``."""
        from neuroplastic.kernels import chain_sim as K

        n_spk = sum(int(r[K.I_NOUT]) for r in self.ints if r[K.I_SPKOFF] >= 0)
        n_v = sum(int(r[K.I_NOUT]) for r in self.ints if r[K.I_VOFF] >= 0)
        return (np.empty(n_samples * T * n_spk, np.uint8), np.empty(n_samples * T * n_v, np.float32))

    def run(self, x: np.ndarray, x0: int, n: int, spk: np.ndarray, vrec: np.ndarray, b0: int,
            n_samples: int) -> np.ndarray:
        """Simulate samples ``x0 .. x0 + n`` of ``x [T, B, n_in]`` (float32, C-contiguous) into rows
        ``b0 .. b0 + n`` of the buffers (made by :meth:`buffers` for ``n_samples``); returns the
        per-sample flags of a NaN or infinite input."""
        from neuroplastic.kernels import chain_sim as K
        from neuroplastic.kernels.threads import match_torch_threads

        match_torch_threads()
        bad = np.zeros(n, np.uint8)
        K.run_chain(x, x0, self.ints, self.flts, self.wdense, self.indptr, self.indices, self.data, self.bias,
                    spk, vrec, b0, n_samples, bad)
        return bad

    def views(self, spk: np.ndarray, vrec: np.ndarray, n_samples: int, T: int) -> list[dict[str, np.ndarray]]:
        """Per neuron layer ``{"spikes": bool [n, T, m], "v": float32 [n, T, m]}`` (what it has)."""
        from neuroplastic.kernels import chain_sim as K

        out = []
        for r, m in zip(self.ints, self.sizes):
            obs = {}
            if r[K.I_VOFF] >= 0:
                o = int(r[K.I_VOFF]) * n_samples * T
                obs["v"] = vrec[o:o + n_samples * T * m].reshape(n_samples, T, m)
            if r[K.I_SPKOFF] >= 0:
                o = int(r[K.I_SPKOFF]) * n_samples * T
                obs["spikes"] = spk[o:o + n_samples * T * m].view(np.bool_).reshape(n_samples, T, m)
            out.append(obs)
        return out


def _csr(layer: Linear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Input-major CSR ``(indptr int64 [n_in+1], indices uint32, data float32)`` of the
    synapses on the mask (ascending outputs within a row). The structure comes from the
    layer's own :class:`~neuroplastic.kernels.autograd.CSRCache` (rebuilt only when the mask
    changes: ~20 ms for 800 x 800); the values are read from the weight on every call, by the
    cache's flat positions of the synapses in CSR order (0.1 ms for 800 x 800 at 10 %; the
    boolean index of the mask's transpose took 2.5 ms)."""
    from neuroplastic.kernels import dispatch

    if layer._csr_cache is None:
        layer._csr_cache = dispatch.CSRCache()
    cache = layer._csr_cache
    csr = cache.structure(layer.mask)
    flat = cache.flat_index(torch.device("cpu")).numpy()
    data = np.take(layer.weight.detach().numpy().reshape(-1), flat)
    return csr.indptr.astype(np.int64), csr.indices.astype(np.uint32), data


def prepare(model, record_v: bool) -> FusedChain | None:
    """The fused form of ``model`` (``None`` when :func:`why_not` gives a reason). With
    ``record_v`` every layer's membrane before reset is written too (the readout's always)."""
    from neuroplastic.kernels import chain_sim as K

    if why_not(model) is not None:
        return None
    layers = list(model.layers.items())
    pairs = list(zip(layers[0::2], layers[1::2]))
    ints = np.full((len(pairs), len(K.I_COLS)), -1, np.int64)
    flts = np.zeros((len(pairs), len(K.F_COLS)), np.float32)
    dense, ptrs, idxs, datas, biases = [], [], [], [], []
    w_off = d_off = p_off = b_off = spk_off = v_off = 0
    names, sizes, spiking = [], [], []
    with torch.no_grad():
        for p, ((_, syn), (nname, neu)) in enumerate(pairs):
            n_in, n_out = syn.in_features, syn.out_features
            r = ints[p]
            r[K.I_NIN], r[K.I_NOUT] = n_in, n_out
            if syn.mask is None:
                wt = np.ascontiguousarray(syn.weight.detach().numpy().T)
                r[K.I_SYN], r[K.I_WOFF], r[K.I_POFF] = K.SYN_DENSE, w_off, 0
                dense.append(wt.reshape(-1))
                w_off += wt.size
            else:
                indptr, indices, data = _csr(syn)
                r[K.I_SYN], r[K.I_WOFF], r[K.I_POFF] = K.SYN_CSR, d_off, p_off
                ptrs.append(indptr + d_off)
                idxs.append(indices)
                datas.append(data)
                d_off += data.size
                p_off += indptr.size
            r[K.I_BOFF], r[K.I_HASBIAS] = b_off, int(syn.bias is not None)
            biases.append(syn.bias.detach().numpy().astype(np.float32, copy=False) if syn.bias is not None
                          else np.zeros(n_out, np.float32))
            b_off += n_out
            kind = type(neu)
            a, gain = neu.coefficients()
            f = flts[p]
            f[K.F_A], f[K.F_GAIN], f[K.F_V0] = a, gain, neu.v_leak
            f[K.F_VTH], f[K.F_VRESET] = neu.v_th, neu.v_reset
            f[K.F_OFFSET] = _offset(a, neu.v_leak)
            f[K.F_LIOFF] = (1 - a) * neu.v_leak
            if kind in (CubaLIF, CubaLI):
                f[K.F_ASYN], f[K.F_GSYN] = neu.synapse_coefficients()
            readout = kind in _READOUT
            r[K.I_NEURON] = {LIF: K.LIF, IF: K.LIF, CubaLIF: K.CUBALIF, LI: K.LI, CubaLI: K.CUBALI}[kind]
            r[K.I_SUBTRACT] = int(neu.reset_mode == "subtract")
            if not readout:  # spike block offsets are per sample (scaled by the sample count)
                r[K.I_SPKOFF] = spk_off
                spk_off += n_out
            if record_v or readout:
                r[K.I_VOFF] = v_off
                v_off += n_out
            names.append(nname)
            sizes.append(n_out)
            spiking.append(not readout)

    def cat(parts, dtype):
        return np.ascontiguousarray(np.concatenate(parts) if parts else np.zeros(1, dtype), dtype=dtype)

    return FusedChain(names, sizes, spiking, layers[0][1].in_features, ints, flts, cat(dense, np.float32),
                      cat(ptrs, np.int64), cat(idxs, np.uint32), cat(datas, np.float32), cat(biases, np.float32),
                      record_v)
