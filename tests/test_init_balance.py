"""Data-driven starting scale of deeper hidden spiking layers (``neuroplastic/init_balance.py``):
each hidden spiking layer after the first starts with the first one's membrane spread; the
first layer, the readout and one-hidden-layer networks are untouched; a run with two hidden
layers learns where PyTorch's initialisation leaves the second layer silent."""

from __future__ import annotations

import pytest
import torch

from neuroplastic.config import DataConfig, ModelConfig, RunConfig
from neuroplastic.continual import _build, build_stream, run
from neuroplastic.init_balance import balance_hidden_layers, needs_balance
from neuroplastic.network import cnn, mlp


def _std(net, x, name):
    with torch.no_grad(), net.recording(membranes=True):
        net(x)
        return float(net.recordings[name]["v"].std())


def _batch(n_in=100, B=64, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(B, n_in, generator=g)
    return img.unsqueeze(0).expand(T, B, n_in).contiguous()  # the direct encoder's constant current


def test_every_hidden_layer_starts_like_the_first():
    torch.manual_seed(0)
    net = mlp([100, 200, 200, 200, 10])
    x = _batch()
    before = {n: _std(net, x, n) for n in ("lif1", "lif2", "lif3")}
    assert before["lif2"] < 0.5 * before["lif1"]  # PyTorch's init: the spike-fed layers are quieter
    w1, w_out = net.layers["fc1"].weight.clone(), net.layers["fc4"].weight.clone()
    gains = balance_hidden_layers(net, x)
    assert set(gains) == {"fc2", "fc3"} and all(g > 1 for g in gains.values())
    ref = _std(net, x, "lif1")
    assert ref == pytest.approx(before["lif1"])
    for name in ("lif2", "lif3"):
        assert _std(net, x, name) == pytest.approx(ref, rel=0.02)
    assert torch.equal(net.layers["fc1"].weight, w1) and torch.equal(net.layers["fc4"].weight, w_out)
    net.train()
    balance_hidden_layers(net, x)
    assert net.training


def test_one_hidden_layer_and_spiking_readouts_are_left_alone():
    torch.manual_seed(0)
    one = mlp([100, 50, 10])
    assert not needs_balance(one) and balance_hidden_layers(one, _batch()) == {}
    spiking_readout = mlp([100, 50, 10], readout="spikes")  # the readout is a LIF: still left alone
    assert not needs_balance(spiking_readout)
    conv = cnn((1, 8, 8), channels=(4, 8), n_out=3)
    assert needs_balance(conv)
    x = torch.rand(4, 16, 1, 8, 8)
    gains = balance_hidden_layers(conv, x)
    assert list(gains) == ["conv2"]  # through the pooling layer to the conv that feeds lif2
    assert _std(conv, x, "lif2") == pytest.approx(_std(conv, x, "lif1"), rel=0.02)


def _cfg(out, hidden, balance, tasks=1):
    return RunConfig(methods=["finetune"], out=str(out), quiet=True, checkpoint_every=0.0,
                     data=DataConfig(tasks=tasks, max_per_task=1000),
                     model=ModelConfig(hidden=hidden, balance_init=balance))


def test_the_run_builds_the_same_balanced_network_from_its_seed(tmp_path):
    cfg = _cfg(tmp_path, [64, 64], True)
    stream = build_stream(cfg)
    a, b = _build(cfg, "finetune", stream), _build(cfg, "finetune", stream)
    plain = _build(_cfg(tmp_path, [64, 64], False), "finetune", stream)
    for (k, va), vb, vp in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                               plain.model.state_dict().values()):
        assert torch.equal(va, vb), k
        assert torch.equal(va, vp) == (not k.startswith("layers.fc2")), k  # only fc2 scaled
    one = _cfg(tmp_path, [64], True)
    m1 = _build(one, "finetune", stream).model.state_dict()
    m0 = _build(_cfg(tmp_path, [64], False), "finetune", stream).model.state_dict()
    assert all(torch.equal(m1[k], m0[k]) for k in m1)  # one hidden layer: the default run is unchanged


def test_two_hidden_layers_learn_with_it_and_barely_without(tmp_path):
    acc = {b: run(_cfg(tmp_path / str(b), [128, 128], b), echo=lambda *a: None)["finetune"]["acc"]
           for b in (True, False)}
    assert acc[True] > 75 and acc[True] > acc[False] + 30, acc  # measured: 91.1 and 40.2
