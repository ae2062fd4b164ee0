"""bootstrap_bias_variance: mlxtend's bootstrap decomposition (GROUND_TRUTH §4), every
round trained in one call; checked against scikit-learn fits of the same resamples."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from overfit import (
    bootstrap_bias_variance,
    classification,
    linear,
    mlp,
    polynomial,
    regression,
    resample,
)
from overfit.train import fit

KEY = jax.random.key(3)


def _sets(data, rounds):
    """The resamples bootstrap_bias_variance draws from KEY, and its init keys."""
    key_data, key_init = jax.random.split(KEY)
    sets = jax.vmap(resample, in_axes=(0, None))(jax.random.split(key_data, rounds), data)
    return sets, jax.random.split(key_init, rounds)


def test_closed_form_rounds_are_scikit_learns_least_squares_on_the_same_resamples():
    """mlxtend's MSE terms from a PolynomialFeatures + LinearRegression fit per round:
    least squares predicts the same whatever the basis (Legendre here, powers there)."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    data = regression(jax.random.key(0), target="cos", n_train=30, n_test=100, noise=0.3)
    got = bootstrap_bias_variance(polynomial(8), data, key=KEY, rounds=40,
                                  method="closed_form", hparams={"degree": 3})
    sets, _ = _sets(data, 40)
    xt, yt = np.asarray(data.x_test, np.float64), np.asarray(data.y_test, np.float64)
    preds = np.stack([make_pipeline(PolynomialFeatures(3), LinearRegression()).fit(
        np.asarray(x, np.float64), np.asarray(y, np.float64)).predict(xt)
        for x, y in zip(sets.x_train, sets.y_train)])
    np.testing.assert_allclose(got.preds, preds, rtol=1e-3, atol=1e-3)
    main = preds.mean(axis=0)
    want = {"loss": np.mean((preds - yt) ** 2), "bias2": np.mean((main - yt) ** 2),
            "variance": np.mean(preds.var(axis=0)), "noise": 0.0}
    for name, value in want.items():
        assert float(got.terms[name].value) == pytest.approx(value, rel=1e-3, abs=1e-6), name
    # mlxtend's identity, exact with ddof=0
    t = got.terms
    assert float(t["loss"].value) == pytest.approx(float(t["bias2"].value + t["variance"].value),
                                                   rel=1e-5)


def test_with_the_noise_variance_the_bias_is_against_the_truth():
    data = regression(jax.random.key(0), target="cos", n_train=30, n_test=200, noise=0.3)
    kw = dict(key=KEY, rounds=30, method="closed_form", hparams={"degree": 2})
    truth = bootstrap_bias_variance(polynomial(8), data, noise=0.09, **kw)
    noisy = bootstrap_bias_variance(polynomial(8), data, **kw)
    np.testing.assert_array_equal(truth.preds, noisy.preds)
    main = np.mean(truth.preds, axis=0)
    t = truth.terms
    f = np.asarray(data.f_test)
    assert float(t["bias2"].value) == pytest.approx(float(np.mean((main - f) ** 2)), rel=1e-5)
    assert float(t["noise"].value) == pytest.approx(0.09)
    assert float(t["loss"].value) == pytest.approx(
        float(t["bias2"].value + t["variance"].value) + 0.09, rel=1e-5)
    assert float(t["variance"].value) == float(noisy.terms["variance"].value)
    # against y the noise sits inside the bias: larger by about the noise variance
    assert float(noisy.terms["bias2"].value) - float(t["bias2"].value) == pytest.approx(
        0.09, rel=0.25)


def test_gradient_rounds_train_as_separate_fits_and_classify_by_their_logits():
    data = classification(jax.random.key(1), shape="moons", n_train=40, n_val=10, n_test=60,
                          noise=0.3)
    model, kw = mlp(2, (8,), activation="tanh"), dict(optimizer=optax.adam(0.05), epochs=30)
    got = bootstrap_bias_variance(model, data, key=KEY, rounds=4, **kw)
    sets, inits = _sets(data, 4)
    one = jax.tree.map(lambda a: a[2], sets)
    alone = fit(model, one, key=inits[2], **kw)
    np.testing.assert_allclose(got.preds[2], model.apply(alone.params, alone.state, data.x_test),
                               rtol=1e-4, atol=1e-5)
    labels, y = np.asarray(got.preds) > 0, np.asarray(data.y_test)
    t = {k: float(v.value) for k, v in got.terms.items()}
    assert t["0-1 loss"] == pytest.approx(np.mean(labels != y))
    assert t["0-1 loss"] == pytest.approx(t["0-1 bias"] + t["0-1 net variance"], abs=1e-6)
    # the cross-entropy of the sigmoid of each logit, averaged over rounds and points
    z = np.asarray(got.preds, np.float64)
    nll = np.where(y == 1, np.logaddexp(0, -z), np.logaddexp(0, z))
    assert t["cross-entropy"] == pytest.approx(nll.mean(), rel=1e-4)
    assert t["cross-entropy"] == pytest.approx(t["CE bias"] + t["CE variance"], rel=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda d, c: bootstrap_bias_variance(linear(1), d, key=KEY, rounds=1),
     r"rounds=1 is out of range"),
    (lambda d, c: bootstrap_bias_variance(linear(1), d, key=KEY, method="svd"),
     r"method='svd'.*'gradient', 'closed_form'"),
    (lambda d, c: bootstrap_bias_variance(linear(2), c, key=KEY, noise=0.1),
     r"noise is the noise variance of regression targets"),
    (lambda d, c: bootstrap_bias_variance(linear(2), c, key=KEY, method="closed_form"),
     r"method='closed_form' is least squares on regression targets"),
    (lambda d, c: bootstrap_bias_variance(linear(2), c, key=KEY, loss="mse"),
     r"loss='mse' on class labels gives no logits"),
    (lambda d, c: bootstrap_bias_variance(polynomial(3), d, key=KEY, method="closed_form",
                                          epochs=5), r"\['epochs'\] are options of method="),
    (lambda d, c: bootstrap_bias_variance(polynomial(3), d, key=KEY, method="closed_form",
                                          hparams={"width": 2}), r"\['width'\] are not knobs"),
    (lambda d, c: bootstrap_bias_variance(polynomial(3), d, key=KEY, method="closed_form",
                                          hparams={"degree": 9}), r"degree"),
    (lambda d, c: bootstrap_bias_variance(linear(1), d, key=KEY, noise=-1.0),
     r"noise=-1.0 is out of range"),
    (lambda d, c: bootstrap_bias_variance(linear(1), d, key=KEY, ridge=0.1),
     r"ridge=0.1 is method='closed_form''s L2 strength"),
    (lambda d, c: bootstrap_bias_variance(linear(1), d, key=KEY, ridge=jnp.full(3, 0.1)),
     r"is method='closed_form''s L2 strength"),
    # a weight given to fit by position fell on resampled rows, not the rows it named
    (lambda d, c: bootstrap_bias_variance(linear(1), d, key=KEY, weight=jnp.ones(10)),
     r"weight is per training row and a bootstrap resamples the rows"),
    (lambda d, c: bootstrap_bias_variance(linear(1), d, key=KEY, num_rounds=5),
     r"unknown argument 'num_rounds' \(mlxtend's num_rounds: use rounds=\)"),
    (lambda d, c: bootstrap_bias_variance(linear(1), d, key=KEY, noise="0.1"),
     r"noise='0.1' must be a number"),
    (lambda d, c: bootstrap_bias_variance(linear(1), dataclasses.replace(d, y_test=d.f_test),
                                          key=KEY, noise=0.1),
     r"the noise would be counted twice"),
    (lambda d, c: bootstrap_bias_variance(linear(1), regression(KEY, n_train=10, n_test=0),
                                          key=KEY), r"no test points"),
    (lambda d, c: bootstrap_bias_variance(linear(3), d, key=KEY, method="closed_form"),
     r"does not take data.x_train rows of 1 feature"),
])
def test_bad_input_is_named(call, match):
    d = regression(jax.random.key(0), n_train=10, n_test=10)
    c = classification(jax.random.key(0), n_train=10, n_test=10)
    with pytest.raises(ValueError, match=match):
        call(d, c)


def test_a_square_loss_on_one_hot_targets_reports_no_cross_entropy():
    """Its outputs are near-probabilities: read as logits, a perfect classifier was charged
    a cross-entropy of ~0.31."""
    data = classification(jax.random.key(0), shape="gauss", n_train=40, n_test=50)
    kw = dict(optimizer=optax.adam(0.05), epochs=60)
    square = bootstrap_bias_variance(mlp(2, (8,), n_out=2), data, key=KEY, rounds=3,
                                     loss="mse_onehot", **kw)
    assert "cross-entropy" not in square.terms and "CE bias" not in square.terms
    labels = np.argmax(np.asarray(square.preds), axis=-1)
    assert float(square.terms["0-1 loss"].value) == pytest.approx(
        np.mean(labels != np.asarray(data.y_test)))
    logits = bootstrap_bias_variance(mlp(2, (8,), n_out=2), data, key=KEY, rounds=3, **kw)
    assert "cross-entropy" in logits.terms
    # a loss function of one's own trains logits too (only the named square loss does not)
    own = bootstrap_bias_variance(
        mlp(2, (8,)), data, key=KEY, rounds=3,
        loss=lambda out, y: optax.sigmoid_binary_cross_entropy(out, y.astype(out.dtype)), **kw)
    assert "cross-entropy" in own.terms


def test_a_batch_of_data_sets_is_refused():
    d = jax.vmap(lambda k: regression(k, n_train=10, n_test=10))(jax.random.split(KEY, 2))
    with pytest.raises(ValueError, match="single data set"):
        bootstrap_bias_variance(linear(1), d, key=KEY, method="closed_form")
    assert jnp.ndim(d.x_train) == 3
