"""Continual-learning results over several seeds: HLOP, GPM, EWC beside fine-tuning and
multitask, as the markdown table of docs/results.md.

For every config and seed it runs (as a subprocess, one CPU thread each)::

    neuroplastic run CONFIG --method finetune,hlop,gpm,ewc,multitask --seed S --quiet --out OUT/<config>/seed<S>

then reads ``OUT/<config>/seed<S>/<method>/metrics.json`` and prints mean +- std (sample
standard deviation over seeds) of ACC and BWT, with the mean wall time per run.

    python benchmarks/continual_results.py                       # the three configs, seeds 0 1 2
    python benchmarks/continual_results.py --configs docs/configs/split5.toml --seeds 0
    python benchmarks/continual_results.py --collect-only        # re-read OUT, no runs
    python benchmarks/continual_results.py --configs docs/configs/permuted10.toml --methods finetune,hlop \
        --trainer ottt                                            # another trainer: OUT/<config>_<trainer>/...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = "finetune,hlop,gpm,ewc,multitask"
CONFIGS = ["docs/configs/permuted10.toml", "docs/configs/split5.toml", "docs/configs/split5_domain.toml"]


def command(config: str, seed: int, methods: str, out: Path, trainer: str | None = None) -> list[str]:
    extra = ["--trainer", trainer] if trainer else []
    return ["neuroplastic", "run", config, "--method", methods, *extra, "--seed", str(seed), "--quiet",
            "--out", str(out)]


def run_name(config: str, trainer: str | None) -> str:
    """The results folder of a config (and trainer, when one is chosen)."""
    return Path(config).stem + (f"_{trainer}" if trainer else "")


def run_one(config: str, seed: int, methods: str, out: Path, threads: int, trainer: str | None = None) -> float:
    if "," not in methods:  # a single method writes straight into --out: keep the layout
        out = out / methods
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "neuroplastic", *command(config, seed, methods, out, trainer)[1:]],
                   check=True, env=env)
    return time.perf_counter() - t0


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f}"


def table(out: Path, configs: list[str], seeds: list[int], methods: list[str], trainer: str | None = None) -> str:
    lines = []
    for config in configs:
        name = run_name(config, trainer)
        how = f", `--trainer {trainer}`" if trainer else ""
        lines += [f"**{name}** (`{config}`{how}, seeds {', '.join(map(str, seeds))})", "",
                  "| method | ACC (%) | BWT (points) | wall time per run (s) |",
                  "|---|---|---|---|"]
        for m in methods:
            acc, bwt, wall = [], [], []
            for s in seeds:
                f = out / name / f"seed{s}" / m / "metrics.json"
                if not f.is_file():
                    continue
                d = json.loads(f.read_text())
                acc.append(d["acc"])
                wall.append(d["wall_s"])
                if d["bwt"] is not None:
                    bwt.append(d["bwt"])
            n = f" (n={len(acc)})" if len(acc) != len(seeds) else ""
            lines.append(f"| {m}{n} | {fmt(acc)} | {fmt(bwt)} | "
                         f"{statistics.fmean(wall):.0f} |" if wall else f"| {m} | n/a | n/a | n/a |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--out", default="runs/continual_results")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--md", help="also write the table to this file")
    ap.add_argument("--trainer", help="pass --trainer to every run (results in OUT/<config>_<trainer>)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    methods = [m for m in a.methods.split(",") if m]
    if not a.collect_only:
        jobs = [(c, s) for c in a.configs for s in a.seeds]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            walls = list(pool.map(lambda cs: run_one(cs[0], cs[1], a.methods,
                                                     out / run_name(cs[0], a.trainer) / f"seed{cs[1]}", a.threads,
                                                     a.trainer), jobs))
        for (c, s), w in zip(jobs, walls):
            o = out / run_name(c, a.trainer) / f"seed{s}"
            o = o / a.methods if "," not in a.methods else o
            print(f"{' '.join(command(c, s, a.methods, o, a.trainer))}  # {w:.0f} s")
        print(f"total wall time {time.perf_counter() - t0:.0f} s ({a.jobs} job(s) in parallel, "
              f"{a.threads} thread(s) each)\n")
    md = table(out, a.configs, a.seeds, methods, a.trainer)
    print(md)
    if a.md:
        Path(a.md).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
