"""Headwater: a Ray-based, exactly-once dataflow engine over Arrow micro-batches.

    import headwater as hw
    flow = hw.Dataflow("name")
    stream = flow.source("step_id", source)
    stream.filter(hw.col("price") > 10).with_columns(eur=hw.col("price") * 0.908).sink("out", sink)
    hw.run(flow)
"""

from headwater.aggregations import (
    Aggregation,
    Aggregator,
    count,
    count_distinct,
    first,
    last,
    max,
    max_by,
    mean,
    min,
    sum,
    top_k,
    udaf,
)
from headwater.dataflow import Dataflow, KeyedStream, Stream, WindowedStream
from headwater.engine.autoscale import AutoscaleConfig
from headwater.engine.config import CheckpointConfig, RunConfig
from headwater.engine.job import JobResult
from headwater.errors import HeadwaterError
from headwater.expressions import Expr, col, fn, lit, when
from headwater.runner import plan_flow, run, start
from headwater.sinks.table import TableSink
from headwater.sources.lookup_table import LookupTable
from headwater.windows import SessionWindow, SlidingWindow, TumblingWindow

__version__ = "0.1.0"

__all__ = [
    "Aggregation", "Aggregator", "AutoscaleConfig", "CheckpointConfig", "Dataflow", "SessionWindow", "SlidingWindow", "TumblingWindow", "Expr", "HeadwaterError", "JobResult", "KeyedStream", "LookupTable", "WindowedStream", "RunConfig", "Stream", "TableSink",
    "col", "count", "count_distinct", "first", "fn", "last", "lit", "max", "max_by", "mean", "min", "plan_flow", "run", "start", "sum", "top_k", "udaf", "when",
]
