"""Windowed stream-stream equi-join: rows of both inputs with equal keys in the same tumbling window.

Both inputs are hash-partitioned by their join keys, so matching rows meet in one subtask. Each side's rows
are buffered per window (Arrow tables); when the watermark — the minimum of both inputs' — passes a window's
end, the two buffers are joined with Arrow's hash join (vectorised, in C++), emitted, and dropped. Rows that
arrive for a window that already closed are dropped and counted (``late_rows`` in the step's metrics).

Output columns: the left input's, then the right input's except its join keys (names that collide get the
suffix ``_right``), then ``window_start``/``window_end`` of the join window unless the left input already has
columns with those names (joining window results keeps their windows).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.arrays import join_tables
from headwater.core.event_time import MIN_WATERMARK, event_times_ms, split_missing_times, time_array
from headwater.core.operator import Operator, OperatorContext
from headwater.core.state.key_groups import key_groups
from headwater.core.state.store import KEY_GROUP_COLUMN
from headwater.windows import TumblingWindow

_WINDOW = "__window"
MAX_WATERMARK = np.iinfo(np.int64).max


class WindowRows:
    """Rows of one join input, buffered per window start; a keyed state (rows tagged with key groups)."""

    def __init__(self, keys: Sequence[str], max_key_groups: int) -> None:
        self.keys = tuple(keys)
        self.max_key_groups = max_key_groups
        self.windows: dict[int, list[pa.Table]] = {}

    def add(self, start: int, rows: pa.Table) -> None:
        self.windows.setdefault(start, []).append(rows)

    def take(self, start: int) -> pa.Table | None:
        parts = self.windows.pop(start, None)
        return pa.concat_tables(parts) if parts else None

    def snapshot(self) -> pa.Table | None:
        tables = []
        for start, parts in self.windows.items():
            table = pa.concat_tables(parts)
            groups = key_groups([table.column(k) for k in self.keys], self.max_key_groups)
            table = table.append_column(_WINDOW, pa.array([start] * table.num_rows, pa.int64()))
            tables.append(table.append_column(KEY_GROUP_COLUMN, pa.array(groups, pa.int32())))
        return pa.concat_tables(tables) if tables else None

    def restore(self, table: pa.Table) -> None:
        windows = table.column(_WINDOW)
        for start in pc.unique(windows).to_pylist():
            self.add(start, table.filter(pc.equal(windows, start)).drop_columns([_WINDOW, KEY_GROUP_COLUMN]))


class WindowJoinOperator(Operator):
    def __init__(
        self, left_on: Sequence[str], right_on: Sequence[str], window: TumblingWindow,
        times: Sequence[tuple[str, int]], time_type: pa.DataType, add_window_columns: bool,
    ) -> None:
        self.on = (tuple(left_on), tuple(right_on))
        self.size = window.size_ms
        self.times = tuple(times)
        self.time_type = time_type
        self.add_window_columns = add_window_columns
        self.watermark = MIN_WATERMARK
        self.sides: tuple[WindowRows, WindowRows] | None = None
        self.late = 0

    def open(self, ctx: OperatorContext) -> None:
        store = ctx.state
        self.sides = (
            store.register("left", WindowRows(self.on[0], store.max_key_groups)),
            store.register("right", WindowRows(self.on[1], store.max_key_groups)),
        )

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        assert self.sides is not None, "open() was not called"
        column, offset = self.times[input_index]
        batch, times, missing = split_missing_times(batch, event_times_ms(batch, column, offset))
        self.late += missing.num_rows if missing is not None else 0
        starts = (times // self.size) * self.size
        open_ = starts + self.size > self.watermark
        self.late += int((~open_).sum())
        if not open_.all():
            batch, starts = batch.filter(pa.array(open_)), starts[open_]
        table = pa.Table.from_batches([batch])
        for start in np.unique(starts).tolist():
            self.sides[input_index].add(start, table.filter(pa.array(starts == start)))
        return []

    def on_watermark(self, watermark_ms: int) -> list[pa.RecordBatch]:
        assert self.sides is not None
        self.watermark = max(self.watermark, watermark_ms)
        left, right = self.sides
        due = sorted(s for s in set(left.windows) | set(right.windows) if s + self.size <= self.watermark)
        sides = []
        for rows in (left, right):
            parts = []
            for start in due:
                table = rows.take(start)
                if table is not None:
                    parts.append(table.append_column(_WINDOW, pa.array(np.full(table.num_rows, start, np.int64))))
            sides.append(pa.concat_tables(parts) if parts else None)
        if sides[0] is None or sides[1] is None or not due:
            return []
        # One hash join for every due window: the window is part of the key.
        joined = join_tables(sides[0], sides[1], [*self.on[0], _WINDOW], [*self.on[1], _WINDOW])
        if joined.num_rows == 0:
            return []
        starts = np.asarray(joined.column(_WINDOW).combine_chunks())
        joined = joined.drop_columns([_WINDOW])
        if self.add_window_columns:
            for name, values in (("window_start", starts), ("window_end", starts + self.size)):
                joined = joined.append_column(name, time_array(values, self.time_type))
        return joined.combine_chunks().to_batches()

    def finish(self) -> list[pa.RecordBatch]:
        return self.on_watermark(MAX_WATERMARK)

    def metrics(self) -> dict[str, float]:
        buffered = sum(t.num_rows for side in (self.sides or ()) for parts in side.windows.values() for t in parts)
        return {"buffered_rows": float(buffered), "late_rows": float(self.late)}
