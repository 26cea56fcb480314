"""Every byte-level rule of the loaders, by hand and with hypothesis, on small files the
tests write.

IDX (``read_idx`` / ``load_mnist``): two zero bytes, a known type code and ``ndim >= 1``
(0-d refused by name); the header's sizes times the item size equal the payload exactly
(truncated files and trailing bytes refused, absurd sizes without overflow); the array
comes back in native byte order with the right values; MNIST labels >= 10 are blamed on
the labels file; a count mismatch names both files. SHD (``load_shd``): the three
datasets exist, one time list and one unit list per label with equal lengths, unit ids in
range, spike times finite and >= 0, labels in 0..19; valid files bin exactly as the rule
says. The other loaders (``.npz`` MNIST, digits, the generated cues, the streams) give a
dataset or one :class:`UserError`, never another exception.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from neuroplastic.datasets import load_cues, load_digits, load_mnist, load_shd, make_stream, permuted, read_idx, split
from neuroplastic.datasets.base import ArrayDataset

from neuroplastic.errors import UserError

FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array: np.ndarray, code: int | None = None, dims=None, extra: bytes = b"", cut: int = 0) -> bytes:
    """An IDX file of ``array`` (its big-endian dtype gives the code), optionally lying
    about ``dims``, with ``extra`` bytes after it or ``cut`` bytes missing."""
    if code is None:
        code = {np.dtype(v).str: k for k, v in CODES.items()}[np.dtype(array.dtype).newbyteorder(">").str]
    big = array.astype(np.dtype(CODES[code]))
    dims = array.shape if dims is None else dims
    data = bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + big.tobytes() + extra
    return data[: len(data) - cut] if cut else data


def write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return p


# -- IDX: hand cases, one per rule -------------------------------------------------------
def test_idx_magic_first_two_bytes_zero(tmp_path):
    p = write(tmp_path, "a.idx", b"\x00\x01\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(UserError, match="not an IDX file .bad magic number 0x00010801"):
        read_idx(p)


def test_idx_unknown_type_code(tmp_path):
    p = write(tmp_path, "a.idx", b"\x00\x00\x0a\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(UserError, match="bad magic number 0x00000a01"):
        read_idx(p)


def test_idx_zero_dimensions(tmp_path):
    for data in (b"\x00\x00\x08\x00", b"\x00\x00\x08\x00" + b"\x07"):  # the bare magic, or one item
        with pytest.raises(UserError, match="declares 0 dimensions"):
            read_idx(write(tmp_path, "a.idx", data))


def test_idx_too_short_and_truncated_header(tmp_path):
    with pytest.raises(UserError, match=r"too short for an IDX file \(3 bytes\)"):
        read_idx(write(tmp_path, "a.idx", b"\x00\x00\x08"))
    with pytest.raises(UserError, match=r"truncated IDX header \(3 dims declared\)"):
        read_idx(write(tmp_path, "b.idx", b"\x00\x00\x08\x03" + struct.pack(">I", 2)))
    with pytest.raises(UserError, match=r"truncated IDX header \(1 dims declared\)"):
        read_idx(write(tmp_path, "c.idx", b"\x00\x00\x08\x01"))  # the magic alone


def test_idx_truncated_payload_and_trailing_bytes(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    with pytest.raises(UserError, match=r"dims \(2, 3, 4\) need 24 data bytes, file has 23"):
        read_idx(write(tmp_path, "cut.idx", idx_bytes(a, cut=1)))
    with pytest.raises(UserError, match=r"dims \(2, 3, 4\) need 24 data bytes, file has 25"):
        read_idx(write(tmp_path, "extra.idx", idx_bytes(a, extra=b"\x00")))


def test_idx_absurd_sizes_do_not_overflow(tmp_path):
    """(2^32-1)^4 items overflow int64: the check must still refuse, with the true size."""
    big = (2**32 - 1,) * 4
    p = write(tmp_path, "big.idx", idx_bytes(np.zeros(1, np.uint8), dims=big))
    with pytest.raises(UserError, match=f"need {math.prod(big)} data bytes, file has 1"):
        read_idx(p)


def test_idx_expected_magic(tmp_path):
    p = write(tmp_path, "l.idx", idx_bytes(np.zeros((2, 2), np.uint8)))
    with pytest.raises(UserError, match="magic number 2050 but expected 2049"):
        read_idx(p, expected_magic=2049)


@pytest.mark.parametrize("code", sorted(CODES))
def test_idx_every_type_code_native_byte_order(tmp_path, code):
    values = np.array([[0, 1, -2], [100, -7, 3]], dtype=np.float64)
    if CODES[code].endswith("u1"):
        values = np.abs(values)
    a = values.astype(np.dtype(CODES[code]).newbyteorder("="))
    out = read_idx(write(tmp_path, "a.idx", idx_bytes(a, code=code)))
    assert out.dtype.isnative and out.dtype == np.dtype(CODES[code]).newbyteorder("=")
    np.testing.assert_array_equal(out, a)
    assert out.flags.writeable  # a copy, not a view of the read-only file bytes


def test_idx_gz_truncated_and_not_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((3, 3), np.uint8)))
    (tmp_path / "cut.idx.gz").write_bytes(good[:-6])
    with pytest.raises(UserError, match="cannot read"):
        read_idx(tmp_path / "cut.idx.gz")
    (tmp_path / "plain.idx.gz").write_bytes(idx_bytes(np.zeros((3, 3), np.uint8)))
    with pytest.raises(UserError, match="cannot read"):
        read_idx(tmp_path / "plain.idx.gz")


def test_idx_missing_and_directory(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_idx(tmp_path / "nope.idx")
    (tmp_path / "d.idx").mkdir()
    with pytest.raises(UserError, match="expected a file, found a directory"):
        read_idx(tmp_path / "d.idx")


# -- IDX: properties ---------------------------------------------------------------------
@st.composite
def idx_arrays(draw):
    code = draw(st.sampled_from(sorted(CODES)))
    dt = np.dtype(CODES[code]).newbyteorder("=")
    shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple))
    elements = st.floats(width=32, allow_nan=False) if dt.kind == "f" else None
    return code, draw(hnp.arrays(dt, shape, elements=elements))


@FAST
@given(idx_arrays(), st.booleans())
def test_idx_round_trip(tmp_path, arr, gz):
    code, a = arr
    out = read_idx(write(tmp_path, "a.idx.gz" if gz else "a.idx", idx_bytes(a, code=code)))
    assert out.dtype.isnative and out.shape == a.shape
    np.testing.assert_array_equal(out, a)


@FAST
@given(idx_arrays(), st.integers(1, 16), st.booleans())
def test_idx_any_size_mismatch_is_refused(tmp_path, arr, n, trailing):
    code, a = arr
    data = idx_bytes(a, code=code)
    payload = len(data) - 4 - 4 * a.ndim
    assume(trailing or n <= payload)
    bad = idx_bytes(a, code=code, extra=b"\x01" * n) if trailing else idx_bytes(a, code=code, cut=n)
    with pytest.raises(UserError, match=r"need \d+ data bytes, file has \d+"):
        read_idx(write(tmp_path, "a.idx", bad))


@FAST
@given(st.binary(max_size=64))
def test_idx_any_bytes_give_an_array_or_one_user_error(tmp_path, data):
    try:
        out = read_idx(write(tmp_path, "r.idx", data))
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert data[:2] == b"\x00\x00" and data[2] in CODES and data[3] >= 1 and out.dtype.isnative


@FAST
@given(st.binary(min_size=4, max_size=4), st.lists(st.integers(0, 2**32 - 1), max_size=4))
def test_idx_any_header_gives_an_array_or_one_user_error(tmp_path, magic, dims):
    data = magic + b"".join(struct.pack(">I", d) for d in dims) + bytes(range(7))
    try:
        read_idx(write(tmp_path, "h.idx", data))
    except UserError as exc:
        assert "\n" not in str(exc)


# -- MNIST on top of IDX -----------------------------------------------------------------
def write_mnist(d: Path, n_train=6, n_test=4, train_labels=None, test_labels=None, gz=False) -> Path:
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    parts = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
             "train-labels-idx1-ubyte": rng.integers(0, 10, n_train) if train_labels is None else train_labels,
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test) if test_labels is None else test_labels}
    for name, a in parts.items():
        write(d, name + ext, idx_bytes(np.asarray(a).astype(np.uint8)))
    return d


@FAST
@given(st.lists(st.integers(0, 255), min_size=6, max_size=6), st.sampled_from(["train", "test"]))
def test_mnist_labels_at_or_above_10_are_blamed_on_the_labels_file(tmp_path_factory, labels, which):
    d = tmp_path_factory.mktemp("mnist")
    labels = np.array(labels)
    kw = {"train_labels": labels} if which == "train" else {"test_labels": labels, "n_test": 6}
    write_mnist(d, **kw)
    if labels.max() < 10:
        train, test = load_mnist(d)
        assert (train if which == "train" else test).y.tolist() == labels.tolist()
        return
    with pytest.raises(UserError) as err:
        load_mnist(d)
    msg = str(err.value)
    first = int(np.flatnonzero(labels >= 10)[0])
    stem = "train" if which == "train" else "t10k"
    assert msg.startswith(str(d / f"{stem}-labels-idx1-ubyte") + ":"), msg
    assert f"labels must lie in 0..9, got {labels.min()}..{labels.max()}" in msg
    assert f"(first bad one: label {labels[first]} of sample {first})" in msg


def test_mnist_count_mismatch_message(tmp_path):
    d = write_mnist(tmp_path / "m", n_train=6, train_labels=np.zeros(4))
    with pytest.raises(UserError) as err:
        load_mnist(d)
    assert str(err.value) == (f"MNIST train: 6 images in {d / 'train-images-idx3-ubyte'} but 4 labels in "
                              f"{d / 'train-labels-idx1-ubyte'}")


def test_mnist_pixels_scaled_and_layout(tmp_path):
    d = write_mnist(tmp_path / "m", gz=True)
    train, test = load_mnist(d)
    raw = read_idx(d / "train-images-idx3-ubyte.gz")
    torch.testing.assert_close(train.x, torch.from_numpy(raw.reshape(6, 784) / 255.0).float())
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64 and len(test) == 4


def test_mnist_empty_split_refused(tmp_path):
    d = write_mnist(tmp_path / "m", n_test=0)
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte: no images"):
        load_mnist(d)


def test_mnist_npz_rules(tmp_path):
    """Keras' layout: labels as a column [n, 1] are fine; float pixels must lie in [0, 1]
    (uint8 ones are divided by 255); missing arrays are named; a directory's mnist.npz."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, (5, 1))
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y[:, 0])
    train, test = load_mnist(tmp_path)
    assert train.y.tolist() == y[:, 0].tolist() == test.y.tolist()
    xf = x.astype(np.float32) / 255
    np.savez(tmp_path / "f.npz", x_train=xf, y_train=y, x_test=xf, y_test=y)
    torch.testing.assert_close(load_mnist(tmp_path / "f.npz")[0].x, torch.from_numpy(xf.reshape(5, 784)))
    xf[2, 3, 4] = 1.0 + 1e-3
    np.savez(tmp_path / "f.npz", x_train=xf, y_train=y, x_test=xf, y_test=y)
    with pytest.raises(UserError, match=r"f\.npz:x_train: float pixels must already lie in \[0, 1\]"):
        load_mnist(tmp_path / "f.npz")
    np.savez(tmp_path / "l.npz", x_train=x, y_train=np.c_[y, y], x_test=x, y_test=y)
    with pytest.raises(UserError, match=r"l\.npz:x_train: 5 images but labels of shape \[5, 2\]"):
        load_mnist(tmp_path / "l.npz")
    np.savez(tmp_path / "m.npz", x_train=x, y_train=y, x_test=x)
    with pytest.raises(UserError, match=r"missing arrays \['y_test'\]"):
        load_mnist(tmp_path / "m.npz")
    (tmp_path / "mnist.npz").unlink()
    with pytest.raises(UserError, match="no MNIST data in"):
        load_mnist(tmp_path)


def test_mnist_partial_idx_set_names_what_is_missing(tmp_path):
    d = write_mnist(tmp_path / "m")
    (d / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError) as err:
        load_mnist(d)
    assert f"missing {d / 't10k-labels-idx1-ubyte'}[.gz]" in str(err.value)
    assert "train-images" not in str(err.value).split("missing", 1)[1]


@FAST
@given(hnp.arrays(st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.bool_]),
                  hnp.array_shapes(min_dims=1, max_dims=3, max_side=30)),
       hnp.arrays(st.sampled_from([np.uint8, np.int64, np.float32]), hnp.array_shapes(min_dims=1, max_dims=2,
                                                                                       max_side=8)))
def test_mnist_npz_any_arrays_give_a_dataset_or_one_user_error(tmp_path, images, labels):
    p = tmp_path / "m.npz"
    np.savez(p, x_train=images, y_train=labels, x_test=images, y_test=labels)
    try:
        train, test = load_mnist(p)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert train.x.shape[1] == 784 and 0 <= float(train.x.min()) and float(train.x.max()) <= 1


# -- SHD ---------------------------------------------------------------------------------
def write_shd(path: Path, times, units, labels, *, drop: str | None = None, unit_dtype=np.uint16) -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group("spikes")
        if drop != "times":
            dt = g.create_dataset("times", (len(times),), dtype=h5py.vlen_dtype(np.float32))
            for i, t in enumerate(times):
                dt[i] = np.asarray(t, np.float32)
        if drop != "units":
            du = g.create_dataset("units", (len(units),), dtype=h5py.vlen_dtype(unit_dtype))
            for i, u in enumerate(units):
                du[i] = np.asarray(u, unit_dtype)
        if drop != "labels":
            f.create_dataset("labels", data=np.asarray(labels))
    return path


def shd_dir(tmp: Path, times, units, labels, **kw) -> Path:
    d = tmp / "shd"
    d.mkdir(parents=True, exist_ok=True)
    write_shd(d / "shd_train.h5", times, units, labels, **kw)
    write_shd(d / "shd_test.h5", [[0.5]], [[1]], [3])
    return d


GOOD = ([[0.1, 0.2], [0.3]], [[1, 2], [3]], np.array([0, 1], np.uint8))


@pytest.mark.parametrize("drop", ["times", "units", "labels"])
def test_shd_missing_dataset(tmp_path, drop):
    d = shd_dir(tmp_path, *GOOD, drop=drop)
    with pytest.raises(UserError, match="not an SHD file .needs spikes/times, spikes/units and labels"):
        load_shd(d)


def test_shd_spikes_not_a_group(tmp_path):
    d = tmp_path / "shd"
    d.mkdir()
    with h5py.File(d / "shd_train.h5", "w") as f:
        f["spikes"] = np.zeros(3)
        f["labels"] = np.zeros(3, np.uint8)
    write_shd(d / "shd_test.h5", [[0.5]], [[1]], [3])
    with pytest.raises(UserError, match="not an SHD file"):
        load_shd(d)


@pytest.mark.parametrize("times, words", [
    ([[0.1, math.nan], [0.3]], "sample 0 has nan"),
    ([[0.1, 0.2], [math.inf]], "sample 1 has inf"),
    ([[0.1, -0.5], [0.3]], "sample 0 has -0.5"),
])
def test_shd_times_finite_and_not_negative(tmp_path, times, words):
    d = shd_dir(tmp_path, times, GOOD[1], GOOD[2])
    with pytest.raises(UserError, match="spike times must be finite and >= 0 seconds") as err:
        load_shd(d)
    assert words in str(err.value)


def test_shd_unit_ids_out_of_range(tmp_path):
    d = shd_dir(tmp_path, GOOD[0], [[1, 2], [10]], GOOD[2])
    with pytest.raises(UserError, match="unit ids span 1..10 but n_channels=10"):
        load_shd(d, n_channels=10)
    assert load_shd(d, n_channels=11)[0].x.shape == (2, 100, 11)


def test_shd_unit_ids_whole_numbers(tmp_path):
    d = shd_dir(tmp_path, GOOD[0], [[1, 2.5], [3]], GOOD[2], unit_dtype=np.float32)
    with pytest.raises(UserError, match="unit ids must be whole numbers"):
        load_shd(d)
    d2 = shd_dir(tmp_path / "w", GOOD[0], [[1, 2.0], [3]], GOOD[2], unit_dtype=np.float32)
    assert load_shd(d2)[0].x[0].sum() == 2


def test_shd_ragged_sample(tmp_path):
    d = shd_dir(tmp_path, [[0.1, 0.2], [0.3, 0.4]], [[1, 2], [3]], GOOD[2])
    with pytest.raises(UserError, match="sample 1 has 2 spike times but 1 units"):
        load_shd(d)


@pytest.mark.parametrize("labels, words", [
    (np.array([0, 20], np.uint8), "labels must lie in 0..19, got 0..20 (first bad one: label 20 of sample 1)"),
    (np.array([-1, 3], np.int8), "got -1..3 (first bad one: label -1 of sample 0)"),
    (np.array([0.0, 1.0]), "labels must be integers, got float64"),
    (np.array([0, 1, 2], np.uint8), "2 spike-time lists, 2 unit lists and labels of shape [3] do not match"),
    (np.zeros((2, 1), np.uint8), "labels of shape [2, 1] do not match"),
])
def test_shd_labels(tmp_path, labels, words):
    d = shd_dir(tmp_path, GOOD[0], GOOD[1], labels)
    with pytest.raises(UserError) as err:
        load_shd(d)
    assert words in str(err.value)


def test_shd_no_samples(tmp_path):
    d = shd_dir(tmp_path, [], [], np.zeros(0, np.uint8))
    with pytest.raises(UserError, match="no samples"):
        load_shd(d)


def test_shd_frames_that_cannot_fit_are_refused(tmp_path, monkeypatch):
    import neuroplastic.resources as res

    d = shd_dir(tmp_path, *GOOD)
    monkeypatch.setattr(res, "available_memory", lambda: 1000)
    with pytest.raises(UserError, match=r"2 samples x 100 steps x 700 channels need at least 560.0 kB"):
        load_shd(d)


@st.composite
def shd_samples(draw):
    n = draw(st.integers(1, 4))
    times, units = [], []
    for _ in range(n):
        k = draw(st.integers(0, 6))
        times.append(draw(st.lists(st.floats(0, 1.5, width=32), min_size=k, max_size=k)))
        units.append(draw(st.lists(st.integers(0, 15), min_size=k, max_size=k)))
    labels = draw(st.lists(st.integers(0, 19), min_size=n, max_size=n))
    return times, units, np.array(labels, np.uint8)


@FAST
@given(shd_samples(), st.integers(1, 12))
def test_shd_binning_rule(tmp_path_factory, sample, steps):
    """x[i, t, u] = 1 exactly when sample i has a spike on unit u at a time in bin t of
    [0, 1] (a spike at exactly 1 in the last bin; later ones dropped)."""
    times, units, labels = sample
    d = shd_dir(tmp_path_factory.mktemp("s"), times, units, labels)
    train, _ = load_shd(d, time_steps=steps, max_time=1.0, n_channels=16)
    want = np.zeros((len(labels), steps, 16), np.float32)
    for i, (ts, us) in enumerate(zip(times, units)):
        for t, u in zip(np.asarray(ts, np.float32).astype(np.float64), us):
            if t <= 1.0:
                want[i, min(int(t * steps), steps - 1), u] = 1
    np.testing.assert_array_equal(train.x.numpy(), want)
    assert train.y.tolist() == labels.tolist() and train.n_classes == 20


@FAST
@given(shd_samples(), st.sampled_from(["nan", "negative", "unit", "label", "ragged"]))
def test_shd_any_broken_rule_is_one_user_error(tmp_path_factory, sample, broken):
    times, units, labels = sample
    times, units = [list(t) for t in times], [list(u) for u in units]
    if broken == "nan":
        times[0] = [*times[0], math.nan]
        units[0] = [*units[0], 0]
    elif broken == "negative":
        times[-1] = [*times[-1], -0.25]
        units[-1] = [*units[-1], 1]
    elif broken == "unit":
        times[0], units[0] = [*times[0], 0.5], [*units[0], 16]
    elif broken == "label":
        labels = labels.copy()
        labels[-1] = 20
    else:
        times[0] = [*times[0], 0.5]
    d = shd_dir(tmp_path_factory.mktemp("b"), times, units, labels)
    with pytest.raises(UserError) as err:
        load_shd(d, n_channels=16)
    assert str(err.value).startswith(str(d / "shd_train.h5")) and "\n" not in str(err.value)


# -- the other loaders and the streams ---------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(st.one_of(st.integers(-3, 40), st.booleans(), st.floats(allow_nan=True)),
       st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 2)))
def test_digits_any_arguments(size, fraction):
    try:
        train, test = load_digits(size=size, test_fraction=fraction)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert train.x.shape[1] == size * size and len(train) + len(test) == 1797


@FAST
@given(st.integers(-2, 50), st.integers(-2, 50), st.integers(-1, 120), st.integers(1, 60),
       st.integers(0, 12), st.floats(allow_nan=True, allow_infinity=True))
def test_cues_any_arguments(n_train, n_test, time_steps, n_channels, n_cues, p_cue):
    try:
        train, test = load_cues(n_train=n_train, n_test=n_test, time_steps=time_steps, n_channels=n_channels,
                                n_cues=n_cues, cue_steps=2, cue_gap=1, recall_steps=3, p_cue=p_cue)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert train.x.shape == (n_train, time_steps, n_channels) and set(train.y.tolist()) <= {0, 1}


def test_cues_that_cannot_fit_are_refused():
    with pytest.raises(UserError, match="samples x 80 steps x 40 channels need at least"):
        load_cues(n_train=10**12)


def _tiny(n=30, d=6, classes=10, seed=0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ArrayDataset(torch.rand(n, d, generator=g), torch.arange(n) % classes, classes)


@FAST
@given(st.sampled_from(["permuted", "split"]), st.integers(-2, 12), st.integers(-1, 11),
       st.one_of(st.none(), st.integers(-1, 40)), st.sampled_from(["task", "domain", "class", "x"]))
def test_streams_any_arguments(kind, n_tasks, k, cap, setting):
    train, test = _tiny(), _tiny(20, seed=1)
    try:
        if kind == "permuted":
            s = permuted(train, test, n_tasks, seed=3, max_per_task=cap)
        else:
            s = split(train, test, classes_per_task=k, n_tasks=n_tasks, setting=setting, max_per_task=cap)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert len(s) == n_tasks and all(len(t.train) <= (cap or 10**9) for t in s)


def test_permuted_copies_that_cannot_fit_are_refused(monkeypatch):
    import neuroplastic.resources as res

    monkeypatch.setattr(res, "available_memory", lambda: 10_000)
    train, test = _tiny(), _tiny(20, seed=1)
    # 4 permuted copies of (30 + 20) samples x 6 float32 features = 4800 bytes: fits
    assert len(permuted(train, test, 5)) == 5
    with pytest.raises(UserError, match=r"10 permuted tasks \(data.tasks\).*need at least 10.8 kB"):
        permuted(train, test, 10)


def test_make_stream_refuses_a_data_dir_it_would_ignore(tmp_path):
    with pytest.raises(UserError, match="'digits' reads no files"):
        make_stream("digits", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="'cues' reads no files"):
        make_stream("cues", data_dir=str(tmp_path))


def test_make_stream_permute_first():
    a = make_stream("digits", n_tasks=2, max_per_task=20)
    b = make_stream("digits", n_tasks=2, max_per_task=20, permute_first=True)
    assert not torch.equal(a[0].test.x, b[0].test.x)  # task 0: identity unless permute_first
    torch.testing.assert_close(a[1].test.x, b[1].test.x)
