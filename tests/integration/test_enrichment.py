"""Deduplication, lookup (enrichment) joins, interval joins and early window results — on both executors."""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headwater as hw
from headwater.errors import SourceError
from headwater.testing import TestingSink, TestingSource

SCHEMA = pa.schema([("k", pa.int64()), ("t", pa.int64()), ("v", pa.int64())])


def test_deduplicate_within_horizon(runner) -> None:
    rows = [{"k": i % 7, "t": i * 100, "v": i} for i in range(600)]  # key k every 700 ms
    flow = hw.Dataflow("dedup")
    out = TestingSink()
    stream = flow.source("in", TestingSource(rows, batch_size=33, schema=SCHEMA), event_time="t")
    stream.key_by("k").deduplicate(within=timedelta(seconds=2)).sink("out", out)
    runner(flow, parallelism=2)
    expected, last = [], {}
    for row in rows:
        if row["k"] not in last or row["t"] - last[row["k"]] >= 2_000:
            expected.append(row["v"])
            last[row["k"]] = row["t"]
    assert sorted(r["v"] for r in out.rows()) == sorted(expected)


def test_lookup_join_from_parquet_and_sql(runner, tmp_path: Path) -> None:
    pq.write_table(pa.table({"k": [0, 1, 2, 3], "name": ["zero", "one", "two", "three"]}), tmp_path / "names.parquet")
    db = tmp_path / "ref.sqlite"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE tier (k INTEGER PRIMARY KEY, tier TEXT)")
        connection.executemany("INSERT INTO tier VALUES (?, ?)", [(0, "gold"), (2, "silver")])
    rows = [{"k": i % 5, "t": i, "v": i} for i in range(50)]
    flow = hw.Dataflow("lookup")
    left, inner = TestingSink(), TestingSink()
    stream = flow.source("in", TestingSource(rows, batch_size=8, schema=SCHEMA))
    named = stream.lookup_join(hw.LookupTable.parquet(tmp_path / "names.parquet", key="k"), on="k")
    named.sink("left", left)
    named.lookup_join(hw.LookupTable.sql(f"sqlite:///{db}", "SELECT k, tier FROM tier", key="k"), on="k",
                      how="inner").sink("inner", inner)
    runner(flow, parallelism=2)
    names = {0: "zero", 1: "one", 2: "two", 3: "three"}
    assert sorted((r["v"], r["name"]) for r in left.rows()) == [(r["v"], names.get(r["k"])) for r in rows]
    tiers = {0: "gold", 2: "silver"}
    assert sorted((r["v"], r["tier"]) for r in inner.rows()) == [(r["v"], tiers[r["k"]]) for r in rows if r["k"] in tiers]


def test_lookup_table_errors_are_clear(tmp_path: Path) -> None:
    flow = hw.Dataflow("bad-lookup")
    stream = flow.source("in", TestingSource([{"k": 1, "t": 0, "v": 0}], schema=SCHEMA))
    with pytest.raises(SourceError, match="missing.parquet"):
        stream.lookup_join(hw.LookupTable.parquet(tmp_path / "missing.parquet", key="k"), on="k")
    pq.write_table(pa.table({"k": [1, 1], "x": [1, 2]}), tmp_path / "dup.parquet")
    step = stream.lookup_join(hw.LookupTable.parquet(tmp_path / "dup.parquet", key="k"), on="k")
    step.sink("out", TestingSink())
    with pytest.raises(SourceError, match="more than once"):
        hw.run(flow, executor="local")


def test_lookup_table_refreshes(tmp_path: Path) -> None:
    path = tmp_path / "prices.parquet"
    pq.write_table(pa.table({"k": [1], "price": [10]}), path)
    items: list = [{"k": 1, "t": 0, "v": 0}, TestingSource.PAUSE(0.6), {"k": 1, "t": 1, "v": 1}]
    flow = hw.Dataflow("refresh")
    out = TestingSink()
    flow.source("in", TestingSource(items, schema=SCHEMA)).lookup_join(
        hw.LookupTable.parquet(path, key="k", refresh=timedelta(milliseconds=100)), on="k").sink("out", out)
    job = hw.start(flow, executor="local")
    time.sleep(0.25)
    pq.write_table(pa.table({"k": [1], "price": [20]}), path)
    job.wait()
    assert [(r["v"], r["price"]) for r in out.rows()] == [(0, 10), (1, 20)]


def test_interval_join_matches_reference(runner) -> None:
    clicks = [{"k": i % 4, "t": i * 50, "v": i} for i in range(200)]
    views = [{"k": i % 4, "t": i * 70 + 13, "v": 1_000 + i} for i in range(140)]
    flow = hw.Dataflow("interval")
    out = TestingSink()
    bound = timedelta(seconds=1)
    left = flow.source("clicks", TestingSource(clicks, batch_size=9, schema=SCHEMA), event_time="t",
                       max_out_of_orderness=bound)
    right = flow.source("views", TestingSource(views, batch_size=11, schema=SCHEMA), event_time="t",
                        max_out_of_orderness=bound)
    left.interval_join(right, on="k", lower=timedelta(milliseconds=-100), upper=timedelta(milliseconds=300)).sink(
        "out", out)
    runner(flow, parallelism=2)
    expected = sorted((c["v"], v["v"]) for c in clicks for v in views
                      if c["k"] == v["k"] and v["t"] - 100 <= c["t"] <= v["t"] + 300)
    assert len(expected) > 50
    assert sorted((r["v"], r["v_right"]) for r in out.rows()) == expected


def test_early_results_then_final(tmp_path: Path) -> None:
    items: list = [{"k": 1, "t": 100, "v": 1}, {"k": 1, "t": 200, "v": 2}, TestingSource.PAUSE(0.4),
                   {"k": 1, "t": 300, "v": 3}]
    flow = hw.Dataflow("early")
    out = TestingSink()
    stream = flow.source("in", TestingSource(items, schema=SCHEMA), event_time="t")
    stream.key_by("k").window(hw.TumblingWindow(seconds=10), early_interval=timedelta(milliseconds=100)).aggregate(
        total=hw.sum("v")).sink("out", out)
    hw.run(flow, executor="local", watermark_interval=timedelta(0))
    totals = [r["total"] for r in out.rows()]
    assert totals[0] == 3 and totals[-1] == 6  # an early update during the pause, then the final result
