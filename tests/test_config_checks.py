"""Config checks that act before anything is built: the memory estimate (against the
network the runner really builds), the CUDA device index, empty values."""

from __future__ import annotations

import pytest
import torch

from datasets import make_stream
from neuroplastic.config import config_from_dict, estimate_model_bytes
from neuroplastic.continual import build_model
from neuroplastic.errors import UserError
from neuroplastic.neurons import Neuron

CASES = {
    "mlp": {"model": {"hidden": [7, 5]}},
    "mlp_recurrent": {"model": {"hidden": [6, 4], "recurrent": True}},
    "mlp_multihead": {"model": {"hidden": [5]}, "data": {"stream": "split", "tasks": 3, "classes_per_task": 2}},
    "mlp_if_spiking_readout": {"model": {"hidden": [5], "neuron": "if", "readout": "spikes"}},
    "cnn": {"model": {"arch": "cnn", "channels": [3, 4]}},
    "cnn_one_layer": {"model": {"arch": "cnn", "channels": [2]}, "data": {"stream": "split", "tasks": 2}},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_estimate_counts_the_built_network(case):
    cfg = config_from_dict(CASES[case])
    d = cfg.data
    stream = make_stream(d.dataset, d.stream, d.tasks, classes_per_task=d.classes_per_task, setting=d.setting)
    net = build_model(cfg, stream)
    _, _, params, neurons = estimate_model_bytes(cfg)
    assert params == sum(p.numel() for p in net.parameters())
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0, 0].numel()))
             for m in net.modules() if isinstance(m, Neuron)]
    x = torch.zeros(1, 1, 1, 28, 28) if cfg.model.arch == "cnn" else torch.zeros(1, 1, 784)
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    assert neurons == sum(sizes)


@pytest.mark.parametrize("train,copies", [({"momentum": 0.0}, 2), ({"momentum": 0.9}, 3), ({"optimizer": "adam"}, 4)])
def test_estimate_bytes(train, copies):
    # parameters: weights + gradients (+ momentum, or Adam's two moments), float32;
    # activations: input and every neuron over T steps of max(2 x batch, eval batch)
    cfg = config_from_dict({"model": {"hidden": [10]}, "train": {**train, "time_steps": 3, "batch_size": 8,
                                                                 "eval_batch_size": 20}})
    param_bytes, act_bytes, params, neurons = estimate_model_bytes(cfg)
    assert (params, neurons) == (784 * 10 + 10 + 10 * 10 + 10, 20)
    assert param_bytes == 4 * params * copies
    assert act_bytes == 4 * 3 * (784 + 20) * 20
    cfg.train.eval_batch_size = 10
    assert estimate_model_bytes(cfg)[1] == 4 * 3 * (784 + 20) * 16


def test_cuda_index_must_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert config_from_dict({"device": "cuda:1"}).device == "cuda:1"
    with pytest.raises(UserError, match=r"has 2 GPUs \(cuda:0..cuda:1\)"):
        config_from_dict({"device": "cuda:2"})


def test_empty_values():
    # optional keys take None (their default); required ones refuse it
    assert config_from_dict({"data": {"max_per_task": None}}).data.max_per_task is None
    with pytest.raises(UserError, match="train.lr must not be empty"):
        config_from_dict({"train": {"lr": None}})


def test_build_model_refuses_a_recurrent_cnn_set_after_validation():
    cfg = config_from_dict({"model": {"hidden": [4], "recurrent": True}})
    stream = make_stream("digits", "permuted", 1)
    assert "rec" in dict(build_model(cfg, stream).layers["lif1"].named_children())  # a recurrent MLP builds
    cfg.model.arch = "cnn"  # past the config's own check
    with pytest.raises(UserError, match="model.recurrent = true needs model.arch = mlp"):
        build_model(cfg, stream)
