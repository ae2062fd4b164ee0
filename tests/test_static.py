"""Static keys: equal when the programs would be, different whenever they could differ."""

import collections
import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import overfit as of
from overfit.clock import CompileClock
from overfit.static import Static

SCALE = 2.0


def _scaled(scale):
    return lambda x: scale * x


@dataclasses.dataclass(frozen=True)
class _Frozen:
    w: float


def _recursive():
    def f(n):
        return 1 if n == 0 else n * f(n - 1)
    return f


def test_fresh_optax_optimizers_models_and_rules_are_equal_keys():
    assert Static(optax.adam(1e-2)) == Static(optax.adam(1e-2))
    assert hash(Static(optax.adam(1e-2))) == hash(Static(optax.adam(1e-2)))
    assert Static(of.models.mlp(1, hidden=(16,))) == Static(of.models.mlp(1, hidden=(16,)))
    rule = of.early_stopping.patience
    assert Static(rule(patience=5)) == Static(rule(patience=5))


@pytest.mark.parametrize("a, b", [
    (optax.adam(1e-2), optax.adam(1e-3)),
    (optax.adam(1e-2), optax.sgd(1e-2)),
    (of.models.mlp(1, hidden=(16,)), of.models.mlp(1, hidden=(32,))),
    (of.models.mlp(1, hidden=(16,)), of.models.mlp(1, hidden=(16,), activation="relu")),
    (of.early_stopping.patience(patience=5), of.early_stopping.patience(patience=6)),
    (_scaled(1), _scaled(1.0)),  # int and float promote differently in JAX
    (_scaled(1.0), _scaled(True)),
    (_scaled(np.float32(1.0)), _scaled(np.float64(1.0))),
    (_scaled(jnp.arange(3.0)), _scaled(jnp.arange(1.0, 4.0))),
    (_scaled(object()), _scaled(object())),  # unknown objects: by identity
    (_scaled(0.0), _scaled(-0.0)),  # equal floats, but 1 / x tells them apart
    (_scaled(jnp.asarray(2.0)), _scaled(jnp.asarray(2.0, jnp.float32))),  # weak type
    (_scaled(jnp.full(3, -1, jnp.int4)), _scaled(jnp.full(3, 15, jnp.uint4))),  # same bytes
    (_scaled([1.0]), _scaled([1.0])),  # mutable: by identity and contents
])
def test_anything_that_could_change_the_program_changes_the_key(a, b):
    assert Static(a) != Static(b)


def test_equal_captured_values_give_equal_keys():
    assert Static(_scaled(jnp.arange(3.0))) == Static(_scaled(jnp.arange(3.0)))
    assert Static(_scaled(_Frozen(1.0))) == Static(_scaled(_Frozen(1.0)))
    big = jnp.zeros(10_000)  # immutable, compared by identity: equal only to itself
    assert Static(_scaled(big)) == Static(_scaled(big))
    assert Static(_scaled(big)) != Static(_scaled(jnp.zeros(10_000)))


def test_a_referenced_global_is_part_of_the_key(monkeypatch):
    f = lambda x: SCALE * x  # noqa: E731
    before = Static(f)
    monkeypatch.setattr(f"{__name__}.SCALE", 3.0)
    assert Static(f) != before


def test_a_value_read_from_a_module_is_part_of_the_key(monkeypatch):
    """A module global is one object, whatever it holds: a fresh closure reading
    helpers.SCALE after an edit (a notebook's reloaded module) must not reuse the
    program traced with the old value."""
    helpers = types.ModuleType("helpers")
    helpers.SCALE = 1.0
    monkeypatch.setitem(globals(), "helpers", helpers)

    def make():
        return lambda m, shared: m * helpers.SCALE

    assert Static(make()) == Static(make())
    before = Static(make())
    np.testing.assert_allclose(of.map_members(make(), jnp.arange(3.0)), [0.0, 1.0, 2.0])
    helpers.SCALE = 10.0
    assert Static(make()) != before
    np.testing.assert_allclose(of.map_members(make(), jnp.arange(3.0)), [0.0, 10.0, 20.0])


def test_objects_that_may_change_unseen_make_their_closure_compare_by_identity():
    holder = types.SimpleNamespace(scale=1.0)
    f = lambda x: holder.scale * x  # noqa: E731
    before = Static(_scaled(holder))
    holder.scale = 3.0  # a fresh closure over the changed holder must not reuse the old key
    assert Static(_scaled(holder)) != before
    assert Static(f) == Static(f)
    counts = collections.defaultdict(float)  # its default_factory is not compared
    assert Static(_scaled(counts)) != Static(_scaled(counts))
    frozen = _Frozen(1.0)
    object.__setattr__(frozen, "extra", 2.0)  # outside the fields, still compared
    assert Static(_scaled(frozen)) != Static(_scaled(_Frozen(1.0)))
    token = object()  # a generic object's attributes could change
    assert Static(_scaled(token)) != Static(_scaled(token))
    big = np.zeros(10_000)  # too large to snapshot, and writeable
    assert Static(_scaled(big)) != Static(_scaled(big))


def test_deep_and_shared_closures_get_keys_without_blowing_up():
    f = lambda x: x  # noqa: E731
    for _ in range(3000):  # deeper than Python's recursion limit: falls back to identity
        f = _scaled(f)
    assert Static(f) == Static(f)
    layer = [lambda x: x, lambda x: -x]
    for _ in range(60):  # 2**60 paths through shared helpers: the memo visits each once
        g, h = layer
        layer = [lambda x, g=g, h=h: g(x) + h(x), lambda x, g=g, h=h: g(x) * h(x)]
    assert Static(layer[0]) == Static(layer[0])


def test_a_key_snapshots_mutable_captured_values():
    values = [1.0]
    f = _scaled(values)
    before = Static(f)
    values.append(2.0)
    assert Static(f) != before


def test_a_recursive_closure_gets_a_key():
    f = _recursive()
    assert Static(f) == Static(f)
    assert Static(f) != Static(_recursive())  # compared by identity, conservatively


def test_fit_with_a_fresh_equal_optimizer_and_model_compiles_nothing_new():
    data = of.data.regression(jax.random.key(0), n_train=12, n_val=8, n_test=8)
    keys = jax.random.split(jax.random.key(1), 3)

    def run(lr):
        model = of.models.mlp(1, hidden=(8,))
        return of.fit(model, data, key=keys, optimizer=optax.adam(lr), epochs=20)

    first = run(1e-2)
    with CompileClock() as clock:
        again = run(1e-2)
    assert clock.compiles == 0
    np.testing.assert_array_equal(again.history.train_loss, first.history.train_loss)
    with CompileClock() as clock:
        other = run(1e-1)
    # a key too coarse would hand lr=0.1 the lr=0.01 program: same curve, no compile
    assert clock.compiles > 0
    assert not np.allclose(other.history.train_loss, first.history.train_loss)


def test_map_members_reuses_the_program_of_an_equal_closure():
    def shifted(scale):
        return lambda m, s: scale * m + s

    members = jnp.arange(4.0)
    first = of.map_members(shifted(3.0), members, shared=1.0)
    with CompileClock() as clock:
        again = of.map_members(shifted(3.0), members, shared=1.0)
    assert clock.compiles == 0
    with CompileClock() as clock:
        other = of.map_members(shifted(5.0), members, shared=1.0)
    assert clock.compiles > 0
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(first, 3.0 * np.arange(4.0) + 1.0)
    np.testing.assert_array_equal(other, 5.0 * np.arange(4.0) + 1.0)


def test_the_clock_tells_programs_loaded_from_the_persistent_cache(request):
    """A load from the on-disk cache is timed by JAX as a backend compile: the clock
    counts it as a program built, and as a cache hit."""
    if not jax.config.jax_compilation_cache_dir:
        pytest.skip("no persistent compilation cache configured")
    for name, value in (("jax_persistent_cache_min_compile_time_secs", 0.0),
                        ("jax_persistent_cache_min_entry_size_bytes", 0)):
        request.addfinalizer(functools.partial(jax.config.update, name,
                                               getattr(jax.config, name)))
        jax.config.update(name, value)  # a tiny program is cached too

    def program(x):  # a constant of its own: no other test compiles this program
        return jnp.sin(x) * 0.123456789

    x = jnp.arange(3.0)
    with CompileClock() as first:
        jax.jit(program)(x).block_until_ready()
    jax.clear_caches()  # in-memory caches only: the next call reads the disk
    with CompileClock() as again:
        jax.jit(program)(x).block_until_ready()
    assert (first.compiles, again.compiles, again.cache_hits) == (1, 1, 1)


def test_a_stopped_clock_unregisters_its_listeners():
    """Every scenario run makes a clock: stopped ones stayed registered for the life of
    the process, each called on every JAX event."""
    from jax._src import monitoring

    def count() -> tuple[int, int]:
        return (len(monitoring.get_event_duration_listeners()),
                len(monitoring.get_event_listeners()))

    before = count()
    with CompileClock() as clock:
        assert count() == (before[0] + 1, before[1] + 1)
        jax.jit(lambda x: x * 0.987654321)(jnp.arange(2.0)).block_until_ready()
    clock.stop()  # a second stop is harmless
    assert count() == before and clock.compiles >= 1


def test_a_clock_stops_on_a_jax_without_unregistering(monkeypatch):
    """jax before 0.8.1 has no public unregister: the clock then just goes silent (it
    raised AttributeError at the end of every scenario there)."""
    monkeypatch.delattr(jax.monitoring, "unregister_event_listener")
    with CompileClock() as clock:
        pass
    jax.jit(lambda x: x * 0.123987)(jnp.arange(2.0)).block_until_ready()
    assert clock.compiles == 0
