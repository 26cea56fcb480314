"""The run's seed reaches every plugin (issue 12).

Every random choice of a plugin (ERK / random masks, SET's random regrowth, HLOP's initial
rows, its ``max_rows`` subsample and energy samples, GPM's sample choice, EWC's sampled
Fisher, the dormant plugin's fresh weights) comes from
``derive_seed(trainer.seed, plugin seed)``: the same run seed gives identical state, a
different run seed a different one.

To see the plugins' randomness alone, the trainers here are built from the same initial
weights and their own generator (data order, spike encoding) is reset to the same state
after construction, so the run seed differs *only* inside the plugins.
"""

from __future__ import annotations

import pytest
import torch
from neuroplastic.datasets import ArrayDataset, Task

from neuroplastic.config import config_from_dict
from neuroplastic.continual import run
from neuroplastic.encoders import make_encoder
from neuroplastic.io import load_checkpoint
from neuroplastic.network import mlp
from neuroplastic.plugins import build_plugins, derive_seed
from neuroplastic.trainers import TrainSettings, make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

N_IN, N_OUT = 64, 10


def make(method: str, run_seed: int, global_seed: int = 0, encoder: str = "rate", **opts):
    """A trainer on mlp([64, 32, 10]) (the same initial weights for every call) with the
    plugins of ``method`` (``opts`` for its first plugin) and run seed ``seed``; returns
    ``(trainer, first plugin)``. The global torch RNG is left at ``global_seed``, which
    plugins must not use."""
    torch.manual_seed(0)
    model = mlp([N_IN, 32, N_OUT])
    plugins = build_plugins(method, {method.split("+")[0]: opts})
    settings = TrainSettings(epochs=1, batch_size=16, lr=0.05, momentum=0.9, time_steps=4)
    tr = make_trainer(model, make_encoder(encoder, 4), settings, plugins=plugins, seed=run_seed, quiet=True)
    tr.generator.manual_seed(0)  # the trainer's own stream: the same for every run seed
    torch.manual_seed(global_seed)
    return tr, plugins.plugins[0]


def task(n: int = 48) -> Task:
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(n, N_IN, generator=gen)
    y = torch.randint(0, N_OUT, (n,), generator=gen)
    ds = ArrayDataset(x, y, N_OUT)
    return Task("t0", ds, ds, list(range(N_OUT)), 0)


def batches(n: int = 12):
    gen = torch.Generator().manual_seed(3)
    return [(torch.rand(16, N_IN, generator=gen), torch.randint(0, N_OUT, (16,), generator=gen)) for _ in range(n)]


def masks(tr) -> dict[str, torch.Tensor]:
    return {n: m.mask.clone() for n, m in tr.model.synapses() if m.mask is not None}


def weights(tr) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in tr.model.named_parameters()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def copy_sparse_state(src, dst) -> None:
    """Give ``dst`` the masks and weights of ``src`` (so only later choices can differ)."""
    with torch.no_grad():
        for (_, a), (_, b) in zip(src.model.synapses(), dst.model.synapses()):
            b.set_mask(a.mask.clone())
            b.weight.copy_(a.weight)


# -- the helper -------------------------------------------------------------------------
def test_derive_seed_is_plain_arithmetic_and_run_seed_zero_keeps_the_plugin_seed():
    assert derive_seed(0, 0) == 0 and derive_seed(0, 5) == 5  # --seed 0: as before issue 12
    assert derive_seed(1, 0) == 1_000_003 and derive_seed(2, 3) == 2_000_009
    assert derive_seed(None, None) == 0
    assert 0 <= derive_seed(-1, 0) < 2**40
    assert len({derive_seed(r, p) for r in range(5) for p in range(5)}) == 25
    # a plugin without a trainer uses run seed 0; with one, the trainer's seed
    (p,) = build_plugins("static", {"static": {"seed": 4}}).plugins
    assert p.run_seed == 0 and p.base_seed() == 4
    tr, p = make("static", 3, seed=4)
    assert p.run_seed == 3 and p.base_seed() == derive_seed(3, 4)


# -- GraNet family --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["static", "set", "rigl"])
def test_erk_masks_follow_the_run_seed(method):
    a, _ = make(method, 0, sparsity=0.9)
    b, _ = make(method, 0, global_seed=99, sparsity=0.9)
    c, _ = make(method, 1, sparsity=0.9)
    assert masks(a) and same(masks(a), masks(b))
    assert not same(masks(a), masks(c))
    # the plugin's own seed still varies that plugin alone
    d, _ = make(method, 0, sparsity=0.9, seed=1)
    assert not same(masks(a), masks(d))


def _train_from_the_same_masks(method, seeds, **opts):
    """Trainers with run seeds ``seeds``, all given the masks and weights of the first,
    trained on the same batches; returns their masks after training."""
    trainers = [make(method, s, global_seed=10 + i, **opts) for i, s in enumerate(seeds)]
    for tr, _ in trainers[1:]:
        copy_sparse_state(trainers[0][0], tr)
    out = []
    for tr, p in trainers:
        data = batches()
        p.set_run_length(len(data))
        for x, y in data:
            tr.train_step(x, y, 0)
        assert p.n_regrown > 0
        out.append(masks(tr))
    return out


def test_set_random_regrowth_follows_the_run_seed():
    m0, m0_again, m1 = _train_from_the_same_masks("set", [0, 0, 1], sparsity=0.9, update_every=2)
    assert same(m0, m0_again)
    assert not same(m0, m1)


def test_granet_sparse_to_sparse_masks_follow_the_run_seed():
    runs = []
    for s, g in ((0, 0), (0, 5), (1, 0)):
        tr, p = make("granet", s, global_seed=g, sparsity=0.9, init_density=0.5, update_every=2)
        start = masks(tr)
        data = batches()
        p.set_run_length(len(data))
        for x, y in data:
            tr.train_step(x, y, 0)
        runs.append((start, masks(tr)))
    (s0, e0), (s0b, e0b), (s1, e1) = runs
    assert same(s0, s0b) and same(e0, e0b)
    assert not same(s0, s1) and not same(e0, e1)


def test_granet_random_regrowth_follows_the_run_seed():
    m0, m0_again, m1 = _train_from_the_same_masks(
        "granet", [0, 0, 1], sparsity=0.9, init_density=0.5, regrow="random", update_every=2
    )
    assert same(m0, m0_again)
    assert not same(m0, m1)


# -- HLOP -----------------------------------------------------------------------------
def _hlop_rows(seed, global_seed=0, **opts):
    tr, p = make("hlop", seed, global_seed=global_seed, energy_samples=0, **opts)
    p.on_task_start(0, None)
    return tr, p, {n: h.clone() for n, h in p.H.items()}


def test_hlop_initial_rows_follow_the_run_seed():
    _, _, h0 = _hlop_rows(0)
    _, _, h0b = _hlop_rows(0, global_seed=5)
    _, _, h1 = _hlop_rows(1)
    assert all(h.shape[0] > 0 for h in h0.values())
    assert same(h0, h0b)
    assert not same(h0, h1)


def test_hlop_max_rows_subsample_follows_the_run_seed_not_the_global_rng():
    # spikes of T=4 steps x 16 samples = 64 activity rows per update, 8 of them kept
    out, rows = [], None
    for seed, g in ((0, 1), (0, 2), (1, 1)):
        tr, p, h = _hlop_rows(seed, global_seed=g, max_rows=8, hebb_every=1)
        rows = h if rows is None else rows
        p.H = {n: r.clone() for n, r in rows.items()}  # the same initial rows: only the subsample differs
        for x, y in batches(6):
            tr.train_step(x, y, 0)
        out.append({n: h.clone() for n, h in p.H.items()})
    assert same(out[0], out[1])
    assert not same(out[0], out[2])


def test_hlop_energy_samples_follow_the_run_seed():
    values, rows = [], None
    for seed, g in ((0, 0), (0, 3), (1, 0)):
        tr, p, h = _hlop_rows(seed, global_seed=g)
        p.opts.energy_samples = 32
        rows = h if rows is None else rows
        p.H = {n: r.clone() for n, r in rows.items()}
        p.on_task_end(0, task())  # the energy of 32 encoded training samples in the rows
        values.append({n: v[-1] for n, v in p.captured_energy.items()})
    assert values[0] == values[1]
    assert values[0] != values[2]


# -- GPM, EWC, dormant --------------------------------------------------------------------
@pytest.mark.parametrize("encoder", ["rate", "direct"])
def test_gpm_sample_choice_follows_the_run_seed(encoder):
    def bases(max_rows):
        out = []
        for seed, g in ((0, 0), (0, 4), (1, 0)):
            tr, p = make("gpm", seed, global_seed=g, encoder=encoder, n_samples=16, max_rows=max_rows,
                         threshold=[0.9])
            p.on_task_start(0, None)
            p.on_task_end(0, task())
            out.append({n: u.clone() for n, u in p.U.items()})
        assert all(u.shape[0] > 0 for u in out[0].values())
        return out

    # 16 samples x 4 steps = 64 rows per layer, 20 of them drawn for the SVD
    sub = bases(20)
    assert same(sub[0], sub[1])
    assert not same(sub[0], sub[2])
    full = bases(None)
    assert same(full[0], full[1])
    if encoder == "direct":  # no random encoding: without the subsample the seed cannot matter
        assert same(full[0], full[2])
    else:  # the encoding of the collected samples follows the run seed
        assert not same(full[0], full[2])


def test_ewc_sampled_fisher_follows_the_run_seed():
    fishers = []
    for seed, g in ((0, 0), (0, 6), (1, 0)):
        tr, p = make("ewc", seed, global_seed=g, fisher="sampled", fisher_samples=16)
        p.on_task_start(0, None)
        p.on_task_end(0, task())
        fishers.append({n: f.clone() for n, f in p.fisher[0].items()})
    assert same(fishers[0], fishers[1])
    assert not same(fishers[0], fishers[2])


def test_dormant_perturbation_follows_the_run_seed():
    after = []
    for seed, g in ((0, 0), (0, 8), (1, 0)):
        tr, p = make("dormant", seed, global_seed=g, perturb_target="fresh")
        p.perturb()
        p.perturb()  # the second draw too
        after.append(weights(tr))
    assert same(after[0], after[1])
    assert not same(after[0], after[2])


# -- end to end through the continual runner --------------------------------------------
TINY = {
    "methods": ["static"],
    "quiet": True,
    "data": {"dataset": "digits", "stream": "permuted", "tasks": 1, "max_per_task": 64},
    "model": {"hidden": [32]},
    "train": {"epochs": 1, "batch_size": 32, "time_steps": 2},
    "static": {"sparsity": 0.9},
}


def test_run_seed_changes_the_static_masks_of_a_continual_run(tmp_path):
    def run_masks(seed, name):
        cfg = config_from_dict({**TINY, "seed": seed, "out": str(tmp_path / name)})
        run(cfg, echo=lambda *a: None)
        sd = load_checkpoint(tmp_path / name / "ckpt_task0.pt")["model"]
        return {k: v for k, v in sd.items() if k.endswith(".mask")}

    m0, m0_again, m1 = run_masks(0, "s0"), run_masks(0, "s0b"), run_masks(1, "s1")
    assert m0 and same(m0, m0_again)
    assert not same(m0, m1)
