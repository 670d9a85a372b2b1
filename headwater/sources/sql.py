"""SQL source: read a table or query of any SQLAlchemy database incrementally, by a cursor column.

The source reads rows in ``(cursor_column, *tie_breaker)`` order with keyset pagination: each batch is one query
``... WHERE (cursor, tie) > (last read) [AND cursor <= cap] ORDER BY cursor, tie LIMIT batch_size``. No
transaction or server-side cursor stays open between batches, and an index on the cursor makes every query
cheap however large the table.

**Position** (:class:`SqlPosition`): the cursor and tie-breaker values of the last row emitted (or
dead-lettered), plus the upper bound of a bounded read. ``build_part(part, position)`` reads strictly after it:
nothing twice, nothing skipped, as long as the cursor assumption holds.

**The cursor assumption.** A row becomes visible with a cursor value greater than every value already read, or
equal to the last one read with a greater tie-breaker. That holds for an identity/sequence column or a
``created_at``/``updated_at`` stamped at commit, *if* transactions commit in the order of their cursor values.
They need not: a transaction that took id 100 may commit after one that took id 101 was read, and ``now()`` in
PostgreSQL is the transaction's *start*. ``safety_lag`` closes that window: the source reads only up to the
largest cursor value it saw at least ``safety_lag`` ago (it polls ``max(cursor)`` each ``poll_interval``), so a
row is missed only if its transaction stayed open longer than ``safety_lag`` after taking its cursor value.
The cost is latency: rows arrive ``safety_lag`` late. Updates are seen only if they move the cursor (an
``updated_at`` column); deletes are never seen (use the PostgreSQL CDC source for those). Rows with a NULL
cursor are never read.

**Tie-breaker.** A cursor that is not unique (``updated_at``) needs unique columns to order equal values, or a
batch boundary inside a run of equal values would skip the rest. For a table, the default is nothing when the
cursor is the primary key or unique, else the primary key; a table without either needs ``tie_breaker=``. A
query (``query=``) must say ``tie_breaker=[...]``, or ``tie_breaker=()`` when its cursor is unique.

**Bounded** (``bounded=True``): the first poll reads ``max(cursor)``, which goes into the position, so a run
restored in the middle stops at the same row; the partition ends after reading every row up to it. A run that
resumes from a position at that bound (the previous run read its increment to the end) takes a new bound: runs
of a bounded job on one checkpoint directory read the table in increments, each row once.

**Types** come from the table's reflected columns (``headwater.clients.sql.arrow_type_of``; ``types=`` overrides
single columns), or from ``schema=`` for a query. Rows convert to Arrow column by column (``pyarrow.array`` over a
column's values); a column that fails is converted value by value to find the rows at fault, which become dead
letters (``wrong_type``) with the row as JSON, while the other rows of the batch go on.

**Lag**: with a known ``max(cursor)``, ``records`` = max − cursor for integer cursors (an upper bound: ids have
gaps), ``seconds`` = max − cursor for time cursors; 0 when the last poll found nothing new.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any, Callable

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from headwater.clients.sql import (
    SqlClientSettings,
    arrow_type_of,
    describe_error,
    is_transient_error,
    python_converter,
    reflect_table,
    sql_type_of,
)
from headwater.core import plain_data
from headwater.core.dead_letters import DeadLetter, DeadLetterReason
from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SourceError
from headwater.sources.base import Source, SourceLag, SourcePartition

__all__ = ["SqlPosition", "SqlSource", "SqlSourcePartition"]

_CONVERT_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)


@plain_data.register(name="headwater.SqlPosition")
@dataclass(frozen=True)
class SqlPosition:
    """The last row read: its cursor and tie-breaker values (encoded with :func:`encode_value`), and for a bounded
    read the cursor value to stop at (``upper``; ``None`` before the first poll)."""

    cursor: PlainData = None
    tie: tuple[PlainData, ...] = ()
    upper: PlainData = None


def encode_value(value: Any) -> PlainData:
    """A cursor or tie-breaker value as plain data: ints, floats, strings and bytes as they are, others tagged
    (``("datetime", iso)``, ``("date", iso)``, ``("time", iso)``, ``("decimal", text)``, ``("timedelta", µs)``,
    ``("uuid", text)``)."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, datetime):
        return ("datetime", value.isoformat())
    if isinstance(value, date):
        return ("date", value.isoformat())
    if isinstance(value, dtime):
        return ("time", value.isoformat())
    if isinstance(value, Decimal):
        return ("decimal", str(value))
    if isinstance(value, timedelta):
        return ("timedelta", (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds)
    if isinstance(value, uuid.UUID):
        return ("uuid", str(value))
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    raise SourceError(f"SqlSource: a cursor or tie-breaker value of type {type(value).__name__} cannot be kept in a "
                      "position; use a column of a number, string, date or time type", transient=False)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat, "date": date.fromisoformat, "time": dtime.fromisoformat,
    "decimal": Decimal, "timedelta": lambda us: timedelta(microseconds=us), "uuid": uuid.UUID,
}


def decode_value(value: PlainData) -> Any:
    """The inverse of :func:`encode_value`."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and value[0] in _DECODERS:
        return _DECODERS[value[0]](value[1])
    return value


def _unique_columns(table: sa.Table) -> list[set[str]]:
    sets = [{c.name for c in table.primary_key.columns}] if table.primary_key.columns else []
    sets += [{c.name for c in k.columns} for k in table.constraints if isinstance(k, sa.UniqueConstraint)]
    sets += [{c.name for c in i.columns} for i in table.indexes if i.unique]
    return sets


class SqlSource(Source):
    """Rows of ``table`` (or of ``query``) in ``cursor_column`` order, incrementally (see the module docstring).

    Options: ``tie_breaker`` (unique columns ordering equal cursor values), ``db_schema`` (the table's database
    schema), ``columns`` (read only these; the cursor and tie-breaker are always read), ``schema`` (the Arrow
    schema of ``query``'s result), ``types`` (Arrow types overriding the reflected ones, by column),
    ``poll_interval`` (pause after a poll that found nothing new), ``bounded`` (stop at the ``max(cursor)`` of the
    first poll), ``safety_lag`` (read only up to the largest cursor seen that long ago), ``batch_size`` (rows per
    query and batch), ``engine_options`` (for ``sqlalchemy.create_engine``).

    The table is reflected here, in the driver, so a wrong name, column or type fails at build time."""

    replayable = True

    def __init__(
        self,
        url: str | URL,
        table: str | None = None,
        *,
        query: str | None = None,
        cursor_column: str,
        tie_breaker: str | Sequence[str] | None = None,
        db_schema: str | None = None,
        columns: Sequence[str] | None = None,
        schema: pa.Schema | None = None,
        types: Mapping[str, pa.DataType] | None = None,
        poll_interval: timedelta | float = timedelta(seconds=1),
        bounded: bool = False,
        safety_lag: timedelta | float = timedelta(0),
        batch_size: int = 10_000,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = SqlClientSettings.build(url, engine_options, owner="SqlSource")
        if (table is None) == (query is None):
            raise ConfigError("SqlSource: give table='name' or query='SELECT ...', not both and not neither")
        if not isinstance(cursor_column, str) or not cursor_column:
            raise ConfigError(f"SqlSource: cursor_column must name a column, got {cursor_column!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"SqlSource: batch_size must be a positive int, got {batch_size!r}")
        self.poll_interval = _seconds(poll_interval, "poll_interval")
        self.safety_lag = _seconds(safety_lag, "safety_lag")
        self.table, self.query, self.db_schema = table, query, db_schema
        self.cursor_column, self.bounded, self.batch_size = cursor_column, bool(bounded), batch_size
        self.tie_breaker: tuple[str, ...]
        overrides = dict(types or {})
        if query is not None:
            if schema is None or not isinstance(schema, pa.Schema):
                raise ConfigError("SqlSource: query= needs schema=pa.schema([...]) with the query's result columns "
                                  "(a query's column types cannot be reflected)")
            if tie_breaker is None:
                raise ConfigError("SqlSource: query= needs tie_breaker=[unique columns] to order rows with equal "
                                  f"{cursor_column!r}, or tie_breaker=() if {cursor_column!r} is unique")
            self.tie_breaker = (tie_breaker,) if isinstance(tie_breaker, str) else tuple(tie_breaker)
            fields = [pa.field(f.name, overrides.get(f.name, f.type)) for f in schema]
            for f in fields:
                if sql_type_of(f.type) is None:
                    raise ConfigError(f"SqlSource: column {f.name!r} of schema= has type {f.type}, which has no SQL type")
            self._schema = pa.schema(fields)
        else:
            assert table is not None
            self._schema, self.tie_breaker = self._reflect(table, columns, tie_breaker, overrides)
        for name in (cursor_column, *self.tie_breaker):
            if name not in self._schema.names:
                raise ConfigError(f"SqlSource: column {name!r} (cursor or tie-breaker) is not among the columns "
                                  f"{', '.join(self._schema.names)}")
        unknown = sorted(set(overrides) - set(self._schema.names))
        if unknown:
            raise ConfigError(f"SqlSource: types= names unknown column(s) {unknown}")

    def _reflect(self, table: str, columns: Sequence[str] | None, tie_breaker: str | Sequence[str] | None,
                 overrides: dict[str, pa.DataType]) -> tuple[pa.Schema, tuple[str, ...]]:
        try:
            engine = self.settings.create_engine()
        except Exception as exc:  # noqa: BLE001 - driver-specific
            raise ConfigError(f"SqlSource: cannot connect to {self.settings.masked_url}: {describe_error(exc)}") from None
        try:
            reflected = reflect_table(engine, table, self.db_schema, "SqlSource")
        except sa.exc.SQLAlchemyError as exc:
            raise ConfigError(f"SqlSource: cannot reach {self.settings.masked_url}: {describe_error(exc)}") from None
        finally:
            engine.dispose()
        if reflected is None:
            raise ConfigError(f"SqlSource: table {table!r} does not exist in {self.settings.masked_url}")
        names = [c.name for c in reflected.columns]
        if self.cursor_column not in names:
            raise ConfigError(f"SqlSource: table {table!r} has no column {self.cursor_column!r} (cursor_column); it has "
                              f"{', '.join(names)}")
        if tie_breaker is None:
            unique = _unique_columns(reflected)
            primary = [c.name for c in reflected.primary_key.columns]
            if {self.cursor_column} in unique:
                ties: tuple[str, ...] = ()
            elif primary:
                ties = tuple(n for n in primary if n != self.cursor_column)
            else:
                raise ConfigError(f"SqlSource: {self.cursor_column!r} is not unique in table {table!r} and the table has "
                                  "no primary key; pass tie_breaker=[unique columns] to order rows with equal cursors")
        else:
            ties = (tie_breaker,) if isinstance(tie_breaker, str) else tuple(tie_breaker)
        wanted = list(names) if columns is None else list(columns)
        for name in wanted + list(ties):
            if name not in names:
                raise ConfigError(f"SqlSource: table {table!r} has no column {name!r}; it has {', '.join(names)}")
        for name in (self.cursor_column, *ties):
            if name not in wanted:
                wanted.append(name)
        fields = []
        for name in wanted:
            column_type = reflected.c[name].type
            arrow = overrides.get(name) or arrow_type_of(column_type)
            if arrow is None:
                raise ConfigError(f"SqlSource: column {name!r} of table {table!r} has type {column_type}, which has no "
                                  f"Arrow mapping; pass types={{{name!r}: pa.string()}} (or another type), or leave it "
                                  "out with columns=[...]")
            fields.append(pa.field(name, arrow))
        return pa.schema(fields), ties

    def schema(self) -> pa.Schema:
        return self._schema

    def list_parts(self) -> list[str]:
        """One partition: the table (or query) read in cursor order."""
        return [f"sql:{self.table}" if self.table is not None else "sql:query"]

    def build_part(self, part: str, resume_state: PlainData) -> SqlSourcePartition:
        if part not in self.list_parts():
            raise SourceError(f"SqlSource has no partition {part!r} (it has {self.list_parts()}); the source's table "
                              "or query changed since the checkpoint", transient=False)
        if resume_state is not None and not isinstance(resume_state, SqlPosition):
            raise SourceError(f"SqlSource: resume state of {part!r} must be a SqlPosition, got {resume_state!r}",
                              transient=False)
        position = resume_state or SqlPosition()
        if self.bounded and position.upper is not None and position.cursor is not None:
            try:
                finished = decode_value(position.cursor) >= decode_value(position.upper)
            except TypeError:
                finished = False
            if finished:  # the last run read its increment to the end: this one reads up to the current max
                position = SqlPosition(position.cursor, position.tie, None)
        return SqlSourcePartition(self, part, position)

    def __repr__(self) -> str:
        what = f"table={self.table!r}" if self.table is not None else "query=..."
        return f"SqlSource(url={self.settings.masked_url!r}, {what}, cursor_column={self.cursor_column!r})"


def _seconds(value: timedelta | float, name: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ConfigError(f"SqlSource: {name} must be a non-negative timedelta or number of seconds, got {value!r}")
    return float(seconds)


class SqlSourcePartition(SourcePartition):
    """Reads one :class:`SqlSource` (see the module docstring); the engine is opened on the first poll."""

    def __init__(self, source: SqlSource, part: str, position: SqlPosition) -> None:
        self._source = source
        self._part = part
        self._position = position
        self._engine: Engine | None = None
        self._relation: Any = None
        self._dead: list[DeadLetter] = []
        self._next_poll = 0.0
        self._caught_up = False
        self._done = False
        self._head: Any = None  # the last max(cursor) read, and when
        self._head_at = -float("inf")
        self._history: deque[tuple[float, Any]] = deque()  # (monotonic time, max(cursor)) for safety_lag
        self._upper_seen_at: float | None = None

    # -- queries -----------------------------------------------------------------------------------------------------
    def _columns(self) -> Any:
        if self._relation is None:
            src = self._source
            if src.table is not None:
                meta = sa.MetaData()
                self._relation = sa.Table(src.table, meta, *[sa.Column(f.name, self._sql_type(f.name)) for f in
                                                             src.schema()], schema=src.db_schema)
            else:
                assert src.query is not None
                self._relation = (sa.text(src.query)
                                  .columns(*[sa.column(f.name, sql_type_of(f.type)) for f in src.schema()])
                                  .subquery("hw_query"))
        return self._relation.c

    def _sql_type(self, name: str) -> Any:
        arrow = self._source.schema().field(name).type
        return sql_type_of(arrow)

    def _db(self) -> Engine:
        if self._engine is None:
            self._engine = self._source.settings.create_engine()
        return self._engine

    def _after(self, c: Any) -> Any:
        """``(cursor, *tie) > position`` as nested OR/AND (row-value comparison is not portable)."""
        names = [self._source.cursor_column, *self._source.tie_breaker]
        if self._position.cursor is None:
            return c[names[0]].isnot(None)
        values = [decode_value(self._position.cursor), *[decode_value(v) for v in self._position.tie]]
        if len(values) != len(names):
            raise SourceError(f"SqlSource: the position {self._position!r} has {len(values)} value(s) for the cursor "
                              f"and tie-breaker columns {names}; the tie_breaker changed since the checkpoint",
                              transient=False)
        condition = c[names[-1]] > values[-1]
        for name, value in reversed(list(zip(names[:-1], values[:-1]))):
            condition = sa.or_(c[name] > value, sa.and_(c[name] == value, condition))
        return condition

    def _max_cursor(self) -> Any:
        c = self._columns()
        with self._db().connect() as conn:
            return conn.execute(sa.select(sa.func.max(c[self._source.cursor_column]))).scalar()

    def _cap(self, now: float) -> tuple[bool, Any]:
        """``(ready, cap)``: whether to read now, and the largest cursor value to read (``None``: no limit)."""
        src = self._source
        need_head = src.bounded or src.safety_lag > 0 or src.table is not None
        if need_head and now - self._head_at >= src.poll_interval:
            self._head, self._head_at = self._max_cursor(), now
            self._history.append((now, self._head))
        if src.bounded:
            if self._position.upper is None:
                if self._head is None:
                    return False, None  # an empty table: finished (see next_batch)
                self._position = SqlPosition(self._position.cursor, self._position.tie, encode_value(self._head))
                self._upper_seen_at = now
            elif self._upper_seen_at is None:
                self._upper_seen_at = now  # restored: wait out the lag again
            if now - self._upper_seen_at < src.safety_lag:
                return False, None
            return True, decode_value(self._position.upper)
        if src.safety_lag <= 0:
            return True, None
        cap, found = None, False
        while self._history and now - self._history[0][0] >= src.safety_lag:
            cap, found = self._history.popleft()[1], True
        if found:
            self._history.appendleft((now - src.safety_lag, cap))  # still the newest old-enough observation
        return found and cap is not None, cap

    # -- the partition protocol --------------------------------------------------------------------------------------
    def next_batch(self) -> pa.RecordBatch | None:
        if self._done:
            raise StopIteration
        now = time.monotonic()
        if now < self._next_poll:
            return None
        src = self._source
        try:
            ready, cap = self._cap(now)
            if src.bounded and self._position.upper is None and self._head is None:
                self._done = True
                raise StopIteration
            if not ready:
                self._next_poll = now + min(src.poll_interval, max(src.safety_lag, 0.01))
                return None
            c = self._columns()
            statement = sa.select(*[c[f.name] for f in src.schema()]).where(self._after(c))
            if cap is not None:
                statement = statement.where(c[src.cursor_column] <= cap)
            statement = statement.order_by(*[c[n] for n in (src.cursor_column, *src.tie_breaker)]).limit(src.batch_size)
            with self._db().connect() as conn:
                rows = conn.execute(statement).all()
        except sa.exc.SQLAlchemyError as exc:
            raise SourceError(f"SqlSource at {src.settings.masked_url}: cannot read {self._part!r}: "
                              f"{describe_error(exc)}", transient=is_transient_error(exc)) from exc
        if len(rows) < src.batch_size:
            self._caught_up = True
            self._next_poll = now + src.poll_interval
            if src.bounded:
                self._done = True
        else:
            self._caught_up = False
        if not rows:
            return None
        return self._convert(rows)

    def _position_of(self, row: Sequence[Any]) -> SqlPosition:
        names = self._source.schema().names
        src = self._source
        return SqlPosition(encode_value(row[names.index(src.cursor_column)]),
                           tuple(encode_value(row[names.index(n)]) for n in src.tie_breaker), self._position.upper)

    def _convert(self, rows: Sequence[Any]) -> pa.RecordBatch | None:
        """Rows → one batch, column by column; rows whose values do not convert become dead letters."""
        schema = self._source.schema()
        self._position = self._position_of(rows[-1])
        values_by_column = [list(col) for col in zip(*rows)]
        arrays: list[pa.Array | None] = []
        bad: dict[int, str] = {}
        for field, values in zip(schema, values_by_column):
            try:
                arrays.append(pa.array(values, field.type))
                continue
            except _CONVERT_ERRORS:
                converter = python_converter(field.type)
            if converter is not None:
                values[:] = [converter(v) for v in values]
                try:
                    arrays.append(pa.array(values, field.type))
                    continue
                except _CONVERT_ERRORS:
                    pass
            arrays.append(None)
            for i, value in enumerate(values):
                try:
                    pa.array([value], field.type)
                except _CONVERT_ERRORS as exc:
                    bad.setdefault(i, f"column {field.name!r}: {type(value).__name__} value does not convert to "
                                      f"{field.type}: {exc}")
        if bad:
            keep = [i for i in range(len(rows)) if i not in bad]
            indices = pa.array(keep, pa.int64())
            arrays = [pa.array([values[i] for i in keep], field.type) if array is None else array.take(indices)
                      for array, values, field in zip(arrays, values_by_column, schema)]
            for i in sorted(bad):
                row = dict(zip(schema.names, rows[i]))
                self._dead.append(DeadLetter(
                    payload=json.dumps(row, default=str).encode(), reason=DeadLetterReason.WRONG_TYPE, error=bad[i],
                    partition=self._part, position=self._position_of(rows[i]),
                ))
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        return batch if batch.num_rows else None

    def next_awake(self) -> float | None:
        return self._next_poll if self._next_poll > time.monotonic() else None

    def take_dead_letters(self) -> list[DeadLetter]:
        taken, self._dead = self._dead, []
        return taken

    def snapshot(self) -> SqlPosition:
        """The last row read (emitted or dead-lettered); reading resumes strictly after it."""
        return self._position

    def lag(self) -> SourceLag | None:
        if self._caught_up and (self._head is None or self._at_head()):
            return SourceLag(records=0, seconds=0.0)
        head, cursor = self._head, decode_value(self._position.cursor)
        if head is None:
            return None
        if cursor is None:
            return SourceLag(records=None)
        if isinstance(head, int) and isinstance(cursor, int):
            return SourceLag(records=head - cursor)
        if isinstance(head, datetime) and isinstance(cursor, datetime) and (head.tzinfo is None) == (cursor.tzinfo is None):
            return SourceLag(seconds=(head - cursor).total_seconds())
        return None

    def _at_head(self) -> bool:
        cursor = decode_value(self._position.cursor)
        try:
            return bool(cursor is not None and cursor >= self._head)
        except TypeError:
            return False

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()
