"""GraNet and friends: the cubic schedule, mask densities after each prune, exact
regrowth, variants, dormant-aware regrowth, continual runs, reload, CLI."""

from __future__ import annotations

import json
import math

import h5py
import pytest
import torch

from neuroplastic.cli import main
from neuroplastic.config import config_from_dict
from neuroplastic.continual import build_model, build_stream, run
from neuroplastic.encoders import make_encoder
from neuroplastic.errors import UserError
from neuroplastic.io import load_checkpoint
from neuroplastic.network import mlp
from neuroplastic.plugins import PluginList, build_plugins, options_for
from neuroplastic.plugins.granet import cosine_death_rate, cubic_sparsity
from neuroplastic.sparse import load_sparse_state_dict
from neuroplastic.training import Trainer, TrainSettings


def make(method="granet", hidden=32, n_in=20, n_out=4, seed=0, **opts):
    torch.manual_seed(seed)
    net = mlp([n_in, hidden, n_out])
    plugins = build_plugins(method, {method: opts})
    s = TrainSettings(lr=0.05, time_steps=3, batch_size=8, epochs=1)
    tr = Trainer(net, make_encoder("rate", 3), s, plugins, seed=seed, quiet=True)
    return tr, plugins.plugins[0]


def batches(n, n_in=20, n_out=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.rand(8, n_in, generator=g), torch.randint(0, n_out, (8,), generator=g)


def nnz(tr):
    return sum(int(m.mask.sum()) if m.mask is not None else m.weight.numel() for _, m in tr.model.synapses())


def total(tr):
    return sum(m.weight.numel() for _, m in tr.model.synapses())


# -- schedule ---------------------------------------------------------------------------
def formula(k, s_i, s_f, k0, k1):
    if k < k0:
        return s_i
    if k > k1:
        return s_f
    return s_f + (s_i - s_f) * (1 - (k - k0) / (k1 - k0)) ** 3


@pytest.mark.parametrize("start,end,every", [(3, 27, 4), (2, 25, 5), (0, 12, 1)])
def test_schedule_hits_the_cubic_formula_every_step(start, end, every):
    tr, p = make(sparsity=0.8, unit="step", start=start, end=end, update_every=every)
    p.set_run_length(40)
    N = total(tr)
    events = []
    for k in range(0, 41):
        assert p.target_sparsity(k) == pytest.approx(formula(k, 0.0, 0.8, start, end), abs=1e-12)
        assert cubic_sparsity(k, 0.0, 0.8, start, end) == pytest.approx(formula(k, 0.0, 0.8, start, end))
    for k, (x, y) in enumerate(batches(40), start=1):
        before = nnz(tr)
        tr.train_step(x, y, None)
        pruning = k >= max(start, 1) and k <= end and ((k - start) % every == 0 or k == end)
        if pruning:
            events.append(k)
            # the mask density equals the target after each prune (regrowth keeps counts)
            assert nnz(tr) == round((1 - formula(k, 0.0, 0.8, start, end)) * N)
        else:
            assert nnz(tr) == before
        for _, m in tr.model.synapses():
            if m.mask is not None:
                assert bool((m.weight[~m.mask] == 0).all())
    assert p.n_updates >= len(events) and events[-1] == end
    assert nnz(tr) == round(0.2 * N)
    assert p.n_regrown > 0


def test_per_layer_pruning_follows_each_layers_cubic():
    tr, p = make(
        sparsity=0.9,
        unit="step",
        start=1,
        end=16,
        update_every=3,
        global_pruning=False,
        distribution="uniform",
    )
    p.set_run_length(20)
    for k, (x, y) in enumerate(batches(20), start=1):
        tr.train_step(x, y, None)
        if 1 <= k <= 16 and ((k - 1) % 3 == 0 or k == 16):
            s = formula(k, 0.0, 0.9, 1, 16)
            for _, m in tr.model.synapses():
                assert int(m.mask.sum()) == round((1 - s) * m.weight.numel())


def test_sparse_to_sparse_starts_from_erk_half():
    tr, p = make(sparsity=0.9, init_density=0.5, unit="step", start=0, end=10, update_every=2)
    assert p.s_i == pytest.approx(0.5, abs=2 / total(tr))
    assert all(m.mask is not None for _, m in tr.model.synapses())
    p.set_run_length(12)
    for x, y in batches(12):
        tr.train_step(x, y, None)
    assert nnz(tr) == round(0.1 * total(tr))


def test_fraction_and_epoch_units_and_death_rate():
    tr, p = make(sparsity=0.8, start=0.25, end=0.5, update_every=5)
    p.set_run_length(100)
    assert (p.k0, p.k1) == (25, 50)
    tr2, p2 = make(sparsity=0.8, start=1, end=2, unit="epoch")
    p2.set_run_length(60)  # settings.epochs = 1 -> 60 steps per epoch
    assert (p2.k0, p2.k1) == (60, 120)
    tr2.settings.epochs = 3
    p2.set_run_length(60)  # 60 steps of task 0 over 3 epochs -> 20 steps per epoch
    assert (p2.k0, p2.k1) == (20, 40)
    # dormant regrowth starts new synapses at 0 unless asked (docs/sparsity.md)
    assert p2.opts.dormant_init == 0.0
    assert cosine_death_rate(0, 100, 0.5, 0.005) == pytest.approx(0.5)
    assert cosine_death_rate(50, 100, 0.5, 0.005) == pytest.approx(0.2525)
    assert cosine_death_rate(100, 100, 0.5, 0.005) == pytest.approx(0.005)
    tr3, p3 = make(sparsity=0.8)
    with pytest.raises(UserError, match="run length"):
        tr3.train_step(*next(batches(1)), None)


# -- regeneration -----------------------------------------------------------------------
def test_regrowth_picks_exactly_the_top_grad_inactive_positions():
    tr, p = make("rigl", sparsity=0.7, hidden=16)
    g = torch.Generator().manual_seed(3)
    grads, old = {}, {}
    for name, m in tr.model.synapses():
        with torch.no_grad():
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.mask)
        grads[name] = torch.randn(m.weight.shape, generator=g)
        old[name] = (m.mask.clone(), m.weight.detach().clone())
    p.dense_grad.grads = grads
    r = 0.3
    p._regenerate(r)
    for name, m in tr.model.synapses():
        mask, w = old[name]
        n_drop = math.ceil(r * int(mask.sum()))
        act = torch.where(mask, w.abs(), torch.full_like(w, float("inf"))).flatten()
        dropped = set(torch.argsort(act)[:n_drop].tolist())
        after = mask.flatten().clone()
        after[list(dropped)] = False
        cand = torch.where(~after, grads[name].abs().flatten(), torch.full_like(act, -1.0))
        grown = set(torch.argsort(cand, descending=True)[:n_drop].tolist())
        expect = after.clone()
        expect[list(grown)] = True
        assert torch.equal(m.mask.flatten(), expect)
        assert int(m.mask.sum()) == int(mask.sum())  # constant density
        new = [i for i in grown if not mask.flatten()[i]]
        back = [i for i in grown if mask.flatten()[i]]  # dropped and grown back at once
        assert new and bool((m.weight.flatten()[new] == 0).all())  # new connections start at 0
        assert torch.equal(m.weight.flatten()[back], w.flatten()[back])
        kept = after.reshape(mask.shape)
        assert torch.equal(m.weight[kept], w[kept])
        assert bool((m.weight[~m.mask] == 0).all())


def test_dormant_aware_regrowth_goes_to_dormant_rows():
    tr, p = make("rigl", sparsity=0.8, hidden=8, dormant_aware=True, dormant_share=0.5)
    assert p.post == {"fc1": "lif1"}
    # neurons 0 and 1 of lif1 never fired; the others did
    p.rates.sums = {"lif1": torch.tensor([0.0, 0.0, 1, 2, 1, 3, 2, 1])}
    p.rates.counts = {"lif1": 10}
    g = torch.Generator().manual_seed(0)
    p.dense_grad.grads = {n: torch.rand(m.weight.shape, generator=g) for n, m in tr.model.synapses()}
    fc1 = tr.model.layers["fc1"]
    before, w = fc1.mask.clone(), fc1.weight.detach().clone()
    n_drop = math.ceil(0.5 * int(before.sum()))
    grown, n_dorm, n_neurons = p._regenerate(0.5)
    assert n_neurons == 2 and 0 < n_dorm <= round(0.5 * n_drop)  # new connections only
    assert int(fc1.mask.sum()) == int(before.sum())
    # replay the drop; the n_dorm largest-|grad| candidates of rows 0-1 were grown
    act = torch.where(before, w.abs(), torch.full_like(w, float("inf"))).flatten()
    after = before.flatten().clone()
    after[torch.argsort(act)[:n_drop]] = False
    after = after.reshape(before.shape)
    rows = torch.zeros_like(before)
    rows[:2] = True
    cand = torch.where(~after & rows, p.dense_grad.grads["fc1"], torch.full_like(w, -1.0)).flatten()
    top = torch.argsort(cand, descending=True)[:n_dorm]
    assert bool(fc1.mask.flatten()[top].all())
    assert int((fc1.mask & ~after & rows).sum()) >= n_dorm
    # without dormant neurons nothing is reserved
    p.rates.sums = {"lif1": torch.ones(8)}
    assert p._regenerate(0.5)[1:] == (0, 0)
    # dormant_init: new synapses into dormant neurons start positive
    p.opts.dormant_init = 0.5
    p.rates.sums = {"lif1": torch.tensor([0.0, 0.0, 1, 2, 1, 3, 2, 1])}
    before = fc1.mask.clone()
    scale = float(fc1.weight.detach()[before].abs().mean())
    _, n_dorm, _ = p._regenerate(0.5)
    fresh = fc1.mask & ~before
    fresh[2:] = False
    assert int(fresh.sum()) == n_dorm > 0
    assert torch.allclose(fc1.weight[fresh], torch.full((n_dorm,), 0.5 * scale))  # dormant_init x mean |w|


@pytest.mark.parametrize("method", ["rigl", "set", "static"])
def test_constant_density_variants(method):
    tr, p = make(method, sparsity=0.75, unit="step", update_every=2, death_rate=0.3)
    p.set_run_length(10)
    masks0 = {n: m.mask.clone() for n, m in tr.model.synapses()}
    n0 = nnz(tr)
    assert n0 == pytest.approx(0.25 * total(tr), abs=2)
    for x, y in batches(10):
        tr.train_step(x, y, None)
        assert nnz(tr) == n0
    changed = any(not torch.equal(masks0[n], m.mask) for n, m in tr.model.synapses())
    assert changed == (method != "static")


def test_gmp_never_regrows():
    tr, p = make("gmp", sparsity=0.8, unit="step", start=1, end=8, update_every=2)
    p.set_run_length(10)
    prev = None
    for x, y in batches(10):
        tr.train_step(x, y, None)
        cur = {n: m.mask.clone() for n, m in tr.model.synapses() if m.mask is not None}
        if prev:
            for n in cur:  # masks only lose entries
                assert not bool((cur[n] & ~prev[n]).any())
        prev = cur
    assert p.n_regrown == 0 and nnz(tr) == round(0.2 * total(tr))


def test_options_are_validated():
    with pytest.raises(UserError, match=r"granet\.sparsity"):
        options_for("granet", {"sparsity": 1.5})
    with pytest.raises(UserError, match=r"unknown key granet\.bogus"):
        options_for("granet", {"bogus": 1})
    with pytest.raises(UserError, match=r"rigl\.regrow"):
        options_for("rigl", {"regrow": "magic"})
    with pytest.raises(UserError, match=r"set\.span"):
        options_for("set", {"span": "forever"})
    assert options_for("static", {}).prune is False
    assert options_for("gmp", {}).regrow == "none"
    assert options_for("set", {}).regrow == "random"


def test_composes_with_gradient_transforms_and_records():
    from neuroplastic.plugins.base import Plugin

    class Project(Plugin):  # a projection before the mask (hlop+granet order)
        name = "project"

        def after_backward(self):
            for _, m in self.trainer.model.synapses():
                if m.weight.grad is not None:
                    m.weight.grad.add_(m.weight.grad.mean())

    torch.manual_seed(0)
    net = mlp([20, 16, 4])
    gran = build_plugins("granet", {"granet": {"sparsity": 0.9, "unit": "step", "end": 6, "update_every": 2}})
    plugins = PluginList([Project(), gran.plugins[0]])
    tr = Trainer(net, make_encoder("rate", 3), TrainSettings(time_steps=3, batch_size=8), plugins, quiet=True)
    gran.plugins[0].set_run_length(10)
    for x, y in batches(10):
        before = {n: m.mask.clone() for n, m in net.synapses() if m.mask is not None}
        tr.train_step(x, y, None)
        for n, m in net.synapses():
            if n in before:  # the gradient was masked with the mask of its step
                assert bool((m.weight.grad[~before[n]] == 0).all())
            if m.mask is not None:
                assert bool((m.weight[~m.mask] == 0).all())
    rec = plugins.records()["granet"]
    assert rec["sparsity"][-1] == pytest.approx(0.9, abs=1 / 384)
    assert set(rec["layer_sparsity"]) == {"fc1", "fc2"}
    st = plugins.state_dict()["granet"]
    assert st["step"] == 10


# -- continual runs: reload and CLI -----------------------------------------------------
TINY = {
    "seed": 1,
    "quiet": True,
    "data": {"dataset": "digits", "stream": "permuted", "tasks": 2, "max_per_task": 96},
    "model": {"hidden": [32]},
    "train": {"epochs": 2, "batch_size": 16, "time_steps": 3},
}


def test_reload_keeps_masks_and_accuracy(tmp_path):
    cfg = config_from_dict(
        {
            **TINY,
            "methods": ["granet"],
            "out": str(tmp_path / "r"),
            "granet": {"sparsity": 0.85, "update_every": 3},
        }
    )
    res = run(cfg, echo=lambda *a: None)["granet"]
    assert res["sparsity"] == pytest.approx(0.85, abs=1e-3)
    ck = load_checkpoint(tmp_path / "r" / "ckpt_task1.pt")  # weights_only=True
    stream = build_stream(cfg)
    torch.manual_seed(123)
    fresh = build_model(cfg, stream)
    load_sparse_state_dict(fresh, ck["model"])
    for name, layer in fresh.synapses():
        assert torch.equal(layer.mask, ck["model"][f"layers.{name}.mask"])
        assert bool((layer.weight[~layer.mask] == 0).all())
    tr = Trainer(fresh, make_encoder(cfg.train.encoder, cfg.train.time_steps), cfg.train, quiet=True)
    acc = [tr.evaluate(t.test, t.head) for t in stream.tasks]
    assert acc == res["acc_matrix"][-1]
    assert ck["plugins"]["granet"]["step"] > 0


def test_cli_granet_sparsity(tmp_path):
    cfgfile = tmp_path / "tiny.toml"
    cfgfile.write_text("""
methods = ["finetune"]
seed = 0
quiet = true
[data]
dataset = "digits"
stream = "permuted"
tasks = 2
max_per_task = 96
[model]
hidden = [32]
[train]
epochs = 2
batch_size = 16
time_steps = 3
[granet]
update_every = 3
""")
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(cfgfile),
                "--method",
                "granet+dormant",
                "--sparsity",
                "0.9",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert set(m["sparsity_per_layer"]) == {"fc1", "fc2", "overall"}
    assert m["granet"]["target_sparsity"] == pytest.approx(0.9)
    assert "overall" in m["dormant_train"]
    with h5py.File(out / "run.h5") as f:
        g = f["plugins/granet"]
        task = g["task"][()]
        assert g["sparsity"][-1] == pytest.approx(0.9, abs=1e-3)
        assert "fc1" in g["layer_sparsity"]
        # span = first_task: task 1 keeps regenerating at death_rate_min
        assert (task == 1).any() and all(abs(r - 0.005) < 1e-12 for r in g["death_rate"][()][task == 1])
        assert len(f["plugins/dormant/overall"][()]) >= 2
    assert main(["run", str(cfgfile), "--method", "finetune", "--sparsity", "0.9", "--out", str(out)]) == 2


def test_conv_network_with_dormant_aware_regrowth():
    from neuroplastic.network import cnn

    torch.manual_seed(0)
    net = cnn((1, 8, 8), (4,), 3)
    plugins = build_plugins(
        "granet",
        {"granet": {"sparsity": 0.7, "unit": "step", "end": 4, "update_every": 2, "dormant_aware": True}},
    )
    tr = Trainer(net, make_encoder("rate", 3), TrainSettings(time_steps=3, batch_size=4), plugins, quiet=True)
    p = plugins.plugins[0]
    p.set_run_length(6)
    assert p.post == {"conv1": "lif1"}
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        tr.train_step(torch.rand(4, 64, generator=g).reshape(4, 1, 8, 8), torch.randint(0, 3, (4,), generator=g), None)
    assert nnz(tr) == round(0.3 * total(tr))
    assert p.n_regrown > 0
    for _, m in net.synapses():
        assert bool((m.weight[~m.mask] == 0).all())


def test_dormant_aware_regrowth_reaches_recurrent_synapses():
    torch.manual_seed(0)
    net = mlp([20, 8, 4], recurrent=True)
    plugins = build_plugins("rigl", {"rigl": {"sparsity": 0.8, "dormant_aware": True, "dormant_share": 1.0}})
    tr = Trainer(net, make_encoder("rate", 3), TrainSettings(lr=0.05, time_steps=3, batch_size=8), plugins,
                 seed=0, quiet=True)
    p = plugins.plugins[0]
    assert p.post["lif1.rec"] == "lif1"
    p.rates.sums = {"lif1": torch.tensor([0.0, 0.0, 1, 2, 1, 3, 2, 1])}  # neurons 0, 1 silent
    p.rates.counts = {"lif1": 10}
    p.dense_grad.grads = {n: torch.ones(m.weight.shape) for n, m in tr.model.synapses()}
    rec = tr.model.layers["lif1"].rec
    before = rec.mask.clone()
    p._regenerate(0.5)
    grown = rec.mask & ~before
    assert int(grown.sum()) > 0 and not bool(grown[2:].any())  # every new recurrent synapse feeds a silent neuron


def test_explicit_layer_densities_from_a_config():
    # densities are floats in (0, 1] (an int 1 is fine too); anything else is refused
    tr, p = make("static", sparsity=0.5, distribution="explicit", layer_density=[0.25, 1])
    fc1, fc2 = tr.model.layers["fc1"], tr.model.layers["fc2"]
    assert int(fc1.mask.sum()) == round(0.25 * fc1.weight.numel())
    assert fc2.mask is None or bool(fc2.mask.all())
    for bad in ([0.0, 1], [1.5, 1], ["0.5", 1], [True, 1]):
        with pytest.raises(UserError, match="layer_density"):
            make("static", sparsity=0.5, distribution="explicit", layer_density=bad)


def test_option_checks_at_their_boundaries():
    # init_density at the target's density is fine, although the masks' whole synapse
    # counts make the start a little sparser than the target's ERK densities; sparser is refused
    make("granet", sparsity=0.7, init_density=0.3)
    make("granet", sparsity=0.5, init_density=0.5)
    with pytest.raises(UserError, match="already sparser"):
        make("granet", sparsity=0.5, init_density=0.4)
    for bad in ("fc1", ["fc1", 3]):  # a list of layer names
        with pytest.raises(UserError, match="exclude"):
            make("granet", sparsity=0.5, exclude=bad)


def test_history_counts_are_integers():
    tr, p = make("rigl", sparsity=0.8, hidden=8, update_every=1, unit="step")
    p.on_task_start(0, None)
    for x, y in batches(3):
        tr.train_step(x, y, None)
    counts = [v for k in ("regrown", "regrown_dormant", "dormant_neurons") for v in p.hist[k]]
    assert counts and all(type(v) is int for v in counts)
