"""Session windows: per key, a window that stays open while events keep arriving less than ``gap`` apart.

Each batch is sorted by key and time and cut into *batch-local sessions* (a new one where the key changes or
two consecutive events are ``gap`` or more apart) — vectorised. Arrow reduces each local session to one row
of partial aggregates plus its first and last event time. Those rows (far fewer than events) are merged into
the key's open sessions in Python: a local session that comes within ``gap`` of open sessions merges with
all of them (so sessions also merge across batches, and across checkpoints, since open sessions are state).

A session ``[start, last event + gap)`` is emitted when the watermark passes its end. Events whose own
session would already have closed (``time + gap + allowed_lateness <= watermark``) go to the side output.
State: per key, the open sessions with their partial aggregates (pickled per key in the snapshot).
"""

from __future__ import annotations

import heapq
from functools import partial
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.aggregations import Aggregation
from headwater.core.arrays import as_int64, is_integer_like
from headwater.core.event_time import MIN_WATERMARK, event_times_ms, split_missing_times, time_array
from headwater.core.operator import Operator, OperatorContext
from headwater.core.ports import LATE_PORT
from headwater.core.state.store import KeyedObjects
from headwater.operators.aggregation.accumulators import AccumulatorSet
from headwater.operators.aggregation.object_accumulators import object_array
from headwater.operators.windows.window import ALL, MAX_WATERMARK, late_rows
from headwater.windows import SessionWindow

_LOCAL, _FIRST, _LAST = "__session", "__first_time", "__last_time"


def _combine(function: str, a: Any, b: Any) -> Any:
    """Combine two partial values of one accumulator (``a`` is the earlier session's)."""
    if a is None:
        return set(b) if function == "distinct" and b is not None else b
    if b is None:
        return a
    if function in ("count", "count_all", "sum"):
        return a + b
    if function == "min":
        return min(a, b)
    if function == "max":
        return max(a, b)
    if function == "first":
        return a
    if function == "last":
        return b
    return set(a) | set(b)  # distinct


class SessionWindowOperator(Operator):
    def __init__(
        self, keys: Sequence[str], window: SessionWindow, aggregations: Sequence[tuple[str, Aggregation]],
        time_column: str, time_offset_ms: int, allowed_lateness_ms: int, input_schema: pa.Schema | None,
        time_type: pa.DataType,
    ) -> None:
        self.keys = tuple(keys) if keys else (ALL,)
        self.keyed = bool(keys)
        self.gap = window.gap_ms
        self.accumulators = AccumulatorSet(aggregations)
        if self.accumulators.sort_by:
            raise ValueError("max_by is not supported in session windows")
        self.time_column = time_column
        self.time_offset = time_offset_ms
        self.lateness = allowed_lateness_ms
        self.input_schema = input_schema
        self.time_type = time_type
        self.watermark = MIN_WATERMARK
        self.sessions: KeyedObjects | None = None
        self._heap: list[tuple[int, Any]] = []
        self._side: list[pa.RecordBatch] = []
        self._names = [(c, f, "count_all" if c == [] else f"{c}_{f}") for c, f in self.accumulators.partials]
        self._objects = list(self.accumulators.objects.values())  # top_k / udaf: their values follow _names'
        self._combiners = [partial(_combine, f) for _, f, _ in self._names] + [o.merge_pair for o in self._objects]

    def open(self, ctx: OperatorContext) -> None:
        store = ctx.state
        self.sessions = store.keyed_objects("sessions", self.keys)
        if self.input_schema is not None:
            self.accumulators.declare(_Sink(), self.input_schema)

    def _key(self, values: Sequence[Any]) -> Any:
        return values[0] if len(values) == 1 else tuple(values)

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        assert self.sessions is not None, "open() was not called"
        if batch.num_rows == 0:
            return []
        if not self.accumulators.declared:
            self.accumulators.declare(_Sink(), batch.schema)
        batch, times, missing = split_missing_times(batch, event_times_ms(batch, self.time_column, self.time_offset))
        if missing is not None:
            self._side.append(late_rows(missing, np.zeros(missing.num_rows, np.int64), 0, "missing event time"))
            if batch.num_rows == 0:
                return []
        late = times + self.gap + self.lateness <= self.watermark
        if late.any():
            self._side.append(late_rows(batch.filter(pa.array(late)), times[late], self.watermark,
                                        f"session closed more than {self.lateness} ms before the watermark"))
            batch, times = batch.filter(pa.array(~late)), times[~late]
            if batch.num_rows == 0:
                return []
        table = pa.Table.from_batches([batch]).append_column(_FIRST, pa.array(times))
        if not self.keyed:
            table = table.append_column(ALL, pa.array(np.zeros(table.num_rows, dtype=np.int8)))
        table = table.sort_by([*((k, "ascending") for k in self.keys), (_FIRST, "ascending")])
        ordered = np.asarray(table.column(_FIRST))
        boundary = np.ones(len(ordered), dtype=bool)
        boundary[1:] = ordered[1:] - ordered[:-1] >= self.gap
        for k in self.keys:
            column = table.column(k).combine_chunks()
            if len(column) > 1:
                changed = pc.fill_null(pc.not_equal(column.slice(1), column.slice(0, len(column) - 1)), True)
                boundary[1:] |= np.asarray(changed)
        table = table.append_column(_LOCAL, pa.array(np.cumsum(boundary)))
        table = table.append_column(_LAST, table.column(_FIRST))
        grouped = self.accumulators.group(table, [*self.keys, _LOCAL], extra=[(_FIRST, "min"), (_LAST, "max")])
        self._merge_local_sessions(grouped)
        return []

    def _merge_local_sessions(self, grouped: pa.Table) -> None:
        assert self.sessions is not None
        self.sessions.bind_key_types(grouped.schema.field(k).type for k in self.keys)
        keys = list(zip(*(grouped.column(k).to_pylist() for k in self.keys)))
        firsts = grouped.column(f"{_FIRST}_min").to_pylist()
        lasts = grouped.column(f"{_LAST}_max").to_pylist()
        partials = []
        for _, function, name in self._names:
            column = grouped.column(name).combine_chunks()
            if function in ("min", "max", "sum") and is_integer_like(column.type) and not pa.types.is_integer(column.type):
                column = as_int64(column)  # temporal min/max are merged as integers, like the other windows
            partials.append(column.to_pylist())
        for acc in self._objects:
            partials.append(acc.to_objects(grouped.column(acc.name).combine_chunks()))
        for row, key_values in enumerate(keys):
            key = self._key(key_values)
            start, last = firsts[row], lasts[row]
            values = [column[row] for column in partials]
            kept = []
            for session in self.sessions.get(key) or []:
                if start < session[1] + self.gap and last + self.gap > session[0]:
                    earlier = session[0] <= start
                    a, b = (session[2], values) if earlier else (values, session[2])
                    values = [combine(x, y) for combine, x, y in zip(self._combiners, a, b)]
                    start, last = min(start, session[0]), max(last, session[1])
                else:
                    kept.append(session)
            kept.append([start, last, values])
            self.sessions.set(key, kept)
            heapq.heappush(self._heap, (last + self.gap, key))

    def on_watermark(self, watermark_ms: int) -> list[pa.RecordBatch]:
        assert self.sessions is not None
        self.watermark = max(self.watermark, watermark_ms)
        if not self._heap and self.sessions.values:
            self._heap = [(s[1] + self.gap, k) for k, ss in self.sessions.values.items() for s in ss]
            heapq.heapify(self._heap)
        closed: list[tuple[Any, list[Any]]] = []
        while self._heap and self._heap[0][0] <= self.watermark:
            _, key = heapq.heappop(self._heap)
            open_sessions = self.sessions.get(key) or []
            done = [s for s in open_sessions if s[1] + self.gap <= self.watermark]
            if not done:
                continue
            closed.extend((key, s) for s in done)
            remaining = [s for s in open_sessions if s[1] + self.gap > self.watermark]
            if remaining:
                self.sessions.set(key, remaining)
            else:
                self.sessions.delete(key)
        return [self._results(closed)] if closed else []

    def finish(self) -> list[pa.RecordBatch]:
        return self.on_watermark(MAX_WATERMARK)

    def take_side_outputs(self) -> Mapping[str, list[pa.RecordBatch]]:
        if not self._side:
            return {}
        taken, self._side = self._side, []
        return {LATE_PORT: taken}

    def _results(self, closed: list[tuple[Any, list[Any]]]) -> pa.RecordBatch:
        columns = {}
        for index, (_column, function, name) in enumerate(self._names):
            values = [s[2][index] for _, s in closed]
            if function in ("first", "last", "distinct"):
                array = object_array(values)
            else:
                array = np.array([0 if v is None else v for v in values])
            columns[name] = array
        for index, acc in enumerate(self._objects, start=len(self._names)):
            columns[acc.name] = object_array([s[2][index] for _, s in closed])
        results = self.accumulators.results(SimpleNamespace(columns=columns), np.arange(len(closed)))
        starts = np.array([s[0] for _, s in closed], dtype=np.int64)
        ends = np.array([s[1] + self.gap for _, s in closed], dtype=np.int64)
        key_types = self.sessions._key_types if self.sessions is not None else None
        names, arrays = [], []
        if self.keyed:
            for i, k in enumerate(self.keys):
                values = [key if len(self.keys) == 1 else key[i] for key, _ in closed]
                names.append(k)
                arrays.append(pa.array(values, type=key_types[i] if key_types else None))
        names += [n for n, _ in results] + ["window_start", "window_end"]
        arrays += [a for _, a in results] + [self._times(starts), self._times(ends)]
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def _times(self, values: np.ndarray) -> pa.Array:
        return time_array(values, self.time_type)

    def metrics(self) -> dict[str, float]:
        open_sessions = sum(len(v) for v in self.sessions.values.values()) if self.sessions is not None else 0
        return {"open_sessions": float(open_sessions)}


class _Sink:
    """A stand-in state for ``AccumulatorSet.declare`` when only the value types are wanted."""

    def add_column(self, name: str, dtype: np.dtype | type, fill: Any) -> None:
        pass
