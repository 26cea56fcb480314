"""ACC / BWT / FWT on hand-made accuracy matrices (GEM definitions, averaged over T-1)."""

import pytest

from neuroplastic.errors import UserError
from neuroplastic.metrics import acc, bwt, fwt, summarize

R = [[90.0, 12.0, 8.0],
     [70.0, 88.0, 15.0],
     [60.0, 75.0, 93.0]]
B = [10.0, 11.0, 9.0]


def test_acc_is_mean_of_last_row():
    assert acc(R) == pytest.approx((60 + 75 + 93) / 3)


def test_bwt_averages_over_t_minus_1():
    assert bwt(R) == pytest.approx(((60 - 90) + (75 - 88)) / 2)  # not / 3 as in GEM's code


def test_fwt_against_baseline():
    assert fwt(R, B) == pytest.approx(((12 - 11) + (15 - 9)) / 2)


def test_single_task_has_no_transfer():
    assert summarize([[80.0]], [10.0]) == {"acc": 80.0, "bwt": None, "fwt": None}


def test_no_forgetting_is_zero_bwt():
    assert bwt([[50.0, 0.0], [50.0, 70.0]]) == 0.0


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [[1.0], [2.0]]])
def test_bad_matrices(bad):
    with pytest.raises(UserError):
        acc(bad)


def test_baseline_length_checked():
    with pytest.raises(UserError):
        fwt(R, [1.0, 2.0])
