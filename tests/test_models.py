"""Tests of overfit.models: bases, capacity masking, initialisation and dropout.

Monte-Carlo checks use a 3-standard-error tolerance computed from the sample itself
(or from the exact sampling distribution where it is known).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from overfit.models import dropout, legendre, linear, mlp, polynomial, random_features
from overfit.solve import fit_linear

KEY = jax.random.key(0)


# ----------------------------------------------------------------------------- legendre


def test_legendre_matches_numpy_legvander():
    t = np.linspace(-1.0, 1.0, 501)
    degrees = (0, 1, 2, 7, 30)
    with jax.enable_x64(True):
        bases = jax.jit(lambda t: [legendre(t, d) for d in degrees])(jnp.asarray(t))
        for d, got in zip(degrees, bases):
            got = np.asarray(got)
            want = np.polynomial.legendre.legvander(t, d) * np.sqrt(2 * np.arange(d + 1) + 1)
            assert got.shape == (t.size, d + 1)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_legendre_orthonormal_under_uniform_measure():
    d = 10
    with jax.enable_x64(True):
        # Gauss-Legendre with 30 nodes integrates degree <= 59 exactly: products of two
        # degree-<=20 columns are integrated to rounding error.
        nodes, weights = np.polynomial.legendre.leggauss(30)
        L = np.asarray(legendre(jnp.asarray(nodes), 20))
        gram = (L.T * weights) @ L / 2.0  # mean under U[-1, 1]
        np.testing.assert_allclose(gram, np.eye(21), atol=1e-12)
        # Mean over a fine uniform (midpoint) grid: quadrature error ~ h^2/24 * |f''|,
        # about 1e-6 here for h = 1e-4 and products of degree <= 20.
        n = 20_000
        grid = (np.arange(n) + 0.5) / n * 2.0 - 1.0
        L = np.asarray(legendre(jnp.asarray(grid), d))
        np.testing.assert_allclose(L.T @ L / n, np.eye(d + 1), atol=1e-5)


# ----------------------------------------------------------------------------- polynomial


def test_polynomial_masks_columns_above_degree():
    model = polynomial(15)
    x = jnp.linspace(0.0, 1.0, 40)[:, None]
    coef = jax.random.normal(jax.random.key(1), (16,))

    @jax.jit
    def run(d):
        params, state = model.init(KEY, degree=d)
        out = model.apply({"coef": coef}, state, x)
        return params, model.features(state, x), model.n_params(state), out

    for d in (0, 3, 15):
        params, phi, n_params, out = run(d)
        phi = np.asarray(phi)
        assert phi.shape == (40, 16)
        assert np.all(phi[:, d + 1:] == 0.0)
        assert np.all(np.abs(phi[:, : d + 1]).max(axis=0) > 0.5)  # live columns are live
        assert int(n_params) == d + 1
        np.testing.assert_allclose(out, phi @ np.asarray(coef), rtol=1e-5, atol=1e-5)
        assert params["coef"].shape == (16,) and np.all(np.asarray(params["coef"]) == 0)


def test_polynomial_features_are_legendre_on_the_rescaled_domain():
    model = polynomial(4, domain=(2.0, 6.0))
    _, state = model.init(KEY)
    x = np.linspace(2.0, 6.0, 9)
    t = (x - 4.0) / 2.0
    want = np.polynomial.legendre.legvander(t, 4) * np.sqrt(2 * np.arange(5) + 1)
    np.testing.assert_allclose(model.features(state, jnp.asarray(x[:, None])), want, atol=1e-5)


def test_polynomial_vmap_init_gives_per_member_degree():
    model = polynomial(15)
    degrees = (0, 3, 9, 15)
    x = jnp.linspace(0.0, 1.0, 8)[:, None]  # no point at the centre, where odd P_k vanish

    @jax.jit
    def run(keys, degrees):
        params, state = jax.vmap(lambda k, d: model.init(k, degree=d))(keys, degrees)
        phi = jax.vmap(model.features, in_axes=(0, None))(state, x)
        return params, state, jax.vmap(model.n_params)(state), phi

    params, state, n_params, phi = run(jax.random.split(KEY, 4), jnp.array(degrees))
    np.testing.assert_array_equal(state["degree"], degrees)
    np.testing.assert_array_equal(n_params, [1, 4, 10, 16])
    assert params["coef"].shape == (4, 16)
    phi = np.asarray(phi)
    for i, d in enumerate(degrees):
        assert np.all(phi[i, :, d + 1:] == 0.0) and np.all(phi[i, :, d] != 0.0)


def test_degree_20_fit_on_a_wide_domain_is_accurate_where_raw_powers_fail():
    """Exact polynomials of degree d on [0, 100], fitted by least squares (float64).
    The Legendre basis recovers them to rounding error at every degree; raw powers x**k
    break down once cond(Vandermonde) passes 1/eps (~1e16), by degree 8 here."""
    model = polynomial(20, domain=(0.0, 100.0))
    x = np.linspace(0.0, 100.0, 200)[:, None]
    x_test = np.linspace(0.0, 100.0, 1001)[:, None]

    def truth(x, coef):  # computed with NumPy, independently of the model
        d = coef.size - 1
        return np.polynomial.legendre.legvander((x[:, 0] - 50.0) / 50.0, d) @ (
            coef * np.sqrt(2 * np.arange(d + 1) + 1))

    with jax.enable_x64(True):

        @jax.jit
        def run(degree, f):  # one compile: the degree is a masked, traced capacity
            _, state = model.init(KEY, degree=degree)
            params = fit_linear(model, state, x, f)
            return params["coef"], model.apply(params, state, x_test)

        for d in (4, 8, 20):
            coef = np.random.default_rng(d).standard_normal(d + 1)
            f, f_test = truth(x, coef), truth(x_test, coef)
            fitted, pred = (np.asarray(a) for a in run(d, f))
            assert pred.dtype == np.float64
            np.testing.assert_allclose(fitted[: d + 1], coef, rtol=0, atol=1e-8)
            assert np.all(fitted[d + 1:] == 0.0)
            scale = np.abs(f_test).max()
            err_legendre = np.abs(pred - f_test).max() / scale
            vander = x ** np.arange(d + 1)
            w_raw = np.linalg.lstsq(vander, f, rcond=None)[0]
            err_raw = np.abs(x_test ** np.arange(d + 1) @ w_raw - f_test).max() / scale
            assert err_legendre < 1e-10, d
            cond = np.linalg.cond(vander)
            if d == 4:
                assert cond < 1e9 and err_raw < 1e-6
            else:  # cond > 1/eps: raw powers lose the polynomial altogether
                assert cond > 1e16 and err_raw > 1e-2 and err_raw > 1e6 * err_legendre, d
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RankWarning: that is the point
        w_pf = np.polyfit(x[:, 0], f, 20)  # np.polyfit scales the Vandermonde columns
    err_polyfit = np.abs(np.polyval(w_pf, x_test[:, 0]) - f_test).max() / scale
    assert err_polyfit > 1e-2 and err_polyfit > 1e6 * err_legendre


# ----------------------------------------------------------------------------- random features


def _state_and_features(model, x, **hparams):
    _, state = model.init(KEY, **hparams)
    return state, model.features(state, x)


def test_random_features_masking_and_scale():
    model = random_features(10, n_in=2, scale=1.5)
    x = np.random.default_rng(1).standard_normal((6, 2)).astype(np.float32)
    state, phi = jax.jit(lambda x: _state_and_features(model, x, n_features=4))(x)
    phi = np.asarray(phi)
    assert phi.shape == (6, 10)
    assert np.all(phi[:, 4:] == 0.0)
    z = np.asarray(x) @ np.asarray(state["w"]) + np.asarray(state["b"])
    np.testing.assert_allclose(phi[:, :4], np.sqrt(2.0 / 4) * np.cos(z[:, :4]), rtol=1e-5,
                               atol=1e-6)
    assert int(model.n_params(state)) == 4
    b = np.asarray(state["b"])
    assert np.all((b >= 0) & (b < 2 * np.pi))


def test_random_fourier_features_approximate_the_gaussian_kernel():
    """W ~ N(0, s^2/n_in), b ~ U[0, 2pi):
    E[2 cos(w.x+b) cos(w.x'+b)] = exp(-s^2 |x-x'|^2 / (2 n_in))."""
    n_feat, n_in, scale = 20_000, 2, 1.3
    model = random_features(n_feat, n_in=n_in, scale=scale)
    x = np.array([[0.0, 0.0], [0.3, -0.2], [1.0, 0.5], [-0.8, 1.2]], np.float32)
    phi = np.asarray(jax.jit(lambda x: _state_and_features(model, x)[1])(x), dtype=np.float64)
    for i in range(4):
        # the kernel estimate is the mean over features of 2 cos(.) cos(.)
        terms = n_feat * phi[0] * phi[i]
        est, se = terms.mean(), terms.std(ddof=1) / np.sqrt(n_feat)
        delta2 = float(np.sum((x[0].astype(np.float64) - x[i]) ** 2))
        assert abs(est - np.exp(-(scale**2) * delta2 / (2 * n_in))) < 3 * se + 1e-12, i
    # the diagonal: mean of 2 cos^2 over features is 1 (3 SE)
    terms = n_feat * phi[2] ** 2
    assert abs(terms.mean() - 1.0) < 3 * terms.std(ddof=1) / np.sqrt(n_feat)


def test_random_relu_features():
    model = random_features(2000, n_in=3, kind="relu", scale=0.5)
    x = np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32)
    state, phi = jax.jit(lambda x: _state_and_features(model, x, n_features=1500))(x)
    phi = np.asarray(phi)
    w, b = np.asarray(state["w"]), np.asarray(state["b"])
    want = np.sqrt(2.0 / 1500) * np.maximum(np.asarray(x) @ w + b, 0.0)
    np.testing.assert_allclose(phi[:, :1500], want[:, :1500], rtol=1e-5, atol=1e-6)
    assert np.all(phi[:, 1500:] == 0.0) and np.all(phi >= 0.0)
    # W ~ N(0, 1/n_in), b ~ N(0, scale^2): sample std within 3 SE (SE of a std ~ sigma/sqrt(2N))
    for sample, sigma in ((w, 1 / np.sqrt(3)), (b, 0.5)):
        assert abs(sample.std() - sigma) < 3 * sigma / np.sqrt(2 * sample.size)


# ----------------------------------------------------------------------------- linear


def test_linear_model():
    model = linear(3, n_out=2)
    params, state = model.init(KEY)
    assert params["coef"].shape == (4, 2)
    assert int(model.n_params(state)) == (3 + 1) * 2
    x = jax.random.normal(KEY, (5, 3))
    coef = jax.random.normal(jax.random.key(3), (4, 2))
    want = np.asarray(x) @ np.asarray(coef[:3]) + np.asarray(coef[3])
    np.testing.assert_allclose(model.apply({"coef": coef}, state, x), want, rtol=1e-5, atol=1e-6)
    nobias = linear(3, bias=False)
    _, state = nobias.init(KEY)
    np.testing.assert_array_equal(nobias.features(state, x), x)
    assert int(nobias.n_params(state)) == 3
    assert nobias.apply({"coef": jnp.ones(3)}, state, x).shape == (5,)


# ----------------------------------------------------------------------------- mlp


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])  # sigmoid(0) != 0: masked anyway
def test_mlp_masked_width_behaves_like_a_narrow_network(activation):
    w = 3
    big = mlp(2, (8, 8), activation=activation)
    small = mlp(2, (w, w), activation=activation)

    @jax.jit
    def run(x):
        params, state = big.init(KEY, width=w)
        _, small_state = small.init(KEY)
        sliced = [
            {"w": params[0]["w"][:, :w], "b": params[0]["b"][:w]},
            {"w": params[1]["w"][:w, :w], "b": params[1]["b"][:w]},
            {"w": params[2]["w"][:w, :], "b": params[2]["b"]},
        ]
        # garbage in every masked weight and bias
        garbage = [
            {"w": params[0]["w"].at[:, w:].set(100.0), "b": params[0]["b"].at[w:].set(7.0)},
            {"w": params[1]["w"].at[w:, :].set(9.0).at[:, w:].set(-5.0),
             "b": params[1]["b"].at[w:].set(3.0)},
            {"w": params[2]["w"].at[w:, :].set(11.0), "b": params[2]["b"]},
        ]
        return (big.n_params(state), small.n_params(small_state), big.apply(params, state, x),
                small.apply(sliced, small_state, x), big.apply(garbage, state, x))

    x = np.random.default_rng(4).standard_normal((7, 2)).astype(np.float32)
    n_big, n_small, out, out_small, out_garbage = run(x)
    assert int(n_big) == int(n_small) == (2 * w + w) + (w * w + w) + (w * 1 + 1)
    assert out.shape == (7,)
    np.testing.assert_allclose(out, out_small, rtol=1e-5, atol=1e-6)
    # masked units are silent: garbage of 100 there would move the output by O(1)
    np.testing.assert_allclose(out_garbage, out, rtol=1e-6, atol=1e-7)


def test_mlp_gradient_of_masked_units_is_exactly_zero():
    w = 3
    model = mlp(2, (8, 8), activation="sigmoid")
    x = np.random.default_rng(5).standard_normal((9, 2)).astype(np.float32)
    y = np.arange(9.0, dtype=np.float32)

    @jax.jit
    def grads():
        params, state = model.init(KEY, width=w)
        return jax.grad(lambda p: jnp.mean((model.apply(p, state, x) - y) ** 2))(params)

    g = jax.tree.map(np.asarray, grads())
    assert np.all(g[0]["w"][:, w:] == 0) and np.all(g[0]["b"][w:] == 0)
    assert np.all(g[1]["w"][w:, :] == 0) and np.all(g[1]["w"][:, w:] == 0)
    assert np.all(g[1]["b"][w:] == 0) and np.all(g[2]["w"][w:, :] == 0)
    # and the live block does learn
    assert np.all(np.abs(g[1]["w"][:w, :w]) > 0) and np.all(np.abs(g[2]["w"][:w]) > 0)


def test_masked_units_start_at_zero_so_norms_are_the_narrow_networks():
    """Weights into and out of masked units were drawn like live ones: an L2 penalty
    or a global-norm clip then saw a norm the narrow network does not have, and a
    width-10 member of mlp(1, (16,)) trained apart from mlp(1, (10,)) under clipping."""
    big, small = mlp(1, (16,)), mlp(1, (10,))
    params, state = big.init(KEY, width=10)
    assert not np.any(params[0]["w"][:, 10:]) and not np.any(params[0]["b"][10:])
    assert not np.any(params[1]["w"][10:])
    sliced = [{"w": params[0]["w"][:, :10], "b": params[0]["b"][:10]},
              {"w": params[1]["w"][:10], "b": params[1]["b"]}]
    norm = optax.global_norm
    np.testing.assert_allclose(norm(params), norm(sliced), rtol=1e-6)
    x = np.linspace(-1, 1, 16, dtype=np.float32)[:, None]
    y = np.sin(3 * x[:, 0])
    opt = optax.chain(optax.clip_by_global_norm(0.1), optax.sgd(0.5))

    def train(model, p, s):
        def step(_, carry):
            p, o = carry
            g = jax.grad(lambda q: jnp.mean((model.apply(q, s, x) - y) ** 2))(p)
            u, o = opt.update(g, o, p)
            return optax.apply_updates(p, u), o

        p, _ = jax.jit(lambda p: jax.lax.fori_loop(0, 20, step, (p, opt.init(p))))(p)
        return model.apply(p, s, x)

    np.testing.assert_allclose(train(big, params, state),
                               train(small, sliced, small.init(KEY)[1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation, gain", [("tanh", 1.0), ("relu", np.sqrt(2.0))])
def test_mlp_init_std_scales_with_live_fan_in(activation, gain):
    """Weights ~ N(0, gain^2 / live fan-in); SE of a sample std is sigma / sqrt(2N)."""
    model = mlp(4, (512, 512), activation=activation)
    widths = (16, 128)
    init = jax.jit(jax.vmap(lambda k, w: model.init(k, width=w)))
    params, state = init(jax.random.split(KEY, 2), jnp.array(widths))
    np.testing.assert_array_equal(state["width"], widths)
    for i, w in enumerate(widths):
        first = np.asarray(params[0]["w"][i])[:, :w]  # fan-in n_in = 4 whatever the width
        assert abs(first.std() - gain / 2.0) < 3 * (gain / 2.0) / np.sqrt(2 * first.size)
        sigma = gain / np.sqrt(w)
        for layer in (1, 2):
            live = np.asarray(params[layer]["w"][i])[:w, :w]  # fan-in w
            assert abs(live.std() - sigma) < 3 * sigma / np.sqrt(2 * live.size), w
            assert not np.any(np.asarray(params[layer]["w"][i])[w:])  # masked units: 0


def test_mlp_without_hidden_layers_is_a_linear_model():
    model = mlp(2, ())
    params, state = model.init(KEY)
    x = np.array([[1.0, 2.0], [-1.0, 0.5]], np.float32)
    want = x @ np.asarray(params[0]["w"]) + np.asarray(params[0]["b"])
    np.testing.assert_allclose(model.apply(params, state, x), want[:, 0], rtol=1e-6)
    assert int(model.n_params(state)) == 3


# ----------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("q", [0.2, 0.5, 0.8])
def test_dropout_moments(q):
    n, value = 200_000, 3.0
    x = jnp.full((n,), value)
    out = np.asarray(dropout(x, q, key=jax.random.key(int(q * 10))), dtype=np.float64)
    kept = value / (1.0 - q)
    assert set(np.unique(out)) <= {0.0, np.float64(np.float32(kept))}
    zero = np.mean(out == 0.0)
    se_zero = np.sqrt(q * (1 - q) / n)
    assert abs(zero - q) < 3 * se_zero
    sd = value * np.sqrt(q / (1 - q))
    assert abs(out.mean() - value) < 3 * sd / np.sqrt(n)
    # the sample variance is kept^2 p(1 - p) for zero fraction p: its SE is at most
    # kept^2 * se_zero (delta method, |1 - 2p| <= 1)
    assert abs(out.var() - value**2 * q / (1 - q)) < 3 * kept**2 * se_zero


def test_dropout_zero_rate_is_identity_and_rate_may_be_traced():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(dropout(jnp.asarray(x), 0.0, key=jax.random.key(1)), x)
    outs = jax.vmap(lambda q: dropout(x, q, key=jax.random.key(1)))(jnp.array([0.0, 0.5]))
    np.testing.assert_array_equal(outs[0], x)
    assert abs(float(jnp.mean(outs[1] == 0)) - 0.5) < 3 * np.sqrt(0.25 / 1000)


def test_mlp_dropout_only_in_training():
    model = mlp(2, (32,), drop_rate=0.5)
    plain = mlp(2, (32,))

    @jax.jit
    def run(x):
        params, state = model.init(KEY)
        _, plain_state = plain.init(KEY)
        _, state0 = model.init(KEY, drop_rate=0.0)  # a per-member rate of 0
        k1, k2 = jax.random.key(1), jax.random.key(2)
        return (plain.apply(params, plain_state, x), model.apply(params, state, x),
                model.apply(params, state, x, key=k1),
                model.apply(params, state, x, key=k1, train=True),
                model.apply(params, state, x, key=k2, train=True),
                model.apply(params, state0, x, key=k1, train=True))

    x = np.random.default_rng(6).standard_normal((10, 2)).astype(np.float32)
    ref, evaluation, evaluation_key, a, b, zero_rate = run(x)
    np.testing.assert_array_equal(evaluation, ref)
    np.testing.assert_array_equal(evaluation_key, ref)
    assert not np.allclose(a, ref) and not np.allclose(a, b)
    np.testing.assert_allclose(zero_rate, ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="key"):  # raised before params are touched
        model.apply(None, None, x, train=True)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: polynomial(-1), "max_degree"),
        (lambda: polynomial(5).init(KEY, degree=99), "degree"),
        (lambda: polynomial(3, domain=(1.0, 0.0)), "domain"),
        (lambda: mlp(1, drop_rate=1.0), "drop_rate"),
        (lambda: mlp(1, drop_rate=-0.1), "drop_rate"),
        (lambda: mlp(1, (8,)).init(KEY, width=9), "width"),
        (lambda: mlp(1, (8,)).init(KEY, drop_rate=0.3), "drop_rate=0.3 given to init.*without"),
        (lambda: dropout(jnp.ones(3), 1.0, key=KEY), r"drop_rate=1.0 is out of range"),
        (lambda: dropout(jnp.ones(3), -0.5, key=KEY), r"drop_rate=-0.5 is out of range"),
        (lambda: mlp(1, (0,)), "hidden"),
        (lambda: random_features(0), "max_features"),
        (lambda: random_features(5).init(KEY, n_features=6), "n_features"),
        (lambda: random_features(5, scale=0.0), "scale"),
        (lambda: linear(0), "n_in"),
        # each used to fail without naming its field, or to pass and give NaN / one column
        (lambda: mlp(2, 64), r"hidden=64 must be a sequence of widths, e.g. \(64,\)"),
        (lambda: mlp(2, drop_rate=jnp.array([0.1, 0.2])), r"drop_rate must be a scalar"),
        (lambda: polynomial(3, domain=(0.0, np.inf)), r"domain=\(0.0, inf\) is not allowed"),
        (lambda: polynomial(3, domain="01"), r"domain='01' must be a pair"),
        (lambda: polynomial(3, domain=(0, 1, 2)), r"domain=\(0, 1, 2\) must be a pair"),
        (lambda: linear(2, bias="no"), r"bias='no' must be True or False"),
        (lambda: legendre(jnp.zeros(3), -1), r"degree=-1 is out of range"),
        (lambda: legendre(jnp.zeros((3, 1)), 2), r"t must be \(n,\) points; got shape \(3, 1\)"),
        (lambda: polynomial(3).apply(*polynomial(3).init(KEY), jnp.ones((4, 2))),
         r"a polynomial takes rows of 1 input; got x of shape \(4, 2\)"),
    ],
)
def test_bad_inputs_raise_naming_the_field(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_init_names_the_knobs_a_model_has():
    # a polynomial given an MLP's knob failed in an inner function: "make_state() got an
    # unexpected keyword argument 'width'"
    with pytest.raises(TypeError, match=r"unexpected knobs \['width'\]; .* only knob is 'degree'"):
        polynomial(3).init(KEY, width=3)
    with pytest.raises(TypeError, match=r"only knob is 'n_features'"):
        random_features(5).init(KEY, degree=2)
    assert int(polynomial(3).init(KEY, degree=2)[1]["degree"]) == 2


def test_misspelled_choices_suggest_the_right_one():
    with pytest.raises(ValueError, match="activation.*Did you mean 'relu'"):
        mlp(1, activation="rellu")
    with pytest.raises(ValueError, match="kind.*Did you mean 'fourier'"):
        random_features(5, kind="fourir")


def test_hidden_widths_and_bias_in_any_sensible_form():
    """An array of widths and bias=1 worked before the checks above and still do."""
    assert mlp(2, np.array([8, 4])).init(KEY)[0][1]["w"].shape == (8, 4)
    assert mlp(2, jnp.array([8])).init(KEY)[0][0]["w"].shape == (2, 8)
    assert linear(2, bias=1).n_params(linear(2, bias=1).init(KEY)[1]) == 3
