"""Stateless operators and UDFs through the in-process executor: results, schemas, and located errors."""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import headwater as hw
from headwater.core.operator import OperatorContext
from headwater.errors import SchemaMismatchError, UserCodeError
from headwater.operators.stateless import FilterOperator, ProjectOperator
from headwater.operators.udf import MapBatchesOperator
from headwater.testing import TestingSink, TestingSource, run_local

SCHEMA = pa.schema([("name", pa.string()), ("price", pa.int64())])
ROWS = [{"name": "a", "price": 5}, {"name": "b", "price": None}, {"name": "c", "price": 20}, {"name": "d", "price": 1}]
OUT = pa.schema([("name", pa.string()), ("double", pa.int64())])



def run_pipeline(
    build: Callable[[hw.Stream], hw.Stream],
    rows: list[Any] = ROWS,
    *,
    partitions: int = 1,
    schema: pa.Schema | None = SCHEMA,
    **options: Any,
) -> list[dict[str, Any]]:
    """Run ``source -> build(...) -> sink`` in-process; ``partitions`` splits the rows round-robin."""
    flow = hw.Dataflow("t")
    sink = TestingSink()
    parts = [rows[i::partitions] for i in range(partitions)]
    build(flow.source("in", TestingSource(partitions=parts, schema=schema, batch_size=2))).sink("out", sink)
    run_local(flow, **options)
    return sink.rows()


def by_name(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r["name"])


# -- filter / select / with_columns ---------------------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 2])
def test_filter_drops_rows_where_the_predicate_is_false_or_null(parallelism: int) -> None:
    rows = run_pipeline(lambda s: s.filter(hw.col("price") > 2), partitions=2, parallelism=parallelism)
    assert by_name(rows) == [{"name": "a", "price": 5}, {"name": "c", "price": 20}]


def test_filter_that_drops_everything() -> None:
    assert run_pipeline(lambda s: s.filter(hw.col("price") > 1_000)) == []


def test_filter_with_a_constant_predicate() -> None:
    batch = pa.RecordBatch.from_pylist(ROWS, schema=SCHEMA)
    assert FilterOperator(hw.lit(True)).process(batch) == [batch]
    assert FilterOperator(hw.lit(False)).process(batch) == []


def test_select_names_expressions_aliases_and_literals() -> None:
    rows = run_pipeline(
        lambda s: s.select(
            "name", (hw.col("price") * 2).alias("double"), one=hw.lit(1), upper=hw.fn("utf8_upper", hw.col("name"))
        )
    )
    assert rows == [
        {"name": "a", "double": 10, "one": 1, "upper": "A"},
        {"name": "b", "double": None, "one": 1, "upper": "B"},
        {"name": "c", "double": 40, "one": 1, "upper": "C"},
        {"name": "d", "double": 2, "one": 1, "upper": "D"},
    ]


def test_with_columns_replaces_in_place_and_appends_in_order() -> None:
    rows = run_pipeline(
        lambda s: s.with_columns(
            price=hw.col("price").fill_null(0), band=hw.when(hw.col("price") > 4).then("high").otherwise("low"), tag="x"
        )
    )
    assert list(rows[0]) == ["name", "price", "band", "tag"]
    assert [(r["price"], r["band"], r["tag"]) for r in rows] == [
        (5, "high", "x"), (0, "low", "x"), (20, "high", "x"), (1, "low", "x"),  # null condition -> otherwise
    ]


def test_project_operator_directly() -> None:
    batch = pa.RecordBatch.from_pylist(ROWS[:2], schema=SCHEMA)
    (out,) = ProjectOperator((("p", hw.col("price") + 1),), keep_input=False).process(batch)
    assert out.to_pylist() == [{"p": 6}, {"p": None}]


# -- per-row functions ----------------------------------------------------------------------------------------------


def test_map_rows_maps_and_drops_on_none() -> None:
    def tax(row: dict[str, Any]) -> dict[str, Any] | None:
        return None if row["price"] is None else {"name": row["name"], "gross": row["price"] * 1.5}

    assert run_pipeline(lambda s: s.map_rows(tax)) == [
        {"name": "a", "gross": 7.5}, {"name": "c", "gross": 30.0}, {"name": "d", "gross": 1.5},
    ]


def test_map_rows_with_a_schema() -> None:
    schema = pa.schema([("name", pa.large_string()), ("price", pa.float32())])
    flow = hw.Dataflow("t")
    sink = TestingSink()
    mapped = flow.source("in", TestingSource(ROWS, schema=SCHEMA)).map_rows(lambda r: r, schema=schema)
    assert mapped.schema == schema
    mapped.sink("out", sink)
    run_local(flow)
    table = sink.table()
    assert table is not None and table.schema == schema and table.num_rows == 4


def test_flat_map_emits_zero_one_or_many_rows() -> None:
    def explode(row: dict[str, Any]) -> list[dict[str, Any]] | None:
        if row["price"] is None:
            return None
        return [{"name": row["name"], "i": i} for i in range(row["price"] % 3)]

    rows = run_pipeline(lambda s: s.flat_map(explode))
    assert rows == [
        {"name": "a", "i": 0}, {"name": "a", "i": 1},
        {"name": "c", "i": 0}, {"name": "c", "i": 1},
        {"name": "d", "i": 0},
    ]


def test_flat_map_accepts_generators() -> None:
    rows = run_pipeline(lambda s: s.flat_map(lambda r: ({"n": r["name"] * k} for k in (1, 2))))
    assert [r["n"] for r in rows] == ["a", "aa", "b", "bb", "c", "cc", "d", "dd"]


def test_map_rows_returning_a_non_dict_is_a_user_code_error() -> None:
    with pytest.raises(UserCodeError, match="step 'map_rows_1'.*must return dicts") as info:
        run_pipeline(lambda s: s.map_rows(lambda r: [r["name"]]))
    assert isinstance(info.value.__cause__, TypeError)


# -- map_batches ----------------------------------------------------------------------------------------------------


def double(batch: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [batch.column("name"), pc.multiply(batch.column("price"), 2)], names=["name", "double"]
    )


EXPECTED_DOUBLE = [
    {"name": "a", "double": 10}, {"name": "b", "double": None}, {"name": "c", "double": 40}, {"name": "d", "double": 2},
]


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda b: b, id="record_batch"),
        pytest.param(lambda b: pa.Table.from_batches([b, b.slice(0, 0)]), id="table"),
        pytest.param(lambda b: b.to_pydict(), id="dict"),
        pytest.param(lambda b: b.to_pandas(), id="pandas"),
    ],
)
def test_map_batches_result_kinds(wrap: Callable[[pa.RecordBatch], Any]) -> None:
    rows = run_pipeline(lambda s: s.map_batches(lambda b: wrap(double(b)), output_schema=OUT))
    assert rows == EXPECTED_DOUBLE


def test_map_batches_returning_pandas_without_a_schema() -> None:
    rows = run_pipeline(lambda s: s.map_batches(lambda b: pd.DataFrame({"n": [len(b)]})))
    assert rows == [{"n": 2}, {"n": 2}]


def test_map_batches_returning_none_drops_the_batch() -> None:
    rows = run_pipeline(lambda s: s.map_batches(lambda b: None if b.column("name")[0].as_py() == "a" else b))
    assert [r["name"] for r in rows] == ["c", "d"]


def test_map_batches_returning_an_empty_table_emits_nothing() -> None:
    assert run_pipeline(lambda s: s.map_batches(lambda b: b.slice(0, 0))) == []


class Scaler:
    """A class UDF: constructed once per subtask, called per batch, closed at the end."""

    instances: list[Scaler] = []

    def __init__(self, factor: int, *, column: str = "price") -> None:
        self.factor = factor
        self.column = column
        self.calls = 0
        self.closed = False
        Scaler.instances.append(self)

    def __call__(self, batch: pa.RecordBatch) -> dict[str, Any]:
        self.calls += 1
        return {"name": batch.column("name"), "double": pc.multiply(batch.column(self.column), self.factor)}

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("parallelism", "concurrency"), [(1, None), (2, None), (1, 3)])
def test_class_udf_is_constructed_once_per_subtask_with_its_arguments(
    parallelism: int, concurrency: int | None
) -> None:
    Scaler.instances.clear()
    rows = run_pipeline(
        lambda s: s.map_batches(
            Scaler, fn_constructor_args=(2,), fn_constructor_kwargs={"column": "price"}, concurrency=concurrency
        ),
        partitions=2, parallelism=parallelism,
    )
    assert by_name(rows) == EXPECTED_DOUBLE
    assert len(Scaler.instances) == (concurrency or parallelism)
    assert all(s.factor == 2 and s.column == "price" and s.closed for s in Scaler.instances)
    assert sum(s.calls for s in Scaler.instances) >= 2


def test_class_udf_directly_constructed_in_open() -> None:
    Scaler.instances.clear()
    op = MapBatchesOperator(Scaler, (3,), {"column": "price"}, None)
    assert Scaler.instances == []
    op.open(OperatorContext("s", 0, 1))
    (out,) = op.process(pa.RecordBatch.from_pylist(ROWS[:1], schema=SCHEMA))
    assert out.to_pylist() == [{"name": "a", "double": 15}]
    op.close()
    assert len(Scaler.instances) == 1 and Scaler.instances[0].closed


def test_output_schema_mismatch_is_a_schema_mismatch_error_naming_the_step() -> None:
    declared = pa.schema([("name", pa.string()), ("double", pa.float64())])
    with pytest.raises(SchemaMismatchError, match=r"step 'twice' \(subtask 0\): the function returned schema") as info:
        run_pipeline(lambda s: s.map_batches(double, output_schema=declared, step_id="twice"))
    assert info.value.step_id == "twice" and info.value.subtask == 0


def test_dict_result_that_does_not_match_output_schema_is_a_schema_mismatch_error() -> None:
    declared = pa.schema([("name", pa.int64())])
    with pytest.raises(SchemaMismatchError, match="step 'twice'"):
        run_pipeline(
            lambda s: s.map_batches(lambda b: {"name": b.column("name")}, output_schema=declared, step_id="twice")
        )


def test_map_batches_returning_an_unsupported_type_is_a_user_code_error() -> None:
    with pytest.raises(UserCodeError, match=r"step 'udf'.*returned list") as info:
        run_pipeline(lambda s: s.map_batches(lambda b: [1, 2], step_id="udf"))
    assert isinstance(info.value.__cause__, TypeError)


# -- errors from user code ------------------------------------------------------------------------------------------


class Boom(Exception):
    pass


def explode(batch: pa.RecordBatch) -> pa.RecordBatch:
    raise Boom("kaput")


@pytest.mark.parametrize("concurrency", [None, 2])
def test_a_raising_udf_is_a_user_code_error_naming_the_step_with_the_cause(concurrency: int | None) -> None:
    with pytest.raises(UserCodeError) as info:
        run_pipeline(
            lambda s: s.filter(hw.col("price") > 0).map_batches(explode, step_id="risky", concurrency=concurrency)
        )
    error = info.value
    assert str(error).startswith("step 'risky' (subtask ")
    assert "Boom: kaput" in str(error)
    assert error.step_id == "risky"
    assert isinstance(error.__cause__, Boom) and str(error.__cause__) == "kaput"


def test_a_raising_class_constructor_is_a_user_code_error() -> None:
    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("no model")

    with pytest.raises(UserCodeError, match="step 'load'.*RuntimeError: no model") as info:
        run_pipeline(lambda s: s.map_batches(Broken, step_id="load"))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_raising_row_function_is_a_user_code_error() -> None:
    with pytest.raises(UserCodeError, match="step 'rows'.*ZeroDivisionError") as info:
        run_pipeline(lambda s: s.map_rows(lambda r: {"x": 1 / 0}, step_id="rows"))
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_an_expression_failing_at_run_time_names_the_step() -> None:
    with pytest.raises(UserCodeError, match="step 'div'.*divide by zero"):
        run_pipeline(lambda s: s.with_columns(q=hw.col("price") // 0, step_id="div"))


# -- sources with a different schema --------------------------------------------------------------------------------


def test_source_batch_with_another_schema_than_declared_names_the_source() -> None:
    odd = pa.RecordBatch.from_pydict({"name": ["x"], "price": pa.array([1.5])})
    with pytest.raises(SchemaMismatchError, match=r"step 'in' \(subtask 0\): partition 'part-0' yielded") as info:
        run_pipeline(lambda s: s, rows=[*ROWS[:2], odd])
    assert info.value.step_id == "in"


def test_source_batch_with_another_schema_than_the_first_batch_names_the_source() -> None:
    first = pa.RecordBatch.from_pydict({"x": [1]})
    second = pa.RecordBatch.from_pydict({"x": ["one"]})
    with pytest.raises(SchemaMismatchError, match="step 'in'"):
        run_pipeline(lambda s: s, rows=[first, second], schema=None)


# -- union ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 2])
def test_union_merges_rows_of_every_input(parallelism: int) -> None:
    flow = hw.Dataflow("u")
    sink = TestingSink()
    left = flow.source("left", TestingSource(partitions=[ROWS[:2], ROWS[2:3]], schema=SCHEMA, batch_size=1))
    right = flow.source("right", TestingSource([{"name": "z", "price": 99}], schema=SCHEMA))
    expensive = left.filter(hw.col("price") > 4)
    expensive.union(right, step_id="both").sink("out", sink)
    result = run_local(flow, parallelism=parallelism)
    assert by_name(sink.rows()) == [{"name": "a", "price": 5}, {"name": "c", "price": 20}, {"name": "z", "price": 99}]
    assert result.rows_in("both") == 3 and result.rows_in("out") == 3


def test_union_of_streams_with_unknown_schemas_checks_at_run_time() -> None:
    flow = hw.Dataflow("u")
    left = flow.source("left", TestingSource([{"x": 1}]))
    right = flow.source("right", TestingSource([{"x": "one"}]))
    left.union(right, step_id="both").sink("out", TestingSink())
    with pytest.raises(SchemaMismatchError, match="step 'both'.*input 1 yielded"):
        run_local(flow)


def test_union_after_with_columns_on_non_nullable_sources() -> None:
    schema = pa.schema([pa.field("x", pa.int64(), nullable=False)])
    flow = hw.Dataflow("u")
    sink = TestingSink()
    left = flow.source("left", TestingSource([{"x": 1}], schema=schema)).with_columns(y=hw.col("x") + 1)
    right = flow.source("right", TestingSource([{"x": 2}], schema=schema)).with_columns(y=hw.col("x") + 1)
    left.union(right).sink("out", sink)
    run_local(flow)
    assert sorted(r["x"] for r in sink.rows()) == [1, 2]


def test_row_counts_per_step() -> None:
    flow = hw.Dataflow("counts")
    sink = TestingSink()
    flow.source("in", TestingSource(ROWS, schema=SCHEMA)).filter(hw.col("price") > 2, step_id="f").sink("out", sink)
    result = run_local(flow)
    assert (result.rows_out("in"), result.rows_in("f"), result.rows_out("f"), result.rows_in("out")) == (4, 4, 2, 2)
    assert "f" in str(result)
