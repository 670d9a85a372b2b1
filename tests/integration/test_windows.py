"""Nexmark q5, q7, q8 checked against DuckDB SQL over the same events, on both executors; and the window
semantics (assignment, watermarks, lateness, side output) as properties against a batch reference."""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.errors import ConfigError
from headwater.sources import NexmarkSource
from headwater.testing import TestingSink, TestingSource, read_source, run_local

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import nexmark_windowed as queries  # noqa: E402

EVENTS = 150_000
EVENT_RATE = 1_000.0  # 150 s of event time: 15 tumbling windows, ~75 sliding ones


def _source(table: str) -> NexmarkSource:
    return NexmarkSource(table, events=EVENTS, partitions=2, batch_size=4_000, event_rate=EVENT_RATE)


def _table(table: str) -> pa.Table:
    return read_source(_source(table))


@pytest.fixture(scope="module")
def events() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name in ("bid", "auction", "person"):
        con.register(name, _table(name))
    return con


def _ms(value) -> int:
    return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else int(value)


def test_q5_hot_items_match_duckdb(runner, events) -> None:
    out = TestingSink()
    flow = hw.Dataflow("q5")
    queries.q5(flow, _source("bid"), out)
    runner(flow, parallelism=2)
    got = sorted((_ms(r["window_start"]), _ms(r["window_end"]), r["auction"], r["num"]) for r in out.rows())
    expected = events.sql("""
        WITH b AS (SELECT auction, epoch_ms(date_time) AS t FROM bid),
        w AS (SELECT (t // 2000) * 2000 - k * 2000 AS ws, auction FROM b, range(5) r(k)
              WHERE (t // 2000) * 2000 - k * 2000 > t - 10000),
        c AS (SELECT ws, auction, count(*) AS num FROM w GROUP BY ALL),
        m AS (SELECT ws, max(num) AS maxn FROM c GROUP BY ws)
        SELECT c.ws, c.ws + 10000, c.auction, c.num FROM c JOIN m ON c.ws = m.ws AND c.num = m.maxn ORDER BY ALL
    """).fetchall()
    assert len(expected) > 50
    assert got == [tuple(r) for r in expected]


def test_q7_highest_bid_matches_duckdb(runner, events) -> None:
    out = TestingSink()
    flow = hw.Dataflow("q7")
    queries.q7(flow, _source("bid"), out)
    runner(flow, parallelism=2)
    got = {_ms(r["window_start"]): r for r in out.rows()}
    expected = events.sql("""
        WITH b AS (SELECT auction, bidder, price, (epoch_ms(date_time) // 10000) * 10000 AS ws FROM bid),
        m AS (SELECT ws, max(price) AS price FROM b GROUP BY ws)
        SELECT m.ws, m.price, list(struct_pack(auction := b.auction, bidder := b.bidder)) AS winners
        FROM m JOIN b ON b.ws = m.ws AND b.price = m.price GROUP BY m.ws, m.price ORDER BY m.ws
    """).fetchall()
    assert len(expected) >= 15 and sorted(got) == [r[0] for r in expected]
    for ws, price, winners in expected:
        row = got[ws]
        assert row["price"] == price and _ms(row["window_end"]) == ws + 10000
        assert {"auction": row["auction"], "bidder": row["bidder"]} in winners


def test_q8_new_users_match_duckdb(runner, events) -> None:
    out = TestingSink()
    flow = hw.Dataflow("q8")
    queries.q8(flow, _source("person"), _source("auction"), out)
    runner(flow, parallelism=2)
    got = sorted((r["id"], r["name"], _ms(r["window_start"])) for r in out.rows())
    expected = events.sql("""
        WITH p AS (SELECT DISTINCT id, name, (epoch_ms(date_time) // 10000) * 10000 AS ws FROM person),
        a AS (SELECT DISTINCT seller, (epoch_ms(date_time) // 10000) * 10000 AS ws FROM auction)
        SELECT p.id, p.name, p.ws FROM p JOIN a ON p.id = a.seller AND p.ws = a.ws ORDER BY ALL
    """).fetchall()
    assert len(expected) > 100
    assert got == [tuple(r) for r in expected]


# -- window semantics as properties -------------------------------------------------------------------------

SCHEMA = pa.schema([("k", pa.int64()), ("t", pa.int64()), ("v", pa.int64())])
SIZE, BOUND = 1_000, 300


def _reference(batches: list[list[dict]], lateness: int) -> tuple[dict, list[dict]]:
    """Tumbling windows per key with the engine's watermark rule: after each batch the watermark becomes
    (largest time so far - BOUND); a row is late when its window ended at least ``lateness`` ago."""
    results: dict = defaultdict(lambda: [0, 0])
    late = []
    watermark = None
    for batch in batches:
        for row in batch:
            start = (row["t"] // SIZE) * SIZE
            if watermark is not None and start + SIZE + lateness <= watermark:
                late.append(row)
                continue
            results[(row["k"], start)][0] += 1
            results[(row["k"], start)][1] += row["v"]
        if batch:
            latest = max(r["t"] for r in batch)
            candidate = latest - BOUND
            watermark = candidate if watermark is None else max(watermark, candidate)
    return {k: tuple(v) for k, v in results.items()}, late


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 3), st.integers(0, 8_000), st.integers(-5, 5)), min_size=1, max_size=12),
        min_size=1, max_size=10,
    ),
    st.sampled_from([0, 500]),
    st.sampled_from([1, 3]),
)
def test_tumbling_windows_and_late_records_match_reference(raw, lateness, parallelism) -> None:
    batches = [[{"k": k, "t": t, "v": v} for k, t, v in batch] for batch in raw]
    expected, expected_late = _reference(batches, lateness)
    flow = hw.Dataflow("props")
    out, late = TestingSink(), TestingSink()
    items = [pa.RecordBatch.from_pylist(b, schema=SCHEMA) for b in batches]
    stream = flow.source("in", TestingSource(items, schema=SCHEMA), event_time="t",
                         max_out_of_orderness=timedelta(milliseconds=BOUND))
    windows = stream.key_by("k").window(hw.TumblingWindow(milliseconds=SIZE),
                                        allowed_lateness=timedelta(milliseconds=lateness))
    result = windows.aggregate(step_id="w", n=hw.count(), total=hw.sum("v"))
    result.sink("out", out)
    result.late_records().sink("late", late)
    run_local(flow, parallelism=parallelism, watermark_interval=timedelta(0))

    latest = {}
    for row in out.rows():  # with lateness, a window may be re-emitted: the last row per window counts
        latest[(row["k"], row["window_start"])] = (row["n"], row["total"])
    assert latest == expected
    got_late = sorted((r["k"], r["t"], r["v"]) for r in late.rows())
    assert got_late == sorted((r["k"], r["t"], r["v"]) for r in expected_late)
    assert all(r["late_reason"] and r["lateness_ms"] > 0 for r in late.rows())


def test_sliding_windows_match_reference_for_any_order() -> None:
    rows = [{"k": i % 2, "t": (i * 7_919) % 20_000, "v": i} for i in range(400)]
    flow = hw.Dataflow("sliding")
    out = TestingSink()
    stream = flow.source("in", TestingSource(rows, batch_size=25, schema=SCHEMA), event_time="t",
                         max_out_of_orderness=timedelta(seconds=20))
    stream.key_by("k").window(hw.SlidingWindow(size=timedelta(seconds=3), slide=timedelta(seconds=1))).aggregate(
        n=hw.count(), top=hw.max("v")).sink("out", out)
    run_local(flow, parallelism=2)
    expected: dict = defaultdict(lambda: [0, None])
    for row in rows:
        for start in range((row["t"] // 1000) * 1000 - 2000, row["t"] + 1, 1000):
            if start <= row["t"] < start + 3000:
                entry = expected[(row["k"], start)]
                entry[0] += 1
                entry[1] = row["v"] if entry[1] is None else max(entry[1], row["v"])
    got = {(r["k"], r["window_start"]): [r["n"], r["top"]] for r in out.rows()}
    assert got == {k: v for k, v in expected.items()}
    assert len(out.rows()) == len(expected)  # no lateness: each window is emitted exactly once


# -- sessions and recovery ----------------------------------------------------------------------------------

def _session_rows() -> list[dict]:
    rows, t = [], 0
    for i in range(300):  # bursts per key with gaps of 100 ms inside and 2 s between bursts
        t += 2_000 if i % 25 == 0 else 100
        rows.append({"k": i % 3, "t": t + (i % 3), "v": i})
    return rows


def _session_reference(rows: list[dict], gap: int) -> list[tuple]:
    out = []
    for key in sorted({r["k"] for r in rows}):
        times = sorted((r["t"], r["v"]) for r in rows if r["k"] == key)
        start, last, n, total = times[0][0], times[0][0], 0, 0
        for t, v in times:
            if t - last >= gap:
                out.append((key, start, last + gap, n, total))
                start, n, total = t, 0, 0
            last = t
            n += 1
            total += v
        out.append((key, start, last + gap, n, total))
    return sorted(out)


def _session_flow(items: list, out: TestingSink) -> hw.Dataflow:
    flow = hw.Dataflow("sessions")
    stream = flow.source("in", TestingSource(items, batch_size=7, schema=SCHEMA), event_time="t",
                         max_out_of_orderness=timedelta(seconds=1))
    stream.key_by("k").window(hw.SessionWindow(gap=timedelta(milliseconds=500))).aggregate(
        step_id="sessions", n=hw.count(), total=hw.sum("v")).sink("out", out)
    return flow


def test_session_windows_merge_across_batches_and_recovery(runner, tmp_path: Path) -> None:
    rows = _session_rows()
    shuffled = sorted(rows, key=lambda r: (r["t"] // 700, -r["t"]))  # out of order within 700 ms
    items: list = []
    for i, row in enumerate(shuffled):
        items.append(row)
        if i % 40 == 39:
            items.append(TestingSource.PAUSE(0.03))
        if i == 150:
            items.append(TestingSource.ABORT())
    out = TestingSink()
    result = runner(_session_flow(items, out), parallelism=2,
                    checkpoint=hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=20)))
    assert result.restarts == 1
    got = sorted((r["k"], r["window_start"], r["window_end"], r["n"], r["total"]) for r in out.rows())
    assert got == _session_reference(rows, 500)


def test_recovery_mid_window_gives_identical_results(runner, tmp_path: Path) -> None:
    rows = [{"k": i % 5, "t": i * 37, "v": i} for i in range(2_000)]
    items: list = []
    for i, row in enumerate(rows):
        items.append(row)
        if i % 200 == 199:
            items.append(TestingSource.PAUSE(0.02))
        if i in (700, 1_450):
            items.append(TestingSource.ABORT())

    def build(source_items: list, out: TestingSink) -> hw.Dataflow:
        flow = hw.Dataflow("mid-window")
        stream = flow.source("in", TestingSource(source_items, batch_size=50, schema=SCHEMA), event_time="t")
        stream.key_by("k").window(hw.SlidingWindow(size=timedelta(seconds=3), slide=timedelta(seconds=1))).aggregate(
            step_id="w", n=hw.count(), top=hw.max("v"), first=hw.first("v")).sink("out", out)
        return flow

    clean, recovered = TestingSink(), TestingSink()
    runner(build(rows, clean), parallelism=2)
    result = runner(build(items, recovered), parallelism=2,
                    checkpoint=hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=20)))
    assert result.restarts == 2
    key = lambda r: (r["k"], r["window_start"])  # noqa: E731
    assert sorted(recovered.rows(), key=key) == sorted(clean.rows(), key=key)


def test_a_record_late_before_a_failure_is_late_after_recovery(runner, tmp_path: Path) -> None:
    """The watermark is part of the checkpoint: replayed records are judged against the same event time."""
    on_time = [{"k": k, "t": t, "v": 1} for t in range(0, 1_000, 100) for k in (1, 2)]
    late = [{"k": 1, "t": 150, "v": 7}, {"k": 2, "t": 999, "v": 8}]
    later = [{"k": k, "t": t, "v": 1} for t in range(5_000, 7_000, 100) for k in (1, 2)]

    def build(items: list, out: TestingSink, late_out: TestingSink) -> hw.Dataflow:
        flow = hw.Dataflow("late-after-recovery")
        stream = flow.source("in", TestingSource(items, batch_size=10, schema=SCHEMA), event_time="t")
        counts = stream.key_by("k").window(hw.TumblingWindow(seconds=1)).aggregate(step_id="w", n=hw.count())
        counts.sink("out", out)
        counts.late_records().sink("late", late_out)
        return flow

    # window [0, 1 s) fires during the first pause (checkpoints are taken then too); then the late rows; then
    # (in the second run) a crash, so that the late rows are read again from the checkpoint before them
    plain = [*on_time, {"k": 1, "t": 5_000, "v": 1}, TestingSource.PAUSE(0.3), *late, *later]
    scripted = [*plain[:-len(later)], TestingSource.ABORT(), *later]
    clean, clean_late = TestingSink(), TestingSink()
    runner(build(plain, clean, clean_late), parallelism=2)
    out, late_out = TestingSink(), TestingSink()
    result = runner(build(scripted, out, late_out), parallelism=2,
                    checkpoint=hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=20)))
    assert result.restarts == 1
    late_rows = sorted((r["k"], r["t"], r["late_reason"]) for r in late_out.rows())
    assert late_rows == sorted((r["k"], r["t"], r["late_reason"]) for r in clean_late.rows())
    assert [(k, t) for k, t, _ in late_rows] == [(1, 150), (2, 999)]
    key = lambda r: (r["k"], r["window_start"])  # noqa: E731
    assert sorted(out.rows(), key=key) == sorted(clean.rows(), key=key)


@pytest.mark.parametrize("window", [hw.TumblingWindow(seconds=1), hw.SlidingWindow(size=timedelta(seconds=2),
                                                                                  slide=timedelta(seconds=1))])
def test_count_distinct_in_keyed_windows_matches_a_reference(window, tmp_path: Path) -> None:
    rows = [{"k": i % 3, "t": i * 97, "v": (i * 7) % 11} for i in range(300)]
    items: list = [*rows[:150], TestingSource.ABORT(), *rows[150:]]
    flow = hw.Dataflow("distinct")
    stream = flow.source("in", TestingSource(items, batch_size=20, schema=SCHEMA), event_time="t")
    out = TestingSink()
    stream.key_by("k").window(window).aggregate(step_id="w", d=hw.count_distinct("v"), n=hw.count()).sink("out", out)
    result = run_local(flow, parallelism=2,
                       checkpoint=hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=5)))
    assert result.restarts == 1
    size, slide = (1_000, 1_000) if isinstance(window, hw.TumblingWindow) else (2_000, 1_000)
    expected: dict[tuple, set] = defaultdict(set)
    for r in rows:
        last = r["t"] - r["t"] % slide
        for start in range(last, r["t"] - size, -slide):
            expected[(r["k"], start)].add(r["v"])
    got = {(r["k"], r["window_start"]): r["d"] for r in out.rows()}
    assert got == {key: len(values) for key, values in expected.items()}


# -- regressions --------------------------------------------------------------------------------------------

def test_sliding_size_must_be_a_multiple_of_the_slide() -> None:
    with pytest.raises(ConfigError, match="multiple"):
        hw.SlidingWindow(size=timedelta(milliseconds=3), slide=timedelta(milliseconds=2))


def test_late_records_keep_every_column_and_missing_times_are_reported() -> None:
    schema = pa.schema([("k", pa.int64()), ("t", pa.int64()), ("v", pa.int64()), ("note", pa.string())])
    batches = [
        pa.RecordBatch.from_pylist([{"k": 1, "t": 5_000, "v": 1, "note": "a"}], schema=schema),
        pa.RecordBatch.from_pylist([{"k": 1, "t": 100, "v": 2, "note": "late"},
                                    {"k": 1, "t": None, "v": 3, "note": "no time"}], schema=schema),
    ]
    flow = hw.Dataflow("late-columns")
    out, late = TestingSink(), TestingSink()
    stream = flow.source("in", TestingSource(batches, schema=schema), event_time="t")
    result = stream.key_by("k").window(hw.TumblingWindow(seconds=1)).aggregate(n=hw.count())
    result.sink("out", out)
    result.late_records().sink("late", late)
    run_local(flow, watermark_interval=timedelta(0))
    rows = sorted(late.rows(), key=lambda r: r["v"])
    assert [(r["note"], r["late_reason"]) for r in rows] == [
        ("late", rows[0]["late_reason"]), ("no time", "missing event time")]
    assert "lateness" in rows[0]["late_reason"] and rows[0]["lateness_ms"] == 4_900
    assert [(r["window_start"], r["n"]) for r in out.rows()] == [(5_000, 1)]


def test_allowed_lateness_re_emits_only_windows_still_kept() -> None:
    rows = [{"k": 1, "t": t, "v": 1} for t in (100, 1_100, 2_100, 5_100, 1_200, 5_200)]
    flow = hw.Dataflow("refire")
    out = TestingSink()
    stream = flow.source("in", TestingSource(rows, batch_size=1, schema=SCHEMA), event_time="t")
    stream.key_by("k").window(hw.SlidingWindow(size=timedelta(seconds=2), slide=timedelta(seconds=1)),
                              allowed_lateness=timedelta(milliseconds=1_500)).aggregate(n=hw.count()).sink("out", out)
    run_local(flow, watermark_interval=timedelta(0))
    emitted = [(r["window_start"], r["n"]) for r in out.rows()]
    # the record at 1200 arrives at watermark 5100: window [0, 2000) ended 3100 ms before, beyond the 1500 ms
    # lateness, so it is not re-emitted; window [1000, 3000) ended 2100 ms before: also closed.
    assert (0, 3) not in emitted and (1_000, 3) not in emitted
    assert max(n for _, n in emitted) <= 2
