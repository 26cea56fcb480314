"""A trained HLOP run, exported to NIR and to the archive, scores exactly the same."""

import h5py
import numpy as np
import pytest
import torch

from neuroplastic.continual import build_stream
from neuroplastic.export import from_nir, to_nir, write_nir
from neuroplastic.export.archive import load_archive, save_archive
from neuroplastic.export.commands import mean_test_accuracy, plugin_tables
from neuroplastic.export.source import load_run_model


@pytest.fixture(scope="module")
def hlop_run(make_run):
    return make_run(["hlop"], tasks=2, time_steps=4)


def test_exported_hlop_run_scores_exactly_the_same(hlop_run, tmp_path):
    rm = load_run_model(hlop_run)
    assert rm.method == "hlop" and rm.task == 1
    stream = build_stream(rm.cfg)
    acc = mean_test_accuracy(rm.model, rm.cfg, stream)
    import json

    metrics = json.loads((hlop_run / "metrics.json").read_text())
    assert acc == pytest.approx(float(np.mean(metrics["acc_matrix"][-1])), abs=1e-9)  # the run's own numbers
    with pytest.warns(UserWarning, match="subtraction"):
        write_nir(tmp_path / "m.nir", to_nir(rm.model))
    assert mean_test_accuracy(from_nir(tmp_path / "m.nir"), rm.cfg, stream) == acc
    save_archive(tmp_path / "m.h5", rm.model, plugins=plugin_tables(rm.checkpoint))
    arch = load_archive(tmp_path / "m.h5")
    assert mean_test_accuracy(arch.model, rm.cfg, stream) == acc
    H = rm.checkpoint["plugins"]["hlop"]["H"]
    assert set(arch.plugins["hlop"]["H"]) == set(H)
    for name, h in H.items():
        np.testing.assert_array_equal(arch.plugins["hlop"]["H"][name], h.numpy().astype(np.float32))


def test_earlier_task_checkpoint_differs(hlop_run):
    first = load_run_model(hlop_run, task=0)
    last = load_run_model(hlop_run)
    assert first.task == 0
    assert not torch.equal(first.model.layers["fc1"].weight, last.model.layers["fc1"].weight)


def test_cli_export_writes_config_and_quantisation_drop(hlop_run, tmp_path, capsys):
    from neuroplastic.cli import main

    assert main(["export", str(hlop_run), "--format", "h5", "--quantize", "8", "-o", str(tmp_path / "q.h5")]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "8-bit" in line and "drop" in line
    with h5py.File(tmp_path / "q.h5") as f:
        assert f.attrs["quantize_bits"] == 8 and "accuracy_drop" in f.attrs
        assert 'methods = ["hlop"]' in f["config"][()].decode()
        assert "plugins/hlop/H/fc1" in f
