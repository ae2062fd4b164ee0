"""The experiments a scenario's ``kind`` names: each returns (table rows, figures).

An experiment is a thin client of the public API: draw data, build the model,
train the whole grid in one compiled call, tabulate, and hand the numbers to a
Display. Rows are tidy: the swept parameters first, then the metrics.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from overfit import data as datasets
from overfit import decompose, models, theory
from overfit import regularize as reg
from overfit.display import (
    ComparisonDisplay,
    CurveDisplay,
    FitDisplay,
    HistogramDisplay,
    divergence_note,
    panels,
)
from overfit.early_stopping import EarlyStopping, patience, prechelt
from overfit.scenario import DATA_AXES, REMEDY_SETTINGS, Scenario
from overfit.solve import fit_linear
from overfit.static import Static
from overfit.sweep import batch_size_for, grid, map_members, shape_groups, take
from overfit.train import (
    FitResult,
    check_model_hparams,
    default_loss,
    fit,
    metric_name,
    score_outputs,
    trains_logits,
)

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
        return datasets.real(d.name, seed=scenario.seed, label_noise=d.label_noise,
                             val_frac=d.val_frac, test_frac=d.test_frac)
    if d.source == "regression":
        sample = lambda k: datasets.regression(  # noqa: E731
            k, target=d.target, n_train=d.n_train, n_val=d.n_val, n_test=d.n_test,
            noise=d.noise, x_dist=d.x_dist, domain=tuple(d.domain))
    elif d.source == "linear":
        # one truth b for every draw: draws differ in inputs and noise only
        coef = datasets.sphere(jax.random.fold_in(key, 1), d.p, d.r2)
        sample = lambda k: datasets.linear(  # noqa: E731
            k, p=d.p, n_train=d.n_train, n_val=d.n_val, n_test=d.n_test, coef=coef,
            s2=d.noise**2, link=d.link)
    else:
        sample = lambda k: datasets.classification(  # noqa: E731
            k, shape=d.shape, n_train=d.n_train, n_val=d.n_val, n_test=d.n_test,
            noise=d.noise, flip=d.flip)
    return jax.vmap(sample)(jax.random.split(key, n_draws))


class Sized(NamedTuple):
    """Training sets of several sizes as ONE padded batch, so one compiled solve fits all.

    Repeat ``s`` at size ``sizes[i]`` is draw ``index[i, s]`` of ``data``, whose
    training split has ``max(sizes)`` rows; it trains and is scored on the rows
    where ``weight[i]`` is 1 (its first ``sizes[i]``) and on nothing else.
    """

    data: datasets.Dataset  # (D, max(sizes), ...) draws
    index: np.ndarray  # (len(sizes), S) int
    weight: np.ndarray  # (len(sizes), max(sizes)) of 0 / 1
    sizes: list[int]

    def at(self, i: int) -> datasets.Dataset:
        """The ``S`` data sets of size ``sizes[i]``, unpadded: ``(S, sizes[i], ...)``."""
        n = self.sizes[i]
        return datasets.map_train(lambda a: a[:, :n], take(self.data, self.index[i]))


def padded_sizes(scenario: Scenario, sizes: list[int]) -> bool:
    """Whether fits at every training-set size in ``sizes`` can share one padded call:
    closed-form fits, or full-batch training (a padded set's minibatches would differ)."""
    batch = scenario.train.batch_size
    return scenario.train.method == "closed_form" or not batch or batch >= max(sizes)


def draw_sized(scenario: Scenario, key: jax.Array, n_draws: int, sizes: list[int], *,
               bootstrap: bool = False) -> Sized:
    """``n_draws`` training sets at every size in ``sizes`` (``sweep.n_train``).

    A generator's sets are nested: size n is the first n rows of one draw at the
    largest size, which is what separate draws with the same key give too (JAX's
    partitionable PRNG); a ``grid`` of inputs depends on n and is drawn per size.
    A fixed data set (``preset``, ``real``) gives each repeat a random subset of
    its training split, nested likewise (:func:`overfit.data.subsample`), or with
    ``bootstrap`` a bootstrap sample: subsets of a finite pool stop varying as n
    nears its size, which would read as "no variance" in a decomposition.
    Validation and test splits are the same at every size.
    """
    d, n_max, replace = scenario.data, max(sizes), dataclasses.replace
    weight = (np.arange(n_max) < np.asarray(sizes)[:, None]).astype(np.float32)
    index = np.broadcast_to(np.arange(n_draws), (len(sizes), n_draws))
    if d.source in ("preset", "real"):
        full = draw(scenario, key, 1)
        if n_max > full.n_train and not bootstrap:
            raise ValueError(f"sweep.n_train={list(sizes)} asks for up to {n_max} training "
                             f"points; data.source={d.source!r} has {full.n_train} in its "
                             "training split.")
        data = jax.vmap(functools.partial(datasets.subsample, n=n_max, replace=bootstrap),
                        in_axes=(0, None))(jax.random.split(key, n_draws), full)
    elif d.source == "regression" and d.x_dist == "grid":
        data = _grid_draws(key, scenario=Static(scenario), n_draws=n_draws, sizes=tuple(sizes))
        index = np.arange(len(sizes) * n_draws).reshape(len(sizes), n_draws)
    else:
        data = draw(replace(scenario, data=replace(d, n_train=n_max)), key, n_draws)
    return Sized(data, index, weight, list(sizes))


@functools.partial(jax.jit, static_argnames=("scenario", "n_draws", "sizes"))
def _grid_draws(key: jax.Array, *, scenario: Static[Scenario], n_draws: int,
                sizes: tuple[int, ...]) -> datasets.Dataset:
    """:func:`draw` at every size, training splits zero-padded to the largest, stacked
    size-major: ``(len(sizes) * n_draws, max(sizes), ...)``. One program rather than
    one per size (a second each): XLA computes the sizes' shared parts (the noise,
    the validation and test splits) once."""
    sc, d, n_max = scenario.value, scenario.value.data, max(sizes)

    def pad(a):
        return jnp.pad(a, [(0, 0), (0, n_max - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

    parts = [datasets.map_train(pad, draw(dataclasses.replace(
        sc, data=dataclasses.replace(d, n_train=n)), key, n_draws)) for n in sizes]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def build_model(scenario: Scenario, data: datasets.Dataset) -> models.Model:
    """The scenario's model, sized for ``data`` (inputs, classes) and its largest capacity."""
    m, n_in = scenario.model, data.n_features
    n_out = 1 if data.n_classes <= 2 else data.n_classes
    caps = scenario.sweep.capacity
    if m.kind == "polynomial":
        domain = tuple(scenario.data.domain)
        return models.polynomial(max(caps, default=m.max_degree), domain=domain)
    if m.kind == "random_features":
        return models.random_features(max(caps, default=m.max_features), n_in=n_in, kind=m.features)
    if m.kind == "linear":
        # the isotropic theory has no intercept; real inputs are standardised
        return models.linear(n_in, n_out=n_out, bias=scenario.data.source != "linear")
    hidden = [max(caps)] * len(m.hidden) if caps else m.hidden
    return models.mlp(n_in, hidden, n_out=n_out, activation=m.activation, drop_rate=m.drop_rate)


def optimizer(scenario: Scenario) -> Callable[[dict[str, Any]], optax.GradientTransformation]:
    """The training section's optimizer with its regularizers, as a function of hparams.

    A swept ``l2`` (in ``hparams``) overrides ``train.l2``. An MLP's biases are never
    penalised; the intercept of a linear or polynomial model is one of its coefficients
    and is, as in the closed-form ridge solve it should agree with.
    """
    t = scenario.train
    # adamw is adam plus train.weight_decay's decoupled decay below: optax.adamw's own
    # default (1e-4, on every parameter) would decay MLP biases, and decay at weight_decay=0
    base = {"adam": optax.adam, "sgd": optax.sgd, "adamw": optax.adam}[t.optimizer]

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


class Solved(NamedTuple):
    """Closed-form fits of a grid: parameters and state with the leading members axis."""

    params: Any
    state: Any


def draw_indices(data: datasets.Dataset, n_members: int, n_draws: int,
                 draw_index: np.ndarray | None = None) -> np.ndarray | None:
    """Which data draw each member uses (default ``m % n_draws``); None for a fixed set."""
    if data.x_train.ndim != 3:
        return None
    return np.arange(n_members) % n_draws if draw_index is None else np.asarray(draw_index)


def member_data(data: datasets.Dataset, n_members: int, n_draws: int,
                draw_index: np.ndarray | None = None) -> datasets.Dataset:
    """Each member's own copy of its data draw (what a vmapped ``fit`` takes)."""
    index = draw_indices(data, n_members, n_draws, draw_index)
    return data if index is None else take(data, index)


def train_grid(scenario: Scenario, model: models.Model, data: datasets.Dataset,
               hparams: dict[str, np.ndarray], key: jax.Array, *, stop: bool = True,
               draw_index: np.ndarray | None = None, weight: np.ndarray | None = None,
               key_index: np.ndarray | None = None):
    """Train every (grid point x repeat) member in one call; leading axis M = G * S.

    ``hparams`` holds flat ``(M,)`` values (empty: S repeats); member ``m``
    trains on data draw ``draw_index[m]`` (default: repeat ``s`` of every grid
    point uses draw ``s``), so grid points are compared on the same data.
    ``weight`` (``(M, n_train)``; closed form or full batch) weighs each
    member's training points (0/1: the rows a padded size uses, :class:`Sized`).
    Member ``m`` initialises from key number ``key_index[m]`` of a split of
    ``key`` (default: repeat ``s`` of every grid point uses key ``s``): members
    with one index start alike (the same random features or initial weights at
    every knob value), so a curve over the grid moves with the knob alone.
    ``stop=False`` ignores the early-stopping section (to compare with and
    without). Returns a :class:`FitResult`, or :class:`Solved` for closed form.
    """
    t, n_seeds = scenario.train, scenario.sweep.seeds
    n_members = len(next(iter(hparams.values()))) if hparams else n_seeds
    keys = _member_keys(key, np.arange(n_members) % n_seeds if key_index is None
                        else key_index)
    x64 = use_x64(scenario)
    if t.method == "closed_form":
        index = draw_indices(data, n_members, n_seeds, draw_index)
        return _solve_grid(model, data, hparams, keys, t.l2, index, weight, x64=x64)
    data = _in_precision(member_data(data, n_members, n_seeds, draw_index), x64)
    hparams = dict(hparams)
    if t.input_noise:
        hparams["input_noise"] = t.input_noise
    with jax.enable_x64(x64):
        return fit(model, data, key=keys, optimizer=optimizer(scenario), epochs=t.epochs,
                   loss=trained_loss(scenario, model, data), weight=weight,
                   batch_size=t.batch_size or None, hparams=hparams, eval_every=t.eval_every,
                   early_stopping=stopper(scenario) if stop else None,
                   chunk_size=scenario.sweep.chunk_size or None)


def _member_keys(key: jax.Array, index: np.ndarray) -> jax.Array:
    """The keys at ``index`` of a split of ``key`` (one split whatever the members)."""
    index = np.asarray(index)
    return _split_at(key, index, n=int(index.max()) + 1)


@functools.partial(jax.jit, static_argnames="n")
def _split_at(key: jax.Array, index: jax.Array, *, n: int) -> jax.Array:
    return jax.random.split(key, n)[index]  # one program, not an eager op per step


def scores(model: models.Model, params, state, data: datasets.Dataset,
           weight: jax.Array | None = None, *, loss: str | None = None
           ) -> dict[str, jax.Array]:
    """Metrics of ONE model on every split: MSE for regression, accuracy for
    classification; and the test outputs against the truth f: ``test_risk``
    (MSE vs f) or ``test_accuracy_clean`` (vs the labels before label noise).
    ``weight`` ``(n_train,)`` weighs the training points (the rows a padded size uses);
    ``loss``, the one trained (default: the task's), sets a one-output classifier's
    decision threshold."""
    loss = default_loss(model, data) if loss is None else loss
    name = metric_name(data.task)
    result = {}
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        out = model.apply(params, state, x)  # one forward pass per split
        w = weight if split == "train" else None
        result[f"{split}_{name}"] = score_outputs(out, y, loss, data.task, w)[1]
    truth = "test_risk" if data.task == "regression" else "test_accuracy_clean"
    result[truth] = score_outputs(out, data.f_test, loss, data.task)[1]
    return result


def use_x64(scenario: Scenario, closed_form: bool | None = None) -> bool:
    """Whether ``train.precision`` asks for float64 (``auto``: for closed-form solves)."""
    if scenario.train.precision == "auto":
        return scenario.train.method == "closed_form" if closed_form is None else closed_form
    return scenario.train.precision == "float64"


def _in_precision(tree: Any, x64: bool) -> Any:
    """Float arrays of ``tree`` as float64 (``x64``) or float32; others unchanged."""
    dtype = np.float64 if x64 else np.float32
    return jax.tree.map(lambda a: np.asarray(a, dtype)
                        if np.issubdtype(np.asarray(a).dtype, np.floating) else a, tree)


def _is_x64(result: Any) -> bool:
    """Whether a fit or solve was done in float64 (its parameters are)."""
    return any(np.asarray(a).dtype == np.float64 for a in jax.tree.leaves(result.params))


def _per_member(data: datasets.Dataset, members: Any, f: Callable, *, width: int,
                draw_index: np.ndarray | None = None) -> Any:
    """``f(member, its data set)`` for every member, in memory-bounded batches.

    ``data`` is one shared data set, or a batch of draws that member ``m``
    indexes with ``draw_index[m]`` inside the compiled program (so no per-member
    copies are made). Design matrices of ``width`` columns dominate memory:
    batches keep them, and an SVD's workspace, within half a GiB.
    """
    n_members = jax.tree.leaves(members)[0].shape[0]
    n_points = sum(a.shape[-2] for a in (data.x_train, data.x_val, data.x_test))
    size = batch_size_for(8 * 6 * n_points * width, n_members)
    if draw_index is None:
        return map_members(f, members, shared=data, batch_size=size)

    def indexed(member, draws):
        m, i = member
        return f(m, jax.tree.map(lambda a: a[i], draws))

    return map_members(indexed, (members, np.asarray(draw_index)), shared=data,
                       batch_size=size)


def _width(model: models.Model) -> int:
    """Largest parameter-array dimension: the column count of a design matrix."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))[0]
    return max(max(a.shape, default=1) for a in jax.tree.leaves(shapes))


def _solve_grid(model, data, hparams, keys, ridge, draw_index=None, weight=None, *,
                x64: bool = True) -> Solved:
    """Closed-form fits of every member, as batched solves (in float64 when ``x64``)."""
    check_model_hparams(model, hparams)  # inside the solve a capacity is traced: unchecked

    def one(member, d):
        key, hp, w = member
        params, state = model.init(key, **{k: v for k, v in hp.items() if k in model.hparams})
        return fit_linear(model, state, d.x_train, d.y_train, ridge=hp.get("l2", ridge),
                          weight=w), state

    with jax.enable_x64(x64):
        return Solved(*_per_member(_in_precision(data, x64), (keys, hparams, weight), one,
                                   width=_width(model),
                                   draw_index=draw_index))


def trained_loss(scenario: Scenario, model: models.Model, data: datasets.Dataset) -> str:
    """The loss a scenario trains with: ``train.loss``, or the task's default for ``auto``."""
    return default_loss(model, data) if scenario.train.loss == "auto" else scenario.train.loss


def grid_scores(scenario: Scenario, model: models.Model, result, data,
                draw_index: np.ndarray | None = None, weight: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
    """Per-member metrics ``(M,)`` of a ``train_grid`` result (closed form or trained).

    ``weight`` is ``train_grid``'s: the training metric averages over each
    member's own points. A trained result adds ``diverged_epoch`` (-1: never);
    the metrics of a member that diverged are NaN, so no mean or plot takes
    them silently.
    """
    n = jax.tree.leaves(result.params)[0].shape[0]
    draw_index = draw_indices(data, n, scenario.sweep.seeds, draw_index)
    loss = trained_loss(scenario, model, data)
    x64 = _is_x64(result)
    with jax.enable_x64(x64):
        data = _in_precision(data, x64)

        def one(member, d):
            params, state, w = member
            return {"n_params": model.n_params(state),
                    **scores(model, params, state, d, w, loss=loss)}

        values = _per_member(data, (result.params, result.state, weight), one,
                             width=_width(model), draw_index=draw_index)
    values = {k: np.asarray(v) for k, v in values.items()}
    if isinstance(result, FitResult):
        diverged = np.asarray(result.diverged_epoch).reshape(-1)
        values = {k: v if k == "n_params" else np.where(diverged >= 0, np.nan, v)
                  for k, v in values.items()}
        values["diverged_epoch"] = diverged
    return values


def _note(values: dict[str, np.ndarray]) -> str | None:
    """The plots' note on diverged members of a ``grid_scores`` result."""
    return divergence_note(values["diverged_epoch"] >= 0) if "diverged_epoch" in values else None


def _rows(axes: dict[str, Any], values: dict[str, np.ndarray]) -> Rows:
    """Tidy rows: the grid's coordinates first, then every metric."""
    flat, _ = grid(**axes)
    ints = {"n_params", "best_epoch", "stop_epoch", "diverged_epoch"}
    return [{**{k: v[i].item() for k, v in flat.items()},
             **{k: int(v[i]) if k in ints else float(v[i]) for k, v in values.items()}}
            for i in range(len(next(iter(flat.values()))))]


def _keys(scenario: Scenario) -> tuple[jax.Array, jax.Array]:
    return tuple(jax.random.split(jax.random.key(scenario.seed)))


def _own_capacity(model: models.Model) -> int:
    """The capacity ``model.init`` gives when no knob is passed (its largest)."""
    return int(model.init(jax.random.key(0))[1][model.capacity])


class Sweep(NamedTuple):
    """One knob x ``sweep.seeds`` data draws, trained in one call and scored."""

    model: models.Model
    result: Any  # FitResult or Solved
    values: dict[str, np.ndarray]  # per member, (M,)
    shape: tuple[int, int]  # (knob values, seeds)
    data: datasets.Dataset
    swept: list  # the knob's values


def _sweep(scenario: Scenario, knob: str | None, values: list | None,
           model_from: Scenario | None = None) -> Sweep:
    """Draw the data sets, build the model (of ``model_from`` if given), train every
    (value x seed) member of the knob (None: the model's capacity; ``values=None``:
    the model as built) and score it."""
    key_data, key_model = _keys(scenario)
    data = draw(scenario, key_data, scenario.sweep.seeds)
    model = build_model(model_from or scenario, data)
    knob = knob or model.capacity
    values = values or [_own_capacity(model)]
    flat, shape = grid(value=values, seed=range(scenario.sweep.seeds))
    result = train_grid(scenario, model, data, {knob: flat["value"]}, key_model)
    return Sweep(model, result, grid_scores(scenario, model, result, data), shape, data, values)


def _val_history(result: FitResult, values: dict[str, np.ndarray]) -> np.ndarray:
    """The validation metric per evaluation ``(M, checks)``, NaN for diverged members."""
    return np.where((values["diverged_epoch"] >= 0)[:, None], np.nan,
                    np.asarray(result.history.val_metric))


def five_points(scenario: Scenario) -> tuple[Rows, Figures]:
    """The lesson's figure: a 2-parameter line vs a 7-parameter polynomial on 5 points."""
    key = jax.random.key(scenario.seed)
    data = jax.tree.map(lambda a: a[0], draw(scenario, key, 1))
    domain = tuple(scenario.data.domain)
    grid_x = jnp.linspace(*domain, 400)[:, None]
    fig, axes = panels(2, sharey=True, title=scenario.title or "Same five points, two models")
    rows = []
    x64 = use_x64(scenario, closed_form=True)
    fit_data = _in_precision(data, x64)
    with jax.enable_x64(x64):
        for ax, degree in zip(axes, (1, 6)):
            err, n_params, curve = _polynomial_fit(key, fit_data, grid_x, degree=degree,
                                                   domain=domain)
            n_params = int(n_params)
            rows.append({"model": f"degree {degree}", "n_params": n_params,
                         **{k: float(v) for k, v in err.items()}})
            FitDisplay(data.x_train, data.y_train, data.x_val, data.y_val, grid_x,
                       {f"{n_params}-parameter fit": curve},
                       title=f"{n_params} parameters: train {err['train_mse']:.2g}, "
                             f"validation {err['val_mse']:.2g}").plot(ax=ax)
    return rows, {"five_points": fig}


# One program per (degree, domain): run eagerly, the solve, the scores and the curve were
# ~180 small programs compiled one by one (10 s for a 5-point fit on a CPU).
@functools.partial(jax.jit, static_argnames=("degree", "domain"))
def _polynomial_fit(key: jax.Array, data: datasets.Dataset, grid_x: jax.Array, *, degree: int,
                    domain: tuple[float, float]) -> tuple[dict[str, jax.Array], jax.Array,
                                                          jax.Array]:
    """Closed-form polynomial of ``degree`` on one data set: (scores, n_params, curve)."""
    model = models.polynomial(degree, domain=domain)
    params, state = model.init(key)
    params = fit_linear(model, state, data.x_train, data.y_train)
    return (scores(model, params, state, data), model.n_params(state),
            model.apply(params, state, grid_x))


def capacity_curve(scenario: Scenario) -> tuple[Rows, Figures]:
    """Train / validation / test error vs capacity over many data draws: the U-curve."""
    sweep = _sweep(scenario, None, scenario.sweep.capacity or None)
    model, values, shape, caps = sweep.model, sweep.values, sweep.shape, sweep.swept
    rows = _rows({model.capacity: caps, "seed": range(scenario.sweep.seeds)}, values)
    v = {k: a.reshape(shape) for k, a in values.items()}
    mse = metric_name(sweep.data.task) == "mse"
    name, test = ("mse", "test_risk") if mse else ("accuracy", "test_accuracy_clean")
    display = CurveDisplay(
        caps, {"train": v[f"train_{name}"], "validation": v[f"val_{name}"],
               "test (noise-free f)" if mse else "test (clean labels)": v[test]},
        xlabel=model.capacity,
        ylabel=f"{'mean squared error' if mse else 'accuracy'} (median, quartiles)",
        best="validation", best_mode="min" if mse else "max", center="median",
        title=scenario.title or ("Error vs capacity" if mse else "Accuracy vs capacity"),
        note=_note(values))
    fig, (ax,) = panels(1, size=(6, 4.2))
    display.plot(ax=ax, logy=mse, logx=False)
    return rows, {"capacity_curve": fig}


def _history_rows(result: FitResult, **extra: np.ndarray) -> Rows:
    """One row per (member, evaluation) of a fit's history, with each member's
    ``returned_epoch`` (of the parameters fit returned: the last one without a
    stopping rule) and ``val_loss_min_epoch`` (the lesson's "stop here"; -1 when
    no validation loss is finite)."""
    metric, h = result.metric, result.history
    columns = {"train_loss": h.train_loss, "val_loss": h.val_loss,
               f"train_{metric}": h.train_metric, f"val_{metric}": h.val_metric}
    columns = {k: np.asarray(v) for k, v in columns.items()}
    epochs = np.asarray(result.epochs)
    returned = np.asarray(result.best_epoch) + 1
    val = columns["val_loss"]
    finite = np.isfinite(val).any(axis=1)
    minimum = np.where(finite, epochs[np.argmin(np.where(np.isfinite(val), val, np.inf), axis=1)],
                       -1)
    diverged = np.asarray(result.diverged_epoch)
    diverged = np.where(diverged >= 0, diverged + 1, -1)  # 1-based like the epochs
    return [{**{k: v[m].item() for k, v in extra.items()}, "member": m, "epoch": int(e),
             **{k: float(v[m, i]) for k, v in columns.items()},
             "returned_epoch": int(returned[m]), "val_loss_min_epoch": int(minimum[m]),
             "diverged_epoch": int(diverged[m])}
            for m in range(len(returned)) for i, e in enumerate(epochs)]


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


def dropout(scenario: Scenario) -> tuple[Rows, Figures]:
    """Validation curves per drop rate, and the train/validation gap each leaves."""
    rates = scenario.sweep.drop_rate
    n_seeds = scenario.sweep.seeds
    # dropout is compiled in when the constructor's rate is positive; members get their own
    scenario_q = dataclasses.replace(scenario, model=dataclasses.replace(
        scenario.model, drop_rate=max(rates)))
    sweep = _sweep(scenario, "drop_rate", rates, scenario_q)
    result, values, shape = sweep.result, sweep.values, sweep.shape
    metric, epochs = result.metric, np.asarray(result.epochs)
    val = _val_history(result, values).reshape(*shape, -1)
    # how much better the training score is: an accuracy above, an error below
    train_first = metric == "accuracy"
    gap = (values[f"train_{metric}"] - values[f"val_{metric}"]) * (1 if train_first else -1)
    fig, axes = panels(2, size=(5.5, 4), title=scenario.title or "Dropout")
    CurveDisplay(epochs, {f"drop_rate {r:g}": val[i].T for i, r in enumerate(rates)},
                 xlabel="epoch", ylabel=f"validation {metric} (mean over seeds)",
                 title="validation per epoch"
                 ).plot(ax=axes[0], band=False)
    CurveDisplay(rates, {"train": values[f"train_{metric}"].reshape(shape),
                         "validation": values[f"val_{metric}"].reshape(shape),
                         "gap (train - validation)" if train_first
                         else "gap (validation - train)": gap.reshape(shape)},
                 xlabel="drop_rate", ylabel=f"{metric} (mean, 1 std)", title="after training",
                 note=_note(values)).plot(ax=axes[1])
    rows = _rows({"drop_rate": rates, "seed": range(n_seeds)}, {**values, "gap": gap})
    return rows, {"dropout": fig}


def validation_curve(scenario: Scenario) -> tuple[Rows, Figures]:
    """Train and validation error over the L2 strength, the best strength marked."""
    lams = scenario.sweep.l2
    n_seeds = scenario.sweep.seeds
    sweep = _sweep(scenario, "l2", lams)
    values, shape = sweep.values, sweep.shape
    name = metric_name(sweep.data.task)
    curves = {"train": values[f"train_{name}"].reshape(shape),
              "validation": values[f"val_{name}"].reshape(shape)}
    fig, (ax,) = panels(1, size=(6, 4.2))
    CurveDisplay(lams, curves, xlabel="L2 strength lambda", ylabel=f"{name} (median, quartiles)",
                 best="validation",
                 best_mode="max" if name == "accuracy" else "min", center="median",
                 note=_note(values),
                 title=scenario.title or "Validation curve").plot(ax=ax, logy=name == "mse")
    return _rows({"l2": lams, "seed": range(n_seeds)}, values), {"validation_curve": fig}


def learning_curves(scenario: Scenario) -> tuple[Rows, Figures]:
    """Train and validation error vs n_train, one panel per capacity (weak vs strong).

    Every ``sweep.n_train`` value has ``sweep.seeds`` training sets (nested
    across sizes, :func:`draw_sized`); the gap between the curves is what more
    data closes. Every (size x capacity x set) member trains in one call, the
    sizes padded to the largest (:func:`padded_sizes`); minibatch training is
    one call per size.
    """
    sizes = scenario.sweep.n_train
    n_seeds = scenario.sweep.seeds
    key_data, key_model = _keys(scenario)
    sized = draw_sized(scenario, key_data, n_seeds, sizes)
    model = build_model(scenario, sized.data)
    caps, column = scenario.sweep.capacity or [_own_capacity(model)], model.capacity
    if padded_sizes(scenario, sizes):
        flat, _ = grid(size=range(len(sizes)), value=range(len(caps)), seed=range(n_seeds))
        draw_index, weight = sized.index[flat["size"], flat["seed"]], sized.weight[flat["size"]]
        result = train_grid(scenario, model, sized.data,
                            {column: np.asarray(caps)[flat["value"]]}, key_model,
                            draw_index=draw_index, weight=weight)
        values = grid_scores(scenario, model, result, sized.data, draw_index, weight)
    else:
        flat, _ = grid(value=caps, seed=range(n_seeds))
        parts = []
        for i in range(len(sizes)):
            data = sized.at(i)
            result = train_grid(scenario, model, data, {column: flat["value"]}, key_model)
            parts.append(grid_scores(scenario, model, result, data))
        values = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    rows = _rows({"n_train": sizes, column: caps, "seed": range(n_seeds)}, values)
    name = metric_name(sized.data.task)
    sign = -1 if name == "accuracy" else 1  # the gap is positive when overfitting
    shape = (len(sizes), len(caps), n_seeds)
    fig, axes = panels(len(caps) + 1, size=(4.6, 4), sharey=False,
                       title=scenario.title or "Learning curves")
    gaps = {}
    for ax in axes[1:len(caps)]:  # weak and strong on one scale
        ax.sharey(axes[0])
    for i, cap in enumerate(caps):
        train = values[f"train_{name}"].reshape(shape)[:, i]
        val = values[f"val_{name}"].reshape(shape)[:, i]
        gaps[f"{column} {cap}"] = sign * (val - train)
        CurveDisplay(sizes, {"train": train, "validation": val}, xlabel="n_train",
                     ylabel=f"{name} (median, quartiles)", center="median",
                     title=f"{column} {cap}").plot(ax=axes[i], logy=name == "mse")
    CurveDisplay(sizes, gaps, xlabel="n_train", center="median", note=_note(values),
                 ylabel=f"generalisation gap ({name}; median, quartiles)",
                 title="the gap more data closes"
                 ).plot(ax=axes[-1], logy=name == "mse")
    return rows, {"learning_curves": fig}


REMEDIES = ("baseline", "more data", "smaller model", "L2", "dropout", "early stopping")


def remedies(scenario: Scenario) -> tuple[Rows, Figures]:
    """The lesson's remedies side by side on one overfitting set-up.

    Every arm is the baseline with one change: repeat ``s`` of every arm starts
    from the same initialisation, on the same training points (more data: those
    points and more, :func:`draw_sized`), so arms differ by their remedy alone.
    Three compiled calls: the four arms on the base data (their remedies are
    per-member width, L2 strength and drop rate), more data (another shape) and
    early stopping (compiled into the loop).
    """
    # one setting per remedy (scenario.REMEDY_SETTINGS, checked when the file is loaded)
    replace, n_seeds = dataclasses.replace, scenario.sweep.seeds
    settings = {f: getattr(scenario.sweep, f)[0] for f in REMEDY_SETTINGS}
    key_data, key_model = _keys(scenario)
    # dropout compiled in for every arm; a member's rate of 0 drops nothing
    shared = replace(scenario, sweep=replace(scenario.sweep, capacity=[]),
                     model=replace(scenario.model, drop_rate=settings["drop_rate"]))
    sized = draw_sized(shared, key_data, n_seeds, [scenario.data.n_train, settings["n_train"]])
    base, more = sized.at(0), sized.at(1)
    model = build_model(shared, base)
    # no dropout to run, whatever model.drop_rate says: the baseline trains at rate 0 too
    plain = build_model(replace(shared, model=replace(scenario.model, drop_rate=0.0)), base)
    defaults = {model.capacity: _own_capacity(model), "l2": scenario.train.l2, "drop_rate": 0.0}

    def train(model: models.Model, arms: dict[str, dict], data: datasets.Dataset,
              stop: bool) -> dict[str, tuple]:
        hp = {k: np.repeat([arm.get(k, defaults[k]) for arm in arms.values()], n_seeds)
              for k in dict.fromkeys(k for arm in arms.values() for k in arm)}
        result = train_grid(shared, model, data, hp, key_model, stop=stop)
        values = grid_scores(shared, model, result, data)
        return {name: (model, jax.tree.map(lambda a, s=slice(i * n_seeds, (i + 1) * n_seeds):
                                           a[s], result),
                       data, {k: v[i * n_seeds:(i + 1) * n_seeds] for k, v in values.items()})
                for i, name in enumerate(arms)}

    results = {**train(model, {"baseline": {},
                               "smaller model": {model.capacity: settings["capacity"]},
                               "L2": {"l2": settings["l2"]},
                               "dropout": {"drop_rate": shared.model.drop_rate}}, base, stop=False),
               **train(plain, {"more data": {}}, more, stop=False),
               **train(plain, {"early stopping": {}}, base, stop=True)}
    results = {name: results[name] for name in REMEDIES}
    rows = [{"remedy": name, **row} for name, r in results.items()
            for row in _rows({"seed": range(n_seeds)}, r[3])]
    name = metric_name(base.task)
    test = "test_risk" if name == "mse" else f"test_{name}"
    fig, (ax,) = panels(1, size=(7, 4.2))
    ComparisonDisplay(list(REMEDIES), {
        "train": np.stack([r[3][f"train_{name}"] for r in results.values()]),
        "test": np.stack([r[3][test] for r in results.values()])},
        ylabel=name if name == "accuracy" else "mean squared error (test: vs truth f)",
        title=scenario.title or "Remedies for overfitting").plot(ax=ax)
    figures = {"remedies": fig}
    if base.task == "regression" and base.n_features == 1:
        figures["remedies_fits"] = _remedy_fits(scenario, results)
    return rows, figures


def _remedy_fits(scenario: Scenario, results: dict) -> Any:
    """One seed's fitted curve under every remedy."""
    domain = tuple(scenario.data.domain)
    grid_x = jnp.linspace(*domain, 300)[:, None]
    fig, axes = panels(len(results), size=(4.2, 3.4), sharey=True,
                       title="First seed under each remedy")
    for ax, (name, (model, result, data, values)) in zip(axes, results.items()):
        first = jax.tree.map(lambda a: a[0], (result.params, result.state))
        d0 = jax.tree.map(lambda a: a[0], data)
        pred = model.apply(*first, grid_x)
        FitDisplay(d0.x_train, d0.y_train, d0.x_val, d0.y_val, grid_x, {name: pred},
                   truth=datasets.TARGETS[scenario.data.target](grid_x[:, 0]),
                   title=f"{name}: test risk {values['test_risk'][0]:.3f}").plot(ax=ax)
    return fig


def _sweep_axis(scenario: Scenario) -> tuple[str, list]:
    """The swept knob of a decomposition: (sweep field, values), the one non-empty list
    (exactly one: checked when the file is loaded)."""
    field = next(f for f in ("capacity", "l2", *DATA_AXES) if getattr(scenario.sweep, f))
    return field, getattr(scenario.sweep, field)


def predictions(model: models.Model, result, x: jax.Array) -> jax.Array:
    """Raw outputs of every member at shared inputs ``x``: ``(M, n)`` or ``(M, n, K)``."""
    x64 = _is_x64(result)
    with jax.enable_x64(x64):
        x = _in_precision(x, x64)
        out = jax.vmap(model.apply, in_axes=(0, 0, None))(result.params, result.state, x)
        return np.asarray(out)


def _decompose(data: datasets.Dataset, preds: np.ndarray, noise_var: float,
               n_inits: int, logits: bool = True) -> dict[str, Any]:
    """Terms of one grid point from its ``(S * m, n, ...)`` predictions, in their
    precision (a float64 solve's terms are not rounded to float32). A classifier's
    outputs are ``logits`` unless a square loss trained them toward one-hot targets."""
    f = data.f_test[0]
    with jax.enable_x64(preds.dtype == np.float64):
        if data.task == "regression":  # the m inits of one set are alike: not S * m draws
            flat = jnp.asarray(preds)
            nested = flat.reshape(-1, n_inits, preds.shape[-1])
            terms = dict(zip(("expected test error", "bias2", "variance", "noise"),
                             decompose.squared_nested(nested, f=f, noise=noise_var)))
        else:
            terms = decompose.classifier(preds, f, logits=logits)  # KW terms: table only
            # the split below is of the last class's probability (a logit is no probability;
            # a one-hot square loss's output is its estimate)
            out = jnp.asarray(preds)  # one output per point is already P(class 1)
            flat = (jax.nn.softmax(decompose.class_logits(out), axis=-1)[..., -1] if logits
                    else out if out.ndim == 2 else out[..., -1])
        if n_inits > 1:
            split = decompose.variance_split(flat.reshape(-1, n_inits, flat.shape[1]))
            terms |= {"variance from initialisation": split.init,
                      "variance from training sets": split.sampling}
        # as numpy: a float64 jax array used outside x64 mode warns at every operation
        # (term by term: a tree map over the dict would sort its keys, the table's columns)
        return {k: jax.tree.map(np.asarray, t) for k, t in terms.items()}


def bias_variance(scenario: Scenario) -> tuple[Rows, Figures]:
    """Bias^2 / variance / noise (or 0-1 and cross-entropy terms) over a swept knob.

    S training sets (``sweep.seeds``: fresh draws of a generator, or bootstrap
    resamples of a fixed data set's training split) x m initialisations
    (``sweep.inits``) per grid point, predicting at one shared test set; a
    generator's truth ``f`` separates the noise exactly. A model knob
    (``capacity``, ``l2``) is one axis of one training call, and so is
    ``n_train`` (nested sets padded to one shape, :func:`draw_sized`; a fixed
    data set's are nested bootstrap samples) unless minibatches make it one
    call per size; ``noise`` and ``flip`` draw new data, one call per value.
    """
    field, values = _sweep_axis(scenario)
    at = None  # capacity where the parameters reach n_train x outputs, when swept through it
    if field == "n_train":
        column, (terms, n_params) = field, _decomposition_sizes(scenario, values)
    elif field in DATA_AXES:
        column, terms, n_params = field, [], []
        for v in values:
            variant = dataclasses.replace(scenario, data=dataclasses.replace(
                scenario.data, **{field: v}))
            _, t, p, _ = _decomposition_grid(variant, None)
            terms += t
            n_params += p
    else:
        column, terms, n_params, fits = _decomposition_grid(scenario, field)
        if field == "capacity" and n_params[0] < fits <= n_params[-1] and np.all(
                np.diff(n_params) > 0):
            at = float(np.interp(fits, n_params, values))
    rows = [{column: v, "n_params": n_params[i],
             **{k.replace(" ", "_"): float(t.value) for k, t in terms[i].items()},
             **{k.replace(" ", "_") + "_se": float(t.se) for k, t in terms[i].items()}}
            for i, v in enumerate(values)]
    return rows, {"bias_variance": _bias_variance_figure(scenario, column, values, terms, at)}


def _decomposition_grid(scenario: Scenario, field: str | None
                        ) -> tuple[str, list[dict[str, Any]], list[int], int]:
    """Terms at every value of the model knob ``field`` (None: the model as configured),
    trained in one call: (column name, terms per value, parameter count per value, the
    number of targets fitted: n_train x outputs)."""
    key_data, key_model = _keys(scenario)
    n_sets, n_inits = scenario.sweep.seeds, scenario.sweep.inits
    data = draw(scenario, key_data, n_sets)
    if data.x_train.ndim == 2:  # a fixed data set: bootstrap its training split instead
        keys = jax.random.split(key_data, n_sets)
        data = jax.vmap(datasets.resample, in_axes=(0, None))(keys, data)
    data = datasets.shared_test(data)
    model = build_model(scenario, data)
    if field is None:  # the model's own (largest) capacity
        knob, values = model.capacity, [_own_capacity(model)]
    else:
        knob, values = (model.capacity if field == "capacity" else field), getattr(
            scenario.sweep, field)
    flat, _ = grid(value=values, seed=range(n_sets), init=range(n_inits))
    # (set, init) starts alike at every value, as at every size (_decomposition_sizes)
    terms, n_params = _terms(scenario, model, data, {knob: flat["value"]}, key_model,
                             flat["seed"], len(values),
                             key_index=flat["seed"] * n_inits + flat["init"])
    return knob, terms, n_params, data.x_train.shape[-2] * model.n_out


def _decomposition_sizes(scenario: Scenario, sizes: list[int]
                         ) -> tuple[list[dict[str, Any]], list[int]]:
    """Terms and parameter counts at every training-set size in ``sizes``."""
    key_data, key_model = _keys(scenario)
    n_sets, n_inits = scenario.sweep.seeds, scenario.sweep.inits
    # a fixed data set's sets are bootstrap samples, as on the decomposition's other axes
    sized = draw_sized(scenario, key_data, n_sets, sizes, bootstrap=True)
    model = build_model(scenario, sized.data)
    own = _own_capacity(model)
    if padded_sizes(scenario, sizes):
        flat, _ = grid(size=range(len(sizes)), seed=range(n_sets), init=range(n_inits))
        return _terms(scenario, model, datasets.shared_test(sized.data),
                      {model.capacity: np.full(len(flat["seed"]), own)}, key_model,
                      sized.index[flat["size"], flat["seed"]], len(sizes),
                      sized.weight[flat["size"]], flat["seed"] * n_inits + flat["init"])
    flat, _ = grid(seed=range(n_sets), init=range(n_inits))
    terms, n_params = [], []
    for i in range(len(sizes)):
        t, p = _terms(scenario, model, datasets.shared_test(sized.at(i)),
                      {model.capacity: np.full(len(flat["seed"]), own)}, key_model,
                      flat["seed"], 1, key_index=flat["seed"] * n_inits + flat["init"])
        terms, n_params = terms + t, n_params + p
    return terms, n_params


def _terms(scenario: Scenario, model: models.Model, data: datasets.Dataset,
           hparams: dict[str, np.ndarray], key: jax.Array, draw_index: np.ndarray,
           n_values: int, weight: np.ndarray | None = None,
           key_index: np.ndarray | None = None) -> tuple[list[dict[str, Any]], list[int]]:
    """Train a grid whose members are ordered (value, set, init) in one call
    (:func:`train_grid`'s arguments) and decompose each of its ``n_values``
    points: (terms, parameter counts) per value."""
    n_inits = scenario.sweep.inits
    result = train_grid(scenario, model, data, hparams, key, draw_index=draw_index,
                        weight=weight, key_index=key_index)
    preds = predictions(model, result, data.x_test[0])
    preds = preds.reshape(n_values, -1, *preds.shape[1:])
    # only a generator knows its noise; for a fixed data set it stays inside the bias
    noise_var = scenario.data.noise**2 if scenario.data.source in ("regression", "linear") else 0.0
    logits = trains_logits(trained_loss(scenario, model, data))
    terms = [_decompose(data, p, noise_var, n_inits, logits) for p in preds]
    if isinstance(result, FitResult):
        # a diverged member is frozen at its last finite parameters, and its predictions
        # would enter the terms unnoticed: its grid point's terms are NaN instead
        gone = np.asarray(result.diverged_epoch).reshape(n_values, -1) >= 0
        nan = decompose.Term(np.nan, np.nan)
        terms = [{k: nan for k in t} if g.any() else t for t, g in zip(terms, gone)]
    n_params = np.asarray(jax.vmap(model.n_params)(result.state)).reshape(n_values, -1)[:, 0]
    return terms, [int(n) for n in n_params]


def _bias_variance_figure(scenario, column, values, terms, threshold=None) -> Any:
    names = list(terms[0])
    groups = [[n for n in names if n.startswith(("0-1", "variance from"))],
              [n for n in names if n.startswith(("cross", "CE"))]]
    if "bias2" in names:
        groups = [[n for n in names if not n.startswith("variance from")],
                  [n for n in names if n.startswith("variance from")]]
    groups = [g for g in groups if g]
    fig, axes = panels(len(groups), size=(5.8, 4.2),
                       title=scenario.title or "Bias-variance decomposition")
    for ax, group in zip(axes, groups):
        curves = {n: [t[n].value for t in terms] for n in group}
        errors = {n: [2 * t[n].se for t in terms] for n in group}
        # the best n_train or noise level is trivially the largest / smallest one
        total = group[0] if group[0] in ("expected test error", "0-1 loss", "cross-entropy") \
            and column not in DATA_AXES else None
        CurveDisplay(values, curves, errors=errors, xlabel=column, best=total,
                     ylabel="averaged over test points (band: 2 SE)",
                     markers={"interpolation threshold (parameters = targets)": threshold}
                     if threshold is not None else None).plot(ax=ax)
    return fig


def _signal_on_first(data: datasets.Dataset, n_inputs: jax.Array, key: jax.Array, r2: float
                     ) -> tuple[datasets.Dataset, jax.Array]:
    """Isotropic data whose signal lives on the first ``n_inputs`` coordinates only.

    Keeps the draw's inputs and noise and redraws ``b`` uniform on the sphere
    ``|b|^2 = r2`` of that subspace, so a model using the first ``n_inputs``
    inputs is exactly the isotropic min-norm setting (:func:`overfit.theory.min_norm_risk`)
    with p = n_inputs.
    """
    g = jax.random.normal(key, (data.n_features,)) * (jnp.arange(data.n_features) < n_inputs)
    b = g * jnp.sqrt(r2) / jnp.linalg.norm(g)

    def relabel(x, y, f):
        signal = x @ b
        return y - f + signal, signal

    splits = {}
    for name in ("train", "val", "test"):
        y, f = relabel(getattr(data, f"x_{name}"), getattr(data, f"y_{name}"),
                       getattr(data, f"f_{name}"))
        splits |= {f"y_{name}": y, f"f_{name}": f}
    return dataclasses.replace(data, **splits), b


def _first_inputs(data: datasets.Dataset, p: int) -> datasets.Dataset:
    """The data with only its first ``p`` input columns."""
    return dataclasses.replace(data, **{f"x_{s}": getattr(data, f"x_{s}")[..., :p]
                                        for s in ("train", "val", "test")})


def _min_norm_member(model: models.Model, isotropic: bool, r2: float) -> Callable:
    """One member of a double-descent grid: fit, then test risk, train MSE, |coef|^2.

    With the isotropic source the signal is put on the first ``value``
    inputs and the risk is exactly ``|bhat - b|^2``; otherwise it is the test
    MSE against the noiseless truth f.
    """

    def one(member, d):
        key, value, lam, coef_key, weight = member
        b = None
        if isotropic:
            d, b = _signal_on_first(d, value, coef_key, r2)
        params, state = model.init(key, **{model.capacity: value})
        params = fit_linear(model, state, d.x_train, d.y_train, ridge=lam, weight=weight)
        if b is None:
            risk = jnp.mean((model.apply(params, state, d.x_test) - d.f_test) ** 2)
        else:
            risk = jnp.sum((params["coef"] - b) ** 2)
        fitted = model.apply(params, state, d.x_train)
        train_mse = score_outputs(fitted, d.y_train, "mse", "regression", weight)[1]
        return {"test_risk": risk, "train_mse": train_mse,
                "coef_norm2": jnp.sum(params["coef"] ** 2), "n_params": model.n_params(state)}

    return one


def double_descent(scenario: Scenario) -> tuple[Rows, Figures]:
    """Risk through the interpolation threshold, model-wise or sample-wise.

    ``train.method = "gradient"`` trains a capacity sweep (an MLP's width) and
    adds the epoch-wise curves (:func:`_double_descent_trained`). Otherwise, min-norm:
    ``sweep.capacity`` sweeps the parameters P (features N, or inputs p) at
    fixed n in one batched call; ``sweep.n_train`` sweeps n at fixed P ("more
    data can hurt"), also in one call (:func:`draw_sized`). With the isotropic
    linear source and model the exact finite-sample and asymptotic theory are overlaid;
    ``sweep.l2`` adds ridge curves (a grid axis of the same call) and
    ``sweep.noise`` one set of curves per noise level (the peak grows with it).
    """
    # the sweeps each method takes are checked when the file is loaded
    sample_wise = bool(scenario.sweep.n_train)
    if scenario.train.method != "closed_form":
        return _double_descent_trained(scenario)
    values = scenario.sweep.n_train if sample_wise else scenario.sweep.capacity
    ridges = [0.0, *scenario.sweep.l2]
    isotropic = (scenario.data.source == "linear" and scenario.data.link == "identity"
                 and scenario.model.kind == "linear")
    noises = scenario.sweep.noise or [scenario.data.noise]
    curves: dict[tuple[float, str], dict[str, np.ndarray]] = {}
    for noise in noises:  # the noise level moves the peak: one set of curves each
        variant = dataclasses.replace(scenario, data=dataclasses.replace(scenario.data,
                                                                         noise=noise))
        column, risks, n_fit = _min_norm_grid(variant, values, ridges, sample_wise, isotropic)
        for r, lam in enumerate(ridges):
            label = "min-norm" if lam == 0 else f"ridge lambda={lam:g}"
            curves[noise, label] = {k: v[r] for k, v in risks.items()}
    rows = [{"noise": noise, "regularization": label, column: v, "seed": s_,
             **{k: float(a[i, s_]) for k, a in curve.items()}}
            for (noise, label), curve in curves.items() for i, v in enumerate(values)
            for s_ in range(scenario.sweep.seeds)]
    named = {(f"noise {noise:g}, {label}" if len(noises) > 1 else label): curve
             for (noise, label), curve in curves.items()}
    return rows, {"double_descent": _double_descent_figure(scenario, values, named, noises,
                                                           sample_wise, isotropic, n_fit)}


def _min_norm_grid(scenario: Scenario, values: list, ridges: list, sample_wise: bool,
                   isotropic: bool) -> tuple[str, dict[str, np.ndarray], int]:
    """Min-norm (and ridge) fits of every (ridge x value x draw): the swept column's
    name; test risk, train MSE, |coef|^2, each ``(len(ridges), len(values), seeds)``;
    and the training rows of the data drawn (padded to the largest n_train)."""
    key_data, key_model, key_coef = jax.random.split(jax.random.key(scenario.seed), 3)
    n_sets = scenario.sweep.seeds
    if sample_wise:  # every n in one call: nested sets padded to the largest
        sized = draw_sized(scenario, key_data, n_sets, values)
        data, caps = sized.data, [_own_capacity(build_model(scenario, sized.data))]
        at, _ = grid(l2=range(len(ridges)), size=range(len(values)), value=[0],
                     seed=range(n_sets))
        draw_index, weight = sized.index[at["size"], at["seed"]], sized.weight[at["size"]]
    else:
        data, caps = draw(scenario, key_data, n_sets), values
        at, _ = grid(l2=range(len(ridges)), value=range(len(caps)), seed=range(n_sets))
        # a fixed (real) data set has no draws to index: every member fits it
        draw_index, weight = draw_indices(data, len(at["seed"]), n_sets, at["seed"]), None
    flat = {"l2": np.asarray(ridges)[at["l2"]], "value": np.asarray(caps)[at["value"]]}
    m, column = len(at["seed"]), "n_train"
    # a (ridge, capacity, set) triple starts alike, and has one truth b, at every size
    same = (at["l2"] * len(caps) + at["value"]) * n_sets + at["seed"]
    members = (_member_keys(key_model, same), flat["value"], flat["l2"],
               _member_keys(key_coef, same), weight)
    out: dict[str, np.ndarray] = {}
    # one compile per group of similar capacities: a member pays at most twice its cost
    for group in shape_groups(caps):
        sub = dataclasses.replace(scenario, sweep=dataclasses.replace(
            scenario.sweep, capacity=group))
        # the isotropic signal lives on the first `value` inputs: the rest can go
        d = _first_inputs(data, max(group)) if isotropic else data
        model = build_model(sub, d)
        column = column if sample_wise else model.capacity
        index = np.flatnonzero(np.isin(flat["value"], group))
        check_model_hparams(model, {model.capacity: flat["value"][index]})
        x64 = use_x64(scenario, closed_form=True)
        with jax.enable_x64(x64):
            part = _per_member(_in_precision(d, x64), take(members, index),
                               _min_norm_member(model, isotropic, scenario.data.r2),
                               width=_width(model),
                               draw_index=None if draw_index is None else draw_index[index])
        for k, v in part.items():
            out.setdefault(k, np.empty(m))[index] = np.asarray(v)
    return column, {k: v.reshape(len(ridges), len(values), n_sets) for k, v in out.items()}, \
        data.x_train.shape[-2]


def _double_descent_trained(scenario: Scenario) -> tuple[Rows, Figures]:
    """Capacity sweep of gradient-trained models, one call per group of similar
    capacities (:func:`shape_groups`): final train and test error vs parameters /
    (n_train x outputs), and test error per epoch.

    The threshold marked is where the parameters could fit every training
    target (``n_train x outputs``, Belkin et al. 2019); with label noise the
    test error peaks near it. Classification error is against the clean labels.
    """
    caps = scenario.sweep.capacity
    n_seeds = scenario.sweep.seeds
    # one call per group of similar widths (as the min-norm curves): masked to the widest
    # of one call, a 2..512 sweep spent 512 units on every member, 4x the work
    groups = shape_groups(caps)
    sweeps = [_sweep(dataclasses.replace(scenario, sweep=dataclasses.replace(
        scenario.sweep, capacity=group)), None, group) for group in groups]
    # the members of sorted unique widths, value-major, back in the order asked for
    at = np.searchsorted([c for group in groups for c in group], caps)

    def joined(parts: list[np.ndarray]) -> np.ndarray:
        stacked = np.concatenate(parts).reshape(-1, n_seeds, *parts[0].shape[1:])
        return stacked[at].reshape(-1, *parts[0].shape[1:])

    values = {k: joined([s.values[k] for s in sweeps]) for k in sweeps[0].values}
    history = joined([_val_history(s.result, s.values) for s in sweeps])
    model, data, result = sweeps[0].model, sweeps[0].data, sweeps[0].result
    shape = (len(caps), n_seeds)
    v = {k: a.reshape(shape) for k, a in values.items()}
    if metric_name(data.task) == "accuracy":
        name, final = "error", {"train": 1 - v["train_accuracy"],
                                "test (clean labels)": 1 - v["test_accuracy_clean"]}
        history = 1 - history
    else:
        name, final = "mse", {"train": v["train_mse"], "test (vs f)": v["test_risk"]}
    threshold = data.x_train.shape[-2] * model.n_out
    x = v["n_params"][:, 0] / threshold
    fig, axes = panels(2, size=(5.8, 4.2), title=scenario.title or "Double descent")
    CurveDisplay(x, final, xlabel=f"parameters / (n_train x {model.n_out} outputs)",
                 ylabel=f"{name} after training (mean, 1 std)", note=_note(values),
                 markers={"interpolation threshold": 1.0}).plot(ax=axes[0], logx=True)
    history = history.reshape(*shape, -1)
    shown = sorted({int(round(i)) for i in np.linspace(0, len(caps) - 1, 4)})
    CurveDisplay(np.asarray(result.epochs),
                 {f"{model.capacity} {caps[i]} ({x[i]:.2g}x)": history[i].T for i in shown},
                 xlabel="epoch", ylabel=f"validation {name} (mean, 1 std)", title="epoch-wise"
                 ).plot(ax=axes[1])
    return _rows({model.capacity: caps, "seed": range(n_seeds)}, values), {
        "double_descent": fig}


def _double_descent_figure(scenario, values, curves, noises, sample_wise, isotropic,
                           n_fit: int) -> Any:
    """The min-norm curves; ``n_fit`` is the training rows of a capacity sweep (a real
    data set's split, not ``data.n_train``)."""
    d = scenario.data
    # the threshold is where the fitted coefficients (not the capacity knob: an intercept
    # or a model narrower than data.p) number the training points
    n_params = np.median(next(iter(curves.values()))["n_params"], axis=1)
    threshold = n_params[0] if sample_wise else n_fit
    x = np.asarray(values, float) if sample_wise else n_params / threshold
    xlabel = ("n_train (threshold at n = parameters)" if sample_wise
              else "parameters / n_train")
    fig, axes = panels(3, size=(5, 4), title=scenario.title or "Double descent")
    # on every panel: the risk peaks, the training error reaches 0 and the norm peaks there
    at = {"interpolation threshold": 1.0 if not sample_wise else threshold}
    risk = CurveDisplay(x, {k: v["test_risk"] for k, v in curves.items()}, center="median",
                        xlabel=xlabel, ylabel="test risk (median, quartiles)",
                        markers=at).plot(ax=axes[0], logy=True)
    if isotropic:
        grid_x = np.linspace(x.min(), x.max(), 400)
        p, n = (threshold, grid_x) if sample_wise else (grid_x * n_fit, n_fit)
        gamma = p / n
        for i, noise in enumerate(noises):
            exact = theory.min_norm_risk(p, n, d.r2, noise**2)
            first = i == 0  # one legend entry per kind of curve
            risk.ax_.plot(grid_x, np.where(np.isfinite(exact), exact, np.nan), "k-", lw=1,
                          label="exact finite-n theory" if first else None)
            risk.ax_.plot(grid_x, theory.min_norm_risk_asymptotic(gamma, d.r2, noise**2), "k:",
                          lw=1, label="asymptotic theory" if first else None)
            risk.ax_.plot(grid_x, theory.optimal_ridge_risk(gamma, d.r2, noise**2), "k--",
                          lw=1, label="optimally tuned ridge (theory)" if first else None)
        top = max(np.nanmax(theory.optimal_ridge_risk(gamma, d.r2, s**2)) for s in noises)
        risk.ax_.set_ylim(top=30 * top + 1)
        risk.ax_.legend(frameon=False, fontsize="small")
    CurveDisplay(x, {k: v["train_mse"] for k, v in curves.items()}, center="median",
                 xlabel=xlabel, ylabel="training MSE (median, quartiles)",
                 markers=at).plot(ax=axes[1])
    CurveDisplay(x, {k: v["coef_norm2"] for k, v in curves.items()}, center="median",
                 xlabel=xlabel, ylabel="|coefficients|^2 (median, quartiles)",
                 markers=at).plot(ax=axes[2], logy=True)
    return fig


EXPERIMENTS: dict[str, Callable[[Scenario], tuple[Rows, Figures]]] = {
    "five_points": five_points,
    "capacity_curve": capacity_curve,
    "training_curves": training_curves,
    "early_stopping": early_stopping,
    "dropout": dropout,
    "validation_curve": validation_curve,
    "learning_curves": learning_curves,
    "remedies": remedies,
    "bias_variance": bias_variance,
    "double_descent": double_descent,
}
