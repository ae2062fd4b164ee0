"""Tests of overfit.data: shapes, the truth kept, and noise levels by Monte-Carlo.

Tolerances are 4 standard errors of the Monte-Carlo estimate. Every distinct sampler
configuration costs an XLA compile (about a second on 2 cores), so tests share them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_diabetes, make_classification

from overfit.data import (
    REAL_DATASETS,
    SHAPES,
    TARGETS,
    Dataset,
    bootstrap_indices,
    classification,
    linear,
    make_classification_preset,
    real,
    regression,
    resample,
    sphere,
    subsample,
)

KEY = jax.random.key(0)
SPLITS = ("train", "val", "test")


def _split(data: Dataset, name: str, split: str) -> np.ndarray:
    return np.asarray(getattr(data, f"{name}_{split}"))


def _all(data: Dataset, name: str) -> np.ndarray:
    return np.concatenate([_split(data, name, s) for s in SPLITS], axis=-1 if name != "x" else 0)


# ------------------------------------------------------------------------------ regression


def test_targets_are_the_documented_functions():
    x = jnp.array([0.0, 0.25, 0.5, 0.6, 1.0])
    np.testing.assert_allclose(TARGETS["line"](x), 2 * x + 0.9, rtol=1e-6)
    np.testing.assert_allclose(TARGETS["sin"](x), np.sin(2 * np.pi * x), atol=1e-6)
    np.testing.assert_allclose(TARGETS["cos"](x), np.cos(1.5 * np.pi * x), atol=1e-6)
    np.testing.assert_allclose(TARGETS["poly"](x), 0.5 - 2 * x + 2 * x**3, atol=1e-6)
    np.testing.assert_array_equal(TARGETS["step"](x), [0, 0, 0, 1, 1])


# Each target once, each x_dist at least once, three domains: one compile per case.
CASES = [
    ("line", "uniform", (0.0, 1.0), (40, 7, 300)),
    ("sin", "normal", (-2.0, 3.0), (40, 7, 300)),
    ("cos", "grid", (0.0, 1.0), (40, 7, 300)),
    ("poly", "uniform", (-1.0, 1.0), (1, 0, 0)),
    ("step", "grid", (-1.0, 1.0), (40, 7, 300)),
]


@pytest.mark.parametrize("target,x_dist,domain,sizes", CASES)
def test_regression_shapes_domain_and_truth(target, x_dist, domain, sizes):
    lo, hi = domain
    n_train, n_val, n_test = sizes
    data = regression(
        KEY, target=target, x_dist=x_dist, domain=domain,
        n_train=n_train, n_val=n_val, n_test=n_test, noise=0.2,
    )  # fmt: skip
    assert data.task == "regression" and data.n_classes == 0
    assert data.n_train == n_train and data.n_features == 1
    for split, n in zip(SPLITS, sizes, strict=True):
        x, y, f = (_split(data, v, split) for v in "xyf")
        assert x.shape == (n, 1) and y.shape == (n,) and f.shape == (n,)
        assert x.dtype == y.dtype == f.dtype == np.float32
        assert np.all((x >= lo) & (x <= hi))
        np.testing.assert_allclose(f, TARGETS[target](jnp.asarray(x[:, 0])), atol=1e-6)
        assert n == 0 or not np.allclose(y, f)  # noise was added
    if x_dist == "grid":
        np.testing.assert_allclose(data.x_train[:, 0], np.linspace(lo, hi, n_train), atol=1e-6)
        # Held-out inputs are uniform, not on the grid.
        assert len(np.unique(data.x_test)) == n_test
    if x_dist == "normal":
        x = _split(data, "x", "test")[:, 0]
        width = hi - lo
        # The clipped normal's std is a little below width / 4.
        assert abs(x.mean() - 0.5 * (lo + hi)) < 4 * 0.25 * width / np.sqrt(len(x))
        assert 0.18 * width < x.std() < 0.25 * width


def test_regression_noise_std_is_vmappable_and_matches():
    # 1000 data sets in one call, noise level a vmapped axis.
    sigmas = np.tile(np.array([0.0, 0.1, 0.5, 2.0], np.float32), 250)
    keys = jax.random.split(KEY, 1000)
    batch = jax.vmap(lambda k, s: regression(k, noise=s))(keys, jnp.asarray(sigmas))
    assert batch.x_train.shape == (1000, 30, 1) and batch.y_test.shape == (1000, 500)
    resid = np.asarray(batch.y_train - batch.f_train)
    assert np.all(resid[sigmas == 0] == 0)
    for s in (0.1, 0.5, 2.0):
        r = resid[sigmas == s].ravel()  # 7500 draws of s * N(0, 1)
        n = r.size
        assert abs(r.mean()) < 4 * s / np.sqrt(n)
        # mean(r^2) estimates s^2 with standard error s^2 sqrt(2 / n).
        assert abs(np.mean(r**2) - s**2) < 4 * s**2 * np.sqrt(2 / n)
    # The data sets differ from key to key.
    assert len(np.unique(np.asarray(batch.x_train[..., 0]), axis=0)) == 1000


def test_regression_deterministic_in_key_jittable_and_splits_independent():
    a, b = regression(KEY), regression(KEY)
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(leaf_a, leaf_b)
    c = regression(jax.random.key(1))
    assert not np.allclose(a.x_train, c.x_train)
    static = ("target", "n_train", "n_val", "n_test", "x_dist", "domain")
    big = jax.jit(regression, static_argnames=static)(KEY, target="cos", n_train=600)
    assert big.x_train.shape == (600, 1)
    rows = [set(np.asarray(_split(a, "x", s)).ravel().tolist()) for s in SPLITS]
    assert len(set().union(*rows)) == a.x_train.shape[0] + a.x_val.shape[0] + a.x_test.shape[0]
    # Each split has its own key: a larger training set leaves val/test as they were.
    np.testing.assert_allclose(big.x_test, a.x_test, atol=1e-6)
    np.testing.assert_allclose(big.y_val, a.y_val, atol=1e-6)


# -------------------------------------------------------------------------- classification

SIZES = dict(n_train=400, n_val=50, n_test=600)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_classification_shapes_balance_and_noise(shape):
    clean = classification(KEY, shape=shape, **SIZES)
    noisy = classification(KEY, shape=shape, noise=0.3, **SIZES)  # same compile
    assert clean.task == "classification" and clean.n_classes == 2
    for data in (clean, noisy):
        for split in SPLITS:
            x, y, f = (_split(data, v, split) for v in "xyf")
            n = SIZES[f"n_{split}"]
            assert x.shape == (n, 2) and x.dtype == np.float32
            assert y.dtype == f.dtype == np.int32 and set(np.unique(f)) <= {0, 1}
    for split in SPLITS:
        np.testing.assert_array_equal(_split(clean, "y", split), _split(clean, "f", split))
    # independent splits: no point of one split reappears in another
    rows = [set(map(tuple, np.asarray(_split(clean, "x", s)).tolist())) for s in SPLITS]
    assert sum(map(len, rows)) == len(set().union(*rows)) == sum(SIZES.values())
    f = _all(clean, "f")
    n = f.size
    assert abs(f.mean() - 0.5) < 4 * 0.5 / np.sqrt(n)
    x, xn = _all(clean, "x"), _all(noisy, "x")
    radius = np.linalg.norm(x, axis=1)
    if shape == "circle":
        np.testing.assert_array_equal(f == 1, radius < 2.5)
        assert np.all((radius < 2.5) | ((radius >= 3.5) & (radius <= 5.0)))
    if shape == "xor":
        np.testing.assert_array_equal(f == 1, x[:, 0] * x[:, 1] >= 0)
        assert np.all((np.abs(x) >= 0.3) & (np.abs(x) <= 5.3))
    if shape in ("circle", "xor"):
        # Playground: the point stays where it is, its label comes from a moved copy;
        # the truth stays the point's own label (it used to be the moved copy's).
        np.testing.assert_array_equal(xn, x)
        np.testing.assert_array_equal(_all(noisy, "f"), f)
        assert 0 < np.mean(_all(noisy, "y") != f) < 0.5
    else:
        np.testing.assert_array_equal(_all(noisy, "f"), f)
        np.testing.assert_array_equal(_all(noisy, "y"), f)
    if shape == "gauss":
        centre = np.where(f[:, None] == 1, 2.0, -2.0)
        # Same normal draws, std scaled from sqrt(0.5) to sqrt(0.5 + 7 * 0.3).
        np.testing.assert_allclose(xn - centre, (x - centre) * np.sqrt(2.6 / 0.5), atol=1e-4)
    if shape == "spiral":
        assert np.all(radius <= 5.0)
        assert 0 < np.abs(xn - x).max() <= 0.3 + 1e-5  # noise * U(-1, 1)
    if shape == "moons":
        d = (xn - x).ravel()
        assert abs(d.std() - 0.3) < 4 * 0.3 / np.sqrt(2 * d.size)


def test_classification_flip_rate_vmapped():
    flips = np.tile(np.array([0.0, 0.05, 0.2, 0.45], np.float32), 100)
    noises = np.tile(np.array([0.0, 0.1], np.float32), 200)
    keys = jax.random.split(KEY, 400)
    # spiral: its noise moves points, not labels, so every y != f is a flip
    batch = jax.vmap(lambda k, s, q: classification(k, shape="spiral", noise=s, flip=q))(
        keys, jnp.asarray(noises), jnp.asarray(flips)
    )
    assert batch.x_train.shape == (400, 200, 2)
    changed = np.asarray(_all(batch, "y") != _all(batch, "f"))  # (400, 800)
    for q in (0.0, 0.05, 0.2, 0.45):
        rows = changed[flips == q]
        rate, n = rows.mean(), rows.size
        assert abs(rate - q) < 4 * np.sqrt(q * (1 - q) / n) + 1e-12
    # Every split is flipped, not only the training one.
    for split in SPLITS:
        rows = (_split(batch, "y", split) != _split(batch, "f", split))[flips == 0.45]
        assert abs(rows.mean() - 0.45) < 4 * np.sqrt(0.45 * 0.55 / rows.size)


# ---------------------------------------------------------------------- the lesson's data


def test_preset_is_make_classification_split_70_15_15():
    data = make_classification_preset(seed=3, flip_y=0.0)
    assert (data.n_train, len(data.y_val), len(data.y_test)) == (70, 15, 15)
    assert data.task == "classification" and data.n_classes == 2
    X, y = make_classification(
        n_samples=100, n_features=2, n_redundant=0, n_informative=2,
        n_clusters_per_class=1, class_sep=1.5, flip_y=0, random_state=3,
    )  # fmt: skip
    np.testing.assert_allclose(_all(data, "x"), X.astype(np.float32))
    np.testing.assert_array_equal(_all(data, "f"), y)
    np.testing.assert_array_equal(_all(data, "y"), y)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    # Rounding: held-out counts round half up, training takes the rest.
    small = make_classification_preset(n_samples=10, split=(0.5, 0.25, 0.25))
    assert (small.n_train, len(small.y_val), len(small.y_test)) == (4, 3, 3)


def test_preset_deterministic_and_label_noise_has_sklearn_meaning():
    a, b = make_classification_preset(seed=7), make_classification_preset(seed=7)
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(leaf_a, leaf_b)
    assert not np.allclose(a.x_train, make_classification_preset(seed=8).x_train)
    # A redrawn label keeps its class half the time: the change rate is flip_y / 2.
    changed = np.concatenate(
        [
            _all(d, "y") != _all(d, "f")
            for d in (make_classification_preset(seed=s, flip_y=0.2) for s in range(200))
        ]
    )
    q, n = 0.1, changed.size
    assert abs(changed.mean() - q) < 4 * np.sqrt(q * (1 - q) / n)


# ------------------------------------------------------------------------------- real data


@pytest.mark.parametrize("name", REAL_DATASETS)
def test_real_loads_splits_and_standardizes_on_train(name):
    data = real(name, seed=0)
    n_classes = {"iris": 3, "digits": 10, "wine": 3, "breast_cancer": 2, "diabetes": 0}[name]
    assert data.n_classes == n_classes
    assert data.task == ("classification" if n_classes else "regression")
    n = sum(len(_split(data, "y", s)) for s in SPLITS)
    assert len(data.y_val) == len(data.y_test) == int(np.floor(0.15 * n + 0.5))
    x_tr = _split(data, "x", "train")
    assert x_tr.dtype == np.float32
    std = x_tr.std(axis=0)
    live = std > 0
    np.testing.assert_allclose(x_tr.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(std[live], 1, atol=1e-4)
    # Statistics come from the training split only.
    assert np.abs(_split(data, "x", "val").mean(axis=0)).max() > 1e-3
    if n_classes:
        assert data.y_train.dtype == np.int32
        f = _all(data, "f")
        np.testing.assert_array_equal(_all(data, "y"), f)
        p = np.bincount(f, minlength=n_classes) / n
        for split in SPLITS:  # stratified: class counts proportional to within ~1
            labels = _split(data, "f", split)
            counts = np.bincount(labels, minlength=n_classes)
            assert np.abs(counts - len(labels) * p).max() <= 1.5
    else:
        y = _split(data, "y", "train")
        assert abs(y.mean()) < 1e-4 and abs(y.std() - 1) < 1e-4
        np.testing.assert_array_equal(_all(data, "y"), _all(data, "f"))


def test_real_seed_determinism_and_raw_values():
    a, b, c = real("wine", seed=1), real("wine", seed=1), real("wine", seed=2)
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(leaf_a, leaf_b)
    assert not np.array_equal(a.f_train, c.f_train) or not np.allclose(a.x_train, c.x_train)
    raw = real("diabetes", normalize=False)
    X, y = load_diabetes(return_X_y=True)
    # A permutation of the rows: same sorted values.
    np.testing.assert_allclose(np.sort(_all(raw, "x").ravel()), np.sort(X.ravel()), rtol=1e-6)
    np.testing.assert_allclose(np.sort(_all(raw, "y")), np.sort(y), rtol=1e-6)


def test_real_label_noise_moves_to_another_class_at_the_rate():
    q = 0.3
    changed, moved_to = [], []
    for seed in range(5):
        d = real("digits", seed=seed, label_noise=q)
        y, f = _all(d, "y"), _all(d, "f")
        assert y.min() >= 0 and y.max() < 10
        changed.append(y != f)
        moved_to.append((y - f)[y != f] % 10)
    changed = np.concatenate(changed)
    n = changed.size
    assert abs(changed.mean() - q) < 4 * np.sqrt(q * (1 - q) / n)
    # Uniform over the 9 other classes: every shift 1..9 occurs.
    assert set(np.concatenate(moved_to)) == set(range(1, 10))


# ------------------------------------------------------------------ isotropic linear model


def test_sphere_has_exact_norm_and_no_direction():
    b = jax.vmap(lambda k: sphere(k, 8, 2.5))(jax.random.split(KEY, 4000))
    assert b.shape == (4000, 8) and b.dtype == jnp.float32
    np.testing.assert_allclose(jnp.sum(b**2, axis=1), 2.5, rtol=1e-5)
    b = np.asarray(b)
    # Each coordinate: mean 0, E b_i^2 = r2 / p, Var b_i <= r2 / p.
    assert np.abs(b.mean(axis=0)).max() < 4 * np.sqrt(2.5 / 8 / 4000)
    assert np.abs((b**2).mean() - 2.5 / 8) < 0.02


def test_linear_truth_norm_and_noise():
    data = linear(KEY, p=5, n_train=50, n_val=3, n_test=20000, r2=2.0, s2=0.5)
    assert data.x_train.shape == (50, 5) and data.x_val.shape == (3, 5)
    assert data.task == "regression" and data.y_test.dtype == np.float32
    # Recover b from the noiseless truth: f = x @ b exactly.
    b, *_ = np.linalg.lstsq(np.asarray(data.x_train, float), np.asarray(data.f_train), None)
    np.testing.assert_allclose(np.sum(b**2), 2.0, rtol=1e-4)
    np.testing.assert_allclose(data.f_test, np.asarray(data.x_test) @ b, atol=1e-4)
    r = np.asarray(data.y_test - data.f_test)
    assert abs(r.mean()) < 4 * np.sqrt(0.5 / r.size)
    assert abs(np.mean(r**2) - 0.5) < 4 * 0.5 * np.sqrt(2 / r.size)
    x = np.asarray(data.x_test)
    assert abs(x.mean()) < 4 / np.sqrt(x.size) and abs(x.var() - 1) < 4 * np.sqrt(2 / x.size)


def test_linear_with_coef_and_vmapped_noise():
    coef = jnp.arange(1.0, 5.0)
    s2 = jnp.array([0.0, 1.0, 0.0])
    batch = jax.vmap(lambda k, s: linear(k, p=4, n_train=6, n_test=10, s2=s, coef=coef))(
        jax.random.split(KEY, 3), s2
    )
    assert batch.x_train.shape == (3, 6, 4)
    np.testing.assert_allclose(batch.f_test, batch.x_test @ coef, atol=1e-5)
    np.testing.assert_array_equal(batch.y_train[0], batch.f_train[0])
    assert not np.allclose(batch.y_train[1], batch.f_train[1])


# ------------------------------------------------------------------------------- bootstrap


def test_bootstrap_indices():
    idx = bootstrap_indices(KEY, 7)
    assert idx.shape == (7,) and idx.dtype == jnp.int32
    assert np.all((np.asarray(idx) >= 0) & (np.asarray(idx) < 7))


def test_resample_draws_training_rows_with_replacement():
    n, reps = 30, 2000
    data = regression(KEY)  # shares the compile of the default configuration
    batch = jax.vmap(resample, in_axes=(0, None))(jax.random.split(KEY, reps), data)
    assert batch.x_train.shape == (reps, n, 1)
    np.testing.assert_array_equal(batch.x_test[5], data.x_test)
    np.testing.assert_array_equal(batch.y_val[7], data.y_val)
    # Every row is a whole training row: find it by its (unique) input.
    x0 = np.asarray(data.x_train[:, 0])
    order = np.argsort(x0)
    xs = np.asarray(batch.x_train[..., 0])
    pos = order[np.searchsorted(x0[order], xs)]
    np.testing.assert_array_equal(x0[pos], xs)
    np.testing.assert_array_equal(np.asarray(data.y_train)[pos], batch.y_train)
    np.testing.assert_array_equal(np.asarray(data.f_train)[pos], batch.f_train)
    # Distinct rows per draw: mean n (1 - (1 - 1/n)^n), about 63% of n.
    unique = np.array([len(np.unique(row)) for row in pos])
    a, b = (1 - 1 / n) ** n, (1 - 2 / n) ** n
    var = n * (n - 1) * b + n * a - n**2 * a**2
    assert abs(unique.mean() - n * (1 - a)) < 4 * np.sqrt(var / reps)
    assert not np.array_equal(pos[0], pos[1])


def test_subsample_keeps_distinct_rows_nested_across_sizes():
    data = regression(KEY)  # shares the compile of the default configuration
    keys = jax.random.split(KEY, 3)
    small = jax.vmap(subsample, in_axes=(0, None, None))(keys, data, 8)
    large = jax.vmap(subsample, in_axes=(0, None, None))(keys, data, 20)
    assert small.x_train.shape == (3, 8, 1) and large.x_train.shape == (3, 20, 1)
    np.testing.assert_array_equal(small.x_train, large.x_train[:, :8])  # nested
    np.testing.assert_array_equal(large.y_val[2], data.y_val)
    np.testing.assert_array_equal(large.x_test[0], data.x_test)
    x0 = np.asarray(data.x_train[:, 0])
    for draw in range(3):
        xs = np.asarray(large.x_train[draw, :, 0])
        assert len(np.unique(xs)) == 20 and np.isin(xs, x0).all()  # without replacement
        pos = np.searchsorted(np.sort(x0), xs)
        np.testing.assert_array_equal(np.asarray(data.y_train)[np.argsort(x0)[pos]],
                                      large.y_train[draw])
    assert not np.array_equal(large.x_train[0], large.x_train[1])
    with pytest.raises(ValueError, match=r"n=31 .*\[1, 30\]"):
        subsample(KEY, data, 31)
    # with replacement: nested bootstrap samples, of any size
    boot = jax.vmap(lambda k: subsample(k, data, 60, replace=True))(keys)
    again = jax.vmap(lambda k: subsample(k, data, 30, replace=True))(keys)
    np.testing.assert_array_equal(again.x_train, boot.x_train[:, :30])
    assert np.isin(np.asarray(boot.x_train), x0).all()
    distinct = [len(np.unique(np.asarray(row))) for row in again.x_train]
    assert max(distinct) < 30  # a bootstrap of 30 from 30 repeats points (P(none) ~ 1e-12)


# ---------------------------------------------------------------------------------- errors

ERRORS = [
    (lambda: regression(KEY, target="coss"), r"target='coss'.*Did you mean 'cos'\?"),
    (lambda: regression(KEY, x_dist="gaussian"), r"x_dist='gaussian'.*'uniform', 'normal'"),
    (lambda: regression(KEY, noise=-0.1), r"noise=-0.1 .*\[0, inf\)"),
    (lambda: regression(KEY, n_train=0), r"n_train=0 .*\[1, inf\)"),
    (lambda: regression(KEY, n_train=2.5), r"n_train=2.5 must be an integer"),
    (lambda: regression(KEY, n_val=-1), r"n_val=-1"),
    (lambda: regression(KEY, domain=(1.0, 0.0)), r"domain=\(1.0, 0.0\).*lo < hi"),
    (lambda: regression(KEY, domain=(0.0, np.inf)), r"domain="),
    # an array broadcast silently against a split whose length it happened to have
    (lambda: regression(KEY, n_train=30, n_val=30, noise=jnp.full(30, 0.1)),
     r"noise must be a scalar; got shape \(30,\)"),
    (lambda: classification(KEY, flip=jnp.full(200, 0.1)), r"flip must be a scalar"),
    (lambda: linear(KEY, p=3, n_train=5, s2=jnp.ones(5)), r"s2 must be a scalar"),
    (lambda: sphere(KEY, 3, r2=jnp.ones(3)), r"r2 must be a scalar"),
    (lambda: classification(KEY, shape="circel"), r"shape='circel'.*Did you mean 'circle'\?"),
    (lambda: classification(KEY, noise=-1.0), r"noise=-1.0"),
    (lambda: classification(KEY, flip=1.0), r"flip=1.0 .*\[0, 1\)"),
    (lambda: classification(KEY, flip=-0.1), r"flip=-0.1"),
    (lambda: classification(KEY, n_train=0), r"n_train=0"),
    (lambda: make_classification_preset(flip_y=1.5), r"flip_y=1.5 .*\[0, 1\]"),
    (lambda: make_classification_preset(split=(0.5, 0.3, 0.3)), r"split=.*sum to 1"),
    (lambda: make_classification_preset(split=(0.7, 0.3)), r"split=.*three fractions"),
    # empty validation and test splits, though every split was promised
    (lambda: make_classification_preset(n_samples=3),
     r"n_samples=3 gives 3 / 0 / 0 points: every split needs one"),
    (lambda: real("iris", seed=2**33), r"seed=8589934592 is out of range"),
    (lambda: real("iriss"), r"name='iriss'.*Did you mean 'iris'\?"),
    (lambda: real("iris", val_frac=0.0), r"val_frac=0.0 .*\(0, 1\)"),
    (lambda: real("iris", test_frac=1.0), r"test_frac=1.0 .*\(0, 1\)"),
    (lambda: real("iris", val_frac=0.5, test_frac=0.5), r"val_frac \+ test_frac = 1 must be < 1"),
    (lambda: real("iris", val_frac=0.49, test_frac=0.5),
     r"1 - val_frac - test_frac gives 1 points of 150; too few"),
    (lambda: real("iris", label_noise=1.0), r"label_noise=1.0 .*\[0, 1\)"),
    (lambda: real("diabetes", label_noise=0.1), r"label_noise=0.1 .*regression set 'diabetes'"),
    (lambda: sphere(KEY, 0), r"p=0 .*\[1, inf\)"),
    (lambda: sphere(KEY, 3, r2=-1.0), r"r2=-1.0"),
    (lambda: linear(KEY, p=0, n_train=5), r"p=0"),
    (lambda: linear(KEY, p=3, n_train=0), r"n_train=0"),
    (lambda: linear(KEY, p=3, n_train=5, r2=-1.0), r"r2=-1.0"),
    (lambda: linear(KEY, p=3, n_train=5, s2=-0.5), r"s2=-0.5"),
    (lambda: linear(KEY, p=3, n_train=5, coef=jnp.ones(4)), r"coef has shape \(4,\)"),
    # an int seed failed deep inside jax.random ("invalid PRNG key data")
    (lambda: regression(0), r"key must be a PRNG key, jax.random.key\(seed\); got int 0"),
    (lambda: classification(1), r"key must be a PRNG key"),
    (lambda: linear(0, p=3, n_train=5), r"key must be a PRNG key"),
    (lambda: sphere(0, 3), r"key must be a PRNG key"),
    (lambda: bootstrap_indices(0, 5), r"key must be a PRNG key"),
    (lambda: resample(0, regression(KEY)), r"key must be a PRNG key"),
    (lambda: subsample(0, regression(KEY), 3), r"key must be a PRNG key"),
]


def test_resample_and_subsample_refuse_a_batch():
    """A batch used to have its rows drawn from the batch axis, clamped, without an error."""
    batch = jax.vmap(lambda k: regression(k, n_train=30))(jax.random.split(KEY, 4))
    for call in (lambda: resample(KEY, batch), lambda: subsample(KEY, batch, 3)):
        with pytest.raises(ValueError, match=r"single data set.*shape \(4, 30, 1\)"):
            call()
    one = jax.vmap(resample)(jax.random.split(KEY, 4), batch)  # the way the message shows
    assert one.x_train.shape == (4, 30, 1)


@pytest.mark.parametrize("call,match", ERRORS)
def test_bad_input_names_the_field(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_a_constant_column_with_rounding_noise_is_centred_not_blown_up():
    from overfit.data import _standardize

    X = np.ones((10, 3))
    X[:, 1] = 0.1 + 1e-17 * np.arange(10)  # "constant" up to rounding
    X[:, 2] = np.arange(10)
    Z = _standardize(X, 10)
    assert np.abs(Z[:, :2]).max() < 1e-12
    np.testing.assert_allclose(Z[:, 2].std(), 1.0)
