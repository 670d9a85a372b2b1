"""Query benchmark: a filter + group-by over rows spread over the store's tiers, beside DuckDB on one Parquet file.

    python benchmarks/query_tiers.py --rows 10000000 --repeat 20 --json

Builds a table ``events`` of ``--rows`` rows (``user_id`` int64 of 100,000 users, ``region`` one of 8 strings,
``amount`` float64, ``ts`` spread evenly over the 30 days before a fixed "now"), committed in 1 M-row
transactions as a TableSink does, with ``LifecyclePolicy(warm_for=7 days)``; the lifecycle run moves the rows
older than 7 days to the cold tier (Parquet by date), the rest stay warm (LanceDB). The same rows are written to
one Parquet file for the reference.

Each repetition runs, interleaved:

* ``headwater``: ``QueryEngine.sql`` (the Serve app's ``POST /sql`` path without HTTP) through the admin view;
* ``duckdb``: the same SQL on ``read_parquet('<one file>')`` in a fresh DuckDB connection with the same threads.

``SELECT region, count(*) AS n, sum(amount) AS total FROM events WHERE amount > X GROUP BY region ORDER BY
region`` with X different in every repetition (so the result cache never answers; both engines see the same X).
Answers are compared. Reported: p50 and p99 of each, and their ratio (issue 12's bar: p99 < 300 ms and ≤ 1.5×
DuckDB's). The hot tier is not part of this run (it serves recent rows of a running pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.harness import machine  # noqa: E402
from headwater.query.engine import EngineConfig, QueryEngine  # noqa: E402
from headwater.query.views import TableView  # noqa: E402
from headwater.store import LifecyclePolicy, Store  # noqa: E402
from headwater.testing import commit_rows  # noqa: E402

NOW = datetime(2026, 12, 1, tzinfo=UTC)
REGIONS = [f"region-{i}" for i in range(8)]
SQL = "SELECT region, count(*) AS n, sum(amount) AS total FROM {table} WHERE amount > {x} GROUP BY region ORDER BY region"
CHUNK = 1_000_000


def chunk(start: int, rows: int, total: int, rng: np.random.Generator) -> pa.Table:
    span_us = int(timedelta(days=30).total_seconds() * 1e6)
    now_us = int(NOW.timestamp() * 1e6)
    index = np.arange(start, start + rows, dtype=np.int64)
    ts = now_us - span_us + (index.astype(np.float64) / total * span_us).astype(np.int64)
    return pa.table({
        "user_id": pa.array(rng.integers(0, 100_000, rows), pa.int64()),
        "region": pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, len(REGIONS), rows), pa.int32()),
                                                 pa.array(REGIONS)).cast(pa.string()),
        "amount": pa.array(rng.random(rows) * 1000.0, pa.float64()),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
    })


def build(directory: Path, total: int) -> tuple[Store, Path, dict[str, int], float]:
    store = Store(directory / "store")
    reference = directory / "all.parquet"
    rng = np.random.default_rng(7)
    started = time.perf_counter()
    writer: pq.ParquetWriter | None = None
    for start in range(0, total, CHUNK):
        table = chunk(start, min(CHUNK, total - start), total, rng)
        commit_rows(store, "events", table, time="ts",
                    policy=LifecyclePolicy(hot_for=timedelta(hours=1), warm_for=timedelta(days=7)))
        writer = writer or pq.ParquetWriter(reference, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    store.apply_lifecycle(now=NOW)
    store.compact("events")
    return store, reference, store.rows_per_tier("events"), time.perf_counter() - started


def reference_query(path: Path, x: float, threads: int) -> pa.Table:
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"SET threads = {threads}")
        return con.sql(SQL.format(table=f"read_parquet('{path}')", x=x)).to_arrow_table()
    finally:
        con.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(total: int, repeat: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store, reference, tiers, build_s = build(Path(tmp), total)
        engine = QueryEngine(store, EngineConfig(threads=threads))
        view = {"events": TableView.full("events")}
        ours: list[float] = []
        theirs: list[float] = []
        rng = np.random.default_rng(11)
        for i in range(repeat + 1):  # the first of each is a warm-up, not counted
            x = round(float(rng.random() * 500.0), 3)
            started = time.perf_counter()
            answer = engine.sql(SQL.format(table="events", x=x), view)
            mid = time.perf_counter()
            expected = reference_query(reference, x, threads)
            ended = time.perf_counter()
            assert not answer.cached
            got, want = answer.table.to_pylist(), expected.to_pylist()
            assert [(r["region"], r["n"]) for r in got] == [(r["region"], r["n"]) for r in want], (got, want)
            assert all(abs(a["total"] - b["total"]) <= 1e-6 * abs(b["total"]) for a, b in zip(got, want))
            if i:
                ours.append(mid - started)
                theirs.append(ended - mid)
    p99, ref99 = percentile(ours, 0.99), percentile(theirs, 0.99)
    return {
        "benchmark": "query_tiers", "machine": machine(), "rows": total, "rows_per_tier": tiers,
        "build_s": build_s, "repeat": repeat, "threads": threads, "sql": SQL.format(table="events", x="X"),
        "headwater_ms": {"p50": 1000 * percentile(ours, 0.5), "p99": 1000 * p99},
        "duckdb_one_parquet_ms": {"p50": 1000 * percentile(theirs, 0.5), "p99": 1000 * ref99},
        "ratio_p99": p99 / ref99, "ratio_p50": percentile(ours, 0.5) / percentile(theirs, 0.5),
        "runs_ms": {"headwater": [1000 * v for v in ours], "duckdb": [1000 * v for v in theirs]},
        "bars": {"p99_ms": 300, "ratio_p99": 1.5},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    os.environ.setdefault("HEADWATER_SCHEMA_REGISTRY", "off")
    figures = measure(args.rows, args.repeat, args.threads)
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
