"""The IDX reader and the MNIST loader, on tiny files written here."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

import overfit as of
from overfit.idx import read_idx


def _idx(values: np.ndarray, code: int, dtype: str) -> bytes:
    """The IDX bytes of ``values``: magic (0, 0, code, ndim), big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, code, values.ndim)
    header += struct.pack(f">{values.ndim}I", *values.shape)
    return header + values.astype(dtype).tobytes()


def test_read_idx_uint8_exact(tmp_path):
    raw = bytes([0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3, *range(12)])
    (tmp_path / "a").write_bytes(raw)
    out = read_idx(tmp_path / "a")
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, np.arange(12).reshape(2, 2, 3))


@pytest.mark.parametrize("code, dtype", [(0x09, ">i1"), (0x0B, ">i2"), (0x0C, ">i4"),
                                         (0x0D, ">f4"), (0x0E, ">f8")])
def test_read_idx_big_endian_types(tmp_path, code, dtype):
    values = np.array([[-3, 0, 1], [2, 100, -7]])
    (tmp_path / "a").write_bytes(_idx(values, code, dtype))
    out = read_idx(tmp_path / "a")
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, values)


def test_read_idx_0x0b_byte_order(tmp_path):
    # 0x0102 big-endian is 258, little-endian would read 513
    (tmp_path / "a").write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 1, 0x01, 0x02]))
    assert read_idx(tmp_path / "a").tolist() == [258]


def test_read_idx_gzip(tmp_path):
    values = np.arange(6, dtype=np.uint8)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(values, 0x08, "u1")))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), values)


@pytest.mark.parametrize("raw, message", [
    (b"\x00\x00", "too short for an IDX header"),
    (bytes([1, 0, 0x08, 1, 0, 0, 0, 1, 5]), "magic number must start with two zero bytes"),
    (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]), "unknown IDX type code 0x07"),
    (bytes([0, 0, 0x08, 2, 0, 0, 0, 1]), "names 2 dimensions but the file ends"),
    (bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 5, 6]), r"shape \(3,\) of uint8 needs 3 data bytes; "
                                               "the file holds 2"),
    (bytes([0, 0, 0x0C, 1, 0, 0, 0, 1, 0, 0, 0, 1, 9]), "needs 4 data bytes; the file holds 5"),
    (b"\x1f\x8bnot really gzip", "cannot be decompressed"),
])
def test_read_idx_malformed(tmp_path, raw, message):
    (tmp_path / "bad").write_bytes(raw)
    with pytest.raises(ValueError, match=message):
        read_idx(tmp_path / "bad")


def test_read_idx_corrupted_gzip_body_is_a_value_error(tmp_path):
    """zlib's own error escaped (not a ValueError, the file unnamed): the CLI printed a
    traceback as if the code were broken."""
    body = bytearray(gzip.compress(_idx(np.arange(100), 0x08, "u1"), mtime=0))
    body[10] ^= 1  # the first deflate block header: "invalid stored block lengths"
    (tmp_path / "bad.gz").write_bytes(bytes(body))
    with pytest.raises(ValueError, match=r"bad.gz: a gzip file that cannot be decompressed"):
        read_idx(tmp_path / "bad.gz")


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------------------------- mnist

# 3 classes x 4 training images of 2 x 2 pixels; 3 test images
TRAIN_Y = np.array([0, 1, 2] * 4, np.uint8)
TRAIN_X = (np.arange(12 * 4).reshape(12, 2, 2) * 5).astype(np.uint8)
TRAIN_X[:, 0, 0] = 7  # a constant pixel, as MNIST's corners
TEST_Y = np.array([2, 0, 1], np.uint8)
TEST_X = np.array([[[0, 255], [51, 102]]] * 3, np.uint8)


def _write_mnist(folder, gz=False):
    ext = ".gz" if gz else ""
    pack = gzip.compress if gz else (lambda b: b)
    for name, values, dims in (("train-images-idx3-ubyte", TRAIN_X, 3),
                               ("train-labels-idx1-ubyte", TRAIN_Y, 1),
                               ("t10k-images-idx3-ubyte", TEST_X, 3),
                               ("t10k-labels-idx1-ubyte", TEST_Y, 1)):
        assert values.ndim == dims
        (folder / (name + ext)).write_bytes(pack(_idx(values, 0x08, "u1")))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_splits_and_values(tmp_path, gz):
    _write_mnist(tmp_path, gz)
    d = of.mnist(tmp_path, val_frac=0.25, normalize=False)
    assert (d.task, d.n_classes) == ("classification", 3)
    assert d.x_train.shape == (9, 4) and d.x_val.shape == (3, 4) and d.x_test.shape == (3, 4)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    # the t10k files are the test split, in order, pixels / 255
    np.testing.assert_allclose(d.x_test[0], [0.0, 1.0, 0.2, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(d.y_test, TEST_Y)
    # stratified: one validation image per class; together the splits are the train file
    assert sorted(np.asarray(d.y_val).tolist()) == [0, 1, 2]
    seen = np.concatenate([d.x_train, d.x_val]) * 255
    expected = TRAIN_X.reshape(12, 4).astype(float)
    assert sorted(map(tuple, np.rint(seen).tolist())) == sorted(map(tuple, expected.tolist()))
    # each image keeps its own label
    for x, y in zip(np.concatenate([d.x_train, d.x_val]), np.concatenate([d.y_train, d.y_val])):
        row = int(np.flatnonzero((np.rint(x * 255) == expected).all(axis=1))[0])
        assert y == TRAIN_Y[row]
    np.testing.assert_array_equal(d.f_train, d.y_train)


def test_mnist_standardizes_with_training_statistics(tmp_path):
    _write_mnist(tmp_path)
    raw = of.mnist(tmp_path, val_frac=0.25, normalize=False)
    d = of.mnist(tmp_path, val_frac=0.25)
    x_tr = np.asarray(raw.x_train, float)
    mean, std = x_tr.mean(0), x_tr.std(0)
    np.testing.assert_allclose(np.asarray(d.x_train).mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.x_train).std(0)[1:], 1.0, rtol=1e-5)
    # the constant pixel is only centred; held-out splits use the training statistics
    assert std[0] == 0
    np.testing.assert_allclose(d.x_test[:, 0], -7 / 255, rtol=1e-6)  # test pixel 0, train 7
    np.testing.assert_allclose(d.x_test[:, 1:], (raw.x_test[:, 1:] - mean[1:]) / std[1:],
                               rtol=1e-5)


def test_mnist_n_train_and_label_noise(tmp_path):
    _write_mnist(tmp_path)
    d = of.mnist(tmp_path, val_frac=0.25, n_train=6, seed=3)
    assert d.x_train.shape == (6, 4)
    assert sorted(np.asarray(d.f_train).tolist()) == [0, 0, 1, 1, 2, 2]  # stratified subset
    noisy = of.mnist(tmp_path, val_frac=0.25, n_train=6, seed=3, label_noise=0.9)
    for split in ("train", "val", "test"):
        y, f = np.asarray(getattr(noisy, f"y_{split}")), np.asarray(getattr(noisy, f"f_{split}"))
        np.testing.assert_array_equal(f, np.asarray(getattr(d, f"f_{split}")))
        assert np.all((y >= 0) & (y < 3))
    changed = np.concatenate([noisy.y_train != noisy.f_train, noisy.y_val != noisy.f_val,
                              noisy.y_test != noisy.f_test])
    assert changed.mean() > 0.5  # 15 labels at 0.9: a flipped label is always a new class


def test_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        of.mnist(tmp_path)
    _write_mnist(tmp_path)
    with pytest.raises(ValueError, match="val_frac=0.05 gives 1 of 12"):
        of.mnist(tmp_path, val_frac=0.05)
    with pytest.raises(ValueError, match="n_train=2 is out of range"):
        of.mnist(tmp_path, val_frac=0.25, n_train=2)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(TEST_Y[:2], 0x08, "u1"))
    with pytest.raises(ValueError, match="3 t10k images but 2 labels"):
        of.mnist(tmp_path, val_frac=0.25)
