"""HLOP and the projection maths at the boundaries where they act: the Hebbian update from
the first step on (with the rate, momentum, iterations and clip it documents), the
weighted (DSR-style) rate, new rows and the optimizer at a task start, subspace sizes
over many tasks (shrinking increments, capped at D), the per-step projection with a
learned non-orthonormal H, the lazy sync's idempotent basis, freezing, and the records."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from neuroplastic.datasets import ArrayDataset

from neuroplastic.encoders import make_encoder
from neuroplastic.network import mlp
from neuroplastic.plugins import build_plugins
from neuroplastic.plugins.projection import (
    activity_matrix,
    energy_fraction,
    hebbian_update,
    orthonormalize,
    project_weight_grad,
    random_orthonormal_rows,
    rate_weights,
    subspace_sizes,
)
from neuroplastic.training import Trainer, TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")

PAPER = {"hebb_every": 1, "project_every": 1, "lr_scale": "none", "lr": 0.01, "lr_input": 0.001}


def _trainer(model, plugins, T=3, lr=0.1, momentum=0.9, encoder="direct"):
    s = TrainSettings(epochs=1, batch_size=16, lr=lr, momentum=momentum, time_steps=T)
    return Trainer(model, make_encoder(encoder, T), s, plugins, "cpu", 0, True)


def _hlop(sizes, opts=None, T=3, encoder="direct", seed=0, momentum=0.9):
    torch.manual_seed(seed)
    model = mlp(sizes)
    plugins = build_plugins("hlop", {"hlop": {"energy_samples": 0, **(opts or {})}})
    tr = _trainer(model, plugins, T=T, encoder=encoder, momentum=momentum)
    return tr, plugins, plugins.plugins[0]


def _batch(gen, n_in, n_out=3, B=16):
    return torch.rand(B, n_in, generator=gen), torch.randint(0, n_out, (B,), generator=gen)


def _set_old(h, rows: dict[str, torch.Tensor], next_task: int = 1, task=None) -> None:
    """Finish task 0 with ``rows`` as the learned subspaces, start ``next_task``."""
    h.on_task_start(0, None)
    for n, H in rows.items():
        h.H[n] = H.clone()
        h.mom[n] = torch.zeros(0, H.shape[1])
    h.on_task_end(0, None)
    h.on_task_start(next_task, task)
    h.trainer.task_id = next_task
    h.trainer.refresh_trainable()


# -- the Hebbian update ------------------------------------------------------------------------
def test_h_changes_from_the_first_step_on_the_hebb_every_grid():
    tr, plugins, h = _hlop([12, 8, 3], {"init_size": [4, 3], "hebb_every": 3})
    plugins.on_task_start(0, None)
    gen = torch.Generator().manual_seed(1)
    changed = []
    for _ in range(7):
        before = {n: h.H[n].clone() for n in h.H}
        tr.train_step(*_batch(gen, 12), None)
        changed.append([not torch.equal(before[n], h.H[n]) for n in ("fc1", "fc2")])
    assert changed == [[True, True], [False, False], [False, False], [True, True], [False, False],
                       [False, False], [True, True]]


@pytest.mark.parametrize("scale", ["energy", "none"])
def test_first_step_is_the_documented_oja_update(scale):
    """Step 1 of task 0: ``hebbian_update`` of the layer's presynaptic activity with rate
    ``energy_lr / <|x|^2>`` (or the fixed ``lr_input`` for the input layer, ``lr`` for the
    others), momentum 0.9, 5 iterations, clip 10, from zero momentum."""
    opts = {"init_size": [4, 3], "hebb_every": 1}
    if scale == "none":
        opts.update(lr_scale="none", lr=0.05, lr_input=0.004)
    else:
        opts.update(energy_lr=3.0)
    tr, plugins, h = _hlop([12, 8, 3], opts)
    plugins.on_task_start(0, None)
    H0 = {n: h.H[n].clone() for n in h.H}
    assert all(torch.count_nonzero(h.mom[n]) == 0 for n in h.mom)
    tr.train_step(*_batch(torch.Generator().manual_seed(2), 12), None)
    for n, fixed in (("fc1", 0.004), ("fc2", 0.05)):
        X = activity_matrix(tr.model.layers[n], tr.model.layers[n].last_input)
        lr = fixed if scale == "none" else 3.0 / float((X * X).sum(1).mean())
        H, mom = H0[n].clone(), torch.zeros_like(H0[n])
        hebbian_update(X, H, mom, 0, lr=lr, momentum=0.9, iters=5, clip=10.0)
        torch.testing.assert_close(h.H[n], H, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(h.mom[n], mom, rtol=1e-5, atol=1e-7)
        assert not torch.equal(H, H0[n])


def test_hebbian_update_iterations_momentum_and_clip_by_hand():
    """Two plain Oja iterations with the exponential-average momentum, written out."""
    gen = torch.Generator().manual_seed(3)
    X = torch.rand(6, 10, generator=gen, dtype=torch.float64) * 3  # n < D: the row form
    H_old = orthonormalize(torch.randn(2, 10, generator=gen, dtype=torch.float64))
    H_new = torch.randn(3, 10, generator=gen, dtype=torch.float64) * 0.3
    H = torch.cat([H_old, H_new])
    mom = torch.full((3, 10), 0.01, dtype=torch.float64)
    Hr, mr = H.clone(), mom.clone()
    for _ in range(2):
        Y = X @ Hr.T
        dH = ((Y[:, 2:].T @ (X - Y @ Hr)) / 6).clamp(-0.05, 0.05)
        mr = 0.7 * mr + 0.3 * dH
        Hr[2:] = Hr[2:] + 0.2 * mr
    act = hebbian_update(X, H, mom, 2, lr=0.2, momentum=0.7, iters=2, clip=0.05)
    torch.testing.assert_close(H, Hr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mom, mr, rtol=1e-12, atol=1e-12)
    assert torch.equal(H[:2], H_old)
    # activity: |Y| per subspace neuron, averaged over the rows, before the first iteration
    Y0 = X @ torch.cat([H_old, H_new]).T
    torch.testing.assert_close(act, Y0.abs().mean(0), rtol=1e-12, atol=1e-12)
    # the clip binds: without it the update is larger
    H2, m2 = torch.cat([H_old, H_new]), torch.full((3, 10), 0.01, dtype=torch.float64)
    hebbian_update(X, H2, m2, 2, lr=0.2, momentum=0.7, iters=2, clip=100.0)
    assert not torch.allclose(H2, H)


def test_hebbian_update_covariance_form_and_frozen_only():
    gen = torch.Generator().manual_seed(4)
    X = torch.rand(50, 6, generator=gen, dtype=torch.float64)  # n > D: covariance form
    H = torch.cat([orthonormalize(torch.randn(2, 6, generator=gen, dtype=torch.float64)),
                   torch.randn(2, 6, generator=gen, dtype=torch.float64) * 0.2])
    Hr, mr = H.clone(), torch.zeros(2, 6, dtype=torch.float64)
    C = X.T @ X / 50
    for _ in range(3):
        dH = (Hr[2:] @ C - (Hr[2:] @ C @ Hr.T) @ Hr).clamp(-10, 10)
        mr = 0.9 * mr + 0.1 * dH
        Hr[2:] += 0.05 * mr
    mom = torch.zeros(2, 6, dtype=torch.float64)
    act = hebbian_update(X, H, mom, 2, lr=0.05, iters=3)
    torch.testing.assert_close(H, Hr, rtol=1e-12, atol=1e-12)
    assert act.shape == (4,)
    # only frozen rows: nothing changes, the activity is still reported
    Hf = H[:2].clone()
    act = hebbian_update(X, Hf, torch.zeros(0, 6, dtype=torch.float64), 2, lr=0.05)
    assert torch.equal(Hf, H[:2])
    torch.testing.assert_close(act, (X @ Hf.T).abs().mean(0))
    assert hebbian_update(X, torch.zeros(0, 6), torch.zeros(0, 6), 0, lr=0.1).shape == (0,)


def test_weighted_rate_activity():
    """DSR's weighted firing rate: ``w_t ~ exp(-(T-1-t)/tau)``, normalised; uniform without tau."""
    w = rate_weights(4, 2.0)
    e = torch.exp(-torch.tensor([3.0, 2.0, 1.0, 0.0]) / 2.0)
    torch.testing.assert_close(w, e / e.sum())
    torch.testing.assert_close(rate_weights(5, None), torch.full((5,), 0.2))
    lin = mlp([3, 2]).layers["fc1"]
    x = torch.rand(4, 2, 3, generator=torch.Generator().manual_seed(0))
    expected = sum(w[t] * x[t] for t in range(4))
    torch.testing.assert_close(activity_matrix(lin, x, "rate", 2.0), expected)
    torch.testing.assert_close(activity_matrix(lin, x, "rate"), x.mean(0))
    with pytest.raises(ValueError, match="activity"):
        activity_matrix(lin, x, "trace")


def test_hlop_hebbian_step_uses_the_weighted_rate():
    tr, plugins, h = _hlop([12, 8, 3], {"init_size": [4, 3], "activity": "rate", "rate_tau": 1.5, **PAPER},
                           T=5, encoder="rate")
    plugins.on_task_start(0, None)
    H0 = h.H["fc2"].clone()
    tr.train_step(*_batch(torch.Generator().manual_seed(5), 12), None)
    x = tr.model.layers["fc2"].last_input  # hidden spikes [T, B, 8]
    assert x.shape[0] == 5 and not torch.equal(x[0], x[-1])
    X = torch.tensordot(rate_weights(5, 1.5), x, dims=([0], [0]))
    H, mom = H0.clone(), torch.zeros_like(H0)
    hebbian_update(X, H, mom, 0, lr=0.01, momentum=0.9, iters=5)
    torch.testing.assert_close(h.H["fc2"], H, rtol=1e-5, atol=1e-7)


# -- task boundaries -------------------------------------------------------------------------------
@pytest.mark.parametrize("reset", [True, False, None])
def test_optimizer_state_is_cleared_at_later_task_starts_only(reset):
    """``reset_optimizer`` (on by default: ``None`` leaves the option out)."""
    opts = {"init_size": [4, 3]} if reset is None else {"init_size": [4, 3], "reset_optimizer": reset}
    tr, plugins, h = _hlop([12, 8, 3], opts)
    reset = True if reset is None else reset
    gen = torch.Generator().manual_seed(6)
    tr.train_step(*_batch(gen, 12), None)  # momentum buffers exist before any task start
    assert len(tr.optimizer.state) > 0
    plugins.on_task_start(0, None)
    assert len(tr.optimizer.state) > 0  # task 0: never cleared
    for _ in range(2):
        tr.train_step(*_batch(gen, 12), None)
    plugins.on_task_end(0, None)
    bufs = {id(p): s["momentum_buffer"].clone() for p, s in tr.optimizer.state.items()}
    plugins.on_task_start(1, None)
    if reset:
        assert len(tr.optimizer.state) == 0
    else:
        assert {id(p): s["momentum_buffer"] for p, s in tr.optimizer.state.items()}.keys() == bufs.keys()
        for p, s in tr.optimizer.state.items():
            assert torch.equal(s["momentum_buffer"], bufs[id(p)])


def test_new_rows_of_a_learned_subspace_start_orthonormal_in_its_complement():
    tr, plugins, h = _hlop([12, 8, 3], {"init_size": [4, 3], "inc_size": [3, 2], "hebb_every": 1})
    gen = torch.Generator().manual_seed(7)
    plugins.on_task_start(0, None)
    for _ in range(3):
        tr.train_step(*_batch(gen, 12), None)
    plugins.on_task_end(0, None)
    old = {n: h.H[n].clone() for n in h.H}
    for n, M in (("fc1", 4), ("fc2", 3)):
        assert old[n].shape[0] == M == h.n_old[n]
        # learned: no longer orthonormal (the point of this test)
        assert not torch.allclose(old[n] @ old[n].T, torch.eye(M), atol=1e-4)
    plugins.on_task_start(1, None)
    for n, k in (("fc1", 3), ("fc2", 2)):
        H = h.H[n]
        assert H.shape[0] == old[n].shape[0] + k
        assert torch.equal(H[: h.n_old[n]], old[n])   # old rows kept as learned
        new = H[h.n_old[n]:]
        Q = torch.linalg.svd(old[n].double(), full_matrices=False).Vh
        assert (new.double() @ Q.T).abs().max() < 1e-5  # orthogonal to the old span
        torch.testing.assert_close(new @ new.T, torch.eye(k), atol=1e-5, rtol=0)
        assert h.mom[n].shape == (k, H.shape[1]) and torch.count_nonzero(h.mom[n]) == 0
    # training task 1 moves only the new rows
    tr.task_id = 1
    new0 = {n: h.H[n][h.n_old[n]:].clone() for n in h.H}
    tr.train_step(*_batch(gen, 12), None)
    for n in h.H:
        assert torch.equal(h.H[n][: h.n_old[n]], old[n])
        assert not torch.equal(h.H[n][h.n_old[n]:], new0[n])


def test_subspace_sizes_over_seven_tasks_shrink_and_cap_at_d():
    """fc1 (D = 40): 4, then +10 shrinking by round(0.1 * 40) = 4 at every 2nd task:
    +10, +6, +6, +2, +2, +0 -> 4, 14, 20, 26, 28, 30, 30. fc2 (D = 8): 4, +3, +2... capped at 8."""
    tr, plugins, h = _hlop([40, 8, 3], {"init_size": [4, 4], "inc_size": [10, 3], "inc_shrink": 0.1,
                                        "inc_shrink_every": 2})
    expect = {"fc1": [4, 14, 20, 26, 28, 30, 30], "fc2": [4, 7, 8, 8, 8, 8, 8]}
    incs = {"fc1": [4, 10, 6, 6, 2, 2, 0], "fc2": [4, 3, 2, 2, 1, 1, 0]}
    for t in range(7):
        plugins.on_task_start(t, None)
        for n, D in (("fc1", 40), ("fc2", 8)):
            assert h.increment(n, t) == incs[n][t]
            assert h.H[n].shape == (expect[n][t], D)
            k = expect[n][t] - (expect[n][t - 1] if t else 0)
            assert h.mom[n].shape == (k, D)
            # untrained rows stay one orthonormal set across tasks (complement init)
            torch.testing.assert_close(h.H[n] @ h.H[n].T, torch.eye(expect[n][t]), atol=1e-5, rtol=0)
        plugins.on_task_end(t, None)
    assert h.sizes == expect
    assert h.metrics()["hlop"]["subspace_sizes"] == expect
    assert h.n_old == {"fc1": 30, "fc2": 8}


def test_increment_without_shrinking_and_fraction_sizes():
    tr, plugins, h = _hlop([40, 8, 3], {"init_size": [0.25], "inc_size": [0.1, 2], "inc_shrink_every": 0})
    assert [h.increment("fc1", t) for t in range(5)] == [10, 4, 4, 4, 4]
    assert [h.increment("fc2", t) for t in range(5)] == [2, 2, 2, 2, 2]
    tr, plugins, h = _hlop([40, 8, 3], {"init_size": [5], "inc_size": [7], "inc_shrink": 0.0})
    assert [h.increment("fc1", t) for t in range(8)] == [5] + [7] * 7
    # the documented defaults: 0.10 D (input layer), 0.125 D (last), 0.25 D (others); +0.09 D
    tr, plugins, h = _hlop([40, 16, 8, 3])
    assert [h.increment(n, 0) for n in ("fc1", "fc2", "fc3")] == [4, 4, 1]
    assert [h.increment(n, 1) for n in ("fc1", "fc2", "fc3")] == [4, 1, 1]
    assert [h.increment(n, 3) for n in ("fc1", "fc2", "fc3")] == [3, 1, 1]  # - round(0.025 D) at t = 3
    assert subspace_sizes([0.5, 3.0, 1.0], [10, 10, 10], [0.1]) == [5, 3, 10]
    assert subspace_sizes([0], [10], [0.1]) == [0]
    for bad in ([-1], [True], ["3"]):
        with pytest.raises(ValueError, match="non-negative"):
            subspace_sizes(bad, [10], [0.1])


# -- the projection ----------------------------------------------------------------------------------
def _learned_rows(D=20, s=(1.2, 0.9, 0.75, 0.5), seed=8):
    V = random_orthonormal_rows(len(s), D, torch.Generator().manual_seed(seed))
    return torch.tensor(s).unsqueeze(1) * V, V


@pytest.mark.parametrize("mode", ["weight", "input"])
def test_per_step_projection_uses_the_learned_h_as_it_is(mode):
    """``dW <- dW (I - H^T H)`` with the learned (non-orthonormal) H, as the official code:
    not an orthonormal basis of its span."""
    tr, plugins, h = _hlop([20, 6], {"layers": ["fc1"], "linear_mode": mode, **PAPER})
    H, _ = _learned_rows()
    _set_old(h, {"fc1": H})
    fc1 = tr.model.layers["fc1"]
    gen = torch.Generator().manual_seed(9)
    x, y = torch.rand(16, 20, generator=gen), torch.randint(0, 6, (16,), generator=gen)
    F.cross_entropy(tr.forward_logits(x, None), y).backward()
    g = fc1.weight.grad.clone()
    plugins.after_backward()
    expected = g - (g @ H.T) @ H
    torch.testing.assert_close(fc1.weight.grad, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(fc1.weight.grad, project_weight_grad(g, orthonormalize(H)), atol=1e-5)
    # the input gradient is not projected, the bias (frozen after task 0) has none
    assert fc1.bias.grad is None


def test_no_projection_in_task_zero():
    tr, plugins, h = _hlop([20, 6], {"layers": ["fc1"], **PAPER})
    plugins.on_task_start(0, None)
    H = h.H["fc1"]
    assert H.shape[0] > 0
    fc1 = tr.model.layers["fc1"]
    gen = torch.Generator().manual_seed(10)
    x, y = torch.rand(16, 20, generator=gen), torch.randint(0, 6, (16,), generator=gen)
    F.cross_entropy(tr.forward_logits(x, None), y).backward()
    g = fc1.weight.grad.clone()
    plugins.after_backward()
    assert torch.equal(fc1.weight.grad, g)


def test_lazy_sync_projects_onto_an_idempotent_basis_of_a_learned_h():
    """``project_every = 2``: at every 2nd step the weight change since the task start is
    projected on the complement of the right singular vectors of ``H_old`` with
    ``s^2 >= 1/2`` (0.75 kept, 0.5 not). The projector is idempotent: the task-end sync
    right after a sync changes nothing."""
    tr, plugins, h = _hlop([20, 6], {"layers": ["fc1"], "project_every": 2, "hebb_every": 1})
    H, V = _learned_rows()
    _set_old(h, {"fc1": H})
    fc1 = tr.model.layers["fc1"]
    W0 = fc1.weight.detach().clone()
    gen = torch.Generator().manual_seed(11)
    overlaps = []
    for _ in range(4):
        tr.train_step(torch.rand(16, 20, generator=gen), torch.randint(0, 6, (16,), generator=gen), None)
        dW = fc1.weight.detach() - W0
        overlaps.append(((dW @ V[:3].T).abs().max().item(), (dW @ V[3]).abs().max().item()))
    assert overlaps[1][0] < 1e-6 and overlaps[3][0] < 1e-6, overlaps      # synced: kept directions
    assert overlaps[0][0] > 1e-4 and overlaps[2][0] > 1e-4, overlaps      # in between: unprojected
    assert overlaps[1][1] > 1e-4 and overlaps[3][1] > 1e-4, overlaps      # s = 0.5 < sqrt(1/2): not protected
    W4 = fc1.weight.detach().clone()
    plugins.on_task_end(1, None)
    torch.testing.assert_close(fc1.weight.detach(), W4, rtol=0, atol=1e-7)
    assert h.anchor == {}


def test_freezing_after_task_zero():
    for freeze in (True, False):
        tr, plugins, h = _hlop([12, 8, 3], {"init_size": [2, 2], "freeze_non_weights": freeze, **PAPER})
        gen = torch.Generator().manual_seed(12)
        bias = tr.model.layers["fc1"].bias
        b0 = bias.detach().clone()
        plugins.on_task_start(0, None)
        tr.train_step(*_batch(gen, 12), None)
        assert not torch.equal(bias.detach(), b0)  # trained in task 0
        plugins.on_task_end(0, None)
        plugins.on_task_start(1, None)
        tr.task_id = 1
        tr.refresh_trainable()
        b1 = bias.detach().clone()
        w1 = tr.model.layers["fc1"].weight.detach().clone()
        for _ in range(2):
            tr.train_step(*_batch(gen, 12), None)
        assert bias.requires_grad is not freeze
        assert torch.equal(bias.detach(), b1) is freeze
        assert not torch.equal(tr.model.layers["fc1"].weight.detach(), w1)  # weights always train
        assert h.trainable("fc1.weight", tr.model.layers["fc1"].weight, 5)
        assert h.trainable("fc1.bias", bias, 0)


# -- records ---------------------------------------------------------------------------------------------
def test_activity_record_is_the_mean_first_iteration_activity():
    tr, plugins, h = _hlop([12, 8, 3], {"init_size": [4, 3], **PAPER})
    plugins.on_task_start(0, None)
    gen = torch.Generator().manual_seed(13)
    acts = []
    for _ in range(2):
        H_before = h.H["fc1"].clone()
        tr.train_step(*_batch(gen, 12), None)
        X = activity_matrix(tr.model.layers["fc1"], tr.model.layers["fc1"].last_input)
        acts.append((X @ H_before.T).abs().mean(0))
    plugins.on_task_end(0, None)
    torch.testing.assert_close(h.activity["fc1"][0], (acts[0] + acts[1]) / 2, rtol=1e-5, atol=1e-7)
    assert h.sizes["fc1"] == [4] and h.mom["fc1"].shape == (0, 12)


class _Task:
    def __init__(self, x, y):
        self.train = ArrayDataset(x, y, 3)
        self.head = None


def test_old_and_captured_energy_in_closed_form():
    """Input rows ``e_i + e_j`` with ``e_i`` in the old span and ``e_j`` outside it carry
    half of their energy in the old subspace; rows inside it carry all of it."""
    tr, plugins, h = _hlop([10, 8, 3], {"layers": ["fc1"], "init_size": [2], "inc_size": [1], "energy_samples": 8,
                                        "hebb_every": 10**6})
    E = torch.eye(10)
    half = torch.stack([E[i % 3] + E[3 + i % 4] for i in range(8)]) * 0.5
    task = _Task(half, torch.zeros(8, dtype=torch.long))
    _set_old(h, {"fc1": E[:3] * 2.0}, task=task)  # learned rows need not be orthonormal: their span counts
    assert h.old_energy["fc1"][0] != h.old_energy["fc1"][0]  # nan at task 0
    assert h.old_energy["fc1"][1] == pytest.approx(0.5, abs=1e-6)
    # with a learned, non-orthonormal H the energy is that of its span (not |H x|^2)
    assert energy_fraction(half, 2 * E[:3], orthonormal=False) == pytest.approx(0.5, abs=1e-6)
    assert energy_fraction(half, 2 * E[:3], orthonormal=True) == pytest.approx(2.0, abs=1e-6)
    # the one new row of task 1: set it to e_3, so the whole H spans e_0..e_3
    h.H["fc1"][3] = E[3]
    plugins.on_task_end(1, task)
    inside = sum(1 for i in range(8) if 3 + i % 4 == 3)
    assert h.captured_energy["fc1"][-1] == pytest.approx((8 * 0.5 + inside * 0.5) / 8, abs=1e-6)
    m = h.metrics()["hlop"]
    assert m["old_subspace_energy"]["fc1"][0] is None
    assert m["old_subspace_energy"]["fc1"][1] == pytest.approx(0.5, abs=1e-6)
    assert math.isfinite(m["captured_energy"]["fc1"][-1])


def test_lazy_sync_with_a_single_old_row():
    """One old row (the smallest old subspace) is protected by the lazy sync too."""
    tr, plugins, h = _hlop([20, 6], {"layers": ["fc1"], "project_every": 2, "hebb_every": 1})
    v = random_orthonormal_rows(1, 20, torch.Generator().manual_seed(14))
    _set_old(h, {"fc1": v})
    assert h.n_old["fc1"] == 1
    fc1 = tr.model.layers["fc1"]
    W0 = fc1.weight.detach().clone()
    gen = torch.Generator().manual_seed(15)
    for _ in range(2):
        tr.train_step(torch.rand(16, 20, generator=gen), torch.randint(0, 6, (16,), generator=gen), None)
    dW = fc1.weight.detach() - W0
    assert float(dW.abs().max()) > 1e-4
    assert float((dW @ v.T).abs().max()) < 1e-6


def test_state_roundtrip_keeps_counters_as_integers():
    tr, plugins, h = _hlop([12, 8, 3], {"init_size": [2, 2], "project_every": 4})
    gen = torch.Generator().manual_seed(16)
    plugins.on_task_start(0, None)
    tr.train_step(*_batch(gen, 12), None)
    plugins.on_task_end(0, None)
    plugins.on_task_start(1, None)
    tr.train_step(*_batch(gen, 12), None)
    state = h.state_dict()
    tr2, plugins2, h2 = _hlop([12, 8, 3], {"init_size": [2, 2], "project_every": 4})
    h2.load_state_dict(state)
    assert h2.task == 1 and type(h2.task) is int
    assert h2.n_old == {"fc1": 2, "fc2": 2} and all(type(v) is int for v in h2.n_old.values())
    assert h2._steps == 1 and type(h2._steps) is int
    assert h2.sizes == h.sizes and all(type(x) is int for v in h2.sizes.values() for x in v)
    for n in h.H:
        assert torch.equal(h2.H[n], h.H[n]) and torch.equal(h2.anchor[n], h.anchor[n])


@pytest.mark.parametrize("n_fixed", [0, 2])
def test_spiking_hebbian_update_quantises_in_the_many_rows_case(n_fixed):
    """With spiking lateral neurons the update always uses the quantised activity, also
    when there are more rows than dimensions (where the plain rule takes the covariance)."""
    from neuroplastic.plugins.projection import oja_subspace_step, quantize

    gen = torch.Generator().manual_seed(17)
    X = torch.rand(40, 6, generator=gen, dtype=torch.float64)
    H0 = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.4
    sp = (2.0, 7.0)  # coarse: the quantisation shows
    H, mom = H0.clone(), torch.zeros(4 - n_fixed, 6, dtype=torch.float64)
    act = hebbian_update(X, H, mom, n_fixed, lr=0.1, momentum=0.5, iters=3, spiking=sp)
    Hr, mr = H0.clone(), torch.zeros(4 - n_fixed, 6, dtype=torch.float64)
    for _ in range(3):
        dH, _ = oja_subspace_step(X, Hr, n_fixed, spiking=sp)
        mr = 0.5 * mr + 0.5 * dH
        Hr[n_fixed:] += 0.1 * mr
    torch.testing.assert_close(H, Hr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(act, quantize(X @ H0.T, *sp).abs().mean(0), rtol=1e-12, atol=1e-12)
    Hp, mp = H0.clone(), torch.zeros(4 - n_fixed, 6, dtype=torch.float64)
    hebbian_update(X, Hp, mp, n_fixed, lr=0.1, momentum=0.5, iters=3)
    assert not torch.allclose(Hp, H)


def test_max_rows_subsample_is_drawn_from_every_activity_row():
    """16 distinct input rows (direct encoding) of dimension 12, 8 drawn per update: only
    rows 12..15 carry activity, so a draw restricted to the first D rows would leave H alone."""
    tr, plugins, h = _hlop([12, 8, 3], {"layers": ["fc1"], "init_size": [3], "max_rows": 8, **PAPER})
    plugins.on_task_start(0, None)
    H0 = h.H["fc1"].clone()
    x = torch.zeros(16, 12)
    x[12:] = torch.rand(4, 12, generator=torch.Generator().manual_seed(18))
    tr.train_step(x, torch.zeros(16, dtype=torch.long), None)
    assert activity_matrix(tr.model.layers["fc1"], tr.model.layers["fc1"].last_input).shape == (16, 12)
    assert not torch.equal(h.H["fc1"], H0)


def test_documented_defaults_and_option_checks():
    from neuroplastic.plugins.hlop import HLOPOptions

    o = HLOPOptions()
    assert (o.lr_scale, o.energy_lr, o.lr, o.lr_input, o.momentum, o.hebb_iters, o.hebb_every, o.project_every,
            o.clip) == ("energy", 4.0, 0.08, 0.008, 0.9, 5, 8, 16, 10.0)
    assert (o.inc_shrink, o.inc_shrink_every, o.activity, o.rate_tau, o.max_rows, o.conv_mode, o.linear_mode) == \
        (0.025, 3, "spikes", None, None, "weight", "auto")
    assert (o.spiking, o.spiking_scale, o.spiking_steps, o.orthonormalize, o.init_complement, o.freeze_non_weights,
            o.reset_optimizer, o.energy_samples, o.seed) == (False, 20.0, 1000, False, True, True, True, 256, 0)
    for bad in ({"seed": True}, {"seed": -1}, {"seed": 1.0}, {"energy_samples": -1}, {"inc_shrink_every": True},
                {"hebb_every": 0}, {"hebb_iters": True}, {"project_every": 1.5}, {"momentum": 1.0},
                {"momentum": -0.1}, {"clip": 0}, {"energy_lr": True}, {"max_rows": 0}, {"rate_tau": 0},
                {"inc_shrink": -0.1}, {"layers": "fc1"}, {"init_size": 3}, {"linear_mode": "conv"},
                {"conv_mode": "auto"}):
        with pytest.raises(ValueError, match="hlop"):
            HLOPOptions(**bad)
    HLOPOptions(seed=0, energy_samples=0, inc_shrink_every=0, momentum=0.0, max_rows=1, rate_tau=2, inc_shrink=0)


def test_hebbian_update_with_fewer_rows_than_free_neurons():
    """n = 2 activity rows, k = 4 free rows: the other association order, same update."""
    gen = torch.Generator().manual_seed(19)
    X = torch.rand(2, 9, generator=gen, dtype=torch.float64)
    H0 = torch.cat([orthonormalize(torch.randn(1, 9, generator=gen, dtype=torch.float64)),
                    torch.randn(4, 9, generator=gen, dtype=torch.float64) * 0.3])
    H, mom = H0.clone(), torch.zeros(4, 9, dtype=torch.float64)
    hebbian_update(X, H, mom, 1, lr=0.3, momentum=0.8, iters=4, clip=0.2)
    Hr, mr = H0.clone(), torch.zeros(4, 9, dtype=torch.float64)
    for _ in range(4):
        Y = X @ Hr.T
        dH = ((Y[:, 1:].T @ (X - Y @ Hr)) / 2).clamp(-0.2, 0.2)
        mr = 0.8 * mr + 0.2 * dH
        Hr[1:] += 0.3 * mr
    torch.testing.assert_close(H, Hr, rtol=1e-12, atol=1e-12)


def test_input_mode_with_one_input_and_one_sample_uses_every_step():
    """``linear_mode = "input"`` sums ``G_t^T (x_t H^T H)`` over steps; an input that is
    the same at every step (stride 0) may use ``x_0``, a ``[T, 1, 1]`` one (stride 1)
    that changes over time may not."""
    tr, plugins, h = _hlop([1, 3], {"layers": ["fc1"], "linear_mode": "input", **PAPER}, T=6, encoder="rate")
    H = torch.tensor([[0.8]])
    _set_old(h, {"fc1": H})
    fc1 = tr.model.layers["fc1"]
    torch.manual_seed(3)
    F.cross_entropy(tr.forward_logits(torch.tensor([[0.5]]), None), torch.tensor([1])).backward()
    x = fc1.last_input
    assert x.shape == (6, 1, 1) and x.stride(0) == 1 and len(set(x.flatten().tolist())) == 2
    g = fc1.weight.grad.clone()
    plugins.after_backward()
    torch.testing.assert_close(fc1.weight.grad, g - (g @ H.T) @ H, rtol=1e-5, atol=1e-7)


def test_orthonormalize_a_single_row_and_rank_deficient_rows():
    r = torch.tensor([[3.0, 4.0, 0.0]])
    torch.testing.assert_close(orthonormalize(r).abs(), torch.tensor([[0.6, 0.8, 0.0]]))
    assert orthonormalize(torch.zeros(1, 3)).shape == (0, 3)
    assert orthonormalize(torch.zeros(0, 3)).shape == (0, 3)  # no rows: nothing to decompose
    dup = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    Q = orthonormalize(dup)
    assert Q.shape == (2, 3)
    torch.testing.assert_close(Q @ Q.T, torch.eye(2), atol=1e-6, rtol=0)


def test_energy_fraction_of_a_rank_deficient_non_orthonormal_h():
    """Rows that are not independent: ``H H^T`` is singular, the jittered Cholesky solve
    still gives the energy of the projector onto their span; all-zero rows (no factor at
    all) fall back to an orthonormal basis of their span, which is empty: no energy."""
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(12, 4, generator=gen)
    H = torch.tensor([[1.0, 2.0, 0.0, 0.0], [2.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0]])
    Q = orthonormalize(H)
    want = float((((X @ Q.T) ** 2).sum(1) / (X * X).sum(1)).mean())
    assert energy_fraction(X, H, orthonormal=False) == pytest.approx(want, rel=1e-6)
    # rows that are all zero: H H^T = 0 has no Cholesky factor (no jitter either): no energy
    assert energy_fraction(X, torch.zeros(2, 4), orthonormal=False) == 0.0
    # and a full-rank non-orthonormal H goes through the Cholesky solve
    H2 = torch.tensor([[1.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.5, 0.0]])
    Q2 = orthonormalize(H2)
    want2 = float((((X @ Q2.T) ** 2).sum(1) / (X * X).sum(1)).mean())
    assert energy_fraction(X, H2, orthonormal=False) == pytest.approx(want2, rel=1e-6)


@pytest.mark.parametrize("n_samples,batch", [(10, 4), (3, 8), (8, 4)])
def test_collect_activity_takes_exactly_the_first_n_samples(n_samples, batch):
    from neuroplastic.plugins.projection import collect_activity

    tr, _, _ = _hlop([5, 3], {"layers": ["fc1"]}, T=2)
    gen = torch.Generator().manual_seed(1)
    ds = ArrayDataset(torch.rand(20, 5, generator=gen), torch.randint(0, 3, (20,), generator=gen), 3)
    fc1 = tr.model.layers["fc1"]
    fc1.capture = False
    out = collect_activity(tr, ds, None, {"fc1": fc1}, n_samples, batch_size=batch)
    xs = torch.cat([x[0] for x in out["fc1"]])  # direct encoder: the input at step 0
    torch.testing.assert_close(xs, ds.x[:n_samples])
    assert fc1.capture is False  # restored


def test_max_rows_subsample_with_the_input_forms_cached_projection(monkeypatch):
    """Task 1, ``linear_mode = "input"`` with few activity rows against many outputs (D = 4,
    C = 100, 3 old rows, 8 samples, 3 drawn: the row form, which reuses the cache): the
    projection caches ``Y = X H_old^T`` and ``Y H_old`` for the Hebbian step, which must
    subsample them with the same rows as ``X``: the subspace after one step equals the
    weight form's (no cache) within rounding."""
    import neuroplastic.plugins.hlop as hlop_module

    seen = []

    def spy(*a, old=None, **k):
        seen.append(old is not None)
        return update(*a, old=old, **k)

    update = hlop_module.hebbian_update
    monkeypatch.setattr(hlop_module, "hebbian_update", spy)
    H = {}
    old_rows = torch.tensor([[1.0, 0.2, 0, 0], [0, 0.9, 0.1, 0], [0, 0, 1.1, 0.3]])
    for mode in ("input", "weight"):
        tr, plugins, h = _hlop([4, 100, 3], {"layers": ["fc1"], "init_size": [3], "inc_size": [1], "max_rows": 3,
                                             "linear_mode": mode, **PAPER})
        _set_old(h, {"fc1": old_rows})
        x = torch.rand(8, 4, generator=torch.Generator().manual_seed(19))
        seen.clear()
        tr.train_step(x, torch.zeros(8, dtype=torch.long), None)
        assert seen == [mode == "input"]  # the input form handed its cached products over
        H[mode] = h.H["fc1"].clone()
    assert H["input"].shape == (4, 4)
    torch.testing.assert_close(H["input"], H["weight"], rtol=1e-5, atol=1e-6)


def test_no_energy_samples_records_nan_not_zero():
    tr, plugins, h = _hlop([12, 8, 3], {"layers": ["fc1"], "energy_samples": 0})
    gen = torch.Generator().manual_seed(20)
    ds = ArrayDataset(torch.rand(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen), 3)

    class _T:
        train, head = ds, None

    for t in range(2):
        plugins.on_task_start(t, _T)
        tr.train_task([(ds, None)], t)
        plugins.on_task_end(t, _T)
    # not measured: NaN (null in metrics.json), one entry per task, never a made-up 0
    for rec in (h.old_energy, h.captured_energy):
        assert all(len(v) == 2 and all(math.isnan(e) for e in v) for v in rec.values())
    m = h.metrics()["hlop"]
    assert m["captured_energy"]["fc1"] == [None, None] and m["old_subspace_energy"]["fc1"] == [None, None]


def test_spiking_lateral_neurons_quantise_the_projection_from_task_one_on():
    """With spiking lateral neurons the per-step projection is the input form with a
    quantised ``y = q(X H_old^T)``: ``dW <- dW - sum_t G_t^T q(x_t H_old^T) H_old`` already in
    task 1 (coarse steps so the quantisation shows)."""
    from neuroplastic.plugins.projection import quantize

    tr, plugins, h = _hlop([6, 5, 3], {"layers": ["fc1"], "spiking": True, "spiking_scale": 2.0,
                                       "spiking_steps": 3, **PAPER}, encoder="rate")
    H_old = torch.tensor([[0.7, 0.1, 0.0, 0.3, 0.0, 0.2], [0.0, 0.5, 0.4, 0.0, 0.3, 0.0]])
    _set_old(h, {"fc1": H_old})
    fc1 = tr.model.layers["fc1"]
    gouts = []

    def catch(module, inputs, out):  # (returns None: the output stays as it is)
        out.register_hook(lambda grad: gouts.append(grad.detach()))

    handle = fc1.register_forward_hook(catch)
    gen = torch.Generator().manual_seed(21)
    x, y = torch.rand(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    torch.manual_seed(4)
    F.cross_entropy(tr.forward_logits(x, None), y).backward()
    handle.remove()
    g, X, G = fc1.weight.grad.clone(), fc1.last_input, gouts[0]
    plugins.after_backward()
    Xr, Gr = X.reshape(-1, 6), G.reshape(-1, 5)
    expected = g - Gr.T @ (quantize(Xr @ H_old.T, 2.0, 3.0) @ H_old)
    torch.testing.assert_close(fc1.weight.grad, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fc1.weight.grad, project_weight_grad(g, H_old), atol=1e-4)  # not the plain form


def test_subspace_size_floats_above_one_are_counts():
    # a float in (0, 1] is a fraction of D (rounded half up), above 1 a count (truncated)
    assert subspace_sizes([1.0], [10], [0.5]) == [10]
    assert subspace_sizes([0.25], [10], [0.5]) == [3]
    assert subspace_sizes([1.5], [10], [0.5]) == [1]
    assert subspace_sizes([2.0, 30], [10, 20], [0.5]) == [2, 20]
