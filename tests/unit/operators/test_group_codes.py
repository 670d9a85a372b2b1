"""Dense group codes and the grouped reductions over them (the numpy path of max_by partials)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.operators.aggregation.accumulators import _group_codes, _Groups, _run_codes

VALUES = st.lists(st.integers(-3, 3), min_size=1, max_size=50)


def first_appearance_codes(values: list[object]) -> list[int]:
    seen: dict[object, int] = {}
    return [seen.setdefault(v, len(seen)) for v in values]


@settings(max_examples=200, deadline=None)
@given(values=VALUES, ordered=st.booleans(), kind=st.sampled_from([pa.int64(), pa.int8(), pa.timestamp("ms")]))
def test_codes_number_groups_in_order_of_first_appearance(values: list[int], ordered: bool, kind: pa.DataType) -> None:
    values = sorted(values) if ordered else values
    table = pa.table({"k": pa.array(values, pa.int64()).cast(kind)})
    assert _group_codes(table, ["k"]).tolist() == first_appearance_codes(values)
    if ordered:  # ascending runs take the one-pass path
        assert _run_codes(table.column("k")) is not None


def test_run_codes_decline_what_they_cannot_number() -> None:
    assert _run_codes(pa.chunked_array([[1, 1, 2, 1]])) is None  # 1 comes back after 2
    assert _run_codes(pa.chunked_array([[2, 1]])) is None  # descending
    assert _run_codes(pa.chunked_array([[1, None, 2]])) is None  # nulls go through dictionary encoding
    assert _run_codes(pa.chunked_array([["a", "b"]])) is None  # not integers
    assert _run_codes(pa.chunked_array([[5, 5, 7, 9, 9]])).tolist() == [0, 0, 1, 2, 2]


@settings(max_examples=200, deadline=None)
@given(keys=VALUES, data=st.data())
def test_grouped_reductions_match_a_row_loop(keys: list[int], data: st.DataObject) -> None:
    codes = np.array(first_appearance_codes(keys), dtype=np.int64)
    if data.draw(st.booleans()):
        codes = np.sort(codes)  # the reduceat path
    values = np.array(data.draw(st.lists(st.integers(-100, 100), min_size=len(keys), max_size=len(keys))), np.int64)
    valid = np.array(data.draw(st.lists(st.booleans(), min_size=len(keys), max_size=len(keys))), dtype=bool)
    mask = None if data.draw(st.booleans()) else valid
    groups = _Groups(codes)
    keep = np.ones(len(codes), bool) if mask is None else mask
    for g in range(groups.count):
        rows = np.flatnonzero(codes == g)
        kept = [int(values[r]) for r in rows if keep[r]]
        assert groups.first_rows()[g] == rows[0]
        assert groups.sizes(mask)[g] == len(kept)
        assert groups.reduce(np.add, values, 0, mask)[g] == sum(kept)
        assert groups.reduce(np.maximum, values, -10**9, mask)[g] == max(kept, default=-10**9)
        assert groups.reduce(np.minimum, values, 10**9, mask)[g] == min(kept, default=10**9)
