"""The dense-weight spike gather (``kernels/spike_linear.py``) against torch's matmul, and the
routes a synapse layer takes (spike gather, CSR kernels, matmul)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from neuroplastic.kernels import dispatch
from neuroplastic.kernels.spike_linear import event_dense_worthwhile, sampled_density, spike_linear

from neuroplastic.synapses import Linear

_settings = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(
    rows=st.integers(1, 40),
    n_in=st.integers(1, 70),
    n_out=st.integers(1, 90),
    density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    binary=st.booleans(),
    double=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_spike_linear_matches_matmul(rows, n_in, n_out, density, binary, double, bias, seed):
    """Forward and all three gradients, any shape (the 8-row unrolled gather and its
    remainder), empty and all-active inputs, graded or binary values, both float types."""
    dtype = torch.float64 if double else torch.float32
    g = torch.Generator().manual_seed(seed)
    active = torch.rand(rows, n_in, generator=g) < density
    x = active.to(dtype) * (1.0 if binary else torch.randn(rows, n_in, generator=g, dtype=dtype))
    w = torch.randn(n_out, n_in, generator=g, dtype=dtype)
    b = torch.randn(n_out, generator=g, dtype=dtype) if bias else None
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    ba = b.clone().requires_grad_() if bias else None
    bb = b.clone().requires_grad_() if bias else None
    ya, yb = spike_linear(xa, wa, ba), torch.nn.functional.linear(xb, wb, bb)
    gy = torch.randn(rows, n_out, generator=g, dtype=dtype)
    ya.backward(gy)
    yb.backward(gy)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(ya, yb, **tol)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    torch.testing.assert_close(wa.grad, wb.grad, **tol)
    if bias:
        torch.testing.assert_close(ba.grad, bb.grad, **tol)


def test_spike_linear_time_major_shapes_and_large_blocks():
    """``[T, B, K]`` inputs, and a gradient with more rows than one L2 block of G."""
    torch.manual_seed(0)
    x = (torch.rand(7, 150, 33) < 0.2).double().requires_grad_()
    w = torch.randn(2000, 33, dtype=torch.float64, requires_grad=True)
    y = spike_linear(x, w)
    assert y.shape == (7, 150, 2000)
    ref = x @ w.t()
    g = torch.randn_like(ref)
    gw, = torch.autograd.grad(ref, w, g)
    y.backward(g)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(w.grad, gw)


def test_sampled_density_exact_when_small():
    x = torch.zeros(100, 10)
    x[:7, 0] = 1
    assert sampled_density(x) == 7 / 1000


def test_dispatch_rule_follows_costs():
    w = torch.randn(800, 784)
    sparse = (torch.rand(3200, 784) < 0.1).float()
    assert event_dense_worthwhile(sparse, w)  # the DESIGN.md step: gather wins
    assert not event_dense_worthwhile((torch.rand(3200, 784) < 0.6).float(), w)  # dense input
    assert not event_dense_worthwhile(sparse[:4], w)  # 4 rows: the W^T copy dominates
    assert not event_dense_worthwhile(sparse, torch.randn(10, 784))  # too few outputs
    assert not event_dense_worthwhile(sparse.double(), w)  # dtypes differ
    n = 784 * 800
    assert dispatch.choose_backend("cpu", 0.1, 0.1, 3200, size=n, dense_weight=True, spike=True) == "spike"
    assert dispatch.choose_backend("cpu", 0.005, 0.1, 3200, size=n, dense_weight=True, spike=True) == "numba"
    assert dispatch.choose_backend("cpu", 0.1, 0.1, 3200, size=n, dense_weight=True) != "spike"


@pytest.mark.parametrize("density", [0.1, 0.005])
def test_masked_layer_routes_agree(density):
    """A masked layer under ``auto`` picks the spike gather at 10% density and the CSR
    kernels at 0.5%; both give the masked matmul's output and gradients."""
    torch.manual_seed(0)
    ref, auto = Linear(784, 800).double(), Linear(784, 800).double()
    auto.load_state_dict(ref.state_dict())
    ref.backend = "dense"
    mask = torch.rand(800, 784) < density
    ref.set_mask(mask)
    auto.set_mask(mask)
    x = (torch.rand(8, 400, 784) < 0.1).double()
    assert auto.route(x) == ("spike" if density == 0.1 else "numba")
    y1, y2 = ref(x), auto(x)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(y2, y1)
    torch.testing.assert_close(auto.weight.grad, ref.weight.grad)
    assert torch.all(auto.weight.grad[~mask] == 0)


def test_numba_follows_torch_thread_count():
    """numba's parallel regions use torch's thread budget (OMP_NUM_THREADS / set_num_threads)."""
    import numba

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        spike_linear((torch.rand(8, 16) < 0.2).float(), torch.randn(70, 16))
        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        spike_linear(torch.zeros(1, 4), torch.zeros(3, 4))
    assert numba.get_num_threads() == min(before, numba.config.NUMBA_NUM_THREADS)


def test_spike_linear_rejects_bad_input():
    from neuroplastic.errors import UserError

    w = torch.randn(70, 16)
    with pytest.raises(UserError, match="float32 or float64"):
        spike_linear(torch.zeros(2, 16, dtype=torch.int64), w)
    with pytest.raises(UserError, match="one dtype"):
        spike_linear(torch.zeros(2, 16, dtype=torch.float64), w)
    with pytest.raises(UserError, match="does not fit"):
        spike_linear(torch.zeros(2, 15), w)
