"""Method plugins and the registry behind ``--method a+b``.

Each plugin class may define an ``Options`` dataclass; its fields are the keys of the
``[<name>]`` section of a run config (unknown keys are errors).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

from ..errors import UserError
from .base import Plugin, PluginList, derive_seed

# name -> "module:Class" (imported lazily so optional methods cost nothing)
REGISTRY: dict[str, str] = {
    "finetune": "neuroplastic.plugins.baselines:Finetune",
    "multitask": "neuroplastic.plugins.baselines:Multitask",
    "hlop": "neuroplastic.plugins.hlop:HLOP",
    "gpm": "neuroplastic.plugins.gpm:GPM",
    "ewc": "neuroplastic.plugins.ewc:EWC",
    "granet": "neuroplastic.plugins.granet:GraNet",
    "gmp": "neuroplastic.plugins.granet:GMP",
    "rigl": "neuroplastic.plugins.granet:RigL",
    "set": "neuroplastic.plugins.granet:SET",
    "static": "neuroplastic.plugins.granet:Static",
    "dormant": "neuroplastic.plugins.dormant:DormantMonitor",
}


def plugin_class(name: str) -> type[Plugin]:
    """The plugin class registered under ``name``."""
    if name not in REGISTRY:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(sorted(REGISTRY))} (combine with '+')")
    mod, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def parse_method(method: str) -> list[str]:
    """``"hlop+granet"`` -> ``["hlop", "granet"]`` (validated: known names, none empty,
    none twice)."""
    if not isinstance(method, str):
        raise UserError(f"a method must be a name such as 'hlop' or 'hlop+granet', got {method!r}")
    names = [m.strip() for m in method.split("+")]
    if not any(names):
        raise UserError(f"empty method name {method!r}; choose from {', '.join(sorted(REGISTRY))}")
    if not all(names):
        raise UserError(f"method {method!r} has an empty name beside a '+'")
    for n in names:
        plugin_class(n)
    if len(set(names)) != len(names):
        raise UserError(f"method {method!r} names a plugin twice")
    return names


def _option_type_error(name: str, f: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` does not fit option ``f``'s annotation (``None`` when it does).

    Integers are not booleans, numbers are finite (an int is fine for a float), lists
    hold finite numbers or strings only, and nothing is a table unless declared one."""
    kinds = [t.strip() for t in str(f.type).split("|")]
    if value is None:
        return None if "None" in kinds else "must not be empty"
    if isinstance(value, bool):
        return None if "bool" in kinds else f"must be {_wanted(kinds)}, got {value!r}"
    if isinstance(value, int | float):
        if "float" in kinds or ("int" in kinds and isinstance(value, int)):
            return None if math.isfinite(value) else f"must be a finite number, got {value!r}"
        return f"must be {_wanted(kinds)}, got {value!r}"
    if isinstance(value, str):
        return None if "str" in kinds else f"must be {_wanted(kinds)}, got {value!r}"
    if isinstance(value, list | tuple):
        if "list" not in kinds:
            return f"must be {_wanted(kinds)}, got {value!r}"
        for x in value:
            ok = isinstance(x, str) or (isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x))
            if not ok:
                return f"must be a list of finite numbers or names, got {value!r}"
        return None
    return f"must be {_wanted(kinds)}, got {value!r}"


def _wanted(kinds: list[str]) -> str:
    words = {"int": "an integer", "float": "a number", "str": "a string", "list": "a list", "bool": "true or false"}
    return " or ".join(words.get(k, k) for k in kinds if k != "None")


#: list options whose entries are layer names
_NAME_LISTS = ("layers", "exclude")
#: list options whose entries are subspace sizes: a count, or a fraction in (0, 1] of the layer
_SIZE_LISTS = ("init_size", "inc_size")


def options_for(name: str, values: dict[str, Any] | None) -> Any:
    """Validate a ``[name]`` config section into the plugin's ``Options`` dataclass."""
    cls = plugin_class(name)
    opts_cls = getattr(cls, "Options", None)
    if values is not None and not isinstance(values, dict):
        raise UserError(f"[{name}] must be a table of options, got {values!r}")
    values = dict(values or {})
    if opts_cls is None:
        if values:
            raise UserError(f"method {name!r} takes no options, got {', '.join(values)}")
        return None
    fields = {f.name: f for f in dataclasses.fields(opts_cls) if f.init}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown key {name}.{key}; valid keys: {', '.join(sorted(fields))}")
        why = _option_type_error(name, fields[key], value)
        if why is None and key in _NAME_LISTS and isinstance(value, list | tuple):
            if not all(isinstance(x, str) and x for x in value):
                why = f"must be a list of layer names, got {value!r}"
        if why is None and key in _SIZE_LISTS and isinstance(value, list | tuple):
            if not value or not all(isinstance(x, int | float) and x >= 0 for x in value):
                why = f"must be a non-empty list of sizes >= 0 (counts, or fractions in (0, 1]), got {value!r}"
        if why is not None:
            raise UserError(f"{name}.{key} {why}")
    try:
        return opts_cls(**values)
    except (TypeError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(msg if msg.startswith(f"{name}.") else f"bad value in [{name}]: {msg}") from None


def build_plugins(method: str, options: dict[str, dict[str, Any]] | None = None) -> PluginList:
    """Instantiate the plugins of ``method`` (``"a+b"``) with their config sections."""
    options = options or {}
    plugins = []
    for name in parse_method(method):
        cls = plugin_class(name)
        opts = options_for(name, options.get(name))
        plugins.append(cls(opts) if opts is not None else cls())
    return PluginList(plugins)


__all__ = ["Plugin", "PluginList", "derive_seed", "REGISTRY", "plugin_class", "parse_method", "options_for",
           "build_plugins"]
