"""KinesisSource read throughput against a plain boto3 GetRecords loop, on the same stream, in the same run.

    flock /tmp/headwater-ray.lock python benchmarks/kinesis_source.py --records 100000 --shards 4 --json

Needs the local Kinesis-compatible server (``scripts/services.sh start moto``; ``HEADWATER_KINESIS_ENDPOINT``).
Both readers start at TRIM_HORIZON of every shard and read all ``--records`` JSON records (``{"n", "key",
"payload"}``) with GetRecords' largest ``Limit`` (10,000). The reference reads the shards one after another in
one thread, with no decoding at all (it only counts records); Headwater decodes JSON into Arrow, adds the
metadata columns and runs a bounded dataflow on the local executor into a no-op sink. The ratio is Headwater's
records/s over the reference's: against moto, both are bound by the server (a Python process), so the figure says
what Headwater's overhead costs, not what real Kinesis sustains (2 MB/s or 10,000 records/s read per shard).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid

import boto3
import pyarrow as pa

import headwater as hw
from headwater.sinks.base import Sink, SinkPartition
from headwater.sources import KinesisSource

REGION = "us-east-1"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
SCHEMA = pa.schema([("n", pa.int64()), ("key", pa.string()), ("payload", pa.string())])


class CountingSink(Sink):
    """Counts rows; commits nothing (the benchmark measures the source)."""

    exactly_once = False

    def build_part(self, index: int, count: int) -> SinkPartition:
        return _Counting()


class _Counting(SinkPartition):
    def write(self, batch: pa.RecordBatch) -> None:
        pass

    def prepare(self, checkpoint_id: int) -> None:
        return None

    def commit(self, token: object) -> None:
        pass

    def abort(self) -> None:
        pass


def fill(client: object, stream: str, records: int) -> None:
    padding = "x" * 100
    for start in range(0, records, 500):
        batch = [{"PartitionKey": f"user-{i % 1000}", "Data": json.dumps({"n": i, "key": f"user-{i % 1000}",
                                                                          "payload": padding}).encode()}
                 for i in range(start, min(records, start + 500))]
        response = client.put_records(StreamName=stream, Records=batch)  # type: ignore[attr-defined]
        assert response["FailedRecordCount"] == 0


def reference(client: object, stream: str) -> tuple[int, float]:
    """A plain client loop: every shard from TRIM_HORIZON until caught up; returns (records, seconds)."""
    start = time.perf_counter()
    count = 0
    shards = client.list_shards(StreamName=stream)["Shards"]  # type: ignore[attr-defined]
    for shard in shards:
        iterator = client.get_shard_iterator(  # type: ignore[attr-defined]
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while True:
            response = client.get_records(ShardIterator=iterator, Limit=10_000)  # type: ignore[attr-defined]
            count += len(response["Records"])
            if not response["Records"] and response.get("MillisBehindLatest") == 0:
                break
            iterator = response["NextShardIterator"]
    return count, time.perf_counter() - start


def headwater_run(endpoint: str, stream: str, parallelism: int) -> tuple[int, float]:
    source = KinesisSource(stream, REGION, schema=SCHEMA, bounded=True, endpoint_url=endpoint, **KEYS)
    flow = hw.Dataflow("kinesis-bench")
    flow.source("clicks", source).sink("out", CountingSink())
    start = time.perf_counter()
    result = hw.run(flow, executor="local", parallelism=parallelism)
    return result.steps["clicks"].rows_out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--endpoint", default=os.environ.get("HEADWATER_KINESIS_ENDPOINT", "http://127.0.0.1:19094"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    client = boto3.client("kinesis", region_name=REGION, endpoint_url=args.endpoint, **KEYS)
    stream = f"hw-bench-{uuid.uuid4().hex[:10]}"
    client.create_stream(StreamName=stream, ShardCount=args.shards)
    try:
        fill(client, stream, args.records)
        refs, runs = [], []
        for _ in range(args.repeat):  # interleaved, so both see the same machine load
            count, seconds = reference(client, stream)
            assert count == args.records, count
            refs.append(seconds)
            count, seconds = headwater_run(args.endpoint, stream, args.parallelism)
            assert count == args.records, count
            runs.append(seconds)
    finally:
        client.delete_stream(StreamName=stream)
    ref_best, hw_best = min(refs), min(runs)
    report = {
        "benchmark": "kinesis_source",
        "records": args.records,
        "shards": args.shards,
        "parallelism": args.parallelism,
        "repeat": args.repeat,
        "server": "moto 5.2.5 (server mode, local)",
        "headwater_records_per_s": round(args.records / hw_best),
        "reference_records_per_s": round(args.records / ref_best),
        "ratio": round(ref_best / hw_best, 3),
        "headwater_seconds": [round(s, 3) for s in runs],
        "reference_seconds": [round(s, 3) for s in refs],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
