"""End to end: a 90%-sparse network trains with the event-driven CSR backend to the same
accuracy as with the masked-dense path (same seed)."""

import torch
from neuroplastic.datasets import load_digits

from neuroplastic.encoders import make_encoder
from neuroplastic.network import mlp
from neuroplastic.training import Trainer, TrainSettings


def _train(backend):
    train, test = load_digits()
    torch.manual_seed(0)
    net = mlp([784, 128, 10], tau_mem=2e-3, dt=1e-3)
    g = torch.Generator().manual_seed(1000)
    for _, layer in net.synapses():
        layer.set_mask(torch.rand(layer.weight.shape, generator=g) < 0.1)
        with torch.no_grad():
            layer.weight.mul_(10 ** 0.5)
        layer.backend = backend
    tr = Trainer(net, make_encoder("rate", 4), TrainSettings(epochs=2, batch_size=32, time_steps=4), quiet=True)
    tr.train_task([(train, None)], 0)
    for _, layer in net.synapses():
        assert torch.all(layer.weight[~layer.mask] == 0)
    return tr.evaluate(test), net


def test_event_backend_trains_like_masked_dense():
    acc_event, net_e = _train("event")
    acc_dense, net_d = _train("dense")
    assert acc_event > 40  # it learned
    assert abs(acc_event - acc_dense) <= 1.0
    torch.testing.assert_close(net_e.layers["fc1"].weight, net_d.layers["fc1"].weight, rtol=1e-3, atol=1e-4)
