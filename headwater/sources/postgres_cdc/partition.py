"""The one partition of a :class:`~headwater.sources.postgres_cdc.PostgresCdcSource`: snapshot, then stream.

Life of a partition (all of it inside :meth:`PostgresCdcPartition.next_batch`, which never waits for data)::

    setup      ensure the publication; without a resume position, (re)create the slot and import the snapshot it
               exports into a REPEATABLE READ transaction (this waits for transactions running at that moment)
    snapshot   read each table in primary-key order, one chunk (``COPY (SELECT ... WHERE key > last ORDER BY key
               LIMIT n)``) per call, as ``op = "r"`` rows
    stream     START_REPLICATION from the position's flush LSN; read_message() until the batch is full, the time
               budget is spent or nothing is there; Begin/Relation/Insert/Update/Delete/Commit are decoded here

Positions (:class:`PostgresCdcPosition`, plain data) say how far the partition got: the snapshot's table and last
key, then the commit LSN of the last transaction read and how many of its changes. A restored partition skips every
transaction committed at or below that LSN (PostgreSQL 15 may move a slot's confirmed position backwards after a
server restart, so the server alone would send some again), and the first changes of a transaction it had read
only partly. The slot's flush LSN is confirmed in :meth:`PostgresCdcPartition.on_checkpoint_complete` and never
earlier, so the slot keeps all WAL a restore could still need.

A lost connection (server restart, network) does not fail the job: the partition closes its connections, waits
(tenacity's exponential backoff with jitter, via :meth:`next_awake`, so the engine's loop is never blocked) and
reconnects, resuming from its own position; after ``reconnect_timeout`` it raises a transient ``SourceError`` and
the engine's restart policy takes over. A snapshot interrupted this way (or by a crash) resumes after its last key
in a new snapshot (see docs/connectors/postgres-cdc.md for what that means for concurrent writes).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import tenacity

from headwater.core import plain_data
from headwater.core.dead_letters import DeadLetter, DeadLetterReason
from headwater.errors import SourceError
from headwater.sources.base import SourceLag, SourcePartition
from headwater.sources.postgres_cdc import pgoutput
from headwater.sources.postgres_cdc.changes import BatchBuilder, TableInfo

if TYPE_CHECKING:
    from headwater.sources.postgres_cdc.source import PostgresCdcSource

log = logging.getLogger(__name__)


@plain_data.register(name="headwater.PostgresCdcPosition")
@dataclass(frozen=True)
class PostgresCdcPosition:
    """Where a PostgreSQL CDC partition resumes (plain data, stored in checkpoints).

    ``slot_lsn``/``snapshot_time_us``: the slot's consistent point and when the snapshot was taken.
    ``snapshot_table``: how many tables were read completely; ``snapshot_key``: the text of the last key read of
    the next one (``None``: from its start); ``snapshot_done``: streaming began.
    ``commit_lsn``: commit LSN of the last transaction read from the stream (0: none yet); ``changes``: how many
    of its changes were read; ``complete``: whether all of them were. ``flush_lsn``: end LSN of the last
    transaction read completely, what the slot may confirm once this position is checkpointed."""

    slot_lsn: int
    snapshot_time_us: int
    snapshot_table: int
    snapshot_key: tuple[str | None, ...] | None
    snapshot_done: bool
    commit_lsn: int
    changes: int
    complete: bool
    flush_lsn: int


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is gone (or the server is not ready): worth a reconnect. Besides
    libpq's connection errors, psycopg2 reports a replication stream broken by a server restart as a
    ``DatabaseError`` without an SQLSTATE ("no COPY in progress"); errors the server reports carry one."""
    import psycopg2

    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return True
    return isinstance(exc, psycopg2.DatabaseError) and getattr(exc, "pgcode", None) is None


class PostgresCdcPartition(SourcePartition):
    """See the module docstring. Built by :meth:`PostgresCdcSource.build_part`; holds connections, never pickled."""

    def __init__(self, source: PostgresCdcSource, part: str, tables: tuple[TableInfo, ...],
                 builder: BatchBuilder, resume: PostgresCdcPosition | None) -> None:
        self.source = source
        self.part = part
        self.tables = tables
        self.builder = builder
        self._fresh = resume is None
        start = resume or PostgresCdcPosition(0, 0, 0, None, not source.snapshot, 0, 0, True, 0)
        self._slot_lsn = start.slot_lsn
        self._snapshot_time_us = start.snapshot_time_us
        self._snapshot_table = start.snapshot_table
        self._snapshot_key = start.snapshot_key
        self._snapshot_done = start.snapshot_done
        self._commit_lsn = start.commit_lsn
        self._changes = start.changes
        self._complete = start.complete
        self._flush_lsn = start.flush_lsn
        self._confirmed = 0  # highest flush LSN confirmed to the server
        self._snapshot_conn: Any = None
        self._replication: Any = None
        self._cursor: Any = None
        self._relations: dict[int, pgoutput.Relation] = {}
        self._reading = False  # inside a transaction whose changes are read (not skipped)
        self._skip_first = 0
        self._index = 0
        self._last_commit_us: int | None = None
        self._idle = False
        self._retry_at: float | None = None
        self._failing_since: float | None = None
        self._attempt = 0
        self._wait = tenacity.wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2)

    # -- the protocol -----------------------------------------------------------------------------------------------
    def next_batch(self) -> pa.RecordBatch | None:
        if self._retry_at is not None and time.monotonic() < self._retry_at:
            return None
        try:
            if self._cursor is None and self._snapshot_conn is None:
                self._setup()
            if not self._snapshot_done:
                batch = self._snapshot_chunk()
            else:
                if self._cursor is None:
                    self._start_stream()
                return self._read_stream()
        except Exception as exc:
            if not _connection_lost(exc):
                self._close_connections()
                if isinstance(exc, SourceError):
                    raise
                raise SourceError(f"PostgresCdcSource slot {self.source.slot!r} at {self.source.settings.describe()}: "
                                  f"{type(exc).__name__}: {str(exc).strip()}", transient=False) from exc
            self._lost(exc)
            return None
        self._healthy()
        return batch

    def next_awake(self) -> float | None:
        return self._retry_at

    def snapshot(self) -> PostgresCdcPosition:
        return PostgresCdcPosition(self._slot_lsn, self._snapshot_time_us, self._snapshot_table, self._snapshot_key,
                                   self._snapshot_done, self._commit_lsn, self._changes, self._complete,
                                   self._flush_lsn)

    def take_dead_letters(self) -> list[DeadLetter]:
        return self.builder.take_dead()

    def on_checkpoint_complete(self, checkpoint_id: int, position: Any) -> None:
        if not isinstance(position, PostgresCdcPosition) or not position.snapshot_done:
            return  # during the snapshot the slot stays at its consistent point
        if position.flush_lsn <= self._confirmed:
            return
        self._confirmed = position.flush_lsn
        self._send_confirmation()

    def lag(self) -> SourceLag | None:
        now_us = time.time() * 1e6
        if not self._snapshot_done:
            return SourceLag(seconds=(now_us - self._snapshot_time_us) / 1e6 if self._snapshot_time_us else None)
        if self._idle or self._last_commit_us is None:
            return SourceLag(seconds=0.0 if self._idle else None)
        return SourceLag(seconds=(now_us - self._last_commit_us) / 1e6)

    def close(self) -> None:
        self._close_connections()

    # -- connections ------------------------------------------------------------------------------------------------
    def _close_connections(self) -> None:
        for conn in (self._snapshot_conn, self._replication):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing a broken connection may raise anything
                    pass
        self._snapshot_conn = self._replication = self._cursor = None
        self._reading = False

    def _lost(self, exc: BaseException) -> None:
        self._close_connections()
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self._attempt += 1
        waited = now - self._failing_since
        if waited > self.source.reconnect_timeout:
            raise SourceError(
                f"PostgresCdcSource: PostgreSQL at {self.source.settings.describe()} unreachable for {waited:.0f} s "
                f"({type(exc).__name__}: {str(exc).strip()[:200]}); the job restarts from its last checkpoint",
                transient=True) from exc
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = self._attempt
        delay = self._wait(state)
        self._retry_at = now + delay
        log.warning("PostgresCdcSource slot %r: connection to %s lost (%s: %s); reconnecting in %.2f s (attempt %d)",
                    self.source.slot, self.source.settings.describe(), type(exc).__name__, str(exc).strip()[:200],
                    delay, self._attempt)

    def _healthy(self) -> None:
        self._retry_at = self._failing_since = None
        self._attempt = 0

    def _setup(self) -> None:
        """Ensure the publication; create the slot (fresh start) and open the snapshot transaction."""
        conn = self.source.settings.connect()
        try:
            conn.autocommit = True
            self.source.ensure_publication(conn)
            exists = self.source.slot_exists(conn)
            if self._fresh:
                if exists:
                    log.warning("PostgresCdcSource: replication slot %r exists but the job has no position for it "
                                "(a first run or a restart before the first checkpoint): dropping and recreating it",
                                self.source.slot)
                    self.source.drop_slot_using(conn)
            elif not exists:
                raise SourceError(
                    f"PostgresCdcSource: replication slot {self.source.slot!r} no longer exists, so the changes after "
                    "the checkpoint are gone; start the job without its checkpoint to take a new snapshot",
                    transient=False)
        finally:
            conn.close()
        if self._fresh:
            self._create_slot()
        elif not self._snapshot_done:
            self._snapshot_conn = self.source.settings.connect()
            self._snapshot_conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            log.warning("PostgresCdcSource slot %r: resuming the snapshot of %s after key %r in a new snapshot",
                        self.source.slot, self.tables[self._snapshot_table].qualified_name, self._snapshot_key)

    def _create_slot(self) -> None:
        replication = self.source.settings.connect(replication=True)
        try:
            cursor = replication.cursor()
            export = "EXPORT_SNAPSHOT" if self.source.snapshot else "NOEXPORT_SNAPSHOT"
            cursor.execute(f'CREATE_REPLICATION_SLOT "{self.source.slot}" LOGICAL pgoutput {export}')
            _, consistent_point, snapshot_name, _ = cursor.fetchone()
            if self.source.snapshot:
                self._snapshot_conn = self.source.settings.connect()
                self._snapshot_conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
                self._snapshot_conn.cursor().execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
        finally:
            replication.close()
        lsn = pgoutput.parse_lsn(consistent_point)
        self._slot_lsn = self._flush_lsn = lsn
        self._snapshot_time_us = int(time.time() * 1e6)
        self._fresh = False
        log.info("PostgresCdcSource: created replication slot %r at %s", self.source.slot, consistent_point)

    # -- snapshot ---------------------------------------------------------------------------------------------------
    def _snapshot_chunk(self) -> pa.RecordBatch | None:
        if self._snapshot_table >= len(self.tables):
            self._snapshot_conn.commit()
            self._snapshot_conn.close()
            self._snapshot_conn = None
            self._snapshot_done = True
            return None
        table = self.tables[self._snapshot_table]
        limit = self.source.snapshot_chunk_rows
        cursor = self._snapshot_conn.cursor()
        query = self.source.snapshot_query(table, self._snapshot_key is not None, limit)
        if self._snapshot_key is not None:
            query = cursor.mogrify(query, self._snapshot_key).decode()
        buffer = io.BytesIO()
        cursor.copy_expert(query, buffer)
        names = [c.name for c in table.columns]
        if buffer.tell() == 0:
            text = pa.table({n: pa.array([], pa.binary()) for n in names})
        else:
            buffer.seek(0)
            text = pacsv.read_csv(
                buffer, read_options=pacsv.ReadOptions(column_names=names, use_threads=False,
                                                       block_size=max(1 << 20, buffer.getbuffer().nbytes + 1)),
                convert_options=pacsv.ConvertOptions(column_types={n: pa.binary() for n in names},
                                                     strings_can_be_null=True, quoted_strings_can_be_null=False,
                                                     null_values=[""]))
        if text.num_rows < limit:
            self._snapshot_table += 1
            self._snapshot_key = None
        else:
            last = text.slice(text.num_rows - 1)
            self._snapshot_key = tuple(_as_text(last.column(k)[0].as_py()) for k in table.key)
        return self.builder.snapshot_batch(table, text, self._slot_lsn, self._snapshot_time_us)

    # -- stream -----------------------------------------------------------------------------------------------------
    def _start_stream(self) -> None:
        self._replication = self.source.settings.connect(replication=True)
        cursor = self._replication.cursor()
        cursor.start_replication(slot_name=self.source.slot, decode=False, start_lsn=self._flush_lsn,
                                 options={"proto_version": "1", "publication_names": self.source.publication},
                                 status_interval=self.source.status_interval)
        self._cursor = cursor
        self._relations = {}
        self._reading = False
        log.info("PostgresCdcSource slot %r: streaming from %s (skipping transactions committed at or before %s)",
                 self.source.slot, pgoutput.format_lsn(self._flush_lsn), pgoutput.format_lsn(self._commit_lsn))
        self._send_confirmation()

    def _send_confirmation(self) -> None:
        if self._cursor is None or self._confirmed == 0:
            return  # sent when the stream (re)starts
        try:
            self._cursor.send_feedback(flush_lsn=self._confirmed, force=True)
        except Exception as exc:
            if not _connection_lost(exc):
                raise
            self._lost(exc)

    def _read_stream(self) -> pa.RecordBatch | None:
        builder = self.builder
        limit = self.source.batch_size
        deadline = time.monotonic() + self.source.poll_budget
        count = 0
        try:
            while len(builder) < limit:
                message = self._cursor.read_message()
                if message is None:
                    self._idle = True
                    break
                self._idle = False
                self._handle(message.payload, message.data_start)
                count += 1
                if count % 256 == 0 and time.monotonic() > deadline:
                    break
        except Exception as exc:
            if not _connection_lost(exc):
                raise
            self._lost(exc)  # what was read so far is emitted: the position covers it
        else:
            self._healthy()
        return builder.build()

    def _handle(self, payload: bytes, lsn: int) -> None:
        tag = payload[0]
        if tag in (73, 85, 68, 84):  # I U D T
            if not self._reading:
                return
            index = self._index
            self._index += 1
            if index < self._skip_first:
                return
            self._changes = index + 1
            self._change(payload, lsn)
        elif tag == 66:  # B
            begin = pgoutput.decode(payload)
            assert isinstance(begin, pgoutput.Begin)
            commit = begin.commit_lsn
            if commit < self._commit_lsn or (commit == self._commit_lsn and self._complete):
                self._reading = False  # read before: at or below the position
                return
            self._reading = True
            self._index = 0
            self._skip_first = self._changes if commit == self._commit_lsn else 0
            if commit != self._commit_lsn:
                self._commit_lsn, self._changes, self._complete = commit, 0, False
            self._last_commit_us = begin.commit_time_us
        elif tag == 67:  # C
            if self._reading:
                end = pgoutput.decode(payload)
                assert isinstance(end, pgoutput.Commit)
                self._complete = True
                self._flush_lsn = max(self._flush_lsn, end.end_lsn)
                self._reading = False
        elif tag == 82:  # R
            relation = pgoutput.decode(payload)
            assert isinstance(relation, pgoutput.Relation)
            self._relations[relation.oid] = relation

    def _change(self, payload: bytes, lsn: int) -> None:
        position = {"lsn": pgoutput.format_lsn(lsn), "commit_lsn": pgoutput.format_lsn(self._commit_lsn)}
        try:
            message = pgoutput.decode(payload)
        except pgoutput.PgOutputError as exc:
            self.builder.dead((payload, None, position), DeadLetterReason.BAD_FORMAT, str(exc), self._last_commit_us)
            return
        if isinstance(message, pgoutput.Truncate):
            names = [self._relations[o].qualified_name for o in message.oids if o in self._relations]
            self.builder.dead((payload, None, position), DeadLetterReason.UNSUPPORTED,
                              f"TRUNCATE of {', '.join(names) or 'a table'}: a changelog of rows cannot express it "
                              "(no deletes are emitted for the truncated rows); create the publication with "
                              "publish = 'insert, update, delete' to leave truncates out", self._last_commit_us)
            return
        assert isinstance(message, pgoutput.Change)
        relation = self._relations.get(message.oid)
        if relation is None:
            self.builder.dead((payload, None, position), DeadLetterReason.BAD_FORMAT,
                              f"change of relation {message.oid} before its Relation message", self._last_commit_us)
            return
        self.builder.add_change(relation, message, payload, lsn, self._commit_lsn, self._last_commit_us)


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
