"""Run configuration: TOML files validated into small dataclasses.

A config has top-level keys ``methods`` (list of method strings run side by side, each
``"a+b"`` a composition), ``seed``, ``out``, ``quiet``, the sections ``[data]``,
``[model]``, ``[train]`` and one section per plugin (``[hlop]``, ``[granet]``...).
Unknown keys and values of the wrong type are :class:`~neuroplastic.errors.UserError`
naming the key (``unknown key train.lrr``). The fully resolved config is written to the
run directory as ``config.toml`` and can be run again as it is.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import UserError
from .plugins import options_for, parse_method
from .trainers.base import LR_MAX, TrainSettings

__all__ = ["DataConfig", "ModelConfig", "RunConfig", "load_config", "config_from_dict", "revalidate", "to_toml",
           "DATASETS", "LR_MAX", "SEED_MAX", "estimate_model_bytes"]

#: per dataset: (input features per time step, classes, time steps of its event data or
#: ``None`` for static images the encoder turns into ``train.time_steps`` steps)
DATASETS: dict[str, tuple[int, int, int | None]] = {
    "digits": (784, 10, None), "mnist": (784, 10, None), "shd": (700, 20, 100), "cues": (40, 2, 80)}
#: datasets read from ``data_dir`` (the others are bundled or generated)
FILE_DATASETS = ("mnist", "shd")
#: seeds must fit torch's 64-bit ``manual_seed`` with room for derived seeds (``seed + k``)
SEED_MAX = 2**63 - 1
#: ``tau / dt`` above this makes the per-step decay round to 1 in float32 (no input gets in)
TAU_OVER_DT_MAX = 1e6


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _need_int(key: str, v: Any, lo: int = 1, hi: int | None = None, what: str = "") -> None:
    """``key`` must be an integer in ``[lo, hi]`` (booleans are not integers)."""
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        span = f"from {lo} to {hi}" if hi is not None else ("positive" if lo == 1 else f">= {lo}")
        raise UserError(f"{key} must be an integer {span}{what}, got {v!r}")


def _need_pos(key: str, v: Any) -> None:
    """``key`` must be a finite number > 0."""
    if not _is_num(v) or v <= 0:
        raise UserError(f"{key} must be a positive finite number, got {v!r}")


def _need_choice(key: str, v: Any, choices) -> None:
    if not isinstance(v, str) or v not in choices:
        raise UserError(f"{key} must be one of {', '.join(choices)}, got {v!r}")


def _need_path(key: str, v: Any) -> None:
    if not isinstance(v, str) or not v.strip() or "\x00" in v:
        raise UserError(f"{key} must name a path, got {v!r}")


@dataclass
class DataConfig:
    """Which task stream to run (see :func:`neuroplastic.datasets.make_stream`)."""

    dataset: str = "digits"
    data_dir: str | None = None
    stream: str = "permuted"
    tasks: int = 5
    classes_per_task: int = 2
    setting: str = "task"
    max_per_task: int | None = None
    permute_first: bool = False
    augment: int = 1                    # copies of every training image (1 = none): distortions


    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or self.dataset not in DATASETS:
            raise UserError(f"data.dataset must be digits, mnist, shd or cues, got {self.dataset!r}")
        _need_choice("data.stream", self.stream, ("permuted", "split"))
        _need_choice("data.setting", self.setting, ("task", "domain", "class"))
        _need_int("data.tasks", self.tasks)
        classes = DATASETS[self.dataset][1]
        if self.stream == "split":  # (a permuted stream ignores it)
            _need_int("data.classes_per_task", self.classes_per_task, 1, classes,
                      f" ({self.dataset} has {classes} classes)")
        else:
            _need_int("data.classes_per_task", self.classes_per_task)
        if self.stream == "split" and self.tasks * self.classes_per_task > classes:
            raise UserError(f"data.tasks = {self.tasks} split tasks of {self.classes_per_task} classes need "
                            f"{self.tasks * self.classes_per_task} classes; {self.dataset} has {classes} "
                            f"(at most {classes // self.classes_per_task} tasks)")
        if self.max_per_task is not None:
            _need_int("data.max_per_task", self.max_per_task)
        if not isinstance(self.permute_first, bool):
            raise UserError(f"data.permute_first must be true or false, got {self.permute_first!r}")
        _need_int("data.augment", self.augment, 1, 64)
        if self.augment != 1 and DATASETS[self.dataset][2] is not None:
            raise UserError(f"data.augment distorts images; dataset {self.dataset!r} holds event data")
        if self.data_dir is not None:
            _need_path("data.data_dir", self.data_dir)
            if self.dataset not in FILE_DATASETS:
                raise UserError(f"data.data_dir applies to the mnist and shd datasets; {self.dataset!r} reads no "
                                f"files (remove data_dir, or set data.dataset)")
        # mnist / shd without a directory: a config file may leave it to --data-dir; the
        # stream refuses it (before the run directory is made) if nothing gave one


@dataclass
class ModelConfig:
    """Network architecture and neuron model."""

    arch: str = "mlp"
    hidden: list = field(default_factory=lambda: [256])
    channels: list = field(default_factory=lambda: [16, 32])
    neuron: str = "lif"
    tau_mem: float = 2e-3
    dt: float = 1e-3
    integration: str = "exact"
    reset: str = "subtract"
    surrogate: str = "atan"
    v_th: float = 1.0
    readout: str = "li"
    readout_tau: float = 2e-3
    bias: bool = True
    recurrent: bool = False  # hidden layers with recurrent synapses (mlp, neuron lif or alif)
    balance_init: bool = True  # scale synapses into hidden spiking layers 2, 3, ... (init_balance.py)

    def __post_init__(self) -> None:
        from .neurons import NEURONS
        from .neurons.functional import RESETS
        from .surrogate import get_surrogate

        _need_choice("model.arch", self.arch, ("mlp", "cnn"))
        for key in ("hidden", "channels"):
            v = getattr(self, key)
            if not isinstance(v, list | tuple) or not all(_is_int(h) and h > 0 for h in v):
                raise UserError(f"model.{key} must be a list of positive integers, got {v!r}")
        if self.arch == "cnn" and not self.channels:
            raise UserError("model.channels must name at least one conv layer with model.arch = cnn")
        _need_choice("model.neuron", self.neuron, [k for k, cls in NEURONS.items() if cls.spiking])
        for key in ("bias", "recurrent", "balance_init"):
            if not isinstance(getattr(self, key), bool):
                raise UserError(f"model.{key} must be true or false, got {getattr(self, key)!r}")
        if self.recurrent and self.arch != "mlp":
            raise UserError(f"model.recurrent = true needs model.arch = mlp, got {self.arch!r}")
        if self.recurrent and self.neuron not in ("lif", "alif"):
            raise UserError(f"model.recurrent = true needs model.neuron = lif or alif, got {self.neuron!r}")
        if self.recurrent and not self.hidden:
            raise UserError("model.recurrent = true needs at least one hidden layer (model.hidden)")
        for key in ("tau_mem", "dt", "readout_tau", "v_th"):
            _need_pos(f"model.{key}", getattr(self, key))
        _need_choice("model.integration", self.integration, ("exact", "euler"))
        _need_choice("model.reset", self.reset, RESETS)
        _need_choice("model.readout", self.readout, ("li", "spikes"))
        for key in ("tau_mem", "readout_tau"):
            tau = getattr(self, key)
            if tau / self.dt > TAU_OVER_DT_MAX:
                raise UserError(f"model.{key} = {tau} is over {TAU_OVER_DT_MAX:g} steps of model.dt = {self.dt}: "
                                f"the membrane would never change")
            if self.integration == "euler" and self.dt > tau:
                raise UserError(f"model.integration = euler needs model.dt <= model.{key} (the decay 1 - dt/tau "
                                f"would be negative), got dt = {self.dt}, {key} = {tau}")
        if not isinstance(self.surrogate, str):
            raise UserError(f"model.surrogate must be a name such as atan or atan:2, got {self.surrogate!r}")
        try:
            get_surrogate(self.surrogate)
        except UserError as exc:
            raise UserError(f"model.surrogate: {exc}") from None


@dataclass
class RunConfig:
    """Everything one ``neuroplastic run`` needs."""

    methods: list = field(default_factory=lambda: ["finetune", "multitask"])
    seed: int = 0
    out: str = "runs/default"
    quiet: bool = False
    device: str = "cpu"
    checkpoint_every: float = 120.0  # seconds between in-task checkpoints (0: after every step)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainSettings = field(default_factory=lambda: TrainSettings())
    plugins: dict = field(default_factory=dict)  # plugin name -> its section (raw dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.checkpoint_every, int | float) and 0 <= self.checkpoint_every < float("inf")):
            raise UserError(f"checkpoint_every must be a number of seconds >= 0, got {self.checkpoint_every!r}")
        if not isinstance(self.methods, list | tuple) or not all(isinstance(m, str) for m in self.methods):
            raise UserError(f"methods must be a list of method names such as [\"hlop\", \"finetune\"], "
                            f"got {self.methods!r}")
        if not self.methods:
            raise UserError("methods must name at least one method")
        seen: dict[str, str] = {}
        for m in self.methods:
            key = "+".join(parse_method(m))
            if key in seen:
                raise UserError(f"methods lists {key!r} twice ({seen[key]!r} and {m!r}); each method runs once")
            seen[key] = m
        _need_int("seed", self.seed, 0, SEED_MAX)
        _need_path("out", self.out)
        if not isinstance(self.quiet, bool):
            raise UserError(f"quiet must be true or false, got {self.quiet!r}")
        _check_device(self.device)
        if not isinstance(self.plugins, dict):
            raise UserError(f"plugin options must be [<method>] sections, got {self.plugins!r}")
        for name, section in self.plugins.items():
            options_for(name, section)
        if self.model.arch == "cnn":
            if DATASETS[self.data.dataset][2] is not None:
                raise UserError(f"model.arch = cnn needs square images; dataset {self.data.dataset!r} holds "
                                f"event data (use model.arch = mlp)")
            if len(self.model.channels) > 4:
                raise UserError(f"model.channels: 28x28 images allow at most 4 conv stages (each halves the "
                                f"side), got {len(self.model.channels)}")
        _check_memory(self)


def _check_device(device: Any) -> None:
    """``cpu``, ``cuda``/``cuda:N`` (when this torch sees that GPU) or ``mps`` (when available)."""
    import torch

    if not isinstance(device, str) or not device.strip():
        raise UserError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")
    try:
        d = torch.device(device)
    except Exception:  # noqa: BLE001 - whatever torch makes of a string it cannot parse
        raise UserError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}") from None
    if d.type == "cpu":
        return
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise UserError(f"device = {device!r} but CUDA is not available ({why}); use device = \"cpu\"")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise UserError(f"device = {device!r} but this machine has {n} GPU{'s' if n != 1 else ''} "
                            f"(cuda:0..cuda:{n - 1})")
        return
    if d.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"device = {device!r} but Apple's MPS is not available here; use device = \"cpu\"")
        return
    raise UserError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")


def estimate_model_bytes(cfg: RunConfig) -> tuple[float, float, int, int]:
    """A lower bound of what training ``cfg`` holds in memory, from the config alone:
    ``(parameter bytes, activation bytes, parameters, neurons)``. Parameter bytes count the
    weights, their gradients and the optimizer state (SGD momentum, Adam's two moments);
    activation bytes the input and every layer's membrane and spikes over ``T`` steps of
    the larger of ``train.batch_size`` (kept for the backward pass) and
    ``train.eval_batch_size`` (float32 throughout)."""
    d, m, t = cfg.data, cfg.model, cfg.train
    n_in, classes, steps = DATASETS[d.dataset]
    T = steps if steps is not None else t.time_steps
    split = d.stream == "split"
    n_out = d.classes_per_task if split and d.setting != "class" else classes
    outs = n_out * (d.tasks if split and d.setting == "task" else 1)
    if m.arch == "mlp":
        sizes = [n_in, *m.hidden, outs]
        params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
        params += sum(h * h for h in m.hidden) if m.recurrent else 0
        neurons = sum(m.hidden) + outs
    else:
        c, side, params, neurons = 1, math.isqrt(n_in), 0, outs
        for ch in m.channels:
            params += c * ch * 9 + ch
            neurons += ch * side * side
            c, side = ch, side // 2
        params += c * side * side * outs + outs
    copies = 2 + (2 if t.optimizer == "adam" else 1 if t.momentum > 0 else 0)
    param_bytes = 4.0 * params * copies
    act_bytes = 4.0 * T * (n_in + neurons) * max(2 * t.batch_size, t.eval_batch_size)
    return param_bytes, act_bytes, params, neurons


def _check_memory(cfg: RunConfig) -> None:
    """Refuse a network whose estimate (:func:`estimate_model_bytes`) exceeds the memory
    available, before anything is allocated (CPU runs; a GPU's memory is not checked)."""
    from .resources import check_fits

    if not cfg.device.startswith("cpu"):
        return
    param_bytes, act_bytes, params, neurons = estimate_model_bytes(cfg)
    key = "model.channels" if cfg.model.arch == "cnn" else "model.hidden"
    size = getattr(cfg.model, key.split(".")[1])
    if param_bytes >= act_bytes:
        what = f"{key} = {size} ({params:.3g} parameters, with gradients and optimizer state) needs"
    else:
        t = cfg.train
        what = (f"train.batch_size = {t.batch_size} / eval_batch_size = {t.eval_batch_size} x "
                f"{DATASETS[cfg.data.dataset][2] or t.time_steps} time steps x {neurons:.3g} neurons "
                f"({key} = {size}) needs")
    check_fits(param_bytes + act_bytes, what)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainSettings}


_KINDS = {"int": int, "float": float, "str": str, "list": list, "dict": dict, "bool": bool}
_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "list": "a list", "dict": "a table",
          "bool": "true or false"}


def _check_type(section: str, f: dataclasses.Field, value: Any) -> Any:
    """Check ``value`` against the field's annotation (``"int"``, ``"str | None"``...)."""
    key = f"{section}.{f.name}" if section else f.name
    names = [t.strip() for t in str(f.type).split("|")]
    if value is None:
        if "None" in names:
            return None
        raise UserError(f"{key} must not be empty")
    for name in names:
        kind = _KINDS.get(name)
        if kind is None:
            continue
        if kind is bool or isinstance(value, bool):
            if kind is bool and isinstance(value, bool):
                return value
            continue
        if kind is float and isinstance(value, int | float):
            if not math.isfinite(value):
                raise UserError(f"{key} must be a finite number, got {value!r}")
            return float(value)
        if isinstance(value, kind):
            return value
    wanted = " or ".join(_WORDS.get(n, n) for n in names if n != "None")
    if key == "methods":
        wanted += ' of method names such as ["hlop", "finetune"]'
    raise UserError(f"{key} must be {wanted}, got {value!r}")


def _section(cls, values: dict, section: str):
    if not isinstance(values, dict):
        raise UserError(f"[{section}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown key {section}.{key}; valid keys: {', '.join(sorted(fields))}")
        kw[key] = _check_type(section, fields[key], value)
    try:
        return cls(**kw)
    except TypeError as exc:
        raise UserError(f"bad [{section}] section: {exc}") from None


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Validate a parsed TOML document into a :class:`RunConfig`."""
    from .plugins import REGISTRY

    if not isinstance(raw, dict):
        raise UserError(f"a config must be a table of keys, got {type(raw).__name__}")
    raw = dict(raw)
    kw: dict[str, Any] = {}
    plugins = {}
    top = {f.name: f for f in dataclasses.fields(RunConfig)}
    for key, value in raw.items():
        if key in _SECTIONS:
            kw[key] = _section(_SECTIONS[key], value, key)
        elif key in REGISTRY:
            if not isinstance(value, dict):
                raise UserError(f"[{key}] must be a table")
            plugins[key] = value
        elif key in top and key not in _NOT_KEYS:
            kw[key] = _check_type("", top[key], value)
        else:
            keys = sorted(k for k in top if k not in _NOT_KEYS)
            raise UserError(f"unknown key {key}; valid top-level keys: {', '.join(keys)}; sections: "
                            f"[{'], ['.join(_SECTIONS)}] and one per method: [{'], ['.join(sorted(REGISTRY))}]")
    return RunConfig(plugins=plugins, **kw)


#: RunConfig fields that are not top-level keys of a config file (sections, the plugin tables)
_NOT_KEYS = ("data", "model", "train", "plugins")


def revalidate(cfg: RunConfig) -> RunConfig:
    """Validate a config again after programmatic changes (as if written and re-read)."""
    return config_from_dict(tomllib.loads(to_toml(cfg)))


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML config file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None
    return config_from_dict(raw)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):  # a basic string: backslash, quote and control characters escaped
        return '"' + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                             for c in v) + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _table(name: str, d: dict) -> list[str]:
    lines = [f"[{name}]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in d.items() if v is not None]
    return lines + [""]


def to_toml(cfg: RunConfig) -> str:
    """Serialise a config (``None`` values are omitted: they are the defaults)."""
    d = asdict(cfg)
    lines = [f"{k} = {_toml_value(d[k])}" for k in ("methods", "seed", "out", "quiet", "device", "checkpoint_every")]
    lines.append("")
    for sec in ("data", "model", "train"):
        lines += _table(sec, d[sec])
    for name, section in cfg.plugins.items():
        lines += _table(name, section)
    return "\n".join(lines)
