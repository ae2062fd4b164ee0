"""Grids of runs: named axes flattened onto the leading "models" axis and back."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from threadpoolctl import threadpool_limits


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


def shape_groups(values: Sequence[int], ratio: float = 2.0) -> list[list[int]]:
    """Split capacities into groups whose largest is at most ``ratio`` x their smallest.

    A masked model costs what its largest capacity costs, so one compiled call
    over capacities 10..1000 spends the 1000-feature price on every member.
    Compiled per group instead, no member pays more than ``ratio`` x its own
    cost, for one compile per group. Example: ``[10, 20, 30, 100, 150]`` ->
    ``[[10, 20], [30], [100, 150]]``.
    """
    groups: list[list[int]] = []
    for v in sorted(set(values)):
        if groups and v <= ratio * max(groups[-1][0], 1):
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups


def take(tree: Any, index: Any) -> Any:
    """Gather members ``index`` along the leading axis of every leaf."""
    return jax.tree.map(lambda a: a[np.asarray(index)], tree)


def map_members(f: Any, members: Any, *, shared: Any = None, batch_size: int | None = None,
                devices: Sequence[Any] | None = None) -> Any:
    """``f(member, shared)`` over the leading axis of ``members``, ``batch_size`` at a time.

    One compiled program, ``jit(vmap(f))``, with ``shared`` (e.g. the data
    sets every member indexes into) passed once per call, not copied per
    member. Memory grows with ``batch_size``, not with the grid. Batches are
    separate calls (the last one padded by repeating its final member, then
    trimmed), not a loop inside the program: LAPACK calls inside a compiled
    loop have been seen to stall for minutes on a busy 2-core CPU
    (ARCHITECTURE.md). ``None`` runs everything at once.

    With several ``devices`` (e.g. ``jax.local_devices()``; default: the first
    device only) each batch's members are split evenly across them
    (``shard_map`` over a "members" mesh axis; ``shared`` is replicated), and
    the results do not depend on the device count (tested with 4 fake CPU
    devices). Opt-in because on a CPU split into host devices
    (``--xla_force_host_platform_device_count``) a large batched float64 SVD
    was seen to deadlock, idle, under ``shard_map``.

    The calls run with the BLAS thread pools (scipy's OpenBLAS, which XLA's
    CPU LAPACK kernels call) held to one thread: on a 2-core machine its
    threads fought XLA's own for the cores, and a batched SVD that takes 1.4 s
    took 2 to 40 s. XLA still runs the members of a batch in parallel.
    """
    devices = list(jax.local_devices()[:1] if devices is None else devices)
    n = jax.tree.leaves(members)[0].shape[0]
    size = n if batch_size is None else min(batch_size, n)
    size = -(-size // len(devices)) * len(devices)  # every device gets an equal share
    with threadpool_limits(limits=1, user_api="blas"):
        if len(devices) == 1 and size == n:  # nothing to cut or split: no host round trip
            return jax.block_until_ready(jax.jit(jax.vmap(f, in_axes=(0, None)))(members, shared))
        # batches are cut on the host: an eager gather or slice of a device array
        # compiles once per shape, and those compiles cost more than the sweep
        leaves, treedef = jax.tree.flatten(members)
        impls = [jax.random.key_impl(a) if _is_key(a) else None for a in leaves]
        host = [np.asarray(jax.random.key_data(a) if impl else a)
                for a, impl in zip(leaves, impls)]

        def g(flat: list, shared: Any) -> Any:
            member = treedef.unflatten([jax.random.wrap_key_data(a, impl=impl) if impl else a
                                        for a, impl in zip(flat, impls)])
            return f(member, shared)

        program = jax.vmap(g, in_axes=(0, None))
        if len(devices) > 1:
            mesh = jax.sharding.Mesh(np.array(devices), ("members",))
            spec = jax.sharding.PartitionSpec
            program = jax.shard_map(program, mesh=mesh, in_specs=(spec("members"), spec()),
                                    out_specs=spec("members"))
        batched = jax.jit(program)
        outputs = []
        for start in range(0, n, size):
            index = np.minimum(np.arange(start, start + size), n - 1)
            keep = n - start  # the padded tail is dropped
            out = batched([a[index] for a in host], shared)
            outputs.append(jax.tree.map(lambda a, k=keep: np.asarray(a)[:k], out))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def _is_key(a: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key)


def batch_size_for(bytes_per_member: float, n_members: int, *, budget: float = 2**29) -> int | None:
    """Members per batch so a batch stays within ``budget`` bytes (None: all fit)."""
    size = max(1, int(budget // max(bytes_per_member, 1)))
    return None if size >= n_members else size
