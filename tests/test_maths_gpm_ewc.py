"""GPM and EWC at the task boundaries: optimizer state at a task start, biases trained in
task 0 and frozen after, GPM's energy thresholds at their boundaries and schedule, EWC's
Fisher after real training with minibatches, the sampled Fisher, and the penalty's
gradient in a training step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from neuroplastic.datasets import ArrayDataset

from neuroplastic.encoders import make_encoder
from neuroplastic.errors import UserError
from neuroplastic.network import mlp
from neuroplastic.plugins import build_plugins
from neuroplastic.plugins.gpm import gpm_update
from neuroplastic.plugins.projection import project_weight_grad
from neuroplastic.training import Trainer, TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(model, plugins, T=2, lr=0.1, momentum=0.9, batch_size=8):
    s = TrainSettings(epochs=1, batch_size=batch_size, lr=lr, momentum=momentum, time_steps=T)
    return Trainer(model, make_encoder("direct", T), s, plugins, "cpu", 0, True)


class _Task:
    def __init__(self, x, y, head=None, n_classes=3):
        self.train = ArrayDataset(x, y, n_classes)
        self.head = head


def _data(n, D, seed, n_classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, D, generator=g), torch.randint(0, n_classes, (n,), generator=g)


# -- shared boundary behaviour ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gpm", "ewc"])
@pytest.mark.parametrize("reset", [True, False])
def test_optimizer_state_at_task_starts(method, reset):
    torch.manual_seed(0)
    model = mlp([6, 5, 3])
    plugins = build_plugins(method, {method: {"reset_optimizer": reset}})
    tr = _trainer(model, plugins)
    x, y = _data(16, 6, 1)
    tr.train_step(x[:8], y[:8], None)
    plugins.on_task_start(0, None)
    assert len(tr.optimizer.state) > 0  # never cleared at task 0
    tr.train_task([(ArrayDataset(x, y, 3), None)], 0)
    plugins.on_task_end(0, _Task(x, y))
    before = {id(p): s["momentum_buffer"].clone() for p, s in tr.optimizer.state.items()}
    plugins.on_task_start(1, None)
    if reset:
        assert len(tr.optimizer.state) == 0
    else:
        assert {id(p) for p in tr.optimizer.state} == set(before)
        for p, s in tr.optimizer.state.items():
            assert torch.equal(s["momentum_buffer"], before[id(p)])


@pytest.mark.parametrize("freeze", [True, False])
def test_gpm_biases_trained_in_task_zero_then_frozen(freeze):
    torch.manual_seed(0)
    model = mlp([6, 5, 3])
    plugins = build_plugins("gpm", {"gpm": {"n_samples": 16, "freeze_non_weights": freeze}})
    tr = _trainer(model, plugins)
    biases = {n: p for n, p in model.named_parameters() if p.ndim == 1}
    weights = {n: p for n, p in model.named_parameters() if p.ndim >= 2}
    assert biases and weights
    snap = {n: p.detach().clone() for n, p in model.named_parameters()}
    for t in range(2):
        x, y = _data(16, 6, 10 + t)
        plugins.on_task_start(t, None)
        tr.train_task([(ArrayDataset(x, y, 3), None)], t)
        plugins.on_task_end(t, _Task(x, y))
        for n, p in model.named_parameters():
            moved = not torch.equal(p.detach(), snap[n])
            if n in weights or t == 0 or not freeze:
                assert moved, (t, n)
            else:
                assert not moved and not p.requires_grad, (t, n)
        snap = {n: p.detach().clone() for n, p in model.named_parameters()}


# -- GPM ---------------------------------------------------------------------------------------------------
def _diag_R():
    R = torch.zeros(3, 5, dtype=torch.float64)
    R[0, 0], R[1, 1], R[2, 2] = 4.0, 2.0, 2.0  # energies 16, 4, 4: cumulative 2/3, 5/6, 1
    return R


def test_gpm_first_basis_keeps_directions_strictly_below_the_threshold():
    R = _diag_R()
    for thr, r in ((16 / 24, 0), (16 / 24 + 1e-9, 1), (0.6, 0), (0.9, 2)):
        U, cap = gpm_update(R, torch.zeros(0, 5, dtype=torch.float64), thr)
        assert U.shape == (r, 5) and cap == 0.0, thr
        if r:
            assert torch.allclose(U[0].abs(), torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64))
    assert gpm_update(torch.zeros(4, 5), torch.zeros(0, 5), 0.9)[0].shape == (0, 5)  # no energy: nothing


def test_gpm_later_basis_adds_the_fewest_directions_reaching_the_threshold():
    R = _diag_R()
    U0 = torch.zeros(1, 5, dtype=torch.float64)
    U0[0, 0] = 1.0  # holds 2/3 of R's energy
    for thr, add in ((16 / 24, 0), (0.5, 0), (0.7, 1), (0.8, 1), (0.84, 2)):
        U, cap = gpm_update(R, U0, thr)
        assert cap == pytest.approx(16 / 24, abs=1e-15)
        assert U.shape == (1 + add, 5), thr
        if add == 0:
            assert U is U0
        else:
            assert torch.equal(U[0], U0[0])
            assert (U[1:] @ U0.T).abs().max() < 1e-12
            torch.testing.assert_close(U @ U.T, torch.eye(1 + add, dtype=torch.float64))
            assert float((U[1:, 1:3] ** 2).sum()) == pytest.approx(add)  # inside span(e1, e2)


def test_gpm_basis_may_outgrow_the_sample_count():
    """Three representation rows, an old basis of two (one of them unused by this task):
    reaching 0.84 adds two directions, four rows in all (more than the three samples)."""
    R = _diag_R()
    U0 = torch.zeros(2, 5, dtype=torch.float64)
    U0[0, 0] = U0[1, 3] = 1.0
    U, cap = gpm_update(R, U0, 0.84)
    assert cap == pytest.approx(16 / 24, abs=1e-15)
    assert U.shape == (4, 5) and torch.equal(U[:2], U0)
    torch.testing.assert_close(U @ U.T, torch.eye(4, dtype=torch.float64))


def test_gpm_threshold_schedule_and_layer_count():
    torch.manual_seed(0)
    plugins = build_plugins("gpm", {"gpm": {"threshold": [0.9, 0.95], "threshold_inc": 0.05}})
    _trainer(mlp([6, 5, 3]), plugins)
    g = plugins.plugins[0]
    assert [g.threshold("fc1", t) for t in range(4)] == pytest.approx([0.9, 0.95, 1.0, 1.0])
    assert [g.threshold("fc2", t) for t in range(3)] == pytest.approx([0.95, 1.0, 1.0])
    one = build_plugins("gpm", {"gpm": {"threshold": [0.8]}})
    _trainer(mlp([6, 5, 3]), one)
    assert one.plugins[0].thresholds == {"fc1": 0.8, "fc2": 0.8}
    assert build_plugins("gpm").plugins[0].opts.threshold_inc == 0.003
    default = build_plugins("gpm")
    _trainer(mlp([6, 5, 3]), default)
    assert default.plugins[0].threshold("fc1", 0) == 0.97  # the default (GPM's CIFAR schedule)
    assert default.plugins[0].threshold("fc1", 10) == pytest.approx(0.97 + 0.03)
    bad = build_plugins("gpm", {"gpm": {"threshold": [0.9, 0.9, 0.9]}})
    with pytest.raises(UserError, match="threshold"):
        _trainer(mlp([6, 5, 3]), bad)


def test_gpm_basis_from_the_first_n_samples_and_max_rows():
    """Only the first ``n_samples`` training samples enter the representation: here they
    lie in span(e0, e1); the rest would add e2..e5."""
    torch.manual_seed(0)
    D = 6
    x = torch.zeros(20, D)
    g = torch.Generator().manual_seed(3)
    x[:5, :2] = torch.rand(5, 2, generator=g)
    x[5:] = torch.rand(15, D, generator=g)
    y = torch.zeros(20, dtype=torch.long)
    for opts, rank in (({"n_samples": 5}, 2), ({"n_samples": 20}, 6), ({"n_samples": 20, "max_rows": 1}, 1)):
        plugins = build_plugins("gpm", {"gpm": {"layers": ["fc1"], "threshold": [1.0], **opts}})
        _trainer(mlp([D, 4, 3]), plugins)
        plugins.on_task_start(0, None)
        plugins.on_task_end(0, _Task(x, y))
        U = plugins.plugins[0].U["fc1"]
        # threshold 1: every direction with energy below the total (all but the last, rounding aside)
        assert rank - 1 <= U.shape[0] <= rank, opts
        if opts["n_samples"] == 5:
            assert U[:, 2:].abs().max() < 1e-6
        assert plugins.plugins[0].sizes["fc1"] == [U.shape[0]]


def test_gpm_projects_only_from_task_one_with_the_stored_basis():
    torch.manual_seed(0)
    model = mlp([6, 5, 3])
    plugins = build_plugins("gpm", {"gpm": {"n_samples": 16, "threshold": [0.99]}})
    tr = _trainer(model, plugins)
    g = plugins.plugins[0]
    x, y = _data(16, 6, 4)
    plugins.on_task_start(0, None)
    F.cross_entropy(tr.forward_logits(x, None), y).backward()
    raw = {n: model.layers[n].weight.grad.clone() for n in ("fc1", "fc2")}
    plugins.after_backward()
    for n in raw:  # task 0: untouched
        assert torch.equal(model.layers[n].weight.grad, raw[n])
    plugins.on_task_end(0, _Task(x, y))
    assert g.U["fc1"].shape[0] > 0
    plugins.on_task_start(1, None)
    model.zero_grad()
    F.cross_entropy(tr.forward_logits(x, None), y).backward()
    raw = {n: model.layers[n].weight.grad.clone() for n in ("fc1", "fc2")}
    plugins.after_backward()
    for n in raw:
        U = g.U[n]
        torch.testing.assert_close(model.layers[n].weight.grad, project_weight_grad(raw[n], U))
        torch.testing.assert_close(model.layers[n].weight.grad, raw[n] - (raw[n] @ U.T) @ U)
    m = g.metrics()["gpm"]
    assert m["basis_sizes"] == {n: [int(g.U[n].shape[0])] for n in ("fc1", "fc2")}
    assert m["captured_by_old_basis"] == {"fc1": [0.0], "fc2": [0.0]}


def test_gpm_captured_energy_of_the_second_task():
    torch.manual_seed(0)
    D = 6
    x0 = torch.zeros(8, D)
    x0[:4, 0] = 0.9
    x0[4:, 2] = 0.3  # energies 0.9 (e0) and 0.1 (e2): the basis keeps e0 at threshold 0.95
    x1 = torch.zeros(8, D)
    x1[:, 0] = 0.5
    x1[:, 1] = 0.5  # half of each row's energy along e0
    y = torch.zeros(8, dtype=torch.long)
    plugins = build_plugins("gpm", {"gpm": {"layers": ["fc1"], "n_samples": 8, "threshold": [0.95]}})
    _trainer(mlp([D, 4, 3]), plugins)
    for t, x in enumerate((x0, x1)):
        plugins.on_task_start(t, None)
        plugins.on_task_end(t, _Task(x, y))
    g = plugins.plugins[0]
    assert g.captured["fc1"] == pytest.approx([0.0, 0.5], abs=1e-6)
    assert g.sizes["fc1"][0] == 1 and g.sizes["fc1"][1] >= 1
    assert float(g.U["fc1"][0, 0].abs()) == pytest.approx(1.0, abs=1e-6)


# -- EWC ---------------------------------------------------------------------------------------------------
def _fisher_by_hand(tr, x, y, n, b, labels=None):
    """``(1/N) sum_batches |b| (grad of the batch's mean loss)^2`` over the first ``n`` samples."""
    model = tr.model
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    out = {k: torch.zeros_like(p) for k, p in params.items()}
    seen = 0
    while seen < n:
        xb, yb = x[seen: min(seen + b, n)], y[seen: min(seen + b, n)]
        logits = tr.forward_logits(xb, None, torch.Generator().manual_seed(0))
        grads = torch.autograd.grad(F.cross_entropy(logits, yb), list(params.values()))
        for (k, _), gr in zip(params.items(), grads):
            out[k] += len(xb) * gr**2
        seen += len(xb)
    return {k: f / n for k, f in out.items()}


def test_ewc_fisher_with_minibatches_after_real_training():
    torch.manual_seed(0)
    model = mlp([6, 5, 3])
    plugins = build_plugins("ewc", {"ewc": {"fisher_samples": 10, "fisher_batch_size": 4, "lam": 3.0}})
    tr = _trainer(model, plugins, lr=0.2)
    e = plugins.plugins[0]
    x, y = _data(12, 6, 5)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    plugins.on_task_start(0, None)
    tr.train_task([(ArrayDataset(x, y, 3), None)], 0)
    assert any(not torch.equal(p, init[n]) for n, p in model.named_parameters())
    plugins.on_task_end(0, _Task(x, y))
    expect = _fisher_by_hand(tr, x, y, 10, 4)  # batches of 4, 4 and 2 (of the 12)
    per_sample = _fisher_by_hand(tr, x, y, 10, 1)
    for n, p in model.named_parameters():
        torch.testing.assert_close(e.fisher[0][n], expect[n], rtol=1e-4, atol=1e-10)
        torch.testing.assert_close(e.anchor[0][n], p.detach())  # the trained parameters
    assert any(not torch.allclose(expect[n], per_sample[n], rtol=1e-3) for n in expect)
    total = sum(float(f.sum()) for f in expect.values())
    count = sum(f.numel() for f in expect.values())
    assert e.fisher_mean == pytest.approx([total / count], rel=1e-4)
    assert e.metrics()["ewc"]["fisher_mean"] == e.fisher_mean


def test_ewc_penalty_gradient_enters_the_training_step():
    """One SGD step of task 1 (no momentum): ``theta - lr (grad_task + lam F (theta - theta*))``."""
    torch.manual_seed(0)
    model = mlp([6, 5, 3])
    lam, lr = 50.0, 0.05
    plugins = build_plugins("ewc", {"ewc": {"fisher_samples": 12, "fisher_batch_size": 3, "lam": lam}})
    tr = _trainer(model, plugins, lr=lr, momentum=0.0)
    e = plugins.plugins[0]
    x0, y0 = _data(12, 6, 6)
    x1, y1 = _data(8, 6, 7)
    plugins.on_task_start(0, None)
    tr.train_task([(ArrayDataset(x0, y0, 3), None)], 0)
    plugins.on_task_end(0, _Task(x0, y0))
    plugins.on_task_start(1, None)
    tr.task_id = 1
    tr.refresh_trainable()
    for _ in range(3):  # move away from the anchor
        tr.train_step(x1, y1, None)
    params = dict(model.named_parameters())
    theta = {n: p.detach().clone() for n, p in params.items()}
    pen = plugins.penalty()
    ref = 0.5 * lam * sum((e.fisher[0][n] * (theta[n] - e.anchor[0][n]) ** 2).sum() for n in params)
    assert float(pen.detach()) > 1e-6
    torch.testing.assert_close(pen.detach(), ref, rtol=1e-5, atol=0)
    twin = mlp([6, 5, 3])
    twin.load_state_dict(model.state_dict())
    twin_tr = _trainer(twin, build_plugins("finetune"), lr=lr, momentum=0.0)
    grads = torch.autograd.grad(F.cross_entropy(twin_tr.forward_logits(x1, None), y1), list(twin.parameters()))
    g_task = dict(zip((n for n, _ in twin.named_parameters()), grads))
    tr.train_step(x1, y1, None)
    for n, p in params.items():
        expected = theta[n] - lr * (g_task[n] + lam * e.fisher[0][n] * (theta[n] - e.anchor[0][n]))
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)
    assert e.last_penalty == pytest.approx(float(ref), rel=1e-5)


def test_sampled_fisher_uses_the_models_own_labels():
    """A model certain of class 0 everywhere: its own labels are all 0, where its loss has
    (almost) no gradient, so the sampled Fisher vanishes; the empirical Fisher with the
    true labels 1 and 2 does not."""
    torch.manual_seed(0)
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(8))
    y = torch.tensor([1, 2] * 4)
    fishers = {}
    for kind in ("sampled", "empirical"):
        model = mlp([6, 5, 3])
        with torch.no_grad():
            model.layers["fc2"].weight.zero_()
            model.layers["fc2"].bias.copy_(torch.tensor([60.0, 0.0, 0.0]))
        plugins = build_plugins("ewc", {"ewc": {"fisher": kind, "fisher_samples": 8, "fisher_batch_size": 2}})
        tr = _trainer(model, plugins)
        assert (tr.forward_logits(x, None).argmax(1) == 0).all()
        plugins.on_task_start(0, None)
        plugins.on_task_end(0, _Task(x, y))
        fishers[kind] = max(float(f.max()) for f in plugins.plugins[0].fisher[0].values())
    assert fishers["sampled"] < 1e-12
    assert fishers["empirical"] > 1e-3


def test_ewc_without_lambda_or_fisher_has_no_penalty():
    torch.manual_seed(0)
    model = mlp([6, 3])
    x, y = _data(8, 6, 9)
    for lam, expect_none in ((0.0, True), (1.0, False)):
        plugins = build_plugins("ewc", {"ewc": {"lam": lam, "fisher_samples": 4}})
        _trainer(model, plugins)
        assert plugins.penalty() is None
        plugins.on_task_start(0, None)
        plugins.on_task_end(0, _Task(x, y))
        assert (plugins.penalty() is None) is expect_none
        if not expect_none:
            assert float(plugins.penalty().detach()) == 0.0  # at the anchor


def test_ewc_separate_keeps_one_fisher_per_task_and_online_decays():
    torch.manual_seed(0)
    model = mlp([6, 3])
    x, y = _data(8, 6, 11)
    sep = build_plugins("ewc", {"ewc": {"online": False, "fisher_samples": 8}})
    tr = _trainer(model, sep)
    onl = build_plugins("ewc", {"ewc": {"online": True, "gamma": 0.25, "fisher_samples": 8}})
    onl.setup(tr)
    fs = []
    for t in range(3):
        for p in (sep, onl):
            p.on_task_start(t, None)
            p.on_task_end(t, _Task(x, y))
        fs.append(sep.plugins[0].fisher[-1])
        with torch.no_grad():
            for prm in model.parameters():
                prm.add_(0.2 * torch.randn(prm.shape, generator=torch.Generator().manual_seed(t)))
    assert len(sep.plugins[0].fisher) == 3 and len(onl.plugins[0].fisher) == 1
    for n in fs[0]:
        expected = 0.25 * (0.25 * fs[0][n] + fs[1][n]) + fs[2][n]
        torch.testing.assert_close(onl.plugins[0].fisher[0][n], expected, rtol=1e-5, atol=1e-12)


def test_gpm_max_rows_draws_from_all_rows_even_when_d_is_smaller():
    """20 rows of dimension 12: a draw of 8 or 19 of them (any rows, not only the first D)
    keeps the dominant direction e11 of rows 12..19; 19 of 20 rows is not all of them."""
    torch.manual_seed(0)
    D = 12
    g = torch.Generator().manual_seed(4)
    x = torch.zeros(20, D)
    x[:12, :6] = torch.rand(12, 6, generator=g) * 0.3
    x[12:, 11] = 1.0
    y = torch.zeros(20, dtype=torch.long)
    bases = {}
    for max_rows in (8, 19, None):
        plugins = build_plugins("gpm", {"gpm": {"layers": ["fc1"], "n_samples": 20, "threshold": [0.999],
                                                "max_rows": max_rows}})
        _trainer(mlp([D, 4, 3]), plugins)
        plugins.on_task_start(0, None)
        plugins.on_task_end(0, _Task(x, y))
        bases[max_rows] = plugins.plugins[0].U["fc1"]
    for U in bases.values():
        assert U.shape[0] >= 1 and float(U[0, 11].abs()) > 0.99  # e11 first: rows 12..19 were drawn
    torch.testing.assert_close(bases[None], gpm_update(x, torch.zeros(0, D), 0.999)[0])
    assert bases[19].shape != bases[None].shape or not torch.allclose(bases[19], bases[None], atol=1e-4)


def test_options_validation():
    from neuroplastic.plugins.ewc import EWCOptions
    from neuroplastic.plugins.gpm import GPMOptions

    for bad in ({"lam": True}, {"lam": "1"}, {"lam": -0.5}, {"gamma": 1.5}, {"gamma": -0.1},
                {"fisher_samples": 0}, {"fisher_samples": True}, {"fisher_batch_size": 0}, {"fisher": "true"}):
        with pytest.raises(ValueError, match="ewc"):
            EWCOptions(**bad)
    assert EWCOptions(lam=0, gamma=0, fisher_samples=1, fisher_batch_size=1).lam == 0
    for bad in ({"threshold": 0.9}, {"threshold": []}, {"threshold": [0.0]}, {"threshold": [1.01]},
                {"threshold": [True]}, {"threshold_inc": -0.1}, {"threshold_inc": "0"}, {"n_samples": 0},
                {"n_samples": True}, {"n_samples": 2.0}, {"activity": "trace"}, {"max_rows": 0},
                {"max_rows": 1.5}, {"layers": "fc1"}):
        with pytest.raises(ValueError, match="gpm"):
            GPMOptions(**bad)
    ok = GPMOptions(threshold=[1, 0.5], threshold_inc=0, n_samples=1, max_rows=None, layers=["fc1"])
    assert ok.max_rows is None and ok.threshold_inc == 0
    assert GPMOptions(max_rows=1).max_rows == 1


@pytest.mark.parametrize("fisher", ["empirical", "sampled"])
def test_fisher_estimate_leaves_the_model_mode_as_it_was(fisher):
    torch.manual_seed(0)
    model = mlp([6, 3])
    plugins = build_plugins("ewc", {"ewc": {"fisher": fisher, "fisher_samples": 4}})
    _trainer(model, plugins)
    x, y = _data(8, 6, 13)
    for mode in (False, True):
        model.train(mode)
        f = plugins.plugins[0].estimate_fisher(ArrayDataset(x, y, 3), None)
        assert model.training is mode
        assert sum(float(v.sum()) for v in f.values()) > 0


def test_ewc_records_before_and_after_a_penalty():
    torch.manual_seed(0)
    model = mlp([6, 3])
    plugins = build_plugins("ewc", {"ewc": {"fisher_samples": 8, "fisher_batch_size": 4}})
    tr = _trainer(model, plugins)
    e = plugins.plugins[0]
    assert e.metrics() == {"ewc": {"fisher_mean": [], "last_penalty": 0.0}}
    x, y = _data(12, 6, 12)  # 8 samples in two full batches of 4, then stop (12 available)
    plugins.on_task_start(0, None)
    plugins.on_task_end(0, _Task(x, y))
    expect = _fisher_by_hand(tr, x, y, 8, 4)
    for n, f in e.fisher[0].items():
        assert torch.isfinite(f).all()
        torch.testing.assert_close(f, expect[n], rtol=1e-4, atol=1e-10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    pen = plugins.penalty()
    assert e.metrics()["ewc"]["last_penalty"] == pytest.approx(float(pen.detach())) and float(pen.detach()) > 0
    rec = e.records()["fisher_mean"]
    assert rec.dtype == torch.float64 and rec.tolist() == pytest.approx(e.fisher_mean)


def test_documented_defaults():
    from neuroplastic.plugins.ewc import EWCOptions
    from neuroplastic.plugins.gpm import GPMOptions

    e = EWCOptions()
    assert (e.lam, e.online, e.gamma, e.fisher_samples, e.fisher_batch_size, e.fisher, e.reset_optimizer, e.seed) \
        == (100.0, True, 1.0, 256, 1, "empirical", True, 0)
    g = GPMOptions()
    assert (g.layers, g.threshold, g.threshold_inc, g.n_samples, g.activity, g.max_rows, g.freeze_non_weights,
            g.reset_optimizer, g.seed) == (None, None, 0.003, 300, "spikes", 8192, True, True, 0)


def test_gpm_unit_energy_is_not_mistaken_for_no_energy():
    # total energy exactly 1 (0.64 + 0.36): the stronger direction is kept (cumulative
    # 0.64 < 0.9), as for any other total
    R = torch.zeros(2, 4, dtype=torch.float64)
    R[0, 2], R[1, 0] = 0.8, 0.6
    U, cap = gpm_update(R, torch.zeros(0, 4, dtype=torch.float64), 0.9)
    assert U.shape == (1, 4) and float(U[0, 2].abs()) == pytest.approx(1.0) and cap == 0.0


def _reloaded_after_one_task(method: str, opts: dict, seed: int):
    """The plugin of ``method`` after task 0 and the start of task 1, its counters cleared
    and then loaded back from its own ``state_dict``."""
    torch.manual_seed(0)
    plugins = build_plugins(method, {method: opts})
    _trainer(mlp([6, 5, 3]), plugins)
    p = plugins.plugins[0]
    x, y = _data(8, 6, seed)
    p.on_task_start(0, None)
    p.on_task_end(0, _Task(x, y))
    p.on_task_start(1, None)
    state = p.state_dict()
    p.task = None
    if hasattr(p, "sizes"):
        p.sizes = {}
    p.load_state_dict(state)
    return p


def test_gpm_state_roundtrip_keeps_task_and_sizes_integers():
    g = _reloaded_after_one_task("gpm", {"n_samples": 8}, 21)
    assert type(g.task) is int and g.task == 1
    assert g.sizes and all(type(k) is int for v in g.sizes.values() for k in v)  # counts, not floats


def test_ewc_fisher_of_a_single_sample():
    torch.manual_seed(0)
    model = mlp([6, 5, 3])
    plugins = build_plugins("ewc", {"ewc": {"fisher_samples": 1, "fisher_batch_size": 4}})
    tr = _trainer(model, plugins)
    x, y = _data(6, 6, 22)
    plugins.on_task_start(0, None)
    plugins.on_task_end(0, _Task(x, y))
    expect = _fisher_by_hand(tr, x, y, 1, 1)
    for n, f in plugins.plugins[0].fisher[0].items():
        torch.testing.assert_close(f, expect[n], rtol=1e-5, atol=1e-12)


def test_ewc_state_roundtrip_keeps_the_task_an_integer():
    e = _reloaded_after_one_task("ewc", {"fisher_samples": 4}, 23)
    assert type(e.task) is int and e.task == 1
