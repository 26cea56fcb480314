"""Our sparse HDF5 archive: a network as per-layer CSR weights and neuron parameters, plus
the run's config and the HLOP subspaces / GPM bases (layout in docs/formats.md).

Writing is atomic (temporary name, then rename). Reading validates the whole file (schema
version, shapes, dtypes, index ranges, monotone ``indptr``, finite values) before any
module is built: a bad file is one :class:`~neuroplastic.errors.UserError` naming the
dataset at fault.

CSR rows are output neurons: a Linear weight ``[N_out, N_in]`` as stored by torch and
NIR, a Conv2d weight reshaped to ``[C_out, C_in/groups * kh * kw]``. A masked (sparse)
layer stores exactly its mask's positions; a dense layer stores every position.
``scipy.sparse.csr_matrix((data, indices, indptr), shape)`` reads a layer as it is.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..network import SNN
from ..neurons import ALIF, IF, LI, LIF, CubaLI, CubaLIF
from ..synapses import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Scale, SumPool2d
from .quantize import BITS, quantize_rows

__all__ = ["SCHEMA_VERSION", "FORMAT", "Archive", "save_archive", "load_archive", "NEURON_PARAMS"]

FORMAT = "neuroplastic-archive"
SCHEMA_VERSION = 1

#: neuron kind -> (class, parameters stored as datasets)
NEURON_PARAMS: dict[str, tuple[type, tuple[str, ...]]] = {
    "lif": (LIF, ("tau_mem", "r", "v_leak", "v_th", "v_reset")),
    "if": (IF, ("r", "v_leak", "v_th", "v_reset")),
    "cubalif": (CubaLIF, ("tau_mem", "tau_syn", "w_in", "r", "v_leak", "v_th", "v_reset")),
    "alif": (ALIF, ("tau_mem", "r", "v_leak", "v_th", "v_reset")),
    "li": (LI, ("tau_mem", "r", "v_leak")),
    "cubali": (CubaLI, ("tau_mem", "tau_syn", "w_in", "r", "v_leak")),
}
_KIND_OF = {cls: kind for kind, (cls, _) in NEURON_PARAMS.items()}
_POOLS = {"avgpool2d": AvgPool2d, "sumpool2d": SumPool2d, "maxpool2d": MaxPool2d}


@dataclass
class Archive:
    """What :func:`load_archive` returns."""

    model: SNN
    config: str | None = None  # the run's config.toml, when the archive came from a run
    plugins: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # hlop/H, gpm/U per layer
    attrs: dict[str, Any] = field(default_factory=dict)


# -- writing -------------------------------------------------------------------------------
def _csr(w: np.ndarray, mask: np.ndarray | None):
    rows = w.reshape(w.shape[0], -1)
    keep = mask.reshape(rows.shape) if mask is not None else np.ones(rows.shape, bool)
    indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
    r, c = np.nonzero(keep)
    return indptr, c.astype(np.int32), rows[r, c].astype(np.float32), rows.shape


def _dataset(g: h5py.Group, name: str, data: np.ndarray) -> None:
    """A dataset, gzip-compressed when large (any HDF5 reader decompresses it)."""
    big = np.asarray(data).size >= 4096
    g.create_dataset(name, data=data, compression="gzip" if big else None, shuffle=big)


def _write_synapse(g: h5py.Group, layer: nn.Module, bits: int | None) -> None:
    w = layer.effective_weight().detach().cpu().to(torch.float32).numpy()
    mask = layer.mask.detach().cpu().numpy() if layer.mask is not None else None
    indptr, indices, data, shape2 = _csr(w, mask)
    g.attrs["masked"] = mask is not None
    g.attrs["weight_shape"] = np.array(w.shape, np.int64)
    g.attrs["shape"] = np.array(shape2, np.int64)
    _dataset(g, "indptr", data=indptr)
    _dataset(g, "indices", data=indices)
    if bits:
        q, scales = quantize_rows(w, bits)
        rows = q.reshape(q.shape[0], -1)
        r = np.repeat(np.arange(rows.shape[0]), np.diff(indptr))
        _dataset(g, "data_q", data=rows[r, indices])
        g.create_dataset("scale", data=scales)
        g.attrs["bits"] = bits
    else:
        _dataset(g, "data", data=data)
    if layer.bias is not None:
        g.create_dataset("bias", data=layer.bias.detach().cpu().to(torch.float32).numpy())
    if isinstance(layer, Conv2d):
        for key in ("stride", "padding", "dilation"):
            v = getattr(layer, key)
            if isinstance(v, str):
                raise UserError(f"conv padding {v!r} cannot be archived; use numbers")
            g.attrs[key] = np.array(v, np.int64)
        g.attrs["groups"] = int(layer.groups)


def _param_array(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().to(torch.float64).numpy()
    return np.asarray(float(v), np.float64)


def _write_layer(g: h5py.Group, name: str, layer: nn.Module, bits: int | None) -> None:
    if isinstance(layer, Linear):
        g.attrs["kind"] = "linear"
        _write_synapse(g, layer, bits)
    elif isinstance(layer, Conv2d):
        g.attrs["kind"] = "conv2d"
        _write_synapse(g, layer, bits)
    elif isinstance(layer, tuple(_POOLS.values())):
        g.attrs["kind"] = next(k for k, cls in _POOLS.items() if type(layer) is cls)
        stride = layer.stride if layer.stride is not None else layer.kernel_size
        for key, v in (("kernel_size", layer.kernel_size), ("stride", stride), ("padding", layer.padding)):
            g.attrs[key] = np.broadcast_to(np.asarray(v, np.int64), (2,))
    elif isinstance(layer, Flatten):
        g.attrs["kind"] = "flatten"
    elif isinstance(layer, Scale):
        g.attrs["kind"] = "scale"
        g.create_dataset("scale", data=layer.scale.detach().cpu().numpy())
    elif type(layer) in _KIND_OF:
        kind = _KIND_OF[type(layer)]
        g.attrs["kind"] = kind
        for p in NEURON_PARAMS[kind][1]:
            g.create_dataset(p, data=_param_array(getattr(layer, p)))
        if isinstance(layer, ALIF):
            g.attrs["tau_adapt"], g.attrs["beta_adapt"] = layer.tau_adapt, layer.beta_adapt
        g.attrs["dt"], g.attrs["integration"] = layer.dt, layer.integration
        g.attrs["reset"], g.attrs["detach_reset"] = layer.reset_mode, bool(layer.detach_reset)
        g.attrs["surrogate"] = f"{layer.surrogate.name}:{float(layer.surrogate.alpha)!r}"
    else:
        raise UserError(f"layer {name!r} ({type(layer).__name__}) cannot be archived")


def save_archive(path: str | Path, model: SNN, *, config: str | None = None,
                 plugins: dict[str, dict[str, Any]] | None = None, quantize: int | None = None,
                 attrs: dict[str, Any] | None = None) -> None:
    """Write ``model`` (and optionally the run's ``config`` TOML text, ``plugins`` arrays
    ``{"hlop": {"H": {layer: array}}, "gpm": {"U": {...}}}``) to ``path`` atomically.
    ``quantize`` = 8 or 16 stores integer weights plus per-row scales."""
    from .. import __version__
    from ..io import atomic_path

    if quantize is not None and quantize not in BITS:
        raise UserError(f"quantize must be one of {BITS} bits, got {quantize!r}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["neuroplastic_version"] = __version__
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["quantize_bits"] = int(quantize or 0)
        for k, v in (attrs or {}).items():
            f.attrs[k] = json.dumps(v) if isinstance(v, dict | list) or v is None else v
        m = f.create_group("model")
        m.attrs["layers"] = json.dumps(list(model.layers))
        m.attrs["n_out"], m.attrs["n_heads"] = int(model.n_out), int(model.n_heads)
        m.attrs["in_shape"] = json.dumps(list(model.in_shape) if model.in_shape else None)
        lg = m.create_group("layers")
        for name, layer in model.layers.items():
            _write_layer(lg.create_group(name), name, layer, quantize)
        if config is not None:
            f.create_dataset("config", data=config, dtype=h5py.string_dtype())
        for plugin, tables in (plugins or {}).items():
            for table, per_layer in tables.items():
                for layer_name, arr in per_layer.items():
                    a = arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr)
                    _dataset(f, f"plugins/{plugin}/{table}/{layer_name}", data=a.astype(np.float32))


# -- reading -------------------------------------------------------------------------------
class _Bad(Exception):
    pass


def _need(g: h5py.Group, key: str, where: str, kinds: str, ndim: int | None = None) -> np.ndarray:
    if key not in g or not isinstance(g[key], h5py.Dataset):
        raise _Bad(f"{where}/{key} is missing")
    a = g[key][()]
    a = np.asarray(a)
    if a.dtype.kind not in kinds:
        raise _Bad(f"{where}/{key} has dtype {a.dtype}, expected {'integers' if kinds in 'iu' else 'floats'}")
    if ndim is not None and a.ndim != ndim:
        raise _Bad(f"{where}/{key} must be {ndim}-d, got shape {a.shape}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise _Bad(f"{where}/{key} has non-finite values")
    return a


def _attr_ints(g, key, where, n=None) -> tuple[int, ...]:
    if key not in g.attrs:
        raise _Bad(f"{where} attribute {key!r} is missing")
    v = np.asarray(g.attrs[key]).reshape(-1)
    if v.dtype.kind not in "iu" or (n is not None and v.size != n) or np.any(v < 0):
        raise _Bad(f"{where} attribute {key!r} must be {n or 'some'} non-negative integers, got {v.tolist()}")
    return tuple(int(x) for x in v)


def _read_synapse(g: h5py.Group, where: str) -> dict[str, Any]:
    shape = _attr_ints(g, "shape", where, 2)
    wshape = _attr_ints(g, "weight_shape", where)
    if int(np.prod(wshape)) != shape[0] * shape[1] or wshape[0] != shape[0]:
        raise _Bad(f"{where}: weight_shape {wshape} does not match the CSR shape {shape}")
    indptr = _need(g, "indptr", where, "iu", 1).astype(np.int64)
    indices = _need(g, "indices", where, "iu", 1).astype(np.int64)
    if indptr.size != shape[0] + 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise _Bad(f"{where}/indptr must start at 0, be monotone and have {shape[0] + 1} entries")
    nnz = int(indptr[-1])
    if indices.size != nnz:
        raise _Bad(f"{where}/indices has {indices.size} entries, indptr says {nnz}")
    if nnz and (indices.min() < 0 or indices.max() >= shape[1]):
        raise _Bad(f"{where}/indices out of range 0..{shape[1] - 1}")
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    if nnz > 1:
        same_row = rows[1:] == rows[:-1]
        if np.any(same_row & (indices[1:] <= indices[:-1])):
            raise _Bad(f"{where}/indices must increase within each row (no duplicates)")
    bits = int(g.attrs.get("bits", 0))
    if bits:
        if bits not in BITS:
            raise _Bad(f"{where}: bits must be one of {BITS}, got {bits}")
        q = _need(g, "data_q", where, "i", 1)
        scale = _need(g, "scale", where, "f", 1)
        if q.size != nnz or scale.size != shape[0]:
            raise _Bad(f"{where}: data_q must have {nnz} entries and scale {shape[0]}")
        qmax = 2 ** (bits - 1) - 1
        if np.any(np.abs(q.astype(np.int64)) > qmax):
            raise _Bad(f"{where}/data_q exceeds {bits}-bit range")
        data = (q.astype(np.float32) * scale.astype(np.float32)[rows]).astype(np.float32)
    else:
        data = _need(g, "data", where, "f", 1).astype(np.float32)
        if data.size != nnz:
            raise _Bad(f"{where}/data has {data.size} entries, indptr says {nnz}")
    dense = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    dense[rows, indices] = data
    mask[rows, indices] = True
    masked = bool(g.attrs.get("masked", False))
    out = {"weight": dense.reshape(wshape), "mask": mask.reshape(wshape) if masked else None}
    if "bias" in g:
        bias = _need(g, "bias", where, "f", 1)
        if bias.size != wshape[0]:
            raise _Bad(f"{where}/bias has {bias.size} entries, expected {wshape[0]}")
        out["bias"] = bias.astype(np.float32)
    return out


def _str_attr(g, key, where, default=None) -> str:
    v = g.attrs.get(key, default)
    if v is None:
        raise _Bad(f"{where} attribute {key!r} is missing")
    return v.decode() if isinstance(v, bytes) else str(v)


def _read_layer(g: h5py.Group, name: str) -> tuple[str, dict[str, Any]]:
    where = f"model/layers/{name}"
    kind = _str_attr(g, "kind", where)
    spec: dict[str, Any] = {"kind": kind}
    if kind in ("linear", "conv2d"):
        spec.update(_read_synapse(g, where))
        if kind == "conv2d":
            if len(spec["weight"].shape) != 4:
                raise _Bad(f"{where}: a conv2d weight must be 4-d")
            spec.update(stride=_attr_ints(g, "stride", where, 2), padding=_attr_ints(g, "padding", where, 2),
                        dilation=_attr_ints(g, "dilation", where, 2), groups=_attr_ints(g, "groups", where, 1)[0])
        elif len(spec["weight"].shape) != 2:
            raise _Bad(f"{where}: a linear weight must be 2-d")
    elif kind in _POOLS:
        spec.update({k: _attr_ints(g, k, where, 2) for k in ("kernel_size", "stride", "padding")})
    elif kind == "scale":
        spec["scale"] = _need(g, "scale", where, "f")
    elif kind in NEURON_PARAMS:
        for p in NEURON_PARAMS[kind][1]:
            spec[p] = _need(g, p, where, "f")
        spec["dt"] = float(g.attrs.get("dt", np.nan))
        if not spec["dt"] > 0:
            raise _Bad(f"{where} attribute 'dt' must be positive")
        for key in ("integration", "reset", "surrogate"):
            spec[key] = _str_attr(g, key, where)
        spec["detach_reset"] = bool(g.attrs.get("detach_reset", True))
        if kind == "alif":
            spec["tau_adapt"], spec["beta_adapt"] = float(g.attrs["tau_adapt"]), float(g.attrs["beta_adapt"])
    elif kind != "flatten":
        raise _Bad(f"{where}: unknown layer kind {kind!r}")
    return kind, spec


def _build(name: str, spec: dict[str, Any]) -> nn.Module:
    kind = spec["kind"]
    if kind in ("linear", "conv2d"):
        w = torch.from_numpy(spec["weight"])
        bias = "bias" in spec
        if kind == "linear":
            layer = Linear(w.shape[1], w.shape[0], bias=bias)
        else:
            layer = Conv2d(w.shape[1] * spec["groups"], w.shape[0], tuple(w.shape[2:]), stride=spec["stride"],
                           padding=spec["padding"], dilation=spec["dilation"], groups=spec["groups"], bias=bias)
        with torch.no_grad():
            layer.weight.copy_(w)
            if bias:
                layer.bias.copy_(torch.from_numpy(spec["bias"]))
        if spec["mask"] is not None:
            layer.set_mask(torch.from_numpy(spec["mask"]))
        return layer
    if kind in _POOLS:
        return _POOLS[kind](spec["kernel_size"], spec["stride"], spec["padding"])
    if kind == "flatten":
        return Flatten()
    if kind == "scale":
        return Scale(spec["scale"])
    cls, params = NEURON_PARAMS[kind]
    kw = {p: torch.from_numpy(np.asarray(spec[p], np.float64)) if np.ndim(spec[p]) else float(spec[p]) for p in params}
    kw.update(dt=spec["dt"], integration=spec["integration"])
    if kind not in ("li", "cubali"):
        kw.update(reset=spec["reset"], detach_reset=spec["detach_reset"], surrogate=spec["surrogate"])
    if kind == "alif":
        kw.update(tau_adapt=spec["tau_adapt"], beta_adapt=spec["beta_adapt"])
    if kind == "if":
        kw.pop("tau_mem", None)
    try:
        return cls(**kw)
    except (TypeError, ValueError) as exc:
        raise UserError(f"archive layer {name!r}: {exc}") from None


def _read_all(f: h5py.File) -> tuple[list[tuple[str, dict]], dict[str, Any]]:
    if _str_attr(f, "format", "file", "") != FORMAT:
        raise _Bad(f"not a {FORMAT} file (attribute 'format' is {f.attrs.get('format')!r})")
    version = f.attrs.get("schema_version")
    if version is None or int(version) != SCHEMA_VERSION:
        raise _Bad(f"schema version {version} is not supported (this version reads {SCHEMA_VERSION})")
    if "model" not in f or "layers" not in f["model"]:
        raise _Bad("model/layers is missing")
    m = f["model"]
    try:
        order = json.loads(_str_attr(m, "layers", "model"))
        in_shape = json.loads(_str_attr(m, "in_shape", "model", "null"))
    except json.JSONDecodeError:
        raise _Bad("model attributes 'layers' / 'in_shape' are not valid JSON") from None
    if not isinstance(order, list) or not order or set(order) != set(m["layers"]):
        raise _Bad("model attribute 'layers' does not list the groups under model/layers")
    specs = [(name, _read_layer(m["layers"][name], name)[1]) for name in order]
    model_attrs = {"n_out": int(m.attrs.get("n_out", 0)), "n_heads": int(m.attrs.get("n_heads", 1)),
                   "in_shape": in_shape}
    if model_attrs["n_out"] < 1 or model_attrs["n_heads"] < 1:
        raise _Bad("model attributes n_out and n_heads must be positive")
    return specs, model_attrs


def load_archive(path: str | Path) -> Archive:
    """Read and validate an archive, then build the network (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"archive not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            specs, model_attrs = _read_all(f)
            config = f["config"][()].decode() if "config" in f else None
            plugins: dict[str, dict[str, Any]] = {}
            if "plugins" in f:
                for plugin, tables in f["plugins"].items():
                    for table, per_layer in tables.items():
                        for layer_name, ds in per_layer.items():
                            a = np.asarray(ds[()])
                            if a.dtype.kind != "f" or not np.all(np.isfinite(a)):
                                raise _Bad(f"plugins/{plugin}/{table}/{layer_name} must be finite floats")
                            plugins.setdefault(plugin, {}).setdefault(table, {})[layer_name] = a
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except _Bad as exc:
        raise UserError(f"{path}: {exc}") from None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable archive ({why})") from None
    layers = [(name, _build(name, spec)) for name, spec in specs]
    in_shape = tuple(model_attrs["in_shape"]) if model_attrs["in_shape"] else None
    model = SNN(layers, model_attrs["n_out"], model_attrs["n_heads"], in_shape=in_shape)
    return Archive(model=model, config=config, plugins=plugins, attrs=attrs)
