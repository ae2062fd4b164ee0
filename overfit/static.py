"""Static arguments compared by what they compute, not by which object they are.

``jax.jit`` and ``functools.lru_cache`` key compiled code on their static
arguments' ``==``, and a function equals only itself. A notebook that builds
``optax.adam(1e-2)`` or ``models.mlp(1, hidden=(32,))`` afresh in every call
of ``fit`` would recompile every time (seconds) for a program it already has.
:class:`Static` wraps such a value with a structural fingerprint instead: two
closures are equal when they run the same code over equal captured values and
equal referenced globals, so the second call reuses the first one's program.

The fingerprint never makes two keys equal where identity would not have been
safe. Immutable values (numbers, strings, tuples, frozen dataclasses, JAX
arrays, library functions, modules and classes) compare by value. Mutable
containers (lists, dicts, NumPy arrays, other dataclasses) compare by identity
AND by their contents when the key is built, so a cached program traced from
one is never handed another object, nor the same one after it changed. A
function that reaches anything else (a generic object whose attributes may
change, a notebook's class) is compared by identity as a whole, as ``jit``
would have compared it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import sys
import types
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

import jax
import numpy as np

T = TypeVar("T")

# Arrays up to this many elements compare by value (closures over small constants); a
# larger JAX array by identity, a larger NumPy one makes its closure compare by identity.
_MAX_ARRAY = 4096
_MAX_DEPTH = 100
_EXACT = (bool, int, str, bytes, type(None))
_MUTABLE = (list, dict, set, collections.OrderedDict)


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
    """A hashable key, equal only for values that trace to the same programs (module doc)."""
    try:
        return _Walk().key(obj)
    except RecursionError:  # under a recursion limit lowered below _MAX_DEPTH's needs
        return _Id(obj)


class _Walk:
    """One fingerprint's traversal: cycle guard, memo of finished nodes, and whether
    the function being keyed reached something that may change unseen (``opaque``)."""

    def __init__(self) -> None:
        self.active: set[int] = set()
        self.memo: dict[int, tuple[Any, Hashable, bool]] = {}  # id -> (obj, key, opaque)
        self.opaque = False

    def key(self, obj: Any) -> Hashable:
        t = type(obj)
        if t in _EXACT:
            return t, obj  # the type too: 1 and True promote differently in JAX
        if t is float:
            return t, obj.hex()  # 0.0 == -0.0, but 1 / x tells them apart
        if t is complex:
            return t, obj.real.hex(), obj.imag.hex()
        if id(obj) in self.memo:
            _, key, opaque = self.memo[id(obj)]
            self.opaque |= opaque
            return key
        # a cycle (a closure that calls itself), or nesting deep enough to overflow
        # the stack where JAX has raised Python's recursion limit: identity
        if id(obj) in self.active or len(self.active) >= _MAX_DEPTH:
            self.opaque = True
            return _Id(obj)
        self.active.add(id(obj))
        outer, self.opaque = self.opaque, False
        try:
            key = self._compound(obj, t)
            self.memo[id(obj)] = (obj, key, self.opaque)  # obj kept: its id stays unique
            return key
        finally:
            self.active.discard(id(obj))
            self.opaque |= outer

    def _compound(self, obj: Any, t: type) -> Hashable:
        if _importable(obj):
            return _Id(obj)  # a library's own function or class: one object for the process
        if isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType)):
            self.opaque |= getattr(obj, "__module__", None) == "__main__"  # a notebook's class
            return _Id(obj)
        if isinstance(obj, np.dtype):
            return np.dtype, obj
        if t is tuple or (isinstance(obj, tuple) and hasattr(obj, "_fields")):  # NamedTuples
            return t, tuple(map(self.key, obj))
        if t in _MUTABLE:
            items = obj.items() if isinstance(obj, dict) else obj
            parts = tuple(self.key(v) for v in items)
            return t, _Id(obj), frozenset(parts) if isinstance(obj, set) else parts
        if t is frozenset:
            return t, frozenset(map(self.key, obj))
        if dataclasses.is_dataclass(obj):
            state = vars(obj) if hasattr(obj, "__dict__") else {
                f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)}
            frozen = type(obj).__dataclass_params__.frozen  # else: the object's identity too
            return t, self.key(t), self._items(state), None if frozen else _Id(obj)
        if isinstance(obj, functools.partial):
            return t, self.key(obj.func), self.key(obj.args), self.key(obj.keywords)
        if isinstance(obj, types.MethodType):
            return t, self.key(obj.__func__), self.key(obj.__self__)
        if isinstance(obj, types.FunctionType):
            key = self._function(obj)
            return _Id(obj) if self.opaque else key
        if isinstance(obj, (jax.custom_jvp, jax.custom_vjp)):  # the function and its rules
            rules = {k: v for k, v in vars(obj).items() if not k.startswith("__")}  # not docs
            key = t, self._items(rules)
            return _Id(obj) if self.opaque else key
        if isinstance(obj, jax.Array) and not isinstance(obj, jax.core.Tracer):
            return self._array(obj, immutable=True)
        if isinstance(obj, (np.ndarray, np.generic)):
            return self._array(obj, immutable=isinstance(obj, np.generic))
        self.opaque = True
        return _Id(obj)

    def _function(self, fn: types.FunctionType) -> Hashable:
        try:
            contents = [c.cell_contents for c in fn.__closure__ or ()]
        except ValueError:  # an empty cell: a closure still being defined
            self.opaque = True
            return _Id(fn)
        cells = tuple(map(self.key, contents))
        code, globs = fn.__code__, fn.__globals__
        names = _global_names(code)
        used = tuple((name, self.key(globs[name])) for name in names if name in globs)
        modules = [v for v in (*contents, *(globs[n] for n in names if n in globs))
                   if isinstance(v, types.ModuleType)]
        read = tuple(self._read(module, names) for module in modules)
        defaults = self.key(fn.__defaults__), self._items(fn.__kwdefaults__ or {})
        return types.FunctionType, code, defaults, cells, used, read

    def _read(self, module: types.ModuleType, names: tuple[str, ...]) -> Hashable:
        """What code may read from ``module`` (itself keyed by identity): a value such as
        ``helpers.SCALE``, edited between two calls, by value, as a global of its own
        would be; an object that may change unseen by identity, as before, without
        making the reading function opaque."""
        read = []
        for attr in names:
            if not hasattr(module, attr):
                continue
            value = getattr(module, attr)
            outer, self.opaque = self.opaque, False
            key = self.key(value)
            read.append((attr, _Id(value) if self.opaque else key))
            self.opaque = outer
        return tuple(read)

    def _items(self, attributes: dict[str, Any]) -> Hashable:
        """An object's own attribute dict, by contents: its identity is the object's."""
        return tuple((name, self.key(v)) for name, v in attributes.items())

    def _array(self, a: Any, *, immutable: bool) -> Hashable:
        if immutable and np.size(a) > _MAX_ARRAY:
            return _Id(a)  # exact, and no copy to the host
        try:
            v = np.asarray(a)
        except Exception:  # typed PRNG keys, arrays on other hosts: no NumPy form here
            return _Id(a)  # immutable (a JAX array): identity is exact
        if v.dtype.hasobject or v.size > _MAX_ARRAY:
            self.opaque = True
            return _Id(a)
        # the dtype itself (float8 / int4 kinds share one .str), and JAX's weak typing
        key = type(a), v.dtype, v.shape, getattr(a, "weak_type", False), v.tobytes()
        return key if immutable else (*key, _Id(a))


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
