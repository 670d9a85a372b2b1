"""Key indexes: ``find`` (look keys up without adding them) and ``distinct_rows`` against a dict model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.core.state.key_index import GeneralKeyIndex, IntegerKeyIndex, distinct_rows, make_key_index

FAST = settings(max_examples=80, deadline=None)
COLUMNS = {
    "int": [(pa.int64(), st.one_of(st.none(), st.integers(-3, 3), st.just(2**62)))],
    "string": [(pa.string(), st.one_of(st.none(), st.sampled_from(["", "a", "b", "ünï"])))],
    "float": [(pa.float64(), st.one_of(st.none(), st.sampled_from([0.5, -1.0, float("nan")])))],
    "multi": [(pa.string(), st.one_of(st.none(), st.sampled_from(["x", "y"]))), (pa.int32(), st.integers(0, 2))],
}


def canonical(value: Any) -> Any:
    return "NaN" if isinstance(value, float) and value != value else value


def rows_strategy(name: str) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    return st.lists(st.tuples(*(values for _, values in COLUMNS[name])), max_size=30)


def arrays(name: str, rows: list[tuple[Any, ...]]) -> list[pa.Array]:
    return [pa.array([r[i] for r in rows], kind) for i, (kind, _) in enumerate(COLUMNS[name])]


@pytest.mark.parametrize("name", sorted(COLUMNS))
@FAST
@given(data=st.data())
def test_find_agrees_with_a_dict_and_adds_nothing(name: str, data: st.DataObject) -> None:
    inserted = list(dict.fromkeys(data.draw(rows_strategy(name)), None))  # distinct, as slots_for requires
    inserted = list({tuple(canonical(v) for v in r): r for r in inserted}.values())
    probed = data.draw(rows_strategy(name))
    index = make_key_index([kind for kind, _ in COLUMNS[name]])
    assert isinstance(index, IntegerKeyIndex if name == "int" else GeneralKeyIndex)
    model: dict[Any, int] = {}
    if inserted:
        slots = index.slots_for(arrays(name, inserted))
        model = {tuple(canonical(v) for v in r): int(s) for r, s in zip(inserted, slots)}
    size = len(index)
    found = index.find(arrays(name, probed)) if probed else np.empty(0, np.int64)
    assert found.tolist() == [model.get(tuple(canonical(v) for v in r), -1) for r in probed]
    assert len(index) == size


@pytest.mark.parametrize("name", sorted(COLUMNS))
@FAST
@given(data=st.data())
def test_distinct_rows_numbers_each_distinct_key_once(name: str, data: st.DataObject) -> None:
    rows = data.draw(rows_strategy(name).filter(bool))
    first, inverse = distinct_rows(arrays(name, rows))
    keys = [tuple(canonical(v) for v in r) for r in rows]
    assert len(first) == len(set(keys))
    assert sorted(first.tolist()) == sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())
    for row, number in enumerate(inverse.tolist()):
        assert keys[int(first[number])] == keys[row]
