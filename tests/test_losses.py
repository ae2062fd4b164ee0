"""Tests of overfit.losses: each named loss against numbers worked by hand."""

from __future__ import annotations

import numpy as np

from overfit.losses import LOSSES


def test_mse_is_half_the_squared_residual():
    out, y = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 0.5])
    np.testing.assert_allclose(LOSSES["mse"](out, y), [0.5, 4.5, 0.0])


def test_mse_onehot_is_half_the_squared_distance_to_the_one_hot_label():
    out = np.array([[0.5, 0.2, -0.1], [0.0, 0.0, 1.0]], np.float32)
    # 0.5 * ((0.5 - 1)^2 + 0.2^2 + 0.1^2) = 0.15; a perfect one-hot output costs 0
    np.testing.assert_allclose(LOSSES["mse_onehot"](out, np.array([0, 2])), [0.15, 0.0],
                               rtol=1e-6, atol=1e-7)


def test_cross_entropies_are_negative_log_likelihoods():
    logits = np.array([[np.log(3.0), 0.0], [0.0, 0.0]], np.float32)  # p = (3/4, 1/4), (1/2, 1/2)
    np.testing.assert_allclose(LOSSES["ce"](logits, np.array([0, 1])),
                               [-np.log(0.75), np.log(2.0)], rtol=1e-6)
    # bce of logit z: -log sigmoid(z) for label 1, -log(1 - sigmoid(z)) for label 0
    z = np.array([np.log(3.0), np.log(3.0)], np.float32)  # sigmoid = 3/4
    np.testing.assert_allclose(LOSSES["bce"](z, np.array([1, 0])),
                               [-np.log(0.75), -np.log(0.25)], rtol=1e-6)
