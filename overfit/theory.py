"""Analytic curves of least squares (ESL 7.3-7.4) and of min-norm / ridge least
squares (Belkin, Hsu & Xu 2019; Hastie, Montanari, Rosset & Tibshirani 2019), for
overlays and tests.

The min-norm and ridge risks exclude the noise (the test MSE on noisy labels is
``risk + s2``); :func:`fixed_design`'s training and test errors include it.
``gamma = p / n`` (parameters per training sample).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from overfit._checks import check_range


def _check_signal_noise(r2: float, s2: ArrayLike, gamma: ArrayLike | None = None) -> None:
    check_range("r2", r2, lo=0.0)
    check_range("s2", s2, lo=0.0)
    if gamma is not None:
        check_range("gamma", gamma, lo=0.0, lo_open=True)  # p / n of a model with parameters


def fixed_design(p: int, n: int, s2: float = 1.0) -> dict[str, float]:
    """Least squares with a fixed full-rank design (ESL 7.3-7.4).

    Returns the mean variance of the fitted values ``s2 p/n``, the expected
    training MSE ``s2 (1 - p/n)``, the expected in-sample test error
    ``s2 (1 + p/n)`` and the optimism ``2 s2 p/n``.
    """
    check_range("p", p, whole=True)  # a number of parameters: 2.5 has no design
    check_range("n", n, whole=True)
    if not 0 < p <= n:
        raise ValueError(f"p={p} must lie in [1, n={n}] for a full-rank design.")
    check_range("s2", s2, lo=0.0)
    return {"variance": s2 * p / n, "train": s2 * (1 - p / n), "test": s2 * (1 + p / n),
            "optimism": 2 * s2 * p / n}


def min_norm_risk(p: ArrayLike, n: ArrayLike, r2: float = 1.0, s2: float = 1.0) -> np.ndarray:
    """Exact finite-sample ``E |bhat - b|^2`` of min-norm least squares, x ~ N(0, I_p).

    ``s2 p / (n - p - 1)`` for ``p <= n - 2``; ``r2 (1 - n/p) + s2 n / (p - n - 1)``
    for ``p >= n + 2`` (inverse-Wishart means, Belkin, Hsu & Xu 2019); infinite
    for ``n - 1 <= p <= n + 1``. ``p`` and ``n`` may be arrays (or lists); between
    whole sizes the same formulas draw the curve.
    """
    _check_signal_noise(r2, s2)
    check_range("p", p, lo=0.0, lo_open=True)  # continuous p and n draw the curve between sizes
    check_range("n", n, lo=0.0, lo_open=True)
    p, n = np.asarray(p, float), np.asarray(n, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        under = s2 * p / (n - p - 1)
        over = r2 * (1 - n / p) + s2 * n / (p - n - 1)
    # finite on either side of the pole, not only from n - 2 / n + 2 (whole sizes)
    return np.where(p < n - 1, under, np.where(p > n + 1, over, np.inf))[()]


def min_norm_risk_asymptotic(gamma: ArrayLike, r2: float = 1.0, s2: float = 1.0) -> np.ndarray:
    """Hastie, Montanari, Rosset & Tibshirani's limit of :func:`min_norm_risk`, gamma = p/n.

    ``s2 gamma / (1 - gamma)`` below 1, ``r2 (1 - 1/gamma) + s2 / (gamma - 1)``
    above, infinite at 1.
    """
    _check_signal_noise(r2, s2, gamma)
    g = np.asarray(gamma, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        under = s2 * g / (1 - g)
        over = r2 * (1 - 1 / g) + s2 / (g - 1)
    return np.where(g < 1, under, np.where(g > 1, over, np.inf))[()]


def optimal_ridge_risk(gamma: ArrayLike, r2: float = 1.0, s2: ArrayLike = 1.0) -> np.ndarray:
    """Asymptotic risk of optimally tuned ridge ``(X'X + n l I)^-1 X'y``.

    At ``l* = s2 gamma / r2``: ``R* = s2 gamma m(-l*)`` with
    ``m(-l) = [sqrt((1 - gamma + l)^2 + 4 gamma l) - (1 - gamma + l)] / (2 gamma l)``.
    Finite everywhere: optimal tuning removes the double-descent peak. Without
    noise (``s2 = 0``: ``l* = 0``, min-norm least squares) the limit
    ``r2 (1 - 1/gamma)`` above 1 and 0 below.
    """
    check_range("r2", r2, lo=0.0, lo_open=True)
    _check_signal_noise(r2, s2, gamma)
    g, s2 = np.asarray(gamma, float), np.asarray(s2, float)
    lam = s2 * g / r2
    a = 1 - g + lam
    with np.errstate(divide="ignore", invalid="ignore"):
        m = (np.sqrt(a**2 + 4 * g * lam) - a) / (2 * g * lam)
        risk = s2 * g * m
    # without noise the formula is 0 * inf: its limit instead
    return np.where(s2 == 0, r2 * np.maximum(0.0, 1 - 1 / g), risk)[()]  # a scalar stays one


def optimal_ridge_lambda(gamma: ArrayLike, r2: float = 1.0, s2: float = 1.0) -> np.ndarray:
    """The optimal ridge strength ``l* = s2 gamma / r2`` in the ``n l`` convention."""
    check_range("r2", r2, lo=0.0, lo_open=True)
    _check_signal_noise(r2, s2, gamma)
    return s2 * np.asarray(gamma, float) / r2
