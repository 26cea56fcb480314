"""The ``neuroplastic`` command line (also ``python -m neuroplastic``).

``neuroplastic run [CONFIG.toml] [--method M[+M...][,M...]] [--dataset ...] ...`` runs
continual experiments (no arguments: the embedded default on permuted digits);
``neuroplastic export`` writes a trained network as a NIR graph or our sparse HDF5 archive;
``neuroplastic simulate`` runs a saved network on an input array;
``neuroplastic plot`` draws a run's figures and writes its HTML report;
``neuroplastic bench peers|kernels|simulate|memory`` runs the performance comparisons
(``memory``: peak memory and time per sample of a training step per trainer and T).
Bad input prints one line ``neuroplastic: error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from .errors import Interrupted, RunStopped, UserError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too; keep it short)
        raise UserError(message)


#: ``bench memory``'s own options (passed on to :func:`neuroplastic.bench.memory.main`)
_BENCH_MEMORY_OPTIONS = (
    ("--steps", str, "time steps T, comma-separated (default 10,100,1000)"),
    ("--trainers", str, "comma-separated trainers (default bptt,ottt,eprop,dsr)"),
    ("--batch", int, "samples per step (default 32)"),
    ("--hidden", int, "hidden neurons N of the 784-N-10 mlp (default 256)"),
    ("--repeats", int, "timed steps per row (default 3)"),
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="neuroplastic", description="Spiking neural networks that keep learning.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("run", help="run a continual-learning experiment")
    r.add_argument("config", nargs="?", help="TOML config (default: the embedded permuted-digits run)")
    r.add_argument("--method", help="method(s): a+b composes plugins, a,b runs them side by side")
    r.add_argument("--dataset", choices=["digits", "mnist", "shd", "cues"])
    r.add_argument("--data-dir", help="directory with the dataset files (mnist, shd)")
    r.add_argument("--stream", choices=["permuted", "split"])
    r.add_argument("--tasks", type=int)
    r.add_argument("--augment", type=int, help="copies of every training image, distorted (digits, mnist)")
    r.add_argument("--epochs", type=int)
    r.add_argument("--trainer", choices=["bptt", "ottt", "eprop", "dsr", "online"],
                   help="how gradients are computed: bptt (default), ottt (online = ottt), eprop, dsr")
    r.add_argument("--sparsity", type=float, help="final sparsity of sparse methods (0..1)")
    r.add_argument("--seed", type=int)
    r.add_argument("--out", help="run directory (default runs/<config name>, runs/default without a config)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    r.add_argument("--force", action="store_true", help="replace an existing run directory (its files are removed)")
    r.add_argument("--plot", action="store_true", help="write the figures and report.html at the end (RUN/report/)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    e = sub.add_parser("export", help="write a trained network as NIR or a sparse HDF5 archive")
    e.add_argument("source", help="run directory or checkpoint (ckpt_task<I>.pt)")
    e.add_argument("--format", choices=["nir", "h5"], required=True)
    e.add_argument("-o", "--output", required=True, help="file to write")
    e.add_argument("--method", help="the method to export from a run of several methods")
    e.add_argument("--task", type=int, help="the checkpoint after task I (default: the last)")
    e.add_argument("--head", type=int, help="the readout head of a multi-head network (NIR holds one)")
    e.add_argument("--quantize", type=int, choices=[8, 16], help="fixed-point weights (bits), per-row scales")
    e.add_argument("--dt", type=float, help="NIR: the step a simulator will use (default: the model's)")
    e.add_argument("--integration", choices=["exact", "euler"],
                   help="NIR: how a simulator will integrate (default: the model's)")
    e.add_argument("--fold-r", action="store_true",
                   help="NIR: r = 1 on LIF/LI nodes, R folded into the weights (for importers that ignore r: Norse)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    s_ = sub.add_parser("simulate", help="run a saved network (.nir or .h5) on an input array")
    s_.add_argument("model", help="NIR graph (any tool's) or neuroplastic archive")
    s_.add_argument("input", help="input [T, B, N] or [T, B, C, H, W] (.npy or .h5)")
    s_.add_argument("-o", "--output", required=True, help="output .h5 (NIR time-gridded data layout)")
    s_.add_argument("--dt", type=float, help="time step (default: the file's)")
    s_.add_argument("--integration", choices=["exact", "euler"], help="default: the file's (euler for foreign NIR)")
    s_.add_argument("--record", default="spikes", help="observables per layer: spikes,v (default spikes)")
    s_.add_argument("--batch", type=int, default=256,
                    help="at most N samples per pass (default 256; fewer when a pass's records would pass 16 MB)")
    s_.add_argument("--plot", action="store_true", help="also draw the raster of sample 0 (OUT_raster.png)")
    s_.add_argument("--quiet", action="store_true", help="no progress bars")
    pl = sub.add_parser("plot", help="figures and a one-page HTML report of run directories")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (several: compared side by side)")
    pl.add_argument("-o", "--output", help="directory for the figures and report.html (default RUN_DIR/report)")
    pl.add_argument("--no-animation", action="store_true", help="skip the GIF of one sample's spikes")
    b = sub.add_parser("bench", help="performance comparisons")
    b.add_argument("what", choices=["peers", "kernels", "simulate", "memory"])
    b.add_argument("--json", help="write the rows as JSON to this file")
    b.add_argument("--quick", action="store_true", help="fewer repetitions (kernels: n <= 1024)")
    for opt, kind, what in _BENCH_MEMORY_OPTIONS:
        b.add_argument(opt, type=kind, help=f"memory only: {what}")
    return p


def _apply_overrides(cfg, a):
    from .config import FILE_DATASETS, SEED_MAX, DataConfig, revalidate
    from .plugins import REGISTRY

    data = {}
    if a.dataset:
        data["dataset"] = a.dataset
        if a.dataset not in FILE_DATASETS and a.data_dir is None:
            data["data_dir"] = None  # the config's directory was for the dataset replaced here
    if a.data_dir is not None:
        dataset = a.dataset or cfg.data.dataset
        if dataset not in FILE_DATASETS:
            raise UserError(f"--data-dir applies to --dataset mnist or shd; dataset {dataset!r} reads no files")
        if not a.data_dir.strip():
            raise UserError("--data-dir must name a directory, got an empty string")
        data["data_dir"] = a.data_dir
    if a.stream:
        data["stream"] = a.stream
    if a.tasks is not None:
        data["tasks"] = a.tasks
    if a.augment is not None:
        data["augment"] = a.augment
    if data:
        cfg = replace(cfg, data=DataConfig(**{**cfg.data.__dict__, **data}))
    train = {}
    if a.epochs is not None:
        train["epochs"] = a.epochs
    if a.trainer:
        train["trainer"] = a.trainer
    if train:
        cfg = replace(cfg, train=type(cfg.train)(**{**cfg.train.__dict__, **train}))
    if a.method is not None:
        methods = [m.strip() for m in a.method.split(",")]
        if not any(methods):
            raise UserError(f"--method is empty; name one or more of {', '.join(sorted(REGISTRY))} "
                            f"(a+b composes, a,b runs side by side)")
        if not all(methods):
            raise UserError(f"--method {a.method!r} has an empty name beside a ','")
        for m in methods:
            if methods.count(m) > 1:
                raise UserError(f"--method {a.method!r} names {m!r} twice; each method runs once")
        cfg = replace(cfg, methods=methods)
    if a.seed is not None:
        if not 0 <= a.seed <= SEED_MAX:
            raise UserError(f"--seed must be an integer from 0 to {SEED_MAX} (torch's 64-bit seed), got {a.seed}")
        cfg = replace(cfg, seed=a.seed)
    if a.out:
        cfg = replace(cfg, out=a.out)
    if a.quiet:
        cfg = replace(cfg, quiet=True)
    if a.sparsity is not None:
        if not 0 <= a.sparsity < 1:
            raise UserError(f"--sparsity must be in [0, 1), got {a.sparsity}")
        sparse = [n for m in cfg.methods for n in m.split("+") if n in SPARSE_METHODS]
        if not sparse:
            raise UserError("--sparsity needs a sparse method in --method (e.g. granet)")
        plugins = dict(cfg.plugins)
        for n in set(sparse):
            plugins[n] = {**plugins.get(n, {}), "sparsity": a.sparsity}
        cfg = replace(cfg, plugins=plugins)
    return revalidate(cfg)  # plugin sections and methods, after the overrides


SPARSE_METHODS = ("granet", "gmp", "rigl", "set", "static")


#: ``run`` options that change what is computed (refused with ``--resume``, which reruns
#: the run's own ``config.toml``)
_RUN_OVERRIDES = ("method", "dataset", "data_dir", "stream", "tasks", "augment", "epochs", "trainer",
                  "sparsity", "seed", "out", "force")


def _config_out(path: str) -> str | None:
    """The ``out`` a config file sets itself (``None`` when it leaves it to the default)."""
    from pathlib import Path

    from .config import tomllib

    try:
        return tomllib.loads(Path(path).read_text()).get("out")
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _run_config(a):
    """The config of ``neuroplastic run``: the file (or the embedded default), then the
    command-line overrides; ``--resume`` takes the run's own ``config.toml`` as it is."""
    from pathlib import Path

    from .config import load_config
    from .defaults import default_config

    if a.out is not None and not a.out.strip():
        raise UserError("--out must name a directory, got an empty string")
    if a.resume:
        given = [f"--{k.replace('_', '-')}" for k in _RUN_OVERRIDES if getattr(a, k) not in (None, False)]
        if a.config or given:
            raise UserError(f"--resume continues a run with its own config.toml; drop "
                            f"{', '.join(([a.config] if a.config else []) + given)}")
        root = Path(a.resume)
        if not (root / "config.toml").is_file():
            raise UserError(f"cannot resume {root}: not a run directory (no config.toml)")
        cfg = replace(load_config(root / "config.toml"), out=str(root))
        return replace(cfg, quiet=True) if a.quiet else cfg
    if a.config:
        cfg = load_config(a.config)
        if not a.out and _config_out(a.config) is None:
            cfg = replace(cfg, out=f"runs/{Path(a.config).stem}")
    else:
        cfg = default_config()
        if not a.out:
            cfg = replace(cfg, out="runs/default")
    return _apply_overrides(cfg, a)


def _cmd_run(a) -> int:
    from .continual import run

    cfg = _run_config(a)
    from .distributed import init_from_env
    init_from_env(cfg.device)  # under torchrun (WORLD_SIZE > 1): join the process group
    run(cfg, resume=bool(a.resume), force=a.force)
    if a.plot:
        return _cmd_plot(argparse.Namespace(runs=[cfg.out], output=None, no_animation=False))
    return 0


def _cmd_plot(a) -> int:
    from .plot.report import write_report

    rep = write_report(a.runs, a.output, animation=not a.no_animation)
    print(f"{len(rep.figures)} figures and {rep.html} ({rep.seconds:.1f} s)")
    for name, why in rep.failed:
        print(f"neuroplastic: note: figure {name} failed: {why}", file=sys.stderr)
    return 0


def _cmd_bench(a) -> int:
    argv = ["--json", a.json] if a.json else []
    if a.quick:
        argv.append("--quick")
    memory_opts = [(opt, getattr(a, opt[2:])) for opt, _, _ in _BENCH_MEMORY_OPTIONS]
    given = [opt for opt, v in memory_opts if v is not None]
    if given and a.what != "memory":
        raise UserError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to "
                        "'neuroplastic bench memory'")
    if a.what == "memory":
        from .bench.memory import main as bench_main

        argv += [x for opt, v in memory_opts if v is not None for x in (opt, str(v))]
    elif a.what == "peers":
        from .bench.peers import main as bench_main
    elif a.what == "simulate":
        from .bench.simulate import main as bench_main
    else:
        from .bench.kernels import main as bench_main
    return bench_main(argv)


def _cmd_export(a) -> int:
    from .export.commands import export_command

    return export_command(a)


def _cmd_simulate(a) -> int:
    from .export.commands import simulate_command

    return simulate_command(a)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    try:
        a = build_parser().parse_args(argv)
        if a.command is None:
            build_parser().print_help()
            return 2
        commands = {"run": _cmd_run, "bench": _cmd_bench, "export": _cmd_export, "simulate": _cmd_simulate,
                    "plot": _cmd_plot}
        return commands[a.command](a)
    except UserError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds it; rank 0 says it
            print(f"neuroplastic: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable run directory, full disk, unreadable file
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"neuroplastic: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except RunStopped as exc:  # Ctrl-C / SIGTERM at a safe point, or a diverging loss
        from .distributed import is_main

        if is_main():  # every rank stops at the same step; one of them says so
            print(f"neuroplastic: {'stopped' if isinstance(exc, Interrupted) else 'error'}: {exc}",
                  file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        print("neuroplastic: interrupted at once (the checkpoints already written are kept; "
              "continue with --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
