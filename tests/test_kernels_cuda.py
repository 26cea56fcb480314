"""numba.cuda kernels under the CUDA simulator, against numpy.

``NUMBA_ENABLE_CUDASIM`` must be set before ``numba.cuda`` is first imported, and this
pytest process has imported it already (through ``neuroplastic.kernels``), so the
checks run in a fresh interpreter. The simulator runs every thread in Python: shapes
stay tiny.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    r"""
    import numpy as np
    import torch
    from numba import config
    assert config.ENABLE_CUDASIM, "simulator not active"

    from neuroplastic.kernels import CSRCache, csr_from_dense, event_linear
    from neuroplastic.kernels import cuda as kc

    assert not kc.is_available()
    rng = np.random.default_rng(7)
    TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-10)}
    # (n_post, n_pre, rows, density, spike kind): n_pre > PRE_PER_BLOCK exercises >1 block
    CASES = [
        (5, 40, 3, 0.4, "binary", np.float32),
        (4, 6, 2, 1.0, "all", np.float64),
        (3, 7, 2, 0.0, "binary", np.float32),
        (6, 5, 2, 0.5, "none", np.float64),
        (4, 9, 3, 0.6, "real", np.float64),
    ]

    def activity(shape, dtype, kind):
        if kind == "none":
            return np.zeros(shape, dtype)
        if kind == "all":
            return np.ones(shape, dtype)
        act = rng.random(shape) < 0.4
        return (act * (1.0 if kind == "binary" else rng.standard_normal(shape))).astype(dtype)

    for n_post, n_pre, rows, density, kind, dt in CASES:
        tol = TOL[dt]
        w = rng.standard_normal((n_post, n_pre)).astype(dt)
        m = rng.random((n_post, n_pre)) < density
        W = w * m
        csr = csr_from_dense(w, m)
        dcsr = kc.to_device(csr)
        x = activity((rows, n_pre), dt, kind)
        g = rng.standard_normal((rows, n_post)).astype(dt)
        ref = x @ W.T
        np.testing.assert_allclose(kc.spmm_forward(x, csr), ref, **tol)
        np.testing.assert_allclose(kc.spmm_forward(x, dcsr, method="pull"), ref, **tol)
        x3 = activity((2, rows, n_pre), dt, kind)  # [T, B, n_pre]
        y3 = kc.spmm_forward(torch.from_numpy(x3), dcsr).numpy()
        np.testing.assert_allclose(y3, x3 @ W.T, **tol)
        np.testing.assert_allclose(kc.spmm_backward_input(g, dcsr), g @ W, **tol)
        gw = kc.sddmm_weight_grad(g, x, dcsr)
        np.testing.assert_allclose(csr.scatter_to_dense(gw), (g.T @ x) * m, **tol)
        # Hebbian with clipping: only rows with an active presynaptic entry are touched
        data = csr.data.copy()
        post = activity((rows, n_post), dt, "binary")
        kc.hebbian_update(data, dcsr, x, post, 0.5, w_min=-0.4, w_max=0.4)
        touched = (x != 0).any(axis=0)[None, :]
        exp = np.where(touched, np.clip(w + 0.5 / rows * (post.T @ x), -0.4, 0.4), w) * m
        np.testing.assert_allclose(csr.scatter_to_dense(data), exp, **tol)
        # eligibility traces, torch tensor updated in place
        e = torch.from_numpy(rng.standard_normal(csr.nnz).astype(dt))
        e0 = csr.scatter_to_dense(e.numpy().copy())
        psi = rng.random((rows, n_post)).astype(dt)
        kc.eligibility_trace_update(e, dcsr, np.abs(x), psi, 0.9)
        exp = 0.9 * e0 + (psi.T @ np.abs(x)) / rows * m
        np.testing.assert_allclose(csr.scatter_to_dense(e.numpy()), exp, **tol)

    # autograd through the CUDA backend (CPU tensors are copied to the simulated device)
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    m = torch.rand(4, 6) < 0.5
    x = (torch.rand(3, 6) < 0.5).double().requires_grad_(True)
    y = event_linear(x, w, m, CSRCache(), backend="cuda")
    gy = torch.randn(3, 4, dtype=torch.float64)
    (y * gy).sum().backward()
    torch.testing.assert_close(y, x @ (w * m).t())
    torch.testing.assert_close(x.grad, gy @ (w * m))
    torch.testing.assert_close(w.grad, (gy.t() @ x) * m)
    print("CUDASIM-OK")
    """
)


def test_cuda_kernels_under_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "CUDASIM-OK" in proc.stdout


def test_cuda_module_imports_without_gpu():
    from neuroplastic.kernels import cuda as kc

    assert isinstance(kc.is_available(), bool)
    assert callable(kc.spmm_forward)
