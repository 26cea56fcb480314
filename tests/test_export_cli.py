"""``neuroplastic export`` and ``neuroplastic simulate`` end to end: the happy paths on a tiny
real run, and bad input. Every bad input must give exit code 2, one line on stderr naming
the problem, no traceback, and no output file (nor a hidden temporary file) left behind."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import h5py
import nir
import numpy as np
import pytest
import torch

import neuroplastic
from neuroplastic.cli import main
from neuroplastic.export.archive import save_archive
from neuroplastic.export.nir_graph import to_nir

# the embedded default shrunk: one small hidden layer, two time steps, 120 samples per task
TINY = """
[data]
max_per_task = 120

[model]
hidden = [32]

[train]
time_steps = 2
"""


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run of one method (finetune) over two tasks: ckpt_task0.pt, ckpt_task1.pt."""
    root = tmp_path_factory.mktemp("run")
    cfg = root / "tiny.toml"
    cfg.write_text(TINY)
    out = root / "finetune"
    argv = ["run", str(cfg), "--method", "finetune", "--tasks", "2", "--epochs", "1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert (out / "ckpt_task1.pt").is_file() and (out / "config.toml").is_file()
    return out


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """The run exported once as NIR and as an archive: ``{"nir": path, "h5": path}``."""
    d = tmp_path_factory.mktemp("exported")
    paths = {fmt: d / f"model.{fmt}" for fmt in ("nir", "h5")}
    for fmt, p in paths.items():
        assert main(["export", str(run_dir), "--format", fmt, "-o", str(p)]) == 0
    return paths


@pytest.fixture(scope="module")
def run_input(tmp_path_factory):
    """Spikes for the run's network (784 inputs): ``{"npy": path, "h5": path}``, T=12, B=5."""
    d = tmp_path_factory.mktemp("run_input")
    x = (np.random.default_rng(0).random((12, 5, 784)) < 0.5).astype(np.float32)
    np.save(d / "x.npy", x)
    with h5py.File(d / "x.h5", "w") as f:
        f["input"] = x
    return {"npy": d / "x.npy", "h5": d / "x.h5"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """``mlp([20, 16, 4])`` as a valid archive and a valid NIR graph, and a valid input."""
    d = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    model = neuroplastic.mlp([20, 16, 4])
    save_archive(d / "model.h5", model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reset-by-subtraction note
        graph = to_nir(model)
    nir.write(str(d / "model.nir"), graph)
    x = (np.random.default_rng(1).random((4, 6, 20)) < 0.5).astype(np.float32)
    np.save(d / "x.npy", x)
    return {"h5": d / "model.h5", "nir": d / "model.nir", "x": d / "x.npy", "graph": graph, "dir": d}


@pytest.fixture
def outdir(tmp_path):
    """An empty directory for the output: after a failure it must still be empty."""
    d = tmp_path / "out"
    d.mkdir()
    return d


def expect_error(capsys, argv, outdir, *words):
    """Run ``argv``: exit 2, one line ``neuroplastic: error: ...`` containing every word
    (case-insensitive), no traceback, nothing written to ``outdir``."""
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert rc == 2, cap.err
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("neuroplastic: error: "), cap.err
    assert "Traceback" not in cap.err + cap.out
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"
    assert list(outdir.glob(".*.tmp")) == []
    assert list(outdir.iterdir()) == [], "a failed command left files behind"
    return lines[0]


def edit_archive(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _replace(f, name, data):
    del f[name]
    f[name] = data


# -- happy paths ---------------------------------------------------------------------------
def _datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def test_export_writes_nir_and_archive(exported):
    graph = nir.read(str(exported["nir"]))
    assert {type(n).__name__ for n in graph.nodes.values()} >= {"Input", "Affine", "LIF", "LI", "Output"}
    with h5py.File(exported["h5"], "r") as f:
        assert f.attrs["format"] == "neuroplastic-archive" and "model/layers" in f
    assert list(exported["nir"].parent.glob(".*.tmp")) == []


@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_simulate_nir_and_archive_agree(exported, run_input, fmt, tmp_path, capsys):
    outs = {}
    for kind, model in exported.items():
        outs[kind] = tmp_path / f"out_{kind}.h5"
        argv = ["simulate", model, run_input[fmt], "-o", outs[kind], "--record", "spikes,v", "--batch", "2"]
        assert main([str(a) for a in argv]) == 0
        cap = capsys.readouterr()
        assert "5 samples x 12 steps" in cap.out and "firing rate" in cap.out
        data = nir.read_data(str(outs[kind]))
        assert {"lif1", "output"} <= set(data.nodes)
        assert data.nodes["lif1"].observables["spikes"].data.shape == (5, 12, 32)
    a, b = _datasets(outs["nir"]), _datasets(outs["h5"])
    assert set(a) == set(b) and "nodes/lif1/observables/spikes/data" in a
    assert a["nodes/lif1/observables/spikes/data"].any()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert list(tmp_path.glob(".*.tmp")) == []


def test_simulate_cli_keeps_stderr_quiet(exported, run_input, tmp_path):
    """The real command on a memory-mapped .npy: nothing on stderr (no library warnings), and
    the same command failing prints exactly one line."""
    out = tmp_path / "o.h5"
    base = [sys.executable, "-m", "neuroplastic", "simulate", str(exported["h5"])]
    ok = subprocess.run([*base, str(run_input["npy"]), "-o", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert out.is_file()
    np.save(tmp_path / "one_d.npy", np.zeros(784, np.float32))
    bad = subprocess.run(
        [*base, str(tmp_path / "one_d.npy"), "-o", str(tmp_path / "bad.h5")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert bad.stderr.startswith("neuroplastic: error: ") and "[T, B, N]" in bad.stderr
    assert not (tmp_path / "bad.h5").exists()
    assert list(tmp_path.glob(".*.tmp")) == []


def test_export_quantized_reports_accuracy_drop(run_dir, tmp_path, capsys):
    out = tmp_path / "q.h5"
    assert main(["export", str(run_dir), "--format", "h5", "--quantize", "8", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    line = next(x for x in stdout.splitlines() if "accuracy" in x)
    assert "8-bit" in line and "drop" in line
    with h5py.File(out, "r") as f:
        assert int(f.attrs["quantize_bits"]) == 8 and "data_q" in f["model/layers/fc1"]


# -- simulate: broken model files ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["h5", "nir"])
def test_simulate_truncated_model(small, kind, tmp_path, outdir, capsys):
    blob = small[kind].read_bytes()
    bad = tmp_path / f"half.{kind}"
    bad.write_bytes(blob[: len(blob) // 2])
    expect_error(capsys, ["simulate", bad, small["x"], "-o", outdir / "o.h5"], outdir, "half.", "truncated")


@pytest.mark.parametrize("suffix", [".h5", ".nir"])
def test_simulate_corrupt_model(small, suffix, tmp_path, outdir, capsys):
    bad = tmp_path / f"random{suffix}"
    bad.write_bytes(np.random.default_rng(2).bytes(4096))
    expect_error(capsys, ["simulate", bad, small["x"], "-o", outdir / "o.h5"], outdir, "random", "not an HDF5 file")


BAD_ARCHIVES = {
    "schema_version": (lambda f: f.attrs.__setitem__("schema_version", 99), ["schema version 99 ", "reads 1"]),
    "no_model": (lambda f: f.__delitem__("model"), ["model/layers is missing"]),
    "indptr_not_monotone": (
        lambda f: _replace(f, "model/layers/fc1/indptr", np.r_[0, 40, 20, np.arange(3, 17) * 20].astype(np.int64)),
        ["fc1/indptr", "monotone"],
    ),
    "indices_out_of_range": (
        lambda f: f["model/layers/fc1/indices"].__setitem__(5, 20),
        ["fc1/indices", "out of range"],
    ),
    "nan_data": (lambda f: f["model/layers/fc2/data"].__setitem__(3, np.nan), ["fc2/data", "finite"]),
    "float_indices": (
        lambda f: _replace(f, "model/layers/fc1/indices", f["model/layers/fc1/indices"][()].astype(np.float32)),
        ["fc1/indices", "dtype"],
    ),
    "bias_length": (lambda f: _replace(f, "model/layers/fc2/bias", np.zeros(5, np.float32)), ["fc2/bias", "5 entries"]),
}


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_simulate_wrong_schema_archive(small, case, tmp_path, outdir, capsys):
    edit, words = BAD_ARCHIVES[case]
    bad = edit_archive(small["h5"], tmp_path / f"{case}.h5", edit)
    expect_error(capsys, ["simulate", bad, small["x"], "-o", outdir / "o.h5"], outdir, *words)


@pytest.mark.parametrize(
    "node",
    [nir.Threshold(threshold=np.ones(16)), nir.Delay(delay=np.ones(16)), nir.I(r=np.ones(16))],
    ids=["Threshold", "Delay", "I"],
)
def test_simulate_nir_unsupported_node(small, node, tmp_path, outdir, capsys):
    g = small["graph"]
    nodes = {**g.nodes, "odd": node}
    edges = [e for e in g.edges if e != ("fc1", "lif1")] + [("fc1", "odd"), ("odd", "lif1")]
    bad = tmp_path / "odd.nir"
    nir.write(str(bad), nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(g.metadata), type_check=False))
    line = expect_error(capsys, ["simulate", bad, small["x"], "-o", outdir / "o.h5"], outdir, "unsupported", "'odd'")
    assert f"type {type(node).__name__};" in line


def test_simulate_nir_branch(small, tmp_path, outdir, capsys):
    g = small["graph"]
    nodes = {**g.nodes, "lif_b": g.nodes["lif1"]}
    edges = [*g.edges, ("fc1", "lif_b"), ("lif_b", "fc2")]
    bad = tmp_path / "branch.nir"
    nir.write(str(bad), nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(g.metadata), type_check=False))
    expect_error(capsys, ["simulate", bad, small["x"], "-o", outdir / "o.h5"], outdir, "'fc1'", "chain")


# -- simulate: bad input arrays ------------------------------------------------------------
def _strings():
    return np.full((4, 6, 20), "a")


def _objects():
    x = np.empty((4, 6, 20), dtype=object)
    x[...] = 1.0
    return x


BAD_INPUTS = {
    "wrong_n": (lambda: np.zeros((4, 6, 19), np.float32), ["(19,)", "(20,)"]),
    "two_d": (lambda: np.zeros((4, 20), np.float32), ["[T, B, N]", "(4, 20)"]),
    "one_d": (lambda: np.zeros(20, np.float32), ["[T, B, N]", "(20,)"]),
    "scalar": (lambda: np.float32(1.0), ["[T, B, N]", "shape ()"]),
    "no_samples": (lambda: np.zeros((4, 0, 20), np.float32), ["no samples", "(4, 0, 20)"]),
    "strings": (_strings, ["dtype", "numeric"]),
    "objects": (_objects, ["Python objects"]),
}


@pytest.mark.parametrize("model", ["h5", "nir"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_simulate_bad_input_npy(small, case, model, tmp_path, outdir, capsys):
    make, words = BAD_INPUTS[case]
    x = tmp_path / "x.npy"
    np.save(x, make(), allow_pickle=True)
    expect_error(capsys, ["simulate", small[model], x, "-o", outdir / "o.h5"], outdir, "x.npy", *words)


@pytest.mark.parametrize("case", ["wrong_n", "two_d", "one_d", "scalar", "strings"])
def test_simulate_bad_input_h5(small, case, tmp_path, outdir, capsys):
    make, words = BAD_INPUTS[case]
    x = tmp_path / "x.h5"
    with h5py.File(x, "w") as f:
        a = make()
        f["input"] = a.astype(h5py.string_dtype()) if a.dtype.kind == "U" else a
    expect_error(capsys, ["simulate", small["h5"], x, "-o", outdir / "o.h5"], outdir, "x.h5", *words)


@pytest.mark.parametrize("fmt", ["npy", "h5"])
@pytest.mark.parametrize("model", ["h5", "nir"])
def test_simulate_nan_in_a_late_batch(small, model, fmt, tmp_path, outdir, capsys):
    """The first two batches are written before the NaN of the last one is seen."""
    x = np.ones((4, 6, 20), np.float32)
    x[2, 5, 7] = np.nan
    path = tmp_path / f"x.{fmt}"
    if fmt == "npy":
        np.save(path, x)
    else:
        with h5py.File(path, "w") as f:
            f["input"] = x
    argv = ["simulate", small[model], path, "-o", outdir / "o.h5", "--batch", "2"]
    expect_error(capsys, argv, outdir, "NaN", "samples 4..5")


BROKEN_INPUT_FILES = {
    "half.npy": (lambda x, h5: x.read_bytes()[: x.stat().st_size // 2], ["truncated"]),
    "random.npy": (lambda x, h5: np.random.default_rng(4).bytes(2048), ["not a .npy file"]),
    "empty.npy": (lambda x, h5: b"", ["not a .npy file"]),
    "half.h5": (lambda x, h5: h5.read_bytes()[: h5.stat().st_size // 2], ["truncated"]),
    "random.h5": (lambda x, h5: np.random.default_rng(4).bytes(2048), ["not an HDF5 file"]),
}


@pytest.mark.parametrize("name", list(BROKEN_INPUT_FILES))
def test_simulate_broken_input_file(small, name, tmp_path, outdir, capsys):
    x = (np.random.default_rng(5).random((8, 40, 20)) < 0.5).astype(np.float32)
    src_npy, src_h5 = tmp_path / "src.npy", tmp_path / "src.h5"
    np.save(src_npy, x)
    with h5py.File(src_h5, "w") as f:
        f["input"] = x
    make, words = BROKEN_INPUT_FILES[name]
    bad = tmp_path / name
    bad.write_bytes(make(src_npy, src_h5))
    expect_error(capsys, ["simulate", small["h5"], bad, "-o", outdir / "o.h5"], outdir, name, *words)


def test_simulate_h5_input_without_input_dataset(small, tmp_path, outdir, capsys):
    x = tmp_path / "two.h5"
    with h5py.File(x, "w") as f:
        f["a"], f["b"] = np.zeros((4, 6, 20)), np.zeros((4, 6, 20))
    expect_error(capsys, ["simulate", small["h5"], x, "-o", outdir / "o.h5"], outdir, "no dataset 'input'", "a, b")


def test_simulate_missing_input(small, tmp_path, outdir, capsys):
    expect_error(
        capsys, ["simulate", small["h5"], tmp_path / "nope.npy", "-o", outdir / "o.h5"], outdir, "not found", "nope.npy"
    )


# -- simulate: bad options -----------------------------------------------------------------
@pytest.mark.parametrize("model", ["h5", "nir"])
def test_simulate_record_banana(small, model, outdir, capsys):
    argv = ["simulate", small[model], small["x"], "-o", outdir / "o.h5", "--record", "banana"]
    expect_error(capsys, argv, outdir, "--record", "banana")


@pytest.mark.parametrize("batch", ["0", "-3"])
def test_simulate_batch_not_positive(small, batch, outdir, capsys):
    argv = ["simulate", small["h5"], small["x"], "-o", outdir / "o.h5", "--batch", batch]
    expect_error(capsys, argv, outdir, "batch", ">= 1")


@pytest.mark.parametrize("model", ["h5", "nir"])
@pytest.mark.parametrize("dt", ["0", "nan", "-1e-3"])
def test_simulate_dt_not_positive(small, model, dt, outdir, capsys):
    argv = ["simulate", small[model], small["x"], "-o", outdir / "o.h5", f"--dt={dt}"]
    expect_error(capsys, argv, outdir, "dt must be a positive number")


def test_simulate_output_is_a_directory(small, outdir, capsys):
    expect_error(
        capsys, ["simulate", small["h5"], small["x"], "-o", outdir], outdir, "is a directory; give a file name"
    )
    assert list(outdir.parent.glob(".*.tmp")) == []


# -- export: bad checkpoints and run directories -------------------------------------------
def _bad_checkpoint(kind, path):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":
        torch.save({"foo": 1}, path)
    else:
        path.write_bytes(np.random.default_rng(3).bytes(2048))


CHECKPOINT_WORDS = {
    "empty": ["cannot read checkpoint", "empty"],
    "foreign": ["not a neuroplastic checkpoint"],
    "random": ["cannot read checkpoint", "not a torch.save file"],
}


@pytest.mark.parametrize("given", ["checkpoint", "run_dir"])
@pytest.mark.parametrize("kind", ["empty", "foreign", "random"])
def test_export_bad_checkpoint(run_dir, kind, given, tmp_path, outdir, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ckpt = copy / "ckpt_task1.pt"
    _bad_checkpoint(kind, ckpt)
    source = ckpt if given == "checkpoint" else copy
    for fmt in ("nir", "h5"):
        argv = ["export", source, "--format", fmt, "-o", outdir / f"m.{fmt}"]
        expect_error(capsys, argv, outdir, "ckpt_task1.pt", *CHECKPOINT_WORDS[kind])


def test_export_several_methods_need_method(run_dir, tmp_path, outdir, capsys):
    parent = tmp_path / "runs"
    for m in ("finetune", "hlop"):
        shutil.copytree(run_dir, parent / m)
    argv = ["export", parent, "--format", "nir", "-o", outdir / "m.nir"]
    expect_error(capsys, argv, outdir, "several methods", "finetune, hlop", "--method")
    expect_error(capsys, [*argv, "--method", "ewc"], outdir, "'ewc'", "finetune, hlop")


def test_export_missing_task(run_dir, outdir, capsys):
    argv = ["export", run_dir, "--format", "h5", "--task", "7", "-o", outdir / "m.h5"]
    expect_error(capsys, argv, outdir, "task 7", "tasks: 0, 1")


def test_export_quantize_4_bits(run_dir, outdir, capsys):
    argv = ["export", run_dir, "--format", "h5", "--quantize", "4", "-o", outdir / "m.h5"]
    expect_error(capsys, argv, outdir, "--quantize", "invalid choice", "4")


def test_export_head_out_of_range(run_dir, outdir, capsys):
    argv = ["export", run_dir, "--format", "nir", "--head", "3", "-o", outdir / "m.nir"]
    expect_error(capsys, argv, outdir, "head must be in 0..0", "3")


def test_export_nir_dt_not_positive(run_dir, outdir, capsys):
    argv = ["export", run_dir, "--format", "nir", "--dt", "0", "-o", outdir / "m.nir"]
    expect_error(capsys, argv, outdir, "dt must be a positive number")


@pytest.mark.parametrize("fmt", ["nir", "h5"])
def test_export_output_is_a_directory(run_dir, fmt, outdir, capsys):
    expect_error(capsys, ["export", run_dir, "--format", fmt, "-o", outdir], outdir, "is a directory; give a file name")
    assert list(outdir.parent.glob(".*.tmp")) == []


@pytest.mark.parametrize("option", [["--dt", "1e-3"], ["--integration", "euler"]])
def test_export_h5_refuses_nir_timing(run_dir, option, outdir, capsys):
    argv = ["export", run_dir, "--format", "h5", *option, "-o", outdir / "m.h5"]
    expect_error(capsys, argv, outdir, option[0], "--format nir")


def test_export_missing_source(tmp_path, outdir, capsys):
    expect_error(
        capsys, ["export", tmp_path / "nope", "--format", "nir", "-o", outdir / "m.nir"], outdir, "not found", "nope"
    )
