"""KafkaSource against the real broker of ``scripts/services.sh``: partitions, offsets in checkpoints, metadata
columns, dead letters, exactly-once across crashes, unbounded reading with lag and committed group offsets."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.errors import ConfigError, SimulatedCrashError
from headwater.sinks.testing import TestingSink
from headwater.sources import KafkaSource

pytestmark = pytest.mark.kafka

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string())])


class Topic:
    """A fresh topic with ``partitions`` partitions, deleted afterwards."""

    def __init__(self, bootstrap: str, partitions: int) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        self.bootstrap = bootstrap
        self.name = f"hw-test-{uuid.uuid4().hex[:12]}"
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        futures = self.admin.create_topics([NewTopic(self.name, num_partitions=partitions, replication_factor=1)])
        futures[self.name].result(timeout=30)

    def produce(self, records: list[tuple[int, bytes | None, bytes | None]]) -> None:
        """``(partition, key, value)`` records, flushed."""
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        for partition, key, value in records:
            producer.produce(self.name, value=value, key=key, partition=partition)
        assert producer.flush(30) == 0

    def delete(self) -> None:
        self.admin.delete_topics([self.name])[self.name].result(timeout=30)


@pytest.fixture
def topic2(kafka_bootstrap: str) -> Iterator[Topic]:
    topic = Topic(kafka_bootstrap, 2)
    yield topic
    topic.delete()


def _good(i: int) -> bytes:
    return json.dumps({"id": i, "name": f"n{i}", "unused": True}).encode()


def _fill(topic: Topic, count: int) -> None:
    topic.produce([(i % 2, str(i).encode(), _good(i)) for i in range(count)])


def test_bounded_read_of_both_partitions_with_metadata_columns(runner, topic2: Topic) -> None:
    _fill(topic2, 500)
    out = TestingSink()
    flow = hw.Dataflow("kafka-bounded")
    flow.source("orders", KafkaSource(topic2.bootstrap, topic2.name, schema=SCHEMA, bounded=True),
                event_time="timestamp").sink("out", out)
    runner(flow, parallelism=2)
    rows = out.rows()
    assert sorted(r["id"] for r in rows) == list(range(500))
    for row in rows:
        assert row["name"] == f"n{row['id']}"
        assert row["key"] == str(row["id"]).encode()
        assert row["partition"] == row["id"] % 2
        assert row["timestamp"] is not None
    by_partition: dict[int, list[int]] = {}
    for row in sorted(rows, key=lambda r: r["offset"]):
        by_partition.setdefault(row["partition"], []).append(row["id"])
    assert by_partition[0] == list(range(0, 500, 2))  # in offset order within a partition


class _CrashOnce:
    """A map_batches function that raises once, when it first sees record ``at`` (a marker file remembers)."""

    def __init__(self, at: int, marker: str) -> None:
        self.at, self.marker = at, marker

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.at in batch.column("id").to_pylist() and not Path(self.marker).exists():
            Path(self.marker).touch()
            raise SimulatedCrashError(f"crash at record {self.at}")
        return batch


def _checkpointed(directory: Path) -> hw.CheckpointConfig:
    return hw.CheckpointConfig(dir=directory, interval=timedelta(milliseconds=10), restart_delay=timedelta(0),
                               max_restarts=3)


def _exactly_once_run(topic: Topic, crash_at: int, tmp: Path, executor: str, batch: int) -> list[int]:
    out = TestingSink()
    flow = hw.Dataflow("kafka-eo")
    source = KafkaSource(topic.bootstrap, topic.name, schema=SCHEMA, bounded=True, max_batch_records=batch)
    flow.source("orders", source).map_batches(_CrashOnce(crash_at, str(tmp / "crashed"))).sink("out", out)
    result = hw.run(flow, executor=executor, checkpoint=_checkpointed(tmp / "ckpt"), parallelism=2)
    assert result.restarts == 1
    return sorted(r["id"] for r in out.rows())


def test_a_crash_mid_stream_loses_and_repeats_nothing_on_ray(ray_cluster, topic2: Topic, tmp_path: Path) -> None:
    _fill(topic2, 3000)
    assert _exactly_once_run(topic2, 1700, tmp_path, "ray", 100) == list(range(3000))


@pytest.fixture(scope="module")
def topic_for_kill_points(kafka_bootstrap: str) -> Iterator[Topic]:
    topic = Topic(kafka_bootstrap, 2)
    _fill(topic, 400)
    yield topic
    topic.delete()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(crash_at=st.integers(0, 399), batch=st.sampled_from([7, 50, 1000]))
def test_any_kill_point_gives_the_output_of_a_clean_run(topic_for_kill_points: Topic, crash_at: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        assert _exactly_once_run(topic_for_kill_points, crash_at, Path(tmp), "local", batch) == list(range(400))


BAD_VALUES = st.one_of(
    st.binary(max_size=50),
    st.sampled_from([b"{not json", b'{"id": "x"}', b'{"name": "no id"}', b"[1,2]", b"\xff\xfe\xfd", b" ",
                     b'{"id": 1}' + b" " * 3000]),
    st.builds(lambda v: json.dumps({"id": v}).encode(), st.one_of(st.text(max_size=5), st.floats(), st.booleans())),
)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(layout=st.lists(st.one_of(st.just(None), BAD_VALUES), min_size=1, max_size=80))
def test_malformed_values_become_dead_letters_and_good_ones_all_arrive(kafka_bootstrap: str, layout: list[Any]) -> None:
    topic = Topic(kafka_bootstrap, 1)
    try:
        values = [_good(i) if v is None else v for i, v in enumerate(layout)]
        topic.produce([(0, None, v) for v in values])
        good_ids = [i for i, v in enumerate(layout) if v is None or _is_good(v)]
        out, dead = TestingSink(), TestingSink()
        flow = hw.Dataflow("kafka-dlq")
        orders = flow.source("orders", KafkaSource(topic.bootstrap, topic.name, schema=SCHEMA, bounded=True,
                                                   max_record_bytes=2000))
        orders.sink("out", out)
        orders.dead_letters().sink("dlq", dead)
        hw.run(flow, executor="local")
        got = sorted(r["offset"] for r in out.rows())
        letters = dead.rows()
        assert got == good_ids
        assert sorted(int(r["position"]) for r in letters) == sorted(set(range(len(values))) - set(good_ids))
        assert all(r["reason"] and r["error"] and r["partition"] == f"{topic.name}/0" for r in letters)
        assert all(r["payload"] == values[int(r["position"])] for r in letters)
    finally:
        topic.delete()


def _is_good(value: bytes) -> bool:
    try:
        obj = json.loads(value)
    except ValueError:
        return False
    return (isinstance(obj, dict) and type(obj.get("id")) is int and -(2**63) <= obj["id"] < 2**63
            and (obj.get("name") is None or isinstance(obj.get("name"), str)) and len(value) <= 2000)


def test_unbounded_source_follows_new_records_reports_lag_and_commits_group_offsets(topic2: Topic) -> None:
    from confluent_kafka import Consumer, TopicPartition

    _fill(topic2, 100)
    out = TestingSink()
    flow = hw.Dataflow("kafka-live")
    group = f"hw-group-{uuid.uuid4().hex[:8]}"
    flow.source("orders", KafkaSource(topic2.bootstrap, topic2.name, schema=SCHEMA, group_id=group)).sink("out", out)
    with tempfile.TemporaryDirectory() as tmp:
        job = hw.start(flow, executor="local", checkpoint=hw.CheckpointConfig(dir=tmp, interval=timedelta(milliseconds=50)))
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(out.rows()) < 100:
                time.sleep(0.1)
            producer = threading.Thread(target=lambda: topic2.produce([(i % 2, None, _good(i)) for i in range(100, 250)]))
            producer.start()
            producer.join()
            while time.monotonic() < deadline and len(out.rows()) < 250:
                time.sleep(0.1)
            lags = [lag for m in job.metrics() for lag in m.source_lag.values()]
            assert lags and all(lag.records is not None and lag.records >= 0 for lag in lags)
        finally:
            job.stop()
            job.wait(60)
    assert sorted(r["id"] for r in out.rows()) == list(range(250))
    consumer = Consumer({"bootstrap.servers": topic2.bootstrap, "group.id": group})
    try:
        committed = consumer.committed([TopicPartition(topic2.name, 0), TopicPartition(topic2.name, 1)], timeout=15)
    finally:
        consumer.close()
    assert sum(tp.offset for tp in committed) == 250  # committed after checkpoints, for monitoring


def test_bad_configuration_fails_at_build_time(kafka_bootstrap: str) -> None:
    with pytest.raises(ConfigError, match="needs schema="):
        KafkaSource(kafka_bootstrap, "t")
    with pytest.raises(ConfigError, match="bootstrap_servers"):
        KafkaSource("nohost", "t", format="raw")
    with pytest.raises(ConfigError, match="clash"):
        KafkaSource(kafka_bootstrap, "t", schema=pa.schema([("offset", pa.int64())]))
    flow = hw.Dataflow("missing-topic")
    flow.source("s", KafkaSource(kafka_bootstrap, f"no-such-{uuid.uuid4().hex}", format="raw",
                                 bounded=True)).sink("out", TestingSink())
    with pytest.raises(ConfigError, match="create it first"):
        hw.run(flow, executor="local")


def _read_all(partition: Any) -> list[int]:
    from headwater.sources.base import drain

    offsets: list[int] = []
    deadline = time.monotonic() + 30
    for batch in drain(partition):
        if batch is not None:
            offsets += batch.column("offset").to_pylist()
        assert time.monotonic() < deadline, "the bounded partition did not end"
    return offsets


def test_a_resumed_backfill_ends_at_the_end_its_first_run_fixed(kafka_bootstrap: str) -> None:
    """The end offset travels in the position: records produced after the first run planned the job are not read
    by a resumed run either (it ends where the uninterrupted run would have)."""
    topic = Topic(kafka_bootstrap, 1)
    try:
        topic.produce([(0, None, _good(i)) for i in range(20)])
        first = KafkaSource(topic.bootstrap, topic.name, schema=SCHEMA, bounded=True)
        part = first.list_parts()[0]
        reader = first.build_part(part, None)
        assert reader.snapshot() == {"offset": 0, "end": 20}
        topic.produce([(0, None, _good(i)) for i in range(20, 50)])  # 30 more, after the job was planned
        resumed = KafkaSource(topic.bootstrap, topic.name, schema=SCHEMA, bounded=True)
        resumed.list_parts()  # a new run lists the partitions again and sees 50 records
        assert _read_all(resumed.build_part(part, {"offset": 15, "end": 20})) == list(range(15, 20))
        assert _read_all(resumed.build_part(part, 15)) == list(range(15, 50))  # an earlier version's bare offset
        reader.close()
    finally:
        topic.delete()


def test_a_checkpointed_offset_deleted_by_retention_is_an_error_not_a_silent_skip(kafka_bootstrap: str) -> None:
    from confluent_kafka import TopicPartition

    from headwater.errors import SourceError

    topic = Topic(kafka_bootstrap, 1)
    try:
        topic.produce([(0, None, _good(i)) for i in range(100)])
        topic.admin.delete_records([TopicPartition(topic.name, 0, 60)])[TopicPartition(topic.name, 0, 60)].result(30)
        source = KafkaSource(topic.bootstrap, topic.name, schema=SCHEMA)
        partition = source.build_part(source.list_parts()[0], {"offset": 10})
        try:
            with pytest.raises(SourceError, match="offset 10 is no longer on the broker"):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    assert partition.next_batch() is None  # nothing may be read past the gap
                    time.sleep(0.05)
        finally:
            partition.close()
    finally:
        topic.delete()


@pytest.mark.chaos
@pytest.mark.slow
def test_a_broker_restart_mid_run_loses_and_repeats_nothing(private_kafka: Any, tmp_path: Path) -> None:
    broker = private_kafka()
    topic = Topic(broker.bootstrap, 2)
    _fill(topic, 200)
    out = TestingSink()
    flow = hw.Dataflow("kafka-broker-restart")
    flow.source("orders", KafkaSource(broker.bootstrap, topic.name, schema=SCHEMA, max_batch_records=50)).sink("out", out)
    job = hw.start(flow, executor="local", parallelism=2,
                   checkpoint=hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=50),
                                                  restart_delay=timedelta(milliseconds=200), max_restarts=8))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(out.rows()) < 200:
            time.sleep(0.05)
        assert len(out.rows()) == 200, "the first records arrived before the restart"
        broker.stop()
        time.sleep(1.5)  # the source finds no broker for a while (reconnects, or fails and restarts)
        broker.start()
        topic.produce([(i % 2, None, _good(i)) for i in range(200, 400)])
        while time.monotonic() < deadline and len(out.rows()) < 400:
            time.sleep(0.05)
    finally:
        job.stop()
        result = job.wait(60)
    assert sorted(r["id"] for r in out.rows()) == list(range(400))
    assert result.rows_out("orders") >= 200
