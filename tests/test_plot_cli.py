"""`neuroplastic plot`: the report of a real run, several runs compared, and bad input."""

import base64
import json
import re
import shutil

import h5py
import pytest

from neuroplastic.cli import main

CONFIG = """
methods = ["finetune", "hlop"]
[data]
tasks = 2
max_per_task = 200
[model]
hidden = [48]
[train]
time_steps = 4
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("plotcli")
    (root / "c.toml").write_text(CONFIG)
    assert main(["run", str(root / "c.toml"), "--out", str(root / "run"), "--quiet", "--plot"]) == 0
    return root / "run"


def test_run_plot_writes_a_self_contained_report(run_dir):
    report = run_dir / "report" / "report.html"
    text = report.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text  # offline, no JS
    images = re.findall(r"src='data:image/(png|gif);base64,([^']+)'", text)
    assert len(images) >= 15
    for kind, data in images:
        raw = base64.b64decode(data)
        assert raw[:4] == (b"\x89PNG" if kind == "png" else b"GIF8")
    for caption in ("accuracy matrix", "raster", "hlop activity", "task accuracy", "compare accuracy"):
        assert caption in text
    assert "<th>ACC</th>" in text and "[train]" in text and "time_steps = 4" in text  # metrics table, config
    summary = json.loads((run_dir / "report" / "report.json").read_text())
    assert summary["failed"] == []
    assert (run_dir / "report" / "hlop" / "raster.png").is_file()


def test_plot_compares_separate_runs(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run_dir / "hlop", other)
    out = tmp_path / "cmp"
    assert main(["plot", str(run_dir), str(other), "-o", str(out), "--no-animation"]) == 0
    text = (out / "report.html").read_text()
    assert "other/hlop" in text and "run/finetune" in text
    assert (out / "compare_accuracy.png").is_file()
    assert "figures and" in capsys.readouterr().out


def test_interrupted_run_gives_the_figures_it_can(run_dir, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(run_dir / "finetune", half)
    (half / "metrics.json").unlink()
    assert main(["plot", str(half), "--no-animation"]) == 0
    text = (half / "report" / "report.html").read_text()
    assert "metrics.json missing" in text and "accuracy matrix" in text


def test_older_run_h5_layout_reports_what_there_is(run_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run_dir / "finetune", old)
    with h5py.File(old / "run.h5", "a") as f:  # the layout before per-task records existed
        for key in ("probe", "rates", "sparsity"):
            del f[key]
    assert main(["plot", str(old), "--no-animation"]) == 0
    summary = json.loads((old / "report" / "report.json").read_text())
    assert summary["failed"] == [] and any("raster" in name for name, _ in summary["skipped"])


@pytest.mark.parametrize("make", ["missing", "file", "empty_dir", "garbage_h5"])
def test_bad_input_is_one_line(tmp_path, capsys, make):
    target = tmp_path / "x"
    if make == "file":
        target.write_text("not a run")
    elif make == "empty_dir":
        target.mkdir()
    elif make == "garbage_h5":
        target.mkdir()
        (target / "run.h5").write_bytes(b"\x00garbage" * 10)
    code = main(["plot", str(target), "--no-animation"])
    err = capsys.readouterr().err
    if make == "garbage_h5":  # a run directory whose file is broken: a report of what there is
        assert code == 0 and "unreadable" in (target / "report" / "report.html").read_text()
        return
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuroplastic: error:") and "Traceback" not in err
