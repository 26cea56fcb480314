"""Recurrent spiking populations (RecurrentLIF, RecurrentALIF) and recurrent networks."""

from __future__ import annotations

import pytest
import torch

from neuroplastic import mlp
from neuroplastic.errors import UserError
from neuroplastic.neurons import ALIF, LIF, RecurrentALIF, RecurrentLIF, RecurrentState
from neuroplastic.neurons import functional as F

T, B, N = 12, 3, 7


def _inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, N, generator=g, dtype=dtype) * 1.6).to(dtype)


def _strong(layer, seed=1):
    """A recurrent weight large enough that recurrence changes the spikes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.rec.weight.copy_((torch.rand(N, N, generator=g) * 2 - 1).to(layer.rec.weight))
    return layer


def _lif_loop(layer, x, w):
    a, gain = layer.coefficients()
    state = F.LIFState(torch.full_like(x[0], layer.v_leak))
    z = torch.zeros_like(x[0])
    zs, vs = [], []
    for t in range(x.shape[0]):
        current = x[t] + z @ w.T
        z, state, v = F.lif_step(current, state, a, gain, layer.v_leak, layer.v_th, layer.v_reset,
                                 layer.surrogate, layer.reset_mode, layer.detach_reset)
        zs.append(z)
        vs.append(v)
    return torch.stack(zs), torch.stack(vs)


def _alif_loop(layer, x, w):
    a, gain = layer.coefficients()
    rho = F.decay(layer.dt, layer.tau_adapt, layer.integration)
    zero = torch.zeros_like(x[0])
    state = F.ALIFState(torch.full_like(x[0], layer.v_leak), zero, zero)
    zs = []
    for t in range(x.shape[0]):
        current = x[t] + state.z @ w.T
        z, state, _ = F.alif_step(current, state, a, gain, layer.v_leak, layer.v_th, layer.v_reset, rho,
                                  layer.beta_adapt, layer.surrogate, layer.reset_mode, layer.detach_reset)
        zs.append(z)
    return torch.stack(zs)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_forward_equals_hand_loop_of_lif_step(reset):
    layer = _strong(RecurrentLIF(N, tau_mem=5e-3, r=4.0, reset=reset, v_leak=0.1))
    layer.record = True
    x = _inputs()
    z = layer(x)
    ref_z, ref_v = _lif_loop(layer, x, layer.rec.weight.detach())
    assert torch.equal(z, ref_z)
    torch.testing.assert_close(layer.v_trace, ref_v)
    # the recurrence matters for this weight (else the test would prove nothing)
    assert not torch.equal(z, _lif_loop(layer, x, torch.zeros(N, N))[0])


def test_zero_recurrent_weight_is_the_lif_layer():
    rec = RecurrentLIF(N, tau_mem=5e-3, r=4.0)
    with torch.no_grad():
        rec.rec.weight.zero_()
    lif = LIF(tau_mem=5e-3, r=4.0)
    rec.record = lif.record = True
    x = _inputs(3)
    assert torch.equal(rec(x), lif(x))
    torch.testing.assert_close(rec.v_trace, lif.v_trace)


def test_alif_forward_equals_hand_loop_and_zero_weight_is_alif():
    layer = _strong(RecurrentALIF(N, tau_mem=5e-3, tau_adapt=2e-2, beta_adapt=0.5, r=4.0))
    x = _inputs(4)
    z = layer(x)
    assert torch.equal(z, _alif_loop(layer, x, layer.rec.weight.detach()))
    with torch.no_grad():
        layer.rec.weight.zero_()
    layer.reset()
    alif = ALIF(tau_mem=5e-3, tau_adapt=2e-2, beta_adapt=0.5, r=4.0)
    assert torch.equal(layer(x), alif(x))


def test_step_matches_forward_and_state_continues_across_calls():
    for cls in (RecurrentLIF, RecurrentALIF):
        layer = _strong(cls(N, tau_mem=5e-3, r=4.0))
        x = _inputs(5)
        whole = layer(x)
        layer.reset()
        first, second = layer(x[:5]), layer(x[5:])
        assert torch.equal(torch.cat([first, second]), whole)
        assert isinstance(layer.state, RecurrentState)
        assert torch.equal(layer.state.z, whole[-1])
        state, zs = None, []
        for t in range(T):
            z, state = layer.step(x[t], state)
            zs.append(z)
        assert torch.equal(torch.stack(zs), whole)
        layer.reset()
        assert layer.state is None
        assert torch.equal(layer(x), whole)  # reset forgets z_{t-1} too


def test_default_init_is_scaled():
    layer = RecurrentLIF(100)
    w = layer.rec.weight.detach()
    assert layer.rec.bias is None
    assert torch.all(w != 0)
    assert float(w.abs().max()) <= 0.5 / 10 + 1e-7
    assert float(w.abs().max()) > 0.4 / 10


class _Smooth:
    """A differentiable 'spike' (logistic) so finite differences see the same function."""

    name, alpha = "smooth", 4.0

    def __call__(self, x):
        return torch.sigmoid(self.alpha * x)


def _smooth_layer(cls, detach_recurrent=False):
    torch.manual_seed(0)
    layer = cls(N, tau_mem=5e-3, r=4.0, detach_reset=False, detach_recurrent=detach_recurrent).double()
    layer.surrogate = _Smooth()
    return _strong(layer)


@pytest.mark.parametrize("cls", [RecurrentLIF, RecurrentALIF])
def test_bptt_gradient_of_w_rec_matches_finite_differences(cls):
    layer = _smooth_layer(cls)
    x = _inputs(6, torch.float64)
    target = torch.rand(T, B, N, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def loss(w):
        layer.reset()
        with torch.no_grad():
            layer.rec.weight.copy_(w)
        return ((layer(x) - target) ** 2).sum()

    w0 = layer.rec.weight.detach().clone()
    layer.reset()
    ((layer(x) - target) ** 2).sum().backward()
    grad = layer.rec.weight.grad.clone()
    assert grad.abs().sum() > 0
    eps = 1e-6
    fd = torch.zeros_like(w0)
    for i in range(N):
        for j in range(N):
            e = torch.zeros_like(w0)
            e[i, j] = eps
            fd[i, j] = (loss(w0 + e) - loss(w0 - e)) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-7)


def test_detach_recurrent_changes_gradients_not_outputs():
    x = _inputs(7, torch.float64)
    full, cut = _smooth_layer(RecurrentLIF), _smooth_layer(RecurrentLIF, detach_recurrent=True)
    zf, zc = full(x), cut(x)
    assert torch.equal(zf, zc)
    zf.sum().backward()
    zc.sum().backward()
    assert cut.rec.weight.grad.abs().sum() > 0  # the direct (one-step) path remains
    assert not torch.allclose(full.rec.weight.grad, cut.rec.weight.grad)


def test_detach_recurrent_is_bptt_without_the_recurrent_paths():
    """With detach_recurrent, dL/dW_rec = sum_t delta_t z_{t-1}^T with delta_t = dL/dI_t taken
    through the neuron's own state only: what e-prop computes."""
    layer = _smooth_layer(RecurrentLIF, detach_recurrent=True)
    x = _inputs(8, torch.float64)
    z = layer(x)
    z.sum().backward()
    # reference: the same layer fed the recorded z_{t-1} as a fixed input
    pre = torch.cat([torch.zeros_like(z[:1]), z[:-1]]).detach()
    w = layer.rec.weight.detach().clone().requires_grad_()
    ref = LIF(tau_mem=5e-3, r=4.0, detach_reset=False).double()
    ref.surrogate = _Smooth()
    state, out = F.LIFState(torch.zeros_like(x[0])), []
    a, gain = ref.coefficients()
    for t in range(T):
        zt, state, _ = F.lif_step(x[t] + pre[t] @ w.T, state, a, gain, 0.0, 1.0, 0.0, ref.surrogate,
                                  "subtract", False)
        out.append(zt)
    torch.stack(out).sum().backward()
    torch.testing.assert_close(layer.rec.weight.grad, w.grad)


def test_mask_on_rec_removes_those_synapses():
    layer = _strong(RecurrentLIF(N, tau_mem=5e-3, r=4.0))
    mask = torch.rand(N, N, generator=torch.Generator().manual_seed(2)) < 0.5
    layer.rec.set_mask(mask)
    assert torch.all(layer.rec.weight[~mask] == 0)
    x = _inputs(9)
    with torch.no_grad():  # forward uses weight * mask even if the weight drifts off the mask
        layer.rec.weight.add_(1.0)
    z = layer(x)
    assert torch.equal(z, _lif_loop(layer, x, (layer.rec.weight * mask).detach())[0])
    z.sum().backward()
    assert torch.all(layer.rec.weight.grad[~mask] == 0)


def test_capture_gives_input_shifted_by_one_step():
    layer = _strong(RecurrentALIF(N, tau_mem=5e-3, r=4.0))
    layer.rec.capture = True
    x = _inputs(10)
    z = layer(x)
    pre = layer.rec.last_input
    assert pre.shape == (T, B, N) and not pre.requires_grad
    assert torch.all(pre[0] == 0)
    assert torch.equal(pre[1:], z[:-1].detach())
    z2 = layer(x)  # continuing: z_{-1} is the last spike of the previous call
    assert torch.equal(layer.rec.last_input[0], z[-1].detach())
    assert torch.equal(layer.rec.last_input[1:], z2[:-1].detach())


def test_forward_hooks_see_one_synapse_call_and_dense_gradient():
    from neuroplastic.sparse import DenseGrad

    layer = _strong(RecurrentLIF(N, tau_mem=5e-3, r=4.0))
    mask = torch.rand(N, N, generator=torch.Generator().manual_seed(3)) < 0.6
    layer.rec.set_mask(mask)
    seen = []
    layer.rec.register_forward_hook(lambda m, i, o: seen.append((i[0].shape, o.shape)))
    dense = DenseGrad([("lif1.rec", layer.rec)])
    dense.enabled = True
    x = _inputs(11)
    layer(x).sum().backward()
    assert seen == [((T, B, N), (T, B, N))]
    g = dense.grads["lif1.rec"]
    torch.testing.assert_close(g * mask, layer.rec.weight.grad)
    assert g[~mask].abs().sum() > 0  # the dense gradient reaches absent synapses
    # the reference: dL/dW_eff with the mask's weight as a free leaf
    layer.reset()
    w_eff = layer.rec.effective_weight().detach().requires_grad_()
    ref = _lif_loop(layer, x, w_eff)[0]
    ref.sum().backward()
    torch.testing.assert_close(g, w_eff.grad)
    with torch.no_grad():
        layer.reset()
        layer(x)
    assert len(seen) == 2


def test_bad_input_is_a_user_error():
    layer = RecurrentLIF(N)
    with pytest.raises(UserError, match="expects input"):
        layer(torch.zeros(T, B, N + 1))
    with pytest.raises(UserError, match="size"):
        RecurrentLIF(0)
    with pytest.raises(UserError, match="rec_scale"):
        RecurrentALIF(N, rec_scale=-1.0)


# -- networks ------------------------------------------------------------------------------
def test_mlp_recurrent_layers_and_synapse_names():
    net = mlp([10, 16, 12, 3], recurrent=True)
    names = [n for n, _ in net.synapses()]
    assert names == ["fc1", "lif1.rec", "fc2", "lif2.rec", "fc3"]
    assert dict(net.synapses())["lif1.rec"] is net.layers["lif1"].rec
    assert [n for n, _ in net.neurons()] == ["lif1", "lif2"]
    assert isinstance(net.layers["lif2"], RecurrentLIF)
    alif = mlp([10, 16, 3], neuron="alif", recurrent=True, rec_scale=0.2)
    assert isinstance(alif.layers["alif1"], RecurrentALIF)
    assert alif.layers["alif1"].rec_scale == 0.2
    out = alif(torch.rand(5, 2, 10))
    assert out.shape == (5, 2, 3)
    assert [n for n, _ in mlp([10, 16, 3]).synapses()] == ["fc1", "fc2"]
    with pytest.raises(UserError, match="lif or alif"):
        mlp([10, 16, 3], neuron="if", recurrent=True)
    with pytest.raises(UserError, match="recurrent=True"):
        mlp([10, 16, 3], rec_scale=0.2)


def test_network_state_and_recording_include_recurrent_layers():
    net = mlp([10, 16, 3], recurrent=True)
    x = (torch.rand(6, 2, 10) < 0.5).float()
    with net.recording():
        a = net(x)
    assert net.recordings["lif1"]["spikes"].shape == (6, 2, 16)
    assert net.recordings["lif1"]["v"].shape == (6, 2, 16)
    assert torch.equal(net(x), a)  # forward starts from reset state every call


def test_recurrent_model_is_refused_by_nir_and_archive_export(tmp_path):
    from neuroplastic.export.archive import save_archive
    from neuroplastic.export.nir_graph import to_nir

    net = mlp([10, 16, 3], recurrent=True)
    with pytest.raises(UserError, match="'lif1'.*RecurrentLIF"):
        to_nir(net)
    with pytest.raises(UserError, match="'lif1'.*RecurrentLIF"):
        save_archive(tmp_path / "m.h5", net)
    assert not (tmp_path / "m.h5").exists()


def test_config_recurrent_validation():
    from neuroplastic.config import config_from_dict

    assert config_from_dict({"model": {"recurrent": True}}).model.recurrent
    with pytest.raises(UserError, match="arch = mlp"):
        config_from_dict({"model": {"recurrent": True, "arch": "cnn"}})
    with pytest.raises(UserError, match="lif or alif"):
        config_from_dict({"model": {"recurrent": True, "neuron": "cubalif"}})


def test_build_model_refuses_recurrent_cnn():
    from neuroplastic.datasets import make_stream

    from neuroplastic.config import RunConfig
    from neuroplastic.continual import build_model

    cfg = RunConfig()
    cfg.model.arch, cfg.model.recurrent = "cnn", True  # bypassing the config's own check
    stream = make_stream("digits", "permuted", n_tasks=1)
    with pytest.raises(UserError, match="recurrent"):
        build_model(cfg, stream)


def test_plugins_run_on_a_recurrent_network(tmp_path):
    """HLOP, GraNet, GPM and EWC treat ``lif1.rec`` as one more synapse layer."""
    from neuroplastic.config import config_from_dict
    from neuroplastic.continual import run

    cfg = config_from_dict({
        "methods": ["hlop", "granet+ewc", "gpm"], "out": str(tmp_path / "r"), "quiet": True,
        "data": {"tasks": 2, "max_per_task": 64},
        "model": {"hidden": [24], "recurrent": True, "neuron": "alif"},
        "train": {"time_steps": 4, "batch_size": 32, "eval_batch_size": 512},
        # input-mode projection: the output gradient of lif1.rec comes from its forward hook
        "hlop": {"linear_mode": "input", "project_every": 1, "energy_samples": 0},
        "granet": {"sparsity": 0.5},
        "gpm": {"n_samples": 32, "layers": ["alif1.rec", "fc2"]},
        "ewc": {"fisher_samples": 16},
    })
    results = run(cfg, echo=lambda *_: None)
    for m in results.values():
        assert "alif1.rec" in m["sparsity_per_layer"]
        assert len(m["acc_matrix"]) == 2
    assert results["granet+ewc"]["sparsity_per_layer"]["alif1.rec"] > 0.1
