"""Every config shipped in docs/configs validates, and the paper's PMNIST network builds."""

from pathlib import Path

import pytest

from neuroplastic.config import load_config
from neuroplastic.plugins import options_for

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "docs" / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_doc_config_validates(path):
    cfg = load_config(path)
    for name, section in cfg.plugins.items():
        assert options_for(name, section) is not None


def test_pmnist_paper_network():
    from neuroplastic.datasets import make_stream

    from neuroplastic.config import revalidate
    from neuroplastic.continual import build_model

    cfg = load_config(next(p for p in CONFIGS if p.stem == "pmnist_paper"))
    cfg.data.dataset, cfg.data.tasks = "digits", 1  # MNIST is not on the test machine
    cfg = revalidate(cfg)
    net = build_model(cfg, make_stream("digits", "permuted", 1))
    assert [tuple(m.weight.shape) for _, m in net.synapses()] == [(800, 784), (800, 800), (10, 800)]
