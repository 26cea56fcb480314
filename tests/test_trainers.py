"""Trainer strategies: OTTT, e-prop and DSR against BPTT and against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from neuroplastic.encoders import make_encoder
from neuroplastic.errors import UserError
from neuroplastic.network import cnn, mlp
from neuroplastic.trainers import TRAINERS, TrainSettings, make_trainer
from neuroplastic.trainers.dsr import rate_map, weighted_rate

B, D, K = 8, 20, 4


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    return torch.rand(B, D, generator=g, dtype=torch.float64), torch.randint(0, K, (B,), generator=g)


def _net(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return mlp([D, 16, K], **{"tau_mem": 5e-3, **kw}).double()


def _grads(model, name: str, x, y, T: int, encoder: str = "direct", **settings) -> dict[str, torch.Tensor]:
    tr = make_trainer(model, make_encoder(encoder, T), TrainSettings(trainer=name, time_steps=T, **settings),
                      quiet=True)
    tr.targets = y
    tr.optimizer.zero_grad()
    tr.compute_gradients(x, None)
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _bptt_per_step(model, x, y, T: int) -> dict[str, torch.Tensor]:
    """Autograd through time of the online trainers' loss sum_t CE(o_t, y) / T."""
    out = model(x.unsqueeze(0).expand(T, *x.shape))
    sum(F.cross_entropy(out[t], y) / T for t in range(T)).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _close(a: dict, b: dict, atol: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-9), (k, float((a[k] - b[k]).abs().max()))


# -- OTTT -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["mlp", "cnn", "sparse"])
def test_ottt_gradient_equals_bptt_with_one_step(arch, batch):
    x, y = batch

    def make():
        torch.manual_seed(1)
        if arch == "cnn":
            return cnn((1, 8, 8), (4,), K, tau_mem=5e-3).double()
        net = _net(1)
        if arch == "sparse":
            g = torch.Generator().manual_seed(0)
            net.layers["fc1"].set_mask(torch.rand(16, D, generator=g) < 0.3)
        return net

    xi = x[:, :16].repeat(1, 4).reshape(B, 1, 8, 8) if arch == "cnn" else x
    _close(_grads(make(), "ottt", xi, y, 1), _grads(make(), "bptt", xi, y, 1))


def test_ottt_readout_gradient_is_exact_over_time(batch):
    """The LI readout is linear, so its trace (lambda = the readout decay) makes OTTT's
    readout gradient the exact gradient of the per-step loss; hidden layers differ."""
    x, y = batch
    T = 6
    ottt, exact = _grads(_net(), "ottt", x, y, T), _bptt_per_step(_net(), x, y, T)
    for k in ("layers.fc2.weight", "layers.fc2.bias"):
        assert torch.allclose(ottt[k], exact[k], atol=1e-12), k
    assert not torch.allclose(ottt["layers.fc1.weight"], exact["layers.fc1.weight"], atol=1e-6)


def test_ottt_sparse_layer_learns_on_existing_synapses_only(batch):
    x, y = batch
    net = _net()
    mask = torch.rand(16, D, generator=torch.Generator().manual_seed(1)) < 0.2
    net.layers["fc1"].set_mask(mask)
    g = _grads(net, "ottt", x, y, 5)["layers.fc1.weight"]
    assert (g[~mask] == 0).all() and (g[mask] != 0).any()


def test_ottt_gives_plugins_the_presynaptic_traces(batch):
    x, y = batch
    T = 5
    net = _net()
    fc1, fc2 = net.layers["fc1"], net.layers["fc2"]
    fc1.capture = fc2.capture = True
    enc = make_encoder("rate", T)
    tr = make_trainer(net, enc, TrainSettings(trainer="ottt", time_steps=T), quiet=True, seed=5)
    tr.targets = y
    tr.compute_gradients(x, None)
    # the same spikes again (same seed), and the traces by hand: a_t = lam a_{t-1} + s_t
    s = torch.stack(list(enc.steps(x, torch.Generator().manual_seed(5))))
    lam = math.exp(-1e-3 / 5e-3)
    a, want = torch.zeros_like(s[0]), []
    for t in range(T):
        a = lam * a + s[t]
        want.append(a)
    assert torch.allclose(fc1.last_input, torch.stack(want))
    assert fc2.last_input.shape == (T, B, 16)


def test_ottt_memory_does_not_grow_with_time(batch):
    """Saved tensors alive at once (the autograd graph): constant in T for OTTT, linear for BPTT."""
    x, y = batch

    def peak(name, T):
        live = {"now": 0, "max": 0}

        class Box:
            def __init__(self, t):
                self.t, self.n = t, t.numel() * t.element_size()
                live["now"] += self.n
                live["max"] = max(live["max"], live["now"])

            def __del__(self):
                live["now"] -= self.n

        with torch.autograd.graph.saved_tensors_hooks(Box, lambda b: b.t):
            _grads(_net(), name, x, y, T, encoder="rate")
        return live["max"]

    assert peak("ottt", 160) == peak("ottt", 32)  # two chunks of 16 steps, ten chunks
    assert peak("bptt", 160) > 4 * peak("bptt", 32)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_ottt_gradient_does_not_depend_on_the_chunk(arch, batch):
    """Chunks of steps are a speed-up only: one step at a time gives the same gradient."""
    x, y = batch

    def make():
        torch.manual_seed(4)
        return cnn((1, 8, 8), (4,), K, tau_mem=5e-3).double() if arch == "cnn" else _net(4)

    xi = x[:, :16].repeat(1, 4).reshape(B, 1, 8, 8) if arch == "cnn" else x
    one = _grads(make(), "ottt", xi, y, 7, encoder="rate", chunk=1)
    _close(_grads(make(), "ottt", xi, y, 7, encoder="rate", chunk=3), one)
    _close(_grads(make(), "ottt", xi, y, 7, encoder="rate", chunk=16), one)


# -- e-prop ---------------------------------------------------------------------------------
EPROP_CASES = {
    "lif": {},
    "lif-zero-reset": {"reset": "zero"},
    "alif": {"neuron": "alif", "tau_adapt": 3e-3},
    "recurrent-lif": {"recurrent": True},
    "recurrent-alif": {"neuron": "alif", "tau_adapt": 3e-3, "recurrent": True},
}


@pytest.mark.parametrize("case", EPROP_CASES)
def test_eprop_equals_bptt_without_recurrent_paths(case, batch):
    """One hidden layer, symmetric feedback: e-prop is BPTT's gradient of the same loss with
    the recurrent input W_rec z_{t-1} detached (and exactly BPTT's without recurrence)."""
    x, y = batch
    T = 7
    kw = EPROP_CASES[case]
    ref = _net(**kw)
    for m in ref.modules():
        if hasattr(m, "detach_recurrent"):
            m.detach_recurrent = True
    _close(_grads(_net(**kw), "eprop", x, y, T), _bptt_per_step(ref, x, y, T))


@pytest.mark.parametrize("kw", [{}, EPROP_CASES["recurrent-alif"]])
def test_eprop_with_the_last_decoder_learns_from_the_last_step(kw, batch):
    """``decoder = "last"``: the loss is CE(o_{T-1}) only; e-prop is BPTT of that loss
    (recurrent input detached)."""
    x, y = batch
    T = 7
    ref = _net(**kw)
    for m in ref.modules():
        if hasattr(m, "detach_recurrent"):
            m.detach_recurrent = True
    F.cross_entropy(ref(x.unsqueeze(0).expand(T, *x.shape))[-1], y).backward()
    want = {k: p.grad.clone() for k, p in ref.named_parameters()}
    _close(_grads(_net(**kw), "eprop", x, y, T, decoder="last"), want)


def test_eprop_long_sequence_settles_steps_in_a_window(batch):
    """T = 60 steps with a readout decay of 0.61: steps leave the ring of pending steps
    once kappa^(t - tau) < 1e-7; the gradient still matches BPTT's (to that cut-off)."""
    x, y = batch
    e, ref = _grads(_net(tau_mem=2e-3), "eprop", x, y, 60), _bptt_per_step(_net(tau_mem=2e-3), x, y, 60)
    for k in ref:
        assert torch.allclose(e[k], ref[k], rtol=1e-5, atol=1e-9), k


def test_eprop_ignores_recurrent_paths_that_bptt_follows(batch):
    x, y = batch
    kw = EPROP_CASES["recurrent-lif"]
    ep, full = _grads(_net(**kw), "eprop", x, y, 7), _bptt_per_step(_net(**kw), x, y, 7)
    assert torch.allclose(ep["layers.fc2.weight"], full["layers.fc2.weight"], atol=1e-12)
    assert not torch.allclose(ep["layers.lif1.rec.weight"], full["layers.lif1.rec.weight"], atol=1e-6)


def test_eprop_traces_match_a_hand_computed_example():
    """One input, one LIF neuron (a = 1/2: tau = dt / ln 2; unit gain g = 1; threshold 1),
    an LI readout of two outputs (kappa = 1/2, gain 1, weights +0.5 / -0.5), inputs 1.5, 0,
    1.5: by hand v_pre = 1.5, 0.25, 1.625 -> spikes 1, 0, 1; the presynaptic trace
    xbar = a xbar + x = 1.5, 0.75, 1.875; psi = atan surrogate'(v_pre - 1); the filtered
    eligibility ebar = kappa ebar + psi xbar; the learning signal W_out^T err_t."""
    tau = 1e-3 / math.log(2)
    a = kappa = 0.5
    alpha = 2.0  # atan default slope
    xs = [1.5, 0.0, 1.5]
    net2 = mlp([1, 1, 2], tau_mem=tau, bias=False).double()
    net2.layers["readout"].tau_mem = tau
    net2.layers["readout"].r = 2.0  # gain (1 - kappa) R = 1
    with torch.no_grad():
        net2.layers["fc1"].weight.fill_(1.0)
        net2.layers["fc2"].weight.copy_(torch.tensor([[0.5], [-0.5]], dtype=torch.float64))
    v, xbar, o, ebar, grad_w, grad_out = 0.0, 0.0, [0.0, 0.0], 0.0, 0.0, [0.0, 0.0]
    zbar = 0.0
    T = len(xs)
    for x in xs:
        v_pre = a * v + x
        z = 1.0 if v_pre >= 1 else 0.0
        psi = (alpha / 2) / (1 + (math.pi / 2 * alpha * (v_pre - 1)) ** 2)
        v = v_pre - z
        xbar = a * xbar + x
        ebar = kappa * ebar + psi * xbar
        o = [kappa * o[0] + 0.5 * z, kappa * o[1] - 0.5 * z]
        p0 = math.exp(o[0]) / (math.exp(o[0]) + math.exp(o[1]))
        err = [(p0 - 1) / T, (1 - p0) / T]  # target class 0, batch of 1
        learning_signal = 0.5 * err[0] - 0.5 * err[1]  # symmetric feedback W_out^T err
        grad_w += learning_signal * ebar
        zbar = kappa * zbar + z
        grad_out = [grad_out[0] + err[0] * zbar, grad_out[1] + err[1] * zbar]
    enc = make_encoder("direct", T)

    class Seq:  # the inputs above, one per step
        time_steps = T

        def steps(self, x, generator=None):
            for v_ in xs:
                yield torch.full((1, 1), v_, dtype=torch.float64)

    tr = make_trainer(net2, enc, TrainSettings(trainer="eprop", time_steps=T), quiet=True)
    tr.encoder = Seq()
    tr.targets = torch.tensor([0])
    tr.compute_gradients(torch.zeros(1, 1, dtype=torch.float64), None)
    assert net2.layers["fc1"].weight.grad.item() == pytest.approx(grad_w, rel=1e-12)
    assert net2.layers["fc2"].weight.grad[:, 0].tolist() == pytest.approx(grad_out, rel=1e-12)
    assert grad_w != 0


def test_eprop_random_feedback_is_seeded(batch):
    x, y = batch
    sym = _grads(_net(), "eprop", x, y, 6)
    rnd = _grads(_net(), "eprop", x, y, 6, feedback="random")
    again = _grads(_net(), "eprop", x, y, 6, feedback="random")
    assert torch.allclose(sym["layers.fc2.weight"], rnd["layers.fc2.weight"])
    assert not torch.allclose(sym["layers.fc1.weight"], rnd["layers.fc1.weight"])
    assert torch.equal(rnd["layers.fc1.weight"], again["layers.fc1.weight"])


# -- DSR ------------------------------------------------------------------------------------
def test_dsr_gradient_follows_its_formula(batch):
    """By hand: r_in = weighted input rate, u = W1 r_in + b1, f = clamp(g u / th, 0, 1);
    logits = W2 p + C b2 with p = sum_t c_t s_t (c_t of the mean decoder of the LI readout);
    dL/dW2 = delta p^T, dL/db2 = C delta, dL/dW1 = [(C W2^T delta) * f'(u)] r_in^T."""
    x, y = batch
    T = 6
    net = _net()
    tr = make_trainer(net, make_encoder("rate", T), TrainSettings(trainer="dsr", time_steps=T), quiet=True, seed=2)
    tr.targets = y
    tr.compute_gradients(x, None)
    s_in = tr.inputs
    with torch.no_grad(), net.recording(membranes=False):
        logits = net(s_in).mean(0)
        z = net.recordings["lif1"]["spikes"]
    lif, ro = net.layers["lif1"], net.layers["readout"]
    lam, (kappa, g_o) = math.exp(-1e-3 / 5e-3), ro.coefficients()
    W1, b1, W2, b2 = (p.detach() for p in net.parameters())
    w = torch.tensor([lam ** (T - 1 - t) for t in range(T)], dtype=torch.float64)
    r_in = torch.tensordot(w / w.sum(), s_in, dims=([0], [0]))
    u = r_in @ W1.T + b1
    g = lif.coefficients()[1]
    f = g * u / lif.v_th
    fprime = (g / lif.v_th) * ((f > 0) & (f < 1)).double()
    c = torch.tensor([g_o * sum(kappa ** (tp - t) for tp in range(t, T)) / T for t in range(T)], dtype=torch.float64)
    p = torch.tensordot(c, z, dims=([0], [0]))
    delta = (torch.softmax(logits, 1) - F.one_hot(y, K).double()) / B
    assert torch.allclose(net.layers["fc2"].weight.grad, delta.T @ p, atol=1e-12)
    assert torch.allclose(net.layers["fc2"].bias.grad, c.sum() * delta.sum(0), atol=1e-12)
    want = ((c.sum() * delta @ W2) * fprime).T @ r_in
    assert torch.allclose(net.layers["fc1"].weight.grad, want, atol=1e-12)
    assert float(want.abs().max()) > 0


def test_dsr_helpers():
    s = torch.tensor([[1.0], [0.0], [1.0]])
    assert weighted_rate(s, 1.0).item() == pytest.approx(2 / 3)
    assert weighted_rate(s, 0.5).item() == pytest.approx((0.25 + 1) / 1.75)
    lif = mlp([1, 1, 1], tau_mem=5e-3).layers["lif1"]
    u = torch.tensor([-1.0, 0.5, 5.0])
    assert rate_map(lif, u).tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_dsr_gives_plugins_the_rates(batch):
    x, y = batch
    net = _net()
    for n in ("fc1", "fc2"):
        net.layers[n].capture = True
    tr = make_trainer(net, make_encoder("rate", 6), TrainSettings(trainer="dsr", time_steps=6), quiet=True)
    tr.targets = y
    tr.compute_gradients(x, None)
    lam = math.exp(-1e-3 / 5e-3)
    assert torch.allclose(net.layers["fc1"].last_input[0], weighted_rate(tr.inputs, lam))
    assert net.layers["fc2"].last_input.shape == (1, B, 16)


# -- choosing and refusing ------------------------------------------------------------------
def test_trainer_names_and_alias():
    assert set(TRAINERS) == {"bptt", "ottt", "eprop", "dsr"}
    assert TrainSettings(trainer="online").trainer == "ottt"
    with pytest.raises(UserError, match="train.trainer"):
        TrainSettings(trainer="banana")
    with pytest.raises(UserError, match="feedback"):
        TrainSettings(feedback="sideways")


@pytest.mark.parametrize("name, model, settings, message", [
    ("ottt", lambda: mlp([D, 8, K], recurrent=True), {}, "recurrent"),
    ("ottt", lambda: mlp([D, 8, K], neuron="alif"), {}, "lif, if and cubalif"),
    ("eprop", lambda: cnn((1, 8, 8), (4,), K), {}, "mlp networks|Linear"),
    ("eprop", lambda: mlp([D, 8, K], readout="spikes"), {}, "LI readout"),
    ("eprop", lambda: mlp([D, 8, K], neuron="cubalif"), {}, "lif, if and alif"),
    ("dsr", lambda: mlp([D, 8, K], neuron="alif"), {}, "lif and if"),
    ("dsr", lambda: mlp([D, 8, K]), {"decoder": "max"}, "decoder"),
    ("dsr", lambda: mlp([D, 8, K], recurrent=True), {}, "recurrent"),
])
def test_trainers_refuse_what_they_cannot_train(name, model, settings, message):
    with pytest.raises(UserError, match=message):
        make_trainer(model(), make_encoder("rate", 4), TrainSettings(trainer=name, **settings))


@pytest.fixture(scope="module")
def digits_accuracy():
    """``accuracy(trainer)`` after two epochs of one permuted-digits task (batch 32, the
    default network), cached per trainer."""
    from neuroplastic.datasets import make_stream

    task = make_stream("digits", "permuted", 1, seed=0).tasks[0]
    cache: dict[str, float] = {}

    def accuracy(name: str) -> float:
        if name not in cache:
            torch.manual_seed(0)
            net = mlp([784, 256, 10], tau_mem=2e-3)
            tr = make_trainer(net, make_encoder("rate", 6), TrainSettings(trainer=name, batch_size=32, epochs=2),
                              quiet=True)
            tr.train_task([(task.train, 0)], 0)
            cache[name] = tr.evaluate(task.test)
        return cache[name]

    return accuracy


@pytest.mark.parametrize("name", ["ottt", "eprop", "dsr"])
def test_every_trainer_learns_digits_close_to_bptt(name, digits_accuracy, one_thread):
    ref = digits_accuracy("bptt")
    assert ref > 85
    assert digits_accuracy(name) > ref - 5, (name, digits_accuracy(name), ref)


def test_eprop_feeds_the_plugins_hooks(batch):
    """e-prop computes products without calling the modules: it still hands sparse plugins
    the dense gradient (masked positions included) and neuron hooks their spikes."""
    from neuroplastic.dormant import FiringRateMonitor

    x, y = batch
    net = _net(recurrent=True)
    mask = torch.rand(16, D, generator=torch.Generator().manual_seed(2)) < 0.3
    net.layers["fc1"].set_mask(mask)
    monitor = FiringRateMonitor(net.neurons())
    tr = make_trainer(net, make_encoder("direct", 5), TrainSettings(trainer="eprop", time_steps=5), quiet=True)
    tr.train_step(x, y, None)
    assert set(tr.dense_grads) == {"fc1", "lif1.rec", "fc2"}
    dense = tr.dense_grads["fc1"]
    assert (dense[~mask] != 0).any() and torch.allclose(net.layers["fc1"].weight.grad, dense * mask)
    assert monitor.counts["lif1"] == 5 * B


@pytest.mark.parametrize("trainer", ["ottt", "eprop"])
def test_online_trainers_learn_shd_format_events(trainer, tmp_path, shd_writer):
    """Event data in the Spiking Heidelberg Digits format (files a user has on disk), run by
    the continual runner with an online trainer: class 0 fires low channels early, class 1
    high channels late."""
    from neuroplastic.config import config_from_dict
    from neuroplastic.continual import run

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 60), ("test", 20)):
        times, units, labels = [], [], []
        for i in range(n):
            label = i % 2
            k = 200
            t0 = 0.1 if label == 0 else 0.6
            times.append((t0 + 0.3 * torch.rand(k, generator=g)).tolist())
            base = 0 if label == 0 else 50
            units.append((base + torch.randint(0, 50, (k,), generator=g)).tolist())
            labels.append(label)
        shd_writer(tmp_path / f"shd_{split}.h5", times, units, labels)
    cfg = config_from_dict({
        "methods": ["finetune"], "seed": 0, "quiet": True, "out": str(tmp_path / "run"),
        "data": {"dataset": "shd", "data_dir": str(tmp_path), "tasks": 1},
        "model": {"hidden": [32], "tau_mem": 0.02, "readout_tau": 0.02},
        "train": {"trainer": trainer, "epochs": 5, "batch_size": 10, "lr": 0.01, "optimizer": "adam"},
    })
    result = run(cfg, echo=lambda *_: None)["finetune"]
    assert result["acc"] >= 90
