"""Deduplication by key within a time horizon: a record passes unless a record with the same key passed less
than ``within`` before it (event time when the stream has one, else arrival time).

State: per key, the time of the last record that passed (vectorised: a numpy column per key slot). Keys whose
last record is older than the horizon behind the watermark are dropped from state periodically (compaction),
so state stays proportional to the keys seen within the horizon.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.event_time import MIN_WATERMARK, event_times_ms
from headwater.core.operator import Operator, OperatorContext
from headwater.core.state.store import KeyedColumns, OperatorStateStore

_LAST = "last_passed"


class DeduplicateOperator(Operator):
    def __init__(self, keys: Sequence[str], within_ms: int, time: tuple[str, int] | None) -> None:
        self.keys = tuple(keys)
        self.within = within_ms
        self.time = time
        self.watermark = MIN_WATERMARK
        self.state: KeyedColumns | None = None
        self._store: OperatorStateStore | None = None
        self._compacted_at = MIN_WATERMARK
        self.dropped = 0

    def open(self, ctx: OperatorContext) -> None:
        self._store = ctx.state
        self.state = self._store.keyed_columns("seen", self.keys)
        self.state.add_column(_LAST, np.int64, MIN_WATERMARK)

    def _times(self, batch: pa.RecordBatch) -> np.ndarray:
        if self.time is not None:
            return event_times_ms(batch, *self.time)
        now = time.time_ns() // 1_000_000
        self.on_watermark(now)  # arrival time: the clock is the watermark (drives compaction)
        return np.full(batch.num_rows, now, dtype=np.int64)

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        assert self.state is not None
        if batch.num_rows == 0:
            return []
        times = self._times(batch)
        order = np.argsort(times, kind="stable")  # decide in time order within the batch
        keys = [batch.column(k).take(pa.array(order)) for k in self.keys]
        slots = self._slots(keys)
        ordered_times = times[order]
        passed = np.zeros(len(order), dtype=bool)
        last = self.state.columns[_LAST]
        if len(np.unique(slots)) == len(slots):  # no key twice in this batch: fully vectorised
            passed = ordered_times - last[slots] >= self.within
            passed |= last[slots] == MIN_WATERMARK
            last[slots[passed]] = ordered_times[passed]
        else:
            for i, (slot, t) in enumerate(zip(slots.tolist(), ordered_times.tolist())):
                if last[slot] == MIN_WATERMARK or t - last[slot] >= self.within:
                    passed[i] = True
                    last[slot] = t
        self.dropped += int((~passed).sum())
        kept = np.sort(order[passed])  # back to arrival order
        return [batch.take(pa.array(kept))] if len(kept) else []

    def _slots(self, keys: list[pa.Array]) -> np.ndarray:
        """Slot per row (keys repeat within a batch, so look up the distinct keys and map back)."""
        assert self.state is not None
        table = pa.table({f"k{i}": k for i, k in enumerate(keys)})
        names = list(table.column_names)
        distinct = table.group_by(names, use_threads=False).aggregate([])
        distinct_slots = self.state.slots_for([distinct.column(n).combine_chunks() for n in names])
        marked = distinct.append_column("__slot", pa.array(distinct_slots))
        rows = table.append_column("__row", pa.array(np.arange(table.num_rows)))
        joined = rows.join(marked, keys=names, join_type="left outer", use_threads=False)
        result = np.empty(table.num_rows, dtype=np.int64)
        result[np.asarray(joined.column("__row"))] = np.asarray(joined.column("__slot"))
        return result

    def on_watermark(self, watermark_ms: int) -> list[pa.RecordBatch]:
        self.watermark = max(self.watermark, watermark_ms)
        if self.state is not None and self.watermark - self._compacted_at >= self.within and len(self.state):
            self._compact()
        return []

    def _compact(self) -> None:
        """Forget keys whose last record left the horizon: no future record can be a duplicate of it."""
        assert self.state is not None and self._store is not None
        table = self.state.snapshot()
        self._compacted_at = self.watermark
        if table is None:
            return
        fresh = KeyedColumns(self.keys, self.state.max_key_groups)
        fresh.add_column(_LAST, np.int64, MIN_WATERMARK)
        fresh.restore(table.filter(pc.greater(table.column(_LAST), self.watermark - self.within)))
        self.state = fresh
        self._store.keyed["seen"] = fresh

    def metrics(self) -> dict[str, float]:
        return {"keys": float(len(self.state) if self.state is not None else 0), "dropped": float(self.dropped)}
