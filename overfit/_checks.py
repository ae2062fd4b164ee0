"""Argument checks that name the field and the allowed values.

Checks run on concrete Python/NumPy values only: a traced value (inside jit or
vmap) cannot be inspected, so it passes through and the caller's own host-side
check is the guard.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np


def is_concrete(value: Any) -> bool:
    """True when `value` can be inspected on the host (not a JAX tracer)."""
    return not any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(value))


def check_scalar(field: str, value: Any,
                 hint: str = "vmap over values for one data set each") -> Any:
    """Raise ValueError unless `value` is a scalar (a traced one under vmap is too): one
    value per data set or model, where an array would broadcast against some other axis
    (a draw's points, a weight matrix's entries)."""
    if np.ndim(value) != 0:
        raise ValueError(f"{field} must be a scalar; got shape {np.shape(value)} ({hint}).")
    return value


def check_key(field: str, key: Any, *, batch: bool = False) -> Any:
    """Raise ValueError unless ``key`` is a PRNG key, typed or raw uint32 key data (or,
    ``batch``, a stack of them): an int seed fails deep inside ``jax.random`` otherwise."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    # raw key data is (2,) under threefry, (4,) under rbg: asked only for raw keys
    if dtype == np.uint32 and np.shape(key)[-1:] == jax.random.key_data(
            jax.random.key(0)).shape:
        return key
    more = ", or M of them (jax.random.split(key, M))" if batch else ""
    raise ValueError(f"{field} must be a PRNG key, jax.random.key(seed){more}; got "
                     f"{type(key).__name__} {key!r:.60}.")


def one_edit_apart(a: str, b: str) -> bool:
    """Whether ``a`` becomes ``b`` by one insertion, deletion, substitution or swap of
    neighbours: a typo ('degre', 'widht'), not a related name ('rate', 'n_features')."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    if len(a) < len(b):
        return a[i:] == b[i + 1:]
    return a[i + 1:] == b[i + 1:] or (a[i + 1:i + 2] == b[i:i + 1]
                                      and a[i:i + 1] == b[i + 1:i + 2] and a[i + 2:] == b[i + 2:])


def check_domain(domain: Any) -> tuple[float, float]:
    """``(lo, hi)`` as finite floats with lo < hi, or a ValueError naming ``domain``."""
    try:
        if isinstance(domain, str | bytes):  # "01" would unpack into (0.0, 1.0)
            raise TypeError
        lo, hi = (float(v) for v in domain)
    except (TypeError, ValueError):
        raise ValueError(
            f"domain={domain!r} must be a pair (lo, hi) of finite numbers with lo < hi."
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"domain={domain!r} is not allowed; it needs finite lo < hi.")
    return lo, hi


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> Any:
    """Raise ValueError unless `value` is one of `choices`, suggesting the closest."""
    choices = list(choices)
    if value in choices:
        return value
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
    allowed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{field}={value!r} is not allowed; choose one of {allowed}.{hint}")


def interval(lo: float | None, hi: float | None, lo_open: bool = False,
             hi_open: bool = False) -> str:
    """``[0, 4294967295]``, ``(0, 1)``, ``[1, inf)``: infinity is never allowed."""
    def number(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    left = "-inf" if lo is None else number(lo)
    right = "inf" if hi is None else number(hi)
    return (f"{'(' if lo_open or lo is None else '['}{left}, "
            f"{right}{')' if hi_open or hi is None else ']'}")


def check_range(
    field: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    whole: bool = False,
) -> Any:
    """Raise ValueError unless every element of `value` lies in the interval.

    `lo_open`/`hi_open` exclude the end point, e.g. a flip rate in [0, 1)
    is `check_range("flip", q, lo=0, hi=1, hi_open=True)`. `whole` also asks for
    whole numbers (a capacity: 2.5 would be cut to 2 when cast to an integer).
    """
    if not is_concrete(value):
        return value
    if isinstance(value, (str, bytes)):  # np.asarray("0.1", float) would take it
        raise ValueError(f"{field}={value!r} must be a number, not a string.")
    arr = np.asarray(value, dtype=float)
    if whole and np.any(np.isfinite(arr) & (arr != np.round(arr))):
        raise ValueError(f"{field}={_shown(value)} must be a whole number (or whole numbers)."
                         if arr.size <= 8 else f"{field} must hold whole numbers.")
    bad = ~np.isfinite(arr)
    if lo is not None:
        bad |= arr <= lo if lo_open else arr < lo
    if hi is not None:
        bad |= arr >= hi if hi_open else arr > hi
    if np.any(bad):
        allowed = interval(lo, hi, lo_open, hi_open)
        if arr.size > 8:  # a long array's repr would bury the message
            raise ValueError(f"{field} has {int(bad.sum())} of {arr.size} values out of range "
                             f"(first: {arr[bad].flat[0]:g}); allowed values lie in {allowed}.")
        raise ValueError(f"{field}={_shown(value)} is out of range; allowed values lie in "
                         f"{allowed}.")
    return value


def _shown(value: Any) -> str:
    """A value as a user typed it: an array's numbers, not ``Array(-0.1, dtype=float32)``."""
    if not hasattr(value, "dtype"):
        return repr(value)
    arr = np.asarray(value)  # numpy's str of a float32 is its shortest form: -0.1
    if arr.ndim == 0:
        return str(arr[()])
    return "[" + ", ".join(str(x) for x in arr) + "]" if arr.ndim == 1 else repr(arr.tolist())


def check_int(field: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    """Raise ValueError unless `value` is an integer in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{field}={value!r} must be an integer.")
    check_range(field, value, lo=lo, hi=hi)
    return int(value)
