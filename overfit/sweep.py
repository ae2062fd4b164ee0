"""Grids of runs: named axes flattened onto the leading "models" axis and back."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


def grid(**axes: Sequence[Any]) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """Cartesian product of named axes, flattened in C order.

    Example: ``grid(degree=[1, 2, 3], seed=range(10))`` gives ``flat["degree"]``
    and ``flat["seed"]`` of shape ``(30,)`` and ``shape == (3, 10)``; reshape a
    per-member result with ``result.reshape(shape)`` (or :func:`unflatten`).
    """
    names = list(axes)
    values = [list(v) for v in axes.values()]
    shape = tuple(len(v) for v in values)
    points = list(itertools.product(*values))
    flat = {n: np.asarray([p[i] for p in points]) for i, n in enumerate(names)}
    return flat, shape


def unflatten(tree: Any, shape: tuple[int, ...]) -> Any:
    """Reshape the leading axis ``M = prod(shape)`` of every leaf to ``shape``."""
    return jax.tree.map(lambda a: a.reshape(*shape, *a.shape[1:]), tree)


def take(tree: Any, index: Any) -> Any:
    """Gather members ``index`` along the leading axis of every leaf."""
    return jax.tree.map(lambda a: a[np.asarray(index)], tree)
