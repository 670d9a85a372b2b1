"""The DSL: build-time errors name the step and say what to fix; ids, printing and run options."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.errors import (
    BuildError,
    ConfigError,
    DuplicateStepError,
    ExpressionTypeError,
    HeadwaterError,
    InvalidStepIdError,
    UnknownColumnError,
)
from headwater.testing import TestingSink, TestingSource

SCHEMA = pa.schema([("name", pa.string()), ("price", pa.int64()), ("ok", pa.bool_())])



def new_flow(name: str = "flow") -> tuple[hw.Dataflow, hw.Stream]:
    flow = hw.Dataflow(name)
    return flow, flow.source("in", TestingSource([{"name": "a", "price": 1, "ok": True}], schema=SCHEMA))


def complete_flow() -> hw.Dataflow:
    flow, stream = new_flow()
    stream.sink("out", TestingSink())
    return flow


def test_error_hierarchy() -> None:
    for error in (DuplicateStepError, InvalidStepIdError, UnknownColumnError, ExpressionTypeError, ConfigError):
        assert issubclass(error, BuildError) and issubclass(error, HeadwaterError)


# -- step ids -------------------------------------------------------------------------------------------------------


def test_duplicate_step_id_names_the_id() -> None:
    flow, stream = new_flow()
    stream.filter(hw.col("price") > 1, step_id="cheap")
    with pytest.raises(DuplicateStepError, match="step 'cheap' already exists in dataflow 'flow'"):
        stream.filter(hw.col("price") < 1, step_id="cheap")
    with pytest.raises(DuplicateStepError, match="'in'"):
        flow.source("in", TestingSource([{"x": 1}]))
    with pytest.raises(DuplicateStepError, match="'cheap'"):
        stream.sink("cheap", TestingSink())


def test_a_failed_step_is_not_added() -> None:
    flow, stream = new_flow()
    with pytest.raises(UnknownColumnError):
        stream.filter(hw.col("nope") > 1, step_id="f")
    stream.filter(hw.col("price") > 1, step_id="f")  # the id is still free
    assert list(flow.steps) == ["in", "f"]


@pytest.mark.parametrize("bad", ["", "has space", "-dash-first", "_under", "a/b", "é", "x" * 129, 3])
def test_invalid_step_id(bad: Any) -> None:
    flow, stream = new_flow()
    with pytest.raises(InvalidStepIdError, match="invalid"):
        stream.filter(hw.col("price") > 1, step_id=bad)
    with pytest.raises(InvalidStepIdError):
        flow.source(bad, TestingSource([{"x": 1}]))
    with pytest.raises(InvalidStepIdError):
        stream.sink(bad, TestingSink())


def test_source_and_sink_ids_are_required() -> None:
    flow, stream = new_flow()
    with pytest.raises(InvalidStepIdError):
        flow.source(None, TestingSource([{"x": 1}]))  # type: ignore[arg-type]
    with pytest.raises(InvalidStepIdError):
        stream.sink(None, TestingSink())  # type: ignore[arg-type]


@pytest.mark.parametrize("good", ["a", "A1", "step_1", "v1.2-beta", "9lives", "x" * 128])
def test_valid_step_ids(good: str) -> None:
    _, stream = new_flow()
    assert stream.filter(hw.col("price") > 1, step_id=good).step_id == good


def test_invalid_dataflow_name() -> None:
    with pytest.raises(InvalidStepIdError, match="dataflow name"):
        hw.Dataflow("my flow")


def test_automatic_step_ids_count_per_operation() -> None:
    flow, stream = new_flow()
    a = stream.filter(hw.col("price") > 1)
    b = a.filter(hw.col("price") > 2)
    c = b.with_columns(x=1).select("name")
    d = c.with_columns(y=2)
    assert [a.step_id, b.step_id, c.step_id, d.step_id] == ["filter_1", "filter_2", "select_1", "with_columns_2"]
    assert list(flow.steps) == ["in", "filter_1", "filter_2", "with_columns_1", "select_1", "with_columns_2"]


def test_automatic_step_ids_skip_explicit_ones() -> None:
    _, stream = new_flow()
    stream.filter(hw.col("price") > 1, step_id="filter_1")
    assert stream.filter(hw.col("price") > 1).step_id == "filter_2"
    assert stream.map_batches(lambda b: b).step_id == "map_batches_1"
    assert stream.map_rows(lambda r: r).step_id == "map_rows_1"
    assert stream.flat_map(lambda r: [r]).step_id == "flat_map_1"
    assert stream.key_by("name").aggregate(n=hw.count()).step_id == "aggregate_1"


# -- unknown columns ------------------------------------------------------------------------------------------------


def test_unknown_column_in_filter_names_the_step_and_suggests() -> None:
    _, stream = new_flow()
    with pytest.raises(UnknownColumnError) as info:
        stream.filter(hw.col("prise") > 1, step_id="expensive")
    assert str(info.value).startswith("step 'expensive'")
    assert "did you mean 'price'?" in str(info.value)


def test_unknown_column_in_select_and_with_columns() -> None:
    _, stream = new_flow()
    with pytest.raises(UnknownColumnError, match=r"step 'pick'.*'nmae'.*did you mean 'name'"):
        stream.select("nmae", step_id="pick")
    with pytest.raises(UnknownColumnError, match=r"step 'add'.*'prices'"):
        stream.with_columns(eur=hw.col("prices") * 0.9, step_id="add")
    with pytest.raises(UnknownColumnError, match=r"step 'select_1'"):
        stream.select(total=hw.col("price") + hw.col("tax"))


def test_unknown_column_in_key_by_names_the_step() -> None:
    _, stream = new_flow()
    cheap = stream.filter(hw.col("price") < 10, step_id="cheap")
    with pytest.raises(UnknownColumnError, match=r"key_by after step 'cheap'.*'nam'.*did you mean 'name'"):
        cheap.key_by("nam")


def test_unknown_column_in_aggregate_names_the_step() -> None:
    _, stream = new_flow()
    with pytest.raises(UnknownColumnError, match=r"step 'totals': sum\(\).*'prize'.*did you mean 'price'"):
        stream.key_by("name").aggregate(total=hw.sum("prize"), step_id="totals")
    with pytest.raises(UnknownColumnError, match=r"step 'counts'"):
        stream.key_by("name").aggregate(n=hw.count("nope"), step_id="counts")


def test_key_by_needs_column_names() -> None:
    _, stream = new_flow()
    with pytest.raises(ConfigError):
        stream.key_by()
    with pytest.raises(ConfigError):
        stream.key_by("")
    assert stream.key_by(["name", "price"]).keys == ("name", "price")


# -- types ----------------------------------------------------------------------------------------------------------


def test_non_boolean_filter_is_an_expression_type_error() -> None:
    _, stream = new_flow()
    with pytest.raises(ExpressionTypeError, match=r"step 'f': filter needs a boolean expression.*int64"):
        stream.filter(hw.col("price") + 1, step_id="f")


def test_filter_needs_an_expression() -> None:
    _, stream = new_flow()
    with pytest.raises(ConfigError, match="takes an expression"):
        stream.filter("price > 1")  # type: ignore[arg-type]


def test_impossible_expression_names_the_step_and_types() -> None:
    _, stream = new_flow()
    with pytest.raises(ExpressionTypeError, match=r"step 'twice'.*name: string"):
        stream.with_columns(x=hw.col("name") * 2, step_id="twice")


@pytest.mark.parametrize("aggregation", [hw.sum("name"), hw.mean("name"), hw.min("name"), hw.max("ok")])
def test_numeric_aggregation_over_a_non_numeric_column_is_a_config_error(aggregation: hw.Aggregation) -> None:
    _, stream = new_flow()
    with pytest.raises(ConfigError, match=r"step 'agg'.*needs a numeric column"):
        stream.key_by("price").aggregate(x=aggregation, step_id="agg")


def test_count_of_a_string_column_is_fine() -> None:
    _, stream = new_flow()
    out = stream.key_by("price").aggregate(n=hw.count("name"))
    assert out.schema == pa.schema([("price", pa.int64()), ("n", pa.int64())])


def test_aggregate_config_errors() -> None:
    _, stream = new_flow()
    keyed = stream.key_by("name")
    with pytest.raises(ConfigError, match="at least one aggregation"):
        keyed.aggregate()
    with pytest.raises(ConfigError, match="not an aggregation"):
        keyed.aggregate(n=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="same name as a key"):
        keyed.aggregate(name=hw.count())
    with pytest.raises(ConfigError, match="emit"):
        keyed.aggregate(n=hw.count(), emit="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        hw.sum("")


def test_select_and_with_columns_config_errors() -> None:
    _, stream = new_flow()
    with pytest.raises(ConfigError, match="at least one column"):
        stream.select()
    with pytest.raises(ConfigError, match="given twice"):
        stream.select("price", price=hw.col("price") * 2)


def test_map_batches_config_errors() -> None:
    _, stream = new_flow()
    with pytest.raises(ConfigError, match="function or a class"):
        stream.map_batches(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="concurrency"):
        stream.map_batches(lambda b: b, concurrency=0)
    with pytest.raises(ConfigError, match="num_cpus"):
        stream.map_batches(lambda b: b, num_cpus=-1)
    with pytest.raises(ConfigError, match="only apply when fn is a class"):
        stream.map_batches(lambda b: b, fn_constructor_args=(1,))
    with pytest.raises(ConfigError, match="needs a function"):
        stream.map_rows("nope")  # type: ignore[arg-type]


# -- schemas flow through the DSL -----------------------------------------------------------------------------------


def test_schemas_are_derived_step_by_step() -> None:
    _, stream = new_flow()
    added = stream.with_columns(eur=hw.col("price") * 0.5, price=hw.col("price").cast("int32"), one=1)
    assert added.schema == pa.schema(
        [("name", pa.string()), ("price", pa.int32()), ("ok", pa.bool_()), ("eur", pa.float64()), ("one", pa.int64())]
    )
    picked = added.select("name", hw.col("eur").round(1).alias("rounded"), flag=~hw.col("ok"))
    assert picked.schema == pa.schema([("name", pa.string()), ("rounded", pa.float64()), ("flag", pa.bool_())])
    agg = stream.key_by("name").aggregate(n=hw.count(), s=hw.sum("price"), m=hw.mean("price"), hi=hw.max("price"))
    assert agg.schema == pa.schema(
        [("name", pa.string()), ("n", pa.int64()), ("s", pa.int64()), ("m", pa.float64()), ("hi", pa.int64())]
    )


def test_unknown_schema_skips_checks_until_run() -> None:
    flow = hw.Dataflow("loose")
    stream = flow.source("in", TestingSource([{"x": 1}]))
    assert stream.schema is None
    assert stream.filter(hw.col("anything") > 1).key_by("whatever").aggregate(n=hw.count()).schema is None
    assert stream.map_batches(lambda b: b, output_schema=SCHEMA).schema == SCHEMA


# -- union, sources and sinks ---------------------------------------------------------------------------------------


def test_union_of_different_schemas_is_a_build_error() -> None:
    flow, stream = new_flow()
    other = flow.source("other", TestingSource([{"name": "b"}], schema=pa.schema([("name", pa.string())])))
    with pytest.raises(BuildError, match=r"(?s)step 'u': union inputs disagree: 'in' has .* but 'other' has"):
        stream.union(other, step_id="u")


def test_union_config_errors() -> None:
    flow, stream = new_flow()
    _, foreign = new_flow("other")
    with pytest.raises(ConfigError, match="same dataflow"):
        stream.union(foreign)
    with pytest.raises(ConfigError, match="same stream twice"):
        stream.union(stream)
    assert stream.union(stream.filter(hw.col("ok"))).schema == SCHEMA


def test_source_must_be_a_source() -> None:
    flow = hw.Dataflow("f")
    with pytest.raises(ConfigError, match=r"step 'in'.*not a headwater Source"):
        flow.source("in", [{"x": 1}])  # type: ignore[arg-type]


def test_sink_must_be_a_sink() -> None:
    _, stream = new_flow()
    with pytest.raises(ConfigError, match=r"step 'out'.*not a headwater Sink"):
        stream.sink("out", print)  # type: ignore[arg-type]


def test_testing_source_config_errors() -> None:
    with pytest.raises(ConfigError):
        TestingSource([{"x": 1}], partitions=[[{"x": 1}]])
    with pytest.raises(ConfigError):
        TestingSource()
    with pytest.raises(ConfigError, match="batch_size"):
        TestingSource([{"x": 1}], batch_size=0)
    with pytest.raises(ConfigError, match="items must be"):
        TestingSource([1, 2])


# -- printing -------------------------------------------------------------------------------------------------------


def test_str_and_mermaid_contain_every_step() -> None:
    flow, stream = new_flow("shop")
    cheap = stream.filter(hw.col("price") < 10, step_id="cheap")
    cheap.key_by("name").aggregate(n=hw.count(), step_id="per_name").sink("out", TestingSink())
    cheap.union(stream, step_id="both").sink("all", TestingSink())
    text = str(flow)
    mermaid = flow.to_mermaid()
    assert text.startswith("Dataflow 'shop'")
    assert mermaid.startswith("flowchart LR")
    for step_id in flow.steps:
        assert f"  {step_id}: " in text
        assert f"{step_id}<br/>" in mermaid
    assert "cheap: filter (col('price') < 10) <- in" in text
    assert "both: union of cheap, in <- cheap, in" in text
    ids = {step_id: f"s{i}" for i, step_id in enumerate(flow.steps)}
    for step in flow.steps.values():
        for upstream in step.inputs:
            assert f"{ids[upstream]} --> {ids[step.step_id]}" in mermaid
    assert "Dataflow('shop'" in repr(flow)
    assert repr(cheap) == "Stream(shop.cheap)"


def test_mermaid_labels_have_no_double_quotes() -> None:
    flow, stream = new_flow()
    stream.filter(hw.col("name") == 'say "hi"', step_id="quoted").sink("out", TestingSink())
    for line in flow.to_mermaid().splitlines()[1:]:
        if "[" in line:
            assert line.count('"') == 2


# -- run options ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"parallelism": 0}, "parallelism"),
        ({"parallelism": -2}, "parallelism"),
        ({"batch_size": 0}, "batch_size"),
        ({"linger": -1}, "linger"),
        ({"linger": timedelta(seconds=-1)}, "linger"),
        ({"channel_credits": 0}, "channel_credits"),
        ({"max_key_groups": 0}, "max_key_groups"),
        ({"parallelism": 4, "max_key_groups": 2}, "max_key_groups"),
        ({"executor": "threads"}, "executor"),
        ({"nope": 1}, r"unknown run option\(s\) nope; valid options: .*parallelism"),
    ],
)
def test_bad_run_options_are_config_errors(options: dict[str, Any], match: str) -> None:
    flow = complete_flow()
    options.setdefault("executor", "local")
    with pytest.raises(ConfigError, match=match):
        hw.run(flow, **options)


def test_run_config_validates_on_construction() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        hw.RunConfig(batch_size=0)
    with pytest.raises(ConfigError, match="object_store_memory"):
        hw.RunConfig(object_store_memory=1)
    with pytest.raises(ConfigError, match="RunConfig"):
        hw.run(complete_flow(), config={"parallelism": 1})  # type: ignore[arg-type]


def test_run_config_overrides() -> None:
    config = hw.RunConfig(executor="local").with_overrides(linger=0.5, parallelism=3)
    assert config.linger == timedelta(seconds=0.5) and config.linger_seconds == 0.5
    assert config.parallelism == 3 and config.executor == "local"
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-model error
        config.parallelism = 4  # type: ignore[misc]  # frozen
