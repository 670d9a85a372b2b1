"""Column lineage from the logical plan: recorded only where the plan says which input columns feed a column."""

from __future__ import annotations

import pyarrow as pa
import pytest

import headwater as hw
from headwater.governance.lineage.columns import column_lineage, column_lineage_facet
from headwater.governance.lineage.datasets import DatasetRef
from headwater.sinks import NullSink
from headwater.sources.testing import TestingSource

pytestmark = pytest.mark.lineage
SCHEMA = pa.schema([("user", pa.string()), ("price", pa.int64()), ("qty", pa.int64()), ("email", pa.string())])
IN = DatasetRef("kafka://b:9092", "orders")
OTHER = DatasetRef("kafka://b:9092", "returns")


def _lineage(flow: hw.Dataflow, sources: dict[str, list[DatasetRef]]) -> dict[str, dict[str, dict[tuple[str, str], str]]]:
    found = column_lineage(flow.steps, sources)
    return {sink: {col: {(ds.name, c): sub for (ds, c), sub in v.items()} for col, v in cols.items()}
            for sink, cols in found.items()}


def test_projections_renames_and_aggregations() -> None:
    flow = hw.Dataflow("cols")
    orders = flow.source("orders", TestingSource([], schema=SCHEMA))
    shaped = orders.filter(hw.col("qty") > 0).select("user", buyer=hw.col("user"), total=hw.col("price") * hw.col("qty"))
    shaped.key_by("user").aggregate(revenue=hw.sum("total"), orders=hw.count(), step_id="agg").sink("out", NullSink())
    cols = _lineage(flow, {"orders": [IN]})["out"]
    assert cols == {
        "user": {("orders", "user"): "IDENTITY"},
        "revenue": {("orders", "price"): "AGGREGATION", ("orders", "qty"): "AGGREGATION"},
    }  # count() reads no column: no column lineage for "orders"
    facet = column_lineage_facet(_raw(flow, "out"))
    assert facet is not None and facet["user"]["inputFields"] == [
        {"namespace": IN.namespace, "name": "orders", "field": "user",
         "transformations": [{"type": "DIRECT", "subtype": "IDENTITY"}]}]


def _raw(flow: hw.Dataflow, sink: str) -> dict:
    return column_lineage(flow.steps, {"orders": [IN]})[sink]


def test_renames_keep_identity_and_with_columns_keeps_the_rest() -> None:
    flow = hw.Dataflow("cols")
    orders = flow.source("orders", TestingSource([], schema=SCHEMA))
    orders.select(buyer=hw.col("user").alias("ignored")).sink("renamed", NullSink())
    orders.with_columns(price=hw.col("price") * 2).sink("doubled", NullSink())
    found = _lineage(flow, {"orders": [IN]})
    assert found["renamed"] == {"buyer": {("orders", "user"): "IDENTITY"}}
    assert found["doubled"]["price"] == {("orders", "price"): "TRANSFORMATION"}
    assert found["doubled"]["email"] == {("orders", "email"): "IDENTITY"}


def test_opaque_steps_end_the_trail_and_unions_merge() -> None:
    flow = hw.Dataflow("cols")
    orders = flow.source("orders", TestingSource([], schema=SCHEMA))
    returns = flow.source("returns", TestingSource([], schema=SCHEMA))
    orders.map_batches(lambda b: b, output_schema=SCHEMA).sink("opaque", NullSink())
    orders.union(returns).select("user").sink("both", NullSink())
    found = _lineage(flow, {"orders": [IN], "returns": [OTHER]})
    assert found["opaque"] == {}
    assert found["both"] == {"user": {("orders", "user"): "IDENTITY", ("returns", "user"): "IDENTITY"}}
    assert column_lineage_facet({}) is None


def test_quarantined_rows_keep_their_columns_and_add_rule_and_reason_without_lineage() -> None:
    flow = hw.Dataflow("cols")
    valid = flow.source("orders", TestingSource([], schema=SCHEMA)).validate(hw.rules.not_null("user"), step_id="v")
    valid.sink("good", NullSink())
    valid.invalid_records().sink("bad", NullSink())
    found = _lineage(flow, {"orders": [IN]})
    assert set(found["good"]) == set(SCHEMA.names) and set(found["bad"]) == set(SCHEMA.names)


def test_a_source_behind_several_datasets_gives_no_column_lineage() -> None:
    flow = hw.Dataflow("cols")
    flow.source("orders", TestingSource([], schema=SCHEMA)).sink("out", NullSink())
    assert _lineage(flow, {"orders": [IN, OTHER]})["out"] == {}
