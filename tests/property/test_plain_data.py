"""The plain-data codec of checkpoint metadata: every plain value survives encode → JSON text → decode with its
exact types (a tuple stays a tuple, 1.0 stays a float, NaN stays NaN, dict keys of any plain type), and decoding
arbitrary JSON either yields plain data or raises PlainDataError — never anything else."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.core import plain_data
from headwater.core.plain_data import PlainDataError


@plain_data.register(name="tests.Token")
@dataclass(frozen=True)
class Token:
    checkpoint_id: int
    files: tuple[tuple[str, str], ...]
    extra: Any = None


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(), st.binary(),
)
hashable = st.recursive(scalars, lambda inner: st.tuples(inner, inner) | st.lists(inner, max_size=3).map(tuple), max_leaves=6)
plain = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(), inner, max_size=4),
        st.dictionaries(hashable, inner, max_size=4),
        st.builds(Token, st.integers(), st.lists(st.tuples(st.text(), st.text()), max_size=3).map(tuple), inner),
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (NaN equals NaN; dicts in any key order)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        # key order is not kept ($map keys are written sorted); keys keep their types
        return len(a) == len(b) and all(any(same(x, y) and same(a[x], b[y]) for y in b) for x in a)
    if isinstance(a, Token):
        return same((a.checkpoint_id, a.files, a.extra), (b.checkpoint_id, b.files, b.extra))
    return a == b


@settings(max_examples=400, deadline=None)
@given(plain)
def test_plain_values_round_trip_through_json_text_with_their_types(value: Any) -> None:
    text = json.dumps(plain_data.encode(value), allow_nan=False, sort_keys=True)
    assert same(plain_data.decode(json.loads(text)), value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["$tuple", "$bytes", "$float", "$map", "$dict", "$dataclass", "x"]) | st.text(), inner, max_size=2),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_decoding_any_json_yields_plain_data_or_a_plain_data_error(data: Any) -> None:
    try:
        value = plain_data.decode(data)
    except PlainDataError:
        return
    assert same(plain_data.decode(plain_data.encode(value)), value)


class NotPlain:
    pass


@given(plain)
def test_a_value_that_is_not_plain_data_is_named_with_its_place(value: Any) -> None:
    try:
        plain_data.encode([value, {"deep": (NotPlain(),)}])
    except PlainDataError as exc:
        assert "NotPlain is not plain data" in str(exc) and exc.where == "[1]['deep'][0]"
    else:
        raise AssertionError("an unregistered class was encoded")
