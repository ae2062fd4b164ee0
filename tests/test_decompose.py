"""Decompositions (GROUND_TRUTH §4): identities, mlxtend parity, and the real estimation path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import overfit as of
from overfit import decompose


def _random(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


def test_standard_errors_are_across_test_points():
    """Test points are an i.i.d. sample: the SE of a point-average is std(ddof=1) / sqrt(n)."""
    preds = jnp.array([[0.0, 1.0, 2.0, 3.0], [2.0, 1.0, 0.0, 3.0]])
    y = jnp.array([1.0, 1.0, 1.0, 1.0])
    t = decompose.squared(preds, y=y)
    # per point: loss (1, 0, 1, 4), variance (1, 0, 1, 0), bias2 (0, 0, 0, 4)
    np.testing.assert_allclose(t.loss.value, 1.5)
    np.testing.assert_allclose(t.loss.se, np.sqrt(9.0 / 3) / 2, rtol=1e-6)  # ddof=1: 9 / 3
    np.testing.assert_allclose(t.variance.se, np.sqrt(1.0 / 3) / 2, rtol=1e-6)
    np.testing.assert_allclose(t.bias2.se, np.sqrt(12.0 / 3) / 2, rtol=1e-6)


def test_squared_identities_against_noisy_targets_and_against_the_truth():
    preds, y = _random((50, 200)), _random((200,), 1)
    t = decompose.squared(preds, y=y)  # mlxtend's mode: loss == bias2 + variance exactly
    np.testing.assert_allclose(t.loss.value, t.bias2.value + t.variance.value, rtol=1e-6)
    np.testing.assert_allclose(t.loss.value, jnp.mean((preds - y) ** 2), rtol=1e-6)
    f = _random((200,), 2)
    t = decompose.squared(preds, f=f, noise=0.25)
    np.testing.assert_allclose(t.loss.value, t.bias2.value + t.variance.value + 0.25, rtol=1e-6)
    np.testing.assert_allclose(t.noise.value, 0.25, rtol=1e-6)
    u = decompose.squared(preds, f=f, noise=0.25, ddof=1)
    np.testing.assert_allclose(u.variance.value, t.variance.value * 50 / 49, rtol=1e-5)
    # the unbiased bias2 keeps bias2 + variance equal to the mean squared deviation from f
    np.testing.assert_allclose(u.bias2.value + u.variance.value, jnp.mean((preds - f) ** 2),
                               rtol=1e-5)


def test_integer_predictions_keep_a_fractional_noise_variance():
    """The noise variance was cast to the predictions' dtype: 0.25 became 0 for integers."""
    preds, f = jnp.array([[0, 1, 2], [1, 1, 3]]), jnp.array([0.5, 1.0, 2.5])
    d = decompose.squared(preds, f=f, noise=0.25)
    # mean over points of (f - main)^2 = 0 and Var = (0.25, 0, 0.25)
    np.testing.assert_allclose(d.noise.value, 0.25)
    np.testing.assert_allclose(d.loss.value, 0.5 / 3 + 0.25, rtol=1e-6)
    nested = decompose.squared_nested(preds[:, None, :], f=f, noise=0.25)
    np.testing.assert_allclose(nested.noise.value, 0.25)


def test_finite_ensemble_correction_recovers_a_known_variance():
    """Predictions = f + N(0, v): ddof=0 is low by (R-1)/R, ddof=1 is right."""
    r, n, v = 5, 20_000, 0.5
    f = _random((n,), 3)
    preds = f + jnp.sqrt(v) * _random((r, n), 4)
    biased = decompose.squared(preds, f=f, noise=0.0).variance
    unbiased = decompose.squared(preds, f=f, noise=0.0, ddof=1)
    assert abs(unbiased.variance.value - v) < 4 * unbiased.variance.se
    assert abs(biased.value - v * (r - 1) / r) < 4 * biased.se
    assert abs(unbiased.bias2.value) < 4 * unbiased.bias2.se  # true bias is 0


def test_zero_one_domingos_identities():
    labels = jax.random.randint(jax.random.key(0), (41, 300), 0, 2)
    y = jax.random.randint(jax.random.key(1), (300,), 0, 2)
    z = decompose.zero_one(labels, y)
    np.testing.assert_allclose(z.loss.value, jnp.mean(labels != y), rtol=1e-6)
    np.testing.assert_allclose(z.loss.value, z.bias.value + z.net_variance.value, atol=1e-6)
    # two classes: net variance = unbiased - biased variance
    np.testing.assert_allclose(z.net_variance.value,
                               z.unbiased_variance.value - z.biased_variance.value, atol=1e-6)
    np.testing.assert_allclose(z.variance.value,
                               z.unbiased_variance.value + z.biased_variance.value, atol=1e-6)
    labels = jax.random.randint(jax.random.key(2), (40, 300), 0, 5)  # multiclass, with ties
    y = jax.random.randint(jax.random.key(3), (300,), 0, 5)
    z = decompose.zero_one(labels, y, n_classes=5)
    np.testing.assert_allclose(z.loss.value, z.bias.value + z.net_variance.value, atol=1e-6)
    assert z.net_variance.value > z.unbiased_variance.value - z.biased_variance.value


def test_kohavi_wolpert_terms_by_hand_and_their_identity():
    # one point, label 0, four models predicting 0, 0, 1, 2: P(pred) = (1/2, 1/4, 1/4)
    kw = decompose.kohavi_wolpert(jnp.array([[0], [0], [1], [2]]), jnp.array([0]), n_classes=3)
    np.testing.assert_allclose([kw.loss.value, kw.bias2.value, kw.variance.value,
                                kw.noise.value], [0.5, 0.1875, 0.3125, 0.0], rtol=1e-6)
    # random models, five classes, label noise: loss = noise + bias2 + variance, per point
    preds = jax.random.randint(jax.random.key(3), (40, 200), 0, 5)
    y = jax.random.randint(jax.random.key(4), (200,), 0, 5)
    for ddof in (0, 1):
        kw = decompose.kohavi_wolpert(preds, y, n_classes=5, flip=0.3, ddof=ddof)
        np.testing.assert_allclose(kw.loss.value, kw.noise.value + kw.bias2.value
                                   + kw.variance.value, rtol=1e-5)
    # two classes: the noise of a flip rate q is q (1 - q)
    two = decompose.kohavi_wolpert(preds % 2, y % 2, n_classes=2, flip=0.2)
    np.testing.assert_allclose(two.noise.value, 0.2 * 0.8, rtol=1e-6)


def test_kohavi_wolpert_loss_is_the_error_rate_on_noisy_labels():
    """Monte Carlo: observed labels drawn with the flip rule, every model scored on them."""
    rng = np.random.default_rng(0)
    k, q, r, n = 4, 0.25, 10, 300
    preds = rng.integers(0, k, (r, n))
    y = rng.integers(0, k, n)
    draws = 4000
    moved = rng.random((draws, n)) < q
    observed = np.where(moved, (y + rng.integers(1, k, (draws, n))) % k, y)  # (draws, n)
    errors = (preds[None] != observed[:, None]).mean(axis=(0, 1))  # per point
    kw = decompose.kohavi_wolpert(jnp.asarray(preds), jnp.asarray(y), n_classes=k, flip=q)
    se = np.sqrt(0.25 / (draws * n))  # draws x n independent labels, each error in [0, 1]
    assert abs(float(kw.loss.value) - errors.mean()) < 4 * se


def test_kohavi_wolpert_ddof_1_is_unbiased_over_the_models():
    """R = 4 models per draw from a known label distribution: averaged over many draws,
    ddof=1 recovers the true bias2 and variance, the plug-in terms do not."""
    rng = np.random.default_rng(1)
    p = np.array([0.6, 0.3, 0.1])  # P(pred = c) at every point; the label is 0
    true_var, true_bias2 = 0.5 * (1 - np.sum(p**2)), 0.5 * np.sum((np.eye(3)[0] - p) ** 2)
    preds = rng.choice(3, size=(2000, 4, 50), p=p)
    y = jnp.zeros(50, int)
    terms = {ddof: jax.vmap(lambda d, ddof=ddof: jnp.stack([  # (draws, 2): bias2, variance
        t.value for t in decompose.kohavi_wolpert(d, y, n_classes=3, ddof=ddof)[1:3]]))(
            jnp.asarray(preds)) for ddof in (0, 1)}
    np.testing.assert_allclose(terms[1].mean(axis=0), [true_bias2, true_var], rtol=0.01)
    assert terms[0].mean(axis=0)[1] < 0.8 * true_var  # plug-in: (R-1)/R of it


def test_zero_one_mode_breaks_ties_toward_the_smallest_label():
    labels = jnp.array([[0, 2], [1, 1], [1, 2], [0, 1]])  # point 0: 0 and 1 tie; point 1: 1 and 2
    z = decompose.zero_one(labels, jnp.array([1, 2]), n_classes=3)
    np.testing.assert_array_equal(z.main, [0, 1])


def test_a_binary_models_probabilities_are_cut_at_one_half():
    """logits=False: one output per point is P(class 1) (a square loss on 0/1 labels),
    cut at 1/2; it was read as a logit, cut at 0 (every output 0.1-0.4 called class 1)."""
    p = jnp.array([[0.1, 0.6, 0.4], [0.3, 0.9, 0.2], [0.4, 0.7, 0.8]])  # 3 models, 3 points
    terms = decompose.classifier(p, jnp.array([0, 1, 0]), logits=False)
    # the predicted labels: [[0, 1, 0], [0, 1, 0], [0, 1, 1]]: one error in nine
    assert float(terms["0-1 loss"].value) == pytest.approx(1 / 9)
    assert "cross-entropy" not in terms
    # as logits the same numbers are all positive: class 1 everywhere, loss 2/3
    assert float(decompose.classifier(p, jnp.array([0, 1, 0]))["0-1 loss"].value) == \
        pytest.approx(2 / 3)


def test_bool_labels_are_labels():
    """fit takes bool labels; the decompositions refused them."""
    preds = jnp.array([[0, 1, 1], [1, 1, 0]])
    y = jnp.array([False, True, True])
    for a, b in ((decompose.zero_one(preds, y), decompose.zero_one(preds, y.astype(int))),
                 (decompose.kohavi_wolpert(preds, y, flip=0.1),
                  decompose.kohavi_wolpert(preds, y.astype(int), flip=0.1))):
        for ta, tb in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(ta, tb)
    ce = decompose.cross_entropy(jnp.full((2, 3, 2), 0.5), y)
    assert float(ce.loss.value) == pytest.approx(np.log(2.0))


def test_cross_entropy_yang_identity():
    probs = jax.nn.softmax(2.0 * _random((30, 100, 4)), axis=-1)
    y = jax.random.randint(jax.random.key(5), (100,), 0, 4)
    c = decompose.cross_entropy(probs, y)
    log_p_y = jnp.log(probs[:, jnp.arange(100), y])
    np.testing.assert_allclose(c.loss.value, -jnp.mean(log_p_y), rtol=1e-5)
    np.testing.assert_allclose(c.loss.value, c.bias.value + c.variance.value, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(c.main, axis=-1), 1.0, atol=1e-5)
    # variance = E KL(pibar || pi), computed the long way
    kl = jnp.sum(c.main * (jnp.log(c.main) - jnp.log(probs)), axis=-1)
    np.testing.assert_allclose(c.variance.value, jnp.mean(kl), rtol=1e-4)
    assert c.variance.value > 0
    same = decompose.cross_entropy(jnp.broadcast_to(probs[0], probs.shape), y)
    assert abs(same.variance.value) < 1e-6  # identical models: no variance


def test_cross_entropy_from_logits_agrees_and_stays_exact_where_probabilities_underflow():
    logits = 2.0 * _random((30, 100, 4))
    y = jax.random.randint(jax.random.key(5), (100,), 0, 4)
    from_probs = decompose.cross_entropy(jax.nn.softmax(logits, axis=-1), y)
    from_logits = decompose.cross_entropy(logits, y, logits=True)
    for a, b in zip(from_probs[:3], from_logits[:3]):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-5)
    # confident networks: -log p(y) is the logit gap, up to 200 here, where a float32
    # probability is 0 and was charged -log(1e-30) = 69
    big = 100.0 * _random((8, 50, 2), seed=1)
    y = jax.random.randint(jax.random.key(2), (50,), 0, 2)
    c = decompose.cross_entropy(big, y, logits=True)
    z = np.asarray(big, np.float64)
    exact = -np.mean(z[:, np.arange(50), np.asarray(y)] - np.logaddexp(z[..., 0], z[..., 1]))
    np.testing.assert_allclose(c.loss.value, exact, rtol=1e-5)
    np.testing.assert_allclose(c.loss.value, c.bias.value + c.variance.value, rtol=1e-5)


def test_variance_split_recovers_init_and_sampling_parts():
    """h = a_S + b_(S,init) with Var(a) = 0.3, Var(b) = 0.7: law of total variance."""
    s, m, n = 400, 3, 200
    a = jnp.sqrt(0.3) * _random((s, 1, n), 6)
    b = jnp.sqrt(0.7) * _random((s, m, n), 7)
    split = decompose.variance_split(a + b)
    for term, truth in ((split.init, 0.7), (split.sampling, 0.3), (split.total, 1.0)):
        assert abs(term.value - truth) < 4 * term.se, (term, truth)


def test_nested_squared_terms_are_unbiased_where_pooling_the_models_is_not():
    """h = mu + a_S + e_(S,init), Var(a) = 1, Var(e) = 0.1, mu = f (no bias), noise 0.2:
    4 sets x 8 inits, 20000 test points. Pooled as 32 independent models, bias2 picks up
    A (m-1)/(Sm-1) = 0.226 and the variance loses it; the nested terms do not."""
    s, m, n = 4, 8, 20000
    f = _random((n,), 3)
    preds = f + _random((s, 1, n), 4) + jnp.sqrt(0.1) * _random((s, m, n), 5)
    nested = decompose.squared_nested(preds, f=f, noise=0.2)
    for term, truth in ((nested.bias2, 0.0), (nested.variance, 1.1), (nested.loss, 1.3)):
        assert abs(term.value - truth) < 4 * term.se, (term, truth)
    pooled = decompose.squared(preds.reshape(s * m, n), f=f, noise=0.2, ddof=1)
    assert pooled.bias2.value > 0.2 and pooled.variance.value < 0.9  # what nesting corrects
    # one init per set is the independent case: the same numbers as squared(ddof=1)
    one = decompose.squared_nested(preds[:, :1], f=f, noise=0.2)
    flat = decompose.squared(preds[:, 0], f=f, noise=0.2, ddof=1)
    for a, b in zip(one[:4], flat[:4]):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: decompose.squared(jnp.zeros((1, 5)), y=jnp.zeros(5)), "at least 2"),
        (lambda: decompose.squared(jnp.zeros((3, 5)), y=jnp.zeros(4)), r"shape \(5,\)"),
        (lambda: decompose.squared(jnp.zeros((3, 5)), f=jnp.zeros(5)), "noise"),
        (lambda: decompose.squared(jnp.zeros((3, 5)), f=jnp.zeros(5), noise=-0.1),
         r"noise=-0.1 is out of range"),
        (lambda: decompose.zero_one(jnp.zeros((3, 5)), jnp.zeros(5, int)),
         "preds must hold integer class labels; got dtype float32"),
        (lambda: decompose.zero_one(jnp.full((3, 5), 3), jnp.zeros(5, int), n_classes=2),
         "outside"),
        (lambda: decompose.cross_entropy(jnp.full((3, 5, 2), 0.7), jnp.zeros(5, int)),
         "sum(ming)? to 1"),
        (lambda: decompose.variance_split(jnp.zeros((3, 1, 5))), "n_inits >= 2"),
        (lambda: decompose.squared_nested(jnp.zeros((1, 4, 5)), f=jnp.zeros(5), noise=0.1),
         r"n_sets >= 2, n_inits, n_points\); got \(1, 4, 5\)"),
        # a one-output model's (R, n, 1) used to broadcast against f into (n,)-shaped "terms"
        (lambda: decompose.squared(jnp.zeros((3, 5, 1)), f=jnp.zeros(5), noise=0.1),
         r"preds must have shape \(n_models, n_points\); got \(3, 5, 1\)"),
        (lambda: decompose.zero_one(jnp.zeros((3, 5, 1), int), jnp.zeros(5, int)),
         r"preds must have shape \(n_models, n_points\)"),
        (lambda: decompose.cross_entropy(jnp.full((3, 5), 0.5), jnp.zeros(5, int)),
         r"probs must have shape \(n_models, n_points, n_classes\)"),
        # noise used to be dropped silently with y, ddof=5 gave NaN
        (lambda: decompose.squared(jnp.zeros((3, 5)), y=jnp.zeros(5), noise=0.5),
         "noise goes with f"),
        (lambda: decompose.squared(jnp.zeros((3, 5)), y=jnp.zeros(5), ddof=5),
         r"ddof=5.*0, 1"),
        (lambda: decompose.squared_nested(jnp.zeros((2, 2, 5)), f=jnp.zeros(5), noise=None),
         "noise .* is required"),
        (lambda: decompose.zero_one(jnp.full((3, 5), -1), jnp.full(5, -1)), "negative labels"),
        (lambda: decompose.cross_entropy(jnp.full((3, 5, 2), 0.5), jnp.zeros(5)),
         "y must hold integer class labels"),
        (lambda: jax.jit(decompose.zero_one)(jnp.zeros((3, 5), int), jnp.zeros(5, int)),
         "n_classes is required"),
        (lambda: decompose.kohavi_wolpert(jnp.zeros((3, 5), int), jnp.zeros(5, int), flip=1.0),
         r"flip=1.0 is out of range.*\[0, 1\)"),
        (lambda: decompose.kohavi_wolpert(jnp.zeros((3, 5), int), jnp.zeros(5, int), ddof=2),
         r"ddof=2"),
        (lambda: decompose.kohavi_wolpert(jnp.zeros((3, 5), int), jnp.zeros(5, int), flip=0.1),
         "flip needs another class"),
        # predicted labels 2 were read as a binary logit: class 1
        (lambda: decompose.classifier(jnp.zeros((3, 5), int), jnp.zeros(5, int)),
         r"outputs are int32 \(predicted labels\?\)"),
        (lambda: decompose.classifier(jnp.zeros((3, 5, 1)), jnp.zeros(5, int)),
         r"outputs have shape \(3, 5, 1\)"),
        (lambda: decompose.classifier(jnp.zeros(5), jnp.zeros(5, int)),
         r"outputs have shape \(5,\)"),
    ],
)
def test_bad_inputs_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_parity_with_mlxtend_on_identical_bootstrap_predictions():
    mlxtend = pytest.importorskip("mlxtend.evaluate")
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (30, 1))
    y = np.cos(1.5 * np.pi * x[:, 0]) + 0.1 * rng.normal(size=30)
    xt = rng.uniform(0, 1, (50, 1))
    yt = np.cos(1.5 * np.pi * xt[:, 0]) + 0.1 * rng.normal(size=50)

    class Recorder:
        """Wraps an estimator and keeps every round's test predictions."""

        def __init__(self, inner):
            self.inner, self.preds = inner, []

        def fit(self, X, Y):
            self.inner.fit(X, Y)
            return self

        def predict(self, X):
            out = self.inner.predict(X)
            self.preds.append(out)
            return out

    rec = Recorder(make_pipeline(PolynomialFeatures(4), LinearRegression()))
    loss, bias, var = mlxtend.bias_variance_decomp(rec, x, y, xt, yt, loss="mse",
                                                   num_rounds=100, random_seed=1)
    t = decompose.squared(jnp.asarray(np.array(rec.preds), jnp.float32), y=jnp.asarray(yt))
    np.testing.assert_allclose([t.loss.value, t.bias2.value, t.variance.value],
                               [loss, bias, var], rtol=1e-4)

    labels = (x[:, 0] > 0.5).astype(int) ^ (rng.uniform(size=30) < 0.2)
    labels_t = (xt[:, 0] > 0.5).astype(int)
    rec = Recorder(DecisionTreeClassifier(random_state=0))
    loss, bias, var = mlxtend.bias_variance_decomp(rec, x, labels, xt, labels_t,
                                                   loss="0-1_loss", num_rounds=100,
                                                   random_seed=1)
    z = decompose.zero_one(jnp.asarray(np.array(rec.preds)), jnp.asarray(labels_t))
    np.testing.assert_allclose([z.loss.value, z.bias.value, z.variance.value],
                               [loss, bias, var], rtol=1e-6)
    # and ours adds up where mlxtend's does not (rasbt/mlxtend#964)
    np.testing.assert_allclose(z.loss.value, z.bias.value + z.net_variance.value, atol=1e-6)


def test_fixed_design_least_squares_through_the_real_path():
    """GROUND_TRUTH §1 via sampler -> polynomial -> solver: n = 100, p = 10, s2 = 1.

    mean_i Var(yhat_i) = s2 p/n = 0.1; E train MSE = s2 (1 - p/n) = 0.9;
    E in-sample test error = s2 (1 + p/n) = 1.1.
    """
    n, p, draws = 100, 10, 2000
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(0), draws)
        # fixed design: every draw shares the grid inputs, only the noise changes
        data = jax.vmap(lambda k: of.regression(k, target="poly", n_train=n, n_val=0, n_test=0,
                                                noise=1.0, x_dist="grid"))(keys)
        model = of.polynomial(p - 1)
        params, state = model.init(keys[0])

        def fitted(d):
            coef = of.fit_linear(model, state, d.x_train, d.y_train)
            return model.apply(coef, state, d.x_train)

        yhat = jax.vmap(fitted)(data)
    assert np.allclose(data.x_train, data.x_train[0])
    f = data.f_train[0]  # poly is a cubic: degree 9 has no bias
    t = decompose.squared(yhat, f=f, noise=1.0, ddof=1)
    var_se = 0.1 * np.sqrt(2 / draws)  # chi-square spread of a variance estimate
    assert abs(t.variance.value - 0.1) < 4 * var_se
    train_mse = jnp.mean((yhat - data.y_train) ** 2, axis=1)
    se = float(jnp.std(train_mse) / np.sqrt(draws))
    assert abs(float(jnp.mean(train_mse)) - 0.9) < 4 * se
    fresh = f + jax.random.normal(jax.random.key(9), (draws, n))
    test_mse = jnp.mean((yhat - fresh) ** 2, axis=1)
    se = float(jnp.std(test_mse) / np.sqrt(draws))
    assert abs(float(jnp.mean(test_mse)) - 1.1) < 4 * se
