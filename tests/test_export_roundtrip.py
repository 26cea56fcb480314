"""Round trips ours -> NIR -> ours and ours -> HDF5 archive -> ours: bit-identical spikes."""

import math

import nir
import numpy as np
import pytest
import torch

from neuroplastic import SNN, cnn, mlp
from neuroplastic.errors import UserError
from neuroplastic.export import continuous_tau, from_nir, read_nir, to_nir, write_nir
from neuroplastic.export.archive import load_archive, save_archive
from neuroplastic.export.nir_params import Timing
from neuroplastic.export.quantize import dequantize_rows, quantize_model, quantize_rows
from neuroplastic.neurons import ALIF, LIF, CubaLI
from neuroplastic.sparse import random_mask
from neuroplastic.synapses import Flatten, Linear, Scale, SumPool2d


def _scaled(net: SNN, gain: float = 3.0, density: float | None = None, seed: int = 0) -> SNN:
    g = torch.Generator().manual_seed(seed)
    for _, layer in net.synapses():
        with torch.no_grad():
            layer.weight.mul_(gain / math.sqrt(max(density or 1.0, 1e-3)))
        if density is not None:
            layer.set_mask(random_mask(layer.weight.shape, density, generator=g))
    return net


def _all_spikes(net: SNN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with net.recording():
        out = net(x)
    rec = {k: v["spikes"] for k, v in net.recordings.items() if "spikes" in v}
    rec["out"] = out
    return rec


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _mlp(neuron, integration, reset, density, seed=0, readout="spikes"):
    torch.manual_seed(seed)
    kw = {} if neuron == "if" else {"tau_mem": 2e-2}
    net = mlp([60, 48, 32, 10], neuron=neuron, readout=readout, integration=integration, reset=reset,
              dt=1e-3, v_leak=0.0, **kw)
    return _scaled(net, density=density, seed=seed)


def _input(shape, rate=0.3, seed=1):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < rate).float()


@pytest.mark.parametrize("density", [None, 0.1])
@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("integration", ["exact", "euler"])
@pytest.mark.parametrize("neuron", ["lif", "if", "cubalif"])
def test_mlp_nir_and_archive_round_trips_are_bit_identical(tmp_path, neuron, integration, reset, density):
    net = _mlp(neuron, integration, reset, density)
    x = _input((25, 6, 60))
    ref = _all_spikes(net, x)
    assert ref["out"].sum() > 0 and all(v.sum() > 0 for v in ref.values())
    with pytest.warns(UserWarning) if reset == "subtract" else _no_warning():
        graph = to_nir(net)
    write_nir(tmp_path / "m.nir", graph)
    back = from_nir(tmp_path / "m.nir")
    _assert_same(ref, _all_spikes(back, x))
    save_archive(tmp_path / "m.h5", net)
    _assert_same(ref, _all_spikes(load_archive(tmp_path / "m.h5").model, x))
    if density is not None:  # sparse layers come back sparse, with the same mask
        for (_, a), (_, b) in zip(net.synapses(), back.synapses()):
            assert b.mask is not None and torch.equal(a.mask, b.mask)


class _no_warning:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


@pytest.mark.parametrize("readout", ["li", "cubali"])
def test_leaky_readouts_round_trip_exactly(tmp_path, readout):
    net = _mlp("lif", "exact", "zero", None, readout="li")
    if readout == "cubali":
        net.layers["readout"] = CubaLI(tau_mem=1e-2, tau_syn=4e-3, w_in=1.5, r=2.0, v_leak=0.1, dt=1e-3)
    x = _input((20, 4, 60))
    write_nir(tmp_path / "m.nir", to_nir(net))
    back = from_nir(tmp_path / "m.nir")
    assert type(back.layers["readout"]) is type(net.layers["readout"])
    assert torch.equal(net(x), back(x))
    save_archive(tmp_path / "m.h5", net)
    assert torch.equal(net(x), load_archive(tmp_path / "m.h5").model(x))


@pytest.mark.parametrize("density", [None, 0.1])
@pytest.mark.parametrize("neuron", ["lif", "if", "cubalif"])
def test_cnn_round_trips_are_bit_identical(tmp_path, neuron, density):
    torch.manual_seed(0)
    kw = {} if neuron == "if" else {"tau_mem": 2e-2}
    net = _scaled(cnn((1, 12, 12), channels=(4, 6), n_out=5, neuron=neuron, readout="spikes", reset="zero", **kw),
                  gain=10.0, density=density)
    x = _input((12, 3, 1, 12, 12), rate=0.6)
    ref = _all_spikes(net, x)
    assert ref["out"].sum() > 0
    graph = to_nir(net)
    conv = graph.nodes["conv1"]
    assert tuple(conv.input_type["input"]) == (1, 12, 12)  # one sample: no batch dimension
    write_nir(tmp_path / "c.nir", graph)
    _assert_same(ref, _all_spikes(from_nir(tmp_path / "c.nir"), x))
    save_archive(tmp_path / "c.h5", net)
    _assert_same(ref, _all_spikes(load_archive(tmp_path / "c.h5").model, x))


def test_sumpool_scale_and_per_neuron_parameters_round_trip(tmp_path):
    torch.manual_seed(0)
    tau = torch.linspace(5e-3, 5e-2, 2 * 6 * 6).reshape(2, 6, 6)
    conv = cnn((1, 12, 12), channels=(2,), n_out=3).layers["conv1"]
    with torch.no_grad():
        conv.weight.abs_()
    layers = [("conv", conv),
              ("pool", SumPool2d(2)), ("scale", Scale(torch.full((2, 6, 6), 0.7))),
              ("lif", LIF(tau_mem=tau, dt=1e-3, r=200.0, v_th=torch.full((2, 6, 6), 0.5), reset="zero")),
              ("flat", Flatten()), ("fc", Linear(72, 3)), ("out", LIF(tau_mem=1e-2, r=20.0, reset="zero"))]
    net = SNN(layers, n_out=3, in_shape=(1, 12, 12))
    assert isinstance(net.layers["lif"].tau_mem, torch.Tensor)  # per-neuron values kept as an array
    x = _input((15, 2, 1, 12, 12), rate=0.5)
    ref = _all_spikes(net, x)
    assert ref["lif"].sum() > 0
    write_nir(tmp_path / "p.nir", to_nir(net))
    g = read_nir(tmp_path / "p.nir")
    assert isinstance(g.nodes["pool"], nir.SumPool2d) and isinstance(g.nodes["scale"], nir.Scale)
    np.testing.assert_allclose(g.nodes["lif"].tau, tau.numpy(), rtol=1e-6)
    _assert_same(ref, _all_spikes(from_nir(g), x))
    save_archive(tmp_path / "p.h5", net)
    _assert_same(ref, _all_spikes(load_archive(tmp_path / "p.h5").model, x))


def test_graph_metadata_types_and_sparse_note():
    net = _mlp("lif", "exact", "zero", 0.1)
    g = to_nir(net)
    for key in ("dt", "integration", "reset", "neuroplastic_version", "neuroplastic_sparse_layers"):
        assert key in g.metadata
    assert g.metadata["integration"] == "exact" and g.metadata["dt"] == 1e-3 and g.metadata["reset"] == "zero"
    assert g.metadata["neuroplastic_sparse_layers"] == "fc1,fc2,fc3"
    assert g.nodes["fc1"].metadata["neuroplastic_density"] == pytest.approx(0.1, abs=1e-3)
    assert tuple(g.nodes["input"].input_type["input"]) == (60,)
    for name, node in g.nodes.items():
        if name not in ("input", "output"):
            assert node.input_type["input"] is not None and node.output_type["output"] is not None, name
    # masked weights: exactly the weights the network computes with
    fc1 = net.layers["fc1"]
    np.testing.assert_array_equal(g.nodes["fc1"].weight, (fc1.weight * fc1.mask).detach().numpy())


@pytest.mark.parametrize("target", ["exact", "euler"])
@pytest.mark.parametrize("own", ["exact", "euler"])
def test_time_constants_are_converted_for_the_target_discretisation(own, target):
    net = mlp([8, 5, 3], neuron="cubalif", readout="li", integration=own, dt=1e-3, tau_mem=2e-2, tau_syn=5e-3)
    g = to_nir(net, dt=5e-4, integration=target)
    node = g.nodes["cubalif1"]
    lif = net.layers["cubalif1"]
    for ours, theirs in ((lif.tau_mem, node.tau_mem), (lif.tau_syn, node.tau_syn)):
        a_ours = math.exp(-1e-3 / ours) if own == "exact" else 1 - 1e-3 / ours
        a_file = np.exp(-5e-4 / theirs) if target == "exact" else 1 - 5e-4 / theirs
        np.testing.assert_allclose(a_file, a_ours, rtol=1e-6)
    assert g.metadata["dt"] == 5e-4 and g.metadata["integration"] == target
    np.testing.assert_allclose(node.r, lif.r, rtol=1e-6)  # R does not depend on the discretisation


def test_exact_model_read_back_with_euler_gives_the_same_spikes():
    net = _mlp("lif", "exact", "zero", None)
    g = to_nir(net, integration="euler")
    back = from_nir(g, dt=1e-3, integration="euler")
    x = _input((30, 8, 60))
    assert float((net(x) == back(x)).float().mean()) == 1.0


def test_continuous_tau_inverts_the_decay():
    a = np.array([0.5, 0.9, 0.99])
    np.testing.assert_allclose(np.exp(-1e-3 / continuous_tau(a, Timing(1e-3, "exact"))), a)
    np.testing.assert_allclose(1 - 1e-3 / continuous_tau(a, Timing(1e-3, "euler")), a)
    with pytest.raises(UserError):
        continuous_tau(np.array([1.2]), Timing(1e-3, "euler"))


def test_if_resistance_is_per_second_in_nir():
    net = mlp([4, 3, 2], neuron="if", readout="spikes", dt=2e-3, r=0.5)
    g = to_nir(net)
    np.testing.assert_allclose(g.nodes["if1"].r, 0.5 / 2e-3)
    assert from_nir(g).layers["if1"].r == pytest.approx(0.5)


def test_layers_nir_cannot_hold_are_named():
    net = mlp([6, 4, 2], neuron="lif")
    net.layers["lif1"] = ALIF(tau_mem=1e-2)
    with pytest.raises(UserError, match="lif1.*ALIF"):
        to_nir(net)


def test_multi_head_readout_needs_a_head():
    net = mlp([6, 5, 3], n_heads=4, readout="spikes", reset="zero")
    with pytest.raises(UserError, match="multi-head"):
        to_nir(net)
    g = to_nir(net, head=2)
    np.testing.assert_array_equal(g.nodes["fc2"].weight, net.layers["fc2"].weight[6:9].detach().numpy())
    x = _input((10, 2, 6), rate=0.8)
    assert torch.equal(from_nir(g)(x), net(x, head=2))


def test_unsupported_nodes_branches_and_foreign_defaults():
    w = np.eye(3, dtype=np.float32)
    nodes = {"input": nir.Input(input_type={"input": np.array([3])}), "a": nir.Affine(weight=w, bias=np.zeros(3)),
             "d": nir.Delay(delay=np.ones(3)), "output": nir.Output(output_type={"output": np.array([3])})}
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "a"), ("a", "d"), ("d", "output")], type_check=False)
    with pytest.raises(UserError, match="Delay"):
        from_nir(g)
    nodes["d"] = nir.LIF(tau=np.full(3, 0.02), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3))
    nodes["b"] = nir.Affine(weight=w, bias=np.zeros(3))
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "a"), ("a", "d"), ("a", "b"), ("d", "output"), ("b", "output")],
                     type_check=False)
    with pytest.raises(UserError, match="feeds 2"):
        from_nir(g)
    # a foreign chain with no metadata: Euler at dt = 1e-3 (what Norse's and snnTorch's importers do)
    g = nir.NIRGraph.from_list(nir.Affine(weight=w, bias=np.zeros(3, np.float32)), nodes["d"])
    net = from_nir(g)
    lif = net.layers["lif"]
    assert (lif.integration, lif.dt, lif.reset_mode) == ("euler", 1e-3, "zero")


def test_quantize_rows_error_bound_and_archive():
    w = np.random.default_rng(0).normal(size=(7, 13)).astype(np.float32)
    w[3] = 0
    for bits in (8, 16):
        q, s = quantize_rows(w, bits)
        assert q.dtype == (np.int8 if bits == 8 else np.int16)
        assert np.abs(q).max() == 2 ** (bits - 1) - 1
        assert np.all(np.abs(dequantize_rows(q, s) - w) <= s[:, None] / 2 + 1e-7)
    with pytest.raises(UserError):
        quantize_rows(w, 4)


def test_quantized_archive_equals_quantized_model(tmp_path):
    net = _mlp("lif", "exact", "zero", 0.1)
    save_archive(tmp_path / "q.h5", net, quantize=8)
    loaded = load_archive(tmp_path / "q.h5").model
    quantize_model(net, 8)
    for (_, a), (_, b) in zip(net.synapses(), loaded.synapses()):
        assert torch.equal(a.effective_weight(), b.effective_weight())
    import h5py

    with h5py.File(tmp_path / "q.h5") as f:
        assert f["model/layers/fc1/data_q"].dtype == np.int8
        assert f["model/layers/fc1/scale"].shape == (48,)


def test_fold_r_moves_the_resistance_into_the_weights():
    net = _mlp("lif", "euler", "zero", None)
    g = to_nir(net, fold_r=True)
    r = net.layers["lif1"].r
    assert r != 1 and np.all(g.nodes["lif1"].r == 1) and np.all(g.nodes["readout"].r == 1)
    np.testing.assert_allclose(g.nodes["fc1"].weight, net.layers["fc1"].weight.detach().numpy() * r, rtol=1e-6)
    np.testing.assert_allclose(g.nodes["fc1"].bias, net.layers["fc1"].bias.detach().numpy() * r, rtol=1e-6)
    x = _input((40, 8, 60))
    assert float((from_nir(g)(x) == net(x)).float().mean()) >= 0.999  # the same ODE, to float rounding
    cnn_net = cnn((1, 8, 8), channels=(2,), n_out=3, reset="zero")
    g = to_nir(cnn_net, fold_r=True)
    np.testing.assert_allclose(g.nodes["conv1"].weight, cnn_net.layers["conv1"].weight.detach().numpy()
                               * cnn_net.layers["lif1"].r, rtol=1e-6)


def test_unstable_euler_time_constants_are_warned_about():
    lif = nir.LIF(tau=np.full(3, 1e-4), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3))
    g = nir.NIRGraph.from_list(nir.Affine(weight=np.eye(3, dtype=np.float32), bias=np.zeros(3, np.float32)), lif)
    with pytest.warns(UserWarning, match="unstable"):
        from_nir(g, dt=1e-3, integration="euler")
    with _no_warning():
        from_nir(g, dt=1e-3, integration="exact")
