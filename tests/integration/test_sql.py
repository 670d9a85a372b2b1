"""SqlSource and SqlSink against the real PostgreSQL: exactly-once under crashes (both executors, and hypothesis
over kill points), commits from another process and after a crash between checkpoint and commit, and a
SqlSource → pipeline → SqlSink round trip with PostgreSQL's types. Every test uses tables of its own (uuid
suffix) and drops them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.core import plain_data
from headwater.errors import SimulatedCrashError
from headwater.sinks.sql import SqlCommitToken, SqlSink, SqlSinkPartition
from headwater.sources.sql import SqlSource
from headwater.testing import TestingSink, TestingSource

pytestmark = pytest.mark.postgres

ABORT, PAUSE = TestingSource.ABORT, TestingSource.PAUSE
SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("x", pa.float64())])


class Tables:
    """Unique table names for one test; drops them (and their sinks' commit rows) at the end."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.engine = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
        self.names: list[str] = []

    def new(self, prefix: str = "t") -> str:
        name = f"hw_{prefix}_{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        return name

    def execute(self, statement: str, params: Any = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(statement), params) if params is not None else conn.execute(sa.text(statement))

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))]

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())

    def drop(self) -> None:
        with self.engine.begin() as conn:
            for name in self.names:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
                conn.execute(sa.text(f"DROP TABLE IF EXISTS hw_staging_{name}"))
                if sa.inspect(conn).has_table("headwater_sink_commits"):
                    conn.execute(sa.text("DELETE FROM headwater_sink_commits WHERE sink_id LIKE :p"),
                                 {"p": f"%:{name}"})
        self.engine.dispose()


@pytest.fixture
def tables(pg_dsn: str) -> Iterator[Tables]:
    made = Tables(pg_dsn)
    yield made
    made.drop()


def checkpointing(directory: Path, **options: Any) -> hw.CheckpointConfig:
    return hw.CheckpointConfig(dir=directory, interval=timedelta(milliseconds=10), restart_delay=timedelta(0),
                               **options)


def partitions_of(n: int, parts: int = 2) -> list[list[Any]]:
    """Rows whose keys are disjoint between partitions (each key reaches one sink subtask), updated several times."""
    return [[{"id": p * 1000 + i % 25, "name": f"p{p}-v{i}", "x": float(i)} for i in range(n)] for p in range(parts)]


def expected_rows(partitions: list[list[Any]]) -> list[tuple[Any, ...]]:
    last: dict[int, tuple[Any, ...]] = {}
    for part in partitions:
        for row in part:
            last[row["id"]] = (row["id"], row["name"], row["x"])
    return sorted(last.values())


def with_markers(partitions: list[list[Any]], aborts: dict[int, list[int]]) -> list[list[Any]]:
    out = []
    for p, part in enumerate(partitions):
        items: list[Any] = list(part)
        for position in sorted(aborts.get(p, []), reverse=True):
            items[position:position] = [PAUSE(0.03), ABORT()]
        out.append(items)
    return out


def to_sql(items: list[list[Any]], sink: SqlSink, name: str = "to-pg") -> hw.Dataflow:
    flow = hw.Dataflow(name)
    flow.source("in", TestingSource(partitions=items, batch_size=5, schema=SCHEMA)).sink("out", sink)
    return flow


def test_exactly_once_with_aborts_equals_a_clean_run(runner: Any, tables: Tables, tmp_path: Path) -> None:
    data = partitions_of(80)
    clean, crashed = tables.new("clean"), tables.new("crashed")
    runner(to_sql(data, SqlSink(tables.dsn, clean, key="id")), parallelism=2)
    result = runner(to_sql(with_markers(data, {0: [30], 1: [55]}), SqlSink(tables.dsn, crashed, key="id",
                                                                          max_buffered_rows=7)),
                    parallelism=2, checkpoint=checkpointing(tmp_path / "ckpt", max_restarts=4))
    assert result.restarts >= 1
    assert tables.rows(crashed) == tables.rows(clean) == expected_rows(data)
    assert tables.count(f"hw_staging_{crashed}") == 0


def test_a_token_prepared_here_commits_in_another_process(tables: Tables) -> None:
    table = tables.new()
    sink = SqlSink(tables.dsn, table, key="id")
    part = sink.build_part(0, 1)
    part.write(pa.record_batch([[1, 2], ["a", "b"], [1.0, 2.0]], schema=SCHEMA))
    token = part.prepare(3)
    part.close()
    script = (
        "import json, sys\n"
        "from headwater.core import plain_data\n"
        "from headwater.sinks.sql import SqlSink\n"
        "dsn, table, token = sys.argv[1], sys.argv[2], plain_data.decode(json.loads(sys.argv[3]))\n"
        "part = SqlSink(dsn, table, key='id').build_part(token.subtask, 1)\n"
        "part.commit(token); part.commit(token); part.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for _ in range(2):  # the second process finds it committed: a no-op
        subprocess.run([sys.executable, "-c", script, tables.dsn, table, json.dumps(plain_data.encode(token))],
                       check=True, env=env, timeout=60)
    assert tables.rows(table) == [(1, "a", 1.0), (2, "b", 2.0)]
    assert tables.count(f"hw_staging_{table}") == 0


# -- kill points inside the sink -----------------------------------------------------------------------------------
KILL_POINTS = ("prepare_before", "prepare_after", "commit_before", "commit_after")


class _KillingPartition(SqlSinkPartition):
    def __init__(self, sink: KillingSqlSink, index: int) -> None:
        super().__init__(sink, index)
        self._killing = sink

    def _maybe_kill(self, point: str) -> None:
        sink = self._killing
        if sink.point != point:
            return
        counter = Path(sink.marker_dir, f"{point}-{self._index}")
        seen = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(seen + 1))
        if seen + 1 == sink.occurrence:
            raise SimulatedCrashError(f"killed at {point} #{sink.occurrence}")

    def prepare(self, checkpoint_id: int) -> SqlCommitToken:
        self._maybe_kill("prepare_before")
        token = super().prepare(checkpoint_id)
        self._maybe_kill("prepare_after")
        return token

    def commit(self, token: SqlCommitToken) -> None:
        self._maybe_kill("commit_before")
        super().commit(token)
        self._maybe_kill("commit_after")  # committed in the database; the engine does not know


class KillingSqlSink(SqlSink):
    """A SqlSink that raises once at ``point`` (the ``occurrence``-th time a subtask gets there)."""

    def __init__(self, *args: Any, point: str, occurrence: int, marker_dir: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.point, self.occurrence, self.marker_dir = point, occurrence, marker_dir

    def build_part(self, index: int, count: int) -> SqlSinkPartition:
        return _KillingPartition(self, index)


@pytest.mark.chaos
def test_crash_after_the_checkpoint_completed_and_before_the_commit(tables: Tables, tmp_path: Path) -> None:
    """The first commit dies before touching the database; recovery (settle_sinks, in the driver) commits it."""
    data = partitions_of(60, parts=1)
    table = tables.new()
    sink = KillingSqlSink(tables.dsn, table, key="id", point="commit_before", occurrence=1, marker_dir=str(tmp_path))
    result = hw.run(to_sql(with_markers(data, {0: [40]}), sink), executor="local",
                    checkpoint=checkpointing(tmp_path / "ckpt", max_restarts=4))
    assert result.restarts >= 1
    assert tables.rows(table) == expected_rows(data)


@dataclass(frozen=True)
class Script:
    aborts: dict[int, list[int]]
    point: str | None
    occurrence: int


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    aborts = {p: sorted(draw(st.sets(st.integers(1, 39), max_size=1))) for p in range(2)}
    point = draw(st.sampled_from((None, *KILL_POINTS)))
    return Script(aborts, point, draw(st.integers(1, 3)))


@pytest.mark.chaos
@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(script=scripts())
def test_any_kill_point_ends_with_the_output_of_a_clean_run(tables: Tables, tmp_path_factory: pytest.TempPathFactory,
                                                            script: Script) -> None:
    data = partitions_of(40)
    table = tables.new("kill")
    work = tmp_path_factory.mktemp("kill")
    sink: SqlSink
    if script.point is None:
        sink = SqlSink(tables.dsn, table, key="id", max_buffered_rows=6)
    else:
        sink = KillingSqlSink(tables.dsn, table, key="id", max_buffered_rows=6, point=script.point,
                              occurrence=script.occurrence, marker_dir=str(work))
    flow = to_sql(with_markers(data, script.aborts), sink)
    for _ in range(3):  # a kill inside recovery's commits (in the driver) ends the run: run it again, as an operator would
        try:
            hw.run(flow, executor="local", parallelism=2, checkpoint=checkpointing(work / "ckpt", max_restarts=6))
            break
        except SimulatedCrashError:
            continue
    assert tables.rows(table) == expected_rows(data)
    assert tables.count(f"hw_staging_{table}") == 0


# -- SqlSource on PostgreSQL -----------------------------------------------------------------------------------------
def test_round_trip_source_pipeline_sink_with_postgres_types(tables: Tables, tmp_path: Path) -> None:
    src, dst = tables.new("src"), tables.new("dst")
    tables.execute(f"CREATE TABLE {src} (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL, amount NUMERIC(12, 2), "
                   "big NUMERIC, ok BOOLEAN, score DOUBLE PRECISION, note TEXT, tag UUID, doc JSONB, raw BYTEA)")
    at = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    rows = [{"at": at + timedelta(seconds=i), "amount": Decimal(f"{i}.25"), "big": Decimal(10) ** (40 if i == 4 else 3),
             "ok": i % 2 == 0, "score": i / 3, "note": f"row {i}", "tag": str(uuid.UUID(int=i)),
             "doc": json.dumps({"i": i}), "raw": bytes([i])} for i in range(1, 31)]
    tables.execute(f"INSERT INTO {src} (at, amount, big, ok, score, note, tag, doc, raw) VALUES (:at, :amount, :big, "
                   ":ok, :score, :note, :tag, CAST(:doc AS JSONB), :raw)", rows)
    source = SqlSource(tables.dsn, src, cursor_column="id", bounded=True, batch_size=7, poll_interval=0)
    assert source.schema().field("at").type == pa.timestamp("us", tz="UTC")
    assert source.schema().field("amount").type == pa.decimal128(12, 2)
    flow = hw.Dataflow("round-trip")
    stream = flow.source("read", source)
    stream.filter(hw.col("ok")).sink("write", SqlSink(tables.dsn, dst, key="id"))
    dead = TestingSink()
    stream.dead_letters().sink("dead", dead)
    hw.run(flow, executor="local", checkpoint=checkpointing(tmp_path / "ckpt"))
    got = tables.rows(dst)
    assert [r[0] for r in got] == [i for i in range(2, 31, 2) if i != 4]
    first = got[0]
    assert first[1] == at + timedelta(seconds=2) and first[2] == Decimal("2.25") and first[6] == "row 2"
    assert first[7] == str(uuid.UUID(int=2)) and json.loads(first[8]) == {"i": 2} and bytes(first[9]) == b"\x02"
    [letter] = dead.rows()  # 10**40 does not fit the unconstrained NUMERIC's decimal128(38, 10)
    assert letter["reason"] == "wrong_type" and "column 'big'" in letter["error"]

    # resume from the checkpoint: the next bounded run reads only rows inserted since
    tables.execute(f"INSERT INTO {src} (at, ok) VALUES (:at, true)", [{"at": at}, {"at": at}])
    hw.run(flow, executor="local", checkpoint=checkpointing(tmp_path / "ckpt"))
    assert [r[0] for r in tables.rows(dst)][-3:] == [30, 31, 32]
    assert len(dead.rows()) == 1


def test_unbounded_source_reads_rows_inserted_while_it_runs(tables: Tables) -> None:
    table = tables.new("live")
    tables.execute(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, v TEXT)")
    tables.execute(f"INSERT INTO {table} VALUES (:id, :v)", [{"id": i, "v": f"v{i}"} for i in range(5)])
    source = SqlSource(tables.dsn, table, cursor_column="id", poll_interval=0.05)
    part = source.build_part(source.list_parts()[0], None)
    seen: list[int] = []
    for round_ in range(3):
        for _ in range(40):
            batch = part.next_batch()
            if batch is not None:
                seen += batch.column("id").to_pylist()
            elif part.next_awake() is not None:
                break
        next_id = 5 + round_ * 3
        tables.execute(f"INSERT INTO {table} VALUES (:id, :v)", [{"id": i, "v": "x"} for i in range(next_id, next_id + 3)])
        time.sleep(0.06)
    seen += [i for _ in range(5) for b in [part.next_batch()] if b is not None for i in b.column("id").to_pylist()]
    part.close()
    assert seen == list(range(14))
