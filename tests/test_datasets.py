"""Tests for neuroplastic.datasets: loaders, IDX/npz/SHD readers, task streams."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from neuroplastic.datasets import (
    ArrayDataset,
    Task,
    TaskStream,
    iterate_minibatches,
    load_digits,
    load_mnist,
    load_shd,
    make_stream,
    permuted,
    read_idx,
    split,
)

from neuroplastic.errors import UserError

# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``path`` ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload += array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def fake_mnist(n_train: int = 12, n_test: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n_train, dtype=np.uint8),
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, n_test, dtype=np.uint8))


def write_mnist_dir(directory: Path, gz: bool, arrays=None) -> tuple:
    arrays = arrays or fake_mnist()
    directory.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for name, arr in zip(names, arrays):
        write_idx(directory / (name + ext), arr)
    return arrays


def small(n: int = 40, d: int = 16, n_classes: int = 10, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.rand(n, d, generator=g), torch.arange(n) % n_classes, n_classes)


@pytest.fixture(scope="module")
def digits28():
    return load_digits()


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_range(digits28):
    train, test = digits28
    assert train.x.shape == (1347, 784) and test.x.shape == (450, 784)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert float(train.x.max()) > 0.9
    assert train.n_classes == test.n_classes == 10
    # stratified: every class in both splits, test counts within one of each other
    counts = torch.bincount(test.y, minlength=10)
    assert int(counts.min()) >= 43 and int(counts.max()) <= 46


def test_digits_raw_8x8_and_resize_matches_interpolate():
    from sklearn.datasets import load_digits as sk

    tr8, te8 = load_digits(size=8)
    assert tr8.x.shape[1] == 64 and len(tr8) + len(te8) == 1797
    tr28, _ = load_digits(size=28)
    # the same split (same seed) -> resizing tr8 gives tr28
    img = tr8.x.reshape(-1, 1, 8, 8)
    want = torch.nn.functional.interpolate(img, size=(28, 28), mode="bilinear",
                                           align_corners=False).reshape(-1, 784)
    torch.testing.assert_close(tr28.x, want.clamp(0, 1))
    # the 8x8 values are the sklearn values / 16
    all8 = torch.cat([tr8.x, te8.x]).sort(dim=0).values
    ref = torch.as_tensor(sk().data, dtype=torch.float32).div(16).sort(dim=0).values
    torch.testing.assert_close(all8, ref)


def test_digits_bad_params():
    with pytest.raises(UserError):
        load_digits(size=0)
    with pytest.raises(UserError):
        load_digits(test_fraction=1.5)


# --------------------------------------------------------------------------- IDX / MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("a.idx" + (".gz" if gz else ""))
    write_idx(p, arr)
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_other_dtype(tmp_path):
    arr = np.array([[1.5, -2.0], [3.0, 4.25]], dtype=">f4")
    p = tmp_path / "f.idx"
    p.write_bytes(struct.pack(">I", 0x0D02) + struct.pack(">II", 2, 2) + arr.tobytes())
    np.testing.assert_array_equal(read_idx(p), arr.astype(np.float32))


def test_read_idx_errors(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(UserError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(struct.pack(">II", 0x0801, 10) + b"\x00" * 3)
    with pytest.raises(UserError, match="10"):
        read_idx(short)
    with pytest.raises(UserError, match="not found"):
        read_idx(tmp_path / "nope.idx")
    notgz = tmp_path / "x.idx.gz"
    notgz.write_bytes(b"not gzip at all")
    with pytest.raises(UserError):
        read_idx(notgz)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_load_mnist_idx(tmp_path, gz, layout):
    target = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    xtr, ytr, xte, yte = write_mnist_dir(target, gz)
    train, test = load_mnist(tmp_path)
    assert train.x.shape == (12, 784) and test.x.shape == (6, 784)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    torch.testing.assert_close(train.x, torch.from_numpy(xtr.reshape(12, 784) / 255.0).float())
    assert train.y.tolist() == ytr.tolist() and test.y.tolist() == yte.tolist()
    assert train.n_classes == 10


def test_load_mnist_bad_magic(tmp_path):
    xtr, ytr, xte, yte = fake_mnist()
    write_mnist_dir(tmp_path, gz=False)
    # a valid IDX file, but with magic 2051 (uint8, 3 dims) where labels (2049) belong
    write_idx(tmp_path / "train-labels-idx1-ubyte", ytr.reshape(12, 1, 1))
    with pytest.raises(UserError, match="2049"):
        load_mnist(tmp_path)


def test_load_mnist_count_mismatch(tmp_path):
    xtr, ytr, xte, yte = fake_mnist()
    write_mnist_dir(tmp_path, gz=False, arrays=(xtr, ytr[:5], xte, yte))
    with pytest.raises(UserError, match="labels"):
        load_mnist(tmp_path)


def test_load_mnist_missing(tmp_path):
    with pytest.raises(UserError) as err:
        load_mnist(tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "MNIST/raw" in msg and "mnist.npz" in msg
    assert "\n" not in msg
    with pytest.raises(UserError, match="not found"):
        load_mnist(tmp_path / "does-not-exist")
    # partial set: the missing file is named
    write_mnist_dir(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("as_dir", [False, True])
def test_load_mnist_npz(tmp_path, flat, as_dir):
    xtr, ytr, xte, yte = fake_mnist()
    if flat:
        xtr, xte = xtr.reshape(12, 784), xte.reshape(6, 784)
    p = tmp_path / "mnist.npz"
    np.savez(p, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    train, test = load_mnist(tmp_path if as_dir else p)
    assert train.x.shape == (12, 784) and test.x.shape == (6, 784)
    torch.testing.assert_close(test.x, torch.from_numpy(xte.reshape(6, 784) / 255.0).float())
    assert test.y.tolist() == yte.tolist()


def test_load_mnist_npz_errors(tmp_path):
    xtr, ytr, xte, yte = fake_mnist()
    p = tmp_path / "m.npz"
    np.savez(p, x_train=xtr, y_train=ytr, x_test=xte)
    with pytest.raises(UserError, match="y_test"):
        load_mnist(p)
    np.savez(p, x_train=xtr[:, :20, :20], y_train=ytr, x_test=xte, y_test=yte)
    with pytest.raises(UserError, match="28"):
        load_mnist(p)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"garbage")
    with pytest.raises(UserError):
        load_mnist(junk)


# --------------------------------------------------------------------------- SHD


def test_load_shd_binning(shd_dir):
    train, test = load_shd(shd_dir, time_steps=10, max_time=1.0)
    assert train.x.shape == (3, 10, 700) and test.x.shape == (1, 10, 700)
    assert train.x.dtype == torch.float32 and train.n_classes == 20
    assert train.y.tolist() == [1, 19, 0] and test.y.tolist() == [4]
    x = train.x
    # sample 0: t=0 -> bin 0 unit 0; 0.05 & 0.051 -> bin 0 unit 3 (binary, not 2);
    # 0.95 -> bin 9 unit 699; 1.0 (== max_time) -> last bin unit 10; 1.2 dropped
    expected = {(0, 0), (0, 3), (9, 699), (9, 10)}
    assert {tuple(i) for i in x[0].nonzero().tolist()} == expected
    assert float(x.max()) == 1.0
    assert x[1].nonzero().tolist() == [[5, 42]]
    assert x[2].sum() == 0
    assert test.x[0].nonzero().tolist() == [[2, 7]]


def test_load_shd_gz_and_dtype(shd_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("shdgz")
    for split_name in ("train", "test"):
        data = (shd_dir / f"shd_{split_name}.h5").read_bytes()
        with gzip.open(other / f"shd_{split_name}.h5.gz", "wb") as fh:
            fh.write(data)
    train, _ = load_shd(other, time_steps=10, dtype=torch.uint8)
    ref, _ = load_shd(shd_dir, time_steps=10)
    assert train.x.dtype == torch.uint8
    torch.testing.assert_close(train.x.float(), ref.x)
    xb, _ = next(iterate_minibatches(train, 2, shuffle=False, generator=None))
    assert xb.dtype == torch.float32


def test_load_shd_errors(shd_dir, tmp_path_factory):
    with pytest.raises(UserError, match="n_channels"):
        load_shd(shd_dir, n_channels=100)
    with pytest.raises(UserError, match="time_steps"):
        load_shd(shd_dir, time_steps=0)
    with pytest.raises(UserError, match="max_time"):
        load_shd(shd_dir, max_time=0)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(UserError, match="shd_train"):
        load_shd(empty)
    (empty / "shd_train.h5").write_bytes(b"not hdf5")
    (empty / "shd_test.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="HDF5"):
        load_shd(empty)
    with h5py.File(empty / "shd_train.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros(2, dtype=np.uint8))
    with pytest.raises(UserError, match="spikes"):
        load_shd(empty)


# --------------------------------------------------------------------------- base records


def test_array_dataset_validation_and_subset():
    ds = small(10)
    assert len(ds) == 10 and ds.shape == (16,)
    sub = ds.subset([0, 2, 4])
    assert len(sub) == 3 and sub.y.tolist() == [0, 2, 4]
    torch.testing.assert_close(sub.x, ds.x[[0, 2, 4]])
    assert len(ds.subset(ds.y < 3)) == 3
    assert len(ds.subset(slice(2, 5))) == 3
    assert len(ds.subset(np.array([1, 1]))) == 2
    with pytest.raises(UserError):
        ds.subset([10])
    with pytest.raises(UserError):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64), 2)
    with pytest.raises(UserError):
        ArrayDataset(torch.zeros(3, 2), torch.tensor([0, 1, 5]), 2)
    with pytest.raises(UserError):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(3), 2)
    assert ArrayDataset(torch.zeros(2, 2), torch.tensor([0, 1], dtype=torch.int32), 2).y.dtype \
        == torch.int64


def test_iterate_minibatches():
    ds = small(10)
    batches = list(iterate_minibatches(ds, 4, shuffle=False, generator=None))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), ds.x)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ys1 = torch.cat([y for _, y in iterate_minibatches(ds, 3, True, g1)])
    ys2 = torch.cat([y for _, y in iterate_minibatches(ds, 3, True, g2)])
    assert ys1.tolist() == ys2.tolist() and sorted(ys1.tolist()) == sorted(ds.y.tolist())
    xs = torch.cat([x for x, _ in iterate_minibatches(ds, 3, True, torch.Generator())])
    torch.testing.assert_close(xs.sort(0).values, ds.x.sort(0).values)
    with pytest.raises(UserError):
        list(iterate_minibatches(ds, 0, False, None))


# --------------------------------------------------------------------------- permuted


def test_permuted_stream(digits28):
    train, test = digits28
    s = permuted(train, test, n_tasks=3, seed=0)
    assert isinstance(s, TaskStream) and all(isinstance(t, Task) for t in s.tasks)
    assert (s.n_inputs, s.n_outputs, s.n_heads, s.time_steps) == (784, 10, 1, None)
    assert [t.name for t in s.tasks] == ["perm-0", "perm-1", "perm-2"]
    t0, t1, t2 = s.tasks
    # task 0 is the identity
    assert torch.equal(t0.train.x, train.x) and torch.equal(t0.test.x, test.x)
    # later tasks: a consistent pixel permutation of train and test, labels preserved
    g = torch.Generator().manual_seed(0)
    perms_ref = [torch.randperm(784, generator=g) for _ in range(3)]
    perms = []
    for i, t in ((1, t1), (2, t2)):
        assert t.head == 0 and t.classes == list(range(10))
        assert torch.equal(t.train.y, train.y) and torch.equal(t.test.y, test.y)
        # task i uses the i-th randperm of the seeded generator: x_i[:, j] = x[:, perm[j]]
        perm = perms_ref[i]
        assert torch.equal(t.train.x, train.x[:, perm])
        assert torch.equal(t.test.x, test.x[:, perm])
        perms.append(perm)
    assert not torch.equal(perms[0], perms[1])
    assert not torch.equal(t1.train.x, t0.train.x)


def test_permuted_determinism_and_permute_first():
    train, test = small(30, 20), small(10, 20, seed=1)
    a = permuted(train, test, 3, seed=5)
    b = permuted(train, test, 3, seed=5)
    c = permuted(train, test, 3, seed=6)
    for ta, tb in zip(a.tasks, b.tasks):
        assert torch.equal(ta.train.x, tb.train.x) and torch.equal(ta.test.x, tb.test.x)
    assert not torch.equal(a.tasks[1].train.x, c.tasks[1].train.x)
    f = permuted(train, test, 3, seed=5, permute_first=True)
    assert not torch.equal(f.tasks[0].train.x, train.x)
    # the later tasks do not depend on permute_first
    assert torch.equal(f.tasks[1].train.x, a.tasks[1].train.x)
    # permutation: same multiset of values per sample
    torch.testing.assert_close(f.tasks[0].train.x.sort(1).values, train.x.sort(1).values)


def test_permuted_event_data_and_cap():
    x = torch.rand(8, 5, 12)
    ds = ArrayDataset(x, torch.arange(8) % 4, 4)
    s = permuted(ds, ds, 2, max_per_task=3)
    assert (s.n_inputs, s.time_steps) == (12, 5)
    t1 = s.tasks[1]
    assert len(t1.train) == 3 and len(t1.test) == 8
    # channels permuted identically at every time step
    g = torch.Generator().manual_seed(0)
    _, perm = torch.randperm(12, generator=g), torch.randperm(12, generator=g)
    torch.testing.assert_close(t1.test.x, x[..., perm])
    with pytest.raises(UserError):
        permuted(ds, ds, 0)
    with pytest.raises(UserError):
        permuted(small(5, 16), small(5, 17), 2)


# --------------------------------------------------------------------------- split


def test_split_task_incremental():
    train, test = small(100), small(50, seed=1)
    s = split(train, test, classes_per_task=2, setting="task")
    assert (s.n_outputs, s.n_heads, len(s.tasks)) == (2, 5, 5)
    for i, t in enumerate(s.tasks):
        assert t.head == i and t.classes == [2 * i, 2 * i + 1]
        assert t.name == f"split-{i}:{[2 * i, 2 * i + 1]}"
        assert t.train.n_classes == 2 and set(t.train.y.tolist()) == {0, 1}
        # remapping: position in the class list
        orig = train.y[torch.isin(train.y, torch.tensor(t.classes))]
        assert t.train.y.tolist() == (orig - 2 * i).tolist()
        torch.testing.assert_close(t.train.x, train.x[torch.isin(train.y,
                                                                 torch.tensor(t.classes))])
        assert len(t.test) == 10


def test_split_domain_and_class():
    train, test = small(100), small(50, seed=1)
    d = split(train, test, classes_per_task=3, setting="domain")
    assert (d.n_outputs, d.n_heads, len(d.tasks)) == (3, 1, 3)  # class 9 left over
    assert all(t.head == 0 for t in d.tasks)
    assert d.tasks[2].classes == [6, 7, 8] and set(d.tasks[2].test.y.tolist()) == {0, 1, 2}
    c = split(train, test, classes_per_task=2, n_tasks=2, setting="class")
    assert (c.n_outputs, c.n_heads, len(c.tasks)) == (10, 1, 2)
    assert all(t.head == 0 for t in c.tasks)
    assert set(c.tasks[1].train.y.tolist()) == {2, 3} and c.tasks[1].train.n_classes == 10


def test_split_errors_and_cap():
    train, test = small(100), small(50, seed=1)
    with pytest.raises(UserError, match="setting"):
        split(train, test, setting="instance")
    with pytest.raises(UserError):
        split(train, test, classes_per_task=0)
    with pytest.raises(UserError):
        split(train, test, classes_per_task=11)
    with pytest.raises(UserError, match="tasks"):
        split(train, test, classes_per_task=2, n_tasks=6)
    a = split(train, test, max_per_task=4, seed=1)
    b = split(train, test, max_per_task=4, seed=1)
    assert all(len(t.train) == 4 for t in a.tasks)
    assert all(torch.equal(ta.train.x, tb.train.x) for ta, tb in zip(a.tasks, b.tasks))


# --------------------------------------------------------------------------- make_stream


def test_make_stream_digits():
    s = make_stream()
    assert len(s.tasks) == 5 and s.n_inputs == 784 and s.n_heads == 1
    assert "digits" in s.description
    q = make_stream(stream="split", setting="class", max_per_task=20, seed=2)
    assert all(len(t.train) == 20 for t in q.tasks) and q.n_outputs == 10


def test_make_stream_files(tmp_path, shd_dir):
    write_mnist_dir(tmp_path / "mn", gz=True)
    s = make_stream("mnist", "split", n_tasks=5, data_dir=str(tmp_path / "mn"))
    assert s.n_inputs == 784 and s.n_heads == 5
    e = make_stream("shd", "permuted", n_tasks=2, data_dir=str(shd_dir))
    assert (e.n_inputs, e.time_steps, e.n_outputs) == (700, 100, 20)


def test_make_stream_errors(tmp_path):
    with pytest.raises(UserError, match="dataset"):
        make_stream("cifar")
    with pytest.raises(UserError, match="stream"):
        make_stream(stream="rotated")
    with pytest.raises(UserError, match="setting"):
        make_stream(stream="split", setting="bogus")
    for name in ("mnist", "shd"):
        with pytest.raises(UserError, match="data"):
            make_stream(name)
    with pytest.raises(UserError):
        make_stream("mnist", data_dir=str(tmp_path))
    with pytest.raises(UserError):
        make_stream(n_tasks=0)
    with pytest.raises(UserError):
        make_stream(max_per_task=0)


def test_permute_first_reaches_the_runs_stream():
    """``data.permute_first`` permutes task 0 too (it was validated and then dropped)."""
    from neuroplastic.config import DataConfig, RunConfig
    from neuroplastic.continual import build_stream

    plain = build_stream(RunConfig(data=DataConfig(tasks=2)))
    first = build_stream(RunConfig(data=DataConfig(tasks=2, permute_first=True)))
    assert torch.equal(plain.tasks[0].train.x, plain.tasks[0].train.x)
    assert not torch.equal(plain.tasks[0].train.x, first.tasks[0].train.x)
    assert torch.equal(plain.tasks[0].train.x.sort(1).values, first.tasks[0].train.x.sort(1).values)  # moved
