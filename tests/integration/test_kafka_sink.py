"""KafkaSink against the real broker of ``scripts/services.sh`` (and a private one for the restart test): a
``read_committed`` consumer sees every record exactly once — across aborts, kills at any point of prepare and
commit (hypothesis), a process killed inside its transaction, commits from other processes, a broker restart —
plus the formats, keys and build-time configuration errors. Every test uses topics of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headwater as hw
from headwater.core import plain_data
from headwater.errors import ConfigError, SimulatedCrashError, SinkError
from headwater.sinks import KafkaSink, SinkOwner
from headwater.sinks.kafka import KafkaCommitToken, KafkaSinkPartition
from headwater.sinks.kafka_staging import StagingArea
from headwater.sources import KafkaSource
from headwater.testing import TestingSource

pytestmark = pytest.mark.kafka

ABORT, PAUSE = TestingSource.ABORT, TestingSource.PAUSE
SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])
REPO = Path(__file__).resolve().parents[2]


class Topic:
    """A fresh topic, deleted afterwards; :meth:`committed` reads it as a ``read_committed`` consumer does."""

    def __init__(self, bootstrap: str, partitions: int = 2, **config: str) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        self.bootstrap = bootstrap
        self.name = f"hw-sink-{uuid.uuid4().hex[:12]}"
        self.partitions = partitions
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        new = NewTopic(self.name, num_partitions=partitions, replication_factor=1, config=config)
        self.admin.create_topics([new])[self.name].result(timeout=30)

    def committed(self, timeout: float = 60) -> list[tuple[int, bytes | None, bytes]]:
        """``(partition, key, value)`` of every committed record, in offset order per partition. Waits until the
        last stable offset reaches the end of every partition (no transaction left open), or fails."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "hw-test-reader",
                             "isolation.level": "read_committed", "enable.auto.commit": False,
                             "enable.partition.eof": True})
        try:
            ends = {p: consumer.get_watermark_offsets(TopicPartition(self.name, p), timeout=15)[1]
                    for p in range(self.partitions)}
            consumer.assign([TopicPartition(self.name, p, 0) for p in range(self.partitions)])
            out: list[tuple[int, bytes | None, bytes]] = []
            done: set[int] = {p for p, end in ends.items() if end == 0}
            deadline = time.monotonic() + timeout
            while len(done) < self.partitions:
                assert time.monotonic() < deadline, f"a transaction stays open on {self.name}: ends {ends}"
                message = consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        partition = message.partition()
                        if message.offset() >= ends[partition]:
                            done.add(partition)
                        continue
                    raise AssertionError(error.str())
                out.append((message.partition(), message.key(), message.value()))
            return out
        finally:
            consumer.close()

    def ids(self) -> list[int]:
        return sorted(json.loads(value)["id"] for _, _, value in self.committed())

    def delete(self) -> None:
        self.admin.delete_topics([self.name])[self.name].result(timeout=30)


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[Topic]:
    made = Topic(kafka_bootstrap)
    yield made
    made.delete()


def checkpointing(directory: Path, **options: Any) -> hw.CheckpointConfig:
    return hw.CheckpointConfig(dir=directory, interval=timedelta(milliseconds=10), restart_delay=timedelta(0),
                               **options)


def partitions_of(n: int, parts: int = 2) -> list[list[Any]]:
    return [[{"id": p * 1000 + i, "name": f"p{p}-{i}"} for i in range(n)] for p in range(parts)]


def all_ids(data: list[list[Any]]) -> list[int]:
    return sorted(row["id"] for part in data for row in part)


def with_markers(data: list[list[Any]], aborts: dict[int, list[int]]) -> list[list[Any]]:
    out = []
    for p, part in enumerate(data):
        items: list[Any] = list(part)
        for position in sorted(aborts.get(p, []), reverse=True):
            items[position:position] = [PAUSE(0.03), ABORT()]
        out.append(items)
    return out


def to_kafka(items: list[list[Any]], sink: KafkaSink, name: str = "to-kafka") -> hw.Dataflow:
    flow = hw.Dataflow(name)
    flow.source("in", TestingSource(partitions=items, batch_size=5, schema=SCHEMA)).sink("out", sink)
    return flow


def test_exactly_once_with_aborts_and_keys_and_json_values(topic: Topic, tmp_path: Path) -> None:
    data = partitions_of(60)
    sink = KafkaSink(topic.bootstrap, topic.name, key="id")
    result = hw.run(to_kafka(with_markers(data, {0: [20], 1: [45]}), sink), executor="local", parallelism=2,
                    checkpoint=checkpointing(tmp_path / "ckpt", max_restarts=4))
    assert result.restarts >= 1
    records = topic.committed()
    assert sorted(json.loads(v)["id"] for _, _, v in records) == all_ids(data)
    by_key = {k: json.loads(v) for _, k, v in records}
    assert by_key[b"1007"] == {"id": 1007, "name": "p1-7"}
    assert len(records) == len(by_key)
    assert StagingArea(str(tmp_path / "ckpt" / "_kafka_sinks")).names() == []


class _CrashOnce:
    """A map_batches function that raises once, when it first sees record ``at`` (a marker file remembers)."""

    def __init__(self, at: int, marker: str) -> None:
        self.at, self.marker = at, marker

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.at in batch.column("id").to_pylist() and not Path(self.marker).exists():
            Path(self.marker).touch()
            raise SimulatedCrashError(f"crash at record {self.at}")
        return batch


def test_kafka_to_kafka_on_ray_with_a_crash(ray_cluster: Any, kafka_bootstrap: str, tmp_path: Path) -> None:
    source_topic, sink_topic = Topic(kafka_bootstrap), Topic(kafka_bootstrap)
    try:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
        for i in range(2000):
            producer.produce(source_topic.name, json.dumps({"id": i, "name": f"n{i}"}).encode(), partition=i % 2)
        assert producer.flush(30) == 0
        flow = hw.Dataflow("kafka-to-kafka")
        (flow.source("in", KafkaSource(kafka_bootstrap, source_topic.name, schema=SCHEMA, bounded=True,
                                       max_batch_records=100, metadata=()))
         .map_batches(_CrashOnce(1300, str(tmp_path / "crashed")))
         .with_columns(double=hw.col("id") * 2)
         .sink("out", KafkaSink(kafka_bootstrap, sink_topic.name, key="id")))
        result = hw.run(flow, executor="ray", parallelism=2, checkpoint=checkpointing(tmp_path / "ckpt"))
        assert result.restarts == 1
        values = [json.loads(v) for _, _, v in sink_topic.committed()]
        assert sorted(v["id"] for v in values) == list(range(2000))
        assert all(v["double"] == 2 * v["id"] for v in values)
    finally:
        source_topic.delete()
        sink_topic.delete()


# -- tokens committed again, elsewhere -------------------------------------------------------------------------------
def _prepared(topic: Topic, tmp_path: Path, rows: int = 50) -> tuple[KafkaSink, KafkaCommitToken]:
    sink = KafkaSink(topic.bootstrap, topic.name, key="id").staging_as(
        SinkOwner("job-00000000feedbeef", str(tmp_path / "ckpt")))
    part = sink.build_part(0, 1)
    part.write(pa.RecordBatch.from_pylist([{"id": i, "name": f"n{i}"} for i in range(rows)], schema=SCHEMA))
    token = part.prepare(3)
    part.close()
    return sink, token


COMMIT_ELSEWHERE = """
import json, sys
from headwater.core import plain_data
from headwater.sinks import KafkaSink
bootstrap, topic, token = sys.argv[1], sys.argv[2], plain_data.decode(json.loads(sys.argv[3]))
part = KafkaSink(bootstrap, topic, key="id").build_part(token.subtask, 1)
part.commit(token); part.commit(token); part.close()
"""


def _python(script: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", script, *args], env=env, timeout=120, capture_output=True)


def test_a_token_commits_in_another_process_and_every_repeat_is_a_no_op(topic: Topic, tmp_path: Path) -> None:
    sink, token = _prepared(topic, tmp_path)
    encoded = json.dumps(plain_data.encode(token))
    for _ in range(2):  # the second process finds the marker (and no staged file): a no-op
        done = _python(COMMIT_ELSEWHERE, topic.bootstrap, topic.name, encoded)
        assert done.returncode == 0, done.stderr.decode()
    again = sink.build_part(0, 1)  # and here, on a fresh partition object
    again.commit(plain_data.decode(json.loads(encoded)))  # type: ignore[arg-type]
    again.close()
    assert topic.ids() == list(range(50))
    assert not os.path.exists(token.staged)


KILLED_IN_TRANSACTION = """
import json, os, sys
from headwater.core import plain_data
from headwater.sinks import KafkaSink
bootstrap, topic, token = sys.argv[1], sys.argv[2], plain_data.decode(json.loads(sys.argv[3]))
part = KafkaSink(bootstrap, topic, key="id").build_part(token.subtask, 1)
producer = part._transactional_producer(part._transactional_id(token))
producer.begin_transaction()
for batch in part._sink.staging_area(token.sink_id).read(token.staged):
    for key, value in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
        producer.produce(topic, value=value, key=key)
assert producer.flush(30) == 0
os._exit(9)  # killed inside the transaction: its records are on the broker, uncommitted
"""


@pytest.mark.chaos
def test_a_process_killed_inside_its_transaction_is_fenced_and_the_token_commits_once(topic: Topic,
                                                                                       tmp_path: Path) -> None:
    sink, token = _prepared(topic, tmp_path, rows=200)
    done = _python(KILLED_IN_TRANSACTION, topic.bootstrap, topic.name, json.dumps(plain_data.encode(token)))
    assert done.returncode == 9, done.stderr.decode()
    part = sink.build_part(0, 1)  # recovery: init_transactions aborts the dead process's transaction
    part.commit(token)
    part.commit(token)
    part.close()
    assert topic.ids() == list(range(200))


def test_a_zombie_committer_is_fenced(topic: Topic, tmp_path: Path) -> None:
    sink, first = _prepared(topic, tmp_path)
    zombie = sink.build_part(0, 1)
    zombie.commit(first)  # initialises its producer
    part = sink.build_part(0, 1)
    part.write(pa.RecordBatch.from_pylist([{"id": 100, "name": "x"}], schema=SCHEMA))
    second = part.prepare(4)
    part.commit(second)  # a newer producer of the same transactional id: fences the zombie
    late = sink.build_part(0, 1)
    late.write(pa.RecordBatch.from_pylist([{"id": 200, "name": "late"}], schema=SCHEMA))
    stale = late.prepare(5)
    late.close()
    with pytest.raises(SinkError, match="another producer of this transactional id took over") as info:
        zombie.commit(stale)
    assert info.value.transient
    zombie.close()
    part.commit(stale)
    part.close()
    assert topic.ids() == [*range(50), 100, 200]


# -- kill points inside the sink -----------------------------------------------------------------------------------
KILL_POINTS = ("prepare_before", "prepare_after", "commit_before", "in_transaction", "after_transaction")


class _KillingPartition(KafkaSinkPartition):
    def __init__(self, sink: KillingKafkaSink, index: int) -> None:
        super().__init__(sink, index)
        self._killing = sink

    def _due(self, point: str) -> bool:
        sink = self._killing
        if sink.point != point:
            return False
        counter = Path(sink.marker_dir, f"{point}-{self._index}")
        seen = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(seen + 1))
        return seen + 1 == sink.occurrence

    def prepare(self, checkpoint_id: int) -> KafkaCommitToken:
        if self._due("prepare_before"):
            raise SimulatedCrashError("killed before prepare")
        token = super().prepare(checkpoint_id)
        if self._due("prepare_after"):
            raise SimulatedCrashError("killed after prepare")
        return token

    def commit(self, token: KafkaCommitToken) -> None:
        if self._due("commit_before"):
            raise SimulatedCrashError("killed before commit")
        super().commit(token)

    def _transaction(self, producer: Any, token: KafkaCommitToken, area: StagingArea, tid: str) -> None:
        if self._due("in_transaction"):  # records produced, the transaction left open, the process "dies"
            producer.begin_transaction()
            for batch in area.read(token.staged):
                for key, value in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    producer.produce(token.topic, value=value, key=key)
            producer.flush(30)
            self._producer = None  # the dead process's producer is never used again
            raise SimulatedCrashError("killed inside the transaction")
        super()._transaction(producer, token, area, tid)
        if self._due("after_transaction"):
            raise SimulatedCrashError("killed after commit_transaction, before the staged file was deleted")


class KillingKafkaSink(KafkaSink):
    """A KafkaSink that dies once at ``point`` (the ``occurrence``-th time a subtask gets there)."""

    def __init__(self, *args: Any, point: str, occurrence: int, marker_dir: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.point, self.occurrence, self.marker_dir = point, occurrence, marker_dir

    def build_part(self, index: int, count: int) -> KafkaSinkPartition:
        return _KillingPartition(self, index)


def _run_to_the_end(flow: hw.Dataflow, directory: Path) -> None:
    for _ in range(3):  # a kill inside recovery's commits (in the driver) ends the run: rerun it, as an operator would
        try:
            hw.run(flow, executor="local", parallelism=2, checkpoint=checkpointing(directory, max_restarts=6))
            return
        except SimulatedCrashError:
            continue
    raise AssertionError("the job did not finish in 3 runs")


@pytest.mark.chaos
@pytest.mark.parametrize("point", ["commit_before", "after_transaction", "in_transaction"])
def test_a_kill_after_the_checkpoint_completed_and_around_the_commit(topic: Topic, tmp_path: Path, point: str) -> None:
    data = partitions_of(30)
    sink = KillingKafkaSink(topic.bootstrap, topic.name, point=point, occurrence=1, marker_dir=str(tmp_path))
    _run_to_the_end(to_kafka(with_markers(data, {0: [25]}), sink), tmp_path / "ckpt")
    assert topic.ids() == all_ids(data)


@dataclass(frozen=True)
class Script:
    aborts: dict[int, list[int]]
    point: str | None
    occurrence: int


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    aborts = {p: sorted(draw(st.sets(st.integers(1, 29), max_size=1))) for p in range(2)}
    return Script(aborts, draw(st.sampled_from((None, *KILL_POINTS))), draw(st.integers(1, 3)))


@pytest.mark.chaos
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(script=scripts())
def test_any_kill_point_ends_with_the_output_of_a_clean_run(kafka_bootstrap: str, script: Script) -> None:
    data = partitions_of(30)
    topic = Topic(kafka_bootstrap)
    try:
        with tempfile.TemporaryDirectory() as work:
            sink: KafkaSink
            if script.point is None:
                sink = KafkaSink(kafka_bootstrap, topic.name, key="id")
            else:
                sink = KillingKafkaSink(kafka_bootstrap, topic.name, key="id", point=script.point,
                                        occurrence=script.occurrence, marker_dir=work)
            _run_to_the_end(to_kafka(with_markers(data, script.aborts), sink), Path(work) / "ckpt")
            assert StagingArea(str(Path(work) / "ckpt" / "_kafka_sinks")).names() == []
        assert topic.ids() == all_ids(data)
    finally:
        topic.delete()


# -- a broker restart ----------------------------------------------------------------------------------------------
@pytest.mark.chaos
@pytest.mark.slow
def test_a_broker_restart_mid_run_loses_and_repeats_nothing(private_kafka: Any, tmp_path: Path) -> None:
    broker = private_kafka()
    topic = Topic(broker.bootstrap)
    data = partitions_of(120)
    paced = [[item for i, row in enumerate(part) for item in ([PAUSE(0.1)] if i % 5 == 0 else []) + [row]]
             for part in data]  # about 2.4 s of input per partition

    def restart() -> None:
        from confluent_kafka import Consumer, TopicPartition

        watcher = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "hw-test-watch"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the first commit is in: the job is under way
            ends = [watcher.get_watermark_offsets(TopicPartition(topic.name, p), timeout=5)[1] for p in range(2)]
            if sum(ends) > 0:
                break
            time.sleep(0.05)
        watcher.close()
        broker.stop()
        time.sleep(1.0)
        broker.start()

    flow = to_kafka(paced, KafkaSink(broker.bootstrap, topic.name, key="id", commit_timeout=10))
    restarter = threading.Thread(target=restart)
    restarter.start()
    result = hw.run(flow, executor="local", parallelism=2,
                    checkpoint=hw.CheckpointConfig(dir=tmp_path / "ckpt", interval=timedelta(milliseconds=100),
                                                   restart_delay=timedelta(milliseconds=200), max_restarts=8))
    restarter.join()
    assert result is not None
    assert topic.ids() == all_ids(data)


# -- formats and configuration -------------------------------------------------------------------------------------
AVRO = {"type": "record", "name": "Row", "fields": [{"name": "id", "type": "long"},
                                                     {"name": "name", "type": ["null", "string"]}]}


def _read_back(topic: Topic, source: KafkaSource) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in source.list_parts():
        part = source.build_part(name, None)
        try:
            while True:
                try:
                    batch = part.next_batch()
                except StopIteration:
                    break
                if batch is not None:
                    rows += batch.to_pylist()
        finally:
            part.close()
    return sorted(rows, key=lambda r: r["id"] if "id" in r else r["value"])


def test_avro_and_raw_formats_read_back_with_the_source(topic: Topic, kafka_bootstrap: str) -> None:
    raw_topic = Topic(kafka_bootstrap, 1)
    try:
        rows = [{"id": i, "name": None if i % 3 == 0 else f"n{i}"} for i in range(30)]
        flow = hw.Dataflow("formats")
        stream = flow.source("in", TestingSource(rows, batch_size=7, schema=SCHEMA))
        stream.sink("avro", KafkaSink(kafka_bootstrap, topic.name, format="avro", avro_schema=AVRO, key="name"))
        stream.with_columns(value=hw.col("name")).filter(~hw.col("value").is_null()).sink(
            "raw", KafkaSink(kafka_bootstrap, raw_topic.name, format="raw"))
        hw.run(flow, executor="local")
        avro = _read_back(topic, KafkaSource(kafka_bootstrap, topic.name, format="avro", avro_schema=AVRO,
                                             bounded=True, metadata=("key",)))
        assert [{"id": r["id"], "name": r["name"]} for r in avro] == rows
        assert all(r["key"] == (r["name"].encode() if r["name"] is not None else None) for r in avro)
        raw = _read_back(raw_topic, KafkaSource(kafka_bootstrap, raw_topic.name, format="raw", bounded=True,
                                                metadata=()))
        assert [r["value"] for r in raw] == sorted(f"n{i}".encode() for i in range(30) if i % 3)
    finally:
        raw_topic.delete()


def test_bad_configuration_fails_at_build_time(topic: Topic, kafka_bootstrap: str) -> None:
    def build(sink: KafkaSink) -> None:
        flow = hw.Dataflow("bad-config")
        flow.source("in", TestingSource([{"id": 1, "name": "a"}], schema=SCHEMA)).sink("out", sink)
        hw.run(flow, executor="local")

    with pytest.raises(ConfigError, match="does not exist .* create it first"):
        build(KafkaSink(kafka_bootstrap, f"no-such-{uuid.uuid4().hex}"))
    with pytest.raises(ConfigError, match="key column 'user' is not in the input"):
        build(KafkaSink(kafka_bootstrap, topic.name, key="user"))
    with pytest.raises(ConfigError, match="column 'id' is int64 but the Avro schema wants string"):
        build(KafkaSink(kafka_bootstrap, topic.name, format="avro", avro_schema={
            "type": "record", "name": "R", "fields": [{"name": "id", "type": "string"}]}))
    with pytest.raises(ConfigError, match="no column 'value'"):
        build(KafkaSink(kafka_bootstrap, topic.name, format="raw"))
    assert topic.committed() == []


def test_a_record_larger_than_the_topic_allows_is_a_clear_sink_error(kafka_bootstrap: str) -> None:
    small = Topic(kafka_bootstrap, 1, **{"max.message.bytes": "4096"})
    try:
        flow = hw.Dataflow("too-large")
        rows = [{"id": 1, "name": "ok"}, {"id": 2, "name": "x" * 10_000}]
        flow.source("in", TestingSource(rows, schema=SCHEMA)).sink("out", KafkaSink(kafka_bootstrap, small.name))
        with pytest.raises(SinkError, match=r"record of 10,0\d\d bytes .* exceeds the limit of 3,584 bytes .* "
                                            r"max.message.bytes=4,096"):
            hw.run(flow, executor="local")
        assert small.committed() == []
    finally:
        small.delete()
