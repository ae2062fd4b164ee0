"""Activations by name, and their derivatives written in terms of their outputs."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "linear": lambda z: z,
}

# d act / dz from h = act(z) alone, so a backward pass keeps only the outputs (gelu has none)
SLOPES: dict[str, Callable[[Array], Array]] = {
    "tanh": lambda h: 1.0 - h * h,
    "sigmoid": lambda h: h * (1.0 - h),
    "relu": lambda h: (h > 0).astype(h.dtype),
    "linear": jnp.ones_like,
}

# act(0) == 0: a unit whose weights and bias are zero outputs exactly zero
ZERO_AT_ZERO = frozenset({"tanh", "relu", "gelu", "linear"})
