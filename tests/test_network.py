"""Encoders, synapses and the network container."""

import pytest
import torch

from neuroplastic import LIF, cnn, mlp
from neuroplastic.encoders import DirectEncoder, LatencyEncoder, PoissonEncoder, RateEncoder, make_encoder
from neuroplastic.errors import UserError
from neuroplastic.synapses import Linear


def test_rate_encoder_mean_rate():
    x = torch.full((2000,), 0.3)
    z = RateEncoder(50)(x, torch.Generator().manual_seed(0))
    assert z.shape == (50, 2000)
    assert abs(z.mean().item() - 0.3) < 0.01
    assert set(z.unique().tolist()) <= {0.0, 1.0}


def test_poisson_encoder_probability():
    z = PoissonEncoder(200, max_rate=100, dt=1e-3)(torch.ones(5000), torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - (1 - torch.exp(torch.tensor(-0.1))).item()) < 0.005


def test_latency_encoder_one_spike_earlier_for_brighter():
    enc = LatencyEncoder(10, linear=True)
    x = torch.tensor([1.0, 0.5, 0.0])
    z = enc(x)
    assert z.sum(0).tolist() == [1.0, 1.0, 0.0]  # zero input never fires
    assert z[:, 0].argmax() < z[:, 1].argmax()
    assert z[:, 0].argmax() == 0


def test_latency_rc_times():
    enc = LatencyEncoder(100, tau=5.0, threshold=0.01)
    t = enc.spike_times(torch.tensor([0.02, 1.0]))
    expected = [round(5 * torch.log(torch.tensor(0.02 / 0.01)).item()),
                round(5 * torch.log(torch.tensor(1 / 0.99)).item())]
    assert t.tolist() == expected


def test_direct_encoder_repeats():
    x = torch.rand(3, 4)
    assert torch.equal(DirectEncoder(5)(x)[4], x)


def test_make_encoder_rejects_unknown():
    with pytest.raises(UserError):
        make_encoder("morse", 5)


def test_linear_synapse_is_one_batched_op_over_time():
    lin = Linear(6, 4)
    x = torch.randn(7, 3, 6)
    y = lin(x)
    for t in range(7):
        torch.testing.assert_close(y[t], torch.nn.functional.linear(x[t], lin.weight, lin.bias))


def test_mask_zeroes_weights_and_forward():
    lin = Linear(6, 4)
    mask = torch.rand(4, 6) > 0.5
    lin.set_mask(mask)
    assert torch.all(lin.weight[~mask] == 0)
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight * mask, lin.bias))


def test_mlp_records_spikes_and_membranes():
    net = mlp([20, 16, 3])
    x = (torch.rand(8, 5, 20) < 0.5).float()
    with net.recording():
        out = net(x)
    assert out.shape == (8, 5, 3)
    assert net.recordings["lif1"]["spikes"].shape == (8, 5, 16)
    assert net.recordings["lif1"]["v"].shape == (8, 5, 16)
    assert net.recordings["readout"]["v"].shape == (8, 5, 3)
    net(x)
    assert net.recordings == {}  # recording off again


def test_multi_head_slices_outputs():
    net = mlp([10, 8, 2], n_heads=3)
    x = torch.rand(4, 2, 10)
    full = net(x)
    assert full.shape == (4, 2, 6)
    torch.testing.assert_close(net(x, head=2), full[..., 4:6])


def test_cnn_shapes_and_gradients():
    net = cnn((1, 12, 12), channels=(4, 8), n_out=5)
    x = (torch.rand(3, 2, 1, 12, 12) < 0.3).float()
    out = net(x)
    assert out.shape == (3, 2, 5)
    out.sum().backward()
    assert net.layers["conv1"].weight.grad is not None


def test_network_resets_state_between_calls():
    net = mlp([5, 4, 2])
    x = torch.rand(6, 1, 5)
    torch.testing.assert_close(net(x), net(x))


def test_neuron_gets_no_state_leak_from_other_batch_size():
    n = LIF()
    n(torch.rand(3, 2, 4))
    n.reset()
    assert n(torch.rand(3, 5, 4)).shape == (3, 5, 4)


def test_bad_mlp_sizes():
    with pytest.raises(UserError):
        mlp([10])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_event_backend_matches_dense(dtype, density):
    torch.manual_seed(0)
    dense, event = Linear(40, 24).to(dtype), Linear(40, 24).to(dtype)
    event.load_state_dict(dense.state_dict())
    event.backend, dense.backend = "event", "dense"
    mask = torch.rand(24, 40) < 0.7
    for layer in (dense, event):
        layer.set_mask(mask)
    x = ((torch.rand(5, 3, 40) < density).to(dtype) * torch.rand(5, 3, 40, dtype=dtype)).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y1, y2 = dense(x), event(x2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(y2, y1, **tol)
    torch.testing.assert_close(x2.grad, x.grad, **tol)
    torch.testing.assert_close(event.weight.grad, dense.weight.grad, **tol)
    torch.testing.assert_close(event.bias.grad, dense.bias.grad, **tol)
    assert torch.all(event.weight.grad[~mask] == 0)


@pytest.mark.parametrize("setting", ["task", "domain"])
def test_multitask_mixes_tasks_that_share_a_head(setting):
    """Multitask trains stage t on tasks 0..t: tasks sharing a head are one data set (every
    minibatch mixes them), tasks with their own head stay separate sources."""
    from neuroplastic.datasets import ArrayDataset
    from neuroplastic.datasets.streams import split

    from neuroplastic.plugins import build_plugins

    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.rand(120, 6, generator=g), torch.arange(120) % 6, 6)
    stream = split(data, data, classes_per_task=2, setting=setting)
    mt = build_plugins("multitask", {}).plugins[0]
    sources = mt.train_sources(2, stream, [])
    if setting == "task":
        assert [h for _, h in sources] == [0, 1, 2]
        assert [len(ds) for ds, _ in sources] == [len(t.train) for t in stream.tasks[:3]]
    else:
        assert len(sources) == 1 and sources[0][1] == 0
        ds = sources[0][0]
        assert len(ds) == sum(len(t.train) for t in stream.tasks[:3])
        assert torch.equal(ds.x, torch.cat([t.train.x for t in stream.tasks[:3]]))
