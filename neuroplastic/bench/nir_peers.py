r"""Run NIR graphs in the peer simulators, and export the peers' own models to NIR.

Four peers, each through its *own* NIR code (imported lazily, so this module imports
without any of them):

* ``norse``: ``norse.torch.from_nir`` / ``norse.torch.to_nir`` (nirtorch ``GraphExecutor``);
* ``snntorch``: ``snntorch.import_nir.import_from_nir`` / ``snntorch.export_nir.export_to_nir``;
* ``spikingjelly``: ``spikingjelly.activation_based.nir_exchange.{import_from_nir, export_to_nir}``;
* ``rockpool``: ``rockpool.nn.modules.torch.nir.{from_nir, to_nir}``.

:func:`load` builds a peer's model from a graph once; :func:`run` feeds it a time-first
sequence ``[T, B, ...]`` from a fresh state and returns the output node's activity
``[T, B, N_out]``. :func:`native_mlp` builds a peer's *native* two-layer network (weights
from a seed, scaled so that every layer fires at about 10 % on Bernoulli(0.2) input),
:func:`run_native` runs it, and :func:`export_native_mlp` exports it with the peer's
exporter. :func:`peer_semantics` says how each peer discretises the NIR primitives.

Two adapter choices, both documented in :func:`peer_semantics` and switchable:

* ``compensate_dt`` (default on): snnTorch's importer and exporter hard-code a step of
  ``1e-4`` s and Rockpool's importer infers the step from ``r``; the adapter rescales the
  time constants (snnTorch) or sets the modules' ``dt`` (Rockpool) so that the peer steps
  at the ``dt`` asked for. Off: the peer's own behaviour, unchanged.
* ``repair`` (default off, exports only): rewrite the known defects of a peer's exporter
  (parameters that do not describe the native model, batch dimensions in the I/O types,
  torch tensors) so that the graph describes the model that was exported.

Peers refuse some inputs; :class:`PeerUnsupported` (a ``NotImplementedError``) is raised
with the reason, both for the known gaps and when a peer's own importer rejects a node.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import nir
import numpy as np
import torch

__all__ = [
    "PEERS",
    "NEURONS",
    "PeerUnsupported",
    "NativeParams",
    "available",
    "load",
    "run",
    "native_mlp",
    "run_native",
    "export_native",
    "export_native_mlp",
    "peer_semantics",
]

PEERS = ("norse", "snntorch", "spikingjelly", "rockpool")
NEURONS = ("lif", "cubalif", "if")

#: the step snnTorch's NIR import and export assume (``snntorch/import_nir.py``, ``export_nir.py``)
SNNTORCH_DT = 1e-4

#: the module that must import for each peer (never ``torchvision``: it fails to load here)
_PEER_MODULES = {
    "norse": ("norse.torch", "nirtorch"),
    "snntorch": ("snntorch", "snntorch.import_nir", "snntorch.export_nir", "nirtorch"),
    "spikingjelly": ("spikingjelly.activation_based.nir_exchange",),
    "rockpool": ("rockpool.nn.modules.torch.nir",),
}

#: calibration of the native networks: Bernoulli(CAL_P) input, T x B samples, target rate
CAL_P, CAL_T, CAL_B = 0.2, 50, 16
CAL_RATE, CAL_BAND = 0.10, (0.05, 0.15)


class PeerUnsupported(NotImplementedError):
    """The peer cannot run or export this (the message says why)."""


@dataclass(frozen=True)
class NativeParams:
    """Neuron parameters of the native networks (seconds; threshold in the peer's units)."""

    tau_mem: float = 2e-2
    tau_syn: float = 5e-3
    v_th: float = 1.0


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the peers' prints, warnings and log records below ERROR."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _check_peer(peer: str) -> None:
    """ValueError unless ``peer`` is one of :data:`PEERS`."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; one of {PEERS}")


def _check_neuron(neuron: str) -> None:
    """ValueError unless ``neuron`` is one of :data:`NEURONS`."""
    if neuron not in NEURONS:
        raise ValueError(f"unknown neuron {neuron!r}; one of {NEURONS}")


def _all_nodes(graph: nir.NIRGraph) -> Iterator[nir.NIRNode]:
    """All nodes of ``graph``, sub-graphs flattened."""
    for node in graph.nodes.values():
        if isinstance(node, nir.NIRGraph):
            yield from _all_nodes(node)
        else:
            yield node


def _refuse(graph: nir.NIRGraph, kinds: tuple[type, ...], why: str) -> None:
    """Raise :class:`PeerUnsupported` if ``graph`` holds a node of one of ``kinds``."""
    found = sorted({type(n).__name__ for n in _all_nodes(graph) if isinstance(n, kinds)})
    if found:
        raise PeerUnsupported(f"{', '.join(found)}: {why}")


@contextlib.contextmanager
def _importer_errors(peer: str) -> Iterator[None]:
    """Turn a peer importer's refusal of a node (assert / ValueError / ...) into PeerUnsupported."""
    try:
        yield
    except PeerUnsupported:
        raise
    except (AssertionError, ValueError, AttributeError, KeyError, NotImplementedError) as err:
        raise PeerUnsupported(f"{peer} import failed: {type(err).__name__}: {err}") from err


def _numpy_params(graph: nir.NIRGraph) -> nir.NIRGraph:
    """``graph`` (modified) with torch tensors in its nodes replaced by numpy arrays (some
    exporters leave tensors, some importers index them as arrays)."""
    for node in _all_nodes(graph):
        for name, value in vars(node).items():
            if isinstance(value, torch.Tensor):
                setattr(node, name, value.detach().cpu().numpy())
    return graph


def _time_first(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32, checked to have a time and a batch dimension."""
    if x.dim() < 3:
        raise ValueError(f"x must be time-first [T, B, ...], got shape {tuple(x.shape)}")
    return x.to(torch.float32)


def _rescale_taus(graph: nir.NIRGraph, factor: float) -> nir.NIRGraph:
    """A copy of ``graph`` whose LIF/CubaLIF/LI time constants are multiplied by ``factor``."""
    graph = copy.deepcopy(graph)
    for node in _all_nodes(graph):
        if isinstance(node, (nir.LIF, nir.CubaLIF, nir.LI, nir.CubaLI)):
            for name in ("tau", "tau_mem", "tau_syn"):
                if hasattr(node, name):
                    setattr(node, name, np.asarray(getattr(node, name)) * factor)
    return graph


def _numpy(value) -> np.ndarray:
    """float32 array of a tensor, array or number."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


_NEURON_FIELDS = {
    nir.LIF: ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    nir.CubaLIF: ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    nir.IF: ("r", "v_threshold", "v_reset"),
}


def _fix_types(graph: nir.NIRGraph) -> nir.NIRGraph:
    """A new flat graph: float32 arrays for tensors, per-neuron vectors for 0-d neuron
    parameters, and Input/Output types taken from their neighbours (no batch/time dims)."""
    nodes = dict(graph.nodes)
    for src, dst in graph.edges:  # neurons first: their size may come from the Affine before them
        nodes[dst] = _clean_node(nodes[dst], _size(nodes[src], "output"))
    for name, node in nodes.items():
        nodes[name] = _clean_node(node, None)
    for src, dst in graph.edges:
        if isinstance(nodes[src], nir.Input):
            nodes[src] = nir.Input(input_type={"input": np.array(_size(nodes[dst], "input"))})
        if isinstance(nodes[dst], nir.Output):
            nodes[dst] = nir.Output(output_type={"output": np.array(_size(nodes[src], "output"))})
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges))


def _size(node: nir.NIRNode, port: str) -> list[int]:
    """The shape of ``node``'s input or output (an Affine's from its weight)."""
    if isinstance(node, (nir.Affine, nir.Linear)):
        return [int(node.weight.shape[1 if port == "input" else 0])]
    types = node.input_type if port == "input" else node.output_type
    return [int(d) for d in np.asarray(next(iter(types.values()))).ravel()]


def _clean_node(node: nir.NIRNode, size: list[int] | None) -> nir.NIRNode:
    """``node`` rebuilt from float32 arrays; 0-d neuron parameters broadcast to ``size``."""
    if isinstance(node, nir.Affine):
        return nir.Affine(weight=_numpy(node.weight), bias=_numpy(node.bias))
    if isinstance(node, nir.Linear):
        return nir.Linear(weight=_numpy(node.weight))
    fields = _NEURON_FIELDS.get(type(node))
    if fields is None:
        return node
    values = {f: _numpy(getattr(node, f)) for f in fields}
    if values["v_threshold"].ndim == 0:
        if not size:
            return node
        values = {f: np.full(size, v, np.float32) for f, v in values.items()}
    return type(node)(**values)


def _set_neuron_field(graph: nir.NIRGraph, kind: type, field: str, fn: Callable[[nir.NIRNode], np.ndarray]) -> None:
    """Set ``field`` of every ``kind`` node to ``fn(node)`` (float32)."""
    for node in _all_nodes(graph):
        if type(node) is kind:
            setattr(node, field, np.asarray(fn(node), dtype=np.float32))


# --------------------------------------------------------------------------- norse


def _step_loop(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Feed ``x [T, ...]`` one step per call, ``out, state = model(x_t, state)`` from a fresh state."""
    state, outs = None, []
    for x_t in x:
        out, state = model(x_t, state)
        outs.append(out)
    return torch.stack(outs)


class _Norse:
    """Norse 1.1: ``norse.torch.from_nir`` (nirtorch GraphExecutor, one step per call)."""

    @staticmethod
    def load(graph: nir.NIRGraph, dt: float, compensate_dt: bool) -> torch.nn.Module:
        import norse.torch as norse

        with _quiet(), _importer_errors("norse"):
            return norse.from_nir(graph, dt=dt, ignore_warnings=True)

    @staticmethod
    def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _step_loop(model, x)

    @staticmethod
    def cell(neuron: str, n: int, dt: float, p: NativeParams) -> torch.nn.Module:
        """Norse's own cell; parameters are per-neuron vectors (0-d ones export unwritable graphs)."""
        import norse.torch as norse

        def full(v: float) -> torch.Tensor:
            return torch.full((n,), float(v))

        if neuron == "lif":
            return norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=full(1 / p.tau_mem), v_th=full(p.v_th),
                                                           v_leak=full(0), v_reset=full(0)), dt=dt)
        if neuron == "cubalif":
            return norse.LIFCell(norse.LIFParameters(tau_syn_inv=full(1 / p.tau_syn), tau_mem_inv=full(1 / p.tau_mem),
                                                     v_th=full(p.v_th), v_leak=full(0), v_reset=full(0)), dt=dt)
        return norse.IAFCell(norse.IAFParameters(v_th=full(p.v_th), v_reset=full(0)), dt=dt)

    @staticmethod
    def build(layers: list[tuple[torch.Tensor, torch.Tensor]], neuron: str, dt: float, p: NativeParams):
        import norse.torch as norse

        mods: list[torch.nn.Module] = []
        for w, b in layers:
            mods += [_torch_linear(w, b), _Norse.cell(neuron, w.shape[0], dt, p)]
        return norse.SequentialState(*mods)

    @staticmethod
    def run_native(model, x: torch.Tensor) -> torch.Tensor:
        return _Norse.run(model, x)

    @staticmethod
    def export(model, n_in: int, dt: float, compensate_dt: bool) -> nir.NIRGraph:
        import norse.torch as norse

        with _quiet():  # an unbatched sample: a batched one puts the batch into the I/O types
            return norse.to_nir(model, torch.zeros(n_in), dt=dt)

    @staticmethod
    def repair(graph: nir.NIRGraph, dt: float) -> nir.NIRGraph:
        """``tau = dt / tau_inv`` -> ``1 / tau_inv``; CubaLIF ``w_in = tau_syn / dt`` (Norse's current
        jumps by the input); IF ``r = 1 / dt`` (Norse adds the input to v)."""
        graph = _fix_types(graph)
        _set_neuron_field(graph, nir.LIF, "tau", lambda n: n.tau / dt)
        _set_neuron_field(graph, nir.CubaLIF, "tau_mem", lambda n: n.tau_mem / dt)
        _set_neuron_field(graph, nir.CubaLIF, "tau_syn", lambda n: n.tau_syn / dt)
        _set_neuron_field(graph, nir.CubaLIF, "w_in", lambda n: n.tau_syn / dt)
        _set_neuron_field(graph, nir.IF, "r", lambda n: np.full_like(n.r, 1 / dt))
        return graph


# --------------------------------------------------------------------------- snnTorch


class _SnnTorch:
    """snnTorch 1.0: ``import_from_nir`` (nirtorch ``nir_to_torch`` GraphModule, neurons with
    ``init_hidden=True`` keep their state inside the modules)."""

    @staticmethod
    def load(graph: nir.NIRGraph, dt: float, compensate_dt: bool) -> torch.nn.Module:
        from snntorch.import_nir import import_from_nir

        _refuse(graph, (nir.IF,), "snnTorch imports IF as Leaky(beta=0.9, init_hidden=False, subtract reset), "
                                  "whose (spk, mem) tuple breaks the graph, and requires r == 1")
        if compensate_dt:
            graph = _rescale_taus(graph, SNNTORCH_DT / dt)
        with _quiet(), _importer_errors("snntorch"):
            return import_from_nir(graph)

    @staticmethod
    def reset(model: torch.nn.Module) -> None:
        """Zero the hidden state of every snnTorch neuron in ``model``."""
        import snntorch

        for mod in model.modules():
            if isinstance(mod, snntorch.SpikingNeuron) and hasattr(mod, "reset_mem"):
                mod.reset_mem()

    @staticmethod
    def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        _SnnTorch.reset(model)
        return _step_loop(model, x)

    @staticmethod
    def cell(neuron: str, n: int, dt: float, p: NativeParams) -> torch.nn.Module:
        """``Leaky``/``Synaptic`` with zero reset in the firing step; beta, alpha and the
        threshold as per-neuron vectors (scalars make ``export_to_nir`` fail type inference)."""
        import snntorch

        if neuron == "if":
            raise PeerUnsupported("snnTorch has no IF neuron; Leaky(beta=1) exports a LIF with tau = r = inf")

        def full(v: float) -> torch.Tensor:
            return torch.full((n,), float(v))

        kw = dict(threshold=full(p.v_th), reset_mechanism="zero", reset_delay=False, init_hidden=True)
        if neuron == "lif":
            return snntorch.Leaky(beta=full(1 - dt / p.tau_mem), **kw)
        return snntorch.Synaptic(alpha=full(1 - dt / p.tau_syn), beta=full(1 - dt / p.tau_mem), **kw)

    @staticmethod
    def build(layers: list[tuple[torch.Tensor, torch.Tensor]], neuron: str, dt: float, p: NativeParams):
        mods: list[torch.nn.Module] = []
        for w, b in layers:
            mods += [_torch_linear(w, b), _SnnTorch.cell(neuron, w.shape[0], dt, p)]
        return torch.nn.Sequential(*mods)

    @staticmethod
    def run_native(model, x: torch.Tensor) -> torch.Tensor:
        _SnnTorch.reset(model)
        return torch.stack([model(x_t) for x_t in x])

    @staticmethod
    def export(model, n_in: int, dt: float, compensate_dt: bool) -> nir.NIRGraph:
        from snntorch.export_nir import export_to_nir

        with _quiet():  # ignore_dims=[0]: without it the batch dim breaks infer_types()
            graph = export_to_nir(model, torch.zeros(1, n_in), ignore_dims=[0])
        _SnnTorch.reset(model)
        return _rescale_taus(graph, dt / SNNTORCH_DT) if compensate_dt else graph

    @staticmethod
    def repair(graph: nir.NIRGraph, dt: float) -> nir.NIRGraph:
        return _fix_types(graph)


# --------------------------------------------------------------------------- SpikingJelly


class _SpikingJelly:
    """SpikingJelly 2.0: ``import_from_nir`` (nirtorch GraphModule with explicit state),
    multi-step mode: one call per sequence."""

    @staticmethod
    def load(graph: nir.NIRGraph, dt: float, compensate_dt: bool) -> torch.nn.Module:
        from spikingjelly.activation_based.nir_exchange import import_from_nir

        with _quiet(), _importer_errors("spikingjelly"):
            return import_from_nir(graph, dt=dt, step_mode="m")

    @staticmethod
    def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        out, _ = model(x, None)  # state=None: every call starts from the initial state
        return out

    @staticmethod
    def cell(neuron: str, n: int, dt: float, p: NativeParams) -> torch.nn.Module:
        from spikingjelly.activation_based import neuron as sj

        if neuron == "lif":  # decay_input=False: v += (v_reset - v)/tau + x, i.e. NIR r = tau/dt
            return sj.LIFNode(tau=p.tau_mem / dt, decay_input=False, v_threshold=p.v_th, v_reset=0.0)
        if neuron == "cubalif":
            return sj.CUBALIFNode(c_decay=1 - dt / p.tau_syn, v_decay=1 - dt / p.tau_mem, v_threshold=p.v_th,
                                  v_reset=0.0)
        return sj.IFNode(v_threshold=p.v_th, v_reset=0.0)

    @staticmethod
    def build(layers: list[tuple[torch.Tensor, torch.Tensor]], neuron: str, dt: float, p: NativeParams):
        from spikingjelly.activation_based import functional, layer

        mods: list[torch.nn.Module] = []
        for w, b in layers:
            lin = layer.Linear(w.shape[1], w.shape[0])
            _copy_linear(lin, w, b)
            mods += [lin, _SpikingJelly.cell(neuron, w.shape[0], dt, p)]
        net = torch.nn.Sequential(*mods)
        functional.set_step_mode(net, "m")
        return net

    @staticmethod
    def run_native(model, x: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(model)
        out = model(x)
        functional.reset_net(model)
        return out

    @staticmethod
    def export(model, n_in: int, dt: float, compensate_dt: bool) -> nir.NIRGraph:
        from spikingjelly.activation_based import functional
        from spikingjelly.activation_based.nir_exchange import export_to_nir

        with _quiet():
            graph = export_to_nir(model, torch.zeros(1, 1, n_in), dt=dt)
        functional.reset_net(model)
        return graph

    @staticmethod
    def repair(graph: nir.NIRGraph, dt: float) -> nir.NIRGraph:
        return _fix_types(graph)


# --------------------------------------------------------------------------- Rockpool


class _Rockpool:
    """Rockpool 3.1: ``from_nir`` (nirtorch GraphExecutor over whole sequences, ``[B, T, N]``)."""

    @staticmethod
    def load(graph: nir.NIRGraph, dt: float, compensate_dt: bool) -> torch.nn.Module:
        from rockpool.nn.modules.torch.nir import from_nir

        _refuse(graph, (nir.LIF,), "Rockpool's from_nir reads node.tau_mem, which nir.LIF lacks (AttributeError)")
        _refuse(graph, (nir.IF,), "Rockpool's from_nir has no IF mapping")
        with _quiet(), _importer_errors("rockpool"):
            model = from_nir(graph)
        if compensate_dt:  # the importer infers dt = min(tau_mem / (1 + r)); step at dt instead
            for mod in model.modules():
                if hasattr(mod, "tau_mem"):
                    mod.dt = dt
        return model

    @staticmethod
    def reset(model: torch.nn.Module) -> None:
        """Zero the neuron states (Rockpool keeps batch element 0's state after a call)."""
        for mod in model.modules():
            if hasattr(mod, "reset_state") and hasattr(mod, "tau_mem"):
                mod.reset_state()

    @staticmethod
    def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        _Rockpool.reset(model)
        out = model(x.transpose(0, 1).contiguous())
        if isinstance(out, tuple):
            out = out[0]
        _Rockpool.reset(model)
        return out.transpose(0, 1)

    @staticmethod
    def cell(neuron: str, n: int, dt: float, p: NativeParams):
        from rockpool.nn.modules import LIFNeuronTorch, LIFTorch

        if neuron == "lif":
            return LIFNeuronTorch((n,), tau_mem=p.tau_mem, threshold=p.v_th, dt=dt)
        if neuron == "cubalif":
            return LIFTorch((n,), tau_mem=p.tau_mem, tau_syn=p.tau_syn, threshold=p.v_th, dt=dt)
        raise PeerUnsupported("Rockpool has no IF neuron module with a NIR mapping")

    @staticmethod
    def build(layers: list[tuple[torch.Tensor, torch.Tensor]], neuron: str, dt: float, p: NativeParams):
        from rockpool.nn.combinators import Sequential
        from rockpool.nn.modules import LinearTorch

        mods = []
        for w, b in layers:
            lin = LinearTorch((w.shape[1], w.shape[0]), weight=w.T.contiguous(), bias=b.clone(), has_bias=True)
            mods += [lin, _Rockpool.cell(neuron, w.shape[0], dt, p)]
        return Sequential(*mods).to_torch()

    @staticmethod
    def run_native(model, x: torch.Tensor) -> torch.Tensor:
        return _Rockpool.run(model, x)

    @staticmethod
    def export(model, n_in: int, dt: float, compensate_dt: bool) -> nir.NIRGraph:
        from rockpool.nn.modules.torch.nir import to_nir

        with _quiet():
            graph = to_nir(model, torch.zeros(1, 1, n_in))
        _Rockpool.reset(model)
        return graph

    @staticmethod
    def repair(graph: nir.NIRGraph, dt: float) -> nir.NIRGraph:
        """I/O types without batch/time; ``r = 1 / (1 - a_m)`` and CubaLIF ``w_in = a_s / (1 - a_s)``
        (``a = exp(-dt/tau)``): the native model read with *exact* integration."""
        graph = _fix_types(graph)

        def r_exact(node):
            tau = node.tau if isinstance(node, nir.LIF) else node.tau_mem
            return 1 / -np.expm1(-dt / tau)

        _set_neuron_field(graph, nir.LIF, "r", r_exact)
        _set_neuron_field(graph, nir.CubaLIF, "r", r_exact)
        _set_neuron_field(graph, nir.CubaLIF, "w_in", lambda n: np.exp(-dt / n.tau_syn) / -np.expm1(-dt / n.tau_syn))
        return graph


_ADAPTERS = {"norse": _Norse, "snntorch": _SnnTorch, "spikingjelly": _SpikingJelly, "rockpool": _Rockpool}


def _torch_linear(w: torch.Tensor, b: torch.Tensor) -> torch.nn.Linear:
    """A ``torch.nn.Linear`` holding ``w`` ``[out, in]`` and ``b``."""
    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    _copy_linear(lin, w, b)
    return lin


def _copy_linear(lin: torch.nn.Module, w: torch.Tensor, b: torch.Tensor) -> None:
    """Copy ``w`` and ``b`` into a Linear-like module."""
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)


# --------------------------------------------------------------------------- public API


@cache
def available(peer: str) -> bool:
    """Whether ``peer`` (and its NIR code) imports here. Any exception counts as missing."""
    _check_peer(peer)
    try:
        with _quiet():
            for name in _PEER_MODULES[peer]:
                importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken install (e.g. a torchvision op error) is "not available"
        return False
    return True


def load(peer: str, graph: nir.NIRGraph, dt: float, *, compensate_dt: bool = True) -> object:
    """The peer's model imported from ``graph`` with the peer's own importer (built once,
    reusable: :func:`run` resets its state). ``dt`` is passed to peers that take it; see
    the module docstring for ``compensate_dt``. The graph is not modified."""
    _check_peer(peer)
    return _ADAPTERS[peer].load(_numpy_params(copy.deepcopy(graph)), float(dt), compensate_dt)


def run(peer: str, model, x: torch.Tensor) -> torch.Tensor:
    """Run a :func:`load`-ed model on time-first ``x`` (``[T, B, N]`` or ``[T, B, C, H, W]``)
    from a reset state, under ``torch.no_grad()``; the output node's activity ``[T, B, N_out]``
    as float32 (Rockpool's spikes are counts, possibly > 1)."""
    _check_peer(peer)
    x = _time_first(x)
    with torch.no_grad():
        return _ADAPTERS[peer].run(model, x).to(torch.float32)


def native_mlp(peer: str, sizes: Sequence[int], neuron: str, dt: float, seed: int,
               params: NativeParams = NativeParams()) -> object:
    """The peer's own Affine -> neuron -> ... network (``neuron`` in :data:`NEURONS`).

    Weights ``N(0, 1/fan_in)`` and biases ``N(0, 0.25/fan_in)`` from ``seed``, each layer's
    scaled (bisection on the gain, layer by layer) so that it fires at ~10 % (5-15 %) on
    Bernoulli(0.2) input, calibrated with the peer's own neurons."""
    _check_peer(peer)
    _check_neuron(neuron)
    adapter = _ADAPTERS[peer]
    adapter.cell(neuron, 1, dt, params)  # raises PeerUnsupported early
    layers = _calibrated_layers(adapter, list(sizes), neuron, float(dt), seed, params)
    with _quiet():
        return adapter.build(layers, neuron, float(dt), params)


def run_native(peer: str, model, x: torch.Tensor) -> torch.Tensor:
    """Run a :func:`native_mlp` network on time-first ``x`` from a reset state: ``[T, B, N_out]``."""
    _check_peer(peer)
    x = _time_first(x)
    with torch.no_grad():
        return _ADAPTERS[peer].run_native(model, x).to(torch.float32)


def export_native(peer: str, model, n_in: int, dt: float, *, compensate_dt: bool = True,
                  repair: bool = False) -> nir.NIRGraph:
    """Export a native network with the peer's own exporter (``n_in`` input features)."""
    _check_peer(peer)
    adapter = _ADAPTERS[peer]
    graph = adapter.export(model, int(n_in), float(dt), compensate_dt)
    return adapter.repair(graph, float(dt)) if repair else graph


def export_native_mlp(peer: str, sizes: Sequence[int], neuron: str, dt: float, seed: int, *,
                      params: NativeParams = NativeParams(), compensate_dt: bool = True,
                      repair: bool = False) -> nir.NIRGraph:
    """:func:`native_mlp` exported by the peer's own exporter (see :func:`export_native`).

    Raises :class:`PeerUnsupported` when the peer has no such native neuron or cannot
    export it. ``repair=False`` returns the peer's graph as written (it may not survive
    ``nir.write``, and its parameters may not describe the native model: see
    :func:`peer_semantics`)."""
    model = native_mlp(peer, sizes, neuron, dt, seed, params)
    return export_native(peer, model, sizes[0], dt, compensate_dt=compensate_dt, repair=repair)


def peer_semantics(peer: str) -> str:
    """One paragraph: how ``peer``'s importer discretises each NIR primitive, and what its
    exporter writes (our convention: ``v = a v + (1-a)(v_leak + R I)``, ``a = 1 - dt/tau``
    (euler) or ``exp(-dt/tau)`` (exact), fire on ``v > v_th``, reset to ``v_reset``)."""
    _check_peer(peer)
    return _SEMANTICS[peer]


# --------------------------------------------------------------------------- calibration


def _calibrated_layers(adapter, sizes: list[int], neuron: str, dt: float, seed: int,
                       params: NativeParams) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded weights, each layer's gain fitted on the spikes of the layer before."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(CAL_T, CAL_B, sizes[0], generator=gen) < CAL_P).float()
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        w0 = torch.randn(n_out, n_in, generator=gen) / math.sqrt(n_in)
        b0 = torch.randn(n_out, generator=gen) * 0.5 / math.sqrt(n_in)

        def spikes(gain: float, x=x, w0=w0, b0=b0) -> torch.Tensor:
            with _quiet(), torch.no_grad():
                net = adapter.build([(gain * w0, gain * b0)], neuron, dt, params)
                return adapter.run_native(net, x)

        gain = fit_gain(lambda g: float((spikes(g) > 0).float().mean()))
        layers.append((gain * w0, gain * b0))
        x = spikes(gain)
    return layers


def fit_gain(rate: Callable[[float], float], target: float = CAL_RATE, band: tuple[float, float] = CAL_BAND,
             step: float = 4.0, max_iter: int = 40) -> float:
    """A gain whose firing ``rate(gain)`` lies in ``band`` (geometric bracketing by ``step``,
    then bisection in log); the closest to ``target`` seen if none does."""
    lo, hi, gain = None, None, 1.0
    best = (math.inf, gain)
    for _ in range(max_iter):
        r = rate(gain)
        best = min(best, (abs(r - target), gain))
        if band[0] <= r <= band[1]:
            return gain
        if r < band[0]:
            lo = gain
        else:
            hi = gain
        gain = gain * step if hi is None else gain / step if lo is None else math.sqrt(lo * hi)
    return best[1]


# --------------------------------------------------------------------------- semantics

_SEMANTICS = {
    "norse": (
        "Norse 1.1, norse.torch.from_nir(graph, dt): nirtorch GraphExecutor, one step per call with the state "
        "passed back; dt is honoured for LIF/CubaLIF, everything forward Euler, threshold strict (v - v_th > 0). "
        "LIF -> LIFBoxCell: v += dt/tau (v_leak - v + I), i.e. our euler update with R = 1: r is ignored (a "
        "warning only), so a graph with r != 1 is mis-scaled by 1/r; v_leak honoured but the state starts at "
        "v_leak; v_reset ignored (reset to 0). CubaLIF -> LIBoxCell synapse + LIFBoxCell: i += dt/tau_syn "
        "(v_leak - i + w_in I), then v += dt/tau_mem (v_leak - v + r i) with the current of the same step: w_in "
        "and r honoured, agrees with ours when v_leak = 0 (the synapse also leaks towards, and starts at, v_leak); "
        "v_reset ignored (0). IF -> IAFCell: v += I, dt and r ignored (agrees with ours only for R = 1/dt), "
        "v_reset ignored (0). Flatten dims are not shifted past the batch dim; no AvgPool2d or LI mapping (nirtorch "
        "drops such nodes: a conv graph breaks, an LI readout is skipped). Exporter (to_nir): tau = dt / "
        "tau_inv (should be 1 / tau_inv: time constants wrong by a factor dt); LIFCell (current jumps by the "
        "input) written as CubaLIF with w_in = 1 (should be tau_syn/dt); IAFCell as IF with r = 1 (should be "
        "1/dt); a batched sample puts the batch into the Input/Output types; 0-d parameters give 0-d nodes that "
        "nir.write cannot store (export with per-neuron parameters and an unbatched sample; repair=True fixes "
        "tau, w_in, r)."
    ),
    "snntorch": (
        "snnTorch 1.0, snntorch.import_nir.import_from_nir(graph): nirtorch nir_to_torch GraphModule, one step "
        "per call, neuron state inside the modules (init_hidden=True; reset with reset_mem). dt is hard-coded to "
        "1e-4 s (the adapter rescales the time constants by 1e-4/dt unless compensate_dt=False), forward Euler, "
        "threshold strict (mem - thr > 0), zero reset in the firing step (reset_delay=False): v_reset ignored. "
        "LIF -> Leaky(beta = 1 - dt/tau) with the input gain folded into the threshold, thr = v_th / "
        "(r dt / tau): our euler update with R honoured (one value per layer: the first unique value is used); "
        "v_leak must be 0 and v_threshold uniform (asserts). CubaLIF -> Synaptic(alpha = 1 - dt/tau_syn, beta = "
        "1 - dt/tau_mem): syn = alpha syn + I, mem = beta mem + syn (current of the same step), thr = v_th / "
        "(w_in dt / tau_syn): agrees with ours, but requires r == tau_mem/dt and v_leak == 0 (asserts). IF -> "
        "Leaky(beta=0.9, subtract reset, init_hidden=False) and requires r == 1: leaky, and its (spk, mem) tuple "
        "breaks the graph, so IF cannot run. Flatten dims are not shifted past the batch dim. Exporter "
        "(export_to_nir): Leaky -> LIF(tau = 1e-4/(1-beta), r = tau/1e-4), Synaptic -> CubaLIF(w_in = "
        "tau_syn/1e-4, r = tau_mem/1e-4): consistent with the importer on a 1e-4 s step (the adapter rescales to "
        "dt); reset mechanism not recorded; no IF (Leaky(beta=1) gives tau = r = inf). Its 'type inference "
        "error' comes from the batch dim of the sample (pass ignore_dims=[0]) and from scalar beta/threshold "
        "(0-d nodes): with per-neuron beta/threshold tensors and ignore_dims=[0] export and nir.write work."
    ),
    "spikingjelly": (
        "SpikingJelly 2.0, nir_exchange.import_from_nir(graph, dt, step_mode): nirtorch GraphModule with "
        "explicit state (state=None restarts; multi-step mode here, one call per sequence). dt honoured (default "
        "1e-4), forward Euler, threshold NON-strict (v >= v_th), hard reset to v_reset (honoured), state starts "
        "at v_reset; every parameter must be uniform across neurons, others are refused (ValueError). LIF -> "
        "LIFNode(tau/dt): r == 1 (decay_input: v += dt/tau (v_reset - v + I)) or r == tau/dt (v += dt/tau "
        "(v_reset - v) + I), other r refused; v_leak must equal v_reset (the leak target is v_reset). CubaLIF "
        "-> CUBALIFNode: c = (1 - dt/tau_syn) c + I, v = (1 - dt/tau_mem) v + c (current of the same step); "
        "requires w_in == tau_syn/dt, r == tau_mem/dt, v_leak == 0, i.e. our euler update with unit gains. IF "
        "-> IFNode: v += I, requires r == 1/dt. Flatten dims shifted for the batch. Agrees with ours except for "
        "the non-strict threshold. Exporter (export_to_nir): the exact inverse (LIF r = tau/dt or 1, v_leak = "
        "v_reset; CubaLIF w_in = tau_syn/dt, r = tau_mem/dt; IF r = 1/dt), types without batch/time, numpy "
        "arrays; soft reset (v_reset=None) refused. No defect found: graphs round-trip through nir.write."
    ),
    "rockpool": (
        "Rockpool 3.1, rockpool.nn.modules.torch.nir.from_nir(graph): nirtorch GraphExecutor whose modules take "
        "whole sequences [B, T, N] and keep the state of batch element 0 (reset before each run). Only CubaLIF "
        "imports: LIF fails (the importer reads node.tau_mem) and IF has no mapping. No dt argument: dt = "
        "min(tau_mem / (1 + r)), r is used for nothing else (the adapter sets dt unless compensate_dt=False). "
        "CubaLIF -> LIFTorch, exact exponential decay: isyn = a_s (isyn + I), v = a_m v + isyn + v_leak "
        "(a = exp(-dt/tau); current of the same step; v_leak acts as a per-step bias current; w_in ignored), "
        "i.e. our exact update with w_in = a_s/(1 - a_s), R = 1/(1 - a_m); NON-strict threshold with multiple "
        "spikes per step (n = floor(v/v_th) if v >= v_th: outputs are counts) and subtractive reset v -= n "
        "v_th; v_reset ignored. Exporter (to_nir): LIFNeuronTorch -> LIF, LIFTorch -> CubaLIF with r = tau "
        "exp(-dt/tau)/dt (neither euler's tau/dt nor exact's 1/(1 - a)), w_in not written (1; should be "
        "a_s/(1 - a_s)), v_leak written 0 (the bias is dropped), subtractive multi-spike reset not recorded, "
        "Affine weights left as torch tensors, and Input/Output types carry the sample's batch/time dims (no "
        "option avoids it), so nir.write fails type checking (repair=True fixes types, r and w_in for exact "
        "integration). No IF neuron."
    ),
}
