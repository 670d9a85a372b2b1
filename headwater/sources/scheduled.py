"""``ScheduledSource``: rows released on a rate schedule in wall-clock time, with lag — for load tests.

The schedule is a list of ``(seconds, rows_per_second)`` phases over all partitions, starting at ``started``
(``time.time()``; default: when the source object is made). Rows are ``{"id", "part"}``: partition ``i`` of ``n``
owns ids ``i, i + n, i + 2n, ...`` below the schedule's total. A partition reads what the schedule released and
reports as lag the rows released but not read yet, as a Kafka partition reports the records behind its end
offset. The schedule runs on wall-clock time shared by every attempt, so a job restarted (after a crash or a
rescale) finds the rows released meanwhile waiting: the source behaves like a topic that fills while no one
reads. The position in checkpoints is the count of rows read; the source ends when the schedule has released
every row and all were read.
"""

from __future__ import annotations

import time
from typing import Sequence

import pyarrow as pa

from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError
from headwater.sources.base import Source, SourceLag, SourcePartition

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("part", pa.int64(), nullable=False)])


class ScheduledSource(Source):
    def __init__(self, phases: Sequence[tuple[float, float]], partitions: int = 4, *, started: float | None = None,
                 max_batch_rows: int = 50) -> None:
        if not phases or any(len(p) != 2 or p[0] <= 0 or p[1] < 0 for p in phases):
            raise ConfigError(f"ScheduledSource: phases must be (seconds > 0, rows_per_second >= 0) pairs, got {phases!r}")
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ConfigError(f"ScheduledSource: partitions must be an int >= 1, got {partitions!r}")
        if max_batch_rows < 1:
            raise ConfigError(f"ScheduledSource: max_batch_rows must be >= 1, got {max_batch_rows!r}")
        self.phases = [(float(s), float(r)) for s, r in phases]
        self.partitions = partitions
        self.started = time.time() if started is None else started
        self.max_batch_rows = max_batch_rows

    @property
    def total(self) -> int:
        """Rows over the whole schedule (all partitions)."""
        return int(self.released(sum(s for s, _ in self.phases)))

    def released(self, elapsed: float) -> float:
        """Rows (all partitions) the schedule has released ``elapsed`` seconds after its start."""
        total, start = 0.0, 0.0
        for length, rate in self.phases:
            if elapsed <= start:
                break
            total += rate * (min(elapsed, start + length) - start)
            start += length
        return total

    def schema(self) -> pa.Schema:
        return SCHEMA

    def list_parts(self) -> list[str]:
        return [f"p{i}" for i in range(self.partitions)]

    def build_part(self, part: str, resume_state: PlainData | None) -> SourcePartition:
        return _ScheduledPartition(self, int(part[1:]), resume_state if isinstance(resume_state, int) else 0)


class _ScheduledPartition(SourcePartition):
    def __init__(self, source: ScheduledSource, index: int, position: int) -> None:
        self.source, self.index, self.position = source, index, position
        self.total = len(range(index, source.total, source.partitions))

    def _released(self) -> int:
        released = self.source.released(time.time() - self.source.started)
        return min(self.total, int(released / self.source.partitions))

    def next_batch(self) -> pa.RecordBatch | None:
        if self.position >= self.total:
            raise StopIteration
        end = min(self._released(), self.position + self.source.max_batch_rows)
        if end <= self.position:
            return None
        n = self.source.partitions
        ids = list(range(self.index + self.position * n, self.index + end * n, n))
        self.position = end
        return pa.RecordBatch.from_pydict({"id": ids, "part": [self.index] * len(ids)}, schema=SCHEMA)

    def next_awake(self) -> float | None:
        return time.monotonic() + 0.02

    def snapshot(self) -> PlainData:
        return self.position

    def lag(self) -> SourceLag:
        return SourceLag(records=max(0, self._released() - self.position))
