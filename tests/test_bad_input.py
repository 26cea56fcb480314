"""Every bad input is one line ``neuroplastic: error: ...``, exit code 2, no traceback and
nothing left behind (issue 13, "Bad input"): config values, command-line arguments, data
files, checkpoints, and the files and inputs of ``export`` / ``simulate``.

Each case runs ``neuroplastic.cli.main`` in-process (one runs as a real process) with
``--out`` inside ``tmp_path`` and the working directory moved to an empty folder, then
checks that neither the run directory nor anything else was created. Validation happens
before any training, so these tests take milliseconds each (the memory cases estimate,
they never allocate).
"""

from __future__ import annotations

import gzip
import math
import shutil
import struct
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest
import torch

from neuroplastic.cli import main
from neuroplastic.config import SEED_MAX, _toml_value

# a run small enough that a case wrongly accepted still finishes quickly (and then fails)
BASE = {
    "methods": ["finetune"],
    "quiet": True,
    "data": {"tasks": 2, "max_per_task": 40},
    "model": {"hidden": [8]},
    "train": {"time_steps": 2, "epochs": 1, "batch_size": 32},
}
DROP = object()  # a case value that removes the key from BASE


def toml_text(over: dict) -> str:
    """BASE with ``over`` merged in, as TOML (inf / nan written as TOML's own)."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    top = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, dict) and v is not DROP]
    tables = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            tables += [f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not DROP]
    return "\n".join(top + tables) + "\n"


@pytest.fixture
def place(tmp_path, monkeypatch):
    """``(config dir, run dir, cwd)``: the working directory is an empty folder, so a
    default ``runs/...`` written by mistake would show up there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    (tmp_path / "in").mkdir()
    return tmp_path / "in", tmp_path / "run", cwd


def expect_error(capsys, argv, nothing_in, *words) -> str:
    """``main(argv)``: exit 2, one stderr line ``neuroplastic: error: ...`` holding every
    word (case-insensitive), no traceback, and every path of ``nothing_in`` absent or an
    empty directory (no hidden temporaries either)."""
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert rc == 2, cap.err
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("neuroplastic: error: "), cap.err
    assert "Traceback" not in cap.err + cap.out
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"
    for p in nothing_in:
        assert not p.exists() or (p.is_dir() and not any(p.iterdir())), f"{p} was left behind"
    return lines[0]


def run_config(capsys, place, over: dict, *words, args=()) -> str:
    cfg_dir, run_dir, cwd = place
    path = cfg_dir / "bad.toml"
    path.write_text(toml_text(over))
    return expect_error(capsys, ["run", path, "--out", run_dir, *args], [run_dir, cwd], *words)


# -- the cases the issue lists -----------------------------------------------------------
def test_lr_inf(capsys, place):
    run_config(capsys, place, {"train": {"lr": math.inf}}, "train.lr", "finite", "inf")


def test_lr_nan(capsys, place):
    run_config(capsys, place, {"train": {"lr": math.nan}}, "train.lr", "finite", "nan")


def test_lr_1e30_above_the_documented_bound(capsys, place):
    run_config(capsys, place, {"train": {"lr": 1e30}}, "train.lr", "(0, 10]", "1e+30")


def test_device_cuda_without_cuda(capsys, place):
    device = "cuda:1000" if torch.cuda.is_available() else "cuda"
    line = run_config(capsys, place, {"device": device}, "device", device)
    assert ("not available" in line) or ("gpu" in line.lower())


def test_device_banana(capsys, place):
    run_config(capsys, place, {"device": "banana"}, "device must be cpu, cuda", "'banana'")


@pytest.mark.parametrize("momentum", [-5, 1, 1.5])
def test_momentum_out_of_range(capsys, place, momentum):
    run_config(capsys, place, {"train": {"momentum": momentum}}, "train.momentum", "[0, 1)")


def test_hidden_1e9_float_refused_as_not_an_integer(capsys, place):
    run_config(capsys, place, {"model": {"hidden": [1e9]}}, "model.hidden", "positive integers")


def test_hidden_1e9_refused_before_allocating(capsys, place):
    """10^9 neurons: the estimate (weights, gradients, momentum: ~13 TB) names the key and
    the size; nothing is allocated (the test would run out of memory otherwise)."""
    line = run_config(capsys, place, {"model": {"hidden": [10**9]}}, "model.hidden = [1000000000]",
                      "parameters", "TB of memory", "available")
    assert "at least" in line


@pytest.mark.parametrize("hidden", [[0], [-3], [8, 0], [True]])
def test_hidden_zero_negative_or_bool(capsys, place, hidden):
    run_config(capsys, place, {"model": {"hidden": hidden}}, "model.hidden", "positive integers")


def test_tasks_100000_permuted_refused_by_memory(capsys, place):
    """100000 permuted copies of the digits: the stream's memory is estimated (and
    refused) before any task is built."""
    run_config(capsys, place, {"data": {"tasks": 100000}}, "100000 permuted tasks", "data.tasks", "memory")


def test_tasks_100000_split_refused_by_class_count(capsys, place):
    run_config(capsys, place, {"data": {"tasks": 100000, "stream": "split"}}, "data.tasks = 100000",
               "digits has 10", "at most 5 tasks")


@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1", str(SEED_MAX + 1)])
def test_seed_out_of_range_cli(capsys, place, seed):
    _, run_dir, cwd = place
    expect_error(capsys, ["run", "--seed", seed, "--out", run_dir, "--quiet"], [run_dir, cwd], "--seed", seed)


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 99999999999999999999999])
def test_seed_out_of_range_config(capsys, place, seed):
    run_config(capsys, place, {"seed": seed}, "seed must be an integer from 0 to", str(seed))


def test_seed_at_the_bound_is_accepted():
    from neuroplastic.config import config_from_dict

    assert config_from_dict({"seed": SEED_MAX}).seed == SEED_MAX


def test_method_empty(capsys, place):
    _, run_dir, cwd = place
    expect_error(capsys, ["run", "--method", "", "--out", run_dir], [run_dir, cwd], "--method is empty", "hlop")


@pytest.mark.parametrize("method, words", [
    ("hlop,hlop", ["names 'hlop' twice"]),
    ("finetune, finetune", ["names 'finetune' twice"]),
    ("hlop,", ["empty name"]),
    (",", ["--method is empty"]),
    ("hlop+", ["empty name beside a '+'"]),
    ("hlop++ewc", ["empty name beside a '+'"]),
    ("hlop+hlop", ["names a plugin twice"]),
    ("nope", ["unknown method 'nope'"]),
])
def test_method_malformed(capsys, place, method, words):
    _, run_dir, cwd = place
    expect_error(capsys, ["run", "--method", method, "--out", run_dir], [run_dir, cwd], *words)


@pytest.mark.parametrize("dataset", ["digits", "cues"])
def test_data_dir_with_a_dataset_that_reads_no_files(capsys, place, tmp_path, dataset):
    _, run_dir, cwd = place
    argv = ["run", "--dataset", dataset, "--data-dir", tmp_path, "--out", run_dir]
    expect_error(capsys, argv, [run_dir, cwd], "--data-dir applies to", f"'{dataset}' reads no files")


def test_data_dir_in_a_digits_config(capsys, place, tmp_path):
    run_config(capsys, place, {"data": {"data_dir": str(tmp_path)}}, "data.data_dir", "'digits' reads no files")


def test_plugins_table_lists_the_real_keys(capsys, place):
    """``plugins = {}`` is not a key of a config file: the message must not offer it."""
    cfg_dir, run_dir, cwd = place
    (cfg_dir / "p.toml").write_text("plugins = {}\n")
    line = expect_error(capsys, ["run", cfg_dir / "p.toml", "--out", run_dir], [run_dir, cwd], "unknown key plugins")
    valid = line.split("valid", 1)[1]
    assert "plugins" not in valid
    for key in ("methods", "seed", "out", "device", "[data]", "[train]", "[hlop]"):
        assert key in valid


def test_unknown_top_level_key(capsys, place):
    cfg_dir, run_dir, cwd = place
    (cfg_dir / "c.toml").write_text("colour = 1\n")
    line = expect_error(capsys, ["run", cfg_dir / "c.toml", "--out", run_dir], [run_dir, cwd], "unknown key colour")
    assert "methods" in line and "plugins" not in line.split("valid", 1)[1]


# -- every other config key: type and range ----------------------------------------------
CONFIG_CASES = {
    # top level
    "methods_string": ({"methods": "hlop"}, ["methods must be a list", "method names"]),
    "methods_empty": ({"methods": []}, ["at least one method"]),
    "methods_ints": ({"methods": [1]}, ["methods must be a list of method names"]),
    "methods_twice": ({"methods": ["hlop", "hlop"]}, ["methods lists 'hlop' twice"]),
    "methods_twice_spaced": ({"methods": ["hlop+ewc", "hlop + ewc"]}, ["twice"]),
    "quiet_int": ({"quiet": 1}, ["quiet must be true or false"]),
    "device_int": ({"device": 5}, ["device must be a string"]),
    "device_empty": ({"device": ""}, ["device must be cpu"]),
    "out_empty": ({"out": ""}, ["out"]),
    "out_nul": ({"out": "a\x00b"}, ["out must name a path"]),
    "seed_float": ({"seed": 1.5}, ["seed must be an integer"]),
    "seed_bool": ({"seed": True}, ["seed must be an integer"]),
    "section_not_table": ({"train": 3}, ["[train] must be a table"]),
    # [data]
    "dataset": ({"data": {"dataset": "imagenet"}}, ["data.dataset"]),
    "stream": ({"data": {"stream": "shuffled"}}, ["data.stream"]),
    "setting": ({"data": {"setting": "banana"}}, ["data.setting"]),
    "tasks_zero": ({"data": {"tasks": 0}}, ["data.tasks must be an integer"]),
    "tasks_bool": ({"data": {"tasks": True}}, ["data.tasks must be an integer"]),
    "tasks_float": ({"data": {"tasks": 2.0}}, ["data.tasks must be an integer"]),
    "classes_per_task_zero": ({"data": {"classes_per_task": 0}}, ["data.classes_per_task", "positive"]),
    "classes_per_task_zero_split": ({"data": {"classes_per_task": 0, "stream": "split"}},
                                    ["data.classes_per_task", "from 1 to 10"]),
    "classes_per_task_11": ({"data": {"classes_per_task": 11, "stream": "split", "tasks": 1}},
                            ["data.classes_per_task", "10 classes"]),
    "split_too_many": ({"data": {"stream": "split", "tasks": 4, "classes_per_task": 3}}, ["12 classes"]),
    "max_per_task_zero": ({"data": {"max_per_task": 0}}, ["data.max_per_task"]),
    "permute_first_int": ({"data": {"permute_first": 1}}, ["data.permute_first must be true or false"]),
    "augment_zero": ({"data": {"augment": 0}}, ["data.augment", "from 1 to 64"]),
    "augment_65": ({"data": {"augment": 65}}, ["data.augment", "from 1 to 64"]),
    "augment_bool": ({"data": {"augment": True}}, ["data.augment"]),
    "augment_events": ({"data": {"augment": 2, "dataset": "cues"}}, ["data.augment", "event data"]),
    "mnist_without_dir": ({"data": {"dataset": "mnist"}}, ["needs a data directory"]),
    "mnist_empty_dir": ({"data": {"dataset": "mnist", "data_dir": ""}}, ["data.data_dir must name a path"]),
    # [model]
    "arch": ({"model": {"arch": "transformer"}}, ["model.arch"]),
    "hidden_string": ({"model": {"hidden": "256"}}, ["model.hidden must be a list"]),
    "channels_zero": ({"model": {"arch": "cnn", "channels": [0]}}, ["model.channels", "positive integers"]),
    "channels_empty_cnn": ({"model": {"arch": "cnn", "channels": []}}, ["model.channels", "at least one"]),
    "channels_too_deep": ({"model": {"arch": "cnn", "channels": [2] * 5}}, ["at most 4 conv stages"]),
    "cnn_on_events": ({"model": {"arch": "cnn"}, "data": {"dataset": "cues"}}, ["model.arch = cnn", "event data"]),
    "neuron": ({"model": {"neuron": "banana"}}, ["model.neuron"]),
    "neuron_not_spiking": ({"model": {"neuron": "li"}}, ["model.neuron"]),
    "tau_mem_zero": ({"model": {"tau_mem": 0}}, ["model.tau_mem", "positive finite"]),
    "tau_mem_negative": ({"model": {"tau_mem": -1e-3}}, ["model.tau_mem"]),
    "tau_mem_inf": ({"model": {"tau_mem": math.inf}}, ["model.tau_mem", "finite"]),
    "tau_mem_huge": ({"model": {"tau_mem": 1e20}}, ["model.tau_mem", "never change"]),
    "dt_zero": ({"model": {"dt": 0.0}}, ["model.dt"]),
    "readout_tau_zero": ({"model": {"readout_tau": 0}}, ["model.readout_tau", "positive"]),
    "readout_tau_nan": ({"model": {"readout_tau": math.nan}}, ["model.readout_tau", "finite"]),
    "readout_tau_huge": ({"model": {"readout_tau": 1e12}}, ["model.readout_tau", "never change"]),
    "readout_tau_euler": ({"model": {"readout_tau": 5e-4, "integration": "euler"}},
                          ["model.readout_tau", "euler", "negative"]),
    "euler_dt_over_tau": ({"model": {"integration": "euler", "dt": 1e-2}}, ["model.dt <= model.tau_mem"]),
    "v_th_zero": ({"model": {"v_th": 0}}, ["model.v_th"]),
    "v_th_nan": ({"model": {"v_th": math.nan}}, ["model.v_th", "finite"]),
    "integration": ({"model": {"integration": "rk4"}}, ["model.integration"]),
    "reset": ({"model": {"reset": "banana"}}, ["model.reset"]),
    "surrogate": ({"model": {"surrogate": "banana"}}, ["model.surrogate", "unknown surrogate"]),
    "surrogate_slope": ({"model": {"surrogate": "atan:-1"}}, ["model.surrogate", "slope"]),
    "surrogate_int": ({"model": {"surrogate": 5}}, ["model.surrogate must be a string"]),
    "readout": ({"model": {"readout": "softmax"}}, ["model.readout"]),
    "bias_int": ({"model": {"bias": 1}}, ["model.bias must be true or false"]),
    "recurrent_string": ({"model": {"recurrent": "yes"}}, ["model.recurrent must be true or false"]),
    "recurrent_cnn": ({"model": {"recurrent": True, "arch": "cnn"}}, ["model.recurrent = true needs model.arch"]),
    "recurrent_if": ({"model": {"recurrent": True, "neuron": "if"}}, ["model.neuron = lif or alif"]),
    "recurrent_no_hidden": ({"model": {"recurrent": True, "hidden": []}}, ["at least one hidden layer"]),
    # [train]
    "trainer": ({"train": {"trainer": "sgd"}}, ["train.trainer"]),
    "epochs_zero": ({"train": {"epochs": 0}}, ["train.epochs must be a positive integer"]),
    "epochs_bool": ({"train": {"epochs": True}}, ["train.epochs"]),
    "epochs_float": ({"train": {"epochs": 1.5}}, ["train.epochs"]),
    "batch_size_zero": ({"train": {"batch_size": 0}}, ["train.batch_size"]),
    "lr_zero": ({"train": {"lr": 0}}, ["train.lr", "(0, 10]"]),
    "lr_negative": ({"train": {"lr": -0.1}}, ["train.lr"]),
    "lr_string": ({"train": {"lr": "0.1"}}, ["train.lr must be a number"]),
    "lr_bool": ({"train": {"lr": True}}, ["train.lr must be a number"]),
    "optimizer": ({"train": {"optimizer": "lbfgs"}}, ["train.optimizer"]),
    "momentum_nan": ({"train": {"momentum": math.nan}}, ["train.momentum", "finite"]),
    "weight_decay_negative": ({"train": {"weight_decay": -1}}, ["train.weight_decay must be >= 0"]),
    "weight_decay_inf": ({"train": {"weight_decay": math.inf}}, ["train.weight_decay", "finite"]),
    "time_steps_zero": ({"train": {"time_steps": 0}}, ["train.time_steps"]),
    "encoder": ({"train": {"encoder": "banana"}}, ["train.encoder"]),
    "encoder_events": ({"train": {"encoder": "events"}}, ["train.encoder", "event data"]),
    "decoder": ({"train": {"decoder": "median"}}, ["train.decoder"]),
    "eval_batch_size_zero": ({"train": {"eval_batch_size": 0}}, ["train.eval_batch_size"]),
    "feedback": ({"train": {"feedback": "sideways"}}, ["train.feedback"]),
    "chunk_zero": ({"train": {"chunk": 0}}, ["train.chunk"]),
    "unknown_train_key": ({"train": {"lrr": 0.1}}, ["unknown key train.lrr", "valid keys", "lr"]),
    "batch_too_large": ({"train": {"batch_size": 10**7, "time_steps": 1000}, "model": {"hidden": [4096]}},
                        ["train.batch_size = 10000000", "memory"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_key(capsys, place, case):
    over, words = CONFIG_CASES[case]
    run_config(capsys, place, over, *words)


# -- plugin options ----------------------------------------------------------------------
PLUGIN_CASES = {
    "ewc_lam_negative": ("ewc", {"lam": -1}, ["ewc.lam"]),
    "ewc_lam_inf": ("ewc", {"lam": math.inf}, ["ewc.lam", "finite"]),
    "ewc_gamma": ("ewc", {"gamma": 1.5}, ["ewc.gamma", "[0, 1]"]),
    "ewc_fisher_samples_bool": ("ewc", {"fisher_samples": True}, ["ewc.fisher_samples"]),
    "ewc_fisher": ("ewc", {"fisher": "exact"}, ["ewc.fisher"]),
    "gpm_threshold": ("gpm", {"threshold": [1.5]}, ["gpm.threshold", "(0, 1]"]),
    "gpm_threshold_inc_nan": ("gpm", {"threshold_inc": math.nan}, ["gpm.threshold_inc", "finite"]),
    "gpm_n_samples": ("gpm", {"n_samples": 0}, ["gpm.n_samples"]),
    "gpm_layers_ints": ("gpm", {"layers": [1]}, ["gpm.layers", "layer names"]),
    "granet_sparsity_1": ("granet", {"sparsity": 1.0}, ["granet.sparsity", "[0, 1)"]),
    "granet_sparsity_negative": ("granet", {"sparsity": -0.1}, ["granet.sparsity"]),
    "granet_death_rate": ("granet", {"death_rate": 2}, ["granet.death_rate", "[0, 1]"]),
    "granet_update_every": ("granet", {"update_every": 0}, ["granet.update_every"]),
    "granet_dormant_share": ("granet", {"dormant_share": 1.5}, ["granet.dormant_share"]),
    "granet_end_inf": ("granet", {"end": math.inf}, ["granet.end", "finite"]),
    "rigl_init_density": ("rigl", {"init_density": 0}, ["rigl.init_density", "(0, 1]"]),
    "hlop_momentum": ("hlop", {"momentum": 1.0}, ["hlop.momentum", "[0, 1)"]),
    "hlop_energy_lr_negative": ("hlop", {"energy_lr": -1}, ["hlop.energy_lr", "positive"]),
    "hlop_energy_lr_inf": ("hlop", {"energy_lr": math.inf}, ["hlop.energy_lr", "finite"]),
    "hlop_hebb_iters": ("hlop", {"hebb_iters": 0}, ["hlop.hebb_iters"]),
    "hlop_init_size_negative": ("hlop", {"init_size": [-1]}, ["hlop.init_size", "sizes >= 0"]),
    "hlop_init_size_empty": ("hlop", {"init_size": []}, ["hlop.init_size", "non-empty"]),
    "hlop_max_rows_bool": ("hlop", {"max_rows": True}, ["hlop.max_rows must be an integer"]),
    "hlop_activity": ("hlop", {"activity": "voltage"}, ["hlop.activity"]),
    "dormant_tau": ("dormant", {"tau": 1.0}, ["dormant.tau"]),
    "dormant_every": ("dormant", {"every": 0}, ["dormant.every"]),
    "dormant_perturb_min_over_max": ("dormant", {"perturb_min": 0.95}, ["dormant.perturb_max"]),
    "unknown_option": ("ewc", {"lambda": 1.0}, ["unknown key ewc.lambda", "lam"]),
    "option_table": ("ewc", {"lam": {"a": 1}}, ["ewc.lam"]),
    "no_options": ("finetune", {"lr": 1}, ["takes no options"]),
    "section_not_table": ("hlop", 1, ["[hlop] must be a table"]),
}


@pytest.mark.parametrize("case", list(PLUGIN_CASES))
def test_bad_plugin_option(capsys, place, case):
    method, section, words = PLUGIN_CASES[case]
    run_config(capsys, place, {"methods": [method], method: section}, *words)


# -- other command-line arguments --------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--tasks", "0"], ["data.tasks"]),
    (["--tasks", "100000"], ["100000 permuted tasks", "memory"]),
    (["--epochs", "0"], ["train.epochs"]),
    (["--augment", "0"], ["data.augment"]),
    (["--augment", "2", "--dataset", "cues"], ["data.augment", "event data"]),
    (["--sparsity", "nan", "--method", "granet"], ["--sparsity"]),
    (["--sparsity", "1", "--method", "granet"], ["--sparsity"]),
    (["--dataset", "mnist"], ["needs a data directory"]),
    (["--dataset", "mnist", "--data-dir", ""], ["--data-dir must name a directory"]),
    (["--dataset", "shd", "--data-dir", "/nonexistent/shd"], ["/nonexistent/shd"]),
    (["--trainer", "sgd"], ["invalid choice"]),
])
def test_bad_run_arguments(capsys, place, args, words):
    _, run_dir, cwd = place
    expect_error(capsys, ["run", *args, "--out", run_dir, "--quiet"], [run_dir, cwd], *words)


def test_as_a_real_process(tmp_path):
    """The installed entry point: exit 2 and exactly one line on stderr (no warnings)."""
    r = subprocess.run([sys.executable, "-m", "neuroplastic", "run", "--seed", "99999999999999999999999",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("neuroplastic: error: --seed") and len(r.stderr.splitlines()) == 1, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- data files --------------------------------------------------------------------------
# These errors are found while the stream is built, after the config was accepted; that
# nothing is left behind relies on neuroplastic/rundir.py building the stream (and every
# network) before the run directory is made.
def write_idx(path, array, magic=None):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_mnist(d, n_train=12, n_test=6, train_labels=None):
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(d / "train-labels-idx1-ubyte",
              rng.integers(0, 10, n_train) if train_labels is None else np.asarray(train_labels))
    write_idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test))
    return d


def run_mnist(capsys, place, d, *words):
    _, run_dir, cwd = place
    argv = ["run", "--dataset", "mnist", "--data-dir", d, "--tasks", "1", "--out", run_dir, "--quiet"]
    return expect_error(capsys, argv, [run_dir, cwd], *words)


def test_mnist_labels_out_of_range_blame_the_labels_file(capsys, place, tmp_path):
    d = write_mnist(tmp_path / "mnist", train_labels=[0, 1, 2, 3, 12, 5, 6, 7, 8, 9, 0, 1])
    line = run_mnist(capsys, place, d, "train-labels-idx1-ubyte", "0..9", "label 12 of sample 4")
    assert "images" not in line


def test_mnist_count_mismatch(capsys, place, tmp_path):
    d = write_mnist(tmp_path / "mnist", train_labels=np.zeros(5))
    run_mnist(capsys, place, d, "MNIST train: 12 images in", "but 5 labels in", "train-labels-idx1-ubyte")


def test_mnist_truncated_images(capsys, place, tmp_path):
    d = write_mnist(tmp_path / "mnist")
    f = d / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    run_mnist(capsys, place, d, "t10k-images-idx3-ubyte", "need 4704 data bytes", "4604")


def test_mnist_missing_file(capsys, place, tmp_path):
    d = write_mnist(tmp_path / "mnist")
    (d / "t10k-labels-idx1-ubyte").unlink()
    run_mnist(capsys, place, d, "missing", "t10k-labels-idx1-ubyte")


def test_mnist_directory_missing(capsys, place, tmp_path):
    run_mnist(capsys, place, tmp_path / "nowhere", "MNIST data directory not found")


@pytest.mark.parametrize("case, words", [
    ("nan_time", ["spike times must be finite"]),
    ("negative_time", ["spike times must be finite and >= 0", "-0.5"]),
    ("unit_out_of_range", ["unit ids span", "n_channels=700"]),
    ("label_20", ["labels must lie in 0..19", "label 20 of sample 1"]),
    ("ragged", ["sample 0 has 2 spike times but 1 units"]),
])
def test_shd_bad_file(capsys, place, tmp_path, shd_writer, case, words):
    d = tmp_path / "shd"
    d.mkdir()
    times, units, labels = [[0.1, 0.2], [0.3]], [[1, 2], [3]], [0, 1]
    if case == "nan_time":
        times[1] = [math.nan]
    elif case == "negative_time":
        times[0] = [0.1, -0.5]
    elif case == "unit_out_of_range":
        units[1] = [700]
    elif case == "label_20":
        labels = [0, 20]
    elif case == "ragged":
        units[0] = [1]
    shd_writer(d / "shd_train.h5", times, units, labels)
    shd_writer(d / "shd_test.h5", [[0.1]], [[1]], [0])
    _, run_dir, cwd = place
    argv = ["run", "--dataset", "shd", "--data-dir", d, "--tasks", "1", "--out", run_dir, "--quiet"]
    expect_error(capsys, argv, [run_dir, cwd], "shd_train.h5", *words)


# -- checkpoints (export reads them; a broken one is named, never loaded unsafely) -------
@pytest.fixture
def ckpt_dir(tmp_path):
    """A run directory's files without a run: a valid config.toml and a real checkpoint."""
    from neuroplastic.config import config_from_dict, to_toml

    d = tmp_path / "runs" / "r"
    d.mkdir(parents=True)
    (d / "config.toml").write_text(to_toml(config_from_dict({**BASE, "out": str(d)})))
    torch.save({"model": {"layers.fc1.weight": torch.zeros(8, 784)}, "task": 0, "method": "finetune",
                "pad": torch.zeros(4000)}, d / "ckpt_task0.pt")
    return d


@pytest.mark.parametrize("kind, words", [
    ("empty", ["the file is empty"]),
    ("random", ["not a torch.save file"]),
    ("truncated", ["truncated"]),
    ("flipped", ["damaged"]),
    ("pickled_object", ["objects other than tensors", "could run code"]),
    ("directory", ["is a directory"]),
])
def test_bad_checkpoint(capsys, tmp_path, ckpt_dir, kind, words):
    ckpt = ckpt_dir / "ckpt_task0.pt"
    blob = ckpt.read_bytes()
    if kind == "empty":
        ckpt.write_bytes(b"")
    elif kind == "random":
        ckpt.write_bytes(np.random.default_rng(3).bytes(2048))
    elif kind == "truncated":
        ckpt.write_bytes(blob[: len(blob) // 2])
    elif kind == "flipped":
        flipped = bytearray(blob)
        i = blob.index(b"data/1") + 200  # inside the stored tensor bytes
        flipped[i:i + 64] = bytes(b ^ 0xFF for b in flipped[i:i + 64])
        ckpt.write_bytes(bytes(flipped))
    elif kind == "pickled_object":
        torch.save({"model": {}, "cb": warnings.WarningMessage}, ckpt)
    else:
        ckpt.unlink()
        ckpt.mkdir()
    out = tmp_path / "exported"
    line = expect_error(capsys, ["export", ckpt_dir, "--format", "h5", "-o", out / "m.h5"], [out], *words)
    assert "weights_only" not in line  # torch's advice to load unsafely is never passed on


@pytest.mark.parametrize("kind, words", [("empty", ["the file is empty"]), ("random", ["not a torch.save file"])])
def test_resume_from_a_bad_checkpoint(capsys, tmp_path, kind, words):
    """``--resume`` reads the same checkpoints (relies on neuroplastic/rundir.py): one line,
    and the run directory is left exactly as it was."""
    from neuroplastic.config import config_from_dict, to_toml
    from neuroplastic.rundir import CONFIG_HEADER

    d = tmp_path / "run"
    d.mkdir()
    (d / "config.toml").write_text(CONFIG_HEADER + "\n" + to_toml(config_from_dict({**BASE, "out": str(d)})))
    (d / "ckpt_task0.pt").write_bytes(b"" if kind == "empty" else np.random.default_rng(5).bytes(3000))
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    line = expect_error(capsys, ["run", "--resume", d, "--quiet"], [], "cannot read checkpoint", *words)
    assert "weights_only" not in line
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_checkpoint_with_invalid_config(capsys, tmp_path, ckpt_dir):
    """A run directory whose config.toml holds a value refused today (lr = inf)."""
    text = (ckpt_dir / "config.toml").read_text().replace("lr = 0.01", "lr = inf")
    (ckpt_dir / "config.toml").write_text(text)
    out = tmp_path / "exported"
    expect_error(capsys, ["export", ckpt_dir, "--format", "nir", "-o", out / "m.nir"], [out], "train.lr", "finite")


# -- simulate: model files and inputs ----------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """``mlp([20, 16, 4])`` as an archive and a NIR graph, and a valid input."""
    import nir

    import neuroplastic
    from neuroplastic.export.archive import save_archive
    from neuroplastic.export.nir_graph import to_nir

    d = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    model = neuroplastic.mlp([20, 16, 4])
    save_archive(d / "model.h5", model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nir.write(str(d / "model.nir"), to_nir(model))
    np.save(d / "x.npy", (np.random.default_rng(1).random((4, 6, 20)) < 0.5).astype(np.float32))
    return d


def _edit_archive(small, tmp_path, edit):
    p = tmp_path / "bad.h5"
    shutil.copy(small / "model.h5", p)
    with h5py.File(p, "r+") as f:
        edit(f)
    return p


def _nan_weight_nir(small, tmp_path):
    import nir

    g = nir.read(str(small / "model.nir"))
    g.nodes["fc1"].weight[0, 0] = np.nan
    p = tmp_path / "nan.nir"
    nir.write(str(p), g)
    return p


def _replace(f, name, data):
    del f[name]
    f[name] = data


MODEL_CASES = {
    "schema_version": (lambda s, t: _edit_archive(s, t, lambda f: f.attrs.__setitem__("schema_version", 7)),
                       ["schema version 7"]),
    "indptr_not_monotone": (lambda s, t: _edit_archive(s, t, lambda f: _replace(
        f, "model/layers/fc1/indptr", np.r_[0, 40, 20, np.arange(3, 17) * 20].astype(np.int64))), ["monotone"]),
    "nan_data": (lambda s, t: _edit_archive(s, t, lambda f: f["model/layers/fc2/data"].__setitem__(0, np.nan)),
                 ["fc2/data", "non-finite"]),
    "nan_nir_weight": (_nan_weight_nir, ["fc1.weight", "NaN or infinite"]),
    "random_bytes": (lambda s, t: (t / "r.nir").write_bytes(b"\x00" * 64) and t / "r.nir", ["not an HDF5 file"]),
    "missing": (lambda s, t: t / "nope.nir", ["model file not found"]),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_simulate_bad_model(capsys, tmp_path, small, case):
    make, words = MODEL_CASES[case]
    out = tmp_path / "new" / "dir"
    expect_error(capsys, ["simulate", make(small, tmp_path), small / "x.npy", "-o", out / "o.h5"],
                 [tmp_path / "new"], *words)


INPUT_CASES = {
    "rank_2": (np.zeros((4, 20), np.float32), ["[T, B, N]", "(4, 20)"]),
    "rank_0": (np.float32(1), ["[T, B, N]", "shape ()"]),
    "complex": (np.zeros((4, 6, 20), np.complex64), ["dtype complex64", "not numeric"]),
    "nan": (np.full((4, 6, 20), np.nan, np.float32), ["NaN or infinite"]),
    "inf": (np.full((4, 6, 20), -np.inf, np.float32), ["NaN or infinite"]),
    "wrong_width": (np.zeros((4, 6, 21), np.float32), ["(21,)", "(20,)"]),
}


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_simulate_bad_input(capsys, tmp_path, small, case):
    x, words = INPUT_CASES[case]
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "new" / "dir"
    expect_error(capsys, ["simulate", small / "model.h5", tmp_path / "x.npy", "-o", out / "o.h5"],
                 [tmp_path / "new"], "x.npy", *words)


def test_simulate_missing_input(capsys, tmp_path, small):
    out = tmp_path / "new"
    expect_error(capsys, ["simulate", small / "model.h5", tmp_path / "nope.npy", "-o", out / "o.h5"],
                 [out], "input file not found")


@pytest.mark.parametrize("which", ["model", "input"])
def test_simulate_output_over_its_own_input(capsys, tmp_path, small, which):
    """``-o`` naming the model or the input file would replace it: refused, file intact."""
    import shutil as sh

    model, x = tmp_path / "m.h5", tmp_path / "x.h5"
    sh.copy(small / "model.h5", model)
    with h5py.File(x, "w") as f:
        f["input"] = np.load(small / "x.npy")
    target = model if which == "model" else x
    before = target.read_bytes()
    expect_error(capsys, ["simulate", model, x, "-o", target], [], "-o", "is the input", "replaced")
    assert target.read_bytes() == before


@pytest.mark.parametrize("name", ["ckpt_task0.pt", "config.toml"])
def test_export_output_over_a_run_file(capsys, ckpt_dir, name):
    target = ckpt_dir / name
    before = target.read_bytes()
    source = target if name.startswith("ckpt") else ckpt_dir
    expect_error(capsys, ["export", source, "--format", "h5", "-o", target], [], "-o")
    assert target.read_bytes() == before
