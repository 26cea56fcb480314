"""Neuron maths off the convenient defaults: non-zero ``v_leak`` and ``v_reset`` for every
kind, closed forms, an input that lands exactly on the threshold, learnable vs fixed time
constants, and every execution path (numba-fused, torch-fused, autograd, inference
kernel, single step) against one independent reference."""

import math

import numpy as np
import pytest
import torch

from neuroplastic.errors import UserError
from neuroplastic.neurons import ALIF, IF, LI, LIF, CubaLI, CubaLIF
from neuroplastic.neurons import functional as F
from neuroplastic.neurons.fused import lif_multistep_fused
from neuroplastic.surrogate import Surrogate

DT = 1e-3
VL, VR, TH, R = -0.3, 0.25, 0.6, 1.7  # off every default (0, 0, 1, 1)


def _x(T=40, B=3, N=5, seed=0, scale=1.0, offset=0.4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, B, N, generator=g, dtype=torch.float64) * scale + offset


def ref_lif(x, a, gain, vl, th, vr, reset, v0=None):
    """The discrete LIF of the docs, written out in numpy: ``(z, v_pre, v_final)``."""
    x = np.asarray(x, dtype=np.float64)
    v = np.full(x.shape[1:], vl) if v0 is None else np.asarray(v0, dtype=np.float64).copy()
    zs, vps = [], []
    for xt in x:
        vp = a * v + (1 - a) * vl + gain * xt
        z = (vp > th).astype(np.float64)
        v = vp - z * th if reset == "subtract" else np.where(z > 0, vr, vp)
        zs.append(z)
        vps.append(vp)
    return np.stack(zs), np.stack(vps), v


def ref_alif(x, a, gain, vl, th, vr, rho, beta, reset):
    x = np.asarray(x, dtype=np.float64)
    v = np.full(x.shape[1:], vl)
    b = np.zeros(x.shape[1:])
    zprev = np.zeros(x.shape[1:])
    zs, bs = [], []
    for xt in x:
        b = rho * b + (1 - rho) * zprev
        th_t = th + beta * b
        vp = a * v + (1 - a) * vl + gain * xt
        z = (vp > th_t).astype(np.float64)
        v = vp - z * th_t if reset == "subtract" else np.where(z > 0, vr, vp)
        zs.append(z)
        bs.append(b)
        zprev = z
    return np.stack(zs), np.stack(bs)


def _coeffs(tau, integration):
    a = math.exp(-DT / tau) if integration == "exact" else 1 - DT / tau
    return a, (1 - a) * R


# -- decay and the pure functions ------------------------------------------------------------
def test_decay_values_and_checks():
    assert F.decay(1e-3, 1e-2, "exact") == pytest.approx(math.exp(-0.1), rel=1e-15)
    assert F.decay(1e-3, 1e-2, "euler") == pytest.approx(0.9, rel=1e-15)
    assert F.decay(1e-3, 1, "exact") == pytest.approx(math.exp(-1e-3), rel=1e-15)   # int tau
    tau = torch.tensor([1e-2, 4e-3], dtype=torch.float64)
    torch.testing.assert_close(F.decay(1e-3, tau, "exact"), torch.exp(-1e-3 / tau), rtol=1e-15, atol=0)
    torch.testing.assert_close(F.decay(1e-3, tau, "euler"), 1 - 1e-3 / tau, rtol=1e-15, atol=0)
    for bad in (0.0, -1e-2):
        with pytest.raises(UserError, match="positive"):
            F.decay(1e-3, bad)
    with pytest.raises(UserError, match="integration"):
        F.decay(1e-3, 1e-2, "rk4")
    with pytest.raises(UserError, match="integration"):
        F.decay(1e-3, tau, "rk4")


@pytest.mark.parametrize("detach", [True, False])
def test_reset_membrane_values_and_gradients(detach):
    v_pre = torch.tensor([0.9, 0.2], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    v = F.reset_membrane(v_pre, z, TH, VR, "zero", detach)
    assert v.tolist() == [VR, 0.2]
    v.sum().backward()
    if detach:  # no path from the spikes into the membrane
        assert z.grad is None
    else:  # d/dz of v (1 - z) + z v_reset
        torch.testing.assert_close(z.grad, torch.tensor([VR - 0.9, VR - 0.2], dtype=torch.float64))
    torch.testing.assert_close(v_pre.grad, torch.tensor([0.0, 1.0], dtype=torch.float64))
    z.grad = None
    v_pre.grad = None
    v = F.reset_membrane(v_pre, z, TH, VR, "subtract", detach)
    torch.testing.assert_close(v, torch.tensor([0.9 - TH, 0.2], dtype=torch.float64))
    v.sum().backward()
    if detach:
        assert z.grad is None
    else:
        torch.testing.assert_close(z.grad, torch.full((2,), -TH, dtype=torch.float64))
    torch.testing.assert_close(v_pre.grad, torch.ones(2, dtype=torch.float64))
    with pytest.raises(UserError, match="reset"):
        F.reset_membrane(v_pre, z, TH, VR, "none", detach)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_lif_step_and_autograd_loop_match_the_reference(reset):
    a, gain = 0.8, 0.35
    x = _x(seed=1, scale=2.0, offset=0.0)
    v0 = torch.full(x.shape[1:], 0.1, dtype=torch.float64)
    z, vp, vT = F.lif_multistep_autograd(x, v0, a, gain, VL, TH, VR, Surrogate(), reset)
    rz, rvp, rv = ref_lif(x.numpy(), a, gain, VL, TH, VR, reset, v0.numpy())
    assert rz.sum() > 10
    np.testing.assert_array_equal(z.numpy(), rz)
    np.testing.assert_allclose(vp.numpy(), rvp, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(vT.numpy(), rv, rtol=1e-13, atol=1e-13)
    z1, st, vp1 = F.lif_step(x[0], F.LIFState(v0), a, gain, VL, TH, VR, Surrogate(), reset)
    np.testing.assert_array_equal(z1.numpy(), rz[0])
    np.testing.assert_allclose(vp1.numpy(), rvp[0], rtol=1e-14)
    expect_v = rvp[0] - rz[0] * TH if reset == "subtract" else np.where(rz[0] > 0, VR, rvp[0])
    np.testing.assert_allclose(st.v.numpy(), expect_v, rtol=1e-14)


def test_synaptic_filter_and_li_closed_forms():
    a, g, I, T = 0.7, 0.45, 1.3, 25
    x = torch.full((T, 1), I, dtype=torch.float64)
    i0 = torch.tensor([0.8], dtype=torch.float64)
    i, i_last = F.synaptic_filter(x, i0, a, g)
    t = np.arange(1, T + 1)
    i_star = g * I / (1 - a)                                # fixed point
    expected = i_star + (0.8 - i_star) * a**t
    np.testing.assert_allclose(i[:, 0].numpy(), expected, rtol=1e-13)
    assert float(i_last) == pytest.approx(expected[-1], rel=1e-13)
    v, v_last = F.li_multistep(x, i0, a, g, VL)
    v_star = VL + g * I / (1 - a)
    expected = v_star + (0.8 - v_star) * a**t
    np.testing.assert_allclose(v[:, 0].numpy(), expected, rtol=1e-13)
    assert float(v_last) == pytest.approx(expected[-1], rel=1e-13)


def test_alif_step_adaptation_in_closed_form():
    """One spike at step 0, then silence: ``b_k = (1 - rho) rho^(k-1)`` and the threshold
    ``v_th + beta b_k``; the subtract reset uses the adapted threshold."""
    rho, beta, a, gain = 0.8, 1.5, 0.9, 1.0
    x = torch.tensor([[5.0]] + [[0.0]] * 11, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    state = F.ALIFState(torch.full((1,), VL, dtype=torch.float64), zero, zero)
    bs, zs = [], []
    for xt in x:
        z, state, _ = F.alif_step(xt, state, a, gain, VL, TH, VR, rho, beta, Surrogate(), "zero")
        bs.append(float(state.b))
        zs.append(float(z))
    assert zs == [1.0] + [0.0] * 11
    k = np.arange(1, 12)
    np.testing.assert_allclose(bs, [0.0, *((1 - rho) * rho ** (k - 1))], rtol=1e-13)
    # second case: a spike while adapted, subtract reset by the adapted threshold
    state = F.ALIFState(torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                        torch.tensor([1.0], dtype=torch.float64))
    z, st, vp = F.alif_step(torch.tensor([3.0], dtype=torch.float64), state, a, gain, VL, TH, VR, rho, beta,
                            Surrogate(), "subtract")
    b = rho * 0.5 + (1 - rho) * 1.0
    assert float(st.b) == pytest.approx(b)
    assert float(vp) == pytest.approx((1 - a) * VL + 3.0)
    assert float(z) == 1.0 and float(st.z) == 1.0
    assert float(st.v) == pytest.approx(float(vp) - (TH + beta * b))
    # and not spiking when the input lies between the plain and the adapted threshold
    state = F.ALIFState(torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                        torch.tensor([1.0], dtype=torch.float64))
    z, st, _ = F.alif_step(torch.tensor([TH + 0.5]), state, a, gain, 0.0, TH, VR, rho, beta, Surrogate(), "zero")
    assert float(z) == 0.0 and float(st.v) == pytest.approx(TH + 0.5)


# -- modules: every kind with non-zero leak and reset potentials --------------------------------
@pytest.mark.parametrize("integration", ["exact", "euler"])
def test_lif_subthreshold_trace_relaxes_to_the_leak_plus_drive(integration):
    tau, I = 8e-3, 0.45                      # fixed point VL + R I = 0.465 < TH
    n = LIF(tau_mem=tau, dt=DT, r=R, v_leak=VL, v_reset=VR, v_th=TH, integration=integration)
    n.record = True
    z = n(torch.full((60, 1, 1), I, dtype=torch.float64))
    a, _ = _coeffs(tau, integration)
    t = np.arange(1, 61)
    assert z.sum() == 0
    np.testing.assert_allclose(n.v_trace[:, 0, 0].numpy(), VL + R * I * (1 - a**t), rtol=1e-12)
    # with no input the membrane stays at rest (v_leak), not at 0
    n.reset()
    n(torch.zeros(5, 1, 1, dtype=torch.float64))
    np.testing.assert_allclose(n.v_trace[:, 0, 0].numpy(), VL, rtol=1e-14)


@pytest.mark.parametrize("integration", ["exact", "euler"])
def test_lif_zero_reset_period_from_the_closed_form(integration):
    """From rest ``v_leak`` the first spike is at the first ``t`` with
    ``v_inf + (v_leak - v_inf) a^t > v_th``; after a zero reset to ``v_reset`` the charge
    curve restarts from ``v_reset``: period ``p`` with ``v_inf + (v_reset - v_inf) a^p > v_th``."""
    tau, I, T = 1e-2, 0.9, 200
    n = LIF(tau_mem=tau, dt=DT, r=R, v_leak=VL, v_reset=VR, v_th=TH, reset="zero", integration=integration)
    z = n(torch.full((T, 1, 1), I, dtype=torch.float64))[:, 0, 0].numpy()
    a, _ = _coeffs(tau, integration)
    v_inf = VL + R * I

    def first(v_start):
        k = 1
        while not v_inf + (v_start - v_inf) * a**k > TH:
            k += 1
        return k

    t1, p = first(VL), first(VR)
    assert t1 != p  # the reset potential matters
    expected = np.zeros(T)
    expected[t1 - 1 :: p] = 1
    np.testing.assert_array_equal(z, expected)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("integration", ["exact", "euler"])
def test_every_lif_path_matches_the_reference(reset, integration):
    tau = 5e-3
    a, gain = _coeffs(tau, integration)
    x = _x(seed=2)
    rz, rvp, rv = ref_lif(x.numpy(), a, gain, VL, TH, VR, reset)
    assert 0 < rz.sum() < rz.size

    def make(**kw):
        n = LIF(tau_mem=tau, dt=DT, r=R, v_leak=VL, v_reset=VR, v_th=TH, reset=reset, integration=integration,
                **kw)
        n.record = True
        return n

    # numba-fused (scalars), autograd (learnable threshold), single steps
    for n in (make(), make(learn_threshold=True)):
        z = n(x.clone().requires_grad_())
        np.testing.assert_array_equal(z.detach().numpy(), rz)
        np.testing.assert_allclose(n.v_trace.numpy(), rvp, rtol=1e-6 if n._learnable() else 1e-12, atol=1e-6)
        np.testing.assert_allclose(n.state.v.detach().numpy(), rv, rtol=1e-5, atol=1e-5)
    n = make()
    state, zs = None, []
    for xt in x:
        zt, state = n.step(xt, state)
        zs.append(zt)
    np.testing.assert_array_equal(torch.stack(zs).numpy(), rz)
    np.testing.assert_allclose(state.v.numpy(), rv, rtol=1e-12, atol=1e-12)
    # inference kernel (no grad, no recording)
    n = make()
    n.record = False
    with torch.no_grad():
        z = n(x)
    np.testing.assert_array_equal(z.numpy(), rz)
    np.testing.assert_allclose(n.state.v.numpy(), rv, rtol=1e-12, atol=1e-12)
    # torch-fused: a tensor decay keeps the numba kernel out
    z, vp, v = lif_multistep_fused(x, torch.full(x.shape[1:], VL, dtype=torch.float64),
                                   torch.tensor(a, dtype=torch.float64), gain, VL, TH, VR, Surrogate(), reset)
    np.testing.assert_array_equal(z.numpy(), rz)
    np.testing.assert_allclose(vp.numpy(), rvp, rtol=1e-12)
    np.testing.assert_allclose(v.numpy(), rv, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_per_neuron_parameters_take_the_torch_loop_with_the_same_maths(reset):
    th = np.array([0.5, 0.6, 0.7, 0.8, 0.9])
    vl = np.array([-0.3, -0.1, 0.0, 0.1, 0.2])
    n = LIF(tau_mem=5e-3, dt=DT, r=R, v_leak=vl, v_reset=VR, v_th=th, reset=reset)
    x = _x(seed=3)
    a, gain = _coeffs(5e-3, "exact")
    rz, _, rv = ref_lif(x.numpy(), a, gain, vl, th, VR, reset)
    z = n(x.clone().requires_grad_())
    np.testing.assert_array_equal(z.detach().numpy(), rz)
    np.testing.assert_allclose(n.state.v.numpy(), rv, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_if_with_leak_and_reset_potentials(reset):
    # IF: no leak term; v_leak is only where the membrane starts
    n = IF(r=0.5, v_leak=0.2, v_reset=-0.5, v_th=1.0, reset=reset)
    n.record = True
    x = torch.full((12, 1, 1), 0.5, dtype=torch.float64)   # +0.25 per step
    z = n(x)[:, 0, 0].numpy()
    rz, rvp, _ = ref_lif(x.numpy(), 1.0, 0.5, 0.2, 1.0, -0.5, reset)
    np.testing.assert_array_equal(z, rz[:, 0, 0])
    np.testing.assert_allclose(n.v_trace[:, 0, 0].numpy(), rvp[:, 0, 0], rtol=1e-14)
    # 0.2 + 0.25 t > 1 first at t = 4 (1.2); zero reset: -0.5 + 0.25 k > 1 at k = 7
    assert np.flatnonzero(z)[0] == 3
    if reset == "zero":
        assert np.flatnonzero(z).tolist() == [3, 10]
    else:  # subtract: 1.2 - 1 = 0.2, then the same charge curve: every 4 steps
        assert np.flatnonzero(z).tolist() == [3, 7, 11]


@pytest.mark.parametrize("path", ["numba", "torch", "autograd", "step", "inference"])
@pytest.mark.parametrize("kind", ["if", "lif"])
def test_input_landing_exactly_on_the_threshold_does_not_spike(path, kind):
    """Spikes are ``v > v_th`` (strict). Dyadic numbers keep every sum exact:
    IF: 0.5, 1.0 (= v_th: no spike), 1.5 (spike); LIF (euler, a = 1/2, v_leak = 1/2,
    R = 1, I = 3/2): 1.25 (= v_th: no spike), 1.625 (spike)."""
    if kind == "if":
        kw, x_val, th = {"r": 1.0}, 0.5, 1.0
        n_cls = IF
    else:
        kw, x_val, th = {"tau_mem": 2e-3, "dt": 1e-3, "integration": "euler", "v_leak": 0.5, "r": 1.0}, 1.5, 1.25
        n_cls = LIF
    x = torch.full((3, 1, 1), x_val, dtype=torch.float64)
    expected = [0.0, 1.0, 0.0] if kind == "lif" else [0.0, 0.0, 1.0]
    n = n_cls(v_th=th, learn_threshold=(path == "autograd"), **kw)
    n.record = True
    if path == "torch":
        a, gain = n.coefficients()
        z, vp, _ = lif_multistep_fused(x, torch.full((1, 1), n.v_leak, dtype=torch.float64),
                                       torch.tensor(float(a), dtype=torch.float64), gain, n.v_leak, th, 0.0,
                                       Surrogate(), "subtract")
    elif path == "step":
        zs, state = [], None
        for xt in x:
            zt, state = n.step(xt, state)
            zs.append(zt)
        z = torch.stack(zs)
    elif path == "inference":
        n.record = False
        with torch.no_grad():
            z = n(x)
    else:
        z = n(x.clone().requires_grad_())
    z = z.detach()[:, 0, 0]
    if kind == "if":
        assert z.tolist() == expected
    else:
        assert z.tolist()[:2] == expected[:2]
    if path in ("numba", "autograd"):
        assert n.v_trace[1, 0, 0].item() == th if kind == "if" else n.v_trace[0, 0, 0].item() == th


@pytest.mark.parametrize("integration", ["exact", "euler"])
def test_cubalif_with_leak_and_reset_potentials(integration):
    ts, tm, w = 3e-3, 6e-3, 0.8
    n = CubaLIF(tau_mem=tm, tau_syn=ts, w_in=w, dt=DT, r=R, v_leak=VL, v_reset=VR, v_th=TH, reset="zero",
                integration=integration)
    x = _x(seed=4, scale=2.0, offset=0.5)
    a_s = math.exp(-DT / ts) if integration == "exact" else 1 - DT / ts
    i, cur = [], np.zeros(x.shape[1:])
    for xt in x.numpy():
        cur = a_s * cur + (1 - a_s) * w * xt
        i.append(cur)
    a, gain = _coeffs(tm, integration)
    rz, _, rv = ref_lif(np.stack(i), a, gain, VL, TH, VR, "zero")
    assert 0 < rz.sum() < rz.size
    z = n(x.clone().requires_grad_())
    np.testing.assert_array_equal(z.detach().numpy(), rz)
    np.testing.assert_allclose(n.state.v.detach().numpy(), rv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(n.i_state.detach().numpy(), i[-1], rtol=1e-12)
    n.reset()
    state, zs = None, []
    for xt in x:
        zt, state = n.step(xt, state)
        zs.append(zt)
    np.testing.assert_array_equal(torch.stack(zs).numpy(), rz)


@pytest.mark.parametrize("cls", [LI, CubaLI])
def test_leaky_readouts_relax_to_the_leak_potential(cls):
    tm, I, T = 4e-3, 0.7, 30
    kw = {"tau_syn": 2e-3, "w_in": 1.0} if cls is CubaLI else {}
    n = cls(tau_mem=tm, dt=DT, r=R, v_leak=VL, **kw)
    v = n(torch.full((T, 1), I, dtype=torch.float64))[:, 0].numpy()
    a, gain = _coeffs(tm, "exact")
    t = np.arange(1, T + 1)
    if cls is LI:
        np.testing.assert_allclose(v, VL + R * I * (1 - a**t), rtol=1e-12)
    else:
        a_s = math.exp(-DT / 2e-3)
        cur = I * (1 - a_s**t)
        vv, ref = VL, []
        for c in cur:
            vv = a * vv + (1 - a) * VL + gain * c
            ref.append(vv)
        np.testing.assert_allclose(v, ref, rtol=1e-12)
    n.reset()
    outs, state = [], None
    for xt in torch.full((T, 1), I, dtype=torch.float64):
        o, state = n.step(xt, state)
        outs.append(o)
    np.testing.assert_allclose(torch.stack(outs)[:, 0].numpy(), v, rtol=1e-12)
    # silence: the membrane stays at v_leak
    n.reset()
    np.testing.assert_allclose(n(torch.zeros(4, 1, dtype=torch.float64)).numpy(), VL, rtol=1e-14)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("integration", ["exact", "euler"])
def test_alif_module_matches_the_reference(reset, integration):
    tm, ta, beta = 6e-3, 2e-2, 0.7
    n = ALIF(tau_mem=tm, tau_adapt=ta, beta_adapt=beta, dt=DT, r=R, v_leak=VL, v_reset=VR, v_th=TH, reset=reset,
             integration=integration)
    x = _x(seed=5, scale=2.0, offset=0.6)
    a, gain = _coeffs(tm, integration)
    rho = math.exp(-DT / ta) if integration == "exact" else 1 - DT / ta
    rz, rb = ref_alif(x.numpy(), a, gain, VL, TH, VR, rho, beta, reset)
    plain, _, _ = ref_lif(x.numpy(), a, gain, VL, TH, VR, reset)
    assert rz.sum() < plain.sum()  # adaptation matters here
    z = n(x)
    np.testing.assert_array_equal(z.numpy(), rz)
    np.testing.assert_allclose(n.state.b.numpy(), rb[-1], rtol=1e-12)
    state, zs = None, []
    for xt in x:
        zt, state = n.step(xt, state)
        zs.append(zt)
    np.testing.assert_array_equal(torch.stack(zs).numpy(), rz)


def test_alif_threshold_decays_in_closed_form_after_one_spike():
    tm, ta, beta = 1e-2, 5e-3, 2.0
    n = ALIF(tau_mem=tm, tau_adapt=ta, beta_adapt=beta, dt=DT, v_leak=VL, v_reset=VR, v_th=TH, reset="zero")
    x = torch.zeros(15, 1, dtype=torch.float64)
    x[0] = 50.0
    state, bs, zs = None, [], []
    for xt in x:
        z, state = n.step(xt, state)
        bs.append(float(state.b))
        zs.append(float(z))
    assert zs[0] == 1.0 and sum(zs) == 1.0
    rho = math.exp(-DT / ta)
    k = np.arange(1, 15)
    np.testing.assert_allclose(bs[1:], (1 - rho) * rho ** (k - 1), rtol=1e-12)
    assert bs[0] == 0.0


# -- fused backward vs autograd with non-default potentials ----------------------------------------
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("numba", [True, False], ids=["numba", "torch"])
def test_fused_gradient_equals_autograd_with_leak_and_reset(reset, detach, numba):
    x = (_x(T=15, seed=6, scale=2.0, offset=0.0)).requires_grad_()
    a, gain = _coeffs(4e-3, "exact")
    a_arg = a if numba else torch.tensor(a, dtype=torch.float64)
    v0 = torch.full(x.shape[1:], VL, dtype=torch.float64)
    s = Surrogate("sigmoid", 4.0)
    z1, vp1, v1 = lif_multistep_fused(x, v0, a_arg, gain, VL, TH, VR, s, reset, detach)
    w = torch.randn(z1.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (g1,) = torch.autograd.grad((z1 * w).sum(), x)
    z2, vp2, v2 = F.lif_multistep_autograd(x, v0, a, gain, VL, TH, VR, s, reset, detach)
    (g2,) = torch.autograd.grad((z2 * w).sum(), x)
    assert 0 < z1.sum() < z1.numel()
    torch.testing.assert_close(z1, z2)
    torch.testing.assert_close(vp1, vp2.detach())
    torch.testing.assert_close(v1, v2.detach())
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


# -- learnable vs fixed time constants ----------------------------------------------------------
@pytest.mark.parametrize("integration", ["exact", "euler"])
def test_learnable_tau_gives_the_fixed_tau_dynamics(integration):
    tau = 7e-3
    x = _x(seed=7, scale=1.5, offset=0.3)
    kw = dict(dt=DT, r=R, v_leak=VL, v_reset=VR, v_th=TH, integration=integration, reset="zero")
    fixed, learn = LIF(tau_mem=tau, **kw), LIF(tau_mem=tau, learn_tau=True, **kw)
    fixed.record = learn.record = True
    z_f = fixed(x.clone().requires_grad_())
    z_l = learn(x)
    assert learn._learnable()
    torch.testing.assert_close(z_f.detach(), z_l.detach())
    torch.testing.assert_close(fixed.v_trace, learn.v_trace, rtol=1e-6, atol=1e-6)
    a_l, g_l = learn.coefficients()
    a_f, g_f = fixed.coefficients()
    assert float(a_l.detach()) == pytest.approx(a_f, rel=1e-6)
    assert float(g_l.detach()) == pytest.approx(g_f, rel=1e-6)


@pytest.mark.parametrize("integration", ["exact", "euler"])
def test_learnable_tau_gradient_in_closed_form(integration):
    """Below threshold from rest, ``v_pre_t = v_leak + R I (1 - a^t)``; for ``L = sum_t z_t``
    the surrogate gradient is ``dL/dtau = sum_t s'(v_t - v_th) (-R I t a^(t-1)) da/dtau`` with
    ``da/dtau = a dt / tau^2`` (exact) or ``dt / tau^2`` (euler)."""
    tau, I, T = 5e-3, 0.4, 20
    n = LIF(tau_mem=tau, learn_tau=True, dt=DT, r=R, v_leak=VL, v_reset=VR, v_th=TH, integration=integration)
    z = n(torch.full((T, 1, 1), I, dtype=torch.float64))
    assert z.sum() == 0
    z.sum().backward()
    a = float(F.decay(DT, torch.tensor(tau, dtype=torch.float32), integration))
    t = np.arange(1, T + 1)
    v = VL + R * I * (1 - a**t)
    da = a * DT / tau**2 if integration == "exact" else DT / tau**2
    expected = np.sum(Surrogate().grad(torch.tensor(v - TH)).numpy() * (-R * I * t * a ** (t - 1)) * da)
    assert float(n.tau_mem.grad) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_lif_step_detaches_the_reset_by_default(reset):
    # the functional step's default is the modules' default (detach_reset=True): the
    # spike in the reset term is a constant for autograd, so d v_t / d x flows through
    # v_pre only (g for subtract, g (1 - z) for zero), not through the surrogate
    sg = Surrogate("atan")

    def grad(**kw):
        x = torch.tensor([1.5, 0.3], requires_grad=True)
        _, st, _ = F.lif_step(x, F.LIFState(torch.zeros(2)), 0.5, 1.0, 0.0, 1.0, 0.0, sg, reset, **kw)
        st.v.sum().backward()
        return x.grad

    assert torch.equal(grad(), grad(detach_reset=True))
    assert not torch.equal(grad(), grad(detach_reset=False))
    assert LIF(2).detach_reset is True


def test_every_functional_step_detaches_the_reset_by_default():
    import inspect

    fns = [f for _, f in inspect.getmembers(F, inspect.isfunction) if "detach_reset" in inspect.signature(f).parameters]
    assert len(fns) >= 3  # lif_step, the autograd multi-step, alif_step, ...
    for f in fns:
        default = inspect.signature(f).parameters["detach_reset"].default
        assert default is True or default is inspect.Parameter.empty, f.__name__
