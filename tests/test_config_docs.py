"""docs/config.md's tables state every key's default: they must be the defaults a run gets
(a changed default without its documentation, or a wrong constant, fails here)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from neuroplastic.config import DataConfig, ModelConfig, RunConfig, TrainSettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
SECTIONS = {"Top level": RunConfig, "`[data]`": DataConfig, "`[model]`": ModelConfig, "`[train]`": TrainSettings}


def _value(text: str):
    if text == "none":
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return NotImplemented  # not a TOML value (e.g. runs/<config name>)


def documented() -> list[tuple[str, str, object]]:
    rows, section = [], None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if section not in SECTIONS or not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        keys = re.findall(r"`([a-z_]+)`", cells[0].split("(")[0])
        defaults = re.findall(r"`([^`]+)`", cells[2]) or [cells[2]]
        if len(defaults) == 1:
            defaults = defaults * len(keys)
        assert len(defaults) == len(keys), line
        rows += [(section, k, _value(d)) for k, d in zip(keys, defaults)]
    return rows


ROWS = documented()


def test_every_key_is_documented():
    for section, cls in SECTIONS.items():
        names = {f.name for f in cls.__dataclass_fields__.values()}
        names -= {"data", "model", "train", "plugins"}
        assert names <= {k for s, k, _ in ROWS if s == section}, section


@pytest.mark.parametrize("section,key,default", ROWS, ids=[f"{s}:{k}" for s, k, _ in ROWS])
def test_documented_default_is_the_default(section, key, default):
    if default is NotImplemented:
        pytest.skip("described, not a value")
    assert getattr(SECTIONS[section](), key) == default


def test_the_embedded_default_is_the_config_defaults(tmp_path):
    """``neuroplastic run`` with no config and a file that only names the methods run the same
    experiment: one set of defaults (a file used to get 1 epoch of 64 where the embedded
    default trained 2 of 32)."""
    from dataclasses import replace

    from neuroplastic.config import load_config
    from neuroplastic.defaults import DEFAULT, default_config

    f = tmp_path / "c.toml"
    f.write_text(f"methods = {DEFAULT['methods']!r}\nout = {DEFAULT['out']!r}\n".replace("'", '"'))
    embedded, from_file = default_config(), load_config(f)
    assert replace(from_file, out=embedded.out) == embedded
    assert (embedded.train.epochs, embedded.train.batch_size) == (2, 32)
