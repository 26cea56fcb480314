"""The augmented digits proxy: deterministic distortions that make tasks longer and richer."""

import pytest
import torch
from neuroplastic.datasets import load_digits, make_stream
from neuroplastic.datasets.augment import augment

from neuroplastic.config import config_from_dict
from neuroplastic.errors import UserError


@pytest.fixture(scope="module")
def digits():
    return load_digits()[0].subset(slice(0, 200))


def test_copies_are_deterministic_and_keep_labels(digits):
    a, b = augment(digits, 3, seed=0), augment(digits, 3, seed=0)
    assert torch.equal(a.x, b.x) and len(a) == 3 * len(digits)
    assert torch.equal(a.x[: len(digits)], digits.x)  # the originals first
    assert torch.equal(a.y, digits.y.repeat(3))
    assert not torch.equal(augment(digits, 3, seed=1).x, a.x)
    assert float(a.x.min()) >= 0 and float(a.x.max()) <= 1


def test_distortions_change_images_but_keep_most_of_the_ink(digits):
    a = augment(digits, 2, seed=0)
    orig, new = digits.x, a.x[len(digits):]
    changed = (orig - new).abs().mean(1)
    assert (changed > 0.02).float().mean() > 0.9  # nearly every image moved
    ink = new.sum(1) / orig.sum(1)
    assert 0.7 < float(ink.median()) < 1.3


def test_augmented_activity_is_richer_than_the_64_dim_digits():
    """The upscaled 8x8 digits live in 64 dimensions; distorted copies do not."""
    train = load_digits()[0].subset(slice(0, 600))

    def top64(x):
        s = torch.linalg.svdvals(x) ** 2
        return float(s[:64].sum() / s.sum())

    assert top64(train.x) > 0.9999
    assert top64(augment(train, 3, seed=0).x) < 0.995


def test_stream_and_config(tmp_path):
    s = make_stream("digits", "permuted", 2, augment=2)
    assert len(s.tasks[0].train) == 2 * 1347 and len(s.tasks[0].test) == 450
    assert "x2" in s.description
    assert config_from_dict({"data": {"augment": 4}}).data.augment == 4
    for bad in (0, 65, True, 1.5):
        with pytest.raises(UserError, match="data.augment"):
            config_from_dict({"data": {"augment": bad}})
    with pytest.raises(UserError, match="event data"):
        make_stream("cues", "permuted", 1, augment=2)
    with pytest.raises(UserError, match="augment"):
        augment(load_digits()[0].subset(slice(0, 5)), 0)
