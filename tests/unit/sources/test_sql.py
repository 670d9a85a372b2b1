"""SqlSource on SQLite (a file in tmp_path): incremental reads, resume, bounded increments, tie-breakers, safety lag,
dead letters, lag and configuration errors. PostgreSQL runs in tests/integration/test_sql.py."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from headwater.core import plain_data
from headwater.errors import ConfigError
from headwater.sources.base import SourcePartition
from headwater.sources.sql import SqlPosition, SqlSource, decode_value, encode_value


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'source.db'}"


def execute(url: str, *statements: str, params: list[dict[str, Any]] | None = None) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement), params) if params else conn.execute(sa.text(statement))
    engine.dispose()


def insert(url: str, ids: range, ts: str = "2024-01-01 00:00:00.000000") -> None:
    execute(url, "INSERT INTO ev (id, ts, v, name) VALUES (:id, :ts, :v, :name)",
            params=[{"id": i, "ts": ts, "v": i * 10, "name": f"n{i}"} for i in ids])


@pytest.fixture
def events(url: str) -> str:
    execute(url, "CREATE TABLE ev (id INTEGER PRIMARY KEY, ts DATETIME NOT NULL, v INTEGER, name TEXT)")
    return url


def poll(part: SourcePartition, times: int = 50) -> list[int]:
    """Ids of what ``times`` polls return (without waiting for the poll interval)."""
    ids: list[int] = []
    for _ in range(times):
        try:
            batch = part.next_batch()
        except StopIteration:
            break
        if batch is not None:
            ids += batch.column("id").to_pylist()
    return ids


def test_schema_comes_from_the_reflected_table(events: str) -> None:
    source = SqlSource(events, "ev", cursor_column="id")
    assert source.schema() == pa.schema([("id", pa.int64()), ("ts", pa.timestamp("us")), ("v", pa.int64()),
                                         ("name", pa.string())])
    assert source.tie_breaker == () and source.list_parts() == ["sql:ev"] and not source.bounded
    assert SqlSource(events, "ev", cursor_column="ts", columns=["name"]).schema().names == ["name", "ts", "id"]


def test_incremental_reads_with_inserts_between_polls_and_resume(events: str) -> None:
    source = SqlSource(events, "ev", cursor_column="id", batch_size=4, poll_interval=0)
    part = source.build_part("sql:ev", None)
    assert part.next_batch() is None  # empty table: nothing yet, never blocks
    insert(events, range(1, 11))
    assert poll(part) == list(range(1, 11))
    insert(events, range(11, 14))
    assert poll(part) == [11, 12, 13]
    position = part.snapshot()
    assert position == SqlPosition(13, ())
    part.close()
    insert(events, range(14, 16))
    resumed = source.build_part("sql:ev", plain_data.decode(json.loads(json.dumps(plain_data.encode(position)))))
    assert poll(resumed) == [14, 15]  # only the newer rows
    resumed.close()


def test_poll_interval_makes_the_partition_sleep_not_spin(events: str) -> None:
    part = SqlSource(events, "ev", cursor_column="id", poll_interval=timedelta(seconds=30)).build_part("sql:ev", None)
    assert part.next_batch() is None
    wake = part.next_awake()
    assert wake is not None and wake > time.monotonic() + 20
    insert(events, range(1, 3))
    assert part.next_batch() is None  # not polled again before the interval


def test_bounded_reads_up_to_the_max_at_start_then_next_run_reads_the_next_increment(events: str) -> None:
    insert(events, range(1, 8))
    source = SqlSource(events, "ev", cursor_column="id", batch_size=3, poll_interval=0, bounded=True)
    part = source.build_part("sql:ev", None)
    first = part.next_batch()
    assert first is not None and first.column("id").to_pylist() == [1, 2, 3]
    insert(events, range(8, 10))  # after the start: not part of this run
    assert poll(part) == [4, 5, 6, 7]
    with pytest.raises(StopIteration):
        part.next_batch()
    assert part.snapshot() == SqlPosition(7, (), 7)
    midway = source.build_part("sql:ev", SqlPosition(5, (), 7))  # restored in the middle: same bound
    assert poll(midway) == [6, 7]
    assert poll(source.build_part("sql:ev", part.snapshot())) == [8, 9]  # finished: a new increment
    empty = SqlSource(events, "ev", cursor_column="id", bounded=True, poll_interval=0)
    execute(events, "DELETE FROM ev")
    with pytest.raises(StopIteration):
        empty.build_part("sql:ev", None).next_batch()


def test_tie_breaker_orders_equal_cursor_values_across_batches(events: str) -> None:
    for second in range(3):
        insert(events, range(second * 10 + 1, second * 10 + 8), ts=f"2024-01-01 00:00:0{second}.000000")
    source = SqlSource(events, "ev", cursor_column="ts", batch_size=3, poll_interval=0)
    assert source.tie_breaker == ("id",)  # the primary key, since ts is not unique
    part = source.build_part("sql:ev", None)
    seen = []
    for _ in range(3):  # stop inside the run of equal timestamps and resume from the position
        batch = part.next_batch()
        assert batch is not None
        seen += batch.column("id").to_pylist()
        part = source.build_part("sql:ev", part.snapshot())
    seen += poll(part)
    assert seen == [1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 21, 22, 23, 24, 25, 26, 27]
    assert isinstance(part.snapshot().cursor, tuple) and part.snapshot().tie == (27,)


def test_rows_that_do_not_convert_become_dead_letters(events: str) -> None:
    insert(events, range(1, 6))
    execute(events, "UPDATE ev SET v = 'oops' WHERE id = 3")  # SQLite keeps a string in an INTEGER column
    part = SqlSource(events, "ev", cursor_column="id", poll_interval=0).build_part("sql:ev", None)
    batch = part.next_batch()
    assert batch is not None and batch.column("id").to_pylist() == [1, 2, 4, 5]
    [letter] = part.take_dead_letters()
    assert letter.reason == "wrong_type" and "column 'v'" in letter.error and letter.partition == "sql:ev"
    assert json.loads(letter.payload)["v"] == "oops" and letter.position == SqlPosition(3, ())
    assert part.snapshot() == SqlPosition(5, ()) and part.take_dead_letters() == []


def test_safety_lag_reads_only_what_was_visible_that_long_ago(events: str) -> None:
    insert(events, range(1, 4))
    part = SqlSource(events, "ev", cursor_column="id", poll_interval=0, safety_lag=0.3).build_part("sql:ev", None)
    assert part.next_batch() is None  # max(id)=3 seen now; readable in 0.3 s
    insert(events, range(4, 6))
    time.sleep(0.35)
    batch = part.next_batch()
    assert batch is not None and batch.column("id").to_pylist() == [1, 2, 3]
    time.sleep(0.35)
    assert poll(part, 3) == [4, 5]


def test_lag_in_records_for_integer_cursors(events: str) -> None:
    insert(events, range(1, 11))
    part = SqlSource(events, "ev", cursor_column="id", batch_size=4, poll_interval=0).build_part("sql:ev", None)
    part.next_batch()
    lag = part.lag()
    assert lag is not None and lag.records == 6
    poll(part)
    lag = part.lag()
    assert lag is not None and lag.records == 0


def test_query_mode_needs_a_schema_and_a_tie_breaker(events: str) -> None:
    insert(events, range(1, 6))
    schema = pa.schema([("id", pa.int64()), ("double_v", pa.int64())])
    query = "SELECT id, v * 2 AS double_v FROM ev WHERE v > 10"
    with pytest.raises(ConfigError, match="schema="):
        SqlSource(events, query=query, cursor_column="id", tie_breaker=())
    with pytest.raises(ConfigError, match="tie_breaker"):
        SqlSource(events, query=query, cursor_column="id", schema=schema)
    source = SqlSource(events, query=query, cursor_column="id", schema=schema, tie_breaker=(), batch_size=2,
                       poll_interval=0, bounded=True)
    part = source.build_part("sql:query", None)
    batches = [part.next_batch(), part.next_batch()]
    assert [b.to_pydict() for b in batches if b is not None] == [{"id": [2, 3], "double_v": [40, 60]},
                                                                {"id": [4, 5], "double_v": [80, 100]}]


@pytest.mark.parametrize("options, match", [
    ({"table": "ev", "query": "SELECT 1"}, "not both"),
    ({"table": "nope"}, "does not exist"),
    ({"table": "ev", "cursor_column": "missing"}, "no column 'missing'"),
    ({"table": "ev", "columns": ["zzz"]}, "no column 'zzz'"),
    ({"table": "ev", "batch_size": 0}, "batch_size"),
    ({"table": "ev", "poll_interval": -1}, "poll_interval"),
    ({"table": "ev", "types": {"zzz": pa.string()}}, "unknown column"),
    ({"table": "nopk", "cursor_column": "ts"}, "tie_breaker"),
])
def test_bad_configuration_says_what_to_fix(events: str, options: dict[str, Any], match: str) -> None:
    execute(events, "CREATE TABLE nopk (ts DATETIME, v INTEGER)")
    kwargs = {"cursor_column": "id", **options}
    with pytest.raises(ConfigError, match=match):
        SqlSource(events, **kwargs)


def test_cursor_values_round_trip_as_plain_data() -> None:
    for value in (7, 1.5, "x", b"\x00", datetime(2024, 5, 6, 7, 8, 9, 123456), datetime(2024, 1, 1).date(),
                  timedelta(days=1, microseconds=3)):
        encoded = encode_value(value)
        assert decode_value(plain_data.decode(json.loads(json.dumps(plain_data.encode(encoded))))) == value
