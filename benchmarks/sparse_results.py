"""Sparse synapses on scikit-learn digits: the numbers of docs/results.md
("Sparse synapses: GraNet and friends").

Experiments (each over seeds 0, 1, 2; mean +- sample std, n-1):

* ``single``  single task (digits 28x28, identity permutation: the plain 10-class
  problem), MLP 784-256-10 LIF, T=6, 5 epochs, batch 32, SGD lr 0.01 momentum 0.9:
  dense vs GraNet (dense-to-sparse and sparse-to-sparse) vs GMP vs RigL vs SET vs static
  at 80 / 90 / 95 % sparsity. Test accuracy (percent).
* ``dormant`` the same task with GraNet and RigL at 90 / 95 %: plain, dormant-aware
  regeneration (new synapses at 0), and dormant-aware with ``dormant_init = 1`` (new
  synapses into dormant neurons start at the layer's mean |w|); accuracy, test-set dormant
  ratio after training, training dormant ratio (the ``dormant`` plugin) and how many new
  synapses went to dormant neurons.
* ``continual`` permuted digits, 5 tasks, 2 epochs each: fine-tuning (dense) vs GraNet
  90 % with each ``span`` (pruning within task 0, then regenerating / frozen topology;
  cosine restarted per task; everything spread over the stream): ACC / BWT.
* ``hlop``    permuted digits, 5 tasks (the default stream), HLOP dense vs HLOP + GraNet
  at 50 / 80 / 90 % (and 90 % with the topology frozen after task 0, and HLOP + a static
  random mask): ACC / BWT. Runs only when ``hlop`` is a registered method.

Usage::

    python benchmarks/sparse_results.py                    # everything, ~15-20 min on 2 cores
    python benchmarks/sparse_results.py --only single --seeds 0
    python benchmarks/sparse_results.py --json sparse_results.json --out /tmp/sparse_runs

Every run goes through :func:`neuroplastic.continual.run` (the same code path as
``neuroplastic run``); run directories are kept under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from neuroplastic.config import config_from_dict
from neuroplastic.continual import run
from neuroplastic.plugins import REGISTRY

SINGLE = {
    "data": {"dataset": "digits", "stream": "permuted", "tasks": 1},
    "model": {"hidden": [256]},
    "train": {"epochs": 5, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "time_steps": 6, "encoder": "rate"},
}
PERMUTED = {
    "data": {"dataset": "digits", "stream": "permuted", "tasks": 5},
    "model": {"hidden": [256]},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "time_steps": 6, "encoder": "rate"},
}
UPDATE_EVERY = 10  # mask updates every 10 steps (about 22 updates in the 215 steps of a run)
SPARSE = ("granet", "gmp", "rigl", "set", "static")


def one(base: dict, method: str, sections: dict, seed: int, out: Path) -> dict:
    raw = copy.deepcopy(base)
    raw.update({"methods": [method], "seed": seed, "quiet": True, "out": str(out)})
    raw.update(copy.deepcopy(sections))
    cfg = config_from_dict(raw)
    t0 = time.perf_counter()
    m = run(cfg, echo=lambda *a: None)[method]
    m["_wall"] = time.perf_counter() - t0
    return m


def sparse_section(name: str, sparsity: float, **extra) -> dict:
    sec = {"sparsity": sparsity, **extra}
    if name != "static":
        sec.setdefault("update_every", UPDATE_EVERY)
    return {name: sec}


def experiments(which: set[str]) -> list[tuple[str, str, dict, str, dict]]:
    """``(experiment, label, base, method, sections)`` for every configuration."""
    rows = []
    if "single" in which:
        rows.append(("single", "dense", SINGLE, "finetune", {}))
        for s in (0.8, 0.9, 0.95):
            for name in SPARSE:
                rows.append(("single", f"{name} {s:.2f}", SINGLE, name, sparse_section(name, s)))
            rows.append(
                (
                    "single",
                    f"granet-s2s {s:.2f}",
                    SINGLE,
                    "granet",
                    sparse_section("granet", s, init_density=0.5),
                )
            )
    if "dormant" in which:
        for name in ("granet", "rigl"):
            for s in (0.9, 0.95):
                arms = (
                    ("plain", {}),
                    ("dormant-aware", {"dormant_aware": True}),
                    ("dormant-aware init=1", {"dormant_aware": True, "dormant_init": 1.0}),
                )
                for arm, kw in arms:
                    sec = sparse_section(name, s, **kw)
                    sec["dormant"] = {"every": 25}
                    rows.append(("dormant", f"{name} {s:.2f} {arm}", SINGLE, f"{name}+dormant", sec))
    if "continual" in which:
        rows.append(("continual", "finetune (dense)", PERMUTED, "finetune", {}))
        for span, later in (("first_task", True), ("first_task", False), ("each_task", True), ("all_tasks", True)):
            label = f"granet 0.90 span={span}" + ("" if later else " frozen-later")
            sec = sparse_section("granet", 0.9, span=span, regrow_later_tasks=later)
            rows.append(("continual", label, PERMUTED, "granet", sec))
    if "hlop" in which and "hlop" in REGISTRY:
        rows.append(("hlop", "hlop (dense)", PERMUTED, "hlop", {}))
        for s in (0.5, 0.8, 0.9):
            rows.append(("hlop", f"hlop+granet {s:.2f}", PERMUTED, "hlop+granet", sparse_section("granet", s)))
        sec = sparse_section("granet", 0.9, regrow_later_tasks=False)
        rows.append(("hlop", "hlop+granet 0.90 frozen-later", PERMUTED, "hlop+granet", sec))
        rows.append(("hlop", "hlop+static 0.90", PERMUTED, "hlop+static", sparse_section("static", 0.9)))
    return rows


def stat(values: list[float]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def summarise(results: dict) -> str:
    lines = []
    for exp, rows in results.items():
        lines.append(f"\n### {exp}\n")
        if exp == "single":
            lines.append("| configuration | test acc % | sparsity | fc1 / fc2 sparsity | s/run |")
            lines.append("|---|---|---|---|---|")
            for label, runs in rows.items():
                lines.append(
                    f"| {label} | {stat([r['acc'] for r in runs])} | {stat([r['sparsity'] for r in runs])} "
                    f"| {stat([r['sparsity_per_layer'].get('fc1', 0) for r in runs])} / "
                    f"{stat([r['sparsity_per_layer'].get('fc2', 0) for r in runs])} "
                    f"| {statistics.mean(r['_wall'] for r in runs):.1f} |"
                )
        elif exp == "dormant":
            lines.append(
                "| configuration | test acc % | dormant (test, after training) | dormant (train, last) "
                "| synapses grown into dormant neurons |"
            )
            lines.append("|---|---|---|---|---|")
            for label, runs in rows.items():
                name = label.split()[0]
                lines.append(
                    f"| {label} | {stat([r['acc'] for r in runs])} "
                    f"| {stat([r['dormant_ratio']['overall'] for r in runs])} "
                    f"| {stat([r.get('dormant_train', {}).get('overall') for r in runs])} "
                    f"| {stat([r[name]['regrown_into_dormant'] for r in runs])} |"
                )
        else:
            lines.append("| configuration | ACC % | BWT % | sparsity |")
            lines.append("|---|---|---|---|")
            for label, runs in rows.items():
                lines.append(
                    f"| {label} | {stat([r['acc'] for r in runs])} | {stat([r['bwt'] for r in runs])} "
                    f"| {stat([r['sparsity'] for r in runs])} |"
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="single,dormant,continual,hlop", help="comma-separated experiments")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=None, help="directory for the run directories (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write all metrics as JSON here")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    which = {w.strip() for w in a.only.split(",") if w.strip()}
    if "hlop" in which and "hlop" not in REGISTRY:
        print("note: no 'hlop' method registered: the HLOP + GraNet experiment is skipped", file=sys.stderr)
    out = Path(a.out or tempfile.mkdtemp(prefix="sparse_results_"))
    results: dict[str, dict[str, list]] = {}
    rows = experiments(which)
    for i, (exp, label, base, method, sections) in enumerate(rows):
        for seed in a.seeds:
            d = out / exp / label.replace(" ", "_") / f"seed{seed}"
            m = one(base, method, sections, seed, d)
            results.setdefault(exp, {}).setdefault(label, []).append(m)
            print(
                f"[{i + 1}/{len(rows)}] {exp:8s} {label:32s} seed {seed}: acc {m['acc']:.2f} "
                f"sparsity {m['sparsity']:.3f} ({m['_wall']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    print(summarise(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
