"""``config.DATASETS`` (inputs per step, classes, event time steps) must describe what the
loaders really produce: the runner sizes networks and validates split streams from it."""

from __future__ import annotations

import pytest

from datasets import make_stream
from neuroplastic.config import DATASETS


@pytest.mark.parametrize("dataset", ["digits", "cues", "shd"])
def test_dataset_table_matches_the_loaded_stream(dataset, shd_dir):
    ts = make_stream(dataset, "permuted", 1, data_dir=str(shd_dir) if dataset == "shd" else None)
    n_in, classes, steps = DATASETS[dataset]
    assert ts.n_inputs == n_in
    assert ts.n_outputs == classes
    assert ts.time_steps == steps
    y = ts.tasks[0].train.y
    assert int(y.max()) < classes
    if dataset != "shd":  # the tiny SHD file holds 3 samples; the others hold every class
        assert len(y.unique()) == classes


def test_seed_bound_is_the_documented_one():
    # docs/config.md: seed in 0 .. 2^63 - 1 (the literal bound, not SEED_MAX, which a
    # wrong constant would move together with its own test)
    from neuroplastic.config import config_from_dict
    from neuroplastic.errors import UserError

    assert config_from_dict({"seed": 2**63 - 1}).seed == 2**63 - 1
    with pytest.raises(UserError, match="seed"):
        config_from_dict({"seed": 2**63})
