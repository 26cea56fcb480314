"""Dormant ratio on hand-made spike tensors, the firing-rate monitor, DrM's perturbation
and the ``dormant`` plugin."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuroplastic.dormant import (
    FiringRateMonitor,
    dormant_mask,
    dormant_ratio,
    dormant_ratios,
    neuron_scores,
    perturb_factor,
    postsynaptic_neurons,
    scores_from_rates,
)
from neuroplastic.encoders import make_encoder
from neuroplastic.errors import UserError
from neuroplastic.network import cnn, mlp
from neuroplastic.plugins import build_plugins, options_for
from neuroplastic.plugins.dormant import perturb
from neuroplastic.sparse import init_masks
from neuroplastic.training import Trainer, TrainSettings


def hand_spikes():
    """[T=4, B=5, N=5]: 20 sample-steps. Neuron rates: 0 never fires (0), 1 fires once
    (0.05), 2 fires 10 times (0.5), 3 and 4 always (1.0). Mean rate = 2.55/5 = 0.51.
    Scores: 0, 0.098, 0.980, 1.961, 1.961."""
    z = torch.zeros(4, 5, 5)
    z[0, 0, 1] = 1
    z[:, :, 2].view(-1)[:10] = 1
    z[:, :, 3:] = 1
    return z


def test_scores_and_ratio_on_hand_made_spikes():
    z = hand_spikes()
    s = neuron_scores(z)
    assert s.tolist() == pytest.approx([0, 0.05 / 0.51, 0.5 / 0.51, 1 / 0.51, 1 / 0.51])
    assert dormant_mask(z).tolist() == [True, False, False, False, False]  # tau = 0.025
    assert dormant_ratio(z) == pytest.approx(0.2)
    assert dormant_ratio(z, tau=0.1) == pytest.approx(0.4)  # 0.098 <= 0.1
    assert dormant_ratio(torch.zeros(3, 2, 7)) == 1.0  # nothing fires: all dormant


def test_dormant_ratios_pool_layers():
    a = hand_spikes()
    b = torch.ones(4, 5, 3)
    b[..., 0] = 0
    r = dormant_ratios({"l1": a, "l2": b})
    assert r["l1"] == pytest.approx(0.2) and r["l2"] == pytest.approx(1 / 3)
    assert r["overall"] == pytest.approx(2 / 8)


def test_conv_neurons_are_channel_positions():
    z = torch.ones(2, 3, 2, 2, 2)  # [T, B, C, H, W]: 8 neurons
    z[:, :, 0, 0, 0] = 0
    assert dormant_ratio(z) == pytest.approx(1 / 8)


def test_firing_rate_monitor_matches_offline_ratios():
    layer = nn.Identity()
    mon = FiringRateMonitor([("l", layer)])
    z = hand_spikes()
    layer(z[:, :2])  # two calls (split over the batch) accumulate like one
    layer(z[:, 2:])
    assert torch.allclose(mon.rates()["l"], z.mean((0, 1)))
    assert mon.ratios() == pytest.approx({"l": 0.2, "overall": 0.2})
    assert torch.allclose(scores_from_rates(mon.rates()["l"]), neuron_scores(z))
    mon.enabled = False
    layer(torch.ones_like(z))
    assert torch.allclose(mon.rates()["l"], z.mean((0, 1)))
    mon.clear()
    assert mon.ratios() == {}
    mon.remove()


def test_postsynaptic_neurons():
    assert postsynaptic_neurons(mlp([6, 5, 4, 3])) == {"fc1": "lif1", "fc2": "lif2"}
    assert postsynaptic_neurons(cnn((1, 8, 8), (4, 6), 3)) == {"conv1": "lif1", "conv2": "lif2"}


def test_perturb_factor_clips():
    assert perturb_factor(0.0) == 0.9
    assert perturb_factor(0.2) == pytest.approx(0.6)
    assert perturb_factor(0.7) == 0.2
    assert perturb_factor(0.1, k=1, a_min=0.5, a_max=1.0) == pytest.approx(0.9)


def test_perturb_moves_toward_target_and_respects_masks():
    torch.manual_seed(0)
    net = mlp([6, 5, 3])
    init = {
        f"{n}.{p}": getattr(m, p).detach().clone()
        for n, m in net.synapses()
        for p in ("weight", "bias")
    }
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    init_masks(net, 0.5, "uniform", generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    trained = {f"{n}.weight": m.weight.detach().clone() for n, m in net.synapses()}
    assert perturb(net, 0.25, opt, target=init) == 4
    for n, m in net.synapses():
        expect = (0.25 * trained[f"{n}.weight"] + 0.75 * init[f"{n}.weight"]) * m.mask
        assert torch.allclose(m.weight, expect)
        assert m.weight not in opt.state or not opt.state[m.weight]
    before = {n: m.weight.detach().clone() for n, m in net.synapses()}
    perturb(net, 1.0, None)  # a = 1: unchanged (fresh init weighted by 0)
    for n, m in net.synapses():
        assert torch.allclose(m.weight, before[n])
    perturb(net, 0.5, None, seed=3)  # fresh init: changes active weights only
    for n, m in net.synapses():
        assert bool((m.weight[~m.mask] == 0).all()) and not torch.allclose(m.weight, before[n])


class _Tiny:
    def __init__(self):
        self.x, self.y = torch.ones(5, 12), torch.zeros(5, dtype=torch.long)

    def __len__(self):
        return 5


def test_dormant_plugin_logs_curves_and_perturbs():
    torch.manual_seed(0)
    net = mlp([12, 16, 3])
    plugins = build_plugins("dormant", {"dormant": {"every": 2, "perturb_every": 3, "tau": 0.025}})
    tr = Trainer(
        net, make_encoder("rate", 3), TrainSettings(time_steps=3, batch_size=4), plugins, quiet=True
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        tr.train_step(torch.rand(4, 12, generator=g), torch.randint(0, 3, (4,), generator=g), None)
    tr.evaluate(_Tiny(), None)  # evaluation forwards are not counted
    assert plugins.plugins[0].monitor.counts == {}
    rec = plugins.records()["dormant"]
    assert rec["step"].tolist() == [2, 4, 6]
    assert set(rec["layers"]) == {"lif1"} and len(rec["overall"]) == 3
    assert rec["perturb_step"].tolist() == [3, 6]
    beta = rec["perturb_beta"]
    assert rec["perturb_factor"].tolist() == pytest.approx([perturb_factor(b) for b in beta])
    m = plugins.metrics()
    assert m["perturbations"] == 2 and "overall" in m["dormant_train"]
    st = plugins.state_dict()["dormant"]
    assert st["step"] == 6
    with pytest.raises(UserError, match=r"dormant\.every"):
        options_for("dormant", {"every": 0})
    with pytest.raises(UserError, match=r"dormant\.perturb_target"):
        options_for("dormant", {"perturb_target": "zero"})


def test_postsynaptic_neurons_of_a_recurrent_layer():
    # the recurrent synapse "<layer>.rec" drives its own layer (dormant-aware regrowth
    # must see its rows' dormant neurons too)
    net = mlp([6, 5, 4, 3], recurrent=True)
    assert postsynaptic_neurons(net) == {"fc1": "lif1", "lif1.rec": "lif1", "fc2": "lif2", "lif2.rec": "lif2"}


def test_perturb_reseeds_no_generator_it_does_not_restore(monkeypatch):
    # a CPU model: the CPU generator is forked and restored, no GPU generator is touched
    # (torch.manual_seed would reseed every GPU's generator, which fork_rng does not restore)
    torch.manual_seed(5)
    net = mlp([6, 5, 3])
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: calls.append(s))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda s: calls.append(s))
    before = torch.random.get_rng_state()
    assert perturb(net, 0.5, None, seed=3) > 0
    assert calls == []
    assert torch.equal(torch.random.get_rng_state(), before)
