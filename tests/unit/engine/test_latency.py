"""What the sink's latency histogram measures: ingest -> sink for rows, watermark -> sink for window results."""

from __future__ import annotations

import time

import pyarrow as pa

import headwater as hw
from headwater.engine.channels import DataMessage, Watermark
from headwater.engine.config import RunConfig
from headwater.engine.runtime import SubtaskRuntime
from headwater.planner import plan
from headwater.sinks.null import NullSink
from headwater.sources.testing import TestingSource

SCHEMA = pa.schema([("k", pa.int64()), ("t", pa.int64())])


def _window_stage() -> tuple[SubtaskRuntime, int]:
    flow = hw.Dataflow("latency")
    stream = flow.source("in", TestingSource([{"k": 1, "t": 0}], schema=SCHEMA), event_time="t")
    stream.sink("raw", NullSink())  # a second consumer: no local pre-aggregation, the window reads rows
    stream.key_by("k").window(hw.TumblingWindow(seconds=1)).aggregate(step_id="w", n=hw.count()).sink("out", NullSink())
    physical = plan(flow, RunConfig(parallelism=1, executor="local"), 1)
    stage = next(s for s in physical.stages if "out" in s.step_ids)
    runtime = SubtaskRuntime(physical, stage.stage_id, 0, RunConfig(parallelism=1, executor="local"))
    runtime.open()
    return runtime, physical.inputs_of(stage.stage_id)[0].edge_id


def test_window_results_are_timed_from_when_the_source_computed_the_watermark() -> None:
    runtime, edge = _window_stage()
    batch = pa.record_batch([pa.array([1, 1]), pa.array([10, 20])], schema=SCHEMA)
    runtime.on_message(edge, 0, DataMessage(batch, time.time_ns()))
    assert runtime.latency is not None and runtime.latency.total == 0  # rows held by the window are no result
    five_seconds_ago = time.time_ns() - 5_000_000_000
    runtime.on_message(edge, 0, Watermark(1_000, origin_ns=five_seconds_ago))
    assert runtime.latency.total == 1  # one window result reached the sink
    assert runtime.latency.max_ms >= 5_000


def test_a_watermark_without_origin_times_results_from_its_arrival() -> None:
    runtime, edge = _window_stage()
    batch = pa.record_batch([pa.array([1]), pa.array([10])], schema=SCHEMA)
    runtime.on_message(edge, 0, DataMessage(batch, time.time_ns() - 60_000_000_000))
    runtime.on_message(edge, 0, Watermark(1_000))
    assert runtime.latency is not None and runtime.latency.total == 1
    assert runtime.latency.max_ms < 60_000  # not the rows' ingest time: the result exists since the watermark
