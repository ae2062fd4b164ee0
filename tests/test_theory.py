"""Double-descent theory (GROUND_TRUTH §2-3) against the sampler -> model -> solver path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import overfit as of
from overfit import theory


def test_closed_forms_at_the_published_points():
    np.testing.assert_allclose(theory.optimal_ridge_risk([0.5, 1.0, 2.0]),
                               [0.4142, 0.6180, 0.7808], atol=5e-5)
    np.testing.assert_allclose(theory.optimal_ridge_lambda([0.5, 2.0], r2=2.0, s2=1.0),
                               [0.25, 1.0])
    assert theory.fixed_design(10, 100) == pytest.approx(
        {"variance": 0.1, "train": 0.9, "test": 1.1, "optimism": 0.2})
    n = 200
    exact = theory.min_norm_risk([100, 198, 199, 200, 201, 202, 400], n)
    assert np.isinf(exact[2:5]).all() and np.isfinite(exact[[0, 1, 5, 6]]).all()
    np.testing.assert_allclose(exact[0], 100 / 99)
    np.testing.assert_allclose(exact[6], 0.5 + 200 / 199)
    # the asymptotic curve is the n -> infinity limit of the exact one
    gammas = np.array([0.3, 0.8, 1.5, 3.0])
    np.testing.assert_allclose(theory.min_norm_risk(gammas * 1e6, 1e6),
                               theory.min_norm_risk_asymptotic(gammas), rtol=1e-4)
    # optimal tuning never does worse than min-norm
    assert np.all(theory.optimal_ridge_risk(gammas) < theory.min_norm_risk_asymptotic(gammas))


def _risks(p: int, n: int, draws: int, ridge: float = 0.0, s2: float = 1.0) -> np.ndarray:
    """|bhat - b|^2 over draws of the isotropic model, fitted through overfit's own path."""
    model = of.linear(p, bias=False)

    def one(key):
        k_b, k_data = jax.random.split(key)
        b = of.sphere(k_b, p, 1.0)
        data = of.linear_data(k_data, p=p, n_train=n, n_test=0, s2=s2, coef=b)
        _, state = model.init(key)
        coef = of.fit_linear(model, state, data.x_train, data.y_train, ridge=ridge)["coef"]
        return jnp.sum((coef - b) ** 2)

    with jax.enable_x64(True):
        return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(p), draws)))


@pytest.mark.parametrize("p", [10, 25, 35, 65, 80, 120])
def test_measured_min_norm_risk_matches_the_exact_finite_sample_formula(p):
    n = 50  # p/n = 0.2, 0.5, 0.7 (under) and 1.3, 1.6, 2.4 (over); never near 1
    risks = _risks(p, n, 1500)
    se = risks.std(ddof=1) / np.sqrt(len(risks))
    assert abs(risks.mean() - theory.min_norm_risk(p, n)) < 3 * se + 1e-3


def test_the_peak_is_at_the_interpolation_threshold():
    n = 50
    medians = {p: np.median(_risks(p, n, 300)) for p in (35, 50, 65)}
    assert medians[50] > 5 * max(medians[35], medians[65])


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_optimally_tuned_ridge_matches_its_closed_form(gamma):
    n = 200
    p = int(gamma * n)
    risks = _risks(p, n, 60, ridge=float(theory.optimal_ridge_lambda(gamma)))
    se = risks.std(ddof=1) / np.sqrt(len(risks))
    target = float(theory.optimal_ridge_risk(gamma))
    # finite n = 200 sits within ~2% of the limit
    assert abs(risks.mean() - target) < 3 * se + 0.02 * target


def test_optimal_ridge_without_noise_is_the_limit_of_vanishing_noise():
    """s2 = 0 is 0 * inf in the formula (it gave NaN, and a noise-free double-descent
    scenario crashed at its plot): the limit is noiseless min-norm, r2 (1 - 1/gamma)_+."""
    gamma = np.array([0.5, 1.0, 1.5, 3.0])
    exact = theory.optimal_ridge_risk(gamma, r2=2.0, s2=0.0)
    np.testing.assert_allclose(exact, [0.0, 0.0, 2 / 3, 4 / 3])
    np.testing.assert_allclose(theory.optimal_ridge_risk(gamma, r2=2.0, s2=1e-10), exact,
                               atol=1e-4)
    off = gamma != 1  # noiseless ridge at l* = 0 is min-norm least squares
    np.testing.assert_allclose(exact[off], theory.min_norm_risk_asymptotic(gamma[off], r2=2.0,
                                                                           s2=0.0))
    with pytest.raises(ValueError, match="s2=-1"):
        theory.optimal_ridge_risk(gamma, s2=-1.0)


def test_curves_take_lists_arrays_and_sizes_between_whole_ones():
    """A continuous p between n - 2 and n - 1 was drawn as infinite (the overlay's gap
    wider than the pole); n as a list and an array of s2 raised TypeError / ValueError."""
    np.testing.assert_allclose(theory.min_norm_risk(38.5, 40), 38.5 / 0.5)
    np.testing.assert_allclose(theory.min_norm_risk(41.5, 40), (1 - 40 / 41.5) + 40 / 0.5)
    assert np.isinf(theory.min_norm_risk([39.0, 40.0, 41.0], 40)).all()
    np.testing.assert_allclose(theory.min_norm_risk(20, [10, 30, 50]),
                               [0.5 + 10 / 9, 20 / 9, 20 / 29])
    np.testing.assert_allclose(theory.optimal_ridge_risk(2.0, s2=np.array([0.0, 1.0])),
                               [0.5, theory.optimal_ridge_risk(2.0)])


@pytest.mark.parametrize("call, message", [
    # each returned a negative "risk" before it was checked
    (lambda: theory.optimal_ridge_risk(-1.0), r"gamma=-1.0 is out of range.*\(0, inf\)"),
    (lambda: theory.min_norm_risk_asymptotic(-0.5), r"gamma=-0.5 is out of range"),
    (lambda: theory.min_norm_risk([-3], 10), r"p=\[-3\] is out of range"),
    (lambda: theory.min_norm_risk_asymptotic(0.5, s2=-1.0), r"s2=-1.0 is out of range"),
    (lambda: theory.fixed_design(3, 10, s2=-1.0), r"s2=-1.0 is out of range"),
    (lambda: theory.optimal_ridge_lambda(0.0), r"gamma=0.0 is out of range"),
    (lambda: theory.fixed_design(2.5, 10), r"p=2.5 must be a whole number"),
])
def test_theory_refuses_inputs_outside_its_formulas(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_random_features_interpolate_past_the_threshold_and_their_norm_peaks_there():
    n = 40
    # 10-D inputs: in 1-D, ReLU kinks can miss the gaps between points and stay rank-deficient
    data = of.linear_data(jax.random.key(0), p=10, n_train=n, n_test=0, s2=0.25)
    model = of.random_features(200, n_in=10, kind="relu")
    widths = np.array([10, 20, 30, 40, 50, 80, 200])

    def one(n_features):
        params, state = model.init(jax.random.key(1), n_features=n_features)
        coef = of.fit_linear(model, state, data.x_train, data.y_train)
        fitted = model.apply(coef, state, data.x_train)
        return jnp.mean((fitted - data.y_train) ** 2), jnp.sum(coef["coef"] ** 2)

    with jax.enable_x64(True):
        data = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a,
                            data)
        train, norm = map(np.asarray, jax.jit(jax.vmap(one))(jnp.asarray(widths)))
    assert np.all(train[widths >= n] < 1e-10)  # interpolation
    assert np.all(train[widths < n] > 1e-3)
    assert widths[np.argmax(norm)] == n
