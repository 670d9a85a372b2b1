"""PostgresCdcSource throughput: row changes captured into Parquet, and the initial snapshot, each with a reference
measured in the same run.

* stream: ``--changes`` row changes (batched INSERT / UPDATE / DELETE in transactions of 1,000) are generated
  first, while the job is suspended; then the job resumes from its checkpoint and the time until every change is
  committed in Parquet (ParquetSink) is measured. Reference: a plain psycopg2 replication loop reading the same
  slot range (a second slot created at the same point) and counting the change messages, without decoding.
* snapshot: a table of ``--snapshot-rows`` rows read as the initial snapshot into Parquet. Reference: a plain
  ``COPY (SELECT ...) TO STDOUT`` of the same table into memory.

    source scripts/services.env
    flock /tmp/headwater-ray.lock python benchmarks/postgres_cdc.py --json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from datetime import timedelta

import psycopg2
import psycopg2.extras
import pyarrow.dataset as ds

import headwater as hw
from headwater.sinks import ParquetSink
from headwater.sources import PostgresCdcSource

DSN = os.environ.get("HEADWATER_PG_DSN", "postgresql://postgres@127.0.0.1:54329/headwater")


def committed_rows(path: str) -> int:
    try:
        return ds.dataset(path, format="parquet", ignore_prefixes=["_", "."]).count_rows()
    except (FileNotFoundError, OSError, ValueError):
        return 0


def run_until(flow: hw.Dataflow, checkpoint: hw.CheckpointConfig, out: str, rows: int) -> float:
    """Start the job, return seconds from start until ``rows`` rows are committed in ``out``; stop it (savepoint)."""
    started = time.perf_counter()
    job = hw.start(flow, executor="local", checkpoint=checkpoint, batch_size=50_000)
    try:
        while committed_rows(out) < rows:
            time.sleep(0.05)
        return time.perf_counter() - started
    finally:
        job.stop()
        job.wait(120)


def stream_bench(conn, changes: int, work: str) -> dict:
    suffix = uuid.uuid4().hex[:8]
    table, slot, ref_slot = f"bench_cdc_{suffix}", f"bench_cdc_{suffix}", f"bench_ref_{suffix}"
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text, n bigint, at timestamptz)")
    source = PostgresCdcSource(DSN, [table], slot=slot, publication=slot, snapshot=False, batch_size=20_000)
    out = os.path.join(work, "stream-out")
    flow = hw.Dataflow(f"bench_cdc_{suffix}")
    flow.source("cdc", source).sink("out", ParquetSink(out))
    checkpoint = hw.CheckpointConfig(dir=os.path.join(work, "stream-ckpt"), interval=timedelta(milliseconds=250))
    try:
        # 1. create the slot (an empty run), and the reference slot at the same point
        job = hw.start(flow, executor="local", checkpoint=checkpoint)
        while True:
            cur.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            if cur.fetchone():
                break
            time.sleep(0.05)
        cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (ref_slot,))
        time.sleep(0.5)
        job.stop()
        job.wait(60)
        # 2. generate the changes: inserts, then updates of 30 %, deletes of 20 % (by id ranges), 1,000 per txn
        inserts = int(changes / 1.5)
        updates, deletes = int(inserts * 0.3), changes - inserts - int(inserts * 0.3)
        started = time.perf_counter()
        for lo in range(0, inserts, 1000):
            cur.execute(f"INSERT INTO {table} SELECT g, 'value-' || g, g * 7, now() FROM generate_series(%s, %s) g",
                        (lo, min(lo + 1000, inserts) - 1))
        for lo in range(0, updates, 1000):
            cur.execute(f"UPDATE {table} SET v = 'updated', n = n + 1 WHERE id BETWEEN %s AND %s",
                        (lo, min(lo + 1000, updates) - 1))
        for lo in range(inserts - deletes, inserts, 1000):
            cur.execute(f"DELETE FROM {table} WHERE id BETWEEN %s AND %s", (lo, min(lo + 1000, inserts) - 1))
        generate_s = time.perf_counter() - started
        total = inserts + updates + deletes
        # 3. capture into Parquet from the checkpoint
        capture_s = run_until(flow, checkpoint, out, total)
        # 4. reference: plain replication loop over the same range (counting change messages)
        repl = psycopg2.connect(DSN, connection_factory=psycopg2.extras.LogicalReplicationConnection)
        rcur = repl.cursor()
        started = time.perf_counter()
        rcur.start_replication(slot_name=ref_slot, decode=False,
                               options={"proto_version": "1", "publication_names": slot})
        seen = 0
        while seen < total:
            message = rcur.read_message()
            if message is None:
                time.sleep(0.0005)
                continue
            if message.payload[:1] in (b"I", b"U", b"D"):
                seen += 1
        reference_s = time.perf_counter() - started
        repl.close()
        return {"changes": total, "generate_changes_per_s": round(total / generate_s),
                "capture_seconds": round(capture_s, 3), "capture_changes_per_s": round(total / capture_s),
                "reference_seconds": round(reference_s, 3), "reference_changes_per_s": round(total / reference_s),
                "ratio_to_reference": round(reference_s / capture_s, 3)}
    finally:
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                    (ref_slot,))
        source.drop_slot()
        cur.execute(f"DROP TABLE IF EXISTS {table}")


def snapshot_bench(conn, rows: int, work: str) -> dict:
    suffix = uuid.uuid4().hex[:8]
    table, slot = f"bench_snap_{suffix}", f"bench_snap_{suffix}"
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text, n bigint, at timestamptz)")
    cur.execute(f"INSERT INTO {table} SELECT g, 'value-' || g, g * 7, now() FROM generate_series(1, %s) g", (rows,))
    cur.execute(f"VACUUM ANALYZE {table}")
    source = PostgresCdcSource(DSN, [table], slot=slot, publication=slot, snapshot_chunk_rows=100_000)
    out = os.path.join(work, "snapshot-out")
    flow = hw.Dataflow(f"bench_snap_{suffix}")
    flow.source("cdc", source).sink("out", ParquetSink(out))
    checkpoint = hw.CheckpointConfig(dir=os.path.join(work, "snapshot-ckpt"), interval=timedelta(milliseconds=250))
    try:
        snapshot_s = run_until(flow, checkpoint, out, rows)
        started = time.perf_counter()
        buffer = io.BytesIO()
        cur.copy_expert(f"COPY (SELECT id, v, n, at FROM {table}) TO STDOUT WITH (FORMAT csv)", buffer)
        copy_s = time.perf_counter() - started
        return {"rows": rows, "snapshot_seconds": round(snapshot_s, 3), "snapshot_rows_per_s": round(rows / snapshot_s),
                "copy_seconds": round(copy_s, 3), "copy_rows_per_s": round(rows / copy_s),
                "ratio_to_copy": round(copy_s / snapshot_s, 3)}
    finally:
        source.drop_slot()
        cur.execute(f"DROP TABLE IF EXISTS {table}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--snapshot-rows", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    conn = psycopg2.connect(DSN)
    conn.autocommit = True
    work = tempfile.mkdtemp(prefix="hw-bench-cdc-")
    try:
        result = {"benchmark": "postgres_cdc", "date": time.strftime("%Y-%m-%d"),
                  "machine": f"{platform.machine()} {os.cpu_count()} CPUs (shared), {platform.python_version()}",
                  "stream": stream_bench(conn, args.changes, work),
                  "snapshot": snapshot_bench(conn, args.snapshot_rows, work)}
    finally:
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
