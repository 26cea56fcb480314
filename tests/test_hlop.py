"""HLOP: the lateral Hebbian circuit, the projection, conv modes, state and a tiny run."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from neuroplastic.encoders import make_encoder
from neuroplastic.network import cnn, mlp
from neuroplastic.plugins import build_plugins
from neuroplastic.plugins.hlop import HLOP, HLOPOptions
from neuroplastic.plugins.projection import (
    activity_matrix,
    hebbian_update,
    oja_subspace_step,
    orthonormalize,
    principal_angles,
    quantize,
    random_orthonormal_rows,
    subspace_sizes,
)
from neuroplastic.training import Trainer, TrainSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def _synthetic(n: int, D: int, eig: list[float], rest: float, gen: torch.Generator):
    """Zero-mean Gaussian data with known covariance eigenvectors (columns of Q)."""
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
    lam = torch.full((D,), rest, dtype=torch.float64)
    lam[: len(eig)] = torch.tensor(eig, dtype=torch.float64)
    Z = torch.randn(n, D, generator=gen, dtype=torch.float64)
    return (Z * lam.sqrt()) @ Q.T, Q


def _train_circuit(X, H, mom, n_fixed, lr=0.005, batches=300, B=256, gen=None):
    for _ in range(batches):
        idx = torch.randint(0, X.shape[0], (B,), generator=gen)
        hebbian_update(X[idx], H, mom, n_fixed, lr=lr, momentum=0.9, iters=5)


def test_hebbian_circuit_recovers_principal_subspace():
    gen = torch.Generator().manual_seed(0)
    D = 24
    X, Q = _synthetic(4000, D, [9.0, 6.0, 4.0, 1.5, 1.2], 0.1, gen)
    X = X.float()
    # the best any estimator can do from these samples: their second-moment eigenvectors
    E = torch.linalg.eigh((X.T @ X).double() / len(X)).eigenvectors.flip(1).float()
    # task 0: three subspace neurons learn the top-3 principal subspace
    H = random_orthonormal_rows(3, D, gen)
    mom = torch.zeros(3, D)
    _train_circuit(X, H, mom, 0, gen=gen)
    assert float(principal_angles(H, Q[:, :3].T.float()).max()) < math.radians(5)
    assert float(principal_angles(H, E[:, :3].T).max()) < math.radians(3)
    # the Oja rule makes the rows (nearly) orthonormal
    assert torch.allclose(H @ H.T, torch.eye(3), atol=0.03)
    # task 1: old rows frozen, two new neurons learn the next principal directions
    H_old = H.clone()
    H = torch.cat([H, random_orthonormal_rows(2, D, gen)])
    mom = torch.zeros(2, D)
    _train_circuit(X, H, mom, 3, gen=gen)
    assert torch.equal(H[:3], H_old)
    assert float(principal_angles(H[3:], Q[:, 3:5].T.float()).max()) < math.radians(5)
    assert float(principal_angles(H[3:], E[:, 3:5].T).max()) < math.radians(3)
    assert float(principal_angles(H, E[:, :5].T).max()) < math.radians(3)


def test_vectorised_update_matches_reference_step():
    """The vectorised iterations (old activity precomputed; covariance form for n > D)
    equal plain repeated Oja steps with the EMA momentum of the official code."""
    gen = torch.Generator().manual_seed(1)
    for n, D in ((40, 30), (200, 12), (8, 30)):
        X = torch.rand(n, D, generator=gen, dtype=torch.float64)
        H0 = torch.randn(7, D, generator=gen, dtype=torch.float64) / math.sqrt(D)
        H, mom = H0.clone(), torch.zeros(4, D, dtype=torch.float64)
        hebbian_update(X, H, mom, 3, lr=0.02, momentum=0.9, iters=5)
        Hr, mr = H0.clone(), torch.zeros(4, D, dtype=torch.float64)
        for _ in range(5):
            dH, _ = oja_subspace_step(X, Hr, 3)
            mr = 0.9 * mr + 0.1 * dH
            Hr[3:] += 0.02 * mr
        assert torch.allclose(H, Hr, atol=1e-10)
        assert torch.allclose(mom, mr, atol=1e-10)


def test_quantize_and_sizes():
    y = torch.tensor([-30.0, -0.0123, 0.0, 0.5, 25.0])
    q = quantize(y, 20.0, 1000)
    assert q[0] == -20 and q[-1] == 20
    assert torch.allclose(q, torch.tensor([-20.0, -0.02, 0.0, 0.5, 20.0]))
    assert subspace_sizes(None, [784, 256], [0.1, 0.125]) == [78, 32]
    assert subspace_sizes([80], [784, 100], [0.1]) == [80, 80]
    assert subspace_sizes([0.5, 1000], [10, 20], [0.1]) == [5, 20]
    with pytest.raises(ValueError):
        subspace_sizes([1, 2, 3], [10, 20], [0.1])


#: the paper's schedule (Hebbian update and gradient projection at every step); the
#: defaults are the cheaper budgeted schedule, tested in the lazy-projection test
PAPER = {"hebb_every": 1, "project_every": 1, "lr_scale": "none", "lr": 0.01, "lr_input": 0.001}


def _trainer(model, plugins, T=3, lr=0.1):
    settings = TrainSettings(epochs=1, batch_size=16, lr=lr, momentum=0.0, time_steps=T)
    return Trainer(model, make_encoder("direct", T), settings, plugins, "cpu", 0, True)


def _protect(plugin: HLOP, basis: dict[str, torch.Tensor]) -> None:
    """Give ``plugin`` the old subspaces ``basis`` as if task 0 had learned them, then
    start task 1 (which adds new, trainable subspace neurons)."""
    plugin.on_task_start(0, None)
    for name, B in basis.items():
        plugin.H[name] = B.clone()
        plugin.mom[name] = torch.zeros(0, B.shape[1])
    plugin.on_task_end(0, None)
    plugin.on_task_start(1, None)
    plugin.trainer.task_id = 1
    plugin.trainer.refresh_trainable()


def test_projected_update_preserves_response_in_protected_subspace():
    torch.manual_seed(0)
    D, k = 20, 5
    net = mlp([D, 6], bias=True)
    basis = orthonormalize(torch.randn(k, D))
    probe = torch.randn(12, k) @ basis  # inputs inside the protected subspace
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(16, D, generator=gen) for _ in range(5)]  # new task: not in it
    ys = [torch.randint(0, 6, (16,), generator=gen) for _ in range(5)]

    outs = {}
    for method in ("hlop", "finetune"):
        model = copy.deepcopy(net)
        plugins = build_plugins(method, {"hlop": {"energy_samples": 0, **PAPER}} if method == "hlop" else {})
        tr = _trainer(model, plugins)
        if method == "hlop":
            _protect(plugins.plugins[0], {"fc1": basis})
            assert not model.layers["fc1"].bias.requires_grad  # frozen after task 0
        with torch.no_grad():
            before = tr.forward_logits(probe, None)
        w0 = model.layers["fc1"].weight.detach().clone()
        for x, y in zip(xs, ys):
            tr.train_step(x, y, None)
        with torch.no_grad():
            after = tr.forward_logits(probe, None)
        assert not torch.equal(model.layers["fc1"].weight, w0)  # it did learn
        outs[method] = (after - before).abs().max().item()
        if method == "hlop":
            h = plugins.plugins[0]
            assert torch.equal(h.H["fc1"][:k], basis)  # old rows frozen
            assert h.H["fc1"].shape[0] > k  # new rows were added and trained
    assert outs["hlop"] < 1e-5, outs
    assert outs["finetune"] > 1e-2, outs


@pytest.mark.parametrize("spiking", [False, True])
def test_conv_input_and_weight_projection_agree(spiking):
    torch.manual_seed(1)
    net = cnn((1, 8, 8), channels=(3,), n_out=4, bias=False)
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(6, 64, generator=gen).reshape(6, 1, 8, 8)
    y = torch.randint(0, 4, (6,), generator=gen)
    basis = {"conv1": orthonormalize(torch.randn(4, 9, generator=gen)),
             "fc": orthonormalize(torch.randn(10, 48, generator=gen))}
    grads = {}
    for mode in ("weight", "input", "none"):
        model = copy.deepcopy(net)
        opts = {"energy_samples": 0, "spiking": spiking, "spiking_scale": 4.0, "spiking_steps": 10**6, **PAPER}
        if mode != "none":
            opts.update(conv_mode=mode, linear_mode=mode)
        plugins = build_plugins("hlop", {"hlop": opts})
        tr = _trainer(model, plugins)
        if mode != "none":
            _protect(plugins.plugins[0], basis)
        logits = tr.forward_logits(x, None)
        F.cross_entropy(logits, y).backward()
        plugins.after_backward()
        grads[mode] = {n: model.layers[n].weight.grad.clone() for n in basis}
    for n in basis:
        gw, gi, g0 = grads["weight"][n], grads["input"][n], grads["none"][n]
        assert torch.allclose(gw, gi, atol=1e-6, rtol=1e-4), n
        assert not torch.allclose(gw, g0, atol=1e-6)
        # the projected gradient does not move the response to protected patches
        assert (gw.reshape(gw.shape[0], -1) @ basis[n].T).abs().max() < 1e-5


def test_activity_matrix_shapes_and_direct_dedup():
    lin = mlp([5, 3]).layers["fc1"]
    x = torch.rand(4, 2, 5)
    assert activity_matrix(lin, x).shape == (8, 5)
    assert torch.allclose(activity_matrix(lin, x, "rate"), x.mean(0))
    const = torch.rand(2, 5).unsqueeze(0).expand(4, 2, 5)  # direct encoding
    assert activity_matrix(lin, const).shape == (2, 5)
    conv = cnn((1, 6, 6), channels=(2,), n_out=3).layers["conv1"]
    xc = torch.rand(3, 2, 1, 6, 6)
    assert activity_matrix(conv, xc).shape == (3 * 2 * 36, 9)


def test_options_validation_and_registry():
    from neuroplastic.errors import UserError
    from neuroplastic.plugins import REGISTRY, options_for, parse_method

    assert {"hlop", "gpm", "ewc"} <= set(REGISTRY)
    assert parse_method("hlop+ewc") == ["hlop", "ewc"]
    assert isinstance(options_for("hlop", {"lr_scale": "none", "lr": 0.05}), HLOPOptions)
    for bad in ({"activity": "trace"}, {"conv_mode": "x"}, {"lr": -1}, {"hebb_iters": 0},
                {"nope": 1}):
        with pytest.raises(UserError):
            options_for("hlop", bad)


def test_state_dict_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = mlp([12, 8, 3])
    plugins = build_plugins("hlop", {"hlop": {"energy_samples": 0, "init_size": [4, 3]}})
    tr = _trainer(model, plugins)
    h = plugins.plugins[0]
    x, y = torch.rand(16, 12), torch.randint(0, 3, (16,))
    for t in range(2):
        plugins.on_task_start(t, None)
        tr.task_id = t
        for _ in range(3):
            tr.train_step(x, y, None)
        if t == 0:
            plugins.on_task_end(t, None)
    path = tmp_path / "state.pt"
    torch.save(plugins.state_dict(), path)
    state = torch.load(path, weights_only=True)
    other = build_plugins("hlop", {"hlop": {"energy_samples": 0, "init_size": [4, 3]}})
    _trainer(mlp([12, 8, 3]), other)
    other.load_state_dict(state)
    o = other.plugins[0]
    assert o.task == h.task == 1
    assert o.n_old == h.n_old and o.sizes == h.sizes
    for n in h.H:
        assert torch.equal(o.H[n], h.H[n]) and torch.equal(o.mom[n], h.mom[n])
    assert len(o.activity["fc1"]) == 1


def test_two_task_run_writes_records(tmp_path):
    from neuroplastic.config import config_from_dict
    from neuroplastic.continual import run
    from neuroplastic.runfile import read_run_h5

    cfg = config_from_dict({
        "methods": ["hlop"], "seed": 0, "out": str(tmp_path / "run"), "quiet": True,
        "data": {"dataset": "digits", "stream": "permuted", "tasks": 2, "max_per_task": 64},
        "model": {"hidden": [16]},
        "train": {"epochs": 1, "batch_size": 32, "time_steps": 2, "eval_batch_size": 512},
        "hlop": {"energy_samples": 32},
    })
    run(cfg, echo=lambda *a: None)
    out = tmp_path / "run"
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "hlop" and m["tasks_done"] == 2
    hl = m["hlop"]
    assert hl["subspace_sizes"]["fc1"] == [78, 149] and len(hl["subspace_sizes"]["fc2"]) == 2
    assert hl["old_subspace_energy"]["fc1"][0] is None
    assert 0 < hl["old_subspace_energy"]["fc1"][1] < 1
    rec = read_run_h5(out / "run.h5")["plugins"]["hlop"]
    assert list(rec["fc1"]["sizes"]) == [78, 149]
    assert rec["fc1"]["H"].shape == (149, 784)
    assert rec["fc1"]["activity"]["task_1"].shape == (149,)
    assert rec["fc2"]["old_energy"].shape == (2,)
    ck = torch.load(out / "ckpt_task1.pt", weights_only=True)
    assert ck["plugins"]["hlop"]["H"]["fc1"].shape == (149, 784)


def test_projection_leaves_masks_alone_and_composes_with_sparse_plugins():
    from neuroplastic.plugins import REGISTRY

    torch.manual_seed(2)
    model = mlp([12, 8, 3])
    fc1 = model.layers["fc1"]
    fc1.set_mask(torch.rand(8, 12) < 0.5)
    mask = fc1.mask
    plugins = build_plugins("hlop", {"hlop": {"energy_samples": 0, **PAPER}})
    tr = _trainer(model, plugins)
    basis = orthonormalize(torch.randn(3, 12))
    _protect(plugins.plugins[0], {"fc1": basis, "fc2": orthonormalize(torch.randn(2, 8))})
    x, y = torch.rand(16, 12), torch.randint(0, 3, (16,))
    F.cross_entropy(tr.forward_logits(x, None), y).backward()
    plugins.after_backward()
    assert fc1.mask is mask and fc1.mask_version == 1  # untouched
    assert (fc1.weight.grad @ basis.T).abs().max() < 1e-6  # projected (not re-masked by HLOP)
    if "granet" not in REGISTRY:
        return
    # hlop+granet: projection first, then the sparse plugin masks; a few steps over 2 tasks
    model = mlp([12, 8, 3])
    plugins = build_plugins("hlop+granet", {"hlop": {"energy_samples": 0},
                                            "granet": {"sparsity": 0.5, "update_every": 2, "unit": "step",
                                                       "start": 0, "end": 6}})
    tr = _trainer(model, plugins)
    for t in range(2):
        plugins.on_task_start(t, None)
        tr.task_id = t
        tr.refresh_trainable()
        for _ in range(4):
            tr.train_step(x, y, None)
        plugins.on_task_end(t, None)
    for name, layer in model.synapses():
        if layer.mask is not None:
            assert not layer.weight[~layer.mask].any(), name


def test_projection_modes_give_the_same_training():
    """weight / input / auto projection (and the Hebbian step reusing the input form's
    old-subspace activity) train the same network to float rounding."""
    torch.manual_seed(3)
    net = mlp([40, 64, 5])  # fc1: few distinct rows -> the G^T (Y H) order and the cache
    gen = torch.Generator().manual_seed(4)
    basis = {"fc1": orthonormalize(torch.randn(20, 40, generator=gen)),
             "fc2": orthonormalize(torch.randn(4, 64, generator=gen))}
    data = [(torch.rand(16, 40, generator=gen), torch.randint(0, 5, (16,), generator=gen)) for _ in range(4)]
    res = {}
    for mode in ("weight", "input", "auto"):
        model = mlp([40, 64, 5])
        model.load_state_dict(net.state_dict())
        plugins = build_plugins("hlop", {"hlop": {"energy_samples": 0, "linear_mode": mode,
                                                  "inc_size": [5, 3], **PAPER}})
        tr = _trainer(model, plugins, lr=0.05)
        _protect(plugins.plugins[0], basis)
        h = plugins.plugins[0]
        for x, y in data:
            tr.train_step(x, y, None)
            if mode != "weight":
                assert h._cheaper_mode(model.layers["fc1"], 20) == "input"
        res[mode] = (model.layers["fc1"].weight.detach().clone(), plugins.plugins[0].H["fc1"].clone())
    for mode in ("input", "auto"):
        assert torch.allclose(res[mode][0], res["weight"][0], atol=1e-5)
        assert torch.allclose(res[mode][1], res["weight"][1], atol=1e-5)
    # ... and that common training did project: fc1 moved, but not along the protected
    # subspace (equal results would also come from three runs that projected nothing)
    dW = res["weight"][0] - net.layers["fc1"].weight.detach()
    assert dW.abs().max() > 1e-3
    assert (dW @ basis["fc1"].T).abs().max() < 1e-6


#: every way HLOP can project, each selected alone: the weight form, the input form,
#: "auto" (the cheaper of the two per layer), the lazy projection of the weight change
#: (``project_every > 1``), the input form with spiking lateral neurons (which quantise
#: ``y``; fine steps here so the projection is exact to float rounding), and for conv
#: layers the weight and the unfolded-patch input forms
_MODES = {
    "weight": ("mlp", {"linear_mode": "weight"}),
    "input": ("mlp", {"linear_mode": "input"}),
    "auto": ("mlp", {"linear_mode": "auto"}),
    "lazy": ("mlp", {"project_every": 3}),
    "spiking_input": ("mlp", {"linear_mode": "input", "spiking": True, "spiking_scale": 4.0,
                              "spiking_steps": 10**6}),
    "conv_weight": ("cnn", {"conv_mode": "weight", "linear_mode": "weight"}),
    "conv_input": ("cnn", {"conv_mode": "input", "linear_mode": "input"}),
}
_STEPS = 7


def _new_task_response_change(method: str, arch: str, opts: dict, monkeypatch) -> tuple[dict, dict]:
    """Protect a random subspace of every synapse layer (as if task 0 had learned it), train
    ``_STEPS`` minibatches of a new task with momentum SGD, end the task; return the largest
    change of each layer's response ``W p + b`` to inputs ``p`` inside its protected
    subspace (patches for a conv), and how often each projection path ran."""
    import neuroplastic.plugins.hlop as hlop_mod

    calls = {"weight": 0, "input": 0, "sync": 0}
    pwg, corr, sync = hlop_mod.project_weight_grad, HLOP._input_correction, HLOP._sync

    def count_pwg(*a, **k):
        calls["weight"] += 1
        return pwg(*a, **k)

    def count_corr(self, *a, **k):
        calls["input"] += 1
        return corr(self, *a, **k)

    def count_sync(self):
        calls["sync"] += 1
        return sync(self)

    monkeypatch.setattr(hlop_mod, "project_weight_grad", count_pwg)
    monkeypatch.setattr(HLOP, "_input_correction", count_corr)
    monkeypatch.setattr(HLOP, "_sync", count_sync)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(7)
    if arch == "mlp":
        model = mlp([24, 32, 5], bias=True)
        basis = {"fc1": orthonormalize(torch.randn(6, 24, generator=gen)),
                 "fc2": orthonormalize(torch.randn(8, 32, generator=gen))}
        data = [(2 * torch.rand(16, 24, generator=gen), torch.randint(0, 5, (16,), generator=gen))
                for _ in range(_STEPS)]
    else:
        model = cnn((1, 8, 8), channels=(3,), n_out=4, bias=True)
        basis = {"conv1": orthonormalize(torch.randn(4, 9, generator=gen)),
                 "fc": orthonormalize(torch.randn(10, 48, generator=gen))}
        data = [(2 * torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen))
                for _ in range(_STEPS)]
    plugins = build_plugins(method, {"hlop": {"energy_samples": 0, **PAPER, **opts}} if method == "hlop" else {})
    settings = TrainSettings(epochs=1, batch_size=16, lr=0.1, momentum=0.9, time_steps=3)
    tr = Trainer(model, make_encoder("direct", 3), settings, plugins, "cpu", 0, True)
    if method == "hlop":
        _protect(plugins.plugins[0], basis)
    probes = {n: torch.randn(32, B.shape[0], generator=gen) @ B for n, B in basis.items()}

    def responses():
        out = {}
        for n, P in probes.items():
            layer = model.layers[n]
            W = layer.weight.detach().reshape(layer.weight.shape[0], -1)
            b = layer.bias.detach() if layer.bias is not None else 0.0
            out[n] = P @ W.T + b
        return out

    before = responses()
    w0 = {n: model.layers[n].weight.detach().clone() for n in basis}
    for x, y in data:
        tr.train_step(x, y, None)
    plugins.on_task_end(1, None)
    after = responses()
    for n in basis:  # every layer learned something: the check below is not vacuous
        assert (model.layers[n].weight - w0[n]).abs().max() > 1e-2, n
    return {n: (after[n] - before[n]).abs().max().item() for n in basis}, calls


@pytest.mark.parametrize("mode", list(_MODES))
def test_each_projection_mode_alone_keeps_old_responses(mode, monkeypatch):
    """Each projection mode on its own leaves the response of every protected layer to
    inputs in the old subspace unchanged after training a new task (to float rounding),
    and really took its own code path (no silent fallback to another form)."""
    arch, opts = _MODES[mode]
    change, calls = _new_task_response_change("hlop", arch, opts, monkeypatch)
    assert max(change.values()) < 2e-5, change
    n_layers = len(change)
    if mode == "lazy":  # gradients untouched; the weight change projected at steps 3, 6 and the end
        assert calls["input"] == 0 and calls["sync"] == _STEPS // 3 + 1, calls
        assert calls["weight"] == calls["sync"] * n_layers, calls
    elif mode in ("weight", "conv_weight"):
        assert calls == {"weight": _STEPS * n_layers, "input": 0, "sync": 0}, calls
    elif mode == "auto":
        assert calls["weight"] + calls["input"] == _STEPS * n_layers and calls["sync"] == 0, calls
    else:  # input forms: every step through the input correction, never the weight form
        assert calls == {"weight": 0, "input": _STEPS * n_layers, "sync": 0}, calls


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_without_projection_old_responses_change(arch, monkeypatch):
    """The same training without projection (fine-tuning) moves those responses clearly:
    the check above is what the projection buys."""
    change, _ = _new_task_response_change("finetune", arch, {}, monkeypatch)
    assert min(change.values()) > 1e-2, change


def test_lazy_projection_preserves_response_at_sync_points():
    """``project_every = 3`` with momentum SGD: between syncs the weights drift into the
    protected subspace; at every 3rd step and at the task end the response to protected
    inputs is back to what it was (the change is projected)."""
    torch.manual_seed(0)
    D, k = 20, 5
    model = mlp([D, 6], bias=True)
    basis = orthonormalize(torch.randn(k, D))
    probe = torch.randn(12, k) @ basis
    gen = torch.Generator().manual_seed(3)
    plugins = build_plugins("hlop", {"hlop": {"energy_samples": 0, "project_every": 3}})
    settings = TrainSettings(epochs=1, batch_size=16, lr=0.1, momentum=0.9, time_steps=3)
    tr = Trainer(model, make_encoder("direct", 3), settings, plugins, "cpu", 0, True)
    h = plugins.plugins[0]
    _protect(h, {"fc1": basis})
    with torch.no_grad():
        before = tr.forward_logits(probe, None)
    drift = []
    for _ in range(5):
        tr.train_step(torch.randn(16, D, generator=gen), torch.randint(0, 6, (16,), generator=gen), None)
        with torch.no_grad():
            drift.append((tr.forward_logits(probe, None) - before).abs().max().item())
    assert drift[2] < 1e-5, drift  # synced after step 3
    assert drift[0] > 1e-3 and drift[4] > 1e-3, drift  # unprojected in between
    state = h.state_dict()
    assert set(state["anchor"]) == {"fc1"} and state["steps"] == 5
    h.on_task_end(1, None)
    with torch.no_grad():
        assert (tr.forward_logits(probe, None) - before).abs().max().item() < 1e-5
    assert h.anchor == {}


def _rows_at_task_1(init_complement: bool):
    """HLOP on ``fc1`` (D = 30): 5 rows at task 0 (replaced by a fixed basis, as if learned),
    6 new rows at the start of task 1. Returns ``(old basis, H at task 0, H at task 1)``."""
    torch.manual_seed(0)
    plugins = build_plugins("hlop", {"hlop": {"layers": ["fc1"], "init_size": [5], "inc_size": [6],
                                              "energy_samples": 0, "init_complement": init_complement}})
    _trainer(mlp([30, 8, 3]), plugins)
    h = plugins.plugins[0]
    h.on_task_start(0, None)
    H0 = h.H["fc1"].clone()
    basis = orthonormalize(torch.randn(5, 30, generator=torch.Generator().manual_seed(11)))
    h.H["fc1"] = basis.clone()
    h.on_task_end(0, None)
    h.on_task_start(1, None)
    return basis, H0, h.H["fc1"].clone()


def test_new_rows_start_as_official_code_or_in_the_complement():
    """``init_complement = false`` (the official code): each task's new rows are random
    orthonormal rows, independent of the old subspace (so not orthogonal to it);
    ``true`` (default): the same random rows moved into the complement of the old span and
    re-orthonormalised."""
    assert HLOPOptions().init_complement is True
    basis, H0_off, H_off = _rows_at_task_1(False)
    _, H0_on, H_on = _rows_at_task_1(True)
    eye = torch.eye(6)
    # task 0 has no old rows: the same random orthonormal rows either way
    assert torch.equal(H0_off, H0_on) and H0_off.shape == (5, 30)
    assert torch.allclose(H0_off @ H0_off.T, torch.eye(5), atol=1e-5)
    for H in (H_off, H_on):
        assert H.shape == (11, 30) and torch.equal(H[:5], basis)  # old rows kept
        assert torch.allclose(H[5:] @ H[5:].T, eye, atol=1e-5)  # new rows orthonormal
    # official: random rows overlap the old span as random 6-dim subspaces of R^30 do
    # (expected squared overlap 6 * 5 / 30 = 1)
    overlap = H_off[5:] @ basis.T
    assert float((overlap**2).sum()) > 0.2 and float(overlap.abs().max()) > 0.1, overlap
    # complement: orthogonal to the old span ...
    assert (H_on[5:] @ basis.T).abs().max() < 1e-5
    # ... and spanning the official rows' part outside it (the same random draw)
    outside = H_off[5:] - (H_off[5:] @ basis.T) @ basis
    assert float(principal_angles(H_on[5:], outside).max()) < 1e-3


class _Task:
    def __init__(self, x, y):
        from neuroplastic.datasets import ArrayDataset

        self.train = ArrayDataset(x, y, int(y.max()) + 1)
        self.head = None


def test_spiking_lateral_neurons_with_rate_activity_cross_a_task_boundary():
    """``spiking = true`` with ``activity = "rate"``: two tasks (one boundary) run through the
    Hebbian updates, the projection (input form, which quantises) and the energy records,
    with the documented shapes."""
    torch.manual_seed(0)
    model = mlp([12, 8, 3])
    plugins = build_plugins("hlop", {"hlop": {"spiking": True, "activity": "rate", "energy_samples": 8,
                                              "init_size": [4, 3], "inc_size": [2, 2], **PAPER}})
    tr = _trainer(model, plugins)
    h = plugins.plugins[0]
    gen = torch.Generator().manual_seed(0)
    tasks = [_Task(torch.rand(32, 12, generator=gen), torch.randint(0, 3, (32,), generator=gen)) for _ in range(2)]
    init_new = {}
    for t, task in enumerate(tasks):
        plugins.on_task_start(t, task)
        k = {"fc1": 4, "fc2": 3} if t == 0 else {"fc1": 2, "fc2": 2}
        for n, D in (("fc1", 12), ("fc2", 8)):
            assert h.mom[n].shape == (k[n], D)  # momentum of the new rows only
            init_new[n] = h.H[n][h.n_old[n]:].clone()
        old = {n: h.H[n][: h.n_old[n]].clone() for n in h.H}
        tr.train_task([(task.train, None)], t)
        for n in h.H:
            assert torch.isfinite(h.H[n]).all()
            assert torch.equal(h.H[n][: old[n].shape[0]], old[n])  # old rows frozen
            assert not torch.equal(h.H[n][h.n_old[n]:], init_new[n])  # new rows learned
        if t == 1:
            assert h._cheaper_mode(model.layers["fc1"], h.n_old["fc1"]) == "input"  # quantised form
        plugins.on_task_end(t, task)
    assert h.sizes == {"fc1": [4, 6], "fc2": [3, 5]} and h.n_old == {"fc1": 6, "fc2": 5}
    for n, D in (("fc1", 12), ("fc2", 8)):
        M = h.n_old[n]
        assert h.H[n].shape == (M, D) and h.mom[n].shape == (0, D)
        assert [a.shape for a in h.activity[n]] == [(h.sizes[n][0],), (M,)]
        assert math.isnan(h.old_energy[n][0]) and 0 <= h.old_energy[n][1] <= 1
        assert len(h.captured_energy[n]) == 2 and all(0 <= e <= 1 for e in h.captured_energy[n])
    rec = plugins.records()["hlop"]
    assert rec["fc1"]["H"].shape == (6, 12) and rec["fc2"]["sizes"].tolist() == [3, 5]
    assert rec["fc2"]["activity"]["task_1"].shape == (5,) and rec["fc1"]["old_energy"].shape == (2,)
    m = json.loads(json.dumps(plugins.metrics()))["hlop"]
    assert m["subspace_sizes"] == {"fc1": [4, 6], "fc2": [3, 5]} and m["old_subspace_energy"]["fc1"][0] is None
