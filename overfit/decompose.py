"""Bias-variance decompositions of prediction arrays.

Squared loss; 0-1 loss after Domingos (2000) and Kohavi & Wolpert (1996);
cross-entropy after Yang et al. (2020); the variance split of Neal et al. (2018).

Every function takes the predictions of ``R`` models (leading axis) at ``n``
test points and returns the terms averaged over the points, each with a
standard error across test points (points are an i.i.d. sample, so the SE of
a point-average is ``std_x / sqrt(n)``).

Variances are over the models axis. ``ddof=0`` (default) makes the identities
exact on the given predictions and matches mlxtend; ``ddof=1`` gives the
unbiased estimate ``R/(R-1)`` times larger (a plug-in variance of R models is
biased low by (R-1)/R).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from overfit._checks import check_choice, check_int, check_range, is_concrete


class Term(NamedTuple):
    """A decomposition term: its mean over test points and that mean's standard error."""

    value: Array
    se: Array


def _term(pointwise: Array) -> Term:
    n = pointwise.shape[-1]
    se = jnp.std(pointwise, axis=-1, ddof=1) / jnp.sqrt(n) if n > 1 else jnp.nan
    return Term(jnp.mean(pointwise, axis=-1), se)


def _check_models(preds: Array, name: str = "preds", shape: str = "(n_models, n_points)") -> None:
    # one more axis would broadcast against the (n,) targets into (n, n) nonsense
    if preds.ndim != shape.count(",") + 1:
        raise ValueError(f"{name} must have shape {shape}; got {preds.shape} (a one-output "
                         "model's (R, n, 1): take [..., 0]).")
    if preds.shape[0] < 2:
        raise ValueError(f"{name} holds {preds.shape[0]} model(s); a variance needs at least 2.")


def _check_points(name: str, arr: Array, n: int) -> None:
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match preds; got {arr.shape}.")


class Squared(NamedTuple):
    """Squared-loss terms; ``loss = bias2 + variance + noise`` (in expectation)."""

    loss: Term
    bias2: Term
    variance: Term
    noise: Term
    main: Array  # (n,) mean prediction


def squared(preds: Array, *, y: Array | None = None, f: Array | None = None,
            noise: Array | float | None = None, ddof: int = 0) -> Squared:
    """Squared-loss decomposition.

    Two modes:

    * truth known (``f`` and ``noise`` given): ``bias2 = (f - main)^2``, the
      noise is ``noise`` (the noise VARIANCE s2), and ``loss`` is the expected
      error on fresh noisy targets, ``bias2 + variance + noise``.
    * noisy targets only (``y`` given; mlxtend's ``bias_variance_decomp``):
      ``loss = mean (pred - y)^2 = bias2 + variance`` exactly with ``ddof=0``,
      where ``bias2 = (y - main)^2`` hides the noise; ``noise`` is reported 0.

    Args:
        preds: predictions ``(n_models, n_points)``.
        y: noisy targets ``(n_points,)``; f: noiseless truth ``(n_points,)``.
        noise: noise variance (with ``f``).
        ddof: 0 (plug-in terms: ``mean (pred - target)^2 = bias2 + variance``
            exactly, as mlxtend) or 1 (unbiased: variance times R/(R-1) and
            bias2 minus variance/R; their sum is still the empirical mean
            squared deviation from the target).
    """
    _check_models(preds)
    preds = _floating(preds)
    n = preds.shape[1]
    if (f is None) == (y is None):
        raise ValueError("give exactly one of f (with noise) or y.")
    target = f if f is not None else y
    _check_points("f" if f is not None else "y", target, n)
    if f is not None and noise is None:
        raise ValueError("noise (the noise variance) is required with f.")
    if y is not None and noise is not None:
        raise ValueError("noise goes with f: with noisy targets y the noise is inside bias2 "
                         "and reported 0; give f and noise to separate it.")
    check_range("noise", noise if noise is not None else 0.0, lo=0.0)
    check_choice("ddof", ddof, (0, 1))
    main = jnp.mean(preds, axis=0)
    variance = jnp.var(preds, axis=0, ddof=ddof)
    # the plug-in (target - main)^2 is biased up by Var/R; ddof=1 removes that too
    bias2 = (target - main) ** 2 - ddof * variance / preds.shape[0]
    if f is None:
        loss = jnp.mean((preds - y) ** 2, axis=0)  # == bias2 + variance when ddof=0
        return Squared(_term(loss), _term(bias2), _term(variance), Term(jnp.zeros(()), 0.0), main)
    s2 = jnp.broadcast_to(jnp.asarray(noise, preds.dtype), (n,))
    return Squared(_term(bias2 + variance + s2), _term(bias2), _term(variance), _term(s2), main)


def squared_nested(preds: Array, *, f: Array, noise: Array | float) -> Squared:
    """Squared-loss terms of ``preds (n_sets, n_inits, n_points)``: S training sets,
    m initialisations trained on each, the truth ``f (n_points,)`` and noise variance known.

    Models trained on one set are alike, so the S * m are not independent draws
    and ``squared(ddof=1)`` of them all would count the variance between sets
    short and put it into bias2. Unbiased here: ``variance`` is
    :func:`variance_split`'s total (init + sampling), and ``bias2`` subtracts from
    ``(f - main)^2`` the grand mean's own variance, estimated by the variance of
    the per-set means (ddof=1) over S. With m = 1 these are ``squared(ddof=1)``.
    """
    if preds.ndim != 3 or preds.shape[0] < 2:
        raise ValueError(f"preds must be (n_sets >= 2, n_inits, n_points); got {preds.shape}.")
    preds = _floating(preds)
    n_sets, _, n = preds.shape
    _check_points("f", f, n)
    if noise is None:
        raise ValueError("noise (the noise variance, >= 0) is required.")
    check_range("noise", noise, lo=0.0)
    main = jnp.mean(preds, axis=(0, 1))
    between = jnp.var(jnp.mean(preds, axis=1), axis=0, ddof=1)  # Var of the per-set means
    bias2 = (f - main) ** 2 - between / n_sets
    variance = between if preds.shape[1] == 1 else _split(preds)[0]
    s2 = jnp.broadcast_to(jnp.asarray(noise, preds.dtype), (n,))
    return Squared(_term(bias2 + variance + s2), _term(bias2), _term(variance), _term(s2), main)


def _floating(preds: Array) -> Array:
    """Integer predictions as floats: the noise variance is cast to their dtype."""
    preds = jnp.asarray(preds)
    return preds.astype(jnp.result_type(preds.dtype, float))


def _labels(name: str, arr: Array) -> Array:
    """``arr`` as integer labels (bool ones, as ``fit`` takes, become 0 / 1)."""
    arr = jnp.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(jnp.int32)
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer class labels; got dtype "
                         f"{arr.dtype} (take argmax of scores first).")
    if is_concrete(arr) and jnp.any(arr < 0):
        raise ValueError(f"{name} holds negative labels; labels lie in [0, n_classes).")
    return arr


def _check_labels(preds: Array, y: Array, n_classes: int | None) -> tuple[Array, Array, int]:
    """Check predicted labels ``(R, n)`` against labels ``(n,)``: both as integer
    arrays, and the number of classes."""
    _check_models(preds)
    _check_points("y", y, preds.shape[1])
    preds, y = _labels("preds", preds), _labels("y", y)
    if n_classes is None:
        if not (is_concrete(preds) and is_concrete(y)):
            raise ValueError("n_classes is required when preds or y are traced (under jit).")
        n_classes = int(max(jnp.max(preds), jnp.max(y))) + 1
    check_int("n_classes", n_classes, lo=1)
    for name, arr in (("preds", preds), ("y", y)):
        if is_concrete(arr) and (jnp.any(arr < 0) or jnp.any(arr >= n_classes)):
            raise ValueError(f"{name} holds labels outside [0, {n_classes}).")
    return preds, y, n_classes


def _mode(labels: Array, n_classes: int) -> tuple[Array, Array]:
    """Most frequent label per point (ties: the smallest, as mlxtend) and the class frequencies."""
    counts = jnp.sum(labels[..., None] == jnp.arange(n_classes), axis=0)  # (n, K)
    return jnp.argmax(counts, axis=-1), counts / labels.shape[0]


class ZeroOne(NamedTuple):
    """0-1 loss terms after Domingos (2000); ``loss = bias + net_variance`` exactly."""

    loss: Term
    bias: Term
    variance: Term  # P(pred != main): mlxtend's variance
    unbiased_variance: Term  # E[(1 - B) V]
    biased_variance: Term  # E[B V]
    net_variance: Term  # Vu - E[B P(pred = y | pred != main) V]
    main: Array  # (n,) the mode


def zero_one(preds: Array, y: Array, *, n_classes: int | None = None) -> ZeroOne:
    """0-1 loss decomposition (noise-free: ``y`` plays the optimal prediction y*).

    Args:
        preds: predicted labels ``(n_models, n_points)``, integers in [0, n_classes).
        y: labels ``(n_points,)``.
        n_classes: number of classes (default: ``max + 1`` over preds and y,
            which needs concrete arrays: give it under ``jit``).

    Bias and variance are mlxtend's; the net variance makes the identity
    ``loss = bias + net_variance`` hold per point: on an unbiased point the
    variance adds to the loss, on a biased one it subtracts
    ``P(pred = y | pred != main)`` of it (two classes: all of it).
    """
    preds, y, n_classes = _check_labels(preds, y, n_classes)
    main, freq = _mode(preds, n_classes)
    bias = (main != y).astype(freq.dtype)  # float64 under x64, as the other terms
    variance = 1.0 - jnp.take_along_axis(freq, main[:, None], axis=1)[:, 0]
    p_true = jnp.take_along_axis(freq, y[:, None], axis=1)[:, 0]
    loss = 1.0 - p_true
    # on a biased point P(pred = y, pred != main) = P(pred = y) since y != main
    net = (1.0 - bias) * variance - bias * p_true
    return ZeroOne(_term(loss), _term(bias), _term(variance), _term((1.0 - bias) * variance),
                   _term(bias * variance), _term(net), main)


class KohaviWolpert(NamedTuple):
    """0-1 loss terms after Kohavi & Wolpert (1996); ``loss = noise + bias2 + variance``."""

    loss: Term  # P(pred != observed label), the labels' noise included
    bias2: Term  # 1/2 sum_c (P(Y = c) - P(pred = c))^2
    variance: Term  # 1/2 (1 - sum_c P(pred = c)^2)
    noise: Term  # 1/2 (1 - sum_c P(Y = c)^2)


def kohavi_wolpert(preds: Array, y: Array, *, n_classes: int | None = None,
                   flip: float = 0.0, ddof: int = 0) -> KohaviWolpert:
    """0-1 loss decomposition of Kohavi & Wolpert (1996), additive with the noise apart.

    Where Domingos' terms (:func:`zero_one`) compare each prediction with the
    mode, these compare the whole distribution of predicted labels with that of
    the observed label, class by class, so the label noise is a term of its own.

    Args:
        preds: predicted labels ``(n_models, n_points)``, integers in [0, n_classes).
        y: the noiseless labels ``(n_points,)``.
        n_classes: number of classes K (default: ``max + 1`` over preds and y,
            which needs concrete arrays: give it under ``jit``).
        flip: label-noise rate in [0, 1): the observed label is ``y`` with
            probability ``1 - flip``, else one of the other K - 1 classes at
            random (:func:`overfit.data.classification`'s ``flip`` for K = 2,
            :func:`overfit.data.real`'s ``label_noise``). May be traced.
        ddof: 0 (plug-in class frequencies: the identity holds exactly on the
            given predictions) or 1 (unbiased over the R models: variance times
            R/(R-1), bias2 minus plug-in variance/(R-1), Kohavi & Wolpert's
            correction; the sum is unchanged).
    """
    preds, y, n_classes = _check_labels(preds, y, n_classes)
    check_range("flip", flip, lo=0.0, hi=1.0, hi_open=True)
    check_choice("ddof", ddof, (0, 1))
    if n_classes == 1 and (not is_concrete(flip) or flip != 0):
        raise ValueError("flip needs another class to move labels to; n_classes is 1.")
    r = preds.shape[0]
    freq = _mode(preds, n_classes)[1]  # (n, K) P(pred = c)
    others = jnp.asarray(flip, freq.dtype) / max(n_classes - 1, 1)
    truth = jnp.where(jax.nn.one_hot(y, n_classes, dtype=bool), 1.0 - flip, others)  # P(Y = c)
    noise = 0.5 * (1.0 - jnp.sum(truth**2, axis=-1))
    spread = 0.5 * (1.0 - jnp.sum(freq**2, axis=-1))
    variance = spread * (r / (r - 1) if ddof else 1.0)
    bias2 = 0.5 * jnp.sum((truth - freq) ** 2, axis=-1) - ddof * spread / (r - 1)
    loss = 1.0 - jnp.sum(truth * freq, axis=-1)
    return KohaviWolpert(_term(loss), _term(bias2), _term(variance), _term(noise))


class CrossEntropy(NamedTuple):
    """Cross-entropy terms after Yang et al. (2020); ``loss = bias + variance`` exactly."""

    loss: Term
    bias: Term  # CE(y, pibar)
    variance: Term  # E KL(pibar || pi) = -log Z
    main: Array  # (n, K) normalised geometric mean pibar


def cross_entropy(probs: Array, y: Array, *, atol: float = 1e-4,
                  logits: bool = False) -> CrossEntropy:
    """Cross-entropy decomposition of predicted class probabilities.

    Args:
        probs: ``(n_models, n_points, n_classes)``, each row summing to 1; or,
            with ``logits=True``, unnormalised log-probabilities (a network's
            outputs; a binary model's one logit ``z`` as the pair ``(0, z)``),
            exact where float32 probabilities would underflow (1 - sigmoid(z) is
            0 past z ~ 17, and a probability below 1e-30 is counted as 1e-30).
        y: labels ``(n_points,)`` in [0, n_classes).
        atol: tolerance on the row sums of probabilities.
        logits: whether ``probs`` holds logits.
    """
    _check_models(probs, "probs", "(n_models, n_points, n_classes)")
    _check_points("y", y, probs.shape[1])
    y = _labels("y", y)
    k = probs.shape[-1]
    if is_concrete(probs):
        if not logits and (jnp.any(jnp.abs(jnp.sum(probs, axis=-1) - 1.0) > atol)
                           or jnp.any(probs < 0)):
            raise ValueError("probs must be probabilities: non-negative rows summing to 1 "
                             "(or pass logits=True for a network's outputs).")
        if jnp.any(y >= k):  # negative labels were refused by _labels
            raise ValueError(f"y holds labels outside [0, {k}).")
    log_p = jax.nn.log_softmax(probs, axis=-1) if logits else jnp.log(jnp.clip(probs, 1e-30))
    log_p_y = jnp.take_along_axis(log_p, jnp.broadcast_to(y[None, :, None], (*probs.shape[:2], 1)),
                                  axis=-1)[..., 0]  # (R, n)
    mean_log_p = jnp.mean(log_p, axis=0)
    log_z = jax.nn.logsumexp(mean_log_p, axis=-1)  # <= 0 by Jensen
    loss = -jnp.mean(log_p_y, axis=0)
    bias = loss + log_z  # -log pibar_y = -(E log p_y - log Z)
    main = jnp.exp(mean_log_p - log_z[:, None])
    return CrossEntropy(_term(loss), _term(bias), _term(-log_z), main)


def classifier(outputs: Array, y: Array, *, ddof: int = 0, logits: bool = True
               ) -> dict[str, Term]:
    """Every classification decomposition of ``R`` classifiers' logits at once.

    Args:
        outputs: logits ``(n_models, n_points, n_classes)``, or a binary model's
            one logit per point ``(n_models, n_points)`` (read as the pair ``(0, z)``).
        y: labels ``(n_points,)``.
        ddof: of the Kohavi-Wolpert terms (:func:`kohavi_wolpert`).
        logits: whether ``outputs`` are logits. False (a square loss on one-hot
            or 0/1 targets trains near-probabilities, not logits): only the terms
            of the predicted labels, no cross-entropy; a binary model's one output
            per point is then P(class 1), cut at 1/2 (not its logit's 0).

    Returns:
        ``"0-1 loss"``, ``"0-1 bias"``, ``"0-1 variance"``, ``"0-1 net variance"``
        (:func:`zero_one`, labels by argmax), ``"cross-entropy"``, ``"CE bias"``,
        ``"CE variance"`` (:func:`cross_entropy` of the logits, exact where float32
        probabilities underflow: a confident wrong network is charged its logit, not
        ``-log(1e-30)``) and ``"KW bias2"``, ``"KW variance"`` (:func:`kohavi_wolpert`,
        noise-free).
    """
    if not logits and jnp.ndim(outputs) == 2:
        outputs = jnp.stack([1 - jnp.asarray(outputs), jnp.asarray(outputs)], axis=-1)
    scores = class_logits(outputs)
    k = scores.shape[-1]
    labels = jnp.argmax(scores, axis=-1)
    z = zero_one(labels, y, n_classes=k)
    kw = kohavi_wolpert(labels, y, n_classes=k, ddof=ddof)
    terms = {"0-1 loss": z.loss, "0-1 bias": z.bias, "0-1 variance": z.variance,
             "0-1 net variance": z.net_variance}
    if logits:
        ce = cross_entropy(scores, y, logits=True)
        terms |= {"cross-entropy": ce.loss, "CE bias": ce.bias, "CE variance": ce.variance}
    return terms | {"KW bias2": kw.bias2, "KW variance": kw.variance}


def class_logits(outputs: Array) -> Array:
    """``(n_models, n_points, n_classes)`` logits: a binary model's one logit ``z`` per
    point ``(n_models, n_points)`` becomes the pair ``(0, z)`` (softmax: sigmoid)."""
    scores = jnp.asarray(outputs)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        raise ValueError(f"outputs are {scores.dtype} (predicted labels?); allowed: float "
                         "logits. Labels go to zero_one or kohavi_wolpert.")
    if scores.ndim not in (2, 3) or (scores.ndim == 3 and scores.shape[-1] < 2):
        raise ValueError(f"outputs have shape {scores.shape}; allowed: (n_models, n_points) "
                         "(a binary model's one logit) or (n_models, n_points, n_classes >= 2).")
    if scores.ndim == 2:
        scores = jnp.stack([jnp.zeros_like(scores), scores], axis=-1)
    return scores


class VarianceSplit(NamedTuple):
    """Law of total variance over training sets S and initialisations (Neal et al. 2018)."""

    total: Term  # Var over all (S, init) pairs
    init: Term  # E_S[Var_init(h | S)]
    sampling: Term  # Var_S(E_init[h | S]), corrected for finite inits


def variance_split(preds: Array) -> VarianceSplit:
    """Split the variance of ``preds (n_sets, n_inits, n_points)`` into its sources.

    Unbiased estimators: the within-set variance uses ddof=1; the variance of
    the per-set means (ddof=1) overstates the sampling part by
    ``E[Var_init] / n_inits``, which is subtracted. ``total``
    is their sum.
    """
    if preds.ndim != 3 or preds.shape[0] < 2 or preds.shape[1] < 2:
        raise ValueError("preds must be (n_sets >= 2, n_inits >= 2, n_points); "
                         f"got {preds.shape}.")
    return VarianceSplit(*map(_term, _split(preds)))


def _split(preds: Array) -> tuple[Array, Array, Array]:
    """Per-point (total, init, sampling) variance of ``preds (n_sets, n_inits >= 2, n)``."""
    m = preds.shape[1]
    init = jnp.mean(jnp.var(preds, axis=1, ddof=1), axis=0)
    sampling = jnp.var(jnp.mean(preds, axis=1), axis=0, ddof=1) - init / m
    return init + sampling, init, sampling
