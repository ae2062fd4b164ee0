"""The fused training loop: one jitted ``while_loop`` over epochs, vmapped over models.

Two levels of API sit on the same code, as in the lesson:

* low level: :func:`objective` gives a plain differentiable loss
  ``(params, state, x, y, key) -> scalar`` to use with ``jax.grad`` and optax;
* high level: :func:`fit` trains one model, or a leading "models" axis of them
  (seeds x data draws x hyperparameters) in one compiled call.

Per-member early stopping lives in the loop carry: a stopped member's
parameters stop changing, and the loop ends once every member has stopped
(``vmap`` of ``while_loop`` runs until all members' conditions are false).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from overfit._checks import (
    check_choice,
    check_int,
    check_key,
    check_range,
    is_concrete,
    one_edit_apart,
)
from overfit.chunks import run_chunks
from overfit.data import Dataset
from overfit.early_stopping import EarlyStopping, StopState, never
from overfit.losses import LOSSES, Loss
from overfit.models import Model, Params, State
from overfit.static import Static

Transform = optax.GradientTransformation
Optimizer = Transform | Callable[[Mapping[str, Array]], Transform]
TRAIN_HPARAMS = ("input_noise",)  # knobs the training step itself reads from ``hparams``
_WEIGHT = "train_weight"  # where ``fit(weight=...)`` travels, per member, inside ``hparams``
DEFAULT_OPTIMIZER = optax.adam(1e-2)  # one object, so default fits share compiled code


class History(NamedTuple):
    """Curves, each ``(..., epochs // eval_every)``; entries never run are NaN.

    ``*_loss`` is the training objective without penalties (``"mse"`` is half
    the mean squared error); ``*_metric`` is the accuracy for classification
    and the plain mean squared error for regression.
    """

    train_loss: Array
    val_loss: Array
    train_metric: Array
    val_metric: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns; with ``M`` keys every leaf has a leading ``M`` axis.

    With ``M`` keys the leaves are host NumPy arrays (the members ran in chunks,
    :func:`overfit.chunks.run_chunks`); with one key, or inside a caller's
    ``jit``, JAX arrays.

    Attributes:
        params, state: the trained model (the best epoch's parameters when an
            early-stopping rule with ``restore_best`` was given).
        history: per-epoch curves.
        best_epoch: epoch of the returned parameters (0-based; -1 for a member
            that diverged at its first evaluation).
        stop_epoch: last epoch trained (0-based; -1 for a member that diverged
            at its first evaluation).
        test_loss, test_metric: loss and metric of the returned parameters on
            the test split.
        diverged_epoch: epoch (0-based) after which the training loss was
            first NaN or inf, -1 for a member that never diverged. Such a member
            is frozen at its last finite evaluation (those are the parameters
            returned), its history is NaN from there on, and the rest train on.
        diverged_loss: that non-finite training loss (NaN or +-inf; NaN too
            for members that never diverged: test with ``diverged_epoch``).
        metric: ``"accuracy"`` or ``"mse"`` (static).
        eval_every: epochs between history entries (static).
    """

    params: Params
    state: State
    history: History
    best_epoch: Array
    stop_epoch: Array
    test_loss: Array
    test_metric: Array
    diverged_epoch: Array
    diverged_loss: Array
    metric: str = dataclasses.field(metadata=dict(static=True))
    eval_every: int = dataclasses.field(default=1, metadata=dict(static=True))

    @property
    def epochs(self) -> Array:
        """Epochs trained (1-based) at each history entry, ``(n_checks,)``."""
        n = self.history.train_loss.shape[-1]
        return (jnp.arange(n) + 1) * self.eval_every

    def __repr__(self) -> str:  # shapes, not every parameter
        shape = getattr(self.history.train_loss, "shape", ())
        if not shape:  # not arrays (a tree.map over the result): every field as it is
            fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                               for f in dataclasses.fields(self))
            return f"FitResult({fields})"
        members, checks = tuple(shape[:-1]), shape[-1]
        return (f"FitResult({f'members={members}' if members else 'one model'}, "
                f"epochs={checks * self.eval_every}, eval_every={self.eval_every}, "
                f"metric={self.metric!r}, params={jax.tree.map(np.shape, self.params)})")


def default_loss(model: Model, data: Dataset) -> str:
    """``"mse"`` for regression, ``"bce"`` for a one-logit classifier, else ``"ce"``."""
    return _task_loss(model, data.task)


def _task_loss(model: Model, task: str) -> str:
    if task == "regression":
        return "mse"
    return "bce" if model.n_out == 1 else "ce"


def metric_name(task: str) -> str:
    """The score reported for a task: ``"accuracy"`` (classification) or ``"mse"``."""
    return "accuracy" if task == "classification" else "mse"


def decision_threshold(loss: str | Loss) -> float:
    """Where a one-output classifier's output turns from class 0 to class 1: 0.5 for
    ``"mse"`` (square loss on the 0/1 labels, whose midpoint it is), else 0 (a logit,
    the sigmoid's midpoint; also for a loss given as a function)."""
    return 0.5 if loss == "mse" else 0.0


def trains_logits(loss: str | Loss) -> bool:
    """Whether a classifier trained with ``loss`` outputs logits: every loss but the
    square ones (``"mse"`` on the 0/1 labels, ``"mse_onehot"``: near-probabilities);
    a loss given as a function is taken for a cross-entropy."""
    return not (isinstance(loss, str) and loss in ("mse", "mse_onehot"))


def _check_task(model: Model, data: Dataset, loss: str | Loss) -> None:
    if not isinstance(loss, str):
        return
    check_choice("loss", loss, LOSSES)
    if loss in ("bce", "ce", "mse_onehot") and data.task != "classification":
        raise ValueError(f"loss={loss!r} needs classification data (integer labels); "
                         f"the data set is {data.task!r}: use loss='mse'.")
    if loss == "bce" and (model.n_out != 1 or data.n_classes != 2):
        raise ValueError(f"loss='bce' needs a one-output model and 2 classes; got n_out="
                         f"{model.n_out}, n_classes={data.n_classes}: use loss='ce'.")
    if loss == "mse" and data.task == "classification" and (
            model.n_out != 1 or data.n_classes != 2):
        raise ValueError(f"loss='mse' on class labels regresses the 0/1 label with one output; "
                         f"got n_out={model.n_out}, n_classes={data.n_classes}: use "
                         "loss='mse_onehot' (n_out == n_classes).")
    if loss in ("ce", "mse_onehot") and model.n_out != data.n_classes:
        raise ValueError(f"loss={loss!r} needs n_out == n_classes; got n_out={model.n_out}, "
                         f"n_classes={data.n_classes}.")


def _check_splits(model: Model, data: Dataset) -> None:
    """One target per input row in every split; class labels whole and in range; one
    output for regression. A ``(n, 1)`` target broadcast against ``(n,)`` outputs into
    an ``(n, n)`` loss (47x too large) without a word, and out-of-range labels gave a
    NaN loss reported as a divergence."""
    if data.task not in ("regression", "classification"):
        raise ValueError(f"data.task={data.task!r}; allowed: 'regression', 'classification'.")
    if data.task == "regression" and model.n_out != 1:
        raise ValueError(f"a regression model has one output; got model.n_out={model.n_out}.")
    if data.task == "classification" and data.n_classes < 2:
        raise ValueError(f"data.n_classes={data.n_classes}; classification needs >= 2.")
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        _check_targets(x, y, f"data.x_{split}", f"data.y_{split}")
        if data.task != "classification":
            continue
        dtype = jnp.result_type(y)
        if not (jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_):
            raise ValueError(f"data.y_{split} holds {dtype} values; class labels "
                             "are integers 0 .. n_classes - 1.")
        if is_concrete(y) and np.size(y):
            labels = np.asarray(y)
            bad = labels[(labels < 0) | (labels >= data.n_classes)]
            if bad.size:
                raise ValueError(f"data.y_{split} holds labels {np.unique(bad)[:5].tolist()} "
                                 f"outside 0 .. n_classes - 1 = {data.n_classes - 1}.")


def _check_targets(x: Array, y: Array, x_name: str, y_name: str) -> None:
    if jnp.shape(y) != jnp.shape(x)[:-1]:
        raise ValueError(f"{y_name} has shape {jnp.shape(y)}; allowed: {jnp.shape(x)[:-1]}, "
                         f"one target per row of {x_name} {jnp.shape(x)}.")


def _per_example(loss: str | Loss) -> Loss:
    if isinstance(loss, str):
        return LOSSES[check_choice("loss", loss, LOSSES)]
    return loss


def objective(model: Model, loss: str | Loss = "mse") -> Callable[..., Array]:
    """The low-level training objective of one model on one batch.

    Args:
        model: any model of :mod:`overfit.models`.
        loss: ``"mse"`` (HALF the mean squared error, whose gradient is the
            residual), ``"bce"``, ``"ce"``, ``"mse_onehot"``, or
            ``f(out, y) -> per-example losses``.

    Returns:
        ``f(params, state, x, y, key=None, weight=None) -> scalar``: the mean
        (optionally ``weight``-ed) per-example loss, with dropout active when a
        ``key`` is given. Differentiate it with ``jax.grad``.
    """
    with_outputs = _objective_and_outputs(model, loss)
    return lambda *args, **kwargs: with_outputs(*args, **kwargs)[0]


def _objective_and_outputs(model: Model, loss: str | Loss) -> Callable[..., tuple[Array, Array]]:
    """:func:`objective` that also returns the model outputs it scored (for ``has_aux``)."""
    per_example = _per_example(loss)

    def f(params, state, x, y, key=None, weight=None):
        out = model.apply(params, state, x, key=key, train=key is not None)
        return _mean(per_example(out, y), weight), out

    return f


def score_outputs(out: Array, y: Array, loss: str | Loss, task: str,
                  weight: Array | None = None) -> tuple[Array, Array]:
    """``(loss, metric)`` of model outputs ``out`` against ``y``; NaN on an empty split.

    ``weight`` (``(n,)``, >= 0) makes both weighted means: a 0/1 mask scores
    the points it keeps. A one-output classifier predicts class 1 where its
    output exceeds :func:`decision_threshold`; several outputs, their argmax.
    """
    if not y.shape[0]:
        return jnp.asarray(jnp.nan), jnp.asarray(jnp.nan)
    value = _mean(_per_example(loss)(out, y), weight)
    if task == "classification":
        pred = out > decision_threshold(loss) if out.ndim == 1 else jnp.argmax(out, axis=-1)
        return value, _mean(pred == y, weight)
    return value, _mean((out - y) ** 2, weight)


def _mean(values: Array, weight: Array | None) -> Array:
    """The mean of ``values``, or their ``weight``-ed mean, in the float width of ``values``."""
    if weight is None:
        return jnp.mean(values)
    w = jnp.asarray(weight, jnp.result_type(values.dtype, float))  # not a wider float
    return jnp.sum(w * values) / jnp.sum(w)


def evaluate(model: Model, params: Params, state: State, x: Array, y: Array,
             *, loss: str | Loss | None = None, task: str | None = None
             ) -> tuple[Array, Array]:
    """``(loss, metric)`` of one model on ``(x, y)`` in evaluation mode.

    Args:
        x: inputs ``(n, d)``; y: targets ``(n,)``: floats (regression) or
            integer / bool class labels (classification).
        loss: the loss the model was trained with; default as :func:`fit`
            picks it (:func:`default_loss`: ``"mse"``, else ``"bce"`` for one
            output, ``"ce"`` for several). It also sets where a one-output
            classifier's output turns to class 1 (:func:`decision_threshold`).
        task: ``"regression"`` or ``"classification"``; default from ``y``'s dtype.

    Returns:
        The loss and the metric: accuracy for classification, the mean squared
        error for regression. An empty split gives NaN.
    """
    if task is None:
        labels = jnp.issubdtype(jnp.result_type(y), jnp.integer) or jnp.issubdtype(
            jnp.result_type(y), jnp.bool_)
        task = "classification" if labels else "regression"
    check_choice("task", task, ("regression", "classification"))
    _check_targets(x, y, "x", "y")
    if task == "regression" and model.n_out != 1:  # (n, k) outputs against (n,) targets
        raise ValueError(f"a regression model has one output; this one has n_out="
                         f"{model.n_out}: pass class labels (or task='classification').")
    loss = _task_loss(model, task) if loss is None else loss
    return score_outputs(model.apply(params, state, x), y, loss, task)


class _Member(NamedTuple):
    """One member's training state between epochs."""

    params: Params
    opt_state: Any
    best_params: Params | None  # only tracked when the rule restores the best
    stop: StopState
    diverged: Array  # evaluation at which the training loss was first non-finite, or -1
    diverged_loss: Array
    grads: Params | None = None  # the next step's gradient, from the last evaluation


def _batches(key: Array, n: int, batch_size: int) -> tuple[Array, Array]:
    """Index and weight arrays ``(n_batches, batch_size)`` of a reshuffled epoch.

    The last batch is padded with weight-0 entries, so every sample is seen once
    per epoch and shapes stay static.
    """
    n_batches = -(-n // batch_size)
    perm = jax.random.permutation(key, n)
    pad = n_batches * batch_size - n
    idx = jnp.concatenate([perm, perm[:pad]]).reshape(n_batches, batch_size)
    weight = (jnp.arange(n_batches * batch_size) < n).reshape(n_batches, batch_size)
    return idx, weight.astype(jnp.float32)


class _Trainer(NamedTuple):
    """The per-member pieces of the loop, each written for ONE model.

    ``reuse``: full-batch training whose forward pass is the evaluation's (no
    dropout, no input noise). Then each evaluation computes the training loss
    together with its gradient, and the next epoch's first step takes that
    gradient instead of running the same forward pass again: the history costs
    one forward pass over the validation points per evaluation, not over both
    splits. The numbers are those of the plain loop up to float round-off.
    """

    config: _Config
    reuse: bool = False

    def gradient(self, params: Params, state: State, x: Array, y: Array,
                 key: Array | None = None, weight: Array | None = None) -> tuple[Params, Array]:
        """``(grads, out)``: the objective's gradient and the outputs it scored.

        Full-batch square-loss training of a model with a fused kernel
        (``Model.mse_grad``) takes the kernel unless the points are weighted
        (the kernel has no weights): ``reuse`` guarantees that no key changes
        the objective there.
        """
        model, loss = self.config.model, self.config.loss
        if self.reuse and loss == "mse" and model.mse_grad is not None and weight is None:
            return model.mse_grad(params, state, x, y)
        return jax.grad(_objective_and_outputs(model, loss), has_aux=True)(
            params, state, x, y, key, weight)

    def optimizer(self, hparams: Mapping[str, Array]) -> Transform:
        opt = self.config.optimizer
        return opt if isinstance(opt, Transform) else opt(hparams)

    def init(self, key: Array, hparams: Mapping[str, Array]) -> tuple[_Member, State]:
        model = self.config.model
        params, state = model.init(key, **{k: v for k, v in hparams.items() if k in model.hparams})
        opt_state = self.optimizer(hparams).init(params)
        best = params if self.config.stopper.restore_best else None
        return _Member(params, opt_state, best, self.config.stopper.init(),
                       jnp.asarray(-1, jnp.int32), jnp.asarray(jnp.nan, jnp.float32)), state

    def step(self, params, opt_state, state, key, x, y, weight, hparams):
        k_drop, k_noise = jax.random.split(key)
        if "input_noise" in hparams:
            x = x + hparams["input_noise"] * jax.random.normal(k_noise, x.shape)
        grads = self.gradient(params, state, x, y, k_drop, weight)[0]
        return self.update(params, opt_state, grads, hparams)

    def update(self, params, opt_state, grads, hparams):
        updates, opt_state = self.optimizer(hparams).update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def outputs_and_grads(self, params, state, data: Dataset, weight: Array | None
                          ) -> tuple[Array, Array, Params]:
        """Train and validation outputs and the training gradient at ``params`` (``reuse``)."""
        # the step's own objective, in evaluation mode (no key): its outputs are the evaluation's
        grads, out = self.gradient(params, state, data.x_train, data.y_train, weight=weight)
        return out, self.config.model.apply(params, state, data.x_val), grads

    def train_epoch(self, params, opt_state, state, key, data: Dataset, hparams):
        n, batch_size = data.x_train.shape[0], self.config.batch_size
        if batch_size is None or batch_size >= n:
            return self.step(params, opt_state, state, key, data.x_train, data.y_train,
                             hparams.get(_WEIGHT), hparams)
        k_perm, k_steps = jax.random.split(key)
        idx, weight = _batches(k_perm, n, batch_size)

        def body(carry, xs):
            k, i, w = xs
            return self.step(*carry, state, k, data.x_train[i], data.y_train[i], w, hparams), None

        keys = jax.random.split(k_steps, idx.shape[0])
        return jax.lax.scan(body, (params, opt_state), (keys, idx, weight))[0]

    def measure(self, params, state, x, y, task) -> tuple[Array, Array]:
        return evaluate(self.config.model, params, state, x, y, loss=self.config.loss, task=task)

    def epoch(self, member: _Member, state: State, check: Array, key: Array, data: Dataset,
              hparams: Mapping[str, Array]) -> tuple[_Member, tuple[Array, ...]]:
        """``eval_every`` epochs of one member, then one check of the stopping rule.

        Once a member has stopped, its history entries are NaN and the
        parameters it will return no longer change; ``check`` counts evaluations.
        """
        stopper, every = self.config.stopper, self.config.eval_every

        def one(e, carry):
            key_e = jax.random.fold_in(key, check * every + e)
            return self.train_epoch(*carry, state, key_e, data, hparams)

        carry = (member.params, member.opt_state)
        if self.reuse:
            carry = self.update(*carry, member.grads, hparams)
            if every > 1:
                carry = jax.lax.fori_loop(1, every, one, carry)
            params, opt_state = carry
            out_tr, out_va, grads = self.outputs_and_grads(params, state, data,
                                                           hparams.get(_WEIGHT))
        else:
            params, opt_state = (one(0, carry) if every == 1
                                 else jax.lax.fori_loop(0, every, one, carry))
            # one forward pass over train and validation points together
            n = data.x_train.shape[0]
            out = self.config.model.apply(params, state,
                                          jnp.concatenate([data.x_train, data.x_val]))
            out_tr, out_va, grads = out[:n], out[n:], None
        tr = score_outputs(out_tr, data.y_train, self.config.loss, data.task,
                           hparams.get(_WEIGHT))
        va = score_outputs(out_va, data.y_val, self.config.loss, data.task)
        values = tuple(jnp.asarray(v, jnp.float32) for v in (tr[0], va[0], tr[1], va[1]))
        # a member whose training loss turns NaN or inf keeps its last finite
        # parameters and is flagged; the rest of the sweep trains on. A member the
        # rule has stopped is finished: what its discarded steps do is no divergence
        done = member.stop.stopped  # always False under never()
        hit = (member.diverged < 0) & ~done & ~jnp.isfinite(values[0])
        frozen = (member.diverged >= 0) | hit
        params = _select(frozen, member.params, params)
        diverged = jnp.where(hit, check, member.diverged)
        diverged_loss = jnp.where(hit, values[0], member.diverged_loss)
        if stopper is never():  # nothing else can stop: no copies of the best parameters
            return _Member(params, opt_state, None, member.stop, diverged, diverged_loss,
                           grads), tuple(
                jnp.where(frozen, jnp.nan, v) for v in values)
        stop = stopper.update(member.stop, check, _monitored(stopper.monitor, values),
                              _monitored(stopper.monitor.replace("val_", "train_"), values))
        stop = _select(frozen, member.stop, stop)  # the rule never sees a diverged evaluation
        # A stopped member's rule state no longer changes (the rules guard it), so
        # nothing can improve on its best; its parameters are frozen too: a rule that
        # stopped before any monitored value improved (all NaN) has no best to restore,
        # and the stop epoch's parameters are returned, not what later steps of a batch
        # made of them. The optimizer state of a stopped member is never used again.
        params = _select(done, member.params, params)
        best = (_select(stop.best_epoch == check, params, member.best_params)
                if stopper.restore_best else None)
        return _Member(params, opt_state, best, stop, diverged, diverged_loss, grads), tuple(
            jnp.where(done | frozen, jnp.nan, v) for v in values)

    def finish(self, member: _Member, state: State, last: Array, data: Dataset) -> tuple:
        """Pick the returned parameters; convert check counts to 0-based epochs."""
        stopper, every = self.config.stopper, self.config.eval_every
        stop = jnp.where(member.stop.stopped, member.stop.stop_epoch, last)
        # a diverged member last trained at its last finite evaluation (-1: none)
        stop = jnp.where(member.diverged >= 0, jnp.minimum(stop, member.diverged - 1), stop)
        # without restoring, the returned parameters are those of the last epoch trained
        params, best = member.params, stop
        if stopper.restore_best:
            # a rule that never saw a monitored evaluation (start_from_epoch beyond
            # the run) has nothing to restore: the last parameters stand, as in Keras
            restored = member.stop.best_epoch >= 0
            params = _select(restored, member.best_params, params)
            best = jnp.where(restored, jnp.minimum(member.stop.best_epoch, stop), stop)
        diverged = jnp.where(member.diverged >= 0, (member.diverged + 1) * every - 1, -1)
        return (params, (best + 1) * every - 1, (stop + 1) * every - 1,
                *self.measure(params, state, data.x_test, data.y_test, data.task),
                diverged, member.diverged_loss)


def _shares_forward(config: _Config, data: Dataset, hparams: Mapping[str, Array]) -> bool:
    """Whether a training step's forward pass is the evaluation's (see ``_Trainer``)."""
    n = data.x_train.shape[-2]
    if "input_noise" in hparams or (config.batch_size is not None and config.batch_size < n):
        return False
    return _probe(config.model, data.x_train.shape[-2:], data.x_train.dtype)


def check_inputs(model: Model, data: Dataset) -> None:
    """Refuse, by name, a model built for another number of inputs than ``data``'s."""
    _probe(model, data.x_train.shape[-2:], data.x_train.dtype)


@functools.lru_cache(maxsize=64)
def _probe(model: Model, x_shape: tuple[int, ...], x_dtype: Any) -> bool:
    """Trace ``model`` once on rows of this shape, shapes only.

    Refuses, by name, a model built for another number of inputs (it would otherwise
    fail deep inside tracing); returns whether ``apply`` in training mode traces to the
    evaluation-mode program (see ``_Trainer``).
    """
    params, state = jax.eval_shape(model.init, jax.random.key(0))
    args = (params, state, jax.ShapeDtypeStruct(x_shape, x_dtype),
            jax.eval_shape(lambda: jax.random.key(0)))
    try:
        evaluate = jax.make_jaxpr(lambda p, s, x, k: model.apply(p, s, x))(*args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the model does not take data.x_train rows of {x_shape[-1]} "
                         f"feature(s) (was it built for another number of inputs?): {e}"
                         ) from None
    try:
        train = jax.make_jaxpr(lambda p, s, x, k: model.apply(p, s, x, key=k, train=True))(*args)
    except Exception:  # noqa: BLE001 - a model this probe cannot trace gets the plain loop
        return False
    # the printed program names array constants without their values: compare those too
    return str(train) == str(evaluate) and len(train.consts) == len(evaluate.consts) and all(
        np.array_equal(a, b) for a, b in zip(train.consts, evaluate.consts))


def _select(pred: Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _monitored(monitor: str, values: tuple[Array, Array, Array, Array]) -> Array:
    """Pick ``monitor`` (e.g. ``"val_accuracy"``) from (train/val loss, train/val metric)."""
    split, _, kind = monitor.partition("_")
    return values[{"train": 0, "val": 1}[split] + (0 if kind == "loss" else 2)]


def _is_key_batch(key: Array) -> bool:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2  # raw uint32 keys: (2,) one, (M, 2) many


def fit(
    model: Model,
    data: Dataset,
    *,
    key: Array,
    optimizer: Optimizer | None = None,
    loss: str | Loss | None = None,
    epochs: int = 100,
    batch_size: int | None = None,
    hparams: Mapping[str, Any] | None = None,
    weight: Array | None = None,
    early_stopping: EarlyStopping | None = None,
    eval_every: int = 1,
    chunk_size: int | None = None,
    devices: Sequence[Any] | None = None,
    store: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> FitResult:
    """Train one model, or many in one compiled call.

    A single key trains one model. A batch of ``M`` keys, shape ``(M,)``
    (``jax.random.split(key, M)``), trains ``M`` members at once; then any of
    ``data`` (leaves with a leading ``M`` axis: ``data.x_train`` is
    ``(M, n, d)``) and ``hparams`` (leaves of shape ``(M,)``) may be per member,
    and whatever has no leading axis is shared.

    Args:
        model: from :mod:`overfit.models`. On a CUDA GPU, full-batch square-loss
            training of a model with ``mse_grad`` (an MLP) takes its gradient
            from that fused kernel (:mod:`overfit.kernels`), unless ``weight``
            is given or training differs from evaluation (dropout, input
            noise): autodiff then.
        data: a :class:`~overfit.data.Dataset`.
        key: PRNG key(s): initialisation, shuffling, dropout and input noise.
        optimizer: an optax transformation, or a function of the member's
            ``hparams`` returning one (to sweep a learning rate or penalty
            under vmap). Default ``optax.adam(1e-2)``. Compiled code is reused
            by a later call with an equal optimizer, model, loss and stopping
            rule, even if freshly built (:class:`overfit.static.Static`).
        loss: ``"mse"``, ``"bce"``, ``"ce"``, ``"mse_onehot"`` (square loss on one-hot
            labels) or ``f(out, y) -> per-example``;
            default from the task (:func:`default_loss`).
        epochs: training budget; one epoch is one pass over the training split.
        batch_size: minibatch size with per-epoch reshuffling; None = full batch.
        hparams: per-member knobs: model ones (``model.hparams``, e.g.
            ``degree``, ``width``, ``drop_rate``) go to ``model.init``;
            ``input_noise`` is the std of Gaussian noise added to the training
            inputs at every step; the whole mapping, plus a per-member
            ``"key"`` (for :func:`overfit.regularize.gradient_noise`), goes to a
            callable ``optimizer``.
        weight: per-point training weights >= 0, ``(n_train,)`` shared or
            ``(M, n_train)`` per member, for full-batch training: the training
            objective and the training loss and metric are weighted means. A
            0/1 mask trains on the points it keeps, exactly as if the others
            were absent, so training sets of several sizes padded to one shape
            (:func:`overfit.experiments.draw_sized`) train in one compiled call.
        early_stopping: a rule from :mod:`overfit.early_stopping`, or None.
            It is checked at every evaluation, so ``patience`` counts evaluations.
        eval_every: epochs between evaluations of the train / validation loss
            and metric; must divide ``epochs``. An evaluation costs a forward
            pass over the validation split when the fit is full-batch without
            dropout or input noise (the training loss and the next step's
            gradient come from one pass), over both splits otherwise.
        chunk_size: with ``M`` members, at most how many train per compiled
            call (rounded up to a multiple of the device count); None sizes
            chunks from a memory estimate (half the free device memory, and on
            a CPU twice its cache; see :func:`overfit.chunks.chunk_size_for`).
            A chunk that runs out of device memory is halved and retried.
        devices: each chunk is split evenly across these (default: every
            local device, ``jax.local_devices()``); the results do not depend
            on the count beyond float round-off.
        store: a folder where finished chunks are written as they complete;
            calling again with the same arguments resumes from them (see
            :func:`overfit.chunks.run_chunks`, also for several processes).
            Inside a caller's ``jit`` the members run as one traced program:
            ``chunk_size``, ``devices`` and ``progress`` have no effect there,
            and ``store`` is an error.
        progress: a progress bar over the members (None: only when there is
            more than one chunk and the run lasts over 2 s).

    Returns:
        A :class:`FitResult`; with ``M`` members every leaf has a leading ``M``
        axis and ``history`` curves are ``(M, epochs // eval_every)`` (one value
        per evaluation, float32 whatever the precision).
    """
    epochs = check_int("epochs", epochs, lo=1)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, lo=1)
    eval_every = check_int("eval_every", eval_every, lo=1)
    if epochs % eval_every:
        raise ValueError(f"eval_every={eval_every} must divide epochs={epochs}.")
    loss = default_loss(model, data) if loss is None else loss
    _check_task(model, data, loss)
    _check_splits(model, data)
    reserved = sorted({"key", _WEIGHT} & set(hparams or {}))
    if reserved:  # fit fills them in itself: a user's value would be overwritten or unchecked
        raise ValueError(f"hparams {reserved} are reserved (fit passes a callable optimizer "
                         "its 'key'; per-point weights go in weight=).")
    # strong dtypes: a Python float (weakly typed) and a float32 array of the same
    # values would otherwise be two jit cache entries, i.e. a recompile
    hparams = {k: jnp.asarray(v, jnp.asarray(v).dtype) for k, v in (hparams or {}).items()}
    check_range("input_noise", hparams.get("input_noise", 0.0), lo=0.0)
    optimizer = _check_optimizer(DEFAULT_OPTIMIZER if optimizer is None else optimizer)
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise ValueError(f"early_stopping must be a rule such as of.patience(10) or "
                         f"of.prechelt('GL', 5); got {early_stopping!r:.60}.")
    # a callable optimizer may take knobs of its own: any name passes then
    check_model_hparams(model, hparams, others=TRAIN_HPARAMS if isinstance(
        optimizer, Transform) else None, note=" and the optimizer takes none")
    _check_members(key, data, hparams, model.hparams)
    _check_optimizer_knobs(optimizer, hparams, _is_key_batch(key))
    check_inputs(model, data)
    if weight is not None:
        hparams = {**hparams, _WEIGHT: _check_weight(weight, data, batch_size, key)}
        data = _zero_dropped_rows(data, hparams[_WEIGHT])
    stopper = never() if early_stopping is None else early_stopping
    if stopper.monitor.endswith(("accuracy", "mse")):
        metric = metric_name(data.task)
        if not stopper.monitor.endswith(metric):
            raise ValueError(f"early_stopping monitor={stopper.monitor!r} does not fit "
                             f"{data.task} data, whose metric is {metric!r}.")
    if stopper is not never() and stopper.monitor.startswith("val_") and not data.x_val.shape[-2]:
        # every check would be NaN: a patience rule stops at once, Prechelt's never
        raise ValueError(f"early_stopping monitor={stopper.monitor!r} needs validation points; "
                         "the data set has none (n_val=0): draw some or monitor 'train_loss'.")
    if _is_key_batch(key):
        axes = (0 if data.x_train.ndim == 3 else None,
                tuple((k, 0 if jnp.ndim(v) >= 1 else None) for k, v in sorted(hparams.items())))
    else:
        axes = None
    # compared by structure: a fresh but equal optimizer or model reuses the compiled code
    config = Static(_Config(model, loss, optimizer, epochs, batch_size, stopper, eval_every,
                            axes))
    if axes is None:
        return _fit_one(key, data, hparams, config=config)
    members, shared = _split_members(key, data, hparams, axes)
    if not is_concrete((members, shared)):  # inside the caller's jit: one traced program
        if store is not None:  # nothing is written from inside a trace: refuse, not skip
            raise ValueError(f"store={str(store)!r} cannot be written from inside a jit-"
                             "compiled function (the members run as one traced program "
                             "there): call fit outside jit to store and resume chunks.")
        return _member_program(config)(members, shared)
    return run_chunks(_member_program(config), members, shared=shared, chunk_size=chunk_size,
                      devices=jax.local_devices() if devices is None else devices,
                      store=store, progress=progress)


def _check_weight(weight: Any, data: Dataset, batch_size: int | None, key: Array) -> Array:
    """``fit``'s training weights as a float array, one row per member of a batch."""
    n = data.x_train.shape[-2]
    if batch_size is not None and batch_size < n:
        raise ValueError(f"weight= needs full-batch training; got batch_size={batch_size} "
                         f"< n_train={n} (use batch_size=None).")
    weight = jnp.asarray(weight, data.x_train.dtype)
    check_range("weight", weight, lo=0.0)
    if not _is_key_batch(key):
        shapes = [(n,)]
    else:
        shapes = [(n,), (key.shape[0], n)]
        if weight.shape == (n,):  # shared: every member gets the same row
            weight = jnp.broadcast_to(weight, (key.shape[0], n))
    if weight.shape not in shapes:
        raise ValueError(f"weight has shape {weight.shape}; allowed: "
                         f"{' or '.join(map(str, shapes))} (members x training points).")
    if is_concrete(weight):  # its weighted mean is 0/0: NaN, which reads as a divergence
        empty = np.flatnonzero(np.asarray(weight).reshape(-1, n).sum(axis=1) == 0)
        if empty.size:
            raise ValueError(f"weight keeps no training point for member(s) "
                             f"{empty.tolist()[:8]}: every row needs a positive weight.")
    return weight


def _zero_dropped_rows(data: Dataset, weight: Array) -> Dataset:
    """The training rows no member keeps (weight 0) set to 0, once per fit: a dropped row
    holding NaN (or inputs that overflow) would reach the loss and its gradient as
    0 * NaN = NaN. Shared data keeps one copy: a row some member keeps stays as it is."""
    dead = weight == 0  # (n,) or (M, n)
    if data.x_train.ndim == 2 and dead.ndim == 2:
        dead = jnp.all(dead, axis=0)
    zero = jnp.zeros((), data.x_train.dtype)
    return dataclasses.replace(
        data, x_train=jnp.where(dead[..., None], zero, data.x_train),
        y_train=jnp.where(dead.reshape(dead.shape + (1,) * (data.y_train.ndim - dead.ndim)),
                          jnp.zeros((), data.y_train.dtype), data.y_train))


def _check_optimizer(optimizer: Any) -> Optimizer:
    """An optax transformation, or a function of the hparams returning one; refuses by
    name the factory itself (``optax.adam``, which fit would call with the hparams)."""
    if isinstance(optimizer, Transform):
        return optimizer
    if not callable(optimizer):
        raise ValueError(f"optimizer must be an optax optimizer such as optax.adam(1e-2), or "
                         f"a function of the hparams returning one; got {optimizer!r:.60}.")
    try:
        first = next(iter(inspect.signature(optimizer).parameters), None)
    except (TypeError, ValueError):  # a builtin or C callable: it will say so when called
        return optimizer
    if first == "learning_rate":
        name = getattr(optimizer, "__name__", "the optimizer")
        raise ValueError(f"optimizer={name} is optax's factory; pass the optimizer it makes, "
                         f"e.g. optax.{name}(1e-2) (or a function of the hparams returning "
                         "one).")
    return optimizer


def _check_optimizer_knobs(optimizer: Optimizer, hparams: Mapping[str, Array],
                           batch: bool) -> None:
    """Build a callable optimizer on the extreme concrete values of each per-member knob
    (the others at member 0's): its transforms check their own ranges (l2 >= 0, a scalar
    learning rate), but skip traced values, and inside fit every value is traced (a
    negative l2 per member trained on, growing the weights). Builds, runs nothing."""
    if isinstance(optimizer, Transform) or not is_concrete(hparams):
        return
    first = {k: v[0] if batch and jnp.ndim(v) else v for k, v in hparams.items()}
    first["key"] = jax.random.key(0)
    optimizer(first)
    for name, values in hparams.items():
        if not (batch and jnp.ndim(values) == 1) or jax.dtypes.issubdtype(
                values.dtype, jax.dtypes.prng_key):
            continue
        # a range check fails at an extreme or at a non-finite value: a few builds, however
        # many members (np.unique counts every NaN as one)
        v = np.asarray(values, float)
        finite = v[np.isfinite(v)]
        edges = [finite.min(), finite.max()] if finite.size else []
        for value in np.unique(np.concatenate([v[~np.isfinite(v)], edges])):
            optimizer({**first, name: jnp.asarray(value, values.dtype)})


def _check_members(key: Array, data: Dataset, hparams: Mapping[str, Array],
                   model_hparams: Sequence[str]) -> None:
    """Every per-member input has the keys' leading ``M`` axis; one key takes none.

    Without this a shorter ``hparams`` leaf silently drops members and a longer
    one fails deep inside the chunking with a bare IndexError.
    """
    check_key("key", key, batch=True)
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if jnp.ndim(key) > (1 if typed else 2):  # raw key data has a trailing axis of its own
        raise ValueError(f"key must be one PRNG key or a 1-D batch of M keys "
                         f"(jax.random.split(key, M)); got keys of shape {jnp.shape(key)}.")
    leaves = jax.tree_util.tree_flatten_with_path(data)[0]
    fields = {"data" + jax.tree_util.keystr(path): jnp.shape(a) for path, a in leaves}
    if not _is_key_batch(key):
        # knobs of the model and of fit itself are one value per model; what only a
        # callable optimizer reads (a schedule's table, say) may have any shape
        knobs = {k: v for k, v in hparams.items() if k in (*model_hparams, *TRAIN_HPARAMS)}
        if data.x_train.ndim != 2 or any(jnp.ndim(v) for v in knobs.values()):
            shapes = {**{k: s for k, s in fields.items() if k.endswith("x_train")},
                      **{f"hparams[{k!r}]": jnp.shape(v) for k, v in knobs.items()}}
            raise ValueError(f"one key trains one model: data.x_train must be (n, d) and every "
                             f"hparams value a scalar; got {shapes}. To train M members, pass "
                             "M keys (jax.random.split(key, M)).")
        return
    m = key.shape[0]
    sizes = {f"hparams[{k!r}]": jnp.shape(v)[0] for k, v in hparams.items() if jnp.ndim(v)}
    if data.x_train.ndim == 3:
        sizes.update({k: s[0] for k, s in fields.items() if s})
    wrong = {k: s for k, s in sizes.items() if s != m}
    if wrong:
        raise ValueError(f"key holds M={m} keys, so per-member inputs need a leading axis of "
                         f"{m}; got " + ", ".join(f"{k}: {s}" for k, s in wrong.items()) + ".")


def check_model_hparams(model: Model, hparams: Mapping[str, Any], *,
                        others: Sequence[str] | None = None, note: str = "") -> None:
    """Run the model's own range checks on every concrete per-member value.

    ``init`` checks a Python value but not a traced one, and inside ``fit``
    every value is traced: check each distinct value here, shapes only. Given
    ``others``, a name that is neither the model's knob nor one of them is
    refused (``note`` ends the message); None lets any other name through.
    """
    if others is not None:
        unknown = sorted(set(hparams) - set(model.hparams) - set(others))
        if unknown:
            raise ValueError(f"hparams {unknown} are not knobs of this model "
                             f"(allowed: {[*model.hparams, *others]}){note}.")
    else:  # a callable optimizer may read any name, but not a misspelt model knob
        for name in sorted(set(hparams) - set(model.hparams) - set(TRAIN_HPARAMS)):
            close = [k for k in model.hparams if one_edit_apart(name, k)]
            if close:
                raise ValueError(f"hparams[{name!r}] is not a knob of this model; did you "
                                 f"mean {close[0]!r}? (the optimizer may read other names, "
                                 "but not one a typo away from a model's)")
    key = jax.random.key(0)
    for name in set(hparams) & set(model.hparams):
        if not is_concrete(hparams[name]):
            continue
        for value in np.unique(np.asarray(hparams[name])).tolist():
            jax.eval_shape(functools.partial(model.init, key, **{name: value}))


class _Config(NamedTuple):
    """Everything static about a fit: the jit cache key, wrapped in :class:`Static`."""

    model: Model
    loss: str | Loss
    optimizer: Optimizer
    epochs: int
    batch_size: int | None
    stopper: EarlyStopping
    eval_every: int
    axes: tuple | None  # vmap axes of (data, hparams items); None trains one model


def _split_members(key: Array, data: Dataset, hparams: Mapping[str, Array],
                   axes: tuple) -> tuple[dict, dict]:
    """What has a leading members axis (keys, per-member data and knobs) vs what is shared."""
    data_axis, hp_axes = axes
    per = {k for k, a in hp_axes if a == 0}
    members = {"key": key, "data": data if data_axis == 0 else None,
               "hparams": {k: v for k, v in hparams.items() if k in per}}
    shared = {"data": None if data_axis == 0 else data,
              "hparams": {k: v for k, v in hparams.items() if k not in per}}
    return members, shared


@functools.lru_cache(maxsize=128)
def _member_program(config: Static[_Config]) -> Callable[[dict, dict], FitResult]:
    """``fit`` of a chunk of members, as :func:`overfit.chunks.run_chunks` runs it."""

    def program(members: dict, shared: dict) -> FitResult:
        data = shared["data"] if members["data"] is None else members["data"]
        return _fit(members["key"], data, {**shared["hparams"], **members["hparams"]},
                    config=config.value)

    return program


@functools.partial(jax.jit, static_argnames="config")
def _fit_one(key: Array, data: Dataset, hparams: Mapping[str, Any], *,
             config: Static[_Config]) -> FitResult:
    return _fit(key, data, hparams, config=config.value)


def _fit(key: Array, data: Dataset, hparams: Mapping[str, Any], *, config: _Config) -> FitResult:
    # The epoch loop runs OUTSIDE the vmap: vmap of a while_loop would select
    # every carried buffer (history included) for every member at every epoch;
    # here only a stopped member's parameters are masked, and the loop ends as
    # soon as every member has stopped.
    single = config.axes is None
    data_axis, hp_axes = (None, ()) if single else config.axes
    trainer = _Trainer(config, _shares_forward(config, data, hparams))
    hp_axes = {k: 0 if single else a for k, a in hp_axes} or {k: None for k in hparams}
    keys = key[None] if single else key
    k_init, k_train = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    if not isinstance(config.optimizer, Transform):
        # a callable optimizer may hold stochastic transforms (gradient noise):
        # give each member its own key, derived apart from init and training
        hparams = {**hparams, "key": jax.vmap(lambda k: jax.random.fold_in(k, 7))(k_init)}
        hp_axes = {**hp_axes, "key": 0}
    members, state = jax.vmap(trainer.init, in_axes=(0, hp_axes))(k_init, hparams)
    axes = (0, data_axis, hp_axes)
    if trainer.reuse:
        grads = jax.vmap(
            lambda m, s, d, h: trainer.outputs_and_grads(m.params, s, d, h.get(_WEIGHT))[2],
            in_axes=(0, 0, data_axis, hp_axes))(members, state, data, hparams)
        members = members._replace(grads=grads)
    epoch_fn = jax.vmap(trainer.epoch, in_axes=(0, 0, None, *axes))
    n_members, checks = keys.shape[0], config.epochs // config.eval_every
    nan = jnp.full((n_members, checks), jnp.nan, jnp.float32)

    def cond(carry):
        check, members, _ = carry
        return (check < checks) & ~jnp.all(members.stop.stopped | (members.diverged >= 0))

    def body(carry):
        epoch, members, history = carry
        members, values = epoch_fn(members, state, epoch, k_train, data, hparams)
        history = History(*(h.at[:, epoch].set(v) for h, v in zip(history, values)))
        return epoch + 1, members, history

    carry = (jnp.asarray(0, jnp.int32), members, History(nan, nan, nan, nan))
    last, members, history = jax.lax.while_loop(cond, body, carry)
    finish = jax.vmap(trainer.finish, in_axes=(0, 0, None, data_axis))
    params, best_epoch, stop_epoch, *tail = finish(members, state, last - 1, data)
    metric = metric_name(data.task)
    result = FitResult(params, state, history, best_epoch, stop_epoch, *tail, metric,
                       config.eval_every)
    return jax.tree.map(lambda a: a[0], result) if single else result
