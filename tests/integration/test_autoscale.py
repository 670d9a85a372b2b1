"""Autoscaling on Ray: a source whose rate steps up 5x makes the controller raise parallelism; when the rate
drops it goes back down; the committed output equals the input exactly once throughout.

The work per row is a sleep (2 ms: 500 rows/s per subtask), so extra subtasks add capacity even on this
2-core machine; the source reports its lag (rows due by its schedule but not read yet), as Kafka reports
offsets behind the end. The schedule runs on wall-clock time shared by every attempt, so a restart at a new
parallelism finds the rows that arrived meanwhile waiting (lag), as a real topic would hold them.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import headwater as hw
from headwater.sinks.testing import TestingSink
from headwater.sources.base import Source, SourceLag, SourcePartition

pytestmark = [pytest.mark.autoscale, pytest.mark.ray, pytest.mark.slow]

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("part", pa.int64(), nullable=False)])
PARTS = 4
#: (seconds, rows/s over all partitions): slow, then 5x that (2x what one subtask does), then slow again
PHASES = [(8.0, 200.0), (24.0, 1000.0), (40.0, 100.0)]


def due(elapsed: float) -> float:
    """Rows (all partitions) the schedule has released after ``elapsed`` seconds."""
    total, start = 0.0, 0.0
    for length, rate in PHASES:
        if elapsed <= start:
            break
        total += rate * (min(elapsed, start + length) - start)
        start += length
    return total


TOTAL = int(due(sum(length for length, _ in PHASES)))


class ScheduledSource(Source):
    def __init__(self, started: float) -> None:
        self.started = started  # time.time() shared by every attempt

    def schema(self) -> pa.Schema:
        return SCHEMA

    def list_parts(self) -> list[str]:
        return [f"p{i}" for i in range(PARTS)]

    def build_part(self, part: str, resume_state: Any | None) -> SourcePartition:
        return _Scheduled(int(part[1:]), int(resume_state or 0), self.started)


class _Scheduled(SourcePartition):
    """Partition ``index`` owns ids ``index, index + PARTS, ...``; ``position`` counts its rows read."""

    def __init__(self, index: int, position: int, started: float) -> None:
        self.index, self.position, self.started = index, position, started
        self.total = len(range(index, TOTAL, PARTS))

    def _released(self) -> int:
        return min(self.total, int(due(time.time() - self.started) / PARTS))

    def next_batch(self) -> pa.RecordBatch | None:
        if self.position >= self.total:
            raise StopIteration
        end = min(self._released(), self.position + 50)
        if end <= self.position:
            return None
        ids = list(range(self.index + self.position * PARTS, self.index + end * PARTS, PARTS))
        self.position = end
        return pa.RecordBatch.from_pydict({"id": ids, "part": [self.index] * len(ids)}, schema=SCHEMA)

    def next_awake(self) -> float | None:
        return time.monotonic() + 0.02

    def snapshot(self) -> Any:
        return self.position

    def lag(self) -> SourceLag:
        return SourceLag(records=max(0, self._released() - self.position))


def slow(batch: pa.RecordBatch) -> pa.RecordBatch:
    time.sleep(0.002 * batch.num_rows)  # 500 rows/s per subtask
    return batch


def test_parallelism_follows_a_rate_step_up_and_down_and_nothing_is_lost_or_repeated(
    ray_cluster: Any, tmp_path: Path
) -> None:
    out = TestingSink()
    flow = hw.Dataflow("autoscaled")
    flow.source("events", ScheduledSource(time.time())).map_batches(slow).sink("out", out)
    autoscale = hw.AutoscaleConfig(
        min_parallelism=1, max_parallelism=4, target_lag=timedelta(seconds=1), cooldown=timedelta(seconds=4),
        scale_up_after=timedelta(seconds=2), scale_down_after=timedelta(seconds=4), interval=timedelta(milliseconds=500),
        request_resources=False,
    )
    result = hw.run(flow, autoscale=autoscale, timeout=240,
                    checkpoint=hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=500)))
    ids = Counter(row["id"] for row in out.rows())
    assert sorted(ids) == list(range(TOTAL)), "every row arrived"
    assert max(ids.values()) == 1, "none twice"
    directions = [d.direction for d in result.rescales]
    assert "up" in directions, result.rescales
    assert max(d.parallelism for d in result.rescales) >= 2
    assert "down" in directions[directions.index("up"):], f"back down once the rate fell: {result.rescales}"
    assert all(1 <= d.parallelism <= 4 for d in result.rescales)
