"""Grids and batching of the models axis."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from overfit.sweep import grid, map_members, shape_groups, take, unflatten


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


def test_map_members_names_a_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size=0 is out of range"):
        map_members(lambda m, s: m, jnp.arange(3.0), batch_size=0)


def test_sharded_over_four_devices_equals_one_device():
    """Members split across 4 (fake CPU) devices give the one-device numbers, whole and
    in batches, with PRNG keys; and so does fit(), which uses every device by default.
    (No LAPACK here: concurrent LAPACK calls from host devices hang, see map_members.)"""
    import subprocess
    import sys

    code = """
import os
flags = os.environ.get("XLA_FLAGS", "")  # the suite's own, then 4 host devices
os.environ["XLA_FLAGS"] = flags + " --xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from overfit import chunks
from overfit.sweep import map_members
assert len(jax.local_devices()) == 4
meshes = []  # device count of every chunk run: a silent fall-back to one device fails
compiled = chunks._compiled
chunks._compiled = lambda body, devices: meshes.append(len(devices)) or compiled(body, devices)
def f(m, s):
    k, v = m
    a = jax.random.normal(k, (30, 16)) * v
    return {"s": jnp.sort(a.sum(0)), "x": (a @ s).sum()}
members = (jax.random.split(jax.random.key(0), 10), jnp.arange(10.0))
one = map_members(f, members, shared=jnp.ones(16))
assert meshes == [1], meshes
for size in (None, 3):
    many = map_members(f, members, shared=jnp.ones(16), batch_size=size,
                       devices=jax.local_devices())
    np.testing.assert_allclose(many["s"], one["s"], rtol=1e-12)
    np.testing.assert_allclose(many["x"], one["x"], rtol=1e-12)
assert set(meshes[1:]) == {4}, meshes
del meshes[:]
# fit() splits its members across every local device by default
from overfit.data import regression
from overfit.models import mlp
from overfit.train import fit
data = regression(jax.random.key(0), target="sin", n_train=20, noise=0.1)
keys = jax.random.split(jax.random.key(1), 6)
kw = dict(epochs=20, eval_every=5, hparams={"width": np.array([1, 4, 8, 2, 8, 3])})
alone = fit(mlp(1, (8,)), data, key=keys, devices=jax.local_devices()[:1], **kw)
assert meshes == [1], meshes
del meshes[:]
for size in (None, 4):
    spread = fit(mlp(1, (8,)), data, key=keys, chunk_size=size, **kw)
    for a, b in zip(jax.tree.leaves(spread), jax.tree.leaves(alone)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
assert meshes and set(meshes) == {4}, meshes
# data committed to one device (device_put) mixes with the 4-device mesh
placed = fit(mlp(1, (8,)), jax.device_put(data, jax.devices()[1]), key=keys, **kw)
for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(alone)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
# one device asked for is the one that runs (not the default device)
ran = []
def spying(body, devices):
    run = compiled(body, devices)
    def call(*args):
        out = run(*args)
        ran.append({d.id for d in jax.tree.leaves(out)[0].devices()})
        return out
    return call
chunks._compiled = spying
third = map_members(f, members, shared=jnp.ones(16), devices=[jax.local_devices()[2]])
assert ran == [{jax.local_devices()[2].id}], ran
np.testing.assert_allclose(third["x"], one["x"], rtol=1e-12)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("call, match", [
    # a shorter leaf silently dropped members of the others: [0, 2, 4] from 3 and 4
    (lambda: map_members(lambda m, s: m["a"] + m["b"], {"a": jnp.arange(3.0),
                                                        "b": jnp.arange(4.0)}),
     r"one leading \(members\) axis; got leading sizes \[3, 4\]"),
    (lambda: map_members(lambda m, s: m, {"a": jnp.float32(1.0)}), r"leading sizes \[None\]"),
    # a string axis became one member per character
    (lambda: grid(kind="relu"), r"grid axis kind='relu' must be a list of values"),
    (lambda: grid(degree=3), r"grid axis degree=3 must be a list"),
    # a jax array clamps: member 7 of 6 quietly became member 5
    (lambda: take({"a": jnp.arange(6)}, [7]), r"index \[7\] is out of range for 6 members"),
])
def test_bad_members_and_axes_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    np.testing.assert_array_equal(take({"a": jnp.arange(6)}, [-1, 0])["a"], [5, 0])


def test_unflatten_takes_an_int_and_names_a_wrong_size():
    assert unflatten({"a": jnp.arange(6)}, 6)["a"].shape == (6,)
    assert unflatten({"a": jnp.zeros((6, 2))}, (-1, 3))["a"].shape == (2, 3, 2)
    with pytest.raises(ValueError, match=r"shape=\(4, 2\) holds 8 members; a leaf has "
                                         r"leading axis \(6,\)"):
        unflatten({"a": jnp.arange(6)}, (4, 2))
