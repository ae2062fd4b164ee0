"""Datasets with controllable noise, the noiseless truth kept on every split.

Every sampler of a generating distribution is a pure function of a PRNG key, so
``jax.vmap(lambda k: regression(k, n_train=30))(keys)`` draws thousands of
independent training sets in one call. Fixed real data sets are loaded once on
the host and resampled with :func:`resample`.

Shapes: inputs ``x_*`` are ``(n, d)`` float32; targets ``y_*`` are ``(n,)``
(float32 for regression, int32 class labels for classification); the truth
``f_*`` has the shape of ``y_*``: the noiseless regression function, or the
class a point was drawn from, before any label noise (for circle and xor, the
point's own side of the boundary; for real data, the label before the flip).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from overfit._checks import (
    check_choice,
    check_domain,
    check_int,
    check_key,
    check_range,
    check_scalar,
)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits with the noiseless truth kept.

    A pytree: array fields are leaves (so a batch of data sets is one Dataset
    whose leaves carry a leading axis), ``task`` and ``n_classes`` are static.

    Attributes:
        x_train, x_val, x_test: inputs, ``(n_split, d)``.
        y_train, y_val, y_test: observed (noisy) targets, ``(n_split,)``.
        f_train, f_val, f_test: noiseless truth, ``(n_split,)``.
        task: ``"regression"`` or ``"classification"``.
        n_classes: number of classes (0 for regression).
    """

    x_train: Array
    y_train: Array
    f_train: Array
    x_val: Array
    y_val: Array
    f_val: Array
    x_test: Array
    y_test: Array
    f_test: Array
    task: str = dataclasses.field(default="regression", metadata=dict(static=True))
    n_classes: int = dataclasses.field(default=0, metadata=dict(static=True))

    @property
    def n_features(self) -> int:
        """Input dimension d."""
        return self.x_train.shape[-1]

    def __repr__(self) -> str:  # shapes, not thousands of numbers
        if not hasattr(self.x_train, "shape"):  # a tree.map over data: every field as it is
            fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                               for f in dataclasses.fields(self))
            return f"Dataset({fields})"
        shapes = ", ".join(f"x_{s}={np.shape(getattr(self, f'x_{s}'))}"
                           for s in ("train", "val", "test"))
        classes = f", n_classes={self.n_classes}" if self.task == "classification" else ""
        return f"Dataset({self.task!r}{classes}, {shapes})"

    @property
    def n_train(self) -> int:
        """Number of training points."""
        return self.x_train.shape[-2]


# ----------------------------------------------------------------------------- 1-D truths

TARGETS: dict[str, Callable[[Array], Array]] = {
    # The lesson's linear-regression demo: y = 2x + 0.9 + noise.
    "line": lambda x: 2.0 * x + 0.9,
    "sin": lambda x: jnp.sin(2.0 * jnp.pi * x),
    # scikit-learn's "Underfitting vs. Overfitting" example.
    "cos": lambda x: jnp.cos(1.5 * jnp.pi * x),
    # A cubic, so a degree-3 polynomial has zero bias; values in [-0.27, 1.27] on [-1, 1].
    "poly": lambda x: 0.5 - 2.0 * x + 2.0 * x**3,
    # Jump from 0 to 1 at x = 0.5 whatever the domain: a truth no polynomial fits well.
    "step": lambda x: jnp.where(x > 0.5, 1.0, 0.0),
}
"""Noiseless regression functions ``f(x)``: ``(n,)`` inputs to ``(n,)`` values."""

X_DISTS = ("uniform", "normal", "grid")
LINKS = ("identity", *TARGETS)
"""Links ``g`` of the single-index source ``f = g(x . b)`` (:func:`linear`)."""


def _rows(sample: Callable[..., Array], key: Array, n: int, n_pad: int, width: int) -> Array:
    """The first ``n`` rows of a ``(n_pad, width)`` float32 draw of ``sample``.

    Every split draws the same padded shape because XLA compiles one copy of the PRNG
    per distinct shape: equal shapes cut the compile time of a vmapped sampler about
    in half. The rows kept do not depend on ``n``, and under JAX's default
    (partitionable) PRNG not on ``n_pad`` either.
    """
    return sample(key, (n_pad, width), jnp.float32)[:n]


def _sample_x(key: Array, n: int, n_pad: int, x_dist: str, lo: float, hi: float) -> Array:
    """Inputs of one split, ``(n, 1)`` float32 inside ``[lo, hi]``."""
    if x_dist == "grid":
        return jnp.linspace(lo, hi, n, dtype=jnp.float32)[:, None]
    if x_dist == "normal":
        # std = width/4 puts about 95% of the mass inside before clipping.
        z = _rows(jax.random.normal, key, n, n_pad, 1)
        return jnp.clip(0.5 * (lo + hi) + 0.25 * (hi - lo) * z, lo, hi)
    return lo + (hi - lo) * _rows(jax.random.uniform, key, n, n_pad, 1)


def _regression_split(
    keys: Array,
    n: int,
    n_pad: int,
    f: Callable[[Array], Array],
    noise: Any,
    x_dist: str,
    lo: float,
    hi: float,
) -> tuple[Array, Array, Array]:
    kx, ke = keys
    x = _sample_x(kx, n, n_pad, x_dist, lo, hi)
    fx = f(x[:, 0]).astype(jnp.float32)
    y = fx + jnp.asarray(noise, jnp.float32) * _rows(jax.random.normal, ke, n, n_pad, 1)[:, 0]
    return x, y, fx


def regression(
    key: Array,
    *,
    target: str = "cos",
    n_train: int = 30,
    n_val: int = 30,
    n_test: int = 500,
    noise: float | Array = 0.1,
    x_dist: str = "uniform",
    domain: tuple[float, float] = (0.0, 1.0),
) -> Dataset:
    """Draw a 1-D regression data set ``y = f(x) + noise * N(0, 1)``.

    Each split has its own key, so changing ``n_train`` leaves the validation and
    test draws of the same ``key`` unchanged (under JAX's default partitionable
    PRNG, which keeps a drawn row independent of how many rows are drawn).

    Args:
        key: PRNG key.
        target: name of the truth in :data:`TARGETS`.
        n_train: training points, >= 1 (static).
        n_val: validation points, >= 0 (static).
        n_test: test points, >= 0 (static).
        noise: standard deviation of the Gaussian noise, in the units of ``y``
            (not a variance), >= 0. May be traced, e.g. a vmapped axis.
        x_dist: ``"uniform"`` on the domain; ``"normal"`` centred on the domain with
            std = width / 4, clipped to the domain; ``"grid"``: training inputs evenly
            spaced over the domain (end points included), validation and test uniform.
        domain: ``(lo, hi)`` with lo < hi (static).

    Returns:
        Dataset with ``x_*`` of shape ``(n_split, 1)`` float32, ``y_*`` and ``f_*`` of
        shape ``(n_split,)`` float32, ``f_* = f(x_*[:, 0])``; task ``"regression"``.
    """
    check_key("key", key)
    check_choice("target", target, TARGETS)
    check_choice("x_dist", x_dist, X_DISTS)
    n_train = check_int("n_train", n_train, lo=1)
    n_val = check_int("n_val", n_val, lo=0)
    n_test = check_int("n_test", n_test, lo=0)
    check_range("noise", check_scalar("noise", noise), lo=0.0)
    lo, hi = check_domain(domain)
    sizes = (n_train, n_val, n_test)
    return _regression(key, noise, target=target, sizes=sizes, x_dist=x_dist, domain=(lo, hi))


# One compiled program per configuration: run eagerly, the many small ops would each
# compile on first use, which costs seconds.
@functools.partial(jax.jit, static_argnames=("target", "sizes", "x_dist", "domain"))
def _regression(
    key: Array,
    noise: Any,
    *,
    target: str,
    sizes: tuple[int, int, int],
    x_dist: str,
    domain: tuple[float, float],
) -> Dataset:
    f, (lo, hi), n_pad = TARGETS[target], domain, max(sizes)
    # One split into all keys: every split of the key is a PRNG copy to compile.
    k_train, k_val, k_test = jax.random.split(key, (3, 2))
    # Only the training inputs follow a grid: held-out error should average over x.
    held_out = "uniform" if x_dist == "grid" else x_dist
    tr = _regression_split(k_train, sizes[0], n_pad, f, noise, x_dist, lo, hi)
    va = _regression_split(k_val, sizes[1], n_pad, f, noise, held_out, lo, hi)
    te = _regression_split(k_test, sizes[2], n_pad, f, noise, held_out, lo, hi)
    return Dataset(*tr, *va, *te, "regression", 0)


# -------------------------------------------------------------- 2-D classification shapes
# TensorFlow Playground's generators (src/dataset.ts), drawn i.i.d. so every split is a
# sample from one distribution: each point's class is a fair coin (the playground makes
# exactly half of each), and the spiral position is uniform (the playground steps along
# it). Playground's positive class is label 1, its negative class label 0.


def _circle(c: Array, u: Array, z: Array, noise: Array) -> tuple[Array, Array, Array]:
    del z
    # Class 1 inside radius 2.5, class 0 in the ring 3.5..5; the radius, not the area,
    # is uniform, as in Playground.
    r = jnp.where(c == 1, 2.5 * u[:, 0], 3.5 + 1.5 * u[:, 0])
    angle = 2.0 * jnp.pi * u[:, 1]
    x = jnp.stack([r * jnp.sin(angle), r * jnp.cos(angle)], axis=-1)
    # Playground: the label comes from a jittered copy of the point, the point stays clean;
    # so the noise is label noise and the truth is the point's own side of the circle.
    jitter = noise * (10.0 * u[:, 2:4] - 5.0)
    label = jnp.linalg.norm(x + jitter, axis=-1) < 2.5
    return x, label.astype(jnp.int32), c


def _xor(c: Array, u: Array, z: Array, noise: Array) -> tuple[Array, Array, Array]:
    del c, z  # the label is the quadrant
    x = 10.0 * u[:, 0:2] - 5.0
    # Padding keeps points 0.3 away from the axes, the class boundary.
    x = x + jnp.where(x > 0, 0.3, -0.3)
    moved = x + noise * (10.0 * u[:, 2:4] - 5.0)
    label = (moved[:, 0] * moved[:, 1] >= 0).astype(jnp.int32)
    return x, label, (x[:, 0] * x[:, 1] >= 0).astype(jnp.int32)


def _gauss(c: Array, u: Array, z: Array, noise: Array) -> tuple[Array, Array, Array]:
    del u
    # Playground maps noise 0..0.5 linearly onto the variance 0.5..4.
    std = jnp.sqrt(0.5 + 7.0 * noise)
    centre = jnp.where(c == 1, 2.0, -2.0)[:, None]
    return centre + std * z, c, c


def _spiral(c: Array, u: Array, z: Array, noise: Array) -> tuple[Array, Array, Array]:
    del z
    r = 5.0 * u[:, 0]
    t = 3.5 * jnp.pi * u[:, 0] + jnp.where(c == 1, 0.0, jnp.pi)
    x = jnp.stack([r * jnp.sin(t), r * jnp.cos(t)], axis=-1)
    return x + noise * (2.0 * u[:, 1:3] - 1.0), c, c


def _moons(c: Array, u: Array, z: Array, noise: Array) -> tuple[Array, Array, Array]:
    t = jnp.pi * u[:, 0]
    # scikit-learn's make_moons: class 0 the upper arc, class 1 the shifted lower arc.
    upper = jnp.stack([jnp.cos(t), jnp.sin(t)], axis=-1)
    lower = jnp.stack([1.0 - jnp.cos(t), 0.5 - jnp.sin(t)], axis=-1)
    return jnp.where((c == 1)[:, None], lower, upper) + noise * z, c, c


SHAPES: dict[str, Callable[[Array, Array, Array, Array], tuple[Array, Array, Array]]] = {
    "circle": _circle,
    "xor": _xor,
    "gauss": _gauss,
    "spiral": _spiral,
    "moons": _moons,
}
"""2-D generators ``(coin, u, z, noise) -> (x (n, 2), label (n,), truth (n,))``, int32
labels: ``label`` is what the noise makes of ``truth``, the noiseless class.

``coin`` is the ``(n,)`` int32 class draw, ``u`` ``(n, 4)`` uniform on [0, 1) and ``z``
``(n, 2)`` standard normal: the randomness a generator may use.
"""


def _classification_split(
    keys: Array, n: int, n_pad: int, shape: str, noise: Any, flip: Any
) -> tuple[Array, Array, Array]:
    # Two blocks rather than many small draws: each draw is a copy of the PRNG in the
    # compiled program, and compile time grows with their number. XLA drops the
    # normal block for the shapes that do not use it.
    u = _rows(jax.random.uniform, keys[0], n, n_pad, 6)
    z = _rows(jax.random.normal, keys[1], n, n_pad, 2)
    coin = (u[:, 0] < 0.5).astype(jnp.int32)
    x, label, f = SHAPES[shape](coin, u[:, 2:], z, jnp.asarray(noise, jnp.float32))
    flipped = u[:, 1] < flip
    return x.astype(jnp.float32), jnp.where(flipped, 1 - label, label), f


def classification(
    key: Array,
    *,
    shape: str = "circle",
    n_train: int = 200,
    n_val: int = 100,
    n_test: int = 500,
    noise: float | Array = 0.0,
    flip: float | Array = 0.0,
) -> Dataset:
    """Draw a 2-D two-class data set from TensorFlow Playground's generators.

    Shapes (Playground coordinates, about [-6, 6]^2, except moons):

    - ``"circle"``: class 1 inside radius 2.5, class 0 in the ring 3.5..5 (radius
      and angle uniform, as in Playground, so points crowd the centre).
    - ``"xor"``: uniform in [-5.3, 5.3]^2 with 0.3 padding off the axes; label 1 when
      x1 * x2 >= 0.
    - ``"gauss"``: two Gaussians at (2, 2) (label 1) and (-2, -2) (label 0).
    - ``"spiral"``: two interleaved spirals of radius 5.
    - ``"moons"``: scikit-learn's two interleaving half circles (about [-1, 2] x [-0.5, 1]).

    Points are i.i.d.: each point's class is a fair coin (for xor its quadrant).

    Args:
        key: PRNG key.
        shape: one of :data:`SHAPES`.
        n_train: training points, >= 1 (static).
        n_val: validation points, >= 0 (static).
        n_test: test points, >= 0 (static).
        noise: input-noise level on Playground's scale (its slider 0..50 divided by 100,
            so 0..0.5 is the useful range), >= 0; may be traced. Its effect follows
            Playground per shape: circle and xor take the label from the point moved by
            ``noise * U(-5, 5)`` per coordinate but keep the point unmoved (so labels near
            the boundary become random); gauss scales the variance linearly from 0.5
            (noise 0) to 4 (noise 0.5); spiral adds ``noise * U(-1, 1)`` to the inputs;
            moons adds Gaussian input noise with std ``noise`` (make_moons' meaning).
        flip: probability in [0, 1) that a label is flipped, independently for every
            point of every split; may be traced.

    Returns:
        Dataset with ``x_*`` ``(n_split, 2)`` float32; ``f_*`` ``(n_split,)`` int32 the
        noiseless class in {0, 1} (for circle and xor the point's own side of the
        boundary, before the noise moves its label); ``y_*`` the labels after the
        noise and the flip.
        Task ``"classification"``, 2 classes.
    """
    check_key("key", key)
    check_choice("shape", shape, SHAPES)
    n_train = check_int("n_train", n_train, lo=1)
    n_val = check_int("n_val", n_val, lo=0)
    n_test = check_int("n_test", n_test, lo=0)
    check_range("noise", check_scalar("noise", noise), lo=0.0)
    check_range("flip", check_scalar("flip", flip), lo=0.0, hi=1.0, hi_open=True)
    return _classification(key, noise, flip, shape=shape, sizes=(n_train, n_val, n_test))


@functools.partial(jax.jit, static_argnames=("shape", "sizes"))
def _classification(
    key: Array, noise: Any, flip: Any, *, shape: str, sizes: tuple[int, int, int]
) -> Dataset:
    # Each split has its own keys, so resizing one split leaves the others' draws.
    k_train, k_val, k_test = jax.random.split(key, (3, 2))
    n_pad = max(sizes)
    tr = _classification_split(k_train, sizes[0], n_pad, shape, noise, flip)
    va = _classification_split(k_val, sizes[1], n_pad, shape, noise, flip)
    te = _classification_split(k_test, sizes[2], n_pad, shape, noise, flip)
    return Dataset(*tr, *va, *te, "classification", 2)


# ---------------------------------------------------------------- the lesson's data set


def _split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Validation and test counts rounded half up; training takes the rest."""
    n_val = int(np.floor(fractions[1] * n + 0.5))
    n_test = int(np.floor(fractions[2] * n + 0.5))
    return n - n_val - n_test, n_val, n_test


def make_classification_preset(
    *,
    seed: int = 0,
    flip_y: float = 0.05,
    n_samples: int = 100,
    class_sep: float = 1.5,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> Dataset:
    """The lesson notebooks' two-feature, two-class data set, split three ways.

    ``sklearn.datasets.make_classification(n_samples, n_features=2, n_redundant=0,
    n_informative=2, n_clusters_per_class=1, class_sep=class_sep, flip_y=0,
    random_state=seed)``, then label noise with scikit-learn's ``flip_y`` meaning,
    drawn from ``np.random.default_rng(seed)``: with probability ``flip_y`` a label is
    replaced by a uniformly random class, possibly the same one, so about
    ``flip_y / 2`` of the labels change. The clean labels are kept as ``f``.

    The rows (already shuffled by scikit-learn) are split in order: validation and test
    counts are ``floor(fraction * n_samples + 0.5)`` and training takes the rest, so
    ``n_samples=100`` gives 70 / 15 / 15. Host-side and deterministic in ``seed``.

    Args:
        seed: ``random_state`` of make_classification and seed of the label noise.
        flip_y: probability in [0, 1] that a label is redrawn.
        n_samples: total number of points, >= 3.
        class_sep: make_classification's ``class_sep`` (> 0): larger is easier.
        split: train / validation / test fractions, each in (0, 1), summing to 1.

    Returns:
        Dataset with ``x_*`` ``(n_split, 2)`` float32, ``y_*`` and ``f_*`` ``(n_split,)``
        int32 in {0, 1}. Task ``"classification"``, 2 classes.
    """
    from sklearn.datasets import make_classification  # scikit-learn is slow to import

    seed = check_int("seed", seed, lo=0, hi=2**32 - 1)  # scikit-learn's random_state
    check_range("flip_y", flip_y, lo=0.0, hi=1.0)
    n_samples = check_int("n_samples", n_samples, lo=3)
    check_range("class_sep", class_sep, lo=0.0, lo_open=True)
    split = _check_split(split)
    X, clean = make_classification(
        n_samples=n_samples,
        n_features=2,
        n_redundant=0,
        n_informative=2,
        n_clusters_per_class=1,
        class_sep=class_sep,
        flip_y=0.0,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    # scikit-learn's flip_y: redraw, not flip, so a redrawn label may stay the same.
    redraw = rng.random(n_samples) < flip_y
    noisy = clean.copy()
    noisy[redraw] = rng.integers(0, 2, size=int(redraw.sum()))
    n_train, n_val, n_test = _split_counts(n_samples, split)
    if min(n_train, n_val, n_test) < 1:  # the docstring promises three splits
        raise ValueError(f"split={split!r} of n_samples={n_samples} gives {n_train} / {n_val} / "
                         f"{n_test} points: every split needs one; give more samples.")
    return _host_dataset(X, noisy, clean, n_train, n_val, "classification", 2)


def _check_split(split: tuple[float, float, float]) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(v) for v in split)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3:
        raise ValueError(f"split={split!r} must be three fractions (train, val, test).")
    check_range("split", fractions, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split={split!r} must sum to 1; it sums to {sum(fractions):g}.")
    return fractions  # type: ignore[return-value]


def _host_dataset(
    X: np.ndarray,
    y: np.ndarray,
    f: np.ndarray,
    n_train: int,
    n_val: int,
    task: str,
    n_classes: int,
) -> Dataset:
    """Cut host arrays, already in split order, into a Dataset of JAX arrays."""
    label = np.int32 if task == "classification" else np.float32
    cuts = [0, n_train, n_train + n_val, len(X)]
    fields = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        fields += [
            jnp.asarray(X[a:b], jnp.float32),
            jnp.asarray(y[a:b].astype(label)),
            jnp.asarray(f[a:b].astype(label)),
        ]
    return Dataset(*fields, task=task, n_classes=n_classes)


# ------------------------------------------------------------------ bundled real data sets

REAL_DATASETS = ("iris", "digits", "wine", "breast_cancer", "diabetes")
# classes of each real data set; 0: a regression target
REAL_N_CLASSES = {"iris": 3, "digits": 10, "wine": 3, "breast_cancer": 2, "diabetes": 0}


@functools.cache
def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets  # scikit-learn is slow to import

    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X.setflags(write=False)  # cached: callers must not change it
    y.setflags(write=False)
    return X, y


def real(
    name: str,
    *,
    seed: int = 0,
    label_noise: float = 0.0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    normalize: bool = True,
) -> Dataset:
    """Load a data set bundled with scikit-learn (no download) and split it.

    The split is deterministic in ``seed`` (``train_test_split`` with
    ``random_state=seed``, first off the test set, then the validation set) and
    stratified by class for classification. Held-out counts are
    ``floor(frac * n + 0.5)``; training takes the rest.

    With ``normalize``, features are standardized with the mean and std of the
    training split only (so validation and test are close to, not exactly,
    standardized); a constant training column (digits has some) is only centred.
    For ``"diabetes"`` (regression) the target is standardized the same way.

    Args:
        name: one of :data:`REAL_DATASETS`.
        seed: seed of the split and of the label noise, >= 0.
        label_noise: classification only: probability in [0, 1) that a label is
            replaced by a uniformly random *other* class, independently on every
            split (``np.random.default_rng(seed)``).
        val_frac: validation fraction in (0, 1).
        test_frac: test fraction in (0, 1); ``val_frac + test_frac < 1``.
        normalize: standardize as above.

    Returns:
        Dataset with ``x_*`` ``(n_split, d)`` float32. Classification (iris 3 classes,
        digits 10, wine 3, breast_cancer 2): ``y_*`` int32 labels after the label noise,
        ``f_*`` the data set's own labels. Regression (diabetes): ``y_*`` float32 and
        ``f_* = y_*``, because the true regression function of real data is unknown.
    """
    from sklearn.model_selection import train_test_split  # slow to import

    check_choice("name", name, REAL_DATASETS)
    seed = check_int("seed", seed, lo=0, hi=2**32 - 1)  # scikit-learn's random_state
    check_range("label_noise", label_noise, lo=0.0, hi=1.0, hi_open=True)
    check_range("val_frac", val_frac, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    check_range("test_frac", test_frac, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    if val_frac + test_frac >= 1.0:
        raise ValueError(
            f"val_frac + test_frac = {val_frac + test_frac:g} must be < 1 to leave training data."
        )
    n_classes = REAL_N_CLASSES[name]
    task = "classification" if n_classes else "regression"
    if not n_classes and label_noise:
        raise ValueError(
            f"label_noise={label_noise!r} is not allowed for the regression set {name!r}; "
            "it needs a classification set."
        )
    X, y = _load(name)
    n_train, n_val, n_test = _split_counts(len(X), (0.0, val_frac, test_frac))
    for field, count in (("val_frac", n_val), ("test_frac", n_test),
                         ("1 - val_frac - test_frac", n_train)):
        if count < max(n_classes, 1):  # a stratified split needs every class in every part
            raise ValueError(f"{field} gives {count} points of {len(X)}; too few to split.")
    # Index permutation, so X and y are cut once in split order.
    strat = y if n_classes else None
    rest, test = train_test_split(
        np.arange(len(X)), test_size=n_test, random_state=seed, stratify=strat
    )
    train, val = train_test_split(
        rest, test_size=n_val, random_state=seed, stratify=None if strat is None else y[rest]
    )
    order = np.concatenate([train, val, test])
    X, y = np.asarray(X[order], float), np.asarray(y[order])
    if normalize:
        X = _standardize(X, n_train)
        if not n_classes:
            y = _standardize(y[:, None], n_train)[:, 0]
    clean = y
    if label_noise:
        rng = np.random.default_rng(seed)
        # Adding 1..K-1 mod K moves to a uniformly random other class.
        shift = rng.integers(1, n_classes, size=len(y))
        y = np.where(rng.random(len(y)) < label_noise, (y + shift) % n_classes, y)
    return _host_dataset(X, y, clean, n_train, n_val, task, n_classes)


def _standardize(X: np.ndarray, n_train: int) -> np.ndarray:
    """Standardize columns with the statistics of the first ``n_train`` rows."""
    mean = X[:n_train].mean(axis=0)
    std = X[:n_train].std(axis=0)
    # a constant column's std is 0 only up to rounding: dividing by ~1e-16 would blow it up
    constant = std <= 1e-12 * np.maximum(np.abs(mean), 1.0)
    return (X - mean) / np.where(constant, 1.0, std)


# -------------------------------------------------- isotropic linear model (double descent)


def sphere(key: Array, p: int, r2: float | Array = 1.0) -> Array:
    """A vector uniform on the sphere ``|b|^2 = r2`` in ``p`` dimensions.

    Args:
        key: PRNG key.
        p: dimension, >= 1 (static).
        r2: squared radius, >= 0; may be traced.

    Returns:
        ``(p,)`` float32.
    """
    check_key("key", key)
    p = check_int("p", p, lo=1)
    check_range("r2", check_scalar("r2", r2), lo=0.0)
    z = jax.random.normal(key, (p,), jnp.float32)
    return z * (jnp.sqrt(jnp.asarray(r2, jnp.float32)) / jnp.linalg.norm(z))


def _linear_split(key: Array, n: int, n_pad: int, b: Array, s2: Any) -> tuple[Array, Array, Array]:
    # Inputs and noise from one draw: fewer PRNG copies to compile.
    z = _rows(jax.random.normal, key, n, n_pad, b.shape[0] + 1)
    x = z[:, :-1]
    # HIGHEST: accelerators may otherwise multiply float32 at reduced (TF32) precision.
    f = jnp.matmul(x, b, precision=jax.lax.Precision.HIGHEST)
    return x, f + jnp.sqrt(jnp.asarray(s2, jnp.float32)) * z[:, -1], f


def linear(
    key: Array,
    *,
    p: int,
    n_train: int,
    n_val: int = 0,
    n_test: int = 1000,
    r2: float | Array = 1.0,
    s2: float | Array = 1.0,
    coef: Array | None = None,
    link: str = "identity",
) -> Dataset:
    """Isotropic Gaussian linear model ``y = x . b + sqrt(s2) N(0, 1)``, ``x ~ N(0, I_p)``.

    The setting of the double-descent theory (Belkin, Hsu & Xu 2019; Hastie et al. 2019): with
    ``coef=None``, ``b`` is uniform on the sphere ``|b|^2 = r2`` (exactly, not just in
    expectation), drawn from its own split of ``key``. A ``link`` other than
    ``"identity"`` makes it a single-index model ``f = g(x . b)`` with ``g`` from
    :data:`TARGETS`: a nonlinear truth in ``p`` dimensions (no linear theory applies).

    Args:
        key: PRNG key.
        p: number of features, >= 1 (static).
        n_train: training points, >= 1 (static).
        n_val: validation points, >= 0 (static).
        n_test: test points, >= 0 (static).
        r2: signal strength ``|b|^2``, >= 0; may be traced. Unused when ``coef`` is given.
        s2: noise variance (not std), >= 0; may be traced.
        coef: fixed coefficients ``(p,)``, or None to draw them.
        link: ``"identity"`` or a name in :data:`TARGETS` (static).

    Returns:
        Dataset with ``x_*`` ``(n_split, p)``, ``y_*`` and ``f_* = g(x_* @ b)``
        ``(n_split,)``, all float32. Task ``"regression"``.
    """
    check_key("key", key)
    check_choice("link", link, LINKS)
    p = check_int("p", p, lo=1)
    n_train = check_int("n_train", n_train, lo=1)
    n_val = check_int("n_val", n_val, lo=0)
    n_test = check_int("n_test", n_test, lo=0)
    check_range("r2", check_scalar("r2", r2), lo=0.0)
    check_range("s2", check_scalar("s2", s2), lo=0.0)
    if coef is not None:
        coef = jnp.asarray(coef, jnp.float32)
        if coef.shape != (p,):
            raise ValueError(f"coef has shape {coef.shape}; it must have shape (p,) = ({p},).")
    return _linear(key, coef, r2, s2, p=p, sizes=(n_train, n_val, n_test), link=link)


@functools.partial(jax.jit, static_argnames=("p", "sizes", "link"))
def _linear(
    key: Array, coef: Array | None, r2: Any, s2: Any, *, p: int, sizes: tuple[int, int, int],
    link: str,
) -> Dataset:
    k_coef, k_train, k_val, k_test = jax.random.split(key, 4)
    b = sphere(k_coef, p, r2) if coef is None else coef
    n_pad = max(sizes)
    g = TARGETS.get(link)
    splits = []
    for k, n in zip((k_train, k_val, k_test), sizes):
        x, y, f = _linear_split(k, n, n_pad, b, s2)
        splits += [x, y, f] if g is None else [x, y - f + g(f), g(f)]
    return Dataset(*splits, "regression", 0)


# ------------------------------------------------------------------------------ bootstrap


def bootstrap_indices(key: Array, n: int) -> Array:
    """``(n,)`` int32 indices into ``range(n)`` drawn uniformly with replacement."""
    check_key("key", key)
    n = check_int("n", n, lo=1)
    return jax.random.randint(key, (n,), 0, n, dtype=jnp.int32)


def resample(key: Array, data: Dataset) -> Dataset:
    """Bootstrap the training split; validation and test are returned unchanged.

    ``jax.vmap(resample, in_axes=(0, None))(keys, data)`` gives one resampled set per
    key. ``data`` must be a single data set (no leading batch axis); vmap over it too
    for a batch.

    Args:
        key: PRNG key.
        data: the data set whose ``x_train``, ``y_train`` and ``f_train`` are resampled.

    Returns:
        Dataset of the same shapes whose training rows are drawn with replacement.
    """
    check_key("key", key)
    return subsample(key, data, data.n_train, replace=True)


def subsample(key: Array, data: Dataset, n: int, *, replace: bool = False) -> Dataset:
    """``n`` random training points; validation and test are returned unchanged.

    Without replacement the points are the first ``n`` of one random permutation
    (as scikit-learn's ``learning_curve`` takes them); with ``replace`` they are a
    bootstrap sample of size ``n``. Either way, with the same key a smaller ``n``
    keeps the first points of a larger one (nested training sets). ``data`` is a
    single data set; vmap over keys for several subsets.

    Args:
        key: PRNG key.
        data: the data set whose training split is subsampled.
        n: training points kept, >= 1 and without ``replace`` at most
            ``data.n_train`` (static).
        replace: draw with replacement (a bootstrap of size ``n``).

    Returns:
        Dataset whose ``x_train``, ``y_train`` and ``f_train`` have ``n`` rows.
    """
    check_key("key", key)
    if data.x_train.ndim != 2:  # rows would be drawn from the batch axis instead
        raise ValueError(f"data must be a single data set, x_train (n, d); got x_train of "
                         f"shape {data.x_train.shape}: vmap over a batch, e.g. "
                         "jax.vmap(resample)(keys, batch).")
    if replace:
        n = check_int("n", n, lo=1)
        idx = jax.random.randint(key, (n,), 0, data.n_train, dtype=jnp.int32)
    else:
        n = check_int("n", n, lo=1, hi=data.n_train)
        idx = jax.random.permutation(key, data.n_train)[:n]
    return map_train(lambda a: a[idx], data)


def map_train(f: Callable[[Array], Array], data: Dataset) -> Dataset:
    """``data`` with ``f`` applied to ``x_train``, ``y_train`` and ``f_train`` alike (a row
    selection or padding that keeps inputs, targets and truth aligned)."""
    return dataclasses.replace(data, x_train=f(data.x_train), y_train=f(data.y_train),
                               f_train=f(data.f_train))


def shared_test(data: Dataset) -> Dataset:
    """Give every draw of a batch ``(S, ...)`` the test split of draw 0.

    A bias-variance decomposition compares the predictions of models trained
    on different training sets AT THE SAME test points.
    """
    if data.x_train.ndim != 3:
        raise ValueError("shared_test needs a batch of data sets (leading draws axis).")

    def first(a: Array) -> Array:
        return jnp.broadcast_to(a[0], a.shape)

    return dataclasses.replace(
        data, x_test=first(data.x_test), y_test=first(data.y_test), f_test=first(data.f_test)
    )
