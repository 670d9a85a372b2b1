"""Lookup (enrichment) join against a changelog stream: the table is the latest row per key of a second input.

Input 0 is the *probe* stream, input 1 the *table* stream (a CDC stream of rows, a compacted topic, any
stream of keyed rows). Both are hash-partitioned by their keys, so a subtask holds only the table rows of its
key groups, as keyed state (:class:`LatestRows`) that checkpoints snapshot and restores re-split by key group.

Semantics (a processing-time temporal join): a probe record is enriched with the table row that is current
for its key *when the record is processed*. A table batch replaces, per key, the row with the batch's last
row for that key (arrival order), or removes it when that last row is a delete. A probe record whose key has
no row (never seen, deleted, or a null key) gets nulls (``how="left"``) or is dropped (``how="inner"``); it is
never buffered to wait for its row. Table rows are never emitted. Watermarks pass through untouched: the
runtime gives a multi-input step the minimum of its inputs' watermarks.

With a change-kind column (``changelog_op``), each table row says what it is, compared case-insensitively:
:data:`UPSERT_OPS` insert or replace the key's row, :data:`DELETE_OPS` remove it, :data:`IGNORED_OPS`
(Flink's update-before, always followed by the update-after) are skipped. Any other value, or a null, fails
the run with :class:`~headwater.errors.ChangelogError`. Without the column every row is an upsert.

Everything on the hot path is vectorised: the batch is reduced to its last row per key with Arrow's hash
kernel and numpy (:func:`~headwater.core.state.key_index.distinct_rows`), keys find their slot through a
:class:`~headwater.core.state.key_index.KeyIndex` (``searchsorted`` for integer keys, one dict lookup per
*distinct* key otherwise), and rows are fetched with Arrow ``take``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.arrays import as_int64
from headwater.core.operator import Operator, OperatorContext
from headwater.core.state.key_groups import key_groups
from headwater.core.state.key_index import distinct_rows, make_key_index
from headwater.core.state.store import KEY_GROUP_COLUMN
from headwater.errors import ChangelogError, StateCompatibilityError

#: Change kinds (lower-cased) that insert or replace the key's row: Debezium's create/read/update, SQL words,
#: Flink's +I/+U.
UPSERT_OPS = ("c", "r", "u", "insert", "update", "upsert", "+i", "+u")
#: Change kinds that remove the key's row: Debezium's d, the SQL word, Flink's -D.
DELETE_OPS = ("d", "delete", "-d")
#: Change kinds that are skipped: Flink's update-before (-U), always followed by its update-after (+U).
IGNORED_OPS = ("-u",)

_MERGE_FACTOR = 2  # a new chunk of rows is merged into the previous one while that one is at most this much larger
_COMPACT_SLACK = 4096  # superseded rows or dead keys tolerated beyond the number of live keys


def as_join_key(column: pa.Array | pa.ChunkedArray, kind: pa.DataType) -> pa.Array:
    """``column`` in its :func:`join_key_type` ``kind`` (uint64 is reinterpreted bit for bit, as the hash does)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_integer(column.type):
        return as_int64(column)
    return column if column.type == kind else column.cast(kind)


class LatestRows:
    """The latest row per key: a custom keyed state (registered with :meth:`OperatorStateStore.register`).

    A :class:`~headwater.core.state.key_index.KeyIndex` gives each key a slot; ``row_of_slot`` maps the slot to
    the position of the key's current row among the stored rows (``-1``: the key has no row). Stored rows are
    append-only Arrow chunks: a change appends its rows and repoints the slots, so the superseded rows become
    garbage. Chunks are merged like a binary counter (few chunks, each row copied O(log n) times) and a full
    compaction — live rows only, a fresh index without deleted keys — runs when garbage outgrows the live rows.
    """

    def __init__(
        self, key_names: Sequence[str], key_types: Sequence[pa.DataType], value_schema: pa.Schema,
        max_key_groups: int,
    ) -> None:
        self.key_names = tuple(key_names)
        self.key_types = list(key_types)
        self.value_schema = value_schema
        self.max_key_groups = max_key_groups
        self._reset()

    def _reset(self) -> None:
        self.index = make_key_index(self.key_types)
        self.row_of_slot = np.empty(0, dtype=np.int64)
        self.group_of_slot = np.empty(0, dtype=np.int32)  # computed once, when a key gets its slot
        self.chunks: list[pa.Table] = []
        self.starts: list[int] = []  # global position of each chunk's first row
        self.stored = 0  # rows in all chunks, live or superseded
        self.live = 0  # keys that have a row

    def __len__(self) -> int:
        return self.live

    def _grow(self, size: int) -> None:
        if size > len(self.row_of_slot):
            capacity = max(size, 2 * len(self.row_of_slot), 1024)
            unused = np.full(capacity - len(self.row_of_slot), -1, dtype=np.int64)
            self.row_of_slot = np.concatenate((self.row_of_slot, unused))
            self.group_of_slot = np.resize(self.group_of_slot, capacity)

    # -- changes ----------------------------------------------------------------------------------------------
    def apply(self, keys: Sequence[pa.Array], values: pa.Table, deleted: np.ndarray) -> None:
        """One change per *distinct* key: key ``i`` gets row ``i`` of ``values``, or loses its row where
        ``deleted[i]``. Keys must not be null."""
        if deleted.any():
            mask = pa.array(deleted)
            slots = self.index.find([k.filter(mask) for k in keys])
            slots = slots[slots >= 0]
            self.live -= int((self.row_of_slot[slots] >= 0).sum())
            self.row_of_slot[slots] = -1
        if not deleted.all():
            mask = pa.array(~deleted)
            upserted = [k.filter(mask) for k in keys]
            before = len(self.index)
            slots = self.index.slots_for(upserted)
            self._grow(len(self.index))
            fresh = slots >= before
            if fresh.any():
                fresh_mask = pa.array(fresh)
                self.group_of_slot[slots[fresh]] = key_groups([k.filter(fresh_mask) for k in upserted],
                                                              self.max_key_groups)
            self.live += int((self.row_of_slot[slots] < 0).sum())
            self.row_of_slot[slots] = np.arange(self.stored, self.stored + len(slots), dtype=np.int64)
            self._append(values.filter(mask))
        garbage = max(self.stored - self.live, len(self.index) - self.live)  # superseded rows, deleted keys
        if garbage > self.live + _COMPACT_SLACK:
            self._compact()

    def _append(self, rows: pa.Table) -> None:
        self.starts.append(self.stored)
        self.chunks.append(rows.combine_chunks())
        self.stored += rows.num_rows
        while len(self.chunks) > 1 and self.chunks[-2].num_rows <= _MERGE_FACTOR * self.chunks[-1].num_rows:
            last = self.chunks.pop()
            self.starts.pop()
            self.chunks[-1] = pa.concat_tables([self.chunks[-1], last]).combine_chunks()  # positions unchanged

    def _live(self) -> tuple[list[pa.Array], pa.Table, np.ndarray]:
        """(keys, rows, key groups) of every key that has a row, in slot order."""
        slots = np.flatnonzero(self.row_of_slot[: len(self.index)] >= 0)
        taken = pa.array(slots)
        keys = [k.take(taken) for k in self.index.key_columns()]
        return keys, self.take(self.row_of_slot[slots]), self.group_of_slot[slots]

    def _compact(self) -> None:
        keys, rows, groups = self._live()
        self._reset()
        self._load(keys, rows, groups)

    def _load(self, keys: Sequence[pa.Array], rows: pa.Table, groups: np.ndarray) -> None:
        if rows.num_rows == 0:
            return
        slots = self.index.slots_for(keys)
        self._grow(len(self.index))
        self.row_of_slot[slots] = np.arange(rows.num_rows, dtype=np.int64)
        self.group_of_slot[slots] = groups
        self.chunks, self.starts = [rows.combine_chunks()], [0]
        self.stored = self.live = rows.num_rows

    # -- lookups ----------------------------------------------------------------------------------------------
    def find(self, keys: Sequence[pa.Array]) -> np.ndarray:
        """Position of every row's current table row (keys may repeat), ``-1`` where there is none."""
        slots = self.index.find(keys)
        found = slots >= 0
        positions = np.full(len(slots), -1, dtype=np.int64)
        positions[found] = self.row_of_slot[slots[found]]
        return positions

    def take(self, positions: np.ndarray) -> pa.Table:
        """The stored rows at ``positions``, with a row of nulls where a position is ``-1``: one ``take`` per
        chunk touched, then one to put the rows in order."""
        valid = positions >= 0
        wanted = positions[valid]
        if len(wanted) == 0:
            return pa.Table.from_batches([], self.value_schema).take(pa.nulls(len(positions), pa.int64()))
        chunk_of = np.searchsorted(np.asarray(self.starts, dtype=np.int64), wanted, side="right") - 1
        order = np.argsort(chunk_of, kind="stable")
        pieces = []
        for chunk in np.unique(chunk_of).tolist():
            offsets = wanted[chunk_of == chunk] - self.starts[chunk]
            pieces.append(self.chunks[chunk].take(pa.array(offsets)))
        gathered = pa.concat_tables(pieces).combine_chunks()  # rows grouped by chunk, in `order`
        rank = np.empty(len(wanted), dtype=np.int64)
        rank[order] = np.arange(len(wanted), dtype=np.int64)
        indices = np.full(len(positions), -1, dtype=np.int64)
        indices[valid] = rank
        if valid.all():
            return gathered.take(pa.array(indices))
        return gathered.take(pa.array(indices, mask=~valid))

    # -- checkpoints ------------------------------------------------------------------------------------------
    def snapshot(self) -> pa.Table | None:
        """Keys, their current rows and key groups (copies); ``None`` when no key has a row."""
        if self.live == 0:
            return None
        keys, rows, groups = self._live()
        table = pa.Table.from_arrays([*keys, *rows.columns], names=[*self.key_names, *rows.column_names])
        return table.append_column(KEY_GROUP_COLUMN, pa.array(groups, pa.int32()))

    def restore(self, table: pa.Table) -> None:
        """Load snapshot rows (already filtered to this subtask's key groups; each key once)."""
        if table.num_rows == 0:
            return
        names = [n for n in table.column_names if n not in self.key_names and n != KEY_GROUP_COLUMN]
        if sorted(names) != sorted(self.value_schema.names):
            raise StateCompatibilityError(
                f"the checkpointed lookup table has columns {names} but the table stream now gives "
                f"{self.value_schema.names}; give the changed lookup_join a new step_id (and pass "
                "allow_non_restored_state=True to drop the old state)"
            )
        try:
            rows = table.select(self.value_schema.names).cast(self.value_schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise StateCompatibilityError(f"the checkpointed lookup table does not fit the table stream's types: "
                                          f"{exc}; give the changed lookup_join a new step_id") from None
        keys = [as_join_key(table.column(k), t) for k, t in zip(self.key_names, self.key_types)]
        groups = np.asarray(table.column(KEY_GROUP_COLUMN).combine_chunks(), dtype=np.int32)
        if self.live:  # the engine restores into a fresh operator; keeping live rows makes restore additive
            keys_now, rows_now, groups_now = self._live()
            keys = [pa.concat_arrays([a, b]) for a, b in zip(keys_now, keys)]
            rows, groups = pa.concat_tables([rows_now, rows]), np.concatenate((groups_now, groups))
        self._reset()
        self._load(keys, rows, groups)


class ChangelogLookupJoinOperator(Operator):
    """See the module docstring. ``value_fields`` are the table columns added to probe records, under their
    output names (``table_columns`` gives their names in the table stream)."""

    def __init__(
        self, on: Sequence[str], table_key: Sequence[str], key_types: Sequence[pa.DataType], how: str,
        table_columns: Sequence[str], value_fields: Sequence[pa.Field], changelog_op: str | None,
    ) -> None:
        self.on = tuple(on)
        self.table_key = tuple(table_key)
        self.key_types = list(key_types)
        self.how = how
        self.table_columns = list(table_columns)
        self.value_fields = list(value_fields)
        self.value_schema = pa.schema([f.with_name(n).with_nullable(True)
                                       for f, n in zip(self.value_fields, self.table_columns)])
        self.changelog_op = changelog_op
        self.table: LatestRows | None = None
        self.changes = 0
        self.misses = 0

    def open(self, ctx: OperatorContext) -> None:
        store = ctx.state
        self.table = store.register("table", LatestRows(self.table_key, self.key_types, self.value_schema,
                                                        store.max_key_groups))

    def process(self, batch: pa.RecordBatch, input_index: int = 0) -> list[pa.RecordBatch]:
        assert self.table is not None, "open() was not called"
        if batch.num_rows == 0:
            return []
        if input_index == 1:
            self._apply(batch)
            return []
        return self._probe(batch)

    def _keys(self, batch: pa.RecordBatch, names: Sequence[str]) -> tuple[list[pa.Array], np.ndarray]:
        """Key columns in their join types, and which rows have a complete (null-free) key."""
        keys = [as_join_key(batch.column(n), t) for n, t in zip(names, self.key_types)]
        complete = np.ones(batch.num_rows, dtype=bool)
        for k in keys:
            if k.null_count:
                complete &= np.asarray(k.is_valid())
        return keys, complete

    def _apply(self, batch: pa.RecordBatch) -> None:
        assert self.table is not None
        keys, keep = self._keys(batch, self.table_key)
        deleted = np.zeros(batch.num_rows, dtype=bool)
        if self.changelog_op is not None:
            deleted, ignored = self._change_kinds(batch.column(self.changelog_op))
            keep &= ~ignored
        values = pa.Table.from_batches([batch.select(self.table_columns)]).cast(self.value_schema)
        if not keep.all():  # null keys never match; ignored kinds change nothing
            mask = pa.array(keep)
            keys, values, deleted = [k.filter(mask) for k in keys], values.filter(mask), deleted[keep]
        if values.num_rows == 0:
            return
        first, inverse = distinct_rows(keys)
        last = np.zeros(len(first), dtype=np.int64)
        np.maximum.at(last, inverse, np.arange(len(inverse), dtype=np.int64))  # the last change per key wins
        taken = pa.array(last)
        self.table.apply([k.take(taken) for k in keys], values.take(taken), deleted[last])
        self.changes += values.num_rows

    def _change_kinds(self, column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(deletes, ignored) masks of the change-kind column; an unknown kind or a null fails the run."""
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        kinds = pc.utf8_lower(column)
        deleted = np.asarray(pc.is_in(kinds, value_set=pa.array(DELETE_OPS)), dtype=bool)
        ignored = np.asarray(pc.is_in(kinds, value_set=pa.array(IGNORED_OPS)), dtype=bool)
        upserted = np.asarray(pc.is_in(kinds, value_set=pa.array(UPSERT_OPS)), dtype=bool)
        unknown = ~(deleted | ignored | upserted)
        if unknown.any():
            values = sorted({repr(v) for v in column.filter(pa.array(unknown)).to_pylist()})
            raise ChangelogError(
                f"changelog column {self.changelog_op!r} holds {', '.join(values[:5])}, which is no change kind; "
                f"accepted (any case): upserts {', '.join(UPSERT_OPS)}; deletes {', '.join(DELETE_OPS)}; "
                f"ignored {', '.join(IGNORED_OPS)}"
            )
        return deleted, ignored

    def _probe(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        assert self.table is not None
        keys, complete = self._keys(batch, self.on)
        positions = self.table.find(keys)
        positions[~complete] = -1
        matched = positions >= 0
        self.misses += int(len(positions) - matched.sum())
        if self.how == "inner" and not matched.all():
            batch, positions = batch.filter(pa.array(matched)), positions[matched]
            if batch.num_rows == 0:
                return []
        values = self.table.take(positions)
        schema = pa.schema([*batch.schema, *self.value_fields], metadata=batch.schema.metadata)
        return [pa.RecordBatch.from_arrays([*batch.columns, *(c.combine_chunks() for c in values.columns)],
                                           schema=schema)]

    def metrics(self) -> dict[str, float]:
        return {"table_rows": float(len(self.table) if self.table is not None else 0),
                "table_changes": float(self.changes), "probe_misses": float(self.misses)}
