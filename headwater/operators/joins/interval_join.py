"""Interval join: rows ``a`` (left) and ``b`` (right) with equal keys and
``b.time + lower <= a.time <= b.time + upper``.

Both inputs are hash-partitioned by their keys. Each side keeps a buffer of its rows (Arrow tables); a new
batch on one side is hash-joined (Arrow, vectorised) with the other side's buffer, the time condition is
applied, matches are emitted at once, and the batch joins its own side's buffer. The watermark bounds the
buffers: a left row can still match a future right row only while ``a.time - lower >= watermark``, a right
row only while ``b.time + upper >= watermark``; older rows are dropped.
"""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.arrays import join_tables
from headwater.core.event_time import MIN_WATERMARK, event_times_ms
from headwater.core.operator import Operator, OperatorContext
from headwater.operators.joins.window_join import WindowRows

_TIME = "__time"


class IntervalJoinOperator(Operator):
    def __init__(
        self, left_on: Sequence[str], right_on: Sequence[str], lower_ms: int, upper_ms: int,
        times: Sequence[tuple[str, int]],
    ) -> None:
        self.on = (tuple(left_on), tuple(right_on))
        self.lower, self.upper = lower_ms, upper_ms
        self.times = tuple(times)
        self.watermark = MIN_WATERMARK
        self.buffers: tuple[WindowRows, WindowRows] | None = None

    def open(self, ctx: OperatorContext) -> None:
        store = ctx.state
        self.buffers = (
            store.register("left", WindowRows(self.on[0], store.max_key_groups)),
            store.register("right", WindowRows(self.on[1], store.max_key_groups)),
        )

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        assert self.buffers is not None
        column, offset = self.times[input_index]
        table = pa.Table.from_batches([batch]).append_column(_TIME, pa.array(event_times_ms(batch, column, offset)))
        other = self.buffers[1 - input_index].windows.get(0)
        out: list[pa.RecordBatch] = []
        if other:
            other_rows = pa.concat_tables(other)
            left, right = (table, other_rows) if input_index == 0 else (other_rows, table)
            joined = join_tables(left, right, *self.on)
            difference = pc.subtract(joined.column(_TIME), joined.column(f"{_TIME}_right"))
            matched = joined.filter(pc.and_(pc.greater_equal(difference, self.lower),
                                            pc.less_equal(difference, self.upper)))
            if matched.num_rows:
                out = matched.drop_columns([_TIME, f"{_TIME}_right"]).combine_chunks().to_batches()
        self.buffers[input_index].add(0, table)
        return out

    def on_watermark(self, watermark_ms: int) -> list[pa.RecordBatch]:
        assert self.buffers is not None
        self.watermark = max(self.watermark, watermark_ms)
        for side, keep_after in ((0, self.watermark + self.lower), (1, self.watermark - self.upper)):
            rows = self.buffers[side].take(0)
            if rows is not None:
                kept = rows.filter(pc.greater_equal(rows.column(_TIME), keep_after))
                if kept.num_rows:
                    self.buffers[side].add(0, kept.combine_chunks())
        return []

    def metrics(self) -> dict[str, float]:
        buffered = sum(t.num_rows for b in (self.buffers or ()) for parts in b.windows.values() for t in parts)
        return {"buffered_rows": float(buffered)}
