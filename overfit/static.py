"""Static arguments compared by what they compute, not by which object they are.

``jax.jit`` and ``functools.lru_cache`` key compiled code on their static
arguments' ``==``, and a function equals only itself. A notebook that builds
``optax.adam(1e-2)`` or ``models.mlp(1, hidden=(32,))`` afresh in every call
of ``fit`` would recompile every time (seconds) for a program it already has.
:class:`Static` wraps such a value with a structural fingerprint instead: two
closures are equal when they run the same code over equal captured values and
equal referenced globals, so the second call reuses the first one's program.

The fingerprint is conservative. Whatever it does not know how to compare by
value (a generic object, a large array, a tracer, a recursive closure) is
compared by identity, which is what ``jit`` would have done anyway, and the
wrapper holds a reference to it so that its ``id`` cannot be reused. Values
are snapshot when the wrapper is built: a captured list changed later makes a
different key, where identity would have silently reused a stale program.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import jax
import numpy as np

T = TypeVar("T")

# Arrays up to this many elements are compared by value (closures over small
# constants); larger ones by identity, to keep building a key cheap.
_MAX_ARRAY = 4096
_SCALARS = (bool, int, float, complex, str, bytes)


class Static(Generic[T]):
    """``value`` as a cache key or ``jax.jit`` static argument, equal by fingerprint."""

    __slots__ = ("_hash", "_key", "value")

    def __init__(self, value: T):
        self.value = value
        self._key = fingerprint(value)
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and self._key == other._key

    def __repr__(self) -> str:
        return f"Static({self.value!r})"


class _Id:
    """Identity token: equal only to a token of the same (kept-alive) object."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Id) and other.obj is self.obj


def fingerprint(obj: Any) -> Hashable:
    """A hashable key equal for values that behave alike under ``jax.jit`` (see module doc)."""
    return _fingerprint(obj, set())


def _fingerprint(obj: Any, active: set[int]) -> Hashable:
    t = type(obj)
    if obj is None or t in _SCALARS:
        return t, obj  # the type too: 1, 1.0 and True promote differently in JAX
    if isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType, np.dtype)):
        return _Id(obj)
    if id(obj) in active:  # a cycle (a closure that calls itself): identity
        return _Id(obj)
    active.add(id(obj))
    try:
        return _compound(obj, t, active)
    finally:
        active.discard(id(obj))


def _compound(obj: Any, t: type, active: set[int]) -> Hashable:
    fp = functools.partial(_fingerprint, active=active)
    if isinstance(obj, (tuple, list)):  # NamedTuples too: the type tells them apart
        return t, tuple(fp(v) for v in obj)
    if isinstance(obj, dict):
        return t, tuple((fp(k), fp(v)) for k, v in obj.items())
    if isinstance(obj, (set, frozenset)):
        return t, frozenset(fp(v) for v in obj)
    if dataclasses.is_dataclass(obj):
        return t, tuple(fp(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, functools.partial):
        return t, fp(obj.func), fp(obj.args), fp(obj.keywords)
    if isinstance(obj, types.MethodType):
        return t, fp(obj.__func__), fp(obj.__self__)
    if isinstance(obj, (types.FunctionType, jax.custom_jvp, jax.custom_vjp)) and _importable(obj):
        return _Id(obj)  # a module's own function: one object for the process
    if isinstance(obj, types.FunctionType):
        return _function(obj, fp)
    if isinstance(obj, (jax.custom_jvp, jax.custom_vjp)):  # the function and its rules
        return t, fp(vars(obj))
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        return _array(obj)
    return _Id(obj)


def _function(fn: types.FunctionType, fp: Any) -> Hashable:
    try:
        cells = tuple(fp(c.cell_contents) for c in fn.__closure__ or ())
    except ValueError:  # an empty cell: a closure still being defined
        return _Id(fn)
    code, globs = fn.__code__, fn.__globals__
    used = tuple((name, fp(globs[name])) for name in _global_names(code) if name in globs)
    return (types.FunctionType, code, fp(fn.__defaults__), fp(fn.__kwdefaults__), cells, used)


def _importable(fn: Any) -> bool:
    """Whether ``fn`` is what its module (other than a notebook's ``__main__``) names it."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "<locals>")
    if module in (None, "__main__") or "<locals>" in name:
        return False
    obj: Any = sys.modules.get(module)
    for part in name.split("."):
        obj = getattr(obj, part, None)
    return obj is fn


@functools.lru_cache(maxsize=1024)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Names ``code`` (and the code nested in it) may look up in its globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_global_names(const))
    return tuple(sorted(names))


def _array(a: Any) -> Hashable:
    if isinstance(a, jax.core.Tracer) or np.size(a) > _MAX_ARRAY:
        return _Id(a)
    try:
        v = np.asarray(a)
    except Exception:  # typed PRNG keys, arrays on other hosts: no NumPy form here
        return _Id(a)
    if v.dtype.hasobject:  # its bytes would be pointers
        return _Id(a)
    return type(a), v.dtype.str, v.shape, v.tobytes()
