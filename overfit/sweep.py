"""Grids of runs: named axes flattened onto the leading "models" axis and back."""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits

from overfit._checks import check_int
from overfit.chunks import run_chunks
from overfit.static import Static


def grid(**axes: Sequence[Any]) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """Cartesian product of named axes, flattened in C order.

    Example: ``grid(degree=[1, 2, 3], seed=range(10))`` gives ``flat["degree"]``
    and ``flat["seed"]`` of shape ``(30,)`` and ``shape == (3, 10)``; reshape a
    per-member result with ``result.reshape(shape)`` (or :func:`unflatten`).
    """
    names = list(axes)
    for name, v in axes.items():  # grid(kind="relu") made 4 members: r, e, l, u
        if isinstance(v, str | bytes) or not isinstance(v, Iterable):
            raise ValueError(f"grid axis {name}={v!r} must be a list of values, e.g. "
                             f"{name}=[{v!r}].")
    values = [list(v) for v in axes.values()]
    shape = tuple(len(v) for v in values)
    points = list(itertools.product(*values))
    flat = {n: np.asarray([p[i] for p in points]) for i, n in enumerate(names)}
    return flat, shape


def unflatten(tree: Any, shape: tuple[int, ...]) -> Any:
    """Reshape the leading axis ``M = prod(shape)`` of every leaf to ``shape``."""
    shape = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    for a in jax.tree.leaves(tree):  # (-1 lets reshape work out one axis)
        if -1 not in shape and jnp.shape(a)[:1] != (int(np.prod(shape)),):
            raise ValueError(f"shape={shape} holds {int(np.prod(shape))} members; a leaf has "
                             f"leading axis {jnp.shape(a)[:1]}.")
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
    index = np.asarray(index)
    sizes = {jnp.shape(a)[0] for a in jax.tree.leaves(tree)}
    # a jax array clamps an index past its end: member 7 of 6 quietly became member 5
    if index.size and sizes and not (-min(sizes) <= index.min() and index.max() < min(sizes)):
        raise ValueError(f"index {index.tolist()[:8]} is out of range for {min(sizes)} "
                         "members.")
    return jax.tree.map(lambda a: a[index], tree)


def map_members(f: Any, members: Any, *, shared: Any = None, batch_size: int | None = None,
                devices: Sequence[Any] | None = None, store: str | os.PathLike | None = None,
                progress: bool | None = None,
                compiler_options: Mapping[str, Any] | None = None) -> Any:
    """``f(member, shared)`` over the leading axis of ``members``, ``batch_size`` at a time.

    One compiled program, ``jit(vmap(f))``, with ``shared`` (e.g. the data
    sets every member indexes into) passed once per call, not copied per
    member. Memory grows with ``batch_size``, not with the grid. Batches are
    separate calls (:func:`overfit.chunks.run_chunks`: the last one padded,
    results on the host, optionally stored for resume), not a loop inside
    the program: LAPACK calls inside a compiled loop have been seen to stall
    for minutes on a busy 2-core CPU. ``None`` runs
    everything at once.

    ``devices`` (default: the first device only) splits each batch across
    devices. On a CPU split into host devices
    (``--xla_force_host_platform_device_count``) keep one: concurrent LAPACK
    calls from several host devices hang in scipy's OpenBLAS (reproduced with
    a batched float64 SVD, with and without thread limits).

    ``compiler_options`` go to ``jax.jit`` (e.g. :func:`fast_compile_options`).

    The calls run with the BLAS thread pools (scipy's OpenBLAS, which XLA's
    CPU LAPACK kernels call) held to one thread: on a 2-core machine its
    threads fought XLA's own for the cores, and a batched SVD that takes 1.4 s
    took 2 to 40 s. XLA still runs the members of a batch in parallel.
    """
    if batch_size is not None:
        check_int("batch_size", batch_size, lo=1)
    sizes = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in jax.tree.leaves(members)}
    if not sizes or None in sizes or len(sizes) != 1:
        # a shorter leaf silently dropped members from the others
        raise ValueError("members must be a pytree of arrays sharing one leading (members) "
                         f"axis; got leading sizes {sorted(sizes, key=str)}.")
    with threadpool_limits(limits=1, user_api="blas"):
        return run_chunks(_vmapped(Static(f)), members, shared=shared,
                          chunk_size=jax.tree.leaves(members)[0].shape[0]
                          if batch_size is None else batch_size,
                          devices=devices, store=store, progress=progress,
                          compiler_options=compiler_options)


_OLDER_CPU_EMITTERS = "xla_cpu_use_fusion_emitters"


def fast_compile_options(devices: Sequence[Any] | None = None) -> dict[str, Any]:
    """XLA options that trade run time for compile time on CPUs.

    No LLVM optimisation, and XLA's older CPU emitters where this jaxlib still has
    them (they compile in about half the time). For a small closed-form sweep run
    once, whose time goes to LAPACK (called precompiled) and to compiling the code
    around it: the polynomial bias-variance benchmark (3000 members of 30 x 16)
    compiled in 1.2 s instead of 2.3-2.5 s with LLVM optimisation off alone (its
    first call took 5.4 s with neither), and its compiled calls kept their speed.
    Not for sweeps with real work outside LAPACK: the double-descent benchmark
    (random ReLU features up to 1000 wide) took 43 s with LLVM optimisation off
    and 27 s without. Empty (XLA's defaults) on accelerators. Use as
    ``jax.jit(f, compiler_options=...)`` or ``map_members(..., compiler_options=...)``.
    """
    devices = jax.local_devices()[:1] if devices is None else devices
    if not all(d.platform == "cpu" for d in devices):
        return {}
    options: dict[str, Any] = {"xla_backend_optimization_level": 0}
    if _xla_accepts(_OLDER_CPU_EMITTERS, devices[0]):
        options[_OLDER_CPU_EMITTERS] = False
    return options


@functools.lru_cache(maxsize=8)
def _xla_accepts(option: str, device: Any) -> bool:
    """Whether this jaxlib's XLA has ``option`` (a later one may have dropped it)."""
    x = jax.device_put(np.float32(0), device)
    try:
        jax.jit(lambda a: a + 1, compiler_options={option: False}).lower(x).compile()
    except Exception:  # "No such compile option": its exception type moved between jax versions
        return False
    return True


@functools.lru_cache(maxsize=64)
def _vmapped(f: Static) -> Any:
    """One ``vmap(f)`` object per ``f`` (or an equal closure), so the compiled code is
    reused across calls."""
    return jax.vmap(f.value, in_axes=(0, None))


def batch_size_for(bytes_per_member: float, n_members: int, *, budget: float = 2**29) -> int | None:
    """Members per batch so a batch stays within ``budget`` bytes (None: all fit)."""
    size = max(1, int(budget // max(bytes_per_member, 1)))
    return None if size >= n_members else size
