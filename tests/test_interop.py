"""Our neurons against snnTorch and Norse where the maths is the same.

* Norse ``LIFBoxCell``: forward-Euler LIF, reset to ``v_reset`` (reset *not* detached),
  SuperSpike surrogate (Norse 1.1 ignores its ``alpha``: the backward is
  ``1/(|x|+1)^2``, i.e. slope 1). Same as our ``LIF(integration="euler", reset="zero",
  detach_reset=False, surrogate="fast_sigmoid:1", r=1)``: spikes, membranes and input
  gradients agree.
* snnTorch ``Leaky(beta, reset_mechanism="subtract", reset_delay=False)``:
  ``mem = beta*mem + x``; subtract the threshold in the step that fires (through the
  spike, so the reset carries gradient: our ``detach_reset=False``);
  ATan surrogate. Same as our LIF with ``a = beta`` and unit input gain
  (``r = 1/(1-beta)``). snnTorch's default ``reset_delay=True`` subtracts one step
  later and *without* the decay; that model differs from ours (and from NIR's ODE).
  snnTorch also skips the subtraction when the membrane is still above threshold after a
  reset ("avoid double reset"); with inputs below one threshold per step that never happens.
"""

import math

import pytest
import torch

from neuroplastic.neurons import LIF

norse = pytest.importorskip("norse.torch")
snn = pytest.importorskip("snntorch")

pytestmark = pytest.mark.interop


def _inputs(T=40, B=4, N=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, B, N, generator=g, dtype=torch.float64) * 30.0


def test_lif_matches_norse_lifbox():
    dt, tau = 1e-3, 1e-2
    x = _inputs()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    cell = norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=torch.tensor(1 / tau, dtype=torch.float64),
                                                   alpha=torch.tensor(100.0, dtype=torch.float64)), dt=dt)
    state, zs, vs = None, [], []
    for t in range(x.shape[0]):
        z, state = cell(x1[t], state)
        zs.append(z)
        vs.append(state.v)
    z_norse = torch.stack(zs)
    ours = LIF(tau_mem=tau, dt=dt, integration="euler", reset="zero", detach_reset=False,
               surrogate="fast_sigmoid:1", r=1.0)
    z_ours = ours(x2)
    assert z_norse.sum() > 10
    torch.testing.assert_close(z_ours, z_norse)
    w = torch.randn_like(z_ours)
    (z_norse * w).sum().backward()
    (z_ours * w).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)


def test_lif_matches_snntorch_leaky():
    beta = 0.9
    # inputs < 1 keep v_pre < 2 thresholds: snnTorch's "avoid double reset" logic then
    # coincides with a plain subtract reset
    x = (_inputs(seed=1) * 0.9 / 30).float()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    leaky = snn.Leaky(beta=beta, threshold=1.0, reset_mechanism="subtract", reset_delay=False,
                      spike_grad=snn.surrogate.atan(alpha=2.0))
    mem = leaky.init_leaky()
    zs = []
    for t in range(x.shape[0]):
        z, mem = leaky(x1[t], mem)
        zs.append(z)
    z_snn = torch.stack(zs)
    tau = -1e-3 / math.log(beta)  # exact decay: a = exp(-dt/tau) = beta
    ours = LIF(tau_mem=tau, dt=1e-3, integration="exact", reset="subtract", detach_reset=False,
               surrogate="atan", r=1 / (1 - beta))
    z_ours = ours(x2)
    assert z_snn.sum() > 10
    torch.testing.assert_close(z_ours, z_snn)
    w = torch.randn_like(z_ours)
    (z_snn * w).sum().backward()
    (z_ours * w).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)


@pytest.mark.parametrize("name,theirs", [("atan", lambda: snn.surrogate.atan(alpha=2.0)),
                                         ("sigmoid", lambda: snn.surrogate.sigmoid(slope=25)),
                                         ("fast_sigmoid", lambda: snn.surrogate.fast_sigmoid(slope=25))])
def test_surrogates_match_snntorch(name, theirs):
    from neuroplastic.surrogate import get_surrogate

    x = torch.linspace(-1, 1, 201, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    theirs()(x1).sum().backward()
    get_surrogate(name)(x2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
