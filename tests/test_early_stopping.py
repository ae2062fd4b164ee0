"""Tests of overfit.early_stopping (GROUND_TRUTH §6) and of early stopping inside ``fit``.

The patience rule is driven on scripted validation curves, eagerly and under
``jit`` + ``lax.scan``, and compared with a line-by-line port of Keras 3's
``EarlyStopping.on_epoch_end``. Prechelt's GL / PQ / UP are checked against GL and
P_k computed by hand on a 15-epoch curve. Curve values are dyadic where they meet
``min_delta`` or a tie, so float32 state cannot blur the comparisons.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from overfit.data import Dataset
from overfit.early_stopping import never, patience, prechelt
from overfit.models import polynomial
from overfit.train import evaluate, fit

# ----------------------------------------------------------------------------- reference


def keras_reference(values, *, mode="min", min_delta=0.0, patience=0, baseline=None,
                    start_from_epoch=0):
    """Keras 3 ``EarlyStopping.on_epoch_end``, ported: returns (best_epoch, stopped_epoch
    or -1)."""
    monitor_op = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    delta = -abs(min_delta) if mode == "min" else abs(min_delta)
    best = math.inf if mode == "min" else -math.inf
    wait, best_epoch = 0, 0

    def is_improvement(value, reference):
        return monitor_op(value - delta, reference)

    for epoch, current in enumerate(values):
        if epoch < start_from_epoch:
            continue
        wait += 1
        if is_improvement(current, best):
            best, best_epoch = current, epoch
            if baseline is None or is_improvement(current, baseline):
                wait = 0
            continue
        if wait >= patience and epoch > 0:
            return best_epoch, epoch
    return best_epoch, -1


LOSS = [1.0, 0.75, 0.5, 0.5625, 0.4375, 0.5, 0.5, 0.46875, 0.5, 0.53125, 0.5625, 0.59375,
        0.625, 0.65625, 0.6875, 0.71875]
ACC = [0.5, 0.625, 0.75, 0.75, 0.8125, 0.75, 0.875, 0.875, 0.8125, 0.75, 0.75, 0.6875]

# (rule kwargs, curve, expected (best_epoch, stop_epoch)) -- expectations worked by hand
CASES = [
    (dict(patience=0), LOSS, (2, 3)),
    (dict(patience=2), LOSS, (4, 6)),
    (dict(patience=5), LOSS, (4, 9)),
    (dict(patience=20), LOSS, (4, -1)),
    # 0.4375 is not an improvement on 0.5 by more than 0.0625: a tie is no improvement
    (dict(patience=2, min_delta=0.0625), LOSS, (2, 4)),
    # improvements that never beat the baseline never reset the counter
    (dict(patience=3, baseline=0.25), LOSS, (2, 3)),
    (dict(patience=3, baseline=0.6), LOSS, (4, 7)),
    (dict(patience=1, start_from_epoch=3), LOSS, (4, 5)),
    (dict(patience=2, start_from_epoch=5), LOSS, (7, 9)),
    (dict(monitor="val_accuracy", patience=2), ACC, (6, 8)),
    (dict(monitor="val_accuracy", mode="max", patience=1, min_delta=0.0625), ACC, (2, 3)),
    (dict(monitor="train_accuracy", patience=2, baseline=0.9), ACC, (2, 3)),
    (dict(monitor="val_accuracy", mode="min", patience=1), ACC, (0, 1)),
]
IDS = [",".join(f"{k}={v}" for k, v in kw.items()) for kw, _, _ in CASES]


def _reference(kw, curve):
    mode = kw.get("mode", "auto")
    if mode == "auto":
        mode = "max" if "accuracy" in kw.get("monitor", "val_loss") else "min"
    ref_kw = {k: v for k, v in kw.items() if k not in ("monitor", "mode")}
    return keras_reference(curve, mode=mode, **ref_kw)


def _run_eager(rule, curve):
    state = rule.init()
    for epoch, value in enumerate(curve):
        state = rule.update(state, epoch, value, value)
    return state


def _run_scan(rule, curve):
    def step(state, xs):
        epoch, value = xs
        return rule.update(state, epoch, value, value), state.stopped

    values = jnp.asarray(curve, jnp.float32)
    return jax.lax.scan(step, rule.init(), (jnp.arange(values.size), values))[0]


@pytest.mark.parametrize("kw, curve, expected", CASES, ids=IDS)
def test_patience_matches_keras_eagerly(kw, curve, expected):
    assert _reference(kw, curve) == expected  # the port agrees with the hand count
    state = _run_eager(patience(**kw), curve)
    assert (int(state.best_epoch), int(state.stop_epoch)) == expected
    assert bool(state.stopped) == (expected[1] >= 0)
    maximise = kw.get("mode", "auto") == "max" or (
        kw.get("mode", "auto") == "auto" and "accuracy" in kw.get("monitor", ""))
    # the state keeps the best value sign-adjusted so that smaller is better
    assert float(state.best) == (-1 if maximise else 1) * curve[expected[0]]


def test_patience_matches_keras_under_jit_and_scan():
    rules = [patience(**kw) for kw, _, _ in CASES]

    @jax.jit
    def run_all():
        states = [_run_scan(rule, curve) for rule, (_, curve, _) in zip(rules, CASES)]
        return [(s.best_epoch, s.stop_epoch) for s in states]

    got = [(int(b), int(s)) for b, s in run_all()]
    assert got == [_reference(kw, curve) for kw, curve, _ in CASES]


def test_patience_under_vmap_stops_each_member_on_its_own():
    rule = patience(patience=1)
    curves = jnp.array([LOSS, LOSS[::-1], [1.0 - 0.0625 * i for i in range(16)]], jnp.float32)

    def run(curve):
        def step(state, xs):
            return rule.update(state, xs[0], xs[1], xs[1]), None
        return jax.lax.scan(step, rule.init(), (jnp.arange(16), curve))[0]

    states = jax.vmap(run)(curves)
    want = [keras_reference(list(map(float, c)), patience=1) for c in curves]
    assert list(zip(states.best_epoch.tolist(), states.stop_epoch.tolist())) == want
    assert want[2] == (15, -1)


# ----------------------------------------------------------------------------- Prechelt

E_VA = [1.00, 0.80, 0.70, 0.65, 0.62, 0.60, 0.61, 0.63, 0.62, 0.66, 0.64, 0.67, 0.70, 0.72, 0.75]
E_TR = [1.00, 0.70, 0.55, 0.45, 0.40, 0.37, 0.35, 0.34, 0.335, 0.33, 0.328, 0.327, 0.3265,
        0.326, 0.3258]


def _prechelt_by_hand(rule, alpha, e_va, e_tr, k=5):
    """Prechelt (1998) in plain float64 Python; epochs counted from 0, strips end at k-1,
    2k-1, ...; UP compares strip ends (the first strip end has nothing to compare)."""
    ups = 0
    for t in range(len(e_va)):
        e_opt = min(e_va[: t + 1])
        gl = 100.0 * (e_va[t] / e_opt - 1.0)
        strip_end = (t + 1) % k == 0
        if rule == "GL" and gl > alpha:
            return t
        if strip_end:
            window = e_tr[t - k + 1: t + 1]
            p_k = 1000.0 * (sum(window) / (k * min(window)) - 1.0)
            if rule == "PQ" and gl / p_k > alpha:
                return t
            if t >= k:
                ups = ups + 1 if e_va[t] > e_va[t - k] else 0
            if rule == "UP" and ups >= alpha:
                return t
    return -1


def test_prechelt_quantities_by_hand():
    # the numbers the expectations below rest on
    e_opt = np.minimum.accumulate(E_VA)
    gl = 100 * (np.array(E_VA) / e_opt - 1)
    np.testing.assert_allclose(gl[[6, 7, 9, 14]], [100 / 60, 5.0, 10.0, 25.0], rtol=1e-12)
    p9 = 1000 * (sum(E_TR[5:10]) / (5 * 0.33) - 1)
    p14 = 1000 * (sum(E_TR[10:15]) / (5 * 0.3258) - 1)
    np.testing.assert_allclose([p9, p14], [45.4545454, 2.6396562], rtol=1e-6)
    assert gl[9] / p9 < 0.25 < 1.0 < gl[14] / p14


@pytest.mark.parametrize(
    "rule, alpha, expected",
    [("GL", 2.0, 7), ("GL", 8.0, 9), ("GL", 30.0, -1), ("PQ", 0.1, 9), ("PQ", 0.5, 14),
     ("PQ", 20.0, -1), ("UP", 1, 9), ("UP", 2, 14), ("UP", 3, -1)],
)
def test_prechelt_stop_epochs(rule, alpha, expected):
    assert _prechelt_by_hand(rule, alpha, E_VA, E_TR) == expected
    rule_ = prechelt(rule, alpha, strip=5)
    state = rule_.init()
    for epoch, (va, tr) in enumerate(zip(E_VA, E_TR)):
        state = rule_.update(state, epoch, va, tr)
    assert int(state.stop_epoch) == expected
    assert int(state.best_epoch) == 5  # E_opt = 0.60 from epoch 5 on


def test_a_nan_evaluation_never_becomes_prechelts_optimum():
    # min(E_opt, NaN) is NaN: GL would be NaN from then on and the rule never stop
    curve = [1.0, 0.75, math.nan, 0.5, 0.375, 0.25, 0.3125, 0.5, 1.0]
    state = _run_scan(prechelt("GL", 5.0), curve)
    assert (int(state.best_epoch), int(state.stop_epoch)) == (5, 6)  # GL(6) = 25 > 5
    assert float(state.best) == 0.25


@pytest.mark.parametrize("rule", [patience(patience=2), prechelt("UP", 1, strip=2)])
def test_rules_keep_their_state_types_under_a_64_bit_epoch_counter(rule):
    # jnp.arange is int64 under x64: where(improved, epoch, best_epoch) would widen the
    # scan's carry, which lax.scan refuses
    with jax.enable_x64(True):
        state = _run_scan(rule, [1.0, 0.5, 0.75, 0.875, 1.0, 1.5])
    assert state.best_epoch.dtype == state.stop_epoch.dtype == jnp.int32
    assert int(state.best_epoch) == 1 and int(state.stop_epoch) > 1


def test_prechelt_gl_is_a_strict_threshold_and_ties_keep_the_first_optimum():
    # exact binary fractions: GL = 25 at epoch 3 (0.625 / 0.5), 50 at epoch 4
    e_va = [1.0, 0.5, 0.5, 0.625, 0.75]
    rule = prechelt("GL", 25.0)
    state = rule.init()
    for epoch, va in enumerate(e_va):
        state = rule.update(state, epoch, va, 1.0)
    assert _prechelt_by_hand("GL", 25.0, e_va, [1.0] * 5) == 4
    assert int(state.stop_epoch) == 4  # GL = alpha is not yet "GL > alpha"
    assert int(state.best_epoch) == 1  # epoch 2 only ties E_opt: the first reach is kept


def test_prechelt_up_counts_successive_rises_only():
    # strip ends 0.62, 0.66 (rise), 0.58 (fall: the count restarts), 0.70 (rise)
    e_va = E_VA[:10] + [0.64, 0.62, 0.60, 0.59, 0.58, 0.60, 0.62, 0.65, 0.68, 0.70]
    e_tr = E_TR + [0.3257, 0.3256, 0.3255, 0.3254, 0.3253]
    for alpha, expected in ((1, 9), (2, -1)):
        assert _prechelt_by_hand("UP", alpha, e_va, e_tr) == expected
        rule = prechelt("UP", alpha)

        @jax.jit
        def run(va, tr, rule=rule):
            def step(carry, xs):
                return rule.update(carry, *xs), None
            return jax.lax.scan(step, rule.init(), (jnp.arange(20), va, tr))[0]

        state = run(jnp.asarray(e_va, jnp.float32), jnp.asarray(e_tr, jnp.float32))
        assert int(state.stop_epoch) == expected
        if expected < 0:
            assert int(state.best_epoch) == 14 and int(state.ups) == 1


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: patience(patience=-1), "patience"),
        (lambda: patience(patience=1.5), "patience"),
        (lambda: patience(monitor="val_los"), "monitor.*Did you mean 'val_loss'"),
        (lambda: patience(mode="minimum"), "mode"),
        (lambda: patience(min_delta=-0.1), "min_delta"),
        (lambda: patience(start_from_epoch=-1), "start_from_epoch"),
        (lambda: prechelt("XY", 1.0), "rule.*'XY'"),
        (lambda: prechelt("GL", -1.0), "alpha"),
        (lambda: prechelt("UP", 1.5), "alpha"),
        (lambda: prechelt("GL", 1.0, strip=0), "strip"),
        (lambda: prechelt("GL", 1.0, monitor="val_accuracy"), "val_accuracy"),
        (lambda: prechelt("GL", 1.0, monitor="train_loss"), "train_loss.*validation error"),
        (lambda: prechelt("PQ", 1.0, monitor="train_mse"), "train_mse"),
    ],
)
def test_bad_input(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ----------------------------------------------------------------------------- inside fit

POLY = polynomial(12)
OPT = optax.adam(0.1)
STOP = patience(patience=2)
ES_KW = dict(optimizer=OPT, epochs=200, eval_every=2, early_stopping=STOP)


def _noisy_cos(seed: int, n: int = 20) -> Dataset:
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(0.0, 1.0, (n, 1)).astype(np.float32) for _ in range(3)]
    fs = [np.cos(1.5 * np.pi * x[:, 0]).astype(np.float32) for x in xs]
    ys = [(f + 0.3 * rng.standard_normal(n)).astype(np.float32) for f in fs]
    return Dataset(xs[0], ys[0], fs[0], xs[1], ys[1], fs[1], xs[2], ys[2], fs[2])


def _stack(*datasets: Dataset) -> Dataset:
    return jax.tree.map(lambda *a: jnp.stack(a), *datasets)


@jax.jit
def _evaluate_members(result, data):
    """(val loss, test loss, test mse) of every member's returned parameters."""
    def one(params, state, data):
        val_loss, _ = evaluate(POLY, params, state, data.x_val, data.y_val)
        return val_loss, *evaluate(POLY, params, state, data.x_test, data.y_test)

    return jax.vmap(one)(result.params, result.state, data)


@pytest.fixture(scope="module")
def stopped_runs():
    datas = [_noisy_cos(s) for s in (1, 2, 3, 4)]
    keys = jax.random.split(jax.random.key(1), 4)
    batch = fit(POLY, _stack(*datas), key=keys, **ES_KW)
    singles = [fit(POLY, d, key=k, **ES_KW) for d, k in zip(datas, keys)]
    return datas, batch, singles


def test_members_stop_on_their_own_as_if_run_alone(stopped_runs):
    _, batch, singles = stopped_runs
    stops = np.asarray(batch.stop_epoch)
    assert len(set(stops.tolist())) > 1  # the scenario does what it says
    for i, single in enumerate(singles):
        assert int(batch.stop_epoch[i]) == int(single.stop_epoch)
        assert int(batch.best_epoch[i]) == int(single.best_epoch)
        np.testing.assert_allclose(batch.params["coef"][i], single.params["coef"], rtol=1e-4,
                                   atol=1e-6)
        for a, b in zip(batch.history, single.history):  # NaN where not run, in both
            np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(batch.test_loss[i], single.test_loss, rtol=1e-4)


def test_history_is_nan_after_each_stop_and_the_loop_ends_early(stopped_runs):
    _, batch, _ = stopped_runs
    checks = np.asarray(batch.stop_epoch) // 2  # eval_every = 2: check k ends epoch 2k+1
    assert checks.max() < 99  # every member stopped well inside the 200-epoch budget
    for curve in batch.history:
        curve = np.asarray(curve)
        assert curve.shape == (4, 100)
        for i, c in enumerate(checks):
            assert np.all(np.isfinite(curve[i, : c + 1]))
            assert np.all(np.isnan(curve[i, c + 1:]))
        assert np.all(np.isnan(curve[:, checks.max() + 1:]))


def test_restore_best_returns_the_best_checked_parameters(stopped_runs):
    datas, batch, _ = stopped_runs
    val = np.asarray(batch.history.val_loss)
    val_loss, test_loss, test_mse = _evaluate_members(batch, _stack(*datas))
    np.testing.assert_allclose(val_loss, np.nanmin(val, axis=1), rtol=1e-5)
    np.testing.assert_allclose(batch.test_loss, test_loss, rtol=1e-5)
    np.testing.assert_allclose(batch.test_metric, test_mse, rtol=1e-5)
    for i in range(len(datas)):
        best_check = int(np.nanargmin(val[i]))
        # epochs are 0-based, checks come every 2 epochs; patience counts checks
        assert int(batch.best_epoch[i]) == 2 * best_check + 1
        assert int(batch.stop_epoch[i]) == int(batch.best_epoch[i]) + 2 * 2
        # the restored parameters are not the last ones: the stop came 2 checks later
        assert np.nanmin(val[i]) < val[i, best_check + 2]


def test_without_restore_best_the_best_epoch_is_the_stop_epoch(stopped_runs):
    datas, _, _ = stopped_runs
    rule = patience(patience=2, restore_best=False)
    batch = fit(POLY, _stack(*datas), key=jax.random.split(jax.random.key(1), 4),
                optimizer=OPT, epochs=200, eval_every=2, early_stopping=rule)
    stops = np.asarray(batch.stop_epoch)
    assert len(set(stops.tolist())) > 1
    # the returned parameters are those of each member's stop epoch ...
    val = np.asarray(batch.history.val_loss)
    val_loss, _, _ = _evaluate_members(batch, _stack(*datas))
    np.testing.assert_allclose(val_loss, val[np.arange(4), stops // 2], rtol=1e-5)
    # ... so best_epoch, "the epoch of the returned parameters", must be the stop epoch
    np.testing.assert_array_equal(batch.best_epoch, batch.stop_epoch)


def test_a_rule_that_monitored_nothing_restores_nothing(stopped_runs):
    """start_from_epoch beyond the run: no evaluation was ever monitored, so (as in
    Keras) the last parameters are returned, not those of the first check."""
    datas, _, _ = stopped_runs
    rule = patience(patience=2, start_from_epoch=500)
    batch = fit(POLY, _stack(*datas), key=jax.random.split(jax.random.key(1), 4),
                optimizer=OPT, epochs=40, eval_every=2, early_stopping=rule)
    np.testing.assert_array_equal(batch.best_epoch, 39)
    np.testing.assert_array_equal(batch.stop_epoch, 39)
    val = np.asarray(batch.history.val_loss)
    assert np.all(np.abs(val[:, -1] - val[:, 0]) > 0.05 * val[:, 0])  # the check-0 ones differ
    val_loss, _, _ = _evaluate_members(batch, _stack(*datas))
    np.testing.assert_allclose(val_loss, val[:, -1], rtol=1e-5)


def test_a_member_stopped_before_any_improvement_keeps_its_stop_epochs_parameters(stopped_runs):
    """All-NaN validation targets: the rule stops the member with no best to restore.
    In a batch the others train on; its returned parameters are still those it had
    when it stopped (as when it runs alone), not what the later steps made of them."""
    datas, _, _ = stopped_runs
    blind = dataclasses.replace(datas[0], y_val=jnp.full_like(datas[0].y_val, jnp.nan))
    keys = jax.random.split(jax.random.key(1), 2)
    both = fit(POLY, _stack(blind, datas[1]), key=keys, **ES_KW)
    alone = fit(POLY, blind, key=keys[0], **ES_KW)
    assert int(both.best_epoch[0]) == int(alone.stop_epoch) < int(both.stop_epoch[1])
    np.testing.assert_allclose(both.params["coef"][0], alone.params["coef"], rtol=1e-5,
                               atol=1e-6)


def test_a_validation_monitor_without_validation_points_is_refused():
    d = _noisy_cos(1)
    empty = dataclasses.replace(d, x_val=d.x_val[:0], y_val=d.y_val[:0], f_val=d.f_val[:0])
    with pytest.raises(ValueError, match=r"monitor='val_loss' needs validation points.*n_val=0"):
        fit(POLY, empty, key=jax.random.key(0), **ES_KW)
    # what a train monitor or no rule needs is there
    fit(POLY, empty, key=jax.random.key(0), optimizer=OPT, epochs=4,
        early_stopping=patience(monitor="train_loss"))
    fit(POLY, empty, key=jax.random.key(0), optimizer=OPT, epochs=4)


@pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")
def test_early_stopping_in_fit_under_x64():
    """The rule's float32/int32 state mixes with float64 losses: it stops where it does
    in float32, with the same curves to float32 precision."""
    data, kw = _noisy_cos(5), dict(key=jax.random.key(0), optimizer=optax.adam(0.1), epochs=60,
                                   early_stopping=patience(patience=1))
    with jax.enable_x64(True):
        wide = fit(polynomial(3), data, **kw)
    narrow = fit(polynomial(3), data, **kw)
    assert 0 < int(narrow.stop_epoch) < 59  # it did stop early
    assert (int(wide.best_epoch), int(wide.stop_epoch)) == (int(narrow.best_epoch),
                                                          int(narrow.stop_epoch))
    np.testing.assert_allclose(wide.history.val_loss, narrow.history.val_loss, rtol=1e-4)


def test_never_trains_the_full_budget():
    rule = never()
    state = rule.init()
    for epoch in range(5):
        state = rule.update(state, epoch, 1.0, 1.0)
    assert not bool(state.stopped) and int(state.stop_epoch) == -1
    assert rule.restore_best is False and rule.monitor == "val_loss"


def test_up_takes_a_whole_alpha_given_as_a_float():
    """prechelt('UP', 2.0) was refused ("must be an integer"); 2.0 strips are 2."""
    rules = [prechelt("UP", a, strip=1) for a in (2, 2.0)]
    values = [3.0, 2.0, 2.5, 2.7, 2.9, 1.0]
    stops = []
    for rule in rules:
        state = rule.init()
        for epoch, v in enumerate(values):
            state = rule.update(state, epoch, v, v)
        stops.append(int(state.stop_epoch))
    assert stops[0] == stops[1] == 3  # rose at 2 and 3: two successive rising strips
