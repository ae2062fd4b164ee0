"""Chunked, sharded and stored runs give what one call gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overfit import chunks
from overfit.data import regression
from overfit.models import mlp
from overfit.train import fit

ROOT = Path(__file__).resolve().parents[1]


def _square_plus(members, shared):
    return {"y": members["a"] ** 2 + shared, "k": jax.vmap(jax.random.uniform)(members["key"])}


def _members(n: int) -> dict:
    return {"a": jnp.arange(n, dtype=jnp.float32),
            "key": jax.random.split(jax.random.key(3), n)}


def _sweep_args():
    """Five MLP members with per-member widths: (model, data, keys, fit keywords)."""
    data = regression(jax.random.key(0), target="sin", n_train=24, noise=0.1)
    keys = jax.random.split(jax.random.key(1), 5)
    kw = dict(epochs=30, eval_every=5, hparams={"width": np.array([2, 8, 4, 8, 1])})
    return mlp(1, (8,)), data, keys, kw


@pytest.fixture(scope="module")
def sweep():
    model, data, keys, kw = _sweep_args()
    return model, data, keys, kw, fit(model, data, key=keys, **kw)


def _assert_same(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or {"rtol": 1e-6}))


@pytest.mark.parametrize("size", [1, 2, 4])
def test_chunked_fit_equals_one_call(sweep, size):
    """5 members in chunks of 1, 2 or 4 (the last padded): the same numbers."""
    model, data, keys, kw, whole = sweep
    _assert_same(fit(model, data, key=keys, chunk_size=size, **kw), whole, rtol=1e-5,
                 atol=1e-6)


def test_chunk_size_from_the_memory_estimate(sweep, monkeypatch):
    """With little free memory the estimate cuts the sweep into chunks; same results."""
    model, data, keys, kw, whole = sweep
    members = {"key": keys, "data": None, "hparams": {"width": kw["hparams"]["width"]}}
    from overfit.static import Static
    from overfit.train import DEFAULT_OPTIMIZER, _Config, _member_program, never
    config = Static(_Config(model, "mse", DEFAULT_OPTIMIZER, 30, None, never(), 5,
                            (None, (("width", 0),))))
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype), members)
    shared = {"data": data, "hparams": {}}
    per, shared_bytes = chunks.member_bytes(_member_program(config), one, shared), \
        chunks._nbytes(shared)
    # at least the parameters and the history (4 curves x 6 evaluations, float32) of one member
    n_params = 8 * 3 + 1
    assert per >= 4 * (n_params + 4 * 6)
    monkeypatch.setattr(chunks, "device_memory", lambda d: 2 * (2 * per + shared_bytes))
    assert chunks.chunk_size_for(per, shared_bytes, [None]) == 2
    calls = []
    real = chunks._execute
    monkeypatch.setattr(chunks, "_execute", lambda *a: calls.append(a[-3:]) or real(*a))
    _assert_same(fit(model, data, key=keys, **kw), whole, rtol=1e-5, atol=1e-6)
    assert len(calls) > 1 and all(size < 5 for *_, size in calls)


def test_out_of_memory_splits_the_chunk_and_recovers(monkeypatch):
    real = chunks._execute

    def fake_oom(body, host, shared, devices, start, stop, size):
        if size > 2:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1 GiB (simulated)")
        return real(body, host, shared, devices, start, stop, size)

    want = chunks.run_chunks(_square_plus, _members(7), shared=jnp.float32(1))
    monkeypatch.setattr(chunks, "_execute", fake_oom)
    with pytest.warns(RuntimeWarning) as record:
        got = chunks.run_chunks(_square_plus, _members(7), shared=jnp.float32(1))
    assert [str(w.message) for w in record] == [
        "out of memory with 7 members per chunk; retrying with 3.",
        "out of memory with 3 members per chunk; retrying with 1."]
    _assert_same(got, want)
    np.testing.assert_allclose(got["y"], np.arange(7) ** 2 + 1)


def test_other_errors_are_not_retried(monkeypatch):
    monkeypatch.setattr(chunks, "_execute", lambda *a: (_ for _ in ()).throw(ValueError("bad")))
    with pytest.raises(ValueError, match="bad"):
        chunks.run_chunks(_square_plus, _members(3), shared=jnp.float32(0), chunk_size=1)


def test_a_chunk_size_below_one_is_refused_not_clamped():
    for size in (0, -3):
        with pytest.raises(ValueError, match=rf"chunk_size={size} is out of range"):
            chunks.run_chunks(_square_plus, _members(3), shared=jnp.float32(0), chunk_size=size)


def test_a_killed_run_resumes_from_its_stored_chunks(tmp_path, monkeypatch):
    """The run dies in its third chunk: two chunk files remain (no partial ones); the
    rerun computes only the rest and returns what an uninterrupted run returns."""
    want = chunks.run_chunks(_square_plus, _members(10), shared=jnp.float32(2), chunk_size=3)
    real, seen = chunks._execute, []

    def dies_at_third(body, host, shared, devices, start, stop, size):
        if start == 6:
            raise KeyboardInterrupt
        return real(body, host, shared, devices, start, stop, size)

    monkeypatch.setattr(chunks, "_execute", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        chunks.run_chunks(_square_plus, _members(10), shared=jnp.float32(2), chunk_size=3,
                          store=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000000000-000000003.npz", "000000003-000000006.npz", "manifest.json"]
    monkeypatch.setattr(chunks, "_execute", lambda *a: seen.append(a[4:6]) or real(*a))
    got = chunks.run_chunks(_square_plus, _members(10), shared=jnp.float32(2), chunk_size=3,
                            store=tmp_path)
    assert seen == [(6, 9), (9, 10)]
    _assert_same(got, want, rtol=0)
    seen.clear()  # everything is stored now: nothing runs
    again = chunks.run_chunks(_square_plus, _members(10), shared=jnp.float32(2), store=tmp_path)
    assert seen == []
    _assert_same(again, want, rtol=0)


def test_a_store_refuses_another_computation(tmp_path):
    chunks.run_chunks(_square_plus, _members(4), shared=jnp.float32(2), store=tmp_path)
    with pytest.raises(ValueError, match=r"store=.* holds chunks of a different computation"):
        chunks.run_chunks(_square_plus, _members(4), shared=jnp.float32(3), store=tmp_path)
    # inside storing() too: a store= the caller names is theirs, not the ambient one's
    # to replace (it was emptied, files that were no chunks included)
    (tmp_path / "notes.txt").write_text("mine")
    with (chunks.storing(tmp_path / "ambient"),
          pytest.raises(ValueError, match=r"holds chunks of a different computation")):
        chunks.run_chunks(_square_plus, _members(4), shared=jnp.float32(3), store=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_fit_stores_and_resumes(sweep, tmp_path):
    model, data, keys, kw, whole = sweep
    first = fit(model, data, key=keys, chunk_size=2, store=tmp_path, **kw)
    assert len(list(tmp_path.glob("*.npz"))) == 3
    _assert_same(first, whole, rtol=1e-5, atol=1e-6)
    again = fit(model, data, key=keys, chunk_size=2, store=tmp_path, **kw)
    _assert_same(again, first, rtol=0)
    with pytest.raises(ValueError, match="different computation"):
        fit(model, data, key=keys, chunk_size=2, store=tmp_path, **{**kw, "epochs": 40})


def test_fast_compile_options_leave_out_an_option_this_xla_lacks(monkeypatch):
    """A jaxlib without the older CPU emitters still gets LLVM optimisation off."""
    from overfit import sweep

    monkeypatch.setattr(sweep, "_OLDER_CPU_EMITTERS", "xla_cpu_no_such_emitters")
    assert sweep.fast_compile_options(jax.devices("cpu")) == {
        "xla_backend_optimization_level": 0}


def test_progress_bar_counts_models(capsys):
    chunks.run_chunks(_square_plus, _members(6), shared=jnp.float32(0), chunk_size=2,
                      progress=True)
    assert "6/6" in capsys.readouterr().err


def test_compiler_options_reach_xla():
    """The options are XLA's own: a known one gives the same numbers, an unknown one is
    XLA's error, so they are not dropped on the way."""
    from overfit.sweep import fast_compile_options

    level_0 = {"xla_backend_optimization_level": 0}
    assert fast_compile_options(jax.devices("cpu")) in (  # the second where XLA lacks the flag
        {**level_0, "xla_cpu_use_fusion_emitters": False}, level_0)
    want = chunks.run_chunks(_square_plus, _members(5), shared=jnp.float32(2))
    got = chunks.run_chunks(_square_plus, _members(5), shared=jnp.float32(2),
                            compiler_options=fast_compile_options())
    _assert_same(got, want)
    with pytest.raises(Exception, match="no_such_xla_option"):
        chunks.run_chunks(_square_plus, _members(5), shared=jnp.float32(2),
                          compiler_options={"no_such_xla_option": 1})


def test_empty_members_and_several_processes_without_store_are_errors():
    with pytest.raises(ValueError, match="at least one member"):
        chunks.run_chunks(_square_plus, _members(0), shared=jnp.float32(0))
    with pytest.raises(ValueError, match="2 processes share a sweep through its store"):
        chunks.run_chunks(_square_plus, _members(3), shared=jnp.float32(0), process=(0, 2))


def test_bad_programs_and_devices_are_named_errors():
    # an output without the members' axis was trimmed on another axis; no devices
    # divided by zero
    with pytest.raises(ValueError, match=r"float32 leaf of shape \(\) for one member; every "
                       r"output needs the members' leading axis"):
        chunks.run_chunks(lambda m, s: m["a"].sum(), _members(3), shared=None)
    with pytest.raises(ValueError, match=r"not PRNG keys"):
        chunks.run_chunks(lambda m, s: m["key"], _members(3), shared=None)
    with pytest.raises(ValueError, match=r"devices=\(\) has no device"):
        chunks.run_chunks(_square_plus, _members(3), shared=jnp.float32(0), devices=[])
    # one row per chunk passed the one-member trace and was broadcast over the chunk
    with pytest.raises(ValueError, match=r"returned 1 rows for a chunk of 2 members"):
        chunks.run_chunks(lambda m, s: jnp.sum(m["a"], keepdims=True), _members(6),
                          shared=None, chunk_size=2)


def test_host_devices_share_one_memory(monkeypatch):
    """Four CPU "devices" (--xla_force_host_platform_device_count) draw on one RAM:
    a chunk of them fits in the memory one device would be given, not four times it."""
    from types import SimpleNamespace
    monkeypatch.setattr(chunks, "device_memory", lambda d: 20 << 30)
    monkeypatch.setattr(chunks, "cache_bytes", lambda: 0)
    cpus = [SimpleNamespace(platform="cpu")] * 4
    gpus = [SimpleNamespace(platform="gpu")] * 4
    per = 1 << 30  # 1 GiB a member: half of 20 GiB holds 10
    assert chunks.chunk_size_for(per, 0, cpus[:1]) == 10
    assert chunks.chunk_size_for(per, 0, cpus) == 8  # 2 a device (was 10 each: 40)
    assert chunks.chunk_size_for(per, 0, gpus) == 40  # each accelerator has its own


def test_a_cgroup_limit_bounds_the_cpu_memory(tmp_path):
    """A container or SLURM job sees the host's free memory in /proc: its own limit is
    what it may use."""
    assert chunks._cgroup_free(tmp_path) == float("inf")  # no cgroup files: no bound
    (tmp_path / "memory.max").write_text("max\n")  # v2 without a limit
    (tmp_path / "memory.current").write_text("100\n")
    assert chunks._cgroup_free(tmp_path) == float("inf")
    (tmp_path / "memory.max").write_text(f"{8 << 30}\n")
    assert chunks._cgroup_free(tmp_path) == (8 << 30) - 100
    # page cache counts in the usage but is handed back on demand: a container whose
    # cache filled it up was left no memory, chunks of 1 member
    (tmp_path / "memory.current").write_text(f"{8 << 30}\n")
    (tmp_path / "memory.stat").write_text(f"anon 100\ninactive_file {6 << 30}\n")
    assert chunks._cgroup_free(tmp_path) == 6 << 30
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{2 << 30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{3 << 30}\n")
    assert chunks._cgroup_free(tmp_path / "v1") == 0


def test_overlapping_stored_chunks_give_each_member_once(tmp_path):
    """Runs of two chunk sizes sharing a store (a notebook rerun while the first still
    runs) leave overlapping files: each member is taken once (was an AssertionError,
    and under python -O twice the rows)."""
    want = chunks.run_chunks(_square_plus, _members(10), shared=jnp.float32(2))
    other = tmp_path / "other"
    chunks.run_chunks(_square_plus, _members(10), shared=jnp.float32(2), chunk_size=4,
                      store=tmp_path)
    chunks.run_chunks(_square_plus, _members(10), shared=jnp.float32(2), chunk_size=3,
                      store=other)
    for f in other.glob("*.npz"):
        f.rename(tmp_path / f.name)
    assert len(list(tmp_path.glob("*.npz"))) == 7
    got = chunks.run_chunks(_square_plus, _members(10), shared=jnp.float32(2), store=tmp_path)
    assert got["y"].shape == (10,)
    _assert_same(got, want, rtol=0)


def test_bfloat16_outputs_survive_a_resume(tmp_path):
    """np.savez keeps bfloat16 as raw bytes (|V2): a resumed run returned those bytes."""
    def half(members, shared):
        return (members["a"] * 1.5).astype(jnp.bfloat16)

    want = chunks.run_chunks(half, _members(6), shared=None, chunk_size=2, store=tmp_path)
    again = chunks.run_chunks(half, _members(6), shared=None, chunk_size=2, store=tmp_path)
    assert want.dtype == again.dtype == jnp.bfloat16
    np.testing.assert_array_equal(again.astype(np.float32), np.arange(6) * 1.5)


def test_the_recorded_chunk_size_is_the_one_that_ran(tmp_path, monkeypatch):
    """results.json states the chunk size; after an out-of-memory halving it stated
    the size that failed."""
    real = chunks._execute

    def fake_oom(body, host, shared, devices, start, stop, size):
        if size > 2:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory (simulated)")
        return real(body, host, shared, devices, start, stop, size)

    monkeypatch.setattr(chunks, "_execute", fake_oom)
    with chunks.storing(tmp_path) as stored, pytest.warns(RuntimeWarning):
        chunks.run_chunks(_square_plus, _members(8), shared=jnp.float32(1), chunk_size=4)
    assert stored.chunks == [{"members": 8, "chunk_size": 2}]


def test_of_processes_sharing_a_stale_ambient_store_only_the_first_empties_it(tmp_path):
    """Each process emptied a stale storing() subfolder: one could delete the manifest and
    chunks another had just written, and then wait forever for them. Now the others wait
    for process 0 to replace it, and both return the whole result."""
    import threading

    want = chunks.run_chunks(_square_plus, _members(8), shared=jnp.float32(2))
    with chunks.storing(tmp_path):  # a stale computation in subfolder 000
        chunks.run_chunks(_square_plus, _members(8), shared=jnp.float32(5), chunk_size=2)
    stale = (tmp_path / "000" / "manifest.json").read_text()
    got = {}

    def process(i):
        with chunks.storing(tmp_path):
            got[i] = chunks.run_chunks(_square_plus, _members(8), shared=jnp.float32(2),
                                       chunk_size=2, process=(i, 2), poll_s=0.05)

    second = threading.Thread(target=process, args=(1,))
    second.start()
    time.sleep(0.5)  # process 1 arrives first and must leave the stale folder alone
    assert (tmp_path / "000" / "manifest.json").read_text() == stale
    process(0)
    second.join(timeout=60)
    assert not second.is_alive()
    for i in (0, 1):
        _assert_same(got[i], want, rtol=0)


def test_two_jax_distributed_processes_share_a_fit_through_the_store(tmp_path):
    """Two processes joined by jax.distributed (on the CPU) make the same fit call with a
    shared store: each trains only its block of members, both return the whole result,
    equal to one process's."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = textwrap.dedent(f"""
        import json, sys
        import jax
        jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=2,
                                   process_id=int(sys.argv[1]), initialization_timeout=120)
        import numpy as np
        from overfit import chunks
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from test_chunks import _sweep_args
        from overfit.train import fit
        real, ran = chunks._execute, []
        chunks._execute = lambda *a: ran.append(a[4:6]) or real(*a)
        model, data, keys, kw = _sweep_args()
        res = fit(model, data, key=keys, chunk_size=2, store={str(tmp_path)!r}, **kw)
        print(json.dumps({{"count": jax.process_count(), "ran": ran,
                          "loss": np.asarray(res.history.train_loss).tolist()}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (0, 1)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    model, data, keys, kw = _sweep_args()
    want = fit(model, data, key=keys, **kw)
    assert [o["count"] for o in outs] == [2, 2]
    assert [tuple(r) for r in outs[0]["ran"]] == [(0, 2)]
    assert [tuple(r) for r in outs[1]["ran"]] == [(2, 4), (4, 5)]
    for out in outs:
        np.testing.assert_allclose(out["loss"], want.history.train_loss, rtol=1e-5)


def test_fit_inside_the_callers_jit_is_one_traced_program(sweep):
    """Under jax.jit there is nothing to chunk on the host: fit traces straight through
    and returns what the eager call returns."""
    model, data, keys, kw, whole = sweep
    traced = jax.jit(lambda k: fit(model, data, key=k, **kw))(keys)
    _assert_same(traced, whole, rtol=1e-5, atol=1e-6)
    # a store there was silently not written: no resume after a kill, with no word
    with pytest.raises(ValueError, match=r"cannot be written from inside a jit-compiled"):
        jax.jit(lambda k: fit(model, data, key=k, store="chunks", **kw))(keys)


def test_cpu_chunks_target_the_cache_but_hold_at_least_the_minimum(monkeypatch):
    """On a CPU the cache sets a target of whole chunks, never below CPU_MIN_CHUNK members."""
    cpu = jax.devices("cpu")[:1]
    monkeypatch.setattr(chunks, "device_memory", lambda d: 1 << 40)  # memory is no bound
    monkeypatch.setattr(chunks, "cache_bytes", lambda: 64 << 20)
    small = chunks.CPU_MIN_CHUNK
    # a footprint the cache would fit 19 of: the floor wins, and 64 members run as 2 x 32
    per = (64 << 20) // 19
    assert chunks.chunk_size_for(per, 0, cpu) == small
    assert chunks.chunk_size_for(per, 0, cpu, n_members=64) == -(-64 // round(64 / small))
    # 48 and 112 members: round(n / 32) chunks would hold 24 and 28, below the floor
    assert chunks.chunk_size_for(per, 0, cpu, n_members=48) == 48
    assert chunks.chunk_size_for(per, 0, cpu, n_members=112) == 38
    # a footprint the cache fits 40 of: 100 members, round(100 / 40) = 2 chunks of 50
    assert chunks.chunk_size_for((64 << 20) // 40, 0, cpu, n_members=100) == 50
    # memory bounds the chunk below the floor: 10 members fit
    monkeypatch.setattr(chunks, "device_memory", lambda d: 2 * 10 * per)
    assert chunks.chunk_size_for(per, 0, cpu, n_members=64) == 10
