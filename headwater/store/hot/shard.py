"""One hot shard's state, as Arrow: the latest row of each of its keys and its recent rows, and the look-ups it
can answer exactly as the warm tier would. Plain Python (no Ray): :mod:`headwater.store.hot.tier` runs it in a
Ray actor; the unit tests drive it directly.

State of a shard of table ``t`` (the rows whose key hashes to this shard):

* ``latest`` — one row per key (largest time, then largest data version, then the later one committed or read),
  in the store's row format (every column plus ``_hw_version``), with a dict key → row position.
* ``recent`` — every row of the shard's keys whose time is ``>= covered_since`` (the hot window: ``hot_for``
  back from now, or later when the row cap evicted more), so a look-up with a row filter or ``as_of`` can be
  answered from memory when the answer lies inside the window.
* ``version`` — the table's data version the state equals (the warm tier's committed rows at that version).

Invariants: the state is always exactly the committed rows of ``version`` (restricted to the shard's keys, the
recent ones within the window); :meth:`HotShardState.apply` takes commit ``version + 1`` only (an older or equal
one is a duplicate and changes nothing; a newer one means a change was missed, and the owner rebuilds from
warm); a look-up for another data version than ``version`` is a :data:`MISS` (the caller reads warm), so the
hot tier never answers from rows the caller's ``table.json`` does not name. A :data:`MISS` is always safe: the
caller falls back to the warm tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from headwater.store.metadata import VERSION_COLUMN, TableMeta
from headwater.store.scan import Predicate, compile_filter

#: A look-up the shard cannot answer from memory (the caller reads the warm tier).
MISS = "miss"
#: The key has no row at all (authoritative only while the shard holds every key of the table).
ABSENT = "absent"


@dataclass(frozen=True)
class HotLimits:
    """Bounds of one shard: rows older than ``hot_for_us`` leave ``recent``; at most ``max_recent_rows``
    recent rows and ``max_keys`` latest rows are kept (beyond them look-ups of the dropped keys are misses)."""

    hot_for_us: int | None
    max_recent_rows: int = 1_000_000
    max_keys: int = 1_000_000


def micros(rows: pa.Table, time: str) -> pa.Array:
    column = rows.column(time)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())


class HotShardState:
    """See the module docstring. Not thread-safe: the actor serialises changes and swaps whole states."""

    def __init__(self, meta: TableMeta, limits: HotLimits) -> None:
        self.meta = meta
        self.limits = limits
        self.version = -1
        self.complete = False  # every key of the shard is in ``latest``
        self.covered_since: int | None = None  # all rows with time >= this are in ``recent`` (timed tables)
        empty = self.schema.empty_table()
        self.latest: pa.Table = empty
        self.recent: pa.Table = empty
        self.index: dict[tuple[Any, ...], int] = {}

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([f.with_nullable(True) for f in self.meta.storage_schema])

    @property
    def key(self) -> tuple[str, ...]:
        assert self.meta.key is not None
        return self.meta.key

    # ---- building -------------------------------------------------------------------------------------------
    def load(self, meta: TableMeta, latest_rows: pa.Table, recent_rows: pa.Table, window_start: int | None,
             now_us: int) -> None:
        """Set the state to a warm read at ``meta.data_version``: ``latest_rows`` (any rows of the shard's keys
        that include each key's newest) and ``recent_rows`` (every row with time ``>= window_start``)."""
        self.meta = meta
        self.version = meta.data_version
        self.latest = self.schema.empty_table()
        self.recent = self.schema.empty_table()
        self.covered_since = window_start if meta.time is not None else None
        self.complete = True
        self._merge_latest(self._conform(latest_rows))
        if meta.time is not None:
            self.recent = self._conform(recent_rows)
        self.evict(now_us)

    def apply(self, meta: TableMeta, rows: pa.Table, now_us: int) -> bool:
        """Take the rows of commit ``meta.data_version`` (those of this shard's keys; possibly none).
        ``False`` when it is not the next version (a duplicate is ignored; a gap needs a rebuild)."""
        if meta.data_version != self.version + 1:
            return False
        self.meta = meta
        rows = self._conform(rows)
        self.latest = self.latest.cast(self.schema) if self.latest.schema != self.schema else self.latest
        self.recent = self.recent.cast(self.schema) if self.recent.schema != self.schema else self.recent
        self._merge_latest(rows)
        if meta.time is not None and rows.num_rows:
            if self.covered_since is not None:
                rows = rows.filter(pc.greater_equal(micros(rows, meta.time), self.covered_since))
            self.recent = pa.concat_tables([self.recent, rows])
        self.version = meta.data_version
        self.evict(now_us)
        return True

    def evict(self, now_us: int) -> None:
        """Drop recent rows older than the hot window and beyond the row cap; keys beyond the key cap."""
        time = self.meta.time
        if time is None:
            self.recent = self.schema.empty_table()
        else:
            cutoff = self.covered_since
            if self.limits.hot_for_us is not None:
                window = now_us - self.limits.hot_for_us
                cutoff = window if cutoff is None else max(cutoff, window)
            if self.recent.num_rows > self.limits.max_recent_rows:
                times = micros(self.recent, time)
                ordered = pc.array_sort_indices(times, order="descending", null_placement="at_end")
                boundary = times[int(ordered[self.limits.max_recent_rows].as_py())].as_py()
                cutoff = boundary + 1 if cutoff is None else max(cutoff, boundary + 1)
            if cutoff is not None and self.recent.num_rows:
                self.recent = self.recent.filter(pc.greater_equal(micros(self.recent, time), cutoff))
            self.covered_since = cutoff
        if self.latest.num_rows > self.limits.max_keys:
            order = self._newest_first(self.latest)
            self.latest = self.latest.take(order[: self.limits.max_keys])
            self.complete = False
            self._reindex()

    # ---- look-ups -------------------------------------------------------------------------------------------
    def lookup(self, key: tuple[Any, ...], data_version: int, as_of_us: int | None = None,
               predicates: Sequence[Predicate] = ()) -> pa.Table | str:
        """The newest row of ``key`` (time ``<= as_of_us`` when given) passing ``predicates``, as a one-row
        table in the store's row format; :data:`ABSENT` if the table has no row of the key; :data:`MISS` when
        the answer may lie outside what the shard holds."""
        if data_version != self.version:
            return MISS
        position = self.index.get(key)
        if position is None:
            return ABSENT if self.complete else MISS
        newest = self.latest.take([position])  # a copy: a slice would carry (and ship) the whole buffers
        time = self.meta.time
        if not predicates:
            if as_of_us is None:
                return newest
            newest_time = micros(newest, time)[0].as_py() if time is not None else None
            if newest_time is not None and newest_time <= as_of_us:
                return newest
        if time is None or self.covered_since is None or (as_of_us is not None and as_of_us < self.covered_since):
            return MISS
        condition = None
        for column, value in zip(self.key, key):
            term = pc.field(column) == pa.scalar(value, self.meta.schema.field(column).type)
            condition = term if condition is None else condition & term
        _, extra = compile_filter(self.meta, predicates, None)
        if extra is not None:
            condition = condition & extra if condition is not None else extra
        rows = self.recent.filter(condition) if condition is not None else self.recent
        if as_of_us is not None and rows.num_rows:
            rows = rows.filter(pc.less_equal(micros(rows, time), as_of_us))
        if rows.num_rows == 0:
            return MISS  # an older row (outside the window) may be the answer
        return rows.take([int(self._newest_first(rows)[0])])

    # ---- helpers --------------------------------------------------------------------------------------------
    def _conform(self, rows: pa.Table) -> pa.Table:
        """``rows`` with exactly the shard's schema (columns added since as nulls)."""
        schema = self.schema
        columns = [rows.column(f.name).cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
                   for f in schema]
        return pa.Table.from_arrays(columns, schema=schema)

    def _newest_first(self, rows: pa.Table) -> list[int]:
        """Row positions, newest first: time, then data version, then position (later first)."""
        sort: list[tuple[str, str, str]] = []
        table = rows.select([VERSION_COLUMN]).append_column("_pos", pa.array(range(rows.num_rows), pa.int64()))
        if self.meta.time is not None:
            table = table.append_column("_t", micros(rows, self.meta.time))
            sort.append(("_t", "descending", "at_end"))
        sort += [(VERSION_COLUMN, "descending", "at_end"), ("_pos", "descending", "at_end")]
        return [int(i) for i in pc.sort_indices(table, sort_keys=sort).to_pylist()]

    def _merge_latest(self, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            if not self.index and self.latest.num_rows:
                self._reindex()
            return
        both = pa.concat_tables([self.latest, rows])
        seen: set[tuple[Any, ...]] = set()
        keep: list[int] = []
        keys = list(zip(*(both.column(k).to_pylist() for k in self.key)))
        for position in self._newest_first(both):
            key = keys[position]
            if key not in seen:
                seen.add(key)
                keep.append(position)
        self.latest = both.take(sorted(keep))
        self._reindex()

    def _reindex(self) -> None:
        keys = zip(*(self.latest.column(k).to_pylist() for k in self.key))
        self.index = {key: position for position, key in enumerate(keys)}
