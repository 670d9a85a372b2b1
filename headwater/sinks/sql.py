"""SQL sink: upsert Arrow batches into a table of any SQLAlchemy database, exactly once.

Three tables take part (all in the target's database)::

    <table>                       the target: readers see committed rows only
    hw_staging_<table>            staged rows: the target's columns + _hw_sink, _hw_subtask, _hw_writer,
                                  _hw_checkpoint (NULL while in progress), _hw_seq (order of arrival)
    headwater_sink_commits        one row per (sink_id, subtask): the last checkpoint committed, by which writer

Commit order, per subtask:

1. :meth:`SqlSinkPartition.write` buffers batches in memory; past ``max_buffered_rows`` it *spills* them into the
   staging table, tagged (sink id, subtask, writer) with ``_hw_checkpoint`` NULL (in progress).
2. :meth:`SqlSinkPartition.prepare` (checkpoint ``n``), in one transaction: inserts the rest of the buffer with
   ``_hw_checkpoint = n`` and tags the spilled rows with ``n``. Once it returns, the rows are durable and the
   :class:`SqlCommitToken` ``(sink_id, subtask, n, writer, rows)`` describes them completely: any process that
   can reach the database can commit it (the driver after a crash, another host).
3. :meth:`SqlSinkPartition.commit`, in one transaction: locks the subtask's row of the commit table, counts
   the token's staged rows and then either

   * moves them into the target with an upsert on ``key`` (``INSERT ... ON CONFLICT DO UPDATE`` on PostgreSQL
     and SQLite, ``DELETE`` of the keys then ``INSERT`` elsewhere; the last row per key in arrival order wins),
     deletes them from staging and records ``n`` and the writer in the commit table, or
   * finds none: the token was committed already (the commit table records ``n`` or later), so this is a
     no-op; or its rows are gone without a commit record, which is a :class:`~headwater.errors.SinkError`.

   So a replayed commit is a no-op on any SQL database, and a crash at any point of a commit leaves either
   all of it or none of it.
4. :meth:`SqlSinkPartition.abort` deletes this subtask's in-progress rows (``_hw_checkpoint`` NULL, any writer:
   also those of a crashed incarnation). Prepared rows are left for their commit, or for :meth:`SqlSink.clean_up`
   (driver, leases held) which deletes this owner's staged rows that no token names.

Who stages: the planner binds the sink to its owner (:meth:`SqlSink.staging_as`); ``_hw_sink`` is
``<owner key>:<sink_id>``, so two checkpointed jobs writing one table never clean up each other's prepared rows.
``<writer>`` is a random id per partition object (subtask, attempt and run), so rows of two attempts never mix,
and checkpoint ids that start again at 1 (every run without checkpointing) never look committed.

Limits: one running job per ``(table, sink_id)`` at a time (databases offer no lease that works on every dialect;
a second run's abort would delete the first's in-progress rows). Two sinks of one job writing one table need
distinct ``sink_id``\\ s. Rows of one key should reach one subtask (``key_by`` the key before the sink, or run the
sink at parallelism 1), or the last writer between subtasks is whichever commits last.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from headwater.clients.sql import (
    SqlClientSettings,
    arrow_type_of,
    describe_error,
    is_transient_error,
    reflect_table,
    sql_type_of,
    types_compatible,
)
from headwater.core import plain_data
from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SinkError
from headwater.sinks.base import Sink, SinkOwner, SinkPartition

log = logging.getLogger("headwater.sinks.sql")

__all__ = ["SqlCommitToken", "SqlSink", "SqlSinkPartition"]

SINK, SUBTASK, WRITER, CHECKPOINT, SEQ = "_hw_sink", "_hw_subtask", "_hw_writer", "_hw_checkpoint", "_hw_seq"
TAGS = (SINK, SUBTASK, WRITER, CHECKPOINT, SEQ)
#: Arrow type families PostgreSQL's COPY reads from pyarrow's CSV without loss; others go through executemany
_COPYABLE = (pa.types.is_boolean, pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_string,
             pa.types.is_large_string, pa.types.is_date, pa.types.is_timestamp, pa.types.is_time)
#: dialects whose ``INSERT ... ON CONFLICT DO UPDATE`` the upsert uses; others delete the keys, then insert
ON_CONFLICT_DIALECTS = ("postgresql", "sqlite")
_MAX_NAME = 63  # PostgreSQL's identifier limit; the tightest of the tested dialects


@plain_data.register(name="headwater.SqlCommitToken")
@dataclass(frozen=True)
class SqlCommitToken:
    """The rows one ``prepare`` staged: those of staging tagged ``(sink_id, subtask, writer, checkpoint_id)``;
    ``rows`` of them (0: nothing to commit)."""

    sink_id: str
    subtask: int
    checkpoint_id: int
    writer: str
    rows: int
    columns: tuple[str, ...] = ()  # the input's columns: the target columns the commit sets


def _default_staging(table: str) -> str:
    name = f"hw_staging_{table}"
    if len(name) <= _MAX_NAME:
        return name
    return f"hw_staging_{table[:40]}_{hashlib.sha256(table.encode()).hexdigest()[:8]}"


class SqlSink(Sink):
    """Upsert into ``table`` on ``key`` (a column or list of columns), exactly once (see the module docstring).

    Options: ``db_schema`` (the database schema of all three tables), ``sink_id`` (default: the table name; give
    two sinks of one job on one table distinct ids), ``create_table`` (create a missing target from the input's
    Arrow schema, ``key`` as its primary key; else a missing table is a ``ConfigError``), ``staging_table``
    (default ``hw_staging_<table>``), ``commit_table`` (default ``headwater_sink_commits``), ``max_buffered_rows``
    (rows a subtask buffers before spilling them into staging), ``use_copy`` (PostgreSQL: stage with ``COPY``
    from Arrow's CSV writer instead of ``executemany``), ``engine_options`` (for ``sqlalchemy.create_engine``).

    At build time (when the input's schema is known) the target is checked: every input column must exist with
    a compatible type, the key columns must be in the input, and for ``ON CONFLICT`` dialects the key must be
    the primary key or a unique constraint. The URL's password never appears in a ``repr``, log or error."""

    exactly_once = True

    def __init__(
        self,
        url: str | URL,
        table: str,
        key: str | Sequence[str],
        *,
        db_schema: str | None = None,
        sink_id: str | None = None,
        create_table: bool = True,
        staging_table: str | None = None,
        commit_table: str = "headwater_sink_commits",
        max_buffered_rows: int = 100_000,
        use_copy: bool = True,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = SqlClientSettings.build(url, engine_options, owner="SqlSink")
        for name, value in (("table", table), ("commit_table", commit_table), ("staging_table", staging_table or "x"),
                            ("db_schema", db_schema or "x"), ("sink_id", sink_id or "x")):
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"SqlSink: {name} must be a non-empty string, got {value!r}")
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys or not all(isinstance(k, str) and k for k in keys) or len(set(keys)) != len(keys):
            raise ConfigError(f"SqlSink: key must name one column or a list of distinct columns, got {key!r}")
        if isinstance(max_buffered_rows, bool) or not isinstance(max_buffered_rows, int) or max_buffered_rows < 1:
            raise ConfigError(f"SqlSink: max_buffered_rows must be a positive int, got {max_buffered_rows!r}")
        staging = staging_table or _default_staging(table)
        if len({table, staging, commit_table}) != 3:
            raise ConfigError(f"SqlSink: table, staging_table and commit_table must be three different tables, got "
                              f"{table!r}, {staging!r}, {commit_table!r}")
        self.table, self.key, self.db_schema = table, keys, db_schema
        self.sink_id = sink_id or (f"{db_schema}.{table}" if db_schema else table)
        self.create_table, self.staging_table, self.commit_table = bool(create_table), staging, commit_table
        self.max_buffered_rows, self.use_copy = max_buffered_rows, bool(use_copy)
        self.owner = SinkOwner()  # bound per run by staging_as

    def __repr__(self) -> str:
        return f"SqlSink(url={self.settings.masked_url!r}, table={self.table!r}, key={list(self.key)!r})"

    @property
    def scoped_id(self) -> str:
        """``<owner key>:<sink_id>``: the ``_hw_sink`` and ``sink_id`` of this run's staged rows and commits."""
        return f"{self.owner.key}:{self.sink_id}"

    # -- the Sink protocol ------------------------------------------------------------------------------------------
    def build_part(self, index: int, count: int) -> SqlSinkPartition:
        if not 0 <= index < count:
            raise ConfigError(f"SqlSink: subtask index {index} is out of range for {count} subtasks")
        return SqlSinkPartition(self, index)

    def staging_as(self, owner: SinkOwner) -> SqlSink:
        bound = copy.copy(self)
        bound.owner = owner
        return bound

    def check_input_schema(self, schema: pa.Schema) -> None:
        """Build time: the input's columns fit the target (when it exists), and the key is among them."""
        missing = [k for k in self.key if k not in schema.names]
        if missing:
            raise ConfigError(f"SqlSink({self.table!r}): key column(s) {missing} are not in the input (columns: "
                              f"{', '.join(schema.names)})")
        engine = self._engine("check the target table")
        try:
            target = reflect_table(engine, self.table, self.db_schema, f"SqlSink({self.table!r})")
            if target is None:
                if not self.create_table:
                    raise ConfigError(f"SqlSink: table {self.table!r} does not exist in {self.settings.masked_url}; "
                                      "create it, or pass create_table=True to create it from the input's schema")
                _target_definition(self, schema)  # every input type must have a column type
            else:
                _check_target(self, target, schema, engine.dialect.name)
        finally:
            engine.dispose()

    def clean_up(self, tokens: Sequence[PlainData]) -> None:
        """Delete this owner's staged rows that no token names, and the in-progress and prepared rows of runs
        without checkpointing (they ended); other checkpointed jobs' rows are kept."""
        keep = [t for t in tokens if isinstance(t, SqlCommitToken)]
        engine = self._engine("clean up staging")
        try:
            if not sa.inspect(engine).has_table(self.staging_table, schema=self.db_schema):
                return
            staging = sa.Table(self.staging_table, sa.MetaData(), schema=self.db_schema, autoload_with=engine)
            c = staging.c
            ours = sa.or_(c[SINK] == self.scoped_id, c[SINK] == f"{SinkOwner.UNCHECKED}:{self.sink_id}")
            covered = [sa.and_(c[SINK] == t.sink_id, c[SUBTASK] == t.subtask, c[WRITER] == t.writer,
                               c[CHECKPOINT] == t.checkpoint_id) for t in keep]
            condition = sa.and_(ours, sa.not_(sa.or_(*covered))) if covered else ours
            with engine.begin() as conn:
                deleted = conn.execute(staging.delete().where(condition)).rowcount
            if deleted:
                log.info("SqlSink %s: deleted %d staged row(s) no checkpoint will commit", self.table, deleted)
        except sa.exc.SQLAlchemyError as exc:
            raise _sink_error(self, "clean up the staging table", exc) from exc
        finally:
            engine.dispose()

    def _engine(self, action: str) -> Engine:
        try:
            return self.settings.create_engine()
        except Exception as exc:  # noqa: BLE001 - driver-specific failures while building the pool
            raise ConfigError(f"SqlSink: cannot {action} in {self.settings.masked_url}: {describe_error(exc)}") from None


def _sink_error(sink: SqlSink, action: str, exc: BaseException) -> SinkError:
    return SinkError(f"SqlSink({sink.table!r}) at {sink.settings.masked_url}: cannot {action}: {describe_error(exc)}",
                     transient=is_transient_error(exc))


def _target_definition(sink: SqlSink, schema: pa.Schema) -> sa.Table:
    columns = []
    for field in schema:
        column_type = sql_type_of(field.type)
        if column_type is None:
            raise ConfigError(f"SqlSink({sink.table!r}): column {field.name!r} of type {field.type} has no SQL column "
                              "type; cast or drop it before the sink, or create the table yourself")
        columns.append(sa.Column(field.name, column_type, primary_key=field.name in sink.key,
                                 nullable=field.name not in sink.key))
    return sa.Table(sink.table, sa.MetaData(), *columns, schema=sink.db_schema)


def _has_unique(target: sa.Table, key: tuple[str, ...]) -> bool:
    wanted = set(key)
    if {c.name for c in target.primary_key.columns} == wanted:
        return True
    for constraint in target.constraints:
        if isinstance(constraint, sa.UniqueConstraint) and {c.name for c in constraint.columns} == wanted:
            return True
    return any(index.unique and {c.name for c in index.columns} == wanted for index in target.indexes)


def _check_target(sink: SqlSink, target: sa.Table, schema: pa.Schema, dialect: str) -> None:
    owner = f"SqlSink({sink.table!r})"
    columns = {c.name: c for c in target.columns}
    missing = [name for name in schema.names if name not in columns]
    if missing:
        raise ConfigError(f"{owner}: the input has column(s) {missing} that table {sink.table!r} lacks (it has "
                          f"{', '.join(columns)}); add them to the table, or select the table's columns before the sink")
    for field in schema:
        column_type = arrow_type_of(columns[field.name].type)
        if column_type is not None and not types_compatible(column_type, field.type):
            raise ConfigError(f"{owner}: column {field.name!r} is {columns[field.name].type} in the table but "
                              f"{field.type} in the input; cast it before the sink")
    required = [c.name for c in target.columns if c.name not in schema.names and not c.nullable
                and c.server_default is None and c.default is None
                and not (c.primary_key and c.autoincrement is True)]
    if required:
        raise ConfigError(f"{owner}: table column(s) {required} are NOT NULL without a default and not in the input")
    if dialect in ON_CONFLICT_DIALECTS and not _has_unique(target, sink.key):
        raise ConfigError(f"{owner}: the upsert needs a primary key or unique constraint on {list(sink.key)} in table "
                          f"{sink.table!r}; add one (e.g. CREATE UNIQUE INDEX ... ON {sink.table} "
                          f"({', '.join(sink.key)}))")


class SqlSinkPartition(SinkPartition[SqlCommitToken]):
    """The writer of one subtask of a :class:`SqlSink`; see the module docstring for the commit protocol."""

    def __init__(self, sink: SqlSink, index: int) -> None:
        self._sink = sink
        self._index = index
        self._writer = uuid.uuid4().hex[:16]
        self._engine: Engine | None = None
        self._target: sa.Table | None = None
        self._staging: sa.Table | None = None
        self._commits: sa.Table | None = None
        self._schema: pa.Schema | None = None
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._spilled = 0
        self._seq = 0

    # -- set-up ------------------------------------------------------------------------------------------------------
    def _db(self) -> Engine:
        if self._engine is None:
            self._engine = self._sink.settings.create_engine()
        return self._engine

    def _commit_table(self) -> sa.Table:
        if self._commits is None:
            self._commits = sa.Table(
                self._sink.commit_table, sa.MetaData(),
                sa.Column("sink_id", sa.String(255), primary_key=True),
                sa.Column("subtask", sa.Integer, primary_key=True, autoincrement=False),
                sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
                sa.Column("writer", sa.String(32), nullable=False),
                sa.Column("rows", sa.BigInteger, nullable=False),
                sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
                schema=self._sink.db_schema,
            )
        return self._commits

    def _create(self, table: sa.Table) -> None:
        """``CREATE TABLE`` unless it exists; another subtask creating it at the same moment is no error."""
        try:
            table.create(self._db(), checkfirst=True)
        except sa.exc.SQLAlchemyError:
            if not sa.inspect(self._db()).has_table(table.name, schema=table.schema):
                raise

    def _prepare_tables(self, schema: pa.Schema) -> None:
        """Create (if missing) and check the target, the staging and the commit table, once per partition."""
        sink = self._sink
        engine = self._db()
        try:
            target = reflect_table(engine, sink.table, sink.db_schema, f"SqlSink({sink.table!r})")
            if target is None:
                if not sink.create_table:
                    raise ConfigError(f"SqlSink: table {sink.table!r} does not exist; create it or pass create_table=True")
                self._create(_target_definition(sink, schema))
                target = reflect_table(engine, sink.table, sink.db_schema, f"SqlSink({sink.table!r})")
                assert target is not None
            _check_target(sink, target, schema, engine.dialect.name)
            staging = reflect_table(engine, sink.staging_table, sink.db_schema, f"SqlSink({sink.table!r})")
            if staging is None:
                self._create(self._staging_definition(target))
                staging = reflect_table(engine, sink.staging_table, sink.db_schema, f"SqlSink({sink.table!r})")
                assert staging is not None
            lacking = [name for name in (*schema.names, *TAGS) if name not in staging.c]
            if lacking:
                raise ConfigError(
                    f"SqlSink: staging table {sink.staging_table!r} lacks column(s) {lacking} (the target changed since "
                    "it was created); once no job has prepared rows in it, drop it (it is re-created), or set "
                    "staging_table= to another name")
            self._create(self._commit_table())
        except sa.exc.SQLAlchemyError as exc:
            raise _sink_error(sink, "create or check its tables", exc) from exc
        self._target, self._staging = target, staging

    def _staging_definition(self, target: sa.Table) -> sa.Table:
        columns = [sa.Column(c.name, c.type, nullable=True) for c in target.columns]
        columns += [sa.Column(SINK, sa.String(255), nullable=False), sa.Column(SUBTASK, sa.Integer, nullable=False),
                    sa.Column(WRITER, sa.String(32), nullable=False), sa.Column(CHECKPOINT, sa.BigInteger),
                    sa.Column(SEQ, sa.BigInteger, nullable=False)]
        name = self._sink.staging_table
        table = sa.Table(name, sa.MetaData(), *columns, schema=self._sink.db_schema)
        sa.Index(f"{name[:_MAX_NAME - 4]}_idx", table.c[SINK], table.c[SUBTASK], table.c[WRITER], table.c[CHECKPOINT])
        return table

    # -- write and prepare -------------------------------------------------------------------------------------------
    def write(self, batch: pa.RecordBatch) -> None:
        """Buffer ``batch``; spill the buffer into staging (in progress) once it holds ``max_buffered_rows``."""
        if batch.num_rows == 0:
            return
        if self._schema is None:
            self._prepare_tables(batch.schema)
            self._schema = batch.schema
        elif not batch.schema.equals(self._schema):
            raise SinkError(f"SqlSink({self._sink.table!r}): a batch's schema differs from the first batch's; cast or "
                            f"select columns before the sink.\nfirst:\n{self._schema}\nthis:\n{batch.schema}",
                            transient=False)
        for name in self._sink.key:
            nulls = batch.column(name).null_count
            if nulls:
                raise SinkError(f"SqlSink({self._sink.table!r}): {nulls} row(s) have a null key column {name!r}; "
                                "filter them out (or fill the key) before the sink", transient=False)
        self._buffer.append(batch)
        self._buffered += batch.num_rows
        if self._buffered >= self._sink.max_buffered_rows:
            try:
                with self._db().begin() as conn:
                    self._stage(conn, None)
            except sa.exc.SQLAlchemyError as exc:
                raise _sink_error(self._sink, "stage rows", exc) from exc

    def _stage(self, conn: Connection, checkpoint_id: int | None) -> None:
        """Insert the buffer into staging, tagged with ``checkpoint_id`` (``None``: in progress)."""
        if not self._buffered:
            return
        assert self._schema is not None and self._staging is not None
        table = pa.Table.from_batches(self._buffer, schema=self._schema)
        n = table.num_rows
        table = (table
                 .append_column(SINK, pa.array([self._sink.scoped_id] * n, pa.string()))
                 .append_column(SUBTASK, pa.array(np.full(n, self._index, np.int64)))
                 .append_column(WRITER, pa.array([self._writer] * n, pa.string()))
                 .append_column(CHECKPOINT, pa.nulls(n, pa.int64()) if checkpoint_id is None
                                else pa.array(np.full(n, checkpoint_id, np.int64)))
                 .append_column(SEQ, pa.array(np.arange(self._seq, self._seq + n, dtype=np.int64))))
        if conn.dialect.name == "postgresql" and self._sink.use_copy and conn.dialect.driver == "psycopg2" and all(
                any(test(f.type) for test in _COPYABLE) for f in self._schema):
            self._copy(conn, table)
        else:
            conn.execute(self._staging.insert(), table.to_pylist())
        self._seq += n
        if checkpoint_id is None:
            self._spilled += n
        self._buffer, self._buffered = [], 0

    def _copy(self, conn: Connection, table: pa.Table) -> None:
        """PostgreSQL: ``COPY staging FROM STDIN`` of Arrow's CSV rendering (no Python per row)."""
        assert self._staging is not None
        out = io.BytesIO()
        pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False))
        out.seek(0)
        preparer = conn.dialect.identifier_preparer
        columns = ", ".join(preparer.quote(name) for name in table.column_names)
        statement = f"COPY {preparer.format_table(self._staging)} ({columns}) FROM STDIN WITH (FORMAT csv)"
        with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]  # psycopg2's connection
            cursor.copy_expert(statement, out)

    def prepare(self, checkpoint_id: int) -> SqlCommitToken:
        """Stage the buffer with ``checkpoint_id`` and tag the spilled rows with it, in one transaction."""
        rows = self._spilled + self._buffered
        if rows:
            assert self._staging is not None
            c = self._staging.c
            try:
                with self._db().begin() as conn:
                    if self._spilled:
                        conn.execute(self._staging.update()
                                     .where(c[SINK] == self._sink.scoped_id, c[SUBTASK] == self._index,
                                            c[WRITER] == self._writer, c[CHECKPOINT].is_(None))
                                     .values({CHECKPOINT: checkpoint_id}))
                    self._stage(conn, checkpoint_id)
            except sa.exc.SQLAlchemyError as exc:
                raise _sink_error(self._sink, f"prepare checkpoint {checkpoint_id}", exc) from exc
            self._spilled = 0
        columns = tuple(self._schema.names) if self._schema is not None else ()
        return SqlCommitToken(self._sink.scoped_id, self._index, checkpoint_id, self._writer, rows, columns)

    # -- commit ------------------------------------------------------------------------------------------------------
    def commit(self, token: SqlCommitToken) -> None:
        """Move the token's staged rows into the target and record the commit, in one transaction; a no-op when
        the commit table shows it done (see the module docstring)."""
        if token.rows == 0:
            return
        sink = self._sink
        try:
            staging, target = self._tables_for_commit()
            commits = self._commit_table()
            self._create(commits)
            self._ensure_commit_row(commits, token)
            c = staging.c
            staged = sa.and_(c[SINK] == token.sink_id, c[SUBTASK] == token.subtask, c[WRITER] == token.writer,
                             c[CHECKPOINT] == token.checkpoint_id)
            with self._db().begin() as conn:
                record = conn.execute(
                    sa.select(commits.c.checkpoint_id, commits.c.writer)
                    .where(commits.c.sink_id == token.sink_id, commits.c.subtask == token.subtask)
                    .with_for_update()).one()
                found = conn.execute(sa.select(sa.func.count()).select_from(staging).where(staged)).scalar_one()
                if found == 0:
                    if record.checkpoint_id >= token.checkpoint_id:
                        return  # committed before: the rows moved in the transaction that recorded it
                    raise SinkError(
                        f"SqlSink({sink.table!r}): cannot commit checkpoint {token.checkpoint_id} of subtask "
                        f"{token.subtask}: its {token.rows} staged row(s) are gone from {sink.staging_table!r} and the "
                        f"commit table records only checkpoint {record.checkpoint_id}; something other than this job "
                        "deleted them. Restore from an earlier savepoint or rerun the job", transient=False)
                if found != token.rows:
                    raise SinkError(
                        f"SqlSink({sink.table!r}): checkpoint {token.checkpoint_id} of subtask {token.subtask} staged "
                        f"{token.rows} row(s) but {found} are in {sink.staging_table!r}; something else writes that "
                        "table. Give each job its own sink_id", transient=False)
                self._upsert(conn, target, staging, staged, token.columns)
                conn.execute(staging.delete().where(staged))
                conn.execute(commits.update()
                             .where(commits.c.sink_id == token.sink_id, commits.c.subtask == token.subtask)
                             .values(checkpoint_id=token.checkpoint_id, writer=token.writer, rows=token.rows,
                                     committed_at=sa.func.now()))
        except sa.exc.SQLAlchemyError as exc:
            raise _sink_error(sink, f"commit checkpoint {token.checkpoint_id}", exc) from exc

    def _tables_for_commit(self) -> tuple[sa.Table, sa.Table]:
        if self._staging is None or self._target is None:  # a fresh partition (recovery in the driver)
            sink = self._sink
            owner = f"SqlSink({sink.table!r})"
            self._target = reflect_table(self._db(), sink.table, sink.db_schema, owner)
            self._staging = reflect_table(self._db(), sink.staging_table, sink.db_schema, owner)
            if self._target is None or self._staging is None:
                missing = sink.table if self._target is None else sink.staging_table
                raise SinkError(f"{owner}: cannot commit: table {missing!r} is gone; its prepared rows are lost. "
                                "Restore from an earlier savepoint or rerun the job", transient=False)
        return self._staging, self._target

    def _ensure_commit_row(self, commits: sa.Table, token: SqlCommitToken) -> None:
        """Insert the subtask's commit-table row (checkpoint 0) if missing, so the commit can lock it."""
        where = sa.and_(commits.c.sink_id == token.sink_id, commits.c.subtask == token.subtask)
        with self._db().begin() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(commits).where(where)).scalar_one():
                return
        try:
            with self._db().begin() as conn:
                conn.execute(commits.insert().values(sink_id=token.sink_id, subtask=token.subtask, checkpoint_id=0,
                                                     writer="", rows=0))
        except sa.exc.IntegrityError:
            pass  # inserted meanwhile by another commit of this subtask

    def _upsert(self, conn: Connection, target: sa.Table, staging: sa.Table, staged: sa.ColumnElement[bool],
                columns: Sequence[str]) -> None:
        """Move the staged rows into the target: the last row per key (by ``_hw_seq``) wins; only ``columns`` (the
        input's) are set, so other columns of the target keep their values or defaults."""
        lacking = [n for n in columns if n not in target.c or n not in staging.c]
        if lacking:
            raise SinkError(f"SqlSink({self._sink.table!r}): cannot commit: column(s) {lacking} were dropped from the "
                            "target or the staging table since the rows were prepared", transient=False)
        names = list(columns)
        key = list(self._sink.key)
        ranked = (sa.select(*[staging.c[n] for n in names],
                            sa.func.row_number().over(partition_by=[staging.c[k] for k in key],
                                                      order_by=staging.c[SEQ].desc()).label("_hw_rank"))
                  .where(staged).subquery("hw_ranked"))
        latest = sa.select(*[ranked.c[n] for n in names]).where(ranked.c["_hw_rank"] == 1)
        dialect = conn.dialect.name
        if dialect in ON_CONFLICT_DIALECTS:
            from sqlalchemy.dialects import postgresql, sqlite

            insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(target).from_select(names, latest)
            others = [n for n in names if n not in key]
            if others:
                statement = insert.on_conflict_do_update(index_elements=key,
                                                         set_={n: insert.excluded[n] for n in others})
            else:
                statement = insert.on_conflict_do_nothing(index_elements=key)
            conn.execute(statement)
            return
        keys_of_staged = sa.select(sa.literal(1)).select_from(staging).where(
            staged, *[staging.c[k] == target.c[k] for k in key])
        conn.execute(target.delete().where(keys_of_staged.exists()))
        conn.execute(target.insert().from_select(names, latest))

    # -- abort and close ---------------------------------------------------------------------------------------------
    def abort(self) -> None:
        """Delete this subtask's in-progress rows (of any incarnation); prepared rows are not touched."""
        self._buffer, self._buffered, self._spilled = [], 0, 0
        sink = self._sink
        try:
            engine = self._db()
            if self._staging is None:
                if not sa.inspect(engine).has_table(sink.staging_table, schema=sink.db_schema):
                    return
                self._staging = sa.Table(sink.staging_table, sa.MetaData(), schema=sink.db_schema,
                                         autoload_with=engine)
            c = self._staging.c
            with engine.begin() as conn:
                conn.execute(self._staging.delete().where(c[SINK] == sink.scoped_id, c[SUBTASK] == self._index,
                                                          c[CHECKPOINT].is_(None)))
        except sa.exc.SQLAlchemyError as exc:
            raise _sink_error(sink, "abort staged rows", exc) from exc

    def close(self) -> None:
        """Release the connection pool; buffered rows that were never prepared are dropped."""
        engine, self._engine = self._engine, None
        self._buffer, self._buffered = [], 0
        if engine is not None:
            engine.dispose()

