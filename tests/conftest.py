"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Small matmuls: one torch thread is faster and immune to a busy CPU (and numba
    follows torch's count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def make_run(tmp_path_factory):
    """``make_run(methods, tasks, time_steps)``: a real continual run on the embedded digits
    (the runner's defaults otherwise); returns its run directory."""
    from neuroplastic.config import RunConfig, TrainSettings
    from neuroplastic.continual import run

    def make(methods, tasks: int, time_steps: int):
        out = tmp_path_factory.mktemp("run") / "r"
        cfg = RunConfig(methods=list(methods), out=str(out), quiet=True, train=TrainSettings(time_steps=time_steps))
        cfg.data.tasks = tasks
        run(cfg, echo=lambda *_: None)
        return out

    return make
