"""Experiment drivers against known math: the numbers behind the gallery's curves."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest

from overfit import experiments, scenario, theory
from overfit.clock import CompileClock


def _run(kind: str, **sections) -> list[dict]:
    sc = scenario.from_dict({"name": "t", "kind": kind, **sections})
    rows, figures = experiments.EXPERIMENTS[kind](sc)
    for fig in figures.values():
        plt.close(fig)
    return rows


def test_bias_variance_vs_n_train_matches_the_exact_least_squares_variance():
    """Isotropic Gaussian design, n > p: E test variance = s2 p / (n - p - 1), no bias
    (GROUND_TRUTH §2, the exact finite-sample risk left of the threshold)."""
    rows = _run("bias_variance",
                data={"source": "linear", "p": 10, "n_test": 2000, "noise": 1.0},
                model={"kind": "linear"}, train={"method": "closed_form"},
                sweep={"n_train": [30, 60], "seeds": 400})
    assert [r["n_train"] for r in rows] == [30, 60]
    want = theory.min_norm_risk(10, np.array([30, 60]), 1.0, 1.0)
    np.testing.assert_allclose([r["variance"] for r in rows], want, rtol=0.08)
    assert all(abs(r["bias2"]) < 0.01 and r["noise"] == pytest.approx(1.0) for r in rows)


def test_bias_variance_vs_noise_scales_every_term_with_the_noise_variance():
    """Fixed design, the same noise draws scaled by sigma, a model class that holds the
    truth (a cubic): predictions are A f + sigma A z, so bias^2 and variance are both
    exactly proportional to sigma^2 and the noise term is sigma^2."""
    rows = _run("bias_variance",
                data={"source": "regression", "target": "poly", "domain": [-1.0, 1.0],
                      "x_dist": "grid", "n_train": 12, "n_test": 300},
                model={"kind": "polynomial", "max_degree": 3},
                train={"method": "closed_form"},
                sweep={"noise": [0.1, 0.2, 0.4], "seeds": 50})
    sigma2 = np.array([0.01, 0.04, 0.16])
    np.testing.assert_allclose([r["noise"] for r in rows], sigma2, rtol=1e-5)
    for term in ("variance", "bias2"):
        ratio = np.array([r[term] for r in rows]) / sigma2
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    # 4 parameters on 12 fixed points: the variance is about 4 sigma^2 / 12 at the points
    assert 0.15 < rows[0]["variance"] / sigma2[0] < 0.6


def test_bias_variance_needs_exactly_one_swept_axis():
    with pytest.raises(ValueError, match="exactly one of sweep.capacity"):
        _run("bias_variance", train={"method": "closed_form"},
             sweep={"capacity": [1, 2], "n_train": [10, 20], "seeds": 2})


def test_learning_curves_training_error_is_s2_times_one_minus_p_over_n():
    """A degree-8 polynomial holds cos(1.5 pi x) to ~1e-6, so its mean training MSE is
    the least-squares s2 (1 - p/n) of GROUND_TRUTH §1 (p = 9 parameters), and the gap
    to the validation error shrinks as n grows; the line's gap is its bias, not variance."""
    rows = _run("learning_curves",
                data={"source": "regression", "target": "cos", "noise": 0.3, "n_val": 300,
                      "n_test": 10},
                model={"kind": "polynomial"}, train={"method": "closed_form"},
                sweep={"capacity": [1, 8], "n_train": [30, 100], "seeds": 200})
    def mean(key, n, degree):
        return np.mean([r[key] for r in rows if r["n_train"] == n and r["degree"] == degree])

    for n in (30, 100):
        assert mean("train_mse", n, 8) == pytest.approx(0.09 * (1 - 9 / n), rel=0.04)
    gaps = [mean("val_mse", n, 8) - mean("train_mse", n, 8) for n in (30, 100)]
    assert gaps[1] < gaps[0] / 2
    assert mean("val_mse", 100, 8) < mean("val_mse", 100, 1)  # the strong model wins with data


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_adamw_decays_exactly_train_weight_decay_and_never_an_mlp_bias(decay):
    """A zero gradient leaves only the decoupled decay: -lr * weight_decay * w on weights,
    nothing on biases, nothing at all at weight_decay = 0 (optax.adamw's default 1e-4 would)."""
    sc = scenario.from_dict({"name": "t", "kind": "training_curves",
                             "model": {"kind": "mlp", "hidden": [3]},
                             "train": {"optimizer": "adamw", "learning_rate": 0.1,
                                       "weight_decay": decay}})
    params = {"layers": [{"w": np.full((1, 3), 2.0), "b": np.full(3, 2.0)}]}
    opt = experiments.optimizer(sc)({})
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    np.testing.assert_allclose(updates["layers"][0]["w"], -0.1 * decay * 2.0)
    np.testing.assert_array_equal(updates["layers"][0]["b"], 0.0)


def test_history_rows_name_the_returned_epoch_and_the_validation_minimum():
    """training_curves' table called the last epoch (fit's returned parameters without a
    stopping rule) 'best_epoch' while its figure marked the validation minimum."""
    from overfit.train import FitResult, History

    val = np.array([[5.0, 4.0, 4.5, 6.0], [7.0, 8.0, 6.0, 9.0], [np.nan] * 4])
    history = History(val, val, val, val)
    m = np.zeros(3)
    result = FitResult({}, {}, history, np.array([7, 7, 7]), m, m, m, np.array([-1, -1, 0]),
                       m, "mse", 2)  # evaluations at epochs 2, 4, 6, 8
    rows = experiments._history_rows(result)
    first = {r["member"]: r for r in rows if r["epoch"] == 2}
    assert [first[i]["returned_epoch"] for i in range(3)] == [8, 8, 8]
    assert [first[i]["val_loss_min_epoch"] for i in range(3)] == [4, 6, -1]
    assert [first[i]["diverged_epoch"] for i in range(3)] == [-1, -1, 1]
    assert "best_epoch" not in first[0]


def test_float64_predictions_are_decomposed_in_float64():
    """A float64 solve's predictions were decomposed after a cast to float32: at an output
    of ~1000 (ulp 6e-5) a variance of 1e-8 came out as rounding noise."""
    import overfit as of

    one = of.regression(jax.random.key(0), target="line", n_train=5, n_val=0, n_test=30)
    data = jax.tree.map(lambda a: a[None], one)
    rng = np.random.default_rng(0)
    preds = 1000.0 + 1e-4 * rng.standard_normal((8 * 2, 30))
    terms = experiments._decompose(data, preds, 0.25, n_inits=2)
    nested = preds.reshape(8, 2, 30)
    per_set = nested.mean(axis=1)
    within = nested.var(axis=1, ddof=1).mean(axis=0)
    want = (per_set.var(axis=0, ddof=1) + within / 2).mean()  # between sets + init (m=2)
    assert float(terms["variance"].value) == pytest.approx(want, rel=1e-9)
    assert float(terms["noise"].value) == 0.25
    # in the table's order, not sorted (a tree map over the dict sorted the columns)
    assert list(terms) == ["expected test error", "bias2", "variance", "noise",
                           "variance from initialisation", "variance from training sets"]


def test_the_variance_split_of_a_binary_classifier_is_in_probability_units():
    """The split's two terms sit beside the 0-1 loss and, for K classes, are variances of
    a probability: a binary model's one logit goes through the sigmoid first (its
    log-odds varied by 9 here; a probability's variance is at most 1/4)."""
    import overfit as of

    one = of.classification(jax.random.key(0), shape="moons", n_train=10, n_val=0, n_test=40)
    data = jax.tree.map(lambda a: a[None], one)
    logits = 3 * jax.random.normal(jax.random.key(1), (10 * 2, 40))
    terms = experiments._decompose(data, np.asarray(logits), 0.0, n_inits=2)
    want = of.decompose.variance_split(jax.nn.sigmoid(logits).reshape(10, 2, 40))
    assert float(terms["variance from initialisation"].value) == pytest.approx(
        float(want.init.value), rel=1e-6)
    assert float(terms["variance from training sets"].value) == pytest.approx(
        float(want.sampling.value), rel=1e-6)
    assert float(want.total.value) < 0.25


def test_one_hot_square_loss_outputs_are_split_as_probabilities_without_cross_entropy():
    """A square loss on one-hot targets trains near-probabilities: their softmax was
    decomposed as if they were logits (cross-entropy ~0.31 for a perfect classifier)."""
    import overfit as of

    one = of.classification(jax.random.key(0), shape="moons", n_train=10, n_val=0, n_test=40)
    data = jax.tree.map(lambda a: a[None], one)
    p1 = jax.random.uniform(jax.random.key(1), (10 * 2, 40))
    outputs = np.asarray(jnp.stack([1 - p1, p1], axis=-1))
    terms = experiments._decompose(data, outputs, 0.0, n_inits=2, logits=False)
    assert not any(k.startswith(("cross", "CE")) for k in terms)
    want = of.decompose.variance_split(p1.reshape(10, 2, 40))
    assert float(terms["variance from initialisation"].value) == pytest.approx(
        float(want.init.value), rel=1e-6)


def test_the_cross_entropy_of_confident_binary_logits_is_exact():
    """1 - sigmoid(z) is 0 in float32 past z ~ 17: a confident wrong network was charged
    -log(1e-30) = 69 instead of its logit (the widest networks' CE came out 2-3.5 % high)."""
    import overfit as of

    one = of.classification(jax.random.key(0), shape="moons", n_train=10, n_val=0, n_test=40)
    data = jax.tree.map(lambda a: a[None], one)
    logits = 40.0 * jax.random.normal(jax.random.key(1), (6, 40))
    terms = experiments._decompose(data, np.asarray(logits), 0.0, n_inits=1)
    z, y = np.asarray(logits, np.float64), np.asarray(one.f_test)
    exact = np.mean(np.logaddexp(0.0, np.where(y == 1, -z, z)))  # -log p(y), in float64
    assert float(terms["cross-entropy"].value) == pytest.approx(exact, rel=1e-5)


MODELS = {"polynomial": ({"kind": "polynomial"}, [1, 5]),
          "random_features": ({"kind": "random_features"}, [2, 5]),
          "mlp": ({"kind": "mlp", "hidden": [8]}, [2, 4])}


def _learning(sizes, method="closed_form", model="polynomial", batch_size=0, **data):
    section, caps = MODELS[model]
    return scenario.from_dict({
        "name": "t", "kind": "learning_curves",
        "data": {"source": "regression", "target": "cos", "noise": 0.3, "n_val": 50,
                 "n_test": 20, **data},
        "model": section, "train": {"method": method, "epochs": 20, "eval_every": 10,
                                    "batch_size": batch_size},
        "sweep": {"capacity": caps, "n_train": sizes, "seeds": 4}})


@pytest.mark.parametrize("method,model,batch_size", [("closed_form", "random_features", 0),
                                                     ("gradient", "mlp", 0),
                                                     ("gradient", "mlp", 5)])
def test_learning_curves_equal_separate_runs_at_each_size(method, model, batch_size):
    """Sizes padded into one call (closed form, full batch) or sliced from one draw
    (minibatches) give the numbers of a separate run per size: the same nested training
    sets, the same initialisation at every size, and padded rows neither fit nor score."""
    sc = _learning([7, 25], method, model, batch_size)
    assert experiments.padded_sizes(sc, [7, 25]) == (batch_size == 0)
    rows, figures = experiments.learning_curves(sc)
    plt.close(figures["learning_curves"])
    for n in (7, 25):
        alone = dataclasses.replace(sc, data=dataclasses.replace(sc.data, n_train=n))
        want = experiments._sweep(alone, None, sc.sweep.capacity).values
        got = [r for r in rows if r["n_train"] == n]
        for key in ("train_mse", "val_mse", "test_risk", "n_params"):
            np.testing.assert_allclose([r[key] for r in got], want[key], rtol=1e-6, atol=1e-9)


def test_bias_variance_over_n_train_equals_separate_runs_at_each_size():
    """The decomposition at every size from one padded call equals a run per size (on a
    grid of inputs, drawn per size; nested draws: the learning-curve tests)."""
    x_dist = "grid"
    sc = scenario.from_dict({
        "name": "t", "kind": "bias_variance",
        "data": {"source": "regression", "target": "cos", "noise": 0.3, "n_test": 40,
                 "x_dist": x_dist},
        "model": {"kind": "polynomial", "max_degree": 3}, "train": {"method": "closed_form"},
        "sweep": {"n_train": [6, 15], "seeds": 30}})
    rows, figures = experiments.bias_variance(sc)
    plt.close(figures["bias_variance"])
    for row, n in zip(rows, (6, 15)):
        alone = dataclasses.replace(sc, data=dataclasses.replace(sc.data, n_train=n))
        _, (terms,), _, _ = experiments._decomposition_grid(alone, None)
        for name in ("expected test error", "bias2", "variance"):
            assert row[name.replace(" ", "_")] == pytest.approx(float(terms[name].value),
                                                                rel=1e-6), (n, name)
    assert rows[0]["variance"] > 2 * rows[1]["variance"]


def test_bias_variance_of_a_fixed_data_set_over_n_train_bootstraps_each_size():
    """Subsets of a finite pool stop varying as n nears its size (at n = N every subset is
    the pool: variance 0); bootstrap samples keep the sampling variance, as the
    decomposition's other axes do for a fixed data set."""
    sc = scenario.from_dict({
        "name": "t", "kind": "bias_variance",
        "data": {"source": "real", "name": "diabetes", "val_frac": 0.2, "test_frac": 0.2},
        "model": {"kind": "linear"}, "train": {"method": "closed_form"},
        "sweep": {"n_train": [40], "seeds": 40}})
    n_pool = experiments.draw(sc, jax.random.key(0), 1).n_train
    sc = dataclasses.replace(sc, sweep=dataclasses.replace(sc.sweep, n_train=[40, n_pool]))
    rows, figures = experiments.bias_variance(sc)
    plt.close(figures["bias_variance"])
    small, full = (r["variance"] for r in rows)
    # 11 parameters: the variance falls about like 1/n, not to 0
    assert 0.5 * 40 / n_pool < full / small < 2 * 40 / n_pool


def test_trained_double_descent_refuses_the_min_norm_only_curves():
    with pytest.raises(ValueError, match=r"draws sweep.noise as extra curves of min-norm"):
        _run("double_descent", model={"kind": "mlp"}, train={"method": "gradient"},
             sweep={"capacity": [2, 4], "noise": [0.1, 0.2]})


def test_closed_form_learning_curves_compile_once_whatever_the_number_of_sizes():
    _, figures = experiments.learning_curves(_learning([12, 40]))  # warm: keys, splits
    plt.close(figures["learning_curves"])
    with CompileClock() as clock:
        _, figures = experiments.learning_curves(_learning([8, 16, 24, 32, 39, 50]))
    plt.close(figures["learning_curves"])
    # draw, solve, score and the members' keys: one program each for any number of
    # sizes (a program per size compiled 3 per size)
    assert clock.compiles <= 4


def test_draw_sized_nests_generator_draws_and_pads_a_grid():
    sc = _learning([5, 9], x_dist="uniform")
    key = jax.random.key(3)
    sized = experiments.draw_sized(sc, key, 4, [5, 9])
    assert sized.data.x_train.shape == (4, 9, 1)
    np.testing.assert_array_equal(sized.weight, [[1] * 5 + [0] * 4, [1] * 9])
    for i, n in enumerate((5, 9)):  # what a separate draw of that size gives
        alone = experiments.draw(dataclasses.replace(sc, data=dataclasses.replace(
            sc.data, n_train=n)), key, 4)
        np.testing.assert_array_equal(sized.at(i).x_train, alone.x_train)
        np.testing.assert_array_equal(sized.at(i).y_val, alone.y_val)
    sc = _learning([5, 9], x_dist="grid")
    grid = experiments.draw_sized(sc, key, 4, [5, 9])
    assert grid.data.x_train.shape == (8, 9, 1) and grid.index.tolist() == [[0, 1, 2, 3],
                                                                           [4, 5, 6, 7]]
    np.testing.assert_allclose(grid.at(0).x_train[2, :, 0], np.linspace(0, 1, 5), atol=1e-7)
    np.testing.assert_array_equal(grid.data.x_train[0, 5:], 0.0)
    for i, n in enumerate((5, 9)):  # one program for every size, the draws of one per size
        alone = experiments.draw(dataclasses.replace(sc, data=dataclasses.replace(
            sc.data, n_train=n)), key, 4)
        for split in ("x_train", "y_train", "f_train", "x_test", "y_val"):
            # float32 round-off: XLA fuses the one program's arithmetic differently
            np.testing.assert_allclose(getattr(grid.at(i), split), getattr(alone, split),
                                       rtol=1e-6, atol=1e-7)


def test_a_fixed_data_set_learns_on_random_subsets_of_its_training_split():
    """A real data set has no generator: each repeat trains on a random subset of the
    training split (not the whole split at every size, which drew flat curves)."""
    sc = scenario.from_dict({
        "name": "t", "kind": "learning_curves",
        "data": {"source": "real", "name": "diabetes", "val_frac": 0.2, "test_frac": 0.2},
        "model": {"kind": "linear"}, "train": {"method": "closed_form"},
        "sweep": {"n_train": [12, 40, 240], "seeds": 30}})
    rows, figures = experiments.learning_curves(sc)
    plt.close(figures["learning_curves"])

    def mean(key, n):
        return np.mean([r[key] for r in rows if r["n_train"] == n])

    # 11 parameters: fits 12 points almost exactly, and generalises worse than on 240
    assert mean("train_mse", 12) < mean("train_mse", 40) < mean("train_mse", 240)
    assert mean("val_mse", 12) > mean("val_mse", 40) > mean("val_mse", 240)
    full = experiments.draw(sc, jax.random.key(0), 1)
    with pytest.raises(ValueError, match=rf"up to 9999 .* has {full.n_train} in its training"):
        experiments.learning_curves(dataclasses.replace(sc, sweep=dataclasses.replace(
            sc.sweep, n_train=[12, 9999])))


def test_trained_double_descent_interpolates_past_n_times_k_parameters():
    """Square loss on one-hot labels: a width whose parameters are below n x K cannot fit
    20 % flipped labels, one well past it fits every training label (Belkin et al. 2019)."""
    rows = _run("double_descent",
                data={"source": "real", "name": "digits", "label_noise": 0.2,
                      "val_frac": 0.25, "test_frac": 0.65},
                model={"kind": "mlp", "hidden": [64], "activation": "relu"},
                train={"loss": "mse_onehot", "epochs": 2000, "learning_rate": 0.003,
                       "eval_every": 500},
                sweep={"capacity": [8, 48], "seeds": 1})
    threshold = 180 * 10  # 10 % of digits' 1797 images, 10 classes
    narrow, wide = rows
    assert narrow["n_params"] == 64 * 8 + 8 + 8 * 10 + 10 < threshold / 2
    assert wide["n_params"] > 1.5 * threshold
    assert 1 - narrow["train_accuracy"] > 0.1
    assert wide["train_accuracy"] == 1.0
    # the clean-label score is computed against the labels before the noise
    assert wide["test_accuracy_clean"] > wide["test_accuracy"]


def test_diverged_members_are_flagged_in_the_table_and_left_out_of_the_plot():
    """A huge L2 with SGD explodes: those rows carry diverged_epoch and NaN metrics
    (never a silent number), and the figure says how many runs were left out."""
    sc = scenario.from_dict({
        "name": "t", "kind": "validation_curve",
        "data": {"source": "regression", "target": "sin", "n_train": 20, "n_test": 20},
        "model": {"kind": "mlp", "hidden": [8]},
        "train": {"optimizer": "sgd", "learning_rate": 0.1, "epochs": 20, "eval_every": 5},
        "sweep": {"l2": [0.0, 1e4], "seeds": 2}})
    rows, figures = experiments.validation_curve(sc)
    texts = [t.get_text() for ax in figures["validation_curve"].axes for t in ax.texts]
    plt.close(figures["validation_curve"])
    calm, wild = [r for r in rows if r["l2"] == 0.0], [r for r in rows if r["l2"] == 1e4]
    assert all(r["diverged_epoch"] == -1 and np.isfinite(r["val_mse"]) for r in calm)
    assert all(r["diverged_epoch"] >= 0 and np.isnan(r["val_mse"]) for r in wild)
    assert "2 of 4 runs diverged (NaN/inf loss): left out" in texts


def test_double_descent_noise_levels_match_the_exact_risk_at_each_level():
    """Isotropic min-norm regression through the experiment, two noise levels at
    p/n = 0.5 and 2: the mean risk per level matches GROUND_TRUTH §2's exact formula
    (within 4 standard errors) and the noisier level is worse on both sides."""
    rows = _run("double_descent",
                data={"source": "linear", "p": 100, "n_train": 50, "n_val": 0, "n_test": 10},
                model={"kind": "linear"}, train={"method": "closed_form"},
                sweep={"capacity": [25, 100], "noise": [0.5, 1.0], "seeds": 400})
    mean = {}
    for noise in (0.5, 1.0):
        for p in (25, 100):
            risk = np.array([r["test_risk"] for r in rows
                             if r["noise"] == noise and r["n_inputs"] == p])
            se = risk.std(ddof=1) / np.sqrt(len(risk))
            want = theory.min_norm_risk(p, 50, 1.0, noise**2)
            assert abs(risk.mean() - want) < 4 * se + 1e-3, (noise, p, risk.mean(), want)
            mean[noise, p] = risk.mean()
    assert mean[1.0, 25] > mean[0.5, 25] and mean[1.0, 100] > mean[0.5, 100]


def test_sample_wise_double_descent_matches_the_exact_risk_on_both_sides():
    """p = 20 inputs, n = 10 and 40 training points in one padded call: the mean risk is
    GROUND_TRUTH §2's exact formula at each n, the n = 10 fit interpolates its own 10
    points, and the n = 40 fit's training error is the least-squares s2 (1 - p/n)."""
    rows = _run("double_descent",
                data={"source": "linear", "p": 20, "noise": 0.5, "n_val": 0, "n_test": 0},
                model={"kind": "linear"}, train={"method": "closed_form"},
                sweep={"n_train": [10, 40], "seeds": 400})
    for n in (10, 40):
        risk = np.array([r["test_risk"] for r in rows if r["n_train"] == n])
        want = theory.min_norm_risk(20, n, 1.0, 0.25)
        assert abs(risk.mean() - want) < 4 * risk.std(ddof=1) / np.sqrt(len(risk)), (n, want)
    train = {n: np.mean([r["train_mse"] for r in rows if r["n_train"] == n]) for n in (10, 40)}
    assert train[10] < 1e-20
    assert train[40] == pytest.approx(0.25 * (1 - 20 / 40), rel=0.05)


@pytest.mark.parametrize("kind", ["capacity_curve", "double_descent"])
def test_a_closed_form_capacity_past_the_model_is_refused_before_solving(kind):
    """Inside a batched solve the capacity is traced, so init's own range check was
    skipped: n_inputs 10 of a 5-input model ran as 5 and was reported as 10."""
    sc = scenario.from_dict({
        "name": "t", "kind": kind,
        "data": {"source": "linear", "p": 5, "n_train": 20, "n_val": 5, "n_test": 5},
        "model": {"kind": "linear"}, "train": {"method": "closed_form"},
        "sweep": {"capacity": [2, 10], "seeds": 2}})
    with pytest.raises(ValueError, match=r"n_inputs=10 is out of range; allowed values lie "
                                         r"in \[1, 5\]"):
        experiments.EXPERIMENTS[kind](sc)


def test_sample_wise_threshold_is_the_models_parameter_count_not_data_p():
    """30 random features on 1-D data: the marker sits at n = 30 (it sat at data.p = 10,
    a field this source does not read), and the table says so."""
    sc = scenario.from_dict({
        "name": "t", "kind": "double_descent",
        "data": {"source": "regression", "target": "sin", "n_val": 0, "n_test": 20},
        "model": {"kind": "random_features", "max_features": 30},
        "train": {"method": "closed_form"}, "sweep": {"n_train": [10, 40], "seeds": 2}})
    rows, figures = experiments.double_descent(sc)
    (marker,) = [line for line in figures["double_descent"].axes[0].get_lines()
                 if line.get_label() == "interpolation threshold"]
    plt.close(figures["double_descent"])
    assert set(marker.get_xdata()) == {30.0}
    assert {r["n_params"] for r in rows} == {30}


def test_a_capacity_sweep_through_the_threshold_marks_it_on_the_decomposition():
    """bias_variance_width's figure showed the variance peak past the threshold its text
    describes, with no threshold drawn: the capacity where parameters = n_train x outputs
    (10 random features for 10 points, between the swept 8 and 12) is marked."""
    base = {"name": "t", "kind": "bias_variance",
            "data": {"source": "regression", "target": "sin", "n_train": 10, "n_val": 0,
                     "n_test": 20},
            "model": {"kind": "random_features", "max_features": 20},
            "train": {"method": "closed_form"}, "sweep": {"seeds": 3}}

    def markers(capacity):
        sc = scenario.from_dict({**base, "sweep": {**base["sweep"], "capacity": capacity}})
        rows, figures = experiments.bias_variance(sc)
        fig = figures["bias_variance"]
        found = [set(line.get_xdata()) for ax in fig.axes for line in ax.get_lines()
                 if line.get_label().startswith("interpolation threshold")]
        plt.close(fig)
        return rows, found

    rows, found = markers([5, 8, 12, 20])
    assert [r["n_params"] for r in rows] == [5, 8, 12, 20]
    assert found == [{10.0}]
    assert markers([2, 4, 8])[1] == []  # never reaches it: nothing to mark


def test_train_precision_switches_solves_and_training_between_float32_and_float64():
    """auto: float64 solves, float32 training; either can be forced, and a well-conditioned
    cubic fit gives the same errors in both precisions to float32 round-off."""
    import jax

    base = {"name": "t", "kind": "capacity_curve", "data": {"n_train": 20, "n_test": 50},
            "model": {"kind": "polynomial", "max_degree": 3}, "sweep": {"seeds": 2}}
    risks = {}
    for method, precision, want in [("closed_form", "auto", np.float64),
                                    ("closed_form", "float32", np.float32),
                                    ("gradient", "auto", np.float32),
                                    ("gradient", "float64", np.float64)]:
        sc = scenario.from_dict({**base, "train": {"method": method, "precision": precision,
                                                   "epochs": 5}})
        sweep = experiments._sweep(sc, None, [1, 3])
        assert {np.asarray(a).dtype for a in jax.tree.leaves(sweep.result.params)} == {
            np.dtype(want)}, (method, precision)
        risks[method, precision] = sweep.values["test_risk"]
    np.testing.assert_allclose(risks["closed_form", "float32"], risks["closed_form", "auto"],
                               rtol=1e-4)
    np.testing.assert_allclose(risks["gradient", "float64"], risks["gradient", "auto"],
                               rtol=1e-3)
    with pytest.raises(ValueError, match="train.precision"):
        scenario.from_dict({**base, "train": {"precision": "float16"}})


def test_repeat_s_of_every_grid_point_starts_from_the_same_initialisation():
    """Two grid points with one L2 value are the same experiment: repeat s trains on the
    same set from the same initial weights, so its numbers match across the points
    (and differ between repeats), as a paired comparison across knob values needs."""
    rows = _run("validation_curve",
                data={"source": "regression", "target": "sin", "n_train": 12, "noise": 0.3},
                model={"kind": "mlp", "hidden": [8]},
                train={"epochs": 30, "learning_rate": 0.01, "eval_every": 10},
                sweep={"l2": [1e-3, 1e-3], "seeds": 3})
    by_point = np.array([r["val_mse"] for r in rows]).reshape(2, 3)
    np.testing.assert_array_equal(by_point[0], by_point[1])
    assert len(set(by_point[0])) == 3


def test_trained_double_descent_trains_each_group_of_widths_as_its_own_call(monkeypatch):
    """Widths 2..16 train as groups [2, 3], [8, 16] (each model sized to its group's
    widest, not to 16): the table equals separate runs of each group, rows in the
    order asked for."""
    widest = []
    train_grid = experiments.train_grid

    def recording(sc, model, *args, **kwargs):
        widest.append(int(model.init(jax.random.key(0))[1]["width"]))
        return train_grid(sc, model, *args, **kwargs)

    monkeypatch.setattr(experiments, "train_grid", recording)
    sections = dict(data={"source": "regression", "target": "sin", "n_train": 12,
                          "n_test": 50, "noise": 0.2},
                    model={"kind": "mlp", "hidden": [16]},
                    train={"epochs": 60, "eval_every": 20})

    def run(caps):
        return _run("double_descent", **sections, sweep={"capacity": caps, "seeds": 2})

    both = run([16, 2, 8, 3])
    assert widest == [3, 16]
    parts = {r["width"]: r for caps in ([2, 3], [8, 16]) for r in run(caps)
             if r["seed"] == 1}
    assert [r["width"] for r in both if r["seed"] == 1] == [16, 2, 8, 3]
    for r in both:
        if r["seed"] == 1:
            assert r == pytest.approx(parts[r["width"]], rel=1e-6, nan_ok=True)


def test_a_bias_variance_point_with_a_diverged_member_reports_nan_terms():
    """A diverged member is frozen at its last finite parameters; its predictions would
    enter bias^2 and variance unnoticed: that grid point's terms are NaN instead."""
    sections = dict(data={"source": "regression", "target": "sin", "n_train": 20,
                          "n_test": 50, "noise": 0.2},
                    model={"kind": "mlp", "hidden": [8]},
                    sweep={"capacity": [4], "seeds": 3})
    wild = _run("bias_variance", **sections,
                train={"optimizer": "sgd", "learning_rate": 1e3, "epochs": 20, "eval_every": 10})
    calm = _run("bias_variance", **sections, train={"epochs": 20, "eval_every": 10})
    terms = ("expected_test_error", "bias2", "variance", "noise")
    assert all(np.isnan(wild[0][k]) for k in terms)
    assert all(np.isfinite(calm[0][k]) for k in terms)


def test_bias_variance_per_size_calls_give_each_training_set_its_own_inits(monkeypatch):
    """With minibatches every n_train is its own call; its members are (set, init)
    pairs whose init keys must be those of the padded one-call path (set s, init i:
    key s * inits + i), not shared between sets."""
    seen = []

    class RecordedError(Exception):
        pass

    def recording(*args, **kwargs):  # the keys are all this test needs: no training
        seen.append(np.asarray(kwargs["key_index"]).tolist())
        raise RecordedError

    monkeypatch.setattr(experiments, "train_grid", recording)
    base = dict(data={"source": "regression", "target": "sin", "n_test": 20},
                model={"kind": "mlp", "hidden": [4]},
                sweep={"n_train": [10, 20], "seeds": 3, "inits": 2})
    for batch_size in (5, 0):  # 0: full batch, every size padded into one call
        with pytest.raises(RecordedError):
            _run("bias_variance", **base,
                 train={"epochs": 2, "eval_every": 1, "batch_size": batch_size})
    per_size, padded = seen
    assert per_size == list(range(6))
    assert padded == list(range(6)) * 2


def test_capacity_curve_without_a_sweep_trains_the_model_as_configured():
    rows = _run("capacity_curve", data={"source": "regression", "n_train": 20, "n_test": 20},
                model={"kind": "random_features", "max_features": 40},
                train={"method": "closed_form"}, sweep={"seeds": 2})
    assert [r["n_features"] for r in rows] == [40, 40]


def test_min_norm_double_descent_on_a_fixed_data_set_marks_its_own_training_rows():
    """A real data set is one fixed set, no draws to index; the threshold is its own
    training split (diabetes: 442 x 0.6 rows), not data.n_train's default."""
    sc = scenario.from_dict({
        "name": "t", "kind": "double_descent",
        "data": {"source": "real", "name": "diabetes"},
        "model": {"kind": "random_features"}, "train": {"method": "closed_form"},
        "sweep": {"capacity": [10, 265, 600], "seeds": 2}})
    rows, figures = experiments.double_descent(sc)
    n = experiments.draw(sc, jax.random.key(0), 1).x_train.shape[-2]
    ax = figures["double_descent"].axes[0]
    plt.close(figures["double_descent"])
    assert n != sc.data.n_train
    xs = next(line.get_xdata() for line in ax.get_lines() if len(line.get_xdata()) == 3)
    n_params = sorted({r["n_params"] for r in rows})
    np.testing.assert_allclose(xs, np.asarray(n_params) / n)
    assert all(np.isfinite(r["test_risk"]) for r in rows)


def test_the_dropout_gap_is_how_much_better_the_training_score_is():
    """Accuracy: train - validation; an error such as the MSE: validation - train (the
    regression gap was drawn negative)."""
    rows = _run("dropout", data={"source": "regression", "target": "sin", "n_train": 15,
                                 "n_test": 20, "noise": 0.3},
                model={"kind": "mlp", "hidden": [32]},
                train={"epochs": 200, "eval_every": 100}, sweep={"drop_rate": [0.0], "seeds": 2})
    for r in rows:
        assert r["gap"] == pytest.approx(r["val_mse"] - r["train_mse"])
        assert r["gap"] > 0  # 32 units on 15 noisy points: the training error is lower


def test_a_square_loss_classifier_with_several_inits_splits_its_variance():
    """Two-class outputs of a square loss (P(class 1), one per point) with several inits
    per training set: the variance split indexed their last point, not their last class,
    and failed."""
    from overfit import data as datasets

    d = datasets.shared_test(jax.vmap(lambda k: datasets.classification(
        k, shape="moons", n_train=10, n_test=7))(jax.random.split(jax.random.key(0), 2)))
    preds = np.random.default_rng(0).uniform(0, 1, (6, 7)).astype(np.float32)  # 3 sets x 2
    terms = experiments._decompose(d, preds, 0.0, 2, logits=False)
    sets = preds.reshape(3, 2, 7)
    init = np.var(sets, axis=1, ddof=1).mean(axis=0)
    sampling = np.var(sets.mean(axis=1), axis=0, ddof=1) - init / 2
    np.testing.assert_allclose(terms["variance from initialisation"].value, init.mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(terms["variance from training sets"].value, sampling.mean(),
                               rtol=1e-4, atol=1e-7)
