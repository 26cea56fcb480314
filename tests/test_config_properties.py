"""Property-based tests of the TOML config parser (``neuroplastic.config``).

* anything a TOML file can hold is either a valid config or one :class:`UserError` of one
  line, never another exception;
* a valid config survives ``to_toml`` -> ``tomllib`` -> ``config_from_dict`` unchanged;
* booleans are never integers, integers are fine for floats, non-finite floats are
  refused, a string is not a ``methods`` list, sizes are positive, ``readout_tau`` is
  checked like ``tau_mem``.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from neuroplastic.config import (
    DATASETS,
    SEED_MAX,
    DataConfig,
    ModelConfig,
    RunConfig,
    config_from_dict,
    to_toml,
    tomllib,
)
from neuroplastic.errors import UserError
from neuroplastic.plugins import REGISTRY, plugin_class
from neuroplastic.trainers.base import LR_MAX, TrainSettings

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainSettings}
TOP_KEYS = [f.name for f in dataclasses.fields(RunConfig) if f.name not in (*SECTIONS, "plugins")]


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def kinds(cls) -> dict[str, list[str]]:
    return {f.name: [t.strip() for t in str(f.type).split("|")] for f in dataclasses.fields(cls) if f.init}


# -- anything TOML can hold --------------------------------------------------------------
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["cpu", "cuda", "mps", "meta", "lif", "atan:2", "digits", "split", "hlop", "hlop+ewc", ""]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)


def section_of(cls):
    names = field_names(cls)
    return st.dictionaries(st.one_of(st.sampled_from(names), st.text(max_size=6)), values, max_size=5)


def plugin_section(name):
    opts = getattr(plugin_class(name), "Options", None)
    names = field_names(opts) if opts is not None else ["x"]
    return st.dictionaries(st.one_of(st.sampled_from(names), st.text(max_size=6)), values, max_size=4)


documents = st.fixed_dictionaries({}, optional={
    **{k: values for k in TOP_KEYS},
    "methods": st.one_of(values, st.lists(st.sampled_from([*REGISTRY, "hlop+ewc", "granet+hlop", "a", ""]),
                                          max_size=3)),
    **{k: st.one_of(section_of(cls), values) for k, cls in SECTIONS.items()},
    **{k: st.one_of(plugin_section(k), values) for k in ("hlop", "ewc", "gpm", "granet", "dormant", "finetune")},
    "plugins": values,
    "colour": values,
})


@FAST
@given(documents)
def test_any_document_is_a_config_or_one_user_error(doc):
    try:
        cfg = config_from_dict(doc)
    except UserError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, msg
        return
    assert isinstance(cfg, RunConfig)


@FAST
@given(st.text(max_size=200))
def test_any_text_file_is_a_config_or_one_user_error(tmp_path_factory, text):
    from neuroplastic.config import load_config

    p = tmp_path_factory.mktemp("cfg") / "c.toml"
    p.write_text(text)
    try:
        load_config(p)
    except UserError as exc:
        assert "\n" not in str(exc)


# -- valid configs round-trip ------------------------------------------------------------
def pos_floats(lo, hi):
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


@st.composite
def data_sections(draw):
    dataset = draw(st.sampled_from(sorted(DATASETS)))
    classes = DATASETS[dataset][1]
    stream = draw(st.sampled_from(["permuted", "split"]))
    cpt = draw(st.integers(1, classes))
    tasks = draw(st.integers(1, classes // cpt)) if stream == "split" else draw(st.integers(1, 20))
    d = {"dataset": dataset, "stream": stream, "tasks": tasks, "classes_per_task": cpt,
         "setting": draw(st.sampled_from(["task", "domain", "class"])),
         "permute_first": draw(st.booleans())}
    if draw(st.booleans()):
        d["max_per_task"] = draw(st.integers(1, 10**6))
    if DATASETS[dataset][2] is None:
        d["augment"] = draw(st.integers(1, 64))
    if dataset in ("mnist", "shd"):
        d["data_dir"] = draw(st.text(min_size=1, max_size=20).filter(lambda s: s.strip() and "\x00" not in s))
    return d


@st.composite
def model_sections(draw, images: bool = True):
    arch = draw(st.sampled_from(["mlp", "cnn"] if images else ["mlp"]))
    neuron = draw(st.sampled_from(["lif", "if", "cubalif", "alif"]))
    integration = draw(st.sampled_from(["exact", "euler"]))
    dt = draw(pos_floats(1e-5, 1e-2))
    hi = 1e5 * dt  # tau / dt stays under 1e6
    lo = dt if integration == "euler" else dt / 100
    hidden = draw(st.lists(st.integers(1, 128), max_size=3))
    m = {"arch": arch, "hidden": hidden, "channels": draw(st.lists(st.integers(1, 8), min_size=1, max_size=3)),
         "neuron": neuron, "tau_mem": draw(pos_floats(lo, hi)), "dt": dt, "integration": integration,
         "reset": draw(st.sampled_from(["subtract", "zero"])), "readout_tau": draw(pos_floats(lo, hi)),
         "surrogate": draw(st.sampled_from(["atan", "sigmoid:5", "fast_sigmoid", "triangle:0.5", "rectangle"])),
         "v_th": draw(pos_floats(1e-3, 1e3)), "readout": draw(st.sampled_from(["li", "spikes"])),
         "bias": draw(st.booleans())}
    m["recurrent"] = arch == "mlp" and neuron in ("lif", "alif") and bool(hidden) and draw(st.booleans())
    return m


@st.composite
def train_sections(draw):
    return {"trainer": draw(st.sampled_from(["bptt", "ottt", "eprop", "dsr"])),
            "epochs": draw(st.integers(1, 100)), "batch_size": draw(st.integers(1, 512)),
            "lr": draw(pos_floats(1e-8, LR_MAX)), "optimizer": draw(st.sampled_from(["sgd", "adam"])),
            "momentum": draw(st.floats(0, 0.999)), "weight_decay": draw(st.floats(0, 1)),
            "time_steps": draw(st.integers(1, 64)), "encoder": draw(st.sampled_from(["rate", "poisson", "latency",
                                                                                  "direct"])),
            "decoder": draw(st.sampled_from(["mean", "max", "last", "count"])),
            "eval_batch_size": draw(st.integers(1, 512)), "feedback": draw(st.sampled_from(["symmetric", "random"])),
            "chunk": draw(st.integers(1, 64))}


text_values = st.text(max_size=20).filter(lambda s: s.strip() and "\x00" not in s)


@st.composite
def valid_documents(draw):
    data = draw(data_sections())
    return {
        "methods": draw(st.lists(st.sampled_from(["finetune", "multitask", "hlop", "ewc", "gpm", "granet",
                                                  "hlop+granet", "granet+hlop", "ewc+dormant"]),
                                 min_size=1, max_size=4, unique=True)),
        "seed": draw(st.integers(0, SEED_MAX)),
        "out": draw(text_values),
        "quiet": draw(st.booleans()),
        "device": "cpu",
        "data": data,
        "model": draw(model_sections(images=DATASETS[data["dataset"]][2] is None)),
        "train": draw(train_sections()),
        "ewc": draw(st.fixed_dictionaries({"lam": pos_floats(0, 1e6), "online": st.booleans(),
                                           "gamma": st.floats(0, 1)})),
        "granet": draw(st.fixed_dictionaries({"sparsity": st.floats(0, 0.99), "update_every": st.integers(1, 1000)})),
        "hlop": draw(st.fixed_dictionaries({"momentum": st.floats(0, 0.99), "hebb_iters": st.integers(1, 10)})),
    }


@settings(max_examples=80, deadline=None)
@given(valid_documents())
def test_valid_configs_round_trip_losslessly(doc):
    cfg = config_from_dict(doc)
    text = to_toml(cfg)
    again = config_from_dict(tomllib.loads(text))
    assert again == cfg
    assert to_toml(again) == text


@FAST
@given(st.text(max_size=30).filter(lambda s: s.strip() and "\x00" not in s))
def test_any_out_string_round_trips(out):
    """Quotes, backslashes, newlines and other control characters are escaped."""
    cfg = config_from_dict({"out": out})
    assert config_from_dict(tomllib.loads(to_toml(cfg))).out == out


# -- types: booleans are not integers, integers are floats -------------------------------
def int_keys() -> list[tuple[str, str]]:
    out = [("", "seed")]
    for sec, cls in SECTIONS.items():
        out += [(sec, k) for k, t in kinds(cls).items() if "int" in t]
    return out


def float_keys() -> list[tuple[str, str]]:
    return [(sec, k) for sec, cls in SECTIONS.items() for k, t in kinds(cls).items() if "float" in t]


def doc_with(section: str, key: str, value) -> dict:
    return {key: value} if not section else {section: {key: value}}


@pytest.mark.parametrize("section, key", int_keys(), ids=lambda v: v or "top")
@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_refused_for_integers(section, key, value):
    name = f"{section}.{key}" if section else key
    with pytest.raises(UserError, match=name.replace(".", r"\.")):
        config_from_dict(doc_with(section, key, value))


# an integer every float key accepts
INT_FOR_FLOAT = {"lr": 1, "momentum": 0, "weight_decay": 0, "tau_mem": 1, "dt": 1, "readout_tau": 1, "v_th": 2}


@pytest.mark.parametrize("section, key", float_keys(), ids=lambda v: v)
def test_integers_are_accepted_for_floats(section, key):
    value = INT_FOR_FLOAT[key]
    doc = doc_with(section, key, value)
    if key == "dt":
        doc["model"].update(tau_mem=10, readout_tau=10)
    cfg = config_from_dict(doc)
    got = getattr(getattr(cfg, section), key)
    assert got == value and isinstance(got, float)


@pytest.mark.parametrize("section, key", float_keys(), ids=lambda v: v)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_are_refused(section, key, value):
    with pytest.raises(UserError, match=rf"{section}\.{key}.*finite"):
        config_from_dict(doc_with(section, key, value))


@FAST
@given(st.text(max_size=20))
def test_a_string_is_not_a_methods_list(s):
    with pytest.raises(UserError, match="methods must be a list"):
        config_from_dict({"methods": s})


@FAST
@given(st.lists(st.sampled_from(["finetune", "hlop", "ewc", "hlop+ewc"]), min_size=2, max_size=5))
def test_a_method_twice_is_refused(methods):
    assume(len(set(methods)) < len(methods))
    with pytest.raises(UserError, match="twice"):
        config_from_dict({"methods": methods})


# -- sizes and ranges --------------------------------------------------------------------
@FAST
@given(st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=4), st.sampled_from(["hidden", "channels"]))
def test_zero_or_negative_layer_sizes_are_refused(sizes, key):
    assume(min(sizes) <= 0)
    with pytest.raises(UserError, match=f"model.{key} must be a list of positive integers"):
        config_from_dict({"model": {key: sizes, "arch": "cnn" if key == "channels" else "mlp"}})


SIZE_KEYS = [("data", "tasks"), ("data", "classes_per_task"), ("data", "max_per_task"), ("data", "augment"),
             ("train", "epochs"), ("train", "batch_size"), ("train", "time_steps"), ("train", "eval_batch_size"),
             ("train", "chunk")]


@FAST
@given(st.sampled_from(SIZE_KEYS), st.integers(-(2**64), 0))
def test_zero_or_negative_counts_are_refused(where, value):
    section, key = where
    with pytest.raises(UserError, match=rf"{section}\.{key}"):
        config_from_dict({section: {key: value}})


@FAST
@given(st.floats(max_value=0.0) | st.sampled_from([math.nan, math.inf]))
def test_readout_tau_must_be_positive_and_finite(tau):
    with pytest.raises(UserError, match="model.readout_tau"):
        config_from_dict({"model": {"readout_tau": tau}})


@FAST
@given(pos_floats(1e-3, 10.0))
def test_readout_tau_in_range_is_kept(tau):
    assert config_from_dict({"model": {"readout_tau": tau}}).model.readout_tau == tau


def test_readout_tau_over_a_million_steps_is_refused():
    with pytest.raises(UserError, match="model.readout_tau"):
        config_from_dict({"model": {"readout_tau": 1e4, "dt": 1e-3}})
    assert config_from_dict({"model": {"readout_tau": 1e3, "dt": 1e-3}}).model.readout_tau == 1e3


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_lr_bounds(lr):
    doc = {"train": {"lr": lr}}
    if math.isfinite(lr) and 0 < lr <= LR_MAX:
        assert config_from_dict(doc).train.lr == lr
    else:
        with pytest.raises(UserError, match="train.lr"):
            config_from_dict(doc)


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_momentum_bounds(m):
    doc = {"train": {"momentum": m}}
    if 0 <= m < 1:
        assert config_from_dict(doc).train.momentum == m
    else:
        with pytest.raises(UserError, match="train.momentum"):
            config_from_dict(doc)


@FAST
@given(st.integers(-(2**80), 2**80))
@example(0)
@example(-1)
@example(SEED_MAX)
@example(SEED_MAX + 1)
def test_seed_bounds(seed):
    if 0 <= seed <= SEED_MAX:
        assert config_from_dict({"seed": seed}).seed == seed
    else:
        with pytest.raises(UserError, match="seed must be an integer from 0 to"):
            config_from_dict({"seed": seed})


@FAST
@given(st.integers(1, 10**4), st.integers(1, 10), st.sampled_from(sorted(DATASETS)))
def test_split_streams_need_enough_classes(tasks, cpt, dataset):
    doc = {"data": {"dataset": dataset, "stream": "split", "tasks": tasks, "classes_per_task": cpt}}
    if dataset in ("mnist", "shd"):
        doc["data"]["data_dir"] = "somewhere"
    classes = DATASETS[dataset][1]
    if cpt <= classes and tasks * cpt <= classes:
        assert config_from_dict(doc).data.tasks == tasks
    else:
        with pytest.raises(UserError, match="data.classes_per_task|classes"):
            config_from_dict(doc)


@FAST
@given(st.lists(st.integers(1, 10**7), min_size=1, max_size=3))
def test_networks_that_cannot_fit_are_refused_naming_the_estimate(hidden):
    """The estimate (weights, gradients, momentum, activations) against the available
    memory: refused with the key and the size exactly when it does not fit; never allocated."""
    from unittest import mock

    from neuroplastic.config import estimate_model_bytes

    avail = 2 * 10**9  # fixed: the machine's own figure moves while other processes run
    doc = {"model": {"hidden": hidden}}
    with mock.patch("neuroplastic.resources.available_memory", lambda: avail):
        try:
            cfg = config_from_dict(doc)
        except UserError as exc:
            assert "model.hidden" in str(exc) and "of memory; this machine has 2.0 GB available" in str(exc)
            cfg = None
    with mock.patch("neuroplastic.resources.available_memory", lambda: None):
        need = sum(estimate_model_bytes(config_from_dict(doc))[:2])
    assert (cfg is None) == (need > avail)


def test_memory_estimate_counts_parameters_and_optimizer_state():
    from neuroplastic.config import estimate_model_bytes

    cfg = config_from_dict({"model": {"hidden": [100]}, "train": {"momentum": 0.0, "batch_size": 10,
                                                                   "eval_batch_size": 1, "time_steps": 3}})
    param_bytes, act_bytes, params, neurons = estimate_model_bytes(cfg)
    assert params == 784 * 100 + 100 + 100 * 10 + 10
    assert param_bytes == 4 * params * 2  # weights and gradients, no momentum buffer
    assert neurons == 110 and act_bytes == 4 * 3 * (784 + 110) * 20
    adam = config_from_dict({"model": {"hidden": [100]}, "train": {"optimizer": "adam"}})
    assert estimate_model_bytes(adam)[0] == 4 * params * 4


@pytest.mark.parametrize("setting, outs", [("task", 2 * 5), ("domain", 2), ("class", 10)])
def test_memory_estimate_of_split_streams(setting, outs):
    """Task-incremental: one head of classes_per_task outputs per task; domain: one head
    of classes_per_task; class: one head of every class."""
    from neuroplastic.config import estimate_model_bytes

    cfg = config_from_dict({"data": {"stream": "split", "tasks": 5, "setting": setting}, "model": {"hidden": [7]}})
    assert estimate_model_bytes(cfg)[2:] == (784 * 7 + 7 + 7 * outs + outs, 7 + outs)


def test_documented_defaults():
    """The defaults docs/config.md states."""
    cfg = RunConfig()
    assert (cfg.methods, cfg.seed, cfg.quiet, cfg.device) == (["finetune", "multitask"], 0, False, "cpu")
    d = cfg.data
    assert (d.dataset, d.data_dir, d.stream, d.tasks, d.classes_per_task, d.setting, d.max_per_task,
            d.permute_first, d.augment) == ("digits", None, "permuted", 5, 2, "task", None, False, 1)
    m = cfg.model
    assert (m.arch, m.hidden, m.channels, m.neuron, m.tau_mem, m.dt, m.integration, m.reset, m.surrogate, m.v_th,
            m.readout, m.readout_tau, m.bias, m.recurrent) == (
        "mlp", [256], [16, 32], "lif", 2e-3, 1e-3, "exact", "subtract", "atan", 1.0, "li", 2e-3, True, False)
    t = cfg.train
    assert (t.trainer, t.epochs, t.batch_size, t.lr, t.optimizer, t.momentum, t.weight_decay, t.time_steps,
            t.encoder, t.decoder, t.eval_batch_size, t.feedback) == (
        "bptt", 2, 32, 0.01, "sgd", 0.9, 0.0, 6, "direct", "mean", 512, "symmetric")


@FAST
@given(st.text(max_size=12))
@example("")
@example("   ")
@example("a\x00b")
def test_data_dir_must_name_a_path(path):
    doc = {"data": {"dataset": "mnist", "data_dir": path}}
    if path.strip() and "\x00" not in path:
        assert config_from_dict(doc).data.data_dir == path
    else:
        with pytest.raises(UserError, match="data.data_dir must name a path"):
            config_from_dict(doc)


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True))
@example(0.0)
@example(-1e-9)
def test_checkpoint_every_bounds(seconds):
    doc = {"checkpoint_every": seconds}
    if 0 <= seconds < math.inf:
        assert config_from_dict(doc).checkpoint_every == seconds
    else:
        with pytest.raises(UserError, match="checkpoint_every"):
            config_from_dict(doc)


def test_memory_refusal_uses_the_available_memory(monkeypatch):
    import neuroplastic.resources as res

    monkeypatch.setattr(res, "available_memory", lambda: 10**6)
    with pytest.raises(UserError, match=r"model\.hidden = \[256\].*this machine has 1\.0 MB available"):
        config_from_dict({"model": {"hidden": [256]}})
    monkeypatch.setattr(res, "available_memory", lambda: None)  # unknown: nothing refused
    assert config_from_dict({"model": {"hidden": [256]}}).model.hidden == [256]
