"""GPM (basis from an SVD, projection) and EWC (Fisher, penalty, online variant)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from neuroplastic.datasets import ArrayDataset

from neuroplastic.encoders import make_encoder
from neuroplastic.network import mlp
from neuroplastic.plugins import build_plugins
from neuroplastic.plugins.gpm import gpm_update
from neuroplastic.training import Trainer, TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def _projector(U: torch.Tensor) -> torch.Tensor:
    return U.double().T @ U.double()


def test_gpm_basis_matches_svd():
    gen = torch.Generator().manual_seed(0)
    D = 30
    scales = torch.tensor([5.0, 3.0, 2.0, 1.0] + [0.05] * (D - 4))
    R = torch.randn(200, D, generator=gen) * scales
    U, cap = gpm_update(R, torch.zeros(0, D), 0.97)
    # Eq. 5: the leading right singular vectors whose cumulative energy is below 0.97
    _, S, Vh = torch.linalg.svd(R.double(), full_matrices=False)
    ratio = torch.cumsum(S**2, 0) / (S**2).sum()
    r = int((ratio < 0.97).sum())
    assert cap == 0.0 and U.shape == (r, D) and r >= 3
    assert torch.allclose(_projector(U), _projector(Vh[:r]), atol=1e-5)
    # Eq. 8/9: a second task; the old basis is kept, new directions are orthogonal to it
    R2 = torch.randn(200, D, generator=gen) * scales.flip(0)
    U2, cap2 = gpm_update(R2, U, 0.97)
    assert torch.equal(U2[: U.shape[0]], U)
    assert torch.allclose(U2.double() @ U2.double().T, torch.eye(U2.shape[0], dtype=torch.float64), atol=1e-5)
    expect = float(((R2.double() @ U.double().T) ** 2).sum() / (R2.double() ** 2).sum())
    assert abs(cap2 - expect) < 1e-6
    R_hat = R2.double() - (R2.double() @ U.double().T) @ U.double()
    _, S_hat, V_hat = torch.linalg.svd(R_hat, full_matrices=False)
    k = U2.shape[0] - U.shape[0]
    assert k > 0
    assert torch.allclose(_projector(U2[U.shape[0]:]), _projector(V_hat[:k]), atol=1e-4)
    total = float((R2.double() ** 2).sum())
    assert cap2 + float((S_hat[:k] ** 2).sum()) / total >= 0.97
    assert cap2 + float((S_hat[: k - 1] ** 2).sum()) / total < 0.97
    # nothing to add when the basis already holds the data
    U3, cap3 = gpm_update(R2, U2, 0.5)
    assert U3 is U2 and cap3 > 0.97


def _trainer(model, plugins, T=2, lr=0.1):
    s = TrainSettings(epochs=1, batch_size=16, lr=lr, momentum=0.0, time_steps=T)
    return Trainer(model, make_encoder("direct", T), s, plugins, "cpu", 0, True)


class _Task:
    def __init__(self, x, y, head=None):
        self.train = ArrayDataset(x, y, int(y.max()) + 1)
        self.head = head


def test_gpm_projects_gradients_and_keeps_old_responses():
    torch.manual_seed(0)
    D = 16
    gen = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(D, 3, generator=gen)).Q.T  # task 0 lives in 3 dims
    x0 = torch.randn(64, 3, generator=gen) @ basis
    y0 = torch.randint(0, 4, (64,), generator=gen)
    model = mlp([D, 4])
    plugins = build_plugins("gpm", {"gpm": {"n_samples": 64, "threshold": [0.999]}})
    tr = _trainer(model, plugins)
    plugins.on_task_start(0, None)
    tr.train_task([(ArrayDataset(x0, y0, 4), None)], 0)
    plugins.on_task_end(0, _Task(x0, y0))
    g = plugins.plugins[0]
    U = g.U["fc1"]
    # GPM's Eq. 5 keeps the directions *below* the threshold: 2 of the 3 here
    assert 1 <= g.sizes["fc1"][0] <= 3
    assert torch.allclose(U.double() @ _projector(basis), U.double(), atol=1e-4)  # inside the data span
    probe = torch.randn(32, U.shape[0], generator=gen) @ U  # inputs inside the stored basis
    with torch.no_grad():
        before = tr.forward_logits(probe, None)
    plugins.on_task_start(1, None)
    x1, y1 = torch.randn(64, D, generator=gen), torch.randint(0, 4, (64,), generator=gen)
    w0 = model.layers["fc1"].weight.detach().clone()
    tr.train_task([(ArrayDataset(x1, y1, 4), None)], 1)
    assert not torch.allclose(model.layers["fc1"].weight, w0)
    with torch.no_grad():
        after = tr.forward_logits(probe, None)
    assert (after - before).abs().max() < 1e-4
    gr = model.layers["fc1"].weight.grad
    assert (gr @ g.U["fc1"].T).abs().max() < 1e-6


def test_ewc_penalty_matches_formula_and_online_accumulation():
    torch.manual_seed(0)
    model = mlp([6, 5, 3])
    plugins = build_plugins("ewc", {"ewc": {"lam": 7.0, "gamma": 0.5, "fisher_samples": 8,
                                            "fisher_batch_size": 1}})
    tr = _trainer(model, plugins)
    e = plugins.plugins[0]
    assert plugins.penalty() is None  # nothing to protect before task 0 ends
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    plugins.on_task_start(0, None)
    plugins.on_task_end(0, _Task(x, y))
    # the Fisher: mean over samples of squared per-sample gradients
    params = dict(model.named_parameters())
    expect = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(8):
        model.zero_grad()
        logits = tr.forward_logits(x[i:i + 1], None, torch.Generator().manual_seed(0))
        F.cross_entropy(logits, y[i:i + 1]).backward()
        for n, p in params.items():
            expect[n] += p.grad ** 2 / 8
    model.zero_grad()
    for n in params:
        assert torch.allclose(e.fisher[0][n], expect[n], rtol=1e-4, atol=1e-10)
    # move the parameters and compare the penalty to lambda/2 sum F (theta - theta*)^2
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pen = plugins.penalty()
    ref = 0.5 * 7.0 * sum((e.fisher[0][n] * (p - e.anchor[0][n]) ** 2).sum() for n, p in params.items())
    assert torch.allclose(pen, ref)
    pen.backward()  # differentiable in the parameters
    assert model.layers["fc1"].weight.grad is not None
    # online: F <- gamma F_old + F_new, anchor <- newest parameters
    F_old = {n: f.clone() for n, f in e.fisher[0].items()}
    plugins.on_task_start(1, None)
    plugins.on_task_end(1, _Task(x, y))
    F_new = e.estimate_fisher(_Task(x, y).train, None)
    for n in params:
        assert torch.allclose(e.fisher[0][n], 0.5 * F_old[n] + F_new[n], rtol=1e-4, atol=1e-10)
        assert torch.equal(e.anchor[0][n], params[n].detach())
    assert len(e.fisher) == 1


def test_ewc_separate_penalties_and_state_roundtrip(tmp_path):
    """Separate penalties (one Fisher and one anchor per task) survive a save/load: the
    loaded tensors are the saved ones, and the penalty *away from the anchors* (where it
    is not trivially 0) is the same, term by term, as before saving."""
    torch.manual_seed(0)
    model = mlp([6, 3])
    plugins = build_plugins("ewc", {"ewc": {"online": False, "fisher_samples": 4}})
    _trainer(model, plugins)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    for t in range(2):
        plugins.on_task_start(t, None)
        plugins.on_task_end(t, _Task(x, y))
        with torch.no_grad():  # "train": the next task's anchor differs from this one
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    e = plugins.plugins[0]
    assert len(e.fisher) == 2 and len(e.anchor) == 2
    for n in e.fisher[0]:
        assert not torch.equal(e.anchor[0][n], e.anchor[1][n])
        assert float(e.fisher[0][n].sum()) > 0
    torch.save(plugins.state_dict(), tmp_path / "s.pt")
    other = build_plugins("ewc", {"ewc": {"online": False}})
    twin = mlp([6, 3])
    twin.load_state_dict(model.state_dict())
    _trainer(twin, other)
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    o = other.plugins[0]
    # the loaded state: every Fisher and anchor, exactly
    assert o.task == e.task == 1 and o.fisher_mean == e.fisher_mean
    assert len(o.fisher) == len(o.anchor) == 2
    for mine, theirs in ((e.fisher, o.fisher), (e.anchor, o.anchor)):
        for d, d2 in zip(mine, theirs):
            assert set(d2) == set(d)
            for n in d:
                assert torch.equal(d2[n], d[n]), n
    # the penalty away from both anchors (the weights were moved after the last task):
    # not 0, the same in both, and what the formula gives with the saved tensors
    pen, pen2 = plugins.penalty(), other.penalty()
    params = dict(model.named_parameters())
    ref = 0.5 * e.opts.lam * sum((f[n] * (params[n].detach() - a[n]) ** 2).sum()
                                 for f, a in zip(e.fisher, e.anchor) for n in f)
    assert float(pen.detach()) > 1e-3 * e.opts.lam
    assert torch.allclose(pen, ref, rtol=1e-5)
    assert torch.allclose(pen2, pen, rtol=1e-5, atol=0)
    # and its gradient, which is what training sees
    pen.backward()
    pen2.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(dict(twin.named_parameters())[n].grad, p.grad, rtol=1e-5, atol=1e-12), n


def test_gpm_state_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = mlp([6, 4, 3])
    plugins = build_plugins("gpm", {"gpm": {"n_samples": 8}})
    _trainer(model, plugins)
    x, y = torch.rand(8, 6), torch.randint(0, 3, (8,))
    plugins.on_task_start(0, None)
    plugins.on_task_end(0, _Task(x, y))
    torch.save(plugins.state_dict(), tmp_path / "s.pt")
    other = build_plugins("gpm", {"gpm": {"n_samples": 8}})
    _trainer(mlp([6, 4, 3]), other)
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for n, U in plugins.plugins[0].U.items():
        assert torch.equal(other.plugins[0].U[n], U)


def test_two_task_run_gpm_ewc(tmp_path):
    from neuroplastic.config import config_from_dict
    from neuroplastic.continual import run
    from neuroplastic.runfile import read_run_h5

    cfg = config_from_dict({
        "methods": ["gpm", "ewc"], "seed": 0, "out": str(tmp_path), "quiet": True,
        "data": {"dataset": "digits", "stream": "split", "tasks": 2, "max_per_task": 48},
        "model": {"hidden": [16]},
        "train": {"epochs": 1, "batch_size": 32, "time_steps": 2},
        "gpm": {"n_samples": 32}, "ewc": {"fisher_samples": 16},
    })
    run(cfg, echo=lambda *a: None)
    gm = json.loads((tmp_path / "gpm" / "metrics.json").read_text())
    # multi-head split stream: the readout (per-task heads) is not projected
    assert gm["gpm"]["layers"] == ["fc1"] and len(gm["gpm"]["basis_sizes"]["fc1"]) == 2
    rec = read_run_h5(tmp_path / "gpm" / "run.h5")["plugins"]["gpm"]
    assert rec["fc1"]["U"].shape[1] == 784
    em = json.loads((tmp_path / "ewc" / "metrics.json").read_text())
    assert len(em["ewc"]["fisher_mean"]) == 2
    ck = torch.load(tmp_path / "ewc" / "ckpt_task1.pt", weights_only=True)
    assert "fc1.weight" in ck["plugins"]["ewc"]["fisher"][0] or any(
        k.endswith("fc1.weight") for k in ck["plugins"]["ewc"]["fisher"][0])
