"""The continual runner end to end on a multi-head (task-incremental) split stream: every
accuracy of the recorded matrix re-measured from the checkpoints through each task's own
head, the untrained baseline re-measured, ACC/BWT/FWT in metrics.json recomputed from the
matrix, and what a checkpoint holds."""

from __future__ import annotations

import json

import pytest
import torch

from neuroplastic.config import config_from_dict
from neuroplastic.continual import build_model, build_stream, run, run_encoder
from neuroplastic.io import load_checkpoint
from neuroplastic.runfile import checkpoint_name, read_run_h5
from neuroplastic.sparse import load_sparse_state_dict
from neuroplastic.trainers import make_trainer

# one real 3-task run of two methods (~5 s on a busy 2-core machine) shared by the module
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

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
    results = run(cfg, echo=lambda *a: None)
    return cfg, out, results


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


@pytest.mark.parametrize("method", METHODS)
def test_summary_metrics_are_the_gem_formulas_of_the_recorded_matrix(split_run, method):
    cfg, out, results = split_run
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


@pytest.mark.parametrize("method", METHODS)
def test_every_recorded_accuracy_is_its_tasks_own_head_on_the_checkpoint(split_run, method):
    cfg, out, _ = split_run
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


@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_contents(split_run, method):
    cfg, out, _ = split_run
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
