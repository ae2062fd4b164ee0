"""Running a members axis in chunks: bounded memory, every device, results on disk.

:func:`run_chunks` is the engine under :func:`overfit.fit` and
:func:`overfit.sweep.map_members`. It takes a program written for a leading
"members" axis and

* cuts the members into chunks whose size comes from a memory estimate
  (:func:`chunk_size_for`; overridable), so a sweep larger than the device's
  memory runs instead of failing, and a chunk that still runs out of memory is
  split in two and retried;
* splits every chunk evenly across ``devices`` (``shard_map`` over a
  "members" mesh axis; what is shared is replicated), so a sweep uses every
  local accelerator;
* writes each finished chunk to ``store`` (atomic renames, keyed by a
  fingerprint of the program and its inputs) so a killed run resumes where it
  stopped, and several processes (``jax.distributed``, one per host) can share
  the work through a shared folder;
* shows a ``tqdm.auto`` progress bar (terminal or notebook) as chunks finish.

Members are independent, so the results do not depend on the chunk size or
the device count beyond float round-off (tested).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.extend
import numpy as np

from overfit._checks import check_int

Program = Callable[[Any, Any], Any]  # (members with a leading axis, shared) -> outputs
_CHUNK_FILE = re.compile(r"^(\d{9})-(\d{9})\.npz$")
log = logging.getLogger("overfit")
CPU_MIN_CHUNK = 32  # members: the smallest chunk the CPU cache rule asks for


# ------------------------------------------------------------------------ memory


def device_memory(device: Any) -> int:
    """Bytes a computation on ``device`` may still allocate (an estimate).

    Accelerators report their allocator's limit and use; on the CPU it is the
    host's available physical memory (``/proc``), or 4 GiB when unknown, and no more
    than its cgroup's limit leaves.
    """
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        free = 4 << 30
    return min(free, _cgroup_free())


def _cgroup_free(root: Path = Path("/sys/fs/cgroup")) -> int | float:
    """What this process's cgroup (a container, a SLURM job) may still allocate: ``/proc``
    reports the host's memory, which a job limited to a share of it would overrun."""
    for limit, usage, stat, cache in (
            ("memory.max", "memory.current", "memory.stat", "inactive_file"),  # cgroup v2
            ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
             "memory/memory.stat", "total_inactive_file")):
        try:
            cap, used = (root / limit).read_text().strip(), (root / usage).read_text().strip()
        except OSError:
            continue
        if cap.isdigit() and used.isdigit() and int(cap) < 1 << 60:  # v1's "no limit" is ~2**63
            # the usage counts page cache the kernel hands back on demand: not taken
            return max(int(cap) - int(used) + _stat(root / stat, cache), 0)
    return math.inf


def _stat(path: Path, field: str) -> int:
    """One field of a cgroup's memory.stat (0 when absent)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == field and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _size(aval: Any) -> int:
    dtype = aval.dtype
    itemsize = 8 if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) else np.dtype(dtype).itemsize
    return int(np.prod(aval.shape)) * itemsize


def _nbytes(tree: Any) -> int:
    return sum(_size(a) for a in jax.tree.leaves(tree))


def _jaxpr_bytes(jaxpr: Any) -> int:
    """Every intermediate of ``jaxpr`` plus the largest of its sub-programs.

    An upper bound on what one member keeps live at a time (XLA frees and
    reuses buffers; this counts each as if it were kept), but sub-programs
    (a loop body, a branch) run one at a time, so only the largest counts.
    """
    total, inner = 0, 0
    for eqn in jaxpr.eqns:
        total += sum(_size(v.aval) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            inner = max(inner, _jaxpr_bytes(sub))
    return total + inner


def member_bytes(program: Program, one: Any, shared: Any) -> int:
    """Estimated bytes one member needs: its inputs and every intermediate.

    ``one`` is a batch of one member (arrays or ``jax.ShapeDtypeStruct``).
    """
    return _traced_bytes(jax.make_jaxpr(program)(one, shared), one)


def _traced_bytes(closed: Any, one: Any) -> int:
    return _nbytes(one) + _jaxpr_bytes(closed.jaxpr)


@functools.lru_cache(maxsize=256)
def _traced(body: Program, one: tuple, shared_tree: Any, shared_avals: tuple
            ) -> tuple[Any, list[Any], int]:
    """(output tree, output leaves of one member, bytes per member) of ``body``, traced
    once per signature."""
    shared = jax.tree.unflatten(shared_tree, [jax.ShapeDtypeStruct(*a) for a in shared_avals])
    closed, out = jax.make_jaxpr(body, return_shape=True)(list(one), shared)
    leaves = jax.tree.leaves(out)
    for a in leaves:  # chunks are cut and trimmed on axis 0: it must be the members'
        if not a.shape or a.shape[0] != 1 or _is_key(a):
            raise ValueError(f"the program returned a {a.dtype} leaf of shape {a.shape} for one "
                             "member; every output needs the members' leading axis (shape "
                             "(1, ...) here) and numbers, not PRNG keys (return "
                             "jax.random.key_data(key)).")
    return jax.tree.structure(out), leaves, _traced_bytes(closed, one)


def _signature(host: _HostMembers, shared: Any) -> tuple:
    """Hashable shapes of one member and of ``shared``: the key of ``_traced``."""
    one = tuple(jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype) for a in host.arrays)
    leaves, tree = jax.tree.flatten(shared)
    return one, tree, tuple((np.shape(a), a.dtype if hasattr(a, "dtype")
                             else jax.numpy.result_type(a)) for a in leaves)


def cache_bytes() -> int:
    """Twice the CPU's largest cache (Linux ``/sys``), or 64 MiB when unknown."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        unit = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        if text.rstrip("KM").isdigit():
            sizes.append(int(text.rstrip("KM")) * unit)
    return 2 * max(sizes) if sizes else 64 << 20


def chunk_size_for(per_member: int, shared_bytes: int, devices: Sequence[Any], *,
                   fraction: float = 0.5, n_members: int | None = None) -> int:
    """Members per chunk so a chunk uses at most ``fraction`` of the free memory.

    The members of a chunk are split across ``devices``; each device holds its
    share plus a replica of the shared inputs. At least one member per device.
    On CPUs the chunk is also sized to :func:`cache_bytes` (but at least
    ``CPU_MIN_CHUNK`` members): the members of a chunk share the caches, and a
    1024-member sweep of 64-wide MLPs ran 1.6x faster in chunks of 32 than in
    one call (2 cores, 32 MiB L3), yet 1.3x slower in chunks of 19 (what the
    cache alone asked for) than of 32 (chunks of 16-24 members: 7.6-8.1 ms per
    model; of 32-48: 5.8-6.2 ms). That size is a target, not a bound: given
    ``n_members``, the sweep is cut into the nearest whole number of chunks
    (32 members at a target of 28 run as one chunk: two chunks of 16 ran 1.4x
    slower than one of 32), never more members per chunk than memory allows.
    """
    cpu = all(getattr(d, "platform", None) == "cpu" for d in devices)
    free = min(device_memory(d) for d in devices)
    # host "devices" (--xla_force_host_platform_device_count) all draw on one RAM
    budget = fraction * free / (len(devices) if cpu else 1) - shared_bytes
    per_device = max(1, int(budget // max(per_member, 1)))
    if cpu:
        # but not below CPU_MIN_CHUNK members: smaller chunks ran slower, and each
        # costs a call (and, in a scenario, a stored file)
        in_cache = max(CPU_MIN_CHUNK, int(cache_bytes() // max(per_member, 1)))
        if n_members is None or in_cache >= per_device:
            per_device = min(per_device, in_cache)
        else:
            n = -(-n_members // len(devices))
            # round(48 / 32) = 2 chunks would hold 24: fewer, larger chunks instead
            count = max(-(-n // per_device), min(round(n / in_cache), n // CPU_MIN_CHUNK), 1)
            per_device = -(-n // count)
    return per_device * len(devices)


# ------------------------------------------------------------------------ host side


def _is_key(a: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key)


class _HostMembers:
    """Members as host NumPy arrays (PRNG keys as their raw data), cut by index.

    Chunks are cut on the host: an eager gather or slice of a device array
    compiles once per shape, and those compiles cost more than the sweep.
    """

    def __init__(self, members: Any):
        leaves, self.treedef = jax.tree.flatten(members)
        self.impls = [jax.random.key_impl(a) if _is_key(a) else None for a in leaves]
        self.arrays = [np.asarray(jax.random.key_data(a) if impl else a)
                       for a, impl in zip(leaves, self.impls)]
        self.n = self.arrays[0].shape[0] if self.arrays else 0

    def take(self, index: np.ndarray) -> list[np.ndarray]:
        return [a[index] for a in self.arrays]


@functools.lru_cache(maxsize=64)
def _compiled(body: _FlatBody, devices: tuple) -> Callable:
    """``jit(body)``, or ``jit(shard_map(body))`` over a "members" mesh of ``devices``."""
    options = dict(body.options) or None
    if len(devices) == 1:
        return jax.jit(body, compiler_options=options)
    mesh = jax.sharding.Mesh(np.array(devices), ("members",))
    spec = jax.sharding.PartitionSpec
    # members never talk to one another (no collectives), so the check that loop
    # carries vary alike over the mesh axis has nothing to protect: off
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(spec("members"), spec()),
                                 out_specs=spec("members"), check_vma=False),
                   compiler_options=options)


def _is_oom(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


# ------------------------------------------------------------------------ store


class _Store:
    """Finished chunks in a folder: ``START-STOP.npz`` files and a manifest.

    Every file appears by an atomic rename, so a killed run leaves complete
    chunks or none. The manifest's fingerprint (program + inputs) guards
    against resuming a different computation from the same folder.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str, n: int, replace: bool = False,
                 wait: float | None = None):
        """``replace``: a folder of another computation is emptied; ``wait`` (seconds
        between looks): instead, wait until another process has replaced it (of several
        processes sharing a store only one may empty it, or one would delete the chunks
        and manifest another has just written)."""
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        mine = {"fingerprint": fingerprint, "members": n}
        if replace and _read(manifest) not in (None, mine):
            log.info("%s: stored chunks are of another computation; starting afresh", path)
            shutil.rmtree(self.path)
        if wait is not None:  # only the replacer writes the manifest: nothing races it
            log.info("%s: waiting for process 0's manifest", path)
            while _read(manifest) != mine:
                time.sleep(wait)
        self.path.mkdir(parents=True, exist_ok=True)
        if manifest.exists():
            theirs = json.loads(manifest.read_text())
            if theirs != mine:
                raise ValueError(
                    f"store={str(self.path)!r} holds chunks of a different computation "
                    f"({theirs.get('members')} members, fingerprint "
                    f"{str(theirs.get('fingerprint'))[:12]}; this one: {n} members, "
                    f"{fingerprint[:12]}). Delete the folder or choose another store.")
        else:
            _atomic_write(manifest, lambda f: f.write(json.dumps(mine).encode()))

    def done(self) -> dict[tuple[int, int], Path]:
        found = {}
        for p in self.path.iterdir():
            m = _CHUNK_FILE.match(p.name)
            if m:
                found[int(m[1]), int(m[2])] = p
        return found

    def save(self, start: int, stop: int, leaves: list[np.ndarray]) -> None:
        _atomic_write(self.path / f"{start:09d}-{stop:09d}.npz",
                      lambda f: np.savez(f, *leaves))

    @staticmethod
    def load(path: Path) -> list[np.ndarray]:
        with np.load(path) as z:
            return [z[f"arr_{i}"] for i in range(len(z.files))]


def _read(manifest: Path) -> dict | None:
    """A manifest's content, or None when there is none (or it is being removed)."""
    try:
        return json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fingerprint(body: Program, host: _HostMembers, shared: Any) -> str:
    """Hash of the program (its lowered text for one member) and every input."""
    h = hashlib.sha256()
    h.update(jax.jit(body).lower([a[:1] for a in host.arrays], shared).as_text().encode())
    shared = [jax.random.key_data(a) if _is_key(a) else a for a in jax.tree.leaves(shared)]
    for a in [*host.arrays, *shared]:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Stored:
    """A ``storing`` block: its folder, and ``chunks``, one ``{"members", "chunk_size"}``
    per sweep run inside it (the chunk size decides the kernels, so results record it)."""

    def __init__(self, folder: Path):
        self.folder, self.calls = folder, 0
        self.chunks: list[dict[str, int]] = []

    def next(self) -> Path:
        self.calls += 1
        return self.folder / f"{self.calls - 1:03d}"


_AMBIENT: contextvars.ContextVar[Stored | None] = contextvars.ContextVar("store", default=None)


@contextlib.contextmanager
def storing(folder: str | os.PathLike) -> Iterator[Stored]:
    """Inside the block, every multi-chunk :func:`run_chunks` call without its own
    ``store`` keeps its chunks in ``folder/000``, ``folder/001``, ... in call order.

    Running the same code again in a block on the same folder resumes each sweep
    from its stored chunks; a sweep whose program or inputs changed starts its
    subfolder afresh. ``overfit run`` wraps every scenario in one, so a killed
    scenario resumes mid-sweep. Yields a :class:`Stored` that lists every
    sweep's member count and chunk size.
    """
    stored = Stored(Path(folder))
    token = _AMBIENT.set(stored)
    try:
        yield stored
    finally:
        _AMBIENT.reset(token)


# ------------------------------------------------------------------------ runner


def _ranges(todo: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Cut each missing ``(start, stop)`` range into pieces of at most ``size``."""
    return [(s, min(s + size, stop)) for start, stop in todo for s in range(start, stop, size)]


def _missing(n: int, done: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    covered = np.zeros(n, bool)
    for start, stop in done:
        covered[start:stop] = True
    edges = np.flatnonzero(np.diff(np.concatenate([[0], ~covered, [0]]).astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def run_chunks(
    program: Program,
    members: Any,
    *,
    shared: Any = None,
    chunk_size: int | None = None,
    devices: Sequence[Any] | None = None,
    store: str | os.PathLike | None = None,
    progress: bool | None = None,
    process: tuple[int, int] | None = None,
    poll_s: float = 1.0,
    compiler_options: Mapping[str, Any] | None = None,
) -> Any:
    """``program(members, shared)`` over the leading axis of ``members``, chunk by chunk.

    Args:
        program: a function of a batch of members (every leaf with a leading
            axis) and of ``shared``, returning outputs with the same leading
            axis; members must be independent of one another. Pass the same
            function object across calls: compiled code is cached on it.
        members: pytree of arrays (PRNG keys allowed), leading axis ``M``.
        shared: pytree passed whole to every chunk (e.g. the data set).
        chunk_size: at most this many members per call (before the rounding
            below); None derives it
            from a memory estimate (:func:`chunk_size_for`: half the free
            memory of the smallest device, and on a CPU twice its cache).
            Chunks are made equal and rounded up to a multiple of the device
            count; the last is padded by repeating its final member, then
            trimmed, so every chunk has one shape.
        devices: devices to split each chunk across (default: the first local
            device).
        store: folder for finished chunks. A later call with the same program
            and inputs loads them instead of recomputing (resume after a kill);
            a different computation in the same folder is an error.
        progress: a ``tqdm.auto`` bar over the members; None shows it only when
            there is more than one chunk (or chunks were loaded from ``store``)
            and the run lasts over 2 s.
        process: ``(index, count)`` of this process among several sharing
            ``store`` (default ``jax.process_index(), jax.process_count()``).
            Process ``i`` runs the ``i``-th of ``count`` contiguous blocks of
            members, then waits for the others' chunks to appear in ``store``
            (checking every ``poll_s`` seconds), so every process returns the
            whole result. Inside :func:`storing`, a call without ``store``
            uses the block's next subfolder when it has more than one chunk.
        compiler_options: XLA options for the compiled program (``jax.jit``'s
            ``compiler_options``), e.g. :func:`overfit.sweep.fast_compile_options`.

    Returns:
        The outputs of all ``M`` members, as host NumPy arrays.
    """
    devices = tuple(jax.local_devices()[:1] if devices is None else devices)
    if not devices:
        raise ValueError("devices=() has no device to run on: pass None (the first local "
                         "device) or a non-empty list, e.g. jax.local_devices().")
    index, count = (jax.process_index(), jax.process_count()) if process is None else process
    host = _HostMembers(members)
    n = host.n
    if n < 1:
        raise ValueError("members must have a leading axis of at least one member.")
    body = _FlatBody(program, host.treedef, tuple(host.impls),
                     tuple(sorted((compiler_options or {}).items())))
    out_tree, out_leaves, per_member = _traced(body, *_signature(host, shared))
    if chunk_size is None:
        chunk_size = chunk_size_for(per_member, _nbytes(shared), devices, n_members=n)
    size = min(check_int("chunk_size", chunk_size, lo=1), n)
    size = -(-n // -(-n // size))  # chunks of equal size: 32 at most 28 -> 2 x 16, not 28 + 4
    size = -(-size // len(devices)) * len(devices)

    ambient = _AMBIENT.get()
    # only the ambient store's own sub-folders may be replaced; a store= the caller
    # names is refused if it holds another computation, inside storing() as outside
    from_ambient = store is None and ambient is not None
    if from_ambient:
        sub = ambient.next()  # numbered on every call, so the numbering is reproducible
        record = {"members": n, "chunk_size": size}
        ambient.chunks.append(record)
        # one chunk has nothing to resume mid-way: skip the fingerprint's lowering
        store = sub if count > 1 or -(-n // size) > 1 else None
    if count > 1 and store is None:
        raise ValueError(f"{count} processes share a sweep through its store: pass store= "
                         "(a folder every process can read and write).")
    saved = None
    if store is not None:
        # of several processes sharing an ambient store, the first empties a stale
        # folder and the others wait for it
        saved = _Store(store, _fingerprint(body, host, shared), n,
                       replace=from_ambient and index == 0,
                       wait=poll_s if from_ambient and index > 0 else None)
    # chunks are written into the result as they finish: the host holds it once, not
    # once in pieces and again concatenated
    result = _Result([np.empty((n, *a.shape[1:]), a.dtype) for a in out_leaves])
    if saved is not None:
        result.load(saved)
        if result.done:
            log.info("%s: %d of %d members loaded from stored chunks", saved.path,
                     sum(b - a for a, b in result.done), n)
    # process i owns the i-th contiguous block of members, whatever each process's
    # chunk size, so no member is left to nobody
    block = (n * index // count, n * (index + 1) // count)
    todo = [(max(a, block[0]), min(b, block[1])) for a, b in _missing(n, result.done)]
    mine = _ranges([(a, b) for a, b in todo if a < b], size)
    show = (len(mine) > 1 or len(result.done) > 0) if progress is None else progress
    # progress=None: only a run that lasts shows its bar (a gallery of short sweeps stays quiet)
    with _bar(show, n, sum(b - a for a, b in result.done),
              delay=2.0 if progress is None else 0.0) as bar:
        if mine:
            size = _run_ranges(body, host, _placed(shared, devices), devices, mine, size,
                               result, saved, bar)
            if from_ambient:  # what ran, after any out-of-memory halving
                record["chunk_size"] = size
        while _missing(n, result.done):  # other processes' chunks arrive through the store
            time.sleep(poll_s)
            bar.update(result.load(saved))
    return jax.tree.unflatten(out_tree, result.leaves)


class _Result:
    """The outputs of all members, filled range by range; ``done`` lists the ranges in."""

    def __init__(self, leaves: list[np.ndarray]):
        self.leaves, self.done = leaves, []

    def put(self, start: int, stop: int, leaves: list[np.ndarray]) -> None:
        for out, part in zip(self.leaves, leaves, strict=True):
            if len(part) != stop - start:  # numpy would broadcast one row over the slice
                raise ValueError(f"the program returned {len(part)} rows for a chunk of "
                                 f"{stop - start} members: every output needs one row per "
                                 "member.")
            # np.savez keeps bfloat16 / float8 as raw bytes ("|V2"): read them as what they were
            out[start:stop] = part.view(out.dtype) if part.dtype.kind == "V" else part
        self.done.append((start, stop))

    def load(self, saved: _Store) -> int:
        """Add the stored chunks not yet in; returns how many members came in. A stored
        range overlapping one already in (runs of other chunk sizes sharing a store)
        is left out: each member is taken once."""
        added = 0
        for (a, b), path in sorted(saved.done().items()):
            if not any(a < d and c < b for c, d in self.done):
                self.put(a, b, _Store.load(path))
                added += b - a
        return added


class _FlatBody:
    """Hashable by value (program, tree, key types), so its compiled code is reused."""

    def __init__(self, program: Program, treedef: Any, impls: tuple, options: tuple = ()):
        self.program, self.treedef, self.impls, self.options = program, treedef, impls, options
        self._key = (program, treedef, tuple(str(i) for i in impls), options)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _FlatBody) and self._key == other._key

    def __call__(self, flat: list, shared: Any) -> Any:
        """``program`` on the members rebuilt from the host arrays ``_HostMembers`` cuts."""
        members = self.treedef.unflatten([jax.random.wrap_key_data(a, impl=impl) if impl else a
                                          for a, impl in zip(flat, self.impls)])
        return self.program(members, shared)


def _run_ranges(body, host, shared, devices, todo, size, result, saved, bar) -> int:
    """Run ``todo`` ranges ``size`` members at a time, halving ``size`` on out-of-memory;
    returns the size the last chunk ran at."""
    pending = list(todo)
    while pending:
        start, stop = pending.pop(0)
        try:
            leaves = _execute(body, host, shared, devices, start, stop, size)
        except Exception as error:  # noqa: BLE001 - only out-of-memory is handled
            if not _is_oom(error) or size <= len(devices):
                raise
            size = max(len(devices), (size // 2) // len(devices) * len(devices))
            warnings.warn(f"out of memory with {stop - start} members per chunk; "
                          f"retrying with {size}.", RuntimeWarning, stacklevel=3)
            pending = _ranges([(start, stop), *pending], size)  # none may exceed size
            continue
        result.put(start, stop, leaves)
        if saved is not None:
            saved.save(start, stop, leaves)
        bar.update(stop - start)
    return size


def _placed(shared: Any, devices: tuple) -> Any:
    """``shared`` once on the chunks' ``devices``: on the one device asked for (jit alone
    would run on the default one), or replicated over the members mesh (data committed
    to one device, e.g. by ``device_put``, would not mix with the mesh's)."""
    if len(devices) == 1:
        return jax.device_put(shared, devices[0])
    mesh = jax.sharding.Mesh(np.array(devices), ("members",))
    return jax.device_put(shared, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _execute(body, host, shared, devices, start: int, stop: int, size: int) -> list[np.ndarray]:
    """One chunk: members ``start:stop`` padded to ``size``, run, trimmed, on the host."""
    index = np.minimum(np.arange(start, start + size), stop - 1)
    members = host.take(index)
    if len(devices) == 1:  # the host arrays follow committed inputs; shared may have none
        members = jax.device_put(members, devices[0])
    out = _compiled(body, devices)(members, shared)
    return [np.asarray(a)[: stop - start] for a in jax.tree.leaves(out)]


def _bar(show: bool, total: int, initial: int, delay: float) -> Any:
    from tqdm.auto import tqdm  # imported on use: it probes for a notebook on import

    return tqdm(total=total, initial=initial, unit="model", desc="models", delay=delay,
                disable=not show)
