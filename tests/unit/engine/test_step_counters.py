"""The figures each subtask counts at its steps' boundaries (engine/metrics.py), on both executors."""

from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa

import headwater as hw
from headwater.engine.metrics import PROCESSING_BOUNDS, BucketHistogram, StepCounters
from headwater.sinks.null import NullSink
from headwater.sources.testing import TestingSource


def test_rows_batches_and_bytes_cross_each_boundary_once(runner: Callable[..., Any]) -> None:
    batches = [pa.RecordBatch.from_pydict({"v": list(range(i * 10, i * 10 + 10)), "s": ["x" * i] * 10})
               for i in range(6)]
    flow = hw.Dataflow("counters")
    flow.source("src", TestingSource(batches)).filter(hw.col("v") % 2 == 0).sink("out", NullSink())
    result = runner(flow, parallelism=1, metrics_port=None)
    src, keep, out = result.steps["src"], result.steps["filter_1"], result.steps["out"]
    assert (src.rows_out, src.batches_out, src.bytes_out) == (60, 6, sum(b.nbytes for b in batches))
    # the fused filter gets the source's batches as they are
    assert (keep.rows_in, keep.batches_in, keep.bytes_in) == (src.rows_out, src.batches_out, src.bytes_out)
    assert keep.rows_out == 30 and keep.batches_out == 6 and 0 < keep.bytes_out < keep.bytes_in
    assert (out.rows_in, out.batches_in, out.bytes_in) == (keep.rows_out, keep.batches_out, keep.bytes_out)
    # one processing-time observation per input batch (a source: per read that returned rows)
    assert src.processing.count == 6 and keep.processing.count == 6 and out.processing.count == 6
    assert result.latency.buckets.count == 30  # row-weighted, like the latency histogram itself


def test_a_bucket_histogram_puts_bounds_in_their_own_bucket_and_merges() -> None:
    h = BucketHistogram()
    for value in (PROCESSING_BOUNDS[0], PROCESSING_BOUNDS[0] * 1.01, 1e9):
        h.observe(value)
    cumulative = h.cumulative()
    assert cumulative[0] == (PROCESSING_BOUNDS[0], 1)  # <= the bound
    assert cumulative[1][1] == 2 and cumulative[-1] == (float("inf"), 3)
    merged = StepCounters(rows_in=1, processing=h.copy())
    merged.merge(StepCounters(rows_in=2, processing=h))
    assert merged.rows_in == 3 and merged.processing.count == 6
    assert merged.processing.sum == 2 * h.sum
