"""How close a data-parallel run is to a 1-process run of the same config (docs/distributed.md).

For every trainer, every method and a few seeds, run the same small continual config
once as one process and once under ``torchrun --standalone --nproc-per-node N``, and
compare the accuracy matrices entry by entry (percentage points) and the final sparsity.
Prints one row per (trainer, method) and a summary; ``--json FILE`` writes the rows.

    python benchmarks/distributed_equivalence.py [--nproc 2] [--seeds 0,1] [--trainers bptt,ottt,eprop,dsr]

Each run uses one thread per process (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ["finetune", "hlop", "gpm", "ewc", "granet", "rigl", "hlop+granet+dormant", "multitask"]

CONFIG = """
methods = {methods}
seed = {seed}
[data]
dataset = "digits"
tasks = 3
[model]
hidden = [128]
[train]
trainer = "{trainer}"
epochs = 1
batch_size = 32
time_steps = 6
encoder = "direct"
"""


def run(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--trainers", default="bptt,ottt,eprop,dsr")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    methods = a.methods.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for trainer in a.trainers.split(","):
            for seed in (int(s) for s in a.seeds.split(",")):
                cfg = tmp / f"{trainer}_{seed}.toml"
                cfg.write_text(CONFIG.format(methods=json.dumps(methods), seed=seed, trainer=trainer))
                one, many = tmp / f"one_{trainer}_{seed}", tmp / f"many_{trainer}_{seed}"
                t1 = run([sys.executable, "-m", "neuroplastic", "run", str(cfg), "--out", str(one), "--quiet"], tmp)
                tn = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                          str(a.nproc), "-m", "neuroplastic", "run", str(cfg), "--out", str(many), "--quiet"], tmp)
                for m in methods:
                    d1, dn = (one / m, many / m) if len(methods) > 1 else (one, many)
                    r1 = json.loads((d1 / "metrics.json").read_text())
                    rn = json.loads((dn / "metrics.json").read_text())
                    diffs = [abs(x - y) for ra, rb in zip(r1["acc_matrix"], rn["acc_matrix"]) for x, y in zip(ra, rb)]
                    rows.append({"trainer": trainer, "method": m, "seed": seed, "nproc": a.nproc,
                                 "max_abs_diff": max(diffs), "entries_differing": sum(d > 0 for d in diffs),
                                 "entries": len(diffs), "acc_1": r1["acc"], "acc_n": rn["acc"],
                                 "sparsity_diff": abs(r1["sparsity"] - rn["sparsity"]),
                                 "wall_1_s": t1, "wall_n_s": tn})
                print(f"{trainer} seed {seed}: 1 process {t1:.1f} s, {a.nproc} processes {tn:.1f} s", flush=True)
    print(f"{'trainer':<6} {'method':<22} {'seed':>4} {'max |dR|':>9} {'differing':>9} {'ACC 1':>6} {'ACC N':>6}")
    for r in rows:
        print(f"{r['trainer']:<6} {r['method']:<22} {r['seed']:>4} {r['max_abs_diff']:9.2f} "
              f"{r['entries_differing']:>4}/{r['entries']:<4} {r['acc_1']:6.2f} {r['acc_n']:6.2f}")
    worst = max(rows, key=lambda r: r["max_abs_diff"])
    exact = sum(r["max_abs_diff"] == 0 for r in rows)
    print(f"{exact}/{len(rows)} accuracy matrices identical; largest entry difference {worst['max_abs_diff']:.2f} "
          f"points ({worst['trainer']} {worst['method']} seed {worst['seed']}); "
          f"largest ACC difference {max(abs(r['acc_1'] - r['acc_n']) for r in rows):.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
