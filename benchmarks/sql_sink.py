"""Rows per second that SqlSink upserts into PostgreSQL, exactly once, at parallelism 1 and 2, against references
measured in the same run on the same rows: a plain SQLAlchemy ``executemany`` insert and a plain psycopg2
``COPY`` (of Arrow's CSV), each into a fresh table.

    source scripts/services.env
    flock /tmp/headwater-ray.lock python benchmarks/sql_sink.py --rows 200000 --json

The Headwater figure is the whole job (``hw.run`` on the in-process executor, checkpoint every second): staging
with ``COPY``, the commit's ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` (deduplicated by key) and the commit
table. The input has ``--rows`` rows over ``--rows // 2`` keys, so half of the rows update a key written before.
Prints one JSON line with the figures and the ratios to the references.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
import uuid
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa

import headwater as hw
from headwater.sinks.sql import SqlSink
from headwater.testing import TestingSource

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("amount", pa.float64()),
                    ("at", pa.timestamp("us", tz="UTC"))])


def batches(rows: int, parts: int, batch_size: int = 8192) -> list[list[pa.RecordBatch]]:
    """``parts`` partitions of rows with disjoint keys; each key appears twice."""
    out: list[list[pa.RecordBatch]] = []
    per = rows // parts
    for p in range(parts):
        ids = (np.arange(per) % (per // 2) + p * per).astype(np.int64)
        table = pa.table({"id": ids, "name": pa.array([f"name-{i}" for i in ids]),
                          "amount": np.random.default_rng(p).random(per),
                          "at": pa.array(np.full(per, 1_700_000_000_000_000, np.int64), pa.timestamp("us", tz="UTC"))},
                         schema=SCHEMA)
        out.append(table.to_batches(batch_size))
    return out


def headwater_run(url: str, rows: int, parallelism: int) -> tuple[float, str]:
    table = f"bench_sql_{uuid.uuid4().hex[:8]}"
    flow = hw.Dataflow("sql-sink-bench")
    flow.source("in", TestingSource(partitions=batches(rows, parallelism), schema=SCHEMA)).sink(
        "out", SqlSink(url, table, key="id"))
    started = time.perf_counter()
    hw.run(flow, executor="local", parallelism=parallelism,
           checkpoint=hw.CheckpointConfig(dir=tempfile.mkdtemp(prefix="sql-bench-"), interval=timedelta(seconds=1)))
    return time.perf_counter() - started, table


def reference_executemany(engine: sa.Engine, rows: int) -> tuple[float, str]:
    table = sa.Table(f"bench_ref_{uuid.uuid4().hex[:8]}", sa.MetaData(), sa.Column("id", sa.BigInteger),
                     sa.Column("name", sa.Text), sa.Column("amount", sa.Double),
                     sa.Column("at", sa.DateTime(timezone=True)))
    table.create(engine)
    data = pa.Table.from_batches([b for part in batches(rows, 1) for b in part])
    started = time.perf_counter()
    records = data.to_pylist()
    with engine.begin() as conn:
        for offset in range(0, len(records), 10_000):
            conn.execute(table.insert(), records[offset:offset + 10_000])
    return time.perf_counter() - started, table.name


def reference_copy(engine: sa.Engine, rows: int) -> tuple[float, str]:
    name = f"bench_copy_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {name} (id BIGINT, name TEXT, amount DOUBLE PRECISION, at TIMESTAMPTZ)"))
    data = pa.Table.from_batches([b for part in batches(rows, 1) for b in part])
    started = time.perf_counter()
    out = io.BytesIO()
    pacsv.write_csv(data, out, pacsv.WriteOptions(include_header=False))
    out.seek(0)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            cursor.copy_expert(f"COPY {name} FROM STDIN WITH (FORMAT csv)", out)
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--url", default=os.environ.get("HEADWATER_PG_DSN", "postgresql://postgres@127.0.0.1:54329/headwater"))
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    url = args.url.replace("postgresql://", "postgresql+psycopg2://", 1)
    engine = sa.create_engine(url)
    created: list[str] = []
    result: dict[str, Any] = {"benchmark": "sql_sink", "rows": args.rows, "keys": args.rows // 2,
                              "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), {platform.system()}",
                              "postgres": "15 (127.0.0.1, fsync off)"}
    try:
        seconds, table = reference_executemany(engine, args.rows)
        created.append(table)
        result["reference_executemany_rows_per_s"] = round(args.rows / seconds)
        seconds, table = reference_copy(engine, args.rows)
        created.append(table)
        result["reference_copy_rows_per_s"] = round(args.rows / seconds)
        for parallelism in (1, 2):
            seconds, table = headwater_run(url, args.rows, parallelism)
            created += [table, f"hw_staging_{table}"]
            with engine.connect() as conn:
                count = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            assert count == (args.rows // parallelism // 2) * parallelism, count
            rate = args.rows / seconds
            result[f"headwater_p{parallelism}_rows_per_s"] = round(rate)
            result[f"headwater_p{parallelism}_vs_executemany"] = round(rate / result["reference_executemany_rows_per_s"], 2)
            result[f"headwater_p{parallelism}_vs_copy"] = round(rate / result["reference_copy_rows_per_s"], 2)
    finally:
        with engine.begin() as conn:
            for name in created:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
            conn.execute(sa.text("DELETE FROM headwater_sink_commits WHERE sink_id LIKE :pattern"),
                         {"pattern": "%:bench_sql_%"})
        engine.dispose()
    if not args.json:
        print(__doc__)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
