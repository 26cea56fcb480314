"""Data-parallel training on torch.distributed (docs/distributed.md).

* single process: shards, one-line errors of a misconfigured launch, the helpers'
  single-process answers;
* two gloo processes spawned by tests/distributed_worker.py: every collective helper;
  HLOP's Hebbian update from two gathered shards equals the full-batch update;
* a second spawn (marked slow, ~25 s on 2 busy cores): every trainer with every plugin
  trained on two ranks ends with the same weights, masks, HLOP subspaces, GPM bases,
  Fisher and dormant curves on both ranks (bit for bit) and within rounding of a
  1-process run with the same global batch;
* multi-rank edges, each rank this file run as a script: ``collect_activity`` with an
  empty shard, the sampled Fisher (not split over the ranks), GraNet's reduction of dense
  gradients with a layer missing on one rank (and, in one process, the step GraNet collects
  them on);
* ``torchrun --standalone --nproc-per-node 2 -m neuroplastic run`` end to end against a
  1-process run of the same config (HLOP + GraNet + dormant monitor).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neuroplastic import distributed
from neuroplastic.errors import UserError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: accuracy matrices of a 2-process and a 1-process run agree to this many percentage
#: points per entry (docs/distributed.md: measured over every trainer and method)
ACC_TOL = 1.5


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


# -- one process ---------------------------------------------------------------------------
def test_shards_cover_the_batch_contiguously():
    for world in range(1, 5):
        for batch in range(0, 12):
            sizes = distributed.shard_sizes(batch, world)
            assert sum(sizes) == batch and max(sizes) - min(sizes) <= 1
            assert sizes == sorted(sizes, reverse=True)  # the first ranks take the extra samples
            slices = [distributed.shard(batch, r, world) for r in range(world)]
            assert [s.stop - s.start for s in slices] == sizes
            assert slices[0].start == 0 and all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    assert distributed.shard(1, 1, 2) == slice(1, 1)  # a batch smaller than the world: an empty shard


def test_one_process_answers_as_rank_zero_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env("cpu") is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    t = torch.arange(3.0)
    assert distributed.all_reduce(t) is t and distributed.weighted_sum(t, 0.5) is t
    assert distributed.broadcast(t) is t and distributed.broadcast_tensor(t) is t
    assert torch.equal(distributed.all_gather(t), t) and distributed.all_gather_object(5) == [5]
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.shard(7) == slice(0, 7)
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    assert distributed.reduce_gradients([p], 1.0, None, torch.tensor(2.5)) == 2.5
    assert torch.equal(p.grad, torch.ones(2))
    distributed.barrier()
    distributed.shutdown()


@pytest.mark.parametrize("env, device, message", [
    ({"WORLD_SIZE": "two"}, "cpu", "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "0"}, "cpu", "WORLD_SIZE=0 must be >= 1"),
    ({"WORLD_SIZE": "2"}, "cpu", "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "cpu", "RANK=2 is not below WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "cpu", "MASTER_ADDR is not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost"}, "cpu", "MASTER_PORT is not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "x"}, "cpu", "not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}, "mps",
     "runs on cpu (gloo) or cuda (nccl)"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}, "banana",
     "is not a torch device"),
])
def test_a_misconfigured_launch_is_one_line(monkeypatch, env, device, message):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        distributed.init_from_env(device)
    assert "\n" not in str(err.value)
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_cuda_is_one_line(monkeypatch):
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError, match="CUDA is not available"):
        distributed.init_from_env("cuda")


def test_cli_refuses_a_broken_torchrun_environment(monkeypatch, tmp_path, capsys):
    from neuroplastic.cli import main

    for k, v in {"WORLD_SIZE": "2", "RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "run"
    assert main(["run", "--tasks", "1", "--epochs", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuroplastic: error:") and "MASTER_ADDR is not set" in err and "\n" not in err
    assert not out.exists()
    monkeypatch.setenv("RANK", "1")  # the other ranks find the same error and leave the saying to rank 0
    assert main(["run", "--tasks", "1", "--epochs", "1", "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err == "" and not out.exists()


def test_eprop_captures_every_protected_layer_including_the_readout():
    """Found by the 2-rank comparison: e-prop filled ``last_input`` of its hidden layers
    only, so HLOP's rows of the readout learned from the last *evaluation* batch (stale,
    and of another size on each rank). Every capture layer now holds this step's input."""
    from neuroplastic.encoders import make_encoder
    from neuroplastic.network import mlp
    from neuroplastic.trainers import TrainSettings, make_trainer

    torch.manual_seed(0)
    net = mlp([20, 16, 4], tau_mem=5e-3)
    for _, layer in net.synapses():
        layer.capture = True
    tr = make_trainer(net, make_encoder("direct", 5), TrainSettings(trainer="eprop", time_steps=5), quiet=True)
    net.layers["fc2"].last_input = torch.zeros(5, 99, 16)  # what an earlier evaluation left
    x, y = torch.rand(8, 20, generator=torch.Generator().manual_seed(1)), torch.randint(0, 4, (8,))
    tr.train_step(x, y, None)
    assert net.layers["fc1"].last_input.shape == (5, 8, 20)
    z = net.layers["fc2"].last_input
    assert z.shape == (5, 8, 16) and set(z.unique().tolist()) <= {0.0, 1.0} and z.sum() > 0  # this step's spikes


def test_granet_collects_dense_gradients_on_each_later_regrowth_step():
    """In later tasks (``span = "first_task"``) GraNet regrows every ``update_every`` steps
    from the dense gradient of that very step: the one it collects (and reduces over the
    ranks) in ``before_forward``. A clock off by two (``task_step - 1``) collects on the
    second step after each regrowth step (here: the step before the next one), and that
    gradient is cleared after its step: regrowth finds none and regrows nothing.
    ``update_every = 3``: with 1 or 2 the shifted clock hits the same steps."""
    from neuroplastic.encoders import make_encoder
    from neuroplastic.network import mlp
    from neuroplastic.plugins import build_plugins
    from neuroplastic.training import Trainer, TrainSettings

    torch.manual_seed(0)
    plugins = build_plugins("granet", {"granet": {"sparsity": 0.6, "unit": "step", "start": 1, "end": 2,
                                                  "update_every": 3, "death_rate_min": 0.2}})
    tr = Trainer(mlp([20, 16, 4]), make_encoder("rate", 3), TrainSettings(lr=0.05, time_steps=3, batch_size=8),
                 plugins, seed=0, quiet=True)
    p = plugins.plugins[0]
    p.set_run_length(4, 2)
    g = torch.Generator().manual_seed(1)
    seen = []
    after_step = p.after_step

    def spy():  # what the step's regrowth (if any) will see
        seen.append((p.task_step + 1, p.dense_grad.enabled, sorted(p.dense_grad.grads)))
        after_step()

    p.after_step = spy
    for task in (0, 1):
        p.on_task_start(task, None)
        for _ in range(4 if task == 0 else 7):
            tr.train_step(torch.rand(8, 20, generator=g), torch.randint(0, 4, (8,), generator=g), None)
    names = sorted(n for n, _ in p.layers)
    later = seen[4:]
    assert [s for s, on, _ in later if on] == [3, 6]  # exactly the regrowth steps of task 1
    assert all(grads == (names if on else []) for _, on, grads in later)
    h = p.hist
    later_updates = [(step, n) for step, task, n in zip(h["step"], h["task"], h["regrown"]) if task == 1]
    assert [step for step, _ in later_updates] == [4 + 3, 4 + 6]
    assert all(n > 0 for _, n in later_updates)  # and regrew from that gradient


# -- two processes -------------------------------------------------------------------------
def _spawn(out: Path, scenarios: str):
    """Run scenarios of tests/distributed_worker.py in one 2-process spawn; returns
    ``load(scenario) -> (rank 0, rank 1, 1-process reference or None)``."""
    proc = subprocess.run([sys.executable, str(HERE / "distributed_worker.py"), scenarios, str(out)],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def load(name):
        r0, r1 = (torch.load(out / f"{name}_r{r}.pt", weights_only=False) for r in (0, 1))
        refs = [out / f"{name}_ref_r{r}.pt" for r in (0, 1)]
        ref = None
        if refs[0].exists():
            ref = {}
            for f in refs:
                ref.update(torch.load(f, weights_only=False))
        return r0, r1, ref

    return load


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The collectives and HLOP's Hebbian scenario on 2 ranks (one spawn, ~15 s)."""
    return _spawn(tmp_path_factory.mktemp("ddp"), "collectives,hebbian")


@pytest.fixture(scope="module")
def two_ranks_training(tmp_path_factory):
    """The training scenario on 2 ranks and its 1-process reference (one spawn, ~25 s)."""
    return _spawn(tmp_path_factory.mktemp("ddp_train"), "training")


def test_collectives_on_two_ranks(two_ranks):
    r0, r1, _ = two_ranks("collectives")
    assert (r0["rank"], r1["rank"], r0["world"], r0["main"], r1["main"]) == (0, 1, 2, True, False)
    for r in (r0, r1):
        assert torch.allclose(r["weighted"], torch.full((3,), 0.25 * 1 + 0.75 * 2))
        assert torch.equal(r["gather_2_1"], torch.tensor([[0.0, 1], [2, 3], [10, 11]]))
        assert torch.equal(r["gather_3_0"], torch.tensor([[0.0, 1], [2, 3], [4, 5]]))  # rank 1's stand-in row dropped
        assert torch.equal(r["gather_unknown"], torch.tensor([[0.0, 1], [10, 11], [12, 13], [14, 15]]))
        assert torch.equal(r["activity"], torch.tensor([[[0.0, 1], [2, 3], [4, 5], [100, 101]]]))
        rows = torch.tensor([[0.0, 1], [2, 3], [100, 101]])
        assert torch.equal(r["direct"], rows.expand(4, 3, 2)) and r["direct_stride0"]  # expanded over T, as sent
        assert torch.equal(r["bcast"], torch.arange(5) * 7)
        assert torch.equal(r["bcast_bool"], torch.tensor([True, False, True]))
        assert r["objects"] == [{"r": 0}, {"r": 1}]
        assert r["any_true"] and not r["any_false"]
        assert float(r["max"]) == 1.0 and float(r["mean"]) == 0.5
        assert r["loss"] == pytest.approx(0.25 * 1 + 0.75 * 2)
        assert torch.allclose(r["a"], torch.full((2,), 1.75)) and torch.allclose(r["b"], torch.full((2,), 0.25))
        assert r["c_none"] and torch.allclose(r["dense"], torch.full((2, 2), 0.75))
        # firing counts: rank 0 saw [T=2, B=1] ones, rank 1 [2, 2] twos: 10 spikes over 6 samples
        assert r["counts"] == {"l0": 6} and torch.allclose(r["rates"], torch.full((3,), 10 / 6))
        assert torch.equal(r["rates_one"], torch.ones(3))  # a layer only rank 0 saw


def test_hebbian_update_from_two_shards_equals_the_full_batch(two_ranks):
    r0, r1, ref = two_ranks("hebbian")
    for name in ("plain", "spiking"):
        (H0, a0), (H1, a1), (Hf, af) = r0[name], r1[name], ref[name]
        assert torch.equal(H0, H1) and torch.equal(a0, a1)
        assert torch.allclose(H0, Hf, atol=1e-6) and torch.allclose(a0, af, atol=1e-6)
        assert torch.equal(Hf[:3], ref["initial"][:3])  # frozen rows stay
        assert (Hf[3:] - ref["initial"][3:]).abs().max() > 1e-3  # the free rows did learn


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}/{k}")
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            yield from _flat(v, f"{prefix}/{i}")
    else:
        yield prefix, tree


def _timing(key: str) -> bool:
    last = key.split("/")
    return any(p.endswith("_s") for p in last)  # hebbian_s, projection_s, svd_s: wall-clock times


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.is_floating_point():  # NaN entries (records of task 0) count as equal
            return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
        return torch.equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def _close(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        if not a.is_floating_point():
            return torch.equal(a, b)
        return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5, equal_nan=True))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-4 * max(1.0, abs(b))
    return a == b


@pytest.mark.slow
@pytest.mark.parametrize("which", ["ranks", "reference"])
def test_training_on_two_ranks(two_ranks_training, which):
    """Every trainer with every plugin: identical on both ranks ("ranks"), within rounding
    of one process with the same global batch ("reference")."""
    r0, r1, ref = two_ranks_training("training")
    assert set(r0) == set(r1) == set(ref) and len(r0) == 4
    for combo in r0:
        a, b, c = r0[combo], r1[combo], ref[combo]
        other = b if which == "ranks" else c
        agree = _same if which == "ranks" else _close
        bad = [k for k in a["model"] if not agree(a["model"][k], other["model"][k])]
        assert not bad, f"{combo}: model tensors {bad} differ ({which})"
        fa, fo = dict(_flat(a["plugins"])), dict(_flat(other["plugins"]))
        assert set(fa) == set(fo)
        bad = [k for k in fa if not _timing(k) and not agree(fa[k], fo[k])]
        assert not bad, f"{combo}: plugin state {bad} differs ({which})"
        if which == "ranks":
            assert a["R"] == b["R"] and a["losses"] == b["losses"]
        else:
            assert all(abs(x - y) <= ACC_TOL for ra, rc in zip(a["R"], c["R"]) for x, y in zip(ra, rc))
            assert all(abs(x - y) <= 1e-4 for x, y in zip(a["losses"], c["losses"]))
    masks = [k for k in r0["bptt:hlop+granet+dormant"]["model"] if k.endswith("mask")]
    assert masks  # the GraNet run did install masks (compared above, bit for bit)
    assert r0["bptt:hlop+granet+dormant"]["plugins"]["hlop"]["H"]  # and HLOP subspaces


# -- multi-rank edges: this file run as a script spawns the 2 ranks ---------------------------
def _edge_setup(method: str, **opts):
    """MLP 20-16-4 (T = 3, rate input) with one plugin, and 12 random samples of 4 classes."""
    from neuroplastic.datasets import ArrayDataset

    from neuroplastic.encoders import make_encoder
    from neuroplastic.network import mlp
    from neuroplastic.plugins import build_plugins
    from neuroplastic.trainers import TrainSettings, make_trainer

    torch.manual_seed(3)
    g = torch.Generator().manual_seed(4)
    ds = ArrayDataset(torch.rand(12, 20, generator=g), torch.randint(0, 4, (12,), generator=g), 4)
    plugins = build_plugins(method, {method: opts})
    tr = make_trainer(mlp([20, 16, 4]), make_encoder("rate", 3), TrainSettings(time_steps=3, batch_size=8),
                      plugins, "cpu", 3, True)
    return tr, plugins.plugins[0], ds


def _edge_results() -> dict:
    """What must not depend on the number of ranks (also the 1-process reference)."""
    from neuroplastic.plugins.projection import collect_activity

    out = {}
    # collect_activity on 3 samples in minibatches of 2: the last minibatch has 1 sample,
    # so rank 1's shard is empty there and it computes on a stand-in sample
    tr, _, ds = _edge_setup("hlop")
    out["activity"] = collect_activity(tr, ds, None, dict(tr.model.synapses()), 3, batch_size=2, seed=5)
    # the sampled Fisher (labels drawn from the encoding stream after each forward pass):
    # every rank computes every minibatch
    tr, ewc, ds = _edge_setup("ewc", fisher="sampled", fisher_samples=7, fisher_batch_size=2)
    ewc.on_task_start(0, None)
    out["fisher"] = ewc.estimate_fisher(ds, None)
    return out


def _edge_dense_grads(rank: int) -> dict:
    """GraNet's reduction of the dense gradients by hand: weights 1/4 (rank 0) and 3/4."""
    tr, granet, _ = _edge_setup("granet", unit="step", start=1, end=5)
    (a, la), (b, lb) = granet.layers
    tr.shard_weight = [0.25, 0.75][rank]
    out = {"names": (a, b)}
    granet.dense_grad.grads = {a: torch.full_like(la.weight, rank + 1.0), b: torch.full_like(lb.weight, rank + 3.0)}
    granet._reduce_dense_grads()
    out["both"] = dict(granet.dense_grad.grads)
    granet.dense_grad.grads = {a: torch.full_like(la.weight, rank + 1.0)}
    if rank == 0:  # layer b only on rank 0: counts zero on rank 1
        granet.dense_grad.grads[b] = torch.full_like(lb.weight, 4.0)
    granet._reduce_dense_grads()
    out["one_missing"] = dict(granet.dense_grad.grads)
    return out


def _edge_entry(rank: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    ref = _edge_results()  # the 1-process reference, before the group exists (on both: a warm-up)
    if rank == 0:
        torch.save(ref, f"{out_dir}/ref.pt")
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/init", rank=rank, world_size=2)
    try:
        torch.save({**_edge_results(), "dense": _edge_dense_grads(rank)}, f"{out_dir}/r{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_edges(tmp_path_factory):
    """The edges on 2 ranks, each rank this file run as a script (~8 s); when one rank
    fails the other is stopped rather than left waiting in a collective. Returns the
    results of rank 0, rank 1 and the 1-process reference."""
    out = tmp_path_factory.mktemp("ddp_edges")
    logs = [open(out / f"stderr_r{r}.txt", "w") for r in (0, 1)]
    procs = [subprocess.Popen([sys.executable, __file__, str(out), str(r)], env=_env(), stdout=subprocess.DEVNULL,
                              stderr=logs[r]) for r in (0, 1)]
    deadline = time.monotonic() + 300
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.returncode not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for f in logs:
            f.close()
    err = "\n".join((out / f"stderr_r{r}.txt").read_text()[-3000:] for r in (0, 1))
    assert [p.returncode for p in procs] == [0, 0], err
    return tuple(torch.load(out / f"{n}.pt", weights_only=False) for n in ("r0", "r1", "ref"))


def test_collect_activity_with_an_empty_shard_on_two_ranks(two_rank_edges):
    """The last minibatch of 1 sample: rank 1 computes on the stand-in sample 0 (whose
    input is dropped by the gather); every rank returns the 1-process inputs."""
    r0, r1, ref = two_rank_edges
    a0, a1, af = r0["activity"], r1["activity"], ref["activity"]
    assert set(a0) == set(a1) == set(af) and len(af) == 2
    for n in af:
        assert [t.shape[1] for t in af[n]] == [2, 1]
        assert all(torch.equal(x, y) for x, y in zip(a0[n], a1[n]))
        assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a0[n], af[n]))


def test_sampled_fisher_on_two_ranks_equals_one_process(two_rank_edges):
    """The sampled Fisher is not split over the ranks (its labels come from the encoding
    stream, which a rank that only encoded a minibatch would leave behind)."""
    r0, r1, ref = two_rank_edges
    f0, f1, ff = r0["fisher"], r1["fisher"], ref["fisher"]
    assert set(f0) == set(f1) == set(ff)
    assert any(float(f.abs().sum()) > 0 for f in ff.values())
    for n in ff:
        assert torch.equal(f0[n], f1[n]) and torch.allclose(f0[n], ff[n], rtol=1e-4, atol=1e-7), n


def test_granet_reduces_dense_gradients_with_a_layer_missing_on_one_rank(two_rank_edges):
    for r in two_rank_edges[:2]:
        a, b = r["dense"]["names"]
        both, missing = r["dense"]["both"], r["dense"]["one_missing"]
        assert torch.allclose(both[a], torch.full_like(both[a], 0.25 * 1 + 0.75 * 2))
        assert torch.allclose(both[b], torch.full_like(both[b], 0.25 * 3 + 0.75 * 4))
        assert set(missing) == {a, b}
        assert torch.allclose(missing[a], torch.full_like(missing[a], 1.75))
        assert torch.allclose(missing[b], torch.full_like(missing[b], 0.25 * 4))  # zero from rank 1


# -- torchrun end to end -------------------------------------------------------------------
CONFIG = """
methods = ["hlop+granet+dormant"]
seed = 1
[data]
dataset = "digits"
tasks = 2
max_per_task = 240
[model]
hidden = [48]
[train]
epochs = 1
batch_size = 24
time_steps = 4
lr = 0.05
encoder = "direct"
[granet]
sparsity = 0.6
update_every = 4
"""


def test_torchrun_two_processes_equal_one_process(tmp_path):
    from neuroplastic.cli import main

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    two, one = tmp_path / "two", tmp_path / "one"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "neuroplastic", "run", str(cfg), "--out", str(two), "--quiet"],
                          env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("hlop+granet+dormant") == 1  # results printed by rank 0 only
    assert main(["run", str(cfg), "--out", str(one), "--quiet"]) == 0
    m2 = json.loads((two / "metrics.json").read_text())
    m1 = json.loads((one / "metrics.json").read_text())
    diff = max(abs(a - b) for r2, r1 in zip(m2["acc_matrix"], m1["acc_matrix"]) for a, b in zip(r2, r1))
    assert diff <= ACC_TOL, (m2["acc_matrix"], m1["acc_matrix"])
    assert m2["sparsity"] == pytest.approx(m1["sparsity"], abs=1e-6) and m2["sparsity"] > 0.5
    assert m2["acc"] > 30  # it did learn (chance: 10)
    assert not list(two.rglob("*.tmp"))


if __name__ == "__main__":  # one rank of the two_rank_edges fixture: python tests/test_distributed.py OUT_DIR RANK
    _edge_entry(int(sys.argv[2]), sys.argv[1])
