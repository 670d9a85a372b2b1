"""Build-time checks of ``stream.lookup_join(table_stream, ...)``: every mistake fails while the dataflow is
built, with a message that names the step and says what to do."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.engine.config import RunConfig
from headwater.errors import BuildError, ConfigError, UnknownColumnError
from headwater.planner import plan
from headwater.testing import TestingSource

ORDERS = pa.schema([("order", pa.int64()), ("user_id", pa.int64()), ("amount", pa.int64()), ("t", pa.int64())])
USERS = pa.schema([("user_id", pa.int32()), ("name", pa.string()), ("amount", pa.int64()), ("op", pa.string())])



def streams(orders: pa.Schema | None = ORDERS, users: pa.Schema | None = USERS) -> tuple[hw.Stream, hw.Stream]:
    flow = hw.Dataflow("build")
    return (flow.source("orders", TestingSource([], schema=orders), event_time="t" if orders else None),
            flow.source("users", TestingSource([], schema=users)))


def test_output_schema_plan_and_event_time() -> None:
    orders, users = streams()
    joined = orders.lookup_join(users, on="user_id", changelog_op="op", columns=["name"], step_id="enrich")
    assert joined.schema == pa.schema([*ORDERS, pa.field("name", pa.string())])
    assert orders.flow.steps["enrich"].event_time == ("t", 0), "the probe's event time carries on"
    joined.sink("out", hw.testing.TestingSink())
    physical = plan(orders.flow, RunConfig(), 2)
    into = [e for e in physical.edges if physical.stages[e.dst].head == "enrich"]
    assert sorted((e.input_index, e.partitioning, e.keys) for e in into) == [
        (0, "hash", ("user_id",)), (1, "hash", ("user_id",))]
    assert physical.stages[into[0].dst].parallelism == 2


@pytest.mark.parametrize("options, error, message", [
    ({}, ConfigError, r"table column\(s\) \['amount'\] of stream 'users' already exist in stream 'orders'; "
                      r"pass suffix='_<table>'.*columns=\[\.\.\.\].*\.select"),
    ({"columns": ["amount", "name"], "suffix": "_u"}, None, None),
    ({"columns": ["email"]}, UnknownColumnError, "columns= "),
    ({"columns": ["user_id"]}, ConfigError, "a key or change-kind column"),
    ({"on": "missing"}, UnknownColumnError, "key of stream 'orders'"),
    ({"on": "order", "table_key": "nope"}, UnknownColumnError, "key of stream 'users'"),
    ({"on": ["user_id", "order"], "table_key": "user_id"}, ConfigError, "as many columns"),
    ({"on": "user_id", "table_key": "name"}, ConfigError,
     r"key 'user_id' is int64 in stream 'orders' but 'name' is string.*cast\('int64'\)"),
    ({"changelog_op": "kind", "columns": ["name"]}, UnknownColumnError, "changelog_op"),
    ({"changelog_op": "amount", "columns": ["name"]}, ConfigError, "must hold strings"),
    ({"how": "outer", "columns": ["name"]}, ConfigError, "'left' or 'inner'"),
    ({"suffix": "", "columns": ["name"]}, ConfigError, "non-empty string"),
])
def test_build_errors(options: dict[str, Any], error: type[Exception] | None, message: str | None) -> None:
    orders, users = streams()
    options = {"on": "user_id", **options}
    if error is None:
        joined = orders.lookup_join(users, **options)
        assert joined.schema is not None and joined.schema.names[-2:] == ["name", "amount_u"]  # table order
        return
    with pytest.raises(error, match=message):
        orders.lookup_join(users, step_id="enrich", **options)


def test_unknown_schemas_and_wrong_arguments_fail_at_build_time() -> None:
    orders, users = streams(users=None)
    with pytest.raises(BuildError, match="schema of stream 'users' is not known.*TestingSource\\(schema="):
        orders.lookup_join(users, on="user_id")
    orders, users = streams()
    with pytest.raises(ConfigError, match="own table"):
        orders.lookup_join(orders, on="user_id")
    other = hw.Dataflow("other").source("users", TestingSource([], schema=USERS))
    with pytest.raises(ConfigError, match="same dataflow"):
        orders.lookup_join(other, on="user_id")
    with pytest.raises(ConfigError, match="changelog_op= applies when the table is a stream"):
        orders.lookup_join(hw.LookupTable.parquet("x.parquet", key="user_id"), on="user_id", changelog_op="op")
    nested = pa.schema([("user_id", pa.list_(pa.int64())), ("name", pa.string())])
    orders, users = streams(users=nested)
    with pytest.raises(ConfigError, match="cannot be a join key"):
        orders.lookup_join(users, on="user_id")
    reserved = pa.schema([("user_id", pa.int64()), ("_key_group", pa.int32())])
    orders, users = streams(users=reserved)
    with pytest.raises(ConfigError, match="reserved for checkpoints"):
        orders.lookup_join(users, on="user_id")
