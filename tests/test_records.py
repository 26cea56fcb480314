"""What a run records for its figures (neuroplastic.records): layout, bounds, consistency."""

import numpy as np
import pytest
import torch

from neuroplastic.dormant import scores_from_rates
from neuroplastic.runfile import read_run_h5


@pytest.fixture(scope="module")
def recorded(make_run):
    return read_run_h5(make_run(["finetune"], tasks=3, time_steps=5) / "run.h5")


def test_probe_layout_and_bounds(recorded):
    probe = recorded["probe"]
    assert probe["labels"].shape == (4,)
    assert probe["input"].shape == (5, 4, 256) and probe["input"].dtype == bool and probe["input"].any()
    keep = probe["neurons"]["lif1"]
    assert len(keep) == 256 and np.all(np.diff(keep) > 0)
    for i in range(3):
        rec = probe[f"task_{i}"]["lif1"]
        assert rec["spikes"].shape == (5, 4, 256) and rec["spikes"].dtype == bool
        assert rec["v"].shape == (5, 4, 8) and rec["v"].dtype == np.float32
        assert rec["v_th"] == 1.0
        # a spike in the record is a membrane above threshold (pre-reset trace of kept neurons)
        traces = probe["trace_neurons"]["lif1"]
        cols = np.searchsorted(keep, traces)
        assert np.array_equal(rec["spikes"][:, :, cols], rec["v"] > rec["v_th"])
    assert not np.array_equal(probe["task_0"]["lif1"]["spikes"], probe["task_2"]["lif1"]["spikes"])


def test_rates_agree_with_the_recorded_dormant_ratio(recorded):
    assert set(recorded["rates"]) == {"task_0", "task_1", "task_2"}
    for i in range(3):
        rates = recorded["rates"][f"task_{i}"]["lif1"]
        assert rates.shape == (256,) and 0 < rates.mean() < 1
        dormant = float((scores_from_rates(torch.from_numpy(rates)) <= 0.025).float().mean())
        assert dormant == pytest.approx(recorded["dormant"]["lif1"][i], abs=1e-6)


def test_sparsity_per_task_is_recorded(recorded):
    assert recorded["sparsity"]["fc1"].shape == (3,)
    assert np.all(recorded["sparsity"]["overall"] < 0.01)  # a dense run
