"""The planner: parallelism, partitioning of edges, fusion into stages, and the readable plan."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.engine.config import RunConfig
from headwater.engine.plan import Edge, PhysicalPlan, Stage
from headwater.errors import BuildError, ConfigError
from headwater.planner import plan
from headwater.testing import TestingSink, TestingSource

SCHEMA = pa.schema([("k", pa.string()), ("v", pa.int64())])



def source(partitions: int = 2) -> TestingSource:
    return TestingSource(partitions=[[{"k": "a", "v": i}] for i in range(partitions)], schema=SCHEMA)


def identity(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch


def planned(flow: hw.Dataflow, parallelism: int = 2, **options: Any) -> PhysicalPlan:
    return hw.plan_flow(flow, parallelism=parallelism, executor="local", **options)


def stage_of(physical: PhysicalPlan, step_id: str) -> Stage:
    (stage,) = [s for s in physical.stages if step_id in s.step_ids]
    return stage


def edges_into(physical: PhysicalPlan, step_id: str) -> list[Edge]:
    return physical.inputs_of(stage_of(physical, step_id).stage_id)


# -- fusion -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 2, 4])
def test_source_filter_select_sink_fuse_into_one_stage(parallelism: int) -> None:
    flow = hw.Dataflow("fused")
    flow.source("in", source(4)).filter(hw.col("v") > 0).select("k").sink("out", TestingSink())
    physical = planned(flow, parallelism)
    assert [s.step_ids for s in physical.stages] == [("in", "filter_1", "select_1", "out")]
    assert physical.stages[0].parallelism == parallelism
    assert physical.edges == ()
    assert physical.stages[0].name == "in -> filter_1 -> select_1 -> out"


def test_stateless_steps_after_an_aggregate_fuse_into_its_stage() -> None:
    flow = hw.Dataflow("after")
    agg = flow.source("in", source()).key_by("k").aggregate(n=hw.count(), step_id="agg")
    agg.filter(hw.col("n") > 1).with_columns(m=hw.col("n") * 2).sink("out", TestingSink())
    physical = planned(flow)
    assert [s.step_ids for s in physical.stages] == [("in",), ("agg", "filter_1", "with_columns_1", "out")]


# -- keyed steps ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_aggregate_gets_a_hash_edge_by_its_keys_and_the_default_parallelism(parallelism: int) -> None:
    flow = hw.Dataflow("agg")
    stream = flow.source("in", source(3)).filter(hw.col("v") >= 0)
    stream.key_by("k", "v").aggregate(n=hw.count(), step_id="agg").sink("out", TestingSink())
    physical = planned(flow, parallelism)
    assert [s.step_ids for s in physical.stages] == [("in", "filter_1"), ("agg", "out")]
    assert stage_of(physical, "agg").parallelism == parallelism
    (edge,) = physical.edges
    assert (edge.src, edge.dst, edge.partitioning, edge.keys) == (0, 1, "hash", ("k", "v"))


def test_single_partition_source_runs_one_subtask_and_hashes_into_the_aggregate() -> None:
    flow = hw.Dataflow("one")
    flow.source("in", source(1)).key_by("k").aggregate(n=hw.count(), step_id="agg").sink("out", TestingSink())
    physical = planned(flow, 2)
    assert stage_of(physical, "in").parallelism == 1
    assert stage_of(physical, "agg").parallelism == 2
    (edge,) = physical.edges
    assert (edge.partitioning, edge.keys) == ("hash", ("k",))
    assert physical.total_subtasks == 3


def test_source_parallelism_is_capped_by_its_partitions_and_partitions_spread_round_robin() -> None:
    flow = hw.Dataflow("parts")
    flow.source("in", source(3)).sink("out", TestingSink())
    physical = planned(flow, 2)
    assert physical.stages[0].parallelism == 2
    assert physical.source_parts[0] == ("part-0", "part-1", "part-2")
    assert physical.parts_for(0, 0) == ["part-0", "part-2"]
    assert physical.parts_for(0, 1) == ["part-1"]
    assert planned(flow, 8).stages[0].parallelism == 3
    assert physical.is_source(0)


def test_stateless_steps_inherit_the_single_partition_parallelism() -> None:
    flow = hw.Dataflow("inherit")
    flow.source("in", source(1)).filter(hw.col("v") > 0).sink("out", TestingSink())
    physical = planned(flow, 4)
    assert [(s.step_ids, s.parallelism) for s in physical.stages] == [(("in", "filter_1", "out"), 1)]


def test_edges_into_an_aggregate_carry_only_the_columns_it_reads() -> None:
    wide = pa.schema([("k", pa.string()), ("v", pa.int64()), ("note", pa.string()), ("w", pa.float64())])
    flow = hw.Dataflow("pushdown")
    stream = flow.source("in", TestingSource(partitions=[[], []], schema=wide))
    stream.key_by("k").aggregate(n=hw.count(), s=hw.sum("w"), c=hw.count("k"), m=hw.max("w"), step_id="agg") \
        .sink("out", TestingSink())
    stream.key_by("note").aggregate(n=hw.count(), step_id="keys_only").sink("out2", TestingSink())
    stream.sink("all", TestingSink())
    physical = planned(flow, 2)
    columns = {physical.stages[e.dst].head: e.columns for e in physical.edges}
    assert columns == {"agg": ("k", "w"), "keys_only": ("note",), "all": None}
    assert "[hash by (k)] columns (k, w)" in physical.describe()


# -- map_batches with resources -------------------------------------------------------------------------------------


def test_map_batches_with_concurrency_gets_its_own_stage_and_round_robin_edges() -> None:
    flow = hw.Dataflow("pool")
    pooled = flow.source("in", source(2)).map_batches(identity, concurrency=3, output_schema=SCHEMA, step_id="udf")
    pooled.key_by("k").aggregate(n=hw.count(), step_id="agg").sink("out", TestingSink())
    physical = planned(flow, 2)
    assert [(s.step_ids, s.parallelism) for s in physical.stages] == [
        (("in",), 2), (("udf",), 3), (("agg", "out"), 2),
    ]
    assert [e.partitioning for e in edges_into(physical, "udf")] == ["round_robin"]
    assert [e.partitioning for e in edges_into(physical, "agg")] == ["hash"]


def test_map_batches_with_concurrency_equal_to_upstream_is_forward_but_not_fused() -> None:
    flow = hw.Dataflow("pool")
    flow.source("in", source(2)).map_batches(identity, concurrency=2, step_id="udf").sink("out", TestingSink())
    physical = planned(flow, 2)
    assert [s.step_ids for s in physical.stages] == [("in",), ("udf", "out")]
    assert [e.partitioning for e in physical.edges] == ["forward"]


def test_round_robin_edge_from_a_pool_back_to_a_smaller_parallelism() -> None:
    flow = hw.Dataflow("pool")
    pooled = flow.source("in", source(1)).map_batches(identity, concurrency=3, output_schema=SCHEMA, step_id="udf")
    pooled.union(flow.source("other", source(1)), step_id="u").sink("out", TestingSink())
    physical = planned(flow, 2)
    by_input = {e.input_index: e.partitioning for e in edges_into(physical, "u")}
    assert by_input == {0: "round_robin", 1: "round_robin"}  # 3 -> 2 and 1 -> 2


def test_map_batches_with_num_cpus_gets_its_own_stage_with_num_cpus() -> None:
    flow = hw.Dataflow("cpus")
    flow.source("in", source(2)).map_batches(identity, num_cpus=0.5, step_id="udf").sink("out", TestingSink())
    physical = planned(flow, 2)
    udf = stage_of(physical, "udf")
    assert udf.head == "udf" and udf.num_cpus == 0.5 and udf.parallelism == 2
    assert stage_of(physical, "in").num_cpus is None
    assert [e.partitioning for e in edges_into(physical, "udf")] == ["forward"]
    assert "num_cpus=0.5" in physical.describe()


def test_plain_map_batches_is_fused() -> None:
    flow = hw.Dataflow("plain")
    flow.source("in", source(2)).map_batches(identity, step_id="udf").sink("out", TestingSink())
    assert [s.step_ids for s in planned(flow).stages] == [("in", "udf", "out")]


# -- fan-out and fan-in ---------------------------------------------------------------------------------------------


def test_a_stream_with_two_consumers_is_not_fused() -> None:
    flow = hw.Dataflow("fanout")
    cheap = flow.source("in", source(2)).filter(hw.col("v") > 0, step_id="cheap")
    cheap.select("k").sink("keys", TestingSink())
    cheap.sink("all", TestingSink())
    physical = planned(flow, 2)
    assert [s.step_ids for s in physical.stages] == [("in", "cheap"), ("select_1", "keys"), ("all",)]
    assert [(e.src, e.dst, e.partitioning) for e in physical.edges] == [(0, 1, "forward"), (0, 2, "forward")]
    assert [e.edge_id for e in physical.outputs_of(0)] == [0, 1]


def test_union_has_one_edge_per_input_with_its_input_index() -> None:
    flow = hw.Dataflow("union")
    left = flow.source("left", source(2))
    right = flow.source("right", source(1)).filter(hw.col("v") > 0)
    middle = flow.source("middle", source(2))
    left.union(right, middle, step_id="u").sink("out", TestingSink())
    physical = planned(flow, 2)
    union = stage_of(physical, "u")
    assert union.step_ids == ("u", "out") and union.parallelism == 2
    edges = sorted(edges_into(physical, "u"), key=lambda e: e.input_index)
    assert [(physical.stages[e.src].tail, e.input_index, e.partitioning) for e in edges] == [
        ("left", 0, "forward"), ("filter_1", 1, "round_robin"), ("middle", 2, "forward"),
    ]


# -- describe and errors --------------------------------------------------------------------------------------------


def test_describe_mentions_every_stage_step_and_edge() -> None:
    flow = hw.Dataflow("described")
    stream = flow.source("in", source(2)).filter(hw.col("v") > 0)
    stream.key_by("k").aggregate(n=hw.count(), step_id="agg").sink("out", TestingSink())
    physical = planned(flow, 2)
    text = physical.describe()
    assert text.splitlines()[0] == "Physical plan for 'described': 2 stage(s), 4 subtask(s)"
    for stage in physical.stages:
        assert f"stage {stage.stage_id} x{stage.parallelism}: {stage.name}" in text
    for step_id in ("in", "filter_1", "agg", "out"):
        assert f"      {step_id}: " in text
    assert "edge 0: stage 0 -> stage 1 [hash by (k)]" in text
    assert "partitions: 2" in text
    assert "filter (col('v') > 0)" in text


def test_planner_can_be_called_directly() -> None:
    flow = hw.Dataflow("direct")
    flow.source("in", source(2)).sink("out", TestingSink())
    physical = plan(flow, RunConfig(executor="local", max_key_groups=16), 2)
    assert physical.flow_name == "direct"
    assert physical.max_key_groups == 16
    assert [s.parallelism for s in physical.stages] == [2]


def test_planning_is_deterministic() -> None:
    flow = hw.Dataflow("same")
    flow.source("in", source(2)).key_by("k").aggregate(n=hw.count()).sink("out", TestingSink())
    first, second = planned(flow), planned(flow)
    assert first.stages == second.stages and first.edges == second.edges


def test_local_executor_defaults_to_parallelism_one() -> None:
    flow = hw.Dataflow("default")
    flow.source("in", source(4)).key_by("k").aggregate(n=hw.count()).sink("out", TestingSink())
    physical = hw.plan_flow(flow, executor="local")
    assert [s.parallelism for s in physical.stages] == [1, 1]


def test_no_source_is_a_build_error() -> None:
    with pytest.raises(BuildError, match="has no source"):
        planned(hw.Dataflow("empty"))
    with pytest.raises(BuildError, match="has no source"):
        plan(hw.Dataflow("empty"), RunConfig(executor="local"), 1)


def test_no_sink_is_a_build_error() -> None:
    flow = hw.Dataflow("nosink")
    flow.source("in", source()).filter(hw.col("v") > 0)
    with pytest.raises(BuildError, match="has no sink"):
        planned(flow)


def test_parallelism_above_max_key_groups_is_a_config_error() -> None:
    flow = hw.Dataflow("big")
    flow.source("in", source()).sink("out", TestingSink())
    with pytest.raises(ConfigError, match="max_key_groups"):
        planned(flow, 9, max_key_groups=8)
    with pytest.raises(ConfigError, match="max_key_groups"):
        plan(flow, RunConfig(executor="local", max_key_groups=8), 9)


def test_a_dangling_stream_is_a_build_error() -> None:
    flow = hw.Dataflow("dangling")
    stream = flow.source("in", source())
    stream.filter(hw.col("v") > 0)  # computed, never written
    stream.sink("out", TestingSink())
    with pytest.raises(BuildError):
        planned(flow)


# -- projection into sources ------------------------------------------------------------------------------------
WIDE = pa.schema([("k", pa.string()), ("v", pa.int64()), ("w", pa.int64()), ("t", pa.int64()), ("s", pa.string())])


def wide_source() -> TestingSource:
    return TestingSource([{"k": "a", "v": 1, "w": 2, "t": 3, "s": "x"}], schema=WIDE)


def test_a_source_reads_only_the_columns_its_pipeline_needs() -> None:
    flow = hw.Dataflow("p")
    stream = flow.source("in", wide_source(), event_time="t")
    stream.filter(hw.col("w") > 0).select("k", doubled=hw.col("v") * 2).sink("out", TestingSink())
    # filter reads w and passes everything on; select needs k and v; the event-time column always stays
    assert planned(flow).source_columns == {"in": ("k", "v", "w", "t")}


def test_with_columns_and_aggregates_narrow_the_projection() -> None:
    flow = hw.Dataflow("p")
    stream = flow.source("in", wide_source())
    stream.with_columns(w=hw.col("v") + 1).key_by("k").aggregate(total=hw.sum("w")).sink("out", TestingSink())
    assert planned(flow).source_columns == {"in": ("k", "v")}


@pytest.mark.parametrize("consumer", ["map_batches", "sink", "late_records"])
def test_steps_that_read_every_column_keep_the_source_whole(consumer: str) -> None:
    flow = hw.Dataflow("p")
    stream = flow.source("in", wide_source(), event_time="t")
    if consumer == "map_batches":
        stream.map_batches(identity).select("k").sink("out", TestingSink())
    elif consumer == "sink":
        stream.sink("out", TestingSink())
    else:
        counted = stream.key_by("k").window(hw.TumblingWindow(seconds=1)).aggregate(n=hw.count())
        counted.sink("out", TestingSink())
        counted.late_records().sink("late", TestingSink())
    assert planned(flow).source_columns == {}


def test_two_consumers_need_the_union_of_their_columns() -> None:
    flow = hw.Dataflow("p")
    stream = flow.source("in", wide_source())
    stream.select("k").sink("a", TestingSink())
    stream.select("w").sink("b", TestingSink())
    assert planned(flow).source_columns == {"in": ("k", "w")}
    assert "reads columns: k, w" in planned(flow).describe()


def test_a_projected_pipeline_gives_the_same_results_as_the_whole_rows(tmp_path: Any) -> None:
    rows = [{"k": f"k{i % 3}", "v": i, "w": i % 2, "t": i, "s": "x" * i} for i in range(40)]

    def run(project: bool) -> list[dict[str, Any]]:
        flow = hw.Dataflow("p")
        source = TestingSource(partitions=[rows[:20], rows[20:]], schema=WIDE)
        stream = flow.source("in", source)
        if not project:
            stream = stream.map_batches(identity)  # reads every column: no projection
        out = TestingSink()
        stream.filter(hw.col("w") == 1).key_by("k").aggregate(total=hw.sum("v")).sink("out", out)
        result = hw.run(flow, executor="local", parallelism=2)
        assert bool(result.plan.source_columns) == project
        return sorted(out.latest(["k"]).values(), key=lambda r: r["k"])

    assert run(project=True) == run(project=False)


# -- local pre-aggregation --------------------------------------------------------------------------------------


class _Total(hw.Aggregator):
    output_type = pa.int64()

    def create(self) -> int:
        return 0

    def add(self, acc: int, values: pa.Array) -> int:
        return acc + sum(v for v in values.to_pylist() if v is not None)

    def merge(self, acc: int, other: int) -> int:
        return acc + other

    def result(self, acc: int) -> int:
        return acc


@pytest.mark.parametrize("aggregation, pre_aggregated", [
    (hw.top_k("v", 2), True),
    (hw.top_k("s", 2, by="w"), True),
    (hw.udaf(_Total(), "v"), True),
    (hw.count_distinct("v"), False),  # distinct sets do not combine from partials
])
def test_window_pre_aggregation_covers_top_k_and_udaf(aggregation: Any, pre_aggregated: bool) -> None:
    flow = hw.Dataflow("p")
    stream = flow.source("in", wide_source(), event_time="t")
    stream.key_by("k").window(hw.TumblingWindow(seconds=1)).aggregate(step_id="w", x=aggregation).sink(
        "out", TestingSink())
    physical = planned(flow)
    assert ("w.local" in physical.steps) == pre_aggregated
    if pre_aggregated:
        assert stage_of(physical, "w.local").step_ids == ("in", "w.local")
