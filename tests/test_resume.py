"""Run directories and resume: a run stopped anywhere (Ctrl-C, SIGTERM, SIGKILL, a kill
during a checkpoint write) and resumed ends with the same numbers as a run never stopped;
an existing run directory is never overwritten without ``--resume`` / ``--force``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neuroplastic.cli import main
from neuroplastic.config import DataConfig, ModelConfig, RunConfig, TrainSettings, load_config
from neuroplastic.continual import run
from neuroplastic.errors import Interrupted, UserError
from neuroplastic.trainers.base import Trainer


def tiny(out, methods=("finetune",), trainer="bptt", epochs=2, **plugins) -> RunConfig:
    """Two permuted-digit tasks of 120 samples, a 784-24-10 network, T = 2: ~1 s a method."""
    return RunConfig(methods=list(methods), out=str(out), quiet=True, checkpoint_every=0.0,
                     data=DataConfig(tasks=2, max_per_task=120),
                     model=ModelConfig(hidden=[24]),
                     train=TrainSettings(time_steps=2, batch_size=32, epochs=epochs, trainer=trainer,
                                         encoder="rate"),
                     plugins=plugins)


def _final_state(out: Path) -> dict:
    return torch.load(out / "ckpt_task1.pt", weights_only=True)


def _stop_at(monkeypatch, step: int, signum=signal.SIGTERM):
    """Send ``signum`` to this process right after global step ``step``."""
    orig = Trainer.train_step

    def train_step(self, *a, **k):
        loss = orig(self, *a, **k)
        if self.global_step == step:
            os.kill(os.getpid(), signum)
        return loss

    monkeypatch.setattr(Trainer, "train_step", train_step)


def _same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["acc_matrix"] == mb["acc_matrix"]
    assert ma["status"] == mb["status"] == "complete"
    sa, sb = _final_state(a), _final_state(b)
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    assert sa["losses"] == sb["losses"]
    _same_tensors(sa["plugins"], sb["plugins"], "plugins")
    _same_tensors(sa["optimizer"], sb["optimizer"], "optimizer")


def _same_tensors(a, b, where: str) -> None:
    """Every tensor and integer of two nested states equal (floats are timings: skipped)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, int):
        assert a == b, where


METHODS = [("finetune", "bptt"), ("hlop", "bptt"), ("gpm", "bptt"), ("ewc", "bptt"), ("granet", "bptt"),
           ("hlop+granet", "bptt"), ("set", "bptt"), ("multitask", "bptt"), ("hlop", "ottt"),
           ("finetune", "dsr")]


@pytest.mark.parametrize("method,trainer", METHODS)
@pytest.mark.parametrize("stop_step", [5, 11])  # inside task 0 (epoch 2) / inside task 1
def test_stopped_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, one_thread, method, trainer, stop_step):
    ref = tmp_path / "ref"
    run(tiny(ref, [method], trainer), echo=lambda *_: None)
    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        _stop_at(m, stop_step)
        with pytest.raises(Interrupted, match="--resume"):
            run(tiny(out, [method], trainer), echo=lambda *_: None)
    assert (out / "resume.pt").is_file()
    assert json.loads((out / "metrics.json").read_text())["status"] == "interrupted" if stop_step > 8 else True
    run(tiny(out, [method], trainer), echo=lambda *_: None, resume=True)
    assert not (out / "resume.pt").exists()
    _same_run(ref, out)


def test_resume_between_tasks_and_of_a_finished_run(tmp_path, one_thread):
    ref, out = tmp_path / "ref", tmp_path / "cut"
    run(tiny(ref, ["hlop"]), echo=lambda *_: None)
    run(tiny(out, ["hlop"]), echo=lambda *_: None)
    (out / "ckpt_task1.pt").unlink()  # as if killed right after task 0's checkpoint
    m = json.loads((out / "metrics.json").read_text())
    run(tiny(out, ["hlop"]), echo=lambda *_: None, resume=True)
    _same_run(ref, out)
    assert m["tasks_done"] == 2  # (metrics.json was rewritten by the resumed task 1)
    before = (out / "metrics.json").read_text()
    res = run(tiny(out, ["hlop"]), echo=lambda *_: None, resume=True)  # nothing left to do
    assert res["hlop"]["status"] == "complete" and (out / "metrics.json").read_text() == before


class _Killed(BaseException):
    """SIGKILL, in-process: nothing catches it and nothing more is written."""


def _untimed(tree):
    """``metrics.json`` without what depends on the clock (``*_s`` timings, provenance)."""
    if isinstance(tree, dict):
        return {k: _untimed(v) for k, v in tree.items() if not k.endswith("_s") and k != "provenance"}
    return tree


def test_killed_after_the_last_checkpoint_before_the_results_then_resume(tmp_path, monkeypatch, one_thread):
    """Killed once ``ckpt_task1.pt`` (the last task's) is in place but before ``metrics.json``
    says the run is complete: the resumed run has nothing left to train, and must still
    write the final results (it used to keep task 0's metrics.json, "running", one row)."""
    from neuroplastic.runfile import read_run_h5

    ref = tmp_path / "ref"
    run(tiny(ref, ["hlop"]), echo=lambda *_: None)
    real_replace = os.replace
    # right after the checkpoint (resume.pt not yet removed), before run.h5, before metrics.json
    for name, when in [("ckpt_task1.pt", "after"), ("run.h5", "before"), ("metrics.json", "before")]:
        out = tmp_path / f"cut-{name}"

        def replace(src, dst, name=name, when=when):
            d = Path(dst)  # (task 1's files: the checkpoint itself, or files written once it is there)
            last = d.name == name and (name == "ckpt_task1.pt" or (d.parent / "ckpt_task1.pt").is_file())
            if last and when == "before":
                raise _Killed
            real_replace(src, dst)
            if last:
                raise _Killed

        with monkeypatch.context() as m:
            m.setattr(os, "replace", replace)
            with pytest.raises(_Killed):
                run(tiny(out, ["hlop"]), echo=lambda *_: None)
        assert json.loads((out / "metrics.json").read_text())["tasks_done"] == 1, name
        res = run(tiny(out, ["hlop"]), echo=lambda *_: None, resume=True)
        _same_run(ref, out)
        mr, mo = (json.loads((d / "metrics.json").read_text()) for d in (ref, out))
        assert _untimed(mo) == _untimed(mr) == _untimed(res["hlop"]), name
        assert mo["provenance"]["started"] and mo["provenance"]["finished"]
        h5 = read_run_h5(out / "run.h5")
        assert h5["acc_matrix"].tolist() == mr["acc_matrix"] and h5["attrs"]["status"] == "complete"
        assert not (out / "resume.pt").exists(), name


def test_a_one_task_run_killed_after_its_checkpoint_resumes(tmp_path, monkeypatch, one_thread):
    """The same with one task: no metrics.json at all yet (resuming it used to fail with a
    KeyError traceback)."""
    out = tmp_path / "r"
    cfg = tiny(out, ["finetune"], epochs=1)
    cfg.data.tasks = 1
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if Path(dst).name == "ckpt_task0.pt":
            raise _Killed

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(_Killed):
            run(cfg, echo=lambda *_: None)
    assert not (out / "metrics.json").exists()
    res = run(cfg, echo=lambda *_: None, resume=True)["finetune"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == res["status"] == "complete" and m["tasks_done"] == 1 and len(m["acc_matrix"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["ckpt_task0.pt", "config.toml", "metrics.json", "run.h5"]


def test_existing_run_directory_is_refused_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "r"
    run(tiny(out, ["finetune"], epochs=1), echo=lambda *_: None)
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(UserError, match="--resume .*--force"):
        run(tiny(out, ["finetune"], epochs=1), echo=lambda *_: None)
    assert main(["run", "--tasks", "1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds files" in err[0]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == files


def test_force_replaces_a_run_and_leaves_no_stale_files(tmp_path):
    out = tmp_path / "r"
    run(tiny(out, ["finetune", "hlop"], epochs=1), echo=lambda *_: None)
    assert (out / "summary.json").is_file()
    cfg = tiny(out, ["finetune"], epochs=1)
    cfg.data.tasks = 1
    run(cfg, echo=lambda *_: None, force=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ckpt_task0.pt", "config.toml", "metrics.json", "run.h5"]


def test_force_refuses_a_directory_that_is_not_a_run(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="refuses to empty"):
        run(tiny(home), echo=lambda *_: None, force=True)
    assert (home / "thesis.tex").read_text() == "precious"


def test_error_found_late_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "r"
    cfg = tmp_path / "c.toml"
    # a CNN needs square images: found when the network is built, after the config is read
    cfg.write_text(f'methods = ["finetune"]\nout = "{out}"\n[data]\ndataset = "cues"\n[model]\narch = "cnn"\n')
    assert main(["run", str(cfg), "--quiet"]) == 2
    assert not out.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_method_config_names_its_own_directory_and_plugin_options(tmp_path):
    out = tmp_path / "r"
    run(tiny(out, ["finetune", "hlop"], epochs=1), echo=lambda *_: None)
    sub = load_config(out / "hlop" / "config.toml")
    assert sub.out == str(out / "hlop") and sub.methods == ["hlop"]
    text = (out / "config.toml").read_text()
    assert text.startswith("# neuroplastic run configuration") and "[hlop]" in text and "energy_lr" in text
    m = json.loads((out / "hlop" / "metrics.json").read_text())
    prov = m["provenance"]
    assert m["seed"] == 0 and prov["seed"] == 0 and prov["torch"] == torch.__version__
    assert prov["started"] and prov["finished"] and prov["neuroplastic"]


def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run(tiny(tmp_path / "r", epochs=1), echo=lambda *_: None)
    finally:
        os.umask(old)
    for p in (tmp_path / "r").iterdir():
        assert p.stat().st_mode & 0o777 == 0o644, p


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text(f'methods = ["finetune"]\nout = "{out}"\ncheckpoint_every = 0.0\n[data]\ntasks = 2\n'
                       'max_per_task = 120\n[model]\nhidden = [24]\n[train]\ntime_steps = 2\nbatch_size = 16\n'
                       'epochs = 1\n')
    orig = Trainer.train_step

    def train_step(self, *a, **k):  # the loss of step 11 (task 1) is NaN
        loss = orig(self, *a, **k)
        return float("nan") if self.global_step == 11 else loss

    monkeypatch.setattr(Trainer, "train_step", train_step)
    code = main(["run", str(cfgfile), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and "diverged" in err[0] and "nan" in err[0], err
    assert json.loads((out / "metrics.json").read_text())["status"] == "diverged"
    kept = torch.load(out / "resume.pt", weights_only=True)
    assert kept["global_step"] == 10 and kept["task"] == 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_out_defaults(tmp_path, monkeypatch, capsys):
    assert main(["run", "--out", "", "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err
    cfgfile = tmp_path / "mine.toml"
    cfgfile.write_text('methods = ["finetune"]\n[data]\ntasks = 1\nmax_per_task = 60\n[model]\nhidden = [8]\n'
                       '[train]\ntime_steps = 1\n')
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(cfgfile), "--quiet"]) == 0
    assert (tmp_path / "runs" / "mine" / "metrics.json").is_file()


def test_resume_refuses_overrides_and_non_runs(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path), "--tasks", "3"]) == 2
    assert "--tasks" in capsys.readouterr().err


# -- real processes: SIGKILL mid-task, during a checkpoint write; SIGTERM ---------------
# (the children run one torch thread; the resumed half runs in this process, also on one
# thread: bitwise equality needs the same summation order)

_CHILD = r"""
import os, signal, sys
import torch
from neuroplastic import io
from neuroplastic.cli import main
mode = sys.argv[1]
if mode == "kill-in-write":
    real = torch.save
    calls = [0]
    def save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 9:
            with open(f, "wb") as h:
                h.write(b"PK\x03\x04 half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(obj, f, *a, **k)
    io.torch.save = save
sys.exit(main(sys.argv[2:]))
"""


def _child(mode: str, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", _CHILD, mode, *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cfg_file(tmp_path: Path, out: Path) -> Path:
    p = tmp_path / f"{out.name}.toml"
    p.write_text(f'methods = ["hlop"]\nout = "{out}"\ncheckpoint_every = 0.0\n[data]\ntasks = 2\n'
                 'max_per_task = 240\n[model]\nhidden = [24]\n[train]\ntime_steps = 2\nbatch_size = 16\n'
                 'epochs = 2\nencoder = "rate"\n')
    return p


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    ref = tmp / "ref"
    proc = _child("plain", "run", str(_cfg_file(tmp, ref)), "--quiet")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return ref


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


@pytest.mark.parametrize("when", ["task0", "task1"])
def test_sigkill_mid_task_then_resume(tmp_path, reference_run, one_thread, when):
    out = tmp_path / "cut"
    proc = _child("plain", "run", str(_cfg_file(tmp_path, out)), "--quiet")
    _wait_for(out / ("resume.pt" if when == "task0" else "ckpt_task0.pt"), proc)
    if when == "task1":
        time.sleep(0.3)
    proc.kill()
    proc.wait()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    _same_run(reference_run, out)


def test_sigkill_during_a_checkpoint_write_then_resume(tmp_path, reference_run, one_thread):
    out = tmp_path / "cut"
    proc = _child("kill-in-write", "run", str(_cfg_file(tmp_path, out)), "--quiet")
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert list(out.glob(".*.tmp")), "the half-written temporary should be there before resuming"
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert not list(out.glob(".*.tmp"))
    _same_run(reference_run, out)


def test_sigterm_stops_at_a_safe_point_with_a_message(tmp_path, reference_run, one_thread):
    out = tmp_path / "cut"
    proc = _child("plain", "run", str(_cfg_file(tmp_path, out)), "--quiet")
    _wait_for(out / "resume.pt", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    err = proc.stderr.read()
    assert "SIGTERM" in err and f"--resume {out}" in err and "Traceback" not in err
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    _same_run(reference_run, out)


def test_a_stopped_several_method_run_writes_its_summary(tmp_path, monkeypatch, one_thread):
    """SIGTERM during the second method: summary.json lists the finished first method and
    the interrupted second one."""
    out = tmp_path / "r"
    cfg = tiny(out, methods=("finetune", "ewc"), epochs=1)
    orig = Trainer.train_step

    def train_step(self, *a, **k):  # step 6 of the EWC run, in task 1 (each method counts its own steps)
        loss = orig(self, *a, **k)
        if self.global_step == 6 and "ewc" in [p.name for p in self.plugins.plugins]:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(Trainer, "train_step", train_step)
    with pytest.raises(Interrupted):
        run(cfg, echo=lambda *_: None)
    s = json.loads((out / "summary.json").read_text())
    assert s["finetune"]["status"] == "complete" and s["finetune"]["tasks_done"] == 2
    assert s["ewc"]["status"] == "interrupted"


def test_a_method_stopped_before_its_first_task_ends_is_in_the_summary(tmp_path, monkeypatch, one_thread):
    """SIGTERM in task 0 of the second method (no metrics.json yet, only resume.pt):
    summary.json lists it as interrupted with no task done and null metrics, with the same
    fields as the other methods; resumed, the run completes and the summary says so."""
    out = tmp_path / "r"
    cfg = tiny(out, methods=("finetune", "ewc"), epochs=1)
    with monkeypatch.context() as m:
        orig = Trainer.train_step

        def train_step(self, *a, **k):  # step 2 of the EWC run: inside its task 0 (4 steps a task)
            loss = orig(self, *a, **k)
            if self.global_step == 2 and "ewc" in [p.name for p in self.plugins.plugins]:
                os.kill(os.getpid(), signal.SIGTERM)
            return loss

        m.setattr(Trainer, "train_step", train_step)
        table = []
        with pytest.raises(Interrupted):
            run(cfg, echo=table.append)
    assert (out / "ewc" / "resume.pt").is_file() and not (out / "ewc" / "metrics.json").exists()
    assert table[0].splitlines()[2].split() == ["ewc", "(interrupted,", "0/2)", *["n/a"] * 5]
    s = json.loads((out / "summary.json").read_text())
    assert list(s) == ["finetune", "ewc"]
    assert s["finetune"]["status"] == "complete" and s["finetune"]["tasks_done"] == 2
    assert s["ewc"].keys() == s["finetune"].keys()
    assert s["ewc"] == {k: None for k in s["finetune"]} | {"status": "interrupted", "tasks_done": 0}
    run(cfg, resume=True, echo=lambda *_: None)
    s = json.loads((out / "summary.json").read_text())
    assert s["ewc"]["status"] == "complete" and s["ewc"]["tasks_done"] == 2


def test_a_resumed_run_keeps_its_first_start_time(tmp_path, monkeypatch, one_thread):
    out = tmp_path / "r"
    cfg = tiny(out, methods=("finetune",), epochs=1)
    with monkeypatch.context() as m:
        _stop_at(m, 6)  # inside task 1 (4 steps a task)
        with pytest.raises(Interrupted):
            run(cfg, echo=lambda *_: None)
    first = json.loads((out / "metrics.json").read_text())["provenance"]["started"]
    time.sleep(1.1)  # (the times have one-second resolution)
    run(cfg, resume=True, echo=lambda *_: None)
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "complete" and m["provenance"]["started"] == first
