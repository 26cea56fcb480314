"""Plugins composed, in both orders, and the dormant monitor at task boundaries.

``hlop+granet`` projects, then masks: the gradient is exactly zero off the mask (and no
longer exactly orthogonal to the old subspace); ``granet+hlop`` masks, then projects:
exactly orthogonal. Either way pruned weights stay 0 after the step. ``hlop+ewc`` and
``ewc+hlop`` train identically (the penalty's gradient is projected in both)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from neuroplastic.datasets import ArrayDataset

from neuroplastic.dormant import perturb_factor, scores_from_rates
from neuroplastic.encoders import make_encoder
from neuroplastic.network import mlp
from neuroplastic.plugins import build_plugins
from neuroplastic.plugins.projection import orthonormalize
from neuroplastic.training import Trainer, TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")

PAPER = {"hebb_every": 1, "project_every": 1, "lr_scale": "none", "lr": 0.01, "lr_input": 0.001,
         "energy_samples": 0, "linear_mode": "weight"}


def _trainer(model, plugins, T=3, lr=0.1, momentum=0.9, encoder="direct"):
    s = TrainSettings(epochs=1, batch_size=16, lr=lr, momentum=momentum, time_steps=T)
    return Trainer(model, make_encoder(encoder, T), s, plugins, "cpu", 0, True)


class _Task:
    def __init__(self, x, y):
        self.train = ArrayDataset(x, y, 3)
        self.head = None


def _protected(method, seed=0, opts=None):
    """``method`` (with hlop in it) on mlp 12-8-3, task 0 finished with a fixed 4-dim old
    subspace of fc1, task 1 started."""
    torch.manual_seed(seed)
    model = mlp([12, 8, 3])
    cfg = {"hlop": {"layers": ["fc1"], "init_size": [4], "inc_size": [2], **PAPER}}
    cfg.update(opts or {})
    plugins = build_plugins(method, cfg)
    tr = _trainer(model, plugins)
    h = next(p for p in plugins.plugins if p.name == "hlop")
    basis = orthonormalize(torch.randn(4, 12, generator=torch.Generator().manual_seed(5)))
    x0, y0 = torch.rand(16, 12, generator=torch.Generator().manual_seed(6)), torch.randint(0, 3, (16,))
    plugins.on_task_start(0, None)
    h.H["fc1"] = basis.clone()
    h.mom["fc1"] = torch.zeros(0, 12)
    plugins.on_task_end(0, _Task(x0, y0))
    plugins.on_task_start(1, None)
    tr.task_id = 1
    tr.refresh_trainable()
    return tr, plugins, basis


@pytest.mark.parametrize("order", ["hlop+rigl", "rigl+hlop"])
def test_projection_and_mask_in_both_orders(order):
    tr, plugins, B = _protected(order, opts={"rigl": {"sparsity": 0.5, "unit": "step", "update_every": 1000}})
    fc1 = tr.model.layers["fc1"]
    mask = fc1.mask.clone()
    assert 0 < int(mask.sum()) < mask.numel()
    x, y = torch.rand(16, 12, generator=torch.Generator().manual_seed(7)), torch.randint(0, 3, (16,))
    F.cross_entropy(tr.forward_logits(x, None), y).backward()
    g = fc1.weight.grad.clone()
    assert bool((g[~mask] == 0).all())  # the forward pass uses weight * mask
    plugins.after_backward()
    projected = g - (g @ B.T) @ B
    if order == "hlop+rigl":
        torch.testing.assert_close(fc1.weight.grad, projected * mask, rtol=1e-5, atol=1e-7)
        assert bool((fc1.weight.grad[~mask] == 0).all())
        assert float((fc1.weight.grad @ B.T).abs().max()) > 1e-5  # the masked projection leaks
    else:
        torch.testing.assert_close(fc1.weight.grad, projected, rtol=1e-5, atol=1e-7)
        assert float((fc1.weight.grad @ B.T).abs().max()) < 1e-6
        assert float(fc1.weight.grad[~mask].abs().max()) > 1e-5
    # and through whole steps, in either order: pruned weights stay exactly 0
    for _ in range(3):
        tr.train_step(x, y, None)
        assert bool((fc1.weight[~fc1.mask] == 0).all())
        assert not fc1.bias.requires_grad  # HLOP's freezing holds in the composition


def test_hlop_and_ewc_commute_and_the_penalty_is_projected():
    weights = {}
    for order in ("hlop+ewc", "ewc+hlop"):
        tr, plugins, B = _protected(order, opts={"ewc": {"lam": 500.0, "fisher_samples": 16}})
        fc1 = tr.model.layers["fc1"]
        ewc = next(p for p in plugins.plugins if p.name == "ewc")
        W0 = fc1.weight.detach().clone()
        with torch.no_grad():  # leave the anchor, so the penalty pulls
            fc1.weight.add_(0.3 * torch.randn(fc1.weight.shape, generator=torch.Generator().manual_seed(8)))
        W1 = fc1.weight.detach().clone()
        key = next(k for k in ewc.anchor[0] if k.endswith("fc1.weight"))
        assert float(plugins.penalty().detach()) > 0 and torch.equal(ewc.anchor[0][key], W0)
        gen = torch.Generator().manual_seed(9)
        for _ in range(3):
            tr.train_step(torch.rand(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen), None)
        dW = fc1.weight.detach() - W1
        assert float((dW @ B.T).abs().max()) < 1e-5  # the penalty's pull was projected too
        weights[order] = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    for n, w in weights["hlop+ewc"].items():
        torch.testing.assert_close(weights["ewc+hlop"][n], w, rtol=0, atol=1e-7)


def test_granet_then_hlop_keeps_training_sparse_through_a_task_boundary():
    """``granet+hlop`` over two tasks: the schedule reaches its target in task 0; in task 1
    the projection runs last (exactly orthogonal steps) and regrowth keeps the density."""
    torch.manual_seed(1)
    model = mlp([12, 8, 3])
    plugins = build_plugins("granet+hlop", {
        "granet": {"sparsity": 0.6, "unit": "step", "start": 0, "end": 4, "update_every": 2, "death_rate": 0.3},
        "hlop": {"init_size": [4, 3], "inc_size": [2, 2], **PAPER}})
    tr = _trainer(model, plugins)
    gr, h = plugins.plugins
    gr.set_run_length(6, n_tasks=2)
    gen = torch.Generator().manual_seed(10)
    data = [(torch.rand(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(6)]
    plugins.on_task_start(0, None)
    tr.task_id = 0
    tr.refresh_trainable()
    for x, y in data:
        tr.train_step(x, y, None)
    plugins.on_task_end(0, None)
    N = sum(m.weight.numel() for _, m in model.synapses())
    n_kept = sum(int(m.mask.sum()) for _, m in model.synapses())
    assert n_kept == round(0.4 * N)
    plugins.on_task_start(1, None)
    tr.task_id = 1
    tr.refresh_trainable()
    H_old = h.H["fc1"][: h.n_old["fc1"]].clone()
    fc1 = model.layers["fc1"]
    for x, y in data:
        W = fc1.weight.detach().clone()
        tr.train_step(x, y, None)
        assert bool((fc1.weight[~fc1.mask] == 0).all())
        assert sum(int(m.mask.sum()) for _, m in model.synapses()) == n_kept
        # the gradient the optimizer saw: masked, then projected with the learned (nearly
        # orthonormal) H_old: almost nothing left along the old subspace
        g = fc1.weight.grad
        assert float((g @ H_old.T).abs().max()) < 1e-2 * float(g.abs().max())
        assert float(fc1.weight.grad.abs().max()) > 0 and not torch.equal(fc1.weight.detach(), W)
    assert gr.task_id == 1 and h.task == 1


# -- the dormant monitor ------------------------------------------------------------------------------------
def _dormant_run(opts):
    torch.manual_seed(2)
    model = mlp([12, 8, 3])
    with torch.no_grad():
        model.layers["fc1"].weight[:3] = -5.0  # three hidden neurons that never fire
    plugins = build_plugins("dormant", {"dormant": opts})
    tr = _trainer(model, plugins, encoder="rate", T=4)
    return tr, plugins, plugins.plugins[0]


def test_dormant_ratio_logged_at_task_end_from_the_training_minibatches():
    tr, plugins, d = _dormant_run({"every": 1000})
    spikes = []
    hook = tr.model.layers["lif1"].register_forward_hook(lambda m, i, o: spikes.append(o.detach()))
    gen = torch.Generator().manual_seed(11)
    plugins.on_task_start(0, None)
    for _ in range(3):
        tr.train_step(torch.rand(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen), None)
    hook.remove()
    with torch.no_grad():  # an evaluation pass in between: not counted
        tr.forward_logits(torch.rand(16, 12), None)
    plugins.on_task_end(0, None)
    rates = torch.cat([s.reshape(-1, 8) for s in spikes]).mean(0)
    expected = float((scores_from_rates(rates) <= 0.025).float().mean())
    assert expected >= 3 / 8
    assert d.hist["step"] == [3] and d.hist["task"] == [0]
    assert d.hist["overall"][0] == pytest.approx(expected)
    assert d.hist["layers"]["lif1"][0] == pytest.approx(expected)
    assert d.metrics()["dormant_train"]["overall"] == pytest.approx(expected)
    # nothing new accumulated: no second record at a second task end
    plugins.on_task_end(0, None)
    assert d.hist["step"] == [3]


def test_drm_perturbation_at_later_task_starts_in_closed_form():
    tr, plugins, d = _dormant_run({"every": 2, "perturb_on_task_start": True, "perturb_target": "initial"})
    init = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    gen = torch.Generator().manual_seed(12)
    plugins.on_task_start(0, None)
    for _ in range(4):
        tr.train_step(torch.rand(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen), None)
    plugins.on_task_end(0, None)
    beta = d.last["overall"]
    assert beta >= 3 / 8
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    plugins.on_task_start(0, None)  # task 0 never perturbs
    for n, p in tr.model.named_parameters():
        assert torch.equal(p.detach(), before[n])
    assert len(tr.optimizer.state) > 0
    plugins.on_task_start(1, None)
    a = perturb_factor(beta, 2.0, 0.2, 0.9)
    assert a == pytest.approx(min(max(1 - 2 * beta, 0.2), 0.9))
    for n, p in tr.model.named_parameters():
        if n.split(".")[-2].startswith("fc"):
            torch.testing.assert_close(p.detach(), a * before[n] + (1 - a) * init[n], rtol=1e-6, atol=1e-7)
            assert not tr.optimizer.state.get(p)  # its optimizer state was reset
        else:
            assert torch.equal(p.detach(), before[n])
    assert d.hist["perturb_factor"] == [pytest.approx(a)] and d.hist["perturb_beta"] == [beta]
    assert d.metrics()["perturbations"] == 1
