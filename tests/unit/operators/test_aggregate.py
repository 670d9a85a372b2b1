"""Running keyed aggregation: SQL null semantics, key and value types, emit modes, and any batching."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.aggregations import Aggregation
from headwater.core.operator import OperatorContext
from headwater.operators.aggregation.aggregate import RunningAggregateOperator
from headwater.testing import TestingSink, TestingSource, run_local

SCHEMA = pa.schema([("k", pa.string()), ("v", pa.int64())])
ALL = (
    ("rows", hw.count()),
    ("values", hw.count("v")),
    ("total", hw.sum("v")),
    ("low", hw.min("v")),
    ("high", hw.max("v")),
    ("avg", hw.mean("v")),
)



def operator(
    keys: tuple[str, ...] = ("k",),
    aggregations: tuple[tuple[str, Aggregation], ...] = ALL,
    schema: pa.Schema = SCHEMA,
    emit: str = "updates",
) -> RunningAggregateOperator:
    op = RunningAggregateOperator(keys, aggregations, schema, emit)  # type: ignore[arg-type]
    op.open(OperatorContext("agg", 0, 1))
    return op


def batch(rows: list[dict[str, Any]], schema: pa.Schema = SCHEMA) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=schema)


def rows_of(batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
    return [row for b in batches for row in b.to_pylist()]


def by_key(rows: list[dict[str, Any]], key: str = "k") -> dict[Any, dict[str, Any]]:
    return {row[key]: row for row in rows}


def aggregate_flow(
    items: list[Any], keys: tuple[str, ...], schema: pa.Schema, emit: str = "updates", **aggregations: Aggregation
) -> tuple[hw.Dataflow, TestingSink]:
    flow = hw.Dataflow("agg")
    sink = TestingSink()
    stream = flow.source("in", TestingSource(items, schema=schema))
    stream.key_by(*keys).aggregate(emit=emit, step_id="agg", **aggregations).sink("out", sink)  # type: ignore[arg-type]
    return flow, sink


# -- the operator directly ------------------------------------------------------------------------------------------


def test_every_aggregate_with_sql_null_semantics() -> None:
    op = operator()
    out = op.process(batch([
        {"k": "a", "v": 3}, {"k": "a", "v": None}, {"k": "a", "v": -1},
        {"k": "nulls", "v": None}, {"k": "nulls", "v": None},
        {"k": "one", "v": 7},
    ]))
    assert by_key(rows_of(out)) == {
        "a": {"k": "a", "rows": 3, "values": 2, "total": 2, "low": -1, "high": 3, "avg": 1.0},
        "nulls": {"k": "nulls", "rows": 2, "values": 0, "total": None, "low": None, "high": None, "avg": None},
        "one": {"k": "one", "rows": 1, "values": 1, "total": 7, "low": 7, "high": 7, "avg": 7.0},
    }


def test_updates_carry_running_values_for_touched_keys_only() -> None:
    op = operator()
    op.process(batch([{"k": "a", "v": None}, {"k": "b", "v": 10}]))
    second = rows_of(op.process(batch([{"k": "a", "v": 4}, {"k": "a", "v": 6}])))
    assert second == [{"k": "a", "rows": 3, "values": 2, "total": 10, "low": 4, "high": 6, "avg": 5.0}]
    third = rows_of(op.process(batch([{"k": "b", "v": -5}])))
    assert third == [{"k": "b", "rows": 2, "values": 2, "total": 5, "low": -5, "high": 10, "avg": 2.5}]
    assert op.metrics() == {"keys": 2.0}
    assert op.finish() == []


def test_a_key_that_later_sees_a_value_stops_being_null() -> None:
    op = operator()
    first = rows_of(op.process(batch([{"k": "a", "v": None}])))
    assert first[0]["total"] is None and first[0]["low"] is None
    second = rows_of(op.process(batch([{"k": "a", "v": 0}])))
    assert (second[0]["total"], second[0]["low"], second[0]["high"], second[0]["avg"]) == (0, 0, 0, 0.0)


def test_empty_batch_emits_nothing() -> None:
    op = operator()
    assert op.process(batch([])) == []
    assert op.finish() == []


def test_multi_column_keys_including_null_parts() -> None:
    schema = pa.schema([("k", pa.string()), ("n", pa.int64()), ("v", pa.int64())])
    op = operator(("k", "n"), (("total", hw.sum("v")),), schema)
    op.process(batch([{"k": "a", "n": 1, "v": 1}, {"k": "a", "n": 2, "v": 2}, {"k": None, "n": 1, "v": 4}], schema))
    out = rows_of(op.process(batch([{"k": "a", "n": 1, "v": 10}, {"k": None, "n": 1, "v": 5}], schema)))
    assert sorted(out, key=lambda r: (r["k"] is None, r["k"] or "")) == [
        {"k": "a", "n": 1, "total": 11}, {"k": None, "n": 1, "total": 9},
    ]
    assert op.metrics() == {"keys": 3.0}


def test_string_and_integer_keys_of_many_values() -> None:
    op = operator(aggregations=(("n", hw.count()),))
    keys = [f"user-{i % 50}" for i in range(1_000)]
    for start in range(0, 1_000, 300):
        out = op.process(batch([{"k": k, "v": 1} for k in keys[start:start + 300]]))
    assert op.metrics() == {"keys": 50.0}
    assert all(row["n"] == 20 for row in rows_of(out))


def test_value_types_of_the_results() -> None:
    schema = pa.schema([("k", pa.int32()), ("i", pa.int32()), ("f", pa.float32())])
    aggregations = (
        ("i_sum", hw.sum("i")), ("i_min", hw.min("i")), ("i_mean", hw.mean("i")),
        ("f_sum", hw.sum("f")), ("f_max", hw.max("f")), ("f_n", hw.count("f")),
    )
    op = operator(("k",), aggregations, schema)
    (out,) = op.process(batch([{"k": 1, "i": 2, "f": 1.5}, {"k": 1, "i": 3, "f": None}], schema))
    assert out.schema.types == [
        pa.int32(), pa.int64(), pa.int32(), pa.float64(), pa.float64(), pa.float32(), pa.int64(),
    ]
    assert out.to_pylist() == [{"k": 1, "i_sum": 5, "i_min": 2, "i_mean": 2.5, "f_sum": 1.5, "f_max": 1.5, "f_n": 1}]


def test_extreme_integers_survive_min_and_max() -> None:
    op = operator(aggregations=(("low", hw.min("v")), ("high", hw.max("v"))))
    op.process(batch([{"k": "a", "v": 2**63 - 1}]))
    (row,) = rows_of(op.process(batch([{"k": "a", "v": -(2**63)}])))
    assert (row["low"], row["high"]) == (-(2**63), 2**63 - 1)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timestamp_min_and_max_keep_the_timestamp_type(unit: str) -> None:
    kind = pa.timestamp(unit, tz="UTC")
    schema = pa.schema([("k", pa.string()), ("t", kind)])
    op = operator(("k",), (("first", hw.min("t")), ("last", hw.max("t")), ("n", hw.count("t"))), schema)
    day = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    op.process(batch([{"k": "a", "t": day}, {"k": "a", "t": None}, {"k": "b", "t": None}], schema))
    (out,) = op.process(batch([{"k": "a", "t": day - dt.timedelta(days=1)}, {"k": "b", "t": None}], schema))
    assert out.schema.field("first").type == kind and out.schema.field("last").type == kind
    rows = by_key(out.to_pylist())
    assert rows["a"]["first"] == day - dt.timedelta(days=1) and rows["a"]["last"] == day
    assert rows["b"] == {"k": "b", "first": None, "last": None, "n": 0}


def test_date_min_and_max_keep_the_date_type() -> None:
    schema = pa.schema([("k", pa.string()), ("d", pa.date32())])
    op = operator(("k",), (("first", hw.min("d")),), schema)
    (out,) = op.process(batch([{"k": "a", "d": dt.date(2024, 1, 2)}, {"k": "a", "d": dt.date(2024, 1, 1)}], schema))
    assert out.to_pylist() == [{"k": "a", "first": dt.date(2024, 1, 1)}]


def test_emit_final_emits_one_row_per_key_at_the_end() -> None:
    op = operator(emit="final")
    assert op.process(batch([{"k": "a", "v": 1}, {"k": "b", "v": None}])) == []
    assert op.process(batch([{"k": "a", "v": 2}])) == []
    (out,) = op.finish()
    assert out.schema.field("k").type == pa.string()
    assert by_key(out.to_pylist()) == {
        "a": {"k": "a", "rows": 2, "values": 2, "total": 3, "low": 1, "high": 2, "avg": 1.5},
        "b": {"k": "b", "rows": 1, "values": 0, "total": None, "low": None, "high": None, "avg": None},
    }


def test_emit_final_with_multi_column_and_timestamp_keys() -> None:
    schema = pa.schema([("day", pa.timestamp("ms")), ("n", pa.int16()), ("v", pa.int64())])
    op = operator(("day", "n"), (("total", hw.sum("v")),), schema, emit="final")
    day = dt.datetime(2024, 1, 1)
    op.process(batch([{"day": day, "n": 1, "v": 1}, {"day": day, "n": 2, "v": 2}], schema))
    op.process(batch([{"day": day, "n": 1, "v": 3}, {"day": None, "n": None, "v": 4}], schema))
    (out,) = op.finish()
    assert out.schema.types[:2] == [pa.timestamp("ms"), pa.int16()]
    assert sorted(out.to_pylist(), key=lambda r: (r["n"] is None, r["n"])) == [
        {"day": day, "n": 1, "total": 4}, {"day": day, "n": 2, "total": 2}, {"day": None, "n": None, "total": 4},
    ]


@pytest.mark.parametrize("kind", [pa.timestamp("ms", tz="UTC"), pa.int32(), pa.uint8(), pa.duration("s")])
def test_emit_final_with_a_single_integer_like_key_keeps_its_type(kind: pa.DataType) -> None:
    schema = pa.schema([("k", kind), ("v", pa.int64())])
    op = operator(aggregations=(("n", hw.count()),), schema=schema, emit="final")
    keys = pa.array([3, None, 1, 3], pa.int64()).cast(kind)
    op.process(pa.RecordBatch.from_arrays([keys, pa.array([1, 2, 3, 4])], schema=schema))
    op.process(pa.RecordBatch.from_arrays([keys.slice(1, 2), pa.array([5, 6])], schema=schema))
    (out,) = op.finish()
    assert out.schema.field("k").type == kind
    counts = dict(zip(out.column("k").cast(pa.int64()).to_pylist(), out.column("n").to_pylist()))
    assert counts == {3: 2, None: 2, 1: 2}


def test_emit_final_without_input_emits_nothing() -> None:
    assert operator(emit="final").finish() == []


def test_nan_key_is_one_key_across_batches() -> None:
    schema = pa.schema([("k", pa.float64()), ("v", pa.int64())])
    op = operator(aggregations=(("n", hw.count()),), schema=schema, emit="final")
    op.process(batch([{"k": math.nan, "v": 1}], schema))
    op.process(batch([{"k": math.nan, "v": 2}], schema))
    (out,) = op.finish()
    assert out.num_rows == 1 and out.to_pylist()[0]["n"] == 2


# -- through the engine ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 3])
def test_running_aggregate_through_run_local(parallelism: int) -> None:
    items = [{"k": k, "v": v} for k, v in [("a", 1), ("b", None), ("a", 2), ("c", 5), ("b", 4), ("a", None)]]
    flow, sink = aggregate_flow(items, ("k",), SCHEMA, **dict(ALL))
    result = run_local(flow, parallelism=parallelism, linger=0)
    latest = sink.latest(["k"])
    assert latest == {
        "a": {"k": "a", "rows": 3, "values": 2, "total": 3, "low": 1, "high": 2, "avg": 1.5},
        "b": {"k": "b", "rows": 2, "values": 1, "total": 4, "low": 4, "high": 4, "avg": 4.0},
        "c": {"k": "c", "rows": 1, "values": 1, "total": 5, "low": 5, "high": 5, "avg": 5.0},
    }
    assert result.operator_metric("agg", "keys") == 3
    assert result.rows_in("agg") == 6
    table = sink.table()
    assert table is not None
    assert table.schema.types == flow.steps["agg"].schema.types  # the run matches the build-time schema


@pytest.mark.parametrize("parallelism", [1, 2])
def test_aggregate_ignores_columns_it_does_not_read(parallelism: int) -> None:
    wide = pa.schema([("note", pa.string()), ("k", pa.string()), ("v", pa.int64()), ("w", pa.float64())])
    items = [{"note": f"n{i}", "k": "ab"[i % 2], "v": i, "w": i / 2} for i in range(6)]
    flow, sink = aggregate_flow(items, ("k",), wide, emit="final", total=hw.sum("v"), top=hw.max("w"))
    run_local(flow, parallelism=parallelism, batch_size=4)
    assert sorted(sink.rows(), key=lambda r: r["k"]) == [
        {"k": "a", "total": 6, "top": 2.0}, {"k": "b", "total": 9, "top": 2.5},
    ]


@pytest.mark.parametrize("parallelism", [1, 3])
def test_emit_final_through_run_local(parallelism: int) -> None:
    items = [{"k": f"k{i % 4}", "v": i} for i in range(20)]
    flow, sink = aggregate_flow(items, ("k",), SCHEMA, emit="final", n=hw.count(), top=hw.max("v"))
    run_local(flow, parallelism=parallelism, batch_size=3, linger=0)
    assert sorted(sink.rows(), key=lambda r: r["k"]) == [
        {"k": f"k{i}", "n": 5, "top": 16 + i} for i in range(4)
    ]


def test_timestamp_max_through_run_local() -> None:
    schema = pa.schema([("k", pa.string()), ("t", pa.timestamp("us"))])
    base = dt.datetime(2024, 1, 1)
    items = [{"k": "a", "t": base + dt.timedelta(minutes=m)} for m in (5, 1, 9, 3)]
    flow, sink = aggregate_flow(items, ("k",), schema, last=hw.max("t"))
    run_local(flow, parallelism=2)
    table = sink.table()
    assert table is not None and table.schema.field("last").type == pa.timestamp("us")
    assert sink.latest(["k"]) == {"a": {"k": "a", "last": base + dt.timedelta(minutes=9)}}


def test_aggregate_keyed_by_a_date_through_run_local() -> None:
    schema = pa.schema([("day", pa.date32()), ("v", pa.int64())])
    items = [{"day": dt.date(2024, 1, 1 + i % 2), "v": i} for i in range(4)]
    flow, sink = aggregate_flow(items, ("day",), schema, total=hw.sum("v"))
    run_local(flow, parallelism=2)
    assert sink.latest(["day"]) == {
        dt.date(2024, 1, 1): {"day": dt.date(2024, 1, 1), "total": 2},
        dt.date(2024, 1, 2): {"day": dt.date(2024, 1, 2), "total": 4},
    }


# -- any input, any batching, any parallelism: the last update per key is the plain-Python answer ---------------------


Row = tuple[Any, Any]  # (key, value or None)


def reference(rows: list[Row]) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for key in {k for k, _ in rows}:
        values = [v for k, v in rows if k == key and v is not None]
        count = sum(1 for k, _ in rows if k == key)
        out[key] = {
            "k": key, "rows": count, "values": len(values),
            "total": sum(values) if values else None,
            "low": min(values) if values else None,
            "high": max(values) if values else None,
            "avg": sum(values) / len(values) if values else None,
        }
    return out


# String keys exercise the general (dict) key index, single integer keys the vectorised one; both with null keys.
KEY_KINDS = {
    "string": (pa.string(), st.sampled_from(["a", "b", "c", "ü", "", None])),
    "int64": (pa.int64(), st.sampled_from([0, 1, -1, 7, -(2**63), 2**63 - 1, None])),
    "int16": (pa.int16(), st.one_of(st.none(), st.integers(-3, 3))),
}


def rows_of_kind(kind: str) -> st.SearchStrategy[list[Row]]:
    return st.lists(st.tuples(KEY_KINDS[kind][1], st.one_of(st.none(), st.integers(-10**6, 10**6))), max_size=60)


def schema_of_kind(kind: str) -> pa.Schema:
    return pa.schema([("k", KEY_KINDS[kind][0]), ("v", pa.int64())])


def split_into_batches(rows: list[Row], cuts: list[int], schema: pa.Schema) -> list[pa.RecordBatch]:
    bounds = [0, *sorted({min(c, len(rows)) for c in cuts}), len(rows)]
    return [
        batch([{"k": k, "v": v} for k, v in rows[a:b]], schema) for a, b in zip(bounds, bounds[1:]) if b > a
    ]


@pytest.mark.parametrize("kind", list(KEY_KINDS))
@pytest.mark.parametrize("parallelism", [1, 3])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), cuts=st.lists(st.integers(0, 60), max_size=6), partitions=st.integers(1, 2),
       linger=st.sampled_from([0, 0.02]))
def test_last_update_per_key_matches_python(
    kind: str, parallelism: int, data: st.DataObject, cuts: list[int], partitions: int, linger: float
) -> None:
    rows = data.draw(rows_of_kind(kind), label="rows")
    schema = schema_of_kind(kind)
    batches = split_into_batches(rows, cuts, schema)
    flow = hw.Dataflow("prop")
    sink = TestingSink()
    spread = [batches[i::partitions] for i in range(partitions)]
    stream = flow.source("in", TestingSource(partitions=spread, schema=schema))
    stream.key_by("k").aggregate(step_id="agg", **dict(ALL)).sink("out", sink)
    run_local(flow, parallelism=parallelism, linger=linger)
    assert sink.latest(["k"]) == reference(rows)


@pytest.mark.parametrize("kind", list(KEY_KINDS))
@settings(max_examples=25, deadline=None)
@given(data=st.data(), cuts=st.lists(st.integers(0, 60), max_size=6))
def test_emit_final_equals_the_last_update(kind: str, data: st.DataObject, cuts: list[int]) -> None:
    rows = data.draw(rows_of_kind(kind), label="rows")
    schema = schema_of_kind(kind)
    updates, final = operator(schema=schema), operator(schema=schema, emit="final")
    changelog: list[dict[str, Any]] = []
    for b in split_into_batches(rows, cuts, schema):
        changelog.extend(rows_of(updates.process(b)))
        assert final.process(b) == []
    finished = final.finish()
    final_rows = rows_of(finished)
    assert len(final_rows) == len({k for k, _ in rows})
    if finished:
        assert finished[0].schema.field("k").type == schema.field("k").type
    assert by_key(final_rows) == by_key(changelog) == reference(rows)
