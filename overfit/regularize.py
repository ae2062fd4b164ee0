"""Regularizers as optax transformations, composable with ``optax.chain``.

Order matters, as in optax's own ``adamw``: a *penalty* acts on the gradient,
so it goes BEFORE the optimizer; a *decoupled* decay or a proximal step acts
on the update, so it goes AFTER::

    optax.chain(l2(1e-3), optax.adam(1e-2))                    # L2 penalty
    optax.chain(optax.adam(1e-2), weight_decay(1e-3, 1e-2))    # AdamW-style decay
    optax.chain(optax.sgd(0.1), l1_prox(1e-2, 0.1))            # ISTA: exact zeros

Every strength may be traced, so a validation curve over lambda is one vmapped
call: pass ``fit(..., optimizer=lambda hp: optax.chain(l2(hp["l2"]), ...))``.
Under plain SGD an L2 penalty and decoupled decay are the same update; under
Adam they differ (Loshchilov & Hutter's AdamW).

Dropout and input noise are not gradient transforms: see ``models.mlp``'s
``drop_rate`` and ``fit``'s ``input_noise`` hparam.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import Array

from overfit._checks import check_range, check_scalar

Mask = Any | Callable[[Any], Any] | None


def exclude_biases(params: Any) -> Any:
    """Mask that is False on bias leaves (dict key ``"b"``: an MLP's), True elsewhere.

    Linear-in-parameter models (polynomial, linear, random features) keep their
    intercept inside ``"coef"``, so it stays penalised, as in :func:`overfit.solve.solve`.
    """

    def keep(path, _):
        return not any(getattr(p, "key", None) == "b" for p in path)

    return jax.tree_util.tree_map_with_path(keep, params)


def _masked(inner: optax.GradientTransformation, mask: Mask) -> optax.GradientTransformation:
    return inner if mask is None else optax.masked(inner, mask)


def _stateless(fn: Callable[[Any, Any], Any], mask: Mask) -> optax.GradientTransformation:
    """A transform ``updates -> fn(updates, params)``, restricted to ``mask``."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("this regularizer needs params: call update(grads, state, params).")
        return fn(updates, params), state

    return _masked(optax.GradientTransformation(lambda _: optax.EmptyState(), update), mask)


# one value per model: an array would be spread over the entries of each weight
_PER_MEMBER = ("per-member strengths go through fit's hparams, e.g. "
               "optimizer=lambda hp: optax.chain(l2(hp['l2']), ...)")


def _strength(field: str, value: Any) -> Any:
    return check_range(field, check_scalar(field, value, _PER_MEMBER), lo=0.0)


def l2(strength: Array | float, *, mask: Mask = None) -> optax.GradientTransformation:
    """L2 penalty ``(strength/2)|w|^2``: adds ``strength * w`` to the gradient.

    Place before the optimizer. With the half-MSE loss and full-batch gradient
    descent it converges to ``solve(phi, y, ridge=strength)``.
    """
    _strength("l2", strength)
    return _stateless(lambda g, p: jax.tree.map(lambda gi, pi: gi + strength * pi, g, p), mask)


def l1(strength: Array | float, *, mask: Mask = None) -> optax.GradientTransformation:
    """L1 penalty ``strength * |w|_1`` by its subgradient ``strength * sign(w)``.

    Place before the optimizer. Weights hover around 0 rather than landing on it;
    use :func:`l1_prox` for exact zeros.
    """
    _strength("l1", strength)
    return _stateless(
        lambda g, p: jax.tree.map(lambda gi, pi: gi + strength * jnp.sign(pi), g, p), mask
    )


def _check_learning_rate(learning_rate: Any) -> None:
    """A number >= 0 (a negative one would grow the weights): not a schedule."""
    if callable(learning_rate):
        raise ValueError("learning_rate must be a number, not a schedule: these steps do not "
                         "follow the optimizer's step count.")
    _strength("learning_rate", learning_rate)


def l1_prox(
    strength: Array | float, learning_rate: Array | float, *, mask: Mask = None
) -> optax.GradientTransformation:
    """Proximal L1 step (soft thresholding, ISTA): place AFTER the optimizer.

    Turns the update ``u`` into ``prox(w + u) - w`` where ``prox`` shrinks every
    weight toward 0 by ``learning_rate * strength`` and clamps crossings to 0,
    so weights reach exact zeros (TF Playground's L1 does the same). An exact
    proximal (ISTA) step under plain SGD at this ``learning_rate``; after Adam, a
    shrinkage of the same size. ``learning_rate`` is a number, not a schedule.
    """
    _strength("l1", strength)
    _check_learning_rate(learning_rate)
    threshold = learning_rate * strength

    def step(u, p):
        z = p + u
        return jnp.sign(z) * jnp.maximum(jnp.abs(z) - threshold, 0.0) - p

    return _stateless(lambda u, p: jax.tree.map(step, u, p), mask)


def weight_decay(
    strength: Array | float, learning_rate: Array | float, *, mask: Mask = None
) -> optax.GradientTransformation:
    """Decoupled weight decay (AdamW): subtracts ``learning_rate * strength * w``.

    Place AFTER the optimizer, whose scaling it bypasses. ``learning_rate`` is a
    number: unlike ``optax.adamw`` the decay does not follow a schedule.
    """
    _strength("weight_decay", strength)
    _check_learning_rate(learning_rate)
    return _stateless(
        lambda u, p: jax.tree.map(lambda ui, pi: ui - learning_rate * strength * pi, u, p), mask
    )


def gradient_noise(std: Array | float, *, key: Array) -> optax.GradientTransformation:
    """Add ``N(0, std^2)`` noise to every gradient entry (constant, no annealing).

    ``key`` seeds the noise; in ``fit`` a callable optimizer receives a
    per-member ``hparams["key"]`` for this.
    """
    _strength("gradient_noise", std)

    def init(params):
        del params
        return key

    def update(updates, state, params=None):
        del params
        state, sub = jax.random.split(state)
        leaves, tree = jax.tree.flatten(updates)
        keys = jax.random.split(sub, len(leaves))
        noisy = [u + std * jax.random.normal(k, u.shape, u.dtype) for u, k in zip(leaves, keys)]
        return jax.tree.unflatten(tree, noisy), state

    return optax.GradientTransformation(init, update)
