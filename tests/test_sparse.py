"""Mask utilities: layer densities (ERK with redistribution, uniform, explicit), exact
random masks, optimizer-state masking, dense gradients, loading sparse checkpoints."""

from __future__ import annotations

import pytest
import torch

from neuroplastic.encoders import make_encoder
from neuroplastic.errors import UserError
from neuroplastic.network import cnn, mlp
from neuroplastic.plugins import PluginList, build_plugins
from neuroplastic.plugins.base import Plugin
from neuroplastic.sparse import (
    DenseGrad,
    erk_densities,
    init_masks,
    layer_densities,
    load_masks,
    load_sparse_state_dict,
    mask_optimizer_state,
    masks_in_state_dict,
    model_masks,
    random_mask,
    uniform_densities,
)
from neuroplastic.synapses import Conv2d, Linear
from neuroplastic.training import Trainer, TrainSettings


def _nnz(d, shapes):
    return sum(d[n] * torch.Size(s).numel() for n, s in shapes.items())


def test_erk_hand_computed_with_redistribution():
    # raw (n_in + n_out) / (n_in n_out): 8/16 = 0.5 for "a", 200/10000 = 0.02 for "b".
    # eps = 0.5 * 10016 / (0.5*16 + 0.02*10000) = 24.08 -> a would get 12.04 > 1: dense;
    # again over b: eps = (0.5*10000 - 0.5*16) / (0.02*10000) = 24.96 -> d_b = 0.4992.
    d = erk_densities({"a": (4, 4), "b": (100, 100)}, 0.5)
    assert d["a"] == 1.0
    assert d["b"] == pytest.approx(0.4992, abs=1e-12)


@pytest.mark.parametrize("density", [0.02, 0.1, 0.3, 0.6, 0.95])
def test_erk_follows_formula(density):
    shapes = {"fc1": (256, 784), "fc2": (256, 256), "fc3": (10, 256), "conv": (16, 1, 3, 3)}
    d = erk_densities(shapes, density)
    raw = {n: sum(s) / torch.Size(s).numel() for n, s in shapes.items()}
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert _nnz(d, shapes) == pytest.approx(density * total, rel=1e-9)
    assert all(0 <= v <= 1 for v in d.values())
    sparse = [n for n in shapes if d[n] < 1]
    dense = [n for n in shapes if d[n] == 1]
    eps = {d[n] / raw[n] for n in sparse}
    assert max(eps) == pytest.approx(min(eps), rel=1e-9)  # one epsilon for every sparse layer
    if dense:  # redistributed layers are the ones with the largest raw probability
        assert min(raw[n] for n in dense) > max(raw[n] for n in sparse)
        assert all(next(iter(eps)) * raw[n] >= 1 for n in dense)


def test_erk_redistributes_repeatedly():
    # two small layers both end up dense at a high density
    shapes = {"big": (500, 500), "s1": (3, 3), "s2": (6, 6)}
    d = erk_densities(shapes, 0.9)
    assert d["s1"] == 1.0 and d["s2"] == 1.0
    assert _nnz(d, shapes) == pytest.approx(0.9 * (250000 + 9 + 36))


def test_uniform_and_explicit():
    shapes = {"a": (4, 5), "b": (5, 6)}
    assert uniform_densities(shapes, 0.3) == {"a": 0.3, "b": 0.3}
    assert layer_densities(shapes, 0.3, "explicit", [0.2, 0.7]) == {"a": 0.2, "b": 0.7}
    assert layer_densities(shapes, 0.3, "explicit", {"a": 0.5, "b": 1.0}) == {"a": 0.5, "b": 1.0}
    with pytest.raises(UserError, match="layer_density"):
        layer_densities(shapes, 0.3, "explicit", [0.2])
    with pytest.raises(UserError, match="distribution"):
        layer_densities(shapes, 0.3, "gaussian")


def test_random_mask_exact_count():
    g = torch.Generator().manual_seed(0)
    for density in (0.0, 0.013, 0.1, 0.5, 1.0):
        m = random_mask((37, 53), density, g)
        assert m.dtype == torch.bool and int(m.sum()) == round(density * 37 * 53)


def test_init_masks_on_mlp():
    net = mlp([784, 64, 10])
    dens = init_masks(net, 0.1, "erk", generator=torch.Generator().manual_seed(1))
    masks = model_masks(net)
    assert set(masks) == {"fc1", "fc2"}
    for name, layer in net.synapses():
        assert int(layer.mask.sum()) == round(dens[name] * layer.weight.numel())
        assert bool((layer.weight[~layer.mask] == 0).all())
    total = sum(m.weight.numel() for _, m in net.synapses())
    assert sum(int(m.mask.sum()) for _, m in net.synapses()) == pytest.approx(0.1 * total, abs=2)


class _Densify(Plugin):
    """Stands in for a projection (HLOP/GPM) that runs before the mask: makes every
    gradient entry nonzero."""

    name = "densify"

    def after_backward(self):
        for p in self.trainer.model.parameters():
            if p.grad is not None:
                p.grad.add_(0.01)


def _tiny_trainer(method_plugins, optimizer="sgd", hidden=16, seed=0):
    torch.manual_seed(seed)
    net = mlp([20, hidden, 4])
    s = TrainSettings(
        optimizer=optimizer, lr=0.05, momentum=0.9, weight_decay=1e-3, time_steps=3, batch_size=8
    )
    return Trainer(net, make_encoder("rate", 3), s, method_plugins, seed=seed, quiet=True)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_stay_zero_through_optimizer_steps(optimizer):
    # static masks; a dense gradient transform runs first (like "hlop+static")
    static = build_plugins("static", {"static": {"sparsity": 0.8}}).plugins[0]
    tr = _tiny_trainer(PluginList([_Densify(), static]), optimizer)
    masks = {n: m.mask.clone() for n, m in tr.model.synapses()}
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        tr.train_step(torch.rand(8, 20, generator=g), torch.randint(0, 4, (8,), generator=g), None)
        for n, m in tr.model.synapses():
            assert torch.equal(m.mask, masks[n])
            assert bool((m.weight[~m.mask] == 0).all())
            assert bool((m.weight.grad[~m.mask] == 0).all())
            state = tr.optimizer.state[m.weight]
            keys = ["momentum_buffer"] if optimizer == "sgd" else ["exp_avg", "exp_avg_sq"]
            for k in keys:
                assert bool((state[k][~m.mask] == 0).all()), k
                assert bool((state[k][m.mask] != 0).any()), k


def test_without_mask_plugin_momentum_leaks():
    # the control: the same dense transform with a bare mask and no plugin un-zeros weights
    tr = _tiny_trainer(PluginList([_Densify()]))
    for _, m in tr.model.synapses():
        m.set_mask(torch.rand(m.weight.shape) < 0.3)
    tr.train_step(torch.rand(8, 20), torch.randint(0, 4, (8,)), None)
    assert any(bool((m.weight[~m.mask] != 0).any()) for _, m in tr.model.synapses())


def test_mask_optimizer_state_keys():
    lin = Linear(5, 4)
    lin.set_mask(torch.rand(4, 5) < 0.5)
    net = torch.nn.Sequential(lin)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net[0].weight.grad = torch.ones(4, 5)
    net[0].bias.grad = torch.ones(4)
    opt.step()
    mask_optimizer_state(opt, net)
    st = opt.state[lin.weight]
    assert bool((st["exp_avg"][~lin.mask] == 0).all()) and bool(
        (st["exp_avg_sq"][~lin.mask] == 0).all()
    )
    assert bool((opt.state[lin.bias]["exp_avg"] != 0).all())  # biases untouched


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_dense_grad_matches_unmasked_autograd(kind):
    torch.manual_seed(0)
    if kind == "linear":
        layer, x = Linear(6, 5), torch.rand(3, 4, 6)
    else:
        layer, x = Conv2d(2, 3, 3, padding=1, stride=1), torch.rand(3, 2, 2, 5, 5)
    layer.set_mask(torch.rand(layer.weight.shape) < 0.4)
    dg = DenseGrad([("l", layer)])
    dg.enabled = True
    y = layer(x)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    # the same forward without the mask (masked weights are 0, so same output) has a dense grad
    ref = Linear(6, 5) if kind == "linear" else Conv2d(2, 3, 3, padding=1)
    ref.load_state_dict(
        {"weight": layer.weight.detach().clone(), "bias": layer.bias.detach().clone()}
    )
    y2 = ref(x)
    assert torch.allclose(y, y2)
    (y2 * torch.linspace(-1, 1, y2.numel()).reshape(y2.shape)).sum().backward()
    assert torch.allclose(dg.grads["l"], ref.weight.grad, atol=1e-5)
    assert bool((layer.weight.grad[~layer.mask] == 0).all())  # autograd's own grad is masked
    assert bool((dg.grads["l"][~layer.mask] != 0).any())
    dg.enabled = False
    dg.clear()
    layer(x).sum().backward()
    assert dg.grads == {}
    dg.remove()


def test_load_masks_into_fresh_model():
    net = cnn((1, 8, 8), (4,), 3)
    init_masks(net, 0.3, "uniform", generator=torch.Generator().manual_seed(0))
    state = net.state_dict()
    assert set(masks_in_state_dict(state)) == {"layers.conv1", "layers.fc"}
    fresh = cnn((1, 8, 8), (4,), 3)
    with pytest.raises(RuntimeError, match="mask"):
        fresh.load_state_dict(state)
    fresh = cnn((1, 8, 8), (4,), 3)
    load_sparse_state_dict(fresh, state)
    for (_, a), (_, b) in zip(net.synapses(), fresh.synapses()):
        assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)
    with pytest.raises(UserError, match="not a synapse"):
        load_masks(mlp([4, 3]), {"layers.lif1.mask": torch.ones(3, dtype=torch.bool)})
