"""Read IDX files (the MNIST format) from a local path; no download.

An IDX file is a big-endian array: two zero bytes, a type code, the number of
dimensions ``k``, then ``k`` uint32 sizes, then the values in C order. Gzipped
files (``.gz``, as MNIST is usually distributed) are read the same way.

    type code  0x08 uint8   0x09 int8   0x0B int16   0x0C int32
               0x0D float32 0x0E float64
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from overfit._checks import check_int, check_range
from overfit.data import Dataset, _host_dataset, _split_counts

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type code -> big-endian numpy dtype."""


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # the gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # zlib.error: a corrupted body
            raise ValueError(f"{path}: a gzip file that cannot be decompressed ({e}).") from None
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array.

    Args:
        path: the file.

    Returns:
        An array of the file's shape ``(d_1, ..., d_k)`` in native byte order:
        uint8 for MNIST images ``(n, 28, 28)`` and labels ``(n,)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed file (bad magic, unknown type code, or a size
            that does not match the header), naming what is wrong.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header (4 bytes).")
    if raw[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an IDX file: the magic number must start with two zero "
                         f"bytes; got {raw[:2].hex()}.")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X}; known: {known}.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: the header names {ndim} dimensions but the file ends "
                         f"after {len(raw)} bytes.")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: shape {shape} of {dtype.name} needs {expected} data bytes; "
                         f"the file holds {len(raw) - header}.")
    values = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def _find(directory: Path, split: str, what: str) -> Path:
    """The IDX file of ``split`` ("train" / "t10k") and ``what`` ("images" / "labels")."""
    rank = 3 if what == "images" else 1
    names = [f"{split}-{what}-idx{rank}-ubyte", f"{split}-{what}.idx{rank}-ubyte"]
    candidates = [directory / (n + ext) for n in names for ext in ("", ".gz")]
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(p.name for p in candidates)
    raise FileNotFoundError(f"no MNIST {split} {what} in {directory}; looked for {tried}.")


def load_mnist_arrays(directory: str | os.PathLike, split: str = "train"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, rows, cols)`` uint8 and labels ``(n,)`` of one MNIST split.

    Args:
        directory: folder holding the four IDX files under their usual names
            (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``; ``.gz``
            or the ``train-images.idx3-ubyte`` spelling also work). Fashion-MNIST
            uses the same names.
        split: ``"train"`` or ``"t10k"`` (the test set).
    """
    if split not in ("train", "t10k"):
        raise ValueError(f"split={split!r}; choose 'train' or 't10k'.")
    directory = Path(directory)
    images = read_idx(_find(directory, split, "images"))
    labels = read_idx(_find(directory, split, "labels"))
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"{directory}: {split} images must be (n, rows, cols) and labels (n,); "
                         f"got {images.shape} and {labels.shape}.")
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} {split} images but {len(labels)} labels.")
    return images, labels


def mnist(
    directory: str | os.PathLike,
    *,
    seed: int = 0,
    val_frac: float = 1 / 6,
    n_train: int | None = None,
    label_noise: float = 0.0,
    normalize: bool = True,
) -> Dataset:
    """MNIST (or any data set in its four IDX files) as a :class:`~overfit.data.Dataset`.

    The ``t10k`` files are the test split. The ``train`` files are split as
    :func:`overfit.data.real` does: validation points drawn by a stratified
    ``train_test_split`` with ``random_state=seed`` (``floor(val_frac * n + 0.5)``
    of them; 1/6 of 60 000 gives the usual 50 000 / 10 000), the rest for
    training, of which ``n_train`` (stratified too) are kept when given: a small
    training set is the easy way to watch a network overfit.

    Pixels are scaled to [0, 1]; with ``normalize`` every pixel is then
    standardized with the mean and std of the training split (a constant
    training pixel, such as MNIST's corners, is only centred, in [0, 1] units).

    Args:
        directory: folder with the IDX files (see :func:`load_mnist_arrays`).
        seed: seed of the split and of the label noise, >= 0.
        val_frac: validation fraction of the train files, in (0, 1).
        n_train: keep this many training points (>= n_classes), or None for all.
        label_noise: probability in [0, 1) that a label is replaced by a uniformly
            random other class, independently on every split.
        normalize: standardize as above.

    Returns:
        Dataset with ``x_*`` ``(n_split, rows * cols)`` float32, ``y_*`` int32 labels
        after the label noise, ``f_*`` the files' labels. Task ``"classification"``,
        ``n_classes`` = largest label + 1 (10 for MNIST).
    """
    from sklearn.model_selection import train_test_split  # slow to import

    seed = check_int("seed", seed, lo=0, hi=2**32 - 1)  # scikit-learn's random_state
    check_range("val_frac", val_frac, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    check_range("label_noise", label_noise, lo=0.0, hi=1.0, hi_open=True)
    x_rest, y_rest = load_mnist_arrays(directory, "train")
    x_test, y_test = load_mnist_arrays(directory, "t10k")
    if x_rest.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"train images are {x_rest.shape[1:]} but t10k images "
                         f"{x_test.shape[1:]}.")
    n_classes = int(max(y_rest.max(), y_test.max())) + 1
    _, n_val, _ = _split_counts(len(x_rest), (0.0, val_frac, 0.0))
    if not n_classes <= n_val <= len(x_rest) - n_classes:
        raise ValueError(f"val_frac={val_frac:g} gives {n_val} of {len(x_rest)} points; "
                         f"each split needs at least {n_classes} (one per class).")
    train, val = train_test_split(np.arange(len(x_rest)), test_size=n_val, random_state=seed,
                                  stratify=y_rest)
    if n_train is not None:
        n_train = check_int("n_train", n_train, lo=n_classes, hi=len(train))
        if n_train < len(train):
            train = train_test_split(train, train_size=n_train, random_state=seed,
                                     stratify=y_rest[train])[0]
    X = np.concatenate([x_rest[train], x_rest[val], x_test]).reshape(
        len(train) + len(val) + len(x_test), -1).astype(float)
    y = np.concatenate([y_rest[train], y_rest[val], y_test]).astype(np.int64)
    # statistics of the integer pixels, so a constant one has an exactly zero std;
    # it is only centred, in the [0, 1] units of the unnormalized pixels
    mean, std = X[: len(train)].mean(0), X[: len(train)].std(0)
    X = (X - mean) / np.where(std > 0, std, 255.0) if normalize else X / 255.0
    clean = y
    if label_noise:
        rng = np.random.default_rng(seed)
        # as data.real: adding 1..K-1 mod K moves to a uniformly random other class
        shift = rng.integers(1, n_classes, size=len(y))
        y = np.where(rng.random(len(y)) < label_noise, (y + shift) % n_classes, y)
    return _host_dataset(X, y, clean, len(train), len(val), "classification", n_classes)
