"""Tumbling and sliding event-time window aggregation, vectorised over panes.

Time is cut into *panes* of ``slide`` (tumbling: ``size``) milliseconds. Each input batch is reduced with
Arrow's grouped aggregation to one partial row per (key, pane) and merged into that pane's per-key
accumulators (:class:`~headwater.core.state.store.KeyedColumns`). A window ``[start, start + size)`` is the union
of its ``size / slide`` panes: when the watermark passes its end, its panes' partials are combined per key
(Arrow again) and emitted as one batch with ``window_start`` and ``window_end``.

Early results: with ``early_interval`` E, open windows that received data are also emitted (their current,
partial values) at most every E of processing time; the final result follows when the watermark passes.

Lateness: with ``allowed_lateness`` L, a window stays in state until the watermark passes ``end + L``; a record
arriving for a window that already fired (but within L) re-emits that window's updated results (an update:
the latest row per key and window is the result). A record whose every window is past ``end + L`` goes to
the **side output** (``stream.late_records()``) with ``late_reason`` and ``lateness_ms``.

Pre-aggregated input (``merge_partials``, after a local :class:`WindowPartialOperator`): partial rows are
buffered and merged into the panes in one grouped pass when the watermark is about to complete one of their
windows, before a snapshot, or before early results. Every sender sends a partial per batch, so merging each on
arrival cost more than the whole pre-aggregation saved. The buffer is compacted (combined to one row per key and
pane) whenever it reaches ``PARTIAL_BUFFER_ROWS`` or twice its size after the last compaction, so it never holds
more than about twice the rows the panes would hold for the same partials. Partials
for panes whose windows already fired (allowed lateness) are merged at once: their updates are emitted then.
Buffered partials of panes that the watermark closes for good (every window of the pane fires now and the pane
leaves state) never enter the panes: they are combined per (key, window) with the panes' exports and emitted.

State (what a checkpoint holds): every pane's accumulators per key, each row tagged with its pane and key
group, and how far windows have fired — so a restore neither loses a pane nor fires a window twice.
Buffered partials are merged before the panes are snapshotted, so a snapshot never misses one.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.aggregations import Aggregation
from headwater.core.event_time import MIN_WATERMARK, event_times_ms, split_missing_times, time_array
from headwater.core.operator import Operator, OperatorContext
from headwater.core.ports import LATE_PORT
from headwater.core.state.key_groups import DEFAULT_MAX_KEY_GROUPS
from headwater.core.state.store import KeyedColumns
from headwater.operators.aggregation.accumulators import AccumulatorSet
from headwater.operators.aggregation.object_accumulators import object_array
from headwater.windows import SlidingWindow, TumblingWindow

PANE = "__pane"
ALL = "__all"  # the constant key of an unkeyed window
_FIRED = "__fired_until"
_WINDOW = "__window"
_ROW = "__row"
MAX_WATERMARK = np.iinfo(np.int64).max
#: pre-aggregated partial rows held before they are merged into the panes (see the module docstring)
PARTIAL_BUFFER_ROWS = 65_536


def late_rows(batch: pa.RecordBatch, times: np.ndarray, watermark: int, reason: str) -> pa.RecordBatch:
    """``batch`` with ``late_reason`` and ``lateness_ms`` (how far behind the watermark each row was)."""
    return batch.append_column("late_reason", pa.repeat(pa.scalar(reason, pa.string()), batch.num_rows)).append_column(
        "lateness_ms", pa.array(watermark - times, pa.int64())
    )


class PaneState:
    """Per-pane keyed accumulators plus the fired-until mark; a keyed state of the operator's store."""

    def __init__(self, keys: Sequence[str], max_key_groups: int) -> None:
        self.keys = tuple(keys)
        self.max_key_groups = max_key_groups
        self.panes: dict[int, KeyedColumns] = {}
        self.fired_until = MIN_WATERMARK
        #: called first by :meth:`snapshot`: the operator merges buffered input into the panes
        self.before_snapshot: Callable[[], None] | None = None

    def pane(self, start: int) -> KeyedColumns:
        state = self.panes.get(start)
        if state is None:
            state = self.panes[start] = KeyedColumns(self.keys, self.max_key_groups)
        return state

    def snapshot(self) -> pa.Table | None:
        if self.before_snapshot is not None:
            self.before_snapshot()
        tables = []
        for start, state in self.panes.items():
            table = state.snapshot()
            if table is not None:
                table = table.append_column(PANE, pa.array([start] * table.num_rows, pa.int64()))
                tables.append(table.append_column(_FIRED, pa.array([self.fired_until] * table.num_rows, pa.int64())))
        return pa.concat_tables(tables) if tables else None

    def restore(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.fired_until = max(self.fired_until, int(pc.max(table.column(_FIRED)).as_py()))
        panes = table.column(PANE)
        for start in pc.unique(panes).to_pylist():
            rows = table.filter(pc.equal(panes, start)).drop_columns([PANE, _FIRED])
            self.pane(start).restore(rows)


class WindowAggregateOperator(Operator):
    """Keyed (or global) tumbling/sliding window aggregation (see the module docstring)."""

    def __init__(
        self, keys: Sequence[str], window: TumblingWindow | SlidingWindow,
        aggregations: Sequence[tuple[str, Aggregation]], time_column: str, time_offset_ms: int,
        allowed_lateness_ms: int, input_schema: pa.Schema | None, time_type: pa.DataType,
        merge_partials: bool = False, early_ms: int | None = None,
    ) -> None:
        self.merge_partials = merge_partials
        self.early = None if early_ms is None else early_ms / 1000
        self._next_early: float | None = None
        self._dirty: set[int] = set()
        self.late_partials = 0
        self.keys = tuple(keys) if keys else (ALL,)
        self.keyed = bool(keys)
        self.window = window
        self.size = window.size_ms
        self.slide = window.slide_ms if isinstance(window, SlidingWindow) else window.size_ms
        self.accumulators = AccumulatorSet(aggregations)
        self.time_column = time_column
        self.time_offset = time_offset_ms
        self.lateness = allowed_lateness_ms
        self.input_schema = input_schema
        self.time_type = time_type
        self.watermark = MIN_WATERMARK
        self.state: PaneState | None = None
        self._side: list[pa.RecordBatch] = []
        self._schema: pa.Schema | None = None
        self._pending: list[pa.Table] = []  # pre-aggregated partials not merged yet
        self._pending_rows = 0
        self._pending_first_pane = MAX_WATERMARK
        self._pending_limit = PARTIAL_BUFFER_ROWS  # compact the buffer at this many rows

    def open(self, ctx: OperatorContext) -> None:
        store = ctx.state
        self.state = store.register("panes", PaneState(self.keys, store.max_key_groups))
        self.state.before_snapshot = self._merge_pending_quietly
        if self.input_schema is not None:
            self._schema = self.input_schema
            self.accumulators.declare(KeyedColumns(self.keys, store.max_key_groups), self.input_schema)
        pa.table({"k": [0]}).group_by("k").aggregate([("k", "count")])  # load Acero before data flows

    # -- input ----------------------------------------------------------------------------------------------
    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        assert self.state is not None, "open() was not called"
        if batch.num_rows == 0:
            return []
        if self._schema is None:
            self._schema = batch.schema
        if self.merge_partials:
            return self._buffer_partials(batch)
        batch, times, missing = split_missing_times(batch, event_times_ms(batch, self.time_column, self.time_offset))
        if missing is not None:  # no event time: the record cannot belong to any window
            self._side.append(late_rows(missing, np.zeros(missing.num_rows, np.int64), 0, "missing event time"))
            if batch.num_rows == 0:
                return []
        panes = (times // self.slide) * self.slide
        closed = panes + self.size + self.lateness <= self.watermark
        if closed.any():
            late = batch.filter(pa.array(closed))
            self._side.append(late_rows(late, times[closed], self.watermark,
                                        f"later than allowed lateness {self.lateness} ms behind the watermark"))
            keep = ~closed
            batch, panes = batch.filter(pa.array(keep)), panes[keep]
            if batch.num_rows == 0:
                return []
        table = pa.Table.from_batches([batch]).append_column(PANE, pa.array(panes))
        if not self.keyed:
            table = table.append_column(ALL, pa.array(np.zeros(table.num_rows, dtype=np.int8)))
        return self._merge(self.accumulators.group(table, [*self.keys, PANE]))

    def _buffer_partials(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """Partial rows from the local pre-aggregation: drop closed panes, buffer the rest (merged later, see
        the module docstring); partials for already fired windows are merged now (their updates emitted)."""
        assert self.state is not None
        panes = np.asarray(batch.column(PANE))
        closed = panes + self.size + self.lateness <= self.watermark
        if closed.any():
            self.late_partials += int(closed.sum())
            keep = ~closed
            batch, panes = batch.filter(pa.array(keep)), panes[keep]
            if batch.num_rows == 0:
                return []
        self._pending.append(pa.Table.from_batches([batch]))
        self._pending_rows += batch.num_rows
        self._pending_first_pane = min(self._pending_first_pane, int(panes.min()))
        # the first window of pane p ends at p + slide: at or before fired_until, a fired window changes
        if self._pending_first_pane + self.slide <= self.state.fired_until:
            return self._merge_pending()
        if self._pending_rows >= self._pending_limit:
            self._compact_pending()
        if self.early is not None and self._next_early is None:
            self._next_early = time.monotonic() + self.early
        return []

    def _pending_table(self) -> pa.Table:
        return pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]

    def _compact_pending(self) -> None:
        """Combine the buffer to one row per key and pane (arrival order kept for first/last and ties)."""
        pending = self._pending_table()
        compacted = self.accumulators.combine(pending, [*self.keys, PANE]).select(pending.schema.names)
        if compacted.schema != pending.schema:  # later partials are concatenated to it
            compacted = compacted.cast(pending.schema)
        self._pending, self._pending_rows = [compacted], compacted.num_rows
        self._pending_limit = max(PARTIAL_BUFFER_ROWS, 2 * compacted.num_rows)

    def _merge_pending(self) -> list[pa.RecordBatch]:
        """Merge the buffered partials into the panes (one grouped combine); returns re-fired windows."""
        if not self._pending:
            return []
        pending = self._pending_table()
        self._pending, self._pending_rows, self._pending_first_pane = [], 0, MAX_WATERMARK
        self._pending_limit = PARTIAL_BUFFER_ROWS
        return self._merge(self.accumulators.combine(pending, [*self.keys, PANE]))

    def _take_closing_partials(self, watermark: int) -> pa.Table | None:
        """Remove and return the buffered partials whose panes ``watermark`` closes for good (``None``: none).

        Every window of such a pane fires at this watermark: a buffered pane has no fired window (partials
        for fired windows are merged on arrival, and ``fired_until`` moves only here, after this)."""
        if not self._pending or self._pending_first_pane + self.size + self.lateness > watermark:
            return None
        pending = self._pending_table()
        panes = np.asarray(pending.column(PANE).combine_chunks())
        closing = panes + self.size + self.lateness <= watermark
        rest = ~closing
        self._pending = [pending.filter(pa.array(rest))] if rest.any() else []
        self._pending_rows = int(rest.sum())
        self._pending_first_pane = int(panes[rest].min()) if rest.any() else MAX_WATERMARK
        self._pending_limit = max(PARTIAL_BUFFER_ROWS, 2 * self._pending_rows)
        return pending.filter(pa.array(closing))

    def _merge_pending_quietly(self) -> None:
        """Before a snapshot: buffered partials are only ever for windows not fired yet, so merging them
        emits nothing (checked: an emission here would be lost)."""
        emitted = self._merge_pending()
        assert not emitted, "buffered partials re-fired a window"

    def _merge(self, grouped: pa.Table) -> list[pa.RecordBatch]:
        """Fold partial rows (per key and pane) into the panes' state; re-emit fired windows they changed."""
        assert self.state is not None
        pane_column = np.asarray(grouped.column(PANE).combine_chunks())
        refire: set[int] = set()
        for start in np.unique(pane_column).tolist():
            rows = grouped.filter(pa.array(pane_column == start))
            state = self.state.pane(start)
            self.accumulators.declare(state, self._schema)  # idempotent; restored panes need their fill values
            slots = state.slots_for([rows.column(k).combine_chunks() for k in self.keys])
            self.accumulators.merge(state, rows, slots)
            # fired windows still kept for allowed lateness are re-emitted with their updated values
            refire |= {s for s in self._windows_of(start)
                       if s + self.size <= self.state.fired_until and s + self.size + self.lateness > self.watermark}
            if self.early is not None:
                self._dirty.add(start)
                if self._next_early is None:
                    self._next_early = time.monotonic() + self.early
        out = self._results(sorted(refire))
        return [out] if out is not None and out.num_rows else []

    def take_side_outputs(self) -> Mapping[str, list[pa.RecordBatch]]:
        if not self._side:
            return {}
        taken, self._side = self._side, []
        return {LATE_PORT: taken}

    # -- firing ---------------------------------------------------------------------------------------------
    def _windows_of(self, pane: int) -> list[int]:
        """Starts of the windows that contain the pane starting at ``pane``."""
        return [pane - k * self.slide for k in range(self.size // self.slide)]

    def on_watermark(self, watermark_ms: int) -> list[pa.RecordBatch]:
        assert self.state is not None
        watermark = max(self.watermark, watermark_ms)
        closing = self._take_closing_partials(watermark)
        if self._pending and self._pending_first_pane + self.slide <= watermark:
            self._merge_pending_quietly()  # a window of a buffered pane completes: its partials count
        self.watermark = watermark
        panes = [*self.state.panes, *(np.unique(closing.column(PANE)).tolist() if closing is not None else ())]
        due = sorted({
            start for pane in panes for start in self._windows_of(pane)
            if self.state.fired_until < start + self.size <= self.watermark
        })
        out = self._results(due, closing)  # every window of a closing pane is due (see _take_closing_partials)
        self.state.fired_until = max(self.state.fired_until, self.watermark)
        for pane in [p for p in self.state.panes if p + self.size + self.lateness <= self.watermark]:
            del self.state.panes[pane]
        return [out] if out is not None and out.num_rows else []

    def finish(self) -> list[pa.RecordBatch]:
        return self.on_watermark(MAX_WATERMARK)

    def next_timer(self) -> float | None:
        return self._next_early

    def on_processing_time(self, now: float) -> list[pa.RecordBatch]:
        """Early results: the current values of open windows that changed since the last early emission."""
        assert self.state is not None
        self._merge_pending_quietly()
        dirty, self._dirty, self._next_early = self._dirty, set(), None
        starts = sorted({
            s for pane in dirty if pane in self.state.panes for s in self._windows_of(pane)
            if s + self.size > self.state.fired_until
        })
        out = self._results(starts)
        return [out] if out is not None and out.num_rows else []

    def _results(self, starts: list[int], closing: pa.Table | None = None) -> pa.RecordBatch | None:
        """Results of the windows starting at ``starts``, in one batch: every window's panes are exported
        with the window's start (plus ``closing``: partial rows per key and pane of those windows that are
        not in the panes), combined per (key, window) when a window has several parts, finalised."""
        assert self.state is not None
        exported: dict[int, pa.Table] = {}
        closing_panes = self._closing_panes(closing) if closing is not None and closing.num_rows else {}
        parts = []
        for start in starts:  # rows in pane order, a pane's state before its closing partials (first, ties)
            for pane in range(start, start + self.size, self.slide):
                tables = [closing_panes[pane]] if pane in closing_panes else []
                if pane in self.state.panes:
                    if pane not in exported:
                        exported[pane] = self._export(self.state.panes[pane])
                    tables.insert(0, exported[pane])
                parts += [t.append_column(_WINDOW, pa.array(np.full(t.num_rows, start, np.int64))) for t in tables]
        if not parts:
            return None
        names = parts[0].schema.names
        table = pa.concat_tables([part.select(names) for part in parts])
        if self.slide != self.size or closing_panes:
            table = self.accumulators.combine(table, [*self.keys, _WINDOW])
        table = table.combine_chunks()
        objects = self.accumulators.object_columns  # top_k / udaf: partial form back to state objects
        distinct = set(self.accumulators.distinct_partials)
        values = set(self.accumulators.value_partials)  # to_numpy would turn an int column with nulls into NaN
        columns = SimpleNamespace(columns={
            n: objects[n].to_objects(table.column(n).combine_chunks()) if n in objects
            else object_array([set(v or ()) for v in table.column(n).to_pylist()]) if n in distinct
            else object_array(table.column(n).to_pylist()) if n in values
            else table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names})
        results = self.accumulators.results(columns, np.arange(table.num_rows))
        window_starts = np.asarray(table.column(_WINDOW))
        names = [*(self.keys if self.keyed else ()), *(n for n, _ in results), "window_start", "window_end"]
        arrays = [*(table.column(k).combine_chunks() for k in (self.keys if self.keyed else ())),
                  *(a for _, a in results), self._times(window_starts), self._times(window_starts + self.size)]
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def _closing_panes(self, partials: pa.Table) -> dict[int, pa.Table]:
        """Partial rows (per key and pane, possibly several per key) as one accumulator row per key, per pane,
        in the form of :meth:`_export`: combined (one row per key and pane), then merged once into a scratch
        state keyed by row number — the rows are distinct already, so no key needs looking up."""
        assert self._schema is not None
        grouped = self.accumulators.combine(partials, [*self.keys, PANE])
        panes = np.asarray(grouped.column(PANE).combine_chunks())
        order = np.argsort(panes, kind="stable")
        grouped, panes = grouped.take(pa.array(order)), panes[order]
        scratch = KeyedColumns((_ROW,), DEFAULT_MAX_KEY_GROUPS)
        self.accumulators.declare(scratch, self._schema)
        slots = scratch.slots_for([pa.array(np.arange(grouped.num_rows, dtype=np.int64))])  # slot i is row i
        self.accumulators.merge(scratch, grouped, slots)
        exported = self._export(scratch, (_ROW,)).drop_columns([_ROW])
        table = pa.table([*(grouped.column(k) for k in self.keys), *exported.columns],
                         names=[*self.keys, *exported.column_names])
        bounds = [0, *(np.flatnonzero(panes[1:] != panes[:-1]) + 1).tolist(), len(panes)]
        return {int(panes[a]): table.slice(a, b - a) for a, b in zip(bounds, bounds[1:])}

    def _export(self, pane: KeyedColumns, keys: Sequence[str] | None = None) -> pa.Table:
        """A pane's accumulators as a table of partial columns (for combining panes); ``keys`` names the
        state's key columns (default: the operator's keys)."""
        size = len(pane)
        columns = {k: a for k, a in zip(keys or self.keys, pane.key_columns())}
        objects = self.accumulators.object_columns
        for name, values in pane.columns.items():
            if name in objects:
                columns[name] = objects[name].to_arrow(values[:size])
            elif name in self.accumulators.distinct_partials:  # sets of distinct values, as lists
                column = name.rsplit("_", 1)[0]
                columns[name] = pa.array([sorted(v, key=repr) if v else [] for v in values[:size]],
                                         type=pa.list_(self.accumulators.value_types[column]))
            elif values.dtype == object:
                column = name.rsplit("_", 1)[0]
                columns[name] = pa.array(values[:size].tolist(), type=self.accumulators.value_types.get(column))
            else:
                columns[name] = pa.array(values[:size])
        return pa.table(columns)

    def _times(self, values: np.ndarray) -> pa.Array:
        return time_array(values, self.time_type)

    def metrics(self) -> dict[str, float]:
        panes = self.state.panes if self.state is not None else {}
        return {"panes": float(len(panes)), "keys": float(sum(len(p) for p in panes.values())),
                "late_partials": float(self.late_partials)}


class WindowPartialOperator(Operator):
    """Local pre-aggregation: each batch becomes one row of partial aggregates per (key, pane). Stateless
    across batches (nothing to checkpoint); lateness is judged by the window operator after the shuffle."""

    def __init__(
        self, keys: Sequence[str], window: TumblingWindow | SlidingWindow,
        aggregations: Sequence[tuple[str, Aggregation]], time_column: str, time_offset_ms: int,
        input_schema: pa.Schema | None,
    ) -> None:
        self.keys = tuple(keys) if keys else (ALL,)
        self.keyed = bool(keys)
        self.slide = window.slide_ms if isinstance(window, SlidingWindow) else window.size_ms
        self.accumulators = AccumulatorSet(aggregations)
        self.time_column = time_column
        self.time_offset = time_offset_ms
        self.missing_time = 0

    def open(self, ctx: OperatorContext) -> None:
        pa.table({"k": [0]}).group_by("k").aggregate([("k", "count")])  # load Acero before data flows

    def metrics(self) -> dict[str, float]:
        return {"missing_event_time": float(self.missing_time)}

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        if batch.num_rows == 0:
            return []
        batch, times, missing = split_missing_times(batch, event_times_ms(batch, self.time_column, self.time_offset))
        if missing is not None:  # records without event time belong to no window
            self.missing_time += missing.num_rows
            if batch.num_rows == 0:
                return []
        table = pa.Table.from_batches([batch]).append_column(PANE, pa.array((times // self.slide) * self.slide))
        if self.keyed:
            grouped = self.accumulators.group(table, [*self.keys, PANE])
        else:  # one group per pane: the constant ALL key is added to the (few) partial rows, not to every row
            grouped = self.accumulators.group(table, [PANE])
            grouped = grouped.add_column(0, ALL, pa.array(np.zeros(grouped.num_rows, dtype=np.int8)))
        return grouped.combine_chunks().to_batches()
