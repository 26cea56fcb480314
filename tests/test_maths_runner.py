"""The continual runner end to end on a multi-head (task-incremental) split stream: every
accuracy of the recorded matrix re-measured from the checkpoints through each task's own
head, the untrained baseline re-measured, ACC/BWT/FWT in metrics.json recomputed from the
matrix, and what a checkpoint holds."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from neuroplastic.config import config_from_dict
from neuroplastic.continual import build_model, build_stream, format_table, model_sparsity, run, run_encoder
from neuroplastic.errors import UserError
from neuroplastic.io import load_checkpoint
from neuroplastic.network import mlp
from neuroplastic.runfile import checkpoint_name, read_run_h5
from neuroplastic.sparse import load_sparse_state_dict
from neuroplastic.trainers import make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")
#: the tests sharing one real 3-task run of two methods (~5 s on a busy 2-core machine)
slow = pytest.mark.slow

T = 3
METHODS = ["finetune", "hlop"]


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "run"
    cfg = config_from_dict({
        "methods": METHODS, "seed": 3, "out": str(out), "quiet": True,
        "data": {"dataset": "digits", "stream": "split", "tasks": T, "max_per_task": 96},
        "model": {"hidden": [16]},
        "train": {"epochs": 1, "batch_size": 16, "time_steps": 2, "lr": 0.05},
        "hlop": {"energy_samples": 16},
    })
    echoed: list[str] = []
    results = run(cfg, echo=echoed.append)
    return cfg, out, results, echoed


def _evaluator(cfg, stream, state=None):
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, stream)
    if state is not None:
        load_sparse_state_dict(model, state)
    return make_trainer(model, run_encoder(cfg, stream, model), cfg.train, None, "cpu", cfg.seed, True)


def _gem(R, b):
    n = len(R)
    acc = sum(R[-1]) / n
    bwt = sum(R[-1][j] - R[j][j] for j in range(n - 1)) / (n - 1)
    fwt = sum(R[j - 1][j] - b[j] for j in range(1, n)) / (n - 1)
    return acc, bwt, fwt


@slow
@pytest.mark.parametrize("method", METHODS)
def test_summary_metrics_are_the_gem_formulas_of_the_recorded_matrix(split_run, method):
    cfg, out, results, _ = split_run
    m = json.loads((out / method / "metrics.json").read_text())
    R, b = m["acc_matrix"], m["baseline"]
    assert len(R) == T and all(len(row) == T for row in R) and len(b) == T
    acc, bwt, fwt = _gem(R, b)
    assert m["fwt"] is not None and m["bwt"] is not None
    assert m["acc"] == pytest.approx(acc, abs=1e-9)
    assert m["bwt"] == pytest.approx(bwt, abs=1e-9)
    assert m["fwt"] == pytest.approx(fwt, abs=1e-9)
    assert m["tasks_done"] == T and m["method"] == method
    assert results[method]["acc"] == m["acc"]
    # percent with fractions (96 samples per task, a 20 % test share: not whole numbers)
    assert all(0.0 <= v <= 100.0 for row in R for v in row)
    assert any(v != int(v) for row in R for v in row)
    h5 = read_run_h5(out / method / "run.h5")
    assert torch.allclose(torch.as_tensor(h5["acc_matrix"], dtype=torch.float64),
                          torch.tensor(R, dtype=torch.float64))


@slow
@pytest.mark.parametrize("method", METHODS)
def test_every_recorded_accuracy_is_its_tasks_own_head_on_the_checkpoint(split_run, method):
    cfg, out, _, _ = split_run
    stream = build_stream(cfg)
    assert stream.n_heads == T and [t.head for t in stream.tasks] == list(range(T))
    m = json.loads((out / method / "metrics.json").read_text())
    R, b = m["acc_matrix"], m["baseline"]
    untrained = _evaluator(cfg, stream)
    assert [untrained.evaluate(t.test, t.head) for t in stream.tasks] == b
    wrong_head_differs = False
    for i in range(T):
        ck = load_checkpoint(out / method / checkpoint_name(i))
        ev = _evaluator(cfg, stream, ck["model"])
        assert [ev.evaluate(t.test, t.head) for t in stream.tasks] == R[i], i
        # the current (last trained) head on every task gives another matrix row
        if [ev.evaluate(t.test, i) for t in stream.tasks] != R[i]:
            wrong_head_differs = True
    assert wrong_head_differs


@slow
@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_contents(split_run, method):
    cfg, out, _, _ = split_run
    m = json.loads((out / method / "metrics.json").read_text())
    stream = build_stream(cfg)
    for i in range(T):
        ck = load_checkpoint(out / method / checkpoint_name(i))
        assert {"model", "optimizer", "plugins", "task", "acc_matrix", "baseline"} <= set(ck)
        assert ck["task"] == i
        assert [list(r) for r in ck["acc_matrix"]] == m["acc_matrix"][: i + 1]
        assert list(ck["baseline"]) == m["baseline"]
        fresh = _evaluator(cfg, stream).model.state_dict()
        assert set(fresh) <= set(ck["model"])
        for k, v in fresh.items():
            assert ck["model"][k].shape == v.shape, k
        assert {"state", "param_groups"} <= set(ck["optimizer"])
        assert ck["optimizer"]["param_groups"][0]["lr"] == cfg.train.lr
        assert method in ck["plugins"]
    last = load_checkpoint(out / method / checkpoint_name(T - 1))
    if method == "hlop":
        hl = last["plugins"]["hlop"]
        assert hl["task"] == T - 1
        sizes = m["hlop"]["subspace_sizes"]
        # multi-head: the readout (split into per-task heads) is not protected
        assert list(hl["H"]) == ["fc1"] == m["hlop"]["layers"]
        assert hl["H"]["fc1"].shape == (sizes["fc1"][-1], 784)
        assert hl["n_old"]["fc1"] == sizes["fc1"][-1]
    # the final checkpoint's model is the one that produced the last row
    first = load_checkpoint(out / method / checkpoint_name(0))["model"]
    assert any(not torch.equal(first[k], last["model"][k]) for k in first if first[k].is_floating_point())


# -- the runner's helpers (fast) -------------------------------------------------------------------------------
def _stream(n_inputs=16, n_outputs=3, n_heads=1, time_steps=None):
    return SimpleNamespace(n_inputs=n_inputs, n_outputs=n_outputs, n_heads=n_heads, time_steps=time_steps)


def _cfg(**model):
    return config_from_dict({"methods": ["finetune"], "quiet": True, "model": model,
                             "train": {"time_steps": 4, "encoder": "direct"}})


@pytest.mark.parametrize("integration", ["exact", "euler"])
def test_build_model_readout_tau_with_unit_gain(integration):
    cfg = _cfg(hidden=[5], readout_tau=5e-3, tau_mem=3e-3, dt=1e-3, integration=integration)
    net = build_model(cfg, _stream(n_heads=2))
    ro = net.layers["readout"]
    a = math.exp(-1e-3 / 5e-3) if integration == "exact" else 1 - 1e-3 / 5e-3
    assert ro.tau_mem == 5e-3
    assert ro.r == pytest.approx(1 / (1 - a))
    assert net.layers["lif1"].tau_mem == 3e-3
    assert net.layers["fc2"].weight.shape == (6, 5)  # two heads of three
    assert net.layers["fc1"].weight.shape == (5, 16)


def test_build_model_variants_and_refusals():
    net = build_model(_cfg(hidden=[4], neuron="if"), _stream())
    assert type(net.layers["if1"]).__name__ == "IF"
    net = build_model(_cfg(arch="cnn", channels=[2]), _stream(n_inputs=36))
    assert net.layers["conv1"].weight.shape[:2] == (2, 1)
    with pytest.raises(UserError, match="square"):
        build_model(_cfg(arch="cnn", channels=[2]), _stream(n_inputs=35))
    with pytest.raises(UserError, match="recurrent"):
        build_model(_cfg(arch="cnn", channels=[2], recurrent=True), _stream(n_inputs=36))
    net = build_model(_cfg(hidden=[4], readout="spikes"), _stream())
    assert net.layers["readout"].spiking


def test_run_encoder_reshapes_for_conv_nets_and_passes_events():
    cfg = _cfg(arch="cnn", channels=[2])
    stream = _stream(n_inputs=36)
    enc = run_encoder(cfg, stream, build_model(cfg, stream))
    x = torch.rand(3, 36)
    out = enc(x)
    assert out.shape == (4, 3, 1, 6, 6)
    assert torch.equal(out[2], x.reshape(3, 1, 6, 6))
    cfg = _cfg(hidden=[4])
    enc = run_encoder(cfg, _stream(), build_model(cfg, _stream()))
    assert enc(torch.rand(3, 16)).shape == (4, 3, 16) and enc.time_steps == 4
    ev = run_encoder(cfg, _stream(time_steps=7), build_model(cfg, _stream()))
    frames = torch.rand(3, 7, 16)
    assert ev.time_steps == 7
    assert torch.equal(ev(frames), frames.transpose(0, 1))


def test_model_sparsity_from_masks_or_exact_zeros():
    net = mlp([10, 4, 3])
    fc1, fc2 = net.layers["fc1"], net.layers["fc2"]
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, :3] = True  # 12 of 40 present
    fc1.set_mask(mask)
    with torch.no_grad():
        fc2.weight[0] = 0.0  # 4 of 12 exactly zero, no mask
        fc1.weight.fill_(0.5)  # the mask, not the values, counts
    s = model_sparsity(net)
    assert s["fc1"] == pytest.approx(1 - 12 / 40)
    assert s["fc2"] == pytest.approx(4 / 12)
    assert s["overall"] == pytest.approx((28 + 4) / 52)


def test_format_table_rows():
    res = {"finetune": {"acc": 50.25, "bwt": None, "fwt": -1.5, "sparsity": 0.0, "wall_s": 3.14},
           "hlop": {"acc": 60.0, "bwt": -0.5, "fwt": None, "sparsity": 0.9, "wall_s": 10.0, "status": "interrupted",
                    "tasks_done": 1, "tasks": ["a", "b", "c"]}}
    lines = format_table(res).splitlines()
    assert lines[0].split() == ["method", "ACC", "BWT", "FWT", "sparsity", "time", "s"]
    assert lines[1].split() == ["finetune", "50.25", "n/a", "-1.50", "0.00", "3.1"]
    assert lines[2].startswith("hlop (interrupted, 1/3)")
    assert lines[2].split()[-5:] == ["60.00", "-0.50", "n/a", "0.90", "10.0"]


@slow
def test_resume_after_a_finished_task_runs_only_the_remaining_tasks(split_run, tmp_path):
    """The run directory without its last checkpoint: ``--resume`` continues after task 1
    (not again from task 1) and ends with the same matrix as the uninterrupted run."""
    import dataclasses
    import shutil

    cfg, out, _, _ = split_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    for method in METHODS:
        (copy / method / checkpoint_name(T - 1)).unlink()
    resumed = run(dataclasses.replace(cfg, out=str(copy)), echo=lambda *a: None, resume=True)
    for method in METHODS:
        m = json.loads((out / method / "metrics.json").read_text())
        assert resumed[method]["acc_matrix"] == m["acc_matrix"]
        assert resumed[method]["acc"] == m["acc"] and resumed[method]["tasks_done"] == T


@slow
def test_the_run_prints_its_stream_and_table(split_run):
    cfg, out, results, echoed = split_run
    assert len(echoed) == 2
    assert f"{T} tasks -> {out}" in echoed[0] and "split" in echoed[0]
    assert echoed[1] == format_table(results)


@pytest.mark.parametrize("existed", [False, True])
def test_a_run_that_fails_before_any_checkpoint(tmp_path, monkeypatch, existed):
    """A failure before the first checkpoint removes the directory the run created, and
    never one that was there before (an empty directory the user gave)."""
    from neuroplastic.trainers.base import Trainer

    def boom(self, *a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(Trainer, "train_step", boom)
    out = tmp_path / "run"
    if existed:
        out.mkdir()
    cfg = config_from_dict({"methods": ["finetune"], "out": str(out), "quiet": True,
                            "data": {"tasks": 2, "max_per_task": 16}, "model": {"hidden": [4]},
                            "train": {"time_steps": 1, "batch_size": 8}})
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg, echo=lambda *_: None)
    assert out.is_dir() is existed


@slow
def test_summary_of_a_several_method_run(split_run):
    """summary.json: per method the summary metrics of its metrics.json."""
    _, out, results, _ = split_run
    s = json.loads((out / "summary.json").read_text())
    assert set(s) == set(METHODS)
    for method in METHODS:
        m = json.loads((out / method / "metrics.json").read_text())
        for k in ("acc", "bwt", "fwt"):
            assert s[method][k] == m[k] == results[method][k]
        assert s[method]["status"] == m["status"] == "complete" and s[method]["tasks_done"] == T
