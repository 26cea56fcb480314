"""ACC / BWT / FWT on fractional accuracies, against the GEM definitions written out by hand."""

import numpy as np
import pytest

from neuroplastic.errors import UserError
from neuroplastic.metrics import acc, bwt, fwt, summarize


def _gem(R, b):
    """The three metrics as plain Python loops over the definitions (T-1 terms)."""
    T = len(R)
    a = sum(R[T - 1][j] for j in range(T)) / T
    if T < 2:
        return a, None, None
    bw = sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)
    fw = None if b is None else sum(R[j - 1][j] - b[j] for j in range(1, T)) / (T - 1)
    return a, bw, fw


def test_fractional_two_task_values_by_hand():
    R = [[50.5, 12.25], [20.25, 70.75]]
    b = [10.5, 9.75]
    assert acc(R) == 45.5                   # (20.25 + 70.75) / 2
    assert bwt(R) == -30.25                 # 20.25 - 50.5 (one term, not halved)
    assert fwt(R, b) == 2.5                 # 12.25 - 9.75 (one term)
    assert summarize(R, b) == {"acc": 45.5, "bwt": -30.25, "fwt": 2.5}


def test_values_below_one_percent_are_not_truncated():
    # an integer dtype anywhere would turn every entry here into 0
    R = [[0.5, 0.25, 0.75], [0.25, 0.5, 0.125], [0.375, 0.625, 0.875]]
    b = [0.125, 0.0625, 0.5]
    s = summarize(R, b)
    assert s["acc"] == pytest.approx((0.375 + 0.625 + 0.875) / 3, abs=1e-15)
    assert s["bwt"] == pytest.approx(((0.375 - 0.5) + (0.625 - 0.5)) / 2, abs=1e-15)
    assert s["fwt"] == pytest.approx(((0.25 - 0.0625) + (0.125 - 0.5)) / 2, abs=1e-15)
    assert all(isinstance(v, float) for v in s.values())


@pytest.mark.parametrize("T", [2, 3, 4, 7])
def test_random_fractional_matrices_match_the_loops(T):
    rng = np.random.default_rng(T)
    R = (rng.random((T, T)) * 100).tolist()
    b = (rng.random(T) * 100).tolist()
    a, bw, fw = _gem(R, b)
    assert acc(R) == pytest.approx(a, rel=1e-13)
    assert bwt(R) == pytest.approx(bw, rel=1e-13)
    assert fwt(R, b) == pytest.approx(fw, rel=1e-13)
    # the baseline may be any sequence (numpy array included)
    assert fwt(np.asarray(R), np.asarray(b)) == pytest.approx(fw, rel=1e-13)


def test_integer_matrix_gives_float_results():
    R = [[1, 0], [0, 2]]
    s = summarize(R, [0, 1])
    assert s == {"acc": 1.0, "bwt": -1.0, "fwt": -1.0}
    assert all(type(v) is float for v in s.values())


def test_transfer_needs_two_tasks_and_a_baseline():
    assert summarize([[42.5]], [3.0]) == {"acc": 42.5, "bwt": None, "fwt": None}
    R = [[60.5, 1.5], [55.0, 80.0]]
    assert fwt(R, None) is None
    assert bwt(R) == -5.5          # BWT does not need the baseline
    assert summarize(R) == {"acc": 67.5, "bwt": -5.5, "fwt": None}


@pytest.mark.parametrize("bad", [[], [[]], [1.0, 2.0], [[1.0, 2.0]], [[1.0], [2.0]], np.zeros((2, 3)),
                                 np.zeros((2, 2, 2))])
def test_non_square_matrices_are_refused_by_every_metric(bad):
    for f in (acc, bwt, lambda R: fwt(R, [0.0, 0.0])):
        with pytest.raises(UserError, match="square"):
            f(bad)


@pytest.mark.parametrize("baseline", [[1.0], [1.0, 2.0, 3.0], [[1.0, 2.0]]])
def test_baseline_must_have_one_entry_per_task(baseline):
    with pytest.raises(UserError, match="one accuracy per task"):
        fwt([[1.0, 2.0], [3.0, 4.0]], baseline)
