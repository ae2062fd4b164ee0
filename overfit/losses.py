"""Per-example training losses by name: ``f(out, y) -> (n,)``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax import Array

Loss = Callable[[Array, Array], Array]


def half_squared(out: Array, y: Array) -> Array:
    """``0.5 * (out - y)^2``: the 1/2 makes the gradient the residual, so GD with an
    L2 transform of strength lambda converges to the ridge solution with that lambda."""
    return 0.5 * (out - y) ** 2


def half_squared_one_hot(out: Array, y: Array) -> Array:
    """Square loss on one-hot labels (Hui & Belkin 2021): its interpolation threshold sits
    at n_train x n_classes parameters, as in Belkin et al. (2019)."""
    return 0.5 * jnp.sum((out - jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype)) ** 2, -1)


LOSSES: dict[str, Loss] = {
    "mse": half_squared,
    "bce": lambda out, y: optax.sigmoid_binary_cross_entropy(out, y.astype(out.dtype)),
    "ce": optax.softmax_cross_entropy_with_integer_labels,
    "mse_onehot": half_squared_one_hot,
}
