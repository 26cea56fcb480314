"""Surrogate gradients against their formulas."""

import math

import pytest
import torch

from neuroplastic.errors import UserError
from neuroplastic.surrogate import Surrogate, get_surrogate, spike

X = torch.linspace(-2, 2, 401, dtype=torch.float64)

FORMULAS = {
    "atan": lambda x, a: (a / 2) / (1 + (math.pi / 2 * a * x) ** 2),
    "sigmoid": lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)),
    "fast_sigmoid": lambda x, a: 1 / (a * x.abs() + 1) ** 2,
    "triangle": lambda x, a: a * torch.clamp(1 - a * x.abs(), min=0),
    "rectangle": lambda x, a: a * (x.abs() < 1 / (2 * a)).double(),
}


@pytest.mark.parametrize("name", list(FORMULAS))
@pytest.mark.parametrize("alpha", [None, 3.0])
def test_backward_is_the_formula(name, alpha):
    s = Surrogate(name, alpha)
    x = X.clone().requires_grad_()
    z = s(x)
    assert torch.equal(z, (X > 0).double())
    z.sum().backward()
    torch.testing.assert_close(x.grad, FORMULAS[name](X, s.alpha))


@pytest.mark.parametrize("name", ["triangle", "rectangle", "atan", "sigmoid"])
def test_unit_area(name):
    # these pseudo-derivatives integrate to 1 (like the delta they replace)
    x = torch.linspace(-60, 60, 1_200_001, dtype=torch.float64)
    area = torch.trapezoid(Surrogate(name).grad(x), x)
    assert abs(float(area) - 1) < 2e-2


def test_lookup_by_name_and_slope():
    assert get_surrogate("fast_sigmoid:10") == Surrogate("fast_sigmoid", 10.0)
    assert get_surrogate(Surrogate("atan"), alpha=4).alpha == 4
    assert spike(torch.tensor([0.5, -0.5]), "atan").tolist() == [1.0, 0.0]


@pytest.mark.parametrize("spec", ["nope", "atan:x", "atan:-1"])
def test_bad_surrogates(spec):
    with pytest.raises(UserError):
        get_surrogate(spec)
