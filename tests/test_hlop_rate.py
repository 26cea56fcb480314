"""HLOP's Hebbian rate: fixed (the paper's) or relative to the activity's energy."""

import pytest
import torch

from neuroplastic.plugins.hlop import HLOP, HLOPOptions


def test_energy_scaled_rate_divides_by_the_mean_squared_norm():
    X = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # |x|^2 = 25 and 1: mean 13
    h = HLOP(HLOPOptions(lr_scale="energy", energy_lr=0.5))
    assert h._rate("fc1", X) == pytest.approx(0.5 / 13)
    assert h._rate("fc1", 2 * X) == pytest.approx(0.5 / 52)  # scale-free: x2 activity, /4 rate
    assert HLOPOptions().lr_scale == "energy"  # the default
    fixed = HLOP(HLOPOptions(lr_scale="none"))
    fixed.lrs = {"fc1": 0.08}
    assert fixed._rate("fc1", X) == 0.08


def test_bad_rate_scale_is_refused():
    with pytest.raises(ValueError, match="lr_scale"):
        HLOPOptions(lr_scale="banana")
    with pytest.raises(ValueError, match="energy_lr"):
        HLOPOptions(energy_lr=0)
    with pytest.raises(ValueError, match="lr_scale"):  # fixed rates given, but the energy scale in force
        HLOPOptions(lr=0.05)
