"""The query layer gives the same answer whichever tiers hold the rows: a structured query and the same SQL
over a store whose rows were spread over warm and cold by random ages equal DuckDB's answer over all rows in
one Arrow table (hypothesis over data, ages, time ranges and filters)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.query import Query, QueryEngine, TableView
from headwater.store import LifecyclePolicy, Store
from headwater.testing import commit_rows

NOW = datetime(2026, 2, 1, tzinfo=UTC)
SCHEMA = pa.schema([("k", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("v", pa.int64())])
POLICY = LifecyclePolicy(hot_for=timedelta(hours=1), warm_for=timedelta(days=5))
FULL = TableView.full("t")


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[list[dict[str, Any]]], tuple[datetime | None, datetime | None], int]:
    row = st.builds(lambda k, h, v: {"k": k, "ts": NOW - timedelta(hours=h), "v": v},
                    st.sampled_from(["a", "b", "c"]), st.integers(0, 20 * 24), st.integers(-50, 50))
    commits = draw(st.lists(st.lists(row, min_size=1, max_size=20), min_size=1, max_size=3))
    start = draw(st.none() | st.integers(0, 20 * 24).map(lambda h: NOW - timedelta(hours=h)))
    end = draw(st.none() | st.integers(0, 20 * 24).map(lambda h: NOW - timedelta(hours=h)))
    return commits, (start, end), draw(st.integers(-50, 50))


def reference(rows: list[dict[str, Any]], sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    con.register("t", pa.Table.from_pylist(rows, schema=SCHEMA))
    return sorted(tuple(r.values()) for r in con.sql(sql).to_arrow_table().to_pylist())


def where(time_range: tuple[datetime | None, datetime | None], threshold: int) -> str:
    terms = [f"v >= {threshold}"]
    if time_range[0] is not None:
        terms.append(f"ts >= TIMESTAMPTZ '{time_range[0].isoformat()}'")
    if time_range[1] is not None:
        terms.append(f"ts < TIMESTAMPTZ '{time_range[1].isoformat()}'")
    return " AND ".join(terms)


@given(cases())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
def test_queries_across_tiers_equal_one_table_of_all_rows(tmp_path: Path, case: Any) -> None:
    commits, time_range, threshold = case
    store = Store(tmp_path / uuid.uuid4().hex)
    for rows in commits:
        commit_rows(store, "t", rows, SCHEMA, key=["k"], time="ts", policy=POLICY)
        store.apply_lifecycle(now=NOW)
    everything = [r for rows in commits for r in rows]
    engine = QueryEngine(store)
    condition = where(time_range, threshold)
    grouped = f"SELECT k, count(*) AS n, sum(v) AS total, min(ts) AS first FROM t WHERE {condition} GROUP BY k"
    expected = reference(everything, grouped)
    assert sorted(tuple(r.values()) for r in engine.sql(grouped, {"t": FULL}).table.to_pylist()) == expected
    query = Query.model_validate({
        "table": "t", "filter": [{"column": "v", "op": ">=", "value": threshold}], "group_by": ["k"],
        "aggregates": [{"fn": "count", "as": "n"}, {"fn": "sum", "column": "v", "as": "total"},
                       {"fn": "min", "column": "ts", "as": "first"}],
        "time_range": {"start": time_range[0], "end": time_range[1]}})
    assert sorted(tuple(r.values()) for r in engine.query(query, FULL).table.to_pylist()) == expected
    plain = Query.model_validate({"table": "t", "select": ["k", "v"], "filter": [
        {"column": "v", "op": ">=", "value": threshold}], "time_range": {"start": time_range[0], "end": time_range[1]}})
    assert sorted(tuple(r.values()) for r in engine.query(plain, FULL).table.to_pylist()) == reference(
        everything, f"SELECT k, v FROM t WHERE {condition}")
