"""The fused chain simulator (``neuroplastic.simulate_fused`` + ``kernels/chain_sim.py``)
against the layer-by-layer path of ``run_batches``: bit for bit where the layer-by-layer
path sums in the same order (``backend="event"``: CSR row push for masked layers, spike
gather for dense ones), close agreement under the default routes, the fallback for networks
it does not take, and the same errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from neuroplastic import simulate as S
from neuroplastic import simulate_fused as SF
from neuroplastic.errors import UserError
from neuroplastic.network import cnn, mlp
from neuroplastic.neurons import CubaLI, CubaLIF
from neuroplastic.sparse import init_masks
from neuroplastic.synapses import Linear

T, B = 24, 13


def _model(seed: int, neuron: str = "lif", sparse: bool = True, readout: str = "spikes", integration: str = "euler",
           reset: str = "zero", v_leak: float = 0.0, v_reset: float = 0.0, sizes=(40, 64, 48, 10), gain: float = 3.0):
    """A random MLP whose hidden layers fire at a few percent (weights scaled by ``gain``),
    non-zero biases; 90 % sparse masks when ``sparse``."""
    torch.manual_seed(seed)
    net = mlp(list(sizes), neuron=neuron, readout=readout, integration=integration, reset=reset, dt=1e-3,
              tau_mem=2e-2, v_leak=v_leak, v_reset=v_reset, v_th=1.0)
    if sparse:
        init_masks(net, 0.1 if sizes[1] > 20 else 0.5, "uniform", generator=torch.Generator().manual_seed(seed + 7))
    with torch.no_grad():
        for _, syn in net.synapses():
            d = 0.1 if syn.mask is not None else 1.0
            syn.weight.mul_(gain / np.sqrt(d))
            if syn.mask is not None:
                syn.weight.mul_(syn.mask)
            syn.bias.uniform_(-0.05, 0.15)
    return net


def _input(seed: int, n_in: int = 40, floats: bool = True, rate: float = 0.08, T_: int = T, B_: int = B):
    """``[T, B, n_in]`` float32: ``rate`` of the entries nonzero, real values or ones."""
    rng = np.random.default_rng(seed)
    on = rng.random((T_, B_, n_in)) < rate
    vals = rng.uniform(-0.5, 2.0, on.shape) if floats else np.ones(on.shape)
    return (on * vals).astype(np.float32)


def _event(net):
    for _, syn in net.synapses():
        syn.backend = "event"
    return net


def _rows(net, x, fused, batch=5, record=("spikes", "v")):
    out = {}
    for start, rows in S.run_batches(net, x, batch, record, quiet=True, fused=fused):
        for layer, obs in rows.items():
            for k, a in obs.items():
                out.setdefault((layer, k), []).append((start, a))
    return {k: np.concatenate([a for _, a in sorted(v, key=lambda p: p[0])]) for k, v in out.items()}


def _bitwise_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        x, y = a[k], b[k]
        assert x.dtype == y.dtype and x.shape == y.shape, k
        if x.dtype == np.float32:  # bit patterns: also the sign of zero
            x, y = x.view(np.uint32), y.view(np.uint32)
        np.testing.assert_array_equal(x, y, err_msg=str(k))


def _hidden_rates(rows: dict) -> list[float]:
    return [float(a.mean()) for (layer, k), a in rows.items() if k == "spikes" and layer not in ("output", "readout")]


CASES = [
    # seed, neuron, sparse, readout, integration, reset, v_leak, v_reset, float input
    (0, "lif", True, "spikes", "euler", "zero", 0.0, 0.0, True),
    (1, "lif", True, "li", "exact", "subtract", 0.0, 0.0, True),
    (2, "lif", False, "spikes", "exact", "zero", 0.2, -0.1, True),
    (3, "if", True, "spikes", "euler", "subtract", 0.0, 0.0, False),
    (4, "if", False, "li", "exact", "zero", 0.0, 0.3, True),
    (5, "lif", True, "li", "euler", "zero", -0.15, 0.25, True),
    (6, "lif", False, "spikes", "euler", "subtract", 0.3, 0.0, False),
    (7, "cubalif", True, "spikes", "exact", "zero", 0.1, 0.0, True),
    (8, "cubalif", False, "li", "euler", "subtract", 0.0, 0.0, True),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[1]}-{'sparse' if c[2] else 'dense'}-{c[3]}-{c[4]}-{c[5]}"
                                             f"-leak{c[6]}-reset{c[7]}-{'float' if c[8] else 'binary'}" for c in CASES])
def test_fused_equals_layer_by_layer_bitwise(case):
    seed, neuron, sparse, readout, integration, reset, v_leak, v_reset, floats = case
    net = _event(_model(seed, neuron, sparse, readout, integration, reset, v_leak, v_reset))
    assert SF.why_not(net) is None
    x = _input(seed, floats=floats)
    ref = _rows(net, x, fused=False)
    got = _rows(net, x, fused=True)
    rates = _hidden_rates(ref)
    # spiking layers active; into masked layers below the CSR column push's switch (~15 % active)
    assert all(0.005 < r < (0.15 if sparse else 1.0) for r in rates), rates
    _bitwise_equal(got, ref)


def test_fused_sees_weight_and_mask_edits_between_runs():
    """The CSR structure is cached per mask; values are read on every run: an in-place weight
    edit, a new weight tensor and a new or edited mask are all simulated as they are now."""
    net = _event(_model(9))
    x = _input(9)
    _rows(net, x, True)
    syn = net.layers["fc1"]
    with torch.no_grad():
        syn.weight.mul_(1.7)
    _bitwise_equal(_rows(net, x, True), _rows(net, x, False))
    syn.weight = torch.nn.Parameter(syn.weight.detach() * 0.6)
    _bitwise_equal(_rows(net, x, True), _rows(net, x, False))
    with torch.no_grad():
        syn.mask[:, :20] = True
    _bitwise_equal(_rows(net, x, True), _rows(net, x, False))
    syn.mask = syn.mask.clone().logical_not_()
    got = _rows(net, x, True)
    _bitwise_equal(got, _rows(net, x, False))
    assert got[("lif1", "v")].std() > 0


def test_fused_with_cubali_readout_and_spikes_only():
    net = _event(_model(9, "lif", True, "li"))
    net.layers["readout"] = CubaLI(tau_mem=2e-2, tau_syn=5e-3, dt=1e-3, integration="exact", v_leak=0.1)
    x = _input(9)
    for record in (("spikes",), ("v",), ("spikes", "v")):
        _bitwise_equal(_rows(net, x, True, record=record), _rows(net, x, False, record=record))


def test_fused_agrees_with_default_routes():
    """Under ``backend="auto"`` the layer-by-layer path may sum in other orders (matmul): the
    spikes agree except where a membrane lies within rounding of the threshold."""
    net = _model(11, sizes=(40, 200, 150, 10))
    x = _input(11, floats=False, rate=0.05)
    ref, got = _rows(net, x, False), _rows(net, x, True)
    for k in ref:
        if k[1] == "spikes":
            assert (ref[k] == got[k]).mean() > 0.999, k
        else:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-4, err_msg=str(k))


def test_batches_chunks_and_input_kinds(monkeypatch):
    """In-place float32 (whole array and batches of it), float64 and bool copies in several
    chunks, a memory map: all give the reference bits."""
    net = _event(_model(12, "lif", True, "li", "exact", "subtract", 0.05, 0.0))
    x = _input(12, floats=True)
    ref = _rows(net, x, False, batch=B)
    for batch in (B, 4, 1):
        _bitwise_equal(_rows(net, x, True, batch=batch), ref)
    monkeypatch.setattr(S, "CHUNK_BYTES", 4 * T * 64 * 3)  # 3 samples per chunk
    _bitwise_equal(_rows(net, x.astype(np.float64), True, batch=7), ref)
    xb = _input(13, floats=False) > 0
    _bitwise_equal(_rows(net, xb, True, batch=7), _rows(net, xb, False, batch=7))


def test_simulate_writes_the_same_file(tmp_path):
    import nir

    net = _event(_model(14))
    x = _input(14)
    files = {}
    for fused in (True, False):
        files[fused] = tmp_path / f"out_{fused}.h5"
        rates = S.simulate(net, x, files[fused], batch=5, record=("spikes", "v"), quiet=True, fused=fused)
        assert set(rates) == {"lif1", "lif2", "readout", "output"}
    with h5py.File(files[True], "r") as a, h5py.File(files[False], "r") as b:
        keys = []
        a.visititems(lambda k, o: keys.append(k) if isinstance(o, h5py.Dataset) else None)
        assert len(keys) == 6  # 7 names: output/spikes is a hard link to readout/spikes (visited once)
        for k in keys + ["nodes/readout/observables/spikes/data"]:
            np.testing.assert_array_equal(a[k][()], b[k][()], err_msg=k)
    data = nir.read_data(str(files[True]))
    assert data.nodes["lif1"].observables["spikes"].data.shape == (B, T, 64)
    ref = _rows(net, x, True, batch=5)
    for (layer, key), a in ref.items():
        np.testing.assert_array_equal(data.nodes[layer].observables[key].data, a, err_msg=f"{layer} {key}")


@pytest.mark.parametrize("batch", [1, 3, 4, 7, 13, 64])
def test_spikes_written_as_deflated_chunks_read_back(tmp_path, batch):
    """Chunks wholly inside a batch are deflated by zlib and stored directly; the rest go
    through h5py: h5py reads back exactly the arrays, whatever the batch and chunk sizes."""
    net = _event(_model(15))
    x = _input(15, B_=29)
    ref = _rows(net, x, True, batch=batch, record=("spikes",))
    out = tmp_path / "o.h5"
    S.simulate(net, x, out, batch=batch, quiet=True)
    with h5py.File(out, "r") as f:
        d = f["nodes/lif1/observables/spikes/data"]
        assert d.compression == "gzip" and d.dtype == bool
        for (layer, key), a in ref.items():
            np.testing.assert_array_equal(f[f"nodes/{layer}/observables/{key}/data"][()], a)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("readout,record,linked", [("spikes", ("spikes",), True), ("li", ("spikes",), False),
                                                   ("li", ("spikes", "v"), True)])
def test_output_is_the_last_layers_data_written_once(tmp_path, fused, readout, record, linked):
    """``/nodes/output`` holds the network's output; when the last layer's own observable is
    written too, ``output`` is a hard link to it (one dataset, two names), else its own copy."""
    net = _event(_model(11, readout=readout))
    x = _input(11)
    ref = _rows(net, x, fused, record=record)
    out = tmp_path / "o.h5"
    S.simulate(net, x, out, batch=4, record=record, quiet=True, fused=fused)
    key = "spikes" if readout == "spikes" else "v"
    with h5py.File(out, "r") as f:
        d = f[f"nodes/output/observables/{key}/data"]
        np.testing.assert_array_equal(d[()], ref[("output", key)])
        layer = f"nodes/readout/observables/{key}/data"
        assert (layer in f) == linked
        if linked:
            assert f[layer].id == d.id
            np.testing.assert_array_equal(f[layer][()], ref[("readout", key)])


def test_simulate_passes_fit_the_buffer_budget(tmp_path, monkeypatch):
    """``simulate`` runs pieces of a batch whose records fit :data:`CHUNK_BYTES` (whole HDF5
    chunks of the widest layer where they fit); the file does not depend on the pieces."""
    net = _event(_model(16))
    x = _input(16, B_=40)
    widths = 64 + 48 + 10  # the neuron layers
    assert S._piece(net, (40,), T, 40, 256, ("spikes",)) == 40  # all fits: the batch
    monkeypatch.setattr(S, "CHUNK_BYTES", 9 * T * widths)
    assert S._piece(net, (40,), T, 40, 256, ("spikes",)) == 9
    assert S._piece(net, (40,), T, 40, 5, ("spikes",)) == 5
    assert S._piece(net, (40,), T, 40, 256, ("spikes", "v")) == 1  # 5 bytes a value: 9 // 5
    monkeypatch.setattr(S, "CHUNK_BYTES", 3 * 2**20)
    rows = S._chunk_rows(2000, T, 64)  # 682 samples of lif1 in 1 MB
    assert S._piece(net, (40,), T, 2000, 1500, ("spikes",)) == rows  # 1074 fit, rounded down to whole chunks
    assert S._piece(net, (40,), T, 40, 39, ("spikes",)) == 39  # less than one chunk: as it is
    seen = []
    real = S.run_batches
    monkeypatch.setattr(S, "run_batches", lambda m, x_, b, *a, **k: seen.append(b) or real(m, x_, b, *a, **k))
    monkeypatch.setattr(S, "CHUNK_BYTES", 6 * T * widths)
    S.simulate(net, x, tmp_path / "a.h5", batch=40, quiet=True)
    monkeypatch.setattr(S, "CHUNK_BYTES", 2**30)
    S.simulate(net, x, tmp_path / "b.h5", batch=40, quiet=True)
    assert seen == [6, 40]
    with h5py.File(tmp_path / "a.h5", "r") as a, h5py.File(tmp_path / "b.h5", "r") as b:
        for layer in ("lif1", "lif2", "readout", "output"):
            k = f"nodes/{layer}/observables/spikes/data"
            np.testing.assert_array_equal(a[k][()], b[k][()])


def test_chunk_writer_splits_rows_at_chunk_edges(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    a = np.random.default_rng(0).random((23, 5, 6)) < 0.3
    with h5py.File(tmp_path / "c.h5", "w") as f, ThreadPoolExecutor(2) as pool:
        d = f.create_dataset("d", shape=a.shape, dtype=bool, chunks=(4, 5, 6), compression="gzip",
                             compression_opts=1)
        for lo, hi in ((0, 3), (3, 10), (10, 11), (11, 23)):
            S._write_gzip_chunks(d, lo, a[lo:hi], pool)
        np.testing.assert_array_equal(d[()], a)


@pytest.mark.parametrize("backend", ["zlib", "zlib_ng"])
def test_deflate_is_a_zlib_stream_any_hdf5_reader_inflates(tmp_path, monkeypatch, backend):
    """Both back ends (zlib-ng when installed, Python's zlib without it) write run-length
    deflate streams that HDF5's gzip filter reads back, smaller than the default strategy's."""
    import zlib

    lib = zlib if backend == "zlib" else pytest.importorskip("zlib_ng").zlib_ng
    monkeypatch.setattr(S, "_zlib", lib)
    a = np.random.default_rng(1).random((40, 20, 30)) < 0.03
    packed = S.deflate(a)
    assert zlib.decompress(packed) == a.tobytes()
    assert len(packed) < 0.8 * len(zlib.compress(a.tobytes(), 1))
    test_chunk_writer_splits_rows_at_chunk_edges(tmp_path)


def test_fallback_for_networks_it_does_not_take():
    torch.manual_seed(0)
    conv = cnn((1, 8, 8), channels=(4,), n_out=3)
    assert "Conv2d" in SF.why_not(conv)
    xc = (np.random.default_rng(0).random((5, 3, 1, 8, 8)) < 0.3).astype(np.float32)
    _bitwise_equal(_rows(conv, xc, None), _rows(conv, xc, False))
    alif = mlp([20, 16, 4], neuron="alif")
    assert "ALIF" in SF.why_not(alif)
    xa = _input(1, n_in=20)
    _bitwise_equal(_rows(alif, xa, None), _rows(alif, xa, False))
    with pytest.raises(UserError, match="fused simulator cannot run this network.*ALIF"):
        next(S.run_batches(alif, xa, 4, quiet=True, fused=True))
    per_neuron = _model(2)
    per_neuron.layers["lif1"]._fixed("v_th", torch.linspace(0.9, 1.1, 64))
    assert "per-neuron" in SF.why_not(per_neuron)
    dense_backend = _model(2)
    dense_backend.layers["fc2"].backend = "dense"
    assert "backend" in SF.why_not(dense_backend)
    hooked = _model(2)
    hooked.layers["fc1"].register_forward_hook(lambda *a: None)
    assert "hooks" in SF.why_not(hooked)
    li_inside = _model(2)
    li_inside.layers["lif1"] = CubaLI()
    assert "not at the end" in SF.why_not(li_inside)
    assert isinstance(CubaLIF(), CubaLIF)


def test_env_var_and_keyword_force_the_layer_by_layer_path(monkeypatch):
    net = _event(_model(3))
    x = _input(3)
    calls = []
    real = S._run_fused
    monkeypatch.setattr(S, "_run_fused", lambda *a: calls.append(1) or real(*a))
    _rows(net, x, None)
    assert calls == [1]
    _rows(net, x, False)
    monkeypatch.setenv(SF.ENV, "0")
    _rows(net, x, None)
    assert calls == [1]
    _rows(net, x, True)  # the keyword wins over the environment
    assert calls == [1, 1]


@pytest.mark.parametrize("fused", [True, False])
def test_nan_error_names_the_same_samples(fused):
    net = _model(4)
    x = _input(4, B_=6)
    x[3, 5, 7] = np.nan
    seen = []
    with pytest.raises(UserError, match=r"NaN or infinite values \(samples 4\.\.5\)"):
        for start, _ in S.run_batches(net, x, 2, quiet=True, fused=fused):
            seen.append(start)
    assert seen == [0, 2]
    x[3, 5, 7] = np.inf
    with pytest.raises(UserError, match=r"samples 0\.\.5"):
        list(S.run_batches(net, x, 6, quiet=True, fused=fused))


def test_fused_model_shape_checks():
    net = _model(5)
    assert SF.why_not(net) is None
    net.layers["fc2"] = Linear(50, 48)
    assert "takes 50 inputs" in SF.why_not(net)
