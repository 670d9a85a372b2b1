"""KinesisSource against a real Kinesis-compatible server (moto's server mode, ``scripts/services.sh start moto``).

Every test makes its own stream (uuid suffix) and deletes it. Faults end with output equal to a fault-free run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import httpx
import pyarrow as pa
import pytest

import headwater as hw
from headwater.core import plain_data
from headwater.core.dead_letters import DEAD_LETTER_SCHEMA, decode_position
from headwater.errors import SimulatedCrashError, SourceError
from headwater.sinks.testing import TestingSink
from headwater.sources import KinesisShardPosition, KinesisSource
from headwater.sources.base import drain

pytestmark = pytest.mark.kinesis

REGION = "us-east-1"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
SCHEMA = pa.schema([("n", pa.int64()), ("key", pa.string())])


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client("kinesis", region_name=REGION, endpoint_url=endpoint, **KEYS)


@pytest.fixture
def make_stream(kinesis_endpoint: str) -> Iterator[Callable[[int], str]]:
    """``make_stream(shards)`` -> a new stream's name; every stream made is deleted afterwards."""
    client = _client(kinesis_endpoint)
    made: list[str] = []

    def make(shards: int) -> str:
        name = f"hw-test-{uuid.uuid4().hex[:12]}"
        client.create_stream(StreamName=name, ShardCount=shards)
        made.append(name)
        for _ in range(100):
            if client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                return name
            time.sleep(0.05)
        raise AssertionError(f"stream {name} did not become ACTIVE")

    yield make
    for name in made:
        client.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


def _put(endpoint: str, stream: str, payloads: list[tuple[str, bytes]]) -> list[str]:
    """Put ``(partition key, data)`` records in order; returns their sequence numbers."""
    client = _client(endpoint)
    sequence_numbers: list[str] = []
    for start in range(0, len(payloads), 500):
        chunk = payloads[start:start + 500]
        response = client.put_records(StreamName=stream, Records=[{"PartitionKey": k, "Data": d} for k, d in chunk])
        assert response["FailedRecordCount"] == 0
        sequence_numbers += [r["SequenceNumber"] for r in response["Records"]]
    return sequence_numbers


def _records(count: int, keys: int = 13, start: int = 0) -> list[tuple[str, bytes]]:
    return [(f"user-{i % keys}", json.dumps({"n": i, "key": f"user-{i % keys}"}).encode())
            for i in range(start, start + count)]


def _source(endpoint: str, stream: str, **options: Any) -> KinesisSource:
    options.setdefault("schema", SCHEMA)
    options.setdefault("bounded", True)
    return KinesisSource(stream, REGION, endpoint_url=endpoint, **KEYS, **options)


def _checkpointing(tmp_path: Path, **options: Any) -> hw.CheckpointConfig:
    return hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=5),
                               restart_delay=timedelta(0), **options)


def _assert_per_key_order(rows: list[dict[str, Any]]) -> None:
    """Within a partition key (one shard), rows arrive in sequence-number order, and n grows with it."""
    last: dict[str, int] = {}
    for row in rows:
        n = row["n"]
        assert last.get(row["partition_key"], -1) < n, f"out of order for {row['partition_key']}: {n}"
        last[row["partition_key"]] = n


def test_multi_shard_stream_reads_every_record_once_in_key_order(kinesis_endpoint: str, make_stream) -> None:
    stream = make_stream(4)
    _put(kinesis_endpoint, stream, _records(3000))
    source = _source(kinesis_endpoint, stream, max_records_per_call=250)
    assert source.list_parts() == [f"shardId-00000000000{i}" for i in range(4)]
    out = TestingSink()
    flow = hw.Dataflow("kinesis-shards")
    flow.source("clicks", source).sink("out", out)
    result = hw.run(flow, executor="local", parallelism=2)
    rows = out.rows()
    assert sorted(r["n"] for r in rows) == list(range(3000))
    assert {r["key"] for r in rows} == {r["partition_key"] for r in rows}
    _assert_per_key_order(rows)
    assert all(r["arrival_time"] is not None and r["sequence_number"].isdigit() for r in rows)
    assert result.steps["clicks"].rows_out == 3000


class _CrashOnce:
    """A batch function that raises a (transient) crash once, after ``after`` rows, in the first attempt only."""

    def __init__(self, marker: str, after: int) -> None:
        self.marker, self.after, self.seen = Path(marker), after, 0

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        self.seen += batch.num_rows
        if self.seen >= self.after and not self.marker.exists():
            self.marker.touch()
            raise SimulatedCrashError("simulated crash in a map UDF", transient=True)
        return batch


def test_restart_from_checkpoint_output_equals_a_fault_free_run(kinesis_endpoint: str, make_stream,
                                                                 tmp_path: Path) -> None:
    stream = make_stream(3)
    payloads = _records(2400)
    payloads[700:700] = [("user-x", b"{broken")]  # a dead letter, also exactly once across the restart
    _put(kinesis_endpoint, stream, payloads)

    def run(crash: bool, directory: Path) -> tuple[list[tuple[str, str, int]], list[bytes], hw.JobResult]:
        good, dead = TestingSink(), TestingSink()
        flow = hw.Dataflow("kinesis-restart")
        stream_ = flow.source("clicks", _source(kinesis_endpoint, stream, max_records_per_call=100))
        mapped = stream_.map_batches(_CrashOnce, fn_constructor_args=(str(directory / "crashed"), 900 if crash else 10**9),
                                     concurrency=1, step_id="maybe-crash")
        mapped.sink("out", good)
        stream_.dead_letters().sink("dead", dead)
        result = hw.run(flow, executor="local", parallelism=3,
                        checkpoint=_checkpointing(directory, max_restarts=2), batch_size=64)
        rows = sorted((r["partition_key"], r["sequence_number"], r["n"]) for r in good.rows())
        return rows, sorted(dead.table().column("payload").to_pylist()), result

    clean_rows, clean_dead, clean = run(False, tmp_path / "clean")
    rows, dead, crashed = run(True, tmp_path / "crash")
    assert clean.restarts == 0 and crashed.restarts == 1
    assert (tmp_path / "crash" / "crashed").exists()
    assert len(clean_rows) == 2400 and sorted(n for _, _, n in clean_rows) == list(range(2400))
    assert rows == clean_rows  # nothing lost, nothing duplicated
    assert dead == clean_dead == [b"{broken"]


def test_bounded_reads_what_was_there_at_creation_then_ends(kinesis_endpoint: str, make_stream) -> None:
    stream = make_stream(2)
    _put(kinesis_endpoint, stream, _records(200))
    source = _source(kinesis_endpoint, stream)
    time.sleep(0.05)
    _put(kinesis_endpoint, stream, _records(50, start=200))  # arrived after the source was created
    out = TestingSink()
    flow = hw.Dataflow("kinesis-bounded")
    flow.source("clicks", source).sink("out", out)
    hw.run(flow, executor="local")
    assert sorted(r["n"] for r in out.rows()) == list(range(200))


def test_unbounded_latest_reads_only_new_records_and_resumes_after_them(kinesis_endpoint: str, make_stream,
                                                                        tmp_path: Path) -> None:
    stream = make_stream(2)
    _put(kinesis_endpoint, stream, _records(40))  # before the start: skipped by start="latest"
    source = _source(kinesis_endpoint, stream, bounded=False, start="latest")
    out = TestingSink()
    flow = hw.Dataflow("kinesis-latest")
    flow.source("clicks", source).sink("out", out)
    writer = threading.Timer(2.5, _put, (kinesis_endpoint, stream, _records(60, start=40)))
    writer.start()
    try:
        hw.run(flow, executor="local", checkpoint=_checkpointing(tmp_path), timeout=6)
    finally:
        writer.join()
    assert sorted(r["n"] for r in out.rows()) == list(range(40, 100))
    # a second run from the checkpoint reads what arrived meanwhile, and nothing twice
    _put(kinesis_endpoint, stream, _records(30, start=100))
    again = TestingSink()
    flow = hw.Dataflow("kinesis-latest")
    flow.source("clicks", _source(kinesis_endpoint, stream, bounded=True, start="latest")).sink("out", again)
    hw.run(flow, executor="local", checkpoint=_checkpointing(tmp_path))
    assert sorted(r["n"] for r in again.rows()) == list(range(100, 130))


def test_bad_records_become_dead_letters(kinesis_endpoint: str, make_stream) -> None:
    stream = make_stream(2)
    bad = [("k-bad-json", b"not json"), ("k-array", b"[1, 2]"), ("k-type", b'{"n": "seven", "key": "x"}'),
           ("k-utf8", b'{"n": 1, "key": "\xff"}'), ("k-big", b'{"n": 1, "key": "' + b"x" * 2000 + b'"}')]
    payloads = _records(100)
    for i, record in enumerate(bad):
        payloads.insert(10 + 20 * i, record)
    sequence_numbers = dict(zip((p for _, p in payloads), _put(kinesis_endpoint, stream, payloads)))
    good, dead = TestingSink(), TestingSink()
    flow = hw.Dataflow("kinesis-dead")
    clicks = flow.source("clicks", _source(kinesis_endpoint, stream, max_record_bytes=1000))
    clicks.sink("out", good)
    clicks.dead_letters().sink("dead", dead)
    result = hw.run(flow, executor="local")
    assert sorted(r["n"] for r in good.rows()) == list(range(100))
    letters = dead.table()
    assert letters.schema == DEAD_LETTER_SCHEMA
    by_key = {r["key"]: r for r in letters.to_pylist()}
    assert {k.decode(): r["reason"] for k, r in by_key.items()} == {
        "k-bad-json": "bad_format", "k-array": "not_a_record", "k-type": "wrong_type", "k-utf8": "bad_encoding",
        "k-big": "oversize"}
    for row in by_key.values():
        assert decode_position(row["position"]) == sequence_numbers[row["payload"]]
        assert row["partition"].startswith("shardId-") and row["event_time"] is not None
    assert result.steps["clicks"].dead_letters == 5

    # replayed by a source that accepts larger records: the oversize one arrives, with its metadata; others stay dead
    fixed = _source(kinesis_endpoint, stream, max_record_bytes=10_000)
    rows, still_dead = fixed.replay_dead_letters(letters.to_batches()[0])
    assert rows is not None and rows.column("partition_key").to_pylist() == ["k-big"]
    assert rows.column("sequence_number").to_pylist() == [sequence_numbers[by_key[b"k-big"]["payload"]]]
    assert sorted(d.reason.value for d in still_dead) == ["bad_encoding", "bad_format", "not_a_record", "wrong_type"]


def test_end_to_end_on_both_executors(runner, kinesis_endpoint: str, make_stream, tmp_path: Path) -> None:
    stream = make_stream(2)
    _put(kinesis_endpoint, stream, _records(500))
    out = TestingSink()
    flow = hw.Dataflow("kinesis-e2e")
    (flow.source("clicks", _source(kinesis_endpoint, stream))
     .filter(hw.col("n") % 2 == 0)
     .select("n", "key", "arrival_time")
     .sink("out", out))
    runner(flow, checkpoint=_checkpointing(tmp_path), parallelism=2)
    assert sorted(r["n"] for r in out.rows()) == list(range(0, 500, 2))


def test_resharding_a_closed_parent_is_read_to_its_end_then_marked_ended(kinesis_endpoint: str, make_stream,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """After a split, the listing holds the closed parent and its two children; every record is read once.

    (moto deviates from Kinesis in where records land around a split: it moves the parent's records into the
    children and may route later ones to the closed parent. The assertions hold either way.)"""
    stream = make_stream(1)
    client = _client(kinesis_endpoint)
    _put(kinesis_endpoint, stream, _records(50))
    client.split_shard(StreamName=stream, ShardToSplit="shardId-000000000000", NewStartingHashKey=str(2**127))
    _put(kinesis_endpoint, stream, _records(50, start=50))
    source = _source(kinesis_endpoint, stream)
    parts = source.list_parts()
    assert parts == ["shardId-000000000000", "shardId-000000000001", "shardId-000000000002"]
    parent = source.build_part(parts[0], None)
    with caplog.at_level(logging.WARNING, logger="headwater.sources.kinesis"):
        rows = [r for b in drain(parent) if b is not None for r in b.to_pylist()]
    position = parent.snapshot()
    assert position.shard_ended
    assert position.sequence_number == (rows[-1]["sequence_number"] if rows else None)
    assert "closed (resharded)" in caplog.text and f"{parts[1]}, {parts[2]}" in caplog.text
    assert plain_data.decode(json.loads(json.dumps(plain_data.encode(position)))) == position
    assert list(drain(source.build_part(parts[0], position))) == []  # an ended shard is not read again
    children = [r for part in parts[1:] for b in drain(source.build_part(part, None)) if b is not None
                for r in b.to_pylist()]
    assert sorted(r["n"] for r in rows + children) == list(range(100))


class _ThrottlingProxy:
    """A real HTTP proxy in front of the Kinesis server that answers ``throttle`` of every ``every`` GetRecords
    with ProvisionedThroughputExceededException (400), as Kinesis does when a shard's read limit is exceeded."""

    def __init__(self, upstream: str, throttle: int = 3, every: int = 4) -> None:
        self.upstream, self.throttle, self.every = upstream, throttle, every
        self.get_records = 0
        self.throttled = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("X-Amz-Target", "").endswith(".GetRecords"):
                    with lock:
                        proxy.get_records += 1
                        throttle = proxy.get_records % proxy.every < proxy.throttle
                        proxy.throttled += throttle
                    if throttle:
                        error = json.dumps({"__type": "ProvisionedThroughputExceededException",
                                            "message": "Rate exceeded for shard"}).encode()
                        self.send_response(400)
                        self.send_header("Content-Type", "application/x-amz-json-1.1")
                        self.send_header("Content-Length", str(len(error)))
                        self.end_headers()
                        self.wfile.write(error)
                        return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                reply = httpx.post(proxy.upstream + self.path, content=body, headers=headers, timeout=10)
                self.send_response(reply.status_code)
                for key, value in reply.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_throttling_is_retried_with_backoff_and_loses_nothing(kinesis_endpoint: str, make_stream) -> None:
    stream = make_stream(2)
    _put(kinesis_endpoint, stream, _records(600))
    proxy = _ThrottlingProxy(kinesis_endpoint, throttle=2, every=3)
    try:
        out = TestingSink()
        flow = hw.Dataflow("kinesis-throttled")
        # one botocore attempt per call, so the fetch thread's own backoff (tenacity) does the retrying
        flow.source("clicks", _source(proxy.url, stream, max_records_per_call=150, max_attempts=1)).sink("out", out)
        hw.run(flow, executor="local")
    finally:
        proxy.close()
    assert proxy.throttled >= 6
    assert sorted(r["n"] for r in out.rows()) == list(range(600))


def test_throttling_beyond_max_retry_seconds_fails_transiently(kinesis_endpoint: str, make_stream) -> None:
    stream = make_stream(1)
    _put(kinesis_endpoint, stream, _records(5))
    proxy = _ThrottlingProxy(kinesis_endpoint, throttle=1, every=1)
    try:
        partition = _source(proxy.url, stream, max_attempts=1, max_retry_seconds=0.5).build_part("shardId-000000000000", None)
        with pytest.raises(SourceError, match="ProvisionedThroughputExceededException") as caught:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                partition.next_batch()
                time.sleep(0.05)
        assert caught.value.transient is True
        partition.close()
    finally:
        proxy.close()


def test_lag_comes_from_millis_behind_latest(kinesis_endpoint: str, make_stream) -> None:
    stream = make_stream(1)
    for i in range(3):
        _put(kinesis_endpoint, stream, _records(1, start=i))
        time.sleep(0.3)
    partition = _source(kinesis_endpoint, stream, max_records_per_call=1).build_part("shardId-000000000000", None)
    lags = []
    for batch in drain(partition):
        if batch is not None:
            lags.append(partition.lag().seconds)
    assert lags[0] >= 0.5 and lags[-1] == 0.0
    assert lags == sorted(lags, reverse=True)


def test_a_missing_stream_fails_with_a_clear_error(kinesis_endpoint: str) -> None:
    source = _source(kinesis_endpoint, f"hw-missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(SourceError, match="cannot list the shards"):
        source.list_parts()
    partition = source.build_part("shardId-000000000000", KinesisShardPosition(sequence_number="1"))
    with pytest.raises(SourceError, match="ResourceNotFoundException") as caught:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            partition.next_batch()
            time.sleep(0.05)
    assert caught.value.transient is False
    partition.close()
