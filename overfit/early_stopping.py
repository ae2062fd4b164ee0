"""Early stopping as pure state updates that live in the training loop's carry.

Written for ONE model; under ``vmap`` each member stops on its own. Two rule
families share one state and one protocol (``init``, ``update``), in the
spirit of optax transforms:

* :func:`patience` -- Keras ``EarlyStopping`` semantics: an epoch improves when
  ``current < best - min_delta`` (mode min); training stops after ``patience``
  consecutive epochs without improvement (flax stops one later: not here).
* :func:`prechelt` -- Prechelt (1998): GL_alpha, PQ_alpha, UP_s on strips of
  ``k`` epochs.

Epochs are counted from 0. ``best_epoch`` is the epoch whose parameters are
restored (-1 while no monitored epoch has improved; if none ever does, as when
``start_from_epoch`` lies beyond the run, nothing is restored, as in Keras, and
when every monitored value is NaN the stop epoch's parameters are returned, where
Keras would restore the first monitored epoch's); ``stop_epoch`` the last epoch
trained (or -1 while running).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from jax import Array

from overfit._checks import check_choice, check_int, check_range

MONITORS = ("val_loss", "train_loss", "val_accuracy", "train_accuracy", "val_mse", "train_mse")


class StopState(NamedTuple):
    """Per-member stopping state (all scalars but ``strip``)."""

    best: Array  # best monitored value, sign-adjusted so smaller is better
    best_epoch: Array
    wait: Array  # epochs since the last improvement (Keras' counter)
    stopped: Array
    stop_epoch: Array
    strip: Array  # (k,) last k training errors, newest last (Prechelt's P_k)
    strip_val: Array  # validation error at the previous strip end (UP_s)
    ups: Array  # successive strips in which the validation error rose


class EarlyStopping(NamedTuple):
    """A stopping rule: ``update(state, epoch, value, train_value) -> state``.

    ``value`` is the monitored quantity at the end of ``epoch``; ``train_value``
    the training error Prechelt's PQ rule compares it with. Once ``stopped`` is
    set, ``update`` must return the state unchanged (``fit`` relies on it to
    leave a stopped member's best parameters alone).
    """

    init: Callable[[], StopState]
    update: Callable[[StopState, Array, Array, Array], StopState]
    monitor: str
    restore_best: bool


def _init(k: int = 1) -> Callable[[], StopState]:
    def init() -> StopState:
        zero = jnp.asarray(0, jnp.int32)
        return StopState(
            best=jnp.asarray(jnp.inf, jnp.float32),
            best_epoch=jnp.asarray(-1, jnp.int32),
            wait=zero,
            stopped=jnp.asarray(False),
            stop_epoch=jnp.asarray(-1, jnp.int32),
            strip=jnp.full((k,), jnp.nan, jnp.float32),
            strip_val=jnp.asarray(jnp.nan, jnp.float32),
            ups=zero,
        )

    return init


def _mode_sign(monitor: str, mode: str) -> float:
    check_choice("monitor", monitor, MONITORS)
    check_choice("mode", mode, ("auto", "min", "max"))
    if mode == "auto":
        mode = "max" if "accuracy" in monitor else "min"
    return -1.0 if mode == "max" else 1.0


def patience(
    *,
    monitor: str = "val_loss",
    mode: str = "auto",
    min_delta: float = 0.0,
    patience: int = 0,
    baseline: float | None = None,
    start_from_epoch: int = 0,
    restore_best: bool = True,
) -> EarlyStopping:
    """Keras-style patience rule.

    Args:
        monitor: one of ``MONITORS``.
        mode: "min", "max", or "auto" (max for accuracies, min otherwise).
        min_delta: an improvement must beat the best value by more than this
            (>= 0; a change of exactly ``min_delta`` is none, as in Keras).
        patience: stop after this many consecutive epochs without improvement.
        baseline: an improvement also resets the counter only when it beats
            this value, so with a baseline never beaten training stops at the
            first epoch without improvement once ``patience`` epochs have passed
            (as in Keras; a value that keeps improving without beating it never
            stops).
        start_from_epoch: evaluations before this one are ignored (warm-up);
            with ``fit(eval_every=1)`` these are epochs.
        restore_best: return the parameters of ``best_epoch`` (default on: the
            lesson's advice to keep the best model).
    """
    sign = _mode_sign(monitor, mode)
    check_range("min_delta", min_delta, lo=0.0)
    check_int("patience", patience, lo=0)
    check_int("start_from_epoch", start_from_epoch, lo=0)
    if baseline is not None:  # a NaN one is never beaten: every run would stop at `patience`
        check_range("baseline", baseline)
    ref = jnp.inf if baseline is None else sign * float(baseline)

    def update(state: StopState, epoch: Array, value: Array, train_value: Array) -> StopState:
        del train_value
        epoch = jnp.asarray(epoch, jnp.int32)  # an x64 counter would change a scan's carry
        current = sign * jnp.asarray(value, jnp.float32)
        active = (epoch >= start_from_epoch) & ~state.stopped
        improved = active & (current + min_delta < state.best)
        beats_baseline = current + min_delta < ref
        wait = jnp.where(active, state.wait + 1, state.wait)
        wait = jnp.where(improved & beats_baseline, 0, wait)
        stop = active & ~improved & (wait >= patience) & (epoch > 0)
        return state._replace(
            best=jnp.where(improved, current, state.best),
            best_epoch=jnp.where(improved, epoch, state.best_epoch),
            wait=wait,
            stopped=state.stopped | stop,
            stop_epoch=jnp.where(stop, epoch, state.stop_epoch),
        )

    return EarlyStopping(_init(), update, monitor, restore_best)


def prechelt(
    rule: str,
    alpha: float,
    *,
    monitor: str = "val_loss",
    strip: int = 5,
    restore_best: bool = True,
) -> EarlyStopping:
    """Prechelt's (1998) criteria on a validation error ``E_va`` (smaller is better).

    With ``E_opt(t) = min_{t' <= t} E_va(t')`` and ``GL(t) = 100 (E_va/E_opt - 1)``:

    * ``"GL"``: stop at the first epoch with ``GL > alpha``.
    * ``"PQ"``: at each strip end, with ``P_k = 1000 (sum E_tr / (k min E_tr) - 1)``
      over the last ``k = strip`` epochs, stop if ``GL / P_k > alpha``.
    * ``"UP"``: at each strip end, stop when ``E_va`` rose over each of
      ``alpha`` (an integer s) successive strips.

    Strips end at epochs ``k-1, 2k-1, ...`` (Prechelt counts epochs from 1).
    The restored parameters are those of the epoch reaching ``E_opt``. An
    "epoch" here is one call of ``update``: inside ``fit`` one evaluation, so with
    ``eval_every > 1`` a strip is ``k`` evaluations (``k * eval_every`` epochs). A
    NaN evaluation never becomes ``E_opt``.

    Args:
        rule: ``"GL"``, ``"PQ"`` or ``"UP"``.
        alpha: GL / PQ threshold (>= 0, in percent for GL), or UP's number of
            rising strips (a whole number >= 1).
        monitor: the validation error: ``"val_loss"`` or ``"val_mse"``.
        strip: ``k``, epochs (evaluations) per strip.
        restore_best: return the parameters of the epoch reaching ``E_opt``.
    """
    check_choice("rule", rule, ("GL", "PQ", "UP"))
    sign = _mode_sign(monitor, "auto")
    # GL compares a validation error with its own minimum; on a training error
    # it would stop on noise in a curve that only falls
    if sign < 0 or not monitor.startswith("val_"):
        raise ValueError(f"monitor={monitor!r}: Prechelt's criteria need a validation error "
                         "to minimise; use val_loss or val_mse.")
    k = check_int("strip", strip, lo=1)
    if rule == "UP":  # a count of strips: 2 and 2.0 alike
        alpha = int(check_range("alpha", alpha, lo=1, whole=True))
    else:
        check_range("alpha", alpha, lo=0.0)

    def update(state: StopState, epoch: Array, value: Array, train_value: Array) -> StopState:
        epoch = jnp.asarray(epoch, jnp.int32)
        value = jnp.asarray(value, jnp.float32)
        active = ~state.stopped
        improved = active & (value < state.best)
        # not minimum(): a NaN evaluation would become E_opt and no later one could stop
        e_opt = jnp.where(value < state.best, value, state.best)
        gl = 100.0 * (value / e_opt - 1.0)
        window = jnp.concatenate([state.strip[1:], jnp.asarray(train_value, jnp.float32)[None]])
        strip_end = (epoch + 1) % k == 0
        progress = 1000.0 * (jnp.sum(window) / (k * jnp.min(window)) - 1.0)
        rose = strip_end & (value > state.strip_val)
        ups = jnp.where(strip_end, jnp.where(rose, state.ups + 1, 0), state.ups)
        if rule == "GL":
            stop = gl > alpha
        elif rule == "PQ":
            stop = strip_end & (gl / progress > alpha)
        else:
            stop = strip_end & (ups >= alpha)
        stop = active & stop
        return state._replace(
            best=jnp.where(active, e_opt, state.best),
            best_epoch=jnp.where(improved, epoch, state.best_epoch),
            stopped=state.stopped | stop,
            stop_epoch=jnp.where(stop, epoch, state.stop_epoch),
            strip=jnp.where(active, window, state.strip),
            strip_val=jnp.where(active & strip_end, value, state.strip_val),
            ups=jnp.where(active, ups, state.ups),
        )

    return EarlyStopping(_init(k), update, monitor, restore_best)


def _never_update(state: StopState, epoch: Array, value: Array, train_value: Array) -> StopState:
    del epoch, value, train_value
    return state


_NEVER = EarlyStopping(_init(), _never_update, "val_loss", False)


def never() -> EarlyStopping:
    """Train the full budget: the rule ``fit`` uses when none is given.

    Always the same object, so fits without a rule share their compiled code.
    """
    return _NEVER
