"""Grids and batching of the models axis."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from overfit.sweep import grid, map_members, shape_groups, unflatten


def test_grid_flattens_in_c_order_and_unflattens_back():
    flat, shape = grid(degree=[1, 2, 3], seed=range(4))
    assert shape == (3, 4)
    np.testing.assert_array_equal(flat["degree"][:5], [1, 1, 1, 1, 2])
    np.testing.assert_array_equal(unflatten(flat["seed"], shape)[2], [0, 1, 2, 3])


@pytest.mark.parametrize("values, groups", [
    ([10, 20, 30, 100, 150], [[10, 20], [30], [100, 150]]),
    ([1000, 20, 40, 41], [[20, 40], [41], [1000]]),
    ([0, 1, 2, 3], [[0, 1, 2], [3]]),
])
def test_shape_groups_bound_the_largest_to_twice_the_smallest(values, groups):
    assert shape_groups(values) == groups
    for g in shape_groups(values):
        assert max(g) <= 2 * max(g[0], 1)


@pytest.mark.parametrize("batch_size", [None, 1, 3, 7, 100])
def test_map_members_in_batches_equals_all_at_once(batch_size):
    members = {"a": jnp.arange(7.0), "b": jnp.arange(14.0).reshape(7, 2)}
    out = map_members(lambda m, s: m["a"] * s + m["b"].sum(), members, shared=jnp.asarray(3.0),
                      batch_size=batch_size)
    np.testing.assert_allclose(out, 3 * np.arange(7.0) + np.arange(14.0).reshape(7, 2).sum(1))
