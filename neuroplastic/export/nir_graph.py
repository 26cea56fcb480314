r"""NIR out and in: :func:`to_nir` writes an :class:`~neuroplastic.network.SNN` as a NIR graph,
:func:`from_nir` builds one from any NIR graph of the supported primitives.

================================  =====================================================
ours                              NIR
================================  =====================================================
``Linear`` (bias / no bias)       ``Affine`` / ``Linear`` (masked weights: see below)
``Conv2d``                        ``Conv2d`` (``input_shape`` set)
``AvgPool2d`` / ``SumPool2d``     ``AvgPool2d`` / ``SumPool2d``
``Flatten``                       ``Flatten`` (``start_dim = 0`` over the unbatched type)
``Scale``                         ``Scale``
``LIF IF CubaLIF LI CubaLI``      the node of the same name (:mod:`.nir_params`)
================================  =====================================================

Every node carries input and output types of one sample (no batch dimension). The graph
metadata holds ``dt``, ``integration``, ``reset`` and our version; NIR has no sparse weight
type, so sparse layers are written as their masked dense weights and listed in
``neuroplastic_sparse_layers`` (with their densities in the node metadata). Reading, a
weight matrix that is mostly zeros (or that our metadata marks sparse) becomes a masked
layer again, so :func:`neuroplastic.simulate.simulate` runs it on the event-driven kernels.

Graphs are read as chains (``Input -> ... -> Output``, nested sub-graphs without cycles
inlined). A node type we cannot run, a branch or a cycle is one :class:`UserError`
naming the node.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..network import SNN
from ..neurons import Neuron
from ..synapses import AvgPool2d, Conv2d, Flatten, Linear, Scale, SumPool2d
from .nir_params import META, Timing, is_neuron_node, meta_value, neuron_from_nir, neuron_to_nir

__all__ = ["to_nir", "from_nir", "write_nir", "read_nir", "SPARSE_IMPORT_ZEROS"]

#: a weight matrix with at least this fraction of exact zeros is read as a sparse (masked) layer
SPARSE_IMPORT_ZEROS = 0.5


def _version() -> str:
    from .. import __version__

    return __version__


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


def _pool_out(shape, k, s, p) -> tuple[int, ...]:
    c, h, w = shape
    return (c, (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1)


def _model_timing(model: SNN) -> Timing:
    for m in model.modules():
        if isinstance(m, Neuron):
            return Timing(m.dt, m.integration)
    return Timing(1e-3, "exact")


def to_nir(model: SNN, dt: float | None = None, integration: str | None = None, *,
           input_shape: Sequence[int] | None = None, head: int | None = None,
           fold_r: bool = False) -> nir.NIRGraph:
    """The NIR graph of ``model`` for a simulator stepping ``dt`` with ``integration``.

    ``dt`` and ``integration`` default to the model's own (then every parameter is written
    unchanged). ``input_shape`` (one sample, e.g. ``(784,)`` or ``(1, 28, 28)``) defaults to
    ``model.in_shape``. A multi-head network needs ``head`` (the exported readout is that
    head's block). Layers NIR cannot express (ALIF, max pooling) raise :class:`UserError`.

    ``fold_r``: write ``r = 1`` on LIF and LI nodes and multiply the weights and bias of the
    synapse feeding each by its ``R`` (:math:`R(Wx + b) = (RW)x + Rb`: the same ODE, to float
    rounding). For importers that ignore a LIF's ``r`` (Norse 1.1).
    """
    own = _model_timing(model)
    target = Timing(float(dt) if dt is not None else own.dt, integration or own.integration)
    shape = tuple(int(v) for v in (input_shape or getattr(model, "in_shape", None) or ()))
    if not shape:
        first = next(iter(model.layers.values()))
        if not isinstance(first, Linear):
            raise UserError("to_nir needs input_shape for a network that does not start with a Linear layer")
        shape = (first.in_features,)
    if model.n_heads > 1 and head is None:
        raise UserError(f"the readout has {model.n_heads} heads (a multi-head readout); NIR holds one: "
                        f"choose one with head= (CLI: --head)")
    if head is not None and not 0 <= head < model.n_heads:
        raise UserError(f"head must be in 0..{model.n_heads - 1}, got {head}")
    names = list(model.layers)
    last_synapse = max((i for i, n in enumerate(names) if isinstance(model.layers[n], Linear)), default=-1)
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array(shape)})}
    edges, prev, sparse = [], "input", []
    resets = set()
    for i, name in enumerate(names):
        layer = model.layers[name]
        rows = None
        if i == last_synapse and model.n_heads > 1:
            rows = slice(head * model.n_out, (head + 1) * model.n_out)
        node, shape = _layer_to_nir(name, layer, shape, target, rows)
        if getattr(layer, "mask", None) is not None:
            sparse.append(name)
        if isinstance(layer, Neuron) and layer.spiking:
            resets.add(layer.reset_mode)
        nodes[name] = node
        edges.append((prev, name))
        prev = name
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    edges.append((prev, "output"))
    if fold_r:
        _fold_resistance(nodes, edges)
    if "subtract" in resets:
        warnings.warn("NIR neurons reset to v_reset; this network resets by subtraction (recorded in the "
                      "metadata and honoured by neuroplastic, other tools will reset to v_reset)", stacklevel=2)
    meta = {"generator": "neuroplastic", f"{META}version": _version(), "dt": target.dt,
            "integration": target.integration, "reset": ",".join(sorted(resets)) or "none",
            f"{META}sparse_layers": ",".join(sparse), f"{META}folded_r": bool(fold_r),
            f"{META}weights": "sparse layers written as masked dense weights (NIR has no sparse type)"}
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)
    except Exception as exc:  # noqa: BLE001 - nir's own type check
        raise UserError(f"NIR rejected the graph: {str(exc).splitlines()[0]}") from None


def _fold_resistance(nodes: dict[str, nir.NIRNode], edges: list[tuple[str, str]]) -> None:
    """``r -> 1`` on LIF/LI nodes, ``R`` moved into the weights of the node feeding each."""
    before = {b: a for a, b in edges}
    for name, node in nodes.items():
        if not isinstance(node, nir.LIF | nir.LI):
            continue
        src = nodes[before[name]]
        r = np.asarray(node.r, np.float64)
        if isinstance(src, nir.Affine | nir.Linear):
            rows = r.reshape(-1)
            src.weight = (src.weight.astype(np.float64) * rows[:, None]).astype(np.float32)
            if isinstance(src, nir.Affine):
                src.bias = (np.asarray(src.bias, np.float64) * rows).astype(np.float32)
        elif isinstance(src, nir.Conv2d) and np.all(r == r.reshape(r.shape[0], -1)[:, :1].reshape(-1, 1, 1)):
            per_channel = r.reshape(r.shape[0], -1)[:, 0]
            src.weight = (src.weight.astype(np.float64) * per_channel[:, None, None, None]).astype(np.float32)
            src.bias = (np.asarray(src.bias, np.float64) * per_channel).astype(np.float32)
        else:
            raise UserError(f"fold_r: layer {name!r} is not fed directly by a Linear/Conv2d layer "
                            "(or its r varies within a conv channel)")
        node.r = np.ones_like(r)
        node.metadata = {**(node.metadata or {}), f"{META}folded_r": True}


def _sparse_meta(layer: nn.Module) -> dict:
    if layer.mask is None:
        return {}
    return {f"{META}sparse": True, f"{META}density": float(layer.mask.float().mean())}


def _layer_to_nir(name: str, layer: nn.Module, shape: tuple[int, ...], target: Timing, rows: slice | None):
    """``(node, output shape)`` of one layer fed ``shape``."""
    if isinstance(layer, Linear):
        if shape[-1] != layer.in_features or len(shape) != 1:
            raise UserError(f"layer {name!r} expects {layer.in_features} inputs, gets shape {shape}")
        w = layer.effective_weight()
        b = layer.bias
        if rows is not None:
            w, b = w[rows], (b[rows] if b is not None else None)
        meta = _sparse_meta(layer)
        node = (nir.Affine(weight=_np(w), bias=_np(b), metadata=meta) if b is not None
                else nir.Linear(weight=_np(w), metadata=meta))
        return node, (int(w.shape[0]),)
    if isinstance(layer, Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise UserError(f"layer {name!r}: only zero padding given as numbers can be exported")
        if len(shape) != 3 or shape[0] != layer.in_channels:
            raise UserError(f"layer {name!r} expects [C={layer.in_channels}, H, W] input, gets shape {shape}")
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_channels)
        meta = _sparse_meta(layer)
        node = nir.Conv2d(input_shape=shape[1:], weight=_np(layer.effective_weight()), stride=_ints2(layer.stride),
                          padding=_ints2(layer.padding), dilation=_ints2(layer.dilation), groups=int(layer.groups),
                          bias=_np(bias), metadata=meta)
        return node, tuple(int(v) for v in node.output_type["output"])
    if isinstance(layer, AvgPool2d):  # SumPool2d included
        if layer.ceil_mode or not layer.count_include_pad:
            raise UserError(f"layer {name!r}: pooling with ceil_mode or count_include_pad=False has no NIR form")
        k, s, p = _ints2(layer.kernel_size), _ints2(layer.stride or layer.kernel_size), _ints2(layer.padding)
        cls = nir.SumPool2d if isinstance(layer, SumPool2d) else nir.AvgPool2d
        node = cls(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p))
        out = _pool_out(shape, k, s, p)
        node.input_type, node.output_type = {"input": np.array(shape)}, {"output": np.array(out)}
        return node, out
    if isinstance(layer, Flatten):
        node = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
        return node, (int(np.prod(shape)),)
    if isinstance(layer, Scale):
        scale = np.broadcast_to(_np(layer.scale), shape).astype(np.float32).copy()
        return nir.Scale(scale=scale), shape
    if isinstance(layer, Neuron):
        return neuron_to_nir(name, layer, shape, target), shape
    raise UserError(f"layer {name!r} ({type(layer).__name__}) has no NIR primitive")


# -- reading -----------------------------------------------------------------------------
def read_nir(path: str | Path) -> nir.NIRGraph:
    """``nir.read`` with one-line errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"NIR file not found: {path}")
    try:
        return nir.read(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable NIR file ({msg})") from None


def write_nir(path: str | Path, graph: nir.NIRGraph) -> None:
    """Write ``graph`` atomically (temporary name, then rename)."""
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        nir.write(str(tmp), graph)


def _inline(graph: nir.NIRGraph, prefix: str = "") -> tuple[dict, list]:
    """Nodes and edges with nested acyclic sub-graphs inlined (``outer.inner`` names)."""
    nodes, edges = {}, []
    rename_in, rename_out = {}, {}
    for name, node in graph.nodes.items():
        full = f"{prefix}{name}"
        if isinstance(node, nir.NIRGraph):
            sub_nodes, sub_edges = _inline(node, f"{full}.")
            ins = [n for n, v in sub_nodes.items() if isinstance(v, nir.Input)]
            outs = [n for n, v in sub_nodes.items() if isinstance(v, nir.Output)]
            if len(ins) != 1 or len(outs) != 1:
                raise UserError(f"NIR sub-graph {full!r} must have one input and one output")
            nodes.update(sub_nodes)
            edges += sub_edges
            rename_in[full], rename_out[full] = ins[0], outs[0]
        else:
            nodes[full] = node
    for a, b in graph.edges:
        a, b = f"{prefix}{a}", f"{prefix}{b}"
        edges.append((rename_out.get(a, a), rename_in.get(b, b)))
    return nodes, edges


def _chain(graph: nir.NIRGraph) -> tuple[list[tuple[str, nir.NIRNode]], dict]:
    nodes, edges = _inline(graph)
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    pred: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        if a not in nodes or b not in nodes:
            raise UserError(f"NIR edge ({a!r}, {b!r}) names a node that does not exist")
        succ[a].append(b)
        pred[b].append(a)
    inputs = [n for n, v in nodes.items() if isinstance(v, nir.Input)]
    if len(inputs) != 1:
        raise UserError(f"the NIR graph must have exactly one Input node, found {len(inputs)}")
    order, cur, seen = [], inputs[0], set()
    while True:
        seen.add(cur)
        if len(succ[cur]) > 1:
            raise UserError(f"NIR node {cur!r} feeds {len(succ[cur])} nodes: only chains are supported")
        if not succ[cur]:
            break
        nxt = succ[cur][0]
        if nxt in seen:
            raise UserError(f"NIR node {nxt!r} closes a cycle (recurrent graphs are not supported yet)")
        if len(pred[nxt]) > 1:
            raise UserError(f"NIR node {nxt!r} has {len(pred[nxt])} inputs: only chains are supported")
        cur = nxt
        if not isinstance(nodes[cur], nir.Output) and type(nodes[cur]).__name__ != "Identity":
            order.append((cur, nodes[cur]))
    if not isinstance(nodes[cur], nir.Output):
        raise UserError(f"the NIR graph ends at {cur!r}, not at an Output node")
    dangling = set(nodes) - seen
    if dangling:
        raise UserError(f"NIR nodes not on the input-output path: {sorted(dangling)}")
    return order, nodes[inputs[0]].input_type


def _input_shape(in_type, first: nir.NIRNode) -> tuple[int, ...]:
    shape = in_type.get("input") if isinstance(in_type, dict) else None
    shape = tuple(int(v) for v in np.asarray(shape).reshape(-1)) if shape is not None else ()
    if isinstance(first, nir.Affine | nir.Linear):
        n = int(first.weight.shape[-1])
        if not shape or int(np.prod(shape)) == n:  # no type, or a batch dim of 1 written in (Norse)
            return (n,)
    if isinstance(first, nir.Conv2d) and first.input_shape is not None and len(shape) != 3:
        return (int(first.weight.shape[1]), *(int(v) for v in np.asarray(first.input_shape).reshape(-1)))
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if not shape:
        raise UserError("the NIR graph's Input node has no input type")
    return shape


def _ints2(v) -> tuple[int, int]:
    """A NIR stride/padding/dilation (int, pair or array) as a pair of ints."""
    flat = np.asarray(v).reshape(-1)
    return (int(flat[0]), int(flat[-1]))


def _bias(b, n: int) -> torch.Tensor:
    return torch.from_numpy(np.broadcast_to(np.asarray(b, np.float32), (n,)).copy())


def _masked_if_sparse(layer: nn.Module, node: nir.NIRNode, name: str) -> None:
    w = layer.weight.detach()
    marked = bool(meta_value(node.metadata, f"{META}sparse", False))
    if marked or float((w == 0).float().mean()) >= SPARSE_IMPORT_ZEROS:
        layer.set_mask(w != 0)


def _layer_from_nir(name: str, node: nir.NIRNode, shape: tuple[int, ...], timing: Timing):
    if isinstance(node, nir.Affine | nir.Linear):
        w = torch.from_numpy(np.asarray(node.weight, dtype=np.float32).copy())
        if w.ndim != 2:
            raise UserError(f"NIR node {name!r}: weight must be 2-d, got shape {tuple(w.shape)}")
        if int(np.prod(shape)) != w.shape[1]:
            raise UserError(f"NIR node {name!r} expects {w.shape[1]} inputs, gets shape {shape}")
        bias = isinstance(node, nir.Affine) and node.bias is not None
        layer = Linear(w.shape[1], w.shape[0], bias=bias)
        with torch.no_grad():
            layer.weight.copy_(w)
            if bias:
                layer.bias.copy_(_bias(node.bias, w.shape[0]))
        _masked_if_sparse(layer, node, name)
        pre = [] if len(shape) == 1 else [(f"{name}.flatten", Flatten())]
        return pre + [(name, layer)], (int(w.shape[0]),)
    if isinstance(node, nir.Conv2d):
        w = torch.from_numpy(np.asarray(node.weight, dtype=np.float32).copy())
        if len(shape) != 3:
            raise UserError(f"NIR node {name!r} (Conv2d) needs [C, H, W] input, gets shape {shape}")
        pad = node.padding.decode() if isinstance(node.padding, bytes) else node.padding
        has_bias = node.bias is not None
        layer = Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]), stride=_ints2(node.stride),
                       padding=pad if isinstance(pad, str) else _ints2(pad), dilation=_ints2(node.dilation),
                       groups=int(node.groups), bias=has_bias)
        with torch.no_grad():
            layer.weight.copy_(w)
            if has_bias:
                layer.bias.copy_(_bias(node.bias, w.shape[0]))
        _masked_if_sparse(layer, node, name)
        with torch.no_grad():
            out = layer(torch.zeros(1, 1, *shape)).shape[2:]
        return [(name, layer)], tuple(int(v) for v in out)
    if isinstance(node, nir.AvgPool2d | nir.SumPool2d):
        k = tuple(int(v) for v in np.broadcast_to(np.asarray(node.kernel_size), (2,)))
        s = tuple(int(v) for v in np.broadcast_to(np.asarray(node.stride), (2,)))
        p = tuple(int(v) for v in np.broadcast_to(np.asarray(node.padding), (2,)))
        layer = SumPool2d(k, s, p) if isinstance(node, nir.SumPool2d) else AvgPool2d(k, s, p)
        if len(shape) != 3:
            raise UserError(f"NIR node {name!r} ({type(node).__name__}) needs [C, H, W] input, gets shape {shape}")
        return [(name, layer)], _pool_out(shape, k, s, p)
    if isinstance(node, nir.Flatten):
        start, end = int(node.start_dim), int(node.end_dim)
        if end != -1 or start not in (0, 1):
            raise UserError(f"NIR node {name!r}: Flatten(start_dim={start}, end_dim={end}) is not supported "
                            "(only flattening a whole sample)")
        return [(name, Flatten())], (int(np.prod(shape)),)
    if isinstance(node, nir.Scale):
        scale = np.asarray(node.scale, dtype=np.float32)
        return [(name, Scale(scale))], shape
    if is_neuron_node(node):
        neuron, nshape = neuron_from_nir(name, node, timing)
        if nshape and int(np.prod(nshape)) != int(np.prod(shape)):
            raise UserError(f"NIR node {name!r}: {int(np.prod(nshape))} neurons fed {int(np.prod(shape))} values")
        _shape_params(neuron, shape)
        return [(name, neuron)], shape
    raise UserError(f"unsupported NIR node {name!r} of type {type(node).__name__}; supported: Affine, Linear, "
                    "Conv2d, Flatten, AvgPool2d, SumPool2d, Scale, LIF, IF, CubaLIF, LI, CubaLI")


def _shape_params(neuron: Neuron, shape: tuple[int, ...]) -> None:
    """Reshape per-neuron parameter arrays to the population shape (files may flatten them)."""
    for key, buf in list(neuron._buffers.items()):
        if buf is not None and buf.numel() == int(np.prod(shape)) and tuple(buf.shape) != shape:
            neuron._buffers[key] = buf.reshape(shape)


def from_nir(graph_or_path: nir.NIRGraph | str | Path, dt: float | None = None,
             integration: str | None = None) -> SNN:
    """Build an :class:`~neuroplastic.network.SNN` from a NIR graph (or a ``.nir`` file).

    ``dt`` and ``integration`` say how to step the ODEs; they default to the graph's
    metadata (ours writes them), else ``dt = 1e-3`` and ``"euler"`` (what Norse's and
    snnTorch's importers compute). The returned network's readout is the last node: a
    spiking layer gives spikes ``[T, B, N]``, an LI/CubaLI node its membrane.
    """
    graph = graph_or_path if isinstance(graph_or_path, nir.NIRGraph) else read_nir(graph_or_path)
    meta = graph.metadata or {}
    dt = float(dt) if dt is not None else float(meta_value(meta, "dt", 1e-3))
    timing = Timing(dt, integration or str(meta_value(meta, "integration", "euler")))
    order, in_type = _chain(graph)
    if not order:
        raise UserError("the NIR graph has no computational nodes")
    in_shape = _input_shape(in_type, order[0][1])
    shape, layers = in_shape, []
    for name, node in order:
        new, shape = _layer_from_nir(name, node, shape, timing)
        layers += new
    if len({n for n, _ in layers}) != len(layers):
        raise UserError("the NIR graph has duplicate node names")
    out = int(np.prod(shape))
    net = SNN([(n.replace(".", "_"), m) for n, m in layers], n_out=out, in_shape=in_shape)
    net.timing = timing
    return net


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of equal entries of two spike tensors of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a == b).float().mean()) if a.numel() else math.nan
