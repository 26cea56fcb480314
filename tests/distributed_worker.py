"""Worker of tests/test_distributed.py (not a test module): runs a scenario on 2 ranks.

``python tests/distributed_worker.py SCENARIO[,SCENARIO...] OUT_DIR`` spawns two processes with
``torch.multiprocessing`` (a gloo group initialised through ``file://OUT_DIR/init``, one
thread each), runs the scenarios on both and saves each rank's results to
``OUT_DIR/SCENARIO_r<rank>.pt``. Scenarios with a 1-process reference compute it first,
before the process group exists (so as one process), each process a share of it, into
``OUT_DIR/SCENARIO_ref_r<rank>.pt`` (merge the dicts).
A script rather than functions of the test module: spawned children import it by path,
whatever pytest's import mode.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD = 2

#: (trainer, method) pairs of the training scenario: every trainer, every plugin
COMBOS = [
    ("bptt", "hlop+granet+dormant"),
    ("ottt", "gpm+rigl"),
    ("eprop", "hlop+set+dormant"),
    ("dsr", "ewc+static"),
]


def tiny_config(trainer: str, method: str, batch_size: int = 17):
    """2 permuted digits tasks of 120 training samples, MLP 784-32-10, T = 4, rate input.
    A batch of 17 leaves 1 sample in the last minibatch of each epoch: rank 1's shard is
    empty there. The plugins update at every step where they can (HLOP's per-step
    input-form projection and Hebbian rule, GraNet's schedule in steps)."""
    from neuroplastic.config import config_from_dict

    return config_from_dict({
        "methods": [method], "seed": 3,
        "data": {"dataset": "digits", "tasks": 2, "max_per_task": 120},
        "model": {"hidden": [32]},
        "train": {"trainer": trainer, "batch_size": batch_size, "time_steps": 4, "encoder": "rate", "lr": 0.05},
        "hlop": {"hebb_every": 1, "project_every": 1, "linear_mode": "input", "energy_samples": 40},
        "granet": {"unit": "step", "start": 1, "end": 5, "update_every": 2, "sparsity": 0.5},
        "gmp": {"unit": "step", "start": 1, "end": 5, "update_every": 2, "sparsity": 0.5},
        "rigl": {"unit": "step", "update_every": 3, "sparsity": 0.5},
        "set": {"unit": "step", "update_every": 3, "sparsity": 0.5},
        "static": {"sparsity": 0.5},
        "gpm": {"n_samples": 30},
        "ewc": {"fisher_samples": 9, "lam": 10.0},
        "dormant": {"every": 2},
    })


def train(trainer: str, method: str) -> dict:
    """Build and train the tiny run through its two tasks the way the runner does; the
    state every rank must agree on."""
    from neuroplastic.continual import build_model, build_stream, run_encoder
    from neuroplastic.plugins import build_plugins
    from neuroplastic.trainers import make_trainer

    cfg = tiny_config(trainer, method)
    torch.manual_seed(cfg.seed)
    stream = build_stream(cfg)
    model = build_model(cfg, stream)
    plugins = build_plugins(method, cfg.plugins)
    tr = make_trainer(model, run_encoder(cfg, stream, model), cfg.train, plugins, "cpu", cfg.seed, True)
    losses, R = [], []
    for i, task in enumerate(stream.tasks):
        plugins.on_task_start(i, task)
        losses += tr.train_task(plugins.train_sources(i, stream, [(task.train, task.head)]), i)
        plugins.on_task_end(i, task)
        R.append([tr.evaluate(t.test, t.head) for t in stream.tasks])
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items() if v is not None},
            "plugins": plugins.state_dict(), "losses": losses, "R": R}


def scenario_training(rank: int) -> dict:
    return {f"{t}:{m}": train(t, m) for t, m in COMBOS}


def reference_training(rank: int) -> dict:
    return {f"{t}:{m}": train(t, m) for t, m in COMBOS[rank::WORLD]}


def scenario_collectives(rank: int) -> dict:
    """Every helper of neuroplastic.distributed once, with rank-dependent inputs."""
    from neuroplastic import distributed as D
    from neuroplastic.dormant import FiringRateMonitor
    from neuroplastic.plugins.projection import gather_activity

    out: dict = {"rank": D.rank(), "world": D.world_size(), "main": D.is_main()}
    out["weighted"] = D.weighted_sum(torch.full((3,), float(rank + 1)), [0.25, 0.75][rank])
    # unequal shards, one of them empty (a rank may hold a stand-in row beyond its size)
    rows = torch.arange(6.0).reshape(3, 2) + 10 * rank
    out["gather_2_1"] = D.all_gather(rows[: [2, 1][rank]], 0, [2, 1])
    out["gather_3_0"] = D.all_gather(rows[: [3, 1][rank]], 0, [3, 0])
    out["gather_unknown"] = D.all_gather(rows[: [1, 3][rank]], 0)
    x = torch.arange(8.0).reshape(1, 4, 2) + 100 * rank
    out["activity"] = gather_activity(x[:, : [3, 1][rank]], [3, 1])
    direct = (torch.arange(6.0).reshape(3, 2) + 100 * rank).unsqueeze(0).expand(4, 3, 2)
    g = gather_activity(direct[:, : [2, 1][rank]], [2, 1])
    out["direct"], out["direct_stride0"] = g.contiguous(), g.stride(0) == 0
    out["bcast"] = D.broadcast_tensor(torch.arange(5) * 7 if rank == 0 else None, 0)
    mask = torch.tensor([True, False, rank == 0])
    out["bcast_bool"] = D.broadcast(mask.clone(), 0)
    out["objects"] = D.all_gather_object({"r": rank})
    out["any_true"], out["any_false"] = D.any_rank(rank == 1), D.any_rank(False)
    out["max"] = D.all_reduce(torch.tensor([float(rank)]), "max")
    out["mean"] = D.all_reduce(torch.tensor([float(rank)]), "mean")
    # gradients: a parameter without a gradient on rank 1 counts zero there; one without
    # a gradient anywhere stays None; extra tensors and the loss are combined alike
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    a.grad = torch.full((2,), float(rank + 1))
    if rank == 0:
        b.grad = torch.ones(2)
    extra = {"dense": torch.full((2, 2), float(rank))}
    w = [0.25, 0.75][rank]
    out["loss"] = D.reduce_gradients([a, b, c], w, extra, torch.tensor(float(rank + 1)))
    out["a"], out["b"], out["c_none"], out["dense"] = a.grad, b.grad, c.grad is None, extra["dense"]
    # firing counts: a layer only one rank has seen
    neuron = torch.nn.Identity()
    mon = FiringRateMonitor([("l0", neuron)])
    neuron(torch.ones(2, 1 + rank, 3) * (rank + 1))  # [T, B, N]
    mon.all_reduce()
    out["rates"], out["counts"] = mon.rates()["l0"], dict(mon.counts)
    mon.clear()
    if rank == 0:
        neuron(torch.ones(1, 1, 3))
    mon.all_reduce()
    out["rates_one"] = mon.rates().get("l0")
    return out


def hebbian_inputs():
    """A minibatch of presynaptic spikes ``[T, B, D]``, 3 frozen + 4 free subspace rows."""
    from neuroplastic.plugins.projection import random_orthonormal_rows

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(5, 13, 20, generator=g) < 0.3).float()
    H = random_orthonormal_rows(7, 20, g) * 0.5
    return x, H


def hebbian_update_of(x: torch.Tensor, H: torch.Tensor, spiking) -> tuple[torch.Tensor, torch.Tensor]:
    from neuroplastic.plugins.projection import activity_matrix, hebbian_update
    from neuroplastic.synapses import Linear

    H = H.clone()
    mom = torch.zeros(4, H.shape[1])
    X = activity_matrix(Linear(20, 8), x, "spikes")
    act = hebbian_update(X, H, mom, 3, lr=0.05, iters=5, spiking=spiking)
    return H, act


def scenario_hebbian_shards(rank: int) -> dict:
    from neuroplastic import distributed as D
    from neuroplastic.plugins.projection import gather_activity

    x, H = hebbian_inputs()
    s = D.shard(x.shape[1])
    out = {}
    for name, spiking in (("plain", None), ("spiking", (2.0, 100.0))):
        mine = gather_activity(x[:, s], D.shard_sizes(x.shape[1]))
        out[name] = hebbian_update_of(mine, H, spiking)
    return out


def reference_hebbian_shards(rank: int) -> dict:
    if rank:
        return {}
    x, H = hebbian_inputs()
    out = {name: hebbian_update_of(x, H, spiking) for name, spiking in (("plain", None), ("spiking", (2.0, 100.0)))}
    return {**out, "initial": H}


SCENARIOS = {"training": (scenario_training, reference_training),
             "collectives": (scenario_collectives, None),
             "hebbian": (scenario_hebbian_shards, reference_hebbian_shards)}


def _entry(rank: int, name: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    # the 1-process references first, shared out among the processes, before the group exists
    for one in name.split(","):
        reference = SCENARIOS[one][1]
        if reference is not None:
            torch.save(reference(rank), f"{out_dir}/{one}_ref_r{rank}.pt")
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/init", rank=rank, world_size=WORLD)
    try:
        for one in name.split(","):
            torch.save(SCENARIOS[one][0](rank), f"{out_dir}/{one}_r{rank}.pt")
    finally:
        dist.destroy_process_group()


def main(argv: list[str]) -> int:
    name, out_dir = argv
    torch.set_num_threads(1)
    mp.spawn(_entry, args=(name, out_dir), nprocs=WORLD, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
