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
from .trainers.base import TrainSettings

__all__ = ["DataConfig", "ModelConfig", "RunConfig", "load_config", "config_from_dict", "revalidate", "to_toml"]


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
        if self.dataset not in ("digits", "mnist", "shd", "cues"):
            raise UserError(f"data.dataset must be digits, mnist, shd or cues, got {self.dataset!r}")
        if self.stream not in ("permuted", "split"):
            raise UserError(f"data.stream must be permuted or split, got {self.stream!r}")
        if self.tasks < 1:
            raise UserError(f"data.tasks must be >= 1, got {self.tasks}")
        if isinstance(self.augment, bool) or not isinstance(self.augment, int) or not 1 <= self.augment <= 64:
            raise UserError(f"data.augment must be an integer from 1 to 64, got {self.augment!r}")


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

    def __post_init__(self) -> None:
        if self.arch not in ("mlp", "cnn"):
            raise UserError(f"model.arch must be mlp or cnn, got {self.arch!r}")
        if self.recurrent and self.arch != "mlp":
            raise UserError(f"model.recurrent = true needs model.arch = mlp, got {self.arch!r}")
        if self.recurrent and self.neuron not in ("lif", "alif"):
            raise UserError(f"model.recurrent = true needs model.neuron = lif or alif, got {self.neuron!r}")
        if not all(isinstance(h, int) and h > 0 for h in self.hidden):
            raise UserError(f"model.hidden must be a list of positive integers, got {self.hidden!r}")
        if self.tau_mem <= 0 or self.dt <= 0 or self.readout_tau <= 0:
            raise UserError("model.tau_mem, model.dt and model.readout_tau must be positive")


@dataclass
class RunConfig:
    """Everything one ``neuroplastic run`` needs."""

    methods: list = field(default_factory=lambda: ["finetune", "multitask"])
    seed: int = 0
    out: str = "runs/default"
    quiet: bool = False
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainSettings = field(default_factory=lambda: TrainSettings())
    plugins: dict = field(default_factory=dict)  # plugin name -> its section (raw dict)

    def __post_init__(self) -> None:
        if not self.methods:
            raise UserError("methods must name at least one method")
        for m in self.methods:
            parse_method(m)
        for name, section in self.plugins.items():
            options_for(name, section)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainSettings}


_KINDS = {"int": int, "float": float, "str": str, "list": list, "dict": dict, "bool": bool}


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
        if kind is float and isinstance(value, int):
            return float(value)
        if isinstance(value, kind):
            return value
    wanted = " or ".join(n for n in names if n != "None")
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
        elif key in top and key not in ("plugins",):
            kw[key] = _check_type("", top[key], value)
        else:
            raise UserError(f"unknown key {key}; valid: {', '.join(sorted([*top, *REGISTRY]))}")
    if isinstance(kw.get("methods"), str):
        kw["methods"] = [kw["methods"]]
    return RunConfig(plugins=plugins, **kw)


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
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _table(name: str, d: dict) -> list[str]:
    lines = [f"[{name}]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in d.items() if v is not None]
    return lines + [""]


def to_toml(cfg: RunConfig) -> str:
    """Serialise a config (``None`` values are omitted: they are the defaults)."""
    d = asdict(cfg)
    lines = [f"{k} = {_toml_value(d[k])}" for k in ("methods", "seed", "out", "quiet", "device")]
    lines.append("")
    for sec in ("data", "model", "train"):
        lines += _table(sec, d[sec])
    for name, section in cfg.plugins.items():
        lines += _table(name, section)
    return "\n".join(lines)
