"""The experiments a scenario's ``kind`` names: each returns (table rows, figures).

An experiment is a thin client of the public API: draw data, build the model,
train the whole grid in one compiled call, tabulate, and hand the numbers to a
Display. Rows are tidy: the swept parameters first, then the metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from overfit import data as datasets
from overfit import models
from overfit import regularize as reg
from overfit.display import (
    ComparisonDisplay,
    CurveDisplay,
    FitDisplay,
    HistogramDisplay,
    panels,
)
from overfit.early_stopping import EarlyStopping, patience, prechelt
from overfit.scenario import Scenario
from overfit.solve import fit_linear
from overfit.sweep import grid, take
from overfit.train import FitResult, default_loss, evaluate, fit

Rows = list[dict[str, Any]]
Figures = dict[str, Any]  # name -> matplotlib Figure


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


def optimizer(scenario: Scenario) -> Callable[[dict[str, Any]], optax.GradientTransformation]:
    """The training section's optimizer with its regularizers, as a function of hparams.

    A swept ``l2`` (in ``hparams``) overrides ``train.l2``; biases are never penalised.
    """
    t = scenario.train
    base = {"adam": optax.adam, "sgd": optax.sgd, "adamw": optax.adamw}[t.optimizer]

    def make(hparams: dict[str, Any]) -> optax.GradientTransformation:
        lr = t.learning_rate
        parts = [reg.l2(hparams.get("l2", t.l2), mask=reg.exclude_biases), base(lr)]
        if t.l1:
            parts.append(reg.l1_prox(t.l1, lr, mask=reg.exclude_biases))
        if t.weight_decay:
            parts.append(reg.weight_decay(t.weight_decay, lr, mask=reg.exclude_biases))
        return optax.chain(*parts)

    return make


def stopper(scenario: Scenario) -> EarlyStopping | None:
    """The early-stopping section as a rule, or None for ``rule = "none"``."""
    e = scenario.early_stopping
    if e.rule == "none":
        return None
    if e.rule == "patience":
        return patience(monitor=e.monitor, min_delta=e.min_delta, patience=e.patience,
                        start_from_epoch=e.start_from_epoch, restore_best=e.restore_best)
    alpha = int(e.alpha) if e.rule == "UP" else e.alpha
    return prechelt(e.rule, alpha, monitor=e.monitor, strip=e.strip,
                    restore_best=e.restore_best)


def train_grid(scenario: Scenario, model: models.Model, data: datasets.Dataset,
               hparams: dict[str, np.ndarray], key: jax.Array, *, stop: bool = True):
    """Train every (grid point x repeat) member in one call; leading axis M = G * S.

    ``hparams`` holds flat ``(M,)`` values (empty: S repeats); repeat ``s`` of
    every grid point uses data draw ``s`` (when the data has a draws axis), so
    grid points are compared on the same data. ``stop=False`` ignores the
    early-stopping section (to compare with and without).
    """
    t, n_seeds = scenario.train, scenario.sweep.seeds
    n_members = len(next(iter(hparams.values()))) if hparams else n_seeds
    draw_index = np.arange(n_members) % n_seeds
    member_data = take(data, draw_index) if data.x_train.ndim == 3 else data
    keys = jax.random.split(key, n_members)
    if t.method == "closed_form":
        return _solve_grid(model, member_data, hparams, keys, t.l2)
    hparams = dict(hparams)
    if t.input_noise:
        hparams["input_noise"] = t.input_noise
    return fit(model, member_data, key=keys, optimizer=optimizer(scenario), epochs=t.epochs,
               batch_size=t.batch_size or None, hparams=hparams, eval_every=t.eval_every,
               early_stopping=stopper(scenario) if stop else None)


def scores(model: models.Model, params, state, data: datasets.Dataset) -> dict[str, jax.Array]:
    """Metrics of ONE model on every split: MSE (and the risk against the truth f)
    for regression, accuracy for classification."""
    loss = default_loss(model, data)
    name = "accuracy" if data.task == "classification" else "mse"
    out = {}
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        out[f"{split}_{name}"] = evaluate(model, params, state, x, y, loss=loss, task=data.task)[1]
    if data.task == "regression":
        risk = evaluate(model, params, state, data.x_test, data.f_test, task=data.task)
        out["test_risk"] = risk[1]
    return out


def _solve_grid(model, data, hparams, keys, ridge) -> dict[str, jax.Array]:
    """Closed-form fits of every member, as one batched SVD in float64."""
    data_axis = 0 if data.x_train.ndim == 3 else None

    def one(key, d, hp):
        params, state = model.init(key, **{k: v for k, v in hp.items() if k in model.hparams})
        params = fit_linear(model, state, d.x_train, d.y_train, ridge=hp.get("l2", ridge))
        return {"n_params": model.n_params(state), **scores(model, params, state, d)}

    with jax.enable_x64(True):
        data64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype == jnp.float32
                              else a, data)
        return jax.jit(jax.vmap(one, in_axes=(0, data_axis, 0)))(keys, data64, hparams)


def grid_scores(scenario: Scenario, model: models.Model, result, data) -> dict[str, np.ndarray]:
    """Per-member metrics ``(M,)`` of a ``train_grid`` result (closed form or trained)."""
    if isinstance(result, FitResult):
        n = result.best_epoch.shape[0]
        member_data = take(data, np.arange(n) % scenario.sweep.seeds) if data.x_train.ndim == 3 \
            else data
        axis = 0 if member_data.x_train.ndim == 3 else None
        result = {"n_params": jax.vmap(model.n_params)(result.state),
                  **jax.vmap(lambda p, s, d: scores(model, p, s, d), in_axes=(0, 0, axis))(
                      result.params, result.state, member_data)}
    return {k: np.asarray(v) for k, v in result.items()}


def _rows(axes: dict[str, Any], values: dict[str, np.ndarray]) -> Rows:
    """Tidy rows: the grid's coordinates first, then every metric."""
    flat, _ = grid(**axes)
    ints = {"n_params", "best_epoch", "stop_epoch"}
    return [{**{k: v[i].item() for k, v in flat.items()},
             **{k: int(v[i]) if k in ints else float(v[i]) for k, v in values.items()}}
            for i in range(len(next(iter(flat.values()))))]


def _keys(scenario: Scenario) -> tuple[jax.Array, jax.Array]:
    return tuple(jax.random.split(jax.random.key(scenario.seed)))


def five_points(scenario: Scenario) -> tuple[Rows, Figures]:
    """The lesson's figure: a 2-parameter line vs a 7-parameter polynomial on 5 points."""
    key = jax.random.key(scenario.seed)
    data = jax.tree.map(lambda a: a[0], draw(scenario, key, 1))
    domain = tuple(scenario.data.domain)
    grid_x = jnp.linspace(*domain, 400)[:, None]
    fig, axes = panels(2, sharey=True, title=scenario.title or "Same five points, two models")
    rows = []
    with jax.enable_x64(True):
        for ax, degree in zip(axes, (1, 6)):
            model = models.polynomial(degree, domain=domain)
            params, state = model.init(key)
            params = fit_linear(model, state, data.x_train.astype(jnp.float64), data.y_train)
            err = scores(model, params, state, data)
            n_params = int(model.n_params(state))
            rows.append({"model": f"degree {degree}", "n_params": n_params,
                         **{k: float(v) for k, v in err.items()}})
            FitDisplay(data.x_train, data.y_train, data.x_val, data.y_val, grid_x,
                       {f"{n_params}-parameter fit": model.apply(params, state, grid_x)},
                       title=f"{n_params} parameters: train {err['train_mse']:.2g}, "
                             f"validation {err['val_mse']:.2g}").plot(ax=ax)
    return rows, {"five_points": fig}


def capacity_curve(scenario: Scenario) -> tuple[Rows, Figures]:
    """Train / validation / test error vs capacity over many data draws: the U-curve."""
    key_data, key_model = _keys(scenario)
    n_seeds = scenario.sweep.seeds
    data = draw(scenario, key_data, n_seeds)
    model = build_model(scenario, data)
    caps = scenario.sweep.capacity or [scenario.model.max_degree]
    flat, shape = grid(capacity=caps, seed=range(n_seeds))
    result = train_grid(scenario, model, data, {model.capacity: flat["capacity"]}, key_model)
    values = grid_scores(scenario, model, result, data)
    rows = _rows({model.capacity: caps, "seed": range(n_seeds)}, values)
    v = {k: a.reshape(shape) for k, a in values.items()}
    display = CurveDisplay(
        caps, {"train": v["train_mse"], "validation": v["val_mse"],
               "test (noise-free f)": v["test_risk"]},
        xlabel=model.capacity, ylabel="mean squared error (median, quartiles)",
        best="validation", center="median", title=scenario.title or "Error vs capacity")
    fig, (ax,) = panels(1, size=(6, 4.2))
    display.plot(ax=ax, logy=True, logx=False)
    return rows, {"capacity_curve": fig}


def _history_rows(result: FitResult, **extra: np.ndarray) -> Rows:
    """One row per (member, evaluation) of a fit's history."""
    metric, h = result.metric, result.history
    columns = {"train_loss": h.train_loss, "val_loss": h.val_loss,
               f"train_{metric}": h.train_metric, f"val_{metric}": h.val_metric}
    columns = {k: np.asarray(v) for k, v in columns.items()}
    best = np.asarray(result.best_epoch) + 1
    return [{**{k: v[m].item() for k, v in extra.items()}, "member": m, "epoch": int(e),
             **{k: float(v[m, i]) for k, v in columns.items()}, "best_epoch": int(best[m])}
            for m in range(len(best)) for i, e in enumerate(np.asarray(result.epochs))]


def training_curves(scenario: Scenario) -> tuple[Rows, Figures]:
    """Train vs validation loss and metric per epoch, mean +/- band over repeats."""
    key_data, key_model = _keys(scenario)
    data = draw(scenario, key_data, scenario.sweep.seeds)
    model = build_model(scenario, data)
    result = train_grid(scenario, model, data, {}, key_model)
    fig, axes = panels(2, size=(5.5, 4), title=scenario.title or "Training curves")
    loss = CurveDisplay.from_fit(result, quantity="loss", title="loss").plot(ax=axes[0])
    stop_here = {"validation-loss minimum": loss.best_x()}
    CurveDisplay.from_fit(result, quantity="metric", title=result.metric, best=None,
                          markers=stop_here).plot(ax=axes[1])
    return _history_rows(result), {"training_curves": fig}


def early_stopping(scenario: Scenario) -> tuple[Rows, Figures]:
    """Stop each member at its own validation minimum inside the compiled loop."""
    if scenario.early_stopping.rule == "none":
        raise ValueError("kind='early_stopping' needs early_stopping.rule "
                         "(patience, GL, PQ or UP), not 'none'.")
    key_data, key_model = _keys(scenario)
    data = draw(scenario, key_data, scenario.sweep.seeds)
    model = build_model(scenario, data)
    full = train_grid(scenario, model, data, {}, key_model, stop=False)
    early = train_grid(scenario, model, data, {}, key_model)  # same keys: same runs until stop
    best, stop = np.asarray(early.best_epoch) + 1, np.asarray(early.stop_epoch) + 1
    fig, axes = panels(3, size=(5, 4), title=scenario.title or "Early stopping")
    CurveDisplay.from_fit(full, quantity="loss", title="full budget, every seed",
                          markers={"stop epochs (per seed)": np.unique(stop)}).plot(ax=axes[0])
    HistogramDisplay({"best epoch (restored)": best, "stop epoch": stop}, xlabel="epoch",
                     title=f"{scenario.early_stopping.rule} rule across seeds").plot(ax=axes[1])
    metric = full.metric
    ComparisonDisplay(["full budget", "early stopping"],
                      {f"test {metric}": np.stack([full.test_metric, early.test_metric])},
                      ylabel=metric, title="test score").plot(ax=axes[2])
    rows = [{"seed": s, "best_epoch": int(best[s]), "stop_epoch": int(stop[s]),
             f"test_{metric}_full": float(full.test_metric[s]),
             f"test_{metric}_early_stopping": float(early.test_metric[s])}
            for s in range(len(best))]
    return rows, {"early_stopping": fig}


def _require(scenario: Scenario, field: str) -> list:
    values = getattr(scenario.sweep, field)
    if not values:
        raise ValueError(f"kind={scenario.kind!r} needs sweep.{field} (a non-empty list).")
    return values


def dropout(scenario: Scenario) -> tuple[Rows, Figures]:
    """Validation curves per drop rate, and the train/validation gap each leaves."""
    rates = _require(scenario, "drop_rate")
    key_data, key_model = _keys(scenario)
    n_seeds = scenario.sweep.seeds
    data = draw(scenario, key_data, n_seeds)
    # dropout is compiled in when the constructor's rate is positive; members get their own
    model = build_model(dataclasses.replace(scenario, model=dataclasses.replace(
        scenario.model, drop_rate=max(rates))), data)
    flat, shape = grid(drop_rate=rates, seed=range(n_seeds))
    result = train_grid(scenario, model, data, {"drop_rate": flat["drop_rate"]}, key_model)
    metric, epochs = result.metric, np.asarray(result.epochs)
    val = np.asarray(result.history.val_metric).reshape(*shape, -1)
    values = grid_scores(scenario, model, result, data)
    gap = values[f"train_{metric}"] - values[f"val_{metric}"]
    fig, axes = panels(2, size=(5.5, 4), title=scenario.title or "Dropout")
    CurveDisplay(epochs, {f"drop_rate {r:g}": val[i].T for i, r in enumerate(rates)},
                 xlabel="epoch", ylabel=f"validation {metric}", title="validation per epoch"
                 ).plot(ax=axes[0], band=False)
    CurveDisplay(rates, {"train": values[f"train_{metric}"].reshape(shape),
                         "validation": values[f"val_{metric}"].reshape(shape),
                         "gap (train - validation)": gap.reshape(shape)},
                 xlabel="drop_rate", ylabel=metric, title="after training").plot(ax=axes[1])
    rows = _rows({"drop_rate": rates, "seed": range(n_seeds)}, {**values, "gap": gap})
    return rows, {"dropout": fig}


def validation_curve(scenario: Scenario) -> tuple[Rows, Figures]:
    """Train and validation error over the L2 strength, the best strength marked."""
    lams = _require(scenario, "l2")
    key_data, key_model = _keys(scenario)
    n_seeds = scenario.sweep.seeds
    data = draw(scenario, key_data, n_seeds)
    model = build_model(scenario, data)
    flat, shape = grid(l2=lams, seed=range(n_seeds))
    result = train_grid(scenario, model, data, {"l2": flat["l2"]}, key_model)
    values = grid_scores(scenario, model, result, data)
    name = "accuracy" if data.task == "classification" else "mse"
    curves = {"train": values[f"train_{name}"].reshape(shape),
              "validation": values[f"val_{name}"].reshape(shape)}
    fig, (ax,) = panels(1, size=(6, 4.2))
    CurveDisplay(lams, curves, xlabel="L2 strength lambda", ylabel=name, best="validation",
                 best_mode="max" if name == "accuracy" else "min", center="median",
                 title=scenario.title or "Validation curve").plot(ax=ax, logy=name == "mse")
    return _rows({"l2": lams, "seed": range(n_seeds)}, values), {"validation_curve": fig}


REMEDIES = ("baseline", "more data", "smaller model", "L2", "dropout", "early stopping")


def _remedy(scenario: Scenario, name: str) -> tuple[Scenario, dict[str, Any]]:
    """The scenario changed by one remedy, and its extra hparams."""
    sweep, replace = scenario.sweep, dataclasses.replace
    if name == "more data":
        n = _require(scenario, "n_train")[0]
        return replace(scenario, data=replace(scenario.data, n_train=n)), {}
    if name == "smaller model":
        return scenario, {"capacity": _require(scenario, "capacity")[0]}
    if name == "L2":
        return replace(scenario, train=replace(scenario.train, l2=_require(scenario, "l2")[0])), {}
    if name == "dropout":
        rate = _require(scenario, "drop_rate")[0]
        return replace(scenario, model=replace(scenario.model, drop_rate=rate)), {}
    del sweep
    return scenario, {}


def remedies(scenario: Scenario) -> tuple[Rows, Figures]:
    """The lesson's remedies side by side on one overfitting set-up."""
    if scenario.early_stopping.rule == "none":
        raise ValueError("kind='remedies' needs early_stopping.rule for its early-stopping arm.")
    key_data, key_model = _keys(scenario)
    n_seeds, results, rows = scenario.sweep.seeds, {}, []
    for name in REMEDIES:
        variant, extra = _remedy(scenario, name)
        data = draw(variant, key_data, n_seeds)
        model = build_model(dataclasses.replace(variant, sweep=dataclasses.replace(
            variant.sweep, capacity=[])), data)
        hp = {model.capacity: np.full(n_seeds, extra["capacity"])} if extra else {}
        result = train_grid(variant, model, data, hp, key_model, stop=name == "early stopping")
        values = grid_scores(variant, model, result, data)
        results[name] = (variant, model, result, data, values)
        rows += [{"remedy": name, **row} for row in _rows({"seed": range(n_seeds)}, values)]
    name = "accuracy" if data.task == "classification" else "mse"
    test = "test_risk" if name == "mse" else f"test_{name}"
    fig, (ax,) = panels(1, size=(7, 4.2))
    ComparisonDisplay(list(REMEDIES), {
        "train": np.stack([r[4][f"train_{name}"] for r in results.values()]),
        "test": np.stack([r[4][test] for r in results.values()])},
        ylabel=name if name == "accuracy" else "mean squared error (test: vs truth f)",
        title=scenario.title or "Remedies for overfitting").plot(ax=ax)
    figures = {"remedies": fig}
    if data.task == "regression" and data.n_features == 1:
        figures["remedies_fits"] = _remedy_fits(scenario, results)
    return rows, figures


def _remedy_fits(scenario: Scenario, results: dict) -> Any:
    """One seed's fitted curve under every remedy."""
    domain = tuple(scenario.data.domain)
    grid_x = jnp.linspace(*domain, 300)[:, None]
    fig, axes = panels(len(results), size=(4.2, 3.4), sharey=True,
                       title="First seed under each remedy")
    for ax, (name, (_, model, result, data, values)) in zip(axes, results.items()):
        first = jax.tree.map(lambda a: a[0], (result.params, result.state))
        d0 = jax.tree.map(lambda a: a[0], data)
        pred = model.apply(*first, grid_x)
        FitDisplay(d0.x_train, d0.y_train, d0.x_val, d0.y_val, grid_x, {name: pred},
                   truth=datasets.TARGETS[scenario.data.target](grid_x[:, 0]),
                   title=f"{name}: test risk {values['test_risk'][0]:.3f}").plot(ax=ax)
    return fig


EXPERIMENTS: dict[str, Callable[[Scenario], tuple[Rows, Figures]]] = {
    "five_points": five_points,
    "capacity_curve": capacity_curve,
    "training_curves": training_curves,
    "early_stopping": early_stopping,
    "dropout": dropout,
    "validation_curve": validation_curve,
    "remedies": remedies,
}
