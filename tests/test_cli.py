"""The ``neuroplastic run`` command end to end on a tiny stream, and its error handling."""

import json
import subprocess
import sys

import h5py
import pytest
import torch

from neuroplastic.cli import main
from neuroplastic.config import config_from_dict, load_config, to_toml
from neuroplastic.errors import UserError

TINY = """
methods = ["finetune", "multitask"]
seed = 3
quiet = true

[data]
dataset = "digits"
stream = "permuted"
tasks = 2
max_per_task = 120

[model]
hidden = [32]

[train]
epochs = 1
batch_size = 32
time_steps = 4
"""


@pytest.fixture
def tiny_config(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return p


def test_run_writes_the_run_directory(tiny_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(tiny_config), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "finetune" in table and "multitask" in table and "ACC" in table
    for method in ("finetune", "multitask"):
        d = out / method
        m = json.loads((d / "metrics.json").read_text())
        for key in ("method", "acc_matrix", "acc", "bwt", "fwt", "wall_s", "sparsity", "dormant_ratio"):
            assert key in m
        assert m["method"] == method
        assert len(m["acc_matrix"]) == 2 and len(m["acc_matrix"][0]) == 2
        assert 0 <= m["acc"] <= 100 and m["sparsity"] == 0.0
        assert "overall" in m["dormant_ratio"]
        with h5py.File(d / "run.h5") as f:
            assert f["acc_matrix"].shape == (2, 2)
            assert "task_1" in f["losses"]
        ckpt = torch.load(d / "ckpt_task1.pt", weights_only=True)
        assert ckpt["task"] == 1 and "layers.fc1.weight" in ckpt["model"]
        assert load_config(d / "config.toml").methods == [method]
    assert load_config(out / "config.toml").data.tasks == 2


def test_overrides_and_single_method_layout(tiny_config, tmp_path):
    out = tmp_path / "one"
    assert main(["run", str(tiny_config), "--method", "finetune", "--tasks", "1", "--seed", "5",
                 "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["bwt"] is None and len(m["acc_matrix"]) == 1
    cfg = load_config(out / "config.toml")
    assert cfg.seed == 5 and cfg.methods == ["finetune"]


def test_same_seed_same_result(tiny_config, tmp_path):
    for name in ("a", "b"):
        assert main(["run", str(tiny_config), "--method", "finetune", "--out", str(tmp_path / name)]) == 0
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma["acc_matrix"] == mb["acc_matrix"]


BAD = [
    ("[train]\nlrr = 0.1\n", "unknown key train.lrr"),
    ("[train]\nlr = -1\n", "train.lr"),
    ("[train]\nepochs = \"two\"\n", "train.epochs"),
    ("[data]\ntasks = 0\n", "data.tasks"),
    ("[data]\ndataset = \"imagenet\"\n", "data.dataset"),
    ("methods = [\"finetune+nope\"]\n", "unknown method 'nope'"),
    ("colour = 1\n", "unknown key colour"),
    ("[model\n", "invalid TOML"),
    ("[data]\ndataset = \"mnist\"\n", "needs a data directory"),
]


@pytest.mark.parametrize("text,needle", BAD)
def test_config_errors_are_one_line_exit_2(tmp_path, capsys, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    assert main(["run", str(p), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuroplastic: error:") and needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv,needle", [
    (["run", "missing.toml"], "config file not found"),
    (["run", "--tasks", "0"], "data.tasks"),
    (["run", "--method", "granet", "--sparsity", "1.5"], "--sparsity"),
    (["run", "--sparsity", "0.5"], "sparse method"),
    (["run", "--bogus"], "unrecognized arguments"),
    (["run", "--dataset", "mnist", "--data-dir", "/nonexistent"], "/nonexistent"),
])
def test_cli_errors(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_config_round_trip():
    cfg = config_from_dict({"methods": ["finetune"], "train": {"lr": 0.02}, "data": {"tasks": 3}})
    import tomllib

    again = config_from_dict(tomllib.loads(to_toml(cfg)))
    assert again == cfg


def test_python_m_entry_point(tiny_config, tmp_path):
    r = subprocess.run([sys.executable, "-m", "neuroplastic", "run", str(tiny_config), "--method", "lol"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == ("neuroplastic: error: unknown method 'lol'; choose from "
                                + r.stderr.split("choose from ")[1].strip())


def test_user_error_is_value_error():
    assert issubclass(UserError, ValueError)


def test_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "--out", str(blocker / "run"), "--tasks", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuroplastic: error:") and len(err.splitlines()) == 1


@pytest.mark.parametrize("trainer, methods", [
    ("online", "hlop"), ("eprop", "hlop+granet"), ("dsr", "hlop+granet"), ("ottt", "granet,gpm,ewc")])
def test_run_with_every_trainer_and_plugins(tiny_config, tmp_path, capsys, trainer, methods):
    """`neuroplastic run --method hlop --trainer online` runs like any other method (and the
    other strategies with projections, a penalty and a sparse plugin), into the same run
    directory."""
    out = tmp_path / trainer
    sparsity = ["--sparsity", "0.5"] if "granet" in methods else []
    assert main(["run", str(tiny_config), "--method", methods, "--trainer", trainer, *sparsity,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for method in methods.split(","):
        assert method in printed
        run_dir = out / method if "," in methods else out
        m = json.loads((run_dir / "metrics.json").read_text())
        assert len(m["acc_matrix"]) == 2
        with h5py.File(run_dir / "run.h5") as f:
            losses = f["losses/task_0"][()]
        assert losses[-2:].mean() < losses[:2].mean()  # it learned something
    assert 'trainer = "' + ("ottt" if trainer == "online" else trainer) + '"' in (out / "config.toml").read_text()
