"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

try:  # the mutation check (tests/mutation/mutate.py) selects this profile: a failing
    # property is enough there, shrinking it to a minimal example only costs time
    from hypothesis import Phase, settings

    settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate])
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


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


def write_shd(path: Path, times, units, labels) -> None:
    """A Spiking Heidelberg Digits file: per sample, spike ``times`` (s) and ``units``."""
    with h5py.File(path, "w") as f:
        ft = h5py.vlen_dtype(np.float32)
        fu = h5py.vlen_dtype(np.uint16)
        g = f.create_group("spikes")
        dt = g.create_dataset("times", (len(times),), dtype=ft)
        du = g.create_dataset("units", (len(units),), dtype=fu)
        for i, (t, u) in enumerate(zip(times, units)):
            dt[i] = np.asarray(t, dtype=np.float32)
            du[i] = np.asarray(u, dtype=np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))


@pytest.fixture
def shd_dir(tmp_path):
    """Tiny ``shd_train.h5`` / ``shd_test.h5`` (3 and 1 samples)."""
    times = [[0.0, 0.05, 0.051, 0.95, 1.0, 1.2], [0.5], []]
    units = [[0, 3, 3, 699, 10, 5], [42], []]
    write_shd(tmp_path / "shd_train.h5", times, units, [1, 19, 0])
    write_shd(tmp_path / "shd_test.h5", [[0.25]], [[7]], [4])
    return tmp_path


@pytest.fixture
def shd_writer():
    """The SHD file writer, for tests that need their own samples."""
    return write_shd
