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
import signal
import time
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .distributed import is_main
from .encoders import make_encoder
from .errors import Interrupted, RunStopped, UserError
from .interrupt import StopRequest, stop_on_signals
from .metrics import summarize
from .network import SNN, cnn, mlp
from .plugins import build_plugins
from .provenance import now_utc as provenance_now
from .provenance import provenance
from .records import TaskProbe
from .rundir import MethodDir, RunDir, capture_state, restore_state
from .runfile import checkpoint_name
from .trainers import make_trainer

__all__ = ["build_model", "build_stream", "run_encoder", "run_method", "run", "format_table", "model_sparsity"]


def build_stream(cfg: RunConfig):
    """The task stream of ``cfg.data``."""
    from neuroplastic.datasets import make_stream

    d = cfg.data
    return make_stream(dataset=d.dataset, stream=d.stream, n_tasks=d.tasks, data_dir=d.data_dir,
                       seed=cfg.seed, classes_per_task=d.classes_per_task, setting=d.setting,
                       max_per_task=d.max_per_task, augment=d.augment, permute_first=d.permute_first)


def build_model(cfg: RunConfig, stream) -> SNN:
    """The network of ``cfg.model`` sized for ``stream``."""
    m = cfg.model
    kw = dict(neuron=m.neuron, readout=m.readout, n_heads=stream.n_heads, bias=m.bias,
              tau_mem=m.tau_mem, dt=m.dt, integration=m.integration, reset=m.reset,
              surrogate=m.surrogate, v_th=m.v_th)  # (IF drops tau_mem itself)
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

    def chunks(self, x, size, generator=None):
        return self.encoder.chunks(self.reshape(x) if self.reshape else x, size, generator)


def run_encoder(cfg: RunConfig, stream, model: SNN) -> _Encoded:
    """The encoder a run feeds ``model`` with (conv nets get flat images reshaped first)."""
    return _Encoded(build_encoder(cfg, stream), _reshape_for(model, cfg))


def balance_init(model: SNN, encoder, stream, cfg: RunConfig) -> dict[str, float]:
    """:func:`~neuroplastic.init_balance.balance_hidden_layers` on the first minibatch of the
    first task (dataset order; a stochastic encoder draws from a generator seeded with the run
    seed, so the global random state is untouched). Nothing runs for one hidden layer."""
    from neuroplastic.datasets import iterate_minibatches

    from .init_balance import balance_hidden_layers, needs_balance

    if not needs_balance(model):
        return {}
    x, _ = next(iter(iterate_minibatches(stream.tasks[0].train, cfg.train.batch_size, False, None)))
    return balance_hidden_layers(model, encoder(x, torch.Generator().manual_seed(cfg.seed)))


def _build(cfg: RunConfig, method: str, stream):
    """Model, plugins and trainer of one method, from the run's seed."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, stream)
    encoder = run_encoder(cfg, stream, model)
    if cfg.model.balance_init:
        balance_init(model, encoder, stream, cfg)
    plugins = build_plugins(method, cfg.plugins)
    return make_trainer(model, encoder, cfg.train, plugins, cfg.device, cfg.seed, cfg.quiet)


class _MethodRun:
    """One method's pass over the stream: its trainer, its records so far and its files."""

    def __init__(self, cfg: RunConfig, method: str, stream, mdir: MethodDir, stop: StopRequest | None) -> None:
        self.cfg, self.method, self.stream, self.mdir, self.stop = cfg, method, stream, mdir, stop
        self.trainer = _build(cfg, method, stream)
        self.probe = TaskProbe(self.trainer, stream)
        self.R: list[list[float]] = []
        self.baseline: list[float] = []
        self.losses: dict[str, list[float]] = {}
        self.t0 = time.perf_counter()
        self.last_save = self.t0
        self.started = provenance_now()

    def restore(self, state: dict[str, Any]) -> None:
        rec = restore_state(self.trainer, state)
        self.R, self.baseline, self.losses = rec["acc_matrix"], rec["baseline"], rec["losses"]
        self.probe.tree = rec["probe"]
        self.t0 = time.perf_counter() - rec["wall_s"]

    def save(self, task: int, position: dict | None) -> None:
        state = capture_state(self.trainer, method=self.method, task=task, position=position, acc_matrix=self.R,
                              baseline=self.baseline, losses=self.losses, probe=self.probe.tree,
                              wall_s=time.perf_counter() - self.t0)
        if position is None:
            self.mdir.save_task_end(task, state)
        else:
            self.mdir.save_in_task(state)
        self.last_save = time.perf_counter()

    def after_step(self, position: dict) -> None:
        """The trainer's safe point: periodic in-task checkpoint; stop when asked."""
        stopping = self.stop is not None and self.stop.requested()
        task = self.trainer.task_id
        if stopping or time.perf_counter() - self.last_save >= self.cfg.checkpoint_every:
            self.losses[f"task_{task}"] = position["losses"]
            self.save(task, position)
        if stopping:
            name = signal.Signals(self.stop.signum).name
            raise Interrupted(f"stopped by {name} in task {task + 1}/{len(self.stream.tasks)} of {self.method}",
                              self.stop.signum)

    def run(self) -> dict[str, Any]:
        stream, plugins, trainer = self.stream, self.trainer.plugins, self.trainer
        T = len(stream.tasks)
        state = self.mdir.latest_state()
        first, resume_in = 0, None
        if state is None:
            self.baseline = [trainer.evaluate(t.test, t.head) for t in stream.tasks]
        elif state["position"] is None:  # a finished task: continue with the next
            self.restore(state)
            first = int(state["task"]) + 1
        else:  # inside a task: the state its on_task_start saw first (the previous task's end)
            first, resume_in = int(state["task"]), state
            if first > 0:
                previous = self.mdir.task_state(first - 1)
                if previous is None:
                    raise UserError(f"cannot resume inside task {first} of {self.method}: "
                                    f"{self.mdir.path / checkpoint_name(first - 1)} is missing")
                self.restore(previous)
        if state is not None:  # the run's first start, not this one
            self.started = ((self.mdir.read_metrics() or {}).get("provenance") or {}).get("started") or self.started
        metrics = {}
        if first >= T:  # every task done: the results are on disk, unless the run was killed
            metrics = self.mdir.read_metrics() or {}  # after the last checkpoint, before they were
            if metrics.get("status") != "complete" or metrics.get("tasks_done") != T:
                metrics = self.results_from_checkpoint(T - 1)
        for i in range(first, T):
            task = stream.tasks[i]
            plugins.on_task_start(i, task)
            position = None
            if resume_in is not None and i == first:
                self.restore(resume_in)  # after on_task_start's side effects, which it overwrites
                position = resume_in["position"]
            sources = plugins.train_sources(i, stream, [(task.train, task.head)])
            self.last_save = time.perf_counter()
            self.losses[f"task_{i}"] = trainer.train_task(sources, i, desc=f"{self.method} task {i + 1}/{T}",
                                                          resume=position, after_step=self.after_step)
            plugins.on_task_end(i, task)
            self.R.append([trainer.evaluate(t.test, t.head) for t in stream.tasks])
            metrics = self.task_done(i)
        return metrics

    def task_done(self, i: int) -> dict[str, Any]:
        """Record task ``i``: probe, metrics, checkpoint, ``run.h5``, ``metrics.json``."""
        sparsity = model_sparsity(self.trainer.model)
        dormant = self.probe.after_task(i, sparsity)
        metrics = self.metrics(i, sparsity, dormant, time.perf_counter() - self.t0)
        self.save(i, None)
        self.write_results(metrics)
        return metrics

    def results_from_checkpoint(self, i: int) -> dict[str, Any]:
        """``metrics.json`` and ``run.h5`` of task ``i`` from its checkpoint, restored (a run
        killed after writing ``ckpt_task<i>.pt``, before the results that go with it): what
        :meth:`task_done` wrote, the probe's recordings taken from the checkpoint, not run again."""
        dormant = {k: v[-1] for k, v in self.probe.tree["dormant"].items()}
        metrics = self.metrics(i, model_sparsity(self.trainer.model), dormant, time.perf_counter() - self.t0)
        self.mdir.discard_in_task()  # a resume.pt the killed run had not removed yet
        self.write_results(metrics)
        return metrics

    def metrics(self, i: int, sparsity: dict[str, float], dormant: dict[str, float], wall: float) -> dict[str, Any]:
        """The contents of ``metrics.json`` after task ``i``."""
        stream, plugins, R, T = self.stream, self.trainer.plugins, self.R, len(self.stream.tasks)
        return {
            "method": self.method,
            "status": "complete" if i == T - 1 else "running",
            "acc_matrix": R,
            **summarize([row[: i + 1] for row in R], self.baseline[: i + 1]),
            "baseline": self.baseline,
            "tasks_done": i + 1,
            "tasks": [t.name for t in stream.tasks],
            "wall_s": wall,
            "sparsity": sparsity["overall"],
            "sparsity_per_layer": sparsity,
            "dormant_ratio": dormant,
            **plugins.metrics(),
            "seed": self.cfg.seed,
            "provenance": provenance(self.cfg.seed, self.started, provenance_now() if i == T - 1 else None),
        }

    def write_results(self, metrics: dict[str, Any]) -> None:
        """``run.h5`` and ``metrics.json`` (the records so far, with ``metrics``)."""
        plugins = self.trainer.plugins
        tree = {"acc_matrix": self.R, "baseline": self.baseline, "losses": self.losses, **self.probe.tree,
                "plugins": plugins.records()}
        attrs = {"method": self.method, "tasks": metrics["tasks"], "acc": metrics["acc"], "bwt": metrics["bwt"],
                 "fwt": metrics["fwt"], "wall_s": metrics["wall_s"], "seed": self.cfg.seed,
                 "status": metrics["status"], "provenance": metrics["provenance"]}
        self.mdir.write_results(metrics, tree, attrs)


def run_method(cfg: RunConfig, method: str, stream, mdir: MethodDir | Path,
               stop: StopRequest | None = None) -> dict[str, Any]:
    """Run one method over the stream (continuing from ``mdir``'s last checkpoint when it
    has one); write its run directory; return its metrics.

    ``stop`` (set by Ctrl-C / SIGTERM) is read after every step: the run then writes an
    in-task checkpoint and raises :class:`~neuroplastic.errors.Interrupted`. An in-task
    checkpoint is also written every ``cfg.checkpoint_every`` seconds.
    """
    if not isinstance(mdir, MethodDir):
        mdir = MethodDir(Path(mdir), method)
    return _MethodRun(cfg, method, stream, mdir, stop).run()


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of ACC / BWT / FWT / time per method."""

    def f(v, width: int = 6, digits: int = 2):  # None: not measured (yet)
        return f"{'n/a':>{width}}" if v is None else f"{v:{width}.{digits}f}"

    lines = [f"{'method':<22} {'ACC':>6} {'BWT':>6} {'FWT':>6} {'sparsity':>8} {'time s':>7}"]
    for name, m in results.items():
        if m.get("status") not in (None, "complete"):
            name = f"{name} ({m['status']}, {m.get('tasks_done', 0)}/{len(m.get('tasks', []))})"
        lines.append(f"{name:<22} {f(m['acc'])} {f(m['bwt'])} {f(m['fwt'])} {f(m['sparsity'], 8)} "
                     f"{f(m['wall_s'], 7, 1)}")
    return "\n".join(lines)


def _stopped_before_a_task(method: str, status: str, stream) -> dict[str, Any]:
    """The results of a method stopped before it finished its first task (it has no
    ``metrics.json`` yet, only ``resume.pt``): its status, no task done, no numbers."""
    return {"method": method, "status": status, "acc": None, "bwt": None, "fwt": None, "wall_s": None,
            "sparsity": None, "tasks_done": 0, "tasks": [t.name for t in stream.tasks]}


def run(cfg: RunConfig, echo=print, *, resume: bool = False, force: bool = False) -> dict[str, dict[str, Any]]:
    """Run every method of ``cfg`` into ``cfg.out`` (one subdirectory per method when there
    are several); returns ``{method: metrics}``.

    The stream, every network and every plugin are built (and so validated) before the
    directory is touched. An existing non-empty directory is refused unless ``resume``
    (methods already complete are read back, the others continue from their last
    checkpoint) or ``force`` (its files are removed first). Ctrl-C and SIGTERM stop at the
    next step: checkpoint, results so far, the table of finished methods, then
    :class:`~neuroplastic.errors.Interrupted`.
    """
    rundir = RunDir.open(cfg, resume=resume, force=force)
    stream = build_stream(cfg)
    for method in cfg.methods:  # fail on a bad model/plugin/trainer combination now, not after task 3
        _build(cfg, method, stream)
    created = not rundir.root.exists()
    rundir.create(resume=resume, force=force)
    results: dict[str, dict[str, Any]] = {}
    try:
        with stop_on_signals() as stop:
            for method in cfg.methods:
                mdir = rundir.method(method)
                results[method] = mdir.read_metrics() if resume and mdir.complete() else \
                    run_method(cfg, method, stream, mdir, stop)
    except RunStopped as exc:
        status = "interrupted" if isinstance(exc, Interrupted) else "diverged"
        m = rundir.method(method).set_status(status)
        results[method] = m if m is not None else _stopped_before_a_task(method, status, stream)
        rundir.write_summary(results)
        if is_main():
            if results:
                echo(format_table(results))
            if isinstance(exc, Interrupted):
                exc.args = (f"{exc.args[0]}; checkpoint written. Continue with: "
                            f"neuroplastic run --resume {rundir.root}",)
            else:
                exc.args = (f"{exc.args[0]}; the last good checkpoint is kept in {rundir.method(method).path}",)
        raise
    except BaseException:
        if created:
            rundir.remove_if_unused()
        raise
    rundir.write_summary(results)
    if is_main():
        echo(f"{stream.description}: {len(stream.tasks)} tasks -> {rundir.root}")
        echo(format_table(results))
    return results
