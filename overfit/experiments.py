"""The experiments a scenario's ``kind`` names: each returns (table rows, figures).

An experiment is a thin client of the public API: draw data, build the model,
train the whole grid in one compiled call, tabulate, and hand the numbers to a
Display. Rows are tidy: the swept parameters first, then the metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from overfit import data as datasets
from overfit import models
from overfit.display import CurveDisplay, FitDisplay
from overfit.scenario import Scenario
from overfit.solve import fit_linear
from overfit.sweep import grid, take
from overfit.train import fit

Rows = list[dict[str, Any]]
Figures = dict[str, plt.Figure]


def draw(scenario: Scenario, key: jax.Array, n_draws: int) -> datasets.Dataset:
    """``n_draws`` independent data sets (leading axis) of a generating source.

    A fixed source (``preset``, ``real``) is loaded once and shared: its
    repeats differ in initialisation only.
    """
    d = scenario.data
    if d.source == "preset":
        return datasets.make_classification_preset(seed=scenario.seed, flip_y=d.flip_y)
    if d.source == "real":
        return datasets.real(d.name, seed=scenario.seed, label_noise=d.label_noise)
    if d.source == "regression":
        sample = lambda k: datasets.regression(  # noqa: E731
            k, target=d.target, n_train=d.n_train, n_val=d.n_val, n_test=d.n_test,
            noise=d.noise, x_dist=d.x_dist, domain=tuple(d.domain))
    else:
        sample = lambda k: datasets.classification(  # noqa: E731
            k, shape=d.shape, n_train=d.n_train, n_val=d.n_val, n_test=d.n_test,
            noise=d.noise, flip=d.flip)
    return jax.vmap(sample)(jax.random.split(key, n_draws))


def build_model(scenario: Scenario, data: datasets.Dataset) -> models.Model:
    """The scenario's model, sized for ``data`` (inputs, classes) and its largest capacity."""
    m, n_in = scenario.model, data.n_features
    n_out = 1 if data.n_classes <= 2 else data.n_classes
    caps = scenario.sweep.capacity
    if m.kind == "polynomial":
        if n_in != 1:
            raise ValueError(f"model.kind='polynomial' needs 1-D inputs; the data has {n_in}.")
        domain = tuple(scenario.data.domain)
        return models.polynomial(max(caps, default=m.max_degree), domain=domain)
    if m.kind == "random_features":
        return models.random_features(max(caps, default=m.max_features), n_in=n_in, kind=m.features)
    if m.kind == "linear":
        return models.linear(n_in, n_out=n_out)
    hidden = [max(caps)] * len(m.hidden) if caps else m.hidden
    return models.mlp(n_in, hidden, n_out=n_out, activation=m.activation, drop_rate=m.drop_rate)


def optimizer(scenario: Scenario) -> optax.GradientTransformation:
    """The optax optimizer the training section names."""
    t = scenario.train
    return {"adam": optax.adam, "sgd": optax.sgd, "adamw": optax.adamw}[t.optimizer](
        t.learning_rate)


def train_grid(scenario: Scenario, model: models.Model, data: datasets.Dataset,
               hparams: dict[str, np.ndarray], key: jax.Array):
    """Train every (grid point x repeat) member in one call; leading axis M = G * S.

    ``hparams`` holds flat ``(M,)`` values; repeat ``s`` of every grid point uses
    data draw ``s`` (when the data has a draws axis) so grid points are compared
    on the same data.
    """
    t, n_seeds = scenario.train, scenario.sweep.seeds
    n_members = len(next(iter(hparams.values()))) if hparams else n_seeds
    draw_index = np.arange(n_members) % n_seeds
    member_data = take(data, draw_index) if data.x_train.ndim == 3 else data
    keys = jax.random.split(key, n_members)
    if t.method == "closed_form":
        return _solve_grid(model, member_data, hparams, keys, t.ridge)
    return fit(model, member_data, key=keys, optimizer=optimizer(scenario), epochs=t.epochs,
               batch_size=t.batch_size or None, hparams=hparams, eval_every=t.eval_every)


def _errors(model, params, state, data) -> dict[str, jax.Array]:
    def mse(x, y):
        return jnp.mean((model.apply(params, state, x) - y) ** 2) if y.shape[0] else jnp.nan

    return {"train_mse": mse(data.x_train, data.y_train), "val_mse": mse(data.x_val, data.y_val),
            "test_mse": mse(data.x_test, data.y_test), "test_risk": mse(data.x_test, data.f_test)}


def _solve_grid(model, data, hparams, keys, ridge) -> dict[str, jax.Array]:
    """Closed-form fits of every member, as one batched SVD in float64."""
    data_axis = 0 if data.x_train.ndim == 3 else None

    def one(key, d, hp):
        params, state = model.init(key, **hp)
        params = fit_linear(model, state, d.x_train, d.y_train, ridge=ridge)
        return {"n_params": model.n_params(state), **_errors(model, params, state, d)}

    with jax.enable_x64(True):
        data64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype == jnp.float32
                              else a, data)
        return jax.jit(jax.vmap(one, in_axes=(0, data_axis, 0)))(keys, data64, hparams)


def five_points(scenario: Scenario) -> tuple[Rows, Figures]:
    """The lesson's figure: a 2-parameter line vs a 7-parameter polynomial on 5 points."""
    key = jax.random.key(scenario.seed)
    data = jax.tree.map(lambda a: a[0], draw(scenario, key, 1))
    domain = tuple(scenario.data.domain)
    grid_x = jnp.linspace(*domain, 400)[:, None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    rows = []
    with jax.enable_x64(True):
        for ax, degree in zip(axes, (1, 6)):
            model = models.polynomial(degree, domain=domain)
            params, state = model.init(key)
            params = fit_linear(model, state, data.x_train.astype(jnp.float64), data.y_train)
            err = _errors(model, params, state, data)
            n_params = int(model.n_params(state))
            rows.append({"model": f"degree {degree}", "n_params": n_params,
                         **{k: float(v) for k, v in err.items()}})
            FitDisplay(data.x_train, data.y_train, data.x_val, data.y_val, grid_x,
                       {f"{n_params}-parameter fit": model.apply(params, state, grid_x)},
                       title=f"{n_params} parameters: train {err['train_mse']:.2g}, "
                             f"validation {err['val_mse']:.2g}").plot(ax=ax)
    fig.suptitle(scenario.title or "Same five points, two models")
    return rows, {"five_points": fig}


def capacity_curve(scenario: Scenario) -> tuple[Rows, Figures]:
    """Train / validation / test error vs capacity over many data draws: the U-curve."""
    key_data, key_model = jax.random.split(jax.random.key(scenario.seed))
    n_seeds = scenario.sweep.seeds
    data = draw(scenario, key_data, n_seeds)
    model = build_model(scenario, data)
    caps = scenario.sweep.capacity or [scenario.model.max_degree]
    flat, shape = grid(capacity=caps, seed=np.arange(n_seeds))
    result = train_grid(scenario, model, data, {model.capacity: flat["capacity"]}, key_model)
    if scenario.train.method == "gradient":
        result = _gradient_errors(model, result, take(data, flat["seed"]))
    values = {k: np.asarray(v).reshape(shape) for k, v in result.items()}
    n_params = values.pop("n_params")
    rows = [{model.capacity: c, "seed": s, "n_params": int(n_params[i, s]),
             **{k: float(v[i, s]) for k, v in values.items()}}
            for i, c in enumerate(caps) for s in range(n_seeds)]
    display = CurveDisplay(
        caps, {"train": values["train_mse"], "validation": values["val_mse"],
               "test (noise-free f)": values["test_risk"]},
        xlabel=model.capacity, ylabel="mean squared error (median, quartiles)",
        best="validation", center="median", title=scenario.title or "Error vs capacity")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    display.plot(ax=ax, logy=True, logx=False)
    return rows, {"capacity_curve": fig}


def _gradient_errors(model, result, data) -> dict[str, jax.Array]:
    errs = jax.vmap(lambda p, s, d: _errors(model, p, s, d))(result.params, result.state, data)
    return {"n_params": jax.vmap(model.n_params)(result.state), **errs}


def training_curves(scenario: Scenario) -> tuple[Rows, Figures]:
    """Train vs validation loss and metric per epoch, mean +/- band over repeats."""
    key_data, key_model = jax.random.split(jax.random.key(scenario.seed))
    data = draw(scenario, key_data, scenario.sweep.seeds)
    model = build_model(scenario, data)
    result = train_grid(scenario, model, data, {}, key_model)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    loss = CurveDisplay.from_fit(result, quantity="loss", title="loss").plot(ax=axes[0])
    stop_here = {"validation-loss minimum": loss.best_x()}
    CurveDisplay.from_fit(result, quantity="metric", title=result.metric, best=None,
                          markers=stop_here).plot(ax=axes[1])
    fig.suptitle(scenario.title or "Training curves")
    metric = result.metric
    columns = {"train_loss": result.history.train_loss, "val_loss": result.history.val_loss,
               f"train_{metric}": result.history.train_metric,
               f"val_{metric}": result.history.val_metric}
    columns = {k: np.asarray(v) for k, v in columns.items()}
    best, test = np.asarray(result.best_epoch) + 1, np.asarray(result.test_metric)
    rows = [{"seed": s, "epoch": int(e), **{k: float(v[s, i]) for k, v in columns.items()},
             "best_epoch": int(best[s]), f"test_{metric}": float(test[s])}
            for s in range(len(best)) for i, e in enumerate(np.asarray(result.epochs))]
    return rows, {"training_curves": fig}


EXPERIMENTS: dict[str, Callable[[Scenario], tuple[Rows, Figures]]] = {
    "five_points": five_points,
    "capacity_curve": capacity_curve,
    "training_curves": training_curves,
}
