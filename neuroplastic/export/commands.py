"""The ``neuroplastic export`` and ``neuroplastic simulate`` commands (argument handling and
messages; the work is in :mod:`.nir_graph`, :mod:`.archive`, :mod:`.source` and
:mod:`neuroplastic.simulate`)."""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["export_command", "simulate_command", "mean_test_accuracy", "plugin_tables"]


def mean_test_accuracy(model, cfg, stream) -> float:
    """Mean test accuracy (percent) of ``model`` over every task of ``stream``, each through its
    head, encoded as the run's trainer encodes (same evaluation seed as the runner)."""
    from ..continual import run_encoder
    from ..training import Trainer

    trainer = Trainer(model, run_encoder(cfg, stream, model), cfg.train, None, cfg.device, cfg.seed, quiet=True)
    accs = [trainer.evaluate(t.test, t.head) for t in stream.tasks]
    return sum(accs) / len(accs)


def plugin_tables(checkpoint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """HLOP subspaces (``hlop/H``) and GPM bases (``gpm/U``) of a checkpoint, per layer."""
    plugins = checkpoint.get("plugins") or {}
    out = {}
    if isinstance(plugins.get("hlop"), dict) and plugins["hlop"].get("H"):
        out["hlop"] = {"H": dict(plugins["hlop"]["H"])}
    if isinstance(plugins.get("gpm"), dict) and plugins["gpm"].get("U"):
        out["gpm"] = {"U": dict(plugins["gpm"]["U"])}
    return out


def _note(msg: str) -> None:
    print(f"neuroplastic: note: {msg}", file=sys.stderr)


@contextlib.contextmanager
def _output_dirs(out: Path) -> Iterator[None]:
    """The directories of ``-o`` that do not exist yet are made by the write; if the
    command fails they are removed again (nothing left behind)."""
    missing = []
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    try:
        yield
    except BaseException:
        for d in missing:  # innermost first; stop at one that holds something
            try:
                d.rmdir()
            except OSError:
                break
        raise


#: files of a run directory that ``-o`` must never replace
_RUN_FILES = ("config.toml", "metrics.json", "run.h5", "summary.json", "resume.pt")


def _not_an_input(out: Path, *inputs: str) -> None:
    """Refuse an ``-o`` that would replace one of the command's own inputs (or a file of
    the run directory being exported): the input would be lost."""
    if not out.exists():
        return
    target = out.resolve()
    for given in inputs:
        src = Path(given).resolve()
        if target == src:
            raise UserError(f"-o {out} is the input {given}; give another file name (it would be replaced)")
        if src.is_dir() and src in target.parents and (target.name in _RUN_FILES
                                                       or target.name.startswith("ckpt_task")):
            raise UserError(f"-o {out} is a file of the run directory {given}; give another file name")


def _check_finite(model, where: str) -> None:
    """Refuse a network with NaN or infinite weights (a NIR graph's are not checked on
    import; every simulated spike would be garbage)."""
    import torch

    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{where}: {name} has NaN or infinite values")


def export_command(a) -> int:
    out = Path(a.output)
    if a.format == "h5" and (a.dt is not None or a.integration is not None or a.fold_r or a.head is not None):
        raise UserError("--dt, --integration, --fold-r and --head apply to --format nir "
                        "(the archive keeps the model's own timing and every head)")
    if out.exists() and out.is_dir():
        raise UserError(f"-o {out} is a directory; give a file name")
    _not_an_input(out, a.source)
    with _output_dirs(out):
        return _export(a, out)


def _export(a, out: Path) -> int:
    from ..config import to_toml
    from ..continual import build_stream
    from .archive import save_archive
    from .nir_graph import to_nir, write_nir
    from .quantize import quantize_model
    from .source import load_run_model

    rm = load_run_model(a.source, a.method, a.task)
    model = rm.model
    info: dict[str, Any] = {"source": str(rm.path), "method": rm.method, "task": rm.task}
    if a.quantize:
        stream = build_stream(rm.cfg)
        before = mean_test_accuracy(model, rm.cfg, stream)
        model = copy.deepcopy(model)
        quantize_model(model, a.quantize)
        after = mean_test_accuracy(model, rm.cfg, stream)
        info.update(accuracy_float=before, accuracy_quantized=after, accuracy_drop=before - after)
        print(f"{a.quantize}-bit weights: test accuracy {before:.2f} -> {after:.2f} "
              f"(drop {before - after:.2f} points, mean over {len(stream.tasks)} tasks)")
    if a.format == "nir":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graph = to_nir(model, a.dt, a.integration, head=a.head, fold_r=a.fold_r)
        for w in caught:
            _note(str(w.message))
        for k, v in info.items():
            graph.metadata[f"neuroplastic_{k}"] = v
        if a.quantize:
            graph.metadata["neuroplastic_quantize_bits"] = a.quantize
        write_nir(out, graph)
    else:
        save_archive(out, model, config=to_toml(rm.cfg), plugins=plugin_tables(rm.checkpoint),
                     quantize=a.quantize, attrs=info)
    print(f"{rm.method} after task {rm.task} -> {out} ({a.format})")
    return 0


def simulate_command(a) -> int:
    from ..simulate import _check_input, load_input, load_model, simulate

    record = tuple(r.strip() for r in a.record.split(",") if r.strip())
    out = Path(a.output)
    if out.exists() and out.is_dir():
        raise UserError(f"-o {out} is a directory; give a file name")
    _not_an_input(out, a.model, a.input)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(a.model, a.dt, a.integration)
    for w in caught:
        _note(str(w.message))
    _check_finite(model, str(a.model))
    x = load_input(a.input)
    try:
        T, B = _check_input(x, model, str(a.input))  # before indexing x.shape (0-d / 1-d inputs)
        with _output_dirs(out):
            rates = simulate(model, x, out, batch=a.batch, record=record, dt=a.dt, quiet=a.quiet,
                             attrs={"model": str(a.model), "input": str(a.input)}, where=str(a.input))
    finally:
        if hasattr(x, "file"):  # an h5py dataset: close its file
            x.file.close()
    print(f"{B} samples x {T} steps -> {out}")
    for layer, r in rates.items():
        print(f"  {layer:<16} firing rate {r:.4f}")
    if getattr(a, "plot", False):
        from ..plot.spikes import raster_from_simulation
        from ..plot.style import NoData, save_png

        try:
            png = save_png(raster_from_simulation(str(out), sample=0), out.with_name(out.stem + "_raster.png"))
            print(f"raster of sample 0 -> {png}")
        except NoData as exc:
            _note(f"no raster drawn: {exc}")
    return 0
