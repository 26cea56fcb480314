"""Wall-time overhead of HLOP (Hebbian iterations + gradient projection) and GPM
(projection + the SVD at each task end) over plain fine-tuning, per task.

Every method trains the same network on the same permuted-digits tasks from the same
seed; the runs are repeated ``--repeats`` times *interleaved* (finetune, hlop, gpm,
finetune, ...) and the minimum per task is kept, which is robust to other processes
sharing the CPU. Times are for ``Trainer.train_task`` (what a user waits for during
training, with HLOP's Hebbian updates inside it) and, separately, for the task-end
hooks (GPM's representation + SVD, HLOP's energy records).

    python benchmarks/bench_hlop_overhead.py                    # the documented run
    python benchmarks/bench_hlop_overhead.py --encoder rate     # Bernoulli input spikes
    python benchmarks/bench_hlop_overhead.py --runs finetune hlop 'hlop/4:hlop:{"hebb_every":4}'
    python benchmarks/bench_hlop_overhead.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from neuroplastic.config import config_from_dict
from neuroplastic.continual import _Encoded, build_encoder, build_model, build_stream
from neuroplastic.plugins import build_plugins
from neuroplastic.training import Trainer


def parse_run(spec: str) -> tuple[str, str, dict]:
    """``"hlop"`` or ``"label:method:{json options}"`` -> (label, method, {method: options})."""
    parts = spec.split(":", 2)
    if len(parts) == 1:
        return spec, spec, {}
    label, method = parts[0], parts[1]
    return label, method, {method: json.loads(parts[2])} if len(parts) == 3 else {}


def run_once(cfg, stream, method: str, options: dict) -> list[dict]:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, stream)
    trainer = Trainer(model, _Encoded(build_encoder(cfg, stream), None), cfg.train,
                      build_plugins(method, options), "cpu", cfg.seed, True)
    plugins = trainer.plugins
    rows = []
    for i, task in enumerate(stream.tasks):
        t0 = time.perf_counter()
        plugins.on_task_start(i, task)
        t1 = time.perf_counter()
        trainer.train_task([(task.train, task.head)], i)
        t2 = time.perf_counter()
        plugins.on_task_end(i, task)
        t3 = time.perf_counter()
        m = plugins.metrics().get(method, {})
        rows.append({"task": i, "train_s": t2 - t1, "start_s": t1 - t0, "end_s": t3 - t2,
                     "steps": trainer.global_step, "hebbian_s": m.get("hebbian_s"),
                     "projection_s": m.get("projection_s"),
                     "svd_s": (m.get("svd_s") or [None])[-1] if m.get("svd_s") else None})
    # plugin timers are cumulative: turn them into per-task numbers
    for key in ("hebbian_s", "projection_s"):
        prev = 0.0
        for r in rows:
            if r[key] is not None:
                r[key], prev = r[key] - prev, r[key]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--time-steps", type=int, default=6)
    ap.add_argument("--encoder", default="direct")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", nargs="+", default=["finetune", "hlop", "gpm"],
                    help='methods, or "label:method:{json options}" (e.g. hlop4:hlop:{"hebb_every":4})')
    ap.add_argument("--quick", action="store_true", help="2 tasks, 1 repeat")
    ap.add_argument("--json", help="write the rows to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.tasks, a.repeats = 2, 1
    torch.set_num_threads(a.threads)
    cfg = config_from_dict({
        "seed": 0, "quiet": True,
        "data": {"dataset": "digits", "stream": "permuted", "tasks": a.tasks},
        "model": {"hidden": list(a.hidden)},
        "train": {"epochs": a.epochs, "batch_size": a.batch_size, "time_steps": a.time_steps,
                  "encoder": a.encoder, "lr": 0.01},
    })
    stream = build_stream(cfg)
    runs = [parse_run(r) for r in a.runs]
    methods = [label for label, _, _ in runs]
    best: dict[str, list[dict]] = {}
    for _ in range(a.repeats):
        for label, method, options in runs:
            rows = run_once(cfg, stream, method, options)
            if label not in best:
                best[label] = rows
            else:
                for b, r in zip(best[label], rows):
                    for k in ("train_s", "start_s", "end_s", "hebbian_s", "projection_s", "svd_s"):
                        if r[k] is not None and (b[k] is None or r[k] < b[k]):
                            b[k] = r[k]
    kinds = {label: method for label, method, _ in runs}
    base = best.get("finetune")
    head = f"{'task':>4} " + " ".join(f"{m + ' s':>12}" for m in methods)
    head += "".join(f" {m + ' +%':>9}" for m in methods if m != "finetune" and base)
    print(f"permuted digits, MLP 784-{'-'.join(map(str, a.hidden))}-10, T={a.time_steps}, "
          f"B={a.batch_size}, encoder {a.encoder}, {a.threads} thread(s), min of {a.repeats}")
    print(head)
    for i in range(a.tasks):
        line = f"{i:>4} " + " ".join(f"{best[m][i]['train_s']:12.2f}" for m in methods)
        if base:
            line += "".join(f" {100 * (best[m][i]['train_s'] / base[i]['train_s'] - 1):9.1f}"
                            for m in methods if m != "finetune")
        print(line)
    for m in methods:
        tot = sum(r["train_s"] for r in best[m])
        extra = ""
        if kinds[m] == "hlop":
            extra = (f"  hebbian {sum(r['hebbian_s'] for r in best[m]):.2f} s, projection "
                     f"{sum(r['projection_s'] for r in best[m]):.2f} s, task start/end records "
                     f"{sum(r['start_s'] + r['end_s'] for r in best[m]):.2f} s")
        if kinds[m] == "gpm":
            extra = (f"  projection {sum(r['projection_s'] for r in best[m]):.2f} s, SVD at task ends "
                     f"{sum(r['svd_s'] for r in best[m]):.2f} s")
        over = f" ({100 * (tot / sum(r['train_s'] for r in base) - 1):+.1f}%)" if base and m != "finetune" else ""
        print(f"{m}: training {tot:.2f} s{over}{extra}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "machine": platform.processor() or platform.machine(),
                       "torch": torch.__version__, "rows": best}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
