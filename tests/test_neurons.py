"""Neuron dynamics against closed-form solutions and the fused/autograd equivalence."""

import math

import numpy as np
import pytest
import torch

from neuroplastic.errors import UserError
from neuroplastic.neurons import ALIF, IF, LI, LIF, CubaLIF
from neuroplastic.neurons import functional as F


def _const(T, value, shape=(1, 1)):
    return torch.full((T, *shape), float(value), dtype=torch.float64)


@pytest.mark.parametrize("integration", ["exact", "euler"])
def test_lif_subthreshold_matches_closed_form(integration):
    dt, tau, R, I = 1e-3, 1e-2, 1.0, 0.8  # R I < threshold: never fires
    n = LIF(tau_mem=tau, dt=dt, r=R, integration=integration)
    n.record = True
    z = n(_const(50, I))
    a = math.exp(-dt / tau) if integration == "exact" else 1 - dt / tau
    t = np.arange(1, 51)
    expected = R * I * (1 - a**t)  # v_t = R I (1 - a^t) from v_0 = 0
    assert z.sum() == 0
    np.testing.assert_allclose(n.v_trace[:, 0, 0].numpy(), expected, rtol=1e-12)


def test_exact_decay_is_the_ode_solution():
    # exact discretisation samples the continuous solution v(t) = R I (1 - exp(-t/tau))
    dt, tau, I = 1e-3, 7e-3, 0.5
    n = LIF(tau_mem=tau, dt=dt, integration="exact")
    n.record = True
    n(_const(30, I))
    t = dt * np.arange(1, 31)
    np.testing.assert_allclose(n.v_trace[:, 0, 0].numpy(), I * (1 - np.exp(-t / tau)), rtol=1e-12)


@pytest.mark.parametrize("integration", ["exact", "euler"])
def test_lif_firing_times_zero_reset(integration):
    dt, tau, R, I, th = 1e-3, 1e-2, 1.0, 2.0, 1.0
    n = LIF(tau_mem=tau, dt=dt, r=R, v_th=th, reset="zero", integration=integration)
    z = n(_const(100, I))[:, 0, 0].numpy()
    a = math.exp(-dt / tau) if integration == "exact" else 1 - dt / tau
    # first step t (1-based) with R I (1 - a^t) > th; a zero reset restarts the same charge curve
    k = math.ceil(math.log(1 - th / (R * I)) / math.log(a))
    if R * I * (1 - a**k) == th:
        k += 1
    expected = np.zeros(100)
    expected[k - 1 :: k] = 1
    np.testing.assert_array_equal(z, expected)


def test_if_spike_count_subtract_reset():
    n = IF(r=1.0, v_th=1.0)
    z = n(_const(40, 0.3))[:, 0, 0]
    # v_t = 0.3 t - k (subtract): k-th spike when 0.3 t crosses k
    cum = 0.3 * np.arange(1, 41)
    expected = np.diff(np.floor(cum - 1e-9), prepend=0)
    np.testing.assert_array_equal(z.numpy(), expected)


def test_cubalif_current_closed_form():
    dt, ts, tm, w = 1e-3, 5e-3, 1e-2, 0.9
    n = CubaLIF(tau_mem=tm, tau_syn=ts, w_in=w, dt=dt)
    n.record = True
    n(_const(20, 1.0))
    a_s, a_m = math.exp(-dt / ts), math.exp(-dt / tm)
    i = w * (1 - a_s ** np.arange(1, 21))  # i_t = w (1 - a_s^t)
    v, vs = 0.0, []
    for it in i:
        v = a_m * v + (1 - a_m) * it
        vs.append(v)
    np.testing.assert_allclose(n.v_trace[:, 0, 0].numpy(), vs, rtol=1e-12)


def test_li_readout_and_step_agree():
    n = LI(tau_mem=5e-3)
    x = torch.randn(15, 3, 4, dtype=torch.float64)
    v = n(x)
    state, outs = None, []
    for t in range(15):
        out, state = n.step(x[t], state)
        outs.append(out)
    torch.testing.assert_close(v, torch.stack(outs))


@pytest.mark.parametrize("cls", [LIF, CubaLIF, ALIF])
def test_step_matches_multistep(cls):
    torch.manual_seed(0)
    n = cls()
    x = torch.randn(12, 2, 5, dtype=torch.float64) * 3
    z_multi = n(x)
    state, zs = None, []
    for t in range(12):
        z, state = n.step(x[t], state)
        zs.append(z)
    torch.testing.assert_close(z_multi, torch.stack(zs))


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid", "fast_sigmoid", "triangle", "rectangle"])
@pytest.mark.parametrize("per_neuron", [True, False], ids=["torch-path", "numba-path"])
def test_fused_equals_autograd(reset, detach, surrogate, per_neuron):
    torch.manual_seed(1)
    x = (torch.randn(9, 3, 6, dtype=torch.float64) * 2).requires_grad_()
    # per-neuron thresholds take the torch loop; scalars the numba kernels
    v_th = torch.rand(6, dtype=torch.float64) + 0.5 if per_neuron else 0.8
    n = LIF(tau_mem=4e-3, reset=reset, detach_reset=detach, surrogate=surrogate)
    a, g = n.coefficients()
    from neuroplastic.neurons.fused import lif_multistep_fused

    z1, _, _ = lif_multistep_fused(x, torch.zeros(3, 6, dtype=torch.float64), a, g, 0.0, v_th, 0.0,
                                   n.surrogate, reset, detach)
    w = torch.randn_like(z1)
    (g1,) = torch.autograd.grad((z1 * w).sum(), x)
    z2, _, _ = F.lif_multistep_autograd(x, torch.zeros(3, 6, dtype=torch.float64), a, g, 0.0, v_th, 0.0,
                                        n.surrogate, reset, detach)
    (g2,) = torch.autograd.grad((z2 * w).sum(), x)
    torch.testing.assert_close(z1, z2)
    torch.testing.assert_close(g1, g2)


def test_learnable_tau_and_threshold_get_gradients():
    n = LIF(learn_tau=True, learn_threshold=True, shape=(4,))
    x = torch.randn(10, 2, 4) * 3
    n(x).sum().backward()
    assert n.tau_mem.grad is not None and n.v_th.grad is not None
    assert torch.isfinite(n.tau_mem.grad).all()


def test_state_continues_until_reset():
    n = LIF(tau_mem=1e-2)
    x = _const(5, 0.5)
    n(x)
    v_after = n.state.v.clone()
    n(x)
    assert n.state.v.item() > v_after.item()
    n.reset()
    assert n.state is None


def test_alif_threshold_adapts():
    n = ALIF(tau_mem=1e-2, tau_adapt=5e-2, beta_adapt=2.0)
    plain = LIF(tau_mem=1e-2)
    x = _const(200, 3.0)
    assert n(x).sum() < plain(x).sum()


@pytest.mark.parametrize("kw", [{"tau_mem": 0}, {"dt": -1}, {"integration": "rk4"}, {"reset": "none"},
                                {"surrogate": "relu"}])
def test_bad_parameters_raise_user_errors(kw):
    with pytest.raises(UserError):
        LIF(**kw)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("kind", ["lif", "if", "cubalif"])
def test_inference_kernel_gives_the_training_spikes(kind, reset):
    """Under no_grad (and no recording) LIF-family layers take the kernel that skips the
    membrane trace: the same spikes and final state as the fused training path."""
    from neuroplastic.neurons import NEURONS

    torch.manual_seed(0)
    kw = {} if kind == "if" else {"tau_mem": 1e-2}
    n = NEURONS[kind](reset=reset, v_leak=0.2, v_reset=-0.1, r=30.0, **kw)
    x = torch.rand(30, 4, 16)
    z_train = n(x.clone().requires_grad_())
    v_train = n.state.v.detach()
    n.reset()
    with torch.no_grad():
        z_inf = n(x)
    assert z_train.sum() > 0
    assert torch.equal(z_train.detach(), z_inf)
    torch.testing.assert_close(n.state.v, v_train, rtol=0, atol=1e-6)
