"""Tests of overfit.train: the low-level objective, the fused ``fit`` loop and its history.

Every distinct ``fit`` configuration is an XLA compile (seconds on 2 cores), so the
tests share a few module-scoped runs: one ``never()`` rule and one optimizer object
per configuration keep ``fit``'s jit cache warm.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from overfit.clock import CompileClock
from overfit.data import Dataset, classification, regression
from overfit.early_stopping import never, patience
from overfit.models import linear, mlp, polynomial
from overfit.solve import solve
from overfit.train import evaluate, fit, objective

NEVER = never()


def _dataset(x, y, f, n_train, n_val, task="regression", n_classes=0) -> Dataset:
    a, b = n_train, n_train + n_val
    return Dataset(x[:a], y[:a], f[:a], x[a:b], y[a:b], f[a:b], x[b:], y[b:], f[b:],
                   task=task, n_classes=n_classes)


def _sine(seed: int, n_train=40, n_val=10, n_test=10, noise=0.1) -> Dataset:
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    x = rng.uniform(-1.0, 1.0, (n, 1)).astype(np.float32)
    f = np.sin(3.0 * x[:, 0]).astype(np.float32)
    y = (f + noise * rng.standard_normal(n)).astype(np.float32)
    return _dataset(x, y, f, n_train, n_val)


def _blobs(seed: int, n_train=40, n_val=20, n_test=20) -> Dataset:
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    y = rng.integers(0, 2, n).astype(np.int32)
    x = (rng.standard_normal((n, 2)) + 1.5 * (2 * y[:, None] - 1)).astype(np.float32)
    return _dataset(x, y, y, n_train, n_val, task="classification", n_classes=2)


def _stack(*datasets: Dataset) -> Dataset:
    return jax.tree.map(lambda *a: jnp.stack(a), *datasets)


def _member(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def _assert_tree_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


# ----------------------------------------------------------------------------- low level


def test_gradient_descent_demo_of_the_lesson():
    """f = (x1-3)^2 + (x2+2)^2 from (0, 0), lr 0.1: after k steps x1 = 3(1 - 0.8^k)."""
    f = lambda w: (w[0] - 3.0) ** 2 + (w[1] + 2.0) ** 2  # noqa: E731
    grad = jax.jit(jax.grad(f))
    w = jnp.zeros(2)
    for k in range(1, 16):
        w = w - 0.1 * grad(w)
        np.testing.assert_allclose(w, [3 * (1 - 0.8**k), -2 * (1 - 0.8**k)], rtol=1e-5)
    np.testing.assert_allclose(w, [2.894446, -1.929631], atol=1e-5)


def test_objective_is_half_mse_and_weighted_mean():
    model = linear(1)
    params, state = model.init(jax.random.key(0))
    params = {"coef": jnp.array([2.0, -1.0])}
    x = jnp.array([[0.0], [1.0], [2.0], [3.0]])
    y = jnp.array([0.0, 1.0, 1.0, 9.0])  # residuals -1, 0, 2, -4
    f = objective(model, "mse")
    np.testing.assert_allclose(f(params, state, x, y), 0.5 * (1 + 0 + 4 + 16) / 4)
    w = jnp.array([1.0, 1.0, 0.0, 0.0])  # padding weights drop the last two examples
    np.testing.assert_allclose(f(params, state, x, y, weight=w), 0.5 * 1 / 2)
    g = jax.grad(f)(params, state, x, y)["coef"]  # gradient of half-MSE: mean residual * phi
    np.testing.assert_allclose(g, [(0 * -1 + 1 * 0 + 2 * 2 + 3 * -4) / 4, (-1 + 0 + 2 - 4) / 4])


# ----------------------------------------------------------------------------- shared fits

MLP = mlp(1, (8,))  # one hidden layer: each extra layer costs seconds of compile
MLP_OPT = optax.adam(1e-2)
MLP_KW = dict(optimizer=MLP_OPT, epochs=4, batch_size=16, early_stopping=NEVER)
MLP_WIDTH = (3, 5, 8)

POLY = polynomial(10, domain=(-1.0, 1.0))
POLY_OPT = optax.adam(5e-2)
POLY_KW = dict(optimizer=POLY_OPT, epochs=30, early_stopping=NEVER)
POLY_DEGREES = (3, 7, 10)


def _hand_written_fit(key, data, width, epochs=4, bs=16):
    """fit() by hand with the low-level pieces (init, objective, jax.grad, optax) and fit's
    key derivation: minibatches of ``bs`` reshuffled every epoch, the last one padded with
    weight-0 entries, one key per step."""
    n = data.x_train.shape[0]
    x, y = np.asarray(data.x_train), np.asarray(data.y_train)
    k_init, k_train = jax.random.split(key)
    params, state = MLP.init(k_init, width=width)
    init = params
    opt_state = MLP_OPT.init(params)
    n_batches = -(-n // bs)
    train_loss = []
    for epoch in range(epochs):
        k_perm, k_steps = jax.random.split(jax.random.fold_in(k_train, epoch))
        perm = np.asarray(jax.random.permutation(k_perm, n))
        idx = np.concatenate([perm, perm[: n_batches * bs - n]]).reshape(n_batches, bs)
        weight = (np.arange(n_batches * bs) < n).reshape(n_batches, bs).astype(np.float32)
        for b, kb in enumerate(jax.random.split(k_steps, n_batches)):
            params, opt_state = _mlp_step(params, opt_state, state, kb, x[idx[b]], y[idx[b]],
                                          weight[b])
        train_loss.append(float(_mlp_loss(params, state, x, y)))
    return init, params, train_loss


_mlp_loss = jax.jit(objective(MLP, "mse"))


@jax.jit
def _mlp_step(params, opt_state, state, key, xb, yb, wb):
    k_drop, _ = jax.random.split(key)  # the other half would draw input noise
    grads = jax.grad(objective(MLP, "mse"))(params, state, xb, yb, k_drop, wb)
    updates, opt_state = MLP_OPT.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@pytest.fixture(scope="module")
def mlp_runs():
    """Three MLP members (own data, width and key) in one fit call, and the same three
    trained one by one with a hand-written loop."""
    keys = jax.random.split(jax.random.key(42), 3)
    datas = [_sine(s) for s in range(3)]
    batch = fit(MLP, _stack(*datas), key=keys, hparams={"width": jnp.array(MLP_WIDTH)}, **MLP_KW)
    by_hand = [_hand_written_fit(keys[i], datas[i], MLP_WIDTH[i]) for i in range(3)]
    return batch, by_hand


@pytest.fixture(scope="module")
def poly_runs():
    """A degree sweep on shared data: one vmapped call, and one by one."""
    data = _sine(7, n_train=20, n_val=20, n_test=20, noise=0.2)
    keys = jax.random.split(jax.random.key(1), 3)
    batch = fit(POLY, data, key=keys, hparams={"degree": jnp.array(POLY_DEGREES)}, **POLY_KW)
    singles = [fit(POLY, data, key=keys[i], hparams={"degree": d}, **POLY_KW)
               for i, d in enumerate(POLY_DEGREES)]
    return data, batch, singles


def test_vmapped_mlp_members_equal_hand_written_loops(mlp_runs):
    """Low level == high level, and a vmapped batch (per-member data, width and key) ==
    the members trained one by one: an MLP on minibatches of 16, reshuffled per epoch."""
    batch, by_hand = mlp_runs
    assert batch.history.train_loss.shape == (3, 4)
    np.testing.assert_array_equal(batch.state["width"], MLP_WIDTH)
    np.testing.assert_array_equal(batch.best_epoch, 3)
    np.testing.assert_array_equal(batch.stop_epoch, 3)
    for i, (init, params, train_loss) in enumerate(by_hand):
        trained = _member(batch.params, i)
        _assert_tree_close(trained, params, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(batch.history.train_loss[i], train_loss, rtol=1e-5)
        # masked units get zero gradient, so Adam leaves them at their init (recomputed
        # here outside jit: equal to rounding), while every live weight moves
        w = MLP_WIDTH[i]
        for a, b in ((trained[0]["w"][:, w:], init[0]["w"][:, w:]),
                     (trained[0]["b"][w:], init[0]["b"][w:]),
                     (trained[1]["w"][w:], init[1]["w"][w:])):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert np.abs(trained[1]["w"][:w] - init[1]["w"][:w]).min() > 1e-3


def test_vmapped_degrees_equal_one_by_one(poly_runs):
    data, batch, singles = poly_runs
    np.testing.assert_array_equal(batch.state["degree"], POLY_DEGREES)
    for i, single in enumerate(singles):
        _assert_tree_close(_member(batch.params, i), single.params, rtol=1e-4, atol=1e-6)
        _assert_tree_close(_member(batch.history, i), single.history, rtol=1e-4)
        assert single.history.val_loss.shape == (30,) and single.best_epoch.shape == ()


def test_capacity_masking_survives_adam(poly_runs):
    """degree=3 of a max-degree-10 polynomial: coefficients 4..10 stay exactly 0."""
    _, batch, singles = poly_runs
    coef = np.asarray(batch.params["coef"])
    for i, d in enumerate(POLY_DEGREES):
        assert np.all(coef[i, d + 1:] == 0.0)
        assert np.all(coef[i, : d + 1] != 0.0)
    assert np.all(np.asarray(singles[0].params["coef"])[4:] == 0.0)


def test_fit_rejects_out_of_range_capacity(poly_runs):
    data, _, _ = poly_runs
    keys = jax.random.split(jax.random.key(1), 3)
    # same shapes and configuration as poly_runs: no new compile
    with pytest.raises(ValueError, match="degree"):
        fit(POLY, data, key=keys[0], hparams={"degree": 99}, **POLY_KW)
    with pytest.raises(ValueError, match="degree"):
        fit(POLY, data, key=keys, hparams={"degree": jnp.array([3, 99, 10])}, **POLY_KW)


def test_history_of_a_regression_fit(poly_runs):
    data, batch, _ = poly_runs
    h = batch.history
    for curve in h:
        assert curve.shape == (3, 30) and np.all(np.isfinite(curve))
    # "mse" is half the mean squared error; the metric is the plain MSE
    np.testing.assert_allclose(h.train_metric, 2 * h.train_loss, rtol=1e-5)
    np.testing.assert_allclose(h.val_metric, 2 * h.val_loss, rtol=1e-5)
    # a learnable problem: the training loss falls well below its starting value
    assert np.all(h.train_loss[:, -1] < 0.2 * h.train_loss[:, 0])
    # more capacity fits the training set at least as well
    assert h.train_loss[0, -1] > h.train_loss[2, -1]
    np.testing.assert_array_equal(batch.best_epoch, 29)
    np.testing.assert_array_equal(batch.stop_epoch, 29)
    np.testing.assert_array_equal(batch.epochs, np.arange(1, 31))
    assert batch.metric == "mse"
    # test_loss / test_metric, and the last history entry, are evaluate() of the params
    members = jax.jit(jax.vmap(lambda p, s, x, y: (*evaluate(POLY, p, s, x, y),
                                                   POLY.apply(p, s, x)),
                               in_axes=(0, 0, None, None)))
    loss, mse, pred = members(batch.params, batch.state, data.x_test, data.y_test)
    np.testing.assert_allclose(batch.test_loss, loss, rtol=1e-5)
    np.testing.assert_allclose(batch.test_metric, mse, rtol=1e-5)
    np.testing.assert_allclose(mse, np.mean((pred - data.y_test) ** 2, axis=1), rtol=1e-5)
    loss, mse, _ = members(batch.params, batch.state, data.x_val, data.y_val)
    np.testing.assert_allclose(h.val_loss[:, -1], loss, rtol=1e-5)
    np.testing.assert_allclose(h.val_metric[:, -1], mse, rtol=1e-5)


def test_history_of_a_classification_fit_with_eval_every():
    data = _blobs(3)
    model = linear(2)
    keys = jax.random.split(jax.random.key(5), 2)
    res = fit(model, data, key=keys, optimizer=optax.adam(0.1), epochs=10, eval_every=2,
              early_stopping=NEVER)
    assert res.metric == "accuracy"
    for curve in res.history:
        assert curve.shape == (2, 5) and np.all(np.isfinite(curve))
    np.testing.assert_array_equal(res.epochs, [2, 4, 6, 8, 10])
    np.testing.assert_array_equal(res.stop_epoch, [9, 9])
    acc = np.concatenate([res.history.train_metric, res.history.val_metric])
    assert np.all((acc >= 0) & (acc <= 1))
    assert np.all(res.history.train_metric[:, -1] > 0.85)  # blobs 3 sd apart
    for i in range(2):
        coef = np.asarray(res.params["coef"][i])
        logits = np.asarray(data.x_test) @ coef[:2] + coef[2]
        y = np.asarray(data.y_test)
        np.testing.assert_allclose(res.test_metric[i], np.mean((logits > 0) == y), rtol=1e-6)
        bce = np.mean(np.logaddexp(0, logits) - y * logits)
        np.testing.assert_allclose(res.test_loss[i], bce, rtol=1e-5)
        logits = np.asarray(data.x_train) @ coef[:2] + coef[2]
        np.testing.assert_allclose(res.history.train_metric[i, -1],
                                   np.mean((logits > 0) == np.asarray(data.y_train)), rtol=1e-6)


def test_full_batch_gd_with_l2_converges_to_ridge():
    """GROUND_TRUTH §5: GD on (1/2n)|Xw - y|^2 + (lam/2)|w|^2 -> (X'X + n lam I)^-1 X'y.
    add_decayed_weights(lam) + sgd is that GD (the "mse" loss is half the MSE); one
    compiled call sweeps lam through a callable optimizer."""
    rng = np.random.default_rng(0)
    n = 64
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.5 * rng.standard_normal(n)).astype(np.float32)
    data = _dataset(np.concatenate([x, x[:8]]), np.concatenate([y, y[:8]]),
                    np.concatenate([y, y[:8]]), n, 4)
    model = linear(3)
    lams = np.array([0.0, 0.1, 1.0], np.float32)
    res = fit(model, data, key=jax.random.split(jax.random.key(0), 3),
              optimizer=lambda hp: optax.chain(optax.add_decayed_weights(hp["lam"]),
                                               optax.sgd(0.5)),
              hparams={"lam": jnp.asarray(lams)}, loss="mse", epochs=100, early_stopping=NEVER)
    phi = np.concatenate([x, np.ones((n, 1), np.float32)], axis=1)
    for i, lam in enumerate(lams):
        want = np.asarray(solve(jnp.asarray(phi), jnp.asarray(y), ridge=float(lam)))
        closed = np.linalg.solve(phi.T @ phi / n + lam * np.eye(4), phi.T @ y / n)
        np.testing.assert_allclose(want, closed, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.params["coef"][i], want, rtol=1e-4, atol=1e-5)
    # the penalty shrinks: |w| falls with lam
    norms = np.linalg.norm(np.asarray(res.params["coef"]), axis=1)
    assert norms[0] > norms[1] > norms[2]


def _train_rows(data: Dataset, rows) -> Dataset:
    rows = np.asarray(rows)
    return dataclasses.replace(data, x_train=data.x_train[rows], y_train=data.y_train[rows],
                               f_train=data.f_train[rows])


@pytest.mark.parametrize("hparams", [{}, {"input_noise": 0.05}], ids=["reused", "noisy"])
def test_weighted_fit_trains_on_the_points_it_keeps(hparams):
    """A 0/1 weight trains and scores on the rows it keeps, as if the others were absent
    (training sets of several sizes padded into one call), on the path that reuses the
    evaluation's forward pass and on the one that does not (input noise). (Integer
    weights as repeated rows: test_solve and the objective's test.)"""
    data, model = _sine(3, n_train=30), mlp(1, (8,))
    keys = jax.random.split(jax.random.key(0), 2)
    mask = (np.arange(30) < 12).astype(np.float32)
    run = dict(epochs=40, hparams=hparams, early_stopping=NEVER)
    padded = fit(model, data, key=keys, weight=np.stack([mask, np.ones(30, np.float32)]), **run)
    alone = fit(model, _train_rows(data, range(12)), key=keys, **run)
    full = fit(model, data, key=keys, **run)
    for got, want in ((0, alone), (1, full)):
        for name in ("train_loss", "val_loss", "train_metric"):
            np.testing.assert_allclose(getattr(padded.history, name)[got],
                                       getattr(want.history, name)[got], rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(padded.test_metric[got], want.test_metric[got], rtol=2e-5)


def test_rows_of_weight_zero_never_reach_the_loss():
    """Dropped rows holding NaN targets (or inputs that overflow) made the fit NaN from
    epoch 0 (0 * NaN is NaN, in the loss and in its gradient): the mask promises the
    rows are absent, and they now are, as in solve."""
    data, model = _sine(3, n_train=12), polynomial(5)
    mask = (np.arange(12) < 8).astype(np.float32)
    run = dict(key=jax.random.key(1), weight=mask, epochs=10, early_stopping=NEVER)
    clean = fit(model, data, **run)
    y, x = np.array(data.y_train), np.array(data.x_train)
    y[8:], x[8:] = np.nan, 1e25
    for bad in (dataclasses.replace(data, y_train=jnp.asarray(y)),
                dataclasses.replace(data, x_train=jnp.asarray(x))):
        got = fit(model, bad, **run)
        assert int(got.diverged_epoch) == -1
        np.testing.assert_array_equal(got.params["coef"], clean.params["coef"])
        np.testing.assert_array_equal(got.history.train_loss, clean.history.train_loss)


def test_weighted_fit_arguments(reg_data):
    key, keys, model = jax.random.key(0), jax.random.split(jax.random.key(0), 3), linear(1)
    with pytest.raises(ValueError, match="weight= needs full-batch training; got batch_size=8"):
        fit(model, reg_data, key=key, weight=np.ones(40), batch_size=8)
    with pytest.raises(ValueError, match=r"weight has shape \(39,\); allowed: \(40,\) \(members"):
        fit(model, reg_data, key=key, weight=np.ones(39))
    with pytest.raises(ValueError, match=r"allowed: \(40,\) or \(3, 40\)"):
        fit(model, reg_data, key=keys, weight=np.ones((2, 40)))
    with pytest.raises(ValueError, match=r"weight has 1 of 40 values out of range \(first: "
                                         r"-1\); allowed values lie in \[0, inf\)\.$"):
        fit(model, reg_data, key=key, weight=np.r_[np.ones(39), -1.0])
    # an empty row's weighted mean is 0/0: NaN, which fit would report as a divergence
    with pytest.raises(ValueError, match=r"weight keeps no training point for member\(s\) "
                                         r"\[1\]: every row needs a positive weight"):
        fit(model, reg_data, key=keys, weight=np.ones((3, 40)) * np.c_[[1.0, 0.0, 2.0]])


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def reg_data():
    return _sine(0)


@pytest.fixture(scope="module")
def cls_data():
    return _blobs(0)


def test_wrong_loss_for_the_task(reg_data, cls_data):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="classification"):
        fit(linear(1, n_out=2), reg_data, key=key, loss="ce")
    with pytest.raises(ValueError, match="classification"):
        fit(linear(1), reg_data, key=key, loss="bce")
    with pytest.raises(ValueError, match="bce.*n_out=3"):
        fit(linear(2, n_out=3), cls_data, key=key, loss="bce")
    with pytest.raises(ValueError, match="n_out == n_classes"):
        fit(linear(2, n_out=3), cls_data, key=key, loss="ce")
    with pytest.raises(ValueError, match=r"hparams \['widht'\] are not knobs of this model "
                       r"\(allowed: \['n_inputs', 'input_noise'\]\) and the optimizer"):
        fit(linear(1), reg_data, key=key, hparams={"widht": 2.0})
    for name in ("key", "train_weight"):  # fit's own: overwritten or unchecked otherwise
        with pytest.raises(ValueError, match=rf"hparams \['{name}'\] are reserved"):
            fit(linear(1), reg_data, key=key, hparams={name: jnp.ones(1)})
    # (n, 2) outputs minus (n,) labels would broadcast when n == 2
    with pytest.raises(ValueError, match="loss='mse' on class labels.*n_out=2, n_classes=2"):
        fit(linear(2, n_out=2), cls_data, key=key, loss="mse")
    with pytest.raises(ValueError, match="loss='mae'.*Did you mean 'mse'"):
        fit(linear(1), reg_data, key=key, loss="mae")


def test_bad_fit_arguments(reg_data):
    key, model = jax.random.key(0), polynomial(3)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, reg_data, key=key, epochs=0)
    with pytest.raises(ValueError, match="eval_every=3 must divide epochs=10"):
        fit(model, reg_data, key=key, epochs=10, eval_every=3)
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, reg_data, key=key, batch_size=0)
    with pytest.raises(ValueError, match="learning_rate"):
        fit(model, reg_data, key=key, optimizer=optax.sgd(0.1), hparams={"learning_rate": 0.1})
    with pytest.raises(ValueError, match="input_noise"):
        fit(model, reg_data, key=key, hparams={"input_noise": -1.0})
    with pytest.raises(ValueError, match="val_accuracy"):
        fit(model, reg_data, key=key, early_stopping=patience(monitor="val_accuracy"))
    with pytest.raises(ValueError, match=r"a 1-D batch of M keys .*got keys of shape \(2, 3\)"):
        fit(model, reg_data, key=jax.random.split(key, (2, 3)))
    with pytest.raises(ValueError, match=r"got keys of shape \(2, 3, 2\)"):  # raw key data
        fit(model, reg_data, key=jax.random.key_data(jax.random.split(key, (2, 3))))
    # a capacity is cast to an integer: 2.5 would quietly train degree 2
    keys = jax.random.split(key, 2)
    with pytest.raises(ValueError, match=r"degree=2.5 must be a whole number"):
        fit(model, reg_data, key=keys, hparams={"degree": np.array([2.5, 3.0])})
    with pytest.raises(ValueError, match=r"baseline=nan is out of range"):
        patience(baseline=float("nan"))


def _replace(data, **kw):
    return dataclasses.replace(data, **kw)


@pytest.mark.parametrize("call, match", [
    # a (n, 1) target broadcast against (n,) outputs into an (n, n) loss, 47x too large
    (lambda r, c, k: fit(polynomial(3), _replace(r, y_train=r.y_train[:, None]), key=k),
     r"data.y_train has shape \(40, 1\); allowed: \(40,\), one target per row"),
    (lambda r, c, k: fit(polynomial(3), _replace(r, y_val=r.y_val[:5]), key=k),
     r"data.y_val has shape \(5,\)"),
    (lambda r, c, k: evaluate(polynomial(3), *polynomial(3).init(k), r.x_test,
                              r.y_test[:, None]), r"y has shape .*one target per row"),
    (lambda r, c, k: evaluate(polynomial(3), *polynomial(3).init(k), r.x_test, r.y_test,
                              loss="mae"), r"loss='mae' is not allowed"),
    (lambda r, c, k: evaluate(polynomial(3), *polynomial(3).init(k), r.x_test, r.y_test,
                              task="regresion"), r"task='regresion' is not allowed"),
    # out-of-range labels gave a NaN loss reported as a divergence at epoch 0
    (lambda r, c, k: fit(mlp(2, (4,), n_out=3), _replace(c, n_classes=3, y_train=c.y_train + 2),
                         key=k), r"data.y_train holds labels \[3\] outside 0 .. n_classes"),
    (lambda r, c, k: fit(linear(2), _replace(c, y_train=c.y_train - 1), key=k),
     r"holds labels \[-1\]"),
    (lambda r, c, k: fit(mlp(2, (4,), n_out=2), _replace(c, y_train=c.y_train * 1.0), key=k,
                         loss="ce"), r"data.y_train holds float32 values; class labels"),
    (lambda r, c, k: fit(mlp(1, (4,), n_out=3), r, key=k),
     r"a regression model has one output; got model.n_out=3"),
    (lambda r, c, k: fit(polynomial(3), c, key=k, loss="mse"),
     r"does not take data.x_train rows of 2 feature.*a polynomial takes rows of 1 input"),
    (lambda r, c, k: fit(polynomial(3), r, key=k, optimizer=optax.adam),
     r"optimizer=adam is optax's factory; pass the optimizer it makes, e.g. optax.adam"),
    (lambda r, c, k: fit(polynomial(3), r, key=k, optimizer="adam"),
     r"optimizer must be an optax optimizer"),
    (lambda r, c, k: fit(polynomial(3), r, key=k, early_stopping=patience),
     r"early_stopping must be a rule such as of.patience\(10\)"),
    # with a callable optimizer any name passes: a misspelt knob trained degree 3 for all
    (lambda r, c, k: fit(polynomial(3), r, key=jax.random.split(k, 3),
                         optimizer=lambda h: optax.sgd(h["lr"]),
                         hparams={"lr": jnp.full(3, 0.1), "degre": jnp.array([0, 1, 3])}),
     r"hparams\['degre'\] is not a knob of this model; did you mean 'degree'"),
])
def test_bad_data_and_arguments_are_named_not_broadcast(reg_data, cls_data, call, match):
    with pytest.raises(ValueError, match=match):
        call(reg_data, cls_data, jax.random.key(0))


def test_per_member_inputs_must_agree_with_the_keys(reg_data):
    """A shorter knob used to drop members silently, a longer one to end in a bare
    IndexError, stacked data under one key to train a nonsense broadcast."""
    key, model = jax.random.key(0), polynomial(3)
    keys = jax.random.split(key, 3)
    stacked = _stack(reg_data, reg_data)
    for hp in ([1, 2], [1, 2, 3, 3]):
        with pytest.raises(ValueError, match=rf"M=3 .* got hparams\['degree'\]: {len(hp)}\."):
            fit(model, reg_data, key=keys, hparams={"degree": jnp.array(hp)})
    with pytest.raises(ValueError, match=r"M=3 .* got data.x_train: 2, data.y_train: 2"):
        fit(model, stacked, key=keys)
    with pytest.raises(ValueError, match=r"one key trains one model.*\(2, 40, 1\).*split"):
        fit(model, stacked, key=key)
    with pytest.raises(ValueError, match=r"one key.*\"hparams\['degree'\]\": \(2,\)"):
        fit(model, reg_data, key=key, hparams={"degree": jnp.array([1, 2])})
    with pytest.raises(ValueError, match="key must be a PRNG key.*got int 0"):
        fit(model, reg_data, key=0)
    with pytest.raises(ValueError, match=r"does not take data.x_train rows of 1 feature.*inputs"):
        fit(mlp(3, (8,)), reg_data, key=key)
    # one model: a knob only a callable optimizer reads may have any shape
    fit(model, reg_data, key=key, epochs=2,
        optimizer=lambda hp: optax.sgd(hp["rates"][0]), hparams={"rates": jnp.array([0.1, 0.2])})
    # a per-member dropout rate on a network compiled without dropout would be a no-op
    with pytest.raises(ValueError, match=r"drop_rate=0.5 given to init.*mlp\(\.\.\., drop_rate"):
        fit(mlp(1, (8,)), reg_data, key=keys[:2], hparams={"drop_rate": jnp.array([0.0, 0.5])})


# ----------------------------------------------------------------------------- compile cache


def test_fit_compiles_once_for_repeated_default_calls(reg_data):
    model = linear(1)
    for keys in (jax.random.key, lambda s: jax.random.split(jax.random.key(s), 3)):
        with CompileClock() as clock:
            fit(model, reg_data, key=keys(0), epochs=1)
            first = clock.compiles
            fit(model, reg_data, key=keys(1), epochs=1)
        assert first >= 1 and clock.compiles == first


def test_a_diverging_member_is_frozen_and_flagged_while_the_rest_train_on():
    """SGD at lr = 1e3 blows up an MLP at once: that member keeps finite parameters and
    is flagged with the epoch; its history is NaN; the healthy members are bit-for-bit
    what they would be without it, and the same holds under early stopping."""
    data = regression(jax.random.key(0), target="sin", n_train=30, noise=0.1)
    model = mlp(1, (16,))
    keys = jax.random.split(jax.random.key(1), 3)
    make = lambda h: optax.sgd(h["lr"])  # noqa: E731
    for rule in (None, patience(patience=50)):
        kw = dict(optimizer=make, epochs=100, eval_every=10, early_stopping=rule)
        res = fit(model, data, key=keys, hparams={"lr": jnp.array([0.05, 1e3, 0.05])}, **kw)
        np.testing.assert_array_equal(res.diverged_epoch, [-1, 9, -1])
        assert not np.isfinite(res.diverged_loss[1])
        assert all(np.isfinite(a).all() for a in jax.tree.leaves(res.params))
        assert np.isnan(res.history.train_loss[1]).all()
        assert res.stop_epoch[1] == -1 and res.best_epoch[1] == -1  # the initial parameters
        healthy = fit(model, data, key=keys[jnp.array([0, 2])],
                      hparams={"lr": jnp.array([0.05, 0.05])}, **kw)
        _assert_tree_close(_member(res.params, 0), _member(healthy.params, 0), rtol=1e-6,
                           atol=1e-7)
        np.testing.assert_allclose(res.history.val_loss[2], healthy.history.val_loss[1],
                                   rtol=1e-6)
        np.testing.assert_array_equal(healthy.diverged_epoch, [-1, -1])


def test_a_member_stopped_by_its_rule_is_never_flagged_as_diverged_afterwards():
    """Member 1 takes good steps, then steps of 3.0 on a cubic: its validation loss turns
    up at once (patience 0 stops it at epoch 3, best epoch 2 restored), and only later
    would its loss overflow. A stopped member is finished, so it is not 'diverged'."""
    data = regression(jax.random.key(0), n_train=20, noise=0.1)
    schedule = lambda h: optax.sgd(  # noqa: E731
        lambda step: jnp.where(h["big"] > 0, jnp.where(step < 3, 0.3, 3.0), 0.01))
    res = fit(polynomial(3), data, key=jax.random.split(jax.random.key(0), 2),
              optimizer=schedule, epochs=60, hparams={"big": jnp.array([0, 1])},
              early_stopping=patience(patience=0))
    np.testing.assert_array_equal(res.stop_epoch, [59, 3])
    np.testing.assert_array_equal(res.best_epoch, [59, 2])
    np.testing.assert_array_equal(res.diverged_epoch, [-1, -1])
    assert np.isfinite(res.test_loss).all()


def test_weak_and_strong_typed_hparams_share_one_compile():
    """jnp.full(4, 0.2) is weakly typed, jnp.zeros(4) and numpy float32 are not: the same
    sweep must not recompile because of how its values were written."""
    data = regression(jax.random.key(0), target="sin", n_train=20)
    model = mlp(1, (8,), drop_rate=0.5)
    keys = jax.random.split(jax.random.key(1), 4)
    weak, strong, host = jnp.full(4, 0.2), jnp.zeros(4), np.full(4, 0.1, np.float32)
    # another model (an equal one would share the program): its eager conversions only
    for rates in (weak, strong, host):
        fit(mlp(1, (9,), drop_rate=0.5), data, key=keys, epochs=2, hparams={"drop_rate": rates})
    with CompileClock() as clock:
        fit(model, data, key=keys, epochs=2, hparams={"drop_rate": weak})
        first = clock.compiles
        fit(model, data, key=keys, epochs=2, hparams={"drop_rate": strong})
        fit(model, data, key=keys, epochs=2, hparams={"drop_rate": host})
    assert first >= 1 and clock.compiles == first


def test_full_batch_evaluation_reuses_the_step_forward_pass(monkeypatch):
    """A deterministic full-batch fit takes each evaluation's training gradient for the
    next step instead of a second forward pass; it returns what the plain loop returns
    (float32 round-off), early stopping and restore_best included. Dropout, input noise
    and minibatches keep the plain loop (their training forward pass is not the
    evaluation's)."""
    import overfit.train as train

    data = _sine(3, n_train=30, n_val=15, n_test=10)
    config = lambda model, batch=None: train._Config(  # noqa: E731
        model, "mse", optax.adam(1e-2), 10, batch, NEVER, 1, None)
    assert train._shares_forward(config(mlp(1, (8,))), data, {})
    assert train._shares_forward(config(polynomial(4)), data, {})
    assert train._shares_forward(config(mlp(1, (8,)), batch=30), data, {})
    assert not train._shares_forward(config(mlp(1, (8,), drop_rate=0.1)), data, {})
    assert not train._shares_forward(config(mlp(1, (8,))), data, {"input_noise": 0.1})
    assert not train._shares_forward(config(mlp(1, (8,)), batch=16), data, {})
    # a model whose training mode differs only in an array constant is not fooled
    base = linear(1)
    odd = base._replace(apply=lambda p, s, x, key=None, train=False: base.apply(
        p, s, x * (np.full((1,), 2.0, np.float32) if train else np.ones((1,), np.float32))))
    assert not train._shares_forward(config(odd), data, {})

    keys = jax.random.split(jax.random.key(5), 4)
    kw = dict(optimizer=optax.adam(3e-2), epochs=60, eval_every=3,
              early_stopping=patience(patience=2), hparams={"width": jnp.array([2, 4, 8, 8])})
    model = mlp(1, (8, 8))
    shared = fit(model, data, key=keys, **kw)
    monkeypatch.setattr(train, "_shares_forward", lambda *a: False)
    train._member_program.cache_clear()
    plain = fit(model, data, key=keys, **kw)
    np.testing.assert_array_equal(shared.stop_epoch, plain.stop_epoch)
    np.testing.assert_array_equal(shared.best_epoch, plain.best_epoch)
    assert (shared.stop_epoch < 59).any()  # the rule did stop someone
    _assert_tree_close(shared.history, plain.history, rtol=1e-5, atol=1e-7)
    _assert_tree_close(shared.params, plain.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shared.test_loss, plain.test_loss, rtol=1e-5)


def test_square_loss_on_class_labels_predicts_class_one_past_the_labels_midpoint():
    """Regressed on the 0/1 labels, an output of 0.3 is nearer class 0: a one-output
    model trained with loss='mse' is scored at 0.5, not at a logit's 0."""
    from overfit.data import classification
    from overfit.experiments import scores

    data = classification(jax.random.key(0), shape="xor", n_train=40, n_val=20, n_test=20)
    model = mlp(2, (32, 32), activation="relu")
    res = fit(model, data, key=jax.random.key(1), loss="mse", epochs=300, eval_every=300,
              early_stopping=NEVER)
    out = np.asarray(model.apply(res.params, res.state, data.x_train))
    y = np.asarray(data.y_train)
    want = np.mean((out > 0.5) == y)
    assert want == 1.0 and np.mean((out > 0) == y) < 0.9  # the two thresholds differ here
    np.testing.assert_allclose(res.history.train_metric[-1], want)
    _, metric = evaluate(model, res.params, res.state, data.x_train, data.y_train,
                         loss="mse", task="classification")
    np.testing.assert_allclose(metric, want)
    got = scores(model, res.params, res.state, data, loss="mse")
    np.testing.assert_allclose(got["train_accuracy"], want)
    val = np.asarray(model.apply(res.params, res.state, data.x_val))
    np.testing.assert_allclose(got["val_accuracy"], np.mean((val > 0.5) == np.asarray(data.y_val)))


def test_evaluate_scores_as_fit_does_without_being_told_the_loss():
    """evaluate defaulted to loss='mse', task='regression': a logit classifier got the
    MSE of its logits, or (task given) accuracy cut at 0.5 instead of 0; a two-class
    softmax model failed in a broadcast. It now picks both as fit does."""
    data = classification(jax.random.key(0), shape="moons", n_train=40, n_val=20, n_test=40)
    for model in (mlp(2, (16,)), mlp(2, (16,), n_out=2)):
        res = fit(model, data, key=jax.random.key(1), epochs=20, eval_every=20,
                  early_stopping=NEVER)
        loss, accuracy = evaluate(model, res.params, res.state, data.x_test, data.y_test)
        np.testing.assert_allclose([loss, accuracy], [res.test_loss, res.test_metric],
                                   rtol=1e-6)
    with pytest.raises(ValueError, match=r"a regression model has one output; this one has "
                                         r"n_out=2"):
        evaluate(model, res.params, res.state, data.x_test, data.y_test.astype(jnp.float32))


def test_valid_inputs_next_to_the_refused_ones_still_pass(cls_data):
    """The checks above must not refuse what worked: bool labels, names a callable
    optimizer reads that merely resemble a knob ('rate' vs drop_rate)."""
    from overfit.train import check_model_hparams

    flags = _replace(cls_data, **{f"y_{s}": getattr(cls_data, f"y_{s}").astype(bool)
                                  for s in ("train", "val", "test")})
    res = fit(linear(2), flags, key=jax.random.key(0), epochs=2)
    assert np.isfinite(float(res.test_loss))
    dropping = mlp(2, (8,), drop_rate=0.1)
    for name in ("rate", "drop", "dropout", "lr", "width_lr"):
        check_model_hparams(dropping, {name: 0.1})
    with pytest.raises(ValueError, match=r"did you mean 'drop_rate'"):
        check_model_hparams(dropping, {"drop_rat": 0.1})
