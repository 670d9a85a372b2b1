"""The core operators, run by both executors (in-process and on real Ray actors)."""

from __future__ import annotations

import time
from collections import defaultdict

import pyarrow as pa
import pytest

import headwater as hw
from headwater.errors import SchemaMismatchError, SimulatedCrashError, UserCodeError
from headwater.sinks.base import Sink, SinkPartition
from headwater.sources.base import Source, SourcePartition
from headwater.testing import TestingSink, TestingSource


def _rows(n: int, keys: int = 7) -> list[dict]:
    return [{"id": i, "key": f"k{i % keys}", "price": (i * 37) % 1000, "qty": i % 5 or None} for i in range(n)]


def test_pipeline_results_match_reference(runner) -> None:
    rows = _rows(5_000)
    flow = hw.Dataflow("pipeline")
    out = TestingSink()
    stream = flow.source("in", TestingSource(rows, batch_size=300))
    enriched = stream.filter(hw.col("price") >= 100).with_columns(eur=hw.col("price") * 0.908)
    enriched.key_by("key").aggregate(
        step_id="per_key", n=hw.count(), total=hw.sum("price"), top=hw.max("eur"), avg_qty=hw.mean("qty")
    ).sink("out", out)

    result = runner(flow, parallelism=2, batch_size=512)

    expected: dict[str, dict] = defaultdict(lambda: {"n": 0, "total": 0, "top": None, "qty": []})
    for r in rows:
        if r["price"] >= 100:
            e = expected[r["key"]]
            e["n"] += 1
            e["total"] += r["price"]
            e["top"] = max(e["top"] or 0.0, r["price"] * 0.908)
            if r["qty"] is not None:
                e["qty"].append(r["qty"])
    latest = out.latest(["key"])
    assert set(latest) == set(expected)
    for key, e in expected.items():
        got = latest[key]
        assert (got["n"], got["total"]) == (e["n"], e["total"])
        assert got["top"] == pytest.approx(e["top"])
        assert got["avg_qty"] == pytest.approx(sum(e["qty"]) / len(e["qty"]))
    assert result.rows_out("in") == len(rows)
    assert result.rows_in("per_key") == sum(1 for r in rows if r["price"] >= 100)


def test_union_and_fan_out(runner) -> None:
    flow = hw.Dataflow("fan")
    left = flow.source("left", TestingSource([{"v": i} for i in range(100)], batch_size=10))
    right = flow.source("right", TestingSource([{"v": 1000 + i} for i in range(50)], batch_size=7))
    merged = left.union(right)
    all_out, big_out = TestingSink(), TestingSink()
    merged.sink("all", all_out)
    merged.filter(hw.col("v") >= 1000).sink("big", big_out)

    runner(flow, parallelism=2)

    assert sorted(r["v"] for r in all_out.rows()) == list(range(100)) + list(range(1000, 1050))
    assert sorted(r["v"] for r in big_out.rows()) == list(range(1000, 1050))


def test_map_batches_actor_pool_and_rows(runner) -> None:
    class AddOffset:
        def __init__(self, offset: int) -> None:
            self.offset = offset

        def __call__(self, batch: pa.RecordBatch) -> dict:
            return {"v": [v + self.offset for v in batch.column("v").to_pylist()]}

    flow = hw.Dataflow("udfs")
    out = TestingSink()
    (
        flow.source("in", TestingSource([{"v": i} for i in range(200)], batch_size=16))
        .map_batches(AddOffset, concurrency=2, fn_constructor_args=(10,))
        .flat_map(lambda row: [row, {"v": -row["v"]}])
        .map_rows(lambda row: row if row["v"] % 2 == 0 else None)
        .sink("out", out)
    )
    runner(flow, parallelism=1)
    expected = sorted(x for i in range(200) for x in (i + 10, -(i + 10)) if x % 2 == 0)
    assert sorted(r["v"] for r in out.rows()) == expected


def test_raising_udf_fails_fast_with_step(runner) -> None:
    def explode(batch: pa.RecordBatch) -> pa.RecordBatch:
        raise ValueError("price feed is broken")

    flow = hw.Dataflow("boom")
    (
        flow.source("in", TestingSource([{"v": i} for i in range(100)], batch_size=10))
        .map_batches(explode, step_id="explode")
        .sink("out", TestingSink())
    )
    started = time.monotonic()
    with pytest.raises(UserCodeError, match=r"step 'explode'.*ValueError: price feed is broken") as info:
        runner(flow, parallelism=2)
    assert time.monotonic() - started < 60
    assert info.value.step_id == "explode"


def test_source_schema_change_is_rejected(runner) -> None:
    batches = [pa.record_batch({"v": [1, 2]}), pa.record_batch({"v": ["a", "b"]})]
    flow = hw.Dataflow("schemas")
    flow.source("in", TestingSource(batches)).sink("out", TestingSink())
    with pytest.raises(SchemaMismatchError, match="step 'in'"):
        runner(flow)


def test_abort_marker_fails_the_run_without_recovery(runner) -> None:
    flow = hw.Dataflow("abort")
    flow.source("in", TestingSource([{"v": 1}, TestingSource.ABORT(), {"v": 2}])).sink("out", TestingSink())
    with pytest.raises(SimulatedCrashError, match="step 'in'"):
        runner(flow)


class _EndlessSource(Source):
    """An unbounded source of fixed-size batches that counts what it produced (position = batches emitted)."""

    bounded = False

    def __init__(self, rows_per_batch: int) -> None:
        self.rows_per_batch = rows_per_batch

    def list_parts(self) -> list[str]:
        return ["endless"]

    def build_part(self, part: str, resume_state: int | None) -> SourcePartition:
        return _EndlessPartition(self.rows_per_batch, resume_state or 0)


class _EndlessPartition(SourcePartition):
    def __init__(self, rows: int, position: int) -> None:
        self.batch = pa.record_batch({"v": pa.array(range(rows), pa.int64()), "pad": pa.array(["x" * 100] * rows)})
        self.position = position

    def next_batch(self) -> pa.RecordBatch:
        self.position += 1
        return self.batch

    def snapshot(self) -> int:
        return self.position


class _SlowSink(Sink):
    def __init__(self, seconds_per_batch: float) -> None:
        self.seconds = seconds_per_batch

    def build_part(self, index: int, count: int) -> SinkPartition:
        return _SlowPartition(self.seconds)


class _SlowPartition(SinkPartition):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def write(self, batch: pa.RecordBatch) -> None:
        time.sleep(self.seconds)

    def prepare(self, checkpoint_id: int) -> None:
        return None

    def commit(self, token: None) -> None:
        return None


@pytest.mark.ray
def test_backpressure_bounds_in_flight_rows(ray_cluster) -> None:
    """A slow sink throttles an endless source: rows produced minus rows sunk stays within the channel bound,
    instead of growing with the source's speed (which is ~1000x the sink's here)."""
    batch_rows = 2_000
    flow = hw.Dataflow("backpressure")
    (
        flow.source("in", _EndlessSource(batch_rows))
        .key_by("v").aggregate(step_id="agg", n=hw.count())
        .sink("slow", _SlowSink(0.02))
    )
    job = hw.start(flow, parallelism=2, batch_size=batch_rows, channel_credits=2)
    gaps = []
    try:
        for _ in range(8):
            time.sleep(0.5)
            steps = defaultdict(int)
            for m in job.metrics():
                for step_id, c in m.steps.items():
                    steps[step_id, "in"] += c.rows_in
                    steps[step_id, "out"] += c.rows_out
            gaps.append(steps["in", "out"] - steps["agg", "in"])
    finally:
        job.stop()
        result = job.wait()
    # in flight per receiver: credits (2) per sender + inbox bound + one batch being processed + output buffer.
    bound = 2 * (2 * 2 + 2 + 2 + 2) * batch_rows
    assert max(gaps) <= bound, gaps
    assert result.rows_out("in") > 0 and result.stopped


@pytest.mark.ray
def test_stop_is_graceful_and_loses_nothing(ray_cluster) -> None:
    flow = hw.Dataflow("graceful")
    out = TestingSink()
    flow.source("in", _EndlessSource(500)).select("v").sink("out", out)
    job = hw.start(flow, parallelism=1, batch_size=500)
    time.sleep(1.0)
    job.stop()
    result = job.wait()
    assert result.stopped
    produced = result.rows_out("in")
    assert produced > 0
    table = out.table()
    assert table is not None and table.num_rows == produced
