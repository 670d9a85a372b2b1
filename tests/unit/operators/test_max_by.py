"""max_by partials: per group, the maximum of `by` and the values of the first row holding it."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.operators.aggregation.accumulators import AccumulatorSet

ROWS = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["x", "y", None]), st.one_of(st.none(), st.integers(-5, 5)),
              st.integers(0, 1_000)),
    min_size=1, max_size=60,
)


def reference(rows: list[tuple], by_float: bool) -> dict[tuple, tuple]:
    """(k1, k2) -> (count of non-null by, max by, value of the first row with it)."""
    out: dict[tuple, tuple] = {}
    for k1, k2, by, value in rows:
        count, best, chosen = out.get((k1, k2), (0, None, None))
        if by is not None:
            count += 1
            if best is None or by > best:
                best, chosen = by, value
        out[(k1, k2)] = (count, best, chosen)
    return {k: (c, None if b is None else (float(b) if by_float else b), v) for k, (c, b, v) in out.items()}


@pytest.mark.parametrize("by_type", [pa.int64(), pa.float64(), pa.int32(), pa.timestamp("ms")])
@settings(max_examples=40, deadline=None)
@given(rows=ROWS)
def test_grouped_max_by_matches_a_row_by_row_reference(by_type: pa.DataType, rows: list[tuple]) -> None:
    base = datetime(2026, 1, 1)
    by_values = [None if r[2] is None else (base + timedelta(milliseconds=r[2]) if pa.types.is_timestamp(by_type)
                                            else r[2]) for r in rows]
    table = pa.table({
        "k1": pa.array([r[0] for r in rows], pa.int64()), "k2": pa.array([r[1] for r in rows], pa.string()),
        "by": pa.array(by_values, by_type), "value": pa.array([r[3] for r in rows], pa.int64()),
    })
    accumulators = AccumulatorSet([("best", hw.max("by")), ("chosen", hw.max_by("value", "by"))])
    grouped = accumulators.group(table, ["k1", "k2"])
    got = {}
    for row in grouped.to_pylist():
        best = row["by_max"]
        if isinstance(best, datetime):
            best = int((best - base) / timedelta(milliseconds=1))
        got[(row["k1"], row["k2"])] = (row["by_count"], best, row["value_first"] if row["by_count"] else None)
    assert got == reference(rows, pa.types.is_floating(by_type))
    assert grouped.schema.field("by_max").type == by_type
