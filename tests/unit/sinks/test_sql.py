"""SqlSink on SQLite (a file in tmp_path): staging, upsert, idempotent commits, abort, clean-up, build-time checks,
and exactly-once through the engine. The same protocol against PostgreSQL is in tests/integration/test_sql.py."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

import headwater as hw
from headwater.core import plain_data
from headwater.engine.failures import is_transient
from headwater.errors import ConfigError, SinkError
from headwater.sinks import sql as sql_module
from headwater.sinks.base import SinkOwner
from headwater.sinks.sql import SqlCommitToken, SqlSink
from headwater.testing import TestingSource

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("x", pa.float64())])


def batch(ids: list[int], tag: str = "") -> pa.RecordBatch:
    return pa.record_batch([ids, [f"n{i}{tag}" for i in ids], [i / 2 for i in ids]], schema=SCHEMA)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sink.db'}"


def rows(url: str, table: str = "t") -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))]
    finally:
        engine.dispose()


def staged(url: str, table: str = "hw_staging_t") -> int:
    return len(rows(url, table))


def test_upsert_last_row_per_key_wins_and_commit_twice_is_a_no_op(url: str) -> None:
    sink = SqlSink(url, "t", key="id", max_buffered_rows=3)
    part = sink.build_part(0, 1)
    part.write(batch([1, 2]))
    part.write(batch([2, 3], "b"))  # spills (4 rows >= 3): in progress in staging
    part.write(batch([3], "c"))
    assert rows(url) == []  # nothing visible before commit
    token = part.prepare(1)
    assert token == SqlCommitToken("unchecked:t", 0, 1, token.writer, 5, ("id", "name", "x"))
    assert rows(url) == []
    part.commit(token)
    expected = [(1, "n1", 0.5), (2, "n2b", 1.0), (3, "n3c", 1.5)]
    assert rows(url) == expected and staged(url) == 0
    part.commit(token)  # again: no-op
    other = sink.build_part(0, 1)  # another process would do the same: a fresh partition
    other.commit(token)
    assert rows(url) == expected
    commits = rows(url, "headwater_sink_commits")
    assert [(c[0], c[1], c[2], c[3], c[4]) for c in commits] == [("unchecked:t", 0, 1, token.writer, 5)]
    part.write(batch([1], "again"))
    part.commit(part.prepare(2))
    assert rows(url)[0] == (1, "n1again", 0.5)
    part.close()


def test_token_is_plain_data_and_repr_hides_the_password(tmp_path: Path) -> None:
    token = SqlCommitToken("job-1:t", 3, 7, "abcd", 10, ("id",))
    assert plain_data.decode(json.loads(json.dumps(plain_data.encode(token)))) == token
    sink = SqlSink("postgresql+psycopg2://alice:s3cret@db.example:5432/prod", "t", key="id")
    assert "s3cret" not in repr(sink) and "s3cret" not in repr(sink.settings) and "***" in repr(sink)
    with pytest.raises(ConfigError) as info:
        SqlSink("nosuchdialect://alice:s3cret@host/db", "t", key="id")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("options, match", [
    ({"key": []}, "key must name"),
    ({"key": ["id", "id"]}, "key must name"),
    ({"max_buffered_rows": 0}, "max_buffered_rows"),
    ({"staging_table": "t"}, "three different tables"),
])
def test_bad_configuration_says_what_to_fix(url: str, options: dict, match: str) -> None:
    kwargs = {"key": "id", **options}
    with pytest.raises(ConfigError, match=match):
        SqlSink(url, "t", **kwargs)


def test_empty_prepare_commits_nothing(url: str) -> None:
    part = SqlSink(url, "t", key="id").build_part(0, 1)
    token = part.prepare(1)
    assert token.rows == 0
    part.commit(token)
    assert not sa.inspect(sa.create_engine(url)).has_table("t")


def test_abort_deletes_in_progress_rows_but_keeps_prepared_ones(url: str) -> None:
    sink = SqlSink(url, "t", key="id", max_buffered_rows=1)
    part = sink.build_part(0, 1)
    part.write(batch([1]))
    token = part.prepare(1)
    part.write(batch([2]))  # spilled, in progress
    crashed = sink.build_part(0, 1)  # a fresh incarnation of subtask 0 aborts what the crashed one left
    crashed.abort()
    assert staged(url) == 1
    sink.build_part(0, 1).commit(token)
    assert [r[0] for r in rows(url)] == [1] and staged(url) == 0


def test_clean_up_keeps_rows_of_tokens_and_other_jobs(url: str) -> None:
    mine = SqlSink(url, "t", key="id").staging_as(SinkOwner("job-mine", "/ckpt/mine"))
    theirs = SqlSink(url, "t", key="id").staging_as(SinkOwner("job-theirs", "/ckpt/theirs"))
    a, b, c = mine.build_part(0, 2), mine.build_part(1, 2), theirs.build_part(0, 1)
    for part, ids in ((a, [1]), (b, [2]), (c, [3])):
        part.write(batch(ids))
    kept, dropped, other = a.prepare(5), b.prepare(5), c.prepare(9)
    mine.clean_up([kept])  # b's checkpoint never completed
    assert staged(url) == 2
    mine.build_part(1, 2).commit(kept)
    with pytest.raises(SinkError, match="gone"):
        mine.build_part(1, 2).commit(dropped)
    theirs.build_part(0, 1).commit(other)
    assert [r[0] for r in rows(url)] == [1, 3]


def test_runs_without_checkpointing_reuse_checkpoint_1_and_both_commit(url: str) -> None:
    sink = SqlSink(url, "t", key="id")
    for ids in ([1, 2], [3]):
        part = sink.build_part(0, 1)
        part.write(batch(ids))
        part.commit(part.prepare(1))
        part.close()
    assert [r[0] for r in rows(url)] == [1, 2, 3]


def test_commit_of_lost_rows_fails_deterministically(url: str) -> None:
    part = SqlSink(url, "t", key="id").build_part(0, 1)
    part.write(batch([1]))
    token = part.prepare(1)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM hw_staging_t"))
    with pytest.raises(SinkError, match="gone") as info:
        part.commit(token)
    assert not is_transient(info.value)


def test_delete_insert_upsert_for_dialects_without_on_conflict(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_module, "ON_CONFLICT_DIALECTS", ())
    part = SqlSink(url, "t", key=["id", "name"]).build_part(0, 1)
    part.write(batch([1, 2]))
    part.commit(part.prepare(1))
    part.write(pa.record_batch([[1, 1], ["n1", "n1"], [7.0, 8.0]], schema=SCHEMA))
    part.commit(part.prepare(2))
    assert rows(url) == [(1, "n1", 8.0), (2, "n2", 1.0)]


def test_null_keys_are_refused(url: str) -> None:
    part = SqlSink(url, "t", key="id").build_part(0, 1)
    with pytest.raises(SinkError, match="null key column 'id'"):
        part.write(pa.record_batch([pa.array([1, None], pa.int64()), ["a", "b"], [1.0, 2.0]], schema=SCHEMA))


def test_target_is_checked_at_build_time(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(sa.text("CREATE TABLE nokey (id INTEGER, name TEXT, x REAL)"))
        conn.execute(sa.text("CREATE TABLE typed (id INTEGER PRIMARY KEY, name INTEGER, x REAL)"))
    for table, match in (("t", r"lacks \(it has id, name\)|column\(s\) \['x'\]"), ("nokey", "primary key or unique"),
                         ("typed", "column 'name' is INTEGER")):
        flow = hw.Dataflow("check")
        stream = flow.source("in", TestingSource([{"id": 1, "name": "a", "x": 1.0}], schema=SCHEMA))
        with pytest.raises(ConfigError, match=match) as info:
            stream.sink("out", SqlSink(url, table, key="id"))
        assert "step 'out'" in str(info.value)
    flow = hw.Dataflow("missing")
    with pytest.raises(ConfigError, match="does not exist"):
        flow.source("in", TestingSource([{"id": 1}], schema=SCHEMA)).sink(
            "out", SqlSink(url, "absent", key="id", create_table=False))
    with pytest.raises(ConfigError, match="key column"):
        hw.Dataflow("k").source("in", TestingSource([{"id": 1}], schema=SCHEMA)).sink("out", SqlSink(url, "t", key="k"))


def test_exactly_once_through_crashes_into_sqlite(url: str, tmp_path: Path) -> None:
    items: list = [{"id": i % 40, "name": f"v{i}", "x": float(i)} for i in range(120)]
    items[50:50] = [TestingSource.PAUSE(0.05), TestingSource.ABORT()]
    items[100:100] = [TestingSource.PAUSE(0.05), TestingSource.ABORT()]
    flow = hw.Dataflow("to-sqlite")
    flow.source("in", TestingSource(items, batch_size=7, schema=SCHEMA)).sink(
        "out", SqlSink(url, "t", key="id", max_buffered_rows=10))
    result = hw.run(flow, executor="local", checkpoint=hw.CheckpointConfig(
        dir=tmp_path / "ckpt", interval=timedelta(milliseconds=10), restart_delay=timedelta(0)))
    assert result.restarts == 2
    assert rows(url) == [(k, f"v{80 + k}", float(80 + k)) for k in range(40)]
    assert staged(url) == 0
