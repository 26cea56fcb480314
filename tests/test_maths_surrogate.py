"""Surrogate derivatives: the default slopes, values at the boundaries of their supports,
the refusal of slope 0, and the chain rule through the spike."""

import math

import pytest
import torch

from neuroplastic.errors import UserError
from neuroplastic.surrogate import SURROGATES, Surrogate, get_surrogate, spike

DEFAULTS = {"atan": 2.0, "sigmoid": 25.0, "fast_sigmoid": 25.0, "triangle": 1.0, "rectangle": 1.0}


def test_default_slopes_are_the_documented_ones():
    assert set(SURROGATES) == set(DEFAULTS)
    for name, alpha in DEFAULTS.items():
        assert Surrogate(name).alpha == alpha
        assert get_surrogate(name).alpha == alpha
        assert get_surrogate(name, None).alpha == alpha
    assert get_surrogate() == Surrogate("atan", 2.0)
    assert get_surrogate(None).name == "atan"


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_peak_value_at_zero_with_default_slope(name):
    a = DEFAULTS[name]
    peak = {"atan": a / 2, "sigmoid": a / 4, "fast_sigmoid": 1.0, "triangle": a, "rectangle": a}[name]
    g = Surrogate(name).grad(torch.zeros(1, dtype=torch.float64))
    assert float(g) == pytest.approx(peak, rel=1e-15)
    # and at a point away from zero, the default slope shows in the value
    x = torch.tensor([0.3, -0.3], dtype=torch.float64)
    expected = {
        "atan": (a / 2) / (1 + (math.pi / 2 * a * 0.3) ** 2),
        "sigmoid": a * (1 / (1 + math.exp(-a * 0.3))) * (1 - 1 / (1 + math.exp(-a * 0.3))),
        "fast_sigmoid": 1 / (a * 0.3 + 1) ** 2,
        "triangle": a * max(0.0, 1 - a * 0.3),
        "rectangle": a * (0.3 < 0.5 / a),
    }[name]
    torch.testing.assert_close(Surrogate(name).grad(x), torch.full((2,), expected, dtype=torch.float64),
                               rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 4.0])
def test_rectangle_and_triangle_support_boundaries(alpha):
    half = 0.5 / alpha  # rectangle: alpha on |x| < 1/(2 alpha), unit area
    x = torch.tensor([-half, half, half * (1 - 1e-9), -half * (1 - 1e-9), half * (1 + 1e-9)], dtype=torch.float64)
    assert Surrogate("rectangle", alpha).grad(x).tolist() == [0.0, 0.0, alpha, alpha, 0.0]
    edge = 1 / alpha  # triangle: alpha (1 - alpha |x|), zero from |x| = 1/alpha on, never negative
    x = torch.tensor([-edge, edge, 2 * edge, -3 * edge, edge / 2, -edge / 4], dtype=torch.float64)
    g = Surrogate("triangle", alpha).grad(x)
    torch.testing.assert_close(g, torch.tensor([0.0, 0.0, 0.0, 0.0, alpha / 2, alpha * 0.75], dtype=torch.float64))


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_forward_is_strict_heaviside_and_backward_follows_the_chain_rule(name):
    x = torch.tensor([-1.0, -1e-12, 0.0, 1e-12, 0.05, 2.0], dtype=torch.float64, requires_grad=True)
    z = spike(x, f"{name}:3")
    assert z.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # exactly 0 is no spike
    w = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0, -1.5], dtype=torch.float64)
    (z * w).sum().backward()
    torch.testing.assert_close(x.grad, w * Surrogate(name, 3.0).grad(x.detach()))
    # symmetric in x
    xs = torch.tensor([0.1, 0.7], dtype=torch.float64)
    torch.testing.assert_close(Surrogate(name, 3.0).grad(xs), Surrogate(name, 3.0).grad(-xs))


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_float32_in_float32_out(name):
    x = torch.linspace(-1, 1, 11)
    assert Surrogate(name).grad(x).dtype == torch.float32
    assert spike(x, name).dtype == torch.float32


@pytest.mark.parametrize("name", list(DEFAULTS))
@pytest.mark.parametrize("alpha", [0, 0.0, -1.0, float("inf"), float("nan")])
def test_slope_zero_and_non_finite_slopes_are_refused(name, alpha):
    """Slope 0 is refused: it would make atan, sigmoid and triangle gradients identically
    0 (nothing learns, silently) and divide by zero in the rectangle's support."""
    with pytest.raises(UserError, match="slope"):
        Surrogate(name, alpha)
    with pytest.raises(UserError, match="slope"):
        get_surrogate(f"{name}:{alpha}")
    with pytest.raises(UserError, match="slope"):
        get_surrogate(Surrogate(name), alpha=alpha)


def test_lookup_forms():
    assert get_surrogate(" triangle :0.25") == Surrogate("triangle", 0.25)
    s = Surrogate("sigmoid", 7.0)
    assert get_surrogate(s) is s
    assert get_surrogate(s, alpha=3.0) == Surrogate("sigmoid", 3.0)
    assert get_surrogate("sigmoid", alpha=3.0).alpha == 3.0
    assert get_surrogate("atan:5", alpha=3.0).alpha == 5.0  # the slope in the string wins
    for bad in (3, 2.5, ["atan"]):
        with pytest.raises(UserError, match="surrogate must be"):
            get_surrogate(bad)
    with pytest.raises(UserError, match="unknown surrogate"):
        Surrogate("relu")
    with pytest.raises(UserError, match="bad surrogate slope"):
        get_surrogate("atan:fast")
