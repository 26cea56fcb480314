"""The continual runner: task after task, every method side by side.

For each method string (``"finetune"``, ``"hlop+granet"``...) a fresh network is built
from the same seed, then::

    b_j = accuracy of the untrained network on every task j          (for FWT)
    for task i:  plugins.on_task_start -> train -> plugins.on_task_end
                 R[i, j] = accuracy on task j, for every j            (accuracy matrix)
                 checkpoint RUN/<method>/ckpt_task<i>.pt, run.h5, metrics.json

and the metrics of :mod:`neuroplastic.metrics` are computed from ``R``. The runner knows
nothing about kernels or neuron models; methods know nothing about each other.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, to_toml
from .encoders import make_encoder
from .errors import UserError
from .io import save_checkpoint, write_json, write_text
from .metrics import summarize
from .network import SNN, cnn, mlp
from .plugins import build_plugins
from .records import TaskProbe
from .runfile import checkpoint_name, write_run_h5
from .trainers import make_trainer

__all__ = ["build_model", "build_stream", "run_encoder", "run_method", "run", "format_table", "model_sparsity"]


def build_stream(cfg: RunConfig):
    """The task stream of ``cfg.data``."""
    from neuroplastic.datasets import make_stream

    d = cfg.data
    return make_stream(dataset=d.dataset, stream=d.stream, n_tasks=d.tasks, data_dir=d.data_dir,
                       seed=cfg.seed, classes_per_task=d.classes_per_task, setting=d.setting,
                       max_per_task=d.max_per_task, augment=d.augment)


def build_model(cfg: RunConfig, stream) -> SNN:
    """The network of ``cfg.model`` sized for ``stream``."""
    m = cfg.model
    kw = dict(neuron=m.neuron, readout=m.readout, n_heads=stream.n_heads, bias=m.bias,
              tau_mem=m.tau_mem, dt=m.dt, integration=m.integration, reset=m.reset,
              surrogate=m.surrogate, v_th=m.v_th)
    if m.neuron == "if":
        kw.pop("tau_mem")
    if m.recurrent and m.arch != "mlp":
        raise UserError(f"model.recurrent = true needs model.arch = mlp, got {m.arch!r}")
    if m.arch == "mlp":
        net = mlp([stream.n_inputs, *m.hidden, stream.n_outputs], recurrent=m.recurrent, **kw)
    else:
        side = int(math.isqrt(stream.n_inputs))
        if side * side != stream.n_inputs:
            raise UserError(f"model.arch = cnn needs square images, got {stream.n_inputs} inputs")
        net = cnn((1, side, side), m.channels, stream.n_outputs, **kw)
    readout = net.layers["readout"]
    if hasattr(readout, "tau_mem") and m.readout == "li":
        from .network import unit_gain_r

        readout.tau_mem = m.readout_tau
        readout.r = unit_gain_r(m.readout_tau, m.dt, m.integration)
    return net


def build_encoder(cfg: RunConfig, stream):
    if stream.time_steps is not None:
        return make_encoder("events", stream.time_steps)
    return make_encoder(cfg.train.encoder, cfg.train.time_steps)


def _reshape_for(model: SNN, cfg: RunConfig):
    """Input transform: flat images -> [B, 1, H, W] for conv nets."""
    if cfg.model.arch != "cnn":
        return None
    return lambda x: x.reshape(x.shape[0], 1, int(math.isqrt(x.shape[-1])), -1)


def model_sparsity(model: torch.nn.Module) -> dict[str, float]:
    """Fraction of absent synapses per synapse layer (mask if present, else exact zeros)."""
    out = {}
    total = zeros = 0
    for name, layer in model.synapses():
        w = layer.weight.detach()
        present = layer.mask if hasattr(layer, "mask") and layer.mask is not None else (w != 0)
        n, nz = w.numel(), int(present.sum())
        out[name] = 1.0 - nz / n
        total += n
        zeros += n - nz
    out["overall"] = zeros / max(total, 1)
    return out


class _Encoded:
    """Encoder wrapper that reshapes flat images for conv nets first."""

    def __init__(self, encoder, reshape):
        self.encoder, self.reshape = encoder, reshape
        self.time_steps = encoder.time_steps

    def __call__(self, x, generator=None):
        return self.encoder(self.reshape(x) if self.reshape else x, generator)

    def steps(self, x, generator=None):
        return self.encoder.steps(self.reshape(x) if self.reshape else x, generator)


def run_encoder(cfg: RunConfig, stream, model: SNN) -> _Encoded:
    """The encoder a run feeds ``model`` with (conv nets get flat images reshaped first)."""
    return _Encoded(build_encoder(cfg, stream), _reshape_for(model, cfg))


def run_method(cfg: RunConfig, method: str, stream, out_dir: Path) -> dict[str, Any]:
    """Run one method over the stream; write its run directory; return its metrics."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, stream)
    encoder = run_encoder(cfg, stream, model)
    plugins = build_plugins(method, cfg.plugins)
    trainer = make_trainer(model, encoder, cfg.train, plugins, cfg.device, cfg.seed, cfg.quiet)
    T = len(stream.tasks)
    baseline = [trainer.evaluate(t.test, t.head) for t in stream.tasks]
    R: list[list[float]] = []
    losses: dict[str, Any] = {}
    probe = TaskProbe(trainer, stream)
    t0 = time.perf_counter()
    dormant: dict[str, float] = {}
    for i, task in enumerate(stream.tasks):
        plugins.on_task_start(i, task)
        sources = plugins.train_sources(i, stream, [(task.train, task.head)])
        losses[f"task_{i}"] = trainer.train_task(sources, i, desc=f"{method} task {i + 1}/{T}")
        plugins.on_task_end(i, task)
        R.append([trainer.evaluate(t.test, t.head) for t in stream.tasks])
        sparsity = model_sparsity(model)
        dormant = probe.after_task(i, sparsity)
        wall = time.perf_counter() - t0
        R_done = [row[: i + 1] for row in R]
        metrics = {
            "method": method,
            "acc_matrix": R,
            **summarize(R_done, baseline[: i + 1]),
            "baseline": baseline,
            "tasks_done": i + 1,
            "tasks": [t.name for t in stream.tasks],
            "wall_s": wall,
            "sparsity": sparsity["overall"],
            "sparsity_per_layer": sparsity,
            "dormant_ratio": dormant,
            **plugins.metrics(),
        }
        save_checkpoint(out_dir / checkpoint_name(i), {
            "model": model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "plugins": plugins.state_dict(), "task": i, "acc_matrix": R, "baseline": baseline,
            "generator": trainer.generator.get_state(), "method": method,
        })
        write_run_h5(out_dir / "run.h5",
                     {"acc_matrix": R, "baseline": baseline, "losses": losses, **probe.tree,
                      "plugins": plugins.records()},
                     {"method": method, "tasks": [t.name for t in stream.tasks],
                      "acc": metrics["acc"], "bwt": metrics["bwt"], "fwt": metrics["fwt"], "wall_s": wall})
        write_json(out_dir / "metrics.json", metrics)
    return metrics


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of ACC / BWT / FWT / time per method."""

    def f(v):
        return "   n/a" if v is None else f"{v:6.2f}"

    lines = [f"{'method':<22} {'ACC':>6} {'BWT':>6} {'FWT':>6} {'sparsity':>8} {'time s':>7}"]
    for name, m in results.items():
        lines.append(f"{name:<22} {f(m['acc'])} {f(m['bwt'])} {f(m['fwt'])} {m['sparsity']:8.2f} {m['wall_s']:7.1f}")
    return "\n".join(lines)


def run(cfg: RunConfig, echo=print) -> dict[str, dict[str, Any]]:
    """Run every method of ``cfg`` and write ``cfg.out`` (one subdirectory per method when
    there are several). Returns ``{method: metrics}``."""
    stream = build_stream(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.toml", to_toml(cfg))
    results = {}
    for method in cfg.methods:
        mdir = out / method if len(cfg.methods) > 1 else out
        if mdir != out:
            write_text(mdir / "config.toml", to_toml(_single(cfg, method)))
        results[method] = run_method(cfg, method, stream, mdir)
    if len(cfg.methods) > 1:
        write_json(out / "summary.json", {m: {k: r[k] for k in ("acc", "bwt", "fwt", "wall_s", "sparsity")}
                                          for m, r in results.items()})
    echo(f"{stream.description}: {len(stream.tasks)} tasks -> {out}")
    echo(format_table(results))
    return results


def _single(cfg: RunConfig, method: str) -> RunConfig:
    from dataclasses import replace

    return replace(cfg, methods=[method])


