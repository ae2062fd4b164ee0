"""Tests of overfit.solve: OLS / ridge / min-norm against NumPy, and the fixed-design
least-squares facts of GROUND_TRUTH §1 and the lesson's five-point example (§7) through
the real model + solver path.

Everything runs in float64 (``jax.enable_x64``); Monte-Carlo tolerances are 3 standard
errors of the estimate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overfit.clock import CompileClock
from overfit.models import mlp, polynomial, random_features
from overfit.solve import fit_linear, solve

KEY = jax.random.key(0)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _problem(seed: int, n: int, p: int, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    y = rng.standard_normal((n,) if k is None else (n, k))
    return X, y


def test_solve_equals_numpy_lstsq_full_rank():
    for seed, (n, p) in enumerate([(40, 8), (40, 8), (12, 12)]):
        X, y = _problem(seed, n, p)
        w = np.asarray(solve(jnp.asarray(X), jnp.asarray(y)))
        assert w.dtype == np.float64 and w.shape == (p,)
        want = np.linalg.lstsq(X, y, rcond=None)[0]
        np.testing.assert_allclose(w, want, rtol=1e-10, atol=1e-10)
        # the normal equations hold: the residual is orthogonal to the columns
        np.testing.assert_allclose(X.T @ (X @ w - y), 0.0, atol=1e-10)


@pytest.mark.parametrize("n, p", [(40, 8), (8, 40)])
def test_ridge_equals_closed_form(n, p):
    X, y = _problem(3, n, p)
    for lam in (1e-3, 0.1, 2.0):
        w = np.asarray(solve(jnp.asarray(X), jnp.asarray(y), ridge=lam))
        want = np.linalg.solve(X.T @ X + n * lam * np.eye(p), X.T @ y)
        np.testing.assert_allclose(w, want, rtol=1e-10, atol=1e-12)
        # it minimises (1/2n)|Xw - y|^2 + (lam/2)|w|^2: the gradient vanishes
        np.testing.assert_allclose(X.T @ (X @ w - y) / n + lam * w, 0.0, atol=1e-12)


def test_min_norm_equals_pinv_when_overparameterised():
    X, y = _problem(4, 8, 40)
    w = np.asarray(solve(jnp.asarray(X), jnp.asarray(y)))
    np.testing.assert_allclose(w, np.linalg.pinv(X) @ y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(X @ w, y, atol=1e-10)  # interpolates
    # and it is the minimum-norm interpolant: orthogonal to the null space of X
    null = np.linalg.svd(X)[2][8:]
    np.testing.assert_allclose(null @ w, 0.0, atol=1e-10)


def test_rank_deficient_design_gives_pinv_solution():
    X, y = _problem(5, 40, 8)
    X[:, 5] = X[:, 2]  # duplicated column
    X[:, 7] = 0.0  # a masked (dead) feature
    w = np.asarray(solve(jnp.asarray(X), jnp.asarray(y)))
    np.testing.assert_allclose(w, np.linalg.pinv(X) @ y, rtol=1e-9, atol=1e-12)
    assert w[7] == 0.0 and abs(w[2] - w[5]) < 1e-12


def test_multiple_targets():
    X, Y = _problem(6, 40, 8, k=3)
    W = np.asarray(solve(jnp.asarray(X), jnp.asarray(Y), ridge=0.05))
    assert W.shape == (8, 3)
    for j in range(3):
        col = np.asarray(solve(jnp.asarray(X), jnp.asarray(Y[:, j]), ridge=0.05))
        np.testing.assert_allclose(W[:, j], col, rtol=1e-12, atol=1e-14)


def test_vmap_over_a_batch_of_problems_equals_the_loop():
    rng = np.random.default_rng(7)
    Xs, ys = rng.standard_normal((100, 40, 8)), rng.standard_normal((100, 40))
    lams = np.linspace(0.0, 1.0, 100)
    batched = np.asarray(jax.jit(jax.vmap(lambda X, y, lam: solve(X, y, ridge=lam)))(
        jnp.asarray(Xs), jnp.asarray(ys), jnp.asarray(lams)))
    for i in range(100):
        want = np.linalg.solve(Xs[i].T @ Xs[i] + 40 * lams[i] * np.eye(8), Xs[i].T @ ys[i])
        np.testing.assert_allclose(batched[i], want, rtol=1e-9, atol=1e-12)


def _sweep_designs(seed: int, n_bad: int, dtype=np.float64):
    """A capacity sweep as a solver sees it: 64 tall Legendre designs (n = 30, P = 12),
    columns above each member's degree zeroed, ``n_bad`` of them rank-deficient (fewer
    distinct points than live columns, as a bootstrap resample can be)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (64, 30))
    x[:n_bad] = rng.choice(rng.uniform(-1.0, 1.0, 5), size=(n_bad, 30))  # 5 distinct points
    degree = np.r_[np.full(n_bad, 11), rng.integers(0, 12, 64 - n_bad)]
    X = np.polynomial.legendre.legvander(x, 11) * (np.arange(12) <= degree[:, None, None])
    return X.astype(dtype), rng.standard_normal((64, 30)).astype(dtype)


@pytest.mark.parametrize("n_bad", [0, 1, 7, 40])  # the four ways through the fallback
def test_batched_least_squares_equals_pinv_for_every_member(n_bad):
    """The QR path of a vmapped tall ``ridge=0`` sweep gives pinv(X) y for every member:
    masked columns get exactly 0, rank-deficient members the SVD's min-norm answer,
    whether none, a few, a quarter or most of the batch need the SVD."""
    X, y = _sweep_designs(n_bad, n_bad)
    w = np.asarray(jax.jit(jax.vmap(solve))(jnp.asarray(X), jnp.asarray(y)))
    for i in range(64):
        want = np.linalg.pinv(X[i], rcond=10 * 30 * np.finfo(np.float64).eps) @ y[i]
        np.testing.assert_allclose(w[i], want, rtol=1e-8, atol=1e-10, err_msg=f"member {i}")
        assert np.all(w[i][np.all(X[i] == 0, axis=0)] == 0.0)
    jaxpr = str(jax.make_jaxpr(jax.vmap(solve))(jnp.asarray(X), jnp.asarray(y)))
    assert "householder" in jaxpr or "geqrf" in jaxpr or "qr" in jaxpr


def test_batched_least_squares_through_nested_vmaps_and_a_mask_in_the_middle():
    """Two vmap levels (capacity x draws) reach the solver as one batch; a dead column
    before a live one (linear model's masked inputs, bias last) is handled too."""
    X, y = _sweep_designs(1, 3)
    X[:, :, 3] = 0.0  # dead column in the middle of every member
    nested = jax.jit(jax.vmap(jax.vmap(solve)))(jnp.asarray(X.reshape(8, 8, 30, 12)),
                                                jnp.asarray(y.reshape(8, 8, 30)))
    w = np.asarray(nested).reshape(64, 12)
    for i in range(64):
        np.testing.assert_allclose(w[i], np.linalg.pinv(X[i], rcond=1e-13) @ y[i],
                                   rtol=1e-8, atol=1e-10)
        assert w[i, 3] == 0.0
    # unbatched targets broadcast against batched designs
    shared = np.asarray(jax.vmap(solve, in_axes=(0, None))(jnp.asarray(X), jnp.asarray(y[0])))
    np.testing.assert_allclose(shared[5], np.linalg.pinv(X[5], rcond=1e-13) @ y[0], rtol=1e-8,
                               atol=1e-10)


def test_float32_least_squares_agrees_with_the_svd_reference():
    """In float32 the cutoff (rcond ~ 4e-5) truncates moderately conditioned members: the
    QR path hands every one of them to the SVD, so it returns what the SVD returns."""
    with jax.enable_x64(False):
        X, y = _sweep_designs(2, 7, dtype=np.float32)
        Xj, yj = jnp.asarray(X), jnp.asarray(y)
        w = np.asarray(jax.jit(jax.vmap(solve))(Xj, yj))
        rcond = 10 * 30 * np.finfo(np.float32).eps
        ref = np.asarray(jax.vmap(lambda a, b: solve(a, b, ridge=0.0 * jnp.ones(())))(Xj, yj))
    assert w.dtype == np.float32
    for i in range(64):
        s = np.linalg.svd(X[i].astype(np.float64), compute_uv=False)
        if s[0] > 0 and np.any((s > 0) & (s < 0.3 * rcond * s[0])):  # clearly truncated
            np.testing.assert_allclose(w[i], ref[i], rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(X[i] @ w[i], X[i] @ ref[i], rtol=1e-3, atol=1e-3)


def test_least_squares_is_differentiable():
    """grad, jacfwd and vmap(grad) through the QR path: d sum(w) / dy = pinv(X)' 1, and
    d sum(w) / dX against central differences of numpy's pinv."""
    X, y = _problem(8, 20, 5)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    total = lambda X, y: solve(X, y).sum()  # noqa: E731
    want = np.linalg.pinv(X).sum(axis=0)
    np.testing.assert_allclose(jax.grad(total, argnums=1)(Xj, yj), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jax.jacfwd(total, argnums=1)(Xj, yj), want, rtol=1e-10,
                               atol=1e-12)
    g = jax.vmap(jax.grad(total), in_axes=(0, None))(jnp.stack([Xj, 2 * Xj]), yj)
    eps, E = 1e-6, np.zeros_like(X)
    E[3, 2] = eps
    for i, scale in enumerate((1.0, 2.0)):
        fd = ((np.linalg.pinv(scale * X + E) @ y).sum()
              - (np.linalg.pinv(scale * X - E) @ y).sum()) / (2 * eps)
        np.testing.assert_allclose(g[i, 3, 2], fd, rtol=1e-6)


def test_a_traced_rcond_cuts_like_a_static_one():
    X, y = _problem(9, 30, 6)
    X[:, 4] = X[:, 3] * (1 + 1e-9)  # condition ~1e9: cut at rcond 1e-6, kept at the default
    w = jax.jit(lambda r: solve(jnp.asarray(X), jnp.asarray(y), rcond=r))(1e-6)
    np.testing.assert_allclose(w, np.linalg.pinv(X, rcond=1e-6) @ y, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(w, solve(jnp.asarray(X), jnp.asarray(y), rcond=1e-6), rtol=1e-12)


def test_padding_does_not_move_the_default_cutoff():
    """The default cutoff counts the rows in play: a float32 design whose smallest singular
    value lies between the cutoffs of 12 and of 4000 rows is solved, not truncated, however
    many weight-0 rows pad it (a padded learning curve's small sizes depend on no other)."""
    with jax.enable_x64(False):
        X, y = _problem(13, 12, 4)
        X[:, 3] = X[:, 2] + 3e-4 * X[:, 3]  # s_min / s_max ~ 1e-4: 10*12*eps < 1e-4 < 10*4000*eps
        X, y = jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32)
        alone = solve(X, y)
        pad = jnp.zeros((4000 - 12, 4), jnp.float32)
        padded = solve(jnp.concatenate([X, pad]), jnp.concatenate([y, jnp.zeros(4000 - 12)]),
                       weight=(jnp.arange(4000) < 12).astype(jnp.float32))
        cut = solve(X, y, rcond=10 * 4000 * float(jnp.finfo(jnp.float32).eps))
    np.testing.assert_allclose(padded, alone, rtol=2e-3)
    assert float(jnp.max(jnp.abs(cut - alone))) > 0.1 * float(jnp.max(jnp.abs(alone)))


@pytest.mark.parametrize("n,p", [(25, 6), (6, 15), (15, 15)])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_zero_weight_rows_drop_out_exactly(n, p, ridge):
    """Padding a training set with weight-0 rows changes nothing: least squares, min-norm
    and ridge (whose n lambda becomes sum(w) lambda) of the first n rows."""
    X, y = _problem(11, 40, p)
    mask = (np.arange(40) < n).astype(float)
    w = solve(jnp.asarray(X), jnp.asarray(y), ridge=ridge, weight=jnp.asarray(mask))
    want = np.linalg.solve(X[:n].T @ X[:n] + n * ridge * np.eye(p), X[:n].T @ y[:n]) \
        if ridge or n >= p else np.linalg.pinv(X[:n]) @ y[:n]
    np.testing.assert_allclose(w, want, rtol=1e-9, atol=1e-11)


def test_weighted_least_squares_solves_the_weighted_normal_equations():
    X, y = _problem(12, 30, 5, k=2)
    wt = np.random.default_rng(12).uniform(0.1, 3.0, 30)
    for ridge in (0.0, 0.5):
        w = solve(jnp.asarray(X), jnp.asarray(y), ridge=ridge, weight=jnp.asarray(wt))
        want = np.linalg.solve(X.T @ (wt[:, None] * X) + wt.sum() * ridge * np.eye(5),
                               X.T @ (wt[:, None] * y))
        np.testing.assert_allclose(w, want, rtol=1e-9)
    # integer weights are repeated rows
    counts = np.arange(30) % 3
    w = solve(jnp.asarray(X), jnp.asarray(y), weight=jnp.asarray(counts, float))
    rows = np.repeat(np.arange(30), counts)
    np.testing.assert_allclose(w, np.linalg.lstsq(X[rows], y[rows], rcond=None)[0], rtol=1e-9)


def test_bad_inputs():
    with pytest.raises(ValueError, match="ridge"):
        solve(jnp.ones((4, 2)), jnp.ones(4), ridge=-1.0)
    with pytest.raises(ValueError, match=r"weight has shape \(3,\); .*\(4,\)"):
        solve(jnp.ones((4, 2)), jnp.ones(4), weight=jnp.ones(3))
    with pytest.raises(ValueError, match=r"weight=.* allowed values lie in \[0, inf\)"):
        solve(jnp.ones((4, 2)), jnp.ones(4), weight=jnp.array([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="linear in its parameters"):
        fit_linear(mlp(1, (4,)), {"width": jnp.asarray(4)}, jnp.ones((4, 1)), jnp.ones(4))
    # an array of penalties was applied per singular value, a negative cutoff let near-null
    # directions through (weights of 3e5), y of 2n rows failed inside a reshape
    with pytest.raises(ValueError, match=r"ridge must be a scalar; got shape \(2,\)"):
        solve(jnp.ones((4, 2)), jnp.ones(4), ridge=jnp.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"rcond=-1.0 is out of range"):
        solve(jnp.ones((4, 2)), jnp.ones(4), rcond=-1.0)
    with pytest.raises(ValueError, match=r"y must have shape \(4,\) or \(4, k\).*got \(8,\)"):
        solve(jnp.ones((4, 2)), jnp.ones(8))
    with pytest.raises(ValueError, match=r"phi must be a floating-point \(n, P\) design"):
        solve(jnp.ones((4, 2), int), jnp.ones(4))
    # all-zero weights returned w = 0 without a word; a (n, 1) target gave (P, 1)
    # coefficients and (n, 1) outputs, which broadcast against (n,) targets downstream
    with pytest.raises(ValueError, match=r"weight keeps no row of phi"):
        solve(jnp.ones((4, 2)), jnp.ones(4), weight=jnp.zeros(4))
    line = polynomial(1)
    with pytest.raises(ValueError, match=r"y has shape \(4, 1\); a one-output model takes"):
        fit_linear(line, line.init(jax.random.key(0))[1], jnp.ones((4, 1)), jnp.ones((4, 1)))
    # another model's state failed with a KeyError inside its basis
    with pytest.raises(ValueError, match=r"state has fields \['degree'\]; this model's state "
                       r"has \['b', 'n_features', 'w'\]"):
        fit_linear(random_features(5), line.init(jax.random.key(0))[1], jnp.ones((4, 1)),
                   jnp.ones(4))


def test_solve_takes_nested_lists():
    """A notebook's first solve, on numbers typed in: lists failed in a dtype lookup."""
    w = solve([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]], [0.9, 2.9, 4.9])
    np.testing.assert_allclose(w, [0.9, 2.0], rtol=1e-5)


# ----------------------------------------------------------------------------- GROUND_TRUTH §7


def test_lesson_five_points_line_vs_seven_parameters():
    """Five noisy points of the line 2x + 0.9 and two validation points: the line has
    train and validation errors of the same order; the 7-parameter (degree-6) min-norm
    fit passes through all five points and misses the validation points badly."""
    rng = np.random.default_rng(4)
    x = np.sort(rng.uniform(0.0, 3.0, 7))
    idx = rng.permutation(7)
    tr, va = np.sort(idx[:5]), np.sort(idx[5:])
    y = 2.0 * x + 0.9 + 0.5 * rng.standard_normal(7)
    x_tr, y_tr, x_va, y_va = (jnp.asarray(a) for a in (x[tr, None], y[tr], x[va, None], y[va]))
    model = polynomial(6, domain=(0.0, 3.0))

    @jax.jit  # one compile for both degrees
    def errors(degree):
        _, state = model.init(KEY, degree=degree)
        params = fit_linear(model, state, x_tr, y_tr)
        mse = [jnp.mean((model.apply(params, state, a) - b) ** 2)
               for a, b in ((x_tr, y_tr), (x_va, y_va))]
        return model.n_params(state), model.apply(params, state, x_va), mse

    n_line, pred_line, (train_line, val_line) = errors(1)
    n_big, _, (train_big, val_big) = errors(6)
    assert (int(n_line), int(n_big)) == (2, 7)
    # the masked degree-1 fit is the ordinary least-squares line
    slope, icpt = np.polyfit(x[tr], y[tr], 1)
    np.testing.assert_allclose(pred_line, slope * x[va] + icpt, rtol=1e-10)
    assert train_big < 1e-10
    assert 0.2 < val_line / train_line < 5.0
    assert val_big > 10 * val_line and val_big > 10 * train_line


# ----------------------------------------------------------------------------- GROUND_TRUTH §1


def test_fixed_design_least_squares_moments():
    """y = f(x) + e on a fixed design, n = 100, degree 9 (p = 10), s2 = 1, f a cubic (no
    bias): mean Var(yhat_i) = s2 p/n = 0.1, E train MSE = s2(1 - p/n) = 0.9, E in-sample
    test error = s2(1 + p/n) = 1.1, optimism 2 s2 p/n = 0.2."""
    n, p, s2, R = 100, 10, 1.0, 2000
    x = np.linspace(-1.0, 1.0, n)[:, None]
    f = 0.5 - 2.0 * x[:, 0] + 2.0 * x[:, 0] ** 3
    rng = np.random.default_rng(11)
    Y = f + np.sqrt(s2) * rng.standard_normal((R, n))
    Y_new = f + np.sqrt(s2) * rng.standard_normal((R, n))
    model = polynomial(p - 1, domain=(-1.0, 1.0))
    _, state = model.init(KEY)
    assert int(model.n_params(state)) == p
    xj = jnp.asarray(x)

    @jax.jit
    def predictions(Y):
        return jax.vmap(lambda y: model.apply(fit_linear(model, state, xj, y), state, xj))(Y)

    Yhat = np.asarray(predictions(jnp.asarray(Y)))
    assert Yhat.dtype == np.float64 and Yhat.shape == (R, n)

    def check(per_draw, expected):
        est, se = per_draw.mean(), per_draw.std(ddof=1) / np.sqrt(R)
        assert abs(est - expected) < 3 * se, (est, expected, se)
        return se

    centred = Yhat - Yhat.mean(axis=0)
    var_se = check((centred**2).mean(axis=1) * R / (R - 1), s2 * p / n)  # mean_i Var(yhat_i)
    assert var_se < 0.003  # the check is sharp: 0.1 +- 0.003
    check(((Y - Yhat) ** 2).mean(axis=1), s2 * (1 - p / n))
    check(((Y_new - Yhat) ** 2).mean(axis=1), s2 * (1 + p / n))
    check(((Y_new - Yhat) ** 2 - (Y - Yhat) ** 2).mean(axis=1), 2 * s2 * p / n)
    # no bias: the mean prediction is the truth (per-point 3-SE band, SE = sqrt(h_ii/R))
    H = np.asarray(model.features(state, xj))
    h = np.einsum("ij,ji->i", H, np.linalg.pinv(H))
    assert np.all(np.abs(Yhat.mean(axis=0) - f) < 4 * np.sqrt(s2 * h / R))
    np.testing.assert_allclose(h.sum(), p, rtol=1e-10)  # trace of the hat matrix


@pytest.mark.parametrize("shape", [(25, 6), (6, 25)], ids=["tall-qr", "wide-svd"])
def test_an_eager_solve_compiles_one_program_per_shape(shape):
    """Outside jit (a notebook's solve) each path is one compiled program, reused for new
    values of the same shape: run op by op, the QR path compiled 53 programs (3 s) and
    re-traced on every call (0.5 s)."""
    rng = np.random.default_rng(3)
    phi, y = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (shape, shape[:1]))
    phi2 = 2.0 * phi
    with CompileClock() as first:
        w = solve(phi, y)
    with CompileClock() as again:
        w2 = solve(phi2, y)
    assert first.compiles == 1 and again.compiles == 0
    np.testing.assert_allclose(w2, 0.5 * w, rtol=1e-4, atol=1e-6)  # new values were solved


def test_the_cutoff_is_relative_to_the_largest_singular_value():
    """numpy.linalg.pinv's rule: drop s_i <= rcond * s_max. Rescaling the design by c
    rescales the answer by 1/c at any scale; an absolute cutoff would drop every direction
    of a tiny design and keep the rounding-level one of a huge rank-deficient design."""
    X, y = _problem(5, 30, 5)
    X[:, 4] = X[:, 3]  # rank 4: the min-norm answer splits the weight between the twins
    want = np.linalg.pinv(X, rcond=10 * 30 * np.finfo(np.float64).eps) @ y
    assert abs(want[3] - want[4]) < 1e-10
    for c in (1e-14, 1.0, 1e14):
        one = np.asarray(solve(jnp.asarray(c * X), jnp.asarray(y)))
        many = np.asarray(jax.vmap(solve)(jnp.asarray(np.stack([c * X, X])),
                                          jnp.asarray(np.stack([y, y]))))
        np.testing.assert_allclose(one * c, want, rtol=1e-7, err_msg=f"c={c}")
        np.testing.assert_allclose(many[0] * c, want, rtol=1e-7, err_msg=f"batched c={c}")
