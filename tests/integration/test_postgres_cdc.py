"""PostgresCdcSource against the real PostgreSQL (wal_level=logical): snapshot + stream, the lookup join taking the
changelog as it is, crashes at arbitrary points ending equal to a fault-free run, schema changes, dead letters and
their replay, and (chaos) a server restart mid-run.

Every test uses its own table, slot and publication (uuid suffix) and drops them, also when it fails: a slot left
behind keeps WAL on a server other engineers share.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg2
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.errors import SimulatedCrashError
from headwater.sinks.testing import TestingSink
from headwater.sources import PostgresCdcSource
from headwater.testing import TestingSource

pytestmark = pytest.mark.postgres


@dataclass(frozen=True)
class ServerControl:
    """Restarts the very PostgreSQL server the tests' DSN reaches (whichever checkout's services started it):
    ``pg_ctl`` from the server's own ``BINDIR`` on its own ``data_directory``, as the data directory's owner."""

    bindir: str
    data_dir: str

    @classmethod
    def of(cls, conn: Any) -> ServerControl:
        with conn.cursor() as cursor:
            cursor.execute("SELECT setting FROM pg_config WHERE name = 'BINDIR'")
            bindir = cursor.fetchone()[0]
            cursor.execute("SHOW data_directory")
            data_dir = cursor.fetchone()[0]
        return cls(bindir, data_dir)

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = [f"{self.bindir}/pg_ctl", "-D", self.data_dir, *args]
        if os.geteuid() == 0:
            owner = Path(self.data_dir).owner()
            command = ["runuser", "-u", owner, "--", *command]
        # -l: the server's output goes to a file, so it does not hold this process's pipes open
        return subprocess.run(command, check=check, capture_output=True, timeout=180, cwd="/")

    def restart(self) -> None:
        self.pg_ctl("-l", f"{self.data_dir}/restart-test.log", "-m", "fast", "-w", "-t", "120", "restart")

    def ensure_running(self) -> None:
        if self.pg_ctl("status", check=False).returncode != 0:
            self.pg_ctl("-l", f"{self.data_dir}/restart-test.log", "-w", "-t", "120", "start")


@dataclass
class Db:
    dsn: str
    suffix: str
    conn: Any
    sources: list[PostgresCdcSource] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)

    def sql(self, statement: str, params: Any = None) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(statement, params)

    def table(self, name: str, ddl: str) -> str:
        qualified = f"{name}_{self.suffix}"
        self.sql(f"CREATE TABLE {qualified} ({ddl})")
        self.tables.append(qualified)
        return qualified

    def source(self, tables: list[str], **options: Any) -> PostgresCdcSource:
        options.setdefault("slot", f"hw_test_{self.suffix}")
        options.setdefault("publication", f"hw_test_{self.suffix}")
        source = PostgresCdcSource(self.dsn, tables, **options)
        self.sources.append(source)
        return source


@pytest.fixture
def db(pg_dsn: str) -> Iterator[Db]:
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    state = Db(pg_dsn, uuid.uuid4().hex[:10], conn)
    try:
        yield state
    finally:
        for source in state.sources:
            try:
                source.drop_slot()
            except Exception as exc:  # a test that never created the slot
                print(f"drop_slot({source.slot}): {exc}")
        for table in state.tables:
            state.sql(f"DROP TABLE IF EXISTS {table}")
        conn.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def wait_for_slot(db: Db, slot: str) -> None:
    """Changes committed before the slot exists belong to the snapshot: the tests write after it."""
    def exists() -> bool:
        with db.conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            return cursor.fetchone() is not None

    wait_for(exists, what=f"slot {slot}")


def checkpointing(tmp_path: Path, name: str = "ckpt", **options: Any) -> hw.CheckpointConfig:
    return hw.CheckpointConfig(dir=tmp_path / name, interval=timedelta(milliseconds=20), restart_delay=timedelta(0),
                               **options)


def changes(sink: TestingSink) -> list[tuple[Any, ...]]:
    """(op, id, v) of every committed row, in (commit_lsn, lsn, arrival) order."""
    table = sink.table()
    if table is None:
        return []
    rows = table.to_pylist()
    return [(r["op"], r["id"], r["v"]) for r in rows]


def workload(db: Db, table: str, start: int, count: int) -> list[tuple[Any, ...]]:
    """Inserts, updates and deletes in small transactions; returns the changes the stream must carry."""
    expected: list[tuple[Any, ...]] = []
    for i in range(start, start + count):
        db.sql(f"INSERT INTO {table} VALUES (%s, %s)", (i, f"v{i}"))
        expected.append(("c", i, f"v{i}"))
        if i % 3 == 0:
            db.sql(f"UPDATE {table} SET v = %s WHERE id = %s", (f"w{i}", i))
            expected.append(("u", i, f"w{i}"))
        if i % 5 == 0:
            db.sql(f"DELETE FROM {table} WHERE id = %s", (i,))
            expected.append(("d", i, None))
    return expected


def run_capture(db: Db, source: PostgresCdcSource, tmp_path: Path, expected_rows: int, *,
                during: Callable[[TestingSink], Any],
                flow_extra: Callable[[hw.Stream], hw.Stream] | None = None, executor: str = "local",
                max_restarts: int = 3) -> tuple[TestingSink, TestingSink, hw.JobResult]:
    out, dead = TestingSink(), TestingSink()
    flow = hw.Dataflow(f"cdc_{db.suffix}")
    stream = flow.source("cdc", source)
    (flow_extra(stream) if flow_extra else stream).sink("out", out)
    stream.dead_letters().sink("dead", dead)
    job = hw.start(flow, executor=executor, checkpoint=checkpointing(tmp_path, max_restarts=max_restarts))
    try:
        wait_for_slot(db, source.slot)
        during(out)
        wait_for(lambda: len(changes(out)) >= expected_rows, what=f"{expected_rows} rows")
        time.sleep(0.1)
    finally:
        job.stop()
        result = job.wait(60)
    return out, dead, result


def test_snapshot_then_stream_on_both_executors(db: Db, tmp_path: Path, runner: Any) -> None:
    """Both executors (the ray param runs under flock): snapshot rows as "r", then the workload's changes."""
    table = db.table("users", "id int PRIMARY KEY, v text")
    db.sql(f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, 30) g")
    source = db.source([table], snapshot_chunk_rows=7)
    executor = "ray" if runner.__name__ == "run_on_ray" else "local"

    def during(out: TestingSink) -> None:
        wait_for(lambda: len(changes(out)) >= 30, what="the snapshot")  # see crash_run
        workload(db, table, 100, 12)

    out, dead, _ = run_capture(db, source, tmp_path, 30 + len(workload_expectation(100, 12)), executor=executor,
                               during=during)
    got = changes(out)
    assert got[:30] == [("r", i, f"v{i}") for i in range(1, 31)]
    assert got[30:] == workload_expectation(100, 12)
    assert dead.table() is None or dead.table().num_rows == 0


def workload_expectation(start: int, count: int) -> list[tuple[Any, ...]]:
    expected: list[tuple[Any, ...]] = []
    for i in range(start, start + count):
        expected.append(("c", i, f"v{i}"))
        if i % 3 == 0:
            expected.append(("u", i, f"w{i}"))
        if i % 5 == 0:
            expected.append(("d", i, None))
    return expected


def test_lookup_join_takes_the_changelog_as_it_is(db: Db, tmp_path: Path) -> None:
    users = db.table("users", "id int PRIMARY KEY, name text, tier int")
    db.sql(f"INSERT INTO {users} SELECT g, 'user-' || g, 1 FROM generate_series(0, 9) g")
    source = db.source([users])
    out = TestingSink()
    flow = hw.Dataflow(f"enrich_{db.suffix}")
    table = flow.source("users", source)
    orders = pa.schema([("order", pa.int64()), ("user_id", pa.int32())])
    probe = TestingSource([TestingSource.PAUSE(4.0), *({"order": i, "user_id": i % 12} for i in range(24))],
                          schema=orders, batch_size=4)
    flow.source("orders", probe).lookup_join(table, on="user_id", table_key="id", changelog_op="op",
                                             columns=["name", "tier"]).sink("out", out)
    job = hw.start(flow, executor="local", checkpoint=checkpointing(tmp_path))
    try:
        wait_for_slot(db, source.slot)
        time.sleep(0.5)
        db.sql(f"UPDATE {users} SET name = 'renamed', tier = 2 WHERE id = 3")
        db.sql(f"DELETE FROM {users} WHERE id = 4")
        db.sql(f"INSERT INTO {users} VALUES (10, 'user-10', 3)")
        wait_for(lambda: len(out.rows()) >= 24, timeout=40, what="24 enriched orders")
    finally:
        job.stop()
        job.wait(60)
    got = {r["order"]: (r["name"], r["tier"]) for r in out.rows()}
    expected = {}
    for i in range(24):
        uid = i % 12
        expected[i] = {3: ("renamed", 2), 4: (None, None), 10: ("user-10", 3), 11: (None, None)}.get(
            uid, (f"user-{uid}", 1))
    assert got == expected


class CrashOnce:
    """A map UDF that raises once, when it sees row ``at`` of the stream (counted across attempts on disk)."""

    def __init__(self, marker: str, at: int) -> None:
        self.marker, self.at = marker, at

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        path = Path(self.marker)
        seen = int(path.read_text()) if path.exists() else 0
        if seen >= 0 and seen + batch.num_rows > self.at:
            path.write_text("-1")  # crashed once: never again
            raise SimulatedCrashError(f"injected crash at row {self.at}")  # transient: the job restarts
        if seen >= 0:
            path.write_text(str(seen + batch.num_rows))
        return batch


def crash_run(db: Db, tmp_path: Path, kill_at: int, snapshot_rows: int = 20, stream_count: int = 15) -> None:
    table = db.table("crash", "id int PRIMARY KEY, v text")
    db.sql(f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, %s) g", (snapshot_rows,))
    source = db.source([table], snapshot_chunk_rows=6, batch_size=4)
    marker = str(tmp_path / f"crash-{kill_at}")
    expected_stream = workload_expectation(1000, stream_count)
    expected = [("r", i, f"v{i}") for i in range(1, snapshot_rows + 1)] + expected_stream

    def during(out: TestingSink) -> None:
        # Writes begin once the snapshot is committed: a crash before the first checkpoint recreates the slot, and
        # a snapshot resumed after a crash reads a newer snapshot, so writes during the snapshot would legitimately
        # show up differently (docs/connectors/postgres-cdc.md); crashes during the stream do not change a thing.
        wait_for(lambda: len(changes(out)) >= snapshot_rows, what="the snapshot")
        workload(db, table, 1000, stream_count)

    out, _, result = run_capture(
        db, source, tmp_path, len(expected), during=during,
        flow_extra=lambda s: s.map_batches(CrashOnce(marker, kill_at), output_schema=source.schema()))
    assert result.restarts == 1
    assert changes(out) == expected  # nothing lost, nothing duplicated, in order


def test_a_crash_mid_stream_ends_equal_to_a_fault_free_run(db: Db, tmp_path: Path) -> None:
    crash_run(db, tmp_path, kill_at=27)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kill_at=st.integers(min_value=1, max_value=42))  # 20 snapshot rows + 23 changes
def test_crash_at_any_point_ends_equal_to_a_fault_free_run(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory,
                                                           kill_at: int) -> None:
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    state = Db(pg_dsn, uuid.uuid4().hex[:10], conn)
    try:
        crash_run(state, tmp_path_factory.mktemp("kill"), kill_at)
    finally:
        for source in state.sources:
            source.drop_slot()
        for table in state.tables:
            state.sql(f"DROP TABLE IF EXISTS {table}")
        conn.close()


def test_add_column_arrives_in_added_columns_and_at_top_level_after_a_rebuild(db: Db, tmp_path: Path) -> None:
    table = db.table("evolve", "id int PRIMARY KEY, v text")
    source = db.source([table])

    def alter(_: TestingSink) -> None:
        db.sql(f"INSERT INTO {table} VALUES (1, 'a')")
        db.sql(f"ALTER TABLE {table} ADD COLUMN score int")
        db.sql(f"INSERT INTO {table} VALUES (2, 'b', 7)")

    out, _, _ = run_capture(db, source, tmp_path, 2, during=alter)
    rows = out.rows()
    assert [(r["id"], r["added_columns"]) for r in rows] == [(1, None), (2, [("score", "7")])]
    # the job is rebuilt (a new source object reads the table's schema again) and resumes from its checkpoint
    rebuilt = PostgresCdcSource(db.dsn, [table], slot=source.slot, publication=source.publication)
    assert "score" in rebuilt.schema().names
    out2, _, _ = run_capture(db, rebuilt, tmp_path, 1, during=lambda _: db.sql(f"INSERT INTO {table} VALUES (3, 'c', 9)"))
    assert [(r["op"], r["id"], r["score"], r["added_columns"]) for r in out2.rows()] == [("c", 3, 9, None)]


def test_unconvertible_values_and_dropped_columns_become_replayable_dead_letters(db: Db, tmp_path: Path) -> None:
    table = db.table("bad", "id int PRIMARY KEY, v text, at timestamptz")
    db.sql(f"INSERT INTO {table} VALUES (0, 'snapshot', now())")
    source = db.source([table])

    def changes_with_problems() -> None:
        db.sql(f"INSERT INTO {table} VALUES (1, 'ok', '2026-01-01T00:00:00Z')")
        db.sql(f"INSERT INTO {table} VALUES (2, 'inf', 'infinity')")
        db.sql(f"ALTER TABLE {table} DROP COLUMN at")
        db.sql(f"INSERT INTO {table} VALUES (3, 'after drop')")
        db.sql(f"INSERT INTO {table} VALUES (4, 'last')")

    out = TestingSink()
    dead = TestingSink()
    flow = hw.Dataflow(f"dead_{db.suffix}")
    stream = flow.source("cdc", source)
    stream.sink("out", out)
    stream.dead_letters().sink("dead", dead)
    job = hw.start(flow, executor="local", checkpoint=checkpointing(tmp_path))
    try:
        wait_for(lambda: len(out.rows()) >= 1, what="the snapshot")  # the DROP COLUMN must come after it
        changes_with_problems()
        wait_for(lambda: dead.table() is not None and dead.table().num_rows >= 3, what="3 dead letters")
    finally:
        job.stop()
        job.wait(60)
    assert [r["id"] for r in out.rows()] == [0, 1]
    letters = dead.table()
    assert letters.column("reason").to_pylist() == ["wrong_type", "unsupported", "unsupported"]
    assert "'infinity' is not a valid timestamp" in letters.column("error")[0].as_py()
    assert "column 'at' was dropped or renamed" in letters.column("error")[1].as_py()
    assert all(p.startswith(b"I") for p in letters.column("payload").to_pylist())
    # after a rebuild (the table no longer has the column) every letter decodes: the 'infinity' row's relation
    # still has 'at', which the rebuilt schema lacks, so its text arrives in added_columns
    rebuilt = PostgresCdcSource(db.dsn, [table], slot=source.slot, publication=source.publication)
    good, again = rebuilt.replay_dead_letters(letters.combine_chunks().to_batches()[0])
    assert again == []
    assert good is not None and good.column("id").to_pylist() == [2, 3, 4]
    assert good.column("added_columns").to_pylist() == [[("at", "infinity")], None, None]
    assert good.column("lsn").to_pylist() == sorted(good.column("lsn").to_pylist())


@pytest.mark.chaos
@pytest.mark.slow
def test_a_postgres_restart_mid_run_reconnects_and_resumes_from_its_own_lsn(db: Db, tmp_path: Path) -> None:
    """The one test that restarts the shared server (briefly); it is started again even when the test fails."""
    table = db.table("restart", "id int PRIMARY KEY, v text")
    source = db.source([table], reconnect_timeout=120)
    server = ServerControl.of(db.conn)
    writer_error: list[BaseException] = []

    def during() -> None:
        workload(db, table, 1, 10)
        time.sleep(0.5)
        server.restart()
        conn = None
        deadline = time.monotonic() + 60
        while conn is None:
            try:
                conn = psycopg2.connect(db.dsn)
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        conn.autocommit = True
        db.conn = conn
        workload(db, table, 11, 10)

    def background() -> None:
        try:
            during()
        except BaseException as exc:  # noqa: BLE001 - reported below
            writer_error.append(exc)

    thread = threading.Thread(target=background)
    try:
        out, _, result = run_capture(db, source, tmp_path, len(workload_expectation(1, 20)),
                                     during=lambda _: thread.start())
    finally:
        thread.join(240)
        server.ensure_running()
    assert not writer_error, writer_error
    assert changes(out) == workload_expectation(1, 20)
    assert result.restarts == 0  # the source reconnected by itself
