"""Event time: reading times out of batches, and watermarks at sources and at multi-input operators.

* A source subtask keeps, per partition, the largest event time seen; the partition's watermark trails it by
  ``max_out_of_orderness``. The subtask's watermark is the minimum over its partitions that have not ended
  and are not idle (no data for ``idle_timeout``); a partition that has produced nothing yet holds the
  watermark back until it becomes idle. When every live partition is idle the subtask says so
  (``Watermark(idle=True)``) so that it does not hold back downstream operators.
* An operator's watermark is the minimum over its input channels that have not ended and are not idle.
  Watermarks only move forward.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MIN_WATERMARK = np.iinfo(np.int64).min


def event_times_ms(batch: pa.RecordBatch, column: str, offset_ms: int = 0) -> np.ndarray:
    """Event times of ``batch`` in ms since the epoch (nulls become the smallest int64: always late)."""
    values = batch.column(column)
    kind = values.type
    if pa.types.is_timestamp(kind):
        values = pc.cast(values, pa.timestamp("ms", kind.tz), safe=False).view(pa.int64())
    elif pa.types.is_date(kind):
        values = pc.cast(pc.cast(values, pa.timestamp("ms")), pa.int64())
    elif not pa.types.is_int64(kind):
        values = values.cast(pa.int64())
    times = np.asarray(pc.fill_null(values, MIN_WATERMARK), dtype=np.int64)
    return times + offset_ms if offset_ms else times


def time_array(values: np.ndarray, time_type: pa.DataType) -> pa.Array:
    """Milliseconds since the epoch as an Arrow array of ``time_type`` (a ms timestamp, or int64)."""
    array = pa.array(values, pa.int64())
    return array.view(pa.timestamp("ms", time_type.tz)) if pa.types.is_timestamp(time_type) else array


def split_missing_times(batch: pa.RecordBatch, times: np.ndarray) -> tuple[pa.RecordBatch, np.ndarray, pa.RecordBatch | None]:
    """(rows with an event time, their times, rows without one — or ``None``)."""
    missing = times == MIN_WATERMARK
    if not missing.any():
        return batch, times, None
    return batch.filter(pa.array(~missing)), times[~missing], batch.filter(pa.array(missing))


class SourceWatermarks:
    """Per-partition watermark generation of one source subtask."""

    def __init__(self, parts: list[str], column: str, bound_ms: int, idle_timeout_ms: int | None) -> None:
        self.column = column
        self.bound_ms = bound_ms
        self.idle_timeout = None if idle_timeout_ms is None else idle_timeout_ms / 1000
        now = time.monotonic()
        self.max_time: dict[str, int | None] = {p: None for p in parts}
        self.last_data: dict[str, float] = {p: now for p in parts}
        self.emitted = MIN_WATERMARK
        self.idle_sent = False

    def observe(self, part: str, batch: pa.RecordBatch) -> None:
        times = event_times_ms(batch, self.column)
        if len(times):
            latest = int(times.max())
            current = self.max_time.get(part)
            self.max_time[part] = latest if current is None else max(current, latest)
        self.last_data[part] = time.monotonic()

    def ended(self, part: str) -> None:
        self.max_time.pop(part, None)
        self.last_data.pop(part, None)

    def poll(self, now: float | None = None) -> tuple[int, bool] | None:
        """A watermark to send — (timestamp, idle) — or ``None`` when it has not changed."""
        now = time.monotonic() if now is None else now
        live = []
        for part, latest in self.max_time.items():
            idle = self.idle_timeout is not None and now - self.last_data[part] >= self.idle_timeout
            if not idle:
                live.append(latest)
        if not live:
            if self.max_time and not self.idle_sent:
                self.idle_sent = True
                return self.emitted, True
            return None
        known = [latest for latest in live if latest is not None]
        if len(known) < len(live):
            return None  # a partition that has produced nothing yet holds the watermark back
        watermark = min(known) - self.bound_ms
        if watermark > self.emitted or self.idle_sent:
            self.emitted = max(self.emitted, watermark)
            self.idle_sent = False
            return self.emitted, False
        return None


class InputWatermarks:
    """The combined watermark of an operator's input channels."""

    def __init__(self, channels: set[tuple[int, int]]) -> None:
        self.values: dict[tuple[int, int], int] = {c: MIN_WATERMARK for c in channels}
        self.idle: set[tuple[int, int]] = set()
        self.current = MIN_WATERMARK

    def update(self, channel: tuple[int, int], timestamp_ms: int, idle: bool) -> int | None:
        """Record a channel's watermark; returns the new combined watermark if it advanced."""
        if idle:
            self.idle.add(channel)
        else:
            self.idle.discard(channel)
            self.values[channel] = max(self.values.get(channel, MIN_WATERMARK), timestamp_ms)
        return self._recompute()

    def ended(self, channel: tuple[int, int]) -> int | None:
        self.values.pop(channel, None)
        self.idle.discard(channel)
        return self._recompute()

    def _recompute(self) -> int | None:
        active = [v for c, v in self.values.items() if c not in self.idle]
        if not active:
            return None
        combined = min(active)
        if combined > self.current:
            self.current = combined
            return combined
        return None
