"""Method plugins and the registry behind ``--method a+b``.

Each plugin class may define an ``Options`` dataclass; its fields are the keys of the
``[<name>]`` section of a run config (unknown keys are errors).
"""

from __future__ import annotations

import dataclasses
import importlib
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
    """``"hlop+granet"`` -> ``["hlop", "granet"]`` (validated)."""
    names = [m.strip() for m in str(method).split("+") if m.strip()]
    if not names:
        raise UserError("empty method name")
    for n in names:
        plugin_class(n)
    if len(set(names)) != len(names):
        raise UserError(f"method {method!r} names a plugin twice")
    return names


def options_for(name: str, values: dict[str, Any] | None) -> Any:
    """Validate a ``[name]`` config section into the plugin's ``Options`` dataclass."""
    cls = plugin_class(name)
    opts_cls = getattr(cls, "Options", None)
    values = dict(values or {})
    if opts_cls is None:
        if values:
            raise UserError(f"method {name!r} takes no options, got {', '.join(values)}")
        return None
    fields = {f.name for f in dataclasses.fields(opts_cls)}
    for key in values:
        if key not in fields:
            raise UserError(f"unknown key {name}.{key}; valid keys: {', '.join(sorted(fields))}")
    try:
        return opts_cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad value in [{name}]: {exc}") from None


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
