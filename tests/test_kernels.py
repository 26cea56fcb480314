"""Event-driven sparse kernels (CPU/numba) against dense torch/numpy references."""

from __future__ import annotations

import json
from contextlib import contextmanager

import neuroplastic.kernels.formats as formats
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from neuroplastic.kernels import (
    CSR,
    CSRCache,
    EventLinearFunction,
    choose_backend,
    cpu,
    csr_from_dense,
    csr_from_mask,
    eligibility_trace_update,
    event_linear,
    event_linear_values,
    hebbian_update,
    masked_values,
    sddmm_weight_grad,
    sparse_linear,
    spmm_backward_input,
    spmm_forward,
)

from neuroplastic.errors import UserError


@contextmanager
def twins(parallel: bool):
    """Force the parallel (prange) or the serial twin of every kernel."""
    old = (cpu.PARALLEL_MIN_WORK, formats.PARALLEL_MIN_ELEMENTS)
    threshold = 0 if parallel else 1 << 62
    cpu.PARALLEL_MIN_WORK = formats.PARALLEL_MIN_ELEMENTS = threshold
    try:
        yield
    finally:
        cpu.PARALLEL_MIN_WORK, formats.PARALLEL_MIN_ELEMENTS = old


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}


# --------------------------------------------------------------------------- strategies


@st.composite
def layers(draw, max_n: int = 12):
    """(weight [n_post, n_pre], mask, dtype, rng) with density 0, 1 or anything between."""
    n_pre = draw(st.integers(1, max_n))
    n_post = draw(st.integers(1, max_n))
    density = draw(st.sampled_from([0.0, 1.0, None]))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(seed)
    if density is None:
        density = rng.random()
    weight = rng.standard_normal((n_post, n_pre)).astype(dtype)
    mask = rng.random((n_post, n_pre)) < density
    return weight, mask, dtype, rng


def activity(rng: np.random.Generator, shape: tuple[int, ...], dtype, kind: str) -> np.ndarray:
    """Presynaptic activity: no spikes, all spikes, binary spikes, or sparse real values."""
    if kind == "none":
        return np.zeros(shape, dtype=dtype)
    if kind == "all":
        return np.ones(shape, dtype=dtype)
    active = rng.random(shape) < rng.random()
    if kind == "binary":
        return active.astype(dtype)
    return (active * rng.standard_normal(shape)).astype(dtype)


KINDS = st.sampled_from(["none", "all", "binary", "real"])
ROWS = st.integers(1, 5)


# --------------------------------------------------------------------------- formats


@SETTINGS
@given(layers(), st.booleans())
def test_csr_round_trip_and_transposed_index(layer, parallel):
    with twins(parallel):
        weight, mask, dtype, rng = layer
        csr = csr_from_dense(weight, mask)
        csr.check()
        assert csr.shape == (weight.shape[1], weight.shape[0])
        assert (
            csr.indptr.dtype == np.int32
            and csr.indices.dtype == np.int32
            and csr.data.dtype == dtype
        )
        assert csr.nnz == mask.sum()
        np.testing.assert_array_equal(csr.to_dense(), weight * mask)
        np.testing.assert_array_equal(csr.to_mask(), mask)
        # CSC order == row-major order of the masked dense entries; perm gathers from CSR data
        csc = csr.csc
        np.testing.assert_array_equal(csr.data[csc.perm], weight[mask])
        np.testing.assert_array_equal(csc.indices, np.nonzero(mask)[1])
        # lazily rebuilt transposed index equals the one built with the CSR
        fresh = CSR(csr.indptr, csr.indices, csr.data, csr.shape)
        np.testing.assert_array_equal(fresh.csc.perm, csc.perm)
        np.testing.assert_array_equal(fresh.csc.indptr, csc.indptr)
        # values-only refresh (mask unchanged), numpy and torch at the boundary
        new = rng.standard_normal(weight.shape).astype(dtype)
        csr.update_values(torch.from_numpy(new))
        np.testing.assert_array_equal(csr.to_dense(), new * mask)
        structure = csr_from_mask(torch.from_numpy(mask), dtype)
        np.testing.assert_array_equal(structure.indices, csr.indices)
        np.testing.assert_array_equal(structure.to_dense(), mask.astype(dtype))


def test_csr_from_dense_defaults_and_errors():
    w = torch.tensor([[0.0, 2.0], [3.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    csr = csr_from_dense(w)  # mask = weight != 0, dtype kept
    assert csr.shape == (2, 3) and csr.nnz == 2 and csr.dtype == np.float64
    assert csr.indptr.tolist() == [0, 1, 2] and csr.indices.tolist() == [1, 0]
    dense = csr.scatter_to_dense(torch.from_numpy(csr.data))
    assert isinstance(dense, torch.Tensor) and torch.equal(dense, w)
    assert csr_from_dense(w.half()).dtype == np.float32
    with pytest.raises(UserError):
        csr_from_dense(np.zeros(3))
    with pytest.raises(UserError):
        csr_from_dense(np.zeros((2, 3)), np.zeros((3, 2), dtype=bool))
    with pytest.raises(UserError):
        CSR(np.array([0, 1]), np.array([0]), np.array([1.0]), (2, 2))  # indptr too short
    bad = CSR(np.array([0, 2]), np.array([1, 0]), np.array([1.0, 2.0]), (1, 2))
    with pytest.raises(UserError):
        bad.check()  # unsorted row
    with pytest.raises(UserError):
        csr.update_values(np.zeros((2, 3)))  # layer convention is [n_post, n_pre]


def test_torch_boundary_shares_memory():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    csr = csr_from_dense(w, w > 0)
    values = torch.from_numpy(csr.data)  # a view: an in-place update is seen by the CSR
    values.mul_(2)
    np.testing.assert_array_equal(csr.to_dense(), 2 * w)
    x = torch.ones(4, 3)
    y = spmm_forward(x, csr)
    assert isinstance(y, torch.Tensor) and y.shape == (4, 2)
    assert isinstance(spmm_forward(x.numpy(), csr), np.ndarray)


# --------------------------------------------------------------------------- CPU kernels


@SETTINGS
@given(
    layers(),
    ROWS,
    st.integers(1, 3),
    KINDS,
    st.booleans(),
    st.sampled_from(["auto", "rows", "cols"]),
)
def test_spmm_forward_matches_dense(layer, rows, steps, kind, parallel, method):
    with twins(parallel):
        weight, mask, dtype, rng = layer
        csr = csr_from_dense(weight, mask)
        x = activity(rng, (steps, rows, weight.shape[1]), dtype, kind)  # [T, B, n_pre]
        y = spmm_forward(x, csr, method=method)
        assert y.shape == (steps, rows, weight.shape[0]) and y.dtype == dtype
        np.testing.assert_allclose(y, x @ (weight * mask).T, **TOL[dtype])
        yt = spmm_forward(torch.from_numpy(x), csr, method=method)
        np.testing.assert_array_equal(yt.numpy(), y)


@SETTINGS
@given(layers(), ROWS, st.booleans())
def test_spmm_backward_input_matches_dense(layer, rows, parallel):
    with twins(parallel):
        weight, mask, dtype, rng = layer
        csr = csr_from_dense(weight, mask)
        g = rng.standard_normal((rows, weight.shape[0])).astype(dtype)
        np.testing.assert_allclose(spmm_backward_input(g, csr), g @ (weight * mask), **TOL[dtype])


@SETTINGS
@given(layers(), ROWS, KINDS, st.booleans())
def test_sddmm_weight_grad_matches_dense(layer, rows, kind, parallel):
    with twins(parallel):
        weight, mask, dtype, rng = layer
        csr = csr_from_dense(weight, mask)
        x = activity(rng, (rows, weight.shape[1]), dtype, kind)
        g = rng.standard_normal((rows, weight.shape[0])).astype(dtype)
        grad = sddmm_weight_grad(g, x, csr)
        assert grad.shape == (csr.nnz,)
        np.testing.assert_allclose(csr.scatter_to_dense(grad), (g.T @ x) * mask, **TOL[dtype])


@SETTINGS
@given(layers(), ROWS, KINDS, st.booleans(), st.booleans())
def test_hebbian_update_matches_dense(layer, rows, kind, clip, parallel):
    with twins(parallel):
        weight, mask, dtype, rng = layer
        csr = csr_from_dense(weight, mask)
        pre = activity(rng, (rows, weight.shape[1]), dtype, kind)
        post = activity(rng, (rows, weight.shape[0]), dtype, "binary")
        lr = 0.3
        w_min, w_max = (-0.5, 0.5) if clip else (None, None)
        expected = weight + lr / rows * (post.T @ pre)
        if clip:  # only synapses of presynaptic rows that were active are touched
            touched = (pre != 0).any(axis=0)[None, :]
            expected = np.where(touched, np.clip(expected, w_min, w_max), weight)
        data = torch.from_numpy(csr.data)
        version = data._version
        out = hebbian_update(data, csr, torch.from_numpy(pre), post, lr, w_min, w_max)
        assert out is data and data._version > version
        np.testing.assert_allclose(csr.to_dense(), expected * mask, **TOL[dtype])


@SETTINGS
@given(layers(), ROWS, KINDS, st.booleans(), st.booleans())
def test_eligibility_trace_matches_dense(layer, rows, kind, batched, parallel):
    with twins(parallel):
        weight, mask, dtype, rng = layer
        csr = csr_from_dense(weight, mask)
        trace = rng.standard_normal(csr.nnz).astype(dtype)
        before = csr.scatter_to_dense(trace.copy())
        shape_x = (rows, weight.shape[1]) if batched else (weight.shape[1],)
        shape_y = (rows, weight.shape[0]) if batched else (weight.shape[0],)
        xbar = np.abs(activity(rng, shape_x, dtype, kind))
        psi = rng.random(shape_y).astype(dtype)
        eligibility_trace_update(trace, csr, xbar, psi, 0.8)
        n = rows if batched else 1
        expected = 0.8 * before + (np.atleast_2d(psi).T @ np.atleast_2d(xbar)) / n * mask
        np.testing.assert_allclose(csr.scatter_to_dense(trace), expected, **TOL[dtype])


def test_outer_products_across_batch_row_blocks():
    """A wide layer (8192 outputs: blocks of 24 batch rows in the parallel outer product)
    and 100 rows, so every presynaptic row's cursor crosses several blocks: SDDMM, clipped
    Hebbian and eligibility traces (decay of idle rows) match the dense references."""
    with twins(True):
        rng = np.random.default_rng(11)
        n_post, n_pre, rows = 8192, 12, 100
        weight = rng.standard_normal((n_post, n_pre)).astype(np.float64)
        mask = rng.random((n_post, n_pre)) < 0.05
        csr = csr_from_dense(weight, mask)
        x = (rng.random((rows, n_pre)) < 0.3) * rng.standard_normal((rows, n_pre))
        x[:, 3] = 0.0  # an idle presynaptic row
        g = rng.standard_normal((rows, n_post))
        grad = sddmm_weight_grad(g, x, csr)
        np.testing.assert_allclose(csr.scatter_to_dense(grad), (g.T @ x) * mask, rtol=1e-10, atol=1e-10)
        expected = weight + 0.3 / rows * (g.T @ x)
        touched = (x != 0).any(axis=0)[None, :]
        expected = np.where(touched, np.clip(expected, -0.5, 0.5), weight)
        hebbian_update(csr.data, csr, x, g, 0.3, -0.5, 0.5)
        np.testing.assert_allclose(csr.to_dense(), expected * mask, rtol=1e-10, atol=1e-10)
        trace = rng.standard_normal(csr.nnz)
        before = csr.scatter_to_dense(trace.copy())
        eligibility_trace_update(trace, csr, np.abs(x), g, 0.8)
        np.testing.assert_allclose(csr.scatter_to_dense(trace), 0.8 * before + (g.T @ np.abs(x)) / rows * mask,
                                   rtol=1e-10, atol=1e-10)


def test_forward_method_choice_and_blocks(monkeypatch):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((7, 11)).astype(np.float32)
    csr = csr_from_dense(w, rng.random((7, 11)) < 0.5)
    sparse = (rng.random((32, 11)) < 0.02).astype(np.float32)
    busy = (rng.random((32, 11)) < 0.5).astype(np.float32)
    assert cpu._choose_forward(sparse) == "rows" and cpu._choose_forward(busy) == "cols"
    assert cpu._choose_forward(busy[:2]) == "rows"  # too few rows to share a synapse stream
    monkeypatch.setattr(cpu, "COLUMN_BLOCK", 5)  # several row blocks
    x = (rng.random((3, 13, 11)) < 0.5).astype(np.float32)
    np.testing.assert_allclose(
        spmm_forward(x, csr, method="cols"), x @ csr.to_dense().T, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(UserError):
        spmm_forward(x, csr, method="diagonal")


def test_kernel_input_errors():
    csr = csr_from_dense(np.ones((3, 4), dtype=np.float32))
    with pytest.raises(UserError):
        spmm_forward(np.ones((2, 3)), csr)  # last dim must be n_pre = 4
    with pytest.raises(UserError):
        sddmm_weight_grad(np.ones((2, 3)), np.ones((5, 4)), csr)  # row mismatch
    with pytest.raises(UserError):
        hebbian_update(np.zeros(csr.nnz), csr, np.ones(4), np.ones(3), 0.1)  # float64 vs float32
    with pytest.raises(UserError):
        spmm_forward(np.ones((2, 4)), csr, out=np.empty((2, 2), np.float32))
    assert spmm_forward(np.ones((0, 4)), csr).shape == (0, 3)


# --------------------------------------------------------------------------- autograd


@settings(max_examples=15, deadline=None)
@given(layers(max_n=9), ROWS, KINDS, st.booleans())
def test_event_linear_values_and_grads_match_dense(layer, rows, kind, parallel):
    with twins(parallel):
        weight, mask, dtype, rng = layer
        w = torch.from_numpy(weight).requires_grad_(True)
        m = torch.from_numpy(mask)
        x = torch.from_numpy(activity(rng, (2, rows, weight.shape[1]), dtype, kind)).requires_grad_(
            True
        )
        g = torch.from_numpy(rng.standard_normal((2, rows, weight.shape[0])).astype(dtype))

        y = event_linear(x, w, m, CSRCache())
        (y * g).sum().backward()
        gx, gw = x.grad.clone(), w.grad.clone()

        x.grad = None
        w.grad = None
        y_ref = x @ (w * m).t()
        (y_ref * g).sum().backward()
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(y, y_ref, **tol)
        torch.testing.assert_close(gx, x.grad, **tol)
        torch.testing.assert_close(gw, w.grad, **tol)
        assert gw.shape == w.shape and not gw[~m].any()


def test_event_linear_gradcheck():
    rng = np.random.default_rng(3)
    w = torch.from_numpy(rng.standard_normal((4, 5))).requires_grad_(True)
    m = torch.from_numpy(rng.random((4, 5)) < 0.6)
    x = torch.from_numpy(rng.standard_normal((3, 5)) * (rng.random((3, 5)) < 0.7)).requires_grad_(
        True
    )
    cache = CSRCache()
    assert torch.autograd.gradcheck(lambda a, b: event_linear(a, b, m, cache), (x, w))
    csr = cache.structure(m)
    values = masked_values(w, csr).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, v: EventLinearFunction.apply(a, v, csr), (x, values))


def test_event_linear_spike_dtypes_and_no_input_grad():
    w = torch.randn(3, 6, requires_grad=True)
    m = torch.rand(3, 6) < 0.5
    spikes = torch.rand(4, 6) < 0.3  # bool spikes: cast to the weight dtype
    y = event_linear(spikes, w, m)
    torch.testing.assert_close(y, spikes.float() @ (w * m).t())
    y.sum().backward()
    torch.testing.assert_close(w.grad, (torch.ones(4, 3).t() @ spikes.float()) * m)
    with pytest.raises(UserError):
        event_linear(torch.ones(2, 5), w, m)
    with pytest.raises(UserError):
        event_linear(spikes, w, m.t())


def test_csr_cache_rebuilds_only_on_mask_change():
    w = torch.randn(5, 7, requires_grad=True)
    m = torch.rand(5, 7) < 0.5
    cache = CSRCache()
    x = torch.ones(2, 7)
    event_linear(x, w, m, cache)
    with torch.no_grad():
        w.mul_(3)  # values change every step: refreshed, structure kept
    y = event_linear(x, w, m, cache)
    assert cache.rebuilds == 1
    torch.testing.assert_close(y, x @ (w * m).t())
    m[0, :] = ~m[0, :]  # in-place mask edit bumps the version
    y = event_linear(x, w, m, cache)
    assert cache.rebuilds == 2
    torch.testing.assert_close(y, x @ (w * m).t())
    m2 = m.clone()  # a new mask tensor
    event_linear(x, w, m2, cache)
    assert cache.rebuilds == 3
    m2.data[0, 0] = ~m2.data[0, 0]  # .data bypasses the version counter: invalidate by hand
    cache.invalidate()
    torch.testing.assert_close(event_linear(x, w, m2, cache), x @ (w * m2).t())
    assert cache.rebuilds == 4


def test_values_reused_over_time_steps():
    """Gather once, propagate T steps: weight.grad is the sum over steps."""
    w = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    m = torch.rand(6, 8) < 0.4
    xs = (torch.rand(5, 3, 8) < 0.3).double()
    cache = CSRCache()
    csr = cache.structure(m)
    values = masked_values(w, csr)
    total = sum(event_linear_values(xs[t], values, csr).sum() for t in range(5))
    total.backward()
    torch.testing.assert_close(w.grad, xs.sum(dim=(0, 1)).expand(6, 8) * m)


# --------------------------------------------------------------------------- dispatch


def test_sparse_linear_backends_agree():
    w = torch.randn(16, 32, requires_grad=True)
    m = torch.rand(16, 32) < 0.2
    x = (torch.rand(4, 32) < 0.1).float()
    ref = x @ (w * m).t()
    for backend in ("auto", "numba", "torch"):
        torch.testing.assert_close(sparse_linear(x, w, m, CSRCache(), backend), ref)
    with pytest.raises(UserError):
        sparse_linear(x, w, m, backend="gpu")


def test_choose_backend_rule():
    n = 4096 * 4096
    assert choose_backend("cpu", 0.1, 0.02, 32, size=n) == "numba"
    assert choose_backend("cpu", 0.5, 0.3, 32, size=n) == "torch"
    assert choose_backend("cpu", 1.0, 1.0, 1) == "torch"
    assert choose_backend("cpu", 0.01, 0.005, 1, size=n) == "numba"
    assert choose_backend("cuda", 0.01, 0.01, 32) == "cuda"
    assert choose_backend("cuda", 0.5, 0.3, 32) == "torch"
    with pytest.raises(UserError):
        choose_backend("cpu", 1.5, 0.1, 1)


# --------------------------------------------------------------------------- benchmark smoke


def _bench_module():
    from neuroplastic.bench import kernels

    return kernels


def test_benchmark_rows_and_cli(tmp_path, capsys):
    bench = _bench_module()
    rows = bench.run(rates=(0.1,), densities=(0.2,), batches=(2,), n=64, repeats=1, bandwidth=1e10)
    assert len(rows) == 1 and set(rows[0]) == set(bench.ROW_KEYS)
    assert rows[0]["event_ms"] > 0 and rows[0]["bound_fraction"] >= 0
    out = tmp_path / "k.json"
    argv = ["--quick", "--n", "48", "--repeats", "1", "--bandwidth", "10", "--json", str(out)]
    assert bench.main(argv + ["--calibrate"]) == 0
    data = json.loads(out.read_text())
    assert len(data) == 24 and set(data[0]) == set(bench.ROW_KEYS)
    text = capsys.readouterr().out
    assert "event ms" in text and "dispatch cost model: event_ns=" in text
    assert bench.main(["--n", "0"]) == 2


def test_cpu_module_exports():
    assert cpu.spmm_forward is spmm_forward
