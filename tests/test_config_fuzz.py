"""Property-based: any config, however malformed, loads or fails with one clear line.

Random mutations of a real scenario table (known and unknown keys, values of every
type, NaN and infinities, wrong nesting) must give either a valid Scenario or a
ValueError whose single-line message names the offending field; never another
exception from deep inside.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overfit import scenario

BASE = tomllib.loads((Path(__file__).parent.parent / "scenarios" / "capacity_curve.toml")
                     .read_text())
SECTIONS = {f.name: [g.name for g in dataclasses.fields(f.default_factory())]
            for f in dataclasses.fields(scenario.Scenario)
            if f.default_factory is not dataclasses.MISSING}
TOP = [f.name for f in dataclasses.fields(scenario.Scenario) if f.name not in SECTIONS]

scalars = st.one_of(
    st.integers(min_value=-10**12, max_value=10**12), st.floats(allow_nan=True),
    st.booleans(), st.text(max_size=12), st.sampled_from(["cos", "mlp", "adam", "grid", ""]))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(
    st.text(max_size=5), scalars, max_size=2))
paths = st.one_of(
    st.sampled_from([(s, k) for s, keys in SECTIONS.items() for k in keys]),
    st.sampled_from([(k,) for k in TOP]),
    st.tuples(st.sampled_from(list(SECTIONS)), st.text(min_size=1, max_size=8)),
    st.tuples(st.text(min_size=1, max_size=8)))


def _mutate(mutations) -> dict:
    table = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for path, value in mutations:
        node = table
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value
    return table


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(paths, values), min_size=1, max_size=3))
def test_any_config_loads_or_is_rejected_in_one_line_naming_the_field(mutations):
    table = _mutate(mutations)
    try:
        sc = scenario.from_dict(table)
    except ValueError as e:
        message = str(e)
        assert "\n" not in message and message, message
        named = {p[-1] for p, _ in mutations} | {p[0] for p, _ in mutations}
        assert any(n in message or repr(n) in message for n in named) or "domain" in message, \
            message
        return
    for section in SECTIONS:  # accepted: every number is finite and in range
        for key, value in dataclasses.asdict(getattr(sc, section)).items():
            for v in value if isinstance(value, list) else [value]:
                assert not (isinstance(v, float) and not math.isfinite(v)) or v == math.inf \
                    and key == "domain", (section, key, v)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_any_set_override_loads_or_is_rejected_in_one_line(text):
    path = Path(__file__).parent.parent / "scenarios" / "capacity_curve.toml"
    try:
        scenario.load(path, [text])
    except ValueError as e:
        assert "\n" not in str(e) and str(e)
