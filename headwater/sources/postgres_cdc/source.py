"""``PostgresCdcSource``: change data capture from PostgreSQL logical replication (pgoutput), as a changelog.

Example::

    import headwater as hw
    from headwater.sources import PostgresCdcSource

    users = PostgresCdcSource("postgresql://cdc@db:5432/shop", tables=["public.users"], slot="hw_users",
                              publication="hw_users")
    flow = hw.Dataflow("enrich")
    table = flow.source("users", users)
    flow.source("orders", orders).lookup_join(table, on="user_id", table_key="id", changelog_op="op").sink(...)

See :mod:`headwater.sources.postgres_cdc.changes` for the columns, :mod:`headwater.sources.postgres_cdc.partition`
for positions and recovery, and docs/connectors/postgres-cdc.md for setup (``wal_level = logical``, REPLICA
IDENTITY, privileges) and the slot's WAL retention.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import pyarrow as pa

from headwater.clients.postgres import PostgresClientSettings
from headwater.core.dead_letters import DeadLetter, DeadLetterReason, decode_position
from headwater.core.plain_data import PlainData
from headwater.errors import ConfigError, SourceError
from headwater.sources.base import Source
from headwater.sources.postgres_cdc import pgoutput
from headwater.sources.postgres_cdc.changes import (
    BatchBuilder,
    ColumnInfo,
    Layout,
    TableInfo,
    snapshot_rows,
    text_table,
)
from headwater.sources.postgres_cdc.partition import PostgresCdcPartition, PostgresCdcPosition

_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def _quote(name: str) -> str:
    """A quoted SQL identifier (``%`` doubled: queries go through psycopg2's parameter substitution)."""
    return '"' + name.replace('"', '""').replace("%", "%%") + '"'


class PostgresCdcSource(Source):
    """The changes of ``tables`` (``"schema.table"`` or ``"table"`` for ``public``): a consistent snapshot
    (``op = "r"``), then every insert (``"c"``), update (``"u"``) and delete (``"d"``) committed after it, in commit
    order, exactly once across restarts.

    ``slot``: the logical replication slot this source owns (``[a-z0-9_]``, at most 63 characters); created when
    missing, and recreated when the job starts without a checkpoint. ``publication``: the publication the slot
    streams; created when missing (``FOR TABLE`` the tables, ``publish = 'insert, update, delete'``), and it must
    cover every table when it exists. ``snapshot``: read the tables' current rows first (default); ``False``
    streams only the changes after the slot's creation. ``batch_size``: most changes per batch;
    ``snapshot_chunk_rows``: rows per snapshot query (one per ``next_batch``). ``prefix``: prepended to the
    metadata column names (``op``, ``table``, ``before``, ``added_columns``, ``lsn``, ``commit_lsn``,
    ``commit_time``) when a table has columns of those names. ``reconnect_timeout``: seconds the source keeps
    reconnecting to a lost server before failing (then the job restarts from its last checkpoint).
    ``poll_budget``: seconds one ``next_batch`` may spend reading the stream. ``status_interval``: seconds
    between the replication status messages psycopg2 sends on its own.

    Invariants: one partition (a slot is one ordered stream), named ``slot``; its position is a
    :class:`PostgresCdcPosition`; the schema is the tables' as of :meth:`schema` (build time) and never changes
    during a run (an added column arrives in ``added_columns``; see :mod:`.changes`)."""

    bounded = False
    replayable = True

    def __init__(
        self, dsn: str, tables: Sequence[str], slot: str, publication: str, *, snapshot: bool = True,
        batch_size: int = 10_000, snapshot_chunk_rows: int = 50_000, prefix: str = "",
        password_env: str | None = None, connect_timeout: int = 10, reconnect_timeout: float = 300.0,
        poll_budget: float = 0.05, status_interval: float = 10.0,
    ) -> None:
        if isinstance(tables, str) or not tables or not all(isinstance(t, str) and t for t in tables):
            raise ConfigError("PostgresCdcSource: tables must be a non-empty list such as ['public.users']")
        self.tables = [self._qualified(t) for t in tables]
        if len(set(self.tables)) != len(self.tables):
            raise ConfigError(f"PostgresCdcSource: tables {self.tables} name a table twice")
        if not isinstance(slot, str) or not _SLOT_NAME.match(slot):
            raise ConfigError(f"PostgresCdcSource: slot {slot!r} is not a valid replication slot name (lower-case "
                              "letters, digits and '_', at most 63 characters)")
        if not isinstance(publication, str) or not _IDENTIFIER.match(publication):
            raise ConfigError(f"PostgresCdcSource: publication {publication!r} must be a plain identifier "
                              "(letters, digits, '_', at most 63 characters)")
        for name, value, low in (("batch_size", batch_size, 1), ("snapshot_chunk_rows", snapshot_chunk_rows, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"PostgresCdcSource: {name} must be a positive int, got {value!r}")
        for name, number in (("reconnect_timeout", reconnect_timeout), ("poll_budget", poll_budget),
                             ("status_interval", status_interval)):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number <= 0:
                raise ConfigError(f"PostgresCdcSource: {name} must be a positive number of seconds, got {number!r}")
        if not isinstance(prefix, str):
            raise ConfigError(f"PostgresCdcSource: prefix must be a string, got {prefix!r}")
        self.settings = PostgresClientSettings.build(dsn, password_env=password_env, connect_timeout=connect_timeout)
        self.slot = slot
        self.publication = publication
        self.snapshot = bool(snapshot)
        self.batch_size = batch_size
        self.snapshot_chunk_rows = snapshot_chunk_rows
        self.prefix = prefix
        self.reconnect_timeout = float(reconnect_timeout)
        self.poll_budget = float(poll_budget)
        self.status_interval = float(status_interval)
        self._table_info: tuple[TableInfo, ...] | None = None
        self._layout: Layout | None = None

    def __repr__(self) -> str:
        return (f"PostgresCdcSource({self.settings.describe()!r}, tables={self.tables}, slot={self.slot!r}, "
                f"publication={self.publication!r})")

    @staticmethod
    def _qualified(name: str) -> str:
        parts = name.split(".")
        if len(parts) == 1:
            parts = ["public", *parts]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"PostgresCdcSource: table {name!r} must be 'table' or 'schema.table'")
        return ".".join(parts)

    # -- schema -----------------------------------------------------------------------------------------------------
    def table_info(self) -> tuple[TableInfo, ...]:
        """The tables as they are now (read once, at build time, then kept: the schema of the run)."""
        if self._table_info is None:
            try:
                conn = self.settings.connect()
            except Exception as exc:  # noqa: BLE001 - any connection failure is reported the same way
                raise ConfigError(f"PostgresCdcSource: cannot connect to {self.settings.describe()} to read the "
                                  f"schema of {self.tables}: {type(exc).__name__}: {str(exc).strip()}") from None
            try:
                self._table_info = tuple(self._read_table(conn, name) for name in self.tables)
            finally:
                conn.close()
        return self._table_info

    def _read_table(self, conn: Any, qualified: str) -> TableInfo:
        schema, name = qualified.split(".")
        cursor = conn.cursor()
        cursor.execute("SELECT c.oid, c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')", (schema, name))
        found = cursor.fetchone()
        if found is None:
            raise ConfigError(f"PostgresCdcSource: table {qualified} does not exist in {self.settings.describe()}")
        oid, identity = found
        cursor.execute("SELECT attname, atttypid, atttypmod, format_type(atttypid, atttypmod) FROM pg_attribute "
                       "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = '' "
                       "ORDER BY attnum", (oid,))
        columns = tuple(ColumnInfo(n, int(t), int(m), f) for n, t, m, f in cursor.fetchall())
        cursor.execute("SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, ord), "
                       "pg_attribute a WHERE i.indrelid = %s AND i.indisprimary AND a.attrelid = i.indrelid "
                       "AND a.attnum = k.attnum ORDER BY k.ord", (oid,))
        key = tuple(r[0] for r in cursor.fetchall())
        if not key:
            raise ConfigError(f"PostgresCdcSource: table {qualified} has no primary key; the snapshot reads in key "
                              "order and deletes identify rows by it: add one (ALTER TABLE ... ADD PRIMARY KEY)")
        return TableInfo(schema, name, columns, key, str(identity))

    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = Layout(self.table_info(), self.prefix)
        return self._layout

    def schema(self) -> pa.Schema:
        return self.layout().schema

    def list_parts(self) -> list[str]:
        return [self.slot]

    def build_part(self, part: str, resume_state: PlainData) -> PostgresCdcPartition:
        if part != self.slot:
            raise SourceError(f"PostgresCdcSource has one partition, {self.slot!r}, not {part!r} (was the slot "
                              "renamed since the checkpoint?)")
        if resume_state is not None and not isinstance(resume_state, PostgresCdcPosition):
            raise SourceError(f"PostgresCdcSource: resume state must be a PostgresCdcPosition, got {resume_state!r}")
        layout = self.layout()
        return PostgresCdcPartition(self, part, self.table_info(), BatchBuilder(layout, part), resume_state)

    # -- administration (used by the partition; also for operators and tests) --------------------------------------
    def ensure_publication(self, conn: Any) -> None:
        """Create the publication when missing; refuse one that lacks some of the tables."""
        cursor = conn.cursor()
        cursor.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,))
        if cursor.fetchone() is None:
            tables = ", ".join(".".join(_quote(p) for p in t.split(".")) for t in self.tables)
            cursor.execute(f"CREATE PUBLICATION {_quote(self.publication)} FOR TABLE {tables} "
                           "WITH (publish = 'insert, update, delete')")
            return
        cursor.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
                       (self.publication,))
        covered = {r[0] for r in cursor.fetchall()}
        missing = [t for t in self.tables if t not in covered]
        if missing:
            raise SourceError(f"PostgresCdcSource: publication {self.publication!r} exists but does not publish "
                              f"{missing}; run ALTER PUBLICATION {self.publication} ADD TABLE {', '.join(missing)}",
                              transient=False)

    def slot_exists(self, conn: Any) -> bool:
        cursor = conn.cursor()
        cursor.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
        return cursor.fetchone() is not None

    def drop_slot_using(self, conn: Any, attempts: int = 50) -> None:
        """Drop the slot (waiting up to ~10 s for a previous reader's connection to go away)."""
        import tenacity

        def drop() -> None:
            cursor = conn.cursor()
            cursor.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                           "WHERE slot_name = %s", (self.slot,))

        import psycopg2.errors

        for attempt in tenacity.Retrying(stop=tenacity.stop_after_attempt(attempts), reraise=True,
                                         wait=tenacity.wait_exponential(multiplier=0.02, max=0.5),
                                         retry=tenacity.retry_if_exception_type(psycopg2.errors.ObjectInUse)):
            with attempt:
                drop()

    def drop_slot(self, publication: bool = True) -> None:
        """Drop the replication slot (it keeps WAL on the server until dropped) and, by default, the publication.
        The next run without a checkpoint starts with a new snapshot."""
        conn = self.settings.connect()
        try:
            conn.autocommit = True
            self.drop_slot_using(conn)
            if publication:
                conn.cursor().execute(f"DROP PUBLICATION IF EXISTS {_quote(self.publication)}")
        finally:
            conn.close()

    def snapshot_query(self, table: TableInfo, after_key: bool, limit: int) -> str:
        """The COPY of the next chunk of ``table`` in key order (with ``%s`` for the last key's text values)."""
        columns = ", ".join(_quote(c.name) for c in table.columns)
        keys = ", ".join(_quote(k) for k in table.key)
        where = ""
        if after_key:
            bounds = ", ".join(f"%s::{table.column(k).type_name}" for k in table.key)
            where = f" WHERE ({keys}) > ({bounds})"
        return (f"COPY (SELECT {columns} FROM {_quote(table.schema)}.{_quote(table.name)}{where} ORDER BY {keys} "
                f"LIMIT {limit}) TO STDOUT WITH (FORMAT csv)")

    # -- dead letters -----------------------------------------------------------------------------------------------
    def replay_dead_letters(self, letters: pa.RecordBatch) -> tuple[pa.RecordBatch | None, list[DeadLetter]]:
        """Decode dead-lettered changes again with this source's (rebuilt) schema: a stream change's payload is its
        pgoutput message and its key the Relation message it refers to; a snapshot row's payload is its text
        values as JSON."""
        layout = self.layout()
        tables = {t.qualified_name: t for t in self.table_info()}
        builder = BatchBuilder(layout, self.slot)
        snapshot_batches: list[pa.RecordBatch] = []
        times = letters.column("event_time").cast(pa.int64()).to_pylist()
        for i, row in enumerate(letters.select(["payload", "key", "partition", "position"]).to_pylist()):
            payload, key, position = row["payload"] or b"", row["key"], decode_position(row["position"])
            time_us = None if times[i] is None else times[i] * 1000
            builder.partition = row["partition"]
            try:
                if key is not None and key[:1] == b"R":
                    relation, change = pgoutput.decode(key), pgoutput.decode(payload)
                    if not isinstance(relation, pgoutput.Relation) or not isinstance(change, pgoutput.Change):
                        raise ValueError("not a pgoutput Relation and change")
                    assert isinstance(position, dict)
                    builder.add_change(relation, change, payload, pgoutput.parse_lsn(position["lsn"]),
                                       pgoutput.parse_lsn(position["commit_lsn"]), time_us)
                elif payload[:1] == b"{":
                    name, values = snapshot_rows(payload)
                    assert isinstance(position, dict)
                    if name not in tables:
                        raise ValueError(f"table {name} is not one of this source's tables {sorted(tables)}")
                    batch = builder.snapshot_batch(tables[name], text_table(values),
                                                   pgoutput.parse_lsn(position["snapshot_lsn"]), time_us or 0)
                    if batch is not None:
                        snapshot_batches.append(batch)
                else:
                    builder.dead((payload, key, position if isinstance(position, dict) else {}),
                                 DeadLetterReason.UNSUPPORTED, "not a change this source can replay (a TRUNCATE, or "
                                 "a message without its Relation)", time_us)
            except (ValueError, KeyError, TypeError, AssertionError) as exc:
                builder.dead((payload, key, {}), DeadLetterReason.BAD_FORMAT,
                             f"cannot decode the dead letter again: {exc}", time_us)
        streamed = builder.build()
        batches = [b for b in (*snapshot_batches, streamed) if b is not None]
        if not batches:
            return None, builder.take_dead()
        combined = pa.Table.from_batches(batches, schema=layout.schema).combine_chunks().to_batches()
        return (combined[0] if combined else None), builder.take_dead()
