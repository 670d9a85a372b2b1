"""From decoded changes (or snapshot rows) to Arrow batches of the source's one schema, with dead letters.

The schema (:class:`Layout`) is fixed when the job is built, from the tables as they are then:

* ``op`` — ``"r"`` (snapshot read), ``"c"`` (insert), ``"u"`` (update), ``"d"`` (delete): the change kinds
  ``lookup_join(changelog_op="op")`` takes;
* ``table`` — ``"schema.table"``;
* the union of the tables' columns at top level (a column of several tables must have one type in all): the new
  row, or for a delete what the replica identity gives (the key, or the whole old row under REPLICA IDENTITY FULL);
* ``before`` — a struct of the same columns holding the old row where PostgreSQL sends it (REPLICA IDENTITY FULL:
  updates and deletes), else null;
* ``added_columns`` — ``map<string, string>``: the text of columns added to a table after the job was built
  (``ALTER TABLE ... ADD COLUMN``), until the job is rebuilt and the column becomes a typed top-level one;
* ``lsn`` (the change's WAL position), ``commit_lsn`` and ``commit_time`` of its transaction (for snapshot rows:
  the slot's consistent point and the time the snapshot was taken).

Schema changes other than an added column (a dropped, renamed or retyped column) cannot be represented in the
fixed schema: such a table's changes become dead letters (reason ``unsupported``) naming the change, until the job
is rebuilt; ``headwater dlq replay`` then decodes them with the new schema. A value that does not convert (e.g. a
``timestamp`` ``infinity``, a ``numeric`` ``NaN``) dead-letters its change (``wrong_type``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from headwater.core.dead_letters import DeadLetter, DeadLetterReason
from headwater.errors import ConfigError
from headwater.sources.postgres_cdc.convert import arrow_type, convert
from headwater.sources.postgres_cdc.pgoutput import UNCHANGED, Change, Relation, Values, format_lsn

#: The metadata columns, before the table's columns (``op``, ``table``) and after them.
HEAD_COLUMNS = ("op", "table")
TAIL_COLUMNS = ("before", "added_columns", "lsn", "commit_lsn", "commit_time")
_ADDED_TYPE = pa.map_(pa.string(), pa.string())
_TIME_TYPE = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type_oid: int
    typmod: int
    type_name: str  # format_type(), e.g. "numeric(10,2)": casts in snapshot queries


@dataclass(frozen=True)
class TableInfo:
    """A table as it was when the job was built (plain, picklable)."""

    schema: str
    name: str
    columns: tuple[ColumnInfo, ...]
    key: tuple[str, ...]  # primary key columns, in key order
    replica_identity: str  # 'd', 'f', 'i', 'n'

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> ColumnInfo:
        return next(c for c in self.columns if c.name == name)


@dataclass(frozen=True)
class _Plan:
    """How one relation's columns land in the layout."""

    table: str
    slots: tuple[int, ...]  # per relation column: index into the layout's columns, -1 for an added column
    names: tuple[str, ...]
    key: tuple[int, ...]  # relation positions of the build-time key columns
    problem: str | None  # a schema change the layout cannot represent


class Layout:
    """The output schema and the mapping of every table's columns into it (see the module docstring)."""

    def __init__(self, tables: Sequence[TableInfo], prefix: str = "") -> None:
        self.tables = {t.qualified_name: t for t in tables}
        self.prefix = prefix
        columns: dict[str, pa.DataType] = {}
        owner: dict[str, str] = {}
        for table in tables:
            for column in table.columns:
                kind = arrow_type(column.type_oid, column.typmod)
                if column.name in columns and columns[column.name] != kind:
                    raise ConfigError(
                        f"PostgresCdcSource: column {column.name!r} is {columns[column.name]} in {owner[column.name]} "
                        f"but {kind} in {table.qualified_name}; the tables of one source share one schema, so read "
                        "them with separate sources (one per table)")
                columns.setdefault(column.name, kind)
                owner.setdefault(column.name, table.qualified_name)
        meta = [prefix + n for n in (*HEAD_COLUMNS, *TAIL_COLUMNS)]
        clash = sorted(set(meta) & set(columns))
        if clash:
            raise ConfigError(f"PostgresCdcSource: table column(s) {clash} clash with the source's metadata columns; "
                              "pass prefix='_cdc_' (or another) to rename the metadata columns")
        self.names = list(columns)
        self.types = [columns[n] for n in self.names]
        self.index = {n: i for i, n in enumerate(self.names)}
        fields = [pa.field(n, t) for n, t in zip(self.names, self.types)]
        self.before_type = pa.struct(fields)
        self.schema = pa.schema([
            pa.field(prefix + "op", pa.string(), nullable=False), pa.field(prefix + "table", pa.string(), nullable=False),
            *fields,
            pa.field(prefix + "before", self.before_type), pa.field(prefix + "added_columns", _ADDED_TYPE),
            pa.field(prefix + "lsn", pa.int64(), nullable=False), pa.field(prefix + "commit_lsn", pa.int64(), nullable=False),
            pa.field(prefix + "commit_time", _TIME_TYPE),
        ])

    def plan(self, relation: Relation) -> _Plan | None:
        """How ``relation``'s columns map into the layout; ``None`` for a table this source does not read."""
        table = self.tables.get(relation.qualified_name)
        if table is None:
            return None
        built = {c.name: c for c in table.columns}
        names = tuple(c.name for c in relation.columns)
        slots = tuple(self.index[c.name] if c.name in built else -1 for c in relation.columns)
        problems = [f"column {c!r} was dropped or renamed" for c in built if c not in names]
        for column in relation.columns:
            old = built.get(column.name)
            if old is not None and arrow_type(column.type_oid, column.typmod) != arrow_type(old.type_oid, old.typmod):
                problems.append(f"column {column.name!r} changed type to "
                                f"{arrow_type(column.type_oid, column.typmod)} (was {arrow_type(old.type_oid, old.typmod)})")
        missing_key = [k for k in table.key if k not in names]
        key = tuple(names.index(k) for k in table.key if k in names)
        problem = None
        if problems or missing_key:
            problem = (f"table {table.qualified_name} changed since the job was built: {'; '.join(problems)}. "
                       "Rebuild (restart) the job to read the new schema, then replay these dead letters with "
                       "`headwater dlq replay`")
        return _Plan(table.qualified_name, slots, names, key, problem)


class BatchBuilder:
    """Collects rows (changes of the stream, or a snapshot's text columns) and builds one batch of the layout's
    schema, turning rows that cannot be converted into dead letters. One builder per partition."""

    def __init__(self, layout: Layout, partition: str) -> None:
        self.layout = layout
        self.partition = partition
        self._plans: dict[bytes, _Plan | None] = {}
        self._reset()

    def _reset(self) -> None:
        self._ops: list[str] = []
        self._tables: list[str] = []
        self._rows: list[list[bytes | None]] = []
        self._before: list[list[bytes | None] | None] = []
        self._added: list[list[tuple[str, str | None]] | None] = []
        self._lsn: list[int] = []
        self._commit_lsn: list[int] = []
        self._commit_time: list[int | None] = []
        self._sources: list[tuple[bytes, bytes | None, dict[str, str]]] = []  # payload, key, position
        self._row_seq: list[int] = []
        self._dead: list[tuple[int, DeadLetter]] = []
        self._seq = getattr(self, "_seq", 0)

    def __len__(self) -> int:
        return len(self._ops)

    def plan(self, relation: Relation) -> _Plan | None:
        if relation.raw not in self._plans:
            self._plans[relation.raw] = self.layout.plan(relation)
        return self._plans[relation.raw]

    def add_change(self, relation: Relation, change: Change, payload: bytes, lsn: int, commit_lsn: int,
                   commit_time_us: int | None) -> None:
        """Add one decoded change (a key-changing update adds a delete of the old key, then an insert)."""
        plan = self.plan(relation)
        if plan is None:
            return
        self._seq += 1
        position: dict[str, str] = {"lsn": format_lsn(lsn), "commit_lsn": format_lsn(commit_lsn)}
        source = (payload, relation.raw, position)
        if plan.problem is not None:
            self.dead(source, DeadLetterReason.UNSUPPORTED, plan.problem, commit_time_us)
            return
        full_old = change.old if change.old_kind == "O" else None
        if change.kind == "D":
            assert change.old is not None
            self._row("d", plan, change.old, full_old, lsn, commit_lsn, commit_time_us, source)
            return
        new = change.new
        assert new is not None
        if any(v is UNCHANGED for v in new):
            merged = [full_old[i] if v is UNCHANGED and full_old is not None else v for i, v in enumerate(new)]
            if any(v is UNCHANGED for v in merged):
                absent = [plan.names[i] for i, v in enumerate(merged) if v is UNCHANGED]
                self.dead(source, DeadLetterReason.UNSUPPORTED,
                          f"PostgreSQL did not send the unchanged TOASTed value(s) of {', '.join(absent)} in this "
                          f"update of {plan.table}; set REPLICA IDENTITY FULL on the table to receive them",
                          commit_time_us)
                return
            new = tuple(merged)
        if change.kind == "U" and change.old is not None and any(change.old[i] != new[i] for i in plan.key):
            self._row("d", plan, change.old, full_old, lsn, commit_lsn, commit_time_us, source)
            self._row("c", plan, new, None, lsn, commit_lsn, commit_time_us, source)
            return
        self._row("c" if change.kind == "I" else "u", plan, new, full_old, lsn, commit_lsn, commit_time_us, source)

    def _row(self, op: str, plan: _Plan, values: Values, before: Values | None, lsn: int, commit_lsn: int,
             commit_time_us: int | None, source: tuple[bytes, bytes | None, dict[str, str]]) -> None:
        width = len(self.layout.names)
        row: list[bytes | None] = [None] * width
        added: list[tuple[str, str | None]] | None = None
        for slot, name, value in zip(plan.slots, plan.names, values):
            if slot >= 0:
                row[slot] = value  # type: ignore[assignment]  # UNCHANGED was replaced or dead-lettered
            else:
                added = added or []
                added.append((name, None if value is None else value.decode("utf-8", "replace")))  # type: ignore[union-attr]
        old: list[bytes | None] | None = None
        if before is not None:
            old = [None] * width
            for slot, value in zip(plan.slots, before):
                if slot >= 0:
                    old[slot] = None if value is UNCHANGED else value  # type: ignore[assignment]
        self._ops.append(op)
        self._tables.append(plan.table)
        self._rows.append(row)
        self._before.append(old)
        self._added.append(added)
        self._lsn.append(lsn)
        self._commit_lsn.append(commit_lsn)
        self._commit_time.append(commit_time_us)
        self._sources.append(source)
        self._row_seq.append(self._seq)

    def dead(self, source: tuple[bytes, bytes | None, dict[str, str]], reason: DeadLetterReason, error: str,
             commit_time_us: int | None, order: int | None = None) -> None:
        """Keep a change as a dead letter; ``order`` places it among the others (default: after them)."""
        if order is None:
            self._seq += 1
            order = self._seq
        payload, key, position = source
        self._dead.append((order, DeadLetter(payload, reason, error, self.partition, position, key,
                                             None if commit_time_us is None else commit_time_us // 1000)))

    def take_dead(self) -> list[DeadLetter]:
        """The dead letters since the last call, in the order of their changes."""
        dead, self._dead = self._dead, []
        return [letter for _, letter in sorted(dead, key=lambda pair: pair[0])]

    def build(self) -> pa.RecordBatch | None:
        """The batch of the rows added since the last call (``None`` if none survived conversion)."""
        count = len(self._ops)
        if count == 0:
            return None
        columns = list(zip(*self._rows))
        bad: dict[int, str] = {}
        arrays = []
        for name, kind, values in zip(self.layout.names, self.layout.types, columns):
            array, errors = convert(values, kind)
            for row, error in errors.items():
                bad.setdefault(row, f"column {name!r}: {error}")
            arrays.append(array)
        before = self._before_array(bad)
        added = pa.array(self._added, _ADDED_TYPE)
        meta_head = [pa.array(self._ops, pa.string()), pa.array(self._tables, pa.string())]
        meta_tail = [before, added, pa.array(self._lsn, pa.int64()), pa.array(self._commit_lsn, pa.int64()),
                     pa.array(self._commit_time, _TIME_TYPE)]
        batch = pa.RecordBatch.from_arrays([*meta_head, *arrays, *meta_tail], schema=self.layout.schema)
        if bad:
            batch = self._drop_bad(batch, bad)
        self._reset_rows()
        return batch if batch.num_rows else None

    def _before_array(self, bad: dict[int, str]) -> pa.Array:
        width = len(self.layout.names)
        present = [b is not None for b in self._before]
        if not any(present):
            return pa.nulls(len(self._before), self.layout.before_type)
        empty = [None] * width
        columns = list(zip(*(b if b is not None else empty for b in self._before)))
        children = []
        for name, kind, values in zip(self.layout.names, self.layout.types, columns):
            array, errors = convert(values, kind)
            for row, error in errors.items():
                bad.setdefault(row, f"column {name!r} (old value): {error}")
            children.append(array)
        mask = pa.array([not p for p in present], pa.bool_())
        return pa.StructArray.from_arrays(children, fields=list(self.layout.before_type), mask=mask)

    def _drop_bad(self, batch: pa.RecordBatch, bad: dict[int, str]) -> pa.RecordBatch:
        keep = np.ones(batch.num_rows, dtype=bool)
        seen: set[int] = set()
        for row, error in sorted(bad.items()):
            keep[row] = False
            source = self._sources[row]
            if id(source) in seen:  # both rows of a key-changing update: one dead letter
                continue
            seen.add(id(source))
            self.dead(source, DeadLetterReason.WRONG_TYPE, error, self._commit_time[row], self._row_seq[row])
        # the other row of a key-changing update goes with its partner
        for row in range(batch.num_rows):
            if keep[row] and id(self._sources[row]) in seen:
                keep[row] = False
        return batch.filter(pa.array(keep))

    def _reset_rows(self) -> None:
        dead = self._dead
        self._reset()
        self._dead = dead

    def snapshot_batch(self, table: TableInfo, text: pa.Table, lsn: int, time_us: int) -> pa.RecordBatch | None:
        """The batch of a chunk of ``table``'s snapshot: ``text`` holds its columns as text (``COPY ... CSV``);
        rows that do not convert become dead letters (payload: the row as JSON of its text values)."""
        count = text.num_rows
        if count == 0:
            return None
        bad: dict[int, str] = {}
        arrays = []
        for name, kind in zip(self.layout.names, self.layout.types):
            if name not in text.column_names:
                arrays.append(pa.nulls(count, kind))
                continue
            array, errors = convert(text.column(name).combine_chunks(), kind)
            for row, error in errors.items():
                bad.setdefault(row, f"column {name!r}: {error}")
            arrays.append(array)
        head = [pa.array(["r"] * count, pa.string()), pa.array([table.qualified_name] * count, pa.string())]
        tail = [pa.nulls(count, self.layout.before_type), pa.nulls(count, _ADDED_TYPE),
                pa.array(np.full(count, lsn, dtype=np.int64)), pa.array(np.full(count, lsn, dtype=np.int64)),
                pa.array(np.full(count, time_us, dtype=np.int64)).cast(_TIME_TYPE)]
        batch = pa.RecordBatch.from_arrays([*head, *arrays, *tail], schema=self.layout.schema)
        if not bad:
            return batch
        keep = np.ones(count, dtype=bool)
        for row, error in sorted(bad.items()):
            keep[row] = False
            values = {n: text.column(n)[row].as_py() for n in text.column_names}
            payload = json.dumps({"table": table.qualified_name, "row": {n: _text(v) for n, v in values.items()}},
                                 sort_keys=True).encode()
            position = {"snapshot_lsn": format_lsn(lsn), "table": table.qualified_name}
            self.dead((payload, None, position), DeadLetterReason.WRONG_TYPE, error, time_us)
        filtered = batch.filter(pa.array(keep))
        return filtered if filtered.num_rows else None


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def snapshot_rows(payload: bytes) -> tuple[str, dict[str, str | None]]:
    """The table and text values of a snapshot row dead letter's payload (see :meth:`BatchBuilder.snapshot_batch`)."""
    document = json.loads(payload)
    return document["table"], document["row"]


def text_table(row: dict[str, str | None]) -> pa.Table:
    """One row of text values as a table of binary columns (for :meth:`BatchBuilder.snapshot_batch`)."""
    return pa.table({n: pa.array([None if v is None else v.encode()], pa.binary()) for n, v in row.items()})


__all__ = ["BatchBuilder", "ColumnInfo", "Layout", "TableInfo", "snapshot_rows", "text_table"]
