"""The generated delayed-cue evidence-accumulation task (neuroplastic.datasets.load_cues)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from neuroplastic.datasets import DATASETS, cue_layout, load_cues, make_stream

from neuroplastic.errors import UserError

SMALL = dict(n_train=400, n_test=200)


@pytest.fixture(scope="module")
def cues():
    return load_cues(n_train=2000, n_test=1000, seed=0, return_sides=True)


def test_deterministic_for_a_seed_and_different_for_another():
    a, b = load_cues(**SMALL, seed=3), load_cues(**SMALL, seed=3)
    for x, y in zip(a, b):
        assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y)
    c = load_cues(**SMALL, seed=4)
    assert not torch.equal(a[0].x, c[0].x)
    assert not torch.equal(a[0].y, c[0].y)
    assert not torch.equal(a[0].x, a[1].x[:200].repeat(2, 1, 1))  # test samples are new draws


def test_shapes_dtypes_and_balance(cues):
    train, test, s_tr, s_te = cues
    assert train.x.shape == (2000, 80, 40) and test.x.shape == (1000, 80, 40)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert set(train.x.unique().tolist()) == {0.0, 1.0}
    assert train.n_classes == 2
    assert int(train.y.sum()) == 1000 and int(test.y.sum()) == 500
    odd = load_cues(n_train=7, n_test=1, seed=0)[0]
    assert int(odd.y.sum()) == 3
    assert s_tr.shape == (2000, 7) and s_te.shape == (1000, 7)


def test_label_is_the_side_with_more_cues(cues):
    train, test, s_tr, s_te = cues
    for ds, sides in ((train, s_tr), (test, s_te)):
        n_right = sides.sum(1)
        assert np.array_equal(ds.y.numpy(), (n_right > 3).astype(np.int64))
        majority = np.maximum(n_right, 7 - n_right)
        assert set(np.unique(majority)) == {4, 5, 6, 7}  # uniform on (n_cues + 1) / 2 .. n_cues


def test_layout_is_exact_without_noise():
    train, _, sides, _ = load_cues(n_train=20, n_test=1, p_cue=1.0, p_recall=1.0, p_noise=0.0, seed=1,
                                   return_sides=True)
    lay = cue_layout()
    x = train.x.numpy()
    expected = np.zeros_like(x)
    for i in range(len(x)):
        for k, steps in enumerate(lay["cues"]):
            group = lay["right"] if sides[i, k] == 1 else lay["left"]
            expected[i, steps.start:steps.stop, group.start:group.stop] = 1
    expected[:, lay["recall_steps"].start:, lay["recall"].start:lay["recall"].stop] = 1
    assert np.array_equal(x, expected)
    assert len(lay["delay"]) == 80 - 7 * 6 - 10 == 28
    assert list(lay["noise"]) == list(range(30, 40))


def test_final_steps_carry_no_label(cues):
    """The delay and recall have one distribution for both classes: a linear classifier on
    the final 10 steps stays at chance, while the cue counts give the label."""
    from sklearn.linear_model import LogisticRegression

    train, test, _, _ = cues
    last = slice(-10, None)
    xtr, xte = train.x[:, last].reshape(len(train), -1).numpy(), test.x[:, last].reshape(len(test), -1).numpy()
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(xtr, train.y.numpy())
    assert abs(clf.score(xte, test.y.numpy()) - 0.5) < 0.06
    means = [train.x[train.y == c][:, 42:].mean(0) for c in (0, 1)]  # delay and recall
    assert float((means[0] - means[1]).abs().max()) < 0.08
    counts = LogisticRegression(max_iter=2000).fit(train.x.sum(1).numpy(), train.y.numpy())
    assert counts.score(test.x.sum(1).numpy(), test.y.numpy()) > 0.9


def test_bad_parameters_are_user_errors():
    with pytest.raises(UserError, match="odd"):
        load_cues(**SMALL, n_cues=6)
    with pytest.raises(UserError, match="too short"):
        load_cues(**SMALL, time_steps=50)
    with pytest.raises(UserError, match="p_cue"):
        load_cues(**SMALL, p_cue=1.5)
    with pytest.raises(UserError, match="n_channels"):
        load_cues(**SMALL, n_channels=3)
    with pytest.raises(UserError, match="n_train"):
        load_cues(n_train=0)


def test_make_stream_cues():
    assert "cues" in DATASETS
    s = make_stream("cues", "permuted", n_tasks=2, seed=0)
    assert (s.n_inputs, s.time_steps, s.n_outputs, s.n_heads) == (40, 80, 2, 1)
    t0, t1 = s.tasks
    assert len(t0.train) == 2000 and len(t0.test) == 500
    # task 1 permutes the channels, identically at every step
    a, b = t0.train.x[:300], t1.train.x[:300]
    assert not torch.equal(a, b)
    for j in range(40):
        assert any(torch.equal(b[:, :, j], a[:, :, p]) for p in range(40))
    sp = make_stream("cues", "split", n_tasks=1)
    assert len(sp.tasks) == 1 and sp.n_outputs == 2
    with pytest.raises(UserError, match="classes"):
        make_stream("cues", "split", n_tasks=2)


def test_config_and_cli_accept_cues():
    from neuroplastic.cli import build_parser
    from neuroplastic.config import config_from_dict

    assert config_from_dict({"data": {"dataset": "cues"}}).data.dataset == "cues"
    assert build_parser().parse_args(["run", "--dataset", "cues"]).dataset == "cues"
    with pytest.raises(UserError, match="cues"):
        config_from_dict({"data": {"dataset": "morse"}})


def test_a_run_on_cues_end_to_end(tmp_path):
    import json

    from neuroplastic.config import config_from_dict
    from neuroplastic.continual import run

    out = tmp_path / "cues"
    cfg = config_from_dict({
        "methods": ["finetune"], "out": str(out), "quiet": True,
        "data": {"dataset": "cues", "tasks": 1, "max_per_task": 64},
        "model": {"hidden": [16], "neuron": "alif", "recurrent": True, "tau_mem": 0.02},
        "train": {"epochs": 1, "decoder": "last", "optimizer": "adam", "lr": 0.001, "eval_batch_size": 500},
    })
    results = run(cfg, echo=lambda *_: None)
    m = json.loads((out / "metrics.json").read_text())
    assert m["acc"] == results["finetune"]["acc"]
    assert 0.0 <= m["acc"] <= 100.0
    assert "alif1.rec" in m["sparsity_per_layer"]
    assert "recurrent = true" in (out / "config.toml").read_text()
