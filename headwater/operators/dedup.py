"""Deduplication by key within a time horizon: a record passes unless a record with the same key passed less
than ``within`` before it (event time when the stream has one, else arrival time).

State: per key, the time of the last record that passed (vectorised: a numpy column per key slot). Keys whose
last record is older than the horizon behind the watermark are dropped from state periodically (compaction),
so state stays proportional to the keys seen within the horizon.
"""

from __future__ import annotations

import time as _time
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.event_time import MIN_WATERMARK, event_times_ms
from headwater.core.operator import Operator, OperatorContext
from headwater.core.state.store import KeyedColumns, OperatorStateStore

_LAST = "last_passed"


class FirstWithin:
    """Keyed "first record within a horizon" state, shared by deduplication and ``unique_within`` rules.

    :meth:`admit` decides, for rows with keys and times, which are the first of their key within ``within_ms``
    (in time order within a batch; a row that is admitted records its time). Declared in the operator's state
    store under ``name``, so it is checkpointed and restored like every keyed state.
    """

    def __init__(self, store: OperatorStateStore, name: str, keys: Sequence[str], within_ms: int) -> None:
        self.keys = tuple(keys)
        self.within = within_ms
        self.name = name
        self._store = store
        self.state = store.keyed_columns(name, self.keys)
        self.state.add_column(_LAST, np.int64, MIN_WATERMARK)
        self.watermark = MIN_WATERMARK
        self._compacted_at = MIN_WATERMARK

    def __len__(self) -> int:
        return len(self.state)

    def admit(self, batch: pa.RecordBatch, times: np.ndarray) -> np.ndarray:
        """Boolean mask (in the batch's row order) of the rows that are the first of their key in the horizon."""
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
        mask = np.zeros(len(order), dtype=bool)
        mask[order[passed]] = True
        return mask

    def _slots(self, keys: list[pa.Array]) -> np.ndarray:
        """Slot per row (keys repeat within a batch, so look up the distinct keys and map back)."""
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

    def advance(self, watermark_ms: int) -> None:
        """Event time reached ``watermark_ms``: now and then forget keys that left the horizon."""
        self.watermark = max(self.watermark, watermark_ms)
        if self.watermark - self._compacted_at >= self.within and len(self.state):
            self._compact()

    def _compact(self) -> None:
        """Forget keys whose last record left the horizon: no future record can be a duplicate of it."""
        table = self.state.snapshot()
        self._compacted_at = self.watermark
        if table is None:
            return
        fresh = KeyedColumns(self.keys, self.state.max_key_groups)
        fresh.add_column(_LAST, np.int64, MIN_WATERMARK)
        fresh.restore(table.filter(pc.greater(table.column(_LAST), self.watermark - self.within)))
        self.state = fresh
        self._store.keyed[self.name] = fresh


def record_times(batch: pa.RecordBatch, time: tuple[str, int] | None, on_arrival: FirstWithin) -> np.ndarray:
    """Times of ``batch``'s rows: event time when the stream has one, else arrival time (which then also drives
    ``on_arrival``'s compaction, as the clock is the watermark)."""
    if time is not None:
        return event_times_ms(batch, *time)
    now = _time.time_ns() // 1_000_000
    on_arrival.advance(now)
    return np.full(batch.num_rows, now, dtype=np.int64)


class DeduplicateOperator(Operator):
    def __init__(self, keys: Sequence[str], within_ms: int, time: tuple[str, int] | None) -> None:
        self.keys = tuple(keys)
        self.within = within_ms
        self.time = time
        self.seen: FirstWithin | None = None
        self.dropped = 0

    def open(self, ctx: OperatorContext) -> None:
        self.seen = FirstWithin(ctx.state, "seen", self.keys, self.within)

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        assert self.seen is not None
        if batch.num_rows == 0:
            return []
        passed = self.seen.admit(batch, record_times(batch, self.time, self.seen))
        self.dropped += int((~passed).sum())
        kept = np.flatnonzero(passed)
        return [batch.take(pa.array(kept))] if len(kept) else []

    def on_watermark(self, watermark_ms: int) -> list[pa.RecordBatch]:
        if self.seen is not None:
            self.seen.advance(watermark_ms)
        return []

    def metrics(self) -> dict[str, float]:
        return {"keys": float(len(self.seen) if self.seen is not None else 0), "dropped": float(self.dropped)}
