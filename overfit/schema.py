"""One schema for every scenario field: type, range, allowed values, docs.

A section is a frozen dataclass whose fields are declared with :func:`knob`.
:func:`build` turns a TOML table into that dataclass, rejecting unknown keys
(with a did-you-mean), wrong types and out-of-range values in one-line errors
that name the field, e.g. ``data.noise=-1 is out of range; ...``.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any

from overfit._checks import check_choice, check_range, interval


def knob(default: Any, doc: str, *, choices: tuple | None = None, lo: float | None = None,
         hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A schema field: its default, one line of docs, and what values it allows."""
    meta = dict(doc=doc, choices=choices, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    if isinstance(default, list | tuple):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(where: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}={value!r} must be a list of {_type_name(item)}.")
        return [_coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"{where}={value!r} must be of type {_type_name(tp)}.")
    return value


INT_MAX = 2**31 - 1  # counts and sizes index int32 arrays in JAX


def _check(where: str, value: Any, meta: Mapping[str, Any]) -> None:
    items = ([(f"{where}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list)
             else [(where, value)])
    for name, v in items:
        if meta["choices"] is not None:
            check_choice(name, v, meta["choices"])
        hi = meta["hi"]
        if hi is None and isinstance(v, int):
            hi = INT_MAX
        if meta["lo"] is not None or hi is not None:
            check_range(name, v, lo=meta["lo"], hi=hi, lo_open=meta["lo_open"],
                        hi_open=meta["hi_open"])


def build(cls: type, table: Mapping[str, Any], where: str) -> Any:
    """Validate ``table`` against the dataclass ``cls``; ``where`` prefixes field names."""
    if not isinstance(table, Mapping):
        raise ValueError(f"{where} must be a table of keys, got {table!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        shown = key if key.isidentifier() else repr(key)  # a key may hold anything
        name = f"{where}.{shown}" if where else shown
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{name} is not a known key.{hint} Allowed: {', '.join(fields)}.")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = build(tp, value, name)
            continue
        values[key] = _coerce(name, value, tp)
        _check(name, values[key], fields[key].metadata)
    return cls(**values)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows ``(key, type, default, allowed + doc)`` of every field, for the docs table."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], name + ".")
            continue
        meta = f.metadata
        allowed = ""
        if meta.get("choices"):
            allowed = " | ".join(map(str, meta["choices"]))
        elif meta.get("lo") is not None or meta.get("hi") is not None:
            hi = meta["hi"]
            if hi is None and _type_name(hints[f.name]) in ("int", "list[int]"):
                hi = INT_MAX
            allowed = interval(meta["lo"], hi, meta["lo_open"], meta["hi_open"])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((name, _type_name(hints[f.name]), repr(default), f"{allowed} {meta['doc']}"))
    return rows
